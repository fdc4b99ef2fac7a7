/*
 * tls_conn.c: a TLS engine attached to a TCP connection.
 *
 * Theory of operation
 * -------------------
 * conn.c calls the hooks here whenever a connection has an engine (c->tls != NULL). c->tls is
 * this file's record of the attachment (struct uvs_tls_s below): the sans-I/O engine (tls.c),
 * which knows nothing of connections or loops, plus what only an event loop needs: the
 * connection, the handshake timer and the engine's place on the loop's busy list. The engine
 * speaks its own error codes (UVS__TLSE_*); uvs__tls_uv_code turns them into libuv's, and
 * uvs__tls_export_error is the one place an engine's error leaves for the embedding (the
 * blocking streams use it too).
 *
 *   read:    ciphertext from libuv's shared read buffer is offered to the engine, which is
 *            pumped: handshake steps, then SSL_read into the loop's shared plaintext buffer
 *            until it has nothing more. All the plaintext one read made available reaches the
 *            embedding in one on_read call (256 KiB at most per call). After every step the
 *            ciphertext the engine produced is sent, data or not (alerts, session tickets;
 *            a KeyUpdate answer leaves with the next write).
 *   flush:   the plaintext the application wrote during a callback (c->out) goes through one
 *            SSL_write, so one callback's writes become one run of records and one syscall.
 *            Before the handshake completes nothing is encrypted: early writes wait in c->out
 *            and leave, in order, right after it. A graceful close or a "write" shutdown sends
 *            close_notify once everything before it has been encrypted.
 *   EOF:     a FIN without close_notify is truncation (UVS_EV_TLS_CLOSED, status 1); during the
 *            handshake it is a handshake failure.
 *   failure: the alert OpenSSL wrote is sent first, then the connection closes gracefully, so
 *            the peer learns why instead of seeing a bare TCP close.
 *
 * The peer's close_notify is answered with ours at once (UVS_EV_TLS_CLOSED, status 0) and the
 * TCP connection stays open: the application may close it, or detach and go on in plaintext.
 * Until it detaches, a write is refused (UV_ESHUTDOWN): the session can no longer carry it,
 * and holding it would keep a graceful close waiting forever for a flush that cannot happen.
 * Detaching (uvs_conn_detach_tls) sends close_notify and waits for the peer's; bytes after the
 * peer's close_notify are plaintext and are delivered as such once the engine is gone.
 *
 * A handshake timeout, when set, runs from the moment the handshake starts until it completes.
 *
 * OpenSSL's record buffers: with SSL_MODE_RELEASE_BUFFERS OpenSSL frees its read and write
 * buffers (about 17 KiB each) as soon as they drain and allocates them again for the next
 * record: two allocations and two frees per request on a busy connection. A busy connection
 * turns the mode off and the loop does the releasing instead: every engine step moves the
 * connection to the tail of loop->tls_busy (newest last) with the loop time, and a tick
 * walks the list from the head every UVS__TLS_TRIM_MS, calling
 * SSL_free_buffers on each connection quiet for that long and for UVS__TLS_TRIM_ITERATIONS loop
 * iterations, and freeing the connection's own empty buffers, which are otherwise kept for the
 * next small write; the connection is then back in the mode. The iterations matter when the
 * loop is overloaded (or slowed down by a profiler): an iteration may then take longer than the
 * time limit, and a connection merely waiting for its turn is not idle. A buffer holding half a
 * record cannot be freed yet: the mode frees it once it drains.
 * Busy means UVS__TLS_KEEP_STEPS reads and writes with the session open (since the handshake,
 * or since the buffers were last freed); the handshake itself frees them between its flights.
 * A connection that makes one exchange and goes quiet (a handshake, then a request and its
 * answer: two) never keeps them: OpenSSL frees them as they drain, as it does for every
 * connection of a C server, and so do uvssl's own empty buffers after each read and write.
 * Kept for the timer's 10 ms while other connections allocate their long-lived state, they
 * left holes in the heap that stay resident: about 1 KiB more memory per idle connection.
 * SSL_free_buffers had a use-after-free before OpenSSL 3.0.14 (CVE-2024-4741), so with an
 * older library (see uvs_tls_can_free_buffers) the engine keeps SSL_MODE_RELEASE_BUFFERS.
 * The tick is a timerfd the loop polls (loop->tls_trim), not a libuv timer: an active libuv
 * timer gives every epoll_wait a finite timeout, and the kernel then arms and cancels a timer
 * for each wait, which cost about 2.5 us of system time per request on one busy connection.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "tls.h"

/* buf.c returns -ENOMEM without including libuv: that must be UV_ENOMEM (C99 static check) */
typedef char uvs__check_buf_enomem[UVS__BUF_ENOMEM == UV_ENOMEM ? 1 : -1];

/* An engine attached to a connection. */
struct uvs_tls_s {
    uvs__engine_t *eng;
    uvs_conn_t *conn;      /* the connection this engine is attached to             */
    int detaching;         /* close_notify exchange ends in plaintext, not close   */
    int started;           /* the handshake has been kicked off                     */
    uint64_t handshake_timeout_ms;
    uv_timer_t *htimer;
    int keep_buffers;      /* record buffers may be kept while busy (else always released) */
    int kept;              /* they are: RELEASE_BUFFERS is off, and the engine listed  */
    int open_steps;        /* reads and writes with the session open, while not kept    */
    uvs__link_t busy;      /* on loop->tls_busy while OpenSSL may hold record buffers */
    uint64_t busy_at;      /* loop time (ms) of the engine's last step                */
    uint64_t busy_iteration; /* and the loop iteration                               */
};

static void uvs__tls_push(uvs_conn_t *c);

/* ---- helpers ------------------------------------------------------------------------------ */

static char *uvs__plain_buf(uvs_loop_t *loop) {
    if (loop->pbuf == NULL)
        loop->pbuf = malloc(UVS__READ_BUF_SIZE);
    return loop->pbuf;
}

/* ---- errors ------------------------------------------------------------------------------- */

/* An engine code (UVS__TLSE_*, or a positive errno, or 0) as the embedding knows it: libuv's
 * codes, positive errno values unchanged. */
int uvs__tls_uv_code(int engine_code) {
    switch (engine_code) {
    case UVS__TLSE_ENOMEM:
        return UV_ENOMEM;
    case UVS__TLSE_EPROTO:
        return UV_EPROTO;
    case UVS__TLSE_EOF:
        return UV_EOF;
    case UVS__TLSE_EINVAL:
        return UV_EINVAL;
    default:
        return engine_code;
    }
}

int uvs__tls_export_error(const uvs__engine_t *e, unsigned long *codes, int max, int *ssl_err,
                          int *sys_err, long *verify_result) {
    int n = uvs__engine_error(e, codes, max, ssl_err, sys_err, verify_result);
    *sys_err = uvs__tls_uv_code(*sys_err);
    return n;
}

/* ---- OpenSSL's record buffers ------------------------------------------------------------ */

/* Whether SSL_free_buffers is safe in the loaded library: fixed in 3.0.14, 3.1.6, 3.2.2,
 * 3.3.1 and 1.1.1y (CVE-2024-4741). Version numbers: 0xMNN00PP0 from 3.0 on. When it is not,
 * engines keep SSL_MODE_RELEASE_BUFFERS. */
int uvs_tls_can_free_buffers(void) {
    unsigned long v = OpenSSL_version_num();
    if (v >= 0x30400000UL)
        return 1;
    if (v >= 0x30300000UL)
        return v >= 0x30300010UL;
    if (v >= 0x30200000UL)
        return v >= 0x30200020UL;
    if (v >= 0x30100000UL)
        return v >= 0x30100060UL;
    if (v >= 0x30000000UL)
        return v >= 0x300000e0UL;
    return v >= 0x1010119fUL;
}

/* A quiet connection keeps none of our own buffers either: the ciphertext and plaintext
 * buffers that uvs__buf_consume keeps for the next small write (up to 1 KiB each), and an
 * empty leftover-input buffer. Only empty ones go; a buffer holding bytes stays as it is. */
static void uvs__tls_trim_own(uvs_tls_t *t) {
    uvs__engine_trim(t->eng);
    if (t->conn->out.len == 0)
        uvs__buf_free(&t->conn->out);
}

/* A kept engine's record buffers go now, or, when part of a record is buffered (SSL_free_buffers
 * refuses, leaving no error), as soon as they drain: OpenSSL frees them itself from now on, until
 * the connection is busy again. */
static void uvs__tls_stop_keeping(uvs_tls_t *t) {
    SSL *ssl = uvs__engine_ssl(t->eng);
    (void)SSL_free_buffers(ssl);
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    uvs__link_del(&t->busy);
    t->kept = 0;
    t->open_steps = 0;
}

static void uvs__tls_trim_cb(uv_poll_t *h, int status, int events);

/* Start (on) or stop the tick. 0, or a libuv error (none is expected for a valid timerfd). */
static int uvs__tls_trim_tick(uvs_loop_t *loop, int on) {
    struct itimerspec every;
    memset(&every, 0, sizeof(every));
    if (on)
        every.it_value.tv_nsec = every.it_interval.tv_nsec = UVS__TLS_TRIM_MS * 1000000L;
    if (timerfd_settime(loop->tls_trim_fd, 0, &every, NULL) != 0)
        return uv_translate_sys_error(errno);
    return on ? uv_poll_start(&loop->tls_trim, UV_READABLE, uvs__tls_trim_cb)
              : uv_poll_stop(&loop->tls_trim);
}

static void uvs__tls_trim_cb(uv_poll_t *h, int status, int events) {
    uvs_loop_t *loop = h->data;
    uvs__link_t *head = &loop->tls_busy;
    uint64_t ticks;
    (void)status; /* an error polling a timerfd is not expected; trimming early is harmless */
    (void)events;
    /* The descriptor stays readable until its expirations are read. Reading fails only with
     * EAGAIN, after a wake-up with none to read, and then there is nothing to clear. */
    ssize_t got = read(loop->tls_trim_fd, &ticks, sizeof(ticks));
    (void)got;
    uint64_t now = uv_now(&loop->uv);
    while (head->next != head) {
        uvs_tls_t *t = (uvs_tls_t *)(void *)((char *)head->next - offsetof(uvs_tls_t, busy));
        if (now - t->busy_at < UVS__TLS_TRIM_MS ||
            loop->iteration - t->busy_iteration < UVS__TLS_TRIM_ITERATIONS)
            break; /* the rest are newer */
        uvs__tls_stop_keeping(t);
        uvs__tls_trim_own(t);
    }
    if (head->next == head)
        (void)uvs__tls_trim_tick(loop, 0); /* cannot fail for a valid timerfd */
}

/* The engine of c just ran: a busy connection's record buffers stay until it has been quiet
 * for a while. */
static void uvs__tls_touch(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    if (!t->kept)
        return;
    uvs_loop_t *loop = c->loop;
    uvs__link_t *head = &loop->tls_busy;
    t->busy_at = uv_now(&loop->uv);
    t->busy_iteration = loop->iteration;
    if (head->prev == &t->busy)
        return; /* already the newest */
    uvs__link_del(&t->busy);
    uvs__link_append(head, &t->busy);
    if (uv_is_active((uv_handle_t *)&loop->tls_trim))
        return;
    if (uvs__tls_trim_tick(loop, 1) != 0) {
        /* not expected for a valid timerfd; never hold buffers with no one to free them */
        uvs__link_del(&t->busy);
        t->keep_buffers = t->kept = 0;
        SSL_set_mode(uvs__engine_ssl(t->eng), SSL_MODE_RELEASE_BUFFERS);
    }
}

/* c, not kept, reads or writes with its session open: the UVS__TLS_KEEP_STEPS-th time, it is
 * busy and keeps its record buffers from then on (until it is quiet). Called before the step;
 * callers test t->kept first, so a busy connection's reads and writes pay only that test. */
static void uvs__tls_count_step(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    if (!t->keep_buffers || ++t->open_steps < UVS__TLS_KEEP_STEPS)
        return;
    SSL_clear_mode(uvs__engine_ssl(t->eng), SSL_MODE_RELEASE_BUFFERS);
    t->kept = 1;
    uvs__tls_touch(c);
}

/* Called once per engine at attach: keep buffers while busy when that is safe and possible
 * (the engine starts with SSL_MODE_RELEASE_BUFFERS; uvs__tls_count_step turns it off). */
static void uvs__tls_keep_buffers(uvs_loop_t *loop, uvs_tls_t *t) {
    if (!uvs_tls_can_free_buffers())
        return;
    if (!loop->tls_trim_on) {
        /* No descriptor to spare (EMFILE) leaves the engine releasing its buffers as they
         * drain, as OpenSSL does on its own: slower, never wrong. */
        int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (fd < 0)
            return;
        if (uv_poll_init(&loop->uv, &loop->tls_trim, fd) != 0) {
            (void)close(fd);
            return;
        }
        loop->tls_trim.data = loop;
        loop->tls_trim_fd = fd;
        uv_unref((uv_handle_t *)&loop->tls_trim);
        loop->tls_trim_on = 1;
    }
    t->keep_buffers = 1;
}

int uvs_conn_tls_buffers_held(const uvs_conn_t *c) {
    return c->tls != NULL && c->tls->busy.next != NULL;
}

/* ---- lifetime ----------------------------------------------------------------------------- */

static uvs_tls_t *uvs__tls_new(uvs_conn_t *c, SSL_CTX *ctx, SSL *ssl, int server, int *err) {
    uvs_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    t->eng = uvs__engine_new(ctx, ssl, server, err);
    if (t->eng == NULL) {
        *err = uvs__tls_uv_code(*err);
        free(t);
        return NULL;
    }
    t->conn = c;
    return t;
}

/* The attachment goes away with its engine (conn.c, when the connection is freed; or a
 * finished detach). The handshake timer must have been released already. */
void uvs__tls_free(uvs_tls_t *t) {
    uvs__link_del(&t->busy); /* a no-op unless it is listed */
    uvs__engine_free(t->eng);
    free(t);
}

/* ---- sending ------------------------------------------------------------------------------ */

/* Send whatever ciphertext the engine produced. Every engine step ends here. */
static void uvs__tls_push(uvs_conn_t *c) {
    uvs__buf_t *out = uvs__engine_out(c->tls->eng);
    uvs__tls_touch(c);
    if (out->len == 0 || (c->state & UVS__C_CLOSING))
        return;
    (void)uvs__conn_send_buf(c, out); /* on failure the connection has failed */
}

static void uvs__tls_fail(uvs_conn_t *c, int kind, int action) {
    uvs__batch_flush(c->loop); /* the plaintext that came before the failure goes first */
    if (c->tls == NULL)
        return; /* the application detached meanwhile */
    uvs__tls_push(c); /* the alert, if OpenSSL wrote one */
    uvs__timer_disarm(c->tls->htimer);
    if (c->state & UVS__C_CLOSING)
        return;
    (void)uvs_conn_close(c, 0); /* graceful: the alert leaves before the FIN */
    uvs__emit(c, kind, 0, action);
}

/* Both close_notify sent: a detach ends here and the engine goes away. */
static void uvs__tls_finish_detach(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    uvs__engine_settle(t->eng); /* input after the peer's close_notify is kept */
    c->tls = NULL;
    /* anything after the peer's close_notify is plaintext */
    uvs__buf_t rest;
    uvs__engine_take_kept(t->eng, &rest);
    uvs__timer_release(c, &t->htimer);
    uvs__tls_free(t);
    uvs__emit(c, UVS_EV_TLS_DETACHED, 0, 0);
    if (rest.len > 0 && !(c->state & UVS__C_CLOSING))
        uvs__conn_deliver(c, rest.base, rest.len);
    uvs__buf_free(&rest);
    uvs__mark_dirty(c); /* writes made meanwhile now go out in plaintext */
    uvs__conn_reading_changed(c); /* reading was held while the session was closed */
}

/* Make all the progress the offered input allows. */
static void uvs__tls_pump_steps(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    uvs__engine_t *e = t->eng;
    char *pbuf = uvs__plain_buf(c->loop);
    if (pbuf == NULL) {
        uvs__conn_fail(c, UVS_EV_ERROR, UV_ENOMEM, UVS_ACT_TLS_READ);
        return;
    }
    for (;;) {
        if ((c->state & UVS__C_CLOSING) || c->tls != t)
            return;
        if (uvs__engine_state(e) == UVS_TLS_OPEN && (c->state & UVS__C_PAUSED))
            return; /* resumed later by uvs__tls_resume */
        size_t got = 0;
        int was_handshaking = uvs__engine_state(e) == UVS_TLS_HANDSHAKING;
        int r = uvs__engine_step(e, pbuf, UVS__READ_BUF_SIZE, &got);
        uvs__tls_push(c);
        switch (r) {
        case UVS__TLS_R_AGAIN:
            return;
        case UVS__TLS_R_HANDSHAKE:
            /* The handshake's timer and its output buffer (the size of a whole flight) are
             * not needed again: an idle connection should not carry them. */
            uvs__timer_release(c, &t->htimer);
            if (uvs__engine_out(e)->len == 0)
                uvs__buf_free(uvs__engine_out(e));
            if (c->acceptor != NULL) {
                /* announced with the plaintext that came along, or after the pump (server.c) */
                c->state |= UVS__C_ANNOUNCE_DUE;
            } else {
                uvs__emit(c, UVS_EV_CONNECT, 0, UVS_ACT_HANDSHAKE);
            }
            uvs__mark_dirty(c); /* writes queued during the handshake */
            break;
        case UVS__TLS_R_DATA:
            if (c->state & UVS__C_ANNOUNCE_DUE)
                (void)uvs__conn_announce(c, UVS_ACCEPT_ESTABLISHED, pbuf, got);
            else
                uvs__conn_deliver(c, pbuf, got);
            if (c->tls != t)
                return;
            if (uvs__engine_idle(e))
                return; /* nothing left that another step could decrypt */
            break;
        case UVS__TLS_R_CLOSED:
            /* the plaintext before the close_notify reaches the application, and what it
             * answers is encrypted, before our close_notify ends the session */
            uvs__batch_flush(c->loop);
            uvs__flush_dirty(c->loop);
            if ((c->state & UVS__C_CLOSING) || c->tls != t)
                return;
            (void)uvs__engine_close_notify(e);
            if (uvs__engine_set_state(e, UVS_TLS_DONE) != 0)
                return; /* encrypting the answer failed the session; that was reported */
            uvs__tls_push(c);
            if (t->detaching) {
                uvs__tls_finish_detach(c);
                return;
            }
            uvs__emit(c, UVS_EV_TLS_CLOSED, 0, UVS_ACT_TLS_READ);
            return;
        default: /* UVS__TLS_R_ERROR */
            uvs__tls_fail(c, UVS_EV_TLS_ERROR,
                          was_handshaking ? UVS_ACT_HANDSHAKE : UVS_ACT_TLS_READ);
            return;
        }
    }
}

static void uvs__tls_pump(uvs_conn_t *c) {
    uvs__tls_pump_steps(c);
    if (c->state & UVS__C_ANNOUNCE_DUE) /* the handshake ended with no data behind it */
        (void)uvs__conn_announce(c, UVS_ACCEPT_ESTABLISHED, NULL, 0);
}

static void uvs__handshake_timeout_cb(uv_timer_t *timer) {
    uvs_conn_t *c = timer->data;
    uvs__conn_fail(c, UVS_EV_HANDSHAKE_TIMEOUT, UV_ETIMEDOUT, UVS_ACT_HANDSHAKE);
    uvs__flush_dirty(c->loop);
}

/* ---- hooks for conn.c --------------------------------------------------------------------- */

void uvs__tls_on_read(uvs_conn_t *c, const char *p, size_t n) {
    uvs_tls_t *t = c->tls;
    uvs__engine_t *e = t->eng;
    if (!t->kept && uvs__engine_state(e) == UVS_TLS_OPEN)
        uvs__tls_count_step(c);
    uvs__engine_offer(e, p, n);
    uvs__tls_pump(c);
    if (c->tls == t) {
        uvs__engine_settle(e);
        if (!t->kept)
            uvs__tls_trim_own(t); /* not busy: keeps nothing for the next write */
        int state = uvs__engine_state(e);
        if (state == UVS_TLS_FAILED && !(c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED)))
            uvs__tls_fail(c, UVS_EV_TLS_ERROR, UVS_ACT_TLS_READ); /* out of memory keeping input */
        else if (state == UVS_TLS_DONE && uvs__engine_kept(e) > UVS__TLS_HOLD_MAX)
            uvs__conn_hold_reading(c); /* plaintext waits for detach_ssl: do not hoard it */
    }
}

void uvs__tls_resume(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    if (uvs__engine_state(t->eng) != UVS_TLS_OPEN)
        return;
    uvs__engine_offer(t->eng, NULL, 0);
    uvs__tls_pump(c);
    if (c->tls == t)
        uvs__engine_settle(t->eng);
}

void uvs__tls_on_eof(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    switch (uvs__engine_state(t->eng)) {
    case UVS_TLS_HANDSHAKING:
        uvs__engine_fail(t->eng, UVS__TLSE_EOF);
        uvs__tls_fail(c, UVS_EV_TLS_ERROR, UVS_ACT_HANDSHAKE);
        break;
    case UVS_TLS_OPEN:
        /* no close_notify: the peer may have been cut off; the data may be truncated */
        uvs__timer_disarm(t->htimer);
        (void)uvs_conn_close(c, 0);
        uvs__emit(c, UVS_EV_TLS_CLOSED, 1, UVS_ACT_TLS_READ);
        break;
    case UVS_TLS_DONE:
        uvs__emit(c, UVS_EV_EOF, 0, UVS_ACT_READ);
        break;
    default:
        break;
    }
}

void uvs__tls_on_close(uvs_conn_t *c) { uvs__timer_release(c, &c->tls->htimer); }

void uvs__tls_flush(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    uvs__engine_t *e = t->eng;
    if (uvs__engine_state(e) == UVS_TLS_HANDSHAKING && !t->started) {
        t->started = 1;
        if (t->handshake_timeout_ms > 0) {
            int r = uvs__timer_arm(c, &t->htimer, t->handshake_timeout_ms,
                                   uvs__handshake_timeout_cb);
            if (r != 0) {
                uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_HANDSHAKE);
                return;
            }
        }
        uvs__engine_offer(e, NULL, 0);
        uvs__tls_pump(c); /* a client sends its hello now */
        if (c->tls != t)
            return;
        uvs__engine_settle(e);
        if (c->state & UVS__C_CLOSING)
            return;
    }
    if (uvs__engine_state(e) == UVS_TLS_OPEN && !uvs__engine_close_notify_sent(e)) {
        if (!t->kept && c->out.len > 0)
            uvs__tls_count_step(c);
        while (c->out.len > 0) {
            size_t used = 0;
            if (uvs__engine_encrypt(e, c->out.base, c->out.len, &used) != 0) {
                uvs__tls_fail(c, UVS_EV_TLS_ERROR, UVS_ACT_TLS_WRITE);
                return;
            }
            if (used == 0)
                break;
            uvs__buf_consume(&c->out, used);
        }
        if (c->out.len == 0 &&
            (t->detaching || (c->state & (UVS__C_SHUT_WANTED | UVS__C_CLOSE_WANTED))))
            (void)uvs__engine_close_notify(e);
    } else if (uvs__engine_state(e) == UVS_TLS_FAILED) {
        uvs__buf_consume(&c->out, c->out.len); /* nothing can carry it any more */
    }
    uvs__tls_push(c);
    if (t->detaching && uvs__engine_state(e) == UVS_TLS_DONE && c->tls == t)
        uvs__tls_finish_detach(c);
    else if (c->tls == t && !t->kept)
        uvs__tls_trim_own(t); /* not busy: keeps nothing for the next write */
}

size_t uvs__tls_pending(const uvs_conn_t *c) { return uvs__engine_out(c->tls->eng)->len; }

size_t uvs__tls_held_bytes(const uvs_conn_t *c) {
    const uvs_tls_t *t = c->tls;
    return uvs__engine_held_bytes(t->eng) + (t->htimer != NULL ? sizeof(*t->htimer) : 0);
}

/* A large write with nothing queued ahead of it: encrypt it from the caller's memory now
 * instead of copying it into c->out first. Returns 1 when done here, 0 when the caller must
 * buffer it as usual, or a uv error (the connection has then failed). */
int uvs__tls_write_direct(uvs_conn_t *c, const char *p, size_t n) {
    uvs_tls_t *t = c->tls;
    uvs__engine_t *e = t->eng;
    if (uvs__engine_state(e) != UVS_TLS_OPEN || uvs__engine_close_notify_sent(e) ||
        t->detaching || c->out.len > 0)
        return 0;
    size_t used = 0;
    if (uvs__engine_encrypt(e, p, n, &used) != 0) {
        uvs__tls_fail(c, UVS_EV_TLS_ERROR, UVS_ACT_TLS_WRITE);
        return UV_EPROTO;
    }
    if (used < n && uvs__buf_append(&c->out, p + used, n - used) != 0) {
        uvs__conn_fail(c, UVS_EV_ERROR, UV_ENOMEM, UVS_ACT_TLS_WRITE);
        return UV_ENOMEM;
    }
    uvs__mark_dirty(c); /* the ciphertext leaves with the flush at the end of the callback */
    return 1;
}

/* Whether the session can still carry the application's writes: not once close_notify went
 * both ways, unless a detach is under way (its writes then leave in plaintext). */
int uvs__tls_accepts_writes(const uvs_conn_t *c) {
    const uvs_tls_t *t = c->tls;
    return uvs__engine_state(t->eng) != UVS_TLS_DONE || t->detaching;
}

int uvs__tls_close_notify_sent(uvs_conn_t *c) {
    const uvs__engine_t *e = c->tls->eng;
    return uvs__engine_state(e) != UVS_TLS_OPEN || uvs__engine_close_notify_sent(e);
}

/* ---- public API --------------------------------------------------------------------------- */

int uvs_conn_attach_tls(uvs_conn_t *c, SSL_CTX *ctx, SSL *ssl, int server, double hs_timeout,
                        const char *initial, size_t initial_len) {
    if (c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED))
        return UV_EBADF;
    if (c->tls != NULL)
        return UV_EALREADY;
    int err;
    uvs_tls_t *t = uvs__tls_new(c, ctx, ssl, server, &err);
    if (t == NULL)
        return err;
    uvs__tls_keep_buffers(c->loop, t);
    t->handshake_timeout_ms = hs_timeout > 0 ? (uint64_t)(hs_timeout * 1000.0 + 0.5) : 0;
    if (hs_timeout > 0 && t->handshake_timeout_ms == 0)
        t->handshake_timeout_ms = 1;
    /* bytes the application read ahead but did not consume are the start of the handshake */
    if (initial_len > 0 && uvs__engine_keep(t->eng, initial, initial_len) != 0) {
        uvs__tls_free(t);
        return UV_ENOMEM;
    }
    /* plaintext written before the attach leaves before the handshake starts */
    if (c->out.len > 0 && (c->state & UVS__C_CONNECTED)) {
        uvs__conn_flush(c);
        if (c->state & UVS__C_CLOSING) {
            uvs__tls_free(t);
            return UV_EBADF;
        }
    }
    c->tls = t;
    if (c->state & UVS__C_CONNECTED)
        uvs__mark_dirty(c);
    return 0;
}

/* The SSL* of the connection's engine, or NULL. */
SSL *uvs_conn_ssl(uvs_conn_t *c) { return c->tls != NULL ? uvs__engine_ssl(c->tls->eng) : NULL; }

int uvs_conn_tls_state(uvs_conn_t *c) {
    return c->tls != NULL ? uvs__engine_state(c->tls->eng) : 0;
}

int uvs_conn_tls_error(uvs_conn_t *c, unsigned long *codes, int max, int *ssl_err, int *sys_err,
                       long *verify_result) {
    if (c->tls == NULL)
        return -1;
    return uvs__tls_export_error(c->tls->eng, codes, max, ssl_err, sys_err, verify_result);
}

int uvs_conn_detach_tls(uvs_conn_t *c) {
    uvs_tls_t *t = c->tls;
    if (t == NULL)
        return UV_EINVAL;
    if (c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED))
        return UV_EBADF;
    int state = uvs__engine_state(t->eng);
    if (state == UVS_TLS_HANDSHAKING || state == UVS_TLS_FAILED)
        return UV_EPROTO;
    t->detaching = 1;
    /* encrypt what was written before this call and send close_notify now: anything written
     * after it waits in c->out and leaves in plaintext once the peer's close_notify came */
    uvs__conn_flush(c);
    return 0;
}

int uvs_server_set_tls(uvs_server_t *s, SSL_CTX *ctx, double hs_timeout) {
    if (ctx != NULL && SSL_CTX_up_ref(ctx) != 1)
        return UV_ENOMEM;
    if (s->tls_ctx != NULL)
        SSL_CTX_free(s->tls_ctx);
    s->tls_ctx = ctx;
    s->hs_timeout = hs_timeout;
    return 0;
}

int uvs__tls_attach_accepted(uvs_conn_t *c, uvs_server_t *s) {
    int r = uvs_conn_attach_tls(c, s->tls_ctx, NULL, 1, s->hs_timeout, NULL, 0);
    if (r != 0)
        ERR_clear_error(); /* reported as an accept error; the queue must not linger */
    return r;
}

void uvs__server_free_tls(uvs_server_t *s) {
    if (s->tls_ctx != NULL)
        SSL_CTX_free(s->tls_ctx);
    s->tls_ctx = NULL;
}
