/*
 * buf.c: a growable byte buffer.
 *
 * Theory of operation: a connection keeps the plaintext the application wrote and that has not
 * yet gone to the kernel (or to the TLS engine) in one of these. Appends grow it geometrically
 * (callers that know what is coming reserve it first, so a batch costs one allocation);
 * consuming from the front moves the remainder down, which is cheap because the common case
 * consumes everything. An empty buffer is kept for the next write only while it is small (at
 * most 1 KiB): small writes then cost no allocation, and an idle connection holds at most a
 * kilobyte or two here however much it sent before. It needs no libuv (see buf.h): the TLS
 * engine uses it too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

#define UVS__BUF_KEEP 1024 /* an empty buffer larger than this is released */

/* Make room for n more bytes with at most one reallocation. */
int uvs__buf_reserve(uvs__buf_t *b, size_t n) {
    if (b->len + n < b->len)
        return UVS__BUF_ENOMEM;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) {
            if (cap > SIZE_MAX / 2)
                return UVS__BUF_ENOMEM;
            cap *= 2;
        }
        char *nb = realloc(b->base, cap);
        if (nb == NULL)
            return UVS__BUF_ENOMEM;
        b->base = nb;
        b->cap = cap;
    }
    return 0;
}

int uvs__buf_append(uvs__buf_t *b, const char *p, size_t n) {
    if (n == 0)
        return 0;
    int r = uvs__buf_reserve(b, n);
    if (r != 0)
        return r;
    memcpy(b->base + b->len, p, n);
    b->len += n;
    return 0;
}

void uvs__buf_consume(uvs__buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        if (b->cap > UVS__BUF_KEEP)
            uvs__buf_free(b);
        return;
    }
    memmove(b->base, b->base + n, b->len - n);
    b->len -= n;
}

void uvs__buf_free(uvs__buf_t *b) {
    free(b->base);
    b->base = NULL;
    b->len = 0;
    b->cap = 0;
}
