"""Small reads of one loop turn reach the application in one batch (csrc/batch.c).

What a batch must not change: a socket paused by another socket's ``read_cb`` in the same turn
gets no ``read_cb`` until it resumes (its data is kept, then delivered first and in order), and
a socket closed that way gets none at all. Data always comes before the events that followed it.

To make two connections' data land in one turn, a loop timer blocks the loop for a moment while
a peer thread writes to both connections; the next poll then reads both.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

import pytest
from tls_support import LOCALHOST, PEER_TIMEOUT, LoopHarness, PeerThread

import uvssl

pytestmark = pytest.mark.timeout(30)

MESSAGE = b"0123456789" * 10


class TwoPeers:
    """Two client connections driven from a thread; they write at the same moment on ``go``."""

    def __init__(self, port: int, tls_ctx: Any) -> None:
        self.port = port
        self.tls_ctx = tls_ctx
        self.go = threading.Event()
        self.replies: list[bytes] = [b"", b""]
        self.thread = PeerThread(self._run, name="two-peers")

    def _connect(self) -> Any:
        s = socket.create_connection((LOCALHOST, self.port), timeout=PEER_TIMEOUT)
        if self.tls_ctx is not None:
            s = self.tls_ctx.wrap_socket(s, server_hostname="localhost")
        return s

    def _run(self) -> None:
        socks = [self._connect(), self._connect()]
        try:
            assert self.go.wait(PEER_TIMEOUT), "the server never said go"
            for s in socks:
                s.sendall(MESSAGE)
            for i, s in enumerate(socks):
                while len(self.replies[i]) < len(MESSAGE):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    self.replies[i] += chunk
        finally:
            for s in socks:
                s.close()


def run_two_peers(
    certs: Any, tls: bool, on_first_data: Any, until: Any = lambda: True
) -> dict[str, Any]:
    """Serve two peers that write at once; ``on_first_data(state, first, other)`` runs in the
    read_cb of whichever socket gets data first. Every socket echoes what it reads. The loop
    ends once the peers are done and ``until()`` is true."""
    state: dict[str, Any] = {"socks": [], "log": [], "reads": {}}
    h = LoopHarness(deadline=15)
    peers: list[TwoPeers] = []

    def s_connect(sock: Any) -> None:
        state["socks"].append(sock)
        state["reads"][id(sock)] = b""
        if len(state["socks"]) == 2:
            uvssl.delay(block_while_peers_write, 0.05)

    def block_while_peers_write() -> None:
        # the loop sleeps here while both peers write, so one poll sees both connections
        peers[0].go.set()
        time.sleep(0.3)

    def s_read(sock: Any, data: bytes) -> None:
        state["log"].append(("read", id(sock)))
        state["reads"][id(sock)] += data
        sock.write(data)
        if "first" not in state:
            state["first"] = sock
            other = next(s for s in state["socks"] if s is not sock)
            on_first_data(state, sock, other)

    def s_event(ev: BaseException) -> None:
        pass

    def start() -> None:
        if tls:
            srv = uvssl.tcp_ssl_server(
                LOCALHOST,
                0,
                s_read,
                s_event,
                connect_cb=s_connect,
                certificate=str(certs.server_cert),
                key=str(certs.server_key),
            )
        else:
            srv = uvssl.tcp_server(LOCALHOST, 0, s_read, s_event, connect_cb=s_connect)  # type: ignore[assignment]
        state["server"] = srv
        ctx = ssl.create_default_context(cafile=str(certs.ca)) if tls else None
        peers.append(TwoPeers(srv.port, ctx))
        peers[0].thread.start()

    h.run(start, until=lambda: peers[0].thread.done and until())
    peers[0].thread.result()
    state["replies"] = peers[0].replies
    return state


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_socket_paused_in_the_same_turn_gets_its_data_only_after_resume(certs, tls):
    def on_first_data(state: dict[str, Any], first: Any, other: Any) -> None:
        other.pause_reading()
        state["log"].append(("pause", id(other)))

        def resume() -> None:
            # the scenario under test: the other socket's data was read in the pausing turn
            state["held_at_resume"] = bool(other._held)
            state["log"].append(("resume", id(other)))
            other.resume_reading()

        uvssl.delay(resume, 0.1)

    state = run_two_peers(certs, tls, on_first_data)
    assert state["held_at_resume"], "the two connections' data did not arrive in one turn"
    other = next(s for s in state["socks"] if s is not state["first"])
    log = state["log"]
    pause_at = log.index(("pause", id(other)))
    resume_at = log.index(("resume", id(other)))
    other_reads = [i for i, e in enumerate(log) if e == ("read", id(other))]
    assert other_reads, "the paused socket never got its data"
    assert all(not (pause_at < i < resume_at) for i in other_reads), log
    assert state["reads"][id(other)] == MESSAGE
    assert state["replies"] == [MESSAGE, MESSAGE]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_socket_closed_in_the_same_turn_gets_no_more_data(certs, tls):
    def on_first_data(state: dict[str, Any], first: Any, other: Any) -> None:
        other.close(force=True)
        state["log"].append(("close", id(other)))

    state = run_two_peers(certs, tls, on_first_data)
    other = next(s for s in state["socks"] if s is not state["first"])
    assert ("read", id(other)) not in state["log"]
    assert state["reads"][id(other)] == b""
    replies = sorted(state["replies"])
    assert replies == [b"", MESSAGE]


def test_pause_again_while_resume_delivers_kept_data(certs):
    """read_cb pausing during the delivery of kept data keeps the rest, in order."""
    chunks: list[bytes] = []

    def on_first_data(state: dict[str, Any], first: Any, other: Any) -> None:
        other.pause_reading()
        original = other.read_cb

        def read_and_pause(sock: Any, data: bytes) -> None:
            chunks.append(data)
            if len(chunks) == 1:
                sock.pause_reading()
                uvssl.delay(sock.resume_reading, 0.05)
            original(sock, data)

        def resume() -> None:
            assert other._held, "the two connections' data did not arrive in one turn"
            other._held.extend([b"x1", b"x2"])  # as if three reads had been kept
            other.resume_reading()

        other.read_cb = read_and_pause
        uvssl.delay(resume, 0.1)

    state = run_two_peers(certs, False, on_first_data, until=lambda: len(chunks) >= 3)
    assert chunks[0] == MESSAGE
    assert chunks[1:] == [b"x1", b"x2"]
    assert state["replies"] == [MESSAGE, MESSAGE]


def test_reply_to_data_that_arrived_with_close_notify(certs):
    """Data and the peer's close_notify in one read: read_cb may still answer the data (the
    batch reaches the application before uvssl answers the close_notify)."""
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    go = threading.Event()
    state: dict[str, Any] = {"reads": b"", "events": []}

    def client(port: int) -> bytes:
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(inc, out, server_hostname="localhost")

        def pump_in() -> bool:
            data = raw.recv(65536)
            if data:
                inc.write(data)
            else:
                inc.write_eof()
            return bool(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(out.read())
                pump_in()
        raw.sendall(out.read())
        assert go.wait(PEER_TIMEOUT)
        tls.write(b"ping")
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        raw.sendall(out.read())  # the data and close_notify leave in one segment
        reply = b""
        while True:
            try:
                reply += tls.read(4096)
            except ssl.SSLWantReadError:
                if not pump_in():
                    break
            except ssl.SSLZeroReturnError:
                break
        raw.close()
        return reply

    h = LoopHarness(deadline=15)
    peer: list[PeerThread] = []

    def s_connect(sock: Any) -> None:
        def block_while_peer_writes() -> None:
            go.set()
            time.sleep(0.3)

        uvssl.delay(block_while_peer_writes, 0.05)

    def s_read(sock: Any, data: bytes) -> None:
        state["reads"] += data
        sock.write(b"pong")

    def s_event(ev: BaseException) -> None:
        state["events"].append(ev)
        ev.socket.close()  # type: ignore[attr-defined]

    def start() -> None:
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            s_read,
            s_event,
            connect_cb=s_connect,
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
        )
        peer.append(PeerThread(client, srv.port))
        peer[0].start()

    h.run(start, until=lambda: peer[0].done)
    assert peer[0].result() == b"pong"
    assert state["reads"] == b"ping"
    assert [type(e) for e in state["events"]] == [uvssl.SslClosed]
    assert not state["events"][0].truncated
