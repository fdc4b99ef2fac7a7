"""Graceful shutdown: TcpServer.shutdown(timeout, done_cb).

The peers are stdlib sockets in threads: they read slowly (so that the server still holds
most of its response when the shutdown starts) or not at all. TLS peers use
``suppress_ragged_eofs=False``, so a connection cut without close_notify raises instead of
looking like a clean end.
"""

from __future__ import annotations

import gc
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import SANITIZED, raise_nofile_limit, run_loop
from tls_support import PeerThread

import uvssl

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = 16 * 1024 * 1024

pytestmark = pytest.mark.timeout(60)


def slow_reader(port: int, tls_ctx: Optional[ssl.SSLContext]) -> tuple[int, str]:
    """Send a request, then read the answer in small sips until the end; return (bytes, how
    it ended)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: a small window
    raw.settimeout(20)
    raw.connect(("127.0.0.1", port))
    s: Any = raw
    if tls_ctx is not None:
        s = tls_ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    s.sendall(b"GET")
    total = 0
    try:
        while True:
            chunk = s.recv(16384)
            if not chunk:
                return total, "clean"
            total += len(chunk)
            if total < RESPONSE // 4:
                time.sleep(0.001)
    except (ssl.SSLError, OSError) as e:
        return total, f"error: {e!r}"
    finally:
        s.close()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_shutdown_flushes_multi_megabyte_responses_then_closes_cleanly(
    certs: Any, tls: bool
) -> None:
    n = 3
    server_box: list[uvssl.TcpServer] = []
    done: list[uvssl.TcpServer] = []
    answered: list[uvssl.Socket] = []
    client_ctx = None
    if tls:
        client_ctx = ssl.create_default_context(cafile=str(certs.ca))
    peers: list[PeerThread] = []

    def on_read(sock: uvssl.Socket, data: bytes) -> None:
        for _ in range(RESPONSE // (1024 * 1024)):  # several writes: all must arrive
            sock.write(b"r" * (1024 * 1024))
        answered.append(sock)
        if len(answered) == n:
            # every response is mostly still in the server's buffers
            assert all(s.write_buffer_size > RESPONSE // 4 for s in answered)
            server_box[0].shutdown(timeout=30, done_cb=done.append)

    def start() -> None:
        if tls:
            server = uvssl.tcp_ssl_server(
                "127.0.0.1",
                0,
                on_read,
                certificate=str(certs.server_cert),
                key=str(certs.server_key),
            )
        else:
            server = uvssl.tcp_server("127.0.0.1", 0, on_read)  # type: ignore[assignment]
        server_box.append(server)
        for _ in range(n):
            peers.append(PeerThread(slow_reader, server.port, client_ctx))
            peers[-1].start()

    run_loop(start, timeout=30)
    assert done == server_box
    for p in peers:
        assert p.result() == (RESPONSE, "clean")
    assert server_box[0].closed
    # the listening socket went at once: nothing is listening on the port any more
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server_box[0].port), timeout=5).close()


def test_shutdown_aborts_a_peer_that_never_reads_at_the_timeout() -> None:
    done: list[float] = []
    started: list[float] = []
    stop_peer = threading.Event()
    result: dict[str, Any] = {}

    def never_reads(port: int) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET")
        stop_peer.wait(20)
        try:  # the server gave up: whatever arrived, then a reset or an EOF
            got = 0
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
            result["end"] = "eof"
        except OSError as e:
            result["end"] = type(e).__name__
        s.close()

    def on_read(sock: uvssl.Socket, data: bytes) -> None:
        sock.write(b"x" * (16 * 1024 * 1024))
        started.append(time.monotonic())
        box[0].shutdown(timeout=0.5, done_cb=lambda srv: done.append(time.monotonic()))

    box: list[uvssl.TcpServer] = []

    def start() -> None:
        box.append(uvssl.tcp_server("127.0.0.1", 0, on_read))
        threading.Thread(target=never_reads, args=(box[0].port,), daemon=True).start()

    run_loop(start, timeout=20)
    stop_peer.set()
    assert len(done) == 1
    assert done[0] - started[0] >= 0.45  # it waited for the timeout, then gave up
    time.sleep(0.2)


def test_shutdown_closes_handshakes_in_progress_at_once(certs: Any) -> None:
    # a TLS server's connection still in its handshake never reached the application: the
    # shutdown closes it without waiting for the timeout
    done: list[uvssl.TcpServer] = []
    raw: list[socket.socket] = []

    def start() -> None:
        server = uvssl.tcp_ssl_server(
            "127.0.0.1", 0, None, certificate=str(certs.server_cert), key=str(certs.server_key)
        )
        raw.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))

        def later() -> None:
            server.shutdown(timeout=60, done_cb=done.append)

        uvssl.delay(later, 0.1)  # accepted by then, its handshake waiting for a ClientHello

    run_loop(start, timeout=10)  # fails if the shutdown waited for its 60 s timeout
    assert len(done) == 1
    raw[0].settimeout(5)
    try:  # closed (or, if it was not accepted yet, reset with the listening socket)
        assert raw[0].recv(10) == b""
    except ConnectionResetError:
        pass
    raw[0].close()


def test_shutdown_of_an_idle_server_calls_done_cb_and_checks_arguments() -> None:
    done: list[uvssl.TcpServer] = []
    errors: list[BaseException] = []

    def start() -> None:
        server = uvssl.tcp_server("127.0.0.1", 0, None)
        for args in [(-1,), ("soon",), (1.0, "not callable")]:
            try:
                server.shutdown(*args)  # type: ignore[arg-type]
            except (TypeError, ValueError) as e:
                errors.append(e)
        assert not server.shutting_down
        server.shutdown(5, done.append)
        assert server.shutting_down
        try:
            server.shutdown()
        except RuntimeError as e:
            errors.append(e)

    run_loop(start)
    assert len(done) == 1
    assert [type(e) for e in errors] == [ValueError, TypeError, TypeError, RuntimeError]
    assert "already" in str(errors[-1])


def test_an_error_in_done_cb_propagates() -> None:
    def boom(server: uvssl.TcpServer) -> None:
        raise ValueError("done_cb failed")

    def start() -> None:
        uvssl.tcp_server("127.0.0.1", 0, None).shutdown(1, boom)

    with pytest.raises(ValueError, match="done_cb failed"):
        run_loop(start)


def test_connections_of_other_servers_and_clients_are_left_alone() -> None:
    got: list[bytes] = []

    def start() -> None:
        a = uvssl.tcp_server("127.0.0.1", 0, lambda s, d: s.write(d))
        b = uvssl.tcp_server("127.0.0.1", 0, lambda s, d: s.write(d))

        def on_reply(sock: uvssl.Socket, data: bytes) -> None:
            got.append(data)
            if data == b"one":
                a.shutdown(5)  # the client of b is not a's
                uvssl.delay(lambda: sock.write(b"two"), 0.05)
            else:
                sock.close()
                b.close()

        uvssl.tcp_connect("127.0.0.1", b.port, on_reply, data=b"one")

    run_loop(start)
    assert got == [b"one", b"two"]


# -- 2,000 connections: descriptors and memory back where they were ------------------------------

CLIENTS = """
import socket, ssl, sys, time
port, n, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
conns = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                        server_hostname="localhost")
    s.sendall(b"hi")
    conns.append(s)
print("READY", flush=True)
ends = 0
for s in conns:
    s.settimeout(30)
    try:
        while s.recv(100):
            pass
        ends += 1
    except OSError:
        pass
print("CLEAN", ends, flush=True)
"""


def rss_kib() -> int:
    """Resident memory, after glibc gave back what it holds free (malloc_trim): what is left
    is what is in use, not heap fragmentation from the connections that came and went."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.timeout(120)
def test_shutdown_of_2000_connections_returns_descriptors_and_memory(certs: Any) -> None:
    raise_nofile_limit(8192)
    n = 300 if SANITIZED else 2000
    ctx = uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.server_key))
    fds_after: list[int] = []
    rss_after: list[int] = []

    def cycle() -> None:
        greeted: list[uvssl.Socket] = []
        child: list[subprocess.Popen[bytes]] = []
        box: list[uvssl.TcpServer] = []

        def on_read(sock: uvssl.Socket, data: bytes) -> None:
            greeted.append(sock)
            sock.write(b"bye")
            if len(greeted) == n:
                box[0].shutdown(30, lambda srv: None)

        def start() -> None:
            server = uvssl.tcp_ssl_server("127.0.0.1", 0, on_read, ssl_ctx=ctx, backlog=4096)
            box.append(server)
            child.append(
                subprocess.Popen(
                    [sys.executable, "-c", CLIENTS, str(server.port), str(n), str(certs.ca)],
                    stdout=subprocess.PIPE,
                )
            )

        run_loop(start, timeout=90)
        out, _ = child[0].communicate(timeout=30)
        assert f"CLEAN {n}".encode() in out, out  # every client saw close_notify
        del greeted[:]
        gc.collect()
        fds_after.append(len(os.listdir("/proc/self/fd")))
        rss_after.append(rss_kib())

    uvssl.start_event_loop()  # libuv's process-wide descriptors exist from here on
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        cycle()
    assert fds_after == [fds_before] * 3
    assert not [o for o in gc.get_objects() if isinstance(o, uvssl.Socket)]
    if SANITIZED:
        return  # descriptors and leaks are checked; resident memory is not meaningful here
    # the first cycle sets up what stays (OpenSSL's tables, the loop's buffers); each later
    # cycle of 2,000 connections must give back all it took: less than 0.5 KiB each left over
    assert max(rss_after) - rss_after[0] < 1024, rss_after


# -- context managers --------------------------------------------------------------------------


def test_with_closes_a_server() -> None:
    seen: list[BaseException] = []

    def start() -> None:
        with uvssl.tcp_server("127.0.0.1", 0, None) as server:
            assert not server.closed
        assert server.closed  # stopped listening on leaving the block
        uvssl.tcp_connect("127.0.0.1", server.port, None, seen.append)

    run_loop(start)
    assert len(seen) == 1 and isinstance(seen[0], uvssl.TcpRefused)


def test_with_socket_closes_after_the_reply() -> None:
    got: list[bytes] = []

    def start() -> None:
        server = uvssl.tcp_server("127.0.0.1", 0, lambda s, d: s.write(d))

        def on_reply(sock: uvssl.Socket, data: bytes) -> None:
            with sock:
                got.append(data)
            assert sock.closed
            server.close()

        uvssl.tcp_connect("127.0.0.1", server.port, on_reply, lambda ev: None, data=b"ping")

    run_loop(start)
    assert got == [b"ping"]


def test_ssl_stream_is_a_context_manager(certs: Any) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))

    def serve() -> bytes:
        conn, _ = srv.accept()
        with sctx.wrap_socket(conn, server_side=True) as t:
            return t.recv(100)

    peer = PeerThread(serve)
    peer.start()
    raw = socket.create_connection(srv.getsockname(), timeout=10)
    with uvssl.make_ssl_client_stream(
        raw, ca_file=str(certs.ca), server_hostname="localhost"
    ) as stream:
        stream.write(b"over tls")
    assert stream.closed
    assert raw.fileno() == -1
    assert peer.result() == b"over tls"
    srv.close()


def test_script_in_a_subprocess_uses_with_blocks() -> None:
    # the README's style: a server as a context manager in the start function
    code = textwrap.dedent(
        """
        import uvssl
        def start():
            server = uvssl.tcp_server("127.0.0.1", 0, lambda s, d: s.write(d))
            def reply(sock, data):
                with sock, server:
                    print(data.decode())
            uvssl.tcp_connect("127.0.0.1", server.port, reply, data=b"hello")
        uvssl.start_event_loop(start)
        print("ended")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=30, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hello", "ended"]
