"""HTTPS "hello" servers on aiohttp for the bench's ``https-hello`` cell.

Run as ``python -m uvssl.bench.aiohttp_servers --impl uvssl|uvloop|aiofastnet --host H
--port P --cert C --key K``. Once listening, the server prints ``READY <port>`` on stdout and
flushes; SIGTERM or SIGINT stop it cleanly (exit 0). When aiohttp (or the implementation's
own package) is not installed it exits with status 3 and says what is missing on stderr, so
the runner reports the server as skipped.

Theory of operation
-------------------
Every implementation serves the same aiohttp application (one ``GET /`` route answering
``hello``, access log off) with the same stdlib :class:`ssl.SSLContext` (the echo servers'
``make_server_context``); only what carries
aiohttp's protocol differs:

- ``uvssl``: the stock asyncio loop; the ``AppRunner``'s request handler factory
  (``runner.server``, a protocol factory) is served by ``uvssl.aio.create_server``, so the
  sockets and TLS are uvssl's C and aiohttp sees asyncio transports.
- ``uvloop``: aiohttp's own ``web.TCPSite`` with ``ssl_context`` on uvloop's loop (uvloop's
  TLS transport).
- ``aiofastnet``: ``web.TCPSite`` on the stock loop after ``aiofastnet.patch_loop()``, which
  replaces the loop's ``create_server`` (and the rest of its networking) with aiofastnet's.

This module imports nothing from uvssl at module level (``uvssl.aio`` only for
``--impl uvssl``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from typing import Any, Callable, List, Optional

from .py_servers import _run, make_server_context

__all__ = ["EXIT_UNAVAILABLE", "IMPLS", "main", "make_app", "serve"]

#: Exit status when the requested implementation (or aiohttp) is not installed.
EXIT_UNAVAILABLE = 3

IMPLS = ("uvssl", "uvloop", "aiofastnet")

#: The body every request gets.
BODY = b"hello"


def make_app() -> Any:
    """The benchmarked application: ``GET /`` answers ``hello`` (text/plain)."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def serve(impl: str, host: str, port: int, ssl_context: ssl.SSLContext) -> None:
    """Serve the application over HTTPS until SIGTERM or SIGINT.

    Prints ``READY <port>`` once listening.
    """
    from aiohttp import web

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if impl == "aiofastnet":
        import aiofastnet  # type: ignore[import-not-found,unused-ignore]

        aiofastnet.patch_loop(loop)
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    close: Optional[Callable[[], None]] = None
    if impl == "uvssl":
        import uvssl.aio

        handler = runner.server  # aiohttp's protocol factory, made by setup()
        assert handler is not None
        server = await uvssl.aio.create_server(handler, host, port, ssl=ssl_context, backlog=4096)
        bound = server.port
        close = server.close
    else:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=4096)
        await site.start()
        bound = runner.addresses[0][1]
    print(f"READY {bound}", flush=True)
    try:
        await stop.wait()
    finally:
        if close is not None:
            close()
        try:
            await asyncio.wait_for(runner.cleanup(), timeout=3.0)
        except asyncio.TimeoutError:
            pass
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _missing(impl: str) -> Optional[str]:
    """The module *impl* needs that cannot be imported, or None."""
    needed = ["aiohttp"]
    if impl in ("uvloop", "aiofastnet"):
        needed.append(impl)
    for name in needed:
        try:
            module = __import__(name)
        except ImportError:
            return name
        if name == "aiofastnet" and not callable(getattr(module, "patch_loop", None)):
            return "aiofastnet.patch_loop"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the command line and run the selected server; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m uvssl.bench.aiohttp_servers",
        description="aiohttp HTTPS hello servers for uvssl's benchmark.",
    )
    parser.add_argument("--impl", choices=IMPLS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cert", required=True, help="PEM certificate chain")
    parser.add_argument("--key", required=True, help="PEM private key")
    args = parser.parse_args(argv)
    missing = _missing(args.impl)
    if missing is not None:
        print(f"{missing} not available (pip install {missing.split('.')[0]})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        _run(
            args.impl,
            serve(args.impl, args.host, args.port, make_server_context(args.cert, args.key)),
        )
    except KeyboardInterrupt:  # a SIGINT before the handlers were installed
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
