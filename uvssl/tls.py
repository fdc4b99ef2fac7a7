"""TLS sockets and servers (SPEC S4).

An ``SslSocket`` is a ``Socket`` with the native TLS engine (csrc/tls.c) attached: every S2
function accepts it. ``connect_cb`` runs after the handshake; data written before that is
queued and sent, in order, right after it. ``close_socket`` sends close_notify first.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Optional

from ._args import keyword_hints
from ._uvssl import ffi, lib
from .context import Context, alpn_wire, options_value, resolve_ssl_ctx, ssl_owners
from .errors import (
    SslClosed,
    SslFailure,
    SslHandshakeTimeout,
    SslVerificationFailure,
    SslX509Lookup,
    TcpSslError,
)
from .loop import Loop, _check_thread, _strerror, get_loop
from .openssl import error_queue, error_strings, verify_string
from .tcp import (
    BytesLike,
    ReadCb,
    Socket,
    TcpServer,
    _check_backlog,
    _check_common,
    _check_data,
    _check_host,
    _check_port,
    _connect,
    _errno_of,
    peer_name,
)
from .x509 import X509Certificate

__all__ = ["SslSocket", "SslSession", "TcpSslServer", "tcp_ssl_connect", "tcp_ssl_server"]

_ACTION_WHAT = {
    lib.UVS_ACT_HANDSHAKE: "handshake",
    lib.UVS_ACT_TLS_READ: "read",
    lib.UVS_ACT_TLS_WRITE: "write",
}

# Reason codes (ERR_GET_REASON) that say "the certificate did not verify".
_SSL_R_CERTIFICATE_VERIFY_FAILED = lib.SSL_R_CERTIFICATE_VERIFY_FAILED
_X509_LOOKUP_REASONS = {
    lib.SSL_R_NO_CERTIFICATE_ASSIGNED,
    lib.SSL_R_NO_PRIVATE_KEY_ASSIGNED,
    lib.SSL_R_MISSING_RSA_CERTIFICATE,
}

# What a failed verification means and what to do, by verify result (X509_V_ERR_*).
_UNTRUSTED = {  # no path to a trusted CA: unknown issuer, self-signed, ...
    lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
    lib.X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
    lib.X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
    lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    lib.X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
}
_NAME_MISMATCH = {lib.X509_V_ERR_HOSTNAME_MISMATCH, lib.X509_V_ERR_IP_ADDRESS_MISMATCH}
_NOT_NOW = {lib.X509_V_ERR_CERT_NOT_YET_VALID, lib.X509_V_ERR_CERT_HAS_EXPIRED}
_NO_CRL = lib.X509_V_ERR_UNABLE_TO_GET_CRL
_CHAIN_TOO_LONG = lib.X509_V_ERR_CERT_CHAIN_TOO_LONG

# OpenSSL reasons (the end of an error string) a user can act on: what they mean, and what to
# do. "alert ..." is what the peer sent: it refused something of this side's.
_REASON_HINTS = (
    ("alert unknown ca", "the peer does not trust the CA that issued {this} certificate"),
    ("alert bad certificate", "the peer rejected {this} certificate"),
    ("alert certificate unknown", "the peer rejected {this} certificate"),
    ("alert unsupported certificate", "the peer rejected {this} certificate"),
    ("alert certificate expired", "the peer says {this} certificate has expired"),
    ("alert certificate revoked", "the peer says {this} certificate is revoked"),
    (
        "alert certificate required",
        "the peer requires a client certificate: give this client certificate= and key=",
    ),
    (
        "alert protocol version",
        "the two sides accept no common TLS version (uvssl's minimum is TLS 1.2)",
    ),
    (
        "alert handshake failure",
        "the peer found no acceptable parameters (cipher, TLS version or signature algorithm)",
    ),
    (
        "peer did not return a certificate",
        "the client sent no certificate, and this server requires one (verify='required')",
    ),
    ("no shared cipher", "the two sides have no cipher in common (see ciphers=)"),
    (
        "unsupported protocol",
        "the two sides accept no common TLS version (uvssl's minimum is TLS 1.2; see min_version=)",
    ),
    ("http request", "the peer sent a plain HTTP request to this TLS port"),
    ("wrong version number", "the peer does not speak TLS (is it a plain TCP or HTTP port?)"),
)


def _verification_hint(vr: int, server: bool, hostname: Optional[str]) -> str:
    """What to do about verification result ``vr`` ("" when there is nothing to say)."""
    if vr in _UNTRUSTED:
        if server:
            return "give the server's context ca_file= the CA that issued the client certificates"
        return "give ca_file= the CA that issued it (or verify=False to skip verification)"
    if vr in _NAME_MISMATCH:
        name = f"{hostname!r}" if hostname else "the name asked for"
        return f"it is not valid for {name}: connect with a server_hostname= it names"
    if vr in _NOT_NOW:
        return "check this machine's clock, or renew the certificate"
    if vr == _NO_CRL:
        return "crl_check is on, but no CRL from its issuer was loaded (crl_file=)"
    if vr == _CHAIN_TOO_LONG:
        return "the chain is longer than max_depth="
    return ""


def tls_failure_message(
    what: str,
    strings: tuple[str, ...],
    verify_failed: bool,
    vr: Optional[int],
    vstr: Optional[str],
    server: bool,
    hostname: Optional[str],
    peer: Optional[str] = None,
) -> str:
    """The message of a TLS error with OpenSSL errors queued: what failed, with whom (``peer``,
    "HOST port N", when known) and, when the reason is a common one, what it means and what
    to do. The OpenSSL texts themselves follow in ``str(exc)``, so a reason without advice is
    not repeated here.
    """
    failed = f"TLS {what} with {peer} failed" if peer else f"TLS {what} failed"
    if verify_failed and vr is not None:
        whose = "client's" if server else "server's"
        msg = f"{failed}: the {whose} certificate did not verify ({vstr})"
        hint = _verification_hint(vr, server, hostname)
        return f"{msg}: {hint}" if hint else msg
    last = strings[-1].rsplit(":", 1)[-1] if strings else ""
    for reason, meaning in _REASON_HINTS:
        if last.endswith(reason):
            this = "this server's" if server else "this client's"
            return f"{failed}: {meaning.format(this=this)}"
    return failed


class SslSession:
    """A TLS session that a later ``tcp_ssl_connect(session=...)`` can resume."""

    __slots__ = ("_ptr", "__weakref__")

    def __init__(self, ptr: Any) -> None:
        """Take ownership of one reference to an ``SSL_SESSION*``."""
        self._ptr = ptr

    def __del__(self) -> None:
        ptr = getattr(self, "_ptr", None)
        if ptr is not None:
            self._ptr = None
            lib.SSL_SESSION_free(ptr)

    @property
    def resumable(self) -> bool:
        """Whether the session can be resumed (it carries a ticket or an id)."""
        return bool(self._ptr is not None and lib.SSL_SESSION_is_resumable(self._ptr))


_EV_TLS_DETACHED = lib.UVS_EV_TLS_DETACHED
_EV_TLS_CLOSED = lib.UVS_EV_TLS_CLOSED
_ACCEPT_NEW = lib.UVS_ACCEPT_NEW
_ACCEPT_ESTABLISHED = lib.UVS_ACCEPT_ESTABLISHED


class SslSocket(Socket):
    """A TLS connection (``tcp_ssl_connect`` / accepted by ``tcp_ssl_server``)."""

    _tls = True

    def _init_own(self) -> None:
        # set by Socket.__init__, which sockets are made with (tcp_ssl_connect, tcp_ssl_server)
        self._context: Optional[Context] = None
        self.server_hostname: Optional[str] = None
        self._tls_closed = False
        self._attached = False  # made plain, then attach_ssl: connect_cb already ran

    # -- TLS details -------------------------------------------------------------------------
    def _ssl(self) -> Any:
        conn = self._conn
        if conn is None:
            return ffi.NULL
        return lib.uvs_conn_ssl(conn)

    @property
    def ssl_pointer(self) -> Optional[int]:
        """The raw ``SSL*`` as an int (None once closed)."""
        _check_thread(self._loop, "ssl_pointer", self)
        ssl = self._ssl()
        return None if ssl == ffi.NULL else int(ffi.cast("uintptr_t", ssl))

    @property
    def version(self) -> Optional[str]:
        """The negotiated protocol ("TLSv1.3"), or None before the handshake."""
        _check_thread(self._loop, "version", self)
        ssl = self._ssl()
        if ssl == ffi.NULL or not self._connected:
            return None
        return str(ffi.string(lib.SSL_get_version(ssl)).decode())

    @property
    def cipher(self) -> Optional[str]:
        """The negotiated cipher's OpenSSL name, or None before the handshake."""
        _check_thread(self._loop, "cipher", self)
        ssl = self._ssl()
        if ssl == ffi.NULL or not self._connected:
            return None
        c = lib.SSL_get_current_cipher(ssl)
        return None if c == ffi.NULL else str(ffi.string(lib.SSL_CIPHER_get_name(c)).decode())

    @property
    def alpn_protocol(self) -> Optional[str]:
        """The protocol ALPN selected, or None."""
        _check_thread(self._loop, "alpn_protocol", self)
        ssl = self._ssl()
        if ssl == ffi.NULL:
            return None
        data = ffi.new("const unsigned char **")
        length = ffi.new("unsigned int *")
        lib.SSL_get0_alpn_selected(ssl, data, length)
        if length[0] == 0:
            return None
        return bytes(ffi.buffer(data[0], length[0])).decode("ascii", "replace")

    @property
    def peer_certificate(self) -> Optional[X509Certificate]:
        """The peer's certificate, or None (no certificate, or not connected)."""
        _check_thread(self._loop, "peer_certificate", self)
        ssl = self._ssl()
        if ssl == ffi.NULL:
            return None
        return X509Certificate._peer_of(ssl)

    @property
    def session(self) -> Optional[SslSession]:
        """The session, for ``tcp_ssl_connect(session=...)`` (with TLS 1.3 it is resumable
        once the server's ticket arrived, shortly after the handshake).
        """
        _check_thread(self._loop, "session", self)
        ssl = self._ssl()
        if ssl == ffi.NULL:
            return None
        s = lib.SSL_get1_session(ssl)
        return None if s == ffi.NULL else SslSession(s)

    @property
    def session_reused(self) -> bool:
        """True when the handshake resumed a session."""
        _check_thread(self._loop, "session_reused", self)
        ssl = self._ssl()
        return bool(ssl != ffi.NULL and lib.SSL_session_reused(ssl))

    @property
    def context(self) -> Optional[Context]:
        """The ``Context`` this connection was made with."""
        return self._context

    # -- events ------------------------------------------------------------------------------
    def _on_connected(self) -> None:
        if not self._attached:
            super()._on_connected()

    def _event(self, kind: int, status: int, action: int) -> None:
        if kind == _EV_TLS_DETACHED:
            # plaintext from here on: the same object goes back to being a plain Socket
            self.__class__ = Socket  # type: ignore[assignment]
            self._connected = True
            return
        if kind == _EV_TLS_CLOSED:
            truncated = status != 0
            self._tls_closed = True
            exc = SslClosed(
                "TLS read: the peer closed the connection without close_notify (data may be "
                "truncated)"
                if truncated
                else "TLS read: the peer sent close_notify (the TLS session has ended)",
                what="read",
                socket=self,
                identifier="connection-reset" if truncated else "shutdown",
            )
            exc.truncated = truncated
            if truncated:
                self._closed = True
            self._report(exc, eof=True)
            return
        super()._event(kind, status, action)

    def _error_for(self, kind: int, status: int, action: int) -> BaseException:
        what = _ACTION_WHAT.get(action, "handshake")
        if kind == lib.UVS_EV_HANDSHAKE_TIMEOUT:
            where = peer_name(self)
            return SslHandshakeTimeout(
                f"the TLS handshake{f' with {where}' if where else ''} did not complete within "
                "handshake_timeout; the connection is closed",
                what="handshake",
                socket=self,
                identifier="connection-timed-out",
            )
        if kind == lib.UVS_EV_TLS_ERROR:
            return self._tls_error(what)
        exc = super()._error_for(kind, status, action)
        return exc

    def _tls_error(self, what: str) -> TcpSslError:
        conn = self._conn
        codes: tuple[int, ...] = ()
        ssl_err = sys_err = 0
        vr: Optional[int] = None
        if conn is not None:
            buf = ffi.new("unsigned long[]", lib.UVS_TLS_MAX_ERRORS)
            se = ffi.new("int *")
            ye = ffi.new("int *")
            v = ffi.new("long *")
            n = lib.uvs_conn_tls_error(conn, buf, lib.UVS_TLS_MAX_ERRORS, se, ye, v)
            if n >= 0:
                codes = tuple(int(buf[i]) for i in range(n))
                ssl_err, sys_err, vr = se[0], ye[0], int(v[0])
        strings = error_strings(codes)
        reasons = {int(lib.ERR_GET_REASON(c)) for c in codes}
        verified_bad = vr is not None and vr != lib.X509_V_OK
        verify_failed = _SSL_R_CERTIFICATE_VERIFY_FAILED in reasons and verified_bad
        vstr = verify_string(vr) if vr is not None else None
        where = peer_name(self)
        failed = f"TLS {what} with {where} failed" if where else f"TLS {what} failed"
        if sys_err == lib.UV_EOF and not codes:
            peer = f"the peer ({where})" if where else "the peer"
            msg = f"{peer} closed the connection during the TLS handshake"
        elif codes:
            ssl = lib.uvs_conn_ssl(conn) if conn is not None else ffi.NULL
            server = ssl != ffi.NULL and bool(lib.SSL_is_server(ssl))
            msg = tls_failure_message(
                what, strings, verify_failed, vr, vstr, server, self.server_hostname, where
            )
        elif ssl_err == lib.SSL_ERROR_SYSCALL and sys_err:
            msg = f"{failed}: {_strerror(-sys_err) if sys_err > 0 else _strerror(sys_err)}"
        else:
            msg = failed
        kw: dict[str, Any] = dict(
            what=what,
            codes=codes,
            strings=strings,
            verify_result=vr,
            verify_result_string=vstr,
            socket=self,
            code=_errno_of(-sys_err) if sys_err > 0 else None,
        )
        if verify_failed:
            return SslVerificationFailure(msg, **kw)
        if reasons & _X509_LOOKUP_REASONS:
            return SslX509Lookup(msg, **kw)
        return SslFailure(msg, **kw)

    def _report(self, exc: BaseException, eof: bool = False) -> None:
        if isinstance(exc, TcpSslError) and not isinstance(exc, SslClosed):
            self._closed = True
        super()._report(exc, eof)


class TcpSslServer(TcpServer):
    """A listening TLS server (``tcp_ssl_server``)."""

    _socket_class = SslSocket

    def _configure_tls(self, ctx: Context, handshake_timeout: Optional[float]) -> None:
        self.context = ctx
        hs = 0.0 if handshake_timeout is None else float(handshake_timeout)
        r = lib.uvs_server_set_tls(self._ptr, ctx._ctx, hs)
        if r != 0:
            self.close()
            raise MemoryError(f"uvssl: cannot attach TLS to the server: {_strerror(r)}")
        ctx._add_server(self)
        self._sync_eager()

    def _sync_eager(self) -> None:
        # A connection is handed over when its handshake is done (one call into Python for
        # accept and connect), unless the context must see the SSL* before the handshake.
        ctx = self.context
        eager = ctx.sni_callback is not None or ctx.ssl_configure_callback is not None
        if self._ptr is not None:
            lib.uvs_server_set_eager(self._ptr, int(eager))

    def _new_socket(self) -> Socket:
        sock = super()._new_socket()
        assert isinstance(sock, SslSocket)
        sock._context = self.context
        return sock

    def _accepted(self, sock: Socket, stage: int) -> None:
        if stage == _ACCEPT_ESTABLISHED:  # handed over after the handshake: its connect event
            sock._connected = True
            sock._on_connected()
            return
        if stage != _ACCEPT_NEW:
            return  # the handshake failed before the connection was handed over: error next
        # An eager server's connection, before its handshake: the new SSL* gets the context's
        # configure callback and SNI bookkeeping; connect_cb runs after the handshake
        # (UVS_EV_CONNECT from the engine).
        ctx = self.context
        if ctx.sni_callback is None and ctx.ssl_configure_callback is None:
            return
        ssl = lib.uvs_conn_ssl(sock._conn)
        if ssl == ffi.NULL:
            return
        if ctx.sni_callback is not None:
            ssl_owners[int(ffi.cast("uintptr_t", ssl))] = sock
        ctx._configure_ssl(ssl)


# -- helpers ---------------------------------------------------------------------------------

_client_contexts: dict[tuple[Any, ...], Context] = {}


def _default_client_context(
    verify: bool,
    ca_file: Any,
    ciphers: Optional[str],
    options: int,
) -> Context:
    """Contexts built from tcp_ssl_connect keywords are cached: no SSL_CTX per connection."""
    key = (verify, ca_file, ciphers, options)
    ctx = _client_contexts.get(key)
    if ctx is None:
        if len(_client_contexts) >= 32:
            _client_contexts.clear()
        ctx = Context.client(
            verify=verify, ca_file=ca_file, ciphers=ciphers, options=options or None
        )
        _client_contexts[key] = ctx
    return ctx


class _ContextDefault(float):
    """The handshake_timeout default: 60 s, unless an ``ssl_ctx`` Context sets its own."""

    def __repr__(self) -> str:
        return "60 (or the context's)"


CONTEXT_DEFAULT = _ContextDefault(60.0)


def _effective_hs(value: Any, ctx: Context) -> Optional[float]:
    """The handshake timeout to use: an explicit value wins, else the context's."""
    if value is CONTEXT_DEFAULT:
        return ctx.handshake_timeout
    return _check_hs_timeout(value)


def _check_hs_timeout(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"handshake_timeout must be a number of seconds or None, not {type(value).__name__}"
        )
    if value <= 0:
        raise ValueError(f"handshake_timeout must be > 0 seconds (or None), got {value!r}")
    return float(value)


def _configure_client_ssl(
    ssl: Any,
    ctx: Context,
    server_hostname: Optional[str],
    verify: bool,
    alpn: Optional[bytes],
    session: Optional[SslSession],
) -> None:
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
    if session is not None:
        if not isinstance(session, SslSession):
            raise TypeError(
                f"session must be an SslSession (from socket.session), not {type(session).__name__}"
            )
        if session._ptr is not None and lib.SSL_set_session(ssl, session._ptr) != 1:
            lib.ERR_clear_error()  # an unusable session just means a full handshake


@keyword_hints
def tcp_ssl_connect(
    host: str,
    port: int,
    read_cb: Optional[ReadCb],
    event_cb: Optional[Callable[[BaseException], Any]] = None,
    *,
    data: Optional[BytesLike] = None,
    stream: bool = False,
    connect_cb: Optional[Callable[[Socket], Any]] = None,
    write_cb: Optional[Callable[[Socket], Any]] = None,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    dont_drain_read_buffer: bool = False,
    ssl_ctx: Any = None,
    ssl_options: Any = (),
    ciphers: Optional[str] = None,
    server_hostname: Optional[str] = None,
    verify: bool = True,
    ca_file: Any = None,
    alpn: Optional[Iterable[str]] = None,
    handshake_timeout: Optional[float] = CONTEXT_DEFAULT,
    session: Optional[SslSession] = None,
) -> SslSocket:
    """Open a TLS connection; the ``tcp_connect`` keywords apply, plus:

    ``ssl_ctx`` (a ``Context``, an ``ssl.SSLContext`` or a raw ``SSL_CTX*``), or else
    ``ssl_options``, ``ciphers``, ``verify`` and ``ca_file`` to build one; ``server_hostname``
    (SNI and host name check; defaults to ``host``); ``alpn`` (protocol names to offer);
    ``handshake_timeout`` (seconds, None for no limit; by default the context's, 60 s unless
    the ``Context`` says otherwise); ``session`` (from an earlier socket's
    ``.session``, to resume). ``connect_cb`` runs after the handshake.
    """
    host = _check_host("host", host)
    port = _check_port(port)
    _check_common(read_cb, event_cb, connect_cb, write_cb)
    if data is not None:
        _check_data("data", data)
    if not isinstance(verify, bool):
        hint = " (a CA file goes in ca_file=)" if isinstance(verify, (str, bytes)) else ""
        raise TypeError(f"verify must be a bool, not {type(verify).__name__}{hint}")
    _check_hs_timeout(handshake_timeout)  # validated now; resolved against the context below
    opts = options_value("ssl_options", ssl_options)
    if server_hostname is not None:
        server_hostname = _check_host("server_hostname", server_hostname)
    alpn_bytes = alpn_wire("alpn", alpn) if alpn is not None else None
    if ssl_ctx is not None:
        if opts or ciphers is not None:
            raise ValueError(
                "ssl_options and ciphers cannot be combined with ssl_ctx: set them on the context"
            )
        if ca_file is not None:
            raise ValueError("ca_file cannot be combined with ssl_ctx: set it on the context")
        ctx = resolve_ssl_ctx(ssl_ctx, "client")
    else:
        ctx = _default_client_context(verify, ca_file, ciphers, opts)
    if session is not None and not isinstance(session, SslSession):
        raise TypeError(f"session must be an SslSession, not {type(session).__name__}")
    loop = get_loop()
    sock = SslSocket(
        loop, read_cb, event_cb, connect_cb, write_cb, bool(stream or dont_drain_read_buffer)
    )
    sock._context = ctx
    sock.server_hostname = server_hostname or host
    _connect(loop, sock, host, port, None, read_timeout, write_timeout)
    try:
        hs = _effective_hs(handshake_timeout, ctx)
        r = lib.uvs_conn_attach_tls(sock._conn, ctx._ctx, ffi.NULL, 0, hs or 0.0, ffi.NULL, 0)
        if r != 0:
            codes, strings = error_queue()
            raise SslFailure(
                f"cannot start TLS: {_strerror(r)}", what="attach", codes=codes, strings=strings
            )
        ssl = lib.uvs_conn_ssl(sock._conn)
        _configure_client_ssl(
            ssl,
            ctx,
            sock.server_hostname,
            verify,
            alpn_bytes,
            session,
        )
        ctx._configure_ssl(ssl)
    except BaseException:
        sock.close(force=True)
        raise
    if data is not None:
        sock.write(data)
    return sock


@keyword_hints
def tcp_ssl_server(
    bind_address: Optional[str],
    port: int,
    read_cb: Optional[ReadCb],
    event_cb: Optional[Callable[[BaseException], Any]] = None,
    *,
    connect_cb: Optional[Callable[[Socket], Any]] = None,
    backlog: int = -1,
    stream: bool = False,
    reuse_port: bool = False,
    ssl_ctx: Any = None,
    certificate: Any = None,
    key: Any = None,
    keytype: str = "pem",
    password: Optional[str] = None,
    ssl_options: Any = (),
    ciphers: Optional[str] = None,
    handshake_timeout: Optional[float] = CONTEXT_DEFAULT,
) -> TcpSslServer:
    """Listen for TLS connections; the ``tcp_server`` keywords apply, plus:

    ``ssl_ctx`` (any form ``tcp_ssl_connect`` accepts), or else ``certificate`` (a PEM chain
    file, or DER with ``keytype="der"``), ``key``, ``password``, ``ssl_options`` and
    ``ciphers`` to build one. ``handshake_timeout`` (seconds; None for no limit; by default the
    context's, 60 s unless the ``Context`` says otherwise) closes
    connections that do not complete the handshake. ``connect_cb`` runs after the handshake.
    """
    port = _check_port(port)
    _check_common(read_cb, event_cb, connect_cb, None)
    backlog = _check_backlog(backlog)
    _check_hs_timeout(handshake_timeout)  # validated now; resolved against the context below
    opts = options_value("ssl_options", ssl_options)
    if ssl_ctx is not None:
        if opts or ciphers is not None:
            raise ValueError(
                "ssl_options and ciphers cannot be combined with ssl_ctx: set them on the context"
            )
        if certificate is not None or key is not None or password is not None:
            given = [
                n
                for n, v in (("certificate", certificate), ("key", key), ("password", password))
                if v is not None
            ]
            raise ValueError(
                f"{'/'.join(given)} cannot be combined with ssl_ctx=: set "
                f"{'it' if len(given) == 1 else 'them'} on the context"
            )
        ctx = resolve_ssl_ctx(ssl_ctx, "server")
    else:
        if certificate is None:
            raise ValueError("tcp_ssl_server needs certificate= (and key=) or ssl_ctx=")
        ctx = Context.server(
            certificate=certificate,
            key=key,
            keytype=keytype,
            certificate_password=password,
            ciphers=ciphers,
            options=opts or None,
        )
    loop: Loop = get_loop()
    server = TcpSslServer(
        loop,
        bind_address,
        port,
        read_cb,
        event_cb,
        connect_cb,
        backlog,
        bool(stream),
        bool(reuse_port),
    )
    server._configure_tls(ctx, _effective_hs(handshake_timeout, ctx))
    return server
