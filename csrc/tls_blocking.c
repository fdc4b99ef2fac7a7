/*
 * tls_blocking.c: blocking TLS over a connected socket (SslStream).
 *
 * Theory of operation
 * -------------------
 * The same sans-I/O engine as the event loop (tls.c) drives a plain file descriptor with
 * blocking semantics: whenever the engine wants input we recv(); whatever ciphertext it
 * produced we send() in full before returning. Python calls these functions through cffi,
 * which releases the GIL for the whole call, so other threads run while a stream waits in
 * the kernel or does crypto.
 *
 * The descriptor may be blocking or not (Python sockets with a timeout are non-blocking
 * underneath): on EAGAIN we poll() for at most timeout_ms (-1: forever) and report
 * UV_ETIMEDOUT when it runs out. The handshake runs at the first read or write, or when
 * uvs_stream_handshake() is called.
 *
 * Return values follow libuv: >= 0 is success, negative is -errno or UV_* codes, plus
 * UVS_STREAM_ETLS when the TLS engine failed (the details are captured in the engine:
 * uvs_stream_tls_error, which exports it through the same glue as the event loop's
 * connections). A clean close_notify from the peer reads as 0 bytes; a TCP FIN without it is
 * UV_EOF (truncation). The engine is used through its accessors only (tls_engine.h).
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "tls.h"

#define UVS__STREAM_CHUNK (16 * 1024 + 512) /* one full TLS record per recv */

struct uvs_stream_s {
    uvs__engine_t *tls;
    int fd;
    int timeout_ms;
    int eof;
};

uvs_stream_t *uvs_stream_new(SSL_CTX *ctx, int fd, int server, int *err) {
    uvs_stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    s->tls = uvs__engine_new(ctx, NULL, server, err);
    if (s->tls == NULL) {
        *err = uvs__tls_uv_code(*err);
        free(s);
        return NULL;
    }
    s->fd = fd;
    s->timeout_ms = -1;
    *err = 0;
    return s;
}

void uvs_stream_free(uvs_stream_t *s) {
    uvs__engine_free(s->tls);
    free(s);
}

SSL *uvs_stream_ssl(uvs_stream_t *s) { return uvs__engine_ssl(s->tls); }

void uvs_stream_set_timeout(uvs_stream_t *s, int timeout_ms) { s->timeout_ms = timeout_ms; }

static int uvs__wait(uvs_stream_t *s, short events) {
    struct pollfd p;
    p.fd = s->fd;
    p.events = events;
    p.revents = 0;
    for (;;) {
        int r = poll(&p, 1, s->timeout_ms);
        if (r > 0)
            return 0;
        if (r == 0)
            return UV_ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

/* Send every byte of ciphertext the engine has produced. */
static int uvs__send_all(uvs_stream_t *s) {
    uvs__buf_t *out = uvs__engine_out(s->tls);
    while (out->len > 0) {
        ssize_t n = send(s->fd, out->base, out->len, MSG_NOSIGNAL);
        if (n >= 0) {
            uvs__buf_consume(out, (size_t)n);
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int r = uvs__wait(s, POLLOUT);
        if (r != 0)
            return r;
    }
    return 0;
}

/* Read more ciphertext into the engine's input. */
static int uvs__recv_more(uvs_stream_t *s) {
    char chunk[UVS__STREAM_CHUNK];
    for (;;) {
        ssize_t n = recv(s->fd, chunk, sizeof(chunk), 0);
        if (n > 0)
            return uvs__tls_uv_code(uvs__engine_keep(s->tls, chunk, (size_t)n));
        if (n == 0) {
            s->eof = 1;
            return UV_EOF;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int r = uvs__wait(s, POLLIN);
        if (r != 0)
            return r;
    }
}

/* One engine step on whatever input is kept; then send what it produced. */
static int uvs__step(uvs_stream_t *s, char *buf, size_t cap, size_t *got, int *sent) {
    uvs__engine_t *t = s->tls;
    uvs__engine_offer(t, NULL, 0);
    int r = uvs__engine_step(t, buf, cap, got);
    uvs__engine_settle(t);
    *sent = uvs__send_all(s);
    return r;
}

static int uvs__eof_error(uvs_stream_t *s) {
    if (uvs__engine_state(s->tls) == UVS_TLS_HANDSHAKING) {
        uvs__engine_fail(s->tls, UVS__TLSE_EOF);
        return UVS_STREAM_ETLS;
    }
    return UV_EOF;
}

int uvs_stream_handshake(uvs_stream_t *s) {
    uvs__engine_t *t = s->tls;
    char dummy[1];
    while (uvs__engine_state(t) == UVS_TLS_HANDSHAKING) {
        size_t got = 0;
        int sent = 0;
        int r = uvs__step(s, dummy, 0, &got, &sent);
        if (r == UVS__TLS_R_ERROR)
            return UVS_STREAM_ETLS;
        if (sent != 0)
            return sent;
        if (r == UVS__TLS_R_HANDSHAKE)
            return 0;
        if (s->eof)
            return uvs__eof_error(s);
        r = uvs__recv_more(s);
        if (r == UV_EOF)
            return uvs__eof_error(s);
        if (r != 0)
            return r;
    }
    return uvs__engine_state(t) == UVS_TLS_FAILED ? UVS_STREAM_ETLS : 0;
}

long uvs_stream_read(uvs_stream_t *s, char *buf, size_t n) {
    uvs__engine_t *t = s->tls;
    int r = uvs_stream_handshake(s);
    if (r != 0)
        return r;
    if (n == 0)
        return 0;
    for (;;) {
        if (uvs__engine_state(t) == UVS_TLS_FAILED)
            return UVS_STREAM_ETLS;
        if (uvs__engine_close_notify_received(t) && !uvs__engine_has_deferred(t))
            return 0;
        size_t got = 0;
        int sent = 0;
        r = uvs__step(s, buf, n, &got, &sent);
        if (r == UVS__TLS_R_DATA)
            return (long)got; /* the peer's alert or close comes at the next call */
        if (r == UVS__TLS_R_CLOSED) {
            (void)uvs__engine_close_notify(t); /* answer it; best effort */
            (void)uvs__send_all(s);
            return 0;
        }
        if (r == UVS__TLS_R_ERROR)
            return UVS_STREAM_ETLS;
        if (sent != 0)
            return sent;
        if (s->eof)
            return UV_EOF;
        r = uvs__recv_more(s);
        if (r != 0)
            return r;
    }
}

long uvs_stream_write(uvs_stream_t *s, const char *buf, size_t n) {
    uvs__engine_t *t = s->tls;
    int r = uvs_stream_handshake(s);
    if (r != 0)
        return r;
    if (uvs__engine_close_notify_sent(t))
        return UV_EPIPE;
    size_t used = 0;
    if (uvs__engine_encrypt(t, buf, n, &used) != 0)
        return UVS_STREAM_ETLS;
    r = uvs__send_all(s);
    return r != 0 ? r : (long)used;
}

int uvs_stream_shutdown(uvs_stream_t *s) {
    uvs__engine_t *t = s->tls;
    if (uvs__engine_state(t) != UVS_TLS_OPEN || uvs__engine_close_notify_sent(t))
        return 0;
    (void)uvs__engine_close_notify(t);
    return uvs__send_all(s);
}

int uvs_stream_tls_error(uvs_stream_t *s, unsigned long *codes, int max, int *ssl_err,
                         int *sys_err, long *verify_result) {
    return uvs__tls_export_error(s->tls, codes, max, ssl_err, sys_err, verify_result);
}
