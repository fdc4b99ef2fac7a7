"""TLS sockets and servers.

An ``SslSocket`` is a ``Socket`` with the native TLS engine (csrc/tls.c) attached: every S2
function accepts it. ``connect_cb`` runs after the handshake; data written before that is
queued and sent, in order, right after it. ``close_socket`` sends close_notify first.

Servers hand a connection to Python once its handshake is done (one call for accept and
connect: ``UVS_ACCEPT_ESTABLISHED``), unless the context must see the new ``SSL*`` first
(``sni_callback``, ``ssl_configure_callback``: the server is then "eager" and hands it over
at accept). The engine's own events: ``UVS_EV_TLS_CLOSED`` (the peer's close_notify, or a
close without it) becomes ``SslClosed``; ``UVS_EV_TLS_DETACHED`` (``detach_ssl`` done) turns
the object back into a plain ``Socket``. A TLS failure is read from the engine and turned
into its exception by ``errors.tls_error``, the same mapping ``SslStream`` uses.
"""

from __future__ import annotations

import hashlib
import socket as _socket
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ._args import (
    check_backlog,
    check_callbacks,
    check_data,
    check_host,
    check_hs_timeout,
    check_port,
    check_thread,
    check_timeout,
    keyword_hints,
)
from ._uvssl import ffi, lib
from .context import (
    Context,
    alpn_wire,
    configure_client_ssl,
    options_value,
    resolve_ssl_ctx,
    ssl_owners,
)
from .errors import (
    SocketError,
    SslClosed,
    SslFailure,
    SslHandshakeTimeout,
    TcpSslError,
    captured_tls_error,
    strerror,
    tls_error,
)
from .loop import Loop, get_loop
from .openssl import error_queue
from .tcp import (
    BytesLike,
    EventCb,
    ReadCb,
    Socket,
    TcpServer,
    Unconnected,
    check_proxy_options,
    new_socket,
    open_fd,
    peer_name,
)
from .x509 import X509Certificate

__all__ = [
    "SslSocket",
    "SslSession",
    "TcpSslServer",
    "tcp_ssl_connect",
    "tcp_ssl_server",
    "init_tcp_ssl_socket",
]

_ACTION_WHAT = {
    lib.UVS_ACT_HANDSHAKE: "handshake",
    lib.UVS_ACT_TLS_READ: "read",
    lib.UVS_ACT_TLS_WRITE: "write",
}

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

    def _init_own(self) -> None:
        # Called by Socket.__init__, which sockets are made with (new_socket), and by
        # attach_ssl when a plain Socket becomes an SslSocket: every attribute of its own,
        # always in this order (see Socket.__init__).
        self._context: Optional[Context] = None
        self.server_hostname: Optional[str] = None
        self._attached = False  # made plain, then attach_ssl: connect_cb already ran
        self._sni_context: Optional[Context] = None  # what sni_callback chose, kept alive

    # -- TLS details -------------------------------------------------------------------------
    def _ssl(self) -> Any:
        conn = self._conn
        if conn is None:
            return ffi.NULL
        return lib.uvs_conn_ssl(conn)

    @property
    def ssl_pointer(self) -> Optional[int]:
        """The raw ``SSL*`` as an int (None once closed)."""
        check_thread(self._loop, "ssl_pointer", self)
        ssl = self._ssl()
        return None if ssl == ffi.NULL else int(ffi.cast("uintptr_t", ssl))

    @property
    def version(self) -> Optional[str]:
        """The negotiated protocol ("TLSv1.3"), or None before the handshake."""
        check_thread(self._loop, "version", self)
        ssl = self._ssl()
        if ssl == ffi.NULL or not self._connected:
            return None
        return str(ffi.string(lib.SSL_get_version(ssl)).decode())

    @property
    def cipher(self) -> Optional[str]:
        """The negotiated cipher's OpenSSL name, or None before the handshake."""
        check_thread(self._loop, "cipher", self)
        ssl = self._ssl()
        if ssl == ffi.NULL or not self._connected:
            return None
        c = lib.SSL_get_current_cipher(ssl)
        return None if c == ffi.NULL else str(ffi.string(lib.SSL_CIPHER_get_name(c)).decode())

    @property
    def alpn_protocol(self) -> Optional[str]:
        """The protocol ALPN selected, or None."""
        check_thread(self._loop, "alpn_protocol", self)
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
        check_thread(self._loop, "peer_certificate", self)
        ssl = self._ssl()
        if ssl == ffi.NULL:
            return None
        return X509Certificate._peer_of(ssl)

    @property
    def session(self) -> Optional[SslSession]:
        """The session, for ``tcp_ssl_connect(session=...)`` (with TLS 1.3 it is resumable
        once the server's ticket arrived, shortly after the handshake).
        """
        check_thread(self._loop, "session", self)
        ssl = self._ssl()
        if ssl == ffi.NULL:
            return None
        s = lib.SSL_get1_session(ssl)
        return None if s == ffi.NULL else SslSession(s)

    @property
    def session_reused(self) -> bool:
        """True when the handshake resumed a session."""
        check_thread(self._loop, "session_reused", self)
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

    def _error_for(self, kind: int, status: int, action: int) -> SocketError:
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
        captured = None if conn is None else captured_tls_error(lib.uvs_conn_tls_error, conn)
        server = False
        if conn is not None:
            ssl = lib.uvs_conn_ssl(conn)
            server = ssl != ffi.NULL and bool(lib.SSL_is_server(ssl))
        return tls_error(
            what, captured, server, self.server_hostname, peer_name(self), socket=self
        )

    def _report(self, exc: SocketError, eof: bool = False) -> None:
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
            raise MemoryError(f"uvssl: cannot attach TLS to the server: {strerror(r)}")
        ctx._add_server(self)
        self._sync_eager()

    def _sync_eager(self) -> None:
        # A connection is handed over when its handshake is done (one call into Python for
        # accept and connect), unless the context must see the SSL* before the handshake.
        ctx = self.context
        eager = ctx.sni_callback is not None or ctx.ssl_configure_callback is not None
        if self._ptr is not None:
            lib.uvs_server_set_eager(self._ptr, int(eager))

    def _accepted(self, sock: Socket, stage: int) -> None:
        assert isinstance(sock, SslSocket)
        sock._context = self.context
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
    ca_data: Optional[Union[str, bytes]] = None,
) -> Context:
    """Contexts built from tcp_ssl_connect keywords are cached: no SSL_CTX per connection.

    ``ca_data`` enters the cache key as its SHA-256 digest: the certificates themselves are
    kept only in the context's trust store.
    """
    digest = None
    if ca_data is not None:
        if isinstance(ca_data, str):
            digest = hashlib.sha256(ca_data.encode("utf-8", "surrogatepass")).digest()
        elif isinstance(ca_data, (bytes, bytearray, memoryview)):
            digest = hashlib.sha256(ca_data).digest()
        # anything else: Context.client says what ca_data takes
    key = (verify, ca_file, ciphers, options, digest)
    ctx = _client_contexts.get(key)
    if ctx is None:
        if len(_client_contexts) >= 32:
            _client_contexts.clear()
        ctx = Context.client(
            verify=verify,
            ca_file=ca_file,
            ca_data=ca_data,
            ciphers=ciphers,
            options=options or None,
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
    return check_hs_timeout(value)


@keyword_hints
def tcp_ssl_connect(
    host: str,
    port: int,
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb] = None,
    *,
    data: Optional[BytesLike] = None,
    stream: bool = False,
    connect_cb: Optional[Callable[[SslSocket], Any]] = None,
    write_cb: Optional[Callable[[SslSocket], Any]] = None,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    dont_drain_read_buffer: bool = False,
    ssl_ctx: Any = None,
    ssl_options: Any = (),
    ciphers: Optional[str] = None,
    server_hostname: Optional[str] = None,
    verify: bool = True,
    ca_file: Any = None,
    ca_data: Optional[Union[str, bytes]] = None,
    alpn: Optional[Iterable[str]] = None,
    handshake_timeout: Optional[float] = CONTEXT_DEFAULT,
    session: Optional[SslSession] = None,
) -> SslSocket:
    """Open a TLS connection; the ``tcp_connect`` keywords apply, plus:

    ``ssl_ctx`` (a ``Context``, an ``ssl.SSLContext`` or a raw ``SSL_CTX*``), or else
    ``ssl_options``, ``ciphers``, ``verify`` and ``ca_file`` or ``ca_data`` (CA certificates
    in memory: PEM as str or bytes) to build one; ``server_hostname``
    (SNI and host name check; defaults to ``host``); ``alpn`` (protocol names to offer);
    ``handshake_timeout`` (seconds, None for no limit; by default the context's, 60 s unless
    the ``Context`` says otherwise); ``session`` (from an earlier socket's
    ``.session``, to resume). ``connect_cb`` runs after the handshake.
    """
    host = check_host("host", host)
    port = check_port(port)
    check_callbacks(read_cb, event_cb, connect_cb, write_cb)
    if data is not None:
        check_data("data", data)
    tls = _client_tls(
        ssl_ctx,
        ssl_options,
        ciphers,
        server_hostname,
        verify,
        ca_file,
        ca_data,
        alpn,
        handshake_timeout,
        session,
    )
    loop = get_loop()
    sock = new_socket(
        SslSocket,
        loop,
        read_cb,
        event_cb,
        connect_cb,
        write_cb,
        bool(stream or dont_drain_read_buffer),
        target=(host, port),
        read_timeout=check_timeout("read_timeout", read_timeout),
        write_timeout=check_timeout("write_timeout", write_timeout),
    )
    _start_client_tls(sock, tls, tls.server_hostname or host)  # closes the socket if it raises
    if data is not None:
        sock.write(data)
    return sock


@keyword_hints
def tcp_ssl_server(
    bind_address: Optional[str],
    port: int,
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb] = None,
    *,
    connect_cb: Optional[Callable[[SslSocket], Any]] = None,
    backlog: int = -1,
    stream: bool = False,
    reuse_port: bool = False,
    ssl_ctx: Any = None,
    certificate: Any = None,
    key: Any = None,
    certificate_data: Optional[Union[str, bytes]] = None,
    key_data: Optional[Union[str, bytes]] = None,
    keytype: str = "pem",
    password: Optional[str] = None,
    ssl_options: Any = (),
    ciphers: Optional[str] = None,
    handshake_timeout: Optional[float] = CONTEXT_DEFAULT,
    proxy_protocol: bool = False,
    proxy_protocol_from: Optional[Sequence[str]] = None,
) -> TcpSslServer:
    """Listen for TLS connections; the ``tcp_server`` keywords apply, plus:

    ``ssl_ctx`` (any form ``tcp_ssl_connect`` accepts), or else ``certificate`` (a PEM chain
    file, or one DER certificate), ``key`` (encoded as ``keytype`` says: "pem" or "der"), or
    the same from memory as ``certificate_data`` / ``key_data``, ``password``, ``ssl_options``
    and ``ciphers`` to build one. ``handshake_timeout`` (seconds; None for no limit; by default the
    context's, 60 s unless the ``Context`` says otherwise) closes
    connections that do not complete the handshake. ``connect_cb`` runs after the handshake.
    ``proxy_protocol`` / ``proxy_protocol_from`` as for ``tcp_server``: the PROXY header is
    read before the first TLS byte and must be complete within ``handshake_timeout`` of the
    accept; the TLS handshake starts after it (with its own ``handshake_timeout``), and
    ``remote_address`` is already the client's when ``connect_cb`` runs.
    """
    port = check_port(port)
    check_callbacks(read_cb, event_cb, connect_cb, None)
    backlog = check_backlog(backlog)
    check_hs_timeout(handshake_timeout)  # validated now; resolved against the context below
    sources = check_proxy_options(proxy_protocol, proxy_protocol_from)
    opts = options_value("ssl_options", ssl_options)
    if ssl_ctx is not None:
        if opts or ciphers is not None:
            raise ValueError(
                "ssl_options and ciphers cannot be combined with ssl_ctx: set them on the context"
            )
        given = [
            n
            for n, v in (
                ("certificate", certificate),
                ("key", key),
                ("certificate_data", certificate_data),
                ("key_data", key_data),
                ("password", password),
            )
            if v is not None
        ]
        if given:
            raise ValueError(
                f"{'/'.join(given)} cannot be combined with ssl_ctx=: set "
                f"{'it' if len(given) == 1 else 'them'} on the context"
            )
        ctx = resolve_ssl_ctx(ssl_ctx, "server")
    else:
        if certificate is None and certificate_data is None:
            raise ValueError(
                "tcp_ssl_server needs certificate= (and key=), certificate_data= (and "
                "key_data=) or ssl_ctx="
            )
        ctx = Context.server(
            certificate=certificate,
            key=key,
            certificate_data=certificate_data,
            key_data=key_data,
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
    hs = _effective_hs(handshake_timeout, ctx)
    server._configure_tls(ctx, hs)
    if proxy_protocol:
        server._enable_proxy(hs, sources)
    return server


# -- sockets made before they connect (init_tcp_ssl_socket) -----------------------------------


class _ClientTls:
    """A TLS client's settings, checked and resolved (the context built or borrowed) once."""

    __slots__ = ("ctx", "server_hostname", "verify", "alpn", "session", "handshake_timeout")

    def __init__(
        self,
        ctx: Context,
        server_hostname: Optional[str],
        verify: bool,
        alpn: Optional[bytes],
        session: Optional[SslSession],
        handshake_timeout: Any,
    ) -> None:
        """Internal: made by ``_client_tls``."""
        self.ctx = ctx
        self.server_hostname = server_hostname
        self.verify = verify
        self.alpn = alpn
        self.session = session
        self.handshake_timeout = handshake_timeout


def _client_tls(
    ssl_ctx: Any,
    ssl_options: Any,
    ciphers: Optional[str],
    server_hostname: Optional[str],
    verify: bool,
    ca_file: Any,
    ca_data: Optional[Union[str, bytes]],
    alpn: Optional[Iterable[str]],
    handshake_timeout: Any,
    session: Optional[SslSession],
) -> _ClientTls:
    """Check a client's TLS keywords as ``tcp_ssl_connect`` does and resolve its context."""
    if not isinstance(verify, bool):
        hint = " (a CA file goes in ca_file=)" if isinstance(verify, (str, bytes)) else ""
        raise TypeError(f"verify must be a bool, not {type(verify).__name__}{hint}")
    check_hs_timeout(handshake_timeout)  # validated now; resolved against the context later
    opts = options_value("ssl_options", ssl_options)
    if server_hostname is not None:
        server_hostname = check_host("server_hostname", server_hostname)
    alpn_bytes = alpn_wire("alpn", alpn) if alpn is not None else None
    if ssl_ctx is not None:
        if opts or ciphers is not None:
            raise ValueError(
                "ssl_options and ciphers cannot be combined with ssl_ctx: set them on the context"
            )
        for name, value in (("ca_file", ca_file), ("ca_data", ca_data)):
            if value is not None:
                raise ValueError(f"{name} cannot be combined with ssl_ctx: set it on the context")
        ctx = resolve_ssl_ctx(ssl_ctx, "client")
    else:
        ctx = _default_client_context(verify, ca_file, ciphers, opts, ca_data)
    if session is not None and not isinstance(session, SslSession):
        raise TypeError(f"session must be an SslSession, not {type(session).__name__}")
    return _ClientTls(ctx, server_hostname, verify, alpn_bytes, session, handshake_timeout)


def _start_client_tls(sock: SslSocket, tls: _ClientTls, server_hostname: Optional[str]) -> None:
    """Attach a client TLS engine to ``sock``'s connection (made, connected or connecting):
    the handshake starts once it is connected. On failure the socket is closed and the error
    raised.
    """
    ctx = tls.ctx
    sock._context = ctx
    sock.server_hostname = server_hostname
    try:
        hs = _effective_hs(tls.handshake_timeout, ctx)
        r = lib.uvs_conn_attach_tls(sock._conn, ctx._ctx, ffi.NULL, 0, hs or 0.0, ffi.NULL, 0)
        if r != 0:
            codes, strings = error_queue()
            raise SslFailure(
                f"cannot start TLS: {strerror(r)}", what="attach", codes=codes, strings=strings
            )
        ssl = lib.uvs_conn_ssl(sock._conn)
        configure_client_ssl(ssl, ctx, server_hostname, tls.verify, tls.alpn)
        session = tls.session
        if session is not None and session._ptr is not None:
            if lib.SSL_set_session(ssl, session._ptr) != 1:
                lib.ERR_clear_error()  # an unusable session just means a full handshake
        ctx._configure_ssl(ssl)
    except BaseException:
        sock.close(force=True)
        raise


@keyword_hints
def init_tcp_ssl_socket(
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb] = None,
    *,
    ssl_ctx: Any = None,
    fd: Union[int, _socket.socket, None] = None,
    data: Optional[BytesLike] = None,
    stream: bool = False,
    connect_cb: Optional[Callable[[SslSocket], Any]] = None,
    write_cb: Optional[Callable[[SslSocket], Any]] = None,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    dont_drain_read_buffer: bool = False,
    ssl_options: Any = (),
    ciphers: Optional[str] = None,
    server_hostname: Optional[str] = None,
    verify: bool = True,
    ca_file: Any = None,
    ca_data: Optional[Union[str, bytes]] = None,
    alpn: Optional[Iterable[str]] = None,
    handshake_timeout: Optional[float] = CONTEXT_DEFAULT,
    session: Optional[SslSession] = None,
) -> SslSocket:
    """Make a TLS client ``SslSocket`` that is not connected yet (cl-async's lower-level
    brother of ``tcp_ssl_connect``, whose keywords it takes, checked now).

    ``connect_tcp_socket(sock, host, port)`` connects it; the handshake follows, checking
    ``server_hostname`` (by default ``host``), then ``connect_cb`` runs and what was written
    meanwhile (``data=`` first) is sent. With ``fd=`` (a connected ``socket.socket`` or
    descriptor, taken over) the handshake starts at once; ``server_hostname`` is then needed
    to check the server's certificate (or ``verify=False``).
    """
    check_callbacks(read_cb, event_cb, connect_cb, write_cb)
    if data is not None:
        check_data("data", data)
    r_s = check_timeout("read_timeout", read_timeout)
    w_s = check_timeout("write_timeout", write_timeout)
    tls = _client_tls(
        ssl_ctx,
        ssl_options,
        ciphers,
        server_hostname,
        verify,
        ca_file,
        ca_data,
        alpn,
        handshake_timeout,
        session,
    )
    if fd is not None and tls.server_hostname is None and verify and tls.ctx.verify_host:
        raise ValueError(
            "init_tcp_ssl_socket(fd=...) needs server_hostname=, the name the server's "
            "certificate must carry (there is no host to take it from), or verify=False"
        )
    loop = get_loop()
    streamed = bool(stream or dont_drain_read_buffer)
    if fd is not None:
        sock = open_fd(
            SslSocket, loop, "fd", fd, read_cb, event_cb, connect_cb, write_cb, streamed, r_s, w_s
        )
        sock._init = Unconnected(r_s, w_s, adopted=True)
        _start_client_tls(sock, tls, tls.server_hostname)  # the handshake starts at once
        if data is not None:
            sock.write(data)
        return sock
    sock = new_socket(
        SslSocket,
        loop,
        read_cb,
        event_cb,
        connect_cb,
        write_cb,
        streamed,
        read_timeout=r_s,
        write_timeout=w_s,
    )
    assert sock._init is not None

    def start_tls(s: Socket, host: str) -> None:
        assert isinstance(s, SslSocket)
        _start_client_tls(s, tls, tls.server_hostname or host)

    sock._init.start_tls = start_tls
    sock.server_hostname = tls.server_hostname
    sock._context = tls.ctx
    if data is not None:
        sock.write(data)
    return sock
