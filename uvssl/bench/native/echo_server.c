/*
 * echo_server.c - the native reference echo server of uvssl's benchmarks.
 *
 * Theory of operation
 * -------------------
 * This is the "practical upper bound" uvssl is compared against: one thread, one epoll set,
 * OpenSSL driven directly on non-blocking sockets, no allocation per message.
 *
 * Each accepted socket gets a `struct conn`. In TLS mode OpenSSL owns the socket through a
 * socket BIO (SSL_set_fd), so SSL_read and SSL_write do the read(2)/write(2) calls themselves.
 * A non-blocking SSL call that cannot make progress fails with SSL_ERROR_WANT_READ or
 * SSL_ERROR_WANT_WRITE: it is telling us which socket readiness it waits for, and that has
 * nothing to do with which call was made. SSL_read needs to *write* during a handshake (the
 * handshake is driven implicitly by SSL_read: SSL_set_accept_state) or when it answers a
 * key update; SSL_write needs to *read* if a handshake is still in progress. So each
 * connection remembers, for its blocked read and its blocked write separately, which
 * readiness will unblock it, and the epoll interest is exactly the union of those.
 *
 * Echo path: all connections read into one shared buffer. What was read is written straight
 * back with SSL_write. Whatever the socket does not take (a partial write, or WANT_*) is
 * copied into the connection's output buffer, allocated the first time it is needed (idle
 * connections never have one) and kept until the connection closes. OpenSSL's rule is that
 * a write which returned WANT_* must be retried with the same bytes; the output buffer always
 * starts with exactly the bytes of the failed call, and SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
 * lets them live at a different address. SSL_MODE_ENABLE_PARTIAL_WRITE makes SSL_write
 * return after each record, so a large write is never all-or-nothing.
 *
 * Flow control: when a connection's backlog reaches OUT_HIGH bytes it stops reading (drops
 * EPOLLIN) until the backlog is below OUT_HIGH again. Because OpenSSL may hold already
 * received records in its own buffer (read-ahead is on, to read a whole record, header and
 * body, in one syscall), reading resumes at once when the backlog drains rather than waiting
 * for epoll, which only knows about the kernel's buffer.
 *
 * Epoll is level-triggered, so a connection's handler may stop at any point and be called
 * again. EPOLLERR/EPOLLHUP, any fatal TLS error, garbage from the client (SSL_ERROR_SSL) or
 * a close_notify simply close that one connection.
 *
 * Sessions: the server session cache and stateless session tickets (TLS 1.2 and 1.3) are on,
 * so clients can resume. SSL_MODE_RELEASE_BUFFERS frees OpenSSL's record buffers of idle
 * connections.
 *
 * SIGTERM and SIGINT are taken through a signalfd in the same epoll set, so shutdown is an
 * ordinary event: every connection, the SSL_CTX and all descriptors are released.
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
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define READ_CHUNK 65536                   /* shared read buffer (a TLS record is <= 16 KiB) */
#define OUT_HIGH 65536                     /* stop reading above this much pending output */
#define OUT_CAP (OUT_HIGH + READ_CHUNK)    /* so one more read always fits */
#define MAX_EVENTS 256

/* Results of io_read/io_write besides a positive byte count. */
#define IO_WANT_READ (-1)
#define IO_WANT_WRITE (-2)
#define IO_CLOSED (-3)

struct conn {
    struct conn *prev, *next;
    int fd;
    SSL *ssl;               /* NULL in plain mode */
    unsigned char *out;     /* pending output, NULL until first needed */
    size_t out_off;         /* start of pending bytes in out */
    size_t out_len;         /* number of pending bytes */
    uint32_t events;        /* current epoll interest */
    unsigned read_wants_write : 1;  /* SSL_read returned WANT_WRITE */
    unsigned write_wants_read : 1;  /* SSL_write returned WANT_READ */
    unsigned fatal : 1;             /* fatal TLS error: no SSL_shutdown allowed */
};

static unsigned char g_rbuf[READ_CHUNK];
static char g_tag_listen, g_tag_signal;   /* epoll tags for the non-connection fds */

struct server {
    int epfd;
    int lfd;
    int sfd;
    int spare_fd;          /* reserved descriptor, released to shed a connection on EMFILE */
    SSL_CTX *ctx;          /* NULL in plain mode */
    struct conn *conns;    /* doubly linked list of live connections */
};

static void usage(void)
{
    fprintf(stderr,
            "usage: echo_server [--host H] [--port P] (--cert FILE --key FILE | --plain)\n"
            "  --host H     address to listen on (default 127.0.0.1)\n"
            "  --port P     port to listen on, 0 picks a free one (default 0)\n"
            "  --cert FILE  PEM certificate chain (TLS mode)\n"
            "  --key FILE   PEM private key (TLS mode)\n"
            "  --plain      plain TCP echo, no TLS\n"
            "Prints 'READY <port>' on stdout once listening; SIGTERM/SIGINT stop it.\n");
}

static void log_ssl_errors(const char *what)
{
    unsigned long e;
    char buf[256];
    int any = 0;
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof buf);
        fprintf(stderr, "echo_server: %s: %s\n", what, buf);
        any = 1;
    }
    if (!any) {
        fprintf(stderr, "echo_server: %s failed\n", what);
    }
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
            perror("echo_server: setrlimit(RLIMIT_NOFILE)");
        }
    }
}

/* ---- I/O primitives: one code path for TLS and plain TCP ---------------------------------- */

static long tls_result(struct conn *c, int n)
{
    int err = SSL_get_error(c->ssl, n);
    switch (err) {
    case SSL_ERROR_WANT_READ:
        return IO_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return IO_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:   /* clean close_notify from the peer */
        return IO_CLOSED;
    default:                      /* SSL_ERROR_SSL, SSL_ERROR_SYSCALL, anything else */
        c->fatal = 1;
        ERR_clear_error();        /* keep the thread's error queue clean for other conns */
        return IO_CLOSED;
    }
}

static long io_read(struct conn *c, unsigned char *buf, size_t len)
{
    if (c->ssl != NULL) {
        int n = SSL_read(c->ssl, buf, (int)len);
        return n > 0 ? (long)n : tls_result(c, n);
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
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? IO_WANT_READ : IO_CLOSED;
    }
}

static long io_write(struct conn *c, const unsigned char *buf, size_t len)
{
    if (c->ssl != NULL) {
        int n = SSL_write(c->ssl, buf, (int)len);
        return n > 0 ? (long)n : tls_result(c, n);
    }
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) {
            return n > 0 ? (long)n : IO_WANT_WRITE;
        }
        if (errno == EINTR) {
            continue;
        }
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? IO_WANT_WRITE : IO_CLOSED;
    }
}

/* ---- connections -------------------------------------------------------------------------- */

static void conn_close(struct server *s, struct conn *c)
{
    if (c->ssl != NULL) {
        if (!c->fatal && SSL_is_init_finished(c->ssl)) {
            /* Best effort close_notify; the socket is non-blocking, so this never waits. */
            (void)SSL_shutdown(c->ssl);
        }
        ERR_clear_error();
        SSL_free(c->ssl);
    }
    if (close(c->fd) != 0 && errno != EINTR) {
        perror("echo_server: close");
    }
    free(c->out);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    free(c);
}

/* Make the epoll interest match what the connection waits for. 0 on success. */
static int conn_update_events(struct server *s, struct conn *c)
{
    uint32_t ev = 0;
    if (c->out_len < OUT_HIGH) {
        ev |= EPOLLIN;                 /* reading is not paused */
    }
    if (c->out_len > 0) {
        ev |= c->write_wants_read ? EPOLLIN : EPOLLOUT;
    }
    if (c->read_wants_write) {
        ev |= EPOLLOUT;
    }
    if (ev != c->events) {
        struct epoll_event e;
        memset(&e, 0, sizeof e);
        e.events = ev;
        e.data.ptr = c;
        if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &e) != 0) {
            perror("echo_server: epoll_ctl(MOD)");
            return -1;
        }
        c->events = ev;
    }
    return 0;
}

/* Queue bytes the socket did not take. 0 on success. */
static int conn_queue(struct conn *c, const unsigned char *data, size_t n)
{
    if (c->out == NULL) {
        c->out = malloc(OUT_CAP);
        if (c->out == NULL) {
            return -1;
        }
        c->out_off = 0;
    }
    if (c->out_off + c->out_len + n > OUT_CAP) {
        /* Compact; allowed because of SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER. */
        memmove(c->out, c->out + c->out_off, c->out_len);
        c->out_off = 0;
        if (c->out_len + n > OUT_CAP) {
            return -1;   /* cannot happen: reading stops at OUT_HIGH */
        }
    }
    memcpy(c->out + c->out_off + c->out_len, data, n);
    c->out_len += n;
    return 0;
}

/* Write pending output. 0 if the connection lives on, -1 if it must be closed. */
static int conn_flush(struct conn *c)
{
    while (c->out_len > 0) {
        long w = io_write(c, c->out + c->out_off, c->out_len);
        if (w > 0) {
            c->out_off += (size_t)w;
            c->out_len -= (size_t)w;
            c->write_wants_read = 0;
        } else if (w == IO_WANT_WRITE) {
            c->write_wants_read = 0;
            return 0;
        } else if (w == IO_WANT_READ) {
            c->write_wants_read = 1;
            return 0;
        } else {
            return -1;
        }
    }
    c->out_off = 0;
    c->write_wants_read = 0;
    return 0;
}

/* Echo n bytes: write directly if nothing is pending, queue the rest. 0 or -1 (close). */
static int conn_echo(struct conn *c, const unsigned char *data, size_t n)
{
    if (c->out_len == 0) {
        long w = io_write(c, data, n);
        if (w > 0) {
            data += w;
            n -= (size_t)w;
            if (n == 0) {
                return 0;
            }
        } else if (w == IO_WANT_READ) {
            c->write_wants_read = 1;
        } else if (w != IO_WANT_WRITE) {
            return -1;
        }
    }
    return conn_queue(c, data, n);
}

/* Read and echo until the socket (and OpenSSL's buffer) is drained or the backlog is full. */
static int conn_read(struct conn *c)
{
    while (c->out_len < OUT_HIGH) {
        long r = io_read(c, g_rbuf, sizeof g_rbuf);
        if (r > 0) {
            c->read_wants_write = 0;
            if (conn_echo(c, g_rbuf, (size_t)r) != 0) {
                return -1;
            }
        } else if (r == IO_WANT_READ) {
            c->read_wants_write = 0;
            return 0;
        } else if (r == IO_WANT_WRITE) {
            c->read_wants_write = 1;
            return 0;
        } else {
            return -1;
        }
    }
    return 0;
}

static void conn_event(struct server *s, struct conn *c, uint32_t ev)
{
    int was_paused = c->out_len >= OUT_HIGH;
    int do_read;

    if (ev & (EPOLLERR | EPOLLHUP)) {
        conn_close(s, c);   /* peer gone in both directions: nothing left to echo */
        return;
    }
    if (c->out_len > 0 &&
        ((c->write_wants_read && (ev & EPOLLIN)) || (!c->write_wants_read && (ev & EPOLLOUT)))) {
        if (conn_flush(c) != 0) {
            conn_close(s, c);
            return;
        }
    }
    do_read = c->out_len < OUT_HIGH &&
              ((ev & EPOLLIN) || (c->read_wants_write && (ev & EPOLLOUT)) || was_paused);
    if (do_read && conn_read(c) != 0) {
        conn_close(s, c);
        return;
    }
    if (conn_update_events(s, c) != 0) {
        conn_close(s, c);
    }
}

static void accept_all(struct server *s)
{
    for (;;) {
        int one = 1;
        struct conn *c;
        struct epoll_event e;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) {
                continue;
            }
            if ((errno == EMFILE || errno == ENFILE) && s->spare_fd >= 0) {
                /* Out of descriptors: accept and drop one so the listener does not spin. */
                (void)close(s->spare_fd);
                fd = accept(s->lfd, NULL, NULL);
                if (fd >= 0) {
                    (void)close(fd);
                }
                s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                fprintf(stderr, "echo_server: out of file descriptors, dropped a client\n");
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                perror("echo_server: accept4");
            }
            return;
        }
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
            perror("echo_server: setsockopt(TCP_NODELAY)");
            (void)close(fd);
            continue;
        }
        c = calloc(1, sizeof *c);
        if (c == NULL) {
            (void)close(fd);
            continue;
        }
        c->fd = fd;
        if (s->ctx != NULL) {
            c->ssl = SSL_new(s->ctx);
            if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1) {
                log_ssl_errors("SSL_new/SSL_set_fd");
                SSL_free(c->ssl);    /* SSL_free(NULL) is a no-op */
                free(c);
                (void)close(fd);
                continue;
            }
            SSL_set_accept_state(c->ssl);
        }
        memset(&e, 0, sizeof e);
        e.events = EPOLLIN;
        e.data.ptr = c;
        if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &e) != 0) {
            perror("echo_server: epoll_ctl(ADD)");
            SSL_free(c->ssl);
            free(c);
            (void)close(fd);
            continue;
        }
        c->events = EPOLLIN;
        c->next = s->conns;
        if (s->conns != NULL) {
            s->conns->prev = c;
        }
        s->conns = c;
    }
}

/* ---- setup -------------------------------------------------------------------------------- */

static SSL_CTX *make_ctx(const char *cert, const char *key)
{
    static const unsigned char sid_ctx[] = "uvssl-bench-echo";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        log_ssl_errors("SSL_CTX_new");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        log_ssl_errors("SSL_CTX_set_min_proto_version");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        log_ssl_errors("loading the certificate");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        log_ssl_errors("loading the private key");
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        log_ssl_errors("certificate and key do not match");
        goto fail;
    }
    if (SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1) != 1) {
        log_ssl_errors("SSL_CTX_set_session_id_context");
        goto fail;
    }
    (void)SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    (void)SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    (void)SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_read_ahead(ctx, 1);
    /* Session tickets are on by default (no SSL_OP_NO_TICKET): resumption works. */
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Listen on host:port; returns the socket and stores the bound port, or -1. */
static int make_listener(const char *host, const char *port, unsigned *bound_port)
{
    struct addrinfo hints, *res = NULL, *ai;
    int fd = -1;
    int rc;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "echo_server: cannot resolve %s: %s\n", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int one = 1;
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            continue;
        }
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
            bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0) {
            break;
        }
        perror("echo_server: bind/listen");
        (void)close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
            perror("echo_server: getsockname");
            (void)close(fd);
            return -1;
        }
        if (ss.ss_family == AF_INET6) {
            *bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            *bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    return fd;
}

static int epoll_add_tag(int epfd, int fd, void *tag)
{
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = EPOLLIN;
    e.data.ptr = tag;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "0", *cert = NULL, *key = NULL;
    int plain = 0, status = 1, i, running = 1;
    unsigned bound_port = 0;
    sigset_t mask;
    struct sigaction sa;
    struct server s;
    struct epoll_event events[MAX_EVENTS];

    memset(&s, 0, sizeof s);
    s.epfd = s.lfd = s.sfd = s.spare_fd = -1;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--plain") == 0) {
            plain = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
            return 0;
        }
        if (v == NULL) {
            usage();
            return 2;
        }
        if (strcmp(a, "--host") == 0) {
            host = v;
        } else if (strcmp(a, "--port") == 0) {
            char *end;
            long p;
            errno = 0;
            p = strtol(v, &end, 10);
            if (errno != 0 || *end != '\0' || end == v || p < 0 || p > 65535) {
                fprintf(stderr, "echo_server: bad port %s\n", v);
                return 2;
            }
            port = v;
        } else if (strcmp(a, "--cert") == 0) {
            cert = v;
        } else if (strcmp(a, "--key") == 0) {
            key = v;
        } else {
            usage();
            return 2;
        }
        i++;
    }
    if (plain ? (cert != NULL || key != NULL) : (cert == NULL || key == NULL)) {
        fprintf(stderr, "echo_server: give either --cert and --key, or --plain\n");
        return 2;
    }

    /* SIGPIPE must not kill us when OpenSSL writes to a socket the peer has closed. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGPIPE, &sa, NULL) != 0) {
        perror("echo_server: sigaction(SIGPIPE)");
        return 1;
    }
    /* A background job of a non-interactive shell starts with SIGINT ignored, and an
     * ignored signal never reaches a signalfd: restore the default disposition first (it
     * never runs, the signals are blocked). */
    sa.sa_handler = SIG_DFL;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) {
        perror("echo_server: sigaction");
        return 1;
    }
    if (sigemptyset(&mask) != 0 || sigaddset(&mask, SIGTERM) != 0 ||
        sigaddset(&mask, SIGINT) != 0 || sigprocmask(SIG_BLOCK, &mask, NULL) != 0) {
        perror("echo_server: sigprocmask");
        return 1;
    }
    raise_nofile_limit();

    if (!plain) {
        s.ctx = make_ctx(cert, key);
        if (s.ctx == NULL) {
            goto out;
        }
    }
    s.sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s.sfd < 0) {
        perror("echo_server: signalfd");
        goto out;
    }
    s.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s.epfd < 0) {
        perror("echo_server: epoll_create1");
        goto out;
    }
    s.lfd = make_listener(host, port, &bound_port);
    if (s.lfd < 0) {
        goto out;
    }
    s.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (epoll_add_tag(s.epfd, s.lfd, &g_tag_listen) != 0 ||
        epoll_add_tag(s.epfd, s.sfd, &g_tag_signal) != 0) {
        perror("echo_server: epoll_ctl(ADD)");
        goto out;
    }
    if (printf("READY %u\n", bound_port) < 0 || fflush(stdout) != 0) {
        perror("echo_server: stdout");
        goto out;
    }

    while (running) {
        int n = epoll_wait(s.epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("echo_server: epoll_wait");
            goto out;
        }
        for (i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &g_tag_listen) {
                accept_all(&s);
            } else if (p == &g_tag_signal) {
                struct signalfd_siginfo si;
                ssize_t r = read(s.sfd, &si, sizeof si);
                if (r == (ssize_t)sizeof si || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                    running = 0;
                }
            } else {
                conn_event(&s, (struct conn *)p, events[i].events);
            }
        }
    }
    status = 0;

out:
    while (s.conns != NULL) {
        conn_close(&s, s.conns);
    }
    if (s.lfd >= 0) {
        (void)close(s.lfd);
    }
    if (s.sfd >= 0) {
        (void)close(s.sfd);
    }
    if (s.epfd >= 0) {
        (void)close(s.epfd);
    }
    if (s.spare_fd >= 0) {
        (void)close(s.spare_fd);
    }
    SSL_CTX_free(s.ctx);
    return status;
}
