"""Addresses stay readable after a socket closes, and connection errors say where.

A server must be able to log which peer failed: the peer's address is kept from when the
connection was accepted (a reset connection can no longer tell it), this end's from when it
closed. A client's DnsError and TcpRefused name the host and port it tried.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from helpers import has_ipv6_loopback, run_loop

import uvssl

pytestmark = pytest.mark.timeout(30)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_addresses_survive_a_normal_close() -> None:
    seen: dict[str, Any] = {}

    def start() -> None:
        def on_server_read(sock: uvssl.Socket, data: bytes) -> None:
            peer, here = sock.remote_address, sock.local_address
            sock.close()
            seen["server"] = (peer, here, sock.remote_address, sock.local_address)

        server = uvssl.tcp_server("127.0.0.1", 0, on_server_read)

        def on_connect(sock: uvssl.Socket) -> None:
            seen["client_open"] = (sock.local_address, sock.remote_address)

        def on_event(ev: BaseException) -> None:
            sock = ev.socket  # type: ignore[attr-defined]
            sock.close()
            server.close()
            seen["client_closed"] = (sock.local_address, sock.remote_address)

        uvssl.tcp_connect(
            "127.0.0.1", server.port, None, on_event, connect_cb=on_connect, data=b"hi"
        )

    run_loop(start)
    peer, here, peer_after, here_after = seen["server"]
    assert (peer_after, here_after) == (peer, here)
    assert seen["client_closed"] == seen["client_open"]
    assert seen["client_open"][0] == peer and seen["client_open"][1] == here


def test_a_reset_connection_still_names_its_peer() -> None:
    events: list[tuple[str, Any, Any, str]] = []
    client_addr: list[Any] = []

    def start() -> None:
        def on_event(ev: BaseException) -> None:
            sock = ev.socket  # type: ignore[attr-defined]
            events.append((type(ev).__name__, sock.remote_address, sock.closed, str(ev)))
            server.close()

        def on_read(sock: uvssl.Socket, data: bytes) -> None:
            # the peer resets the connection (SO_LINGER 0, then close): a read error follows
            c = client[0]
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

        server = uvssl.tcp_server("127.0.0.1", 0, on_read, on_event)
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        client_addr.append(c.getsockname())
        c.sendall(b"x")
        client.append(c)

    client: list[socket.socket] = []
    run_loop(start)
    assert len(events) == 1
    name, peer, closed, text = events[0]
    assert name == "TcpError" and closed
    assert peer == client_addr[0]
    assert text.startswith(f"connection with 127.0.0.1 port {client_addr[0][1]}: "), text


def test_a_failed_tls_handshake_names_its_peer(certs: Any) -> None:
    events: list[tuple[BaseException, Any]] = []
    client_addr: list[Any] = []

    def start() -> None:
        def on_event(ev: BaseException) -> None:
            events.append((ev, ev.socket.remote_address))  # type: ignore[attr-defined]
            server.close()

        server = uvssl.tcp_ssl_server(
            "127.0.0.1",
            0,
            None,
            on_event,
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
        )
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        client_addr.append(c.getsockname())
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not a ClientHello
        client.append(c)

    client: list[socket.socket] = []
    run_loop(start)
    client[0].close()
    assert len(events) == 1
    ev, peer = events[0]
    assert isinstance(ev, uvssl.SslFailure)
    assert peer == client_addr[0]
    assert str(ev).startswith(f"TLS handshake with 127.0.0.1 port {client_addr[0][1]} failed"), ev


def test_timeouts_name_the_peer(certs: Any) -> None:
    """A read timeout on an accepted connection, a client's read timeout and a handshake
    timeout all say which connection timed out."""
    events: list[tuple[str, BaseException]] = []
    ports: dict[str, int] = {}

    def start() -> None:
        left = [3]

        def record(who: str) -> Any:
            def on_event(ev: BaseException) -> None:
                events.append((who, ev))
                ev.socket.close()  # type: ignore[attr-defined]
                left[0] -= 1
                if left[0] == 0:
                    plain.close()
                    tls.close()
                    quiet.close()
                    for c in raw:
                        c.close()

            return on_event

        def accepted(sock: uvssl.Socket) -> None:
            ports["accepted-peer"] = sock.remote_address[1]
            sock.set_timeouts(read_timeout=0.1, write_timeout=None)

        plain = uvssl.tcp_server("127.0.0.1", 0, None, record("server"), connect_cb=accepted)
        tls = uvssl.tcp_ssl_server(
            "127.0.0.1",
            0,
            None,
            record("tls-server"),
            handshake_timeout=0.1,
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
        )
        ports["plain"], ports["tls"] = plain.port, tls.port
        # a peer that connects to the plain server and says nothing: the server times out;
        # one that connects to the TLS server and never starts the handshake
        raw = [
            socket.create_connection(("127.0.0.1", p), timeout=5) for p in (plain.port, tls.port)
        ]
        ports["tls-peer"] = raw[1].getsockname()[1]
        # a client whose server never answers (and never times out itself)
        quiet = uvssl.tcp_server("127.0.0.1", 0, None, None)
        ports["quiet"] = quiet.port
        uvssl.tcp_connect("localhost", quiet.port, None, record("client"), read_timeout=0.1)

    run_loop(start)
    by_who = {who: ev for who, ev in events}
    assert set(by_who) == {"server", "tls-server", "client"}, events
    server_ev = by_who["server"]
    assert isinstance(server_ev, uvssl.TcpTimeout)
    assert str(server_ev).startswith(
        f"read timed out on the connection with 127.0.0.1 port {ports['accepted-peer']}: "
    ), server_ev
    hs = by_who["tls-server"]
    assert isinstance(hs, uvssl.SslHandshakeTimeout)
    assert str(hs).startswith(
        f"the TLS handshake with 127.0.0.1 port {ports['tls-peer']} did not complete"
    ), hs
    # the client asked for "localhost": the message says so, and which address it reached
    client_ev = by_who["client"]
    assert isinstance(client_ev, uvssl.TcpTimeout)
    assert str(client_ev).startswith(
        f"read timed out on the connection with localhost port {ports['quiet']} (127.0.0.1): "
    ) or str(client_ev).startswith(
        f"read timed out on the connection with localhost port {ports['quiet']} (::1): "
    ), client_ev


def test_refused_names_host_and_port() -> None:
    port = closed_port()
    events: list[BaseException] = []

    def start() -> None:
        uvssl.tcp_connect("127.0.0.1", port, None, events.append)

    run_loop(start)
    (ev,) = events
    assert isinstance(ev, uvssl.TcpRefused)
    assert f"127.0.0.1 port {port}" in str(ev)
    assert ev.socket.remote_address == ("127.0.0.1", port)
    assert ev.identifier == "connection-refused"


def test_refused_by_name_names_the_name_and_the_address() -> None:
    port = closed_port()
    events: list[BaseException] = []

    def start() -> None:
        uvssl.tcp_connect("localhost", port, None, events.append)

    run_loop(start)
    (ev,) = events
    assert isinstance(ev, uvssl.TcpRefused)
    text = str(ev)
    assert f"localhost port {port}" in text
    host, p = ev.socket.remote_address
    assert p == port and host in ("127.0.0.1", "::1") and f"({host})" in text


def test_dns_error_names_host_and_port() -> None:
    events: list[BaseException] = []

    def start() -> None:
        uvssl.tcp_connect("no-such-host.invalid", 8443, None, events.append)

    run_loop(start)
    (ev,) = events
    assert isinstance(ev, uvssl.DnsError)
    assert "'no-such-host.invalid' (port 8443)" in str(ev)
    with pytest.raises(uvssl.SocketError, match="not known"):
        _ = ev.socket.remote_address


def test_tls_socket_addresses_after_close(certs: Any) -> None:
    seen: dict[str, Any] = {}

    def start() -> None:
        def on_connect(sock: uvssl.Socket) -> None:
            seen["open"] = sock.remote_address
            sock.close()
            server.close()
            seen["closed"] = sock.remote_address

        server = uvssl.tcp_ssl_server(
            "127.0.0.1",
            0,
            None,
            lambda ev: None,
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
        )
        uvssl.tcp_ssl_connect(
            "127.0.0.1",
            server.port,
            None,
            lambda ev: None,
            ca_file=str(certs.ca),
            server_hostname="localhost",
            connect_cb=on_connect,
        )

    run_loop(start)
    assert seen["open"] == seen["closed"]


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_an_accepted_connection_knows_the_address_it_reached(bind: str) -> None:
    """Its own address is the one the client reached, before and after the close: the
    server's on a server bound to one address, the loopback address on a wildcard one."""
    seen: dict[str, Any] = {}

    def start() -> None:
        def on_read(sock: uvssl.Socket, data: bytes) -> None:
            seen["open"] = sock.local_address
            sock.close()
            seen["closed"] = sock.local_address
            server.close()

        server = uvssl.tcp_server(bind, 0, on_read)
        seen["port"] = server.port
        uvssl.tcp_connect("127.0.0.1", server.port, None, lambda ev: ev.socket.close(), data=b"x")

    run_loop(start)
    assert seen["open"] == seen["closed"] == ("127.0.0.1", seen["port"])


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_addresses_after_close() -> None:
    seen: list[Any] = []

    def start() -> None:
        server = uvssl.tcp_server("::1", 0, lambda s, d: s.write(d))

        def on_reply(sock: uvssl.Socket, data: bytes) -> None:
            sock.close()
            server.close()
            seen.append((sock.remote_address, sock.local_address[0]))

        uvssl.tcp_connect("::1", server.port, on_reply, data=b"6")

    run_loop(start)
    ((peer, local_host),) = seen
    assert peer[0] == "::1" and local_host == "::1"


def test_a_blocking_stream_names_its_peer(certs: Any) -> None:
    """SslStream errors name the peer too (kept from the start: a reset socket cannot tell
    it any more): here a server that hangs up during the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.recv(10)  # a piece of the ClientHello, then away
        conn.close()

    import threading

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        stream = uvssl.make_ssl_client_stream(
            raw, server_hostname="localhost", ca_file=str(certs.ca)
        )
        with pytest.raises(uvssl.TcpSslError) as info:  # an EOF or a reset, by timing
            stream.do_handshake()
    finally:
        raw.close()
        t.join(5)
        listener.close()
    text = str(info.value)
    assert f"127.0.0.1 port {port}" in text, text
