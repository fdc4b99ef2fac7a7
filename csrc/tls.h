/*
 * tls.h: the sans-I/O TLS engine (tls.c) and its glue to connections (tls_conn.c).
 */
#ifndef UVS_TLS_H
#define UVS_TLS_H

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "uvs.h"

#define UVS__TLS_MAX_ERRORS 16
#define UVS__TLS_HOLD_MAX (256 * 1024) /* plaintext kept after close_notify before we stop reading */

enum {
    UVS_TLS_HANDSHAKING = 1,
    UVS_TLS_OPEN = 2,
    UVS_TLS_FAILED = 3,
    UVS_TLS_DONE = 4 /* close_notify both ways: the TCP connection may go on in plaintext */
};

/* What the engine made of the input it was given. */
enum {
    UVS__TLS_R_AGAIN = 0,      /* needs more ciphertext                         */
    UVS__TLS_R_HANDSHAKE = 1,  /* the handshake just completed                  */
    UVS__TLS_R_CLOSED = 2,     /* the peer sent close_notify                    */
    UVS__TLS_R_ERROR = 3,      /* fatal: see the captured error                 */
    UVS__TLS_R_DATA = 4        /* plaintext is in the caller's buffer           */
};

struct uvs_tls_s {
    SSL *ssl;
    BIO *bio;              /* our BIO: reads the offered input, writes to `out`  */
    int state;             /* UVS_TLS_*                                            */
    int server;
    int borrowed_ssl;      /* the embedding gave us this SSL*: never SSL_free it  */
    int close_notify_sent;
    int close_notify_received;
    int detaching;         /* close_notify exchange ends in plaintext, not close */
    int started;           /* the handshake has been kicked off                   */
    int deferred;          /* a result to report after the data that preceded it  */
    /* input: ciphertext offered for this call, plus what a previous call left over */
    const char *in_p;
    size_t in_n;
    int in_from_keep;
    uvs__buf_t in_keep;
    /* output: ciphertext waiting to be sent */
    uvs__buf_t out;
    /* the error that failed the connection */
    unsigned long err_codes[UVS__TLS_MAX_ERRORS];
    int err_count;
    int err_ssl;           /* SSL_get_error's verdict                              */
    int err_sys;           /* errno-style code for SSL_ERROR_SYSCALL, or 0         */
    long verify_result;
    /* glue state (tls_conn.c) */
    uvs_conn_t *conn;      /* the connection this engine is attached to           */
    uint64_t handshake_timeout_ms;
    uv_timer_t *htimer;
    int keep_buffers;      /* record buffers kept while busy (else RELEASE_BUFFERS)   */
    uvs__link_t busy;      /* on loop->tls_busy while OpenSSL may hold record buffers */
    uint64_t busy_at;      /* loop time (ms) of the engine's last step                */
    uint64_t busy_iteration; /* and the loop iteration                               */
};

/* A connection's OpenSSL record buffers (about 34 KiB) are released once it has been quiet for
 * this long and for this many loop iterations, instead of after every record
 * (SSL_MODE_RELEASE_BUFFERS). */
#define UVS__TLS_TRIM_MS 10
#define UVS__TLS_TRIM_ITERATIONS 2

/* ---- public TLS API (mirrored in build_ffi.py) ----------------------------------------- */
int uvs_conn_attach_tls(uvs_conn_t *c, SSL_CTX *ctx, SSL *ssl, int server, double hs_timeout,
                        const char *initial, size_t initial_len);
int uvs_conn_detach_tls(uvs_conn_t *c);
SSL *uvs_conn_ssl(uvs_conn_t *c);
int uvs_conn_tls_buffers_held(const uvs_conn_t *c);
int uvs_tls_can_free_buffers(void);
int uvs_conn_tls_state(uvs_conn_t *c);
int uvs_conn_tls_error(uvs_conn_t *c, unsigned long *codes, int max, int *ssl_err, int *sys_err,
                       long *verify_result);
int uvs_server_set_tls(uvs_server_t *s, SSL_CTX *ctx, double hs_timeout);
int uvs_ctx_use_key_file(SSL_CTX *ctx, const char *path, int filetype, const char *password);
int uvs_ctx_use_cert_file(SSL_CTX *ctx, const char *path, int filetype, const char *password);
int uvs_ctx_set_alpn_select(SSL_CTX *ctx, const unsigned char *wire, unsigned len);
int uvs_ctx_use_self_signed(SSL_CTX *ctx, const char *cn, int days, unsigned char *fp);
int uvs_ctx_set_sni(SSL_CTX *ctx, void *arg);
int uvs_ctx_load_crl_file(SSL_CTX *ctx, const char *path);
int uvs_x509_field(X509 *x, int what, char *buf, int len);

/* ---- blocking streams (tls_blocking.c) -------------------------------------------------- */
typedef struct uvs_stream_s uvs_stream_t;
#define UVS_STREAM_ETLS (-0x7000)
uvs_stream_t *uvs_stream_new(SSL_CTX *ctx, int fd, int server, int *err);
void uvs_stream_free(uvs_stream_t *s);
SSL *uvs_stream_ssl(uvs_stream_t *s);
void uvs_stream_set_timeout(uvs_stream_t *s, int timeout_ms);
int uvs_stream_handshake(uvs_stream_t *s);
long uvs_stream_read(uvs_stream_t *s, char *buf, size_t n);
long uvs_stream_write(uvs_stream_t *s, const char *buf, size_t n);
int uvs_stream_shutdown(uvs_stream_t *s);
int uvs_stream_tls_error(uvs_stream_t *s, unsigned long *codes, int max, int *ssl_err,
                         int *sys_err, long *verify_result);

/* ---- engine (tls.c): no libuv ---------------------------------------------------------- */
uvs_tls_t *uvs__tls_new(SSL_CTX *ctx, SSL *borrowed, int server, int *err);
void uvs__tls_free(uvs_tls_t *t);
void uvs__tls_offer(uvs_tls_t *t, const char *p, size_t n);
void uvs__tls_settle(uvs_tls_t *t);
int uvs__tls_step(uvs_tls_t *t, char *buf, size_t cap, size_t *got);
int uvs__tls_encrypt(uvs_tls_t *t, const char *p, size_t n, size_t *used);
int uvs__tls_close_notify(uvs_tls_t *t);
int uvs__tls_drained(const uvs_tls_t *t);
void uvs__tls_capture(uvs_tls_t *t, int ssl_err);

/* ---- glue (tls_conn.c): hooks used by tcp.c --------------------------------------------- */
void uvs__tls_on_read(uvs_conn_t *c, const char *p, size_t n);
void uvs__tls_on_eof(uvs_conn_t *c);
void uvs__tls_on_connected(uvs_conn_t *c);
void uvs__tls_on_close(uvs_conn_t *c);
void uvs__tls_flush(uvs_conn_t *c);
void uvs__tls_resume(uvs_conn_t *c);
size_t uvs__tls_pending(const uvs_conn_t *c);
size_t uvs__tls_held_bytes(const uvs_conn_t *c);
int uvs__tls_close_notify_sent(uvs_conn_t *c);
int uvs__tls_accepts_writes(const uvs_conn_t *c);

/* shared with tcp.c */
int uvs__timer_arm(uvs_conn_t *c, uv_timer_t **slot, uint64_t ms, uv_timer_cb cb);
void uvs__timer_disarm(uv_timer_t *t);
void uvs__timer_release(uvs_conn_t *c, uv_timer_t **slot);
void uvs__conn_reading_changed(uvs_conn_t *c);
void uvs__conn_hold_reading(uvs_conn_t *c);

#endif /* UVS_TLS_H */
