/*
 * uvssl_api.h: the native core as the Python side sees it, and nothing else: the opaque handle
 * types, the event/action/stage codes, the constants Python tests for, and the uvs_*
 * functions it calls. uvs.h includes it, so the compiler checks every prototype here against
 * its definition; build_ffi.py reads this same file as its cffi cdef, so the two cannot drift.
 *
 * The cdef is derived from this file by one mechanical transformation (build_ffi.py,
 * cdef_from_header; tests/test_ffi.py checks that the compiled module is built from it):
 *   1. `#ifdef UVS_CDEF` groups are for cffi only (C never defines UVS_CDEF) and are kept;
 *      `#ifndef UVS_CDEF` groups are for C only and are dropped. `#else` swaps the two; such a
 *      group contains no other conditional.
 *   2. `#define NAME value` becomes `#define NAME ...`: cffi takes every value from the compiler.
 *   3. Every other preprocessor line (the include guard, #include) is dropped; all else,
 *      comments included, is kept as it is.
 * So outside UVS_CDEF groups, write only what cffi's cdef parser accepts: typedefs of opaque
 * structs, enums with literal values, plain prototypes. The OpenSSL types used below (SSL_CTX,
 * SSL, X509) are declared to cffi by csrc/openssl_cdef.h, which build_ffi.py reads first.
 */
#ifndef UVSSL_API_H
#define UVSSL_API_H

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <openssl/ssl.h>

/* ---- handles (opaque) ------------------------------------------------------------------- */
typedef struct uvs_loop_s uvs_loop_t;
typedef struct uvs_conn_s uvs_conn_t;
typedef struct uvs_server_s uvs_server_t;
typedef struct uvs_timer_s uvs_timer_t;
typedef struct uvs_udp_s uvs_udp_t;

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
    UVS_EV_TLS_ERROR = 9,      /* TLS failure; details through uvs_conn_tls_error           */
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
    UVS_ACT_TLS_WRITE = 9,
    UVS_ACT_PROXY = 10           /* reading a PROXY protocol header; status: UVS_PROXY_E*    */
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
    UVS_CF_NOTIFY_DRAIN = 2,     /* deliver UVS_EV_DRAIN                                      */
    UVS_CF_UNBATCHED = 4         /* every read through on_read, none batched: the embedding
                                    copies it from the read buffer into one of its own       */
};

/* ---- uvs_x509_field's `what` (ctx.c) ---------------------------------------------------- */
enum {
    UVS_X509_SUBJECT = 0,        /* RFC 2253, one RDN per line, most specific first          */
    UVS_X509_ISSUER = 1,         /* the same                                                  */
    UVS_X509_SERIAL = 2,         /* hex                                                       */
    UVS_X509_NOT_BEFORE = 3,     /* "YYYYMMDDHHMMSSZ"                                          */
    UVS_X509_NOT_AFTER = 4,      /* the same                                                  */
    UVS_X509_SAN = 5,            /* subject alternative names, one "TYPE:value" per line      */
    UVS_X509_VERSION = 6         /* 1-based                                                   */
};

/* The most error codes uvs_conn_tls_error and uvs_stream_tls_error report (the engine keeps
 * as many: tls_engine.h's UVS__TLS_MAX_ERRORS, checked equal in conn.c). */
#define UVS_TLS_MAX_ERRORS 16

/* uvs_conn_write's refusal when the calling thread does not run `loop` (see loop.c) */
#define UVS_EFOREIGN (-0x7001)

#ifdef UVS_CDEF
/* libuv's error codes that the Python side tests for (values from <uv.h>) */
#define UV_EOF ...
#define UV_ECONNREFUSED ...
#define UV_ETIMEDOUT ...
#define UV_ECANCELED ...
#define UV_EPIPE ...
#define UV_ESHUTDOWN ...
#define UV_ENOTCONN ...
#define UV_EBADF ...
#define UV_EINVAL ...
#define UV_EADDRINUSE ...
#define UV_EPROTO ...
#define UV_EMSGSIZE ...
#define UV_EISCONN ...
#define UV_EAI_NONAME ...
#endif

/* ---- addresses -------------------------------------------------------------------------- */
/* A connection's two addresses, kept so that they stay readable after it closes: the peer's is
 * taken when it connects or is accepted, this end's when it is first asked for or at the
 * close, whichever comes first. An address never known has family AF_UNSPEC (0). */
#ifndef UVS_CDEF
typedef union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} uvs_addr_t;
#else
typedef union { ...; } uvs_addr_t; /* size and alignment from the compiler */
#endif

typedef struct {
    uvs_addr_t local;
    uvs_addr_t peer;
    uvs_addr_t proxy;   /* a connection accepted through the PROXY protocol: the proxy (the
                         * real TCP peer), while peer is the client the header named */
} uvs_addrs_t;

/* ---- errors ----------------------------------------------------------------------------- */
const char *uvs_strerror(int err);
const char *uvs_errname(int err);

/* ---- loops and timers (loop.c) ---------------------------------------------------------- */
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
int uvs_loop_embed(uvs_loop_t *loop);
int uvs_loop_backend_fd(uvs_loop_t *loop);
int uvs_loop_run_once(uvs_loop_t *loop);

uvs_timer_t *uvs_timer_new(uvs_loop_t *loop, void *data, uint64_t timeout_ms, uint64_t repeat_ms,
                           int *err);
void uvs_timer_close(uvs_timer_t *t);

/* ---- connections (conn.c, tcp.c) -------------------------------------------------------- */
uvs_conn_t *uvs_conn_connect(uvs_loop_t *loop, void *data, const char *host, int port, int *err);
uvs_conn_t *uvs_conn_open(uvs_loop_t *loop, void *data, int fd, int *err);
void uvs_conn_set_data(uvs_conn_t *c, void *data);
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

/* ---- datagram sockets (udp.c) ----------------------------------------------------------- */
/* uvs_udp_new's flags */
enum {
    UVS_UDP_REUSE_PORT = 1,      /* SO_REUSEPORT before the bind                              */
    UVS_UDP_BROADCAST = 2        /* SO_BROADCAST                                              */
};
/* uvs_udp_option's `which` */
enum {
    UVS_UDP_OPT_BROADCAST = 1,
    UVS_UDP_OPT_MULTICAST_TTL = 2,
    UVS_UDP_OPT_MULTICAST_LOOP = 3
};
/* the receive slot that makes truncation impossible (the largest IP datagram's payload fits) */
#define UVS_UDP_SLOT 65536
int uvs_addr_parse(const char *ip, int port, uvs_addr_t *out);
int uvs_addr_is_v6(const uvs_addr_t *a);
uvs_udp_t *uvs_udp_new(uvs_loop_t *loop, void *data, const uvs_addr_t *local, int flags,
                       size_t slot, int *err);
int uvs_udp_connect(uvs_udp_t *u, const uvs_addr_t *peer);
int uvs_udp_connect_name(uvs_udp_t *u, const char *host, int port, int bind_port, int flags);
int uvs_udp_send(uvs_loop_t *loop, uvs_udp_t *u, const char *buf, size_t len,
                 const uvs_addr_t *addr);
int uvs_udp_send_many(uvs_loop_t *loop, uvs_udp_t *u, const char *buf, const size_t *lens,
                      uvs_addr_t *const *addrs, size_t n);
int uvs_udp_send_name(uvs_udp_t *u, const char *buf, size_t len, const char *host, int port);
int uvs_udp_close(uvs_udp_t *u, int force);
int uvs_udp_fileno(uvs_udp_t *u);
int uvs_udp_address(uvs_udp_t *u, int peer, uvs_addr_t *out);
int uvs_udp_membership(uvs_udp_t *u, const char *group, const char *iface, int join);
int uvs_udp_option(uvs_udp_t *u, int which, int value);
int uvs_udp_using_recvmmsg(uvs_udp_t *u);
size_t uvs_udp_queued(const uvs_udp_t *u);

/* ---- servers (server.c) ----------------------------------------------------------------- */
uvs_server_t *uvs_server_new(uvs_loop_t *loop, void *data, const char *ip, int port, int backlog,
                             int reuse_port, int *err);
int uvs_server_port(uvs_server_t *s);
int uvs_server_fileno(uvs_server_t *s);
void uvs_server_close(uvs_server_t *s);
void uvs_server_set_eager(uvs_server_t *s, int eager);
void uvs_server_abort_unannounced(uvs_server_t *s);
int uvs_server_unannounced(const uvs_server_t *s);

/* ---- the PROXY protocol (proxy.c) ------------------------------------------------------- */
/* uvs_proxy_parse's verdicts (negative), and the reasons a proxied connection fails (the
 * status of its UVS_EV_ERROR, action UVS_ACT_PROXY; UV_ENOMEM too) */
enum {
    UVS_PROXY_ESIGNATURE = -1,   /* neither the v1 "PROXY " nor the v2 signature             */
    UVS_PROXY_ELINE = -2,        /* v1: no CRLF within 107 bytes, or LF without CR           */
    UVS_PROXY_ESYNTAX = -3,      /* v1: unknown protocol, wrong number of fields             */
    UVS_PROXY_EADDRESS = -4,     /* v1: an address that is not one of the protocol's family  */
    UVS_PROXY_EPORT = -5,        /* v1: a port that is not 0..65535 in plain decimal         */
    UVS_PROXY_EVERSION = -6,     /* v2: version nibble not 2                                  */
    UVS_PROXY_ECOMMAND = -7,     /* v2: command neither LOCAL nor PROXY                       */
    UVS_PROXY_EFAMILY = -8,      /* v2: family/protocol other than UNSPEC, TCP4, TCP6         */
    UVS_PROXY_ELENGTH = -9,      /* v2: length too short for the family's addresses          */
    UVS_PROXY_ETLV = -10,        /* v2: a TLV (or an SSL sub-TLV) runs past its end          */
    UVS_PROXY_ESOURCE = -11,     /* the peer is not one of the server's proxies               */
    UVS_PROXY_ETIMEOUT = -12,    /* no complete header within the deadline                    */
    UVS_PROXY_EEOF = -13         /* the peer closed before the header was complete            */
};
enum { UVS_PROXY_CMD_LOCAL = 0, UVS_PROXY_CMD_PROXY = 1 };
enum { UVS_PROXY_AF_UNSPEC = 0, UVS_PROXY_AF_INET = 1, UVS_PROXY_AF_INET6 = 2 };
enum { UVS_PROXY_TLV_SSL = 0x20 };
/* A parsed header. Addresses in network order (IPv4: the first 4 bytes); for LOCAL and
 * UNSPEC they are zero. The TLVs are tlv_len bytes at tlv_off in the parsed buffer. */
typedef struct {
    int version;
    int command;
    int family;
    unsigned char src[16];
    unsigned char dst[16];
    int src_port;
    int dst_port;
    size_t tlv_off;
    size_t tlv_len;
} uvs_proxy_hdr_t;
/* Parse the len bytes received so far: the header's length when complete, 0 when more bytes
 * are needed, or a UVS_PROXY_E* code. Pure: no I/O, no allocation. */
long uvs_proxy_parse(const unsigned char *buf, size_t len, uvs_proxy_hdr_t *out);
/* A source a server accepts headers from: family 4 or 6, the first `prefix` bits of addr. */
typedef struct {
    int family;
    int prefix;
    unsigned char addr[16];
} uvs_proxy_net_t;
/* Turn the protocol on (or off) for the connections s accepts from now: each must start with
 * a header within timeout_s seconds (0: no limit), from one of the n sources (n == 0: any). */
int uvs_server_set_proxy(uvs_server_t *s, int on, double timeout_s, const uvs_proxy_net_t *nets,
                         size_t n);
/* A proxied connection's raw v2 TLVs: their length (0: none, or no header), and *tlv pointing
 * at them (valid while c lives) when tlv is not NULL. The proxy's address is in the
 * connection's addresses (uvs_addrs_t.proxy; uvs_conn_proxy_address formats it). */
size_t uvs_conn_proxy_tlvs(uvs_conn_t *c, const unsigned char **tlv);
int uvs_conn_proxy_address(uvs_conn_t *c, char *host, size_t hostlen, int *port);

/* ---- TLS on connections and servers (tls_conn.c), contexts and certificates (ctx.c) ----- */
/* tls.h declares these too, for now; the compiler checks that both agree. */
int uvs_conn_attach_tls(uvs_conn_t *c, SSL_CTX *ctx, SSL *ssl, int server, double hs_timeout,
                        const char *initial, size_t initial_len);
int uvs_conn_detach_tls(uvs_conn_t *c);
SSL *uvs_conn_ssl(uvs_conn_t *c);
int uvs_conn_tls_buffers_held(const uvs_conn_t *c);
int uvs_tls_can_free_buffers(void);
int uvs_conn_tls_state(uvs_conn_t *c);
int uvs_conn_tls_error(uvs_conn_t *c, unsigned long *codes, int max, int *ssl_err, int *sys_err,
                       long *verify_result);
int uvs_server_set_tls(uvs_server_t *s, SSL_CTX *ctx, double hs_timeout);
int uvs_ctx_use_key_file(SSL_CTX *ctx, const char *path, int filetype, const char *password);
int uvs_ctx_use_cert_file(SSL_CTX *ctx, const char *path, int filetype, const char *password);
int uvs_ctx_use_cert_mem(SSL_CTX *ctx, const char *data, size_t len);
int uvs_ctx_use_key_mem(SSL_CTX *ctx, const char *data, size_t len, int filetype,
                        const char *password);
int uvs_ctx_add_ca_mem(SSL_CTX *ctx, const char *data, size_t len);
int uvs_ctx_set_keylog_file(SSL_CTX *ctx, const char *path);
int uvs_ctx_set_alpn_select(SSL_CTX *ctx, const unsigned char *wire, unsigned len);
int uvs_ctx_use_self_signed(SSL_CTX *ctx, const char *cn, int days, unsigned char *fp);
int uvs_ctx_set_sni(SSL_CTX *ctx, void *arg);
int uvs_ctx_load_crl_file(SSL_CTX *ctx, const char *path);
int uvs_x509_field(X509 *x, int what, char *buf, int len);

/* ---- live reload of a context's certificate and trust store (ctx.c) -------------------- */
/* Read into a uvs_reload_t, one step at a time (each: 1, or 0 with the error queue saying
 * why; the CA and CRL steps build a new trust store), then uvs_reload_install puts all of it
 * in service at once, or none of it. */
typedef struct uvs_reload_s uvs_reload_t;
enum {
    UVS_RELOAD_EKEYTYPE = -1,    /* the context serves a certificate with another key type    */
    UVS_RELOAD_ELOCK = -2        /* the certificate lock failed                               */
};
uvs_reload_t *uvs_reload_new(void);
void uvs_reload_free(uvs_reload_t *r);
int uvs_reload_cert_file(uvs_reload_t *r, const char *path, int filetype, const char *password);
int uvs_reload_key_file(uvs_reload_t *r, const char *path, int filetype, const char *password);
int uvs_reload_check_key(uvs_reload_t *r);
int uvs_reload_ca_files(uvs_reload_t *r, const char *file, const char *dir);
int uvs_reload_ca_mem(uvs_reload_t *r, const char *data, size_t len);
int uvs_reload_default_paths(uvs_reload_t *r);
int uvs_reload_crl_file(uvs_reload_t *r, const char *path);
X509 *uvs_reload_cert(uvs_reload_t *r);
int uvs_reload_install(uvs_reload_t *r, SSL_CTX *ctx);

/* ---- shared session ticket keys (tickets.c) --------------------------------------------- */
/* A key is 80 bytes in nginx's ssl_session_ticket_key layout: a 16-byte name, a 32-byte
 * HMAC-SHA256 secret, a 32-byte AES-256 key. uvs_ctx_set_ticket_keys takes n of them back to
 * back (the first issues tickets, all open them), replacing any keys ctx had, and returns 1;
 * 0 when memory or OpenSSL failed (the error queue says why); or one of UVS_TICKETS_E*. On
 * any failure the keys ctx had stay. Safe while other threads run handshakes on ctx. */
#define UVS_TICKET_KEY_LEN 80
#define UVS_TICKET_KEYS_MAX 16
enum {
    UVS_TICKETS_EARGS = -1,      /* n is 0 or above UVS_TICKET_KEYS_MAX                      */
    UVS_TICKETS_ECLIENT = -2,    /* ctx was made with TLS_client_method: it never issues     */
    UVS_TICKETS_EDISABLED = -3   /* ctx has SSL_OP_NO_TICKET                                 */
};
int uvs_ctx_set_ticket_keys(SSL_CTX *ctx, const unsigned char *keys, size_t n);
/* How many keys ctx has (0: none set, OpenSSL's own per-context key is used), -1 on error. */
int uvs_ctx_ticket_key_count(SSL_CTX *ctx);

#ifdef UVS_CDEF
/* The engine's states (uvs_conn_tls_state), defined for C in tls_engine.h: the engine's
 * header includes nothing of uvssl, and an enum constant cannot be declared twice in C99. cffi
 * takes the values from the compiler. */
#define UVS_TLS_HANDSHAKING ...
#define UVS_TLS_OPEN ...
#define UVS_TLS_FAILED ...
#define UVS_TLS_DONE ...
#endif

/* ---- blocking streams (tls_blocking.c) -------------------------------------------------- */
typedef struct uvs_stream_s uvs_stream_t;
/* uvs_stream_* failed in TLS: see uvs_stream_tls_error */
#define UVS_STREAM_ETLS (-0x7000)
uvs_stream_t *uvs_stream_new(SSL_CTX *ctx, int fd, int server, int *err);
void uvs_stream_free(uvs_stream_t *s);
SSL *uvs_stream_ssl(uvs_stream_t *s);
void uvs_stream_set_timeout(uvs_stream_t *s, int timeout_ms);
int uvs_stream_handshake(uvs_stream_t *s);
long uvs_stream_read(uvs_stream_t *s, char *buf, size_t n);
long uvs_stream_write(uvs_stream_t *s, const char *buf, size_t n);
int uvs_stream_shutdown(uvs_stream_t *s);
int uvs_stream_tls_error(uvs_stream_t *s, unsigned long *codes, int max, int *ssl_err,
                         int *sys_err, long *verify_result);

#endif /* UVSSL_API_H */
