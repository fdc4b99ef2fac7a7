"""Live certificate reload: ``Context.reload()`` and assigning ``TcpSslServer.ssl_ctx``.

A uvssl TLS server runs in the test's loop; stdlib ``ssl`` clients run in a peer thread and
drive the steps (connect, reload or switch, connect again, talk on the first connection),
asking the loop to run what must run there through ``call_threadsafe``.
"""

from __future__ import annotations

import gc
import queue
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from tls_support import LOCALHOST, PEER_TIMEOUT, LoopHarness, PeerThread, recv_exactly

import uvssl
from uvssl._uvssl import lib
from uvssl.context import resolve_ssl_ctx

# -- certificates ----------------------------------------------------------------------------


class Pki:
    """One CA and two server certificates it signed, A and B, both for localhost and 127.0.0.1
    and told apart by a third name (a.example, b.example)."""

    def __init__(self, dirpath: Path) -> None:
        self.dir = dirpath
        self.ca = trustme.CA()
        self.ca_file = dirpath / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.a = self.ca.issue_cert("localhost", "127.0.0.1", "a.example")
        self.b = self.ca.issue_cert("localhost", "127.0.0.1", "b.example")
        self.cert = dirpath / "server.pem"
        self.key = dirpath / "server.key"

    def install(self, leaf: Any, password: Optional[bytes] = None) -> None:
        """Write ``leaf``'s chain and key to the server's files (the key encrypted when a
        password is given), replacing them as a deployment would (write aside, then rename)."""
        chain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
        key = leaf.private_key_pem.bytes()
        if password is not None:
            k = serialization.load_pem_private_key(key, password=None)
            key = k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password),
            )
        for path, data in ((self.cert, chain), (self.key, key)):
            tmp = path.with_suffix(".new")
            tmp.write_bytes(data)
            tmp.replace(path)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(tmp_path)
    p.install(p.a)
    return p


def third_name(tls: ssl.SSLSocket) -> str:
    """Which of a.example / b.example the server's certificate carries."""
    cert = tls.getpeercert()
    assert cert is not None
    sans: Any = cert["subjectAltName"]
    names = [str(v) for k, v in sans if k == "DNS" and str(v).endswith(".example")]
    assert len(names) == 1, names
    return names[0]


def connect(port: int, ctx: ssl.SSLContext, hostname: str = "localhost") -> ssl.SSLSocket:
    raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


def echo(tls: ssl.SSLSocket, data: bytes) -> bytes:
    tls.sendall(data)
    return recv_exactly(tls, len(data))


# -- running a server and a peer ---------------------------------------------------------------


class Served:
    """What a served test sees: the server, the server side's sockets as they connect, and a
    way for the peer thread to run things on the loop."""

    def __init__(self) -> None:
        self.server: Any = None
        self.loop: Any = None
        self.accepted: list[uvssl.SslSocket] = []
        self.events: list[BaseException] = []

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` in the loop's thread; return its result or raise its exception."""
        box: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            try:
                box.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the peer's thread
                box.put((False, exc))

        self.loop.call_threadsafe(run)
        ok, value = box.get(timeout=PEER_TIMEOUT)
        if not ok:
            raise value
        return value


def serve(
    peer_fn: Callable[[Served, int], Any],
    ssl_ctx: Any,
    *,
    deadline: float = 20.0,
    **server_kw: Any,
) -> Any:
    """Run a uvssl TLS echo server on ``ssl_ctx`` and ``peer_fn(served, port)`` in a peer
    thread; return what the peer returned (its exception is raised here)."""
    h = LoopHarness(deadline)
    s = Served()
    state: dict[str, PeerThread] = {}

    def on_connect(sock: uvssl.SslSocket) -> None:
        s.accepted.append(sock)

    def on_event(ev: BaseException) -> None:
        s.events.append(ev)
        sock = getattr(ev, "socket", None)
        if sock is not None and not sock.closed:
            sock.close()

    def start() -> None:
        s.loop = uvssl.get_loop()
        s.server = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            lambda sock, data: sock.write(data),
            on_event,
            connect_cb=on_connect,
            ssl_ctx=ssl_ctx,
            **server_kw,
        )
        state["peer"] = PeerThread(peer_fn, s, s.server.port)
        state["peer"].start()

    def finished() -> bool:
        if state["peer"].done:
            s.server.close()
            return True
        return False

    h.run(start, until=finished)
    return state["peer"].result()


# -- Context.reload() ------------------------------------------------------------------------


def test_reload_serves_the_new_certificate_and_open_connections_go_on(pki: Pki) -> None:
    ctx = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    client = pki.client_context()

    def peer(s: Served, port: int) -> Any:
        with connect(port, client) as first:
            assert third_name(first) == "a.example"
            assert echo(first, b"before") == b"before"
            pki.install(pki.b)
            new = s.on_loop(ctx.reload)
            with connect(port, client) as second:
                seen = third_name(second)
                assert echo(second, b"second") == b"second"
            # the connection made before the reload still works, with the certificate it had
            assert echo(first, b"after the reload") == b"after the reload"
            assert third_name(first) == "a.example"
        return new, seen

    new, seen = serve(peer, ctx)
    assert seen == "b.example"
    assert isinstance(new, uvssl.X509Certificate)
    assert ("DNS", "b.example") in new.subject_alt_names


def test_reload_from_another_thread_while_the_loop_serves(pki: Pki) -> None:
    ctx = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    client = pki.client_context()

    def peer(s: Served, port: int) -> list[str]:
        names = []
        for leaf in (pki.b, pki.a, pki.b):
            pki.install(leaf)
            ctx.reload()  # from this (the peer's) thread, not the loop's
            with connect(port, client) as tls:
                names.append(third_name(tls))
                assert echo(tls, b"x") == b"x"
        return names

    assert serve(peer, ctx) == ["b.example", "a.example", "b.example"]


def _garbage(pki: Pki) -> str:
    pki.cert.write_bytes(b"this is not a certificate\n")
    return str(pki.cert)


def _mismatch(pki: Pki) -> str:
    # B's certificate with A's key
    pki.cert.write_bytes(b"".join(p.bytes() for p in pki.b.cert_chain_pems))
    return str(pki.key)


def _missing_key(pki: Pki) -> str:
    pki.install(pki.b)
    pki.key.unlink()
    return str(pki.key)


def _missing_certificate(pki: Pki) -> str:
    pki.cert.unlink()
    return str(pki.cert)


def _key_instead_of_certificate(pki: Pki) -> str:
    pki.cert.write_bytes(pki.b.private_key_pem.bytes())
    return str(pki.cert)


@pytest.mark.parametrize(
    "breakage",
    [_garbage, _mismatch, _missing_key, _missing_certificate, _key_instead_of_certificate],
)
def test_a_broken_file_keeps_the_old_certificate(pki: Pki, breakage: Callable[[Pki], str]) -> None:
    ctx = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    client = pki.client_context()

    def peer(s: Served, port: int) -> tuple[BaseException, str, str]:
        culprit = breakage(pki)
        with pytest.raises(uvssl.SslFailure) as info:
            s.on_loop(ctx.reload)
        with connect(port, client) as tls:
            name = third_name(tls)
            assert echo(tls, b"still here") == b"still here"
        return info.value, culprit, name

    err, culprit, name = serve(peer, ctx)
    assert name == "a.example"
    assert culprit in str(err)
    assert "keeps the certificate it had" in str(err)
    assert "BEGIN" not in str(err)  # nothing of the files' contents


def test_wrong_password_keeps_the_old_certificate(pki: Pki) -> None:
    pki.install(pki.a, password=b"first password")
    ctx = uvssl.Context.server(
        certificate=str(pki.cert), key=str(pki.key), certificate_password="first password"
    )
    pki.install(pki.b, password=b"another password")
    with pytest.raises(uvssl.SslFailure) as info:
        ctx.reload()
    assert str(pki.key) in str(info.value)
    assert "password" in str(info.value)
    assert "another password" not in str(info.value)
    pki.install(pki.b, password=b"first password")  # the password the context knows
    client = pki.client_context()

    def peer(s: Served, port: int) -> str:
        with connect(port, client) as tls:
            return third_name(tls)

    assert serve(peer, ctx) == "a.example"  # the failed reload changed nothing
    new = ctx.reload()
    assert new is not None and ("DNS", "b.example") in new.subject_alt_names
    assert serve(peer, ctx) == "b.example"


def test_key_in_the_certificate_file(pki: Pki) -> None:
    both = pki.dir / "both.pem"
    both.write_bytes(pki.a.private_key_pem.bytes() + pki.a.cert_chain_pems[0].bytes())
    ctx = uvssl.Context.server(certificate=str(both))
    both.write_bytes(pki.b.private_key_pem.bytes() + pki.b.cert_chain_pems[0].bytes())
    new = ctx.reload()
    assert new is not None and ("DNS", "b.example") in new.subject_alt_names


def test_a_new_key_type_is_refused(pki: Pki) -> None:
    ctx = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    rsa = pki.ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    pki.install(rsa)
    with pytest.raises(uvssl.SslFailure, match="key type"):
        ctx.reload()
    client = pki.client_context()

    def peer(s: Served, port: int) -> str:
        with connect(port, client) as tls:
            return third_name(tls)

    assert serve(peer, ctx) == "a.example"


def test_reload_rereads_the_trust_store(pki: Pki, tmp_path: Path) -> None:
    # a client context that trusts an unrelated CA cannot verify the server, until its
    # ca_file holds the server's CA and it is reloaded
    other = trustme.CA()
    trust = tmp_path / "trust.pem"
    other.cert_pem.write_to_path(str(trust))
    server_ctx = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    client_ctx = uvssl.Context.client(ca_file=str(trust))
    results: list[Any] = []
    servers: list[Any] = []
    h = LoopHarness(20.0)

    def attempt(then: Callable[[], Any]) -> None:
        def on_connect(sock: uvssl.SslSocket) -> None:
            results.append("connected")
            sock.close()
            then()

        def on_event(ev: BaseException) -> None:
            if isinstance(ev, uvssl.TcpSslError) and not results[-1:] == ["connected"]:
                results.append(type(ev).__name__)
                sock = getattr(ev, "socket", None)
                if sock is not None and not sock.closed:
                    sock.close()
                then()

        uvssl.tcp_ssl_connect(
            LOCALHOST,
            servers[0].port,
            None,
            on_event,
            connect_cb=on_connect,
            ssl_ctx=client_ctx,
            server_hostname="localhost",
        )

    def fix_and_retry() -> None:
        trust.write_bytes(b"this is not a CA file\n")
        try:
            client_ctx.reload()
        except uvssl.SslFailure as e:
            results.append(str(trust) in str(e))
        pki.ca.cert_pem.write_to_path(str(trust))
        assert client_ctx.reload() is None  # no certificate of its own
        attempt(h.done)

    def start() -> None:
        servers.append(
            uvssl.tcp_ssl_server(
                LOCALHOST, 0, None, lambda ev: None, ssl_ctx=server_ctx, handshake_timeout=5
            )
        )
        attempt(fix_and_retry)

    h.run(start)
    servers[0].close()
    assert results == ["SslVerificationFailure", True, "connected"]


def test_contexts_with_nothing_to_reread(pki: Pki) -> None:
    in_memory = uvssl.Context.server(
        certificate_data=pki.a.cert_chain_pems[0].bytes(),
        key_data=pki.a.private_key_pem.bytes(),
    )
    with pytest.raises(ValueError, match="nothing to re-read"):
        in_memory.reload()
    stdlib = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    stdlib.load_cert_chain(str(pki.cert), str(pki.key))
    borrowed = resolve_ssl_ctx(stdlib, "server")
    with pytest.raises(ValueError, match="did not build"):
        borrowed.reload()
    mixed = uvssl.Context.server(certificate=str(pki.cert), key_data=pki.a.private_key_pem.bytes())
    with pytest.raises(ValueError, match="one from a file and one from memory"):
        mixed.reload()


# -- TcpSslServer.ssl_ctx ----------------------------------------------------------------------


def _context_b(pki: Pki, **kw: Any) -> uvssl.Context:
    cert = pki.dir / "b.pem"
    key = pki.dir / "b.key"
    cert.write_bytes(b"".join(p.bytes() for p in pki.b.cert_chain_pems))
    pki.b.private_key_pem.write_to_path(str(key))
    return uvssl.Context.server(certificate=str(cert), key=str(key), **kw)


def test_assigning_ssl_ctx_switches_new_handshakes_only(pki: Pki) -> None:
    ctx_a = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    ctx_b = _context_b(pki, alpn=["h2", "http/1.1"])
    client = pki.client_context()
    client.set_alpn_protocols(["h2"])

    def peer(s: Served, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with connect(port, client) as first:
            out["first"] = (third_name(first), first.selected_alpn_protocol())
            assert echo(first, b"one") == b"one"
            assert s.on_loop(lambda: s.server.ssl_ctx) is ctx_a

            def switch() -> Any:
                s.server.ssl_ctx = ctx_b
                return s.server.ssl_ctx

            out["now"] = s.on_loop(switch)
            with connect(port, client) as second:
                out["second"] = (third_name(second), second.selected_alpn_protocol())
                assert echo(second, b"two") == b"two"
            assert echo(first, b"three") == b"three"
            out["contexts"] = s.on_loop(lambda: [sock.context for sock in s.accepted])
        return out

    out = serve(peer, ctx_a)
    assert out["first"] == ("a.example", None)
    assert out["now"] is ctx_b
    assert out["second"] == ("b.example", "h2")
    assert out["contexts"][0] is ctx_a and out["contexts"][1] is ctx_b


@pytest.mark.parametrize("eager", [False, True], ids=["after-handshake", "at-accept"])
def test_a_handshake_under_way_keeps_its_context_even_when_it_is_dropped(
    pki: Pki, eager: bool
) -> None:
    # The first connection is accepted (its SSL* made from context A) before the switch, and
    # only then does the client send its ClientHello. Context A is no longer referenced by the
    # test when that happens: the handshake must still complete with A's certificate.
    accepted = threading.Event()

    def seen(ssl_ptr: Any) -> None:
        accepted.set()

    kw: dict[str, Any] = {"ssl_configure_callback": seen} if eager else {}
    holder = {"a": uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key), **kw)}
    ctx_b = _context_b(pki)
    client = pki.client_context()

    def peer(s: Served, port: int) -> tuple[str, str, bool]:
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with raw:
            if eager:
                assert accepted.wait(PEER_TIMEOUT)
            else:
                for _ in range(500):  # until the server has accepted it (bounded)
                    if s.on_loop(lambda: lib.uvs_server_unannounced(s.server._ptr)) == 1:
                        break
                    threading.Event().wait(0.01)
                else:
                    pytest.fail("the server did not accept the connection")

            def switch() -> None:
                s.server.ssl_ctx = ctx_b
                holder.clear()  # the test's last reference to context A
                gc.collect()

            s.on_loop(switch)
            with client.wrap_socket(raw, server_hostname="localhost") as first:
                name_first = third_name(first)
                assert echo(first, b"late") == b"late"
                with connect(port, client) as second:
                    name_second = third_name(second)
                # the server side of the first connection names the context it started with
                ctx_of_first = s.on_loop(lambda: s.accepted[0].context)
                gc.collect()
                assert echo(first, b"later") == b"later"
        return name_first, name_second, ctx_of_first is not ctx_b

    assert serve(peer, holder["a"]) == ("a.example", "b.example", True)


def test_a_stdlib_context_can_be_assigned_and_dropped(pki: Pki) -> None:
    ctx_a = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    client = pki.client_context()

    def peer(s: Served, port: int) -> tuple[str, str, str]:
        def switch_to_stdlib() -> None:
            std = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            std.load_cert_chain(str(pki.dir / "b.pem"), str(pki.dir / "b.key"))
            s.server.ssl_ctx = std  # only the server keeps it now

        _context_b(pki)  # writes b.pem and b.key
        with connect(port, client) as first:
            s.on_loop(switch_to_stdlib)
            gc.collect()
            with connect(port, client) as second:
                on_stdlib = third_name(second)
                s.on_loop(lambda: setattr(s.server, "ssl_ctx", ctx_a))
                gc.collect()  # the stdlib context and its wrapper may go now
                with connect(port, client) as third:
                    back = third_name(third)
                assert echo(second, b"on the dropped context") == b"on the dropped context"
            assert echo(first, b"x") == b"x"
            return third_name(first), on_stdlib, back

    assert serve(peer, ctx_a) == ("a.example", "b.example", "a.example")


def test_handshake_timeout_follows_the_new_context(pki: Pki) -> None:
    # the server was given no handshake_timeout: the new context's (short) one applies
    ctx_a = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    ctx_b = _context_b(pki, handshake_timeout=0.2)

    def peer(s: Served, port: int) -> bytes:
        s.on_loop(lambda: setattr(s.server, "ssl_ctx", ctx_b))
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
            return raw.recv(100)  # no ClientHello: the server gives up and closes

    assert serve(peer, ctx_a) == b""


def test_bad_assignments_are_refused_and_change_nothing(pki: Pki) -> None:
    ctx_a = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    client = pki.client_context()

    def peer(s: Served, port: int) -> list[tuple[type, str]]:
        errors: list[tuple[type, str]] = []
        for value in (
            uvssl.Context.client(),
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),  # (create_default_context is not, on 3.9)
            "server.pem",
            None,
            0,
        ):

            def assign(v: Any = value) -> None:
                s.server.ssl_ctx = v

            try:
                s.on_loop(assign)
            except (TypeError, ValueError) as e:
                errors.append((type(e), str(e)))
        with pytest.raises(RuntimeError, match="call_threadsafe"):
            s.server.ssl_ctx = ctx_a  # from this thread, not the loop's
        assert s.on_loop(lambda: s.server.ssl_ctx) is ctx_a
        with connect(port, client) as tls:
            assert third_name(tls) == "a.example"
        return errors

    errors = serve(peer, ctx_a)
    assert [t for t, _ in errors] == [ValueError, ValueError, TypeError, TypeError, ValueError]
    assert "client context" in errors[0][1]
    assert "clients only" in errors[1][1]


def test_assigning_to_a_closed_server(pki: Pki) -> None:
    ctx_a = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    errors: list[BaseException] = []

    def start() -> None:
        srv = uvssl.tcp_ssl_server(LOCALHOST, 0, None, None, ssl_ctx=ctx_a)
        srv.close()
        try:
            srv.ssl_ctx = _context_b(pki)
        except uvssl.SocketClosed as e:
            errors.append(e)
        assert srv.ssl_ctx is ctx_a

    LoopHarness(10.0).run(start, hold=False)
    assert len(errors) == 1 and "closed" in str(errors[0])


def test_the_new_contexts_callbacks_take_effect(pki: Pki) -> None:
    # a context with an sni_callback and an ssl_configure_callback needs the server to hand
    # connections over before their handshake: assigning it (and back) switches that too
    ctx_a = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    ctx_b = _context_b(pki)
    calls: list[tuple[str, Any]] = []

    def pick(sock: Any, name: Optional[str]) -> uvssl.Context:
        calls.append(("sni", (type(sock).__name__, name)))
        return ctx_b

    ctx_sni = uvssl.Context.server(
        certificate=str(pki.cert),
        key=str(pki.key),
        sni_callback=pick,
        ssl_configure_callback=lambda ssl_ptr: calls.append(("configure", None)),
    )
    client = pki.client_context()

    def peer(s: Served, port: int) -> list[str]:
        names = []
        for ctx in (ctx_sni, ctx_a, ctx_sni):

            def assign(c: uvssl.Context = ctx) -> None:
                s.server.ssl_ctx = c

            s.on_loop(assign)
            with connect(port, client) as tls:
                names.append(third_name(tls))
                assert echo(tls, b"x") == b"x"
        return names

    assert serve(peer, ctx_a) == ["b.example", "a.example", "b.example"]
    assert calls == [
        ("configure", None),
        ("sni", ("SslSocket", "localhost")),
        ("configure", None),
        ("sni", ("SslSocket", "localhost")),
    ]


def test_reload_of_a_context_that_sni_picks(pki: Pki) -> None:
    ctx_b = _context_b(pki)
    ctx_sni = uvssl.Context.server(
        certificate=str(pki.cert), key=str(pki.key), sni_callback=lambda sock, name: ctx_b
    )
    client = pki.client_context()

    def peer(s: Served, port: int) -> list[str]:
        names = []
        with connect(port, client) as tls:
            names.append(third_name(tls))
        # b.pem / b.key now hold A: the context sni_callback picks serves it after a reload
        (pki.dir / "b.pem").write_bytes(b"".join(p.bytes() for p in pki.a.cert_chain_pems))
        pki.a.private_key_pem.write_to_path(str(pki.dir / "b.key"))
        ctx_b.reload()
        with connect(port, client) as tls:
            names.append(third_name(tls))
        return names

    assert serve(peer, ctx_sni) == ["b.example", "a.example"]


def test_reloads_racing_new_connections(pki: Pki) -> None:
    # one thread reloads over and over while another connects: every handshake gets one of
    # the two certificates, whole, and every reload succeeds
    ctx = uvssl.Context.server(certificate=str(pki.cert), key=str(pki.key))
    a_dir, b_dir = pki.dir / "a", pki.dir / "b"
    for d, leaf in ((a_dir, pki.a), (b_dir, pki.b)):
        d.mkdir()
        (d / "server.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(d / "server.key"))
    client = pki.client_context()

    def reloader() -> int:
        n = 0
        for i in range(40):
            src = a_dir if i % 2 else b_dir
            for name in ("server.pem", "server.key"):
                tmp = pki.dir / (name + ".new")
                tmp.write_bytes((src / name).read_bytes())
                tmp.replace(pki.dir / name)
            ctx.reload()
            n += 1
        return n

    def peer(s: Served, port: int) -> tuple[set[str], int]:
        names = set()
        other = PeerThread(reloader, name="reloader")
        other.start()
        for _ in range(40):
            with connect(port, client) as tls:
                names.add(third_name(tls))
                assert echo(tls, b"ping") == b"ping"
        return names, other.result()

    names, reloads = serve(peer, ctx, deadline=60.0)
    assert names <= {"a.example", "b.example"} and names
    assert reloads == 40
