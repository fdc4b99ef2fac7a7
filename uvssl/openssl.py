"""Direct access to the OpenSSL that uvssl is built against.

``ffi`` and ``lib`` are the compiled module's: ``lib`` holds a curated set of OpenSSL functions
(``SSL_CTX_set_options``, ``SSL_CTX_set_cipher_list``, ``SSL_CTX_use_certificate_chain_file``,
``SSL_set_tlsext_host_name``, ``SSL_get_version``, ...) and constants, enough to configure a
context or a connection from ``ctx_configure_callback`` / ``ssl_configure_callback``. Those
callbacks get cffi pointers (``SSL_CTX *`` / ``SSL *``) that every ``lib`` function takes as they
are; ``address(ptr)`` gives a pointer's value as an int::

    from uvssl.openssl import lib
    def configure(ptr):
        lib.SSL_CTX_set_options(ptr, lib.SSL_OP_NO_TICKET)

The ``SSL_OP_*`` constants of cl-async's ``+ssl-op-...+`` list are exported here and from
``uvssl`` itself. OpenSSL 3 turned some of them into no-ops (their value is 0, so setting them
changes nothing): ``SSL_OP_SINGLE_ECDH_USE``, ``SSL_OP_SINGLE_DH_USE``, ``SSL_OP_EPHEMERAL_RSA``
and ``SSL_OP_NO_SSLv2``. They stay accepted so that code written for older versions runs.
"""

from __future__ import annotations

from typing import Any

from ._uvssl import ffi, lib

__all__ = [
    "ffi",
    "lib",
    "address",
    "openssl_version",
    "error_queue",
    "SSL_OPTIONS",
    "NOOP_OPTIONS",
]

#: cl-async's option names (``+ssl-op-no-ticket+`` is ``SSL_OP_NO_TICKET``) and their values.
SSL_OPTIONS: dict[str, int] = {
    name: int(getattr(lib, name))
    for name in (
        "SSL_OP_ALL",
        "SSL_OP_NO_QUERY_MTU",
        "SSL_OP_COOKIE_EXCHANGE",
        "SSL_OP_NO_TICKET",
        "SSL_OP_CISCO_ANYCONNECT",
        "SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION",
        "SSL_OP_NO_COMPRESSION",
        "SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION",
        "SSL_OP_SINGLE_ECDH_USE",
        "SSL_OP_SINGLE_DH_USE",
        "SSL_OP_EPHEMERAL_RSA",
        "SSL_OP_CIPHER_SERVER_PREFERENCE",
        "SSL_OP_TLS_ROLLBACK_BUG",
        "SSL_OP_NO_SSLv2",
        "SSL_OP_NO_SSLv3",
        "SSL_OP_NO_TLSv1",
        "SSL_OP_NO_TLSv1_1",
        "SSL_OP_NO_TLSv1_2",
        "SSL_OP_NO_TLSv1_3",
        "SSL_OP_NO_RENEGOTIATION",
        "SSL_OP_IGNORE_UNEXPECTED_EOF",
    )
}

#: Options that OpenSSL 3 made no-ops (value 0): accepted, and documented as doing nothing.
NOOP_OPTIONS = frozenset(name for name, value in SSL_OPTIONS.items() if value == 0)


def address(ptr: Any) -> int:
    """The address a cffi pointer (``SSL_CTX *``, ``SSL *``, ...) holds, as an int."""
    if not isinstance(ptr, ffi.CData) or ffi.typeof(ptr).kind != "pointer":
        raise TypeError(
            "address() takes a cffi pointer (such as the SSL_CTX * or SSL * a configure "
            f"callback gets), not {type(ptr).__name__}"
        )
    return int(ffi.cast("uintptr_t", ptr))


def openssl_version() -> dict[str, Any]:
    """The OpenSSL uvssl was built against and the one loaded at run time.

    Returns ``{"built": (number, text), "loaded": (number, text)}``.
    """
    built_num = int(lib.OPENSSL_VERSION_NUMBER)
    loaded_num = int(lib.OpenSSL_version_num())
    loaded_text = ffi.string(lib.OpenSSL_version(lib.OPENSSL_VERSION)).decode()
    major, minor, patch = built_num >> 28, (built_num >> 20) & 0xFF, (built_num >> 4) & 0xFF
    return {
        "built": (built_num, f"OpenSSL {major}.{minor}.{patch}"),
        "loaded": (loaded_num, loaded_text),
    }


def error_queue() -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Drain this thread's OpenSSL error queue: (codes, texts), oldest first."""
    codes: list[int] = []
    texts: list[str] = []
    buf = ffi.new("char[]", 256)
    while True:
        e = lib.ERR_get_error()
        if e == 0:
            break
        codes.append(int(e))
        lib.ERR_error_string_n(e, buf, 256)
        texts.append(ffi.string(buf).decode("utf-8", "replace"))
    return tuple(codes), tuple(texts)


def error_strings(codes: tuple[int, ...]) -> tuple[str, ...]:
    """The texts of OpenSSL error codes."""
    buf = ffi.new("char[]", 256)
    out = []
    for e in codes:
        lib.ERR_error_string_n(e, buf, 256)
        out.append(ffi.string(buf).decode("utf-8", "replace"))
    return tuple(out)


def verify_string(result: int) -> str:
    """The text of a certificate verification result code."""
    return str(ffi.string(lib.X509_verify_cert_error_string(result)).decode("utf-8", "replace"))
