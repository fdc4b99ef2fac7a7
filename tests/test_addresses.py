"""Addresses stay readable after a socket closes, and connection errors say where (SPEC S2).

A server must be able to log which peer failed: the peer's address is kept from when the
connection was accepted (a reset connection can no longer tell it), this end's from when it
closed. A client's DnsError and TcpRefused name the host and port it tried.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from conftest import has_ipv6_loopback, run_loop
from tls_support import make_certs

import uvssl

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_certs(tmp_path_factory.mktemp("address-certs"))


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
    events: list[tuple[str, Any, Any]] = []
    client_addr: list[Any] = []

    def start() -> None:
        def on_event(ev: BaseException) -> None:
            sock = ev.socket  # type: ignore[attr-defined]
            events.append((type(ev).__name__, sock.remote_address, sock.closed))
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
    name, peer, closed = events[0]
    assert name == "TcpError" and closed
    assert peer == client_addr[0]


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


def test_refused_names_host_and_port() -> None:
    port = closed_port()
    events: list[BaseException] = []

    def start() -> None:
        uvssl.tcp_connect("127.0.0.1", port, None, events.append)

    run_loop(start)
    (ev,) = events
    assert isinstance(ev, uvssl.TcpRefused)
    assert f"127.0.0.1 port {port}" in str(ev)
    assert ev.socket.remote_address == ("127.0.0.1", port)  # type: ignore[attr-defined]
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
    host, p = ev.socket.remote_address  # type: ignore[attr-defined]
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
        _ = ev.socket.remote_address  # type: ignore[attr-defined]


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
