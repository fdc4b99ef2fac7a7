/*
 * tls_engine.h: the sans-I/O TLS engine (tls.c).
 *
 * Needs OpenSSL's headers and buf.h, nothing else: no libuv, no sockets, no connection types.
 * The event loop glue (tls_conn.c, header tls.h), the blocking streams (tls_blocking.c) and the
 * engine tests (tests/engine/test_engine.c) all drive an engine through these functions only;
 * the struct is opaque.
 */
#ifndef UVS_TLS_ENGINE_H
#define UVS_TLS_ENGINE_H

#include <stddef.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "buf.h"

typedef struct uvs__engine_s uvs__engine_t;

#define UVS__TLS_MAX_ERRORS 16

/* The session's state. Changes go through uvs__engine_set_state, which refuses any transition
 * not listed here:
 *   HANDSHAKING -> OPEN     the handshake completed
 *   HANDSHAKING -> FAILED   it failed (or the peer went away first)
 *   OPEN        -> DONE     close_notify went both ways
 *   OPEN, DONE  -> FAILED   a fatal error (in DONE only running out of memory keeping input)
 *   FAILED      -> FAILED   a later failure replaces the recorded one
 * (Values are part of the public API: uvs_conn_tls_state.) */
enum {
    UVS_TLS_HANDSHAKING = 1,
    UVS_TLS_OPEN = 2,
    UVS_TLS_FAILED = 3,
    UVS_TLS_DONE = 4 /* close_notify both ways: the TCP connection may go on in plaintext */
};

/* What the engine made of the input it was given (uvs__engine_step). */
enum {
    UVS__TLS_R_AGAIN = 0,      /* needs more ciphertext                         */
    UVS__TLS_R_HANDSHAKE = 1,  /* the handshake just completed                  */
    UVS__TLS_R_CLOSED = 2,     /* the peer sent close_notify                    */
    UVS__TLS_R_ERROR = 3,      /* fatal: see the captured error                 */
    UVS__TLS_R_DATA = 4        /* plaintext is in the caller's buffer           */
};

/* The engine's own error codes (negative; 0 is success). A positive code is an errno value
 * captured for SSL_ERROR_SYSCALL. The glue maps them to libuv's (uvs__tls_uv_code). */
enum {
    UVS__TLSE_ENOMEM = -1,     /* out of memory                                 */
    UVS__TLSE_EPROTO = -2,     /* OpenSSL refused (the error queue says why)    */
    UVS__TLSE_EOF = -3,        /* the peer went away during the handshake       */
    UVS__TLSE_EINVAL = -4      /* a state transition that must not happen       */
};

/* lifetime; *err is a UVS__TLSE_* code. A borrowed SSL gets a reference, never freed. */
uvs__engine_t *uvs__engine_new(SSL_CTX *ctx, SSL *borrowed, int server, int *err);
void uvs__engine_free(uvs__engine_t *t);
/* the lock between SSL_new and a live reload of a context's certificates (tls.c): 1 taken (or
 * released), 0 failed */
int uvs__engine_certs_lock(int exclusive);
int uvs__engine_certs_unlock(void);

/* input: offer ciphertext for the steps that follow, then settle (what was not consumed is
 * kept for the next offer); keep() queues ciphertext for a later offer */
void uvs__engine_offer(uvs__engine_t *t, const char *p, size_t n);
void uvs__engine_settle(uvs__engine_t *t);
int uvs__engine_keep(uvs__engine_t *t, const char *p, size_t n);
size_t uvs__engine_kept(const uvs__engine_t *t);
void uvs__engine_take_kept(uvs__engine_t *t, uvs__buf_t *dst);

/* progress */
int uvs__engine_step(uvs__engine_t *t, char *buf, size_t cap, size_t *got);
int uvs__engine_encrypt(uvs__engine_t *t, const char *p, size_t n, size_t *used);
int uvs__engine_close_notify(uvs__engine_t *t);
int uvs__engine_idle(const uvs__engine_t *t);

/* output: ciphertext to send; the caller consumes what it sent */
uvs__buf_t *uvs__engine_out(uvs__engine_t *t);

/* state */
int uvs__engine_state(const uvs__engine_t *t);
int uvs__engine_set_state(uvs__engine_t *t, int state);
int uvs__engine_close_notify_sent(const uvs__engine_t *t);
int uvs__engine_close_notify_received(const uvs__engine_t *t);
int uvs__engine_has_deferred(const uvs__engine_t *t);
SSL *uvs__engine_ssl(const uvs__engine_t *t);
size_t uvs__engine_held_bytes(const uvs__engine_t *t);
void uvs__engine_trim(uvs__engine_t *t);

/* errors */
void uvs__engine_fail(uvs__engine_t *t, int code);
int uvs__engine_error(const uvs__engine_t *t, unsigned long *codes, int max, int *ssl_err,
                      int *sys_err, long *verify_result);

#endif /* UVS_TLS_ENGINE_H */
