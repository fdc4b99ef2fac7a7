"""cffi builder for uvssl's native core (out-of-line API mode).

The C sources in ``csrc/`` are compiled into the extension ``uvssl._uvssl`` together with the
declarations below. libuv and OpenSSL come from the system through pkg-config; when either is
missing the build stops with a message naming the Debian package to install.

Environment switches:
  UVSSL_SANITIZE=1   build with AddressSanitizer/LeakSanitizer (run Python with the ASan
                     runtime preloaded, see tests/README or .ci/asan).
  UVSSL_DEBUG=1      -O0 -g instead of -O2.
  UVSSL_LIBUV_PREFIX=DIR
                     link DIR/lib/libuv.a statically (see vendor/README.md) instead of the
                     system libuv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = [
    "buf.c", "batch.c", "loop.c", "conn.c", "tcp.c", "server.c", "tls.c", "tls_conn.c", "ctx.c",
    "stream.c",
]

# (pkg-config name, Debian package that provides it)
REQUIRED = [("libuv", "libuv1-dev"), ("openssl", "libssl-dev")]


def _pkg_config(*args: str) -> list[str]:
    out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True)
    return out.stdout.split()


def _find_libraries() -> tuple[list[str], list[str], list[str], list[str]]:
    """Return (include_dirs, library_dirs, libraries, extra_objects) for libuv and OpenSSL."""
    if shutil.which("pkg-config") is None:
        sys.exit(
            "uvssl: pkg-config was not found. Install it (Debian: apt-get install pkg-config) "
            "together with libuv1-dev and libssl-dev, then build again."
        )
    incs: list[str] = []
    libdirs: list[str] = []
    libs: list[str] = []
    objects: list[str] = []
    required = REQUIRED
    prefix = os.environ.get("UVSSL_LIBUV_PREFIX")
    if prefix:
        archive = Path(prefix) / "lib" / "libuv.a"
        if not archive.is_file():
            sys.exit(f"uvssl: UVSSL_LIBUV_PREFIX={prefix} has no lib/libuv.a "
                     "(build it with vendor/build-libuv.sh)")
        incs.append(str(Path(prefix) / "include"))
        objects.append(str(archive))
        libs += ["pthread", "dl"]
        required = [r for r in REQUIRED if r[0] != "libuv"]
    for name, package in required:
        try:
            cflags = _pkg_config("--cflags", name)
            ldflags = _pkg_config("--libs", name)
        except subprocess.CalledProcessError:
            sys.exit(
                f"uvssl: the C library '{name}' was not found by pkg-config. "
                f"Install its development package (Debian: apt-get install {package}) "
                "and build again."
            )
        incs += [f[2:] for f in cflags if f.startswith("-I")]
        libdirs += [f[2:] for f in ldflags if f.startswith("-L")]
        libs += [f[2:] for f in ldflags if f.startswith("-l")]
    return incs, libdirs, libs, objects


CDEF = r"""
/* ---- the native core --------------------------------------------------------------- */
typedef struct uvs_loop_s uvs_loop_t;
typedef struct uvs_conn_s uvs_conn_t;
typedef struct uvs_server_s uvs_server_t;
typedef struct uvs_timer_s uvs_timer_t;
typedef union { ...; } uvs_addr_t;
typedef struct { uvs_addr_t local; uvs_addr_t peer; } uvs_addrs_t;

#define UVS_EV_CONNECT ...
#define UVS_EV_EOF ...
#define UVS_EV_ERROR ...
#define UVS_EV_READ_TIMEOUT ...
#define UVS_EV_WRITE_TIMEOUT ...
#define UVS_EV_WRITTEN ...
#define UVS_EV_DRAIN ...
#define UVS_EV_CLOSED ...
#define UVS_EV_TLS_ERROR ...
#define UVS_EV_TLS_CLOSED ...
#define UVS_EV_HANDSHAKE_TIMEOUT ...
#define UVS_EV_TLS_DETACHED ...
#define UVS_ACT_RESOLVE ...
#define UVS_ACT_CONNECT ...
#define UVS_ACT_READ ...
#define UVS_ACT_WRITE ...
#define UVS_ACT_SHUTDOWN ...
#define UVS_ACT_ACCEPT ...
#define UVS_ACT_HANDSHAKE ...
#define UVS_ACT_TLS_READ ...
#define UVS_ACT_TLS_WRITE ...
#define UVS_CF_NOTIFY_WRITTEN ...
#define UVS_CF_NOTIFY_DRAIN ...
#define UVS_ACCEPT_NEW ...
#define UVS_ACCEPT_ESTABLISHED ...
#define UVS_ACCEPT_FAILED ...
#define UVS_TLS_HANDSHAKING ...
#define UVS_TLS_OPEN ...
#define UVS_TLS_FAILED ...
#define UVS_TLS_DONE ...
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

void uvs_py_install(void);
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
#define UVS_EFOREIGN ...
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
int uvs_conn_tls_buffers_held(const uvs_conn_t *c);
int uvs_tls_can_free_buffers(void);
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

/* ---- TLS ------------------------------------------------------------------------------- */
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
typedef struct ssl_cipher_st SSL_CIPHER;
typedef struct ssl_method_st SSL_METHOD;
typedef struct x509_st X509;
typedef struct X509_VERIFY_PARAM_st X509_VERIFY_PARAM;
typedef struct X509_name_st X509_NAME;
typedef struct asn1_string_st ASN1_INTEGER;
typedef struct asn1_string_st ASN1_TIME;
typedef struct evp_md_st EVP_MD;
typedef ... BIO;

int uvs_conn_attach_tls(uvs_conn_t *c, SSL_CTX *ctx, SSL *ssl, int server, double hs_timeout,
                        const char *initial, size_t initial_len);
int uvs_conn_detach_tls(uvs_conn_t *c);
SSL *uvs_conn_ssl(uvs_conn_t *c);
int uvs_conn_tls_state(uvs_conn_t *c);
int uvs_conn_tls_error(uvs_conn_t *c, unsigned long *codes, int max, int *ssl_err, int *sys_err,
                       long *verify_result);
int uvs_server_set_tls(uvs_server_t *s, SSL_CTX *ctx, double hs_timeout);
int uvs_ctx_use_key_file(SSL_CTX *ctx, const char *path, int filetype, const char *password);
int uvs_ctx_use_cert_file(SSL_CTX *ctx, const char *path, int filetype, const char *password);
int uvs_ctx_set_alpn_select(SSL_CTX *ctx, const unsigned char *wire, unsigned len);
int uvs_ctx_use_self_signed(SSL_CTX *ctx, const char *cn, int days, unsigned char *fp);
int uvs_ctx_set_sni(SSL_CTX *ctx, void *arg);
int uvs_ctx_load_crl_file(SSL_CTX *ctx, const char *path);
int uvs_x509_field(X509 *x, int what, char *buf, int len);

/* ---- blocking streams (stream.c) -------------------------------------------------------- */
typedef struct uvs_stream_s uvs_stream_t;
#define UVS_STREAM_ETLS ...
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

/* ---- the curated OpenSSL surface (uvssl.openssl.lib) ------------------------------------ */
#define SSL_OP_ALL ...
#define SSL_OP_NO_QUERY_MTU ...
#define SSL_OP_COOKIE_EXCHANGE ...
#define SSL_OP_NO_TICKET ...
#define SSL_OP_CISCO_ANYCONNECT ...
#define SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION ...
#define SSL_OP_NO_COMPRESSION ...
#define SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION ...
#define SSL_OP_SINGLE_ECDH_USE ...
#define SSL_OP_SINGLE_DH_USE ...
#define SSL_OP_EPHEMERAL_RSA ...
#define SSL_OP_CIPHER_SERVER_PREFERENCE ...
#define SSL_OP_TLS_ROLLBACK_BUG ...
#define SSL_OP_NO_SSLv2 ...
#define SSL_OP_NO_SSLv3 ...
#define SSL_OP_NO_TLSv1 ...
#define SSL_OP_NO_TLSv1_1 ...
#define SSL_OP_NO_TLSv1_2 ...
#define SSL_OP_NO_TLSv1_3 ...
#define SSL_OP_NO_RENEGOTIATION ...
#define SSL_OP_IGNORE_UNEXPECTED_EOF ...
#define SSL_FILETYPE_PEM ...
#define SSL_FILETYPE_ASN1 ...
#define SSL_VERIFY_NONE ...
#define SSL_VERIFY_PEER ...
#define SSL_VERIFY_FAIL_IF_NO_PEER_CERT ...
#define SSL_SESS_CACHE_OFF ...
#define SSL_SESS_CACHE_CLIENT ...
#define SSL_SESS_CACHE_SERVER ...
#define SSL_SESS_CACHE_BOTH ...
#define TLS1_VERSION ...
#define TLS1_1_VERSION ...
#define TLS1_2_VERSION ...
#define TLS1_3_VERSION ...
#define SSL_ERROR_SSL ...
#define SSL_ERROR_SYSCALL ...
#define SSL_ERROR_ZERO_RETURN ...
#define X509_V_OK ...
#define X509_V_FLAG_CRL_CHECK ...
#define X509_V_FLAG_CRL_CHECK_ALL ...
#define X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS ...
#define OPENSSL_VERSION_NUMBER ...

const SSL_METHOD *TLS_method(void);
const SSL_METHOD *TLS_client_method(void);
const SSL_METHOD *TLS_server_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *method);
int SSL_CTX_up_ref(SSL_CTX *ctx);
void SSL_CTX_free(SSL_CTX *ctx);
uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t op);
uint64_t SSL_CTX_clear_options(SSL_CTX *ctx, uint64_t op);
uint64_t SSL_CTX_get_options(const SSL_CTX *ctx);
int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *str);
int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *str);
int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);
int SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);
int SSL_CTX_get_min_proto_version(SSL_CTX *ctx);
int SSL_CTX_get_max_proto_version(SSL_CTX *ctx);
int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);
int SSL_CTX_check_private_key(const SSL_CTX *ctx);
int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *CAfile, const char *CApath);
int SSL_CTX_set_default_verify_paths(SSL_CTX *ctx);
void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *callback);
int SSL_CTX_get_verify_mode(const SSL_CTX *ctx);
void SSL_CTX_set_verify_depth(SSL_CTX *ctx, int depth);
int SSL_CTX_set_alpn_protos(SSL_CTX *ctx, const unsigned char *protos, unsigned int protos_len);
long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);
int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t num_tickets);
int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx,
                                   unsigned int sid_ctx_len);
long SSL_CTX_set_mode(SSL_CTX *ctx, long mode);
X509_VERIFY_PARAM *SSL_CTX_get0_param(SSL_CTX *ctx);

SSL *SSL_new(SSL_CTX *ctx);
void SSL_free(SSL *ssl);
int SSL_up_ref(SSL *s);
int SSL_is_server(const SSL *s);
SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl);
uint64_t SSL_set_options(SSL *s, uint64_t op);
uint64_t SSL_get_options(const SSL *s);
int SSL_set_tlsext_host_name(SSL *s, const char *name);
int SSL_set1_host(SSL *s, const char *hostname);
void SSL_set_hostflags(SSL *s, unsigned int flags);
X509_VERIFY_PARAM *SSL_get0_param(SSL *ssl);
int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc);
int X509_VERIFY_PARAM_set_flags(X509_VERIFY_PARAM *param, unsigned long flags);
void SSL_set_verify(SSL *s, int mode, void *callback);
int SSL_get_verify_mode(const SSL *s);
int SSL_set_alpn_protos(SSL *ssl, const unsigned char *protos, unsigned int protos_len);
void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len);
const char *SSL_get_version(const SSL *ssl);
const SSL_CIPHER *SSL_get_current_cipher(const SSL *s);
const char *SSL_CIPHER_get_name(const SSL_CIPHER *c);
int SSL_CIPHER_get_bits(const SSL_CIPHER *c, int *alg_bits);
SSL_SESSION *SSL_get1_session(SSL *ssl);
int SSL_set_session(SSL *ssl, SSL_SESSION *session);
void SSL_SESSION_free(SSL_SESSION *session);
int SSL_SESSION_is_resumable(const SSL_SESSION *s);
int SSL_session_reused(const SSL *s);
X509 *SSL_get1_peer_certificate(const SSL *s);
long SSL_get_verify_result(const SSL *ssl);
int SSL_set_cipher_list(SSL *s, const char *str);
int SSL_set_ciphersuites(SSL *s, const char *str);
int SSL_set_min_proto_version(SSL *s, int version);
int SSL_set_max_proto_version(SSL *s, int version);
void SSL_set_verify_depth(SSL *s, int depth);

void X509_free(X509 *a);
int X509_up_ref(X509 *a);
int i2d_X509(X509 *a, unsigned char **out);
X509 *d2i_X509(X509 **a, const unsigned char **in, long len);
const char *SSL_get_servername(const SSL *s, const int type);
#define TLSEXT_NAMETYPE_host_name ...
const char *X509_verify_cert_error_string(long n);

unsigned long ERR_get_error(void);
unsigned long ERR_peek_error(void);
void ERR_clear_error(void);
void ERR_error_string_n(unsigned long e, char *buf, size_t len);
const char *ERR_reason_error_string(unsigned long e);
const char *ERR_lib_error_string(unsigned long e);
int ERR_GET_LIB(unsigned long e);
int ERR_GET_REASON(unsigned long e);

unsigned long OpenSSL_version_num(void);
const char *OpenSSL_version(int t);
#define OPENSSL_VERSION ...

extern "Python" {
    void uvs_py_on_read(void *data, const char *buf, size_t len);
    void uvs_py_on_batch(void *loop_data, void *const *datas, const size_t *lens, size_t n,
                         const char *buf, size_t len);
    void uvs_py_on_event(void *data, int kind, int status, int action);
    void uvs_py_on_accept(void *server_data, uvs_conn_t *conn, int stage, const char *buf,
                          size_t len);
    void uvs_py_on_timer(void *data);
    void uvs_py_on_wakeup(void *loop_data);
    SSL_CTX *uvs_py_on_sni(void *ctx_data, SSL *ssl, const char *name, int *verdict);
}
"""

SOURCE = r"""
#include <openssl/x509v3.h>
#include "uvs.h"
#include "tls.h"

static void uvs_py_on_read(void *data, const char *buf, size_t len);
static void uvs_py_on_batch(void *loop_data, void *const *datas, const size_t *lens, size_t n,
                            const char *buf, size_t len);
static void uvs_py_on_event(void *data, int kind, int status, int action);
static void uvs_py_on_accept(void *server_data, uvs_conn_t *conn, int stage, const char *buf,
                             size_t len);
static void uvs_py_on_timer(void *data);
static void uvs_py_on_wakeup(void *loop_data);
static SSL_CTX *uvs_py_on_sni(void *ctx_data, SSL *ssl, const char *name, int *verdict);

/* Point the native core's callback table at the extern "Python" dispatchers. */
static void uvs_py_install(void) {
    uvs_callbacks_t cb;
    cb.on_read = uvs_py_on_read;
    cb.on_batch = uvs_py_on_batch;
    cb.on_event = uvs_py_on_event;
    cb.on_accept = uvs_py_on_accept;
    cb.on_timer = uvs_py_on_timer;
    cb.on_wakeup = uvs_py_on_wakeup;
    cb.on_sni = uvs_py_on_sni;
    uvs_set_callbacks(&cb);
}
"""


def _build() -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef(CDEF)
    incs, libdirs, libs, objects = _find_libraries()
    cflags = [
        "-std=c99",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unused-parameter",
        "-Wno-unused-function",
    ]
    ldflags: list[str] = []
    if os.environ.get("UVSSL_DEBUG") or os.environ.get("UVSSL_SANITIZE"):
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O2"]
    if os.environ.get("UVSSL_SANITIZE"):
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    ffibuilder.set_source(
        "uvssl._uvssl",
        SOURCE,
        sources=[str((CSRC / s).relative_to(HERE)) for s in SOURCES],
        include_dirs=[str(CSRC.relative_to(HERE)), *incs],
        library_dirs=libdirs,
        libraries=libs,
        extra_objects=objects,
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        depends=[str(p.relative_to(HERE)) for p in CSRC.glob("*.h")],
    )
    return ffibuilder


ffibuilder = _build()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
