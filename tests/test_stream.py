"""Synchronous TLS streams (Allegro CL's make-ssl-client-stream /
make-ssl-server-stream) over real sockets on 127.0.0.1, against stdlib ``ssl`` peers in
threads and a uvssl server running its event loop in another thread."""

from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from typing import Any, Callable

import pytest
import trustme
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    PeerThread,
    listening_socket,
    recv_exactly,
    recv_until,
    stdlib_client_context,
    stdlib_server_context,
)

import uvssl

pytestmark = pytest.mark.timeout(30)

X509_V_ERR_CERT_CHAIN_TOO_LONG = 22
X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_HOSTNAME_MISMATCH = 62


def connect(port: int, timeout: float = PEER_TIMEOUT) -> socket.socket:
    return socket.create_connection((LOCALHOST, port), timeout=timeout)


def stdlib_server(
    handler: Callable[[ssl.SSLSocket], Any], sctx: ssl.SSLContext
) -> tuple[PeerThread, int]:
    """A one-connection stdlib TLS server in a thread; returns (thread, port). The thread's
    result is handler's, or ("handshake-failed", exc) when the TLS handshake failed."""
    ls = listening_socket()
    port = ls.getsockname()[1]

    def serve():
        try:
            conn, _ = ls.accept()
        finally:
            ls.close()
        conn.settimeout(PEER_TIMEOUT)
        with conn:
            try:
                s = sctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                return ("handshake-failed", e)
            with s:
                return handler(s)

    t = PeerThread(serve, name="stdlib-tls-server")
    t.start()
    return t, port


def echo_line(s: ssl.SSLSocket) -> dict[str, Any]:
    """Echo one line, then wait for the client's close_notify."""
    line = recv_until(s, b"\n")
    s.sendall(line)
    rest = s.recv(100)  # b"" at close_notify
    return {"line": line, "rest": rest, "version": s.version(), "cipher": s.cipher()[0]}  # type: ignore[index]


def read_exactly(stream: uvssl.SslStream, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


# -- against a uvssl server in another thread ---------------------------------------------------


class UvsslEchoServerThread:
    """A uvssl TLS echo server running its own event loop in a thread (with a deadline)."""

    def __init__(self, **server_kw: Any) -> None:
        self.server_kw = server_kw
        self.ready = threading.Event()
        self.event_seen = threading.Event()
        self.events: list[BaseException] = []
        self.loop: Any = None
        self.port = 0
        self.deadline_hit = False
        self.thread = PeerThread(self._run, name="uvssl-server-loop")

    def _run(self) -> None:
        def read_cb(sock, data):
            sock.write(data)

        def event_cb(ev):
            self.events.append(ev)
            if ev.socket is not None and not ev.socket.closed:
                ev.socket.close()
            self.event_seen.set()

        def expire():
            self.deadline_hit = True
            uvssl.exit_event_loop()

        def start():
            self.loop = uvssl.get_loop()
            self.server = uvssl.tcp_ssl_server(LOCALHOST, 0, read_cb, event_cb, **self.server_kw)
            self.port = self.server.port
            uvssl.delay(expire, 15)
            self.ready.set()

        try:
            uvssl.start_event_loop(start)
        finally:
            self.ready.set()

    def __enter__(self) -> UvsslEchoServerThread:
        self.thread.start()
        assert self.ready.wait(10), "the uvssl server loop did not start"
        assert self.port, "the uvssl server did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.loop is not None and not self.thread.done:
            try:
                self.loop.call_threadsafe(uvssl.exit_event_loop)
            except RuntimeError:
                pass  # already ended
        self.thread.result(10)
        assert not self.deadline_hit


def test_client_stream_against_uvssl_server(certs):
    with UvsslEchoServerThread(
        certificate=str(certs.server_cert), key=str(certs.server_key)
    ) as srv:
        raw = connect(srv.port)
        stream = uvssl.make_ssl_client_stream(
            raw, ca_file=str(certs.ca), server_hostname="localhost"
        )
        try:
            payload = b"sync client to uvssl server\n" * 100
            assert stream.write(payload) == len(payload)
            assert read_exactly(stream, len(payload)) == payload
            assert stream.version in ("TLSv1.2", "TLSv1.3")
            assert stream.server_hostname == "localhost"
            assert uvssl.get_ssl_verify_result(stream) == 0
        finally:
            stream.close()
        assert srv.event_seen.wait(10)
    assert len(srv.events) == 1
    ev = srv.events[0]
    assert isinstance(ev, uvssl.SslClosed) and ev.truncated is False  # close sent close_notify


def test_client_stream_against_stdlib_server(certs):
    t, port = stdlib_server(echo_line, stdlib_server_context(certs))
    raw = connect(port)
    with uvssl.make_ssl_client_stream(
        raw, ca_file=str(certs.ca), server_hostname="localhost"
    ) as stream:
        assert stream.write(b"hello stdlib\n") == 13
        assert read_exactly(stream, 13) == b"hello stdlib\n"
        version = stream.version
        cipher = stream.cipher
    out = t.result()
    assert out["line"] == b"hello stdlib\n"
    assert out["rest"] == b""  # our close_notify
    assert out["version"] == version and out["cipher"] == cipher


def test_server_stream_against_stdlib_client(certs):
    ls = listening_socket()
    port = ls.getsockname()[1]
    cctx = stdlib_client_context(certs)

    def client():
        with connect(port) as raw, cctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"from the stdlib client\n")
            reply = recv_exactly(s, len(b"REPLY:from the stdlib client\n"))
            return reply, s.version(), s.getpeercert()

    t = PeerThread(client)
    t.start()
    try:
        conn, _ = ls.accept()
    finally:
        ls.close()
    conn.settimeout(PEER_TIMEOUT)
    stream = uvssl.make_ssl_server_stream(
        conn, certificate=str(certs.server_cert), key=str(certs.server_key)
    )
    try:
        buffered = io.BufferedReader(stream)
        line = buffered.readline()
        assert line == b"from the stdlib client\n"
        stream.write(b"REPLY:" + line)
        assert stream.server_side is True
        assert uvssl.get_ssl_peer_certificate(stream) is None  # no client certificate asked
    finally:
        stream.close()
    reply, version, peercert = t.result()
    assert reply == b"REPLY:from the stdlib client\n"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert ("DNS", "localhost") in peercert["subjectAltName"]


def test_server_stream_requiring_a_client_certificate(certs):
    ls = listening_socket()
    port = ls.getsockname()[1]
    cctx = stdlib_client_context(certs, client_cert=True)

    def client():
        with connect(port) as raw, cctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"x")
            return recv_exactly(s, 1)

    t = PeerThread(client)
    t.start()
    try:
        conn, _ = ls.accept()
    finally:
        ls.close()
    conn.settimeout(PEER_TIMEOUT)
    ctx = uvssl.Context.server(
        certificate=str(certs.server_cert), key=str(certs.server_key), ca_file=str(certs.ca)
    )
    with uvssl.make_ssl_server_stream(conn, context=ctx, verify="required") as stream:
        assert read_exactly(stream, 1) == b"x"
        stream.write(b"y")
        cert = uvssl.get_ssl_peer_certificate(stream)
        assert cert is not None
        assert ("DNS", "client.example") in cert.subject_alt_names
        assert uvssl.get_ssl_verify_result(stream) == 0
    assert t.result() == b"y"


# -- the GIL, the handshake, peer details, closing -----------------------------------------------


def test_other_threads_run_while_a_stream_blocks_in_read(certs):
    """While the main thread waits in SslStream.read, a counting thread keeps counting: the
    server only answers after it has seen the count grow while the reader was blocked. Were the
    GIL held during the read, neither could run and the read would time out instead."""
    counter = [0]
    stop = threading.Event()
    reading = threading.Event()
    progress: dict[str, int] = {}

    def count():
        while not stop.is_set():
            counter[0] += 1

    def handler(s):
        line = recv_until(s, b"\n")
        assert reading.wait(PEER_TIMEOUT)
        start = counter[0]
        end = time.monotonic() + 5
        while counter[0] < start + 20000 and time.monotonic() < end:
            time.sleep(0.001)
        progress["during_read"] = counter[0] - start
        s.sendall(line)
        return s.recv(10)

    t, port = stdlib_server(handler, stdlib_server_context(certs))
    counter_thread = threading.Thread(target=count, daemon=True)
    raw = connect(port, timeout=8)
    stream = uvssl.make_ssl_client_stream(raw, ca_file=str(certs.ca), server_hostname="localhost")
    counter_thread.start()
    try:
        stream.write(b"wake me\n")
        reading.set()
        got = stream.read(100)  # blocks until the server saw the counter move
    finally:
        stop.set()
        counter_thread.join(5)
        stream.close()
    assert got == b"wake me\n"
    assert t.result() == b""
    assert progress["during_read"] >= 20000


def test_handshake_happens_at_first_io(certs):
    handshaken = threading.Event()

    def handler(s):
        handshaken.set()  # wrap_socket returned: the handshake is complete
        return echo_line(s)

    t, port = stdlib_server(handler, stdlib_server_context(certs))
    raw = connect(port)
    stream = uvssl.make_ssl_client_stream(raw, ca_file=str(certs.ca), server_hostname="localhost")
    try:
        assert stream.peer_certificate is None
        assert stream.cipher is None
        assert not handshaken.is_set()  # creating the stream does not start the handshake
        stream.write(b"first\n")  # ... the first I/O does (the server may finish just after)
        assert handshaken.wait(PEER_TIMEOUT)
        assert stream.peer_certificate is not None
        assert read_exactly(stream, 6) == b"first\n"
    finally:
        stream.close()
    assert t.result()["line"] == b"first\n"


def test_ssl_do_handshake_and_peer_details(certs):
    t, port = stdlib_server(echo_line, stdlib_server_context(certs))
    raw = connect(port)
    stream = uvssl.make_ssl_client_stream(raw, ca_file=str(certs.ca), server_hostname="localhost")
    try:
        assert uvssl.get_ssl_peer_certificate(stream) is None
        uvssl.ssl_do_handshake(stream)
        cert = uvssl.get_ssl_peer_certificate(stream)
        assert isinstance(cert, uvssl.X509Certificate)
        pem = certs.server_cert.read_text()
        leaf_pem = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
        assert cert.to_der() == ssl.PEM_cert_to_DER_cert(leaf_pem)
        assert ("DNS", "localhost") in cert.subject_alt_names
        assert uvssl.get_ssl_verify_result(stream) == 0
        assert stream.cipher is not None
        assert stream.ssl_pointer > 0
        stream.write(b"after handshake\n")
        assert read_exactly(stream, 16) == b"after handshake\n"
    finally:
        stream.close()
    t.result()
    with pytest.raises(TypeError):
        uvssl.ssl_do_handshake(raw)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        uvssl.get_ssl_peer_certificate("stream")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        uvssl.get_ssl_verify_result(None)  # type: ignore[arg-type]


def test_closing_the_stream_closes_the_socket(certs):
    t, port = stdlib_server(echo_line, stdlib_server_context(certs))
    raw = connect(port)
    fd = raw.fileno()
    stream = uvssl.make_ssl_client_stream(raw, ca_file=str(certs.ca), server_hostname="localhost")
    assert stream.fileno() == fd
    assert stream.readable() and stream.writable()
    stream.write(b"bye\n")
    assert read_exactly(stream, 4) == b"bye\n"
    stream.close()
    assert stream.closed
    assert raw.fileno() == -1
    with pytest.raises(ValueError):
        stream.read(1)
    with pytest.raises(ValueError):
        stream.write(b"x")
    stream.close()  # twice is harmless
    assert t.result()["rest"] == b""


def test_stream_over_a_file_descriptor(certs):
    t, port = stdlib_server(echo_line, stdlib_server_context(certs))
    raw = connect(port)
    fd = raw.detach()
    stream = uvssl.make_ssl_client_stream(fd, ca_file=str(certs.ca), server_hostname="localhost")
    try:
        assert stream.fileno() == fd
        text = io.TextIOWrapper(io.BufferedRWPair(stream, stream), encoding="utf-8", newline="\n")  # type: ignore[type-var]
        text.write("text mode\n")
        text.flush()
        assert text.readline() == "text mode\n"
    finally:
        stream.close()
    assert t.result()["line"] == b"text mode\n"


def test_stalled_read_raises_timeout_error(certs):
    release = threading.Event()

    def handler(s):
        release.wait(PEER_TIMEOUT)  # handshake done, then silence
        return True

    t, port = stdlib_server(handler, stdlib_server_context(certs))
    raw = connect(port)
    stream = uvssl.make_ssl_client_stream(raw, ca_file=str(certs.ca), server_hostname="localhost")
    try:
        uvssl.ssl_do_handshake(stream)
        raw.settimeout(0.3)
        with pytest.raises(TimeoutError):
            stream.read(10)
    finally:
        release.set()
        stream.close()
    assert t.result() is True


# -- verification ---------------------------------------------------------------------------


def test_untrusted_server_fails_verification(certs):
    t, port = stdlib_server(echo_line, stdlib_server_context(certs, untrusted=True))
    raw = connect(port)
    stream = uvssl.make_ssl_client_stream(raw, ca_file=str(certs.ca), server_hostname="localhost")
    try:
        with pytest.raises(uvssl.SslVerificationFailure) as info:
            uvssl.ssl_do_handshake(stream)
        assert info.value.verify_result == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        assert info.value.what == "handshake"
        assert uvssl.get_ssl_verify_result(stream) == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    finally:
        stream.close()
    assert t.result()[0] == "handshake-failed"


def test_server_hostname_is_checked_and_optional(certs):
    t, port = stdlib_server(echo_line, stdlib_server_context(certs))
    raw = connect(port)
    with uvssl.make_ssl_client_stream(
        raw, ca_file=str(certs.ca), server_hostname="wrong.example"
    ) as stream:
        with pytest.raises(uvssl.SslVerificationFailure) as info:
            stream.write(b"x\n")
        assert info.value.verify_result == X509_V_ERR_HOSTNAME_MISMATCH
    assert t.result()[0] == "handshake-failed"

    # without server_hostname only the chain is verified
    t, port = stdlib_server(echo_line, stdlib_server_context(certs))
    with uvssl.make_ssl_client_stream(connect(port), ca_file=str(certs.ca)) as stream:
        stream.write(b"chain only\n")
        assert read_exactly(stream, 11) == b"chain only\n"
    assert t.result()["line"] == b"chain only\n"


# -- context= and per-stream options --------------------------------------------------------


@pytest.mark.parametrize("option", ["certificate", "key", "ca_file", "crl_file"])
def test_options_fixed_by_the_context_are_refused(certs, option):
    value = {
        "certificate": certs.server_cert,
        "key": certs.server_key,
        "ca_file": certs.ca,
        "crl_file": certs.ca,
    }[option]
    ctx = uvssl.Context.client(ca_file=str(certs.ca))
    with socket.socket() as s:
        with pytest.raises(ValueError, match=option):
            uvssl.make_ssl_client_stream(s, context=ctx, **{option: str(value)})
        sctx = uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.server_key))
        with pytest.raises(ValueError, match=option):
            uvssl.make_ssl_server_stream(s, context=sctx, **{option: str(value)})
        assert s.fileno() != -1  # a refused call leaves the socket alone


def test_unknown_options_and_bad_arguments(certs, client_ctx):
    with socket.socket() as s:
        with pytest.raises(TypeError):
            uvssl.make_ssl_client_stream(s, ca_file=str(certs.ca), no_such_option=1)
        with pytest.raises(TypeError, match="no_such_option"):
            uvssl.make_ssl_client_stream(s, context=client_ctx, no_such_option=1)
        with pytest.raises(TypeError):
            uvssl.make_ssl_client_stream(s, context="not a context")
        with pytest.raises(ValueError, match="server_hostname"):
            uvssl.make_ssl_server_stream(
                s,
                certificate=str(certs.server_cert),
                key=str(certs.server_key),
                server_hostname="localhost",
            )
        with pytest.raises(ValueError):
            uvssl.make_ssl_client_stream(s, context=client_ctx, method="tls-v9")
        with pytest.raises(ValueError):
            uvssl.make_ssl_client_stream(s, context=client_ctx, max_depth=-1)
        with pytest.raises(ValueError):
            uvssl.make_ssl_client_stream(s, context=client_ctx, verify="sometimes")
        with pytest.raises(uvssl.SslFailure):
            uvssl.make_ssl_client_stream(s, context=client_ctx, ciphers="NOT-A-CIPHER")
        with pytest.raises(FileNotFoundError):
            uvssl.make_ssl_client_stream(s, ca_file=str(certs.dir / "missing.pem"))
    with pytest.raises(TypeError):
        uvssl.make_ssl_client_stream("localhost:443")  # type: ignore[arg-type]
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError):
        uvssl.make_ssl_client_stream(closed, context=client_ctx)


def test_method_override_per_stream(certs):
    ctx = uvssl.Context.client(
        ca_file=str(certs.ca), min_version="tls-v1-2", max_version="tls-v1-3"
    )
    versions: dict[Any, Any] = {}
    for method in (None, "tls-v1-2"):
        t, port = stdlib_server(echo_line, stdlib_server_context(certs))
        kw = {} if method is None else {"method": method}
        with uvssl.make_ssl_client_stream(
            connect(port), context=ctx, server_hostname="localhost", **kw
        ) as stream:
            stream.write(b"v\n")
            assert read_exactly(stream, 2) == b"v\n"
            versions[method] = stream.version
        assert t.result()["version"] == versions[method]
    assert versions == {None: "TLSv1.3", "tls-v1-2": "TLSv1.2"}


def test_ciphers_override_per_stream(certs, client_ctx):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = x509.load_pem_x509_certificate(certs.server_cert.read_bytes()).public_key()
    auth = "ECDSA" if isinstance(key, ec.EllipticCurvePublicKey) else "RSA"
    wanted = f"ECDHE-{auth}-CHACHA20-POLY1305"  # not what the server would pick by itself
    t, port = stdlib_server(echo_line, stdlib_server_context(certs))
    with uvssl.make_ssl_client_stream(
        connect(port),
        context=client_ctx,
        server_hostname="localhost",
        method="tls-v1-2",
        ciphers=wanted,
    ) as stream:
        stream.write(b"c\n")
        assert read_exactly(stream, 2) == b"c\n"
        assert stream.cipher == wanted
    assert t.result()["cipher"] == wanted


def test_verify_false_override_connects_to_untrusted_server(certs, client_ctx):
    t, port = stdlib_server(echo_line, stdlib_server_context(certs, untrusted=True))
    with uvssl.make_ssl_client_stream(
        connect(port), context=client_ctx, server_hostname="localhost", verify=False
    ) as stream:
        stream.write(b"anyway\n")
        assert read_exactly(stream, 7) == b"anyway\n"
        assert uvssl.get_ssl_peer_certificate(stream) is not None
    assert t.result()["line"] == b"anyway\n"
    # the context itself still verifies
    t, port = stdlib_server(echo_line, stdlib_server_context(certs, untrusted=True))
    with uvssl.make_ssl_client_stream(
        connect(port), context=client_ctx, server_hostname="localhost"
    ) as stream:
        with pytest.raises(uvssl.SslVerificationFailure):
            stream.write(b"x\n")
    assert t.result()[0] == "handshake-failed"


def test_max_depth_override_per_stream(tmp_path):
    """The server's chain has an intermediate CA (leaf, intermediate, root): a depth of 0 is
    too short for it, 1 is enough."""
    ca = trustme.CA()
    inter = ca.create_child_ca()
    leaf = inter.issue_cert("localhost")
    ca_path = tmp_path / "root.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(sctx)
    ctx = uvssl.Context.client(ca_file=str(ca_path))
    results: dict[Any, Any] = {}
    for depth in (0, 1):
        t, port = stdlib_server(echo_line, sctx)
        stream = uvssl.make_ssl_client_stream(
            connect(port), context=ctx, server_hostname="localhost", max_depth=depth
        )
        try:
            uvssl.ssl_do_handshake(stream)
            stream.write(b"d\n")
            assert read_exactly(stream, 2) == b"d\n"
            results[depth] = "ok"
        except uvssl.SslVerificationFailure as e:
            results[depth] = e.verify_result
        finally:
            stream.close()
        t.result()
    assert results == {0: X509_V_ERR_CERT_CHAIN_TOO_LONG, 1: "ok"}
