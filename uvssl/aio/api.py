"""``create_connection``, ``create_server``, ``open_connection``, ``start_server``, ``start_tls``.

Connections are made by uvssl (name resolution, connect, the TLS handshake in C) and handed to
a ``Transport`` from inside the uvssl callback that announces them, so no byte read after the
connect or handshake can arrive before the protocol is in place. The awaiting coroutine resumes
afterwards, with the transport and protocol; cancelling it closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional, TypeVar, cast

from .._args import check_port
from ..attach import attach_ssl
from ..errors import SocketError
from ..tcp import new_socket, tcp_server
from ..tls import SslSocket, _client_tls, _start_client_tls, tcp_ssl_server
from ._host import host as _get_host
from .server import Server
from .transport import Transport, _AioSocket, _AioSslSocket

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def _client_ctx(ssl: Any) -> Any:
    """``ssl=`` of a client: None/False plain, True the default context, else a context."""
    if ssl is None or ssl is False:
        return None
    if ssl is True:
        return True
    return ssl


_T = TypeVar("_T")


async def _connection(
    waiter: asyncio.Future[_T], sock: Any, transport_of: Callable[[_T], Transport]
) -> _T:
    """Await a connection (or a handshake) being made; cancelled, it is closed: its transport
    aborted once made, else its socket.
    """
    try:
        return await waiter
    except asyncio.CancelledError:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            transport_of(waiter.result()).abort()
        elif not sock.closed:
            sock.close(force=True)
        raise


async def create_connection(
    protocol_factory: ProtocolFactory,
    host: str,
    port: int,
    *,
    ssl: Any = None,
    server_hostname: Optional[str] = None,
    ssl_handshake_timeout: Optional[float] = None,
    alpn: Optional[list[str]] = None,
) -> tuple[Transport, asyncio.BaseProtocol]:
    """Connect to ``host``:``port`` and return ``(transport, protocol)``.

    ``ssl``: None or False for plain TCP; True for TLS with the default client context (the
    system's CAs, host name checked); or any form ``tcp_ssl_connect``'s ``ssl_ctx`` takes (a
    ``uvssl.Context``, an ``ssl.SSLContext``, a raw ``SSL_CTX*``). ``server_hostname`` (SNI and
    the name checked; defaults to ``host``), ``ssl_handshake_timeout`` (seconds; by default the
    context's) and ``alpn`` (protocol names to offer) need TLS.
    """
    h = _get_host()
    aloop = h.aloop
    ctx = _client_ctx(ssl)
    if ctx is None and (server_hostname is not None or alpn is not None):
        raise ValueError("server_hostname and alpn are only meaningful with ssl")
    if ctx is None and ssl_handshake_timeout is not None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    waiter: asyncio.Future[tuple[Transport, asyncio.BaseProtocol]] = aloop.create_future()

    def connected(sock: Any) -> None:
        if waiter.done():  # cancelled meanwhile
            sock.close(force=True)
            return
        try:
            protocol = protocol_factory()
            transport = Transport(h, sock, protocol, sslcontext=ssl if ctx is not None else None)
        except BaseException as exc:  # noqa: BLE001 - reported to the awaiting coroutine
            sock.close(force=True)
            waiter.set_exception(exc)
            return
        transport._start()
        waiter.set_result((transport, protocol))

    def failed(exc: BaseException) -> None:
        if not waiter.done():
            waiter.set_exception(exc)

    tls = None
    if ctx is not None:
        tls = _client_tls(
            None if ctx is True else ctx,
            (),
            None,
            server_hostname,
            True,
            None,
            None,
            alpn,
            ssl_handshake_timeout,
            None,
        )
    cls = _AioSocket if tls is None else _AioSslSocket
    sock: Any = new_socket(
        cls, h.loop, None, failed, connected, None, False, target=(host, check_port(port))
    )
    if tls is not None:
        _start_client_tls(sock, tls, tls.server_hostname or host)
    return await _connection(waiter, sock, lambda made: made[0])


async def create_server(
    protocol_factory: ProtocolFactory,
    host: Optional[str] = None,
    port: int = 0,
    *,
    ssl: Any = None,
    reuse_port: bool = False,
    backlog: int = -1,
    proxy_protocol: bool = False,
    ssl_handshake_timeout: Optional[float] = None,
) -> Server:
    """Listen on ``host``:``port`` (port 0: the system picks; see ``server.port``); every
    accepted connection gets ``protocol_factory()`` and a ``Transport``.

    ``ssl``: a server context in any form ``tcp_ssl_server``'s ``ssl_ctx`` takes (a
    ``uvssl.Context``, an ``ssl.SSLContext`` with its certificate loaded, a raw
    ``SSL_CTX*``); the handshake runs in C and the protocol sees the connection once it is
    done. ``proxy_protocol=True`` reads a PROXY protocol header first (``peername`` is then
    the client's). ``ssl_handshake_timeout`` (seconds) needs ``ssl``.
    """
    h = _get_host()
    if ssl is True:
        raise ValueError("a server needs a context with its certificate: ssl=True is for clients")
    use_tls = ssl is not None and ssl is not False
    if not use_tls and ssl_handshake_timeout is not None:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    server = Server(h)

    def accepted(sock: Any) -> None:
        try:
            protocol = protocol_factory()
        except (SystemExit, KeyboardInterrupt):
            sock.close(force=True)
            raise
        except BaseException as exc:  # noqa: BLE001 - reported, as asyncio's servers do
            sock.close(force=True)  # the client must not wait on a connection nobody serves
            h.aloop.call_exception_handler(
                {
                    "message": "uvssl.aio: protocol_factory() failed for an incoming "
                    "connection; it was closed",
                    "exception": exc,
                }
            )
            return
        transport = Transport(
            h, sock, protocol, server=server, sslcontext=ssl if use_tls else None, server_side=True
        )
        transport._start()

    def server_event(exc: BaseException) -> None:
        # a connection that failed before it was handed over (its handshake, its PROXY header)
        if not isinstance(exc, SocketError):
            h.aloop.call_exception_handler({"message": "uvssl.aio: server error", "exception": exc})

    if use_tls:
        kw: dict[str, Any] = {}
        if ssl_handshake_timeout is not None:
            kw["handshake_timeout"] = ssl_handshake_timeout
        srv: Any = tcp_ssl_server(
            host,
            port,
            None,
            server_event,
            connect_cb=accepted,
            backlog=backlog,
            reuse_port=reuse_port,
            ssl_ctx=ssl,
            proxy_protocol=proxy_protocol,
            **kw,
        )
        srv._socket_class = _AioSslSocket
    else:
        srv = tcp_server(
            host,
            port,
            None,
            server_event,
            connect_cb=accepted,
            backlog=backlog,
            reuse_port=reuse_port,
            proxy_protocol=proxy_protocol,
        )
        srv._socket_class = _AioSocket
    server._listen(srv)
    return server


class StreamWriter(asyncio.StreamWriter):
    """asyncio's ``StreamWriter`` whose ``start_tls`` upgrades in uvssl's C engine."""

    async def start_tls(
        self,
        sslcontext: Any,
        *,
        server_hostname: Optional[str] = None,
        ssl_handshake_timeout: Optional[float] = None,
    ) -> None:
        """Upgrade the connection to TLS (STARTTLS); the reader and writer go on over it."""
        protocol: Any = self._protocol  # type: ignore[attr-defined]
        server_side = getattr(protocol, "_client_connected_cb", None) is not None
        await self.drain()
        new = await start_tls(
            self.transport,
            protocol,
            sslcontext,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
        )
        self._transport = new
        protocol._transport = new
        protocol._over_ssl = True


class _StreamProtocol(asyncio.StreamReaderProtocol):
    """A server's ``StreamReaderProtocol`` whose writers are this module's ``StreamWriter``:
    the callback is wrapped, so the writer it gets (made by asyncio's ``connection_made``,
    which keeps no reference to it on newer Pythons) has ``start_tls`` in C.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        client_connected_cb: Callable[[asyncio.StreamReader, StreamWriter], Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Any:
            if type(w) is asyncio.StreamWriter:
                w.__class__ = StreamWriter
            return client_connected_cb(r, cast(StreamWriter, w))

        super().__init__(reader, connected, loop=loop)


async def open_connection(
    host: str,
    port: int,
    *,
    ssl: Any = None,
    server_hostname: Optional[str] = None,
    limit: int = 2**16,
    **kw: Any,
) -> tuple[asyncio.StreamReader, StreamWriter]:
    """``asyncio.open_connection`` on uvssl: ``(StreamReader, StreamWriter)``; the keywords of
    ``create_connection`` apply.
    """
    aloop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=aloop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=aloop)
    transport, _ = await create_connection(
        lambda: protocol, host, port, ssl=ssl, server_hostname=server_hostname, **kw
    )
    writer = StreamWriter(transport, protocol, reader, aloop)
    return reader, writer


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, StreamWriter], Any],
    host: Optional[str] = None,
    port: int = 0,
    *,
    ssl: Any = None,
    reuse_port: bool = False,
    backlog: int = -1,
    proxy_protocol: bool = False,
    limit: int = 2**16,
    **kw: Any,
) -> Server:
    """``asyncio.start_server`` on uvssl: ``client_connected_cb(reader, writer)`` (a plain
    function or a coroutine function) for every connection; the keywords of ``create_server``
    apply.
    """
    aloop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=aloop)
        return _StreamProtocol(reader, client_connected_cb, aloop)

    return await create_server(
        factory,
        host,
        port,
        ssl=ssl,
        reuse_port=reuse_port,
        backlog=backlog,
        proxy_protocol=proxy_protocol,
        **kw,
    )


async def start_tls(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    sslcontext: Any,
    *,
    server_side: bool = False,
    server_hostname: Optional[str] = None,
    ssl_handshake_timeout: Optional[float] = None,
) -> Transport:
    """Upgrade a plain ``Transport`` to TLS (STARTTLS) and return the new transport once the
    handshake is done; ``protocol`` goes on with it (``connection_made`` is not called again).

    ``sslcontext``: any form ``attach_ssl``'s ``ssl_ctx`` takes (a ``uvssl.Context``, an
    ``ssl.SSLContext``, a raw pointer, True for a default context). The old transport must not
    be used afterwards. A failed handshake raises its ``SslFailure`` and closes the connection;
    cancelling closes it too.
    """
    if not isinstance(transport, Transport):
        raise TypeError(f"transport must be a uvssl.aio Transport, not {type(transport).__name__}")
    sock = transport._sock
    if isinstance(sock, SslSocket):
        raise ValueError("the transport already speaks TLS")
    if transport.is_closing():
        raise RuntimeError("the transport is closing; cannot start TLS on it")
    h = transport._host
    waiter: asyncio.Future[Transport] = h.aloop.create_future()
    server = transport._hand_over()

    def handshake_done() -> None:
        if waiter.done():
            return
        try:
            new = Transport(
                h, tls_sock, protocol, server=server, sslcontext=sslcontext, server_side=server_side
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the awaiting coroutine
            tls_sock.close(force=True)
            waiter.set_exception(exc)
            return
        waiter.set_result(new)

    def handshake_failed(exc: BaseException) -> None:
        if not waiter.done():
            waiter.set_exception(exc)
        if not tls_sock.closed:
            tls_sock.close(force=True)

    sock.read_cb = None
    sock.event_cb = handshake_failed
    try:
        tls_sock: Any = attach_ssl(
            sock,
            ssl_ctx=sslcontext,
            ssl_side="server" if server_side else "client",
            tlsext_host_name=None if server_side else server_hostname,
            handshake_timeout=ssl_handshake_timeout,
        )
    except BaseException:
        sock.close(force=True)
        raise
    tls_sock.__class__ = _AioSslSocket
    tls_sock._aio_handshake = handshake_done
    return await _connection(waiter, tls_sock, lambda made: made)
