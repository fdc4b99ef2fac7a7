"""cffi builder for uvssl's native core (out-of-line API mode).

The C sources in ``csrc/`` are compiled into the extension ``uvssl._uvssl``. Its cdef is not
written here: it is derived from csrc/openssl_cdef.h and csrc/uvssl_api.h (the native core's
public header, which C includes too) by cdef_from_header, plus the binding's own callback
declarations. libuv and OpenSSL come from the system through pkg-config; when either is
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
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = [
    "buf.c", "batch.c", "loop.c", "conn.c", "tcp.c", "server.c", "tls.c", "tls_conn.c", "ctx.c",
    "tls_blocking.c", "tickets.c", "udp.c", "proxy.c",
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


# The cdef is never written here: it is read from these files in csrc/, in this order, and
# derived from each by cdef_from_header. uvssl_api.h is the native core's public header (C
# includes it through uvs.h); openssl_cdef.h is the curated OpenSSL surface (cdef only).
CDEF_HEADERS = ["openssl_cdef.h", "uvssl_api.h"]

# What this binding itself defines (SOURCE below), so declared here: the function that installs
# the callback table, and the extern "Python" dispatchers it points at.
BINDING_CDEF = r"""
void uvs_py_install(void);
int uvs_py_time_callbacks(uint64_t *counters);

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
    void uvs_py_on_udp_batch(void *data, const size_t *lens, const uint64_t *keys,
                             const uvs_addr_t *addrs, size_t n, const char *buf, size_t len);
    void uvs_py_on_udp_event(void *data, int kind, int status, int action,
                             const uvs_addr_t *addr, const char *host);
}
"""

# The UVS_CDEF groups of a header: which lines cffi sees (True) or only C does (False).
_CDEF_GROUPS = {"#ifdef UVS_CDEF": True, "#ifndef UVS_CDEF": False}
_DEFINE_VALUE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)\s+\S")
_DEFINE_BARE = re.compile(r"#\s*define\s+[A-Za-z_]\w*$")


def cdef_from_header(text: str) -> str:
    """Derive cffi cdef text from a C header written for it (the rules are in uvssl_api.h).

    1. ``#ifdef UVS_CDEF`` groups are kept (cffi only), ``#ifndef UVS_CDEF`` groups dropped
       (C only); ``#else`` swaps; no other conditional may appear inside such a group.
    2. ``#define NAME value`` becomes ``#define NAME ...`` (the compiler supplies the value).
    3. Any other preprocessor line (include guard, ``#include``) is dropped; all else is kept.
    Anything these rules do not cover (function-like or multi-line macros, other
    conditionals around declarations) is an error rather than a silent difference.
    """
    out: list[str] = []
    group: bool | None = None  # inside a UVS_CDEF group: whether its lines are kept
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            s = "#" + s[1:].lstrip()
        if group is None and s in _CDEF_GROUPS:
            group = _CDEF_GROUPS[s]
            continue
        if group is not None:
            if s == "#else":
                group = not group
                continue
            if s == "#endif":
                group = None
                continue
            if s.startswith("#") and not s.startswith("#define"):
                raise ValueError(f"cdef: {s!r} inside a UVS_CDEF group")
            if not group:
                continue
        if not s.startswith("#"):
            out.append(line)
            continue
        if s.endswith("\\"):
            raise ValueError(f"cdef: multi-line macro {s!r}")
        m = _DEFINE_VALUE.match(s)
        if m:
            out.append(f"#define {m.group(1)} ...")
        elif s.startswith("#define") and not _DEFINE_BARE.match(s):
            raise ValueError(f"cdef: unsupported macro {s!r}")
        elif s.startswith(("#if", "#ifdef", "#ifndef", "#else", "#elif")) and group is None:
            if not s.startswith("#ifndef") or not s.endswith("_H"):
                raise ValueError(f"cdef: conditional {s!r} outside a UVS_CDEF group")
    if group is not None:
        raise ValueError("cdef: unterminated UVS_CDEF group")
    return "\n".join(out) + "\n"


def cdef() -> str:
    """The whole cdef: the headers in CDEF_HEADERS, derived, then BINDING_CDEF."""
    parts = [cdef_from_header((CSRC / name).read_text()) for name in CDEF_HEADERS]
    return "".join(parts) + BINDING_CDEF


SOURCE = r"""
#include <errno.h>
#include <time.h>
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
static void uvs_py_on_udp_batch(void *data, const size_t *lens, const uint64_t *keys,
                                const uvs_addr_t *addrs, size_t n, const char *buf,
                                size_t len);
static void uvs_py_on_udp_event(void *data, int kind, int status, int action,
                                const uvs_addr_t *addr, const char *host);

/* Point the native core's callback table at the extern "Python" dispatchers. */
static void uvs_py_install(void) {
    static const uvs_callbacks_t dispatchers = {
        .on_read = uvs_py_on_read,
        .on_batch = uvs_py_on_batch,
        .on_event = uvs_py_on_event,
        .on_accept = uvs_py_on_accept,
        .on_timer = uvs_py_on_timer,
        .on_wakeup = uvs_py_on_wakeup,
        .on_sni = uvs_py_on_sni,
        .on_udp_batch = uvs_py_on_udp_batch,
        .on_udp_event = uvs_py_on_udp_event,
    };
    uvs_set_callbacks(&dispatchers);
}

/* ---- how long the GIL is held (the bench's --threads; off unless asked for) ----------------
 * uvs_py_time_callbacks(counters) points the callback table at wrappers that read this
 * thread's CPU clock before and after each dispatcher and add the difference to counters[0]
 * (nanoseconds) and 1 to counters[1] (calls), atomically: every loop thread adds to the same
 * two. A dispatcher holds the GIL for the whole of its Python code (cffi takes it on entry
 * and gives it back on return), so the sum is the CPU time spent holding the GIL, apart from
 * the short native calls that Python code makes (they release it) and cffi's own entry and
 * exit; a thread blocked waiting for the GIL uses no CPU time and adds nothing. NULL puts the
 * plain table back. The table is process-wide and read without a lock: call this only while
 * no loop runs (the bench's server calls it before it starts its threads). Returns 0, or a
 * negative errno when this thread's CPU clock cannot be read. */
static uint64_t *uvs_py_counters;

static uint64_t uvs_py_cpu_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0; /* checked once when timing is turned on; it cannot fail afterwards */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void uvs_py_count(uint64_t start) {
    uint64_t end = uvs_py_cpu_ns();
    __atomic_fetch_add(&uvs_py_counters[0], end > start ? end - start : 0, __ATOMIC_RELAXED);
    __atomic_fetch_add(&uvs_py_counters[1], 1, __ATOMIC_RELAXED);
}

static void uvs_py_timed_read(void *data, const char *buf, size_t len) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_read(data, buf, len);
    uvs_py_count(t);
}

static void uvs_py_timed_batch(void *loop_data, void *const *datas, const size_t *lens,
                               size_t n, const char *buf, size_t len) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_batch(loop_data, datas, lens, n, buf, len);
    uvs_py_count(t);
}

static void uvs_py_timed_event(void *data, int kind, int status, int action) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_event(data, kind, status, action);
    uvs_py_count(t);
}

static void uvs_py_timed_accept(void *server_data, uvs_conn_t *conn, int stage,
                                const char *buf, size_t len) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_accept(server_data, conn, stage, buf, len);
    uvs_py_count(t);
}

static void uvs_py_timed_timer(void *data) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_timer(data);
    uvs_py_count(t);
}

static void uvs_py_timed_wakeup(void *loop_data) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_wakeup(loop_data);
    uvs_py_count(t);
}

static SSL_CTX *uvs_py_timed_sni(void *ctx_data, SSL *ssl, const char *name, int *verdict) {
    uint64_t t = uvs_py_cpu_ns();
    SSL_CTX *picked = uvs_py_on_sni(ctx_data, ssl, name, verdict);
    uvs_py_count(t);
    return picked;
}

static void uvs_py_timed_udp_batch(void *data, const size_t *lens, const uint64_t *keys,
                                   const uvs_addr_t *addrs, size_t n, const char *buf,
                                   size_t len) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_udp_batch(data, lens, keys, addrs, n, buf, len);
    uvs_py_count(t);
}

static void uvs_py_timed_udp_event(void *data, int kind, int status, int action,
                                   const uvs_addr_t *addr, const char *host) {
    uint64_t t = uvs_py_cpu_ns();
    uvs_py_on_udp_event(data, kind, status, action, addr, host);
    uvs_py_count(t);
}

static int uvs_py_time_callbacks(uint64_t *counters) {
    static const uvs_callbacks_t timed = {
        .on_read = uvs_py_timed_read,
        .on_batch = uvs_py_timed_batch,
        .on_event = uvs_py_timed_event,
        .on_accept = uvs_py_timed_accept,
        .on_timer = uvs_py_timed_timer,
        .on_wakeup = uvs_py_timed_wakeup,
        .on_sni = uvs_py_timed_sni,
        .on_udp_batch = uvs_py_timed_udp_batch,
        .on_udp_event = uvs_py_timed_udp_event,
    };
    struct timespec ts;
    if (counters == NULL) {
        uvs_py_install();
        uvs_py_counters = NULL;
        return 0;
    }
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return -errno;
    uvs_py_counters = counters;
    uvs_set_callbacks(&timed);
    return 0;
}
"""


def _build() -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef(cdef())
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
