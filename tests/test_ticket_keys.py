"""Shared session ticket keys: servers given the same keys resume each other's sessions (in one
process, across processes, after a rotation), servers with other keys fall back to a full
handshake, and bad keys are refused with messages that never show key bytes.

The clients are the standard library's ``ssl`` module in a peer thread; the servers are uvssl
TLS echo servers on one loop (and, for the two-process test, a child process running a uvssl
server). Resumption is read on the client side (``SSLSocket.session_reused``).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from helpers import SLOWDOWN
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    Certs,
    LineReader,
    LoopHarness,
    PeerThread,
    close_quietly,
    kill_process,
    recv_exactly,
    stdlib_client_context,
)

import uvssl
from uvssl import tickets

ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"resume me\n"
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

pytestmark = pytest.mark.timeout(60 * SLOWDOWN)


def key(tag: int) -> bytes:
    """An 80-byte key whose name starts with ``tag`` (random otherwise)."""
    return bytes([tag]) + os.urandom(79)


def server_ctx(certs: Certs, keys: Optional[list[bytes]] = None, **kw: Any) -> uvssl.Context:
    return uvssl.Context.server(
        certificate=str(certs.server_cert),
        key=str(certs.server_key),
        session_ticket_keys=keys,
        **kw,
    )


def client_ctx(certs: Certs, version: str) -> ssl.SSLContext:
    ctx = stdlib_client_context(certs)
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
    return ctx


def exchange(
    cctx: ssl.SSLContext, port: int, session: Optional[ssl.SSLSession] = None
) -> tuple[bool, ssl.SSLSession]:
    """One connection: handshake (offering ``session``), one echoed message; returns whether
    the session was resumed and the session to offer next time (its ticket arrives with the
    data in TLS 1.3)."""
    with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
        with cctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(MESSAGE)
            assert recv_exactly(s, len(MESSAGE)) == MESSAGE
            reused = bool(s.session_reused)
            fresh = s.session
    assert fresh is not None
    return reused, fresh


def serve(contexts: list[Any], client: Callable[[list[int]], Any], deadline: float = 30.0) -> Any:
    """Run one uvssl TLS echo server per context on a loop, and ``client(ports)`` in a peer
    thread; returns what the client returned (its exception is raised here)."""
    h = LoopHarness(deadline * SLOWDOWN)
    state: dict[str, PeerThread] = {}

    def start() -> None:
        ports = []
        for c in contexts:
            srv = uvssl.tcp_ssl_server(
                LOCALHOST, 0, lambda sock, data: sock.write(data), close_quietly, ssl_ctx=c
            )
            ports.append(srv.port)
        state["peer"] = PeerThread(client, ports)
        state["peer"].start()

    h.run(start, until=lambda: state["peer"].done)
    return state["peer"].result()


# -- sharing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_servers_with_the_same_keys_resume_each_others_sessions(certs: Certs, version: str) -> None:
    keys = [key(1), key(2)]
    a, b = server_ctx(certs, keys), server_ctx(certs, keys)
    cctx = client_ctx(certs, version)

    def client(ports: list[int]) -> list[bool]:
        first, s1 = exchange(cctx, ports[0])
        on_b, s2 = exchange(cctx, ports[1], s1)
        back_on_a, _ = exchange(cctx, ports[0], s2)
        return [first, on_b, back_on_a]

    assert serve([a, b], client) == [False, True, True]


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_other_keys_mean_a_full_handshake(certs: Certs, version: str) -> None:
    a = server_ctx(certs, [key(1)])
    other = server_ctx(certs, [key(2)])
    own = server_ctx(certs)  # OpenSSL's own random key
    cctx = client_ctx(certs, version)

    def client(ports: list[int]) -> list[bool]:
        _, s1 = exchange(cctx, ports[0])
        on_other, _ = exchange(cctx, ports[1], s1)
        on_own, _ = exchange(cctx, ports[2], s1)
        again_on_a, _ = exchange(cctx, ports[0], s1)
        return [on_other, on_own, again_on_a]

    assert serve([a, other, own], client) == [False, False, True]


def test_borrowed_stdlib_contexts_take_keys(certs: Certs) -> None:
    # Python's ssl module gives its contexts their own session id context, so their sessions
    # resume on each other (sharing the keys), not on uvssl-built ones
    keys = [key(7)]
    borrowed = []
    for _ in range(3):
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
        borrowed.append(uvssl.context.resolve_ssl_ctx(sctx, "server"))
    borrowed[0].rotate_session_ticket_keys(keys)
    borrowed[1].rotate_session_ticket_keys(keys)
    assert [tickets.key_count(b) for b in borrowed] == [1, 1, 0]
    cctx = client_ctx(certs, "TLSv1.3")

    def client(ports: list[int]) -> list[bool]:
        first, s1 = exchange(cctx, ports[0])
        same_keys, _ = exchange(cctx, ports[1], s1)
        no_keys, _ = exchange(cctx, ports[2], s1)
        return [first, same_keys, no_keys]

    assert serve(borrowed, client) == [False, True, False]


def test_ssl_side_both_takes_keys(certs: Certs) -> None:
    keys = [key(3)]
    both = uvssl.Context.client(
        certificate=str(certs.server_cert),
        key=str(certs.server_key),
        verify=False,
        ssl_side="both",
        session_ticket_keys=keys,
    )
    assert tickets.key_count(both) == 1


def test_a_context_picked_by_sni_uses_its_keys(certs: Certs) -> None:
    keys = [key(8)]
    picked = server_ctx(certs, keys)
    names: list[Optional[str]] = []

    def on_sni(sock: Any, name: Optional[str]) -> uvssl.Context:
        names.append(name)
        return picked

    front = server_ctx(certs, keys, sni_callback=on_sni)
    other = server_ctx(certs, keys)
    cctx = client_ctx(certs, "TLSv1.3")

    def client(ports: list[int]) -> list[bool]:
        first, s1 = exchange(cctx, ports[0])
        elsewhere, s2 = exchange(cctx, ports[1], s1)
        back, _ = exchange(cctx, ports[0], s2)
        return [first, elsewhere, back]

    assert serve([front, other], client) == [False, True, True]
    assert names == ["localhost", "localhost"]


# -- two processes -----------------------------------------------------------------------------

CHILD = """
import os, sys, threading
import uvssl

keys = [bytes.fromhex(k) for k in os.environ["TICKET_KEYS"].split(",")]
ctx = uvssl.Context.server(certificate=sys.argv[1], key=sys.argv[2], session_ticket_keys=keys)

def start():
    loop = uvssl.get_loop()

    def on_event(ev):
        s = getattr(ev, "socket", None)
        if s is not None and not s.closed:
            s.close()

    srv = uvssl.tcp_ssl_server("127.0.0.1", 0, lambda s, d: s.write(d), on_event, ssl_ctx=ctx)
    uvssl.delay(uvssl.exit_event_loop, float(sys.argv[3]))  # never outlive the test

    def stop_on_eof():
        sys.stdin.read()
        loop.call_threadsafe(uvssl.exit_event_loop)

    threading.Thread(target=stop_on_eof, daemon=True).start()
    print("PORT", srv.port, flush=True)

uvssl.start_event_loop(start)
print("ENDED", flush=True)
"""


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_servers_in_two_processes_resume_each_others_sessions(certs: Certs, version: str) -> None:
    keys = [key(4), key(5)]
    env = dict(os.environ, TICKET_KEYS=",".join(k.hex() for k in keys))
    life = 45 * SLOWDOWN
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(certs.server_cert)]
        + [str(certs.server_key), str(life)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines = LineReader(proc)
    try:
        line = lines.wait_for(lambda s: s.startswith("PORT "), 30 * SLOWDOWN)
        if line is None:
            kill_process(proc)
            assert proc.stderr is not None
            pytest.fail(f"the child server never started: {proc.stderr.read()!r}")
        child_port = int(line.split()[1])
        cctx = client_ctx(certs, version)

        def client(ports: list[int]) -> list[bool]:
            first, s1 = exchange(cctx, child_port)
            here, s2 = exchange(cctx, ports[0], s1)
            there, _ = exchange(cctx, child_port, s2)
            return [first, here, there]

        assert serve([server_ctx(certs, keys)], client) == [False, True, True]
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20 * SLOWDOWN)
        assert lines.wait_for(lambda s: s == "ENDED", 10) == "ENDED"
    finally:
        kill_process(proc)
        lines.join()


# -- rotation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_rotation_keeps_old_tickets_for_one_round_and_renews_them(
    certs: Certs, version: str
) -> None:
    old, new = key(10), key(11)
    rotating = server_ctx(certs, [old])
    only_new = server_ctx(certs, [new])
    cctx = client_ctx(certs, version)

    def client(ports: list[int]) -> dict[str, bool]:
        # the context serves a loop in another thread: it is rotated from this one
        r: dict[str, bool] = {}
        r["first"], under_old = exchange(cctx, ports[0])
        r["old on new-only"], _ = exchange(cctx, ports[1], under_old)
        rotating.rotate_session_ticket_keys([new, old])
        r["old after rotation"], renewed = exchange(cctx, ports[0], under_old)
        r["renewed on new-only"], _ = exchange(cctx, ports[1], renewed)
        with pytest.raises(ValueError):
            rotating.rotate_session_ticket_keys([new, new])  # refused: the keys stay
        r["renewed after a refused rotation"], _ = exchange(cctx, ports[0], renewed)
        rotating.rotate_session_ticket_keys([new])
        r["old after retirement"], _ = exchange(cctx, ports[0], under_old)
        r["renewed after retirement"], _ = exchange(cctx, ports[0], renewed)
        return r

    assert serve([rotating, only_new], client) == {
        "first": False,
        "old on new-only": False,
        "old after rotation": True,
        "renewed on new-only": True,
        "renewed after a refused rotation": True,
        "old after retirement": False,
        "renewed after retirement": True,
    }


def test_rotations_from_another_thread_during_handshakes(certs: Certs) -> None:
    # every list holds both keys, so whatever order a handshake sees, the ticket resumes
    k1, k2 = key(13), key(14)
    busy = server_ctx(certs, [k1, k2])
    cctx = client_ctx(certs, "TLSv1.3")
    stop = threading.Event()
    rotations = [0]

    def rotate() -> None:
        while not stop.is_set() and rotations[0] < 100_000:
            busy.rotate_session_ticket_keys([k2, k1] if rotations[0] % 2 else [k1, k2])
            rotations[0] += 1

    def client(ports: list[int]) -> list[bool]:
        rotator = threading.Thread(target=rotate, daemon=True)
        rotator.start()
        try:
            _, session = exchange(cctx, ports[0])
            out = []
            for _ in range(20):
                reused, session = exchange(cctx, ports[0], session)
                out.append(reused)
            return out
        finally:
            stop.set()
            rotator.join(PEER_TIMEOUT)

    assert serve([busy], client) == [True] * 20
    assert rotations[0] > 0
    assert tickets.key_count(busy) == 2


def test_rotate_installs_keys_on_a_context_that_had_none(certs: Certs) -> None:
    keys = [key(12)]
    late = server_ctx(certs)
    assert tickets.key_count(late) == 0
    late.rotate_session_ticket_keys(keys)
    assert tickets.key_count(late) == 1
    cctx = client_ctx(certs, "TLSv1.3")

    def client(ports: list[int]) -> list[bool]:
        _, s1 = exchange(cctx, ports[0])
        on_other, _ = exchange(cctx, ports[1], s1)
        return [on_other]

    assert serve([late, server_ctx(certs, keys)], client) == [True]


def test_rotated_builds_the_next_key_list() -> None:
    a, b, c = key(20), key(21), key(22)
    assert tickets.rotated([a], b) == [b, a]
    assert tickets.rotated([b, a], c) == [c, b]
    assert tickets.rotated([b, a], c, keep=3) == [c, b, a]
    assert tickets.rotated([a], a) == [a]
    fresh = tickets.new_key()
    assert len(fresh) == tickets.KEY_LENGTH == 80
    with pytest.raises(ValueError, match="keep"):
        tickets.rotated([a], b, keep=0)


# -- validation --------------------------------------------------------------------------------


def bad_key_cases() -> list[tuple[str, Any, type[Exception], str]]:
    k1, k2 = key(30), key(31)
    dup = k1[:16] + os.urandom(64)
    return [
        ("legacy 48-byte key", [k1[:48]], ValueError, "48 bytes; a key must be 80"),
        ("short key", [k1[:79]], ValueError, "79 bytes"),
        ("long key", [k1 + b"x"], ValueError, "81 bytes"),
        ("no key", [], ValueError, "at least one key"),
        ("too many", [key(i) for i in range(17)], ValueError, "at most 16"),
        ("same name", [k1, k2, dup], ValueError, r"\[0\] and .*\[2\] have the same name"),
        ("one bytes object", k1, TypeError, "not one bytes object"),
        ("a path", "/etc/ticket.key", TypeError, "not file names"),
        ("not bytes", [k1, 42], TypeError, r"\[1\] must be bytes"),
        ("not a list", 42, TypeError, "must be a list"),
    ]


def assert_no_key_bytes(text: str, keys: Any) -> None:
    flat: list[bytes] = []
    if isinstance(keys, bytes):
        flat = [keys]
    elif isinstance(keys, list):
        flat = [k for k in keys if isinstance(k, bytes)]
    for k in flat:
        for shown in (k.hex(), repr(k)[2:-1], repr(k[:16])[2:-1], k[16:48].hex()):
            assert shown not in text


@pytest.mark.parametrize("case", bad_key_cases(), ids=lambda c: c[0])
def test_bad_keys_are_refused_without_showing_them(
    certs: Certs, case: tuple[str, Any, type[Exception], str]
) -> None:
    _, keys, exc, pattern = case
    with pytest.raises(exc, match=pattern) as built:
        server_ctx(certs, keys)
    assert_no_key_bytes(str(built.value) + repr(built.value), keys)

    good = key(40)
    ctx = server_ctx(certs, [good])
    with pytest.raises(exc, match=pattern) as rotated:
        ctx.rotate_session_ticket_keys(keys)
    assert_no_key_bytes(str(rotated.value) + repr(rotated.value), keys)
    assert tickets.key_count(ctx) == 1  # the old key stays
    assert_no_key_bytes(repr(ctx) + str(ctx), [good])


def test_keys_only_where_tickets_are_issued(certs: Certs) -> None:
    k = key(50)
    with pytest.raises(ValueError, match="for server contexts") as e1:
        uvssl.Context.client(session_ticket_keys=[k])
    with pytest.raises(ValueError, match="session_tickets=True") as e2:
        server_ctx(certs, [k], session_tickets=False)
    client = uvssl.Context.client()
    with pytest.raises(ValueError, match="client context") as e3:
        client.rotate_session_ticket_keys([k])
    assert tickets.key_count(client) == 0
    no_tickets = server_ctx(certs, session_tickets=False)
    with pytest.raises(ValueError, match="turned off") as e4:
        no_tickets.rotate_session_ticket_keys([k])
    for e in (e1, e2, e3, e4):
        assert_no_key_bytes(str(e.value), [k])
