/*
 * server.c: listening TCP servers: binding, accepting, and handing new connections to the
 * embedding (for TLS servers, once their handshake is done).
 *
 * Theory of operation
 * -------------------
 * Accepting. A plain server hands every connection to the embedding as it is accepted
 * (UVS_ACCEPT_NEW). A TLS server does the handshake first and announces the connection once
 * it is established (UVS_ACCEPT_ESTABLISHED, which stands for UVS_EV_CONNECT too): one call
 * into the embedding instead of two, and none for a half-open scanner until its handshake
 * fails. A client usually sends its first request right behind its last handshake message, so
 * the engine goes on decrypting after the handshake (UVS__C_ANNOUNCE_DUE) and the announcement
 * carries the plaintext that came along: connect and first read are one call, not two.
 *
 * Announcing. A connection still to be announced has data == NULL and `acceptor` set; an event
 * before the handshake completes is a failure (an error, a timeout, the peer leaving), and it
 * announces the connection first (UVS_ACCEPT_FAILED), so that the embedding sees the error on a
 * socket as before; an event after it (the peer's close_notify, say) announces it as
 * established. Servers set eager (uvs_server_set_eager) when the embedding must see the SSL*
 * before the handshake (SNI bookkeeping, per-SSL configuration).
 *
 * Lifetime. A server counts the connections it has yet to announce and is freed (UVS_EV_CLOSED)
 * only when the listening handle has closed and they are all announced or gone, so that they
 * can still be announced after it stopped listening. Closing the loop closes unannounced
 * connections without telling anyone.
 *
 * The TLS side of a server (its SSL_CTX reference and handshake timeout) is set and freed by
 * tls_conn.c (uvs_server_set_tls, uvs__server_free_tls); each accepted connection gets its
 * engine from uvs__tls_attach_accepted. uvs_server_set_tls may be called again while the
 * server runs (TcpSslServer.ssl_ctx): connections accepted from then on use the new context;
 * each earlier one holds its own reference to the context it started with (in its SSL*).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "uvs.h"

/* ---- events and lifetime ------------------------------------------------------------------ */

/* An event for a server: like uvs__emit. */
static void uvs__server_emit(uvs_server_t *s, int kind, int status, int action) {
    if (s->data == NULL)
        return;
    uvs__batch_flush(s->loop);
    uvs__cb.on_event(s->data, kind, status, action);
}

static void uvs__server_free(uvs_server_t *s) {
    uvs__server_free_tls(s);
    uvs__server_free_proxy(s);
    uvs__server_emit(s, UVS_EV_CLOSED, 0, 0);
    free(s);
}

/* One connection s had to announce was announced or closed. */
static void uvs__server_release(uvs_server_t *s) {
    s->unannounced--;
    if (s->unannounced == 0 && s->handle_closed)
        uvs__server_free(s);
}

/* c closes before it was announced: its server stops waiting for it, and nobody is told. */
void uvs__server_forget(uvs_conn_t *c) {
    uvs_server_t *s = c->acceptor;
    c->acceptor = NULL;
    c->state &= ~(unsigned)UVS__C_ANNOUNCE_DUE;
    uvs__server_release(s);
}

/* ---- announcing --------------------------------------------------------------------------- */

/* Hand a TLS server's connection to the embedding (see "Announcing" above), with the n bytes of
 * first data at p, if any. A connection whose handshake is done is announced as established
 * whatever the caller's stage: an event that follows the handshake (the peer's close_notify, an
 * error) comes after the connect. Returns 1 when the embedding took it, 0 when it refused it
 * (the connection is then closing). */
int uvs__conn_announce(uvs_conn_t *c, int stage, const char *p, size_t n) {
    uvs_server_t *s = c->acceptor;
    c->acceptor = NULL;
    if (c->state & UVS__C_ANNOUNCE_DUE) {
        c->state &= ~(unsigned)UVS__C_ANNOUNCE_DUE;
        stage = UVS_ACCEPT_ESTABLISHED;
    }
    if (s->data != NULL) {
        uvs__batch_flush(c->loop);
        uvs__cb.on_accept(s->data, c, stage, p, n);
    }
    uvs__server_release(s);
    if (c->data == NULL) {
        /* refused; or taken and closed at once (connect_cb closing it), which is a graceful
         * close like any other: close_notify still goes out when the flush comes */
        if (!(c->state & (UVS__C_CLOSING | UVS__C_CLOSE_WANTED)))
            uvs__conn_close_now(c);
        return 0;
    }
    return 1;
}

/* ---- accepting ---------------------------------------------------------------------------- */

static void uvs__connection_cb(uv_stream_t *ls, int status) {
    uvs_server_t *s = ls->data;
    uvs_loop_t *loop = s->loop;
    if (s->closing)
        return;
    if (status < 0) {
        uvs__server_emit(s, UVS_EV_ERROR, status, UVS_ACT_ACCEPT);
        uvs__flush_dirty(loop);
        return;
    }
    int err;
    uvs_conn_t *c = uvs__conn_new(loop, NULL, &err);
    if (c == NULL) {
        uvs__server_emit(s, UVS_EV_ERROR, err, UVS_ACT_ACCEPT);
        uvs__flush_dirty(loop);
        return;
    }
    err = uv_accept(ls, (uv_stream_t *)&c->tcp);
    if (err != 0) {
        uvs__conn_close_now(c);
        return;
    }
    c->state |= UVS__C_CONNECTED;
    /* The peer's address now, while it can be asked (a reset connection cannot say it any
     * more). A peer already gone leaves it unknown. */
    (void)uvs__tcp_fetch_address(c, 1);
    if (s->local.sa.sa_family != AF_UNSPEC)
        c->addrs.local = s->local; /* one system call (getsockname at the close) less */
    (void)uv_tcp_nodelay(&c->tcp, 1); /* best effort, as every accepted socket supports it */
    if (s->proxy) {
        /* a PROXY header first: the connection (and its TLS engine) waits for it (proxy.c) */
        uvs__proxy_accept(c, s);
        if (!(c->state & UVS__C_CLOSING))
            uvs__conn_start_reading(c);
        uvs__flush_dirty(loop);
        return;
    }
    if (s->tls_ctx != NULL) {
        err = uvs__tls_attach_accepted(c, s);
        if (err != 0) {
            uvs__conn_close_now(c);
            uvs__server_emit(s, UVS_EV_ERROR, err, UVS_ACT_ACCEPT);
            uvs__flush_dirty(loop);
            return;
        }
    }
    if (s->tls_ctx != NULL && !s->eager) {
        c->acceptor = s; /* announced when the handshake is done, or when it fails */
        s->unannounced++;
    } else {
        uvs__batch_flush(loop);
        uvs__cb.on_accept(s->data, c, UVS_ACCEPT_NEW, NULL, 0);
        if (c->data == NULL)
            uvs__conn_close_now(c); /* the embedding refused it (or failed) */
    }
    if (!(c->state & UVS__C_CLOSING)) {
        uvs__conn_start_reading(c);
        if (c->tls != NULL && !(c->state & UVS__C_CLOSING))
            uvs__mark_dirty(c); /* the flush arms the handshake timer */
    }
    uvs__flush_dirty(loop);
}

/* Keep s's address when it is a single one: what every connection it accepts has as its own.
 * On a wildcard (0.0.0.0, ::) that depends on the address each client reached, and connections
 * ask the kernel (tcp.c); so they do if this lookup fails. */
static void uvs__server_keep_local(uvs_server_t *s) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    int one = ss.ss_family == AF_INET
                  ? ((const struct sockaddr_in *)&ss)->sin_addr.s_addr != htonl(INADDR_ANY)
                  : !IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&ss)->sin6_addr);
    if (one)
        uvs__addr_copy(&s->local, (const struct sockaddr *)&ss); /* AF_UNSPEC if neither */
}

static void uvs__server_closed_cb(uv_handle_t *h) {
    uvs_server_t *s = h->data;
    s->handle_closed = 1;
    if (s->unannounced == 0)
        uvs__server_free(s); /* else when the last of them is announced or closed */
}

uvs_server_t *uvs_server_new(uvs_loop_t *loop, void *data, const char *ip, int port, int backlog,
                             int reuse_port, int *err) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (port < 0 || port > 65535) {
        *err = UV_EINVAL;
        return NULL;
    }
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss) != 0) {
        *err = UV_EINVAL;
        return NULL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = uv_translate_sys_error(errno);
        return NULL;
    }
    int one = 1;
    socklen_t alen = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                             : sizeof(struct sockaddr_in6);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
        bind(fd, (struct sockaddr *)&ss, alen) != 0) {
        *err = uv_translate_sys_error(errno);
        close(fd);
        return NULL;
    }
    uvs_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        *err = UV_ENOMEM;
        return NULL;
    }
    int r = uv_tcp_init(&loop->uv, &s->tcp);
    if (r != 0) {
        close(fd);
        free(s);
        *err = r;
        return NULL;
    }
    s->tcp.data = s;
    s->loop = loop;
    r = uv_tcp_open(&s->tcp, fd);
    if (r != 0)
        close(fd); /* not taken: still ours */
    else
        r = uv_listen((uv_stream_t *)&s->tcp, backlog < 0 ? SOMAXCONN : backlog,
                      uvs__connection_cb); /* on failure uv_close below closes fd */
    if (r != 0) {
        uv_close((uv_handle_t *)&s->tcp, uvs__server_closed_cb);
        *err = r;
        return NULL;
    }
    s->data = data;
    uvs__server_keep_local(s);
    uvs__link_add(loop, &s->link, UVS__OBJ_SERVER);
    *err = 0;
    return s;
}

int uvs_server_port(uvs_server_t *s) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int r = uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&ss, &len);
    if (r != 0)
        return r;
    if (ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
    return UV_EAFNOSUPPORT;
}

int uvs_server_fileno(uvs_server_t *s) {
    uv_os_fd_t fd;
    int r = uv_fileno((uv_handle_t *)&s->tcp, &fd);
    return r != 0 ? r : (int)fd;
}

void uvs_server_set_eager(uvs_server_t *s, int eager) { s->eager = eager != 0; }

/* How many accepted connections s has yet to announce (their handshakes still running). */
int uvs_server_unannounced(const uvs_server_t *s) { return s->unannounced; }

/* Graceful shutdown (TcpServer.shutdown): the connections s accepted but has not announced
 * (TLS handshakes still running) never reached the embedding, and nothing was written to them:
 * they are closed at once, telling nobody. Call it before uvs_server_close: while the listening
 * handle is open, closing them cannot free s. */
void uvs_server_abort_unannounced(uvs_server_t *s) {
    uvs_loop_t *loop = s->loop;
    int left = s->unannounced;
    uvs__link_t *l = loop->objects.next;
    while (left > 0 && l != &loop->objects) {
        uvs__link_t *next = l->next; /* closing c unlinks it, and nothing else */
        if (l->kind == UVS__OBJ_CONN) {
            uvs_conn_t *c = (uvs_conn_t *)((char *)l - offsetof(uvs_conn_t, link));
            if (c->acceptor == s) {
                left--;
                uvs__conn_close_now(c);
            }
        }
        l = next;
    }
}

void uvs_server_close(uvs_server_t *s) {
    if (s->closing)
        return;
    s->closing = 1;
    uvs__link_del(&s->link);
    uvs__kick(s->loop);
    uv_close((uv_handle_t *)&s->tcp, uvs__server_closed_cb);
}
