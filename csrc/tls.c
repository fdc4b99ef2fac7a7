/*
 * tls.c: the sans-I/O TLS engine.
 *
 * Theory of operation
 * -------------------
 * The engine is an SSL object and a small custom BIO, and nothing else: it never touches a
 * socket or an event loop, and it compiles with OpenSSL's headers and buf.h alone (its header is
 * tls_engine.h; tests/engine/test_engine.c builds it with no libuv at all). Its user offers
 * ciphertext (uvs__engine_offer), lets the engine make progress (uvs__engine_step), and takes
 * away the ciphertext the engine produced (uvs__engine_out). The same engine serves the
 * event-loop connections (tls_conn.c) and the blocking streams (tls_blocking.c); what belongs to
 * a connection (its timer, its place on the loop's busy list, loop timestamps) lives there.
 *
 * Why a custom BIO and not a BIO pair. A BIO pair owns two ring buffers per connection for the
 * connection's whole life (17 KiB each by default), which is most of what an idle TLS connection
 * would cost. Our BIO instead reads straight from the memory the caller offers (for the event
 * loop that is libuv's read buffer, shared by every connection of the loop) and writes into a
 * growable buffer that is handed to the kernel and released. Nothing is copied that a BIO pair
 * would not copy, and an idle connection holds no I/O buffers at all (the engine sets
 * SSL_MODE_RELEASE_BUFFERS, so OpenSSL drops its own record buffers too; the event loop glue
 * replaces that by a cheaper rule, see tls_conn.c). Input that SSL did not
 * consume in one call (a partial record) is kept in `in_keep` until more arrives.
 *
 * The BIO never blocks: reading with nothing offered answers "retry", so SSL_read and
 * SSL_do_handshake return SSL_ERROR_WANT_READ, which simply means "offer more". Writing always
 * succeeds (the out buffer grows), so SSL_ERROR_WANT_WRITE never happens and SSL_write takes
 * the whole plaintext at once (which is also why SSL_MODE_ENABLE_PARTIAL_WRITE buys nothing).
 *
 * Whatever OpenSSL writes on its own must reach the peer: alerts after a failure, TLS 1.3
 * session tickets after the handshake. (The answer to a peer's KeyUpdate request is not among
 * them: OpenSSL holds it until our next write, which it precedes.) The engine cannot send, so
 * its user must drain uvs__engine_out after every step, including steps that produced no
 * plaintext. tests/engine/test_engine.c checks all of this with two engines and no socket.
 *
 * State: HANDSHAKING, OPEN, DONE (close_notify both ways) and FAILED. Every change goes through
 * uvs__engine_set_state, which refuses the transitions that must not happen (see
 * tls_engine.h) with UVS__TLSE_EINVAL and leaves the state alone.
 *
 * Contexts reloaded while in use: SSL_new copies the context's certificate, key and trust
 * store; a live reload (ctx.c) replaces them. Both go through one process-wide lock (shared for
 * SSL_new, exclusive for the reload), so a new SSL* gets the old set or the new, never a mix.
 *
 * Renegotiation: servers set SSL_OP_NO_RENEGOTIATION on each connection, so a client's request
 * for one is refused with an alert (TLS 1.3 has no renegotiation at all).
 *
 * Errors: every failing OpenSSL call has the thread's error queue captured into the engine (up
 * to UVS__TLS_MAX_ERRORS codes) and thereby cleared, together with SSL_get_error's verdict and
 * the certificate verification result, so the embedding can build a precise exception.
 * Failures that are not OpenSSL's (out of memory, the peer's EOF during the handshake) go
 * through uvs__engine_fail with one of the engine's own codes (UVS__TLSE_*, no libuv codes
 * here): the glue translates them when it exports the error (uvs__tls_export_error).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "tls_engine.h"

struct uvs__engine_s {
    SSL *ssl;
    BIO *bio;              /* our BIO: reads the offered input, writes to `out`  */
    int state;             /* UVS_TLS_*: changed only by uvs__engine_set_state    */
    int server;
    int borrowed_ssl;      /* the embedding gave us this SSL*: never SSL_free it  */
    int close_notify_sent;
    int close_notify_received;
    int deferred;          /* a result to report after the data that preceded it  */
    /* input: ciphertext offered for this call, plus what a previous call left over */
    const char *in_p;
    size_t in_n;
    int in_from_keep;
    uvs__buf_t in_keep;
    /* output: ciphertext waiting to be sent */
    uvs__buf_t out;
    /* the error that failed the session */
    unsigned long err_codes[UVS__TLS_MAX_ERRORS];
    int err_count;
    int err_ssl;           /* SSL_get_error's verdict                              */
    int err_sys;           /* errno for SSL_ERROR_SYSCALL, a UVS__TLSE_* code, or 0 */
    long verify_result;
};

/* ---- the BIO ------------------------------------------------------------------------------ */

static BIO_METHOD *uvs__bio_method;
static CRYPTO_ONCE uvs__bio_once = CRYPTO_ONCE_STATIC_INIT;

static int uvs__bio_write(BIO *b, const char *p, int n) {
    uvs__engine_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (n <= 0)
        return 0;
    if (uvs__buf_append(&t->out, p, (size_t)n) != 0)
        return -1;
    return n;
}

static int uvs__bio_read(BIO *b, char *p, int n) {
    uvs__engine_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (n <= 0)
        return 0;
    if (t->in_n == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t k = t->in_n < (size_t)n ? t->in_n : (size_t)n;
    memcpy(p, t->in_p, k);
    t->in_p += k;
    t->in_n -= k;
    return (int)k;
}

static long uvs__bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    uvs__engine_t *t = BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return t->in_n > LONG_MAX ? LONG_MAX : (long)t->in_n;
    case BIO_CTRL_WPENDING:
        return t->out.len > LONG_MAX ? LONG_MAX : (long)t->out.len;
    default:
        return 0;
    }
}

static void uvs__bio_init_method(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "uvssl");
    if (m == NULL)
        return;
    if (!BIO_meth_set_write(m, uvs__bio_write) || !BIO_meth_set_read(m, uvs__bio_read) ||
        !BIO_meth_set_ctrl(m, uvs__bio_ctrl)) {
        BIO_meth_free(m);
        return;
    }
    uvs__bio_method = m;
}

/* ---- lifetime ----------------------------------------------------------------------------- */

/* Live reload (ctx.c, uvs_reload_install) replaces a context's certificate, key and trust store
 * in place; SSL_new copies them from the context. One process-wide lock keeps the two apart:
 * SSL_new holds it shared (readers never wait for each other), an install holds it exclusive,
 * so an SSL* made while another thread reloads gets the old set or the new one, never a mix or
 * a certificate being freed. */
static CRYPTO_RWLOCK *uvs__certs_lock;
static CRYPTO_ONCE uvs__certs_once = CRYPTO_ONCE_STATIC_INIT;

static void uvs__certs_init(void) { uvs__certs_lock = CRYPTO_THREAD_lock_new(); }

int uvs__engine_certs_lock(int exclusive) {
    if (!CRYPTO_THREAD_run_once(&uvs__certs_once, uvs__certs_init) || uvs__certs_lock == NULL)
        return 0;
    return exclusive ? CRYPTO_THREAD_write_lock(uvs__certs_lock)
                     : CRYPTO_THREAD_read_lock(uvs__certs_lock);
}

int uvs__engine_certs_unlock(void) { return CRYPTO_THREAD_unlock(uvs__certs_lock); }

static SSL *uvs__ssl_new(SSL_CTX *ctx) {
    if (uvs__engine_certs_lock(0) != 1)
        return NULL;
    SSL *ssl = SSL_new(ctx);
    if (uvs__engine_certs_unlock() != 1 && ssl != NULL) {
        SSL_free(ssl); /* a lock that cannot be released: refuse rather than go on */
        ssl = NULL;
    }
    return ssl;
}

uvs__engine_t *uvs__engine_new(SSL_CTX *ctx, SSL *borrowed, int server, int *err) {
    *err = 0;
    if (!CRYPTO_THREAD_run_once(&uvs__bio_once, uvs__bio_init_method) || uvs__bio_method == NULL) {
        *err = UVS__TLSE_ENOMEM;
        return NULL;
    }
    uvs__engine_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        *err = UVS__TLSE_ENOMEM;
        return NULL;
    }
    if (borrowed != NULL && SSL_up_ref(borrowed) != 1) {
        free(t);
        *err = UVS__TLSE_EPROTO;
        return NULL;
    }
    t->ssl = borrowed != NULL ? borrowed : uvs__ssl_new(ctx);
    t->borrowed_ssl = borrowed != NULL;
    t->server = server;
    t->state = UVS_TLS_HANDSHAKING; /* the initial state, not a transition */
    if (t->ssl == NULL) {
        free(t);
        *err = UVS__TLSE_EPROTO; /* the OpenSSL error queue says why */
        return NULL;
    }
    t->bio = BIO_new(uvs__bio_method);
    if (t->bio == NULL) {
        SSL_free(t->ssl); /* ours, or our reference to a borrowed one */
        free(t);
        *err = UVS__TLSE_ENOMEM;
        return NULL;
    }
    BIO_set_data(t->bio, t);
    BIO_set_init(t->bio, 1);
    SSL_set_bio(t->ssl, t->bio, t->bio); /* SSL now owns the one reference */
    SSL_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (server) {
        SSL_set_options(t->ssl, SSL_OP_NO_RENEGOTIATION);
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
    }
    return t;
}

void uvs__engine_free(uvs__engine_t *t) {
    if (t->ssl != NULL) {
        if (t->borrowed_ssl)
            SSL_set_bio(t->ssl, NULL, NULL); /* our BIO must not outlive us in their SSL */
        SSL_free(t->ssl); /* ours, or only the reference we took on a borrowed one */
    }
    uvs__buf_free(&t->in_keep);
    uvs__buf_free(&t->out);
    free(t);
}

/* ---- state and errors --------------------------------------------------------------------- */

int uvs__engine_set_state(uvs__engine_t *t, int state) {
    int ok;
    switch (state) {
    case UVS_TLS_OPEN:
        ok = t->state == UVS_TLS_HANDSHAKING;
        break;
    case UVS_TLS_DONE:
        ok = t->state == UVS_TLS_OPEN;
        break;
    case UVS_TLS_FAILED:
        ok = t->state >= UVS_TLS_HANDSHAKING && t->state <= UVS_TLS_DONE;
        break;
    default: /* nothing goes back to HANDSHAKING */
        ok = 0;
        break;
    }
    if (!ok)
        return UVS__TLSE_EINVAL;
    t->state = state;
    return 0;
}

/* The session failed for a reason that is not in OpenSSL's error queue: `code` is a
 * UVS__TLSE_* code (or an errno value), reported like SSL_ERROR_SYSCALL. */
void uvs__engine_fail(uvs__engine_t *t, int code) {
    if (uvs__engine_set_state(t, UVS_TLS_FAILED) != 0)
        return;
    t->err_ssl = SSL_ERROR_SYSCALL;
    t->err_sys = code;
    t->err_count = 0;
    t->verify_result = SSL_get_verify_result(t->ssl);
}

/* A failing OpenSSL call: record SSL_get_error's verdict and move the thread's error queue
 * into the engine (which empties it). */
static void uvs__engine_capture(uvs__engine_t *t, int ssl_err) {
    unsigned long e;
    t->err_ssl = ssl_err;
    t->err_sys = ssl_err == SSL_ERROR_SYSCALL ? errno : 0;
    t->err_count = 0;
    while ((e = ERR_get_error()) != 0) {
        if (t->err_count < UVS__TLS_MAX_ERRORS)
            t->err_codes[t->err_count++] = e;
    }
    t->verify_result = SSL_get_verify_result(t->ssl);
}

static int uvs__engine_fatal(uvs__engine_t *t, int ssl_err) {
    uvs__engine_capture(t, ssl_err);
    (void)uvs__engine_set_state(t, UVS_TLS_FAILED); /* allowed from every state */
    return UVS__TLS_R_ERROR;
}

int uvs__engine_error(const uvs__engine_t *t, unsigned long *codes, int max, int *ssl_err,
                      int *sys_err, long *verify_result) {
    int n = t->err_count < max ? t->err_count : max;
    if (n > 0)
        memcpy(codes, t->err_codes, (size_t)n * sizeof(codes[0]));
    *ssl_err = t->err_ssl;
    *sys_err = t->err_sys;
    *verify_result = t->verify_result;
    return n;
}

/* ---- accessors ---------------------------------------------------------------------------- */

int uvs__engine_state(const uvs__engine_t *t) { return t->state; }
int uvs__engine_close_notify_sent(const uvs__engine_t *t) { return t->close_notify_sent; }
int uvs__engine_close_notify_received(const uvs__engine_t *t) { return t->close_notify_received; }
int uvs__engine_has_deferred(const uvs__engine_t *t) { return t->deferred != 0; }
SSL *uvs__engine_ssl(const uvs__engine_t *t) { return t->ssl; }
uvs__buf_t *uvs__engine_out(uvs__engine_t *t) { return &t->out; }
size_t uvs__engine_held_bytes(const uvs__engine_t *t) { return t->out.cap + t->in_keep.cap; }

/* An idle session keeps no empty buffers of ours (OpenSSL's are the glue's business). */
void uvs__engine_trim(uvs__engine_t *t) {
    if (t->out.len == 0)
        uvs__buf_free(&t->out);
    if (t->in_keep.len == 0)
        uvs__buf_free(&t->in_keep);
}

/* ---- input -------------------------------------------------------------------------------- */

void uvs__engine_offer(uvs__engine_t *t, const char *p, size_t n) {
    if (t->in_keep.len > 0) {
        if (n > 0 && uvs__buf_append(&t->in_keep, p, n) != 0)
            uvs__engine_fail(t, UVS__TLSE_ENOMEM); /* rather than corrupt the stream's order */
        t->in_p = t->in_keep.base;
        t->in_n = t->in_keep.len;
        t->in_from_keep = 1;
    } else {
        t->in_p = p;
        t->in_n = n;
        t->in_from_keep = 0;
    }
}

void uvs__engine_settle(uvs__engine_t *t) {
    if (t->in_from_keep) {
        uvs__buf_consume(&t->in_keep, t->in_keep.len - t->in_n);
    } else if (t->in_n > 0 && uvs__buf_append(&t->in_keep, t->in_p, t->in_n) != 0) {
        uvs__engine_fail(t, UVS__TLSE_ENOMEM);
    }
    t->in_p = NULL;
    t->in_n = 0;
    t->in_from_keep = 0;
}

int uvs__engine_keep(uvs__engine_t *t, const char *p, size_t n) {
    return uvs__buf_append(&t->in_keep, p, n) != 0 ? UVS__TLSE_ENOMEM : 0;
}

size_t uvs__engine_kept(const uvs__engine_t *t) { return t->in_keep.len; }

/* Hand the kept input over to the caller (who frees it): after the peer's close_notify it is
 * not ciphertext any more. Call between settle and the next offer. */
void uvs__engine_take_kept(uvs__engine_t *t, uvs__buf_t *dst) {
    *dst = t->in_keep;
    t->in_keep.base = NULL;
    t->in_keep.len = t->in_keep.cap = 0;
}

/* ---- progress ----------------------------------------------------------------------------- */

/* SSL_get_error() trusts the thread's error queue, so it must be empty before a call whose
 * outcome we classify. Someone else's leftovers are rare: peeking is cheap, while
 * ERR_clear_error() walks all sixteen slots of the queue on every call. */
static void uvs__err_fresh(void) {
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* True when another SSL_read could only answer WANT_READ: no offered input left and no record
 * data buffered inside SSL. Saves a failing SSL_read (and its error bookkeeping) per read. */
static int uvs__engine_drained(const uvs__engine_t *t) {
    return t->in_n == 0 && !SSL_has_pending(t->ssl);
}

/* Nothing another step could produce from the input offered: no deferred result, no input. */
int uvs__engine_idle(const uvs__engine_t *t) {
    return t->deferred == 0 && uvs__engine_drained(t);
}

int uvs__engine_step(uvs__engine_t *t, char *buf, size_t cap, size_t *got) {
    *got = 0;
    if (t->deferred != 0) {
        int r = t->deferred;
        t->deferred = 0;
        return r;
    }
    if (t->state == UVS_TLS_HANDSHAKING) {
        uvs__err_fresh();
        int r = SSL_do_handshake(t->ssl);
        if (r == 1) {
            (void)uvs__engine_set_state(t, UVS_TLS_OPEN); /* from HANDSHAKING: allowed */
            return UVS__TLS_R_HANDSHAKE;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return UVS__TLS_R_AGAIN;
        return uvs__engine_fatal(t, e);
    }
    if (t->state != UVS_TLS_OPEN || t->close_notify_received)
        return UVS__TLS_R_AGAIN;
    size_t total = 0;
    int result = UVS__TLS_R_AGAIN;
    uvs__err_fresh();
    while (total < cap) {
        size_t n = 0;
        if (SSL_read_ex(t->ssl, buf + total, cap - total, &n) == 1) {
            total += n;
            if (uvs__engine_drained(t))
                break;
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            t->close_notify_received = 1;
            result = UVS__TLS_R_CLOSED;
        } else {
            result = uvs__engine_fatal(t, e);
        }
        break;
    }
    *got = total;
    if (total == 0)
        return result;
    t->deferred = result == UVS__TLS_R_AGAIN ? 0 : result;
    return UVS__TLS_R_DATA;
}

/* Encrypt up to n bytes of plaintext into the output. *used says how many were taken (0 when
 * OpenSSL wants input first: retry later). Returns 0, or -1 when the session failed. */
int uvs__engine_encrypt(uvs__engine_t *t, const char *p, size_t n, size_t *used) {
    *used = 0;
    if (n == 0)
        return 0;
    /* room for every record this makes (header, tag and padding per 16 KiB), in one go */
    if (uvs__buf_reserve(&t->out, n + (n / 16384 + 1) * 256) != 0) {
        uvs__engine_fail(t, UVS__TLSE_ENOMEM);
        return -1;
    }
    uvs__err_fresh();
    if (SSL_write_ex(t->ssl, p, n, used) == 1)
        return 0;
    int e = SSL_get_error(t->ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0; /* nothing taken now; retried at the next flush */
    (void)uvs__engine_fatal(t, e);
    return -1;
}

/* Queue our close_notify, once, in an open session. Returns -1 when OpenSSL refused (the
 * session is already broken; the error queue is cleared), else 0. */
int uvs__engine_close_notify(uvs__engine_t *t) {
    if (t->close_notify_sent || t->state != UVS_TLS_OPEN)
        return 0;
    t->close_notify_sent = 1;
    uvs__err_fresh();
    int r = SSL_shutdown(t->ssl);
    if (r < 0) {
        ERR_clear_error(); /* e.g. the peer's alert already broke the session: nothing to say */
        return -1;
    }
    return 0;
}
