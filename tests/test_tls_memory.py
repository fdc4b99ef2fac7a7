"""Memory: idle and quiet TLS connections give back their handshake state and OpenSSL's
record buffers."""

from __future__ import annotations

import os
import socket
import time

import pytest
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    recv_exactly,
    serve_to_peer,
    stdlib_client_context,
)

import uvssl
from uvssl.openssl import lib

pytestmark = pytest.mark.timeout(60)


def test_idle_connection_releases_handshake_and_large_buffers(certs):
    """Once the handshake is done a connection drops its handshake timer and output buffer,
    and after traffic it keeps only small buffers (at most 1 KiB each) for reuse."""
    held = []  # (what, bytes held by the server-side connection)

    def measure(sock, what):
        held.append((what, int(lib.uvs_conn_held_bytes(sock._conn))))

    def s_read(sock, data):
        sock.write(data)
        uvssl.delay(lambda: sock.closed or measure(sock, f"after {len(data)}"), 0)

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost") as s:
            big = b"b" * 10_000  # grows both of the server's buffers past the keep limit
            s.sendall(big)
            assert recv_exactly(s, len(big)) == big
            s.sendall(b"ping\n")
            assert recv_exactly(s, 5) == b"ping\n"
            return True

    peer, _ = serve_to_peer(
        client,
        s_read,
        certs=certs,
        until=lambda _: held and held[-1][0] == "after 5",
        connect_cb=lambda sock: measure(sock, "handshake done"),
    )
    assert peer.result() is True
    assert held[0] == ("handshake done", 0), held
    after = [n for what, n in held[1:]]
    assert after and all(n <= 2 * 1024 for n in after), held
    assert after[-1] <= 1024, held  # a 5-byte echo: two small buffers kept for reuse


def test_quiet_connection_gives_back_openssl_record_buffers(certs):
    """A connection that has made one exchange holds no record buffers (OpenSSL frees them as
    they drain); a busy one (its third read or write) keeps them; once quiet for a few
    milliseconds and loop iterations they are freed, together with the small buffers uvssl
    keeps for the next write, it is back to the first kind, and traffic still flows."""
    if not lib.uvs_tls_can_free_buffers():
        pytest.skip("OpenSSL before the CVE-2024-4741 fix: buffers go with every record")
    seen = []  # (what, whether the server-side connection may hold record buffers)
    deadline = time.monotonic() + 5.0

    def held(sock):
        return bool(lib.uvs_conn_tls_buffers_held(sock._conn))

    def wait_for_release(sock):
        if sock.closed:
            return
        if held(sock) and time.monotonic() < deadline:
            uvssl.delay(lambda: wait_for_release(sock), 0.005)
            return
        # the echo of "two" left both small output buffers allocated; quiet, none is held
        seen.append(("quiet", held(sock), int(lib.uvs_conn_held_bytes(sock._conn))))
        sock.write(b"free")

    def s_read(sock, data):
        seen.append((data.decode(), held(sock)))  # type: ignore[arg-type]
        sock.write(data)
        if data == b"two\n":
            wait_for_release(sock)

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost") as s:
            for line in (b"one\n", b"two\n"):  # one at a time: each its own read
                s.sendall(line)
                want = line + (b"free" if line == b"two\n" else b"")
                assert recv_exactly(s, len(want)) == want
            for line in (b"three\n", b"four\n"):
                s.sendall(line)
                assert recv_exactly(s, len(line)) == line
            return True

    peer, _ = serve_to_peer(client, s_read, certs=certs, until=lambda _: len(seen) >= 5)
    assert peer.result() is True
    # the read of "one", its echo, then the read of "two" is the third step; freed when quiet,
    # then "free", the read of "three" and its echo are three again: "four" finds them kept
    assert seen == [
        ("one\n", False),
        ("two\n", True),
        ("quiet", False, 0),
        ("three\n", False),
        ("four\n", True),
    ], seen


def _timerfds() -> set[str]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[timerfd]":
                found.add(name)
        except OSError:  # closed meanwhile (the listing's own descriptor, say)
            pass
    return found


def test_the_buffer_release_tick_is_a_descriptor_closed_with_its_loop(certs):
    """A busy connection's buffers are released by a tick the loop polls (a timerfd, so that
    the loop's waits need no timeout while it serves); the descriptor goes with the loop."""
    if not lib.uvs_tls_can_free_buffers():
        pytest.skip("OpenSSL before the CVE-2024-4741 fix: buffers go with every record")
    before = _timerfds()
    during: list[set[str]] = []

    def s_read(sock, data):
        sock.write(data)
        if data == b"four\n":  # busy since the third step: its buffers are kept, the tick runs
            during.append(_timerfds() - before)

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost") as s:
            for line in (b"one\n", b"two\n", b"three\n", b"four\n"):
                s.sendall(line)
                assert recv_exactly(s, len(line)) == line
            return True

    peer, _ = serve_to_peer(client, s_read, certs=certs)
    assert peer.result() is True
    assert len(during) == 1 and len(during[0]) == 1, during
    assert _timerfds() - before == set()
