/*
 * tls.h: the glue between the sans-I/O TLS engine (tls.c, header tls_engine.h) and the rest of
 * the core: the public TLS API, the blocking streams (tls_blocking.c) and the hooks tcp.c calls
 * on a connection with an engine attached (tls_conn.c). c->tls (uvs_tls_t) is the glue's
 * per-connection record (private to tls_conn.c): the engine plus the connection's handshake
 * timer and its place on the loop's list of busy engines.
 */
#ifndef UVS_TLS_H
#define UVS_TLS_H

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tls_engine.h"
#include "uvs.h"

#define UVS__TLS_HOLD_MAX (256 * 1024) /* plaintext kept after close_notify before we stop reading */

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

/* ---- glue (tls_conn.c): shared with tls_blocking.c ------------------------------------- */
int uvs__tls_uv_code(int engine_code);
int uvs__tls_export_error(const uvs__engine_t *e, unsigned long *codes, int max, int *ssl_err,
                          int *sys_err, long *verify_result);

/* ---- glue (tls_conn.c): hooks used by tcp.c --------------------------------------------- */
void uvs__tls_on_read(uvs_conn_t *c, const char *p, size_t n);
void uvs__tls_on_eof(uvs_conn_t *c);
void uvs__tls_on_connected(uvs_conn_t *c);
void uvs__tls_on_close(uvs_conn_t *c);
void uvs__tls_free(uvs_tls_t *t);
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
