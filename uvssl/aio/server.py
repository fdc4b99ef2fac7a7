"""The server object of ``uvssl.aio.create_server`` / ``start_server``.

An ``asyncio.AbstractServer`` over a uvssl ``TcpServer`` (or ``TcpSslServer``): it listens from
the moment it is made. ``close()`` stops listening and leaves open connections alone (as
asyncio's servers do); ``wait_closed()`` returns once the server is closed and every connection
it accepted has been lost.
"""

from __future__ import annotations

import asyncio
import socket as _socket
from typing import Any, Optional

from ..tcp import TcpServer


class Server(asyncio.AbstractServer):
    """A listening uvssl server seen from asyncio (``close``, ``wait_closed``,
    ``serve_forever``, ``sockets``, ``port``, ``async with``).
    """

    def __init__(self, host: Any) -> None:
        """Internal: made by ``create_server``; ``_listen`` gives it its uvssl server."""
        self._host = host
        self._aloop: asyncio.AbstractEventLoop = host.aloop
        self._srv: Optional[TcpServer] = None
        self._port = 0
        self._transports: set[Any] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._serving_forever: Optional[asyncio.Future[None]] = None
        self._sockets: Optional[tuple[_socket.socket, ...]] = None
        host.servers.add(self)

    def _listen(self, srv: TcpServer) -> None:
        self._srv = srv
        self._port = srv.port

    # -- connections -------------------------------------------------------------------------
    def _attach(self, transport: Any) -> None:
        self._transports.add(transport)

    def _detach(self, transport: Any) -> None:
        self._transports.discard(transport)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._srv is not None or self._transports:
            return
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _host_closing(self) -> None:
        """The asyncio loop is closing: the host frees the listener with every other uvssl
        handle; the socket objects of ``sockets`` close here (no ResourceWarning later).
        """
        self._srv = None
        if self._sockets is not None:
            for s in self._sockets:
                s.close()
            self._sockets = None

    # -- asyncio.AbstractServer --------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port it listens on (the one the system picked for port 0)."""
        return self._port

    @property
    def sockets(self) -> tuple[_socket.socket, ...]:
        """The listening socket, as a ``socket.socket`` over a duplicate of its descriptor
        (for ``getsockname()`` and options; uvssl keeps accepting on the original). Empty
        once closed.
        """
        if self._srv is None:
            return ()
        if self._sockets is None:
            self._sockets = (_socket.socket(fileno=_socket.dup(self._srv.fileno())),)
        return self._sockets

    def close(self) -> None:
        """Stop listening; connections already accepted stay open."""
        srv, self._srv = self._srv, None
        if srv is None:
            return
        if self._host.loop._ptr is not None:
            srv.close()
        if self._sockets is not None:
            for s in self._sockets:
                s.close()
            self._sockets = None
        fut = self._serving_forever
        if fut is not None and not fut.done():
            fut.cancel()
        self._serving_forever = None
        self._wake_waiters()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop the server runs in."""
        return self._aloop

    def is_serving(self) -> bool:
        """True until ``close()``."""
        return self._srv is not None

    async def start_serving(self) -> None:
        """Nothing to do: the server accepts from the moment it is made."""

    async def serve_forever(self) -> None:
        """Serve until cancelled; cancelling closes the server and waits for it."""
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._srv is None:
            raise RuntimeError(f"server {self!r} is closed")
        fut: asyncio.Future[None] = self._aloop.create_future()
        self._serving_forever = fut
        try:
            await fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    async def wait_closed(self) -> None:
        """Return once the server is closed and every connection it accepted is lost."""
        if self._srv is None and not self._transports:
            return
        waiter: asyncio.Future[None] = self._aloop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        state = "serving" if self._srv is not None else "closed"
        return f"<uvssl.aio.Server {state} port={self._port}>"
