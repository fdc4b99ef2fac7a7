/*
 * udp.c: datagram sockets.
 *
 * Theory of operation
 * -------------------
 * A uvs_udp_t wraps one uv_udp_t. It lives on the loop's object list like a connection, carries
 * the embedding's `data` handle, and is freed once libuv's close callback has run and every
 * request it issued (queued sends, name resolutions) has completed; the embedding is told with
 * UVS_EV_CLOSED (through on_udp_event) just before.
 *
 * Receiving. Sockets are made with UV_UDP_RECVMMSG, and the allocation callback offers the
 * loop's receive area: UVS__UDP_SLOTS slots of UVS_UDP_SLOT (64 KiB) bytes each, so that one
 * recvmmsg() reads up to that many datagrams and none can be truncated (the largest IPv4 or
 * IPv6 payload fits a slot). libuv calls the receive callback once per datagram
 * (UV_UDP_MMSG_CHUNK) and once more to give the area back (UV_UDP_MMSG_FREE, ignored: the area
 * is the loop's). A socket made with a smaller slot (for tests of the truncation report) reads
 * with recvmsg() into that many bytes; the kernel then sets MSG_TRUNC, libuv UV_UDP_PARTIAL,
 * and the datagram is reported as an error with its sender, never delivered.
 *
 * The batch. Each datagram is copied to the end of the loop's datagram batch (bytes, and per
 * entry its length, a numeric key for its sender and the sender's address), and the whole
 * batch reaches the embedding in one on_udp_batch call. A batch is one
 * socket's (a datagram for another socket hands it over first): recvmmsg reads one socket at a
 * time, so a turn's datagrams come in runs, and the embedding finds the socket once per batch. It is handed over wherever
 * batch.c hands over the stream batch (uvs__batch_flush calls uvs__udp_batch_flush first): after
 * the poll phase, before the loop blocks, and before every other call into the embedding, so
 * a socket's datagrams always arrive before anything that happened after them. A datagram too
 * big to copy cheaply goes alone, straight from the receive area, after the batch. The key
 * (IPv4: the address and port in one number) lets the embedding cache the (host, port) it
 * builds for a sender, and even build it from the key alone.
 *
 * Sending. uvs_udp_send only copies the datagram to the socket's queue and marks the socket
 * dirty; the queue is sent when the current call into the embedding returns (uvs__flush_dirty
 * calls uvs__udp_flush_dirty), with as few sendmmsg() calls as there are UVS__UDP_SEND_BATCH
 * datagrams queued: an echo server answering a batch of requests sends all its replies in one
 * system call. If the kernel's buffer is full (EAGAIN, ENOBUFS), the rest goes to libuv's own
 * queue (uv_udp_send, one request per datagram, order kept: while libuv's queue is not empty
 * everything goes there), which sends it when the socket is writable. A datagram the kernel
 * refuses (an ICMP error remembered on a connected socket, a message too long, no route) is
 * reported through on_udp_event with its address and dropped; the ones after it still go.
 * Names are resolved with uv_getaddrinfo (for the socket's own address family), and the
 * datagram is queued when the answer comes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sendmmsg */
#endif
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "uvs.h"

#define UVS__UDP_SLOTS 16                /* datagrams per recvmmsg()                         */
#define UVS__UDP_BATCH_BYTES (128 * 1024) /* the batch's bytes                                */
#define UVS__UDP_BATCH_ITEMS 512          /* and entries                                      */
#define UVS__UDP_ITEM_MAX (8 * 1024)      /* larger datagrams go alone, uncopied              */
#define UVS__UDP_SEND_BATCH 64            /* datagrams per sendmmsg()                         */

/* socket state flags */
enum {
    UVS__U_CLOSING = 1 << 0,   /* uv_close issued                                          */
    UVS__U_CLOSED = 1 << 1,    /* its close callback ran                                   */
    UVS__U_DIRTY = 1 << 2,     /* on the loop's dirty list                                 */
    UVS__U_RESOLVING = 1 << 3, /* connecting to a name: sends wait                         */
    UVS__U_BOUND = 1 << 4,     /* has a descriptor, bound                                  */
    UVS__U_CLOSE_WANTED = 1 << 5, /* close once libuv's send queue is empty                */
    UVS__U_CONNECTED = 1 << 6  /* connected (or connecting to a name): sends go to the peer   */
};

struct uvs__udp_batch_s {
    char *rbuf;              /* the receive area: UVS__UDP_SLOTS * UVS_UDP_SLOT bytes       */
    char *buf;               /* the batch's bytes                                         */
    void *data;              /* the socket they are for (one socket per batch)            */
    size_t *lens;            /* per entry: the length                                     */
    uint64_t *keys;          /* the sender's key (uvs__udp_key)                           */
    uvs_addr_t *addrs;       /* and the sender                                            */
    size_t n, len;
    int busy;                /* the embedding is reading the batch                        */
    int flushing;            /* uvs__udp_flush_dirty is running                           */
    uvs_udp_t *dirty;        /* sockets with datagrams queued                             */
};

/* A send handed to libuv, with its datagram. */
typedef struct {
    uv_udp_send_t req;
    uvs_udp_t *u;
    uvs_addr_t addr;
    char data[];
} uvs__udp_req_t;

/* A name being resolved: for a datagram (len bytes follow), or to connect (connect set). */
typedef struct {
    uv_getaddrinfo_t req;
    uvs_udp_t *u;
    int connect;
    int bind_port, flags;
    size_t len;
    char host[256];
    char data[];
} uvs__udp_resolve_t;

static int uvs__udp_loop_init(uvs_loop_t *loop) {
    if (loop->udp != NULL)
        return 0;
    uvs__udp_batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return UV_ENOMEM;
    b->rbuf = malloc((size_t)UVS__UDP_SLOTS * UVS_UDP_SLOT);
    b->buf = malloc(UVS__UDP_BATCH_BYTES);
    b->lens = malloc(UVS__UDP_BATCH_ITEMS * sizeof(*b->lens));
    b->keys = malloc(UVS__UDP_BATCH_ITEMS * sizeof(*b->keys));
    b->addrs = malloc(UVS__UDP_BATCH_ITEMS * sizeof(*b->addrs));
    loop->udp = b;
    if (b->rbuf == NULL || b->buf == NULL || b->lens == NULL || b->keys == NULL ||
        b->addrs == NULL) {
        uvs__udp_loop_free(loop);
        return UV_ENOMEM;
    }
    return 0;
}

void uvs__udp_loop_free(uvs_loop_t *loop) {
    uvs__udp_batch_t *b = loop->udp;
    if (b == NULL)
        return;
    free(b->rbuf);
    free(b->buf);
    free(b->lens);
    free(b->keys);
    free(b->addrs);
    free(b);
    loop->udp = NULL;
}

/* ---- addresses ------------------------------------------------------------------------ */

int uvs_addr_parse(const char *ip, int port, uvs_addr_t *out) {
    memset(out, 0, sizeof(*out));
    if (port < 0 || port > 65535)
        return UV_EINVAL;
    if (uv_ip4_addr(ip, port, &out->in4) == 0)
        return 0;
    memset(out, 0, sizeof(*out));
    if (uv_ip6_addr(ip, port, &out->in6) == 0)
        return 0;
    memset(out, 0, sizeof(*out));
    return UV_EINVAL;
}

int uvs_addr_is_v6(const uvs_addr_t *a) { return a->sa.sa_family == AF_INET6; }

static socklen_t uvs__addr_len(const uvs_addr_t *a) {
    return a->sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                       : sizeof(struct sockaddr_in);
}

/* Entry i's sender key: an IPv4 sender's address and port in one number (below 2^48), which
 * the embedding may use to cache what it makes of the address; any other sender gets 2^48 + i,
 * which names the entry (its address is addrs[i]) and is never cached. */
static uint64_t uvs__udp_key(const struct sockaddr *sa, size_t i) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return ((uint64_t)ntohl(in->sin_addr.s_addr) << 16) | ntohs(in->sin_port);
    }
    return ((uint64_t)1 << 48) | (uint64_t)i;
}

/* ---- life ----------------------------------------------------------------------------- */

static void uvs__udp_event(uvs_udp_t *u, int kind, int status, int action,
                           const uvs_addr_t *addr, const char *host) {
    uvs__batch_flush(u->loop);
    if (u->data != NULL)
        uvs__cb.on_udp_event(u->data, kind, status, action, addr, host);
}

static void uvs__udp_maybe_free(uvs_udp_t *u) {
    if (!(u->state & UVS__U_CLOSED) || u->pending_reqs > 0)
        return;
    uvs_loop_t *loop = u->loop;
    void *data = u->data;
    u->data = NULL;
    uvs__buf_free(&u->out);
    free(u->msgs);
    free(u);
    if (data != NULL) {
        uvs__batch_flush(loop);
        uvs__cb.on_udp_event(data, UVS_EV_CLOSED, 0, 0, NULL, NULL);
    }
}

static void uvs__udp_close_cb(uv_handle_t *h) {
    uvs_udp_t *u = h->data;
    u->state |= UVS__U_CLOSED;
    uvs__udp_maybe_free(u);
}

static void uvs__udp_close_now(uvs_udp_t *u) {
    if (u->state & UVS__U_CLOSING)
        return;
    u->state |= UVS__U_CLOSING;
    u->state &= ~(unsigned)UVS__U_CLOSE_WANTED;
    uvs__link_del(&u->link);
    uvs__kick(u->loop);
    u->nmsgs = 0;
    u->out.len = 0;
    /* queued libuv sends complete with UV_ECANCELED; the socket is closed: not reported */
    uv_close((uv_handle_t *)&u->udp, uvs__udp_close_cb);
}

static void uvs__udp_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    uvs_udp_t *u = h->data;
    (void)suggested;
    buf->base = u->loop->udp->rbuf;
    buf->len = u->slot < UVS_UDP_SLOT ? u->slot : (size_t)UVS__UDP_SLOTS * UVS_UDP_SLOT;
}

/* Hand one datagram to the embedding (batched when small). A batch holds one socket's
 * datagrams: a datagram for another socket hands the batch over first. */
static void uvs__udp_deliver(uvs_udp_t *u, const char *p, size_t n, const struct sockaddr *sa) {
    uvs_loop_t *loop = u->loop;
    uvs__udp_batch_t *b = loop->udp;
    if (b->busy || n > UVS__UDP_ITEM_MAX || b->len + n > UVS__UDP_BATCH_BYTES ||
        b->n == UVS__UDP_BATCH_ITEMS || (b->n > 0 && b->data != u->data)) {
        uvs__batch_flush(loop);
        if (u->data == NULL || (u->state & (UVS__U_CLOSING | UVS__U_CLOSE_WANTED)))
            return; /* the application ran and closed it */
        if (n > UVS__UDP_ITEM_MAX || b->busy) {
            uint64_t key = uvs__udp_key(sa, 0);
            uvs_addr_t a;
            uvs__addr_copy(&a, sa);
            uvs__cb.on_udp_batch(u->data, &n, &key, &a, 1, p, n);
            return;
        }
    }
    size_t i = b->n;
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->data = u->data;
    b->lens[i] = n;
    b->keys[i] = uvs__udp_key(sa, i);
    uvs__addr_copy(&b->addrs[i], sa);
    b->n = i + 1;
}

void uvs__udp_batch_flush(uvs_loop_t *loop) {
    uvs__udp_batch_t *b = loop->udp;
    if (b->n == 0 || b->busy)
        return;
    b->busy = 1;
    uvs__cb.on_udp_batch(b->data, b->lens, b->keys, b->addrs, b->n, b->buf, b->len);
    b->busy = 0;
    b->n = b->len = 0;
}

static void uvs__udp_recv_cb(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                             const struct sockaddr *addr, unsigned flags) {
    uvs_udp_t *u = h->data;
    if (flags & UV_UDP_MMSG_FREE)
        return; /* the receive area is the loop's */
    if (u->data == NULL || (u->state & (UVS__U_CLOSING | UVS__U_CLOSE_WANTED)))
        return;
    if (nread < 0) {
        /* an ICMP error remembered on a connected socket, for example: the socket goes on */
        uvs__udp_event(u, UVS_EV_ERROR, (int)nread, UVS_ACT_READ, NULL, NULL);
        uvs__flush_dirty(u->loop);
        return;
    }
    if (addr == NULL)
        return; /* nothing (more) to read */
    if (flags & UV_UDP_PARTIAL) {
        uvs_addr_t a;
        uvs__addr_copy(&a, addr);
        uvs__udp_event(u, UVS_EV_ERROR, UV_EMSGSIZE, UVS_ACT_READ, &a, NULL);
        uvs__flush_dirty(u->loop);
        return;
    }
    uvs__udp_deliver(u, buf->base, (size_t)nread, addr);
}

/* SO_REUSEPORT on u, whose descriptor is made here (for `family`) if it has none yet. */
static int uvs__udp_set_reuse(uvs_udp_t *u, int family) {
    uv_os_fd_t fd;
    int r = uv_fileno((uv_handle_t *)&u->udp, &fd);
    if (r != 0) {
        fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        r = uv_udp_open(&u->udp, fd);
        if (r != 0) {
            (void)close(fd);
            return r;
        }
    }
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0)
        return -errno;
    return 0;
}

/* Bind u to local (with the socket options of `flags`) and start receiving. */
static int uvs__udp_bind(uvs_udp_t *u, const uvs_addr_t *local, int flags) {
    int r = 0;
    if (flags & UVS_UDP_REUSE_PORT) {
        /* the descriptor must exist before the bind to set the option: libuv makes it when
         * the handle is made for a family (uv_udp_init_ex), which uvs_udp_new did */
        r = uvs__udp_set_reuse(u, local->sa.sa_family);
        if (r != 0)
            return r;
    }
    r = uv_udp_bind(&u->udp, &local->sa, local->sa.sa_family == AF_INET6 ? UV_UDP_IPV6ONLY : 0);
    if (r != 0)
        return r;
    u->state |= UVS__U_BOUND;
    if (flags & UVS_UDP_BROADCAST) {
        r = uv_udp_set_broadcast(&u->udp, 1);
        if (r != 0)
            return r;
    }
    uvs__kick(u->loop);
    return uv_udp_recv_start(&u->udp, uvs__udp_alloc_cb, uvs__udp_recv_cb);
}

static int uvs__udp_init(uvs_udp_t *u, int family) {
    unsigned f = (unsigned)family;
    if (u->slot >= UVS_UDP_SLOT)
        f |= UV_UDP_RECVMMSG;
    return uv_udp_init_ex(&u->loop->uv, &u->udp, f);
}

uvs_udp_t *uvs_udp_new(uvs_loop_t *loop, void *data, const uvs_addr_t *local, int flags,
                       size_t slot, int *err) {
    int r = uvs__udp_loop_init(loop);
    if (r != 0) {
        *err = r;
        return NULL;
    }
    uvs_udp_t *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    u->loop = loop;
    u->slot = slot == 0 || slot > UVS_UDP_SLOT ? UVS_UDP_SLOT : slot;
    r = uvs__udp_init(u, local != NULL ? local->sa.sa_family : AF_UNSPEC);
    if (r != 0) {
        free(u);
        *err = r;
        return NULL;
    }
    u->udp.data = u;
    uvs__link_add(loop, &u->link, UVS__OBJ_UDP);
    if (local != NULL) {
        r = uvs__udp_bind(u, local, flags);
        if (r != 0) {
            uvs__udp_close_now(u); /* data is NULL: nothing is reported */
            *err = r;
            return NULL;
        }
    }
    u->data = data;
    *err = 0;
    return u;
}

int uvs_udp_connect(uvs_udp_t *u, const uvs_addr_t *peer) {
    if (u->state & UVS__U_CLOSING)
        return UV_EBADF;
    int r = uv_udp_connect(&u->udp, &peer->sa);
    if (r == 0)
        u->state |= UVS__U_CONNECTED;
    return r;
}

int uvs_udp_close(uvs_udp_t *u, int force) {
    if (u->state & UVS__U_CLOSING)
        return 0;
    if (!force) {
        /* what was accepted leaves first (uvs__udp_flush_dirty skips closing sockets) */
        uvs__udp_flush_dirty(u->loop);
        if (!(u->state & UVS__U_CLOSING) && (uv_udp_get_send_queue_count(&u->udp) > 0 ||
                                            u->nmsgs > 0 || (u->state & UVS__U_RESOLVING))) {
            u->state |= UVS__U_CLOSE_WANTED;
            (void)uv_udp_recv_stop(&u->udp);
            return 0;
        }
    }
    uvs__udp_close_now(u);
    return 0;
}

int uvs_udp_fileno(uvs_udp_t *u) {
    uv_os_fd_t fd;
    if (u->state & UVS__U_CLOSING)
        return UV_EBADF;
    int r = uv_fileno((uv_handle_t *)&u->udp, &fd);
    return r != 0 ? r : (int)fd;
}

int uvs_udp_address(uvs_udp_t *u, int peer, uvs_addr_t *out) {
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    memset(out, 0, sizeof(*out));
    if (u->state & UVS__U_CLOSING)
        return UV_EBADF;
    int r = peer ? uv_udp_getpeername(&u->udp, (struct sockaddr *)&ss, &len)
                 : uv_udp_getsockname(&u->udp, (struct sockaddr *)&ss, &len);
    if (r != 0)
        return r;
    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
        return UV_EAFNOSUPPORT;
    uvs__addr_copy(out, (const struct sockaddr *)&ss);
    return 0;
}

int uvs_udp_membership(uvs_udp_t *u, const char *group, const char *iface, int join) {
    if (u->state & UVS__U_CLOSING)
        return UV_EBADF;
    return uv_udp_set_membership(&u->udp, group, iface, join ? UV_JOIN_GROUP : UV_LEAVE_GROUP);
}

int uvs_udp_option(uvs_udp_t *u, int which, int value) {
    if (u->state & UVS__U_CLOSING)
        return UV_EBADF;
    switch (which) {
    case UVS_UDP_OPT_BROADCAST:
        return uv_udp_set_broadcast(&u->udp, value);
    case UVS_UDP_OPT_MULTICAST_TTL:
        return uv_udp_set_multicast_ttl(&u->udp, value);
    case UVS_UDP_OPT_MULTICAST_LOOP:
        return uv_udp_set_multicast_loop(&u->udp, value);
    default:
        return UV_EINVAL;
    }
}

int uvs_udp_using_recvmmsg(uvs_udp_t *u) { return uv_udp_using_recvmmsg(&u->udp); }

size_t uvs_udp_queued(const uvs_udp_t *u) {
    return u->nmsgs + uv_udp_get_send_queue_count(&u->udp);
}

/* ---- sending -------------------------------------------------------------------------- */

static int uvs__udp_enqueue(uvs_udp_t *u, const char *p, size_t n, const uvs_addr_t *addr) {
    if (u->nmsgs == u->capmsgs) {
        size_t cap = u->capmsgs ? u->capmsgs * 2 : 16;
        uvs__udp_msg_t *m = realloc(u->msgs, cap * sizeof(*m));
        if (m == NULL)
            return UV_ENOMEM;
        u->msgs = m;
        u->capmsgs = cap;
    }
    size_t off = u->out.len;
    int r = uvs__buf_append(&u->out, p, n);
    if (r != 0)
        return r;
    uvs__udp_msg_t *m = &u->msgs[u->nmsgs++];
    m->off = off;
    m->len = n;
    if (addr != NULL)
        m->addr = *addr;
    else
        memset(&m->addr, 0, sizeof(m->addr));
    if (!(u->state & UVS__U_DIRTY)) {
        u->state |= UVS__U_DIRTY;
        u->dirty_next = u->loop->udp->dirty;
        u->loop->udp->dirty = u;
        uvs__kick(u->loop);
    }
    return 0;
}

int uvs_udp_send(uvs_loop_t *loop, uvs_udp_t *u, const char *buf, size_t len,
                 const uvs_addr_t *addr) {
    if (uvs__thread_loop != loop)
        return UVS_EFOREIGN;
    if (u->state & (UVS__U_CLOSING | UVS__U_CLOSE_WANTED))
        return UV_EBADF;
    if ((addr != NULL) == ((u->state & UVS__U_CONNECTED) != 0))
        return addr != NULL ? UV_EISCONN : UV_ENOTCONN;
    return uvs__udp_enqueue(u, buf, len, addr);
}

/* n datagrams at once (the embedding collected an echo server's replies): datagram i is the
 * next lens[i] bytes of buf, for *addrs[i]. Returns 0, or the first error (the datagrams
 * before it are queued). */
int uvs_udp_send_many(uvs_loop_t *loop, uvs_udp_t *u, const char *buf, const size_t *lens,
                      uvs_addr_t *const *addrs, size_t n) {
    if (uvs__thread_loop != loop)
        return UVS_EFOREIGN;
    if (u->state & (UVS__U_CLOSING | UVS__U_CLOSE_WANTED))
        return UV_EBADF;
    if (u->state & UVS__U_CONNECTED)
        return UV_EISCONN;
    for (size_t i = 0; i < n; i++) {
        int r = uvs__udp_enqueue(u, buf, lens[i], addrs[i]);
        if (r != 0)
            return r;
        buf += lens[i];
    }
    return 0;
}

static void uvs__udp_sent_cb(uv_udp_send_t *req, int status) {
    uvs__udp_req_t *r = (uvs__udp_req_t *)req;
    uvs_udp_t *u = r->u;
    u->pending_reqs--;
    if (status != 0 && status != UV_ECANCELED && !(u->state & UVS__U_CLOSING))
        uvs__udp_event(u, UVS_EV_ERROR, status, UVS_ACT_WRITE,
                       r->addr.sa.sa_family ? &r->addr : NULL, NULL);
    free(r);
    if ((u->state & UVS__U_CLOSE_WANTED) && uv_udp_get_send_queue_count(&u->udp) == 0 &&
        u->nmsgs == 0)
        uvs__udp_close_now(u);
    uvs__udp_maybe_free(u);
}

/* Give message m to libuv's queue (the kernel's buffer was full, or libuv has a queue). */
static int uvs__udp_send_queued(uvs_udp_t *u, const uvs__udp_msg_t *m) {
    uvs__udp_req_t *r = malloc(sizeof(*r) + m->len);
    if (r == NULL)
        return UV_ENOMEM;
    r->u = u;
    r->addr = m->addr;
    memcpy(r->data, u->out.base + m->off, m->len);
    uv_buf_t b = uv_buf_init(r->data, (unsigned)m->len);
    int rc = uv_udp_send(&r->req, &u->udp, &b, 1, m->addr.sa.sa_family ? &m->addr.sa : NULL,
                         uvs__udp_sent_cb);
    if (rc != 0) {
        free(r);
        return rc;
    }
    u->pending_reqs++;
    return 0;
}

/* Send u's queue: sendmmsg while the kernel takes it, libuv's queue for the rest. */
static void uvs__udp_flush(uvs_udp_t *u) {
    uv_os_fd_t fd;
    size_t i = 0;
    int direct = uv_udp_get_send_queue_count(&u->udp) == 0 &&
                 uv_fileno((uv_handle_t *)&u->udp, &fd) == 0;
    while (i < u->nmsgs && !(u->state & UVS__U_CLOSING)) {
        const uvs__udp_msg_t *m = &u->msgs[i];
        int err = 0;
        if (direct) {
            struct mmsghdr hdr[UVS__UDP_SEND_BATCH];
            struct iovec iov[UVS__UDP_SEND_BATCH];
            unsigned k = 0;
            for (; k < UVS__UDP_SEND_BATCH && i + k < u->nmsgs; k++) {
                uvs__udp_msg_t *mk = &u->msgs[i + k];
                iov[k].iov_base = u->out.base + mk->off;
                iov[k].iov_len = mk->len;
                memset(&hdr[k], 0, sizeof(hdr[k]));
                hdr[k].msg_hdr.msg_iov = &iov[k];
                hdr[k].msg_hdr.msg_iovlen = 1;
                if (mk->addr.sa.sa_family != AF_UNSPEC) {
                    hdr[k].msg_hdr.msg_name = &mk->addr.sa;
                    hdr[k].msg_hdr.msg_namelen = uvs__addr_len(&mk->addr);
                }
            }
            int sent;
            do
                sent = sendmmsg(fd, hdr, k, 0);
            while (sent < 0 && errno == EINTR);
            if (sent > 0) {
                i += (size_t)sent;
                continue;
            }
            if (sent == 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                direct = 0; /* the kernel's buffer is full: libuv's queue from here on */
                continue;
            }
            err = -errno; /* refused: message i is reported and dropped */
        } else {
            err = uvs__udp_send_queued(u, m);
            if (err == 0) {
                i++;
                continue;
            }
        }
        uvs_addr_t a = m->addr;
        i++;
        uvs__udp_event(u, UVS_EV_ERROR, err, UVS_ACT_WRITE, a.sa.sa_family ? &a : NULL, NULL);
    }
    if (u->state & UVS__U_CLOSING) {
        u->nmsgs = 0;
        u->out.len = 0;
        return;
    }
    /* The application may have queued more from an error callback: keep those. */
    if (i >= u->nmsgs) {
        u->nmsgs = 0;
        u->out.len = 0;
    } else {
        size_t base = u->msgs[i].off;
        memmove(u->msgs, u->msgs + i, (u->nmsgs - i) * sizeof(*u->msgs));
        u->nmsgs -= i;
        for (size_t k = 0; k < u->nmsgs; k++)
            u->msgs[k].off -= base;
        uvs__buf_consume(&u->out, base);
    }
}

void uvs__udp_flush_dirty(uvs_loop_t *loop) {
    uvs__udp_batch_t *b = loop->udp;
    if (b->flushing)
        return;
    b->flushing = 1;
    while (b->dirty != NULL) {
        uvs_udp_t *u = b->dirty;
        b->dirty = u->dirty_next;
        u->dirty_next = NULL;
        u->state &= ~(unsigned)UVS__U_DIRTY;
        if (u->state & (UVS__U_CLOSING | UVS__U_RESOLVING))
            continue; /* closing: dropped; resolving: sent once connected */
        uvs__udp_flush(u);
        if ((u->state & UVS__U_CLOSE_WANTED) && u->nmsgs == 0 &&
            uv_udp_get_send_queue_count(&u->udp) == 0)
            uvs__udp_close_now(u);
    }
    b->flushing = 0;
}

/* ---- names ---------------------------------------------------------------------------- */

static void uvs__udp_resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    uvs__udp_resolve_t *q = (uvs__udp_resolve_t *)req;
    uvs_udp_t *u = q->u;
    u->pending_reqs--;
    if (q->connect)
        u->state &= ~(unsigned)UVS__U_RESOLVING;
    if (u->state & UVS__U_CLOSING) {
        if (res != NULL)
            uv_freeaddrinfo(res);
        free(q);
        uvs__udp_maybe_free(u);
        return;
    }
    int r = status != 0 ? status : (res == NULL ? UV_EAI_NONAME : 0);
    int action = UVS_ACT_RESOLVE;
    if (r == 0) {
        uvs_addr_t a;
        uvs__addr_copy(&a, res->ai_addr);
        if (q->connect) {
            action = UVS_ACT_CONNECT;
            if (!(u->state & UVS__U_BOUND)) {
                /* made without a family: make the descriptor for this one, then bind */
                uvs_addr_t any;
                memset(&any, 0, sizeof(any));
                if (a.sa.sa_family == AF_INET6) {
                    any.in6.sin6_family = AF_INET6;
                    any.in6.sin6_port = htons((uint16_t)q->bind_port);
                    any.in6.sin6_addr = in6addr_any;
                } else {
                    any.in4.sin_family = AF_INET;
                    any.in4.sin_port = htons((uint16_t)q->bind_port);
                    any.in4.sin_addr.s_addr = htonl(INADDR_ANY);
                }
                r = uvs__udp_bind(u, &any, q->flags);
            }
            if (r == 0)
                r = uv_udp_connect(&u->udp, &a.sa);
        } else {
            r = uvs__udp_enqueue(u, q->data, q->len, &a);
            action = UVS_ACT_WRITE;
        }
    }
    if (res != NULL)
        uv_freeaddrinfo(res);
    if (r != 0) {
        if (q->connect) {
            u->nmsgs = u->out.len = 0; /* nowhere to go */
            u->state &= ~(unsigned)UVS__U_CONNECTED;
        }
        uvs__udp_event(u, UVS_EV_ERROR, r, action, NULL, q->host);
    } else if (q->connect) {
        if (u->nmsgs > 0 && !(u->state & UVS__U_DIRTY)) {
            u->state |= UVS__U_DIRTY;
            u->dirty_next = u->loop->udp->dirty;
            u->loop->udp->dirty = u;
        }
        uvs_addr_t peer;
        if (uvs_udp_address(u, 1, &peer) == 0) /* connected: the embedding learns where */
            uvs__udp_event(u, UVS_EV_CONNECT, 0, UVS_ACT_CONNECT, &peer, q->host);
    }
    free(q);
    if ((u->state & UVS__U_CLOSE_WANTED) && u->nmsgs == 0 && !(u->state & UVS__U_RESOLVING) &&
        uv_udp_get_send_queue_count(&u->udp) == 0)
        uvs__udp_close_now(u);
    uvs__flush_dirty(u->loop);
    uvs__udp_maybe_free(u);
}

static int uvs__udp_resolve(uvs_udp_t *u, const char *host, int port, const char *p, size_t n,
                            int connect, int bind_port, int flags) {
    if (port < 0 || port > 65535 || strlen(host) >= sizeof(((uvs__udp_resolve_t *)0)->host))
        return UV_EINVAL;
    uvs__udp_resolve_t *q = malloc(sizeof(*q) + n);
    if (q == NULL)
        return UV_ENOMEM;
    q->u = u;
    q->connect = connect;
    q->bind_port = bind_port;
    q->flags = flags;
    q->len = n;
    strcpy(q->host, host);
    if (n > 0)
        memcpy(q->data, p, n);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    if (u->state & UVS__U_BOUND) {
        uvs_addr_t local;
        if (uvs_udp_address(u, 0, &local) == 0)
            hints.ai_family = local.sa.sa_family;
    }
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_protocol = IPPROTO_UDP;
    hints.ai_flags = AI_NUMERICSERV;
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    int r = uv_getaddrinfo(&u->loop->uv, &q->req, uvs__udp_resolved_cb, host, service, &hints);
    if (r != 0) {
        free(q);
        return r;
    }
    u->pending_reqs++;
    if (connect)
        u->state |= UVS__U_RESOLVING | UVS__U_CONNECTED;
    return 0;
}

int uvs_udp_send_name(uvs_udp_t *u, const char *buf, size_t len, const char *host, int port) {
    if (u->state & (UVS__U_CLOSING | UVS__U_CLOSE_WANTED))
        return UV_EBADF;
    return uvs__udp_resolve(u, host, port, buf, len, 0, 0, 0);
}

int uvs_udp_connect_name(uvs_udp_t *u, const char *host, int port, int bind_port, int flags) {
    if (u->state & UVS__U_CLOSING)
        return UV_EBADF;
    return uvs__udp_resolve(u, host, port, NULL, 0, 1, bind_port, flags);
}
