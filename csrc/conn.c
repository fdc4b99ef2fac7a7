/*
 * conn.c: a connection's life on libuv, whatever made it: reading, writing, flow control,
 * timeouts and closing. How a connection comes to exist is elsewhere: tcp.c connects and adopts
 * sockets, server.c accepts them.
 *
 * Theory of operation
 * -------------------
 * A uvs_conn_t is one TCP connection: a uv_tcp_t plus an output buffer, timers and, when TLS
 * is on, a pointer to a TLS engine (tls.c). The engine is attached to the same object in place,
 * which is what makes STARTTLS and detaching possible: the connection never changes identity.
 *
 * Reading. Plain connections read into the loop's shared buffer (libuv reads one stream
 * at a time and we consume the bytes before returning, so one buffer serves every connection)
 * and pass them to uvs__conn_deliver, which batches small pieces for one call into the
 * embedding per loop turn (batch.c); a read offers 64 KiB, or all 256 KiB while reads keep
 * filling what they are offered. On TLS connections the same bytes are ciphertext: the engine
 * reads them from that buffer in place and delivers the plaintext instead.
 *
 * Writing. uvs_conn_write() appends to `out` and marks the connection dirty; the loop flushes
 * dirty connections after the embedding's callback returns (see loop.c). Large writes with
 * nothing queued ahead skip `out` (UVS__DIRECT_WRITE_MIN). A flush first tries
 * uv_try_write() and queues only what the kernel did not take, handing the buffer itself to the
 * uv_write request so that nothing is copied twice. `inflight` counts the queued bytes;
 * write_buffer_size = out + inflight (+ ciphertext the TLS engine holds).
 *
 * Flow control. When the write buffer grows past `high` the connection remembers it; when a
 * write completes and the buffer is at or below `low`, UVS_EV_DRAIN is delivered.
 *
 * Closing. A forced close issues uv_close at once (queued writes are cancelled). A graceful
 * close waits until every queued byte has reached the kernel (and, for TLS, close_notify has
 * gone out), reading meanwhile and dropping what it reads: bytes left unread at the close
 * would make it a reset, which discards what the kernel still had to send. Shutdown ("write"
 * half-close) waits the same way, then issues uv_shutdown. The struct is freed only after the
 * close callback AND every outstanding request and timer close have come back
 * (pending_reqs == 0); UVS_EV_CLOSED is the last event.
 * An embedding that closes with uvs_conn_release instead is done with the connection: when
 * nothing it wrote is left to flush (so no failure or notification could still concern it),
 * the connection forgets the embedding's data at once and closes on its own, telling nobody.
 * That spares a server one call into the embedding per connection, the UVS_EV_CLOSED.
 *
 * Events. Every event goes through uvs__emit, which drops events for connections the embedding
 * no longer follows (data == NULL) or that it has closed. A TLS server's connection that has
 * not been announced yet (data == NULL, `acceptor` set; see server.c) is announced first, so
 * that the embedding sees the event on a socket it knows.
 */
#include <stdlib.h>
#include <string.h>

#include "uvs.h"
#include "tls.h"

/* The public error buffer size (uvssl_api.h) is the engine's: fail the build if they part. */
typedef char uvs__tls_max_errors_check[UVS_TLS_MAX_ERRORS == UVS__TLS_MAX_ERRORS ? 1 : -1];

typedef struct {
    uv_write_t req;
    uvs_conn_t *conn;
    char *alloc;     /* what to free when done */
    size_t len;      /* bytes this request carries */
} uvs__wreq_t;

/* ---- events ------------------------------------------------------------------------------- */

void uvs__emit(uvs_conn_t *c, int kind, int status, int action) {
    if (c->data == NULL &&
        (c->acceptor == NULL || !uvs__conn_announce(c, UVS_ACCEPT_FAILED, NULL, 0)))
        return;
    uvs__batch_flush(c->loop); /* the data that came before the event goes first */
    uvs__cb.on_event(c->data, kind, status, action);
}

void uvs__conn_fail(uvs_conn_t *c, int kind, int status, int action) {
    /* the data that came before the failure reaches the application while it can still answer */
    uvs__batch_flush(c->loop);
    if (c->state & UVS__C_CLOSING)
        return;
    if (c->acceptor != NULL && !uvs__conn_announce(c, UVS_ACCEPT_FAILED, NULL, 0)) {
        if (!(c->state & UVS__C_CLOSING)) /* taken and closed by connect_cb: it failed anyway */
            uvs__conn_close_now(c);
        return; /* nobody holds it: nobody is told */
    }
    uvs__conn_close_now(c);
    uvs__emit(c, kind, status, action);
}

/* ---- lifetime ----------------------------------------------------------------------------- */

void uvs__conn_maybe_free(uvs_conn_t *c) {
    if (!(c->state & UVS__C_CLOSED) || c->pending_reqs > 0)
        return;
    uvs__emit(c, UVS_EV_CLOSED, 0, 0);
    if (c->tls != NULL)
        uvs__tls_free(c->tls);
    if (c->proxy != NULL)
        uvs__proxy_free(c);
    if (c->ai_head != NULL)
        uv_freeaddrinfo(c->ai_head);
    uvs__buf_free(&c->out);
    free(c);
}

/* One of c's requests completed. Returns 1 when c is closing: the caller must then leave it
 * alone (it may have been freed). */
int uvs__req_done(uvs_conn_t *c) {
    c->pending_reqs--;
    if (c->state & UVS__C_CLOSING) {
        uvs__conn_maybe_free(c);
        return 1;
    }
    return 0;
}

static void uvs__timer_closed_cb(uv_handle_t *h) {
    uvs_conn_t *c = h->data;
    free(h);
    c->pending_reqs--;
    uvs__conn_maybe_free(c);
}

/* Stop and release a lazily allocated per-connection timer. */
void uvs__timer_release(uvs_conn_t *c, uv_timer_t **slot) {
    if (*slot == NULL)
        return;
    (void)uv_timer_stop(*slot);
    uv_close((uv_handle_t *)*slot, uvs__timer_closed_cb);
    c->pending_reqs++;
    *slot = NULL;
}

/* (Re)start a per-connection timer, allocating it on first use. Returns 0 or a uv error. */
int uvs__timer_arm(uvs_conn_t *c, uv_timer_t **slot, uint64_t ms, uv_timer_cb cb) {
    if (*slot == NULL) {
        uv_timer_t *t = malloc(sizeof(*t));
        if (t == NULL)
            return UV_ENOMEM;
        int r = uv_timer_init(&c->loop->uv, t);
        if (r != 0) {
            free(t);
            return r;
        }
        t->data = c;
        *slot = t;
    }
    uvs__kick(c->loop);
    return uv_timer_start(*slot, cb, ms, 0);
}

void uvs__timer_disarm(uv_timer_t *t) {
    if (t != NULL)
        (void)uv_timer_stop(t);
}

static void uvs__conn_closed_cb(uv_handle_t *h) {
    uvs_conn_t *c = h->data;
    c->state |= UVS__C_CLOSED;
    uvs__conn_maybe_free(c);
}

void uvs__conn_close_now(uvs_conn_t *c) {
    if (c->state & UVS__C_CLOSING)
        return;
    c->state |= UVS__C_CLOSING;
    c->state &= ~(unsigned)UVS__C_READING;
    uvs__link_del(&c->link);
    uvs__kick(c->loop);
    if (c->acceptor != NULL) /* never announced: nobody is told */
        uvs__server_forget(c);
    if (c->addrs.local.sa.sa_family == AF_UNSPEC && (c->state & UVS__C_CONNECTED))
        (void)uvs__tcp_fetch_address(c, 0); /* this end's address, kept for after the close */
    uvs__timer_release(c, &c->rtimer);
    uvs__timer_release(c, &c->wtimer);
    if (c->tls != NULL)
        uvs__tls_on_close(c);
    /* While a reconnect is in progress the handle is already closing; its callback sees
     * UVS__C_CLOSING and finishes the job. */
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, uvs__conn_closed_cb);
}

uvs_conn_t *uvs__conn_new(uvs_loop_t *loop, void *data, int *err) {
    uvs_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    int r = uv_tcp_init(&loop->uv, &c->tcp);
    if (r != 0) {
        free(c);
        *err = r;
        return NULL;
    }
    c->tcp.data = c;
    c->loop = loop;
    c->data = data;
    c->high = 64 * 1024;
    c->low = 16 * 1024;
    uvs__link_add(loop, &c->link, UVS__OBJ_CONN);
    *err = 0;
    return c;
}

/* ---- timers ------------------------------------------------------------------------------- */

static void uvs__read_timeout_cb(uv_timer_t *t) {
    uvs_conn_t *c = t->data;
    uvs__conn_fail(c, UVS_EV_READ_TIMEOUT, UV_ETIMEDOUT, UVS_ACT_READ);
    uvs__flush_dirty(c->loop);
}

static void uvs__write_timeout_cb(uv_timer_t *t) {
    uvs_conn_t *c = t->data;
    uvs__conn_fail(c, UVS_EV_WRITE_TIMEOUT, UV_ETIMEDOUT, UVS_ACT_WRITE);
    uvs__flush_dirty(c->loop);
}

static void uvs__rearm_read_timer(uvs_conn_t *c) {
    if (c->read_timeout_ms == 0 || !(c->state & UVS__C_READING))
        return;
    int r = uvs__timer_arm(c, &c->rtimer, c->read_timeout_ms, uvs__read_timeout_cb);
    if (r != 0)
        uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_READ);
}

static void uvs__rearm_write_timer(uvs_conn_t *c) {
    if (c->write_timeout_ms == 0 || c->inflight == 0)
        return;
    int r = uvs__timer_arm(c, &c->wtimer, c->write_timeout_ms, uvs__write_timeout_cb);
    if (r != 0)
        uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_WRITE);
}

/* ---- reading ------------------------------------------------------------------------------ */

static void uvs__alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    uvs_conn_t *c = h->data;
    (void)suggested;
    buf->base = c->loop->rbuf;
    /* Bulk transfers read 256 KiB at a time (fewer reads and calls into Python); small-message
     * traffic is offered 64 KiB, as before 256 KiB reads existed (whether the bigger offer
     * costs it anything was within this machine's noise). */
    buf->len = (c->state & UVS__C_BIG_READS) ? UVS__READ_BUF_SIZE : UVS__READ_SMALL;
}

/* The peer's FIN. The data before it reaches the application first, while the connection is
 * still as it was. */
static void uvs__conn_eof(uvs_conn_t *c) {
    uvs__batch_flush(c->loop);
    if (c->state & UVS__C_CLOSING)
        return;
    if (c->state & UVS__C_PROXY_WAIT) {
        uvs__proxy_on_eof(c); /* a PROXY header cut short */
        return;
    }
    c->state |= UVS__C_EOF;
    (void)uv_read_stop((uv_stream_t *)&c->tcp);
    c->state &= ~(unsigned)UVS__C_READING;
    uvs__timer_disarm(c->rtimer);
    if (c->tls != NULL)
        uvs__tls_on_eof(c);
    else
        uvs__emit(c, UVS_EV_EOF, 0, UVS_ACT_READ);
}

static void uvs__read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    uvs_conn_t *c = s->data;
    uvs_loop_t *loop = c->loop;
    if (nread == 0 || (c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED))) {
        /* a graceful close drops what it reads (uvs__conn_discard_reads) until the peer's
         * EOF or an error, which end the reading; a failed flush reports the error itself */
        if (nread < 0 && !(c->state & UVS__C_CLOSING)) {
            (void)uv_read_stop(s);
            c->state &= ~(unsigned)UVS__C_READING;
        }
        return;
    }
    if (nread > 0) {
        if ((size_t)nread == buf->len)
            c->state |= UVS__C_BIG_READS;
        else if (nread < UVS__READ_SMALL / 4)
            c->state &= ~(unsigned)UVS__C_BIG_READS;
        uvs__rearm_read_timer(c);
        if (c->state & UVS__C_PROXY_WAIT)
            uvs__proxy_on_read(c, buf->base, (size_t)nread); /* a PROXY header first */
        else if (c->tls != NULL)
            uvs__tls_on_read(c, buf->base, (size_t)nread);
        else
            uvs__conn_deliver(c, buf->base, (size_t)nread);
    } else if (nread == UV_EOF) {
        uvs__conn_eof(c);
    } else {
        uvs__conn_fail(c, UVS_EV_ERROR, (int)nread, UVS_ACT_READ);
    }
    uvs__flush_dirty(loop);
}

void uvs__conn_start_reading(uvs_conn_t *c) {
    if (c->state & (UVS__C_READING | UVS__C_PAUSED | UVS__C_EOF | UVS__C_CLOSING |
                    UVS__C_CLOSE_WANTED))
        return;
    if (!(c->state & UVS__C_CONNECTED))
        return;
    uvs__kick(c->loop);
    int r = uv_read_start((uv_stream_t *)&c->tcp, uvs__alloc_cb, uvs__read_cb);
    if (r != 0) {
        uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_READ);
        return;
    }
    c->state |= UVS__C_READING;
    uvs__rearm_read_timer(c);
}

static void uvs__conn_stop_reading(uvs_conn_t *c) {
    if (c->state & UVS__C_READING) {
        (void)uv_read_stop((uv_stream_t *)&c->tcp);
        c->state &= ~(unsigned)UVS__C_READING;
    }
    uvs__timer_disarm(c->rtimer);
}

int uvs_conn_pause(uvs_conn_t *c) {
    if (c->state & UVS__C_CLOSING)
        return UV_EBADF;
    c->state |= UVS__C_PAUSED;
    uvs__conn_stop_reading(c);
    return 0;
}

int uvs_conn_resume(uvs_conn_t *c) {
    if (c->state & UVS__C_CLOSING)
        return UV_EBADF;
    if (!(c->state & UVS__C_PAUSED))
        return 0;
    c->state &= ~(unsigned)UVS__C_PAUSED;
    uvs__conn_start_reading(c);
    /* plaintext the engine still holds (it stops delivering while paused) goes out now */
    if (c->tls != NULL && !(c->state & UVS__C_CLOSING))
        uvs__tls_resume(c);
    return 0;
}

/* Called by the engine after it changed what it wants from the socket (attach/detach). */
void uvs__conn_reading_changed(uvs_conn_t *c) { uvs__conn_start_reading(c); }

/* Stop reading for the engine's own reasons (not the application's pause). */
void uvs__conn_hold_reading(uvs_conn_t *c) { uvs__conn_stop_reading(c); }

/* ---- writing ------------------------------------------------------------------------------ */

/* A write failed with r. Once a TLS session has ended both ways (the peer's close_notify came
 * and ours answered it), the peer has said it reads nothing more, and one that closed its
 * socket right after its close_notify answers what we still send (our close_notify, often)
 * with a reset. That is the end of a clean session, not a failure: the connection closes
 * without an error event. Anything else is a failure. */
static void uvs__write_failed(uvs_conn_t *c, int r) {
    if (c->tls != NULL && !uvs__tls_accepts_writes(c) && (r == UV_EPIPE || r == UV_ECONNRESET)) {
        /* a server's connection whose handshake ended just before the session did is still
         * handed over first: the application sees it established, then the clean close */
        if (c->acceptor != NULL && !uvs__conn_announce(c, UVS_ACCEPT_FAILED, NULL, 0) &&
            (c->state & UVS__C_CLOSING))
            return;
        uvs__conn_close_now(c);
        return;
    }
    uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_WRITE);
}

static void uvs__write_cb(uv_write_t *req, int status) {
    uvs__wreq_t *w = (uvs__wreq_t *)req;
    uvs_conn_t *c = w->conn;
    c->inflight -= w->len;
    free(w->alloc);
    free(w);
    if (uvs__req_done(c))
        return;
    if (status < 0) {
        uvs__write_failed(c, status);
        uvs__flush_dirty(c->loop);
        return;
    }
    if (c->inflight > 0)
        uvs__rearm_write_timer(c);
    uvs__conn_maybe_finish(c);
    uvs__flush_dirty(c->loop);
}

/* Queue n bytes at p, which lie in the heap block `alloc` that this function now owns (freed
 * once the bytes are out). Returns 0 or a uv error (the connection has then failed). */
static int uvs__queue_write(uvs_conn_t *c, char *alloc, const char *p, size_t n) {
    /* uv_buf_t lengths are 32-bit: a huge batch goes out as several buffers of one request */
    size_t nbufs = (n + UVS__MAX_IOV - 1) / UVS__MAX_IOV;
    uv_buf_t small[4];
    uv_buf_t *bufs = nbufs <= 4 ? small : malloc(nbufs * sizeof(*bufs));
    uvs__wreq_t *w = malloc(sizeof(*w));
    if (w == NULL || bufs == NULL) {
        free(w);
        if (bufs != small)
            free(bufs);
        free(alloc);
        uvs__conn_fail(c, UVS_EV_ERROR, UV_ENOMEM, UVS_ACT_WRITE);
        return UV_ENOMEM;
    }
    for (size_t i = 0; i < nbufs; i++) {
        size_t off = i * UVS__MAX_IOV;
        size_t len = n - off < UVS__MAX_IOV ? n - off : UVS__MAX_IOV;
        bufs[i] = uv_buf_init((char *)p + off, (unsigned)len);
    }
    w->conn = c;
    w->alloc = alloc;
    w->len = n;
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, (unsigned)nbufs, uvs__write_cb);
    if (bufs != small)
        free(bufs); /* libuv keeps its own copy of the array */
    if (r != 0) {
        free(alloc);
        free(w);
        uvs__write_failed(c, r);
        return r;
    }
    c->pending_reqs++;
    c->inflight += n;
    if (c->wtimer == NULL || !uv_is_active((uv_handle_t *)c->wtimer))
        uvs__rearm_write_timer(c);
    return 0;
}

/* Send the bytes in b and leave b empty. In the common case the kernel takes them all and b
 * keeps its memory for the next batch if small (see buf.c); otherwise the rest goes to
 * a uv_write request that takes the buffer over. Returns 0 or a uv error (then the
 * connection has failed). */
int uvs__conn_send_buf(uvs_conn_t *c, uvs__buf_t *b) {
    size_t len = b->len;
    if (len == 0)
        return 0;
    if (c->inflight == 0) {
        uv_buf_t ub = uv_buf_init(b->base, (unsigned)(len < UVS__MAX_IOV ? len : UVS__MAX_IOV));
        int r = uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
        if (r >= 0 && (size_t)r == len) {
            uvs__buf_consume(b, len);
            return 0;
        }
        if (r < 0 && r != UV_EAGAIN && r != UV_ENOSYS) {
            uvs__buf_consume(b, len);
            uvs__write_failed(c, r);
            return r;
        }
        if (r > 0)
            uvs__buf_consume(b, (size_t)r); /* keeps the tail at the front */
    }
    char *base = b->base;
    size_t n = b->len;
    b->base = NULL;
    b->len = b->cap = 0;
    return uvs__queue_write(c, base, base, n);
}

void uvs__conn_flush(uvs_conn_t *c) {
    if ((c->state & UVS__C_CLOSING) || !(c->state & UVS__C_CONNECTED))
        return;
    if (c->tls != NULL) {
        uvs__tls_flush(c);
    } else if (c->out.len > 0) {
        if (uvs__conn_send_buf(c, &c->out) != 0)
            return;
    }
    if (!(c->state & UVS__C_CLOSING))
        uvs__conn_maybe_finish(c);
}

static void uvs__shutdown_cb(uv_shutdown_t *req, int status) {
    uvs_conn_t *c = req->data;
    free(req);
    if (uvs__req_done(c))
        return;
    if (status < 0 && status != UV_ECANCELED)
        uvs__conn_fail(c, UVS_EV_ERROR, status, UVS_ACT_SHUTDOWN);
    uvs__flush_dirty(c->loop);
}

void uvs__conn_maybe_finish(uvs_conn_t *c) {
    size_t pending = uvs_conn_write_buffer_size(c);
    if ((c->state & UVS__C_ABOVE_HIGH) && pending <= c->low) {
        c->state &= ~(unsigned)UVS__C_ABOVE_HIGH;
        if (c->user_flags & UVS_CF_NOTIFY_DRAIN)
            uvs__emit(c, UVS_EV_DRAIN, 0, 0);
        if (c->state & UVS__C_CLOSING)
            return;
    }
    if (pending > 0)
        return;
    uvs__timer_disarm(c->wtimer);
    if ((c->user_flags & UVS_CF_NOTIFY_WRITTEN) && !(c->state & UVS__C_WRITTEN_TOLD)) {
        c->state |= UVS__C_WRITTEN_TOLD;
        uvs__emit(c, UVS_EV_WRITTEN, 0, 0);
        if (c->state & UVS__C_CLOSING)
            return;
        if (uvs_conn_write_buffer_size(c) > 0)
            return; /* the callback wrote more: finish when that is out */
    }
    if (c->tls != NULL && (c->state & (UVS__C_SHUT_WANTED | UVS__C_CLOSE_WANTED)) &&
        !uvs__tls_close_notify_sent(c))
        return; /* the engine queues close_notify and calls back into flush */
    if ((c->state & UVS__C_CLOSE_WANTED)) {
        uvs__conn_close_now(c);
        return;
    }
    if ((c->state & UVS__C_SHUT_WANTED) && !(c->state & UVS__C_SHUT_SENT)) {
        uv_shutdown_t *req = malloc(sizeof(*req));
        if (req == NULL) {
            uvs__conn_fail(c, UVS_EV_ERROR, UV_ENOMEM, UVS_ACT_SHUTDOWN);
            return;
        }
        req->data = c;
        int r = uv_shutdown(req, (uv_stream_t *)&c->tcp, uvs__shutdown_cb);
        if (r != 0) {
            free(req);
            uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_SHUTDOWN);
            return;
        }
        c->pending_reqs++;
        c->state |= UVS__C_SHUT_SENT;
    }
}

/* Plain TCP, large write, nothing queued: give the kernel what it takes straight from the
 * caller's memory; only the rest is copied. Returns the bytes written, or a uv error. */
static int uvs__write_direct(uvs_conn_t *c, const char *buf, size_t len) {
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r >= 0 || r == UV_EAGAIN || r == UV_ENOSYS)
        return r < 0 ? 0 : r;
    uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_WRITE);
    return r;
}

int uvs_conn_write(uvs_loop_t *loop, uvs_conn_t *c, const char *buf, size_t len) {
    if (loop != uvs__thread_loop || loop == NULL)
        return UVS_EFOREIGN; /* c is not touched: its own thread may be freeing it */
    if (c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED | UVS__C_SHUT_WANTED))
        return UV_EPIPE;
    if (c->tls != NULL && !uvs__tls_accepts_writes(c))
        return UV_ESHUTDOWN; /* close_notify went both ways (see tls_conn.c) */
    int encrypted = 0; /* the TLS direct path took all of it */
    if (len >= UVS__DIRECT_WRITE_MIN && c->out.len == 0 && (c->state & UVS__C_CONNECTED) &&
        len <= UVS__MAX_IOV) {
        if (c->tls != NULL) {
            encrypted = uvs__tls_write_direct(c, buf, len);
            if (encrypted < 0)
                return UV_EPIPE; /* the connection failed; its event says why */
        } else if (c->inflight == 0) {
            int n = uvs__write_direct(c, buf, len);
            if (n < 0)
                return UV_EPIPE;
            buf += n;
            len -= (size_t)n;
        }
    }
    if (!encrypted) {
        int r = uvs__buf_append(&c->out, buf, len);
        if (r != 0)
            return r;
    }
    c->state &= ~(unsigned)UVS__C_WRITTEN_TOLD;
    uvs__mark_dirty(c);
    if (uvs_conn_write_buffer_size(c) > c->high) {
        c->state |= UVS__C_ABOVE_HIGH;
        return 1;
    }
    return 0;
}

size_t uvs_conn_write_buffer_size(const uvs_conn_t *c) {
    size_t n = c->out.len + c->inflight;
    if (c->tls != NULL)
        n += uvs__tls_pending(c);
    return n;
}

/* Heap memory this connection holds besides its fixed structures: buffer capacity and lazily
 * created timers. An idle connection should hold almost none (see buf.c's keep rule). */
size_t uvs_conn_held_bytes(const uvs_conn_t *c) {
    size_t n = c->out.cap;
    if (c->rtimer != NULL)
        n += sizeof(*c->rtimer);
    if (c->wtimer != NULL)
        n += sizeof(*c->wtimer);
    if (c->tls != NULL)
        n += uvs__tls_held_bytes(c);
    return n;
}

int uvs_conn_set_limits(uvs_conn_t *c, size_t high, size_t low) {
    if (low > high)
        return UV_EINVAL;
    c->high = high;
    c->low = low;
    if (c->state & UVS__C_ABOVE_HIGH)
        uvs__mark_dirty(c); /* re-evaluate drain against the new low mark */
    else if (uvs_conn_write_buffer_size(c) > high)
        c->state |= UVS__C_ABOVE_HIGH;
    return 0;
}

void uvs_conn_set_flags(uvs_conn_t *c, int flags) { c->user_flags = flags; }

int uvs_conn_set_timeouts(uvs_conn_t *c, double read_s, double write_s) {
    if (read_s < 0 || write_s < 0)
        return UV_EINVAL;
    c->read_timeout_ms = (uint64_t)(read_s * 1000.0 + 0.5);
    c->write_timeout_ms = (uint64_t)(write_s * 1000.0 + 0.5);
    if (read_s > 0 && c->read_timeout_ms == 0)
        c->read_timeout_ms = 1;
    if (write_s > 0 && c->write_timeout_ms == 0)
        c->write_timeout_ms = 1;
    if (c->read_timeout_ms == 0)
        uvs__timer_disarm(c->rtimer);
    else
        uvs__rearm_read_timer(c);
    if (c->write_timeout_ms == 0)
        uvs__timer_disarm(c->wtimer);
    else
        uvs__rearm_write_timer(c);
    return 0;
}

/* ---- closing ------------------------------------------------------------------------------ */

/* A graceful close goes on reading, and drops what it reads, until the socket closes: bytes
 * the peer sends meanwhile (a request, a TLS session ticket) left unread would turn the close
 * into a reset, and the peer would lose what of ours was still on its way to it. */
static void uvs__conn_discard_reads(uvs_conn_t *c) {
    uvs__timer_disarm(c->rtimer);
    if ((c->state & (UVS__C_READING | UVS__C_EOF)) || !(c->state & UVS__C_CONNECTED))
        return;
    /* a paused connection (or a proxy header awaited) reads again; should libuv refuse, the
     * close goes on without reading, as it would have anyway */
    if (uv_read_start((uv_stream_t *)&c->tcp, uvs__alloc_cb, uvs__read_cb) == 0)
        c->state |= UVS__C_READING;
}

int uvs_conn_close(uvs_conn_t *c, int force) {
    if (c->state & UVS__C_CLOSING)
        return 0;
    if (force || !(c->state & UVS__C_CONNECTED)) {
        uvs__conn_close_now(c);
        return 0;
    }
    c->state |= UVS__C_CLOSE_WANTED;
    uvs__conn_discard_reads(c);
    uvs__mark_dirty(c);
    return 0;
}

/* Close c for an embedding that is done with it: as uvs_conn_close, and, when nothing it wrote
 * is left to flush and no write or drain notification is due, c forgets the embedding at once
 * and 1 is returned: no event follows, not even UVS_EV_CLOSED, and the embedding must not use
 * c again. Otherwise 0: events go on (a flush can still fail) until UVS_EV_CLOSED. */
int uvs_conn_release(uvs_conn_t *c, int force) {
    (void)uvs_conn_close(c, force);
    /* A TLS session that ended both ways (the peer's close_notify came, ours answered it) has
     * nothing left to tell the embedding: what may still be queued is our close_notify, which
     * a peer that already closed its socket answers with a reset. That is not a failure. */
    int session_over = c->tls != NULL && !uvs__tls_accepts_writes(c) && c->out.len == 0;
    if (!(c->state & UVS__C_CLOSING) && !session_over &&
        (uvs_conn_write_buffer_size(c) > 0 || (c->state & UVS__C_ABOVE_HIGH) ||
         ((c->user_flags & UVS_CF_NOTIFY_WRITTEN) && !(c->state & UVS__C_WRITTEN_TOLD))))
        return 0;
    c->data = NULL;
    return 1;
}

int uvs_conn_shutdown(uvs_conn_t *c) {
    if (c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED))
        return UV_EBADF;
    c->state |= UVS__C_SHUT_WANTED;
    uvs__mark_dirty(c);
    return 0;
}

/* ---- accessors ---------------------------------------------------------------------------- */

void uvs_conn_set_data(uvs_conn_t *c, void *data) { c->data = data; }

int uvs_conn_fileno(uvs_conn_t *c) {
    uv_os_fd_t fd;
    if (c->state & UVS__C_CLOSING)
        return UV_EBADF;
    int r = uv_fileno((uv_handle_t *)&c->tcp, &fd);
    return r != 0 ? r : (int)fd;
}
