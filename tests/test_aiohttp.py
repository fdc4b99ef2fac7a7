"""aiohttp's web server over HTTPS through uvssl.aio, on asyncio's loop and on uvloop's.

The application (``/hello``, ``/big``: 10 MB, ``/ws``: a websocket echo, ``/tls``: what the
handler sees of the connection) is served by ``uvssl.aio.create_server(runner.server, ...)``;
the TLS handshake, encryption and the sockets are uvssl's, the HTTP is aiohttp's. The clients
are independent of uvssl: the standard library's ``http.client`` / ``urllib.request`` in a
worker thread, and aiohttp's own client (on asyncio's transports) for the websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import socket
import ssl
import struct
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Callable, Optional

import pytest
from tls_support import Certs, stdlib_client_context, stdlib_server_context

import uvssl
import uvssl.aio

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install aiohttp)")
from aiohttp import web  # noqa: E402

pytestmark = pytest.mark.timeout(120)

STEP = 60.0  # seconds any one exchange may take (generous: the suite also runs under ASan)
BIG = hashlib.shake_256(b"uvssl aiohttp big body").digest(10 * 1024 * 1024)
BIG_SHA256 = hashlib.sha256(BIG).hexdigest()


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
    return uvloop.new_event_loop  # type: ignore[no-any-return]


@pytest.fixture(params=["asyncio", "uvloop"])
def new_loop(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """How to make the host event loop: asyncio's own, or uvloop's."""
    if request.param == "uvloop":
        return _uvloop_factory()
    return asyncio.new_event_loop


def run(
    new_loop: Callable[[], asyncio.AbstractEventLoop], main: Callable[[], Awaitable[Any]]
) -> Any:
    """Run ``main()`` on a fresh loop, bounded in time; fail if the loop's exception handler
    was called (a protocol callback raised, a transport hit a fatal error)."""
    loop = new_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def bounded() -> Any:
        return await asyncio.wait_for(main(), 4 * STEP)

    try:
        result = loop.run_until_complete(bounded())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    assert reported == [], f"the event loop reported errors: {reported}"
    return result


def make_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello from aiohttp")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def tls(request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        sslobj = transport.get_extra_info("ssl_object")
        peercert = transport.get_extra_info("peercert")
        info = {
            "secure": request.secure,
            "scheme": request.scheme,
            "sslcontext": transport.get_extra_info("sslcontext") is not None,
            "version": sslobj.version() if sslobj is not None else None,
            "cipher": transport.get_extra_info("cipher"),
            "peercert": peercert,
            "peername": list(transport.get_extra_info("peername")),
            "write_buffer": [
                transport.get_write_buffer_size(),
                *transport.get_write_buffer_limits(),
            ],
        }
        return web.json_response(info)

    async def upload(request: web.Request) -> web.Response:
        # aiohttp pauses the transport's reading while its body buffer is full
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
            if size % (1024 * 1024) < 64 * 1024:
                await asyncio.sleep(0)  # a slow consumer: let the buffer fill
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def stream(request: web.Request) -> web.StreamResponse:
        # chunked, written piece by piece: each write waits for the transport to drain
        assert request.transport is not None
        request.transport.set_write_buffer_limits(high=256 * 1024)  # larger pieces in flight
        assert request.transport.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        for i in range(0, len(BIG), 100_000):
            await resp.write(BIG[i : i + 100_000])
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str("echo: " + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/big", big)
    app.router.add_get("/tls", tls)
    app.router.add_get("/ws", ws)
    app.router.add_post("/upload", upload)
    app.router.add_get("/stream", stream)
    return app


@contextlib.asynccontextmanager
async def serving(ssl_ctx: Any) -> AsyncIterator[int]:
    """The application served through uvssl.aio on 127.0.0.1; yields the port. On the way
    out: aiohttp closes its connections, the server stops and waits for them to be gone."""
    runner = web.AppRunner(make_app())
    await runner.setup()
    assert runner.server is not None  # aiohttp's request handler factory
    server = await uvssl.aio.create_server(runner.server, "127.0.0.1", 0, ssl=ssl_ctx)
    try:
        yield server.port
    finally:
        server.close()
        await asyncio.wait_for(runner.cleanup(), STEP)
        await asyncio.wait_for(server.wait_closed(), STEP)
        assert not server.is_serving()
        assert server.sockets == ()


def _https(port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=STEP)


# -- plain requests, keep-alive, a large body ---------------------------------------------------


def test_keep_alive_200_requests_on_one_connection(
    new_loop: Callable[[], asyncio.AbstractEventLoop], server_ctx: uvssl.Context, certs: Certs
) -> None:
    client_ctx = stdlib_client_context(certs)

    def client(port: int) -> tuple[list[int], list[bytes], set[int], set[Any], list[Any]]:
        statuses: list[int] = []
        bodies: list[bytes] = []
        sockets: set[int] = set()
        local: set[Any] = set()
        peers: list[Any] = []
        conn = _https(port, client_ctx)
        try:
            for _ in range(200):
                conn.request("GET", "/hello")
                resp = conn.getresponse()
                bodies.append(resp.read())
                statuses.append(resp.status)
                assert conn.sock is not None, "the server closed the keep-alive connection"
                sockets.add(id(conn.sock))
                local.add(conn.sock.getsockname())
            conn.request("GET", "/tls")
            resp = conn.getresponse()
            peers.append(json.loads(resp.read())["peername"])
            local.add(conn.sock.getsockname())
        finally:
            conn.close()
        return statuses, bodies, sockets, local, peers

    async def main() -> Any:
        async with serving(server_ctx) as port:
            return await asyncio.wait_for(asyncio.to_thread(client, port), STEP)

    statuses, bodies, sockets, local, peers = run(new_loop, main)
    assert statuses == [200] * 200
    assert set(bodies) == {b"hello from aiohttp"}
    assert len(sockets) == 1 and len(local) == 1, "http.client opened more than one connection"
    # the server saw the same connection: its peer is the client's one local address
    assert [tuple(p) for p in peers] == [local.pop()]


@pytest.mark.parametrize("form", ["uvssl.Context", "ssl.SSLContext"])
def test_urllib_hello_and_10_mb_body(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    server_ctx: uvssl.Context,
    certs: Certs,
    form: str,
) -> None:
    client_ctx = stdlib_client_context(certs)
    ctx: Any = server_ctx if form == "uvssl.Context" else stdlib_server_context(certs)

    def fetch(url: str) -> tuple[int, str, bytes]:
        with urllib.request.urlopen(url, context=client_ctx, timeout=STEP) as resp:
            return resp.status, resp.headers.get("Content-Length", ""), resp.read()

    async def main() -> Any:
        async with serving(ctx) as port:
            base = f"https://127.0.0.1:{port}"
            hello = await asyncio.to_thread(fetch, base + "/hello")
            big = await asyncio.to_thread(fetch, base + "/big")
            return hello, big

    hello, (status, length, body) = run(new_loop, main)
    assert hello == (200, "18", b"hello from aiohttp")
    assert status == 200 and length == str(len(BIG))
    assert len(body) == len(BIG)
    assert hashlib.sha256(body).hexdigest() == BIG_SHA256


def test_big_body_to_several_clients_at_once(
    new_loop: Callable[[], asyncio.AbstractEventLoop], server_ctx: uvssl.Context, certs: Certs
) -> None:
    """Four clients fetch the 10 MB body at the same time: the writes of four connections are
    held back by flow control and interleave, and every body arrives intact."""
    client_ctx = stdlib_client_context(certs)

    def fetch(port: int) -> str:
        conn = _https(port, client_ctx)
        try:
            conn.request("GET", "/big")
            resp = conn.getresponse()
            assert resp.status == 200
            return hashlib.sha256(resp.read()).hexdigest()
        finally:
            conn.close()

    async def main() -> list[str]:
        async with serving(server_ctx) as port:
            jobs = [asyncio.to_thread(fetch, port) for _ in range(4)]
            return list(await asyncio.wait_for(asyncio.gather(*jobs), 2 * STEP))

    assert run(new_loop, main) == [BIG_SHA256] * 4


def test_10_mb_upload_and_streamed_download(
    new_loop: Callable[[], asyncio.AbstractEventLoop], server_ctx: uvssl.Context, certs: Certs
) -> None:
    """A 10 MB request body (aiohttp pauses and resumes the transport's reading) and a 10 MB
    chunked response written in 100 kB pieces (each write waits for the transport's buffer to
    drain), both on one keep-alive connection."""
    client_ctx = stdlib_client_context(certs)

    def exchange(port: int) -> tuple[dict[str, Any], int, str, Optional[str]]:
        conn = _https(port, client_ctx)
        try:
            conn.request("POST", "/upload", body=BIG)
            resp = conn.getresponse()
            assert resp.status == 200
            uploaded = json.loads(resp.read())
            conn.request("GET", "/stream")
            resp = conn.getresponse()
            body = resp.read()
            return (
                uploaded,
                resp.status,
                hashlib.sha256(body).hexdigest(),
                resp.getheader("Transfer-Encoding"),
            )
        finally:
            conn.close()

    async def main() -> Any:
        async with serving(server_ctx) as port:
            return await asyncio.wait_for(asyncio.to_thread(exchange, port), STEP)

    uploaded, status, digest, encoding = run(new_loop, main)
    assert uploaded == {"size": len(BIG), "sha256": BIG_SHA256}
    assert (status, encoding, digest) == (200, "chunked", BIG_SHA256)


def test_client_gone_mid_response(
    new_loop: Callable[[], asyncio.AbstractEventLoop], server_ctx: uvssl.Context, certs: Certs
) -> None:
    """Clients that drop the connection in the middle of a 10 MB response (a TCP reset, and a
    plain close) end that request only: the server goes on serving, and shuts down cleanly."""
    client_ctx = stdlib_client_context(certs)

    def walk_away(port: int, reset: bool) -> None:
        conn = _https(port, client_ctx)
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        assert resp.status == 200 and len(resp.read(200_000)) == 200_000
        assert conn.sock is not None
        if reset:  # RST instead of FIN
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
        conn.close()

    def hello(port: int) -> bytes:
        conn = _https(port, client_ctx)
        try:
            conn.request("GET", "/hello")
            return conn.getresponse().read()
        finally:
            conn.close()

    async def main() -> list[bytes]:
        async with serving(server_ctx) as port:
            replies = []
            for reset in (True, False, True):
                await asyncio.to_thread(walk_away, port, reset)
                replies.append(await asyncio.to_thread(hello, port))
            return replies

    assert run(new_loop, main) == [b"hello from aiohttp"] * 3


# -- what a handler sees of the TLS connection -------------------------------------------------


def test_handler_sees_tls_and_the_client_certificate(
    new_loop: Callable[[], asyncio.AbstractEventLoop], certs: Certs
) -> None:
    server_ctx = uvssl.Context.server(
        certificate=str(certs.server_cert),
        key=str(certs.server_key),
        ca_file=str(certs.ca),
        verify="required",
    )
    client_ctx = stdlib_client_context(certs, client_cert=True)

    def fetch(port: int) -> tuple[dict[str, Any], Optional[str], Any]:
        conn = _https(port, client_ctx)
        try:
            conn.request("GET", "/tls")
            resp = conn.getresponse()
            assert resp.status == 200
            assert isinstance(conn.sock, ssl.SSLSocket)
            info = json.loads(resp.read())
            return info, conn.sock.version(), conn.sock.cipher()
        finally:
            conn.close()

    async def main() -> Any:
        async with serving(server_ctx) as port:
            return await asyncio.to_thread(fetch, port)

    info, version, cipher = run(new_loop, main)
    assert info["secure"] is True
    assert info["scheme"] == "https"
    assert info["sslcontext"] is True
    assert info["version"] == version
    assert tuple(info["cipher"]) == tuple(cipher)
    # the client certificate as the standard library decodes it (its own test helper), in
    # JSON's shapes (lists for tuples): what an aiohttp handler gets from any asyncio server
    expected = json.loads(json.dumps(ssl._ssl._test_decode_cert(str(certs.client_cert))))  # type: ignore[attr-defined]
    assert info["peercert"] == expected
    size, low, high = info["write_buffer"]
    assert size >= 0 and 0 <= low <= high
    assert ["DNS", "client.example"] in info["peercert"]["subjectAltName"]


def test_plain_http_is_not_secure(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    def fetch(port: int) -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=STEP) as resp:
            return resp.status, resp.read()

    async def main() -> Any:
        async with serving(None) as port:
            return await asyncio.to_thread(fetch, port)

    assert run(new_loop, main) == (200, b"hello from aiohttp")


# -- websocket -----------------------------------------------------------------------------------


def test_websocket_echo(
    new_loop: Callable[[], asyncio.AbstractEventLoop], server_ctx: uvssl.Context, certs: Certs
) -> None:
    client_ctx = stdlib_client_context(certs)
    blob = BIG[: 1024 * 1024]

    async def main() -> tuple[list[str], bytes, Any]:
        async with serving(server_ctx) as port:
            url = f"wss://127.0.0.1:{port}/ws"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url, ssl=client_ctx) as ws:
                    texts = []
                    for i in range(50):
                        await ws.send_str(f"message {i}")
                        texts.append(await ws.receive_str(timeout=STEP))
                    await ws.send_bytes(blob)
                    echoed = await ws.receive_bytes(timeout=STEP)
                    await ws.close()
                    return texts, echoed, ws.close_code

    texts, echoed, close_code = run(new_loop, main)
    assert texts == [f"echo: message {i}" for i in range(50)]
    assert echoed == blob
    assert close_code == 1000


# -- shutdown ------------------------------------------------------------------------------------


def test_cleanup_closes_idle_keep_alive_connections(
    new_loop: Callable[[], asyncio.AbstractEventLoop], server_ctx: uvssl.Context, certs: Certs
) -> None:
    """A client keeps its connection open after a response; the runner's cleanup closes it
    (close_notify, then FIN), and the server's wait_closed returns once it is gone."""
    client_ctx = stdlib_client_context(certs)

    def first_request(port: int) -> http.client.HTTPSConnection:
        conn = _https(port, client_ctx)
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"hello from aiohttp")
        return conn

    def after_shutdown(conn: http.client.HTTPSConnection) -> bytes:
        assert conn.sock is not None
        try:
            return conn.sock.recv(100)
        finally:
            conn.close()

    async def main() -> bytes:
        async with serving(server_ctx) as port:
            conn = await asyncio.to_thread(first_request, port)
        # serving() returned: cleanup and wait_closed are done, the connection is closed
        return await asyncio.to_thread(after_shutdown, conn)

    assert run(new_loop, main) == b""
