/*
 * buf.h: the growable byte buffer (buf.c), on its own so that the TLS engine (tls.c) can use
 * it without libuv's headers. Returns 0 or UVS__BUF_ENOMEM, which is -ENOMEM: the same value
 * as libuv's UV_ENOMEM on every Unix (uv/errno.h defines it so; tls_conn.c checks it at
 * compile time), so libuv-side callers pass it on unchanged.
 */
#ifndef UVS_BUF_H
#define UVS_BUF_H

#include <errno.h>
#include <stddef.h>

#define UVS__BUF_ENOMEM (-ENOMEM)

/* A growable byte buffer: [base, base+len) holds data, cap is the allocation. */
typedef struct {
    char *base;
    size_t len;
    size_t cap;
} uvs__buf_t;

int uvs__buf_reserve(uvs__buf_t *b, size_t n);
int uvs__buf_append(uvs__buf_t *b, const char *p, size_t n);
void uvs__buf_consume(uvs__buf_t *b, size_t n);
void uvs__buf_free(uvs__buf_t *b);

#endif /* UVS_BUF_H */
