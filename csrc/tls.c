/*
 * tls.c: the sans-I/O TLS engine.
 *
 * Theory of operation
 * -------------------
 * The engine is an SSL object and a small custom BIO, and nothing else: it never touches a
 * socket or an event loop. Its user offers ciphertext (uvs__tls_offer), lets the engine make
 * progress (uvs__tls_step), and takes away the ciphertext the engine produced (t->out). The
 * same engine serves the event-loop connections (tls_conn.c) and the blocking streams.
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
 * Whatever OpenSSL writes on its own must reach the peer: alerts after a failure, the reply to a
 * KeyUpdate, TLS 1.3 session tickets after the handshake. The engine cannot send, so its user
 * must drain t->out after every step, including steps that produced no plaintext.
 *
 * Renegotiation: servers set SSL_OP_NO_RENEGOTIATION on each connection, so a client's request
 * for one is refused with an alert (TLS 1.3 has no renegotiation at all).
 *
 * Errors: every failing OpenSSL call has the thread's error queue captured into the engine (up
 * to UVS__TLS_MAX_ERRORS codes) and thereby cleared, together with SSL_get_error's verdict and
 * the certificate verification result, so the embedding can build a precise exception.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "tls.h"

/* ---- the BIO ------------------------------------------------------------------------------ */

static BIO_METHOD *uvs__bio_method;
static CRYPTO_ONCE uvs__bio_once = CRYPTO_ONCE_STATIC_INIT;

static int uvs__bio_write(BIO *b, const char *p, int n) {
    uvs_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (n <= 0)
        return 0;
    if (uvs__buf_append(&t->out, p, (size_t)n) != 0)
        return -1;
    return n;
}

static int uvs__bio_read(BIO *b, char *p, int n) {
    uvs_tls_t *t = BIO_get_data(b);
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
    uvs_tls_t *t = BIO_get_data(b);
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

uvs_tls_t *uvs__tls_new(SSL_CTX *ctx, SSL *borrowed, int server, int *err) {
    *err = 0;
    if (!CRYPTO_THREAD_run_once(&uvs__bio_once, uvs__bio_init_method) || uvs__bio_method == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    uvs_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    if (borrowed != NULL && SSL_up_ref(borrowed) != 1) {
        free(t);
        *err = UV_EPROTO;
        return NULL;
    }
    t->ssl = borrowed != NULL ? borrowed : SSL_new(ctx);
    t->borrowed_ssl = borrowed != NULL;
    t->server = server;
    t->state = UVS_TLS_HANDSHAKING;
    if (t->ssl == NULL) {
        free(t);
        *err = UV_EPROTO; /* the OpenSSL error queue says why */
        return NULL;
    }
    t->bio = BIO_new(uvs__bio_method);
    if (t->bio == NULL) {
        SSL_free(t->ssl); /* ours, or our reference to a borrowed one */
        free(t);
        *err = UV_ENOMEM;
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

void uvs__tls_free(uvs_tls_t *t) {
    uvs__link_del(&t->busy); /* a no-op unless the event loop glue listed it */
    if (t->ssl != NULL) {
        if (t->borrowed_ssl)
            SSL_set_bio(t->ssl, NULL, NULL); /* our BIO must not outlive us in their SSL */
        SSL_free(t->ssl); /* ours, or only the reference we took on a borrowed one */
    }
    uvs__buf_free(&t->in_keep);
    uvs__buf_free(&t->out);
    free(t);
}

/* ---- input -------------------------------------------------------------------------------- */

void uvs__tls_offer(uvs_tls_t *t, const char *p, size_t n) {
    if (t->in_keep.len > 0) {
        if (n > 0 && uvs__buf_append(&t->in_keep, p, n) != 0) {
            /* cannot keep the order of the stream: fail rather than corrupt it */
            t->state = UVS_TLS_FAILED;
            t->err_ssl = SSL_ERROR_SYSCALL;
            t->err_sys = UV_ENOMEM;
            t->err_count = 0;
        }
        t->in_p = t->in_keep.base;
        t->in_n = t->in_keep.len;
        t->in_from_keep = 1;
    } else {
        t->in_p = p;
        t->in_n = n;
        t->in_from_keep = 0;
    }
}

void uvs__tls_settle(uvs_tls_t *t) {
    if (t->in_from_keep) {
        uvs__buf_consume(&t->in_keep, t->in_keep.len - t->in_n);
    } else if (t->in_n > 0 && uvs__buf_append(&t->in_keep, t->in_p, t->in_n) != 0) {
        t->state = UVS_TLS_FAILED;
        t->err_ssl = SSL_ERROR_SYSCALL;
        t->err_sys = UV_ENOMEM;
        t->err_count = 0;
    }
    t->in_p = NULL;
    t->in_n = 0;
    t->in_from_keep = 0;
}

/* ---- errors ------------------------------------------------------------------------------- */

void uvs__tls_capture(uvs_tls_t *t, int ssl_err) {
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
int uvs__tls_drained(const uvs_tls_t *t) {
    return t->in_n == 0 && !SSL_has_pending(t->ssl);
}

int uvs__tls_step(uvs_tls_t *t, char *buf, size_t cap, size_t *got) {
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
            t->state = UVS_TLS_OPEN;
            return UVS__TLS_R_HANDSHAKE;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return UVS__TLS_R_AGAIN;
        uvs__tls_capture(t, e);
        t->state = UVS_TLS_FAILED;
        return UVS__TLS_R_ERROR;
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
            if (uvs__tls_drained(t))
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
            uvs__tls_capture(t, e);
            t->state = UVS_TLS_FAILED;
            result = UVS__TLS_R_ERROR;
        }
        break;
    }
    *got = total;
    if (total == 0)
        return result;
    t->deferred = result == UVS__TLS_R_AGAIN ? 0 : result;
    return UVS__TLS_R_DATA;
}

int uvs__tls_encrypt(uvs_tls_t *t, const char *p, size_t n, size_t *used) {
    *used = 0;
    if (n == 0)
        return 0;
    /* room for every record this makes (header, tag and padding per 16 KiB), in one go */
    if (uvs__buf_reserve(&t->out, n + (n / 16384 + 1) * 256) != 0) {
        t->state = UVS_TLS_FAILED;
        t->err_ssl = SSL_ERROR_SYSCALL;
        t->err_sys = UV_ENOMEM;
        t->err_count = 0;
        return -1;
    }
    uvs__err_fresh();
    if (SSL_write_ex(t->ssl, p, n, used) == 1)
        return 0;
    int e = SSL_get_error(t->ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0; /* nothing taken now; retried at the next flush */
    uvs__tls_capture(t, e);
    t->state = UVS_TLS_FAILED;
    return -1;
}

int uvs__tls_close_notify(uvs_tls_t *t) {
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
