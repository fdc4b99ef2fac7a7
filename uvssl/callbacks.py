"""The types of uvssl's callbacks, for annotating an application's own.

Each alias names what uvssl calls the callback with; the return value is ignored (``object``
accepts a callback that returns anything). A callback annotated with the parameter types
below type-checks against every function that takes it::

    def on_read(sock: uvssl.Socket, data: bytes) -> None: ...
    def on_event(ev: uvssl.SocketError) -> None: ...  # TcpEof, TcpRefused, SslFailure, ...

``event_cb`` always gets a ``SocketError`` (every uvssl error and the peer's EOF derive from
it), with the socket in ``ev.socket``; annotating the parameter as ``BaseException`` also
type-checks.
"""

from __future__ import annotations

from typing import Callable, Optional

from .context import ConfigureCallback, Context
from .errors import SocketError
from .tcp import AsyncStream, Socket, TcpServer
from .tls import SslSocket
from .udp import UdpSocket

__all__ = [
    "Address",
    "ReadCallback",
    "StreamReadCallback",
    "EventCallback",
    "ConnectCallback",
    "WriteCallback",
    "DrainCallback",
    "ShutdownDoneCallback",
    "SniCallback",
    "DatagramCallback",
    "ConfigureCallback",
]

#: A ``(host, port)`` pair, as in ``Socket.remote_address``.
Address = tuple[str, int]

#: ``read_cb(socket, data)``: the bytes that arrived (``stream=False``, the default).
ReadCallback = Callable[[Socket, bytes], object]

#: ``read_cb(socket, stream)`` with ``stream=True``: the socket's ``AsyncStream``.
StreamReadCallback = Callable[[Socket, AsyncStream], object]

#: ``event_cb(ev)``: an error or the peer's EOF (``TcpEof``); ``ev.socket`` is the socket.
EventCallback = Callable[[SocketError], object]

#: ``connect_cb(socket)``: connected (for TLS, after the handshake) or accepted.
ConnectCallback = Callable[[Socket], object]

#: ``write_cb(socket)``: everything written so far has reached the kernel.
WriteCallback = Callable[[Socket], object]

#: ``drain_cb(socket)``: the write buffer fell below the low-water mark.
DrainCallback = Callable[[Socket], object]

#: ``done_cb(server)`` of ``TcpServer.shutdown``: the last connection is gone.
ShutdownDoneCallback = Callable[[TcpServer], object]

#: ``read_cb(udp_socket, data, (host, port))`` of ``udp_socket``: one datagram and its sender.
DatagramCallback = Callable[[UdpSocket, bytes, Address], object]

#: ``sni_callback(ssl_socket, server_name)``: the context to use, or None to keep the current.
SniCallback = Callable[[SslSocket, Optional[str]], Optional[Context]]

# ConfigureCallback (from context.py): ``ctx_configure_callback(ptr)`` /
# ``ssl_configure_callback(ptr)`` get a cffi ``SSL_CTX *`` / ``SSL *`` that every
# ``uvssl.openssl.lib`` function takes as it is.
