"""Closing and shutdown: truncation without close_notify, close_notify sent on close,
closing in connect_cb, and a peer that leaves right after its close_notify."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
from helpers import run_loop
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    PeerThread,
    recv_until,
    serve_to_peer,
    stdlib_client_context,
    stdlib_client_server_test,
)

import uvssl

pytestmark = pytest.mark.timeout(60)


def test_peer_dropping_tcp_without_close_notify_is_truncation(certs):
    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        s = stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost")
        try:
            s.sendall(b"some data\n")
            data = recv_until(s, b"\n")
            # SSLSocket.shutdown does not send close_notify: it drops the TLS layer, then FIN
            s.shutdown(socket.SHUT_RDWR)
            return data
        finally:
            s.close()

    data, events = stdlib_client_server_test(certs, client)
    assert data == b"some data\n"
    assert len(events) == 1, events
    ev = events[0]
    assert type(ev) is uvssl.SslClosed, ev
    assert ev.truncated is True


def test_peer_sees_close_notify_when_uvssl_closes(certs):
    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        ctx = stdlib_client_context(certs)
        with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
            s.sendall(b"bye\n")
            data = bytearray()
            while True:
                piece = s.recv(4096)  # SSLEOFError here would mean: no close_notify
                if not piece:
                    break
                data += piece
            return bytes(data)

    def read_cb(sock, data):
        sock.write(b"ok\n")
        uvssl.close_socket(sock)

    peer, _ = serve_to_peer(client, read_cb, certs=certs)
    assert peer.result() == b"ok\n"


# -- a server closing a connection as soon as it is handed over ------------------------------------


@pytest.mark.parametrize("with_request", [False, True], ids=["idle", "request-in-handshake"])
def test_close_in_connect_cb_still_sends_close_notify(server_cert_kw, certs, with_request):
    """A TLS server that closes a connection in connect_cb (the moment the handshake is done)
    closes it gracefully: a uvssl client sees the peer's close_notify, not a truncation, and a
    strict stdlib client (suppress_ragged_eofs=False) sees a clean end."""
    events: list[Any] = []

    def strict_client(port: int) -> str:
        ctx = stdlib_client_context(certs)
        with socket.create_connection(("127.0.0.1", port), timeout=PEER_TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
                if with_request:
                    s.sendall(b"GET")
                try:
                    return "clean" if s.recv(100) == b"" else "data"
                except ssl.SSLError as e:
                    return f"ssl error: {e}"

    def start():
        state: dict[str, Any] = {"left": 2}

        def accepted(sock):
            sock.close()
            state["left"] -= 1
            if state["left"] == 0:
                server.close()

        server = uvssl.tcp_ssl_server(
            "127.0.0.1", 0, None, None, connect_cb=accepted, **server_cert_kw
        )
        data = b"GET" if with_request else None

        def first_done(ev):
            events.append(ev)
            ev.socket.close()
            peer = PeerThread(strict_client, server.port)
            peer.start()
            start.peer = peer  # type: ignore[attr-defined]

        uvssl.tcp_ssl_connect(
            "localhost", server.port, None, first_done, ca_file=str(certs.ca), data=data
        )

    run_loop(start, timeout=20)
    assert len(events) == 1
    assert isinstance(events[0], uvssl.SslClosed) and events[0].truncated is False, events
    assert start.peer.result() == "clean"  # type: ignore[attr-defined]


def test_peer_leaving_right_after_its_close_notify_is_a_clean_close(server_cert_kw, certs):
    """A client that closes at once after its handshake (close_notify, FIN, and a socket that
    answers the server's session tickets with a reset) ends a clean session: the server sees
    the connection, then SslClosed without truncation, and no broken-pipe error for the
    close_notify it sends back. Twenty times, since it is a race."""
    rounds = 20
    server_events: list[Any] = []
    accepted: list[Any] = []
    client_ctx = stdlib_client_context(certs)

    def start():
        state: dict[str, Any] = {"done": 0}

        def on_server_event(ev):
            server_events.append(ev)
            ev.socket.close()

        server = uvssl.tcp_ssl_server(
            "127.0.0.1", 0, None, on_server_event, connect_cb=accepted.append, **server_cert_kw
        )

        def client_connected(sock):
            sock.close()
            state["done"] += 1
            if state["done"] < rounds:
                connect()
            else:
                uvssl.delay(server.close, 0.2)

        def connect():
            uvssl.tcp_ssl_connect(
                "localhost",
                server.port,
                None,
                None,
                ssl_ctx=client_ctx,
                connect_cb=client_connected,
            )

        connect()

    run_loop(start, timeout=20)
    assert len(accepted) == rounds
    assert [type(ev).__name__ for ev in server_events] == ["SslClosed"] * rounds, server_events
    assert not any(ev.truncated for ev in server_events), server_events
