r"""An aiohttp application served over HTTPS by uvssl (runnable).

aiohttp does the HTTP; uvssl.aio does the sockets and TLS, in C, inside the same asyncio loop.
The one line that differs from a stock aiohttp deployment is the server:

    runner = web.AppRunner(app)
    await runner.setup()
    server = await uvssl.aio.create_server(runner.server, host, port, ssl=context)

(instead of ``web.TCPSite(runner, host, port, ssl_context=...)``). ``runner.server`` is
aiohttp's request-handler factory, an asyncio protocol factory, so it runs unchanged.

    python examples/aiohttp_https.py                         # throwaway trustme certificates
    python examples/aiohttp_https.py --cert chain.pem --key key.pem --port 8443
    python examples/aiohttp_https.py --uvloop --requests 3   # on uvloop; stop after 3 requests

Routes: ``/`` says hello with the TLS version and cipher, ``/ws`` echoes websocket messages.
Without ``--cert`` it makes a throwaway CA with trustme (pip install trustme) and prints where
the CA certificate is, for ``curl --cacert``. Ctrl-C, SIGTERM or ``--requests N`` stop it:
aiohttp closes its connections, then the server closes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from typing import Any

from aiohttp import WSMsgType, web

import uvssl
import uvssl.aio


def make_app(served: list[int], stop: asyncio.Event, limit: int) -> web.Application:
    """The application: ``/`` and ``/ws``; ``stop`` is set after ``limit`` requests (0: never)."""

    async def hello(request: web.Request) -> web.Response:
        sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
        tls = f"{sslobj.version()}, {sslobj.cipher()[0]}" if sslobj is not None else "no TLS"
        return web.Response(text=f"Hello from aiohttp on uvssl ({tls})\n")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            served[0] += 1
            if limit and served[0] >= limit:
                stop.set()

    app = web.Application(middlewares=[count])
    app.router.add_get("/", hello)
    app.router.add_get("/ws", ws)
    return app


def throwaway_certificates() -> tuple[str, str, str]:
    """A trustme CA and a certificate for localhost / 127.0.0.1 / ::1, written to a temporary
    directory: (chain file, key file, CA file).
    """
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    tmp = tempfile.mkdtemp(prefix="uvssl-aiohttp-")
    chain, key, cafile = (os.path.join(tmp, n) for n in ("chain.pem", "key.pem", "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(chain)
    cert.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(cafile)
    return chain, key, cafile


async def serve(args: argparse.Namespace) -> None:
    """Serve until a signal or ``--requests`` requests, then shut down cleanly."""
    if args.cert:
        chain, key = args.cert, args.key or args.cert
    else:
        chain, key, cafile = throwaway_certificates()
        print(f"CA certificate: {cafile}", flush=True)
    context = uvssl.Context.server(certificate=chain, key=key)

    stop = asyncio.Event()
    served = [0]
    runner = web.AppRunner(make_app(served, stop, args.requests))
    await runner.setup()
    assert runner.server is not None
    server = await uvssl.aio.create_server(runner.server, args.host, args.port, ssl=context)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving on https://{host}:{server.port}/", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()  # stop accepting
        await runner.cleanup()  # aiohttp finishes and closes its connections
        await asyncio.wait_for(server.wait_closed(), 30)
    print(f"served {served[0]} requests; stopped", flush=True)


def main(argv: list[str]) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description="aiohttp over HTTPS on uvssl.aio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0: the system picks one")
    parser.add_argument("--cert", help="certificate chain file (PEM); default: throwaway")
    parser.add_argument("--key", help="private key file (PEM); default: in --cert")
    parser.add_argument("--requests", type=int, default=0, help="stop after N requests")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args(argv)
    if args.key and not args.cert:
        parser.error("--key needs --cert")
    loop: asyncio.AbstractEventLoop
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(serve(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main(sys.argv[1:])
