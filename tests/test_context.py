"""TLS contexts: CRLs, keys (encrypted, DER), SNI, configure callbacks, ssl_side,
version ranges, handshake_timeout, X509Certificate, openssl_version, and bad input. Real
connections on 127.0.0.1 between uvssl servers and clients (tls_support.run_pair)."""

from __future__ import annotations

import datetime
import socket
import ssl
import types
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID
from helpers import run_loop
from tls_support import LOCALHOST, PEER_TIMEOUT, LoopHarness, PeerThread, run_pair

import uvssl
from uvssl.openssl import ffi, lib

pytestmark = pytest.mark.timeout(30)

X509_V_ERR_CERT_REVOKED = 23
MESSAGE = b"hello over TLS\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A trustme CA (kept, to sign CRLs), a localhost server certificate with a CN, and two
    more for SNI (a.test, b.test)."""
    d = tmp_path_factory.mktemp("ctx-pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    a = ca.issue_cert("a.test")
    b = ca.issue_cert("b.test")

    def leaf_files(name, leaf):
        cert = d / f"{name}.pem"
        cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        key = d / f"{name}.key"
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    ns = types.SimpleNamespace(dir=d, ca_obj=ca, server_leaf=server)
    ns.ca = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ns.ca))
    ns.server_cert, ns.server_key = leaf_files("server", server)
    ns.a_cert, ns.a_key = leaf_files("a", a)
    ns.b_cert, ns.b_key = leaf_files("b", b)
    ns.server_x509 = x509.load_pem_x509_certificate(server.cert_chain_pems[0].bytes())
    ns.ca_x509 = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    return ns


def server_context(pki, **kw) -> uvssl.Context:
    return uvssl.Context.server(certificate=str(pki.server_cert), key=str(pki.server_key), **kw)


def only_client(r) -> dict[str, Any]:
    assert len(r.clients) == 1
    return r.clients[0]  # type: ignore[no-any-return]


def assert_echoed(r) -> None:
    for i, c in enumerate(r.clients):
        assert not c["events"], f"client {i} got {c['events']!r}"
        assert bytes(c["got"]) == MESSAGE, f"client {i}"
    bad = [ev for ev in r.server_events if not isinstance(ev, uvssl.SslClosed)]
    assert not bad, f"server got {bad!r}"


# -- CRLs ------------------------------------------------------------------------------------


def write_crl(pki, path, revoke_serials=()) -> str:
    ca_key = serialization.load_pem_private_key(pki.ca_obj.private_key_pem.bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca_x509.subject)
        .last_update(now - datetime.timedelta(days=1))
        .next_update(now + datetime.timedelta(days=30))
    )
    for serial in revoke_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - datetime.timedelta(hours=1))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return str(path)


@pytest.mark.parametrize("crl_check", ["leaf", "all", None])
def test_crl_revoking_the_server_certificate_fails_verification(pki, tmp_path, crl_check):
    crl = write_crl(pki, tmp_path / "revoked.crl", [pki.server_x509.serial_number])
    cctx = uvssl.Context.client(ca_file=str(pki.ca), crl_check=crl_check, crl_file=crl)
    r = run_pair(pki, server_kw={"ssl_ctx": server_context(pki)}, clients=[{"ssl_ctx": cctx}])
    c = only_client(r)
    assert not c["connected"]
    assert len(c["events"]) == 1
    ev = c["events"][0]
    assert isinstance(ev, uvssl.SslVerificationFailure), repr(ev)
    assert ev.verify_result == X509_V_ERR_CERT_REVOKED
    assert "revoked" in str(ev).lower()


@pytest.mark.parametrize("crl_check", ["leaf", "all"])
def test_crl_not_listing_the_server_certificate_lets_it_pass(pki, tmp_path, crl_check):
    other_serial = pki.server_x509.serial_number + 1
    crl = write_crl(pki, tmp_path / "other.crl", [other_serial])
    empty = write_crl(pki, tmp_path / "empty.crl")
    for path in (crl, empty):
        cctx = uvssl.Context.client(ca_file=str(pki.ca), crl_check=crl_check, crl_file=path)
        r = run_pair(pki, server_kw={"ssl_ctx": server_context(pki)}, clients=[{"ssl_ctx": cctx}])
        assert_echoed(r)


def test_crl_check_without_a_crl_fails_to_verify(pki):
    """Checking revocation with no CRL for the issuer cannot succeed (fail closed)."""
    cctx = uvssl.Context.client(ca_file=str(pki.ca), crl_check="leaf")
    r = run_pair(pki, server_kw={"ssl_ctx": server_context(pki)}, clients=[{"ssl_ctx": cctx}])
    ev = only_client(r)["events"][0]
    assert isinstance(ev, uvssl.SslVerificationFailure)
    assert ev.verify_result == 3  # X509_V_ERR_UNABLE_TO_GET_CRL


# -- keys ------------------------------------------------------------------------------------


def encrypted_key(pki, password: bytes):
    key = serialization.load_pem_private_key(pki.server_leaf.private_key_pem.bytes(), None)
    path = pki.dir / "server-encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return path


@pytest.mark.parametrize("password", [b"s3cret pass", "s3cret pass"])
def test_encrypted_key_with_the_right_password(pki, password):
    key = encrypted_key(pki, b"s3cret pass")
    ctx = uvssl.Context.server(
        certificate=str(pki.server_cert), key=str(key), certificate_password=password
    )
    assert_echoed(run_pair(pki, server_kw={"ssl_ctx": ctx}))


@pytest.mark.parametrize("password", [b"wrong", None])
def test_encrypted_key_with_a_wrong_or_no_password(pki, password):
    key = encrypted_key(pki, b"s3cret pass")
    with pytest.raises(uvssl.SslFailure) as info:
        uvssl.Context.server(
            certificate=str(pki.server_cert), key=str(key), certificate_password=password
        )
    assert "private key" in str(info.value)
    assert info.value.codes  # the OpenSSL error queue is reported
    if password is not None:
        assert "password" in str(info.value)


def test_der_key_and_certificate(pki):
    cert_der = pki.server_x509.public_bytes(serialization.Encoding.DER)
    key = serialization.load_pem_private_key(pki.server_leaf.private_key_pem.bytes(), None)
    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cpath = pki.dir / "server.der"
    kpath = pki.dir / "server-key.der"
    cpath.write_bytes(cert_der)
    kpath.write_bytes(key_der)
    ctx = uvssl.Context.server(certificate=str(cpath), key=str(kpath), keytype="der")
    r = run_pair(pki, server_kw={"ssl_ctx": ctx})
    assert_echoed(r)
    assert only_client(r)["peer_certificate"].to_der() == cert_der
    # PEM files read as DER (and the other way round) fail clearly
    with pytest.raises(uvssl.SslFailure):
        uvssl.Context.server(
            certificate=str(pki.server_cert), key=str(pki.server_key), keytype="der"
        )
    with pytest.raises(uvssl.SslFailure):
        uvssl.Context.server(certificate=str(cpath), key=str(kpath))


def test_keytype_describes_the_key_only(pki):
    """A DER certificate file works with a PEM key (keytype="pem") and a PEM chain with a DER
    key (keytype="der"): the certificate's encoding is read from the file itself."""
    cert_der = pki.server_x509.public_bytes(serialization.Encoding.DER)
    key = serialization.load_pem_private_key(pki.server_leaf.private_key_pem.bytes(), None)
    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cpath = pki.dir / "server-only.der"
    kpath = pki.dir / "server-key-trad.der"
    cpath.write_bytes(cert_der)
    kpath.write_bytes(key_der)
    ctx_client = ssl.create_default_context(cafile=str(pki.ca))
    for kw in (
        {"certificate": str(cpath), "key": str(pki.server_key)},
        {"certificate": str(cpath), "key": str(pki.server_key), "keytype": "pem"},
        {"certificate": str(pki.server_cert), "key": str(kpath), "keytype": "der"},
    ):
        ctx = uvssl.Context.server(**kw)
        ls = socket.socket()
        ls.bind((LOCALHOST, 0))
        ls.listen(1)
        ls.settimeout(PEER_TIMEOUT)

        def client(port: int) -> bytes:
            with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
                with ctx_client.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(MESSAGE)
                    assert s.getpeercert(binary_form=True) == cert_der
                    return s.recv(len(MESSAGE))

        peer = PeerThread(client, ls.getsockname()[1])
        peer.start()
        conn, _ = ls.accept()
        ls.close()
        with uvssl.make_ssl_server_stream(conn, context=ctx) as stream:
            stream.write(stream.read(len(MESSAGE)))
            stream.flush()
        assert peer.result() == MESSAGE, kw


# -- SNI -------------------------------------------------------------------------------------


def test_sni_callback_serves_two_names_with_two_certificates(pki):
    ctx_a = uvssl.Context.server(certificate=str(pki.a_cert), key=str(pki.a_key))
    ctx_b = uvssl.Context.server(certificate=str(pki.b_cert), key=str(pki.b_key))
    calls: list[tuple[Any, Any]] = []

    def choose(ssl_socket, server_name):
        calls.append((ssl_socket, server_name))
        return {"a.test": ctx_a, "b.test": ctx_b}.get(server_name)

    ctx = server_context(pki, sni_callback=choose)
    r = run_pair(
        pki,
        server_kw={"ssl_ctx": ctx},
        clients=[{"server_hostname": "a.test"}, {"server_hostname": "b.test"}, {}],
    )
    assert_echoed(r)
    sans = [c["peer_certificate"].subject_alt_names for c in r.clients]
    assert sans[0] == (("DNS", "a.test"),)
    assert sans[1] == (("DNS", "b.test"),)
    assert ("DNS", "localhost") in sans[2]  # no SNI (an IP address): the default certificate
    # like the stdlib's sni_callback: called for every ClientHello, None when no name was sent
    assert [name for _, name in calls] == ["a.test", "b.test", None]
    assert all(isinstance(sock, uvssl.SslSocket) for sock, _ in calls)


def test_exception_in_sni_callback_fails_that_handshake(pki):
    ctx_b = uvssl.Context.server(certificate=str(pki.b_cert), key=str(pki.b_key))

    class Boom(Exception):
        pass

    def choose(ssl_socket, server_name):
        if server_name == "a.test":
            raise Boom("no certificate for a.test")
        return ctx_b

    ctx = server_context(pki, sni_callback=choose)
    app_errors: list[BaseException] = []
    st: dict[str, Any] = {"events": {}, "got": {}, "server_events": []}

    def maybe_finish():
        if len(st["events"]) + len(st["got"]) == 2 and st["server_events"]:
            st["server"].close()

    def client(name):
        def c_connect(sock):
            sock.write(MESSAGE)

        def c_read(sock, data):
            st["got"][name] = data
            sock.close()
            maybe_finish()

        def c_event(ev):
            st["events"][name] = ev
            if ev.socket is not None and not ev.socket.closed:
                ev.socket.close()
            if name == "a.test":  # then the next client, which must still be served
                client("b.test")
            maybe_finish()

        uvssl.tcp_ssl_connect(
            LOCALHOST,
            st["server"].port,
            c_read,
            c_event,
            connect_cb=c_connect,
            ca_file=str(pki.ca),
            server_hostname=name,
        )

    def s_event(ev):
        st["server_events"].append(ev)
        if ev.socket is not None and not ev.socket.closed:
            ev.socket.close()
        maybe_finish()

    def start():
        st["server"] = uvssl.tcp_ssl_server(
            LOCALHOST, 0, lambda s, d: s.write(d), s_event, ssl_ctx=ctx
        )
        client("a.test")

    run_loop(start, timeout=10, catch_app_errors=True, default_event_cb=app_errors.append)
    assert len(app_errors) == 1 and isinstance(app_errors[0], Boom)
    assert isinstance(st["events"]["a.test"], uvssl.SslFailure)
    assert st["got"] == {"b.test": MESSAGE}
    assert "b.test" not in st["events"]


def test_exception_in_sni_callback_without_catch_app_errors_propagates(pki):
    def choose(ssl_socket, server_name):
        raise KeyError(server_name)

    ctx = server_context(pki, sni_callback=choose)

    def start():
        server = uvssl.tcp_ssl_server(LOCALHOST, 0, lambda s, d: None, lambda ev: None, ssl_ctx=ctx)
        uvssl.tcp_ssl_connect(
            LOCALHOST,
            server.port,
            lambda s, d: None,
            lambda ev: None,
            ca_file=str(pki.ca),
            server_hostname="a.test",
        )

    with pytest.raises(KeyError, match="a.test"):
        run_loop(start, timeout=10)


# -- configure callbacks, ssl_side, versions, handshake_timeout -----------------------------------


def test_ctx_configure_callback_option_takes_effect_on_the_wire(pki):
    calls: list[int] = []

    def configure(ptr):
        calls.append(uvssl.openssl.address(ptr))
        lib.SSL_CTX_set_options(ptr, uvssl.SSL_OP_NO_TLSv1_3)

    ctx = server_context(pki, ctx_configure_callback=configure)
    assert calls == [ctx.pointer]
    assert lib.SSL_CTX_get_options(ffi.cast("SSL_CTX *", ctx.pointer)) & lib.SSL_OP_NO_TLSv1_3
    r = run_pair(pki, server_kw={"ssl_ctx": ctx}, clients=[{}, {}])
    assert_echoed(r)
    assert [c["version"] for c in r.clients] == ["TLSv1.2", "TLSv1.2"]
    assert [s["version"] for s in r.server_info] == ["TLSv1.2", "TLSv1.2"]
    assert calls == [ctx.pointer]  # once per context, not per connection


def test_configure_callback_pointer_goes_to_openssl_as_it_is(pki):
    """The callback passes its argument straight to uvssl.openssl.lib: a server that turned
    TLS 1.3 off that way refuses a client that speaks only TLS 1.3."""

    def configure(ptr):
        uvssl.openssl.lib.SSL_CTX_set_options(ptr, uvssl.SSL_OP_NO_TLSv1_3)

    sctx = server_context(pki, ctx_configure_callback=configure)
    assert lib.SSL_CTX_get_options(ffi.cast("SSL_CTX *", sctx.pointer)) & lib.SSL_OP_NO_TLSv1_3
    cctx = uvssl.Context.client(ca_file=str(pki.ca), method="tls-v1-3")
    r = run_pair(pki, server_kw={"ssl_ctx": sctx}, clients=[{"ssl_ctx": cctx}])
    c = only_client(r)
    assert not c["connected"]
    assert len(c["events"]) == 1 and isinstance(c["events"][0], uvssl.SslFailure)
    # without the option the same client gets in
    r = run_pair(pki, server_kw={"ssl_ctx": server_context(pki)}, clients=[{"ssl_ctx": cctx}])
    assert_echoed(r)
    assert only_client(r)["version"] == "TLSv1.3"


def test_openssl_address_takes_only_cffi_pointers(pki):
    ctx = server_context(pki)
    assert uvssl.openssl.address(ffi.cast("SSL_CTX *", ctx.pointer)) == ctx.pointer
    for bad in (ctx.pointer, None, "0x1", ffi.new("int *")[0]):
        with pytest.raises(TypeError, match="cffi pointer"):
            uvssl.openssl.address(bad)


def test_ssl_configure_callback_called_once_per_connection(pki):
    server_ptrs: list[int] = []
    client_ptrs: list[int] = []

    def on_server_ssl(ptr):
        assert ffi.typeof(ptr) is ffi.typeof("SSL *")
        assert lib.SSL_is_server(ptr) == 1
        server_ptrs.append(uvssl.openssl.address(ptr))

    def on_client_ssl(ptr):
        assert ffi.typeof(ptr) is ffi.typeof("SSL *")
        assert lib.SSL_is_server(ptr) == 0
        client_ptrs.append(uvssl.openssl.address(ptr))

    sctx = server_context(pki, ssl_configure_callback=on_server_ssl)
    cctx = uvssl.Context.client(ca_file=str(pki.ca), ssl_configure_callback=on_client_ssl)
    h = LoopHarness(10)
    st: dict[str, Any] = {"echoed": 0, "events": [], "clients": [], "server_socks": []}

    def c_read(sock, data):
        assert data == MESSAGE
        st["echoed"] += 1
        if st["echoed"] == 3:  # all three are open at once: their SSL*s are all alive
            for s in st["clients"]:
                s.close()

    def s_event(ev):
        st["events"].append(ev)
        if ev.socket is not None and not ev.socket.closed:
            ev.socket.close()

    def start():
        server = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            lambda s, d: s.write(d),
            s_event,
            ssl_ctx=sctx,
            connect_cb=lambda s: st["server_socks"].append(s.ssl_pointer),
        )
        st["server"] = server
        for _ in range(3):
            st["clients"].append(
                uvssl.tcp_ssl_connect(
                    LOCALHOST,
                    server.port,
                    c_read,
                    lambda ev: st["events"].append(ev),
                    connect_cb=lambda s: s.write(MESSAGE),
                    ssl_ctx=cctx,
                    server_hostname="localhost",
                )
            )

    def finished():
        if len(st["events"]) >= 3:
            st["server"].close()
            return True
        return False

    h.run(start, until=finished)
    assert st["echoed"] == 3
    assert all(isinstance(ev, uvssl.SslClosed) for ev in st["events"]), st["events"]
    assert len(server_ptrs) == 3 and len(set(server_ptrs)) == 3
    assert sorted(server_ptrs) == sorted(st["server_socks"])
    assert len(client_ptrs) == 3 and len(set(client_ptrs)) == 3


def test_ssl_side_both(pki):
    sctx = server_context(pki, ssl_side="both")
    cctx = uvssl.Context.client(ca_file=str(pki.ca), ssl_side="both")
    r = run_pair(pki, server_kw={"ssl_ctx": sctx}, clients=[{"ssl_ctx": cctx}, {}])
    assert_echoed(r)
    # the explicit matching sides work as well
    server_context(pki, ssl_side="server")
    uvssl.Context.client(ssl_side="client")


@pytest.mark.parametrize(
    "server_kw, client_kw",
    [
        ({"max_version": "tls-v1-2"}, {"min_version": "tls-v1-3"}),
        ({"method": "tls-v1-3"}, {"method": ("tls-v1-2", "tls-v1-2")}),
    ],
    ids=["server-1.2-client-1.3", "server-1.3-client-1.2"],
)
def test_version_ranges_that_do_not_meet_fail_clearly(pki, server_kw, client_kw):
    sctx = server_context(pki, **server_kw)
    cctx = uvssl.Context.client(ca_file=str(pki.ca), **client_kw)
    r = run_pair(pki, server_kw={"ssl_ctx": sctx}, clients=[{"ssl_ctx": cctx}])
    c = only_client(r)
    assert not c["connected"]
    assert len(c["events"]) == 1
    ev = c["events"][0]
    assert isinstance(ev, uvssl.SslFailure) and not isinstance(ev, uvssl.SslVerificationFailure)
    assert ev.what == "handshake"
    assert "version" in str(ev).lower() or "protocol" in str(ev).lower(), str(ev)


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"method": "tls-v1-2"}, "TLSv1.2"),
        ({"method": "tls-v1-3"}, "TLSv1.3"),
        ({"method": ("tls-v1-2", "tls-v1-3")}, "TLSv1.3"),
        ({"min_version": "TLSv1.2", "max_version": "1.2"}, "TLSv1.2"),
        ({"max_version": ssl.TLSVersion.TLSv1_2}, "TLSv1.2"),
    ],
)
def test_version_options(pki, kw, expected):
    cctx = uvssl.Context.client(ca_file=str(pki.ca), **kw)
    r = run_pair(pki, server_kw={"ssl_ctx": server_context(pki)}, clients=[{"ssl_ctx": cctx}])
    assert_echoed(r)
    assert only_client(r)["version"] == expected


def _silent_client_events(ssl_ctx: uvssl.Context) -> list[BaseException]:
    """A raw TCP client that connects and says nothing: what does the server see?"""
    h = LoopHarness(4)
    st: dict[str, Any] = {"events": [], "raw": None}

    def s_event(ev):
        st["events"].append(ev)
        if ev.socket is not None and not ev.socket.closed:
            ev.socket.close()

    def start():
        server = uvssl.tcp_ssl_server(LOCALHOST, 0, lambda s, d: None, s_event, ssl_ctx=ssl_ctx)
        st["server"] = server
        st["raw"] = socket.create_connection((LOCALHOST, server.port), timeout=PEER_TIMEOUT)

    def finished():
        if st["events"]:
            st["server"].close()
            return True
        return False

    try:
        h.run(start, until=finished)
    finally:
        if st["raw"] is not None:
            st["raw"].close()
    return st["events"]  # type: ignore[no-any-return]


def test_context_handshake_timeout_applies_to_servers(pki):
    ctx = server_context(pki, handshake_timeout=0.3)
    assert ctx.handshake_timeout == 0.3
    events = _silent_client_events(ctx)
    assert len(events) == 1
    assert isinstance(events[0], uvssl.SslHandshakeTimeout), repr(events[0])


def test_context_handshake_timeout_applies_to_clients(pki):
    ctx = uvssl.Context.client(ca_file=str(pki.ca), handshake_timeout=0.3)
    ls = socket.socket()
    ls.bind((LOCALHOST, 0))
    ls.listen(1)
    h = LoopHarness(4)
    events: list[BaseException] = []

    def c_event(ev):
        events.append(ev)
        if ev.socket is not None and not ev.socket.closed:
            ev.socket.close()

    try:
        h.run(
            lambda: uvssl.tcp_ssl_connect(
                LOCALHOST, ls.getsockname()[1], lambda s, d: None, c_event, ssl_ctx=ctx
            ),
            until=lambda: bool(events),
        )
    finally:
        ls.close()  # the connection it accepted (backlog) goes with it
    assert len(events) == 1
    assert isinstance(events[0], uvssl.SslHandshakeTimeout), repr(events[0])


def test_context_handshake_timeout_applies_to_attach_ssl(pki):
    ctx = server_context(pki, handshake_timeout=0.3)
    h = LoopHarness(10)
    st: dict[str, Any] = {"events": [], "raw": None}

    def s_read(sock, data):
        if data == b"STARTTLS\n":
            uvssl.attach_ssl(sock, ssl_ctx=ctx)  # then the client goes silent

    def s_event(ev):
        st["events"].append(ev)
        if ev.socket is not None and not ev.socket.closed:
            ev.socket.close()

    def start():
        server = uvssl.tcp_server(LOCALHOST, 0, s_read, s_event)
        st["server"] = server
        st["raw"] = socket.create_connection((LOCALHOST, server.port), timeout=PEER_TIMEOUT)
        st["raw"].sendall(b"STARTTLS\n")

    def finished():
        if st["events"]:
            st["server"].close()
            return True
        return False

    try:
        h.run(start, until=finished)
    finally:
        if st["raw"] is not None:
            st["raw"].close()
    assert len(st["events"]) == 1
    assert isinstance(st["events"][0], uvssl.SslHandshakeTimeout), repr(st["events"][0])


def test_aliases_and_from_pointer(pki):
    c1 = uvssl.make_ssl_client_context(ca_file=str(pki.ca))
    c2 = uvssl.create_ssl_client_context(ca_file=str(pki.ca))
    s1 = uvssl.make_ssl_server_context(certificate=str(pki.server_cert), key=str(pki.server_key))
    s2 = uvssl.create_ssl_server_context(certificate=str(pki.server_cert), key=str(pki.server_key))
    assert all(isinstance(c, uvssl.Context) for c in (c1, c2, s1, s2))
    assert (c1.side, c2.side, s1.side, s2.side) == ("client", "client", "server", "server")
    assert len({c1.pointer, c2.pointer, s1.pointer, s2.pointer}) == 4
    borrowed = uvssl.Context.from_pointer(s1.pointer, "server")
    assert borrowed.pointer == s1.pointer
    r = run_pair(pki, server_kw={"ssl_ctx": borrowed}, clients=[{"ssl_ctx": c2}])
    assert_echoed(r)


# -- X509Certificate ---------------------------------------------------------------------------


def _pairs(name: x509.Name) -> tuple[tuple[str, str], ...]:
    """(short name, value) pairs, most specific first (the reverse of the encoded order)."""
    return tuple((a.rfc4514_attribute_name, a.value) for a in reversed(list(name)))  # type: ignore[misc]


def test_x509_certificate_fields_match_the_certificate(pki):
    r = run_pair(pki, server_kw={"ssl_ctx": server_context(pki)})
    assert_echoed(r)
    cert = only_client(r)["peer_certificate"]
    ref = pki.server_x509
    assert isinstance(cert, uvssl.X509Certificate)
    assert dict(cert.subject)["CN"] == "localhost"
    assert cert.subject == _pairs(ref.subject)
    assert cert.issuer == _pairs(ref.issuer)
    assert cert.issuer == _pairs(pki.ca_x509.subject)
    assert cert.serial_number == ref.serial_number
    assert cert.not_before == ref.not_valid_before_utc
    assert cert.not_after == ref.not_valid_after_utc
    assert cert.not_before.tzinfo is not None
    san = ref.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    expected_sans = tuple(("DNS", n) for n in san.get_values_for_type(x509.DNSName)) + tuple(
        ("IP Address", str(ip)) for ip in san.get_values_for_type(x509.IPAddress)
    )
    assert (
        cert.subject_alt_names
        == expected_sans
        == (("DNS", "localhost"), ("IP Address", "127.0.0.1"))
    )
    assert ref.version == x509.Version.v3 and cert.version == 3
    for name, algo in (("sha256", hashes.SHA256()), ("sha1", hashes.SHA1())):
        assert cert.fingerprint(name) == ":".join(f"{b:02X}" for b in ref.fingerprint(algo))
    assert cert.fingerprint() == cert.fingerprint("sha256")
    with pytest.raises(ValueError):
        cert.fingerprint("no-such-digest")
    der = ref.public_bytes(serialization.Encoding.DER)
    assert cert.to_der() == der
    pem = cert.to_pem()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert x509.load_pem_x509_certificate(pem.encode()) == ref
    again = uvssl.X509Certificate.from_pem(pem)
    assert again == cert and hash(again) == hash(cert)
    assert uvssl.X509Certificate(der) == cert
    assert "CN=localhost" in repr(cert)


def test_x509_certificate_of_the_ca_and_bad_input(pki):
    ca = uvssl.X509Certificate(pki.ca_x509.public_bytes(serialization.Encoding.DER))
    assert ca.subject == ca.issuer == _pairs(pki.ca_x509.subject)
    assert ca.serial_number == pki.ca_x509.serial_number
    assert ca != uvssl.X509Certificate.from_pem(pki.server_leaf.cert_chain_pems[0].bytes().decode())
    with pytest.raises(ValueError):
        uvssl.X509Certificate(b"definitely not DER")
    with pytest.raises(TypeError):
        uvssl.X509Certificate("a str")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        uvssl.X509Certificate(b"")


def test_openssl_version_shape():
    v = uvssl.openssl_version()
    assert set(v) == {"built", "loaded"}
    for key in ("built", "loaded"):
        num, text = v[key]
        assert isinstance(num, int) and num > 0
        assert isinstance(text, str) and text.startswith("OpenSSL ")
    built_num, built_text = v["built"]
    major, minor, patch = built_num >> 28, (built_num >> 20) & 0xFF, (built_num >> 4) & 0xFF
    assert built_text == f"OpenSSL {major}.{minor}.{patch}"
    assert major >= 3
    loaded_num, loaded_text = v["loaded"]
    assert loaded_num >> 28 == major  # same major version at run time
    assert loaded_text.split()[1].startswith(f"{loaded_num >> 28}.")


# -- bad input --------------------------------------------------------------------------------


def test_bad_context_options(pki, tmp_path):
    with pytest.raises(ValueError, match="ssl_side"):
        uvssl.Context.server(ssl_side="sideways")
    with pytest.raises(ValueError, match="ssl_side"):
        uvssl.Context.client(ssl_side="server")
    with pytest.raises(ValueError, match="sni_callback"):
        uvssl.Context.client(sni_callback=lambda s, n: None)
    with pytest.raises(TypeError, match="sni_callback"):
        server_context(pki, sni_callback="not callable")
    with pytest.raises(TypeError, match="ctx_configure_callback"):
        uvssl.Context.client(ctx_configure_callback=1)
    with pytest.raises(TypeError, match="ssl_configure_callback"):
        uvssl.Context.client(ssl_configure_callback=1)
    with pytest.raises(ValueError, match="crl_check"):
        uvssl.Context.client(crl_check="bogus")
    with pytest.raises(FileNotFoundError):
        uvssl.Context.client(crl_check="leaf", crl_file=str(tmp_path / "missing.crl"))
    garbage = tmp_path / "garbage.crl"
    garbage.write_text("not a CRL\n")
    with pytest.raises(uvssl.SslFailure, match="CRL"):
        uvssl.Context.client(crl_check="leaf", crl_file=str(garbage))
    with pytest.raises(ValueError, match="keytype"):
        server_context(pki, keytype="p12")
    with pytest.raises(ValueError, match="verify"):
        uvssl.Context.client(verify="sometimes")
    with pytest.raises(ValueError):
        uvssl.Context.client(method="tls-v1-2", min_version="tls-v1-2")
    with pytest.raises(ValueError):
        uvssl.Context.client(min_version="tls-v1-3", max_version="tls-v1-2")
    with pytest.raises(ValueError):
        uvssl.Context.client(method="ssl-v3")
    with pytest.raises(TypeError):
        uvssl.Context.client(method=1.2)
    with pytest.raises(ValueError):
        uvssl.Context.client(max_depth=-1)
    with pytest.raises(TypeError):
        server_context(pki, certificate_password=123)
    with pytest.raises(ValueError, match="key"):
        uvssl.Context.server(key=str(pki.server_key))
    with pytest.raises(FileNotFoundError):
        uvssl.Context.server(certificate=str(tmp_path / "missing.pem"))
    with pytest.raises(uvssl.SslFailure, match="mismatch|does not match"):
        uvssl.Context.server(certificate=str(pki.server_cert), key=str(pki.a_key))
    with pytest.raises(TypeError):
        uvssl.Context.client(no_such_option=True)
    with pytest.raises(ValueError):
        uvssl.Context.client(handshake_timeout=0)
    with pytest.raises(TypeError):
        uvssl.Context.client(handshake_timeout="5")
    with pytest.raises(uvssl.SslFailure):
        uvssl.Context.client(ciphers="NOT-A-CIPHER")
    with pytest.raises(TypeError):
        uvssl.Context.from_pointer("0x1234")
    with pytest.raises(ValueError):
        uvssl.Context.from_pointer(0)


def test_sni_callback_assigned_after_the_context_was_built(pki):
    ctx_a = uvssl.Context.server(certificate=str(pki.a_cert), key=str(pki.a_key))
    names: list[Any] = []

    def choose(ssl_socket, server_name):
        names.append(server_name)
        return ctx_a if server_name == "a.test" else None

    ctx = server_context(pki)
    assert ctx.sni_callback is None
    ctx.sni_callback = choose  # installs the servername callback now
    r = run_pair(pki, server_kw={"ssl_ctx": ctx}, clients=[{"server_hostname": "a.test"}])
    assert_echoed(r)
    assert r.clients[0]["peer_certificate"].subject_alt_names == (("DNS", "a.test"),)
    assert names == ["a.test"]
    ctx.sni_callback = None  # removed: the default certificate again, no call
    r = run_pair(pki, server_kw={"ssl_ctx": ctx}, clients=[{"server_hostname": "a.test"}])
    assert r.clients[0]["events"], "a.test must not verify against the localhost certificate"
    assert names == ["a.test"]


def test_sni_callback_bad_assignments_are_refused(pki):
    ctx = server_context(pki)
    with pytest.raises(TypeError):
        ctx.sni_callback = 42  # type: ignore[assignment]
    with pytest.raises(ValueError, match="server"):
        uvssl.Context.client().sni_callback = lambda sock, name: None
    borrowed = uvssl.Context.from_pointer(ctx.pointer, "server")
    with pytest.raises(ValueError, match="does not own"):
        borrowed.sni_callback = lambda sock, name: None
    assert borrowed.sni_callback is None
    with pytest.raises(TypeError):
        ctx.ssl_configure_callback = "not callable"  # type: ignore[assignment]


def test_ssl_configure_callback_assigned_while_the_server_runs(pki):
    # A TLS server hands a connection to Python once its handshake is done, unless the context
    # has a callback that needs the SSL* before: assigning one to a running server's context
    # must take effect for the next connection, and removing it too.
    sctx = server_context(pki)
    calls: list[Any] = []

    def set_cb(cb):
        def spec(r):
            sctx.ssl_configure_callback = cb
            return {}

        return spec

    r = run_pair(
        pki,
        server_kw={"ssl_ctx": sctx},
        clients=[{}, set_cb(calls.append), set_cb(None), {}],
    )
    assert_echoed(r)
    assert len(calls) == 1 and ffi.typeof(calls[0]) is ffi.typeof("SSL *")
