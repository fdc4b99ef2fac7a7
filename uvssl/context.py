"""TLS contexts and the forms ``ssl_ctx=`` accepts.

A ``Context`` owns (or borrows) one OpenSSL ``SSL_CTX``; every connection made with it shares
that context, so certificates, trust stores and session tickets are loaded once. Contexts are
secure by default: TLS 1.2 minimum, OpenSSL's default cipher list, and clients verify the peer's
chain against the system trust store (or ``ca_file``) and its host name.

``ssl_ctx=`` (on ``tcp_ssl_connect`` / ``tcp_ssl_server``) accepts a ``Context``; a stdlib
``ssl.SSLContext`` (its own ``SSL_CTX`` is used, so all of its settings apply); or a raw
``SSL_CTX*`` given as an int, a cffi pointer or a ``ctypes.c_void_p``. A context passed in is
borrowed: uvssl holds a reference while it uses it and never frees the owner's.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import ssl as _stdlib_ssl
import threading
import weakref
from typing import Any, Callable, Iterable, Optional, Union

from . import tickets
from ._args import (
    check_callable,
    check_hs_timeout,
    check_keywords,
    check_max_depth,
    file_path,
    get_ident,
    keyword_names,
    pem_labels,
)
from ._uvssl import ffi, lib
from .errors import SslFailure, openssl_failure
from .openssl import SSL_OPTIONS, error_queue
from .x509 import X509Certificate

__all__ = [
    "Context",
    "make_ssl_client_context",
    "make_ssl_server_context",
    "create_ssl_client_context",
    "create_ssl_server_context",
    "resolve_ssl_ctx",
]

_VERSIONS = {
    "tls-v1": lib.TLS1_VERSION,
    "tls-v1-1": lib.TLS1_1_VERSION,
    "tls-v1-2": lib.TLS1_2_VERSION,
    "tls-v1-3": lib.TLS1_3_VERSION,
    "tlsv1": lib.TLS1_VERSION,
    "tlsv1.1": lib.TLS1_1_VERSION,
    "tlsv1.2": lib.TLS1_2_VERSION,
    "tlsv1.3": lib.TLS1_3_VERSION,
    "1.0": lib.TLS1_VERSION,
    "1.1": lib.TLS1_1_VERSION,
    "1.2": lib.TLS1_2_VERSION,
    "1.3": lib.TLS1_3_VERSION,
}


def parse_version(name: str, value: Any) -> int:
    """A TLS version given as "tls-v1-2", "TLSv1.2", "1.2", an ``ssl.TLSVersion`` or an int."""
    if isinstance(value, _stdlib_ssl.TLSVersion):
        if value in (
            _stdlib_ssl.TLSVersion.MINIMUM_SUPPORTED,
            _stdlib_ssl.TLSVersion.MAXIMUM_SUPPORTED,
        ):
            return 0
        return int(value)
    if isinstance(value, str):
        v = _VERSIONS.get(value.lower())
        if v is None:
            raise ValueError(
                f"{name} must be 'tls-v1-2' or 'tls-v1-3' (or TLSv1.2, 1.3, ...), got {value!r}"
            )
        return int(v)
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in (
            lib.TLS1_VERSION,
            lib.TLS1_1_VERSION,
            lib.TLS1_2_VERSION,
            lib.TLS1_3_VERSION,
        ):
            raise ValueError(f"{name}: unknown TLS version number {value:#x}")
        return value
    raise TypeError(f"{name} must be a str such as 'tls-v1-2', not {type(value).__name__}")


def alpn_wire(name: str, protocols: Any) -> bytes:
    """Encode a list of ALPN protocol names in the wire format."""
    if isinstance(protocols, (str, bytes)):
        raise TypeError(f"{name} must be a list of protocol names, not a single string")
    out = bytearray()
    try:
        items = list(protocols)
    except TypeError:
        raise TypeError(f"{name} must be a list of protocol names") from None
    if not items:
        raise ValueError(f"{name} must not be empty")
    for p in items:
        b = p.encode("ascii") if isinstance(p, str) else p
        if not isinstance(b, bytes):
            raise TypeError(f"{name}: protocol names must be str, not {type(p).__name__}")
        if not 0 < len(b) < 256:
            raise ValueError(f"{name}: a protocol name must be 1 to 255 bytes, not {len(b)}")
        out.append(len(b))
        out += b
    return bytes(out)


def options_value(name: str, options: Any) -> int:
    """Combine ``SSL_OP_*`` values given as an int or an iterable of ints / names."""
    if options is None:
        return 0
    if isinstance(options, int) and not isinstance(options, bool):
        return options
    if isinstance(options, (str, bytes)):
        options = [options]
    total = 0
    try:
        items = list(options)
    except TypeError:
        raise TypeError(f"{name} must be SSL_OP_* values (ints) or their names") from None
    for o in items:
        if isinstance(o, str):
            key = o if o.startswith("SSL_OP_") else "SSL_OP_" + o.upper().replace("-", "_")
            if key not in SSL_OPTIONS:
                raise ValueError(f"{name}: unknown option {o!r}")
            total |= SSL_OPTIONS[key]
        elif isinstance(o, int) and not isinstance(o, bool):
            total |= o
        else:
            raise TypeError(f"{name} must be SSL_OP_* values (ints), not {type(o).__name__}")
    return total


# What each file option holds, for its error messages.
_FILE_KINDS = {
    "certificate": "a PEM certificate chain or DER certificate file",
    "key": "a PEM or DER private key file",
    "ca_file": "a PEM file of CA certificates",
    "ca_directory": "a directory of hashed CA certificates (see openssl rehash)",
    "crl_file": "a PEM file of CRLs",
}


# The in-memory form of each file option.
_DATA_OPTION = {"certificate": "certificate_data", "key": "key_data", "ca_file": "ca_data"}

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,64})-----")


def _check_file(name: str, path: Any) -> bytes:
    # a value that is not a path (PEM data, say: a key pasted by mistake) is never echoed
    try:
        return file_path(name, path, _FILE_KINDS.get(name, "a file"))
    except FileNotFoundError as e:
        alt = _DATA_OPTION.get(name)
        if alt is not None and e.filename is None and e.strerror:
            # the value was data, not a path: the data has its own option
            raise FileNotFoundError(e.errno, f"{e.strerror}; or give it as {alt}=") from None
        raise


def _check_data(name: str, value: Any) -> bytes:
    """A ``*_data=`` value as bytes: PEM as str or bytes, DER as bytes (never shown)."""
    if isinstance(value, str):
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"{name}= as a str must be PEM text (ASCII only); give DER data as bytes"
            ) from None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise TypeError(
            f"{name}= takes PEM data (str or bytes) or DER data (bytes), not {type(value).__name__}"
        )
    if not data.strip():
        raise ValueError(f"{name}= is empty")
    return data


def _data_labels(data: bytes) -> frozenset[str]:
    """The PEM labels in data ("CERTIFICATE", "PRIVATE KEY", ...); nothing else of it."""
    return frozenset(m.decode("ascii") for m in _PEM_LABEL.findall(data))


def _is_der(data: bytes) -> bool:
    # a DER certificate or key is an ASN.1 SEQUENCE; PEM text never starts with that byte
    return data[:1] == b"\x30"


def _not_a_certificate(shown: str, labels: frozenset[str], key_option: str) -> str:
    """Why ``shown`` holds no usable certificate, from its PEM labels only."""
    if any("PRIVATE KEY" in label for label in labels):
        return (
            f"cannot load {shown}: it holds a private key, not a certificate "
            f"(give it as {key_option})"
        )
    if labels:
        return f"cannot load {shown}: it holds no certificate"
    return f"cannot load {shown}: it must hold a PEM certificate chain or one DER certificate"


def _certificate_failure(path: bytes) -> str:
    """Why certificate= may not have loaded, from what the file holds (none of it is shown)."""
    labels = pem_labels(path)
    shown = f"certificate={os.fsdecode(path)!r}"
    if not any("CERTIFICATE" in label for label in labels):
        return _not_a_certificate(shown, labels, "key=")
    return f"cannot load {shown}: it must hold a PEM certificate chain or one DER certificate"


def _certificate_data_failure(data: bytes) -> str:
    """Why certificate_data= did not load (none of it is shown)."""
    labels = _data_labels(data)
    if not _is_der(data) and not any("CERTIFICATE" in label for label in labels):
        return _not_a_certificate("certificate_data", labels, "key_data=")
    return (
        "cannot load certificate_data: it must be a PEM certificate chain (the certificate "
        "first, then its chain) or one DER certificate, and this one is damaged"
    )


def _cert_filetype(path: bytes) -> int:
    """How to read a certificate file: one DER certificate, or (anything else) a PEM chain."""
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError:
        first = b""  # OpenSSL opens it next and reports why it cannot
    return int(lib.SSL_FILETYPE_ASN1 if _is_der(first) else lib.SSL_FILETYPE_PEM)


def _key_failure(
    kshown: str,
    cshown: str,
    labels: frozenset[str],
    in_certificate: bool,
    keytype: str,
    password: Any,
    strings: tuple[str, ...],
) -> str:
    """Why a private key may not have loaded, and what to try (none of its data is shown).
    ``kshown`` names where the key came from (``key='path'``, ``key_data``), ``cshown`` the
    certificate; ``labels`` are the PEM labels found in the key's source.
    """
    if any(t.endswith("key values mismatch") for t in strings):
        return _mismatch(kshown, cshown)
    has_key = any("PRIVATE KEY" in label for label in labels)
    if in_certificate:
        if not has_key:
            option = "key_data=" if cshown == "certificate_data" else "key="
            what = "the key's data" if option == "key_data=" else "the path of the key's file"
            return (
                f"no private key: {option} was not given, and {cshown} holds none; "
                f"give {option} {what}"
            )
    elif labels and not has_key:
        return f"cannot load the private key from {kshown}: it holds no private key"
    if password is not None:
        hint = "is the password right?"
    elif "ENCRYPTED PRIVATE KEY" in labels:
        hint = "it is encrypted: give its password in certificate_password="
    elif not labels and keytype == "pem":
        hint = "no PEM key found in it; a DER key needs keytype='der'"
    elif labels and keytype == "der":
        hint = "it is PEM: keytype='der' is for DER keys"
    else:
        hint = "it cannot be decoded: is it damaged, or encrypted and needs certificate_password=?"
    return f"cannot load the private key from {kshown} ({hint})"


def _mismatch(kshown: str, cshown: str) -> str:
    return f"the private key in {kshown} does not match the certificate in {cshown}"


def verify_mode(verify: Any, server: bool) -> int:
    """The ``SSL_VERIFY_*`` bits for a ``verify=`` value (None: the side's default)."""
    if verify is None:
        verify = not server
    if verify is True:
        return int(lib.SSL_VERIFY_PEER | (lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT if server else 0))
    if verify is False or verify == "none":
        return int(lib.SSL_VERIFY_NONE)
    if verify == "optional":
        return int(lib.SSL_VERIFY_PEER)
    if verify == "required":
        return int(lib.SSL_VERIFY_PEER | lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT)
    if isinstance(verify, (str, bytes, os.PathLike)):
        # verify="/path/ca.pem" is how requests takes a CA file: not shown, it may be data
        raise ValueError(
            "verify must be a bool or 'none'/'optional'/'required'; a CA file or directory goes "
            "in ca_file= or ca_directory="
        )
    raise ValueError(f"verify must be a bool or 'none'/'optional'/'required', got {verify!r}")


class Context:
    """An OpenSSL ``SSL_CTX`` with uvssl's defaults. Build one with ``Context.client(...)`` or
    ``Context.server(...)``.

    Options: ``certificate`` (a PEM chain file, or a file of one DER certificate, recognised
    by its content), ``key`` (its encoding is ``keytype``: "pem" or "der"),
    ``certificate_password`` (for an encrypted key); ``certificate_data`` / ``key_data`` (the
    same from memory: PEM as str or bytes, DER as bytes); ``ca_file`` / ``ca_directory`` /
    ``ca_data`` (default: the system store, for whoever verifies); ``verify`` (True/False or
    "none"/"optional"/"required"; clients default to True, servers to False, "required" asks
    clients for a certificate); ``max_depth``; ``ciphers`` (TLS <= 1.2) and ``ciphersuites``
    (TLS 1.3); ``min_version`` / ``max_version`` or ``method`` ("tls-v1-2", "tls-v1-3" or a
    (min, max) tuple; TLS 1.2 is the minimum by default); ``crl_check`` (None/"leaf"/"all")
    with ``crl_file``; ``alpn``; ``options`` (``SSL_OP_*``); ``session_tickets`` (True:
    resumption by stateless tickets and no server-side session cache; False: no tickets,
    sessions cached by id); ``session_ticket_keys`` (servers: a list of 80-byte keys in nginx's
    ticket key layout; the first issues tickets, all are accepted, so servers sharing them
    resume each other's sessions; see ``rotate_session_ticket_keys``); ``keylog_file`` (a path:
    every connection's TLS secrets are appended to it in the NSS key log format; off unless
    given);
    ``sni_callback(ssl_socket, server_name) -> Context | None`` (servers);
    ``ctx_configure_callback(ptr)`` (once, with the new ``SSL_CTX *`` as a cffi pointer);
    ``ssl_configure_callback(ptr)`` (with every new ``SSL *``, a cffi pointer);
    ``handshake_timeout`` (seconds, None for no limit; 60 by default); ``ssl_side``
    ("client", "server" or "both").

    Attributes:
        side: "client" or "server".
        handshake_timeout: seconds, or None for no limit.
        verify_host: whether clients check the peer's host name.

    """

    def __init__(self, ptr: Any, side: str, *, owned: bool, keepalive: Any = None) -> None:
        """Wrap an ``SSL_CTX *`` (internal: use ``client``, ``server`` or ``from_pointer``)."""
        self._ctx = ptr
        self.side = side
        self._owned = owned
        self._keepalive = keepalive
        self.handshake_timeout: Optional[float] = 60.0
        self.verify_host = True
        self.alpn: Optional[tuple[str, ...]] = None
        self._handle: Any = None  # what the SSL_CTX's SNI callback points to, once installed
        self._servers: weakref.WeakSet[Any] = weakref.WeakSet()  # TLS servers using this
        # a context may serve loops in several threads: they add servers at the same time
        self._servers_lock = threading.Lock()
        self._sni_callback: Optional[SniCallback] = None
        self._ssl_configure_callback: Optional[ConfigureCallback] = None
        self._sources: Optional[_Sources] = None  # the files reload() re-reads

    @property
    def sni_callback(self) -> Optional[SniCallback]:
        """``sni_callback(ssl_socket, server_name) -> Context | None`` (servers): picks the
        context for the name a client asked for; None keeps this one.
        """
        return self._sni_callback

    @sni_callback.setter
    def sni_callback(self, cb: Optional[SniCallback]) -> None:
        if cb is not None:
            check_callable("sni_callback", cb)
            if self.side != "server":
                raise ValueError("sni_callback is for server contexts")
            if self._handle is None:
                if not self._owned:
                    # the SSL_CTX would keep pointing at this wrapper after it is gone
                    raise ValueError(
                        "sni_callback: this context wraps an SSL_CTX uvssl does not own; give "
                        "the callback to a Context that uvssl built"
                    )
                handle = ffi.new_handle(self)
                if lib.uvs_ctx_set_sni(self._ctx, handle) != 1:
                    raise openssl_failure("cannot install the SNI callback", "set sni")
                self._handle = handle
        self._sni_callback = cb
        self._sync_servers()

    @property
    def ssl_configure_callback(self) -> Optional[ConfigureCallback]:
        """``ssl_configure_callback(ptr)``: runs with every new ``SSL *`` (a cffi pointer that
        ``uvssl.openssl.lib`` functions take as it is) made from this context (for a server,
        before the handshake starts).
        """
        return self._ssl_configure_callback

    @ssl_configure_callback.setter
    def ssl_configure_callback(self, cb: Optional[ConfigureCallback]) -> None:
        check_callable("ssl_configure_callback", cb)
        self._ssl_configure_callback = cb
        self._sync_servers()

    def _add_server(self, server: Any) -> None:
        with self._servers_lock:
            self._servers.add(server)

    def _sync_servers(self) -> None:
        # servers hand connections over before the handshake only when a callback needs that.
        # A server belongs to its loop's thread: one of a loop running in another thread is
        # told there (its next handshakes follow), never touched from here.
        with self._servers_lock:
            servers = list(self._servers)
        for server in servers:
            loop = server._loop
            if loop.thread == get_ident():
                server._sync_eager()
            else:
                try:
                    loop.call_threadsafe(server._sync_eager)
                except RuntimeError:
                    pass  # that loop has ended, and its servers with it

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            self._ctx = None
            lib.SSL_CTX_free(ctx)  # drops our reference only

    @property
    def pointer(self) -> int:
        """The raw ``SSL_CTX*`` as an int (valid while this object lives)."""
        return int(ffi.cast("uintptr_t", self._ctx))

    @classmethod
    def from_pointer(cls, address: Any, side: str = "client") -> Context:
        """Borrow an existing ``SSL_CTX*`` (int, cffi pointer or ctypes ``c_void_p``).

        uvssl takes its own reference (SSL_CTX_up_ref) and drops only that one.
        """
        ptr = _as_ctx_pointer(address)
        if lib.SSL_CTX_up_ref(ptr) != 1:
            raise openssl_failure("SSL_CTX_up_ref failed", "borrow context")
        ctx = cls(ptr, side, owned=False)
        ctx.verify_host = bool(lib.SSL_CTX_get_verify_mode(ptr) & lib.SSL_VERIFY_PEER)
        return ctx

    @classmethod
    def client(cls, **opts: Any) -> Context:
        """A client context: verifies the server's chain and host name unless ``verify=False``."""
        check_keywords("Context.client", opts, CONTEXT_OPTIONS)
        return cls._build("client", **opts)

    @classmethod
    def server(cls, **opts: Any) -> Context:
        """A server context: ``certificate`` (a chain file) and ``key``, or the same as
        ``certificate_data`` and ``key_data``, are usually given.
        """
        check_keywords("Context.server", opts, CONTEXT_OPTIONS)
        return cls._build("server", **opts)

    @classmethod
    def _build(
        cls,
        side: str,
        *,
        certificate: Any = None,
        key: Any = None,
        certificate_data: Optional[Union[str, bytes]] = None,
        key_data: Optional[Union[str, bytes]] = None,
        certificate_password: Optional[Union[str, bytes]] = None,
        keytype: str = "pem",
        ca_file: Any = None,
        ca_data: Optional[Union[str, bytes]] = None,
        ca_directory: Any = None,
        verify: Any = None,
        max_depth: Optional[int] = None,
        ciphers: Optional[str] = None,
        ciphersuites: Optional[str] = None,
        min_version: Any = None,
        max_version: Any = None,
        method: Any = None,
        alpn: Optional[Iterable[str]] = None,
        options: Any = None,
        session_tickets: bool = True,
        session_ticket_keys: Optional[Iterable[bytes]] = None,
        handshake_timeout: Optional[float] = 60,
        crl_check: Optional[str] = None,
        crl_file: Any = None,
        keylog_file: Any = None,
        sni_callback: Optional[Callable[[Any, Optional[str]], Optional[Context]]] = None,
        ctx_configure_callback: Optional[ConfigureCallback] = None,
        ssl_configure_callback: Optional[ConfigureCallback] = None,
        ssl_side: Optional[str] = None,
    ) -> Context:
        server = side == "server"
        if ssl_side is not None and ssl_side not in ("client", "server", "both"):
            raise ValueError(f"ssl_side must be 'client', 'server' or 'both', got {ssl_side!r}")
        if ssl_side is not None and ssl_side not in (side, "both"):
            raise ValueError(f"ssl_side={ssl_side!r} contradicts Context.{side}()")
        check_callable("sni_callback", sni_callback)
        check_callable("ctx_configure_callback", ctx_configure_callback)
        check_callable("ssl_configure_callback", ssl_configure_callback)
        if sni_callback is not None and not server:
            raise ValueError("sni_callback is for server contexts")
        if crl_check not in (None, "leaf", "all"):
            raise ValueError(f"crl_check must be None, 'leaf' or 'all', got {crl_check!r}")
        if crl_file is not None and crl_check is None:
            crl_check = "leaf"
        if keytype not in ("pem", "der"):
            raise ValueError(f"keytype must be 'pem' or 'der', got {keytype!r}")
        mode = verify_mode(verify, server)
        opts_value = options_value("options", options)
        if max_depth is not None:
            check_max_depth(max_depth)
        hs_timeout = check_hs_timeout(handshake_timeout)
        lo, hi = version_range(min_version, max_version, method)
        password: Optional[bytes] = None
        if certificate_password is not None:
            if isinstance(certificate_password, str):
                password = certificate_password.encode("utf-8")
            elif isinstance(certificate_password, bytes):
                password = certificate_password
            else:
                raise TypeError("certificate_password must be str or bytes")
        for fname, dname, fval, dval in (
            ("certificate", "certificate_data", certificate, certificate_data),
            ("key", "key_data", key, key_data),
            ("ca_file", "ca_data", ca_file, ca_data),
        ):
            if fval is not None and dval is not None:
                raise ValueError(f"give {fname}= (a file) or {dname}= (the data), not both")
        cdata = (
            _check_data("certificate_data", certificate_data)
            if certificate_data is not None
            else None
        )
        kdata = _check_data("key_data", key_data) if key_data is not None else None
        cadata = _check_data("ca_data", ca_data) if ca_data is not None else None
        if (key is not None or kdata is not None) and certificate is None and cdata is None:
            raise ValueError(
                f"{'key' if key is not None else 'key_data'}= was given without certificate= "
                "or certificate_data=: give the certificate chain too"
            )
        keylog_path = None
        if keylog_file is not None:
            if not isinstance(keylog_file, (str, bytes, os.PathLike)):
                raise TypeError(
                    "keylog_file= takes a path (str, bytes or os.PathLike), "
                    f"not {type(keylog_file).__name__}"
                )
            keylog_path = os.fsencode(keylog_file)
            if not keylog_path or b"\x00" in keylog_path:
                raise ValueError("keylog_file= must be a file's path (non-empty, no NUL)")
        ticket_keys = tickets.check_option(session_ticket_keys, server, ssl_side, session_tickets)

        if ssl_side == "both":
            method_ptr = lib.TLS_method()
        else:
            method_ptr = lib.TLS_server_method() if server else lib.TLS_client_method()
        ptr = lib.SSL_CTX_new(method_ptr)
        if ptr == ffi.NULL:
            raise openssl_failure("SSL_CTX_new failed", "create context")
        ctx = cls(ptr, side, owned=True)
        ctx.handshake_timeout = hs_timeout
        ctx.verify_host = bool(mode & lib.SSL_VERIFY_PEER) and not server
        if lib.SSL_CTX_set_min_proto_version(ptr, lo) != 1 or (
            hi and lib.SSL_CTX_set_max_proto_version(ptr, hi) != 1
        ):
            raise openssl_failure(
                "cannot set the TLS version range (min_version, max_version or method)",
                "set version",
            )
        if opts_value:
            lib.SSL_CTX_set_options(ptr, opts_value)
        if not session_tickets:
            lib.SSL_CTX_set_options(ptr, lib.SSL_OP_NO_TICKET)
        if ciphers is not None:
            if not isinstance(ciphers, str):
                raise TypeError(f"ciphers must be a str, not {type(ciphers).__name__}")
            if lib.SSL_CTX_set_cipher_list(ptr, ciphers.encode("ascii")) != 1:
                raise openssl_failure(
                    f"invalid ciphers={ciphers!r}: OpenSSL knows no TLS 1.2 cipher in it "
                    "(TLS 1.3 suites go in ciphersuites=)",
                    "set ciphers",
                )
        if ciphersuites is not None:
            if not isinstance(ciphersuites, str):
                raise TypeError(f"ciphersuites must be a str, not {type(ciphersuites).__name__}")
            if lib.SSL_CTX_set_ciphersuites(ptr, ciphersuites.encode("ascii")) != 1:
                raise openssl_failure(
                    f"invalid ciphersuites={ciphersuites!r}: it takes TLS 1.3 suite names such "
                    "as 'TLS_AES_128_GCM_SHA256' (TLS 1.2 ciphers go in ciphers=)",
                    "set ciphersuites",
                )
        if certificate is not None or cdata is not None:
            ctx._use_certificate(certificate, cdata, key, kdata, keytype, password)
        if ca_file is not None or ca_directory is not None:
            f = _check_file("ca_file", ca_file) if ca_file is not None else ffi.NULL
            d = _check_file("ca_directory", ca_directory) if ca_directory is not None else ffi.NULL
            if lib.SSL_CTX_load_verify_locations(ptr, f, d) != 1:
                raise openssl_failure(
                    "cannot load CA certificates from "
                    + " and ".join(
                        f"{n}={os.fsdecode(v)!r}"
                        for n, v in (("ca_file", f), ("ca_directory", d))
                        if v != ffi.NULL
                    )
                    + " (PEM certificates are needed)",
                    "load CA",
                )
        if cadata is not None:
            if not _is_der(cadata) and not any("CERTIFICATE" in x for x in _data_labels(cadata)):
                hint = (
                    " (a private key has no place here)"
                    if any("PRIVATE KEY" in x for x in _data_labels(cadata))
                    else ""
                )
                raise SslFailure(
                    "cannot load ca_data: it holds no certificate; it takes one or more PEM CA "
                    f"certificates, or one DER certificate as bytes{hint}",
                    what="load CA",
                )
            if lib.uvs_ctx_add_ca_mem(ptr, cadata, len(cadata)) < 1:
                raise openssl_failure(
                    "cannot load CA certificates from ca_data: it must hold PEM certificates "
                    "or one DER certificate, and one of these is damaged",
                    "load CA",
                )
        if (
            ca_file is None
            and ca_directory is None
            and cadata is None
            and mode & lib.SSL_VERIFY_PEER
        ):
            if lib.SSL_CTX_set_default_verify_paths(ptr) != 1:
                raise openssl_failure(
                    "cannot load the system trust store: give ca_file= or ca_directory=", "load CA"
                )
        lib.SSL_CTX_set_verify(ptr, mode, ffi.NULL)
        if max_depth is not None:
            lib.SSL_CTX_set_verify_depth(ptr, max_depth)
        if crl_check is not None:
            if crl_file is not None:
                path = _check_file("crl_file", crl_file)
                if lib.uvs_ctx_load_crl_file(ptr, path) <= 0:
                    raise openssl_failure(
                        f"cannot load CRLs from crl_file={os.fsdecode(path)!r} (PEM CRLs are "
                        "needed)",
                        "load CRL",
                    )
            flags = lib.X509_V_FLAG_CRL_CHECK
            if crl_check == "all":
                flags |= lib.X509_V_FLAG_CRL_CHECK_ALL
            lib.X509_VERIFY_PARAM_set_flags(lib.SSL_CTX_get0_param(ptr), flags)
        if sni_callback is not None:
            ctx.sni_callback = sni_callback
        ctx.ssl_configure_callback = ssl_configure_callback
        if server:
            sid = b"uvssl"
            lib.SSL_CTX_set_session_id_context(ptr, sid, len(sid))
            if session_tickets:
                # Resumption rides on stateless tickets (TLS 1.2 and 1.3): a server-side cache
                # would hold every session in memory and walk all of them every 255 handshakes.
                lib.SSL_CTX_set_session_cache_mode(ptr, lib.SSL_SESS_CACHE_OFF)
        if ticket_keys is not None:
            tickets.install(ptr, "session_ticket_keys", ticket_keys)
        if alpn is not None:
            wire = alpn_wire("alpn", alpn)
            ctx.alpn = tuple(p if isinstance(p, str) else p.decode() for p in alpn)
            if server:
                if lib.uvs_ctx_set_alpn_select(ptr, wire, len(wire)) != 1:
                    raise openssl_failure("cannot set ALPN", "set alpn")
            elif lib.SSL_CTX_set_alpn_protos(ptr, wire, len(wire)) != 0:
                raise openssl_failure("cannot set ALPN", "set alpn")
        if keylog_path is not None:
            r = lib.uvs_ctx_set_keylog_file(ptr, keylog_path)
            if r != 0:
                raise OSError(
                    -r,
                    f"cannot open keylog_file= to append TLS secrets to: {os.strerror(-r)} "
                    "(check that its directory exists and is writable)",
                    os.fsdecode(keylog_path),
                )
        ctx._sources = _Sources(
            certificate=_abspath(certificate),
            key=_abspath(key),
            cert_in_memory=cdata is not None,
            key_in_memory=kdata is not None,
            keytype=keytype,
            password=password,
            ca_file=_abspath(ca_file),
            ca_directory=_abspath(ca_directory),
            # kept only when a reload rebuilds the trust store around it (public certificates)
            ca_data=cadata if ca_directory is not None or crl_file is not None else None,
            system_store=(
                ca_file is None
                and ca_directory is None
                and cadata is None
                and bool(mode & lib.SSL_VERIFY_PEER)
            ),
            crl_file=_abspath(crl_file),
        )
        if ctx_configure_callback is not None:
            ctx_configure_callback(ptr)
        return ctx

    def reload(self) -> Optional[X509Certificate]:
        """Re-read the files this context was built from, and put them in service at once.

        The certificate chain and its key (``certificate``, ``key``, ``certificate_password``)
        and the trust store (``ca_file``, ``ca_directory``, ``crl_file``) are all read and
        checked (the key must match the certificate) before anything changes: on any error
        (a missing or damaged file, a wrong password, a key that does not match) an
        ``SslFailure`` says which file failed and the context keeps what it had. Handshakes
        that start afterwards use the new files; connections already open, and handshakes
        already started, keep the certificate they began with.

        Returns the new certificate (its leaf), or None when the context has no certificate
        files (a client whose only files are CA files). A context whose certificate and key
        came from memory (``certificate_data`` / ``key_data``) keeps them; one built from no
        file at all, or one that wraps a borrowed ``SSL_CTX``, has nothing to re-read: that is
        a ValueError. A new certificate must have the same key type (RSA, ECDSA, ...) as the
        one in service; to change it, build a new ``Context`` and assign it to the server's
        ``ssl_ctx``. Settings that ``ctx_configure_callback`` made on the trust store are not
        carried over to the new one.

        Safe while loops in other threads use the context: the new set is installed under a
        lock that every new connection's ``SSL_new`` also takes, so each connection gets the
        old certificate or the new one, never a mix.
        """
        src = self._sources
        if not self._owned or src is None:
            raise ValueError(
                "Context.reload(): this context wraps an SSL_CTX that uvssl did not build, so it "
                "knows no files to re-read; reload the owner's context, or build a new "
                "Context and assign it to the server's ssl_ctx"
            )
        if (src.certificate is not None and src.key_in_memory) or (
            src.cert_in_memory and src.key is not None
        ):
            raise ValueError(
                "Context.reload(): the certificate and its key came one from a file and one "
                "from memory, and cannot be re-read apart; build a new Context and assign it "
                "to the server's ssl_ctx"
            )
        reload_cert = src.certificate is not None
        reload_store = (
            src.ca_file is not None or src.ca_directory is not None or src.crl_file is not None
        )
        if not reload_cert and not reload_store:
            raise ValueError(
                "Context.reload(): this context was built from no file (its certificate, key and "
                "CA certificates, if any, came from memory), so there is nothing to re-read; "
                "build a new Context and assign it to the server's ssl_ctx"
            )
        r = lib.uvs_reload_new()
        if r == ffi.NULL:
            raise MemoryError("Context.reload(): out of memory")
        try:
            if reload_cert:
                _reload_certificate(r, src)
            if reload_store:
                _reload_store(r, src)
            rc = lib.uvs_reload_install(r, self._ctx)
            if rc == lib.UVS_RELOAD_EKEYTYPE:
                raise SslFailure(
                    "Context.reload(): the new certificate's key type (RSA, ECDSA, ...) differs "
                    "from the one in service, which it would sit beside rather than replace; "
                    "the old certificate is kept: build a new Context and assign it to the "
                    "server's ssl_ctx",
                    what="reload",
                )
            if rc != 1:
                raise openssl_failure(
                    "Context.reload(): cannot put the new certificate in service; the old one "
                    "is kept",
                    "reload",
                )
            x = lib.uvs_reload_cert(r)
            return None if x == ffi.NULL else X509Certificate._from_x509(x)
        finally:
            lib.uvs_reload_free(r)

    def rotate_session_ticket_keys(self, keys: Iterable[bytes]) -> None:
        """Replace this server context's session ticket keys (80-byte keys, as for
        ``session_ticket_keys``) while it runs: handshakes from then on issue tickets under
        ``keys[0]`` and accept tickets under any of ``keys``. Safe while loops in other
        threads use the context; on invalid keys it keeps the ones it had.
        """
        tickets.install(
            self._ctx,
            "rotate_session_ticket_keys",
            tickets.check_keys("rotate_session_ticket_keys", keys),
        )

    def _use_certificate(
        self,
        certificate: Any,
        cdata: Optional[bytes],
        key: Any,
        kdata: Optional[bytes],
        keytype: str,
        password: Optional[bytes],
    ) -> None:
        """Install the certificate (chain) and its private key, from files or from memory."""
        ptr = self._ctx
        pw = ffi.NULL if password is None else password
        filetype = lib.SSL_FILETYPE_PEM if keytype == "pem" else lib.SSL_FILETYPE_ASN1
        if cdata is not None:
            cshown = "certificate_data"
            if lib.uvs_ctx_use_cert_mem(ptr, cdata, len(cdata)) != 1:
                raise openssl_failure(_certificate_data_failure(cdata), "load certificate")
        else:
            cpath = _check_file("certificate", certificate)
            cshown = f"certificate={os.fsdecode(cpath)!r}"
            if lib.uvs_ctx_use_cert_file(ptr, cpath, _cert_filetype(cpath), pw) != 1:
                raise openssl_failure(_certificate_failure(cpath), "load certificate")
        in_certificate = key is None and kdata is None
        if key is not None or (in_certificate and cdata is None):
            kpath = _check_file("key", key) if key is not None else cpath
            kshown = f"key={os.fsdecode(kpath)!r}" if key is not None else cshown
            labels = pem_labels(kpath)
            ok = lib.uvs_ctx_use_key_file(ptr, kpath, filetype, pw)
        else:
            source = kdata if kdata is not None else cdata
            assert source is not None
            kshown = "key_data" if kdata is not None else cshown
            labels = _data_labels(source)
            ok = lib.uvs_ctx_use_key_mem(ptr, source, len(source), filetype, pw)
        if ok != 1:
            codes, strings = error_queue()
            raise SslFailure(
                _key_failure(kshown, cshown, labels, in_certificate, keytype, password, strings),
                what="load key",
                codes=codes,
                strings=strings,
            )
        if lib.SSL_CTX_check_private_key(ptr) != 1:
            raise openssl_failure(_mismatch(kshown, cshown), "check key")

    def _configure_ssl(self, ssl: Any) -> None:
        """Run ``ssl_configure_callback`` for a new ``SSL*`` made with this context."""
        if self.ssl_configure_callback is not None:
            self.ssl_configure_callback(ssl)

    def __repr__(self) -> str:
        return f"<uvssl.Context {self.side} {self.pointer:#x}{'' if self._owned else ' borrowed'}>"


def _abspath(path: Any) -> Optional[bytes]:
    """A file option's path made absolute (reload reads it again, maybe from another cwd)."""
    return None if path is None else os.path.abspath(os.fsencode(path))


class _Sources:
    """What a context was built from that ``Context.reload()`` reads again (paths as bytes)."""

    __slots__ = (
        "certificate",
        "key",
        "cert_in_memory",
        "key_in_memory",
        "keytype",
        "password",
        "ca_file",
        "ca_directory",
        "ca_data",
        "system_store",
        "crl_file",
    )

    def __init__(self, **fields: Any) -> None:
        """Record the given fields (every one of ``__slots__``)."""
        for name in self.__slots__:
            setattr(self, name, fields[name])

    certificate: Optional[bytes]
    key: Optional[bytes]
    cert_in_memory: bool
    key_in_memory: bool
    keytype: str
    password: Optional[bytes]
    ca_file: Optional[bytes]
    ca_directory: Optional[bytes]
    ca_data: Optional[bytes]
    system_store: bool
    crl_file: Optional[bytes]


_KEPT = "; the context keeps the certificate it had"


def _reload_path(name: str, path: bytes) -> str:
    """``name='path'`` for messages, after checking the file is still there."""
    shown = f"{name}={os.fsdecode(path)!r}"
    if not os.path.exists(path):
        raise SslFailure(
            f"Context.reload(): cannot read {shown}: no such file or directory{_KEPT}",
            what="reload",
        )
    return shown


def _reload_certificate(r: Any, src: _Sources) -> None:
    """Read the certificate chain and key into ``r`` and check that they belong together."""
    assert src.certificate is not None
    cpath = src.certificate
    cshown = _reload_path("certificate", cpath)
    pw = ffi.NULL if src.password is None else src.password
    if lib.uvs_reload_cert_file(r, cpath, _cert_filetype(cpath), pw) != 1:
        raise openssl_failure(f"Context.reload(): {_certificate_failure(cpath)}{_KEPT}", "reload")
    kpath = src.key if src.key is not None else cpath
    kshown = _reload_path("key", kpath) if src.key is not None else cshown
    filetype = lib.SSL_FILETYPE_PEM if src.keytype == "pem" else lib.SSL_FILETYPE_ASN1
    if lib.uvs_reload_key_file(r, kpath, filetype, pw) != 1:
        codes, strings = error_queue()
        why = _key_failure(
            kshown,
            cshown,
            pem_labels(kpath),
            src.key is None,
            src.keytype,
            src.password,
            strings,
        )
        raise SslFailure(
            f"Context.reload(): {why}{_KEPT}", what="reload", codes=codes, strings=strings
        )
    if lib.uvs_reload_check_key(r) != 1:
        raise openssl_failure(f"Context.reload(): {_mismatch(kshown, cshown)}{_KEPT}", "reload")


def _reload_store(r: Any, src: _Sources) -> None:
    """Build the new trust store in ``r``: CA files, in-memory CAs, system store, CRLs."""
    if src.ca_file is not None or src.ca_directory is not None:
        shown = " and ".join(
            _reload_path(n, v)
            for n, v in (("ca_file", src.ca_file), ("ca_directory", src.ca_directory))
            if v is not None
        )
        f = src.ca_file if src.ca_file is not None else ffi.NULL
        d = src.ca_directory if src.ca_directory is not None else ffi.NULL
        if lib.uvs_reload_ca_files(r, f, d) != 1:
            raise openssl_failure(
                f"Context.reload(): cannot load CA certificates from {shown} (PEM certificates "
                f"are needed){_KEPT}",
                "reload",
            )
    if src.ca_data is not None and lib.uvs_reload_ca_mem(r, src.ca_data, len(src.ca_data)) < 1:
        raise openssl_failure(f"Context.reload(): cannot load ca_data again{_KEPT}", "reload")
    if src.system_store and lib.uvs_reload_default_paths(r) != 1:
        raise openssl_failure(
            f"Context.reload(): cannot load the system trust store{_KEPT}", "reload"
        )
    if src.crl_file is not None:
        shown = _reload_path("crl_file", src.crl_file)
        if lib.uvs_reload_crl_file(r, src.crl_file) <= 0:
            raise openssl_failure(
                f"Context.reload(): cannot load CRLs from {shown} (PEM CRLs are needed){_KEPT}",
                "reload",
            )


def version_range(min_version: Any, max_version: Any, method: Any) -> tuple[int, int]:
    """The (min, max) protocol versions for ``min_version``/``max_version`` or ``method``
    (0: no maximum); TLS 1.2 is the minimum unless another is asked for.
    """
    lo = lib.TLS1_2_VERSION
    hi = 0
    if method is not None:
        if min_version is not None or max_version is not None:
            raise ValueError("give method or min_version/max_version, not both")
        if isinstance(method, tuple):
            if len(method) != 2:
                raise ValueError("method as a tuple must be (min, max)")
            lo = parse_version("method", method[0]) if method[0] is not None else lo
            hi = parse_version("method", method[1]) if method[1] is not None else 0
        else:
            lo = hi = parse_version("method", method)
    else:
        if min_version is not None:
            lo = parse_version("min_version", min_version)
        if max_version is not None:
            hi = parse_version("max_version", max_version)
    if hi and lo and hi < lo:
        raise ValueError("max_version is below min_version")
    return int(lo), int(hi)


def configure_client_ssl(
    ssl: Any,
    ctx: Context,
    server_hostname: Optional[str],
    verify: bool,
    alpn: Optional[bytes],
) -> None:
    """Set up a client's new ``SSL*`` made with ``ctx``: SNI and the host name check for
    ``server_hostname`` (an IP address is checked, not sent), no verification when ``verify``
    is false, and the ALPN protocols (``alpn``, in wire format).
    """
    if server_hostname:
        is_ip = True
        try:
            ipaddress.ip_address(server_hostname)
        except ValueError:
            is_ip = False
        if not is_ip:
            if lib.SSL_set_tlsext_host_name(ssl, server_hostname.encode("idna")) != 1:
                raise SslFailure(f"cannot set SNI to {server_hostname!r}", what="configure")
        if verify and ctx.verify_host:
            lib.SSL_set_hostflags(ssl, lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
            if is_ip:
                ok = lib.X509_VERIFY_PARAM_set1_ip_asc(
                    lib.SSL_get0_param(ssl), server_hostname.encode("ascii")
                )
            else:
                ok = lib.SSL_set1_host(ssl, server_hostname.encode("idna"))
            if ok != 1:
                raise SslFailure(f"cannot check host name {server_hostname!r}", what="configure")
    if not verify:
        lib.SSL_set_verify(ssl, lib.SSL_VERIFY_NONE, ffi.NULL)
    if alpn is not None and lib.SSL_set_alpn_protos(ssl, alpn, len(alpn)) != 0:
        raise SslFailure("cannot set ALPN", what="configure")


#: The options ``Context.client`` / ``Context.server`` take.
CONTEXT_OPTIONS = keyword_names(Context._build) - {"cls", "side"}


def make_ssl_client_context(**opts: Any) -> Context:
    """Allegro CL's name for ``Context.client``."""
    check_keywords("make_ssl_client_context", opts, CONTEXT_OPTIONS)
    return Context.client(**opts)


def make_ssl_server_context(**opts: Any) -> Context:
    """Allegro CL's name for ``Context.server``."""
    check_keywords("make_ssl_server_context", opts, CONTEXT_OPTIONS)
    return Context.server(**opts)


def create_ssl_client_context(**opts: Any) -> Context:
    """LispWorks' name for ``Context.client``."""
    check_keywords("create_ssl_client_context", opts, CONTEXT_OPTIONS)
    return Context.client(**opts)


def create_ssl_server_context(**opts: Any) -> Context:
    """LispWorks' name for ``Context.server``."""
    check_keywords("create_ssl_server_context", opts, CONTEXT_OPTIONS)
    return Context.server(**opts)


# -- ssl_ctx= forms --------------------------------------------------------------------------


def _as_ctx_pointer(address: Any) -> Any:
    if isinstance(address, ffi.CData):
        p = ffi.cast("SSL_CTX *", address)
    elif isinstance(address, ctypes.c_void_p):
        if not address.value:
            raise ValueError("ssl_ctx: the ctypes pointer is NULL")
        p = ffi.cast("SSL_CTX *", address.value)
    elif isinstance(address, int) and not isinstance(address, bool):
        if address <= 0:
            raise ValueError(f"ssl_ctx: {address} is not a valid SSL_CTX* address")
        p = ffi.cast("SSL_CTX *", address)
    else:
        raise TypeError(
            "ssl_ctx must be a uvssl.Context, an ssl.SSLContext or an SSL_CTX* "
            f"(int, cffi pointer or ctypes.c_void_p), not {type(address).__name__}"
        )
    if p == ffi.NULL:
        raise ValueError("ssl_ctx: NULL SSL_CTX*")
    return p


_same_libssl_checked = False


def _check_same_libssl() -> None:
    """Python's _ssl and uvssl must share one libssl for an SSLContext's SSL_CTX to be usable."""
    global _same_libssl_checked
    if _same_libssl_checked:
        return
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and "/libssl" in parts[5] and ".so" in parts[5]:
                    paths.add(os.path.realpath(parts[5]))
    except OSError:
        paths = set()
    if len(paths) > 1:
        raise RuntimeError(
            "uvssl: Python's ssl module and uvssl use different OpenSSL libraries "
            f"({', '.join(sorted(paths))}); an ssl.SSLContext cannot be shared. "
            "Pass a uvssl.Context instead, or build uvssl against Python's OpenSSL."
        )
    if int(lib.OpenSSL_version_num()) != _stdlib_ssl.OPENSSL_VERSION_NUMBER:
        raise RuntimeError(
            "uvssl: Python's ssl module runs OpenSSL "
            f"{_stdlib_ssl.OPENSSL_VERSION} but uvssl loaded another version; "
            "an ssl.SSLContext cannot be shared"
        )
    _same_libssl_checked = True


def _from_stdlib(sslctx: _stdlib_ssl.SSLContext, side: str) -> Context:
    for attr, what in (
        ("sni_callback", "sni_callback"),
        ("keylog_filename", "keylog_filename"),
        ("_msg_callback", "a message callback"),
    ):
        if getattr(sslctx, attr, None) is not None:
            raise ValueError(
                f"ssl_ctx: this ssl.SSLContext sets {what}, which needs stdlib socket objects; "
                "uvssl cannot use it (use uvssl.Context, whose sni_callback works with uvssl)"
            )
    _check_same_libssl()
    # The object's C struct starts with PyObject_HEAD followed by its SSL_CTX pointer.
    addr = ctypes.c_void_p.from_address(id(sslctx) + object.__basicsize__).value
    if not addr:
        raise RuntimeError("uvssl: could not find this ssl.SSLContext's SSL_CTX")
    ptr = ffi.cast("SSL_CTX *", addr)
    # sanity check: the pointer must describe the same settings the object reports (the
    # stdlib's CERT_* values are not OpenSSL's bits: compare "verifies the peer" only)
    verifies = bool(lib.SSL_CTX_get_verify_mode(ptr) & lib.SSL_VERIFY_PEER)
    if int(lib.SSL_CTX_get_options(ptr)) != int(sslctx.options) or verifies != (
        sslctx.verify_mode != _stdlib_ssl.CERT_NONE
    ):
        raise RuntimeError("uvssl: could not find this ssl.SSLContext's SSL_CTX")
    if lib.SSL_CTX_up_ref(ptr) != 1:
        raise openssl_failure("SSL_CTX_up_ref failed", "borrow context")
    ctx = Context(ptr, side, owned=False, keepalive=sslctx)
    ctx.verify_host = bool(sslctx.check_hostname)
    return ctx


def resolve_ssl_ctx(ssl_ctx: Any, side: str) -> Context:
    """Turn any accepted ``ssl_ctx=`` form into a ``Context``."""
    if isinstance(ssl_ctx, Context):
        return ssl_ctx
    if isinstance(ssl_ctx, _stdlib_ssl.SSLContext):
        return _from_stdlib(ssl_ctx, side)
    return Context.from_pointer(ssl_ctx, side)


#: ``ctx_configure_callback(ptr)`` gets a cffi ``SSL_CTX *``, ``ssl_configure_callback(ptr)`` a
#: cffi ``SSL *``: ``uvssl.openssl.lib`` functions take them as they are.
ConfigureCallback = Callable[[Any], Any]
SniCallback = Callable[[Any, Optional[str]], Optional["Context"]]

# SSL* address -> the SslSocket it belongs to, for sni_callback (filled by TLS servers).
ssl_owners: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
