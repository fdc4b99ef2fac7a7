"""Sockets made before they connect: init_tcp_socket, init_tcp_ssl_socket, connect_tcp_socket.

The peers are stdlib servers in threads (plain and TLS); they record what arrived, in order,
and the name the client asked for (SNI), so that queued writes and host name defaults can be
checked from the server's side.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any, Optional

import pytest
from helpers import LOCALHOST, LoopHarness, has_ipv6_loopback, run_loop
from tls_support import (
    PEER_TIMEOUT,
    PeerThread,
    recv_until,
    stdlib_server_context,
)

import uvssl

pytestmark = pytest.mark.timeout(60)

END = b"<end>"


# -- peers ---------------------------------------------------------------------------------


class Peer:
    """A stdlib server for one connection: reads until END, answers ``reply`` + what it got,
    then closes. With ``tls`` (a server context) it speaks TLS and records the SNI name."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None, family: int = socket.AF_INET) -> None:
        host = "::1" if family == socket.AF_INET6 else LOCALHOST
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(4)
        self.listener.settimeout(PEER_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.tls = tls
        self.sni: list[Optional[str]] = []
        if tls is not None:
            tls.sni_callback = lambda obj, name, ctx: self.sni.append(name)
        self.thread = PeerThread(self._serve, name="init-socket-peer")
        self.thread.start()

    def _serve(self) -> bytes:
        try:
            conn, _ = self.listener.accept()
        finally:
            self.listener.close()
        conn.settimeout(PEER_TIMEOUT)
        s: socket.socket = conn
        if self.tls is not None:
            s = self.tls.wrap_socket(conn, server_side=True)
        with s:
            got = recv_until(s, END)
            s.sendall(b"got " + got)
            return got

    def result(self) -> bytes:
        value: bytes = self.thread.result(30)
        return value


def connected_pair(port: int, family: int = socket.AF_INET) -> socket.socket:
    host = "::1" if family == socket.AF_INET6 else LOCALHOST
    return socket.create_connection((host, port), timeout=PEER_TIMEOUT)


class Client:
    """The uvssl side's callbacks: collects replies and events, closes on the peer's EOF."""

    def __init__(self) -> None:
        self.replies = bytearray()
        self.events: list[BaseException] = []
        self.connects: list[Any] = []

    def read(self, sock: uvssl.Socket, data: bytes) -> None:
        self.replies += data

    def event(self, ev: BaseException) -> None:
        if isinstance(ev, (uvssl.TcpEof, uvssl.SslClosed)):
            ev.socket.close()
        else:
            self.events.append(ev)

    def connected(self, sock: uvssl.Socket) -> None:
        self.connects.append((sock.connected, getattr(sock, "version", None)))


def run_until_closed(fn: Any, deadline: float = 20) -> dict[str, Any]:
    """Run ``fn(state)`` in a loop held open until state["sock"] is closed."""
    state: dict[str, Any] = {}

    def start() -> None:
        fn(state)

    def finished() -> bool:
        sock = state.get("sock")
        return sock is not None and sock.closed

    LoopHarness(deadline).run(start, finished)
    return state


# -- plain TCP -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", [LOCALHOST, "localhost"])
def test_connect_later_sends_queued_data_in_order(host):
    peer = Peer()
    c = Client()

    def start(state: dict[str, Any]) -> None:
        sock = uvssl.init_tcp_socket(c.read, c.event, data=b"one,", connect_cb=c.connected)
        state["sock"] = sock
        assert isinstance(sock, uvssl.Socket) and not isinstance(sock, uvssl.SslSocket)
        assert not sock.connected and not sock.closed
        assert "not connected" in repr(sock)
        assert sock.write(b"two,") is True
        assert sock.write(bytearray(b"three")) is True
        assert uvssl.connect_tcp_socket(sock, host, peer.port) is sock
        assert sock.write(memoryview(END)) is True  # connecting: queued by the native side
        assert "connecting" in repr(sock)

    run_until_closed(start)
    assert peer.result() == b"one,two,three" + END
    assert bytes(c.replies) == b"got one,two,three" + END
    assert c.connects == [(True, None)]
    assert c.events == []


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_connect_later_ipv6():
    peer = Peer(family=socket.AF_INET6)
    c = Client()

    def start(state: dict[str, Any]) -> None:
        state["sock"] = sock = uvssl.init_tcp_socket(c.read, c.event, data=b"v6" + END)
        uvssl.connect_tcp_socket(sock, "::1", peer.port)

    run_until_closed(start)
    assert peer.result() == b"v6" + END
    assert bytes(c.replies) == b"got v6" + END


def test_stream_mode_and_timeouts_apply_after_connect():
    peer = Peer()
    got: list[bytes] = []

    def start(state: dict[str, Any]) -> None:
        def read_cb(sock: uvssl.Socket, stream: uvssl.AsyncStream) -> None:
            line = stream.read_until(END)
            if line is not None:
                got.append(line)

        sock = uvssl.init_tcp_socket(
            read_cb,
            lambda ev: ev.socket.close(),
            stream=True,
            read_timeout=30,
        )
        state["sock"] = sock
        sock.write(b"x" + END)
        uvssl.connect_tcp_socket(sock, LOCALHOST, peer.port)

    run_until_closed(start)
    peer.result()
    assert got == [b"got x" + END]


def test_fd_wraps_a_connected_socket():
    peer = Peer()
    raw = connected_pair(peer.port)
    c = Client()

    def start(state: dict[str, Any]) -> None:
        sock = uvssl.init_tcp_socket(
            c.read, c.event, fd=raw, data=b"adopted" + END, connect_cb=c.connected
        )
        state["sock"] = sock
        assert sock.connected
        assert raw.fileno() == -1  # taken over
        with pytest.raises(uvssl.SocketError, match="made with fd=") as info:
            uvssl.connect_tcp_socket(sock, LOCALHOST, peer.port)
        assert info.value.code == errno.EISCONN

    run_until_closed(start)
    assert peer.result() == b"adopted" + END
    assert bytes(c.replies) == b"got adopted" + END
    assert c.connects == [(True, None)]
    assert c.events == []


def test_fd_as_a_descriptor_number():
    peer = Peer()
    raw = connected_pair(peer.port)
    fd = raw.detach()
    c = Client()

    def start(state: dict[str, Any]) -> None:
        state["sock"] = uvssl.init_tcp_socket(c.read, c.event, fd=fd, data=b"by number" + END)

    run_until_closed(start)
    assert peer.result() == b"by number" + END
    assert bytes(c.replies) == b"got by number" + END


def test_bad_fd_is_refused():
    def start() -> None:
        with pytest.raises(TypeError, match="fd must be a socket.socket or an int"):
            uvssl.init_tcp_socket(None, fd="3")  # type: ignore[arg-type]
        unconnected = socket.socket()
        try:
            with pytest.raises(ValueError, match="fd must be connected"):
                uvssl.init_tcp_socket(None, fd=unconnected)
            assert unconnected.fileno() >= 0  # still the caller's
        finally:
            unconnected.close()

    run_loop(start)


def test_close_before_connect_fires_nothing():
    calls: list[Any] = []

    def start() -> None:
        sock = uvssl.init_tcp_socket(
            lambda s, d: calls.append("read"),
            calls.append,
            data=b"never sent",
            connect_cb=lambda s: calls.append("connect"),
            write_cb=lambda s: calls.append("write"),
        )
        sock.write(b"nor this")
        sock.close()
        assert sock.closed and not sock.connected
        sock.close()  # twice is fine
        with pytest.raises(uvssl.SocketClosed):
            sock.write(b"after the close")
        with pytest.raises(uvssl.SocketClosed, match="cannot connect it"):
            uvssl.connect_tcp_socket(sock, LOCALHOST, 9)

    h = run_loop(start)  # ends by itself: nothing native was ever made
    assert not h.deadline_hit
    assert calls == []


def test_unconnected_socket_after_the_loop_ended():
    kept: list[uvssl.Socket] = []
    run_loop(lambda: kept.append(uvssl.init_tcp_socket(None, data=b"queued")))
    sock = kept[0]
    with pytest.raises(uvssl.SocketClosed, match="event loop has ended"):
        sock.write(b"more")
    with pytest.raises(RuntimeError, match="event loop has ended"):
        uvssl.connect_tcp_socket(sock, LOCALHOST, 9)


def test_operations_before_connect_say_so():
    def start() -> None:
        sock = uvssl.init_tcp_socket(None)
        for call in (sock.pause_reading, sock.fileno, lambda: sock.set_options(nodelay=True)):
            with pytest.raises(uvssl.SocketError, match="not connected yet") as info:
                call()
            assert info.value.code == errno.ENOTCONN
        with pytest.raises(uvssl.SocketError, match="never got that far"):
            sock.remote_address  # noqa: B018 - the property raises
        assert sock.write_buffer_size == 0
        sock.close()

    run_loop(start)


def test_connect_errors():
    peer = Peer()
    c = Client()

    def start(state: dict[str, Any]) -> None:
        with pytest.raises(TypeError, match="socket must be a uvssl Socket"):
            uvssl.connect_tcp_socket("sock", LOCALHOST, 1)  # type: ignore[arg-type]
        sock = uvssl.init_tcp_socket(c.read, c.event)
        with pytest.raises(TypeError):
            uvssl.connect_tcp_socket(sock, 127001, 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            uvssl.connect_tcp_socket(sock, LOCALHOST, 70000)
        assert not sock.closed  # refused arguments leave it as it was
        uvssl.connect_tcp_socket(sock, LOCALHOST, peer.port)
        with pytest.raises(uvssl.SocketError, match="already connecting or connected") as info:
            uvssl.connect_tcp_socket(sock, LOCALHOST, peer.port)
        assert info.value.code == errno.EISCONN
        other = uvssl.tcp_connect(LOCALHOST, peer.port, None)
        with pytest.raises(ValueError, match="made by init_tcp_socket"):
            uvssl.connect_tcp_socket(other, LOCALHOST, peer.port)
        other.close(force=True)
        sock.write(END)
        state["sock"] = sock

    run_until_closed(start)
    peer.result()
    assert c.events == []


def test_refused_reaches_event_cb_naming_host_and_port():
    blocker = socket.socket()
    blocker.bind((LOCALHOST, 0))  # bound, not listening
    port = blocker.getsockname()[1]
    events: list[BaseException] = []
    try:

        def start() -> None:
            sock = uvssl.init_tcp_socket(None, events.append, data=b"lost")
            uvssl.connect_tcp_socket(sock, LOCALHOST, port)

        run_loop(start)
    finally:
        blocker.close()
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, uvssl.TcpRefused)
    assert f"{LOCALHOST} port {port}" in str(ev)
    sock = ev.socket
    assert sock.closed
    with pytest.raises(uvssl.SocketClosed):
        uvssl.connect_tcp_socket(sock, LOCALHOST, port)


@pytest.mark.parametrize("tls", [False, True])
def test_dns_failure_reaches_event_cb_naming_host_and_port(tls):
    events: list[BaseException] = []

    def start() -> None:
        sock: uvssl.Socket
        if tls:
            sock = uvssl.init_tcp_ssl_socket(None, events.append)
        else:
            sock = uvssl.init_tcp_socket(None, events.append)
        uvssl.connect_tcp_socket(sock, "no-such-host.invalid", 8443)

    run_loop(start, 30)
    assert len(events) == 1
    ev = events[0]
    assert isinstance(ev, uvssl.DnsError)
    assert "'no-such-host.invalid' (port 8443)" in str(ev)


def test_init_needs_a_running_loop():
    with pytest.raises(RuntimeError, match="no event loop"):
        uvssl.init_tcp_socket(None)
    with pytest.raises(RuntimeError, match="no event loop"):
        uvssl.init_tcp_ssl_socket(None)


def test_unknown_keyword_is_named():
    def start() -> None:
        with pytest.raises(TypeError, match="read_timout"):
            uvssl.init_tcp_socket(None, read_timout=3)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="server_host_name"):
            uvssl.init_tcp_ssl_socket(None, server_host_name="x")  # type: ignore[call-arg]

    run_loop(start)


# -- TLS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "server_hostname", "sni"),
    [
        ("localhost", None, "localhost"),  # the host is the name checked and sent
        (LOCALHOST, None, None),  # an IP address is checked, not sent
        (LOCALHOST, "localhost", "localhost"),  # given at init: wins over the host
    ],
)
def test_tls_connect_later(certs, host, server_hostname, sni):
    peer = Peer(stdlib_server_context(certs))
    c = Client()

    def start(state: dict[str, Any]) -> None:
        sock = uvssl.init_tcp_ssl_socket(
            c.read,
            c.event,
            ca_file=str(certs.ca),
            data=b"one,",
            connect_cb=c.connected,
            server_hostname=server_hostname,
        )
        state["sock"] = sock
        assert isinstance(sock, uvssl.SslSocket)
        assert not sock.connected and sock.version is None
        sock.write(b"two" + END)  # before the connection: leaves after the handshake
        uvssl.connect_tcp_socket(sock, host, peer.port)
        assert sock.server_hostname == (server_hostname or host)

    run_until_closed(start)
    assert peer.result() == b"one,two" + END
    assert bytes(c.replies) == b"got one,two" + END
    assert c.connects == [(True, "TLSv1.3")]
    assert peer.sni == [sni]
    assert c.events == []


def test_tls_connect_later_checks_the_name(certs):
    peer = Peer(stdlib_server_context(certs))
    c = Client()

    def start(state: dict[str, Any]) -> None:
        sock = uvssl.init_tcp_ssl_socket(
            c.read, c.event, ca_file=str(certs.ca), server_hostname="wrong.example"
        )
        state["sock"] = sock
        uvssl.connect_tcp_socket(sock, LOCALHOST, peer.port)

    run_until_closed(start)
    with pytest.raises((ssl.SSLError, OSError)):
        peer.result()
    assert len(c.events) == 1
    assert isinstance(c.events[0], uvssl.SslVerificationFailure)
    assert "wrong.example" in str(c.events[0])


def test_tls_with_a_context_object(certs, client_ctx):
    peer = Peer(stdlib_server_context(certs))
    c = Client()

    def start(state: dict[str, Any]) -> None:
        sock = uvssl.init_tcp_ssl_socket(c.read, c.event, ssl_ctx=client_ctx, data=b"ctx" + END)
        state["sock"] = sock
        assert sock.context is client_ctx
        uvssl.connect_tcp_socket(sock, "localhost", peer.port)

    run_until_closed(start)
    assert peer.result() == b"ctx" + END
    assert c.events == []


@pytest.mark.parametrize("as_number", [False, True])
def test_tls_fd_starts_the_handshake_at_once(certs, as_number):
    peer = Peer(stdlib_server_context(certs))
    raw = connected_pair(peer.port)
    fd: Any = raw.detach() if as_number else raw
    c = Client()

    def start(state: dict[str, Any]) -> None:
        sock = uvssl.init_tcp_ssl_socket(
            c.read,
            c.event,
            fd=fd,
            server_hostname="localhost",
            ca_file=str(certs.ca),
            data=b"over fd" + END,
            connect_cb=c.connected,
        )
        state["sock"] = sock
        assert isinstance(sock, uvssl.SslSocket)
        assert not sock.connected  # until the handshake is done
        with pytest.raises(uvssl.SocketError, match="made with fd="):
            uvssl.connect_tcp_socket(sock, "localhost", peer.port)

    run_until_closed(start)
    assert peer.result() == b"over fd" + END
    assert bytes(c.replies) == b"got over fd" + END
    assert c.connects == [(True, "TLSv1.3")]
    assert peer.sni == ["localhost"]
    assert c.events == []


def test_tls_fd_checks_the_name(certs):
    peer = Peer(stdlib_server_context(certs))
    raw = connected_pair(peer.port)
    c = Client()

    def start(state: dict[str, Any]) -> None:
        state["sock"] = uvssl.init_tcp_ssl_socket(
            c.read, c.event, fd=raw, server_hostname="other.example", ca_file=str(certs.ca)
        )

    run_until_closed(start)
    with pytest.raises((ssl.SSLError, OSError)):
        peer.result()
    assert [type(e) for e in c.events] == [uvssl.SslVerificationFailure]


def test_tls_fd_needs_a_name_to_verify(certs):
    peer = Peer(stdlib_server_context(certs))
    raw = connected_pair(peer.port)
    c = Client()
    try:

        def start(state: dict[str, Any]) -> None:
            with pytest.raises(ValueError, match="needs server_hostname="):
                uvssl.init_tcp_ssl_socket(None, fd=raw, ca_file=str(certs.ca))
            assert raw.fileno() >= 0  # not taken
            # verify=False is the explicit way without a name
            sock = uvssl.init_tcp_ssl_socket(c.read, c.event, fd=raw, verify=False)
            sock.write(b"unverified" + END)
            state["sock"] = sock

        run_until_closed(start)
    finally:
        raw.close()
    assert peer.result() == b"unverified" + END
    assert c.events == []


def test_tls_close_before_connect_fires_nothing(certs):
    calls: list[Any] = []

    def start() -> None:
        sock = uvssl.init_tcp_ssl_socket(
            lambda s, d: calls.append("read"),
            calls.append,
            ca_file=str(certs.ca),
            data=b"never",
            connect_cb=lambda s: calls.append("connect"),
        )
        sock.close()
        assert sock.closed and sock.ssl_pointer is None
        with pytest.raises(uvssl.SocketClosed):
            uvssl.connect_tcp_socket(sock, "localhost", 9)

    run_loop(start)
    assert calls == []


def test_tls_arguments_are_checked_at_init(certs, client_ctx):
    def start() -> None:
        with pytest.raises(TypeError, match="verify must be a bool"):
            uvssl.init_tcp_ssl_socket(None, verify="yes")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ca_file cannot be combined with ssl_ctx"):
            uvssl.init_tcp_ssl_socket(None, ssl_ctx=client_ctx, ca_file=str(certs.ca))
        with pytest.raises(TypeError, match="session must be an SslSession"):
            uvssl.init_tcp_ssl_socket(None, session="s")  # type: ignore[arg-type]

    run_loop(start)


def test_tls_refused_reaches_event_cb(certs):
    blocker = socket.socket()
    blocker.bind((LOCALHOST, 0))
    port = blocker.getsockname()[1]
    events: list[BaseException] = []
    try:

        def start() -> None:
            sock = uvssl.init_tcp_ssl_socket(None, events.append, ca_file=str(certs.ca))
            uvssl.connect_tcp_socket(sock, "localhost", port)

        run_loop(start)
    finally:
        blocker.close()
    assert [type(e) for e in events] == [uvssl.TcpRefused]
    assert f"localhost port {port}" in str(events[0])
