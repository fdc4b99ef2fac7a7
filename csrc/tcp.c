/*
 * tcp.c: how a TCP connection comes to exist on the client side, and what is TCP about it:
 * connecting (name resolution, one address after another), adopting a connected socket, socket
 * options and the two addresses. Everything a connection does once it exists is in conn.c.
 *
 * Theory of operation
 * -------------------
 * Connecting. Numeric addresses connect at once; names go through uv_getaddrinfo. When a
 * connect to one resolved address fails, the handle is closed and re-initialised and the next
 * address is tried (UVS__C_RECONNECT); only the last failure is reported. The address being
 * tried is kept as the peer's, so that a refused connection can still name it.
 *
 * Once connected (or adopted with uvs_conn_open) the connection reads (conn.c) and, on plain
 * TCP, tells the embedding UVS_EV_CONNECT; a TLS connection says so when its handshake is done
 * (tls_conn.c). The flush that follows sends what was written before the connect, and makes a
 * TLS engine start its handshake.
 *
 * Addresses. A connection's two addresses are kept in c->addrs so that they stay readable after
 * it closes: the peer's is taken when it connects or is accepted, this end's when it is first
 * asked for or at the close (uvs__tcp_fetch_address), whichever comes first. A connection
 * accepted by a server listening on one address (not a wildcard) has that one from the start
 * (server.c), which spares a system call per connection.
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "uvs.h"

static int uvs__conn_try_connect(uvs_conn_t *c, const struct sockaddr *addr);

/* ---- connecting --------------------------------------------------------------------------- */

static void uvs__connected(uvs_conn_t *c) {
    c->state &= ~(unsigned)UVS__C_CONNECTING;
    c->state |= UVS__C_CONNECTED;
    if (c->ai_head != NULL) {
        uv_freeaddrinfo(c->ai_head);
        c->ai_head = c->ai_next = NULL;
    }
    int r = uv_tcp_nodelay(&c->tcp, 1);
    if (r != 0) {
        uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_CONNECT);
        return;
    }
    uvs__conn_start_reading(c);
    if (c->state & UVS__C_CLOSING)
        return;
    if (c->tls == NULL)
        uvs__emit(c, UVS_EV_CONNECT, 0, UVS_ACT_CONNECT);
    uvs__mark_dirty(c); /* sends data= and early writes; a TLS engine starts its handshake */
}

static void uvs__reconnect_closed_cb(uv_handle_t *h) {
    uvs_conn_t *c = h->data;
    c->state &= ~(unsigned)UVS__C_RECONNECT;
    if (c->state & UVS__C_CLOSING) {
        c->state |= UVS__C_CLOSED;
        uvs__conn_maybe_free(c);
        return;
    }
    int r = uv_tcp_init(&c->loop->uv, &c->tcp);
    if (r != 0) {
        /* the handle is dead: report, then finish as if it had closed */
        c->state |= UVS__C_CLOSING | UVS__C_CLOSED;
        uvs__link_del(&c->link);
        uvs__emit(c, UVS_EV_ERROR, r, UVS_ACT_CONNECT);
        uvs__conn_maybe_free(c);
        return;
    }
    c->tcp.data = c;
    struct addrinfo *ai = c->ai_next;
    c->ai_next = ai->ai_next;
    r = uvs__conn_try_connect(c, ai->ai_addr);
    if (r != 0)
        uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_CONNECT);
    uvs__flush_dirty(c->loop);
}

static void uvs__connect_cb(uv_connect_t *req, int status) {
    uvs_conn_t *c = req->data;
    free(req);
    if (uvs__req_done(c))
        return;
    if (status == 0) {
        uvs__connected(c);
    } else if (c->ai_next != NULL && status != UV_ECANCELED) {
        c->state |= UVS__C_RECONNECT;
        uv_close((uv_handle_t *)&c->tcp, uvs__reconnect_closed_cb);
    } else {
        uvs__conn_fail(c, UVS_EV_ERROR, status, UVS_ACT_CONNECT);
    }
    uvs__flush_dirty(c->loop);
}

static int uvs__conn_try_connect(uvs_conn_t *c, const struct sockaddr *addr) {
    uv_connect_t *req = malloc(sizeof(*req));
    if (req == NULL)
        return UV_ENOMEM;
    req->data = c;
    /* the peer's address is the one being tried: a refused connection can still name it */
    if (addr->sa_family == AF_INET6)
        c->addrs.peer.in6 = *(const struct sockaddr_in6 *)addr;
    else
        c->addrs.peer.in4 = *(const struct sockaddr_in *)addr;
    int r = uv_tcp_connect(req, &c->tcp, addr, uvs__connect_cb);
    if (r != 0) {
        free(req);
        return r;
    }
    c->pending_reqs++;
    c->state |= UVS__C_CONNECTING;
    return 0;
}

static void uvs__resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    uvs_conn_t *c = req->data;
    free(req);
    c->state &= ~(unsigned)UVS__C_RESOLVING;
    if ((c->state & UVS__C_CLOSING) && res != NULL) {
        uv_freeaddrinfo(res);
        res = NULL;
    }
    if (uvs__req_done(c))
        return;
    if (status != 0 || res == NULL) {
        if (res != NULL)
            uv_freeaddrinfo(res);
        uvs__conn_fail(c, UVS_EV_ERROR, status ? status : UV_EAI_NONAME, UVS_ACT_RESOLVE);
        uvs__flush_dirty(c->loop);
        return;
    }
    c->ai_head = res;
    c->ai_next = res->ai_next;
    int r = uvs__conn_try_connect(c, res->ai_addr);
    if (r != 0)
        uvs__conn_fail(c, UVS_EV_ERROR, r, UVS_ACT_CONNECT);
    uvs__flush_dirty(c->loop);
}

uvs_conn_t *uvs_conn_connect(uvs_loop_t *loop, void *data, const char *host, int port, int *err) {
    if (port < 0 || port > 65535) {
        *err = UV_EINVAL;
        return NULL;
    }
    uvs_conn_t *c = uvs__conn_new(loop, data, err);
    if (c == NULL)
        return NULL;
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    int r;
    if (uv_ip4_addr(host, port, &a4) == 0) {
        r = uvs__conn_try_connect(c, (const struct sockaddr *)&a4);
    } else if (uv_ip6_addr(host, port, &a6) == 0) {
        r = uvs__conn_try_connect(c, (const struct sockaddr *)&a6);
    } else {
        uv_getaddrinfo_t *req = malloc(sizeof(*req));
        char service[8];
        struct addrinfo hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        hints.ai_flags = AI_NUMERICSERV;
        snprintf(service, sizeof(service), "%d", port);
        if (req == NULL) {
            r = UV_ENOMEM;
        } else {
            req->data = c;
            r = uv_getaddrinfo(&loop->uv, req, uvs__resolved_cb, host, service, &hints);
            if (r != 0)
                free(req);
            else {
                c->pending_reqs++;
                c->state |= UVS__C_RESOLVING;
            }
        }
    }
    if (r != 0) {
        c->data = NULL; /* never reported: the caller raises instead */
        uvs__conn_close_now(c);
        *err = r;
        return NULL;
    }
    *err = 0;
    return c;
}

uvs_conn_t *uvs_conn_open(uvs_loop_t *loop, void *data, int fd, int *err) {
    uvs_conn_t *c = uvs__conn_new(loop, data, err);
    if (c == NULL)
        return NULL;
    /* The embedding checked that fd is a connected stream socket. On failure uv_tcp_open has
     * not taken the descriptor, so the caller keeps it. */
    int r = uv_tcp_open(&c->tcp, (uv_os_sock_t)fd);
    if (r != 0) {
        c->data = NULL;
        uvs__conn_close_now(c);
        *err = r;
        return NULL;
    }
    c->state |= UVS__C_CONNECTED;
    (void)uvs__tcp_fetch_address(c, 1); /* kept for after the close; it may be gone already */
    (void)uv_tcp_nodelay(&c->tcp, 1); /* best effort: an adopted socket may refuse it */
    uvs__conn_start_reading(c);
    *err = 0;
    return c;
}

/* ---- socket options ----------------------------------------------------------------------- */

int uvs_conn_nodelay(uvs_conn_t *c, int on) {
    if (c->state & UVS__C_CLOSING)
        return UV_EBADF;
    return uv_tcp_nodelay(&c->tcp, on);
}

int uvs_conn_keepalive(uvs_conn_t *c, int on, unsigned delay) {
    if (c->state & UVS__C_CLOSING)
        return UV_EBADF;
    return uv_tcp_keepalive(&c->tcp, on, delay);
}

/* ---- addresses ---------------------------------------------------------------------------- */

int uvs_addr_format(const uvs_addr_t *a, char *host, size_t hostlen, int *port) {
    if (a->sa.sa_family == AF_INET) {
        *port = ntohs(a->in4.sin_port);
        return uv_ip4_name(&a->in4, host, hostlen);
    }
    if (a->sa.sa_family == AF_INET6) {
        *port = ntohs(a->in6.sin6_port);
        return uv_ip6_name(&a->in6, host, hostlen);
    }
    return a->sa.sa_family == AF_UNSPEC ? UV_ENOTCONN : UV_EAFNOSUPPORT;
}

/* Ask the kernel for one of c's addresses and keep it in c->addrs. */
int uvs__tcp_fetch_address(uvs_conn_t *c, int peer) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int r = peer ? uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len)
                 : uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &len);
    if (r != 0)
        return r;
    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
        return UV_EAFNOSUPPORT;
    uvs__addr_copy(peer ? &c->addrs.peer : &c->addrs.local, (const struct sockaddr *)&ss);
    return 0;
}

/* One of c's addresses: the kept one, or the kernel's answer while c is open. */
int uvs_conn_address(uvs_conn_t *c, int peer, char *host, size_t hostlen, int *port) {
    const uvs_addr_t *a = peer ? &c->addrs.peer : &c->addrs.local;
    if (a->sa.sa_family == AF_UNSPEC) {
        if (c->state & UVS__C_CLOSING)
            return UV_ENOTCONN;
        int r = uvs__tcp_fetch_address(c, peer);
        if (r != 0)
            return r;
    }
    return uvs_addr_format(a, host, hostlen, port);
}

/* Copy c's kept addresses for the embedding, which keeps them once c is gone (this end's is
 * asked for first if it is not known yet and still can be). */
void uvs_conn_copy_addresses(uvs_conn_t *c, uvs_addrs_t *out) {
    if (c->addrs.local.sa.sa_family == AF_UNSPEC && (c->state & UVS__C_CONNECTED) &&
        !(c->state & UVS__C_CLOSING))
        (void)uvs__tcp_fetch_address(c, 0);
    *out = c->addrs;
}
