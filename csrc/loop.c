/*
 * loop.c: the event loop, its timers and its cross-thread wakeup.
 *
 * Theory of operation
 * -------------------
 * A uvs_loop_t wraps one uv_loop_t and belongs to the thread that runs it. uvs_loop_run() is
 * called with the GIL released; libuv calls back into this file and into conn.c, tcp.c and
 * server.c, which call the embedding through the uvs_callbacks_t table set once by
 * uvs_set_callbacks(). Those callbacks take the GIL themselves (cffi's extern "Python" does
 * that).
 *
 * Output coalescing: uvs_conn_write() only appends to a connection's buffer and puts the
 * connection on the loop's dirty list. After every call into the embedding returns, the C side
 * flushes the dirty list (uvs__flush_dirty), so all the writes one callback made leave in one
 * batch (one TLS record run, one syscall). Writes made outside any callback (before the loop
 * runs, or from the start function) are flushed by an unreferenced prepare handle, which runs
 * once per loop iteration just before libuv blocks for I/O and does not keep the loop alive.
 *
 * Input batching: small reads do not call the embedding one by one; they collect in the loop's
 * batch, which an unreferenced check handle hands over after each poll phase (see batch.c).
 * Every other call into the embedding hands the batch over first, so order is kept.
 *
 * Cross-thread calls: uvs_loop_wakeup() is the only function that may be called from another
 * thread; it is uv_async_send(), and the embedding's on_wakeup callback drains its own queue.
 * The async handle is unreferenced too: like cl-async, a loop with nothing else to do ends.
 *
 * Thread check: Python calls that run once per request (uvs_conn_write) come with the loop the
 * caller believes it is on, and are refused (UVS_EFOREIGN) unless the calling thread runs that
 * loop. The thread's loop is a thread-local pointer set by uvs_loop_bind_thread for as long as
 * the loop runs; comparing two pointers reads neither the loop nor the connection, either of
 * which the right thread may be freeing at that moment. This costs a few instructions, where
 * the same check in Python (threading.get_ident allocates an int) cost 500 per request.
 *
 * Every connection, server and timer is linked into loop->objects so that uvs_loop_close_all()
 * can close them all, for exit_event_loop() and for an application error that stops the loop.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uvs.h"

uvs_callbacks_t uvs__cb;

__thread uvs_loop_t *uvs__thread_loop;

/* Make `loop` the calling thread's loop (NULL: none) and return the one it replaces. */
uvs_loop_t *uvs_loop_bind_thread(uvs_loop_t *loop) {
    uvs_loop_t *prev = uvs__thread_loop;
    uvs__thread_loop = loop;
    return prev;
}

void uvs_set_callbacks(const uvs_callbacks_t *cb) { uvs__cb = *cb; }

const char *uvs_strerror(int err) { return uv_strerror(err); }

const char *uvs_errname(int err) { return uv_err_name(err); }

void uvs__link_add(uvs_loop_t *loop, uvs__link_t *l, int kind) {
    l->kind = kind;
    l->next = loop->objects.next;
    l->prev = &loop->objects;
    loop->objects.next->prev = l;
    loop->objects.next = l;
    uvs__kick(loop);
}

/* Put l last in the list headed by head. */
void uvs__link_append(uvs__link_t *head, uvs__link_t *l) {
    l->next = head;
    l->prev = head->prev;
    head->prev->next = l;
    head->prev = l;
}

void uvs__link_del(uvs__link_t *l) {
    if (l->next == NULL)
        return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->next = l->prev = NULL;
}

/* Hand over pending input and send what the application wrote meanwhile. */
static void uvs__settle(uvs_loop_t *loop) {
    uvs__batch_flush(loop);
    uvs__flush_dirty(loop);
}

static void uvs__flusher_cb(uv_prepare_t *h) {
    uvs_loop_t *loop = h->data;
    loop->iteration++;
    uvs__settle(loop);
}

static void uvs__batcher_cb(uv_check_t *h) { uvs__settle(h->data); }

/* The embedding has work queued (call_threadsafe) or a signal to handle. */
static void uvs__wake(uvs_loop_t *loop) {
    uvs__batch_flush(loop);
    uvs__cb.on_wakeup(loop->data);
    uvs__flush_dirty(loop);
}

static void uvs__wakeup_cb(uv_async_t *h) { uvs__wake(h->data); }

static void uvs__free_handle_cb(uv_handle_t *h) { free(h->data); }

uvs_loop_t *uvs_loop_new(void *data) {
    uvs_loop_t *loop = calloc(1, sizeof(*loop));
    if (loop == NULL)
        return NULL;
    loop->rbuf = malloc(UVS__READ_BUF_SIZE);
    if (loop->rbuf == NULL || uvs__batch_init(loop) != 0 || uv_loop_init(&loop->uv) != 0) {
        uvs__batch_free(loop);
        free(loop->rbuf);
        free(loop);
        return NULL;
    }
    loop->data = data;
    loop->objects.next = loop->objects.prev = &loop->objects;
    loop->tls_busy.next = loop->tls_busy.prev = &loop->tls_busy;
    loop->uv.data = loop;
    loop->flusher.data = loop;
    loop->batcher.data = loop;
    loop->wakeup.data = loop;
    /* uv_prepare_init and uv_check_init cannot fail; uv_async_init can (no file descriptors
     * left). */
    int r = uv_prepare_init(&loop->uv, &loop->flusher);
    if (r == 0)
        r = uv_check_init(&loop->uv, &loop->batcher);
    if (r == 0)
        r = uv_prepare_start(&loop->flusher, uvs__flusher_cb);
    if (r == 0)
        r = uv_check_start(&loop->batcher, uvs__batcher_cb);
    if (r == 0) {
        uv_unref((uv_handle_t *)&loop->flusher);
        uv_unref((uv_handle_t *)&loop->batcher);
        r = uv_async_init(&loop->uv, &loop->wakeup, uvs__wakeup_cb);
        if (r == 0) {
            uv_unref((uv_handle_t *)&loop->wakeup);
            return loop;
        }
    }
    uv_close((uv_handle_t *)&loop->flusher, NULL);
    uv_close((uv_handle_t *)&loop->batcher, NULL);
    (void)uv_run(&loop->uv, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop->uv) == 0) {
        uvs__batch_free(loop);
        free(loop->rbuf);
        free(loop);
    }
    return NULL;
}

int uvs_loop_run(uvs_loop_t *loop) {
    int r = uv_run(&loop->uv, UV_RUN_DEFAULT);
    uvs__settle(loop);
    return r;
}

void uvs_loop_stop(uvs_loop_t *loop) { uv_stop(&loop->uv); }

/* ---- embedding: a host loop (asyncio) runs the turns ------------------------------------ */

static void uvs__kick_cb(uv_async_t *h) { (void)h; /* the turn it caused is all it asks for */ }

/* From now on the host runs this loop: it watches uvs_loop_backend_fd() and calls
 * uvs_loop_run_once() when the descriptor is readable and when the timeout that call returned
 * has passed. Changes made outside a turn kick the loop (uvs__kick), which makes the descriptor
 * readable. The kick's descriptor joins the backend's set at the next turn, so the host runs
 * one turn at once. */
int uvs_loop_embed(uvs_loop_t *loop) {
    if (loop->embedded)
        return UV_EALREADY;
    int r = uv_async_init(&loop->uv, &loop->kick, uvs__kick_cb);
    if (r != 0) {
        loop->kick.loop = NULL;
        return r;
    }
    uv_unref((uv_handle_t *)&loop->kick);
    loop->embedded = 1;
    return 0;
}

int uvs_loop_backend_fd(uvs_loop_t *loop) { return uv_backend_fd(&loop->uv); }

/* One turn that does not block: due timers, ready descriptors, closes; then what the turn's
 * callbacks queued is flushed. Returns the milliseconds until the loop next needs a turn with
 * no descriptor ready (a timer), 0 for at once (closes or a stop pending), -1 for never. */
int uvs_loop_run_once(uvs_loop_t *loop) {
    loop->in_run = 1;
    (void)uv_run(&loop->uv, UV_RUN_NOWAIT);
    uvs__settle(loop);
    loop->in_run = 0;
    return uv_backend_timeout(&loop->uv);
}

int uvs_loop_wakeup(uvs_loop_t *loop) { return uv_async_send(&loop->wakeup); }

static void uvs__sigwatch_cb(uv_poll_t *h, int status, int events) {
    (void)status;
    (void)events;
    uvs__wake(h->data);
}

/* Watch fd (the embedding's signal wakeup descriptor): when it becomes readable the embedding
 * gets on_wakeup, which is its chance to run signal handlers while the loop would otherwise
 * sleep in the kernel. The embedding drains the descriptor. */
int uvs_loop_watch_fd(uvs_loop_t *loop, int fd) {
    if (loop->sigwatch_on)
        return UV_EALREADY;
    int r = uv_poll_init(&loop->uv, &loop->sigwatch, fd);
    if (r != 0)
        return r;
    loop->sigwatch.data = loop;
    loop->sigwatch_on = 1;
    r = uv_poll_start(&loop->sigwatch, UV_READABLE, uvs__sigwatch_cb);
    uv_unref((uv_handle_t *)&loop->sigwatch);
    return r;
}

/* While the embedding has signal handlers of its own (signal_handler), the signal watch keeps
 * the loop alive, as a server would: a loop that waits only for a signal must not end. */
int uvs_loop_ref_sigwatch(uvs_loop_t *loop, int on) {
    if (!loop->sigwatch_on)
        return UV_EINVAL;
    if (on)
        uv_ref((uv_handle_t *)&loop->sigwatch);
    else
        uv_unref((uv_handle_t *)&loop->sigwatch);
    return 0;
}

double uvs_loop_now(uvs_loop_t *loop) { return (double)uv_now(&loop->uv) / 1000.0; }

void uvs_loop_close_all(uvs_loop_t *loop) {
    if (loop->sigwatch_on) /* signal handlers no longer keep the loop alive */
        uv_unref((uv_handle_t *)&loop->sigwatch);
    /* Closing may unlink the current object (timers unlink at once), so step carefully. */
    uvs__link_t *l = loop->objects.next;
    while (l != &loop->objects) {
        uvs__link_t *next = l->next;
        switch (l->kind) {
        case UVS__OBJ_CONN:
            (void)uvs_conn_close((uvs_conn_t *)((char *)l - offsetof(uvs_conn_t, link)), 1);
            break;
        case UVS__OBJ_SERVER:
            uvs_server_close((uvs_server_t *)((char *)l - offsetof(uvs_server_t, link)));
            break;
        case UVS__OBJ_TIMER:
            uvs_timer_close((uvs_timer_t *)((char *)l - offsetof(uvs_timer_t, link)));
            break;
        case UVS__OBJ_UDP:
            (void)uvs_udp_close((uvs_udp_t *)((char *)l - offsetof(uvs_udp_t, link)), 1);
            break;
        default:
            break;
        }
        l = next;
    }
}

int uvs_loop_free(uvs_loop_t *loop) {
    loop->embedded = 0; /* the turns below are this function's own */
    /* Only the internal handles may remain: anything else means close_all was not run. */
    uvs_loop_close_all(loop);
    (void)uv_run(&loop->uv, UV_RUN_DEFAULT); /* every CLOSED event took the batch along */
    uv_close((uv_handle_t *)&loop->flusher, NULL);
    uv_close((uv_handle_t *)&loop->batcher, NULL);
    uv_close((uv_handle_t *)&loop->wakeup, NULL);
    if (loop->sigwatch_on)
        uv_close((uv_handle_t *)&loop->sigwatch, NULL);
    if (loop->tls_trim_on)
        uv_close((uv_handle_t *)&loop->tls_trim, NULL);
    if (loop->kick.loop != NULL) /* uvs_loop_embed initialised it */
        uv_close((uv_handle_t *)&loop->kick, NULL);
    (void)uv_run(&loop->uv, UV_RUN_DEFAULT);
    int r = uv_loop_close(&loop->uv);
    if (r != 0)
        return r; /* leak rather than free memory libuv still points at */
    if (loop->tls_trim_on)
        (void)close(loop->tls_trim_fd); /* its watcher is closed: nothing watches it any more */
    uvs__batch_free(loop);
    uvs__udp_loop_free(loop);
    free(loop->rbuf);
    free(loop->pbuf);
    free(loop);
    return 0;
}

/* ---- output coalescing ---------------------------------------------------------------- */

void uvs__mark_dirty(uvs_conn_t *c) {
    if (c->state & UVS__C_DIRTY)
        return;
    uvs__kick(c->loop);
    c->state |= UVS__C_DIRTY;
    c->dirty_next = c->loop->dirty;
    c->loop->dirty = c;
}

void uvs__flush_dirty(uvs_loop_t *loop) {
    if (loop->flushing)
        return;
    if (loop->udp != NULL) /* datagram sockets' queued sends (udp.c) */
        uvs__udp_flush_dirty(loop);
    loop->flushing = 1;
    while (loop->dirty != NULL) {
        uvs_conn_t *c = loop->dirty;
        loop->dirty = c->dirty_next;
        c->dirty_next = NULL;
        c->state &= ~(unsigned)UVS__C_DIRTY;
        uvs__conn_flush(c);
    }
    loop->flushing = 0;
}

/* ---- timers --------------------------------------------------------------------------- */

static void uvs__timer_cb(uv_timer_t *h) {
    uvs_timer_t *t = h->data;
    uvs_loop_t *loop = t->loop;
    uvs__batch_flush(loop);
    uvs__cb.on_timer(t->data);
    uvs__flush_dirty(loop);
}

static void uvs__timer_close_cb(uv_handle_t *h) {
    uvs_timer_t *t = h->data;
    uvs__batch_flush(t->loop);
    uvs__cb.on_event(t->data, UVS_EV_CLOSED, 0, 0);
    free(t);
}

uvs_timer_t *uvs_timer_new(uvs_loop_t *loop, void *data, uint64_t timeout_ms, uint64_t repeat_ms,
                           int *err) {
    uvs_timer_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    int r = uv_timer_init(&loop->uv, &t->t);
    if (r != 0) {
        free(t);
        *err = r;
        return NULL;
    }
    t->t.data = t;
    t->loop = loop;
    t->data = data;
    r = uv_timer_start(&t->t, uvs__timer_cb, timeout_ms, repeat_ms);
    if (r != 0) {
        /* the handle is initialised: it must go through uv_close, without telling anyone */
        t->t.data = t;
        uv_close((uv_handle_t *)&t->t, uvs__free_handle_cb);
        *err = r;
        return NULL;
    }
    uvs__link_add(loop, &t->link, UVS__OBJ_TIMER);
    *err = 0;
    return t;
}

void uvs_timer_close(uvs_timer_t *t) {
    if (t->closing)
        return;
    t->closing = 1;
    uvs__link_del(&t->link);
    uvs__kick(t->loop);
    (void)uv_timer_stop(&t->t);
    uv_close((uv_handle_t *)&t->t, uvs__timer_close_cb);
}
