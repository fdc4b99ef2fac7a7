/*
 * uvs.h: the native core's internal header.
 *
 * Everything in csrc/ shares these definitions. The embedding language (Python, through cffi)
 * sees only what uvssl_api.h declares (build_ffi.py reads that file as its cdef) and treats
 * every struct as opaque; this header adds the callback table the binding's C side installs,
 * and the internals.
 *
 * Naming follows libuv: public symbols are `uvs_`, internal ones `uvs__`.
 *
 * Ownership in one paragraph: a uvs_loop_t owns every connection, server and timer created on it
 * and keeps them on intrusive lists so that it can close them all. Each object carries a `data`
 * pointer for the embedding (a cffi handle). An object is freed only after libuv's close callback
 * has run AND every request it issued (connect, write, shutdown, getaddrinfo) has completed; the
 * embedding is told with UVS_EV_CLOSED just before the memory goes, and must forget the pointer.
 */
#ifndef UVS_H
#define UVS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>
#include <uv.h>

#include "buf.h"       /* uvs__buf_t: growable byte buffers */
#include "uvssl_api.h" /* the public API: handles, codes, uvs_* functions */

typedef struct uvs_tls_s uvs_tls_t;
struct ssl_ctx_st;
struct ssl_st;

/* ---- the embedding's callbacks (installed by the binding's C side, build_ffi.py) -------- */
typedef struct {
    void (*on_read)(void *data, const char *buf, size_t len);
    /* n pieces of data, in order: piece i is lens[i] bytes for the connection whose data
     * pointer is datas[i], and the pieces lie one after another from buf (see batch.c) */
    void (*on_batch)(void *loop_data, void *const *datas, const size_t *lens, size_t n,
                     const char *buf, size_t len);
    void (*on_event)(void *data, int kind, int status, int action);
    /* A server's new connection, at one of the UVS_ACCEPT_* stages. Leaving the connection's
     * data NULL refuses it. At UVS_ACCEPT_ESTABLISHED, buf/len (len > 0) is the connection's
     * first data when it came in with the end of the handshake: the embedding delivers it
     * after the connect (it is not delivered again). */
    void (*on_accept)(void *server_data, uvs_conn_t *conn, int stage, const char *buf,
                      size_t len);
    void (*on_timer)(void *data);
    void (*on_wakeup)(void *loop_data);
    /* TLS servers: pick a context for the requested name (an SSL_CTX *, or NULL to keep the
     * current one); setting *verdict non-zero refuses the handshake */
    struct ssl_ctx_st *(*on_sni)(void *ctx_data, struct ssl_st *ssl, const char *name,
                                 int *verdict);
    /* Datagrams of one loop turn for the socket whose data pointer is `data` (udp.c): entry
     * i is lens[i] bytes from addrs[i], and keys[i] names that sender (an IPv4 sender's
     * address and port in one number, below 2^48; 2^48 + i for any other); the datagrams lie
     * one after another from buf. */
    void (*on_udp_batch)(void *data, const size_t *lens, const uint64_t *keys,
                         const uvs_addr_t *addrs, size_t n, const char *buf, size_t len);
    /* Anything else on a datagram socket: kind/status/action as for on_event, with the
     * address concerned (or NULL) and the host name being resolved (or NULL). */
    void (*on_udp_event)(void *data, int kind, int status, int action, const uvs_addr_t *addr,
                         const char *host);
} uvs_callbacks_t;

void uvs_set_callbacks(const uvs_callbacks_t *cb);

/* ---- internals ------------------------------------------------------------------------ */

/* Every loop-owned object starts its bookkeeping with this link. */
enum { UVS__OBJ_CONN = 1, UVS__OBJ_SERVER = 2, UVS__OBJ_TIMER = 3, UVS__OBJ_UDP = 4 };
typedef struct uvs__link_s {
    struct uvs__link_s *next;
    struct uvs__link_s *prev;
    int kind;
} uvs__link_t;

#define UVS__READ_BUF_SIZE (256 * 1024) /* the shared buffer                          */
#define UVS__READ_SMALL (64 * 1024)      /* what a read offers until reads fill it      */
#define UVS__BATCH_BYTES (64 * 1024)     /* a read batch's bytes                        */
#define UVS__BATCH_ITEMS 256             /* and entries                                 */
#define UVS__BATCH_ITEM_MAX 4096         /* larger pieces are not copied: on_read direct */

typedef struct uvs__udp_batch_s uvs__udp_batch_t; /* udp.c */

struct uvs_loop_s {
    uv_loop_t uv;
    uv_prepare_t flusher;    /* flushes output queued outside a callback (unreferenced) */
    uv_async_t wakeup;       /* call_threadsafe                                         */
    uv_poll_t sigwatch;      /* the embedding's signal wakeup fd (unreferenced, lazy)    */
    int sigwatch_on;
    void *data;
    uvs__link_t objects;     /* list head: every conn, server and timer                 */
    uvs_conn_t *dirty;       /* connections with output to flush                        */
    int flushing;
    char *rbuf;              /* shared read buffer, UVS__READ_BUF_SIZE bytes             */
    char *pbuf;              /* shared plaintext buffer for TLS, same size (lazy)        */
    uvs__link_t tls_busy;    /* TLS engines that may hold record buffers, oldest first   */
    uv_poll_t tls_trim;      /* releases the quiet ones' buffers: watches tls_trim_fd    */
                             /* (unreferenced, lazy; tls_conn.c)                         */
    int tls_trim_fd;         /* a timerfd, ticking while tls_busy is not empty           */
    int tls_trim_on;         /* tls_trim and tls_trim_fd are initialised                 */
    uint64_t iteration;      /* loop iterations so far (counted by the flusher)          */
    uv_check_t batcher;      /* hands the turn's reads over after the poll (unreferenced)  */
    char *batch_buf;         /* the batch's bytes, UVS__BATCH_BYTES (see batch.c)        */
    void **batch_data;       /* per entry: the connection's data pointer                 */
    size_t *batch_lens;      /* per entry: its length in batch_buf                       */
    size_t batch_n;          /* entries                                                  */
    size_t batch_len;        /* bytes used in batch_buf                                  */
    int batch_busy;          /* the embedding is reading the batch                       */
    uvs__udp_batch_t *udp;   /* datagram sockets' buffers and batch (udp.c; lazy)        */
    uv_async_t kick;         /* embedded: asks the host loop for a turn (lazy)          */
    int embedded;            /* a host loop (asyncio) runs turns: uvs_loop_embed         */
    int in_run;              /* inside uv_run: changes are seen by this turn's flushes    */
};

/* connection state flags (internal) */
enum {
    UVS__C_RESOLVING = 1 << 0,
    UVS__C_CONNECTING = 1 << 1,
    UVS__C_CONNECTED = 1 << 2,
    UVS__C_READING = 1 << 3,      /* uv_read_start is in effect               */
    UVS__C_PAUSED = 1 << 4,       /* the application asked us not to read     */
    UVS__C_EOF = 1 << 5,          /* peer's FIN seen                          */
    UVS__C_SHUT_WANTED = 1 << 6,  /* shutdown("write") asked for              */
    UVS__C_SHUT_SENT = 1 << 7,    /* uv_shutdown issued                       */
    UVS__C_CLOSE_WANTED = 1 << 8, /* graceful close: close once flushed       */
    UVS__C_CLOSING = 1 << 9,      /* uv_close issued                          */
    UVS__C_CLOSED = 1 << 10,      /* close callback ran                       */
    UVS__C_DIRTY = 1 << 11,       /* on the loop's dirty list                 */
    UVS__C_ABOVE_HIGH = 1 << 12,  /* write buffer went above the high mark    */
    UVS__C_RECONNECT = 1 << 13,   /* handle closing only to try the next addr */
    UVS__C_WRITTEN_TOLD = 1 << 14, /* UVS_EV_WRITTEN sent, nothing written since */
    UVS__C_BIG_READS = 1 << 15,    /* reads fill 64 KiB: offer the whole buffer  */
    UVS__C_ANNOUNCE_DUE = 1 << 16, /* accepted, handshake done, not announced yet: */
                                   /* announced with the data that came with it  */
    UVS__C_PROXY_WAIT = 1 << 17    /* reads go to the PROXY header parser (proxy.c) */
};

typedef struct uvs__proxy_s uvs__proxy_t; /* proxy.c */

struct uvs_conn_s {
    uv_tcp_t tcp;                 /* tcp.data == this                        */
    uvs__link_t link;
    uvs_loop_t *loop;
    void *data;
    unsigned state;
    int user_flags;               /* UVS_CF_*                                */
    int pending_reqs;             /* requests whose callbacks are outstanding */
    uvs__buf_t out;               /* plaintext accepted, not yet sent/encrypted */
    size_t inflight;              /* bytes in uv_write requests              */
    size_t high, low;             /* write buffer limits                     */
    uint64_t read_timeout_ms, write_timeout_ms;
    uv_timer_t *rtimer;           /* read / handshake timeout (lazy)         */
    uv_timer_t *wtimer;           /* write timeout (lazy)                    */
    uvs_conn_t *dirty_next;
    struct addrinfo *ai_head, *ai_next;  /* connect in progress           */
    uvs_tls_t *tls;               /* NULL for plain TCP                      */
    uvs_server_t *acceptor;       /* TLS server yet to announce it (server.c) */
    uvs_addrs_t addrs;            /* kept for after the close (see above)    */
    uvs__proxy_t *proxy;          /* PROXY protocol state and result, or NULL */
};

struct uvs_server_s {
    uv_tcp_t tcp;
    uvs__link_t link;
    uvs_loop_t *loop;
    void *data;
    int closing;                  /* uv_close issued                          */
    int handle_closed;            /* the close callback ran; freed once       */
                                  /* unannounced is 0 as well                 */
    /* ---- TLS servers only (server.c, "Announcing"); all zero on a plain server. tls_ctx and
     * hs_timeout belong to tls_conn.c (uvs_server_set_tls, uvs__server_free_tls). */
    struct ssl_ctx_st *tls_ctx;   /* a reference, when the server speaks TLS  */
    double hs_timeout;            /* handshake timeout for accepted conns (s) */
    int eager;                    /* announce at accept, not at handshake     */
    int unannounced;              /* accepted conns not yet announced         */
    /* The address it listens on when that is one address (not a wildcard): the local address
     * of every connection it accepts, known without asking the kernel. AF_UNSPEC otherwise. */
    uvs_addr_t local;
    /* ---- the PROXY protocol (proxy.c, uvs_server_set_proxy); all zero when off */
    int proxy;                    /* accepted conns start with a header       */
    uint64_t proxy_ms;            /* the header's deadline (0: none)          */
    uvs_proxy_net_t *proxy_nets;  /* the sources allowed (none: any)          */
    size_t proxy_nnets;
};

struct uvs_timer_s {
    uv_timer_t t;
    uvs__link_t link;
    uvs_loop_t *loop;
    void *data;
    int closing;
};

/* A datagram queued on a datagram socket: len bytes at off in its out buffer, for addr (family
 * AF_UNSPEC: the connected peer). */
typedef struct {
    size_t off;
    size_t len;
    uvs_addr_t addr;
} uvs__udp_msg_t;

struct uvs_udp_s {
    uv_udp_t udp;                 /* udp.data == this                         */
    uvs__link_t link;
    uvs_loop_t *loop;
    void *data;
    unsigned state;               /* UVS__U_*                                 */
    int pending_reqs;             /* sends and resolutions outstanding        */
    size_t slot;                  /* receive slot: UVS_UDP_SLOT, or less      */
    uvs__buf_t out;               /* datagrams accepted, not yet sent         */
    uvs__udp_msg_t *msgs;         /* and one entry per datagram               */
    size_t nmsgs, capmsgs;
    uvs_udp_t *dirty_next;
};

extern uvs_callbacks_t uvs__cb;
extern __thread uvs_loop_t *uvs__thread_loop; /* the loop this thread runs (loop.c) */

/* loop.c */
void uvs__link_add(uvs_loop_t *loop, uvs__link_t *l, int kind);
void uvs__link_append(uvs__link_t *head, uvs__link_t *l);
void uvs__link_del(uvs__link_t *l);
void uvs__mark_dirty(uvs_conn_t *c);
/* Embedded loops (uvs_loop_embed): outside a turn, a change the next turn must act on (output
 * queued, a handle added or closed, a timer armed, reading resumed) makes the backend descriptor
 * readable, so the host loop runs a turn. A no-op for a loop that runs itself. */
static inline void uvs__kick(uvs_loop_t *loop) {
    if (loop->embedded && !loop->in_run)
        (void)uv_async_send(&loop->kick); /* only fails on a handle that is not an async one */
}
void uvs__flush_dirty(uvs_loop_t *loop);

/* batch.c */
void uvs__conn_deliver(uvs_conn_t *c, const char *p, size_t n);
int uvs__batch_init(uvs_loop_t *loop);
void uvs__batch_free(uvs_loop_t *loop);
void uvs__batch_flush(uvs_loop_t *loop);

/* udp.c */
void uvs__udp_batch_flush(uvs_loop_t *loop);
void uvs__udp_flush_dirty(uvs_loop_t *loop);
void uvs__udp_loop_free(uvs_loop_t *loop);

/* conn.c: a connection's life once it exists */
uvs_conn_t *uvs__conn_new(uvs_loop_t *loop, void *data, int *err);
void uvs__emit(uvs_conn_t *c, int kind, int status, int action);
void uvs__conn_fail(uvs_conn_t *c, int kind, int status, int action);
void uvs__conn_close_now(uvs_conn_t *c);
void uvs__conn_maybe_free(uvs_conn_t *c);
int uvs__req_done(uvs_conn_t *c);
void uvs__conn_start_reading(uvs_conn_t *c);
void uvs__conn_flush(uvs_conn_t *c);
int uvs__conn_send_buf(uvs_conn_t *c, uvs__buf_t *b);
void uvs__conn_maybe_finish(uvs_conn_t *c);
/* also declared in tls.h, whose glue (tls_conn.c) uses them: */
int uvs__timer_arm(uvs_conn_t *c, uv_timer_t **slot, uint64_t ms, uv_timer_cb cb);
void uvs__timer_disarm(uv_timer_t *t);
void uvs__timer_release(uvs_conn_t *c, uv_timer_t **slot);
void uvs__conn_reading_changed(uvs_conn_t *c);
void uvs__conn_hold_reading(uvs_conn_t *c);

/* tcp.c: connecting, adopting, addresses */
int uvs__tcp_fetch_address(uvs_conn_t *c, int peer);

/* An IPv4 or IPv6 socket address as a uvs_addr_t (any other family: all zero, AF_UNSPEC).
 * Inline: datagram batches call it for every sender. */
static inline void uvs__addr_copy(uvs_addr_t *dst, const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET6)
        dst->in6 = *(const struct sockaddr_in6 *)(const void *)sa;
    else if (sa->sa_family == AF_INET)
        dst->in4 = *(const struct sockaddr_in *)(const void *)sa;
    else
        memset(dst, 0, sizeof(*dst));
}

/* server.c: accepting and announcing */
int uvs__conn_announce(uvs_conn_t *c, int stage, const char *p, size_t n);
void uvs__server_forget(uvs_conn_t *c);

/* proxy.c: the PROXY protocol on accepted connections */
void uvs__proxy_accept(uvs_conn_t *c, uvs_server_t *s);
void uvs__proxy_on_read(uvs_conn_t *c, const char *p, size_t n);
void uvs__proxy_on_eof(uvs_conn_t *c);
void uvs__proxy_free(uvs_conn_t *c);
void uvs__server_free_proxy(uvs_server_t *s);

/* tls_conn.c: what conn.c and server.c call besides the hooks declared in tls.h */
int uvs__tls_attach_accepted(uvs_conn_t *c, uvs_server_t *s);
void uvs__server_free_tls(uvs_server_t *s);
int uvs__tls_write_direct(uvs_conn_t *c, const char *p, size_t n);

/* Writes at least this large skip the connection's plaintext buffer when nothing is queued
 * ahead of them: plain TCP tries the kernel straight from the caller's memory, TLS encrypts
 * straight from it. Smaller writes are copied and coalesced. */
#define UVS__DIRECT_WRITE_MIN (16 * 1024)

/* The most one uv_buf_t (or one try_write) carries: libuv's lengths are 32-bit. */
#define UVS__MAX_IOV ((size_t)1 << 30)

#endif /* UVS_H */
