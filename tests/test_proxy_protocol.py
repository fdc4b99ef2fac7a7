"""The PROXY protocol on servers: stdlib clients write v1/v2 headers by hand (struct), then
plain data or a TLS handshake over the same socket; the server's sockets must report the
client's address from the header, the proxy's, and the v2 TLVs; bad, late or foreign headers
must close the connection and reach event_cb as ProxyProtocolError.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from typing import Any, Callable, Optional

import pytest
from helpers import LOCALHOST, LoopHarness, has_ipv6_loopback
from tls_support import stdlib_client_context

import uvssl

pytestmark = pytest.mark.timeout(60)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V6 = pytest.param(
    "::1",
    marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here"),
)


def tlv(kind: int, value: bytes) -> bytes:
    """One v2 TLV."""
    return struct.pack("!BH", kind, len(value)) + value


def v2(
    src: Optional[tuple[str, int]] = ("192.0.2.7", 40001),
    dst: tuple[str, int] = ("198.51.100.1", 443),
    *,
    cmd: int = 1,
    fam: Optional[int] = None,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    """A v2 header: TCP over IPv4 or IPv6 (from the source's form), or UNSPEC without src."""
    if src is None:
        fam = 0x00 if fam is None else fam
        addrs = b""
    elif ":" in src[0]:
        fam = 0x21 if fam is None else fam
        addrs = socket.inet_pton(socket.AF_INET6, src[0]) + socket.inet_pton(
            socket.AF_INET6, dst[0]
        )
        addrs += struct.pack("!HH", src[1], dst[1])
    else:
        fam = 0x11 if fam is None else fam
        addrs = socket.inet_pton(socket.AF_INET, src[0]) + socket.inet_pton(socket.AF_INET, dst[0])
        addrs += struct.pack("!HH", src[1], dst[1])
    body = addrs + tlvs
    return SIG + bytes([(version << 4) | cmd, fam]) + struct.pack("!H", len(body)) + body


class Run:
    """One server (plain or TLS, with the PROXY protocol) and one client thread."""

    def __init__(self) -> None:
        self.connects: list[dict[str, Any]] = []
        self.data: list[bytes] = []
        self.errors: list[BaseException] = []
        self.error_peers: list[Any] = []
        self.client_result: Any = None
        self.client_error: Optional[BaseException] = None


def serve(
    client: Callable[[int], Any],
    *,
    tls: Optional[uvssl.Context] = None,
    host: str = LOCALHOST,
    echo: bool = True,
    **kw: Any,
) -> Run:
    """Run a server on ``host`` with ``proxy_protocol=True`` (unless kw says otherwise) and
    ``client(port)`` in a thread; returns what the server saw and what the client returned.
    """
    run = Run()
    finished = threading.Event()

    def on_connect(sock: uvssl.Socket) -> None:
        run.connects.append(
            {
                "remote": sock.remote_address,
                "proxy": sock.proxy_address,
                "tlvs": sock.proxy_tlvs,
                "local": sock.local_address,
            }
        )

    def on_read(sock: uvssl.Socket, data: bytes) -> None:
        run.data.append(data)
        if echo:
            sock.write(data.upper())

    def on_event(ev: BaseException) -> None:
        s = getattr(ev, "socket", None)
        if not isinstance(ev, (uvssl.TcpEof, uvssl.SslClosed)):
            run.errors.append(ev)
        if isinstance(ev, uvssl.ProxyProtocolError) and s is not None:
            run.error_peers.append((s.remote_address, s.proxy_address))
        if s is not None and not s.closed:
            s.close()

    def client_thread(port: int) -> None:
        try:
            run.client_result = client(port)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            run.client_error = exc
        finally:
            finished.set()

    def start() -> None:
        kw.setdefault("proxy_protocol", True)
        if tls is not None:
            server: uvssl.TcpServer = uvssl.tcp_ssl_server(
                host, 0, on_read, on_event, connect_cb=on_connect, ssl_ctx=tls, **kw
            )
        else:
            server = uvssl.tcp_server(host, 0, on_read, on_event, connect_cb=on_connect, **kw)
        threading.Thread(target=client_thread, args=(server.port,), daemon=True).start()

    LoopHarness(20).run(start, until=finished.is_set)
    if run.client_error is not None:
        raise run.client_error
    return run


def connect(port: int, host: str = LOCALHOST) -> socket.socket:
    """A blocking stdlib client with a 10 s limit on every call."""
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    out = b""
    for _ in range(1000):
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return out
        if not chunk:
            return out
        out += chunk
    raise AssertionError("the server never closed the connection")


def plain_client(
    header: bytes, payload: bytes = b"hello", *, split: bool = False, host: str = LOCALHOST
):
    """Send header (one byte per write when split) then payload; return the echo."""

    def client(port: int) -> bytes:
        with connect(port, LOCALHOST if host == "::" else host) as s:
            if split:
                for i in range(len(header)):
                    s.sendall(header[i : i + 1])
                s.sendall(payload)
            else:
                s.sendall(header + payload)  # one write: the data comes with the header
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got

    return client


def rejected_client(header: bytes, *, then_close: bool = False, host: str = LOCALHOST):
    """Send a (bad) header; return what the server sent before closing the connection."""

    def client(port: int) -> bytes:
        with connect(port, host) as s:
            try:
                s.sendall(header)
                if then_close:
                    s.shutdown(socket.SHUT_WR)
            except (ConnectionResetError, BrokenPipeError):
                return b""
            return read_until_closed(s)

    return client


def one_proxy_error(run: Run, reason: str) -> uvssl.ProxyProtocolError:
    assert run.connects == [] and run.data == []
    assert len(run.errors) == 1, run.errors
    ev = run.errors[0]
    assert isinstance(ev, uvssl.ProxyProtocolError), ev
    assert isinstance(ev, uvssl.SocketError)
    assert ev.identifier == "proxy-protocol"
    assert ev.reason == reason, str(ev)
    return ev


# -- addresses from the header ------------------------------------------------------------


def test_v1_tcp4_then_data_in_one_write():
    header = b"PROXY TCP4 192.0.2.10 198.51.100.20 56324 443\r\n"
    run = serve(plain_client(header, b"ping"))
    assert run.client_result == b"PING"
    assert len(run.connects) == 1
    c = run.connects[0]
    assert c["remote"] == ("192.0.2.10", 56324)
    assert c["proxy"][0] == LOCALHOST and c["proxy"][1] != 56324
    assert c["tlvs"] == {}
    assert c["local"][0] == LOCALHOST
    assert b"".join(run.data) == b"ping"
    assert run.errors == []


def test_v1_tcp6_split_into_one_byte_writes():
    header = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n"
    run = serve(plain_client(header, b"hello", split=True))
    assert run.client_result == b"HELLO"
    assert run.connects[0]["remote"] == ("2001:db8::1", 65535)
    assert run.connects[0]["proxy"][0] == LOCALHOST


def test_v1_unknown_keeps_the_real_peer():
    run = serve(plain_client(b"PROXY UNKNOWN whatever follows\r\n", b"x"))
    assert run.client_result == b"X"
    c = run.connects[0]
    assert c["remote"] == c["proxy"] and c["remote"][0] == LOCALHOST


def test_v2_ipv4_with_tlvs():
    ssl_tlv = tlv(
        0x20,
        bytes([0x07])
        + struct.pack("!I", 0)
        + tlv(0x21, b"TLSv1.3")
        + tlv(0x22, b"client.example")
        + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
        + tlv(0x24, b"SHA256")
        + tlv(0x25, b"RSA2048")
        + tlv(0x7F, b"\x01\x02"),
    )
    tlvs = (
        tlv(0x01, b"h2")
        + tlv(0x02, b"example.com")
        + tlv(0x04, b"\x00\x00")
        + tlv(0x05, b"\xaa\xbb\xcc")
        + ssl_tlv
        + tlv(0xE0, b"custom")
    )
    run = serve(plain_client(v2(("203.0.113.5", 1234), tlvs=tlvs), b"data"))
    c = run.connects[0]
    assert c["remote"] == ("203.0.113.5", 1234)
    assert c["proxy"][0] == LOCALHOST
    assert c["tlvs"] == {
        "alpn": "h2",
        "authority": "example.com",
        "unique_id": b"\xaa\xbb\xcc",
        "ssl": {
            "client": 7,
            "verify": 0,
            "ssl": True,
            "cert_conn": True,
            "cert_sess": True,
            "version": "TLSv1.3",
            "cn": "client.example",
            "cipher": "TLS_AES_128_GCM_SHA256",
            "sig_alg": "SHA256",
            "key_alg": "RSA2048",
            0x7F: b"\x01\x02",
        },
        0xE0: b"custom",
    }
    assert b"".join(run.data) == b"data"


def test_v2_ipv6_split_into_one_byte_writes():
    header = v2(("2001:db8::5", 4433), ("2001:db8::6", 443), tlvs=tlv(0x02, b"a.example"))
    run = serve(plain_client(header, b"abc", split=True))
    assert run.client_result == b"ABC"
    assert run.connects[0]["remote"] == ("2001:db8::5", 4433)
    assert run.connects[0]["tlvs"] == {"authority": "a.example"}


@pytest.mark.parametrize("header", [v2(cmd=0, fam=0x11), v2(cmd=0, src=None), v2(src=None)])
def test_v2_local_and_unspec_keep_the_real_peer(header):
    run = serve(plain_client(header, b"q"))
    assert run.client_result == b"Q"
    c = run.connects[0]
    assert c["remote"] == c["proxy"] and c["remote"][0] == LOCALHOST
    assert c["tlvs"] == {}


@pytest.mark.parametrize("host", [LOCALHOST, V6])
def test_proxy_over_ipv6_listener(host):
    run = serve(plain_client(v2(("192.0.2.1", 7)), b"z", host=host), host=host)
    assert run.client_result == b"Z"
    assert run.connects[0]["remote"] == ("192.0.2.1", 7)
    assert run.connects[0]["proxy"][0] == host


def test_sockets_of_servers_without_the_protocol_have_no_proxy_data():
    run = serve(plain_client(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", b""), proxy_protocol=False)
    c = run.connects[0]
    assert c["proxy"] is None and c["tlvs"] is None
    assert b"".join(run.data).startswith(b"PROXY TCP4")  # just data for such a server


# -- TLS after the header -----------------------------------------------------------------


def tls_client(certs: Any, header: bytes, *, split: bool = False):
    def client(port: int) -> bytes:
        ctx = stdlib_client_context(certs)
        with connect(port) as raw:
            if split:
                for i in range(len(header)):
                    raw.sendall(header[i : i + 1])
            else:
                raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"secret")
                got = b""
                while len(got) < 6:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    got += chunk
                return got

    return client


@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_tls_handshake_after_the_header(certs, server_ctx, eager, split):
    ctx = server_ctx
    if eager:  # a configure callback makes the server hand connections over before the handshake
        ctx = uvssl.Context.server(certificate=certs.server_cert, key=certs.server_key)
        ctx.ssl_configure_callback = lambda ssl_ptr: None
    header = v2(("192.0.2.99", 5555), tlvs=tlv(0x01, b"http/1.1"))
    run = serve(tls_client(certs, header, split=split), tls=ctx)
    assert run.client_result == b"SECRET"
    c = run.connects[0]
    assert c["remote"] == ("192.0.2.99", 5555)
    assert c["proxy"][0] == LOCALHOST
    assert c["tlvs"] == {"alpn": "http/1.1"}
    assert run.errors == []


def bio_tls_client(certs: Any, header: bytes):
    """A TLS client whose first write is the header and the ClientHello together."""

    def client(port: int) -> bytes:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = stdlib_client_context(certs).wrap_bio(incoming, outgoing, server_hostname="localhost")
        with connect(port) as raw:
            first = True
            for _ in range(50):
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                out = outgoing.read()
                raw.sendall(header + out if first else out)
                first = False
                chunk = raw.recv(65536)
                assert chunk, "the server closed during the handshake"
                incoming.write(chunk)
            tls.write(b"secret")
            raw.sendall(outgoing.read())
            got = b""
            for _ in range(50):
                try:
                    got += tls.read(100)
                except ssl.SSLWantReadError:
                    chunk = raw.recv(65536)
                    assert chunk, "the server closed before answering"
                    incoming.write(chunk)
                if len(got) >= 6:
                    break
            return got

    return client


def test_tls_client_hello_in_the_same_segment_as_the_header(certs, server_ctx):
    header = v2(("192.0.2.50", 6000))
    run = serve(bio_tls_client(certs, header), tls=server_ctx)
    assert run.client_result == b"SECRET"
    assert run.connects[0]["remote"] == ("192.0.2.50", 6000)
    assert run.errors == []


def test_tls_local_header_keeps_the_real_peer(certs, server_ctx):
    run = serve(tls_client(certs, v2(cmd=0)), tls=server_ctx)
    assert run.client_result == b"SECRET"
    c = run.connects[0]
    assert c["remote"] == c["proxy"] and c["remote"][0] == LOCALHOST


def test_eager_tls_server_reports_a_bad_header(certs):
    ctx = uvssl.Context.server(certificate=certs.server_cert, key=certs.server_key)
    ctx.ssl_configure_callback = lambda ssl_ptr: None
    run = serve(rejected_client(b"\x16\x03\x01\x02\x00\x01"), tls=ctx)
    one_proxy_error(run, "signature")


def test_addresses_stay_readable_after_the_close():
    kept: list[Any] = []
    finished = threading.Event()

    def on_read(sock: uvssl.Socket, data: bytes) -> None:
        sock.close(force=True)
        kept.append((sock.remote_address, sock.proxy_address, sock.proxy_tlvs))
        finished.set()

    def start() -> None:
        server = uvssl.tcp_server(LOCALHOST, 0, on_read, proxy_protocol=True)

        def client() -> None:
            with connect(server.port) as s:
                s.sendall(v2(("192.0.2.77", 77), tlvs=tlv(0x05, b"id")) + b"x")
                read_until_closed(s)

        threading.Thread(target=client, daemon=True).start()

    LoopHarness(10).run(start, until=finished.is_set)
    remote, proxy, tlvs = kept[0]
    assert remote == ("192.0.2.77", 77)
    assert proxy is not None and proxy[0] == LOCALHOST
    assert tlvs == {"unique_id": b"id"}


def test_shutdown_closes_connections_still_waiting_for_their_header():
    state: dict[str, Any] = {"done": False, "events": []}
    waiting = threading.Event()
    closed = threading.Event()

    def start() -> None:
        server = uvssl.tcp_server(LOCALHOST, 0, None, state["events"].append, proxy_protocol=True)

        def client() -> None:
            with connect(server.port) as s:
                s.sendall(b"PROXY TCP4 1.2.3.4")  # and never the rest
                waiting.set()
                read_until_closed(s)
                closed.set()

        def done(srv: uvssl.TcpServer) -> None:
            state["done"] = True

        def check() -> None:
            if waiting.is_set():  # a little later, so that it is surely accepted
                uvssl.delay(lambda: server.shutdown(5, done), 0.1)
            else:
                uvssl.delay(check, 0.02)

        threading.Thread(target=client, daemon=True).start()
        uvssl.delay(check, 0.05)

    LoopHarness(10).run(start, until=lambda: state["done"] and closed.is_set())
    assert state["events"] == []  # never handed over: nobody is told


def test_tls_with_v1_header(certs, server_ctx):
    header = b"PROXY TCP4 192.0.2.3 192.0.2.4 1000 443\r\n"
    run = serve(tls_client(certs, header), tls=server_ctx)
    assert run.client_result == b"SECRET"
    assert run.connects[0]["remote"] == ("192.0.2.3", 1000)


def test_tls_server_rejects_a_client_hello_without_header(certs, server_ctx):
    def client(port: int) -> Any:
        with connect(port) as raw:
            try:
                stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost")
            except (ssl.SSLError, OSError) as exc:
                return exc
            return None

    run = serve(client, tls=server_ctx)
    assert run.client_result is not None
    one_proxy_error(run, "signature")


# -- rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, reason",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "signature"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1-line"),
        (b"PROXY " + b"A" * 120, "v1-line"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1-syntax"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1-syntax"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1-syntax"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1-address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "v1-address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1-address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1-port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1-port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "v1-port"),
        (v2(version=1), "v2-version"),
        (v2(cmd=2), "v2-command"),
        (v2(fam=0x12), "v2-family"),  # UDP over IPv4
        (v2(("2001:db8::1", 1), ("2001:db8::2", 2), fam=0x22), "v2-family"),  # UDP over IPv6
        (SIG + b"\x21\x31\x00\x00", "v2-family"),  # UNIX
        (SIG + b"\x21\x11\x00\x0b" + b"\x00" * 11, "v2-length"),
        (SIG + b"\x21\x21\x00\x23" + b"\x00" * 35, "v2-length"),
        (v2(tlvs=b"\x01\x00\x05abc"), "v2-tlv"),
        (v2(tlvs=b"\x01\x00"), "v2-tlv"),
        (v2(tlvs=tlv(0x20, b"\x01\x00\x00")), "v2-tlv"),
        (v2(tlvs=tlv(0x20, b"\x01\x00\x00\x00\x00" + b"\x21\x00\x09abc")), "v2-tlv"),
    ],
)
def test_bad_headers_close_and_report(header, reason):
    run = serve(rejected_client(header))
    assert run.client_result == b""  # nothing was sent back
    ev = one_proxy_error(run, reason)
    assert run.error_peers[0][0][0] == LOCALHOST  # the real peer: the header was not accepted
    assert run.error_peers[0][1] is None
    text = str(ev)
    assert "PROXY protocol" in text and LOCALHOST in text
    assert "HTTP" not in text and "AAAA" not in text  # the input is not echoed


def test_header_cut_short_by_eof():
    run = serve(rejected_client(v2()[:20], then_close=True))
    one_proxy_error(run, "eof")


def test_connection_closed_without_a_byte():
    run = serve(rejected_client(b"", then_close=True))
    one_proxy_error(run, "eof")


@pytest.mark.parametrize("use_tls", [False, True])
def test_late_header_times_out(use_tls, server_ctx):
    kw: dict[str, Any] = {"handshake_timeout": 0.3}
    if use_tls:
        kw["tls"] = server_ctx
    run = serve(rejected_client(b"PROXY TCP4 1.2.3.4"), **kw)
    ev = one_proxy_error(run, "timeout")
    assert "handshake_timeout" in str(ev)


# -- sources ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "allowed",
    [("127.0.0.1",), ("10.0.0.0/8", "127.0.0.0/8"), ("::1", "127.0.0.1/32"), ("0.0.0.0/0",)],
)
def test_allowed_sources(allowed):
    run = serve(plain_client(v2(("192.0.2.8", 8)), b"ok"), proxy_protocol_from=allowed)
    assert run.client_result == b"OK"
    assert run.connects[0]["remote"] == ("192.0.2.8", 8)


@pytest.mark.parametrize("denied", [("10.0.0.0/8",), ("127.0.0.2",), ("::1",), ("127.0.0.0/32",)])
def test_denied_sources_are_refused_at_accept(denied):
    run = serve(rejected_client(v2()), proxy_protocol_from=denied)
    one_proxy_error(run, "source")


def test_ipv6_sources():
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    ok = serve(plain_client(v2(), b"a", host="::1"), host="::1", proxy_protocol_from=("::/0",))
    assert ok.client_result == b"A"
    no = serve(rejected_client(v2(), host="::1"), host="::1", proxy_protocol_from=("fd00::/8",))
    one_proxy_error(no, "source")


def test_ipv4_mapped_peer_matches_ipv4_entry():
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    run = serve(plain_client(v2(), b"m"), host="::", proxy_protocol_from=("127.0.0.0/8",))
    assert run.client_result == b"M"


# -- arguments ----------------------------------------------------------------------------


def test_argument_errors(server_ctx):
    errors: list[BaseException] = []

    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"proxy_protocol": 1}, TypeError),
        ({"proxy_protocol_from": ("127.0.0.1",)}, ValueError),
        ({"proxy_protocol": True, "proxy_protocol_from": "127.0.0.1"}, TypeError),
        ({"proxy_protocol": True, "proxy_protocol_from": ()}, ValueError),
        ({"proxy_protocol": True, "proxy_protocol_from": ("10.0.0.0/33",)}, ValueError),
        ({"proxy_protocol": True, "proxy_protocol_from": ("example.com",)}, ValueError),
        ({"proxy_protocol": True, "proxy_protocol_from": (1,)}, TypeError),
        ({"proxy_protocol": True, "proxy_protocol_from": 5}, TypeError),
        ({"proxy_protocol": True, "handshake_timeout": 0}, ValueError),
    ]

    def start() -> None:
        for kw, exc in cases:
            for make in (uvssl.tcp_server, uvssl.tcp_ssl_server):
                extra = {"ssl_ctx": server_ctx} if make is uvssl.tcp_ssl_server else {}
                try:
                    make(LOCALHOST, 0, None, **kw, **extra)
                except exc as e:
                    errors.append(e)
                else:
                    raise AssertionError(f"{make.__name__}({kw}) did not raise {exc.__name__}")

    LoopHarness(10).run(start, hold=False)
    assert len(errors) == 18
    assert any("proxy_protocol=True" in str(e) for e in errors)
