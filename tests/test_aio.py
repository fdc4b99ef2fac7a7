"""uvssl.aio: asyncio transports, servers and streams over uvssl, on asyncio's own loop and on
uvloop, against uvssl.aio itself and against asyncio's own servers and clients on the same loop
(so every behaviour is checked against what asyncio does), on 127.0.0.1 with real OpenSSL."""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import socket
import ssl
import struct
import warnings
from collections.abc import Awaitable
from typing import Any, Callable, Optional

import pytest
from helpers import SLOWDOWN
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    Certs,
    PeerThread,
    free_port,
    listening_socket,
    recv_until,
    server_der,
    stdlib_client_context,
    stdlib_server_context,
)

import uvssl
import uvssl.aio

pytestmark = pytest.mark.timeout(60)

DEADLINE = 15.0 * SLOWDOWN  # seconds one test's coroutine may run


# -- running a coroutine on asyncio's loop or on uvloop's --------------------------------------


class Runner:
    """Runs a coroutine function in a fresh event loop of one kind, bounded in time. The loop's
    exception handler records what reaches it; unless told otherwise, the run fails if anything
    did (no error may be logged by a test that does not expect one)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.errors: list[dict[str, Any]] = []

    def new_loop(self) -> asyncio.AbstractEventLoop:
        if self.kind == "uvloop":
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
        return asyncio.new_event_loop()

    def _record(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def __call__(
        self,
        fn: Callable[[], Awaitable[Any]],
        *,
        timeout: float = DEADLINE,
        check_errors: bool = True,
    ) -> Any:
        async def main() -> Any:
            asyncio.get_running_loop().set_exception_handler(self._record)
            return await asyncio.wait_for(fn(), timeout)

        if self.kind == "asyncio":
            result = asyncio.run(main())
        else:
            import uvloop

            if hasattr(uvloop, "run"):
                result = uvloop.run(main())
            else:  # uvloop < 0.18
                loop = self.new_loop()
                try:
                    result = loop.run_until_complete(main())
                finally:
                    loop.close()
        if check_errors:
            assert not self.errors, f"errors reached the loop's exception handler: {self.errors}"
        return result


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """A runner for asyncio's own loop, then for uvloop's."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (the uvloop variants)")
    return Runner(request.param)


# -- protocols and peers ------------------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """Records the callbacks in order ("made", "data", "eof", "lost", "pause", "resume"; runs of
    data_received are one "data") and the bytes received."""

    keep_open = False  # what eof_received returns

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.made: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[Optional[BaseException]] = loop.create_future()
        self.pauses: list[int] = []  # the buffer size at each pause_writing
        self.resumes: list[int] = []  # and at each resume_writing
        self.flow = asyncio.Event()  # set at each of those calls
        self._arrived = asyncio.Event()

    def _note(self, what: str) -> None:
        if what != "data" or not self.events or self.events[-1] != "data":
            self.events.append(what)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._note("made")
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._note("data")
        self.data += data
        self._arrived.set()

    def eof_received(self) -> bool:
        self._note("eof")
        self.eof.set_result(None)
        self._arrived.set()
        return self.keep_open

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._note("lost")
        self.lost.set_result(exc)
        self._arrived.set()

    def pause_writing(self) -> None:
        self._note("pause")
        self.pauses.append(self.transport.get_write_buffer_size())
        self.flow.set()

    def resume_writing(self) -> None:
        self._note("resume")
        self.resumes.append(self.transport.get_write_buffer_size())
        self.flow.set()

    @property
    def writing_paused(self) -> bool:
        return len(self.pauses) > len(self.resumes)

    @property
    def flow_calls(self) -> int:
        return len(self.pauses) + len(self.resumes)

    async def wait_flow(self, seen: int) -> None:
        """Wait until there were more than ``seen`` pause_writing / resume_writing calls."""
        while self.flow_calls <= seen:
            self.flow.clear()
            await self.flow.wait()

    async def wait_bytes(self, n: int) -> bytes:
        """Wait until ``n`` bytes arrived (or the connection ended); return what arrived."""
        while len(self.data) < n and not self.lost.done() and not self.eof.done():
            self._arrived.clear()
            await self._arrived.wait()
        return bytes(self.data)


class Held(Recorder):
    """A peer that reads nothing until ``release()`` (reading paused from connection_made)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.pause_reading()
        # uvloop starts reading after connection_made returns: pause again once it has
        asyncio.get_running_loop().call_soon(self._hold)

    def _hold(self) -> None:
        if not self.transport.is_closing():
            # resume first: a pause before reading started is a no-op to asyncio's transport
            # before Python 3.10, which then starts reading anyway
            self.transport.resume_reading()
            self.transport.pause_reading()

    def release(self) -> None:
        self.transport.resume_reading()


async def held_peer(side: str, tls: str, certs: Certs) -> tuple[Any, int, list[Held]]:
    """A listening peer whose connections are ``Held``: asyncio's own server (``side`` "asyncio")
    or uvssl.aio's. Returns (server, port, the protocols made so far)."""
    made: list[Held] = []

    def factory() -> Held:
        made.append(Held())
        return made[-1]

    if side == "asyncio":
        srv: Any = await asyncio.get_running_loop().create_server(
            factory, LOCALHOST, 0, ssl=std_server_ctx(tls, certs)
        )
        return srv, int(srv.sockets[0].getsockname()[1]), made
    srv = await uvssl.aio.create_server(factory, LOCALHOST, 0, ssl=tls_pair(tls, certs)[0])
    return srv, srv.port, made


async def first(made: list[Held]) -> Held:
    """The first protocol a server made (waiting for it, bounded)."""
    for _ in range(1000):
        if made and made[0].made.done():
            await asyncio.sleep(0)  # its _hold has run
            return made[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the server made no connection")


def tls_pair(kind: str, certs: Certs) -> tuple[Any, Any]:
    """(server ssl=, client ssl=) for "plain", "uvssl" (uvssl.Context) or "stdlib"
    (ssl.SSLContext)."""
    if kind == "plain":
        return None, None
    if kind == "uvssl":
        return (
            uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.server_key)),
            uvssl.Context.client(ca_file=str(certs.ca)),
        )
    return stdlib_server_context(certs), stdlib_client_context(certs)


def std_server_ctx(tls: str, certs: Certs) -> Optional[ssl.SSLContext]:
    """The ssl= of an asyncio server for ``tls`` (asyncio's own servers take only an
    ssl.SSLContext)."""
    return None if tls == "plain" else stdlib_server_context(certs)


async def stdlib_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_ctx: Any = None,
) -> tuple[asyncio.AbstractServer, int]:
    """asyncio's own stream server on the running loop, and its port."""
    srv = await asyncio.start_server(handler, LOCALHOST, 0, ssl=ssl_ctx)
    return srv, int(srv.sockets[0].getsockname()[1])


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until EOF (or a reset)."""
    out = bytearray()
    try:
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            out += chunk
    except ConnectionError:
        pass
    return bytes(out)


async def close_writer(w: asyncio.StreamWriter) -> None:
    w.close()
    try:
        await w.wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass


async def open_uvssl(port: int, ssl_ctx: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await uvssl.aio.open_connection(LOCALHOST, port, ssl=ssl_ctx)


async def open_stdlib(port: int, ssl_ctx: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(LOCALHOST, port, ssl=ssl_ctx)


def pattern(n: int, seed: bytes) -> bytes:
    """``n`` bytes that differ at every position of a 32-byte period and between seeds."""
    block = hashlib.sha256(seed).digest()
    return (block * (n // len(block) + 1))[:n]


# -- 1. streams -----------------------------------------------------------------------------------

TLS_KINDS = ["plain", "uvssl", "stdlib"]


@pytest.mark.parametrize("tls", TLS_KINDS)
@pytest.mark.parametrize("ends", ["uvssl-uvssl", "uvssl-asyncio", "asyncio-uvssl"])
def test_streams_readline_readexactly(run: Runner, certs: Certs, tls: str, ends: str) -> None:
    """Lines and exact reads through a uvssl.aio stream server and client (or one of them
    replaced by asyncio's own), then both ends close and see EOF."""
    server_ssl, client_ssl = tls_pair(tls, certs)
    server_end, client_end = ends.split("-")
    if tls != "plain":  # asyncio's own end takes an ssl.SSLContext only
        std_server, std_client = tls_pair("stdlib", certs)
        server_ssl = std_server if server_end == "asyncio" else server_ssl
        client_ssl = std_client if client_end == "asyncio" else client_ssl

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line = await r.readline()
        w.write(line.upper())
        w.write(await r.readexactly(5) + b"\n")
        await w.drain()
        assert await r.read() == b""
        await close_writer(w)
        handled.append(True)

    handled: list[bool] = []

    async def main() -> None:
        if server_end == "uvssl":
            srv: Any = await uvssl.aio.start_server(handler, LOCALHOST, 0, ssl=server_ssl)
            port = srv.port
        else:
            srv, port = await stdlib_server(handler, server_ssl)
        opener = open_uvssl if client_end == "uvssl" else open_stdlib
        r, w = await opener(port, client_ssl)
        w.write(b"hello there\n12")
        await w.drain()
        assert await r.readline() == b"HELLO THERE\n"
        w.write(b"345")
        assert await r.readexactly(6) == b"12345\n"
        if w.can_write_eof():
            w.write_eof()
        else:
            assert tls != "plain"
            w.close()
        assert await r.read() == b""
        await close_writer(w)
        for _ in range(1000):
            if handled:
                break
            await asyncio.sleep(0.01)
        assert handled == [True]
        srv.close()
        await srv.wait_closed()

    run(main)


def test_tls_to_stdlib_server_thread(run: Runner, certs: Certs) -> None:
    """A uvssl.aio TLS client against a blocking stdlib ``ssl`` server in a thread: ALPN, a
    line each way, and the client's close is the server's clean end of the session."""
    ls = listening_socket()
    port = ls.getsockname()[1]
    sctx = stdlib_server_context(certs)
    sctx.set_alpn_protocols(["x-test", "http/1.1"])

    def serve() -> tuple[bytes, Optional[str], bytes]:
        conn, _ = ls.accept()
        with sctx.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(PEER_TIMEOUT)
            line = recv_until(tls, b"\n")
            tls.sendall(line.upper())
            rest = tls.recv(100)  # b"" once the client's close_notify came
            return line, tls.selected_alpn_protocol(), rest

    peer = PeerThread(serve)
    peer.start()

    async def main() -> None:
        r, w = await uvssl.aio.open_connection(
            LOCALHOST, port, ssl=uvssl.Context.client(ca_file=str(certs.ca)), alpn=["x-test"]
        )
        assert w.get_extra_info("ssl_object").selected_alpn_protocol() == "x-test"
        w.write(b"hello thread\n")
        assert await r.readline() == b"HELLO THREAD\n"
        await close_writer(w)

    try:
        run(main)
    finally:
        ls.close()
    assert peer.result() == (b"hello thread\n", "x-test", b"")


@pytest.mark.parametrize("tls", ["plain", "uvssl"])
def test_streams_10mb_both_ways(run: Runner, certs: Certs, tls: str) -> None:
    """10 MB each way at once, contents checked (the server also returns a digest of what it
    got)."""
    server_ssl, client_ssl = tls_pair(tls, certs)
    n = 10 * 1024 * 1024
    up, down = pattern(n, b"up"), pattern(n, b"down")

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(down)
        got = await r.readexactly(n)
        await w.drain()
        w.write(hashlib.sha256(got).digest())
        await w.drain()
        await close_writer(w)

    async def main() -> None:
        async with await uvssl.aio.start_server(handler, LOCALHOST, 0, ssl=server_ssl) as srv:
            r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port, ssl=client_ssl)
            w.write(up)
            got, _ = await asyncio.gather(r.readexactly(n), w.drain())
            assert got == down
            assert await r.readexactly(32) == hashlib.sha256(up).digest()
            assert await r.read() == b""
            await close_writer(w)

    run(main)


def test_server_port_sockets_and_async_with(run: Runner) -> None:
    """``server.port`` is the listening port (``sockets[0]`` says the same); leaving
    ``async with`` closes the server: new connections are refused."""

    async def main() -> None:
        async with await uvssl.aio.start_server(lambda r, w: None, LOCALHOST, 0) as srv:
            assert srv.is_serving()
            assert srv.port != 0
            assert srv.sockets[0].getsockname()[1] == srv.port
            assert srv.get_loop() is asyncio.get_running_loop()
            port = srv.port
        assert not srv.is_serving()
        assert srv.sockets == ()
        with pytest.raises(OSError):
            await asyncio.open_connection(LOCALHOST, port)

    run(main)


def test_serve_forever_cancelled_closes_server(run: Runner) -> None:
    """Cancelling ``serve_forever()`` ends it with CancelledError and closes the server."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_all(r)
        w.close()

    async def main() -> None:
        srv = await uvssl.aio.start_server(handler, LOCALHOST, 0)
        task = asyncio.ensure_future(srv.serve_forever())
        await asyncio.sleep(0.01)
        assert not task.done()
        r, w = await asyncio.open_connection(LOCALHOST, srv.port)  # it serves meanwhile
        w.write_eof()
        assert await r.read() == b""  # the server's side of it ended
        await close_writer(w)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):  # not a TimeoutError: it ends by itself
            await asyncio.wait_for(task, DEADLINE / 2)
        assert not srv.is_serving()
        with pytest.raises(OSError):
            await asyncio.open_connection(LOCALHOST, srv.port)
        with pytest.raises(RuntimeError):
            await srv.serve_forever()

    run(main)


def test_wait_closed_waits_for_connections(run: Runner) -> None:
    """After ``close()``, a connection already accepted goes on working and ``wait_closed()``
    returns only once it has ended."""
    writers: list[asyncio.StreamWriter] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        w.write(await r.readexactly(4))
        await w.drain()
        assert await r.read() == b""
        await close_writer(w)

    async def main() -> None:
        srv = await uvssl.aio.start_server(handler, LOCALHOST, 0)
        r, w = await asyncio.open_connection(LOCALHOST, srv.port)
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        srv.close()
        closed = asyncio.ensure_future(srv.wait_closed())
        await asyncio.sleep(0.05)
        assert not closed.done()
        w.write_eof()
        assert await r.read() == b""
        await asyncio.wait_for(closed, DEADLINE)
        await close_writer(w)
        assert len(writers) == 1

    run(main)


# -- 2. protocols -------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["plain", "uvssl"])
def test_protocol_callback_order_client(run: Runner, certs: Certs, tls: str) -> None:
    """A client protocol sees connection_made, data_received, eof_received, connection_lost(None)
    in that order when asyncio's server sends and closes."""
    _, client_ssl = tls_pair(tls, certs)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello")
        await w.drain()
        await close_writer(w)

    async def main() -> None:
        srv, port = await stdlib_server(handler, std_server_ctx(tls, certs))
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port, ssl=client_ssl)
        assert isinstance(t, asyncio.Transport) and isinstance(p, Recorder)
        assert p.transport is t and t.get_protocol() is p
        assert await p.lost is None
        assert p.events == ["made", "data", "eof", "lost"]
        assert bytes(p.data) == b"hello"
        assert t.is_closing()
        srv.close()
        await srv.wait_closed()

    run(main)


def test_protocol_callback_order_server(run: Runner) -> None:
    """A server protocol sees connection_made, data_received, eof_received, connection_lost(None);
    eof_received returning true keeps it open for a reply."""
    protos: list[Recorder] = []

    class KeepOpen(Recorder):
        keep_open = True

        def eof_received(self) -> bool:
            self.transport.write(b"got " + bytes(self.data))
            self.transport.close()
            return super().eof_received()

    def factory() -> Recorder:
        protos.append(KeepOpen())
        return protos[-1]

    async def main() -> None:
        srv = await uvssl.aio.create_server(factory, LOCALHOST, 0)
        r, w = await asyncio.open_connection(LOCALHOST, srv.port)
        w.write(b"abc")
        w.write_eof()
        assert await r.read() == b"got abc"
        await close_writer(w)
        p = protos[0]
        assert await p.lost is None
        assert p.events == ["made", "data", "eof", "lost"]
        srv.close()
        await srv.wait_closed()

    run(main)


@pytest.mark.parametrize("tls", ["plain", "uvssl"])
def test_buffered_protocol_small_buffer(run: Runner, certs: Certs, tls: str) -> None:
    """A BufferedProtocol offering 100 bytes at a time receives 1 MB intact."""
    _, client_ssl = tls_pair(tls, certs)
    payload = pattern(1 << 20, b"buffered")

    class Small(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(100)
            self.got = bytearray()
            self.lost: asyncio.Future[Optional[BaseException]] = (
                asyncio.get_running_loop().create_future()
            )
            self.bad_hint = 0

        def get_buffer(self, sizehint: int) -> bytearray:
            if sizehint == 0:
                self.bad_hint += 1
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            assert 0 < nbytes <= 100
            self.got += self.buf[:nbytes]

        def eof_received(self) -> bool:
            return False

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            self.lost.set_result(exc)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(payload)
        await w.drain()
        await close_writer(w)

    async def main() -> None:
        srv, port = await stdlib_server(handler, std_server_ctx(tls, certs))
        t, p = await uvssl.aio.create_connection(Small, LOCALHOST, port, ssl=client_ssl)
        assert isinstance(p, Small)
        assert await p.lost is None
        assert len(p.got) == len(payload)
        assert p.got == payload
        assert p.bad_hint == 0
        srv.close()
        await srv.wait_closed()

    run(main)


def test_write_eof_plain_peer_can_reply(run: Runner) -> None:
    """write_eof on plain TCP: the peer sees EOF and can still reply."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()
        w.write(b"pong:" + data)
        await w.drain()
        await close_writer(w)

    async def main() -> None:
        srv, port = await stdlib_server(handler)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port)
        assert isinstance(p, Recorder)
        assert t.can_write_eof()
        t.write(b"ping")
        t.write_eof()
        with pytest.raises(RuntimeError):
            t.write(b"more")
        assert await p.lost is None
        assert bytes(p.data) == b"pong:ping"
        assert p.events == ["made", "data", "eof", "lost"]
        srv.close()
        await srv.wait_closed()

    run(main)


def test_tls_cannot_write_eof(run: Runner, certs: Certs) -> None:
    """On TLS, can_write_eof() is false and write_eof() raises NotImplementedError, as on
    asyncio's own TLS transports."""
    server_ssl, client_ssl = tls_pair("uvssl", certs)

    async def main() -> None:
        srv = await uvssl.aio.create_server(Recorder, LOCALHOST, 0, ssl=server_ssl)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, srv.port, ssl=client_ssl)
        r, w = await asyncio.open_connection(LOCALHOST, srv.port, ssl=stdlib_client_context(certs))
        assert t.can_write_eof() is w.can_write_eof() is False
        with pytest.raises(NotImplementedError):
            t.write_eof()
        with pytest.raises(NotImplementedError):
            w.write_eof()
        t.close()
        await p.lost  # type: ignore[attr-defined]
        await close_writer(w)
        srv.close()
        await srv.wait_closed()

    run(main)


def test_writelines(run: Runner) -> None:
    """writelines sends every buffer, in order (bytes, bytearray, memoryview)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read())
        await close_writer(w)

    async def main() -> None:
        srv, port = await stdlib_server(handler)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port)
        assert isinstance(p, Recorder)
        t.writelines([b"one,", bytearray(b"two,"), memoryview(b"three")])
        t.writelines([])
        t.write_eof()
        assert await p.wait_bytes(13) == b"one,two,three"
        await p.lost
        srv.close()
        await srv.wait_closed()

    run(main)


def test_write_rejects_str(run: Runner) -> None:
    """write() of a str is a TypeError, as in asyncio."""

    async def main() -> None:
        srv = await uvssl.aio.create_server(Recorder, LOCALHOST, 0)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, srv.port)
        with pytest.raises(TypeError):
            t.write("text")  # type: ignore[arg-type]
        t.close()
        await p.lost  # type: ignore[attr-defined]
        srv.close()
        await srv.wait_closed()

    run(main)


async def _pending_write(
    side: str, tls: str, certs: Certs, finish: str
) -> tuple[int, Held, list[str]]:
    """Write 8 MB to a peer that does not read yet, then ``close()`` or ``abort()``; then let
    the peer read. Returns (bytes written, the peer's protocol once its connection ended, the
    writer's events)."""
    _, client_ssl = tls_pair(tls, certs)
    n = 32 * 1024 * 1024  # more than the kernel's buffers hold
    srv, port, made = await held_peer(side, tls, certs)
    t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port, ssl=client_ssl)
    assert isinstance(p, Recorder)
    peer = await first(made)
    t.write(pattern(n, b"pending"))
    await asyncio.sleep(0.05)
    assert t.get_write_buffer_size() > 0
    if finish == "close":
        t.close()
    else:
        t.abort()
    assert t.is_closing()
    peer.release()
    await peer.lost
    assert await p.lost is None
    srv.close()
    await srv.wait_closed()
    return n, peer, p.events


@pytest.mark.parametrize("peer", ["asyncio-plain", "asyncio-tls", "uvssl-plain", "uvssl-tls"])
def test_close_flushes_pending_writes(run: Runner, certs: Certs, peer: str) -> None:
    """close() with megabytes still buffered sends them all before closing; then
    connection_lost(None)."""
    side, tls = peer.split("-")

    async def main() -> None:
        n, got, events = await _pending_write(side, tls, certs, "close")
        assert len(got.data) == n
        assert bytes(got.data) == pattern(n, b"pending")
        assert events[0] == "made" and events[-1] == "lost"

    run(main)


@pytest.mark.parametrize("tls", ["plain", "uvssl"])
def test_close_reads_while_it_flushes(run: Runner, certs: Certs, tls: str) -> None:
    """Bytes the peer sends while a close() is still flushing do not cost the peer any of the
    data: the closing end reads (and drops) them, so its close is no reset."""
    _, client_ssl = tls_pair(tls, certs)
    n = 32 * 1024 * 1024

    async def main() -> None:
        srv, port, made = await held_peer("asyncio", tls, certs)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port, ssl=client_ssl)
        assert isinstance(p, Recorder)
        peer = await first(made)
        t.write(pattern(n, b"late"))
        await asyncio.sleep(0.05)
        t.close()
        await asyncio.sleep(0.05)
        assert not p.lost.done()  # still flushing to the held peer
        peer.transport.write(b"a late request" * 100)
        await asyncio.sleep(0.05)
        peer.release()
        assert await peer.lost is None
        assert len(peer.data) == n
        assert await p.lost is None
        srv.close()
        await srv.wait_closed()

    run(main)


@pytest.mark.parametrize("peer", ["asyncio-plain", "uvssl-plain", "uvssl-tls"])
def test_abort_drops_pending_writes(run: Runner, certs: Certs, peer: str) -> None:
    """abort() drops what is buffered (the peer gets less) and calls connection_lost(None)."""
    side, tls = peer.split("-")

    async def main() -> None:
        n, got, events = await _pending_write(side, tls, certs, "abort")
        assert len(got.data) < n
        assert events[-1] == "lost"

    run(main)


def test_abort_before_any_flush_sends_nothing(run: Runner) -> None:
    """Written and aborted in the same step: nothing reaches the peer."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.set_result(await read_all(r))
        w.close()

    got: asyncio.Future[bytes]

    async def main() -> None:
        nonlocal got
        got = asyncio.get_running_loop().create_future()
        srv, port = await stdlib_server(handler)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port)
        t.write(b"never sent")
        t.abort()
        t.abort()  # twice is harmless
        assert await got == b""
        assert await p.lost is None  # type: ignore[attr-defined]
        assert p.events == ["made", "lost"]  # type: ignore[attr-defined]
        t.write(b"after")  # ignored, as asyncio does
        srv.close()
        await srv.wait_closed()

    run(main)


# -- 3. flow control -----------------------------------------------------------------------------


def test_write_buffer_limits(run: Runner) -> None:
    """Default marks are asyncio's (64 KiB / 16 KiB); set_write_buffer_limits derives the one
    not given and rejects high < low or a negative mark."""

    async def main() -> None:
        srv, port = await stdlib_server(lambda r, w: read_all(r))  # type: ignore[arg-type,return-value]
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port)
        r, w = await asyncio.open_connection(LOCALHOST, port)
        assert t.get_write_buffer_limits() == (16384, 65536)
        t.set_write_buffer_limits(high=1000)
        assert t.get_write_buffer_limits() == (250, 1000)
        t.set_write_buffer_limits(low=100)
        assert t.get_write_buffer_limits() == (100, 400)
        t.set_write_buffer_limits(high=10, low=10)
        assert t.get_write_buffer_limits() == (10, 10)
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=100, low=200)
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=10, low=-1)
        assert t.get_write_buffer_limits() == (10, 10)
        assert t.get_write_buffer_size() == 0
        t.close()
        await p.lost  # type: ignore[attr-defined]
        assert t.get_write_buffer_size() == 0
        await close_writer(w)
        srv.close()
        await srv.wait_closed()

    run(main)


@pytest.mark.parametrize("peer", ["asyncio-plain", "uvssl-plain", "uvssl-tls"])
def test_pause_and_resume_writing(run: Runner, certs: Certs, peer: str) -> None:
    """A peer that does not read: pause_writing once the buffer is above the high mark; once
    the peer reads, resume_writing at or below the low mark; every byte arrives."""
    side, tls = peer.split("-")
    _, client_ssl = tls_pair(tls, certs)
    chunk = pattern(1 << 16, b"flow")

    async def main() -> None:
        srv, port, made = await held_peer(side, tls, certs)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port, ssl=client_ssl)
        assert isinstance(p, Recorder)
        held = await first(made)
        low, high = t.get_write_buffer_limits()
        total = 0
        for _ in range(4000):  # at most 256 MB: the kernel's buffers are far smaller
            t.write(chunk)
            total += len(chunk)
            if not p.writing_paused:
                await asyncio.sleep(0)
                continue
            # paused: either the kernel still takes data (resume follows) or it is full
            try:
                await asyncio.wait_for(p.wait_flow(p.flow_calls), 0.2)
            except asyncio.TimeoutError:
                break
        assert p.writing_paused, "pause_writing was never called, or never stayed paused"
        assert p.pauses[-1] > high
        assert t.get_write_buffer_size() > high
        seen = p.flow_calls
        held.release()
        await p.wait_flow(seen)
        assert not p.writing_paused
        assert p.resumes[-1] <= low
        assert len(p.pauses) == len(p.resumes)
        assert all(e in ("pause", "resume") for e in p.events[1:])
        t.close()
        await held.lost
        assert len(held.data) == total
        assert held.data == chunk * (total // len(chunk))
        await p.lost
        srv.close()
        await srv.wait_closed()

    run(main)


def test_lowering_high_mark_pauses(run: Runner) -> None:
    """Lowering the high mark below what is buffered calls pause_writing at once, as asyncio's
    transports do."""

    async def main() -> None:
        go = asyncio.Event()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await go.wait()
            await read_all(r)
            w.close()

        srv, port = await stdlib_server(handler)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port)
        assert isinstance(p, Recorder)
        t.write(b"x" * 1000)
        assert not p.pauses
        assert t.get_write_buffer_size() == 1000
        t.set_write_buffer_limits(high=10)
        assert p.pauses == [1000]
        go.set()
        await p.wait_flow(1)
        assert len(p.resumes) == 1
        t.close()
        await p.lost
        srv.close()
        await srv.wait_closed()

    run(main)


@pytest.mark.parametrize("tls", ["plain", "uvssl"])
def test_pause_reading_holds_data(run: Runner, certs: Certs, tls: str) -> None:
    """pause_reading: no data_received while paused (is_reading false); after resume_reading
    the data comes, in full."""
    server_ssl, client_ssl = tls_pair(tls, certs)
    protos: list[Recorder] = []

    class Paused(Recorder):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            transport.pause_reading()
            transport.pause_reading()  # twice is harmless

    def factory() -> Recorder:
        protos.append(Paused())
        return protos[-1]

    async def main() -> None:
        srv = await uvssl.aio.create_server(factory, LOCALHOST, 0, ssl=server_ssl)
        r, w = await asyncio.open_connection(
            LOCALHOST, srv.port, ssl=stdlib_client_context(certs) if client_ssl else None
        )
        w.write(b"z" * 5000)
        await w.drain()
        for _ in range(100):
            if protos:
                break
            await asyncio.sleep(0.01)
        p = protos[0]
        await p.made
        await asyncio.sleep(0.1)
        assert not p.transport.is_reading()
        assert p.events == ["made"] and not p.data
        p.transport.resume_reading()
        p.transport.resume_reading()
        assert p.transport.is_reading()
        assert await p.wait_bytes(5000) == b"z" * 5000
        await close_writer(w)
        await p.lost
        assert not p.transport.is_reading()
        srv.close()
        await srv.wait_closed()

    run(main)


@pytest.mark.parametrize("tls", ["plain", "uvssl"])
def test_pause_reading_inside_data_received(run: Runner, certs: Certs, tls: str) -> None:
    """A protocol that pauses reading in every data_received gets no further call until it
    resumes, and 1 MB arrives intact piece by piece."""
    _, client_ssl = tls_pair(tls, certs)
    payload = pattern(1 << 20, b"stepwise")

    class Stepper(Recorder):
        calls_while_paused = 0

        def data_received(self, data: bytes) -> None:
            if not self.transport.is_reading():
                self.calls_while_paused += 1
            super().data_received(data)
            self.transport.pause_reading()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(payload)
        await w.drain()
        await close_writer(w)

    async def main() -> None:
        srv, port = await stdlib_server(handler, std_server_ctx(tls, certs))
        t, p = await uvssl.aio.create_connection(Stepper, LOCALHOST, port, ssl=client_ssl)
        assert isinstance(p, Stepper)
        for _ in range(100000):
            if len(p.data) >= len(payload) or p.lost.done():
                break
            await p.wait_bytes(len(p.data) + 1)
            for _ in range(3):
                await asyncio.sleep(0)
            t.resume_reading()
        assert p.calls_while_paused == 0
        assert bytes(p.data) == payload
        await p.lost
        srv.close()
        await srv.wait_closed()

    run(main)


# -- 4. get_extra_info ---------------------------------------------------------------------------


def test_extra_info_tls_against_stdlib(run: Runner, certs: Certs) -> None:
    """On TLS to asyncio's server (ALPN offered): peername, sockname, sslcontext (the object
    passed), and an ssl_object answering as the stdlib's own client does on the same server."""
    sctx = stdlib_server_context(certs)
    sctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ssl = uvssl.Context.client(ca_file=str(certs.ca))

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peers.append(w.get_extra_info("peername"))
        await read_all(r)
        w.close()

    peers: list[Any] = []

    async def main() -> None:
        srv, port = await stdlib_server(handler, sctx)
        t, p = await uvssl.aio.create_connection(
            Recorder, LOCALHOST, port, ssl=client_ssl, alpn=["http/1.1"]
        )
        sctx2 = stdlib_client_context(certs)
        sctx2.set_alpn_protocols(["http/1.1"])
        r, w = await asyncio.open_connection(LOCALHOST, port, ssl=sctx2)
        ref = w.get_extra_info("ssl_object")

        assert t.get_extra_info("peername") == (LOCALHOST, port)
        assert t.get_extra_info("sockname") == peers[0]
        assert t.get_extra_info("sslcontext") is client_ssl
        so = t.get_extra_info("ssl_object")
        assert so is not None and so.server_side is False
        cert = so.getpeercert()
        assert isinstance(cert, dict) and cert["subject"]
        want = ref.getpeercert()
        for key in ("subject", "issuer", "subjectAltName", "serialNumber", "version"):
            assert cert[key] == want[key], key
        for key in ("notBefore", "notAfter"):
            assert ssl.cert_time_to_seconds(cert[key]) == ssl.cert_time_to_seconds(want[key])
        assert so.getpeercert(True) == server_der(certs) == ref.getpeercert(True)
        assert so.selected_alpn_protocol() == "http/1.1" == ref.selected_alpn_protocol()
        assert so.version() == ref.version()
        assert so.cipher() == ref.cipher()
        assert so.compression() is None
        assert t.get_extra_info("peercert") == cert
        assert t.get_extra_info("cipher") == ref.cipher()
        assert t.get_extra_info("no such key", "dflt") == "dflt"
        t.close()
        await p.lost  # type: ignore[attr-defined]
        await close_writer(w)
        srv.close()
        await srv.wait_closed()

    run(main)


@pytest.mark.parametrize("ctx_kind", ["uvssl", "stdlib"])
def test_extra_info_server_side(run: Runner, certs: Certs, ctx_kind: str) -> None:
    """On the server side: sslcontext is the server's context (as passed), ssl_object is
    server-side and, without a client certificate, there is no peer certificate."""
    server_ssl, _ = tls_pair(ctx_kind, certs)
    protos: list[Recorder] = []

    def factory() -> Recorder:
        protos.append(Recorder())
        return protos[-1]

    async def main() -> None:
        srv = await uvssl.aio.create_server(factory, LOCALHOST, 0, ssl=server_ssl)
        r, w = await asyncio.open_connection(LOCALHOST, srv.port, ssl=stdlib_client_context(certs))
        w.write(b"x")
        await w.drain()
        for _ in range(1000):
            if protos and protos[0].data:
                break
            await asyncio.sleep(0.01)
        p = protos[0]
        t = p.transport
        assert t.get_extra_info("sslcontext") is server_ssl
        assert t.get_extra_info("peername") == w.get_extra_info("sockname")
        assert t.get_extra_info("sockname") == w.get_extra_info("peername")
        so = t.get_extra_info("ssl_object")
        assert so.server_side is True
        assert so.getpeercert() is None
        assert t.get_extra_info("peercert") is None
        assert so.version() == w.get_extra_info("ssl_object").version()
        await close_writer(w)
        await p.lost
        srv.close()
        await srv.wait_closed()

    run(main)


def test_extra_info_plain_defaults(run: Runner) -> None:
    """A plain transport has peername and sockname, and gives the default for the TLS keys."""

    async def main() -> None:
        srv = await uvssl.aio.create_server(Recorder, LOCALHOST, 0)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, srv.port)
        assert t.get_extra_info("peername") == (LOCALHOST, srv.port)
        assert t.get_extra_info("sockname")[0] == LOCALHOST
        for key in ("ssl_object", "sslcontext", "peercert", "cipher"):
            assert t.get_extra_info(key) is None
            assert t.get_extra_info(key, "none") == "none"
        t.close()
        await p.lost  # type: ignore[attr-defined]
        srv.close()
        await srv.wait_closed()

    run(main)


# -- 5. edges ------------------------------------------------------------------------------------


def test_cancel_read_keeps_connection_usable(run: Runner) -> None:
    """Cancelling a task waiting in reader.read(): the task ends cancelled, nothing is logged,
    and the connection goes on working."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            data = await r.read(100)
            if not data:
                break
            w.write(data)
        await close_writer(w)

    async def main() -> None:
        srv = await uvssl.aio.start_server(handler, LOCALHOST, 0)
        r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port)
        task = asyncio.ensure_future(r.read(100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        w.write(b"still here")
        assert await r.readexactly(10) == b"still here"
        await close_writer(w)
        srv.close()
        await srv.wait_closed()

    run(main)


def test_cancel_create_connection_during_handshake(run: Runner, certs: Certs) -> None:
    """Cancelling create_connection while the TLS handshake waits on a peer that never answers:
    CancelledError, the connection is closed (the peer sees EOF after the ClientHello)."""
    _, client_ssl = tls_pair("uvssl", certs)

    async def main() -> None:
        seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        arrived = asyncio.Event()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            first = await r.read(5)
            arrived.set()
            seen.set_result(first + await read_all(r))
            w.close()

        srv, port = await stdlib_server(handler)
        task = asyncio.ensure_future(
            uvssl.aio.create_connection(Recorder, LOCALHOST, port, ssl=client_ssl)
        )
        await asyncio.wait_for(arrived.wait(), DEADLINE)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hello = await seen
        assert hello[:1] == b"\x16"  # a TLS handshake record, then EOF
        srv.close()
        await srv.wait_closed()

    run(main)


def test_cancel_create_connection_at_once(run: Runner) -> None:
    """create_connection cancelled before it could finish: CancelledError, and the connection,
    if it was made, is closed (the server sees it end)."""

    async def main() -> None:
        ended: list[bytes] = []

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ended.append(await read_all(r))
            w.close()

        srv, port = await stdlib_server(handler)
        made: list[Recorder] = []

        def factory() -> Recorder:
            made.append(Recorder())
            return made[-1]

        task = asyncio.ensure_future(uvssl.aio.create_connection(factory, LOCALHOST, port))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            await asyncio.sleep(0.01)
            if ended:
                break
        # the server may not even have accepted it; if it did, the connection ended, empty
        assert ended in ([], [b""])
        for p in made:
            await p.lost
        srv.close()
        await srv.wait_closed()

    run(main)


def report_first(
    reported: asyncio.Future[dict[str, Any]],
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An exception handler handing the first context it gets to ``reported``."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not reported.done():
            reported.set_result(context)

    return handler


def test_exception_in_data_received(run: Runner) -> None:
    """An exception in data_received reaches the loop's exception handler (with the transport
    and the exception) and the transport closes: connection_lost(exc)."""
    boom = ValueError("bad data")

    class Fails(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            raise boom

    async def main() -> None:
        reported: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().set_exception_handler(report_first(reported))
        srv3, port3 = await stdlib_server(echo)
        t3, p3 = await uvssl.aio.create_connection(Fails, LOCALHOST, port3)
        assert isinstance(p3, Fails)
        t3.write(b"echo me")
        ctx = await reported
        assert ctx["exception"] is boom
        assert ctx["transport"] is t3
        assert ctx["protocol"] is p3
        assert await p3.lost is boom
        assert p3.events == ["made", "data", "lost"]
        assert t3.is_closing()
        srv3.close()
        await srv3.wait_closed()

    run(main)


def test_exception_in_protocol_factory_or_connection_made(run: Runner) -> None:
    """A server's protocol_factory raising: the exception handler hears of it and the client's
    connection is closed (not left waiting). connection_made raising: the same, and the
    protocol's connection_lost gets the exception."""
    lost: list[Optional[BaseException]] = []

    def bad_factory() -> asyncio.Protocol:
        raise ValueError("no protocol")

    class BadStart(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            raise RuntimeError("no start")

        def connection_lost(self, exc: Optional[BaseException]) -> None:
            lost.append(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
        for factory in (bad_factory, BadStart):
            srv = await uvssl.aio.create_server(factory, LOCALHOST, 0)
            r, w = await asyncio.open_connection(LOCALHOST, srv.port)
            assert await read_all(r) == b""
            await close_writer(w)
            srv.close()
            await srv.wait_closed()
        assert [type(ctx["exception"]) for ctx in seen] == [ValueError, RuntimeError]
        assert len(lost) == 1 and isinstance(lost[0], RuntimeError)

    run(main)


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """asyncio stream handler echoing until EOF."""
    try:
        while True:
            data = await r.read(1 << 16)
            if not data:
                break
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    w.close()


def test_exception_in_uvssl_callback(run: Runner) -> None:
    """An exception raised by a uvssl callback (here a uvssl timer) inside the asyncio loop
    reaches the loop's exception handler; the loop goes on."""
    boom = RuntimeError("timer failed")

    def fail() -> None:
        raise boom

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: asyncio.Future[dict[str, Any]] = loop.create_future()
        loop.set_exception_handler(report_first(reported))
        ul = await uvssl.aio.attach()
        assert uvssl.get_loop() is ul
        uvssl.delay(fail, 0)
        ctx = await reported
        assert ctx["exception"] is boom
        fired: asyncio.Future[str] = loop.create_future()
        uvssl.delay(fired.set_result, 0.01, "still running")
        assert await fired == "still running"

    run(main)


def test_keyboard_interrupt_in_protocol_propagates(run: Runner) -> None:
    """KeyboardInterrupt raised in data_received propagates out of the loop's run."""

    class Interrupts(Recorder):
        def data_received(self, data: bytes) -> None:
            raise KeyboardInterrupt

    async def main() -> None:
        srv = await uvssl.aio.create_server(Interrupts, LOCALHOST, 0)
        r, w = await asyncio.open_connection(LOCALHOST, srv.port)
        w.write(b"^C")
        await asyncio.sleep(DEADLINE)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the asyncio client is dropped
        with pytest.raises(KeyboardInterrupt):
            run(main, check_errors=False)
        gc.collect()

    async def again() -> None:
        srv = await uvssl.aio.start_server(echo, LOCALHOST, 0)
        r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port)
        w.write(b"after")
        assert await r.readexactly(5) == b"after"
        await close_writer(w)
        srv.close()
        await srv.wait_closed()

    run(again)


def test_connection_refused(run: Runner) -> None:
    """Nothing listening: create_connection raises TcpRefused (an OSError)."""

    async def main() -> None:
        port = free_port()
        with pytest.raises(uvssl.TcpRefused) as info:
            await uvssl.aio.create_connection(Recorder, LOCALHOST, port)
        assert isinstance(info.value, OSError)
        with pytest.raises(OSError):
            await uvssl.aio.open_connection(LOCALHOST, port)

    run(main)


@pytest.mark.parametrize("why", ["untrusted", "wrong-name"])
def test_tls_verification_failure(run: Runner, certs: Certs, why: str) -> None:
    """A certificate that does not verify (unknown CA, or a name it does not carry) fails
    create_connection with SslVerificationFailure."""
    _, client_ssl = tls_pair("uvssl", certs)

    async def main() -> None:
        sctx = stdlib_server_context(certs, untrusted=(why == "untrusted"))
        srv, port = await stdlib_server(echo, sctx)
        name = "wrong.example" if why == "wrong-name" else None
        with pytest.raises(uvssl.SslVerificationFailure):
            await uvssl.aio.create_connection(
                Recorder, LOCALHOST, port, ssl=client_ssl, server_hostname=name
            )
        srv.close()
        await srv.wait_closed()

    run(main, check_errors=False)  # asyncio's server may log the failed handshake


def test_handshake_timeout(run: Runner, certs: Certs) -> None:
    """ssl_handshake_timeout against a server that never answers the ClientHello:
    create_connection raises SslHandshakeTimeout."""
    _, client_ssl = tls_pair("uvssl", certs)

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_all(r)
        w.close()

    async def main() -> None:
        srv, port = await stdlib_server(silent)
        with pytest.raises(uvssl.SslHandshakeTimeout):
            await uvssl.aio.create_connection(
                Recorder, LOCALHOST, port, ssl=client_ssl, ssl_handshake_timeout=0.2
            )
        srv.close()
        await srv.wait_closed()

    run(main)


def test_reset_by_peer_reaches_connection_lost(run: Runner) -> None:
    """A peer that resets the connection: connection_lost gets an OSError with ECONNRESET."""

    async def resets(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    async def main() -> None:
        srv, port = await stdlib_server(resets)
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, port)
        assert isinstance(p, Recorder)
        t.write(b"x")
        exc = await p.lost
        assert isinstance(exc, OSError) and exc.errno == errno.ECONNRESET, repr(exc)
        assert t.is_closing()
        srv.close()
        await srv.wait_closed()

    run(main)


def test_many_concurrent_tls_clients(run: Runner, certs: Certs) -> None:
    """50 TLS clients at once, 20 lines each, through one uvssl.aio server."""
    server_ssl, client_ssl = tls_pair("uvssl", certs)

    async def client(port: int, i: int) -> int:
        r, w = await uvssl.aio.open_connection(LOCALHOST, port, ssl=client_ssl)
        for j in range(20):
            line = f"{i}:{j}\n".encode()
            w.write(line)
            assert await r.readline() == line
        await close_writer(w)
        return i

    async def main() -> None:
        async with await uvssl.aio.start_server(echo, LOCALHOST, 0, ssl=server_ssl) as srv:
            done = await asyncio.gather(*(client(srv.port, i) for i in range(50)))
            assert sorted(done) == list(range(50))

    run(main)


def test_ssl_true_uses_default_context(run: Runner, certs: Certs) -> None:
    """ssl=True verifies against the system's CAs, which do not know the test CA."""

    async def main() -> None:
        srv = await uvssl.aio.start_server(echo, LOCALHOST, 0, ssl=stdlib_server_context(certs))
        with pytest.raises(uvssl.SslVerificationFailure):
            await uvssl.aio.open_connection(LOCALHOST, srv.port, ssl=True)
        srv.close()
        await srv.wait_closed()

    run(main)


def test_argument_errors(run: Runner, server_ctx: Any) -> None:
    """TLS-only keywords without TLS, and ssl=True for a server, are ValueErrors."""

    async def main() -> None:
        with pytest.raises(ValueError):
            await uvssl.aio.create_connection(Recorder, LOCALHOST, 1, server_hostname="localhost")
        with pytest.raises(ValueError):
            await uvssl.aio.create_connection(Recorder, LOCALHOST, 1, ssl_handshake_timeout=1.0)
        with pytest.raises(ValueError):
            await uvssl.aio.create_server(Recorder, LOCALHOST, 0, ssl=True)
        with pytest.raises(ValueError):
            await uvssl.aio.create_server(Recorder, LOCALHOST, 0, ssl_handshake_timeout=1.0)

    run(main)


def test_loop_closes_with_uvssl_handles_open(run: Runner, certs: Certs) -> None:
    """The asyncio loop closing with uvssl servers, connections (with data buffered) and timers
    still open: the close returns, nothing is raised or warned, protocols are not called, and a
    new loop in the same thread works afterwards."""
    server_ssl, client_ssl = tls_pair("uvssl", certs)
    left: list[Recorder] = []
    kept: list[Any] = []

    async def main() -> int:
        srv = await uvssl.aio.create_server(Recorder, LOCALHOST, 0, ssl=server_ssl)
        assert srv.sockets[0].getsockname()[1] == srv.port  # its socket object, open too
        t, p = await uvssl.aio.create_connection(Recorder, LOCALHOST, srv.port, ssl=client_ssl)
        assert isinstance(p, Recorder)
        plain = await uvssl.aio.create_server(Recorder, LOCALHOST, 0)
        r, w = await uvssl.aio.open_connection(LOCALHOST, plain.port)
        w.write(b"x" * 100)
        t.write(b"y" * (4 << 20))
        uvssl.delay(lambda: None, 3600)
        left.append(p)
        kept.append(w)  # dropped after the loop closed (a StreamWriter warns if dropped before)
        return int(srv.port)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        port = run(main)
        kept.clear()
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert "lost" not in left[0].events  # the protocol was not called at the loop's close

    async def again() -> None:
        # the old port is free again, and a new loop serves
        srv = await uvssl.aio.start_server(echo, LOCALHOST, port)
        r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port)
        w.write(b"again")
        assert await r.readexactly(5) == b"again"
        await close_writer(w)
        srv.close()
        await srv.wait_closed()

    run(again)


def test_explicit_loop_close_then_new_loop(run: Runner) -> None:
    """loop.close() called directly (no asyncio.run) with a uvssl server open returns, and
    the next loop of the thread hosts uvssl again."""
    loop = run.new_loop()

    async def setup() -> int:
        srv = await uvssl.aio.start_server(echo, LOCALHOST, 0)
        return srv.port

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        port = loop.run_until_complete(setup())
        loop.close()
        assert loop.is_closed()
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert port > 0

    async def again() -> None:
        srv = await uvssl.aio.start_server(echo, LOCALHOST, 0)
        r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port)
        w.write(b"ok")
        assert await r.readexactly(2) == b"ok"
        await close_writer(w)
        srv.close()
        await srv.wait_closed()

    run(again)


# -- 6. uvssl timers under asyncio ----------------------------------------------------------------


def test_uvssl_timers_order_and_not_early(run: Runner) -> None:
    """uvssl timers fire in the order of their delays, interleaved with asyncio's own, and none
    before the time asked."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await uvssl.aio.attach()
        fired: list[tuple[str, float]] = []
        done: asyncio.Future[None] = loop.create_future()

        def note(name: str) -> None:
            fired.append((name, loop.time()))
            if len(fired) == 3:
                done.set_result(None)

        start = loop.time()
        uvssl.delay(note, 0.05, "late")
        uvssl.delay(note, 0.01, "early")
        loop.call_later(0.03, note, "asyncio")
        await done
        assert [name for name, _ in fired] == ["early", "asyncio", "late"]
        asked = {"early": 0.01, "asyncio": 0.03, "late": 0.05}
        # libuv counts whole milliseconds: a timer may fire up to 1 ms before the float clock
        # says its delay is over, and that bound itself is met only to float precision
        for name, when in fired:
            assert when >= start + asked[name] - 0.001 - 1e-9, (name, when - start)

    run(main)


def test_uvssl_timer_after_idle_not_early(run: Runner) -> None:
    """A uvssl timer armed after the loops sat idle a while still waits its whole delay."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await uvssl.aio.attach()
        await asyncio.sleep(0.2)  # no uvssl activity meanwhile
        fired: asyncio.Future[float] = loop.create_future()
        start = loop.time()
        uvssl.delay(lambda: fired.set_result(loop.time()), 0.1)
        when = await fired
        assert when >= start + 0.1 - 0.001, when - start

    run(main)


def test_uvssl_interval_and_cancel(run: Runner) -> None:
    """A uvssl interval under asyncio fires repeatedly until cancelled."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await uvssl.aio.attach()
        ticks: list[float] = []
        enough = asyncio.Event()

        def tick() -> None:
            ticks.append(loop.time())
            if len(ticks) == 3:
                enough.set()

        timer = uvssl.interval(tick, 0.01)
        await enough.wait()
        timer.cancel()
        n = len(ticks)
        await asyncio.sleep(0.05)
        assert len(ticks) == n
        assert ticks == sorted(ticks)

    run(main)


# -- STARTTLS -----------------------------------------------------------------------------------


def test_writer_start_tls_both_ends(run: Runner, certs: Certs) -> None:
    """A plain line exchange, then StreamWriter.start_tls on both ends (uvssl.aio's streams),
    then lines over TLS: the server's certificate is the one the client sees."""

    async def main() -> None:
        seen: dict[str, Any] = {}

        async def handle(r: asyncio.StreamReader, w: uvssl.aio.StreamWriter) -> None:
            assert await r.readline() == b"STARTTLS\n"
            w.write(b"GO\n")
            await w.start_tls(stdlib_server_context(certs))
            seen["server_version"] = w.get_extra_info("ssl_object").version()
            line = await r.readline()
            w.write(line.upper())
            await w.drain()
            w.close()

        srv = await uvssl.aio.start_server(handle, LOCALHOST, 0)
        r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port)
        w.write(b"STARTTLS\n")
        assert await r.readline() == b"GO\n"
        assert w.get_extra_info("ssl_object") is None
        await w.start_tls(stdlib_client_context(certs), server_hostname="localhost")
        obj = w.get_extra_info("ssl_object")
        assert obj.version() == "TLSv1.3"
        assert obj.getpeercert(True) == server_der(certs)
        w.write(b"over tls\n")
        assert await r.readline() == b"OVER TLS\n"
        assert await r.read() == b""
        assert seen["server_version"] == "TLSv1.3"
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    run(main)


def _stdlib_starttls_server(certs: Certs, ls: socket.socket, out: dict[str, Any]) -> None:
    """A blocking stdlib peer: reads a STARTTLS line, answers, upgrades, echoes one line
    upper-cased."""
    ls.settimeout(PEER_TIMEOUT)
    conn, _ = ls.accept()
    conn.settimeout(PEER_TIMEOUT)
    try:
        assert recv_until(conn, b"\n") == b"STARTTLS\n"
        conn.sendall(b"GO\n")
        tls = stdlib_server_context(certs).wrap_socket(conn, server_side=True)
        line = recv_until(tls, b"\n")
        tls.sendall(line.upper())
        out["version"] = tls.version()
        tls.close()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out["error"] = exc
        conn.close()


def test_start_tls_protocol_against_stdlib_peer(run: Runner, certs: Certs) -> None:
    """uvssl.aio.start_tls upgrades a Protocol's plain transport against a stdlib ssl peer;
    the protocol goes on with the new transport (no second connection_made)."""

    async def main() -> None:
        ls = listening_socket()
        out: dict[str, Any] = {}
        peer = PeerThread(_stdlib_starttls_server, certs, ls, out)
        peer.start()
        rec = Recorder()
        transport, _ = await uvssl.aio.create_connection(
            lambda: rec, LOCALHOST, ls.getsockname()[1]
        )
        transport.write(b"STARTTLS\n")
        assert await rec.wait_bytes(3) == b"GO\n"
        tls = await uvssl.aio.start_tls(
            transport, rec, stdlib_client_context(certs), server_hostname="localhost"
        )
        assert tls is not transport and transport.is_closing()
        assert tls.get_extra_info("peercert")["subject"]
        tls.write(b"secret\n")
        assert await rec.wait_bytes(10) == b"GO\nSECRET\n"
        assert await rec.lost is None
        assert rec.events.count("made") == 1
        await asyncio.get_running_loop().run_in_executor(None, peer.join, PEER_TIMEOUT)
        assert "error" not in out, out
        assert out["version"] == "TLSv1.3"
        ls.close()

    run(main)


def test_start_tls_verification_failure_closes(run: Runner, certs: Certs) -> None:
    """A client context that does not trust the peer: start_tls raises uvssl's SslFailure and
    the connection is closed (the peer sees it end)."""

    async def main() -> None:
        ended = asyncio.get_running_loop().create_future()

        async def handle(r: asyncio.StreamReader, w: uvssl.aio.StreamWriter) -> None:
            await r.readline()
            w.write(b"GO\n")
            try:
                await w.start_tls(stdlib_server_context(certs))
            except (OSError, uvssl.SslFailure) as exc:
                ended.set_result(type(exc).__name__)
                return
            ended.set_result("handshake succeeded")

        srv = await uvssl.aio.start_server(handle, LOCALHOST, 0)
        r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port)
        w.write(b"STARTTLS\n")
        await r.readline()
        untrusting = ssl.create_default_context()  # the system's CAs: not the test CA
        with pytest.raises(uvssl.SslFailure):
            await w.start_tls(untrusting, server_hostname="localhost")
        assert (await ended) != "handshake succeeded"
        assert w.transport.is_closing()
        srv.close()
        await srv.wait_closed()

    run(main)


def test_start_tls_argument_errors(run: Runner, certs: Certs) -> None:
    """start_tls wants a plain, open uvssl.aio transport."""

    async def main() -> None:
        srv = await uvssl.aio.create_server(
            Recorder, LOCALHOST, 0, ssl=stdlib_server_context(certs)
        )
        rec = Recorder()
        tls, _ = await uvssl.aio.create_connection(
            lambda: rec,
            LOCALHOST,
            srv.port,
            ssl=stdlib_client_context(certs),
            server_hostname="localhost",
        )
        with pytest.raises(ValueError, match="already speaks TLS"):
            await uvssl.aio.start_tls(tls, rec, stdlib_client_context(certs))
        tls.close()
        plain_srv = await uvssl.aio.create_server(Recorder, LOCALHOST, 0)
        plain, _ = await uvssl.aio.create_connection(Recorder, LOCALHOST, plain_srv.port)
        plain.close()
        with pytest.raises(RuntimeError, match="closing"):
            await uvssl.aio.start_tls(plain, Recorder(), stdlib_client_context(certs))
        with pytest.raises(TypeError, match="uvssl.aio Transport"):
            await uvssl.aio.start_tls(object(), Recorder(), stdlib_client_context(certs))  # type: ignore[arg-type]
        for s in (srv, plain_srv):
            s.close()
            await s.wait_closed()

    run(main)


def test_busy_tls_connections_leave_the_host_loop_no_timer(run: Runner, certs: Certs) -> None:
    """While two busy TLS connections keep their record buffers (the release tick running),
    uvssl asks the asyncio loop for no timer: the tick is a descriptor the loop polls, so the
    loop can wait for I/O without a timeout."""
    from uvssl.aio._host import running_host

    server_ssl, client_ssl = tls_pair("uvssl", certs)
    seen: list[Any] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            w.write(line)
        await close_writer(w)

    async def main() -> None:
        async with await uvssl.aio.start_server(handler, LOCALHOST, 0, ssl=server_ssl) as srv:
            r, w = await uvssl.aio.open_connection(LOCALHOST, srv.port, ssl=client_ssl)
            for i in range(6):  # busy from the third read or write on
                w.write(b"line %d\n" % i)
                assert await r.readline() == b"line %d\n" % i
            host = running_host()
            assert host is not None
            seen.append(host._timer)
            await close_writer(w)

    run(main)
    assert seen == [None]
