/*
 * loadgen.c - the native load client of uvssl's benchmarks.
 *
 * Theory of operation
 * -------------------
 * One thread, one epoll set (level-triggered), non-blocking sockets, OpenSSL on each socket
 * through a socket BIO (SSL_set_fd). Every connection is a small state machine:
 *
 *     CONNECTING --EPOLLOUT, SO_ERROR == 0--> HANDSHAKE --SSL_do_handshake == 1--> ACTIVE
 *     (plain TCP skips HANDSHAKE)                                ACTIVE --(idle mode)--> IDLE
 *
 * In ACTIVE a connection has at most one write in progress (a message, or in bulk mode one
 * chunk) and reads whenever data may be there. A non-blocking SSL call that cannot progress
 * says which socket readiness it waits for (SSL_ERROR_WANT_READ / WANT_WRITE; a read may
 * need to write and a write may need to read). The blocked read and the blocked write each
 * remember that readiness; the epoll interest is their union, and an event clears the blocks
 * it satisfies. A write that returned WANT_* is retried with the same bytes, as OpenSSL
 * requires (the payload is one static buffer and the offset only moves forward). After any
 * progress the other direction is retried too, since a read can unblock a write and vice versa.
 *
 * Modes (the JSON keys printed at the end are listed in usage()):
 *   echo       N connections, each a closed loop: send a size-byte message, wait for the
 *              whole echo, record the round-trip time in a log-linear histogram (fixed array,
 *              no allocation per request), repeat.
 *   bulk       N connections each stream size-byte chunks, with at most --inflight chunks
 *              sent but not yet echoed back, and count the echoed bytes.
 *   handshake  N slots, each in a loop: connect, handshake (full, or resumed with --resume
 *              from the last session seen), one small echo round trip, close. The echo also
 *              guarantees that TLS 1.3 session tickets (sent by the server after its handshake,
 *              so before the echo) have been received before the session is saved.
 *   idle       open N connections (handshake + one echo each, at most --parallel at a time),
 *              print "IDLE <n>", hold them until stdin reaches EOF or --hold expires.
 *
 * Phases: SETUP (echo, bulk, idle: open the connections, bounded by --timeout), WARMUP (work
 * not counted), MEASURE (counted, ends after --duration or --count operations), HOLD (idle
 * only), DONE. All phases have deadlines checked after every epoll_wait, whose timeout never
 * exceeds the next deadline, so the program ends on its own even if the server stalls or
 * vanishes; failures are counted in "errors" (the first one is described in "error") and
 * --max-errors ends a run that keeps failing.
 *
 * Certificates are NEVER verified: this is a benchmark client talking to a throwaway
 * self-signed certificate on loopback, not something to point at a real service.
 *
 * Exit status: 0 when the run measured something, 1 when it did not (the JSON is still
 * printed, with the error), 2 for bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define IO_WANT_READ (-1)
#define IO_WANT_WRITE (-2)
#define IO_CLOSED (-3)
#define IO_ERROR (-4)

#define MAX_EVENTS 512
#define RBUF_SIZE (256 * 1024)
#define MAX_SIZE (64u * 1024u * 1024u)
#define MAX_CONNS 100000
#define PUMP_ROUNDS 16     /* read/write rounds per pump before yielding to others */

/* Latency histogram: values in ns; exact below 128, then 64 sub-buckets per power of two
 * (relative error below 1/64). 34 shifts cover 2^40 ns (about 18 minutes). */
#define HIST_SUB 64
#define HIST_LINEAR 128
#define HIST_SHIFTS 34
#define HIST_BUCKETS (HIST_LINEAR + HIST_SHIFTS * HIST_SUB)

enum mode { M_ECHO, M_BULK, M_HANDSHAKE, M_IDLE };
enum cstate { C_FREE, C_CONNECTING, C_HANDSHAKE, C_ACTIVE, C_IDLE };
enum phase { P_SETUP, P_WARMUP, P_MEASURE, P_HOLD, P_DONE };

struct conn {
    int fd;
    SSL *ssl;
    enum cstate state;
    uint32_t events;        /* current epoll interest */
    int registered;         /* fd is in the epoll set */
    uint32_t rd_block;      /* readiness the blocked read waits for, 0 if not blocked */
    uint32_t wr_block;      /* readiness the blocked write waits for, 0 if not blocked */
    int writing;            /* echo/handshake/idle: current message not fully written */
    int in_setup;           /* counted in g.setup_inflight */
    int ready;              /* on g.ready: yielded with work left, pump again */
    size_t woff;            /* bytes of the current message/chunk written */
    uint64_t sent, rcvd;    /* message bytes (echo, handshake, idle) or totals (bulk) */
    uint64_t t0;            /* start of the current request, ns */
};

struct options {
    enum mode mode;
    const char *host;
    const char *port;
    int tls;
    int tls_version;
    long conns;
    size_t size;
    double duration;
    double warmup;
    unsigned long long count;
    int resume;
    long inflight;
    double hold;
    double timeout;
    long parallel;
    unsigned long max_errors;
};

static struct {
    struct options o;
    SSL_CTX *ctx;
    int epfd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct conn *conns;
    struct conn **ready;      /* connections to pump again without waiting for epoll */
    long nready;
    unsigned char *payload;
    enum phase phase;
    uint64_t t_start, t_setup_deadline, t_phase_start, t_measure, t_end, t_stop;
    long next_to_start;       /* setup: next connection index to open */
    long setup_inflight;      /* setup: connections being opened */
    long established;         /* setup: connections ready */
    long setup_failed;        /* setup: connections that failed */
    long live;                /* connections not C_FREE */
    int stdin_watched, stdin_eof;
    /* results */
    unsigned long long ops;        /* requests or handshakes in the measurement window */
    unsigned long long resumed;
    unsigned long long bytes;      /* echoed bytes received in the measurement window */
    unsigned long long errors;
    unsigned long long dropped;    /* idle: connections the server closed during hold */
    uint64_t hist[HIST_BUCKETS];
    uint64_t hist_n, lat_sum, lat_max;
    SSL_SESSION *session;          /* --resume: session to offer */
    char error[256];
    uint64_t t_idle_ready;
} g;

static unsigned char g_rbuf[RBUF_SIZE];

static void usage(void)
{
    fprintf(stderr,
        "usage: loadgen --mode echo|bulk|handshake|idle --port P [options]\n"
        "  --host H           server address (default 127.0.0.1)\n"
        "  --port P           server port (required)\n"
        "  --tls | --plain    TLS (default) or plain TCP\n"
        "  --tls-version V    1.2 or 1.3 (default 1.3)\n"
        "  --conns N          connections (default 1; idle: 100)\n"
        "  --size BYTES       message size (default 64; bulk: chunk size 65536)\n"
        "  --duration S       measured seconds (default 5)\n"
        "  --warmup S         unmeasured seconds before (default 1)\n"
        "  --count N          echo/handshake: stop after N measured operations (0: no limit)\n"
        "  --resume           handshake: resume the last session (TLS tickets)\n"
        "  --inflight K       bulk: chunks sent and not yet echoed (default 4)\n"
        "  --hold S           idle: hold at most S seconds, or until stdin EOF (default 30)\n"
        "  --timeout S        deadline for opening the connections (default 30)\n"
        "  --parallel K       connections opened concurrently during setup (default 64)\n"
        "  --max-errors N     stop after N errors, N >= 1 (default 100)\n"
        "Prints one JSON object on stdout. Keys: mode, tls, tls_version, conns, size, errors,\n"
        "error, and per mode:\n"
        "  echo:      requests, seconds, rps, p50_us, p99_us, p999_us, mean_us, max_us\n"
        "  bulk:      bytes, seconds, mbps (MB/s, MB = 1e6 bytes), inflight\n"
        "  handshake: handshakes, seconds, hps, resumed, resume\n"
        "  idle:      established, setup_seconds, held_seconds, dropped (and a line\n"
        "             'IDLE <n>' on stdout once the connections are open)\n"
        "Certificates are never verified (benchmark use only).\n");
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        abort();   /* cannot happen with CLOCK_MONOTONIC */
    }
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t secs_to_ns(double s)
{
    return (uint64_t)(s * 1e9);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void set_error(const char *msg)
{
    if (g.error[0] == '\0') {
        (void)snprintf(g.error, sizeof g.error, "%s", msg);
    }
}

static void record_error(const char *what, int tls_err, int sys_errno)
{
    char buf[200];
    unsigned long e = 0, last = 0;
    while ((e = ERR_get_error()) != 0) {
        last = e;
    }
    g.errors++;
    if (g.error[0] == '\0') {
        if (last != 0) {
            ERR_error_string_n(last, buf, sizeof buf);
        } else if (tls_err == SSL_ERROR_SYSCALL || tls_err == -1) {
            (void)snprintf(buf, sizeof buf, "%s",
                           sys_errno != 0 ? strerror(sys_errno) : "unexpected EOF");
        } else {
            (void)snprintf(buf, sizeof buf, "TLS error %d", tls_err);
        }
        (void)snprintf(g.error, sizeof g.error, "%s: %s", what, buf);
    }
    if (g.o.max_errors > 0 && g.errors >= g.o.max_errors && g.phase != P_DONE) {
        g.phase = P_DONE;
    }
}

/* ---- histogram ---------------------------------------------------------------------------- */

static size_t hist_index(uint64_t v)
{
    int msb, shift;
    size_t idx;
    if (v < HIST_LINEAR) {
        return (size_t)v;
    }
    msb = 63 - __builtin_clzll(v);
    shift = msb - 6;                       /* v >> shift is in [64, 128) */
    idx = HIST_LINEAR + (size_t)(shift - 1) * HIST_SUB + (size_t)((v >> shift) - HIST_SUB);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

static double hist_value(size_t idx)
{
    size_t shift, sub;
    if (idx < HIST_LINEAR) {
        return (double)idx;
    }
    shift = (idx - HIST_LINEAR) / HIST_SUB + 1;
    sub = (idx - HIST_LINEAR) % HIST_SUB + HIST_SUB;
    /* middle of [sub << shift, (sub + 1) << shift) */
    return ((double)sub + 0.5) * (double)((uint64_t)1 << shift);
}

static void hist_record(uint64_t ns)
{
    g.hist[hist_index(ns)]++;
    g.hist_n++;
    g.lat_sum += ns;
    if (ns > g.lat_max) {
        g.lat_max = ns;
    }
}

static double hist_percentile_us(double q)
{
    uint64_t target, acc = 0;
    size_t i;
    if (g.hist_n == 0) {
        return 0.0;
    }
    target = (uint64_t)(q * (double)g.hist_n);
    if ((double)target < q * (double)g.hist_n) {
        target++;    /* ceil without libm */
    }
    if (target < 1) {
        target = 1;
    }
    for (i = 0; i < HIST_BUCKETS; i++) {
        acc += g.hist[i];
        if (acc >= target) {
            double v = hist_value(i);
            if (v > (double)g.lat_max) {
                v = (double)g.lat_max;
            }
            return v / 1000.0;
        }
    }
    return (double)g.lat_max / 1000.0;
}

/* ---- I/O primitives ----------------------------------------------------------------------- */

static long tls_result(struct conn *c, int n, const char *what)
{
    int saved = errno;
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ) {
        return IO_WANT_READ;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
        return IO_WANT_WRITE;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
        return IO_CLOSED;
    }
    record_error(what, err, saved);
    return IO_ERROR;
}

static long io_read(struct conn *c, unsigned char *buf, size_t len)
{
    if (c->ssl != NULL) {
        int n = SSL_read(c->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
        return n > 0 ? (long)n : tls_result(c, n, "read");
    }
    for (;;) {
        ssize_t n = read(c->fd, buf, len);
        if (n > 0) {
            return (long)n;
        }
        if (n == 0) {
            return IO_CLOSED;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return IO_WANT_READ;
        }
        record_error("read", -1, errno);
        return IO_ERROR;
    }
}

static long io_write(struct conn *c, const unsigned char *buf, size_t len)
{
    if (c->ssl != NULL) {
        int n = SSL_write(c->ssl, buf, (int)(len > INT32_MAX ? INT32_MAX : len));
        return n > 0 ? (long)n : tls_result(c, n, "write");
    }
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            return (long)n;
        }
        if (n == 0) {
            return IO_WANT_WRITE;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return IO_WANT_WRITE;
        }
        record_error("write", -1, errno);
        return IO_ERROR;
    }
}

/* ---- connections -------------------------------------------------------------------------- */

static void conn_close(struct conn *c, int graceful)
{
    if (c->state == C_FREE) {
        return;
    }
    if (c->ssl != NULL) {
        if (graceful && SSL_is_init_finished(c->ssl)) {
            (void)SSL_shutdown(c->ssl);   /* sends close_notify; never waits */
        }
        ERR_clear_error();
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        (void)close(c->fd);           /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->state = C_FREE;
    c->events = 0;
    c->registered = 0;
    g.live--;
}

static int set_events(struct conn *c, uint32_t ev)
{
    struct epoll_event e;
    if (c->registered && ev == c->events) {
        return 0;
    }
    memset(&e, 0, sizeof e);
    e.events = ev;
    e.data.ptr = c;
    if (epoll_ctl(g.epfd, c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &e) != 0) {
        record_error("epoll_ctl", -1, errno);
        return -1;
    }
    c->registered = 1;
    c->events = ev;
    return 0;
}

static void setup_fill(void);

/* Setup bookkeeping when a connection leaves setup, successfully or not. */
static void setup_done(struct conn *c, int ok)
{
    if (!c->in_setup) {
        return;
    }
    c->in_setup = 0;
    g.setup_inflight--;
    if (ok) {
        g.established++;
    } else {
        g.setup_failed++;
    }
    setup_fill();
}

static void conn_start(struct conn *c);

/* A connection failed: count it, close it, and replace it where the mode wants that. */
static void conn_fail(struct conn *c, const char *what, int sys_errno)
{
    if (what != NULL) {
        record_error(what, -1, sys_errno);
    }
    if (c->state == C_IDLE) {
        g.dropped++;
    }
    conn_close(c, 0);
    setup_done(c, 0);
    if (g.o.mode == M_HANDSHAKE && (g.phase == P_WARMUP || g.phase == P_MEASURE)) {
        conn_start(c);
    } else if (g.live == 0 && g.phase != P_SETUP) {
        g.phase = P_DONE;    /* nothing left to measure */
    }
}

static void conn_start(struct conn *c)
{
    int one = 1;
    int fd = socket(g.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int ready = c->ready;      /* a slot stays on g.ready at most once */
    memset(c, 0, sizeof *c);
    c->ready = ready;
    c->fd = -1;
    if (fd < 0) {
        record_error("socket", -1, errno);
        return;
    }
    c->fd = fd;
    c->state = C_CONNECTING;
    g.live++;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        conn_fail(c, "setsockopt(TCP_NODELAY)", errno);
        return;
    }
    if (connect(fd, (struct sockaddr *)&g.addr, g.addrlen) != 0 && errno != EINPROGRESS) {
        conn_fail(c, "connect", errno);
        return;
    }
    /* Whether connect finished or not, completion is reported as writability. */
    if (set_events(c, EPOLLOUT) != 0) {
        conn_fail(c, NULL, 0);
    }
}

static void setup_fill(void)
{
    while (g.phase == P_SETUP && g.setup_inflight < g.o.parallel &&
           g.next_to_start < g.o.conns) {
        struct conn *c = &g.conns[g.next_to_start++];
        g.setup_inflight++;
        conn_start(c);
        if (c->state == C_FREE) {
            /* conn_start failed before the connection was counted in setup */
            g.setup_inflight--;
            g.setup_failed++;
        } else {
            c->in_setup = 1;
        }
    }
}

static void msg_begin(struct conn *c)
{
    c->writing = 1;
    c->woff = 0;
    c->sent = 0;
    c->rcvd = 0;
    c->t0 = now_ns();
}

static int want_write(const struct conn *c)
{
    if (g.phase == P_DONE) {
        return 0;
    }
    if (g.o.mode == M_BULK) {
        uint64_t window = (uint64_t)g.o.inflight * g.o.size;
        return c->woff > 0 || c->sent - c->rcvd + g.o.size <= window;
    }
    return c->writing;
}

/* A whole echo arrived. Returns 1 if the connection was closed or replaced. */
static int msg_complete(struct conn *c)
{
    uint64_t t = now_ns();
    switch (g.o.mode) {
    case M_ECHO:
        if (g.phase == P_MEASURE) {
            hist_record(t - c->t0);
            g.ops++;
            if (g.o.count > 0 && g.ops >= g.o.count) {
                g.phase = P_DONE;
                g.t_stop = t;
            }
        }
        msg_begin(c);
        return 0;
    case M_HANDSHAKE:
        if (g.phase == P_MEASURE) {
            g.ops++;
            if (c->ssl != NULL && SSL_session_reused(c->ssl)) {
                g.resumed++;
            }
            if (g.o.count > 0 && g.ops >= g.o.count) {
                g.phase = P_DONE;
                g.t_stop = t;
            }
        }
        if (g.o.resume && c->ssl != NULL) {
            SSL_SESSION *s = SSL_get1_session(c->ssl);
            if (s != NULL && SSL_SESSION_is_resumable(s)) {
                SSL_SESSION_free(g.session);
                g.session = s;
            } else {
                SSL_SESSION_free(s);
            }
        }
        conn_close(c, 1);
        if (g.phase == P_WARMUP || g.phase == P_MEASURE) {
            conn_start(c);
        }
        return 1;
    case M_IDLE:
        c->state = C_IDLE;
        c->writing = 0;
        setup_done(c, 1);
        return 0;
    case M_BULK:
    default:
        return 0;
    }
}

/* Data arrived. Returns 1 if the connection was closed or replaced. */
static int on_data(struct conn *c, size_t n)
{
    if (c->state == C_IDLE) {
        return 0;    /* ignore anything during hold */
    }
    c->rcvd += n;
    if (c->rcvd > (g.o.mode == M_BULK ? c->sent : (uint64_t)c->woff)) {
        set_error("protocol: server sent bytes that were not sent to it");
        conn_fail(c, "protocol", 0);
        return 1;
    }
    if (g.o.mode == M_BULK) {
        if (g.phase == P_MEASURE) {
            g.bytes += n;
        }
        return 0;
    }
    if (c->rcvd == g.o.size) {
        return msg_complete(c);
    }
    return 0;
}

/* Make all the progress possible, then wait for what the blocked calls need. */
static void conn_pump(struct conn *c)
{
    int rounds;
    for (rounds = 0;; rounds++) {
        int progress = 0;
        if (rounds == PUMP_ROUNDS) {
            /* Still progressing (a bulk stream can forever): yield so the others and the
             * clock get a turn. Epoll cannot be relied on to call us back, since OpenSSL
             * may hold data that is no longer in the kernel, so queue the connection. */
            if (!c->ready) {
                c->ready = 1;
                g.ready[g.nready++] = c;
            }
            break;
        }
        if (want_write(c) && c->wr_block == 0) {
            size_t len = g.o.size - c->woff;
            long w = io_write(c, g.payload + c->woff, len);
            if (w > 0) {
                progress = 1;
                c->woff += (size_t)w;
                c->sent += (uint64_t)w;
                if (c->woff == g.o.size) {
                    c->woff = 0;
                    c->writing = 0;
                    if (g.o.mode != M_BULK) {
                        c->woff = g.o.size;   /* keep: bounds what may be echoed */
                    }
                }
                if (c->rd_block == EPOLLOUT) {
                    c->rd_block = 0;
                }
            } else if (w == IO_WANT_READ) {
                c->wr_block = EPOLLIN;
            } else if (w == IO_WANT_WRITE) {
                c->wr_block = EPOLLOUT;
            } else {
                conn_fail(c, w == IO_CLOSED ? "write: connection closed" : NULL, 0);
                return;
            }
        }
        if (c->rd_block == 0) {
            long r = io_read(c, g_rbuf, sizeof g_rbuf);
            if (r > 0) {
                progress = 1;
                if (c->wr_block == EPOLLIN) {
                    c->wr_block = 0;
                }
                if (on_data(c, (size_t)r)) {
                    return;
                }
            } else if (r == IO_WANT_READ) {
                c->rd_block = EPOLLIN;
            } else if (r == IO_WANT_WRITE) {
                c->rd_block = EPOLLOUT;
            } else {
                conn_fail(c, r == IO_CLOSED ? "read: connection closed by server" : NULL, 0);
                return;
            }
        }
        if (!progress) {
            break;
        }
    }
    if (set_events(c, c->rd_block | (want_write(c) ? c->wr_block : 0)) != 0) {
        conn_fail(c, NULL, 0);
    }
}

/* Pump the connections that yielded; the ones that yield again go back on the list. */
static void pump_ready(void)
{
    long i, n = g.nready;
    for (i = 0; i < n && g.phase != P_DONE; i++) {
        struct conn *c = g.ready[i];
        c->ready = 0;
        if (c->state == C_ACTIVE || c->state == C_IDLE) {
            conn_pump(c);
        }
    }
    /* Keep entries added during this pass (they were appended after index n). */
    if (i < n) {
        n = i;
    }
    memmove(g.ready, g.ready + n, (size_t)(g.nready - n) * sizeof *g.ready);
    g.nready -= n;
}

static void conn_active(struct conn *c)
{
    c->state = C_ACTIVE;
    c->rd_block = c->wr_block = 0;
    if (g.o.mode == M_ECHO || g.o.mode == M_BULK) {
        setup_done(c, 1);
    }
    msg_begin(c);
    if (g.o.mode == M_BULK) {
        c->writing = 0;   /* bulk uses the window in want_write */
    }
    conn_pump(c);
}

static void conn_handshake(struct conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        conn_active(c);
        return;
    }
    r = tls_result(c, r, "handshake");
    if (r == IO_WANT_READ) {
        if (set_events(c, EPOLLIN) != 0) {
            conn_fail(c, NULL, 0);
        }
    } else if (r == IO_WANT_WRITE) {
        if (set_events(c, EPOLLOUT) != 0) {
            conn_fail(c, NULL, 0);
        }
    } else {
        conn_fail(c, r == IO_CLOSED ? "handshake: connection closed" : NULL, 0);
    }
}

static void conn_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
    }
    if (err != 0) {
        conn_fail(c, "connect", err);
        return;
    }
    if (g.ctx == NULL) {
        conn_active(c);
        return;
    }
    c->ssl = SSL_new(g.ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
        conn_fail(c, "SSL_new", 0);
        return;
    }
    SSL_set_connect_state(c->ssl);
    if (g.o.resume && g.session != NULL && SSL_set_session(c->ssl, g.session) != 1) {
        conn_fail(c, "SSL_set_session", 0);
        return;
    }
    c->state = C_HANDSHAKE;
    conn_handshake(c);
}

static void conn_event(struct conn *c, uint32_t ev)
{
    switch (c->state) {
    case C_CONNECTING:
        conn_connected(c);
        return;
    case C_HANDSHAKE:
        conn_handshake(c);
        return;
    case C_ACTIVE:
    case C_IDLE:
        if (ev & (EPOLLERR | EPOLLHUP)) {
            c->rd_block = c->wr_block = 0;   /* let the calls report what happened */
        }
        if (c->rd_block & ev) {
            c->rd_block = 0;
        }
        if (c->wr_block & ev) {
            c->wr_block = 0;
        }
        conn_pump(c);
        return;
    case C_FREE:
    default:
        return;
    }
}

/* ---- setup and main loop ------------------------------------------------------------------ */

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_ulong(const char *s, unsigned long long lo, unsigned long long hi,
                       unsigned long long *out)
{
    char *end;
    unsigned long long v;
    if (*s == '-') {
        return -1;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    int i;
    int have_mode = 0, have_conns = 0, have_size = 0;
    unsigned long long u;
    struct options *o = &g.o;

    o->host = "127.0.0.1";
    o->port = NULL;
    o->tls = 1;
    o->tls_version = TLS1_3_VERSION;
    o->conns = 1;
    o->duration = 5.0;
    o->warmup = 1.0;
    o->inflight = 4;
    o->hold = 30.0;
    o->timeout = 30.0;
    o->parallel = 64;
    o->max_errors = 100;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--tls") == 0) {
            o->tls = 1;
            continue;
        }
        if (strcmp(a, "--plain") == 0) {
            o->tls = 0;
            continue;
        }
        if (strcmp(a, "--resume") == 0) {
            o->resume = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
            exit(0);
        }
        if (v == NULL) {
            fprintf(stderr, "loadgen: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--mode") == 0) {
            have_mode = 1;
            if (strcmp(v, "echo") == 0) {
                o->mode = M_ECHO;
            } else if (strcmp(v, "bulk") == 0) {
                o->mode = M_BULK;
            } else if (strcmp(v, "handshake") == 0) {
                o->mode = M_HANDSHAKE;
            } else if (strcmp(v, "idle") == 0) {
                o->mode = M_IDLE;
            } else {
                goto bad;
            }
        } else if (strcmp(a, "--host") == 0) {
            o->host = v;
        } else if (strcmp(a, "--port") == 0) {
            if (parse_ulong(v, 1, 65535, &u) != 0) {
                goto bad;
            }
            o->port = v;
        } else if (strcmp(a, "--tls-version") == 0) {
            if (strcmp(v, "1.2") == 0) {
                o->tls_version = TLS1_2_VERSION;
            } else if (strcmp(v, "1.3") == 0) {
                o->tls_version = TLS1_3_VERSION;
            } else {
                goto bad;
            }
        } else if (strcmp(a, "--conns") == 0) {
            if (parse_ulong(v, 1, MAX_CONNS, &u) != 0) {
                goto bad;
            }
            o->conns = (long)u;
            have_conns = 1;
        } else if (strcmp(a, "--size") == 0) {
            if (parse_ulong(v, 1, MAX_SIZE, &u) != 0) {
                goto bad;
            }
            o->size = (size_t)u;
            have_size = 1;
        } else if (strcmp(a, "--duration") == 0) {
            if (parse_double(v, 0.001, 86400.0, &o->duration) != 0) {
                goto bad;
            }
        } else if (strcmp(a, "--warmup") == 0) {
            if (parse_double(v, 0.0, 86400.0, &o->warmup) != 0) {
                goto bad;
            }
        } else if (strcmp(a, "--count") == 0) {
            if (parse_ulong(v, 0, ~0ULL, &u) != 0) {
                goto bad;
            }
            o->count = u;
        } else if (strcmp(a, "--inflight") == 0) {
            if (parse_ulong(v, 1, 1024, &u) != 0) {
                goto bad;
            }
            o->inflight = (long)u;
        } else if (strcmp(a, "--hold") == 0) {
            if (parse_double(v, 0.0, 86400.0, &o->hold) != 0) {
                goto bad;
            }
        } else if (strcmp(a, "--timeout") == 0) {
            if (parse_double(v, 0.001, 86400.0, &o->timeout) != 0) {
                goto bad;
            }
        } else if (strcmp(a, "--parallel") == 0) {
            if (parse_ulong(v, 1, MAX_CONNS, &u) != 0) {
                goto bad;
            }
            o->parallel = (long)u;
        } else if (strcmp(a, "--max-errors") == 0) {
            if (parse_ulong(v, 1, ~0UL, &u) != 0) {
                goto bad;
            }
            o->max_errors = (unsigned long)u;
        } else {
            fprintf(stderr, "loadgen: unknown option %s\n", a);
            return -1;
        }
        continue;
bad:
        fprintf(stderr, "loadgen: bad value for %s: %s\n", a, v);
        return -1;
    }
    if (!have_mode || o->port == NULL) {
        fprintf(stderr, "loadgen: --mode and --port are required\n");
        return -1;
    }
    if (!have_conns && o->mode == M_IDLE) {
        o->conns = 100;
    }
    if (!have_size) {
        o->size = o->mode == M_BULK ? 65536 : 64;
    }
    if (o->resume && !o->tls) {
        fprintf(stderr, "loadgen: --resume needs TLS\n");
        return -1;
    }
    return 0;
}

static int resolve(void)
{
    struct addrinfo hints, *res = NULL;
    int rc;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(g.o.host, g.o.port, &hints, &res);
    if (rc != 0 || res == NULL) {
        fprintf(stderr, "loadgen: cannot resolve %s: %s\n", g.o.host,
                rc != 0 ? gai_strerror(rc) : "no address");
        return -1;
    }
    if (res->ai_addrlen > sizeof g.addr) {
        freeaddrinfo(res);
        return -1;
    }
    memcpy(&g.addr, res->ai_addr, res->ai_addrlen);
    g.addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static SSL_CTX *make_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, g.o.tls_version) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, g.o.tls_version) != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* Benchmark only: the server's throwaway certificate is deliberately not verified. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    (void)SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Sessions are kept by hand (SSL_get1_session / SSL_set_session). */
    (void)SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_read_ahead(ctx, 1);
    return ctx;
}

static void raise_nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            perror("loadgen: setrlimit(RLIMIT_NOFILE)");
        }
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)g.o.conns + 16 > rl.rlim_cur) {
        fprintf(stderr, "loadgen: warning: %ld connections but only %llu descriptors\n",
                g.o.conns, (unsigned long long)rl.rlim_cur);
    }
}

static void enter_phase(enum phase p, uint64_t now)
{
    g.phase = p;
    g.t_phase_start = now;
    switch (p) {
    case P_WARMUP:
        g.t_measure = now + secs_to_ns(g.o.warmup);
        g.t_end = g.t_measure + secs_to_ns(g.o.duration);
        if (g.o.warmup <= 0.0) {
            enter_phase(P_MEASURE, now);
        }
        break;
    case P_MEASURE:
        g.t_measure = now;
        g.t_end = now + secs_to_ns(g.o.duration);
        break;
    case P_HOLD:
        g.t_idle_ready = now;
        g.t_end = now + secs_to_ns(g.o.hold);
        break;
    case P_SETUP:
    case P_DONE:
    default:
        break;
    }
}

/* Advance the phase by the clock and the setup counters. */
static void check_phase(uint64_t now)
{
    if (g.phase == P_SETUP) {
        int all = g.established + g.setup_failed >= g.o.conns;
        if (!all && now >= g.t_setup_deadline) {
            long i;
            set_error("setup: timed out opening connections");
            for (i = 0; i < g.o.conns; i++) {
                if (g.conns[i].in_setup) {
                    g.errors++;
                    conn_close(&g.conns[i], 0);
                    g.conns[i].in_setup = 0;
                    g.setup_inflight--;
                    g.setup_failed++;
                }
            }
            g.setup_failed += g.o.conns - g.next_to_start;   /* never started */
            g.errors += (unsigned long long)(g.o.conns - g.next_to_start);
            g.next_to_start = g.o.conns;
            all = 1;
        }
        if (all) {
            if (g.o.mode == M_IDLE) {
                /* Always printed, even "IDLE 0", so the reader sees two lines. */
                if (printf("IDLE %ld\n", g.established) < 0 || fflush(stdout) != 0) {
                    enter_phase(P_DONE, now);
                    return;
                }
            }
            if (g.established == 0) {
                enter_phase(P_DONE, now);
            } else if (g.o.mode == M_IDLE) {
                enter_phase(P_HOLD, now);
                if (g.stdin_eof) {
                    enter_phase(P_DONE, now);
                }
            } else {
                enter_phase(P_WARMUP, now);
            }
        }
    }
    if (g.phase == P_WARMUP && now >= g.t_measure) {
        enter_phase(P_MEASURE, now);
    }
    if ((g.phase == P_MEASURE || g.phase == P_HOLD) && now >= g.t_end) {
        g.t_stop = now;
        g.phase = P_DONE;
    }
}

static int next_timeout_ms(uint64_t now)
{
    uint64_t deadline;
    switch (g.phase) {
    case P_SETUP:
        deadline = g.t_setup_deadline;
        break;
    case P_WARMUP:
        deadline = g.t_measure;
        break;
    case P_MEASURE:
    case P_HOLD:
        deadline = g.t_end;
        break;
    case P_DONE:
    default:
        return 0;
    }
    if (deadline <= now) {
        return 0;
    }
    deadline = (deadline - now + 999999) / 1000000;
    return deadline > 1000 ? 1000 : (int)deadline;
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            printf("\\%c", ch);
        } else if (ch < 0x20) {
            printf("\\u%04x", ch);
        } else {
            putchar(ch);
        }
    }
    putchar('"');
}

static void print_json(uint64_t now)
{
    static const char *names[] = {"echo", "bulk", "handshake", "idle"};
    double secs;
    printf("{\"mode\": \"%s\", \"tls\": %s, \"tls_version\": ", names[g.o.mode],
           g.o.tls ? "true" : "false");
    if (g.o.tls) {
        printf("\"%s\"", g.o.tls_version == TLS1_3_VERSION ? "1.3" : "1.2");
    } else {
        printf("null");
    }
    printf(", \"conns\": %ld, \"size\": %zu", g.o.conns, g.o.size);
    if (g.o.mode == M_IDLE) {
        uint64_t ready = g.t_idle_ready != 0 ? g.t_idle_ready : now;
        printf(", \"established\": %ld, \"setup_seconds\": %.3f, \"held_seconds\": %.3f"
               ", \"dropped\": %llu",
               g.established, (double)(ready - g.t_start) / 1e9,
               g.t_idle_ready != 0 ? (double)(now - g.t_idle_ready) / 1e9 : 0.0, g.dropped);
    } else {
        if (g.t_measure == 0 || g.t_stop <= g.t_measure) {
            secs = 0.0;
        } else {
            secs = (double)(g.t_stop - g.t_measure) / 1e9;
        }
        if (g.o.mode == M_ECHO) {
            printf(", \"requests\": %llu, \"seconds\": %.4f, \"rps\": %.1f, \"p50_us\": %.1f"
                   ", \"p99_us\": %.1f, \"p999_us\": %.1f, \"mean_us\": %.1f, \"max_us\": %.1f",
                   g.ops, secs, secs > 0 ? (double)g.ops / secs : 0.0, hist_percentile_us(0.5),
                   hist_percentile_us(0.99), hist_percentile_us(0.999),
                   g.hist_n > 0 ? (double)g.lat_sum / (double)g.hist_n / 1000.0 : 0.0,
                   (double)g.lat_max / 1000.0);
        } else if (g.o.mode == M_BULK) {
            printf(", \"bytes\": %llu, \"seconds\": %.4f, \"mbps\": %.2f, \"inflight\": %ld",
                   g.bytes, secs, secs > 0 ? (double)g.bytes / 1e6 / secs : 0.0, g.o.inflight);
        } else {
            printf(", \"handshakes\": %llu, \"seconds\": %.4f, \"hps\": %.1f, \"resumed\": %llu"
                   ", \"resume\": %s",
                   g.ops, secs, secs > 0 ? (double)g.ops / secs : 0.0, g.resumed,
                   g.o.resume ? "true" : "false");
        }
    }
    printf(", \"errors\": %llu, \"error\": ", g.errors);
    if (g.error[0] != '\0') {
        json_string(g.error);
    } else {
        printf("null");
    }
    printf("}\n");
}

static void watch_stdin(void)
{
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = EPOLLIN;
    e.data.ptr = NULL;     /* NULL tags stdin */
    /* Fails with EPERM for regular files and /dev/null: then only --hold ends the hold. */
    g.stdin_watched = epoll_ctl(g.epfd, EPOLL_CTL_ADD, STDIN_FILENO, &e) == 0;
}

static void on_stdin(void)
{
    char buf[256];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n > 0 || (n < 0 && (errno == EINTR || errno == EAGAIN))) {
        return;
    }
    g.stdin_eof = 1;
    if (epoll_ctl(g.epfd, EPOLL_CTL_DEL, STDIN_FILENO, NULL) != 0) {
        perror("loadgen: epoll_ctl(DEL stdin)");
    }
    g.stdin_watched = 0;
    if (g.phase == P_HOLD) {
        g.t_stop = now_ns();
        g.phase = P_DONE;
    }
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    struct epoll_event events[MAX_EVENTS];
    uint64_t now;
    long i;
    int status = 1;
    int ok;

    g.epfd = -1;
    if (parse_args(argc, argv) != 0) {
        usage();
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGPIPE, &sa, NULL) != 0) {
        perror("loadgen: sigaction(SIGPIPE)");
        return 1;
    }
    raise_nofile_limit();
    if (resolve() != 0) {
        return 1;
    }
    g.payload = malloc(g.o.size);
    g.conns = calloc((size_t)g.o.conns, sizeof *g.conns);
    /* During pump_ready a connection can be on the list twice: once already pumped and
     * once re-queued, hence twice the connection count. */
    g.ready = calloc(2 * (size_t)g.o.conns, sizeof *g.ready);
    if (g.payload == NULL || g.conns == NULL || g.ready == NULL) {
        fprintf(stderr, "loadgen: out of memory\n");
        goto out;
    }
    for (i = 0; i < (long)g.o.size; i++) {
        g.payload[i] = (unsigned char)('a' + i % 26);
    }
    for (i = 0; i < g.o.conns; i++) {
        g.conns[i].fd = -1;
    }
    if (g.o.tls) {
        g.ctx = make_ctx();
        if (g.ctx == NULL) {
            unsigned long e = ERR_get_error();
            char buf[200];
            ERR_error_string_n(e, buf, sizeof buf);
            fprintf(stderr, "loadgen: cannot make the TLS context: %s\n", buf);
            goto out;
        }
    }
    g.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g.epfd < 0) {
        perror("loadgen: epoll_create1");
        goto out;
    }
    if (g.o.mode == M_IDLE) {
        watch_stdin();
    }

    now = now_ns();
    g.t_start = now;
    g.t_setup_deadline = now + secs_to_ns(g.o.timeout);
    if (g.o.mode == M_HANDSHAKE) {
        enter_phase(P_WARMUP, now);
        for (i = 0; i < g.o.conns && g.phase != P_DONE; i++) {
            conn_start(&g.conns[i]);
        }
    } else {
        g.phase = P_SETUP;
        setup_fill();
    }

    while (g.phase != P_DONE) {
        int n;
        now = now_ns();
        check_phase(now);
        if (g.phase == P_DONE) {
            break;
        }
        n = epoll_wait(g.epfd, events, MAX_EVENTS, g.nready > 0 ? 0 : next_timeout_ms(now));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("loadgen: epoll_wait");
            set_error("epoll_wait failed");
            break;
        }
        for (i = 0; i < n && g.phase != P_DONE; i++) {
            if (events[i].data.ptr == NULL) {
                on_stdin();
            } else {
                conn_event((struct conn *)events[i].data.ptr, events[i].events);
            }
        }
        if (g.nready > 0 && g.phase != P_DONE) {
            pump_ready();
        }
    }
    now = now_ns();
    if (g.t_stop == 0) {
        g.t_stop = now;
    }
    for (i = 0; i < g.o.conns; i++) {
        conn_close(&g.conns[i], 1);
    }
    ok = g.o.mode == M_IDLE ? g.established > 0
         : g.o.mode == M_BULK ? g.bytes > 0
                              : g.ops > 0;
    if (!ok) {
        set_error("nothing completed before the deadline (server stalled or too slow?)");
    }
    print_json(now);
    if (fflush(stdout) != 0) {
        perror("loadgen: stdout");
    }
    status = ok ? 0 : 1;

out:
    SSL_SESSION_free(g.session);
    SSL_CTX_free(g.ctx);
    if (g.epfd >= 0) {
        (void)close(g.epfd);
    }
    free(g.conns);
    free(g.ready);
    free(g.payload);
    return status;
}
