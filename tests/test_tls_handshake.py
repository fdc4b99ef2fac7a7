"""Sessions and handshakes: resumption, the handshake timeout, writes queued before the
handshake, and how a TLS server hands a connection over (no socket before the handshake,
first data behind the handshake delivered with the connect)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import ssl
import struct
import sys
import termios
import threading
import time
from typing import Any

import pytest
from tls_support import (
    LOCALHOST,
    MESSAGE,
    PEER_TIMEOUT,
    LoopHarness,
    PeerThread,
    assert_echoed,
    close_quietly,
    recv_exactly,
    recv_until,
    run_pair,
    serve_to_peer,
    stdlib_client_context,
)

import uvssl

pytestmark = pytest.mark.timeout(60)


# -- sessions ------------------------------------------------------------------------------------


def test_session_resumption(certs):
    cctx = uvssl.Context.client(ca_file=str(certs.ca))
    r = run_pair(
        certs,
        clients=[
            dict(ssl_ctx=cctx),
            lambda res: dict(ssl_ctx=cctx, session=res.clients[0]["session"]),
        ],
    )
    assert_echoed(r, 2)
    first, second = r.clients
    assert isinstance(first["session"], uvssl.SslSession)
    assert first["session"].resumable
    assert first["session_reused"] is False
    assert second["session_reused"] is True
    assert r.server_info[0]["session_reused"] is False
    assert r.server_info[1]["session_reused"] is True


def test_silent_client_hits_handshake_timeout(certs):
    def silent(port):
        s = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        try:
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""
        finally:
            s.close()

    peer, events = serve_to_peer(
        silent, lambda s, d: None, certs=certs, until=bool, handshake_timeout=0.5
    )
    assert peer.result() == b""  # the connection was closed, not left hanging
    assert len(events) == 1
    assert isinstance(events[0], uvssl.SslHandshakeTimeout), events
    assert isinstance(events[0], uvssl.TcpSslError)


def test_writes_before_handshake_arrive_in_order(server_cert_kw, certs):
    h = LoopHarness()
    received = bytearray()
    expected = b"data=;" + b"".join(f"early-{i};".encode() for i in range(50)) + b"after-connect;"
    state: dict[Any, Any] = {}

    def s_read(sock, data):
        received.extend(data)
        if len(received) >= len(expected):
            h.done()

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            s_read,
            lambda ev: h.fail(f"server: {ev!r}"),
            **server_cert_kw,
        )
        sock = uvssl.tcp_ssl_connect(
            LOCALHOST,
            srv.port,
            None,
            lambda ev: h.fail(f"client: {ev!r}"),
            ca_file=str(certs.ca),
            data=b"data=;",
            connect_cb=lambda s: s.write(b"after-connect;"),
        )
        state["connected_early"] = sock.connected
        state["version_early"] = sock.version
        for i in range(50):
            sock.write(f"early-{i};".encode())

    h.run(start)
    assert state["connected_early"] is False
    assert state["version_early"] is None
    assert bytes(received) == expected


# -- when a TLS server hands a connection over --------------------------------------------------


def _live_ssl_sockets() -> int:
    return sum(isinstance(o, uvssl.SslSocket) for o in uvssl.get_loop()._live)


def _act_once_accepted(certs, peer_fn, act, read_cb=None, connect_cb=None):
    """A TLS server and a peer thread ``peer_fn(port, connected, acted)``, which sets
    ``connected`` once its TCP connect returned and waits for ``acted``. The loop calls
    ``act(server)`` 0.2 s after ``connected`` (the idle loop has accepted the connection by then,
    without a handshake), then sets ``acted``. Ends when the peer is done and the server saw an
    event; returns (peer thread, server, server events)."""
    connected = threading.Event()
    acted = threading.Event()
    h = LoopHarness(15)
    st: dict[str, Any] = {"events": []}

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            read_cb,
            lambda ev: (st["events"].append(ev), close_quietly(ev)),  # type: ignore[func-returns-value]
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
            connect_cb=connect_cb,
        )
        st["srv"] = srv
        st["peer"] = PeerThread(peer_fn, srv.port, connected, acted)
        st["peer"].start()
        uvssl.interval(poll, 0.01)

    def poll():
        if connected.is_set() and "at" not in st:
            st["at"] = time.monotonic()
        if "at" in st and not acted.is_set() and time.monotonic() - st["at"] > 0.2:
            act(st["srv"])
            acted.set()

    h.run(start, until=lambda: "peer" in st and st["peer"].done and bool(st["events"]))
    return st["peer"], st["srv"], st["events"]


def test_tls_server_makes_no_socket_before_the_handshake(certs):
    # A connection that never sends a ClientHello costs no Python object; when it goes away,
    # the failed handshake is still reported on a socket, as for any accepted connection.
    def silent(port, connected, acted):
        s = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        connected.set()
        try:
            assert acted.wait(PEER_TIMEOUT)
        finally:
            s.close()

    counts: list[int] = []
    connects: list[Any] = []
    peer, _, events = _act_once_accepted(
        certs, silent, lambda srv: counts.append(_live_ssl_sockets()), connect_cb=connects.append
    )
    peer.result()
    assert counts == [0]
    assert not connects, "connect_cb ran for a connection with no handshake"
    assert len(events) == 1, events
    ev = events[0]
    assert isinstance(ev, uvssl.TcpSslError) and not isinstance(ev, uvssl.SslClosed), ev
    assert isinstance(ev.socket, uvssl.SslSocket)


def test_tls_server_closed_during_a_handshake_still_hands_the_connection_over(certs):
    # close() stops listening; a connection accepted before it completes its handshake later
    # and reaches connect_cb and read_cb like any other.
    def client(port, connected, acted):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        connected.set()
        assert acted.wait(PEER_TIMEOUT)
        ctx = stdlib_client_context(certs)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(MESSAGE)
            return recv_until(s, b"\n")

    seen: list[Any] = []
    state: dict[str, Any] = {}

    def close_server(srv):
        state["srv"] = srv
        srv.close()

    peer, _, events = _act_once_accepted(
        certs,
        client,
        close_server,
        read_cb=lambda s, d: s.write(d),
        connect_cb=lambda s: seen.append((s, state["srv"].closed)),
    )
    assert peer.result() == MESSAGE
    assert len(seen) == 1
    sock, server_was_closed = seen[0]
    assert server_was_closed and isinstance(sock, uvssl.SslSocket)
    assert all(isinstance(ev, uvssl.SslClosed) for ev in events), events


def _one_flight_client(certs, port, payload, close_notify=False):
    """A TLS 1.3 client that sends its last handshake message, ``payload`` and, with
    ``close_notify``, its close_notify in one ``send()``, so that the server reads them in one go;
    then it reads what comes back until the server closes. Returns the plaintext read."""
    ctx = stdlib_client_context(certs)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    got = b""
    with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as s:
        for _ in range(50):  # bounded: a TLS 1.3 handshake takes one round trip
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    s.sendall(outgoing.read())
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("the server closed during the handshake") from None
                incoming.write(data)
        else:
            raise AssertionError("no handshake after 50 rounds")
        tls.write(payload)
        if close_notify:
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
        s.sendall(outgoing.read())  # Finished + the payload's record (+ close_notify)
        closed = False
        for _ in range(200):
            data = s.recv(65536)
            if not data:
                break
            incoming.write(data)
            try:
                while not closed:
                    chunk = tls.read(65536)
                    closed = not chunk  # the server's close_notify
                    got += chunk
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # the same, after our own close_notify
                closed = True
            if closed:
                break
    return got


def _first_read_server(certs, payload, connect_cb, *, close_notify=False, **loop_kw):
    """A uvssl TLS server echoing to ``_one_flight_client``; ``connect_cb(sock, log)`` runs
    first. Returns (what the client read, the server's log): ("connect",), ("read", data,
    whether read_cb ran inside the call that handed the connection over), ("event", ev)."""
    h = LoopHarness(15)
    log: list[Any] = []
    st: dict[str, Any] = {}

    def read_cb(sock, data):
        frame, inside = sys._getframe(), False
        while frame is not None:
            inside = inside or frame.f_code.co_name == "uvs_py_on_accept"
            frame = frame.f_back  # type: ignore[assignment]
        log.append(("read", data, inside))
        sock.write(data)
        if b"".join(e[1] for e in log if e[0] == "read") == payload and not close_notify:
            sock.close()

    def event_cb(ev):
        log.append(("event", ev))
        close_quietly(ev)

    def on_connect(sock):
        log.append(("connect",))
        connect_cb(sock, log)

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            read_cb,
            event_cb,
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
            connect_cb=on_connect,
        )
        st["peer"] = PeerThread(_one_flight_client, certs, srv.port, payload, close_notify)
        st["peer"].start()

    h.run(start, until=lambda: "peer" in st and st["peer"].done, **loop_kw)
    return st["peer"].result(), log


def test_first_data_behind_the_handshake_comes_with_the_connect(certs):
    # The request that arrives with the client's Finished reaches read_cb right after
    # connect_cb, in the same call into Python that hands the connection over.
    got, log = _first_read_server(certs, MESSAGE, lambda sock, log: None)
    assert got == MESSAGE
    assert log[0] == ("connect",)
    assert log[1] == ("read", MESSAGE, True), log


def test_first_data_then_close_notify_in_one_read(certs):
    # Finished, data and close_notify in one segment: connect, read, then SslClosed, in order.
    got, log = _first_read_server(certs, MESSAGE, lambda sock, log: None, close_notify=True)
    assert got == MESSAGE
    assert [e[0] for e in log] == ["connect", "read", "event"], log
    assert log[1][1] == MESSAGE
    assert isinstance(log[2][1], uvssl.SslClosed) and not log[2][1].truncated


def test_first_data_waits_for_a_socket_paused_in_connect_cb(certs):
    def pause(sock, log):
        sock.pause_reading()

        def resume():
            log.append(("resume",))
            sock.resume_reading()

        uvssl.delay(resume, 0.1)

    got, log = _first_read_server(certs, MESSAGE, pause)
    assert got == MESSAGE
    assert [e[0] for e in log] == ["connect", "resume", "read"], log
    assert log[2][1] == MESSAGE


def test_first_data_is_dropped_for_a_socket_closed_in_connect_cb(certs):
    got, log = _first_read_server(certs, MESSAGE, lambda sock, log: sock.close())
    assert got == b""
    assert [e[0] for e in log] == ["connect"], log


def test_first_data_still_reaches_read_cb_when_connect_cb_raises(certs):
    caught: list[Any] = []

    def boom(sock, log):
        raise KeyError("connect_cb failed")

    got, log = _first_read_server(
        certs, MESSAGE, boom, catch_app_errors=True, default_event_cb=caught.append
    )
    assert got == MESSAGE
    assert [e[0] for e in log] == ["connect", "read"], log
    assert len(caught) == 1 and isinstance(caught[0], KeyError)


# The loop decrypts every TLS socket's records into one shared buffer, at most 256 KiB per step
# (csrc/uvs.h, UVS__READ_BUF_SIZE). Records of 3,128 bytes (3,150 on the wire: TLS 1.3 adds 22)
# make the second read of a socket (64 KiB first, then 256 KiB) bring 608 bytes of plaintext more
# than that, which stay decrypted inside OpenSSL while the socket is paused.


_HELD_RECORD = 3128


_HELD_RECORDS = 120  # 378,000 bytes on the wire: both reads find all they ask for queued


def _held_records_client(certs, port, go):
    """Sends ``_HELD_RECORDS`` records of ``_HELD_RECORD`` bytes of ``a`` once the server says
    "go", then reads until the server closes."""
    ctx = stdlib_client_context(certs)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert recv_exactly(s, 2) == b"go"
            go.set()
            for _ in range(_HELD_RECORDS):
                s.sendall(b"a" * _HELD_RECORD)  # one record each
            with contextlib.suppress(OSError, ssl.SSLError):
                for _ in range(100):
                    if not s.recv(65536):
                        break


def test_first_data_survives_connect_cb_resuming_another_tls_socket(server_cert_kw, certs):
    # A connection is handed over with the plaintext that came behind its handshake, which is
    # in the loop's decryption buffer. connect_cb may make another TLS socket decrypt into that
    # buffer: here it resumes socket A, whose records OpenSSL still holds. The hand-over's data
    # must reach read_cb as it came, not overwritten by A's.
    h = LoopHarness(15)
    st: dict[str, Any] = {"a": None, "a_got": [], "b_got": [], "capped": False}
    go = threading.Event()
    total = _HELD_RECORD * _HELD_RECORDS

    def queued() -> int:  # bytes waiting in the kernel for A
        buf = fcntl.ioctl(st["a_fd"].fileno(), termios.FIONREAD, struct.pack("i", 0))
        return struct.unpack("i", buf)[0]  # type: ignore[no-any-return]

    def resume_a_when_all_queued():
        if st["a"] is not None and go.is_set() and queued() >= total + 22 * _HELD_RECORDS:
            st["poll"].cancel()
            st["a"].resume_reading()

    def read_cb(sock, data):
        if sock is st["a"]:
            st["a_got"].append(data)
            if len(data) == 256 * 1024:  # the step stopped at the buffer's end: A stops here
                st["capped"] = True
                sock.pause_reading()
                st["b"] = PeerThread(_one_flight_client, certs, st["port"], MESSAGE, name="b")
                st["b"].start()
            elif sum(map(len, st["a_got"])) == total:
                sock.close()
                if not st["capped"]:
                    h.fail("A never got a full 256 KiB step: the setup did not hold records")
            return
        st["b_got"].append(data)
        sock.write(data)
        if sum(map(len, st["b_got"])) >= len(MESSAGE):
            sock.close()

    def connect_cb(sock):
        if st["a"] is None:  # A: room in the kernel for all it sends, read once it is queued
            st["a"] = sock
            st["a_fd"] = socket.socket(fileno=os.dup(sock.fileno()))
            st["a_fd"].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.pause_reading()
            sock.write(b"go")
            st["poll"] = uvssl.interval(resume_a_when_all_queued, 0.01)
        else:  # B, handed over with MESSAGE: A decrypts what OpenSSL kept for it
            st["a"].resume_reading()

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            read_cb,
            close_quietly,
            **server_cert_kw,
            connect_cb=connect_cb,
        )
        st["port"] = srv.port
        st["peer_a"] = PeerThread(_held_records_client, certs, srv.port, go, name="a")
        st["peer_a"].start()

    try:
        h.run(start, until=lambda: "b" in st and st["b"].done and st["peer_a"].done)
    finally:
        if "a_fd" in st:
            st["a_fd"].close()
    st["peer_a"].result()
    assert st["capped"], "A never got a full 256 KiB step: the setup did not hold records"
    assert b"".join(st["b_got"]) == MESSAGE
    assert st["b"].result() == MESSAGE
    assert b"".join(st["a_got"]) == b"a" * total
