/*
 * uvs.h: the native core's internal header.
 *
 * Everything in csrc/ shares these definitions. The embedding language (Python, through cffi)
 * sees only the functions declared in the "public API" section below and treats every struct as
 * opaque; build_ffi.py repeats those declarations in its cdef.
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
#include <netinet/in.h>
#include <uv.h>

typedef struct uvs_loop_s uvs_loop_t;
typedef struct uvs_conn_s uvs_conn_t;
typedef struct uvs_server_s uvs_server_t;
typedef struct uvs_timer_s uvs_timer_t;
typedef struct uvs_tls_s uvs_tls_t;
struct ssl_ctx_st;
struct ssl_st;

/* ---- events delivered through uvs_callbacks_t.on_event ---------------------------------- */
enum {
    UVS_EV_CONNECT = 1,        /* connected (TLS: handshake done)                           */
    UVS_EV_EOF = 2,            /* the peer half-closed; we may still write                  */
    UVS_EV_ERROR = 3,          /* status: a libuv error code; action: UVS_ACT_*             */
    UVS_EV_READ_TIMEOUT = 4,   /* no data for read_timeout                                  */
    UVS_EV_WRITE_TIMEOUT = 5,  /* queued data made no progress for write_timeout            */
    UVS_EV_WRITTEN = 6,        /* everything written so far reached the kernel              */
    UVS_EV_DRAIN = 7,          /* write buffer fell to the low-water mark                   */
    UVS_EV_CLOSED = 8,         /* object is about to be freed: drop every reference         */
    UVS_EV_TLS_ERROR = 9,      /* TLS failure; details through uvs_conn_tls_error_*         */
    UVS_EV_TLS_CLOSED = 10,    /* peer sent close_notify (status 0) or truncated (status 1) */
    UVS_EV_HANDSHAKE_TIMEOUT = 11,
    UVS_EV_TLS_DETACHED = 12   /* detach finished: the connection is plaintext again         */
};

/* ---- what was being done when an error happened --------------------------------------- */
enum {
    UVS_ACT_RESOLVE = 1,
    UVS_ACT_CONNECT = 2,
    UVS_ACT_READ = 3,
    UVS_ACT_WRITE = 4,
    UVS_ACT_SHUTDOWN = 5,
    UVS_ACT_ACCEPT = 6,
    UVS_ACT_HANDSHAKE = 7,
    UVS_ACT_TLS_READ = 8,
    UVS_ACT_TLS_WRITE = 9
};

/* ---- when a server hands a connection over (on_accept's stage; see server.c) ------------ */
enum {
    UVS_ACCEPT_NEW = 0,          /* just accepted: a plain server, or an eager TLS server      */
    UVS_ACCEPT_ESTABLISHED = 1,  /* TLS handshake done; stands for UVS_EV_CONNECT              */
    UVS_ACCEPT_FAILED = 2        /* TLS handshake failed first; the error event follows        */
};

/* ---- connection flags the embedding may set ------------------------------------------- */
enum {
    UVS_CF_NOTIFY_WRITTEN = 1,   /* deliver UVS_EV_WRITTEN                                    */
    UVS_CF_NOTIFY_DRAIN = 2      /* deliver UVS_EV_DRAIN                                      */
};

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
} uvs_callbacks_t;

/* A connection's two addresses, kept so that they stay readable after it closes: the peer's is
 * taken when it connects or is accepted, this end's when it is first asked for or at the
 * close, whichever comes first. An address never known has family AF_UNSPEC (0). */
typedef union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} uvs_addr_t;

typedef struct {
    uvs_addr_t local;
    uvs_addr_t peer;
} uvs_addrs_t;

/* ---- public API (mirrored in build_ffi.py) -------------------------------------------- */
void uvs_set_callbacks(const uvs_callbacks_t *cb);
const char *uvs_strerror(int err);
const char *uvs_errname(int err);

uvs_loop_t *uvs_loop_new(void *data);
int uvs_loop_run(uvs_loop_t *loop);
void uvs_loop_stop(uvs_loop_t *loop);
void uvs_loop_close_all(uvs_loop_t *loop);
int uvs_loop_free(uvs_loop_t *loop);
int uvs_loop_wakeup(uvs_loop_t *loop);
int uvs_loop_watch_fd(uvs_loop_t *loop, int fd);
int uvs_loop_ref_sigwatch(uvs_loop_t *loop, int on);
uvs_loop_t *uvs_loop_bind_thread(uvs_loop_t *loop);
double uvs_loop_now(uvs_loop_t *loop);

uvs_timer_t *uvs_timer_new(uvs_loop_t *loop, void *data, uint64_t timeout_ms, uint64_t repeat_ms,
                           int *err);
void uvs_timer_close(uvs_timer_t *t);

uvs_conn_t *uvs_conn_connect(uvs_loop_t *loop, void *data, const char *host, int port, int *err);
uvs_conn_t *uvs_conn_open(uvs_loop_t *loop, void *data, int fd, int *err);
void uvs_conn_set_data(uvs_conn_t *c, void *data);
/* uvs_conn_write's refusal when the calling thread does not run `loop` (see loop.c) */
#define UVS_EFOREIGN (-0x7001)
int uvs_conn_write(uvs_loop_t *loop, uvs_conn_t *c, const char *buf, size_t len);
int uvs_conn_close(uvs_conn_t *c, int force);
int uvs_conn_release(uvs_conn_t *c, int force);
int uvs_conn_shutdown(uvs_conn_t *c);
int uvs_conn_pause(uvs_conn_t *c);
int uvs_conn_resume(uvs_conn_t *c);
int uvs_conn_set_timeouts(uvs_conn_t *c, double read_s, double write_s);
int uvs_conn_set_limits(uvs_conn_t *c, size_t high, size_t low);
void uvs_conn_set_flags(uvs_conn_t *c, int flags);
size_t uvs_conn_write_buffer_size(const uvs_conn_t *c);
size_t uvs_conn_held_bytes(const uvs_conn_t *c);
int uvs_conn_nodelay(uvs_conn_t *c, int on);
int uvs_conn_keepalive(uvs_conn_t *c, int on, unsigned delay);
int uvs_conn_fileno(uvs_conn_t *c);
int uvs_conn_address(uvs_conn_t *c, int peer, char *host, size_t hostlen, int *port);
void uvs_conn_copy_addresses(uvs_conn_t *c, uvs_addrs_t *out);
int uvs_addr_format(const uvs_addr_t *a, char *host, size_t hostlen, int *port);

uvs_server_t *uvs_server_new(uvs_loop_t *loop, void *data, const char *ip, int port, int backlog,
                             int reuse_port, int *err);
int uvs_server_port(uvs_server_t *s);
int uvs_server_fileno(uvs_server_t *s);
void uvs_server_close(uvs_server_t *s);
void uvs_server_set_eager(uvs_server_t *s, int eager);
void uvs_server_abort_unannounced(uvs_server_t *s);

/* ---- internals ------------------------------------------------------------------------ */

/* A growable byte buffer: [base, base+len) holds data, cap is the allocation. */
typedef struct {
    char *base;
    size_t len;
    size_t cap;
} uvs__buf_t;

int uvs__buf_reserve(uvs__buf_t *b, size_t n);
int uvs__buf_append(uvs__buf_t *b, const char *p, size_t n);
void uvs__buf_consume(uvs__buf_t *b, size_t n);
void uvs__buf_free(uvs__buf_t *b);

/* Every loop-owned object starts its bookkeeping with this link. */
enum { UVS__OBJ_CONN = 1, UVS__OBJ_SERVER = 2, UVS__OBJ_TIMER = 3 };
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
    uv_timer_t tls_trim;     /* releases the quiet ones' buffers (unreferenced, lazy)    */
    int tls_trim_on;         /* tls_trim is initialised                                  */
    uint64_t iteration;      /* loop iterations so far (counted by the flusher)          */
    uv_check_t batcher;      /* hands the turn's reads over after the poll (unreferenced)  */
    char *batch_buf;         /* the batch's bytes, UVS__BATCH_BYTES (see batch.c)        */
    void **batch_data;       /* per entry: the connection's data pointer                 */
    size_t *batch_lens;      /* per entry: its length in batch_buf                       */
    size_t batch_n;          /* entries                                                  */
    size_t batch_len;        /* bytes used in batch_buf                                  */
    int batch_busy;          /* the embedding is reading the batch                       */
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
    UVS__C_ANNOUNCE_DUE = 1 << 16  /* accepted, handshake done, not announced yet: */
                                   /* announced with the data that came with it  */
};

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
};

struct uvs_timer_s {
    uv_timer_t t;
    uvs__link_t link;
    uvs_loop_t *loop;
    void *data;
    int closing;
};

extern uvs_callbacks_t uvs__cb;
extern __thread uvs_loop_t *uvs__thread_loop; /* the loop this thread runs (loop.c) */

/* loop.c */
void uvs__link_add(uvs_loop_t *loop, uvs__link_t *l, int kind);
void uvs__link_append(uvs__link_t *head, uvs__link_t *l);
void uvs__link_del(uvs__link_t *l);
void uvs__mark_dirty(uvs_conn_t *c);
void uvs__flush_dirty(uvs_loop_t *loop);

/* batch.c */
void uvs__conn_deliver(uvs_conn_t *c, const char *p, size_t n);
int uvs__batch_init(uvs_loop_t *loop);
void uvs__batch_free(uvs_loop_t *loop);
void uvs__batch_flush(uvs_loop_t *loop);

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

/* server.c: accepting and announcing */
int uvs__conn_announce(uvs_conn_t *c, int stage, const char *p, size_t n);
void uvs__server_forget(uvs_conn_t *c);

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
