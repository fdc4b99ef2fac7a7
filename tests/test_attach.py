"""attach_ssl / detach_ssl (LispWorks' attach-ssl / detach-ssl; STARTTLS) against real
peers on 127.0.0.1: uvssl on both ends, stdlib ``ssl`` clients in threads, and a raw stdlib peer
that looks at the bytes on the wire."""

from __future__ import annotations

import socket
import ssl
from typing import Any, Callable, Optional

import pytest
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    LoopHarness,
    PeerThread,
    listening_socket,
    recv_exactly,
    serve_to_peer,
    stdlib_client_context,
    stdlib_server_context,
)

import uvssl
from uvssl.openssl import ffi, lib

pytestmark = pytest.mark.timeout(30)

DEADLINE = 10.0


def close_quietly(sock: Any) -> None:
    if sock is not None and not sock.closed:
        sock.close()


def is_tls(sock: Any) -> bool:
    return isinstance(sock, uvssl.SslSocket)


class BioPeer:
    """A stdlib TLS endpoint over a raw socket through MemoryBIOs: every byte that arrives from
    the network is kept in ``raw``, so a test can look at the ciphertext itself."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)
        self.raw = bytearray()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the peer closed the connection")
        self.raw += data
        self.incoming.write(data)

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        while True:
            try:
                r = fn(*args)
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def handshake(self) -> None:
        self._run(self.obj.do_handshake)

    def read_exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += self._run(self.obj.read, n - len(out))
        return out

    def write(self, data: bytes) -> None:
        self._run(self.obj.write, data)


# -- STARTTLS --------------------------------------------------------------------------------


def test_starttls_uvssl_both_ends_pipelined_handshake_from_stream_buffer(
    certs, server_ctx, client_ctx
):
    """The client pipelines "STARTTLS\\n" and its ClientHello; the stream-mode server attaches
    only once handshake bytes sit in ``socket.stream`` behind the command, so the handshake can
    only succeed if attach_ssl feeds that buffered input to the engine."""
    h = LoopHarness(DEADLINE)
    plain_c, plain_s = b"EHLO client.test\n", b"250 hello client.test\n"
    tls_c, tls_s = b"secret from the client\n", b"secret from the server\n"
    st: dict[str, Any] = {
        "s_phase": "plain",
        "s_plain": bytearray(),
        "s_tls": bytearray(),
        "buffered_at_attach": None,
        "left_after_attach": None,
        "c_phase": "plain",
        "c_plain": bytearray(),
        "c_tls": bytearray(),
        "s_events": [],
        "c_events": [],
        "s_version": None,
        "c_version": None,
        "server_closed": False,
        "client_closed": False,
    }

    def s_read(sock, stream):
        if st["s_phase"] == "plain":
            if stream.available < len(plain_c):
                return
            st["s_plain"] += stream.read(len(plain_c))
            sock.write(plain_s)
            st["s_phase"] = "starttls"
        if st["s_phase"] == "starttls":
            # wait until the command *and* the start of the handshake are buffered
            if stream.available <= len(b"STARTTLS\n"):
                return
            st["s_plain"] += stream.read(len(b"STARTTLS\n"))
            st["buffered_at_attach"] = stream.available
            assert not is_tls(sock)
            uvssl.attach_ssl(sock, ssl_ctx=server_ctx, ssl_side="server")
            st["left_after_attach"] = stream.available
            assert is_tls(sock)
            st["s_phase"] = "tls"
            return
        st["s_tls"] += stream.read()
        if bytes(st["s_tls"]) == tls_c:
            st["s_version"] = sock.version
            sock.write(tls_s)

    def s_event(ev):
        st["s_events"].append(ev)
        close_quietly(ev.socket)
        st["server_closed"] = True

    def c_connect(sock):
        sock.write(plain_c)

    def c_read(sock, data):
        if st["c_phase"] == "plain":
            st["c_plain"] += data
            if bytes(st["c_plain"]) == plain_s:
                # pipelined: the command and the handshake leave back to back
                sock.write(b"STARTTLS\n")
                uvssl.attach_ssl(
                    sock, ssl_ctx=client_ctx, ssl_side="client", tlsext_host_name="localhost"
                )
                sock.write(tls_c)  # queued until the handshake completes
                st["c_phase"] = "tls"
            return
        st["c_tls"] += data
        if bytes(st["c_tls"]) == tls_s:
            st["c_version"] = sock.version
            sock.close()
            st["client_closed"] = True

    def c_event(ev):
        st["c_events"].append(ev)
        close_quietly(ev.socket)
        st["client_closed"] = True

    def start():
        server = uvssl.tcp_server(LOCALHOST, 0, s_read, s_event, stream=True)
        st["server"] = server
        uvssl.tcp_connect(LOCALHOST, server.port, c_read, c_event, connect_cb=c_connect)

    def finished():
        if st["server_closed"] and st["client_closed"]:
            st["server"].close()
            return True
        return False

    h.run(start, until=finished)
    assert st["c_events"] == []
    assert bytes(st["s_plain"]) == plain_c + b"STARTTLS\n"
    assert bytes(st["c_plain"]) == plain_s
    assert bytes(st["s_tls"]) == tls_c
    assert bytes(st["c_tls"]) == tls_s
    assert st["buffered_at_attach"] and st["buffered_at_attach"] > 0
    assert st["left_after_attach"] == 0  # attach_ssl took the buffered handshake bytes
    assert st["s_version"] in ("TLSv1.2", "TLSv1.3")
    assert st["c_version"] == st["s_version"]
    assert len(st["s_events"]) == 1
    assert isinstance(st["s_events"][0], uvssl.SslClosed)
    assert st["s_events"][0].truncated is False


def test_starttls_uvssl_server_stdlib_client(certs, server_ctx):
    st: dict[str, Any] = {"plain": bytearray(), "tls": bytearray(), "versions": []}

    def client(port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        try:
            raw.sendall(b"STARTTLS\n")
            out["ok"] = recv_exactly(raw, 3)
            ctx = stdlib_client_context(certs)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                out["version"] = s.version()
                s.sendall(b"ping over tls\n")
                out["reply"] = recv_exactly(s, len(b"PONG:ping over tls\n"))
                s.unwrap()
        finally:
            raw.close()
        return out

    def s_read(sock, data):
        if not is_tls(sock):
            st["plain"] += data
            if bytes(st["plain"]) == b"STARTTLS\n":
                sock.write(b"OK\n")  # written before attach_ssl: plaintext
                uvssl.attach_ssl(sock, ssl_ctx=server_ctx)
            return
        st["tls"] += data
        if bytes(st["tls"]).endswith(b"\n"):
            st["versions"].append(sock.version)
            sock.write(b"PONG:" + bytes(st["tls"]))

    peer, events = serve_to_peer(client, s_read, until=bool, deadline=DEADLINE)
    out = peer.result()
    assert out["ok"] == b"OK\n"
    assert out["reply"] == b"PONG:ping over tls\n"
    assert bytes(st["plain"]) == b"STARTTLS\n"
    assert bytes(st["tls"]) == b"ping over tls\n"
    assert st["versions"] == [out["version"]]
    assert isinstance(events[0], uvssl.SslClosed)
    assert events[0].truncated is False


def test_bytes_before_attach_are_plaintext_and_after_it_encrypted(certs, client_ctx):
    """A raw stdlib peer sees the bytes written before attach_ssl verbatim, then TLS records
    in which the bytes written after attach_ssl do not appear (but decrypt to them)."""
    h = LoopHarness(DEADLINE)
    before = b"PLAINTEXT-BEFORE-ATTACH\n"
    after = b"SECRET-AFTER-ATTACH\n"
    ls = listening_socket()
    port = ls.getsockname()[1]
    sctx = stdlib_server_context(certs)

    def peer() -> dict[str, Any]:
        try:
            conn, _ = ls.accept()
        finally:
            ls.close()
        conn.settimeout(PEER_TIMEOUT)
        with conn:
            out: dict[str, Any] = {"plain": recv_exactly(conn, len(before))}
            bio = BioPeer(conn, sctx, server_side=True)
            bio.handshake()
            out["secret"] = bio.read_exactly(len(after))
            out["raw"] = bytes(bio.raw)
            bio.write(b"ACK\n")
            try:  # until the client's close_notify / FIN
                while True:
                    bio._fill()
            except (EOFError, OSError):
                pass
            return out

    st: dict[str, Any] = {"got": bytearray(), "events": [], "done": False}

    def c_connect(sock):
        sock.write(before)
        uvssl.attach_ssl(sock, ssl_ctx=client_ctx, ssl_side="client", tlsext_host_name="localhost")
        sock.write(after)

    def c_read(sock, data):
        st["got"] += data
        if bytes(st["got"]) == b"ACK\n":
            sock.close()
            st["done"] = True

    def c_event(ev):
        st["events"].append(ev)
        close_quietly(ev.socket)
        st["done"] = True

    t = PeerThread(peer)
    t.start()
    h.run(
        lambda: uvssl.tcp_connect(LOCALHOST, port, c_read, c_event, connect_cb=c_connect),
        until=lambda: st["done"] and t.done,
    )
    out = t.result()
    assert st["events"] == []
    assert out["plain"] == before
    assert out["secret"] == after
    raw = out["raw"]
    assert raw[0] == 0x16 and raw[1] == 0x03  # a TLS handshake record: the ClientHello
    assert after not in raw and b"SECRET" not in raw
    assert bytes(st["got"]) == b"ACK\n"


# -- detach ----------------------------------------------------------------------------------


class LineServer:
    """A uvssl plain server speaking a line protocol in which TLS comes and goes:
    "STARTTLS" (plain) -> "OK", attach_ssl; "DETACH" (TLS) -> "BYE", detach_ssl, "PLAIN AGAIN";
    anything else -> "ECHO:<line>". ``log`` records (phase, line) for every line received."""

    def __init__(self, server_ctx: uvssl.Context, on_ssl_closed: str = "close") -> None:
        self.ctx = server_ctx
        self.on_ssl_closed = on_ssl_closed
        self.log: list[tuple[str, bytes]] = []
        self.events: list[BaseException] = []
        self.buf = bytearray()
        self.server: Any = None
        self.closed = False
        self.write_error: Optional[BaseException] = None
        self.attach_twice_error: Optional[BaseException] = None

    def start(self) -> None:
        self.server = uvssl.tcp_server(LOCALHOST, 0, self.read, self.event)

    def read(self, sock, data):
        self.buf += data
        while b"\n" in self.buf:
            i = self.buf.index(b"\n")
            line = bytes(self.buf[:i])
            del self.buf[: i + 1]
            tls = is_tls(sock)
            self.log.append(("tls" if tls else "plain", line))
            if line == b"STARTTLS" and not tls:
                sock.write(b"OK\n")
                uvssl.attach_ssl(sock, ssl_ctx=self.ctx)
            elif line == b"DETACH" and tls:
                sock.write(b"BYE\n")  # encrypted: written before detach_ssl
                uvssl.detach_ssl(sock)
                sock.write(b"PLAIN AGAIN\n")  # plaintext, after the peer's close_notify
            else:
                sock.write(b"ECHO:" + line + b"\n")

    def event(self, ev):
        self.events.append(ev)
        sock = ev.socket
        if isinstance(ev, uvssl.SslClosed) and not ev.truncated and self.on_ssl_closed == "detach":
            uvssl.detach_ssl(sock)
            assert not is_tls(sock)
            sock.write(b"AFTER CLOSE_NOTIFY\n")
            return
        if isinstance(ev, uvssl.SslClosed) and not ev.truncated and self.on_ssl_closed == "write":
            try:  # the session is over: refused, not held for a flush that cannot happen
                sock.write(b"TOO LATE\n")
            except uvssl.SocketClosed as exc:
                self.write_error = exc
        if isinstance(ev, uvssl.SslClosed) and not ev.truncated:
            uvssl.close_socket(sock)
        else:
            close_quietly(sock)
        self.closed = True


def run_line_server(server_ctx, client_fn, on_ssl_closed="close"):
    h = LoopHarness(DEADLINE)
    srv = LineServer(server_ctx, on_ssl_closed)
    st: dict[str, Any] = {}

    def start():
        srv.start()
        st["peer"] = PeerThread(client_fn, srv.server.port)
        st["peer"].start()

    def finished():
        if st["peer"].done and srv.closed:
            srv.server.close()
            return True
        return False

    h.run(start, until=finished)
    return srv, st["peer"].result()


def _close_notify_first_client(cctx):
    """A peer that goes TLS (STARTTLS), has one line echoed, sends its close_notify first and
    returns what the connection reads after that: b"" once the server closes."""

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with raw:
            raw.sendall(b"STARTTLS\n")
            assert recv_exactly(raw, 3) == b"OK\n"
            s = cctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"HI\n")
            assert recv_exactly(s, len(b"ECHO:HI\n")) == b"ECHO:HI\n"
            plain = s.unwrap()
            eof = plain.recv(100)  # the server's FIN (and nothing it tried to write after)
            plain.detach()
            return eof

    return client


def test_write_after_close_notify_both_ways_is_refused_and_close_still_ends_it(certs, server_ctx):
    # After the peer's close_notify (answered with ours) the session can carry nothing more:
    # a write is refused at once, and close_socket() ends the connection (before, the write was
    # held and the graceful close waited for it for ever).
    client = _close_notify_first_client(stdlib_client_context(certs))
    srv, eof = run_line_server(server_ctx, client, on_ssl_closed="write")
    assert eof == b""
    assert isinstance(srv.write_error, uvssl.SocketClosed)
    assert "detach_ssl" in str(srv.write_error)
    assert len(srv.events) == 1 and isinstance(srv.events[0], uvssl.SslClosed)


def test_detach_then_plaintext_then_attach_again(certs, server_ctx):
    """uvssl detaches: what it wrote before detach_ssl is encrypted, after it plaintext; the
    plaintext phase works both ways; a second STARTTLS on the same socket works; at the end
    the peer's close_notify arrives as SslClosed and close_socket ends the connection."""
    cctx = stdlib_client_context(certs)

    def client(port):
        out: dict[str, Any] = {}
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with raw:
            raw.sendall(b"STARTTLS\n")
            out["ok1"] = recv_exactly(raw, 3)
            s = cctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"HELLO TLS\n")
            out["echo1"] = recv_exactly(s, len(b"ECHO:HELLO TLS\n"))
            s.sendall(b"DETACH\n")
            out["bye"] = recv_exactly(s, 4)
            plain = s.unwrap()  # answers uvssl's close_notify
            out["plain_again"] = recv_exactly(plain, len(b"PLAIN AGAIN\n"))
            plain.sendall(b"PLAIN REPLY\n")
            out["echo_plain"] = recv_exactly(plain, len(b"ECHO:PLAIN REPLY\n"))
            plain.sendall(b"STARTTLS\n")
            out["ok2"] = recv_exactly(plain, 3)
            s2 = cctx.wrap_socket(plain, server_hostname="localhost")
            s2.sendall(b"SECOND\n")
            out["echo2"] = recv_exactly(s2, len(b"ECHO:SECOND\n"))
            final = s2.unwrap()  # our close_notify first: uvssl gets SslClosed and closes
            out["eof"] = final.recv(100)
            final.detach()
        return out

    srv, out = run_line_server(server_ctx, client)
    assert out == {
        "ok1": b"OK\n",
        "echo1": b"ECHO:HELLO TLS\n",
        "bye": b"BYE\n",
        "plain_again": b"PLAIN AGAIN\n",
        "echo_plain": b"ECHO:PLAIN REPLY\n",
        "ok2": b"OK\n",
        "echo2": b"ECHO:SECOND\n",
        "eof": b"",
    }
    assert srv.log == [
        ("plain", b"STARTTLS"),
        ("tls", b"HELLO TLS"),
        ("tls", b"DETACH"),
        ("plain", b"PLAIN REPLY"),
        ("plain", b"STARTTLS"),
        ("tls", b"SECOND"),
    ]
    assert len(srv.events) == 1
    ev = srv.events[0]
    assert isinstance(ev, uvssl.SslClosed) and ev.truncated is False


def test_peer_close_notify_first_then_detach_continues_in_plaintext(certs, server_ctx):
    cctx = stdlib_client_context(certs)

    def client(port):
        out: dict[str, Any] = {}
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with raw:
            raw.sendall(b"STARTTLS\n")
            out["ok"] = recv_exactly(raw, 3)
            s = cctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"HI\n")
            out["echo"] = recv_exactly(s, len(b"ECHO:HI\n"))
            plain = s.unwrap()  # close_notify from us first
            out["after"] = recv_exactly(plain, len(b"AFTER CLOSE_NOTIFY\n"))
            plain.sendall(b"STILL PLAIN\n")
            out["echo_plain"] = recv_exactly(plain, len(b"ECHO:STILL PLAIN\n"))
            plain.shutdown(socket.SHUT_WR)
            out["eof"] = plain.recv(100)
            plain.detach()
        return out

    srv, out = run_line_server(server_ctx, client, on_ssl_closed="detach")
    assert out == {
        "ok": b"OK\n",
        "echo": b"ECHO:HI\n",
        "after": b"AFTER CLOSE_NOTIFY\n",
        "echo_plain": b"ECHO:STILL PLAIN\n",
        "eof": b"",
    }
    assert srv.log == [("plain", b"STARTTLS"), ("tls", b"HI"), ("plain", b"STILL PLAIN")]
    assert isinstance(srv.events[0], uvssl.SslClosed)
    assert srv.events[0].truncated is False
    assert isinstance(srv.events[1], uvssl.TcpEof)  # the plain FIN afterwards
    assert len(srv.events) == 2


def test_peer_close_notify_first_then_close_socket_ends_it(certs, server_ctx):
    client = _close_notify_first_client(stdlib_client_context(certs))
    srv, eof = run_line_server(server_ctx, client, on_ssl_closed="close")
    assert eof == b""
    assert len(srv.events) == 1
    assert isinstance(srv.events[0], uvssl.SslClosed) and srv.events[0].truncated is False


def test_attaching_twice_is_an_error(certs, server_ctx):
    st: dict[str, Any] = {"plain": bytearray(), "tls": bytearray(), "errors": []}
    cctx = stdlib_client_context(certs)

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with raw:
            raw.sendall(b"STARTTLS\n")
            ok = recv_exactly(raw, 3)
            with cctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x\n")
                return ok, recv_exactly(s, 4)

    def s_read(sock, data):
        if not is_tls(sock):
            st["plain"] += data
            if bytes(st["plain"]) == b"STARTTLS\n":
                sock.write(b"OK\n")
                uvssl.attach_ssl(sock, ssl_ctx=server_ctx)
                for kw in ({"ssl_ctx": server_ctx}, {}):
                    try:
                        uvssl.attach_ssl(sock, **kw)
                    except ValueError as e:
                        st["errors"].append(e)
            return
        st["tls"] += data
        if bytes(st["tls"]) == b"x\n":
            sock.write(b"TLS\n")  # the first attach is unharmed

    peer, _ = serve_to_peer(client, s_read, until=bool, deadline=DEADLINE)
    assert peer.result() == (b"OK\n", b"TLS\n")
    assert len(st["errors"]) == 2
    assert all("already" in str(e) for e in st["errors"])


# -- ssl_ctx forms ---------------------------------------------------------------------------


def _load_ca(certs):
    calls: list[int] = []

    def configure(ptr):
        calls.append(uvssl.openssl.address(ptr))
        assert ffi.typeof(ptr) is ffi.typeof("SSL_CTX *")
        r = lib.SSL_CTX_load_verify_locations(ptr, str(certs.ca).encode(), ffi.NULL)
        assert r == 1

    return configure, calls


def _load_cert_key(certs):
    calls: list[int] = []

    def configure(ctx):
        calls.append(uvssl.openssl.address(ctx))
        assert lib.SSL_CTX_use_certificate_chain_file(ctx, str(certs.server_cert).encode()) == 1
        assert (
            lib.SSL_CTX_use_PrivateKey_file(
                ctx, str(certs.server_key).encode(), lib.SSL_FILETYPE_PEM
            )
            == 1
        )

    return configure, calls


def run_attach_pair(client_kw: dict[str, Any], server_kw: dict[str, Any]) -> dict[str, Any]:
    """uvssl client and uvssl server, both plain until "STARTTLS\\n" / "OK\\n", then each calls
    attach_ssl(sock, **its keywords); the client sends PING over TLS and the server echoes it."""
    h = LoopHarness(DEADLINE)
    st: dict[str, Any] = {
        "c_plain": bytearray(),
        "c_tls": bytearray(),
        "s_plain": bytearray(),
        "s_tls": bytearray(),
        "c_events": [],
        "s_events": [],
        "c_done": False,
        "info": {},
    }

    def s_read(sock, data):
        if not is_tls(sock):
            st["s_plain"] += data
            if bytes(st["s_plain"]) == b"STARTTLS\n":
                sock.write(b"OK\n")
                uvssl.attach_ssl(sock, **server_kw)
            return
        st["s_tls"] += data
        if bytes(st["s_tls"]) == b"PING\n":
            st["info"]["server_version"] = sock.version
            sock.write(b"PING\n")

    def s_event(ev):
        st["s_events"].append(ev)
        close_quietly(ev.socket)

    def c_read(sock, data):
        if not is_tls(sock):
            st["c_plain"] += data
            if bytes(st["c_plain"]) == b"OK\n":
                uvssl.attach_ssl(sock, **client_kw)
                sock.write(b"PING\n")
            return
        st["c_tls"] += data
        if bytes(st["c_tls"]) == b"PING\n":
            st["info"]["version"] = sock.version
            st["info"]["peer_certificate"] = sock.peer_certificate
            sock.close()
            st["c_done"] = True

    def c_event(ev):
        st["c_events"].append(ev)
        close_quietly(ev.socket)
        st["c_done"] = True

    def start():
        st["server"] = uvssl.tcp_server(LOCALHOST, 0, s_read, s_event)
        uvssl.tcp_connect(
            LOCALHOST,
            st["server"].port,
            c_read,
            c_event,
            connect_cb=lambda s: s.write(b"STARTTLS\n"),
        )

    def finished():
        if st["c_done"] and st["s_events"]:
            st["server"].close()
            return True
        return False

    h.run(start, until=finished)
    return st


def assert_ping_ok(st: dict[str, Any], version: Optional[str] = None) -> None:
    assert st["c_events"] == [], st["c_events"]
    assert bytes(st["s_plain"]) == b"STARTTLS\n"
    assert bytes(st["c_plain"]) == b"OK\n"
    assert bytes(st["s_tls"]) == b"PING\n"
    assert bytes(st["c_tls"]) == b"PING\n"
    got = st["info"]["version"]
    assert got == st["info"]["server_version"]
    if version is not None:
        assert got == version
    else:
        assert got in ("TLSv1.2", "TLSv1.3")
    cert = st["info"]["peer_certificate"]
    assert cert is not None and ("DNS", "localhost") in cert.subject_alt_names


CLIENT_FORMS = [
    "context",
    "true",
    "default",
    "tls-v1-3",
    "tuple-1.2",
    "int-ssl-ctx",
    "cffi-ssl-ctx",
    "stdlib-context",
    "ssl-pointer",
    "cffi-ssl",
]


@pytest.mark.parametrize("form", CLIENT_FORMS)
def test_attach_ssl_ctx_forms_client_side(certs, server_ctx, client_ctx, form):
    configure, calls = _load_ca(certs)
    raw_ssl: list[Any] = []
    kw: dict[str, Any] = {"ssl_side": "client"}
    if form == "context":
        kw.update(ssl_ctx=client_ctx, tlsext_host_name="localhost")
    elif form == "true":
        kw.update(ssl_ctx=True, ctx_configure_callback=configure, tlsext_host_name="localhost")
    elif form == "default":
        kw.update(ssl_ctx="default", ctx_configure_callback=configure)
    elif form == "tls-v1-3":
        kw.update(ssl_ctx="tls-v1-3", ctx_configure_callback=configure)
    elif form == "tuple-1.2":
        kw.update(ssl_ctx=("tls-v1-2", "tls-v1-2"), ctx_configure_callback=configure)
    elif form == "int-ssl-ctx":
        kw.update(ssl_ctx=client_ctx.pointer, tlsext_host_name="localhost")
    elif form == "cffi-ssl-ctx":
        kw.update(ssl_ctx=ffi.cast("SSL_CTX *", client_ctx.pointer))
    elif form == "stdlib-context":
        kw.update(ssl_ctx=stdlib_client_context(certs), tlsext_host_name="localhost")
    else:
        # a raw SSL* made from a client context: it decides the side itself
        ssl_obj = lib.SSL_new(ffi.cast("SSL_CTX *", client_ctx.pointer))
        assert ssl_obj != ffi.NULL
        raw_ssl.append(ssl_obj)
        addr = int(ffi.cast("uintptr_t", ssl_obj))
        kw = {"ssl_ctx": uvssl.SslPointer(addr) if form == "ssl-pointer" else ssl_obj}
    try:
        st = run_attach_pair(kw, {"ssl_ctx": server_ctx})
    finally:
        for p in raw_ssl:
            lib.SSL_free(p)  # ours: attach_ssl only borrowed it
    assert_ping_ok(st, {"tls-v1-3": "TLSv1.3", "tuple-1.2": "TLSv1.2"}.get(form))
    if form in ("true", "default", "tls-v1-3", "tuple-1.2"):
        assert len(calls) == 1  # ctx_configure_callback ran once, with the new SSL_CTX*


@pytest.mark.parametrize("form", ["ssl-pointer", "cffi-ssl", "true-configured", "tls-v1-2"])
def test_attach_ssl_ctx_forms_server_side(certs, server_ctx, client_ctx, form):
    configure, calls = _load_cert_key(certs)
    raw_ssl: list[Any] = []
    if form in ("ssl-pointer", "cffi-ssl"):
        ssl_obj = lib.SSL_new(ffi.cast("SSL_CTX *", server_ctx.pointer))
        assert ssl_obj != ffi.NULL
        assert lib.SSL_is_server(ssl_obj) == 1
        raw_ssl.append(ssl_obj)
        addr = int(ffi.cast("uintptr_t", ssl_obj))
        skw: dict[str, Any] = {
            "ssl_ctx": uvssl.SslPointer(addr) if form == "ssl-pointer" else ssl_obj
        }
    elif form == "true-configured":
        skw = {"ssl_ctx": True, "ctx_configure_callback": configure}
    else:
        skw = {
            "ssl_ctx": ("tls-v1-2", "tls-v1-2"),
            "ctx_configure_callback": configure,
        }
    ckw: dict[str, Any] = {
        "ssl_side": "client",
        "ssl_ctx": client_ctx,
        "tlsext_host_name": "localhost",
    }
    try:
        st = run_attach_pair(ckw, skw)
    finally:
        for p in raw_ssl:
            lib.SSL_free(p)
    assert_ping_ok(st, "TLSv1.2" if form == "tls-v1-2" else None)
    if form in ("true-configured", "tls-v1-2"):
        assert len(calls) == 1


def test_attach_default_client_verifies_against_system_store(certs, server_ctx):
    """ssl_ctx=True on a client: the trustme CA is not in the system store, so the server's
    certificate does not verify."""
    st = run_attach_pair(
        {"ssl_side": "client", "ssl_ctx": True, "tlsext_host_name": "localhost"},
        {"ssl_ctx": server_ctx},
    )
    assert len(st["c_events"]) == 1
    ev = st["c_events"][0]
    assert isinstance(ev, uvssl.SslVerificationFailure), repr(ev)
    assert ev.verify_result not in (None, 0)
    assert bytes(st["c_tls"]) == b"" and bytes(st["s_tls"]) == b""


def test_attach_ssl_configure_callback_gets_the_ssl(certs, server_ctx, client_ctx):
    seen: list[tuple[str, int]] = []

    def on_client_ssl(ptr):
        seen.append(("client", lib.SSL_is_server(ptr)))

    def on_server_ssl(ptr):
        seen.append(("server", lib.SSL_is_server(ptr)))

    st = run_attach_pair(
        {
            "ssl_side": "client",
            "ssl_ctx": client_ctx,
            "tlsext_host_name": "localhost",
            "ssl_configure_callback": on_client_ssl,
        },
        {"ssl_ctx": server_ctx, "ssl_configure_callback": on_server_ssl},
    )
    assert_ping_ok(st)
    assert sorted(seen) == [("client", 0), ("server", 1)]


# -- bad input -------------------------------------------------------------------------------


def _with_plain_socket(fn: Callable[[Any], Any]) -> None:
    """Run fn(client socket) inside a loop once a plain connection is up (what fn raises,
    its assertions included, propagates out of the loop)."""
    h = LoopHarness(DEADLINE)
    st: dict[str, Any] = {"done": False}

    def c_connect(sock):
        try:
            fn(sock)
        finally:
            close_quietly(sock)
            st["server"].close()
            st["done"] = True

    def start():
        st["server"] = uvssl.tcp_server(
            LOCALHOST,
            0,
            lambda s, d: None,
            lambda ev: close_quietly(ev.socket),
        )
        uvssl.tcp_connect(
            LOCALHOST, st["server"].port, lambda s, d: None, lambda ev: None, connect_cb=c_connect
        )

    h.run(start, until=lambda: st["done"])


def test_attach_ssl_on_closed_socket_raises_socket_closed(client_ctx):
    def check(sock):
        sock.close()
        with pytest.raises(uvssl.SocketClosed):
            uvssl.attach_ssl(sock, ssl_ctx=client_ctx, ssl_side="client")
        with pytest.raises(uvssl.SocketClosed):
            uvssl.detach_ssl(sock)

    _with_plain_socket(check)


def test_attach_and_detach_bad_arguments(server_ctx, client_ctx):
    def check(sock):
        with pytest.raises(ValueError, match="ssl_side"):
            uvssl.attach_ssl(sock, ssl_ctx=client_ctx, ssl_side="sideways")
        with pytest.raises(ValueError, match="no TLS"):
            uvssl.detach_ssl(sock)
        with pytest.raises(TypeError):
            uvssl.attach_ssl(sock, ssl_side="client", ssl_ctx=True, ctx_configure_callback=42)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            uvssl.attach_ssl(sock, ssl_side="client", ssl_ctx="tls-v9")
        with pytest.raises(ValueError, match="tlsext_host_name"):
            uvssl.attach_ssl(sock, ssl_ctx=server_ctx, tlsext_host_name="localhost")
        with pytest.raises(ValueError, match="ctx_configure_callback"):
            uvssl.attach_ssl(
                sock, ssl_side="client", ssl_ctx=client_ctx, ctx_configure_callback=lambda p: None
            )
        with pytest.raises(ValueError):
            uvssl.attach_ssl(sock, ssl_side="client", handshake_timeout=0)
        raw = lib.SSL_new(ffi.cast("SSL_CTX *", client_ctx.pointer))
        try:
            with pytest.raises(ValueError, match="raw SSL"):
                uvssl.attach_ssl(sock, ssl_ctx=raw, ssl_configure_callback=lambda p: None)
        finally:
            lib.SSL_free(raw)
        # none of that attached anything: the socket is still plain and open
        assert not is_tls(sock) and not sock.closed

    _with_plain_socket(check)
    with socket.socket() as std, pytest.raises(TypeError):
        uvssl.attach_ssl(std, ssl_ctx=client_ctx)  # type: ignore[arg-type]  # not a uvssl Socket
    with pytest.raises(TypeError):
        uvssl.detach_ssl("not a socket")  # type: ignore[arg-type]
    for bad in (0, -5, True, "0x10", 1.5):
        with pytest.raises(ValueError):
            uvssl.SslPointer(bad)  # type: ignore[arg-type]
