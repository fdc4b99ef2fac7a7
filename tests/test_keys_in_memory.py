"""Certificates, keys and CA certificates given as data (certificate_data, key_data, ca_data)
instead of files: uvssl servers and clients built from them against stdlib ssl peers, in every
place that takes the file forms (contexts, tcp_ssl_server, tcp_ssl_connect, streams, attach_ssl),
and the failures, which name the option and never show the data."""

from __future__ import annotations

import socket
import ssl
from typing import Any, Callable

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from tls_support import (
    LOCALHOST,
    MESSAGE,
    PEER_TIMEOUT,
    Certs,
    LoopHarness,
    PeerThread,
    assert_echoed,
    listening_socket,
    recv_exactly,
    run_pair,
    serve_to_peer,
    server_der,
    stdlib_client_context,
    stdlib_server_context,
)

import uvssl

pytestmark = pytest.mark.timeout(30)

SECRET = "SECRET-MARKER-7f3a91"  # put in bad data: it must never reach an error message


def chain_pem(certs: Certs) -> bytes:
    return certs.server_cert.read_bytes()


def key_pem(certs: Certs) -> bytes:
    return certs.server_key.read_bytes()


def key_der(path: Any) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def stdlib_client(certs: Certs, client_cert: bool = False) -> Callable[[int], Any]:
    """A stdlib TLS client that sends MESSAGE and returns (echo, the server's DER cert)."""
    ctx = stdlib_client_context(certs, client_cert=client_cert)

    def client(port: int) -> tuple[bytes, bytes]:
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(MESSAGE)
                got = recv_exactly(s, len(MESSAGE))
                der = s.getpeercert(binary_form=True)
                assert der is not None
                return got, der

    return client


def serve_stdlib_client(certs: Certs, **server_kw: Any) -> tuple[bytes, bytes]:
    """A uvssl TLS echo server made with ``server_kw`` and one stdlib client."""
    server_kw.setdefault("certificate", None)  # no test certificate files added
    peer, _events = serve_to_peer(stdlib_client(certs), certs=certs, until=bool, **server_kw)
    return peer.result()  # type: ignore[no-any-return]


class StdlibServer:
    """A stdlib TLS echo server thread for one connection; ``error`` is what it raised."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ls = listening_socket()
        self.port = self.ls.getsockname()[1]
        self.ctx = ctx
        self.thread = PeerThread(self._serve, name="stdlib-server")
        self.thread.start()

    def _serve(self) -> bytes:
        try:
            conn, _ = self.ls.accept()
        finally:
            self.ls.close()
        with conn:
            conn.settimeout(PEER_TIMEOUT)
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                data = recv_exactly(s, len(MESSAGE))
                s.sendall(data)
                return data

    def result(self) -> Any:
        return self.thread.result()


def uvssl_client_to(port: int, **kw: Any) -> dict[str, Any]:
    """Connect with tcp_ssl_connect(**kw), send MESSAGE, wait for its echo or an error."""
    h = LoopHarness(15)
    st: dict[str, Any] = {"got": bytearray(), "events": [], "done": False}

    def c_read(sock, data):
        st["got"] += data
        if len(st["got"]) >= len(MESSAGE):
            st["peer"] = sock.peer_certificate
            sock.close()
            st["done"] = True

    def c_event(ev):
        st["events"].append(ev)
        if ev.socket is not None and not ev.socket.closed:
            ev.socket.close()
        st["done"] = True

    def start():
        st["sock"] = uvssl.tcp_ssl_connect(
            LOCALHOST,
            port,
            c_read,
            c_event,
            connect_cb=lambda s: s.write(MESSAGE),
            server_hostname="localhost",
            **kw,
        )

    h.run(start, until=lambda: st["done"])
    return st


# -- servers from data ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    ["bytes", "str", "one-blob", "encrypted", "der-key", "der-certificate", "tcp_ssl_server"],
)
def test_server_from_data_serves_a_stdlib_client(certs, form):
    cert: Any = chain_pem(certs)
    kw: dict[str, Any] = {"key_data": key_pem(certs)}
    if form == "str":
        cert, kw["key_data"] = cert.decode(), kw["key_data"].decode()
    elif form == "one-blob":  # the key in the same data as the chain, as in one PEM file
        cert, kw = cert + key_pem(certs), {}
    elif form == "encrypted":
        kw = {
            "key_data": certs.server_key_encrypted.read_bytes(),
            "certificate_password": certs.password,
        }
    elif form == "der-key":
        kw = {"key_data": key_der(certs.server_key), "keytype": "der"}
    elif form == "der-certificate":
        cert = server_der(certs)
    if form == "tcp_ssl_server":
        got, der = serve_stdlib_client(certs, certificate_data=cert, key_data=kw["key_data"])
    else:
        ctx = uvssl.Context.server(certificate_data=cert, **kw)
        got, der = serve_stdlib_client(certs, ssl_ctx=ctx)
    assert got == MESSAGE
    assert der == server_der(certs)


def test_tcp_ssl_server_takes_an_encrypted_der_key_pair_from_data(certs):
    got, _ = serve_stdlib_client(
        certs,
        certificate_data=chain_pem(certs).decode(),
        key_data=certs.server_key_encrypted.read_bytes(),
        password=certs.password.decode(),
    )
    assert got == MESSAGE
    got, _ = serve_stdlib_client(
        certs,
        certificate_data=server_der(certs),
        key_data=key_der(certs.server_key),
        keytype="der",
    )
    assert got == MESSAGE


def test_mixed_file_and_data(certs):
    ctx = uvssl.Context.server(certificate=str(certs.server_cert), key_data=key_pem(certs))
    assert serve_stdlib_client(certs, ssl_ctx=ctx)[0] == MESSAGE
    ctx = uvssl.Context.server(certificate_data=chain_pem(certs), key=str(certs.server_key))
    assert serve_stdlib_client(certs, ssl_ctx=ctx)[0] == MESSAGE


# -- clients that verify with ca_data ---------------------------------------------------------


@pytest.mark.parametrize("form", ["tcp_ssl_connect-bytes", "tcp_ssl_connect-str", "context"])
def test_client_verifies_with_ca_data(certs, form):
    ca = certs.ca.read_bytes()
    server = StdlibServer(stdlib_server_context(certs))
    if form == "context":
        kw: dict[str, Any] = {"ssl_ctx": uvssl.Context.client(ca_data=ca)}
    else:
        kw = {"ca_data": ca if form.endswith("bytes") else ca.decode()}
    st = uvssl_client_to(server.port, **kw)
    assert not st["events"], st["events"]
    assert bytes(st["got"]) == MESSAGE
    assert st["peer"].to_der() == server_der(certs)
    assert server.result() == MESSAGE


def test_ca_data_as_der_and_several_pems(certs):
    ca_pem = certs.ca.read_text()
    other = certs.other_ca.read_text()
    for ca_data in (ssl.PEM_cert_to_DER_cert(ca_pem), other + ca_pem):
        server = StdlibServer(stdlib_server_context(certs))
        st = uvssl_client_to(server.port, ssl_ctx=uvssl.Context.client(ca_data=ca_data))
        assert not st["events"], st["events"]
        assert bytes(st["got"]) == MESSAGE
        server.result()


def test_ca_data_of_another_ca_does_not_verify(certs):
    server = StdlibServer(stdlib_server_context(certs))
    st = uvssl_client_to(server.port, ca_data=certs.other_ca.read_bytes())
    assert len(st["events"]) == 1
    assert isinstance(st["events"][0], uvssl.SslVerificationFailure), st["events"]
    with pytest.raises((ssl.SSLError, OSError)):
        server.result()


def test_tcp_ssl_connect_caches_contexts_by_ca_data_digest(certs):
    ca = certs.ca.read_bytes()
    other = certs.other_ca.read_bytes()
    seen: list[Any] = []

    def start():
        for ca_data in (ca, ca.decode(), other):
            s = uvssl.tcp_ssl_connect(LOCALHOST, 9, None, lambda ev: None, ca_data=ca_data)
            seen.append(s.context)
            s.close(force=True)

    LoopHarness(10).run(start, until=lambda: len(seen) == 3)
    assert seen[0] is seen[1]  # the same certificates: the same context
    assert seen[2] is not seen[0]


# -- mutual TLS with data on both sides, streams, attach_ssl -----------------------------------


def test_mutual_tls_from_data_on_both_sides(certs):
    ca = certs.ca.read_bytes()
    sctx = uvssl.Context.server(
        certificate_data=chain_pem(certs),
        key_data=key_pem(certs),
        verify="required",
        ca_data=ca,
    )
    cctx = uvssl.Context.client(
        ca_data=ca.decode(),
        certificate_data=certs.client_cert.read_bytes(),
        key_data=certs.client_key.read_text(),
    )
    r = run_pair(certs, server_kw={"ssl_ctx": sctx}, clients=[{"ssl_ctx": cctx}])
    assert_echoed(r)
    assert r.server_info[0]["peer_certificate"].subject_alt_names == (("DNS", "client.example"),)
    # a client without a certificate is refused by the same server
    r = run_pair(certs, server_kw={"ssl_ctx": sctx}, clients=[{"ca_data": ca, "ca_file": None}])
    assert r.clients[0]["events"] and bytes(r.clients[0]["got"]) == b""


def test_streams_from_data(certs):
    # server stream from data, stdlib client
    ls = listening_socket()
    port = ls.getsockname()[1]
    client = PeerThread(stdlib_client(certs), port)
    client.start()
    conn, _ = ls.accept()
    ls.close()
    with uvssl.make_ssl_server_stream(
        conn, certificate_data=chain_pem(certs).decode(), key_data=key_pem(certs)
    ) as stream:
        assert stream.read(len(MESSAGE)) == MESSAGE
        stream.write(MESSAGE)
        stream.flush()
        got, _ = client.result()
    assert got == MESSAGE
    # client stream verifying with ca_data, stdlib server
    server = StdlibServer(stdlib_server_context(certs))
    raw = socket.create_connection((LOCALHOST, server.port), timeout=PEER_TIMEOUT)
    with uvssl.make_ssl_client_stream(
        raw, ca_data=certs.ca.read_text(), server_hostname="localhost"
    ) as cs:
        cs.write(MESSAGE)
        cs.flush()
        assert cs.read(len(MESSAGE)) == MESSAGE
    assert server.result() == MESSAGE


def test_attach_ssl_with_a_context_from_data(certs):
    """STARTTLS on a plain uvssl server whose TLS context came from data; stdlib client."""
    ctx = uvssl.Context.server(certificate_data=chain_pem(certs), key_data=key_pem(certs))
    client_ctx = stdlib_client_context(certs)

    def client(port: int) -> bytes:
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
            raw.sendall(b"STARTTLS\n")
            assert recv_exactly(raw, 3) == b"OK\n"
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(MESSAGE)
                return recv_exactly(s, len(MESSAGE))

    def read_cb(sock, data):
        if isinstance(sock, uvssl.SslSocket):
            sock.write(data)
        elif data == b"STARTTLS\n":
            sock.write(b"OK\n")
            uvssl.attach_ssl(sock, ssl_ctx=ctx, ssl_side="server")

    peer, _ = serve_to_peer(client, read_cb, until=bool)
    assert peer.result() == MESSAGE


# -- failures: the option is named, the data never shown -------------------------------------


def assert_not_shown(exc: BaseException, *secrets: str) -> None:
    texts = [str(exc), repr(exc), repr(exc.args), repr(getattr(exc, "strings", ()))]
    for secret in (SECRET, *secrets):
        for t in texts:
            assert secret not in t


def bad_pem(label: str) -> str:
    return f"-----BEGIN {label}-----\n{SECRET}{SECRET}\n-----END {label}-----\n"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("garbage-certificate", "certificate_data"),
        ("damaged-pem-certificate", "certificate_data"),
        ("damaged-der-certificate", "certificate_data"),
        ("key-as-certificate", "holds a private key, not a certificate (give it as key_data="),
        ("certificate-as-key", "key_data: it holds no private key"),
        ("damaged-key", "key_data"),
        ("der-key-without-keytype", "keytype='der'"),
        ("wrong-password", "is the password right"),
        ("no-password", "encrypted"),
        ("mismatched-key", "the private key in key_data does not match the certificate"),
        ("no-key", "key_data= was not given"),
        ("garbage-ca", "ca_data"),
        ("key-as-ca", "ca_data"),
        ("damaged-ca", "ca_data"),
    ],
)
def test_bad_data_fails_clearly_without_showing_it(certs, case, expected):
    chain, key = chain_pem(certs), key_pem(certs)
    kw: dict[str, Any] = {"certificate_data": chain, "key_data": key}
    side = "server"
    if case == "garbage-certificate":
        kw["certificate_data"] = f"not PEM at all {SECRET}"
    elif case == "damaged-pem-certificate":
        kw["certificate_data"] = bad_pem("CERTIFICATE")
    elif case == "damaged-der-certificate":
        kw["certificate_data"] = b"\x30\x82\x01\x00" + SECRET.encode() * 4
    elif case == "key-as-certificate":
        kw["certificate_data"] = key
    elif case == "certificate-as-key":
        kw["key_data"] = chain
    elif case == "damaged-key":
        kw["key_data"] = bad_pem("PRIVATE KEY")
    elif case == "der-key-without-keytype":
        kw["key_data"] = key_der(certs.server_key)
    elif case in ("wrong-password", "no-password"):
        kw["key_data"] = certs.server_key_encrypted.read_bytes()
        if case == "wrong-password":
            kw["certificate_password"] = SECRET
    elif case == "mismatched-key":
        kw["key_data"] = certs.untrusted_key.read_bytes()
    elif case == "no-key":
        del kw["key_data"]
    else:
        side = "client"
        kw = {
            "ca_data": {
                "garbage-ca": f"{SECRET} is no certificate",
                "key-as-ca": key.decode() + SECRET,
                "damaged-ca": certs.ca.read_text() + bad_pem("CERTIFICATE"),
            }[case]
        }
    with pytest.raises(uvssl.SslFailure) as ei:
        if side == "server":
            uvssl.Context.server(**kw)
        else:
            uvssl.Context.client(**kw)
    assert expected in str(ei.value)
    # nothing of the data given, nor of the real key, appears anywhere in the error
    real_key_body = key.decode().splitlines()[1]
    assert_not_shown(ei.value, real_key_body)


def test_bad_data_through_tcp_ssl_server_names_the_option(certs):
    def start():
        uvssl.tcp_ssl_server(
            LOCALHOST, 0, None, certificate_data=bad_pem("CERTIFICATE"), key_data=b"x"
        )

    with pytest.raises(uvssl.SslFailure, match="certificate_data") as ei:
        LoopHarness(10).run(start, until=lambda: True)
    assert_not_shown(ei.value)


def test_data_and_file_for_the_same_thing_is_an_error(certs):
    pairs = [
        ({"certificate": str(certs.server_cert), "certificate_data": chain_pem(certs)}, "server"),
        ({"key": str(certs.server_key), "key_data": key_pem(certs)}, "server"),
        ({"ca_file": str(certs.ca), "ca_data": certs.ca.read_bytes()}, "client"),
    ]
    for kw, side in pairs:
        if side == "server" and "certificate" not in kw:
            kw["certificate"] = str(certs.server_cert)
        with pytest.raises(ValueError, match="not both"):
            if side == "server":
                uvssl.Context.server(**kw)
            else:
                uvssl.Context.client(**kw)


def test_data_option_argument_errors(certs, server_ctx, client_ctx):
    with pytest.raises(ValueError, match="key_data= was given without certificate"):
        uvssl.Context.server(key_data=key_pem(certs))
    with pytest.raises(TypeError, match="certificate_data= takes PEM data"):
        uvssl.Context.server(certificate_data=123)
    with pytest.raises(ValueError, match="ca_data= is empty"):
        uvssl.Context.client(ca_data=b"")
    with pytest.raises(ValueError, match="ASCII"):
        uvssl.Context.client(ca_data="é" + SECRET)
    with pytest.raises(ValueError, match="certificate_data/key_data cannot be combined"):
        uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            None,
            ssl_ctx=server_ctx,
            certificate_data=chain_pem(certs),
            key_data=key_pem(certs),
        )
    with pytest.raises(ValueError, match="ca_data cannot be combined with ssl_ctx"):
        uvssl.tcp_ssl_connect(LOCALHOST, 9, None, ssl_ctx=client_ctx, ca_data=b"x")
    # PEM given where a path goes: the message points at the data option, without the data
    with pytest.raises(FileNotFoundError, match="certificate_data=") as ei:
        uvssl.Context.server(certificate=chain_pem(certs).decode() + SECRET)
    assert_not_shown(ei.value)


def test_data_options_are_accepted_wherever_context_options_are(certs):
    from uvssl.context import CONTEXT_OPTIONS

    assert {"certificate_data", "key_data", "ca_data", "keylog_file"} <= CONTEXT_OPTIONS
    ctx = uvssl.make_ssl_server_context(certificate_data=chain_pem(certs), key_data=key_pem(certs))
    assert serve_stdlib_client(certs, ssl_ctx=ctx)[0] == MESSAGE
    uvssl.create_ssl_client_context(ca_data=certs.ca.read_bytes())


def test_data_is_read_by_value(certs):
    """The context keeps what it loaded: changing the caller's buffer later changes nothing."""
    buf = bytearray(chain_pem(certs))
    kbuf = bytearray(key_pem(certs))
    ctx = uvssl.Context.server(certificate_data=buf, key_data=kbuf)
    buf[:] = b"\0" * len(buf)
    kbuf[:] = b"\0" * len(kbuf)
    assert serve_stdlib_client(certs, ssl_ctx=ctx)[0] == MESSAGE


def test_a_chain_from_data_is_sent_whole(certs):
    """An intermediate CA in certificate_data goes to the chain: a client that trusts only the
    root verifies the leaf through it."""
    root = trustme.CA()
    inter = root.create_child_ca()
    leaf = inter.issue_cert("localhost", "127.0.0.1")
    chain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    ctx = uvssl.Context.server(certificate_data=chain, key_data=leaf.private_key_pem.bytes())
    cctx = ssl.create_default_context(cadata=root.cert_pem.bytes().decode())

    def client(port: int) -> bytes:
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
            with cctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(MESSAGE)
                return recv_exactly(s, len(MESSAGE))

    peer, _ = serve_to_peer(client, certs=certs, until=bool, ssl_ctx=ctx)
    assert peer.result() == MESSAGE
