"""Python echo servers that uvssl's benchmark compares against.

Run as ``python -m uvssl.bench.py_servers --impl asyncio|uvloop|aiofastnet|uvssl-aio --host H
--port P (--cert C --key K | --plain)``. Once listening, the server prints
``READY <port>`` on stdout and flushes; SIGTERM or SIGINT stop it cleanly (exit 0).
With ``--udp`` (asyncio and uvloop only) the server is a UDP echo instead: an
:class:`asyncio.DatagramProtocol` that sends every datagram back to its sender.
``--impl aiofastnet`` exits with status 3 and ``aiofastnet not available`` on stderr when
the package is not installed, so a runner can report it as skipped.

All four use the same :class:`EchoProtocol` (an :class:`asyncio.Protocol` that writes back
what it receives, with flow control) and a stdlib :class:`ssl.SSLContext`:

- ``asyncio``: the stock event loop and its ``ssl`` transport.
- ``uvloop``: uvloop's event loop (and its own TLS transport).
- ``aiofastnet``: the stock event loop with ``aiofastnet.create_server``, aiofastnet's
  drop-in replacement of ``loop.create_server``.
- ``uvssl-aio``: the stock event loop with ``uvssl.aio.create_server``: uvssl's loop runs
  inside the asyncio loop and the sockets and TLS are uvssl's C; the protocol sees asyncio
  transports. No UDP server (``--udp`` exits with status 3).

This module imports nothing from uvssl at module level (``uvssl.aio`` only for
``--impl uvssl-aio``), so it runs even as a plain file (``python uvssl/bench/py_servers.py ...``)
while uvssl itself is not built.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from typing import Any, Callable, Coroutine, List, Optional, Set, cast

__all__ = [
    "EXIT_UNAVAILABLE",
    "EchoProtocol",
    "UdpEchoProtocol",
    "main",
    "make_server_context",
    "serve",
    "serve_udp",
]

#: Exit status when the requested implementation is not installed.
EXIT_UNAVAILABLE = 3

IMPLS = ("asyncio", "uvloop", "aiofastnet", "uvssl-aio")


class EchoProtocol(asyncio.Protocol):
    """Write every received chunk back, with flow control.

    When the transport's write buffer goes above its high-water mark the event loop calls
    :meth:`pause_writing`; the protocol then stops reading until :meth:`resume_writing`,
    so a client that sends faster than it reads cannot grow the server's memory without
    bound.
    """

    def __init__(self, live: Set[EchoProtocol]) -> None:
        self._live = live
        self._transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport and register the connection."""
        # Not an isinstance check: uvloop's TLS transport does not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._live.add(self)

    def data_received(self, data: bytes) -> None:
        """Echo *data*."""
        if self._transport is not None:
            self._transport.write(data)

    def eof_received(self) -> bool:
        """Close on EOF (returning False closes the transport)."""
        return False

    def pause_writing(self) -> None:
        """The write buffer is above the high-water mark: stop reading."""
        t = self._transport
        if t is not None and not t.is_closing():
            t.pause_reading()

    def resume_writing(self) -> None:
        """The write buffer drained below the low-water mark: read again."""
        t = self._transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        """Forget the transport."""
        self._transport = None
        self._live.discard(self)

    def abort(self) -> None:
        """Drop the connection at once (used at shutdown)."""
        if self._transport is not None:
            self._transport.abort()


class UdpEchoProtocol(asyncio.DatagramProtocol):
    """Send every datagram back to its sender."""

    def __init__(self) -> None:
        self._transport: Optional[asyncio.DatagramTransport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport."""
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Echo *data* to *addr*."""
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors for clients that went away are not fatal to an echo server."""


async def serve_udp(host: str, port: int) -> None:
    """Serve UDP echo until SIGTERM or SIGINT; prints ``READY <port>`` once bound."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    transport, _ = await loop.create_datagram_endpoint(UdpEchoProtocol, local_addr=(host, port))
    print(f"READY {transport.get_extra_info('sockname')[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        transport.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def make_server_context(cert: str, key: str) -> ssl.SSLContext:
    """Return a TLS 1.2+ server context for *cert*/*key*; session tickets stay on."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


CreateServer = Callable[..., Coroutine[Any, Any, asyncio.AbstractServer]]


def _server_factory(impl: str, loop: asyncio.AbstractEventLoop) -> CreateServer:
    """Return the ``create_server`` coroutine function to use for *impl*."""
    if impl == "aiofastnet":
        import aiofastnet  # type: ignore[import-not-found,unused-ignore]

        create = aiofastnet.create_server

        async def create_server(*args: Any, **kwargs: Any) -> asyncio.AbstractServer:
            server: asyncio.AbstractServer = await create(loop, *args, **kwargs)
            return server

        return create_server
    if impl == "uvssl-aio":
        import uvssl.aio

        return uvssl.aio.create_server
    return loop.create_server


async def serve(impl: str, host: str, port: int, ssl_context: Optional[ssl.SSLContext]) -> None:
    """Serve the echo protocol until SIGTERM or SIGINT.

    Prints ``READY <port>`` once listening.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    live: Set[EchoProtocol] = set()
    create_server = _server_factory(impl, loop)
    server = await create_server(
        lambda: EchoProtocol(live), host, port, ssl=ssl_context, backlog=4096
    )
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"READY {bound}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        for proto in list(live):
            proto.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), timeout=2.0)
        except asyncio.TimeoutError:
            pass
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _run(impl: str, coro: Coroutine[Any, Any, None]) -> None:
    """Run *coro* on the event loop *impl* asks for."""
    if impl == "uvloop":
        import uvloop

        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(coro)
            return
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(coro)


def _available(impl: str) -> bool:
    """Return whether the modules *impl* needs can be imported."""
    try:
        if impl == "uvloop":
            import uvloop  # noqa: F401
        elif impl == "aiofastnet":
            import aiofastnet  # type: ignore[import-not-found,unused-ignore]

            if not callable(getattr(aiofastnet, "create_server", None)):
                return False
    except ImportError:
        return False
    return True


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the command line and run the selected server; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m uvssl.bench.py_servers",
        description="Python echo servers for uvssl's benchmark.",
    )
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cert", help="PEM certificate chain (TLS)")
    parser.add_argument("--key", help="PEM private key (TLS)")
    parser.add_argument("--plain", action="store_true", help="plain TCP, no TLS")
    parser.add_argument("--udp", action="store_true", help="UDP echo (asyncio, uvloop only)")
    args = parser.parse_args(argv)
    if args.udp:
        if args.impl in ("aiofastnet", "uvssl-aio"):
            print(f"{args.impl} has no UDP server", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if not _available(args.impl):
            print(f"{args.impl} not available", file=sys.stderr)
            return EXIT_UNAVAILABLE
        try:
            _run(args.impl, serve_udp(args.host, args.port))
        except KeyboardInterrupt:
            pass
        return 0

    if (args.cert or args.key) if args.plain else not (args.cert and args.key):
        parser.error("give either --cert and --key, or --plain")
    if not _available(args.impl):
        print(f"{args.impl} not available", file=sys.stderr)
        return EXIT_UNAVAILABLE
    ctx = None if args.plain else make_server_context(args.cert, args.key)
    try:
        _run(args.impl, serve(args.impl, args.host, args.port, ctx))
    except KeyboardInterrupt:  # a SIGINT before the handlers were installed
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
