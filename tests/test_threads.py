"""Threads: every uvssl object belongs to its loop's thread.

A loop runs in a worker thread (``LoopThread``) with a server and a connected client on
127.0.0.1; the main thread then calls the objects' methods. Each one that reaches native or loop
state raises ``RuntimeError`` naming ``call_threadsafe``, and works when sent through
``loop.call_threadsafe``. ``Loop.stop()`` ends a loop from any thread, idle or busy. The scenarios
that used to corrupt memory (writes and stops hammered from another thread, teardown races,
two threads on one ``SslStream``) run in a subprocess, so that a crash fails the test instead of
killing pytest. Every loop is bounded: a deadline timer ends it if the test does not.
"""

from __future__ import annotations

import concurrent.futures
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from helpers import SLOWDOWN
from tls_support import LOCALHOST, PeerThread, listening_socket

import uvssl

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def _noop(*args: Any) -> None:
    pass


class LoopThread:
    """A uvssl loop in a worker thread, set up by ``setup(self)`` inside its start function.

    The loop ends itself after ``deadline`` seconds (a timer) if nobody stops it first; a test
    that hits the deadline fails in ``finish``.
    """

    def __init__(self, setup: Callable[[LoopThread], Any], deadline: float = 20.0) -> None:
        self.setup = setup
        self.deadline = deadline
        self.ready = threading.Event()
        self.loop: Any = None
        self.server: Any = None
        self.client: Any = None
        self.accepted: Any = None
        self.timer: Any = None
        self.count = 0
        self.error: Optional[BaseException] = None
        self.deadline_hit = False
        self.thread = threading.Thread(target=self._run, name="uvssl-loop", daemon=True)

    def _run(self) -> None:
        def expire() -> None:
            self.deadline_hit = True
            uvssl.exit_event_loop()

        def start() -> None:
            self.loop = uvssl.get_loop()
            uvssl.delay(expire, self.deadline)
            self.setup(self)

        try:
            uvssl.start_event_loop(start)
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
            self.error = exc
        finally:
            self.ready.set()

    def started(self) -> LoopThread:
        self.thread.start()
        assert self.ready.wait(10), "the loop thread did not get ready"
        assert self.error is None, self.error
        assert self.loop is not None and self.loop.running
        return self

    def check_ready(self) -> None:
        """Called in the loop when a piece of the setup is up; ready once all are."""
        if self.client is not None and self.client.connected and self.accepted is not None:
            self.ready.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` in the loop's thread through call_threadsafe; return its result."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

        self.loop.call_threadsafe(run)
        return fut.result(10)

    def join(self, timeout: float = 10.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the loop thread did not end"

    def finish(self) -> None:
        if self.loop is not None:
            self.loop.stop()
        self.join()
        if self.error is not None:
            raise self.error
        assert not self.deadline_hit, "the loop ran into its deadline"


# -- setups (run inside the worker's loop) ------------------------------------------------------


def _server_read(sock: Any, stream: Any) -> None:
    """Stream-mode echo."""
    data = stream.read()
    if data:
        stream.write(data)


def _close_on_event(ev: BaseException) -> None:
    sock = getattr(ev, "socket", None)
    if sock is not None and not sock.closed:
        sock.close()


def plain_pair(lt: LoopThread, *, busy: bool = False) -> None:
    """A stream-mode echo server and a connected client (ping-pong forever when ``busy``)."""

    def on_accept(sock: Any) -> None:
        lt.accepted = sock
        lt.check_ready()

    def client_read(sock: Any, data: bytes) -> None:
        lt.count += 1
        if busy:
            sock.write(data)

    def on_connect(sock: Any) -> None:
        if busy:
            sock.write(b"ping" * 256)
        lt.check_ready()

    lt.server = uvssl.tcp_server(
        LOCALHOST, 0, _server_read, _close_on_event, connect_cb=on_accept, stream=True
    )
    lt.client = uvssl.tcp_connect(
        LOCALHOST, lt.server.port, client_read, _close_on_event, connect_cb=on_connect
    )
    lt.timer = uvssl.delay(_noop, 60)


def tls_pair(certs: Any, ctx: Any = None) -> Callable[[LoopThread], None]:
    """A TLS echo server (``ctx`` or the test certificate) and a connected TLS client."""

    def setup(lt: LoopThread) -> None:
        def on_accept(sock: Any) -> None:
            lt.accepted = sock
            lt.check_ready()

        kw: dict[str, Any] = (
            {"ssl_ctx": ctx}
            if ctx is not None
            else {"certificate": str(certs.server_cert), "key": str(certs.server_key)}
        )
        lt.server = uvssl.tcp_ssl_server(
            LOCALHOST, 0, _server_read, _close_on_event, connect_cb=on_accept, stream=True, **kw
        )
        lt.client = uvssl.tcp_ssl_connect(
            LOCALHOST,
            lt.server.port,
            _noop,
            _close_on_event,
            connect_cb=lambda sock: lt.check_ready(),
            ca_file=str(certs.ca),
            server_hostname="localhost",
        )
        lt.timer = uvssl.delay(_noop, 60)

    return setup


# -- every checked method, from another thread and through call_threadsafe ---------------------

# (what the message names, needs TLS, the call)
CHECKED: list[tuple[str, bool, Callable[[LoopThread], Any]]] = [
    ("Socket.write()", False, lambda lt: lt.client.write(b"x")),
    ("Socket.close()", False, lambda lt: lt.client.close()),
    ("Socket.shutdown()", False, lambda lt: lt.client.shutdown()),
    ("Socket.fileno()", False, lambda lt: lt.client.fileno()),
    ("Socket.local_address", False, lambda lt: lt.client.local_address),
    ("Socket.remote_address", False, lambda lt: lt.client.remote_address),
    ("Socket.write_buffer_size", False, lambda lt: lt.client.write_buffer_size),
    ("Socket.set_options()", False, lambda lt: lt.client.set_options(nodelay=True)),
    ("Socket.set_timeouts()", False, lambda lt: lt.client.set_timeouts(30, None)),
    ("Socket.pause_reading()", False, lambda lt: lt.client.pause_reading()),
    ("Socket.resume_reading()", False, lambda lt: lt.client.resume_reading()),
    (
        "Socket.set_write_buffer_limits()",
        False,
        lambda lt: lt.client.set_write_buffer_limits(1000, 100),
    ),
    ("Socket.read_cb", False, lambda lt: setattr(lt.client, "read_cb", _noop)),
    ("Socket.write_cb", False, lambda lt: setattr(lt.client, "write_cb", _noop)),
    ("Socket.drain_cb", False, lambda lt: setattr(lt.client, "drain_cb", _noop)),
    ("write_socket_data()", False, lambda lt: uvssl.write_socket_data(lt.client, b"x")),
    ("close_socket()", False, lambda lt: uvssl.close_socket(lt.client)),
    ("attach_ssl()", False, lambda lt: uvssl.attach_ssl(lt.accepted)),
    ("AsyncStream.read()", False, lambda lt: lt.accepted.stream.read()),
    ("AsyncStream.write()", False, lambda lt: lt.accepted.stream.write(b"x")),
    ("AsyncStream.available", False, lambda lt: lt.accepted.stream.available),
    ("AsyncStream.close()", False, lambda lt: lt.accepted.stream.close()),
    ("TcpServer.fileno()", False, lambda lt: lt.server.fileno()),
    ("TcpServer.close()", False, lambda lt: lt.server.close()),
    ("close_tcp_server()", False, lambda lt: uvssl.close_tcp_server(lt.server)),
    ("Timer.cancel()", False, lambda lt: lt.timer.cancel()),
    ("Loop.now()", False, lambda lt: lt.loop.now()),
    ("Loop.delay()", False, lambda lt: lt.loop.delay(_noop, 30)),
    ("Loop.interval()", False, lambda lt: lt.loop.interval(_noop, 30)),
    ("Loop.exit()", False, lambda lt: lt.loop.exit()),
    ("SslSocket.write()", True, lambda lt: lt.client.write(b"x")),
    ("SslSocket.close()", True, lambda lt: lt.client.close()),
    ("SslSocket.version", True, lambda lt: lt.client.version),
    ("SslSocket.cipher", True, lambda lt: lt.client.cipher),
    ("SslSocket.alpn_protocol", True, lambda lt: lt.client.alpn_protocol),
    ("SslSocket.peer_certificate", True, lambda lt: lt.client.peer_certificate),
    ("SslSocket.session", True, lambda lt: lt.client.session),
    ("SslSocket.session_reused", True, lambda lt: lt.client.session_reused),
    ("SslSocket.ssl_pointer", True, lambda lt: lt.client.ssl_pointer),
    ("SslSocket.local_address", True, lambda lt: lt.client.local_address),
    ("detach_ssl()", True, lambda lt: uvssl.detach_ssl(lt.client)),
    ("TcpSslServer.close()", True, lambda lt: lt.server.close()),
]


def _loop_thread(tls: bool, certs: Any) -> LoopThread:
    return LoopThread(tls_pair(certs) if tls else plain_pair).started()


@pytest.mark.parametrize(("what", "tls", "call"), CHECKED, ids=[c[0] for c in CHECKED])
def test_checked_call_from_another_thread_raises(what, tls, call, certs):
    lt = _loop_thread(tls, certs)
    try:
        with pytest.raises(RuntimeError) as info:
            call(lt)
        msg = str(info.value)
        assert "call_threadsafe" in msg and what in msg, msg
        if what == "Loop.exit()":
            assert "stop()" in msg
        # nothing happened: the loop still runs, with its objects as they were
        assert lt.loop.running and lt.thread.is_alive()
        assert lt.call(lambda: not lt.client.closed and not lt.server.closed)
    finally:
        lt.finish()


@pytest.mark.parametrize(("what", "tls", "call"), CHECKED, ids=[c[0] for c in CHECKED])
def test_checked_call_through_call_threadsafe_works(what, tls, call, certs):
    lt = _loop_thread(tls, certs)
    try:
        lt.call(lambda: call(lt))  # raises whatever the call raised in the loop's thread
    finally:
        lt.finish()


def test_unchecked_reads_from_another_thread(certs):
    """Plain Python state (no native or loop state behind it) stays readable anywhere."""
    lt = _loop_thread(True, certs)
    try:
        sock = lt.client
        sock.data = "mine"
        assert sock.data == "mine"
        assert sock.closed is False and sock.connected is True
        assert sock.loop is lt.loop
        assert sock.read_cb is _noop and sock.write_cb is None and sock.drain_cb is None
        assert sock.server_hostname == "localhost" and sock.context is not None
        assert lt.server.closed is False and lt.server.port > 0
        assert lt.timer.active is True
        assert lt.loop.running is True and lt.loop.failed is False
        assert lt.loop.thread == lt.thread.ident
    finally:
        lt.finish()


def test_objects_of_an_ended_loop_are_usable_from_any_thread(certs):
    """Once the loop has ended nothing native is left: the objects behave as closed, and
    the errors say so instead of pointing at call_threadsafe."""
    lt = _loop_thread(True, certs)
    lt.finish()
    sock, server, loop = lt.client, lt.server, lt.loop
    assert sock.closed and server.closed and not loop.running
    with pytest.raises(uvssl.SocketClosed):
        sock.write(b"x")
    with pytest.raises(uvssl.SocketClosed):
        sock.pause_reading()
    sock.close()
    uvssl.close_socket(sock)
    server.close()
    lt.timer.cancel()
    assert sock.version is None and sock.peer_certificate is None and sock.ssl_pointer is None
    assert sock.write_buffer_size == 0
    loop.stop()
    loop.exit()
    for call in (loop.now, lambda: loop.delay(_noop), lambda: loop.call_threadsafe(_noop)):
        with pytest.raises(RuntimeError, match="ended"):
            call()


def test_write_into_another_running_loop_is_refused():
    """write() checks its thread in C against the loop the calling thread runs: a callback of
    loop A writing to a socket of loop B is refused (RuntimeError), and so is a thread whose own
    loop has ended; the owner's writes go on working."""
    a = LoopThread(plain_pair).started()
    b = LoopThread(plain_pair).started()
    try:
        with pytest.raises(RuntimeError, match="call_threadsafe"):
            a.call(lambda: b.client.write(b"from loop A"))
        before = b.count
        assert b.call(lambda: b.client.write(b"x" * 8)) is True

        def ended_then_write() -> None:
            uvssl.start_event_loop(lambda: None)  # this thread's loop runs and ends
            b.client.write(b"after my own loop")

        with pytest.raises(RuntimeError, match="call_threadsafe"):
            ended_then_write()
        deadline = time.monotonic() + 10
        while b.count == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.count > before  # the owner's write was echoed back
    finally:
        a.finish()
        b.finish()


def test_error_in_checked_call_does_not_reach_the_loop():
    """A rejected call leaves no trace in the loop: its echo goes on."""
    lt = LoopThread(lambda lt: plain_pair(lt, busy=True)).started()
    try:
        for _ in range(100):
            with pytest.raises(RuntimeError):
                lt.client.write(b"from the wrong thread")
        before = lt.count
        deadline = time.monotonic() + 10
        while lt.count < before + 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lt.count >= before + 10
    finally:
        lt.finish()


# -- Loop.stop() --------------------------------------------------------------------------------


def _stop_and_time(lt: LoopThread) -> float:
    t0 = time.monotonic()
    lt.loop.stop()
    lt.join(10)
    return time.monotonic() - t0


def test_stop_from_another_thread_ends_an_idle_loop():
    lt = LoopThread(plain_pair).started()
    took = _stop_and_time(lt)  # a 60 s timer, a server and two connections kept it alive
    assert lt.error is None and not lt.deadline_hit
    assert took < 5, took
    assert lt.client.closed and lt.accepted.closed and lt.server.closed
    assert not lt.timer.active


def test_stop_from_another_thread_ends_a_busy_loop():
    lt = LoopThread(lambda lt: plain_pair(lt, busy=True)).started()
    deadline = time.monotonic() + 10
    while lt.count < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lt.count >= 200, "the echo did not run"
    took = _stop_and_time(lt)
    assert lt.error is None and not lt.deadline_hit
    assert took < 5, took
    assert lt.client.closed and lt.accepted.closed and lt.server.closed


def test_stop_before_the_loop_runs():
    """stop() while the start function still runs: the loop ends as soon as it starts."""
    called = threading.Event()
    stopped = threading.Event()

    def setup(lt: LoopThread) -> None:
        uvssl.delay(_noop, 60)
        lt.ready.set()
        assert stopped.wait(10)
        called.set()

    lt = LoopThread(setup)
    lt.thread.start()
    assert lt.ready.wait(10)
    lt.loop.stop()
    stopped.set()
    lt.join(10)
    assert called.is_set() and lt.error is None and not lt.deadline_hit


def test_stop_from_the_loops_own_thread_is_exit():
    done: list[str] = []

    def start() -> None:
        uvssl.delay(_noop, 60)
        uvssl.delay(lambda: (done.append("stop"), uvssl.get_loop().stop()), 0.01)  # type: ignore[func-returns-value]

    t0 = time.monotonic()
    thread = PeerThread(uvssl.start_event_loop, start, name="uvssl-loop")
    thread.start()
    thread.result(10)
    assert done == ["stop"] and time.monotonic() - t0 < 5


def test_stop_is_harmless_twice_and_after_the_end():
    lt = LoopThread(plain_pair).started()
    lt.loop.stop()
    lt.loop.stop()
    lt.join(10)
    assert lt.error is None
    lt.loop.stop()  # ended: no error, nothing happens
    lt.loop.stop()


def test_stop_and_call_threadsafe_from_many_threads():
    """Several threads stop the loop (and queue calls) at once: it ends once, cleanly."""
    lt = LoopThread(lambda lt: plain_pair(lt, busy=True)).started()
    go = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        go.wait(5)
        for _ in range(200):
            try:
                lt.loop.call_threadsafe(_noop)
            except RuntimeError as exc:
                if "ended" not in str(exc):
                    errors.append(exc)
            lt.loop.stop()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(10)
    lt.join(10)
    assert not errors and lt.error is None and not lt.deadline_hit


# -- a context shared by loops in several threads -----------------------------------------------


def test_context_shared_by_loops_in_two_threads(certs):
    """Setting sni_callback on a context that servers of two loops use (from a third thread)
    reaches each server in its own thread; each loop's sni_callback sees its own socket."""
    ctx = uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.server_key))
    loops = [LoopThread(tls_pair(certs, ctx)).started() for _ in range(2)]
    seen: list[tuple[Any, int, Optional[str]]] = []

    def sni(sock: Any, name: Optional[str]) -> None:
        seen.append((sock, threading.get_ident(), name))

    try:
        ctx.sni_callback = sni  # from the main thread: no error, no native call on the servers
        for lt in loops:
            lt.call(_noop)  # the queued update ran before what follows

            def connect(lt: LoopThread = lt) -> None:
                uvssl.tcp_ssl_connect(
                    LOCALHOST,
                    lt.server.port,
                    _noop,
                    _close_on_event,
                    connect_cb=lambda s: s.close(),
                    ca_file=str(certs.ca),
                    server_hostname="localhost",
                )

            lt.call(connect)
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(seen) == 2
        for lt in loops:
            mine = [s for s in seen if s[1] == lt.thread.ident]
            assert len(mine) == 1
            sock, _, name = mine[0]
            assert name == "localhost"
            assert isinstance(sock, uvssl.SslSocket) and sock.loop is lt.loop
    finally:
        for lt in loops:
            lt.finish()


# -- SslStream: one call at a time ---------------------------------------------------------------


def _stream_pair(certs: Any) -> tuple[uvssl.SslStream, uvssl.SslStream, socket.socket]:
    """A connected client/server SslStream pair over TCP on 127.0.0.1, handshakes done."""
    ls = listening_socket()
    raw_c = socket.create_connection(ls.getsockname(), timeout=10)
    raw_s, _ = ls.accept()
    ls.close()
    raw_s.settimeout(10)
    server = uvssl.make_ssl_server_stream(
        raw_s, certificate=str(certs.server_cert), key=str(certs.server_key)
    )
    client = uvssl.make_ssl_client_stream(raw_c, ca_file=str(certs.ca), server_hostname="localhost")
    t = PeerThread(server.do_handshake)
    t.start()
    client.do_handshake()
    t.result(10)
    return client, server, raw_c


def _wait_busy(stream: uvssl.SslStream) -> None:
    deadline = time.monotonic() + 10
    while not stream._busy.locked():
        assert time.monotonic() < deadline, "the reader never entered read()"
        time.sleep(0.005)
    time.sleep(0.05)  # let it reach the blocking wait in C


def test_ssl_stream_concurrent_calls_get_a_clear_error(certs):
    client, server, _ = _stream_pair(certs)
    try:
        reader = PeerThread(client.read, 5)
        reader.start()
        _wait_busy(client)
        for call in (
            lambda: client.write(b"x"),
            lambda: client.read(1),
            lambda: client.do_handshake(),
            lambda: client.version,
            lambda: client.cipher,
            lambda: client.peer_certificate,
            lambda: client.verify_result,
            lambda: client.ssl_pointer,
            lambda: uvssl.get_ssl_peer_certificate(client),
            lambda: client.close(),
        ):
            with pytest.raises(RuntimeError, match="another thread is inside a call"):
                call()
        assert not client.closed
        server.write(b"hello")
        assert reader.result(10) == b"hello"
        # the stream is whole: both ways still work
        client.write(b"back")
        assert server.read(4) == b"back"
        assert client.version in ("TLSv1.2", "TLSv1.3")
    finally:
        client.close()
        server.close()


def test_ssl_stream_blocked_reader_woken_by_shutdown_then_closed(certs):
    """close() cannot free the SSL* under a blocked read; shutting the socket down wakes it."""
    client, server, raw_c = _stream_pair(certs)
    try:
        reader = PeerThread(client.read, 5)
        reader.start()
        _wait_busy(client)
        with pytest.raises(RuntimeError):
            client.close()
        raw_c.shutdown(socket.SHUT_RDWR)
        reader.join(10)
        assert reader.done
        assert reader.error is None or isinstance(reader.error, (OSError, uvssl.SslCondition))
        client.close()
        assert client.closed
    finally:
        client.close()
        server.close()


# -- crashes: in a subprocess ---------------------------------------------------------------------

HAMMER_LOOP = r"""
import collections, sys, threading, time
import uvssl

counts = collections.Counter()


def hammer(ops):
    for name, op in ops:
        try:
            op()
            counts[name + ":ok"] += 1
        except RuntimeError as exc:
            kind = "threadsafe" if "call_threadsafe" in str(exc) else "ended"
            counts[f"{name}:{kind}"] += 1
        except (uvssl.SocketError, ValueError):
            counts[name + ":closed"] += 1


def echo_loop(state, ready, life):
    def read(sock, data):
        sock.write(data)

    def event(ev):
        if ev.socket is not None and not ev.socket.closed:
            ev.socket.close()

    def start():
        state["loop"] = uvssl.get_loop()
        srv = uvssl.tcp_server("127.0.0.1", 0, read, event)
        state["server"] = srv

        def connected(sock):
            state["sock"] = sock
            sock.write(b"x" * 4096)  # ping-pong from here on: the loop is busy
            ready.set()

        uvssl.tcp_connect("127.0.0.1", srv.port, read, event, connect_cb=connected)
        uvssl.delay(uvssl.exit_event_loop, life)  # the bound

    uvssl.start_event_loop(start, catch_app_errors=True, default_event_cb=lambda exc: None)
    ready.set()


def round_(life, hammer_for, stop):
    state, ready = {}, threading.Event()
    t = threading.Thread(target=echo_loop, args=(state, ready, life))
    t.start()
    ready.wait(10)
    if "sock" not in state:  # the loop ended before the connection was up
        t.join()
        return
    loop, sock, srv = state["loop"], state["sock"], state["server"]
    ops = [
        ("write", lambda: sock.write(b"y" * 1000)),
        ("pause", sock.pause_reading),
        ("limits", lambda: sock.set_write_buffer_limits(10, 1)),
        ("address", lambda: sock.remote_address),
        ("close", sock.close),
        ("srv_close", srv.close),
        ("delay", lambda: loop.delay(lambda: None, 0)),
        ("threadsafe_write", lambda: loop.call_threadsafe(sock.write, b"z" * 1000)),
    ]
    end = time.monotonic() + hammer_for
    while time.monotonic() < end:
        hammer(ops)
    if stop:
        loop.stop()
    while t.is_alive():  # through the teardown too
        hammer(ops + [("stop", loop.stop)])
    t.join()
    hammer(ops + [("stop", loop.stop)])  # and after it


round_(life=10, hammer_for=1.0, stop=True)  # stopped from here, busy
t_end = time.monotonic() + 1.0
n = 0
while time.monotonic() < t_end or n < 5:  # loops that end by themselves while we hammer
    round_(life=0.02, hammer_for=0, stop=False)
    n += 1
assert counts["write:threadsafe"] > 0, counts
assert counts["write:ok"] == 0, counts
print("ok", n, dict(counts))
"""

HAMMER_STREAM = r"""
import collections, socket, sys, threading, time
import uvssl

cert, key, ca = sys.argv[1:4]
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
raw_c = socket.create_connection(ls.getsockname(), timeout=10)
raw_s, _ = ls.accept()
raw_s.settimeout(10)
server = uvssl.make_ssl_server_stream(raw_s, certificate=cert, key=key)
client = uvssl.make_ssl_client_stream(raw_c, ca_file=ca, server_hostname="localhost")


def drain():
    try:
        while server.read(65536):
            pass
    except Exception:
        pass


threading.Thread(target=drain, daemon=True).start()
counts = collections.Counter()
end = time.monotonic() + 1.5


def hammer(k):
    ops = [
        ("write", lambda: client.write(b"w" * 4096)),
        ("cipher", lambda: client.cipher),
        ("peer_certificate", lambda: client.peer_certificate),
    ]
    while time.monotonic() < end:
        for name, op in ops[k % 2 :]:
            try:
                op()
                counts[name + ":ok"] += 1
            except RuntimeError:
                counts[name + ":busy"] += 1
            except Exception as exc:  # noqa: BLE001 - counted: none may happen
                counts[f"{name}:{type(exc).__name__}"] += 1


ts = [threading.Thread(target=hammer, args=(k,)) for k in range(3)]
for t in ts:
    t.start()
for t in ts:
    t.join()
client.close()
bad = {k: v for k, v in counts.items() if not k.endswith((":ok", ":busy"))}
assert not bad, counts
print("ok", dict(counts))
"""


def _run_script(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        # Under AddressSanitizer (SLOWDOWN) the loop thread's teardown can wait seconds for the
        # GIL while the main thread hammers native calls, each of which releases and retakes it.
        timeout=45 * SLOWDOWN,
    )
    assert proc.returncode == 0, (
        f"the process ended with {proc.returncode}\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    )
    assert proc.stdout.startswith("ok"), proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.timeout(60 * SLOWDOWN)
def test_hammering_a_loop_from_another_thread_does_not_crash():
    """Writes, closes, timers, call_threadsafe and stop from the main thread while the loop
    echoes in another, then through its teardown and after it; then loops that end by
    themselves while the main thread keeps at them."""
    _run_script(HAMMER_LOOP)


@pytest.mark.timeout(60 * SLOWDOWN)
def test_hammering_one_ssl_stream_from_two_threads_does_not_crash(certs):
    out = _run_script(HAMMER_STREAM, str(certs.server_cert), str(certs.server_key), str(certs.ca))
    assert out.startswith("ok")
