/*
 * batch.c: the reads of one loop turn reach the embedding in one call.
 *
 * Theory of operation
 * -------------------
 * Calling into the embedding costs the same for every call whatever it carries: cffi takes the
 * GIL, converts the arguments and builds a frame, about 2,000 instructions, as much as the
 * read itself on a small-message server. So small reads are not delivered one by one. When a
 * connection has data for the application (plaintext from TLS, or bytes from a plain read),
 * uvs__conn_deliver copies it to the end of the loop's batch: one byte area plus, per entry,
 * the connection's `data` handle and a length. Consecutive data of the same connection joins
 * one entry. The whole batch goes to the embedding in one on_batch call, which gives every
 * entry to its socket in order.
 *
 * When the batch is handed over (uvs__batch_flush):
 *   - by the loop's check handle, right after libuv's poll phase has run every read callback
 *     of the turn, and by the prepare handle, just before the loop would block (data delivered
 *     outside the poll phase, for example when resume_reading() releases plaintext the TLS
 *     engine held);
 *   - before every other call into the embedding (events, accepts, timers, wakeups, the close
 *     of an object): the embedding sees a connection's data before anything that happened
 *     after it, in the same order as if every read had been delivered at once;
 *   - when the next piece would not fit, and before a piece too big to copy cheaply
 *     (UVS__BATCH_ITEM_MAX), which then goes straight to on_read as before.
 * A batch of one piece (a single busy connection: one request per loop turn) goes to on_read
 * instead of on_batch: the same delivery with three arguments instead of six and no arrays,
 * which in CPython's cffi is about 5,000 instructions less per call.
 *
 * While the embedding handles a batch (loop->batch_busy), data that becomes available (a TLS
 * engine releasing plaintext when the application resumes reading) is delivered directly with
 * on_read: a batch is never appended to while it is being read.
 *
 * What the embedding must do in return: skip entries of sockets it closed during the same
 * batch (the C side checked only when the data arrived), and keep the data of a socket paused
 * during the batch until it resumes. Pausing stops the reading at once, so that is at most what
 * one loop turn read.
 */
#include <stdlib.h>
#include <string.h>

#include "uvs.h"

int uvs__batch_init(uvs_loop_t *loop) {
    loop->batch_buf = malloc(UVS__BATCH_BYTES);
    loop->batch_data = malloc(UVS__BATCH_ITEMS * sizeof(*loop->batch_data));
    loop->batch_lens = malloc(UVS__BATCH_ITEMS * sizeof(*loop->batch_lens));
    if (loop->batch_buf == NULL || loop->batch_data == NULL || loop->batch_lens == NULL) {
        uvs__batch_free(loop);
        return UV_ENOMEM;
    }
    return 0;
}

void uvs__batch_free(uvs_loop_t *loop) {
    free(loop->batch_buf);
    free(loop->batch_data);
    free(loop->batch_lens);
    loop->batch_buf = NULL;
    loop->batch_data = NULL;
    loop->batch_lens = NULL;
    loop->batch_n = loop->batch_len = 0;
}

void uvs__batch_flush(uvs_loop_t *loop) {
    if (loop->udp != NULL) /* datagrams first (udp.c); a branch when there are none */
        uvs__udp_batch_flush(loop);
    if (loop->batch_n == 0 || loop->batch_busy)
        return;
    loop->batch_busy = 1;
    if (loop->batch_n == 1) /* one piece: as a plain read, with half the arguments to convert */
        uvs__cb.on_read(loop->batch_data[0], loop->batch_buf, loop->batch_len);
    else
        uvs__cb.on_batch(loop->data, loop->batch_data, loop->batch_lens, loop->batch_n,
                         loop->batch_buf, loop->batch_len);
    loop->batch_busy = 0;
    loop->batch_n = loop->batch_len = 0;
}

/* Whether the application still follows c and has not closed it. */
static int uvs__conn_wants_data(const uvs_conn_t *c) {
    return c->data != NULL && !(c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED));
}

/* Hand n bytes at p, data for c, to the embedding: batched when small, else directly (after
 * the batch, so that the connection's data stays in order). */
void uvs__conn_deliver(uvs_conn_t *c, const char *p, size_t n) {
    uvs_loop_t *loop = c->loop;
    if (!uvs__conn_wants_data(c))
        return;
    if (loop->batch_busy) {
        uvs__cb.on_read(c->data, p, n);
        return;
    }
    if (c->user_flags & UVS_CF_UNBATCHED) {
        /* Data of c batched before the flag was set goes first. */
        for (size_t i = 0; i < loop->batch_n; i++) {
            if (loop->batch_data[i] == c->data) {
                uvs__batch_flush(loop);
                if (!uvs__conn_wants_data(c))
                    return;
                break;
            }
        }
        uvs__cb.on_read(c->data, p, n);
        return;
    }
    if (n > UVS__BATCH_ITEM_MAX || loop->batch_len + n > UVS__BATCH_BYTES ||
        loop->batch_n == UVS__BATCH_ITEMS) {
        uvs__batch_flush(loop);
        if (!uvs__conn_wants_data(c))
            return; /* the application ran and closed it */
        if (n > UVS__BATCH_ITEM_MAX) {
            uvs__cb.on_read(c->data, p, n);
            return;
        }
    }
    memcpy(loop->batch_buf + loop->batch_len, p, n);
    loop->batch_len += n;
    size_t last = loop->batch_n;
    if (last > 0 && loop->batch_data[last - 1] == c->data) {
        loop->batch_lens[last - 1] += n;
        return;
    }
    loop->batch_data[last] = c->data;
    loop->batch_lens[last] = n;
    loop->batch_n = last + 1;
}
