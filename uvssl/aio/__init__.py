"""uvssl under asyncio: uvssl's loop runs inside the running asyncio loop.

``create_connection`` / ``create_server`` give asyncio transports whose data path (sockets,
TLS) is uvssl's C; ``open_connection`` / ``start_server`` give asyncio's own streams over them.
The asyncio loop may be asyncio's or uvloop's; both loops share the thread (see ``_host`` for
how). uvssl's callback API (``uvssl.tcp_connect``, ``uvssl.delay``, ...) also works inside a
coroutine once ``uvssl.aio`` runs there: ``await uvssl.aio.attach()`` makes the host first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._host import host as _host
from .api import create_connection, create_server, open_connection, start_server
from .server import Server
from .transport import SslObject, Transport

__all__ = [
    "Server",
    "SslObject",
    "Transport",
    "attach",
    "create_connection",
    "create_server",
    "open_connection",
    "start_server",
]


async def attach() -> Any:
    """Run uvssl's loop inside the running asyncio loop (if it does not already) and return
    it (a ``uvssl.Loop``): from here on ``uvssl.get_loop()`` and the callback API work in
    this coroutine's thread.
    """
    return _host(asyncio.get_running_loop()).loop
