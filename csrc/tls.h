/*
 * tls.h: the glue between the sans-I/O TLS engine (tls.c, header tls_engine.h) and the rest of
 * the core: what the blocking streams (tls_blocking.c) share with the glue, and the hooks
 * conn.c and server.c call on a connection with an engine attached (tls_conn.c). c->tls (uvs_tls_t) is the glue's
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
/* reads and writes with the session open after which a connection counts as busy and keeps
 * its record buffers (tls_conn.c): more than one exchange's two */
#define UVS__TLS_KEEP_STEPS 3

/* The public TLS and blocking-stream API (uvs_conn_attach_tls, uvs_stream_*, ...) is declared
 * in uvssl_api.h, which uvs.h includes. */

/* ---- glue (tls_conn.c): shared with tls_blocking.c ------------------------------------- */
int uvs__tls_uv_code(int engine_code);
int uvs__tls_export_error(const uvs__engine_t *e, unsigned long *codes, int max, int *ssl_err,
                          int *sys_err, long *verify_result);

/* ---- glue (tls_conn.c): hooks used by conn.c ------------------------------------------- */
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

/* The connection's timers and reading control that the glue uses (uvs__timer_arm, ...,
 * uvs__conn_hold_reading) live in conn.c and are declared in uvs.h. */

#endif /* UVS_TLS_H */
