"""TCP sockets and servers and socket errors."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
from typing import Any

import pytest
from helpers import (
    LOCALHOST,
    echo_server,
    has_ipv6_loopback,
    port_is_free,
    raise_nofile_limit,
    run_loop,
)

import uvssl

pytestmark = pytest.mark.timeout(30)


def refusing_port():
    """A socket bound to a port but not listening: connections to it are refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((LOCALHOST, 0))
    return s


# -- echo ----------------------------------------------------------------------------------


def test_echo_1mib_sha256():
    payload = os.urandom(1 << 20)
    state: dict[str, Any] = {"buf": bytearray(), "events": []}
    server_errors: list[Any] = []

    def start():
        srv = echo_server(errors=server_errors)

        def read_cb(sock, data):
            assert isinstance(data, bytes)
            state["buf"] += data

        def event_cb(ev):
            state["events"].append(type(ev))
            ev.socket.close()
            srv.close()

        def connect_cb(sock):
            sock.shutdown("write")

        uvssl.tcp_connect(
            LOCALHOST, srv.port, read_cb, event_cb, data=payload, connect_cb=connect_cb
        )

    run_loop(start)
    assert server_errors == []
    assert state["events"] == [uvssl.TcpEof]
    assert len(state["buf"]) == len(payload)
    assert hashlib.sha256(state["buf"]).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_500_concurrent_connections():
    n = 500
    raise_nofile_limit(4 * n + 256)
    replies: dict[Any, Any] = {}
    errors: list[Any] = []

    def start():
        srv = echo_server(errors=errors)
        done = [0]

        def make(i):
            msg = (f"message {i} " * (1 + i % 7)).encode()
            buf = bytearray()

            def read_cb(sock, data):
                buf.extend(data)
                if len(buf) >= len(msg):
                    replies[i] = bytes(buf)
                    sock.close()
                    done[0] += 1
                    if done[0] == n:
                        srv.close()

            def event_cb(ev):
                errors.append((i, ev))
                ev.socket.close()
                done[0] += 1
                if done[0] == n:
                    srv.close()

            uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, event_cb, data=msg)

        for i in range(n):
            make(i)

    run_loop(start, timeout=20)
    assert errors == []
    assert len(replies) == n
    for i, got in replies.items():
        assert got == (f"message {i} " * (1 + i % 7)).encode()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_echo():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server("::1")

        def connect_cb(sock):
            state["local"] = sock.local_address
            state["remote"] = sock.remote_address

        def read_cb(sock, data):
            state["reply"] = state.get("reply", b"") + data
            if state["reply"] == b"over ipv6":
                sock.close()
                srv.close()

        state["port"] = srv.port
        uvssl.tcp_connect("::1", srv.port, read_cb, data=b"over ipv6", connect_cb=connect_cb)

    run_loop(start)
    assert state["reply"] == b"over ipv6"
    assert state["local"][0] == "::1"
    assert state["remote"] == ("::1", state["port"])


def test_connect_by_host_name():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server()

        def read_cb(sock, data):
            state["reply"] = data
            sock.close()
            srv.close()

        uvssl.tcp_connect("localhost", srv.port, read_cb, data=b"by name")

    run_loop(start)
    assert state["reply"] == b"by name"


# -- errors --------------------------------------------------------------------------------


def test_connection_refused():
    blocker = refusing_port()
    port = blocker.getsockname()[1]
    events: list[Any] = []
    state: dict[Any, Any] = {}
    try:

        def start():
            state["sock"] = uvssl.tcp_connect(LOCALHOST, port, lambda s, d: None, events.append)

        run_loop(start)
    finally:
        blocker.close()
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, uvssl.TcpRefused)
    assert isinstance(ev, uvssl.TcpError)
    assert isinstance(ev, uvssl.SocketError)
    assert isinstance(ev, OSError)
    assert ev.identifier == "connection-refused"
    assert ev.code == errno.ECONNREFUSED
    assert ev.socket is state["sock"]
    assert ev.socket.closed
    assert "connection-refused" in str(ev)


def test_unhandled_refusal_goes_to_default_event_cb():
    blocker = refusing_port()
    port = blocker.getsockname()[1]
    events: list[Any] = []
    try:
        run_loop(lambda: uvssl.tcp_connect(LOCALHOST, port, None), default_event_cb=events.append)
    finally:
        blocker.close()
    assert len(events) == 1 and isinstance(events[0], uvssl.TcpRefused)


def test_unknown_host_dns_error():
    events: list[Any] = []
    state: dict[Any, Any] = {}

    def start():
        state["sock"] = uvssl.tcp_connect("name.invalid", 80, lambda s, d: None, events.append)

    run_loop(start, timeout=20)
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, uvssl.DnsError)
    assert isinstance(ev, uvssl.SocketError)
    assert ev.socket is state["sock"]
    assert ev.socket.closed


def test_read_timeout():
    events = []
    state: dict[Any, Any] = {}

    def start():
        # a server that never sends (and closes its end when the client goes)
        srv = uvssl.tcp_server(LOCALHOST, 0, lambda s, d: None)
        state["server"] = srv

        def event_cb(ev):
            events.append(ev)
            state["closed_at_event"] = ev.socket.closed
            srv.close()

        state["sock"] = uvssl.tcp_connect(
            LOCALHOST, srv.port, lambda s, d: None, event_cb, read_timeout=0.2
        )

    run_loop(start)
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, uvssl.TcpTimeout)
    assert ev.socket is state["sock"]
    assert ev.identifier == "connection-timed-out"
    assert state["sock"].closed
    assert state["closed_at_event"]


def test_read_timeout_not_hit_while_data_flows():
    """Data arriving more often than read_timeout keeps the connection up."""
    events: list[Any] = []
    got = []

    def start():
        srv = echo_server()
        ticks = []

        def read_cb(sock, data):
            got.append(data)

        def tick():
            ticks.append(1)
            if len(ticks) == 5:
                t.cancel()
                sock.close()
                srv.close()
            else:
                sock.write(b"x")

        sock = uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, events.append, read_timeout=2)
        t = uvssl.interval(tick, 0.02)

    run_loop(start)
    assert events == []
    assert b"".join(got) == b"xxxx"


def test_peer_close_gives_eof_and_socket_stays_writable():
    state: dict[Any, Any] = {}

    def start():
        srv = uvssl.tcp_server(LOCALHOST, 0, None, connect_cb=lambda s: s.close())

        def event_cb(ev):
            state["ev"] = ev
            state["closed_at_eof"] = ev.socket.closed
            state["write_ok"] = ev.socket.write(b"still writable")
            ev.socket.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, None, event_cb)

    run_loop(start)
    assert isinstance(state["ev"], uvssl.TcpEof)
    assert state["ev"].identifier is not None
    assert state["closed_at_eof"] is False
    assert state["write_ok"] is True


def test_eof_without_event_cb_closes_socket():
    state: dict[Any, Any] = {}

    def start():
        srv = uvssl.tcp_server(LOCALHOST, 0, None, connect_cb=lambda s: s.close())
        state["sock"] = uvssl.tcp_connect(LOCALHOST, srv.port, None)

        def check():
            if state["sock"].closed:
                t.cancel()
                srv.close()

        t = uvssl.interval(check, 0.01)

    run_loop(start)
    assert state["sock"].closed


def test_half_close_reply_after_eof():
    state: dict[str, Any] = {"client": b"", "server": b"", "client_events": []}

    def start():
        def srv_read(sock, data):
            state["server"] += data

        def srv_event(ev):
            assert isinstance(ev, uvssl.TcpEof)
            ev.socket.write(b"reply to " + state["server"])
            ev.socket.close()

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read, srv_event)

        def connect_cb(sock):
            sock.write(b"question")
            sock.shutdown("write")
            with pytest.raises(uvssl.SocketClosed):
                sock.write(b"after shutdown")

        def read_cb(sock, data):
            state["client"] += data

        def event_cb(ev):
            state["client_events"].append(type(ev))
            ev.socket.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, event_cb, connect_cb=connect_cb)

    run_loop(start)
    assert state["server"] == b"question"
    assert state["client"] == b"reply to question"
    assert state["client_events"] == [uvssl.TcpEof]


def test_shutdown_bad_argument():
    def start():
        srv = echo_server()

        def connect_cb(sock):
            with pytest.raises(ValueError, match="how"):
                sock.shutdown("read")
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start)


def test_write_after_close_raises_socket_closed():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server()

        def connect_cb(sock):
            sock.close()
            assert sock.closed
            with pytest.raises(uvssl.SocketClosed) as ei:
                sock.write(b"too late")
            state["exc"] = ei.value
            with pytest.raises(uvssl.SocketClosed):
                uvssl.write_socket_data(sock, b"too late")
            sock.close()  # closing twice is harmless
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start)
    exc = state["exc"]
    assert isinstance(exc, uvssl.TcpError) and isinstance(exc, uvssl.SocketError)
    assert exc.socket is not None and exc.socket.closed


def test_write_after_loop_closed_socket():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server()
        state["sock"] = uvssl.tcp_connect(LOCALHOST, srv.port, None)
        uvssl.delay(uvssl.exit_event_loop, 0.05)

    run_loop(start)
    assert state["sock"].closed
    with pytest.raises(uvssl.SocketClosed):
        state["sock"].write(b"x")
    with pytest.raises(uvssl.SocketClosed):
        state["sock"].fileno()


# -- writing -------------------------------------------------------------------------------


def test_connect_data_first_then_early_writes_in_order():
    state: dict[str, Any] = {"server": b""}

    def start():
        def srv_read(sock, data):
            state["server"] += data

        def srv_event(ev):
            ev.socket.write(b"ack")
            ev.socket.close()

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read, srv_event)

        def read_cb(sock, data):
            state["reply"] = data
            sock.close()
            srv.close()

        sock = uvssl.tcp_connect(
            LOCALHOST,
            srv.port,
            read_cb,
            data=b"first|",
            connect_cb=lambda s: s.shutdown("write"),
        )
        assert sock.write(b"second|") is True
        uvssl.write_socket_data(sock, bytearray(b"third|"))
        sock.write(memoryview(b"xxfourth|")[2:])

    run_loop(start)
    assert state["server"] == b"first|second|third|fourth|"
    assert state["reply"] == b"ack"


def test_write_cb_fires_after_writing():
    state: dict[str, Any] = {"written": [], "received": 0}
    payload = os.urandom(512 * 1024)

    def start():
        def srv_read(sock, data):
            state["received"] += len(data)
            if state["received"] == len(payload):
                sock.write(b"!")

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read)

        def write_cb(sock):
            state["written"].append(sock.write_buffer_size)

        def read_cb(sock, data):
            sock.close()
            srv.close()

        def connect_cb(sock):
            sock.write(payload)

        uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, connect_cb=connect_cb, write_cb=write_cb)

    run_loop(start)
    assert state["written"], "write_cb never fired"
    assert state["written"][0] == 0
    assert state["received"] == len(payload)


def test_connect_cb_both_sides_and_addresses():
    state: dict[Any, Any] = {}

    def start():
        def srv_connect(sock):
            assert isinstance(sock, uvssl.Socket)
            state["server_side"] = (sock.local_address, sock.remote_address)
            state["server_fileno"] = sock.fileno()

        srv = uvssl.tcp_server(LOCALHOST, 0, lambda s, d: s.write(d), connect_cb=srv_connect)
        state["port"] = srv.port

        def connect_cb(sock):
            state["client_side"] = (sock.local_address, sock.remote_address)
            state["client_fileno"] = sock.fileno()
            state["connected"] = sock.connected
            sock.write(b"ping")

        def read_cb(sock, data):
            sock.close()
            srv.close()

        state["sock"] = uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, connect_cb=connect_cb)

    run_loop(start)
    (c_local, c_remote) = state["client_side"]
    (s_local, s_remote) = state["server_side"]
    assert c_remote == (LOCALHOST, state["port"])
    assert s_local == c_remote
    assert s_remote == c_local
    assert c_local[0] == LOCALHOST and isinstance(c_local[1], int) and c_local[1] > 0
    assert state["connected"] is True
    for key in ("client_fileno", "server_fileno"):
        assert isinstance(state[key], int) and state[key] >= 0
    assert state["client_fileno"] != state["server_fileno"]
    assert state["sock"].closed and not state["sock"].connected


def test_fileno_is_the_socket():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server()

        def connect_cb(sock):
            fd = sock.fileno()
            state["fd_type"] = type(fd)
            state["is_sock"] = stat.S_ISSOCK(os.fstat(fd).st_mode)
            dup = socket.socket(fileno=os.dup(fd))
            try:
                state["peer"] = dup.getpeername()
            finally:
                dup.close()
            state["remote"] = sock.remote_address
            state["server_fd"] = srv.fileno()
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start)
    assert state["fd_type"] is int
    assert state["is_sock"]
    assert tuple(state["peer"]) == state["remote"]
    assert isinstance(state["server_fd"], int)


def _sockopts(sock):
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        return (
            dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
            dup.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
        )
    finally:
        dup.close()


def test_set_options():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server()

        def connect_cb(sock):
            sock.set_options(nodelay=False, keepalive=False)
            state["off"] = _sockopts(sock)
            sock.set_options(nodelay=True, keepalive=True)
            state["on"] = _sockopts(sock)
            sock.set_options(keepalive=30)
            state["idle"] = _sockopts(sock)
            if hasattr(socket, "TCP_KEEPIDLE"):
                dup = socket.socket(fileno=os.dup(sock.fileno()))
                state["keepidle"] = dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                dup.close()
            with pytest.raises(TypeError, match="nodelay"):
                sock.set_options(nodelay="yes")
            with pytest.raises(ValueError, match="keepalive"):
                sock.set_options(keepalive=-1)
            sock.write(b"still works")

        def read_cb(sock, data):
            state["echo"] = data
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, connect_cb=connect_cb)

    run_loop(start)
    assert state["off"] == (False, False)
    assert state["on"] == (True, True)
    assert state["idle"] == (True, True)
    if "keepidle" in state:
        assert state["keepidle"] == 30
    assert state["echo"] == b"still works"


def test_pause_and_resume_reading():
    state: dict[str, Any] = {"reads_while_paused": [], "server": b"", "paused": False}

    def start():
        def srv_connect(sock):
            sock.pause_reading()
            state["paused"] = True

            def resume():
                state["paused"] = False
                sock.resume_reading()

            uvssl.delay(resume, 0.3)

        def srv_read(sock, data):
            if state["paused"]:
                state["reads_while_paused"].append(data)
            state["server"] += data
            if state["server"] == b"hello while paused":
                sock.write(b"done")
                sock.close()

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read, connect_cb=srv_connect)

        def read_cb(sock, data):
            state["reply"] = data
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, data=b"hello while paused")

    run_loop(start)
    assert state["reads_while_paused"] == []
    assert state["server"] == b"hello while paused"
    assert state["reply"] == b"done"


def test_flow_control_high_water_and_drain():
    """A peer that does not read: write() turns False, the buffer stays bounded, and drain_cb
    fires once the peer reads again."""
    chunk = b"z" * (256 * 1024)
    high, low = 1 << 20, 256 * 1024
    max_total = 512 << 20  # safety bound on how much we ever write
    state: dict[str, Any] = {
        "sent": 0,
        "received": 0,
        "drains": 0,
        "false_seen": False,
        "max_buffer": 0,
        "stalled": False,
        "drains_after_resume": 0,
    }

    def start():
        server_side: dict[Any, Any] = {}

        def srv_connect(sock):
            sock.pause_reading()
            server_side["sock"] = sock

        def srv_read(sock, data):
            state["received"] += len(data)
            if state["stalled"] and state["received"] == state["sent"]:
                sock.close()
                srv.close()

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read, connect_cb=srv_connect)

        def pump(sock):
            # write until the high-water mark says stop
            while state["sent"] < max_total:
                ok = sock.write(chunk)
                state["sent"] += len(chunk)
                state["max_buffer"] = max(state["max_buffer"], sock.write_buffer_size)
                if not ok:
                    state["false_seen"] = True
                    break
            else:
                pytest.fail("the kernel never pushed back: write() never returned False")
            mark = state["drains"]
            uvssl.delay(check_stalled, 0.3, sock, mark)

        def check_stalled(sock, mark):
            if state["stalled"] or state["drains"] != mark:
                return  # a drain came meanwhile: pump() runs again and re-checks
            # no drain for a while: the peer's window and our kernel buffer are full
            state["stalled"] = True
            state["buffer_at_stall"] = sock.write_buffer_size
            state["above_low_at_stall"] = sock.write_buffer_size > low
            server_side["sock"].resume_reading()

        def drain_cb(sock):
            state["drains"] += 1
            assert sock.write_buffer_size <= low
            if state["stalled"]:
                state["drains_after_resume"] += 1
                sock.close()  # graceful: the rest is flushed, then FIN
            else:
                pump(sock)

        def connect_cb(sock):
            sock.set_write_buffer_limits(high, low, drain_cb=drain_cb)
            assert sock.drain_cb is drain_cb
            pump(sock)

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start, timeout=25)
    assert state["false_seen"]
    assert state["stalled"]
    assert state["above_low_at_stall"]
    assert state["max_buffer"] < 8 << 20, state["max_buffer"]
    assert state["drains_after_resume"] == 1
    assert state["received"] == state["sent"]


def test_write_buffer_limits_bad_arguments():
    def start():
        srv = echo_server()

        def connect_cb(sock):
            with pytest.raises(TypeError, match="high"):
                sock.set_write_buffer_limits("big")
            with pytest.raises(ValueError, match="low"):
                sock.set_write_buffer_limits(100, 200)
            with pytest.raises(ValueError, match="high"):
                sock.set_write_buffer_limits(-1)
            with pytest.raises(TypeError, match="drain_cb"):
                sock.set_write_buffer_limits(100, 10, drain_cb=5)
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start)


# -- stream mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("client_kw", [{"stream": True}, {"dont_drain_read_buffer": True}])
def test_stream_mode(client_kw):
    state: dict[str, Any] = {"server_calls": 0, "available_seen": []}

    def start():
        def srv_read(sock, stream):
            assert isinstance(stream, uvssl.AsyncStream)
            assert stream.socket is sock
            assert sock.stream is stream
            state["server_calls"] += 1
            state["available_seen"].append(stream.available)
            if stream.available < 10:
                return  # leave it buffered
            state["first5"] = stream.read(5)
            state["rest"] = stream.read()
            state["empty"] = stream.read()
            stream.write(b"stream ok")

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read, stream=True)

        def read_cb(sock, stream):
            assert isinstance(stream, uvssl.AsyncStream)
            state["client_partial"] = stream.read(6)
            state["client_rest"] = stream.read(-1)
            sock.close()
            srv.close()

        sock = uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, data=b"hello", **client_kw)
        uvssl.delay(sock.write, 0.1, b"world")

    run_loop(start)
    assert state["first5"] == b"hello"
    assert state["rest"] == b"world"
    assert state["empty"] == b""
    assert state["available_seen"][-1] == 10
    assert state["client_partial"] == b"stream"
    assert state["client_rest"] == b" ok"


def test_stream_read_bad_argument():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server()

        def read_cb(sock, stream):
            with pytest.raises(TypeError, match=r"\bn\b"):
                stream.read("3")
            state["got"] = stream.read()
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, data=b"abc", stream=True)

    run_loop(start)
    assert state["got"] == b"abc"


# -- tcp_open ------------------------------------------------------------------------------


def test_tcp_open_rejects_socketpair():
    a, b = socket.socketpair()
    try:

        def start():
            with pytest.raises(ValueError):
                uvssl.tcp_open(a, lambda s, d: None)

        run_loop(start)
        # still the caller's socket, still usable
        assert a.fileno() >= 0
        a.sendall(b"x")
        assert b.recv(1) == b"x"
    finally:
        a.close()
        b.close()


def test_tcp_open_rejects_unconnected_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:

        def start():
            with pytest.raises(ValueError):
                uvssl.tcp_open(s, lambda s_, d: None)
            with pytest.raises(TypeError, match="fd_or_socket"):
                uvssl.tcp_open("3", lambda s_, d: None)  # type: ignore[arg-type]

        run_loop(start)
    finally:
        s.close()


@pytest.mark.parametrize("as_fd", [False, True])
def test_tcp_open_connected_tcp_socket(as_fd):
    state: dict[str, Any] = {"reply": b""}

    def start():
        srv = echo_server()
        # the kernel completes the handshake from the listen queue: no loop turn needed
        py = socket.create_connection((LOCALHOST, srv.port), timeout=5)
        state["py_local"] = py.getsockname()
        target = py.detach() if as_fd else py

        def read_cb(sock, data):
            state["reply"] += data
            if state["reply"] == b"through tcp_open":
                state["addr"] = sock.local_address
                sock.close()
                srv.close()

        def connect_cb(sock):
            state["connect_cb"] = sock

        state["sock"] = uvssl.tcp_open(target, read_cb, data=b"through ", connect_cb=connect_cb)
        state["sock"].write(b"tcp_open")
        if not as_fd:
            state["detached"] = py.fileno() == -1

    run_loop(start)
    assert state["reply"] == b"through tcp_open"
    assert state["connect_cb"] is state["sock"]
    assert state["addr"] == tuple(state["py_local"])
    if not as_fd:
        assert state["detached"]


# -- write_socket_data / close_socket / servers -------------------------------------------


def test_write_socket_data_replaces_callbacks():
    calls: list[Any] = []

    def start():
        srv = echo_server()

        def old_read(sock, data):
            calls.append("old_read")

        def old_event(ev):
            calls.append("old_event")

        def new_read(sock, data):
            calls.append(("new_read", data))
            sock.shutdown("write")

        def new_write(sock):
            calls.append("new_write")

        def new_event(ev):
            calls.append(("new_event", type(ev)))
            ev.socket.close()
            srv.close()

        def connect_cb(sock):
            r = uvssl.write_socket_data(
                sock, b"abc", read_cb=new_read, write_cb=new_write, event_cb=new_event
            )
            assert r is True
            assert sock.read_cb is new_read
            assert sock.event_cb is new_event
            assert sock.write_cb is new_write

        uvssl.tcp_connect(LOCALHOST, srv.port, old_read, old_event, connect_cb=connect_cb)

    run_loop(start)
    assert "old_read" not in calls and "old_event" not in calls
    assert ("new_read", b"abc") in calls
    assert "new_write" in calls
    assert calls[-1] == ("new_event", uvssl.TcpEof)


def test_write_socket_data_bad_arguments():
    def start():
        srv = echo_server()

        def connect_cb(sock):
            with pytest.raises(TypeError, match="socket"):
                uvssl.write_socket_data("sock", b"x")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="read_cb"):
                uvssl.write_socket_data(sock, b"x", read_cb=1)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="data"):
                uvssl.write_socket_data(sock, "text")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="socket"):
                uvssl.close_socket(object())  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="server"):
                uvssl.close_tcp_server(sock)
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start)


def _close_test(force):
    """Write 4 MiB and close at once; return (bytes the peer got, size written)."""
    payload = b"q" * (4 << 20)
    state: dict[str, Any] = {"received": 0, "server_events": []}

    def start():
        def srv_read(sock, data):
            state["received"] += len(data)

        def srv_event(ev):
            state["server_events"].append(type(ev))
            ev.socket.close()
            srv.close()

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read, srv_event)

        def connect_cb(sock):
            sock.write(payload)
            uvssl.close_socket(sock, force=force)
            state["closed_now"] = sock.closed
            with pytest.raises(uvssl.SocketClosed):
                sock.write(b"more")

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start)
    assert state["closed_now"]
    assert len(state["server_events"]) == 1
    return state, len(payload)


def test_close_socket_graceful_flushes_pending_writes():
    state, size = _close_test(force=False)
    assert state["received"] == size
    assert state["server_events"] == [uvssl.TcpEof]


def test_close_socket_force_drops_pending_writes():
    state, size = _close_test(force=True)
    assert state["received"] < size
    assert issubclass(state["server_events"][0], uvssl.TcpError)


def test_close_lets_go_of_a_socket_at_once_when_nothing_is_left_to_flush():
    # A socket whose writes have all reached the kernel is finished when close() returns: it
    # leaves the loop's live set and no event reaches it any more. With writes still queued
    # (or force=False and a write notification due) it stays followed until they are out, so
    # that a failure can still be reported.
    state: dict[str, Any] = {"live": [], "events": [], "echo": b""}

    def live(sock):
        return sock in uvssl.get_loop()._live

    def start():
        def srv_read(sock, data):
            sock.write(data)  # queued until this callback returns
            sock.close()
            state["live"].append(("server, data queued", live(sock), sock.closed))

        srv = uvssl.tcp_server(LOCALHOST, 0, srv_read, state["events"].append)

        def cli_read(sock, data):
            state["echo"] += data
            sock.close()  # "ping" went out long ago
            state["live"].append(("client, all flushed", live(sock), sock.closed))
            with pytest.raises(uvssl.SocketClosed):
                sock.write(b"late")
            srv.close()

        ping = lambda s: s.write(b"ping")  # noqa: E731
        uvssl.tcp_connect(LOCALHOST, srv.port, cli_read, state["events"].append, connect_cb=ping)

    run_loop(start)  # ends by itself: the released sockets close without anyone being told
    assert state["echo"] == b"ping"
    assert state["live"] == [
        ("server, data queued", True, True),
        ("client, all flushed", False, True),
    ]
    assert state["events"] == []


def test_close_tcp_server_keeps_accepted_connections():
    state: dict[str, Any] = {"echo": b"", "events": []}

    def start():
        def srv_connect(sock):
            uvssl.close_tcp_server(srv)
            state["server_closed"] = srv.closed
            uvssl.delay(second_client, 0.05)

        srv = echo_server(connect_cb=srv_connect)
        port = srv.port

        def second_client():
            def ev(e):
                state["events"].append(e)
                # the first connection still echoes after the server stopped listening
                first.write(b"after close")

            uvssl.tcp_connect(LOCALHOST, port, None, ev)

        def read_cb(sock, data):
            state["echo"] += data
            if state["echo"] == b"after close":
                sock.close()

        first = uvssl.tcp_connect(LOCALHOST, port, read_cb)

    run_loop(start)
    assert state["server_closed"]
    assert len(state["events"]) == 1 and isinstance(state["events"][0], uvssl.TcpRefused)
    assert state["echo"] == b"after close"


def test_server_close_method_and_port_freed():
    state: dict[Any, Any] = {}

    def start():
        srv = uvssl.tcp_server(LOCALHOST, 0, None)
        state["srv"] = srv
        assert not srv.closed
        srv.close()
        srv.close()  # twice is harmless
        assert srv.closed

    run_loop(start)
    assert port_is_free(state["srv"].port)


def test_reuse_port_two_servers_one_port():
    state: dict[Any, Any] = {"replies": [], "ports": set()}

    def start():
        s1 = echo_server(reuse_port=True)
        s2 = echo_server(port=s1.port, reuse_port=True)
        assert s2.port == s1.port
        left = [8]

        def read_cb(sock, data):
            state["replies"].append(data)
            sock.close()
            left[0] -= 1
            if left[0] == 0:
                s1.close()
                s2.close()

        for i in range(8):
            uvssl.tcp_connect(LOCALHOST, s1.port, read_cb, data=f"r{i}".encode())

    run_loop(start)
    assert sorted(state["replies"]) == sorted(f"r{i}".encode() for i in range(8))


def test_address_in_use():
    state: dict[Any, Any] = {}

    def start():
        s1 = uvssl.tcp_server(LOCALHOST, 0, None)
        with pytest.raises(uvssl.SocketError) as ei:
            uvssl.tcp_server(LOCALHOST, s1.port, None)
        state["exc"] = ei.value
        # the failed server left nothing behind; the first one still works
        s1.close()

    run_loop(start)
    exc = state["exc"]
    assert exc.identifier == "address-in-use"
    assert exc.code == errno.EADDRINUSE
    assert "address-in-use" in str(exc)


def test_address_in_use_by_foreign_socket():
    blocker = socket.socket()
    blocker.bind((LOCALHOST, 0))
    blocker.listen(1)
    try:

        def start():
            with pytest.raises(uvssl.SocketError) as ei:
                uvssl.tcp_server(LOCALHOST, blocker.getsockname()[1], None, reuse_port=False)
            assert ei.value.identifier == "address-in-use"

        run_loop(start)
    finally:
        blocker.close()


def test_socket_data_slot_and_repr():
    state: dict[Any, Any] = {}

    def start():
        srv = echo_server()
        sock = uvssl.tcp_connect(LOCALHOST, srv.port, None)
        assert sock.data is None
        sock.data = {"user": 1}

        def connect_cb(s):
            state["data"] = s.data
            state["repr"] = repr(s)
            s.close()
            srv.close()

        sock.connect_cb = connect_cb

    run_loop(start)
    assert state["data"] == {"user": 1}
    assert isinstance(state["repr"], str)


# -- bad arguments -------------------------------------------------------------------------


def _noop(*a):
    pass


BAD_CALLS = [
    ("connect port str", TypeError, "port", lambda: uvssl.tcp_connect(LOCALHOST, "80", _noop)),  # type: ignore[arg-type]
    ("connect port float", TypeError, "port", lambda: uvssl.tcp_connect(LOCALHOST, 80.0, _noop)),  # type: ignore[arg-type]
    ("connect port big", ValueError, "port", lambda: uvssl.tcp_connect(LOCALHOST, 70000, _noop)),
    ("connect port negative", ValueError, "port", lambda: uvssl.tcp_connect(LOCALHOST, -1, _noop)),
    ("server port str", TypeError, "port", lambda: uvssl.tcp_server(LOCALHOST, "80", _noop)),  # type: ignore[arg-type]
    ("server port big", ValueError, "port", lambda: uvssl.tcp_server(LOCALHOST, 70000, _noop)),
    ("connect read_cb", TypeError, "read_cb", lambda: uvssl.tcp_connect(LOCALHOST, 9, "cb")),  # type: ignore[arg-type]
    ("server read_cb", TypeError, "read_cb", lambda: uvssl.tcp_server(LOCALHOST, 0, 42)),  # type: ignore[arg-type]
    ("connect event_cb", TypeError, "event_cb", lambda: uvssl.tcp_connect(LOCALHOST, 9, _noop, 42)),  # type: ignore[arg-type]
    (
        "server connect_cb",
        TypeError,
        "connect_cb",
        lambda: uvssl.tcp_server(LOCALHOST, 0, _noop, connect_cb=1),  # type: ignore[arg-type]
    ),
    (
        "connect write_cb",
        TypeError,
        "write_cb",
        lambda: uvssl.tcp_connect(LOCALHOST, 9, _noop, write_cb="x"),  # type: ignore[arg-type]
    ),
    ("data str", TypeError, "data", lambda: uvssl.tcp_connect(LOCALHOST, 9, _noop, data="text")),  # type: ignore[arg-type]
    ("data int", TypeError, "data", lambda: uvssl.tcp_connect(LOCALHOST, 9, _noop, data=5)),  # type: ignore[arg-type]
    ("data list", TypeError, "data", lambda: uvssl.tcp_connect(LOCALHOST, 9, _noop, data=[1, 2])),  # type: ignore[arg-type]
    (
        "backlog str",
        TypeError,
        "backlog",
        lambda: uvssl.tcp_server(LOCALHOST, 0, _noop, backlog="10"),  # type: ignore[arg-type]
    ),
    (
        "backlog negative",
        ValueError,
        "backlog",
        lambda: uvssl.tcp_server(LOCALHOST, 0, _noop, backlog=-5),
    ),
    ("host int", TypeError, "host", lambda: uvssl.tcp_connect(1234, 9, _noop)),  # type: ignore[arg-type]
    ("host empty", ValueError, "host", lambda: uvssl.tcp_connect("", 9, _noop)),
    (
        "read_timeout negative",
        ValueError,
        "read_timeout",
        lambda: uvssl.tcp_connect(LOCALHOST, 9, _noop, read_timeout=-1),
    ),
    (
        "write_timeout str",
        TypeError,
        "write_timeout",
        lambda: uvssl.tcp_connect(LOCALHOST, 9, _noop, write_timeout="1"),  # type: ignore[arg-type]
    ),
    ("bind_address int", TypeError, "bind_address", lambda: uvssl.tcp_server(5, 0, _noop)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    "exc_type,word,call", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_arguments(exc_type, word, call):
    state: dict[Any, Any] = {}

    def start():
        with pytest.raises(exc_type) as ei:
            call()
        state["msg"] = str(ei.value)

    run_loop(start)  # also: the rejected call left no handle behind (the loop ends)
    assert word in state["msg"]


def test_write_bad_data():
    def start():
        srv = echo_server()

        def connect_cb(sock):
            for bad in ("text", 5, None, [1]):
                with pytest.raises(TypeError, match="data"):
                    sock.write(bad)
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, None, connect_cb=connect_cb)

    run_loop(start)


def test_tcp_calls_outside_loop():
    with pytest.raises(RuntimeError):
        uvssl.tcp_connect(LOCALHOST, 9, _noop)
    with pytest.raises(RuntimeError):
        uvssl.tcp_server(LOCALHOST, 0, _noop)
