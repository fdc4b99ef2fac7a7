"""Certificate verification: client certificates required and missing, host names,
untrusted chains, ``verify=False`` and the alerts a refusal sends to the peer."""

from __future__ import annotations

import socket
import ssl

import pytest
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    LoopHarness,
    PeerThread,
    assert_echoed,
    check_verification_failure,
    close_quietly,
    listening_socket,
    required_client_cert_server,
    run_pair,
    server_der,
    stdlib_client_context,
    stdlib_client_server_test,
    stdlib_server_context,
)

import uvssl

pytestmark = pytest.mark.timeout(60)


def test_client_certificate_required_and_presented(certs):
    sctx = required_client_cert_server(certs)
    cctx = uvssl.Context.client(
        ca_file=str(certs.ca), certificate=str(certs.client_cert), key=str(certs.client_key)
    )
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[dict(ssl_ctx=cctx)])
    assert_echoed(r)
    cert = r.server_info[0]["peer_certificate"]
    assert isinstance(cert, uvssl.X509Certificate)
    client_pem = certs.client_cert.read_text()
    assert cert.to_der() == ssl.PEM_cert_to_DER_cert(
        client_pem[: client_pem.index("-----END CERTIFICATE-----") + 25]
    )
    assert r.clients[0]["peer_certificate"].to_der() == server_der(certs)


def test_client_without_certificate_is_refused(certs):
    sctx = required_client_cert_server(certs)
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[{}])
    c = r.clients[0]
    assert bytes(c["got"]) == b""
    assert c["events"] and isinstance(c["events"][0], uvssl.TcpSslError), c["events"]
    assert not isinstance(c["events"][0], uvssl.SslClosed)
    assert not r.server_info  # the server never completed a handshake
    assert len(r.server_events) == 1
    ev = r.server_events[0]
    assert isinstance(ev, uvssl.SslFailure), ev
    assert ev.codes and ev.strings


def test_host_name_mismatch_fails_verification(certs):
    r = run_pair(certs, clients=[dict(server_hostname="wrong.example")])
    c = r.clients[0]
    assert not c["connected"]
    assert len(c["events"]) == 1
    check_verification_failure(c["events"][0])
    assert c["events"][0].verify_result == 62  # X509_V_ERR_HOSTNAME_MISMATCH


def test_untrusted_chain_fails_against_system_store(certs):
    r = run_pair(certs, clients=[dict(ca_file=None, server_hostname="localhost")])
    c = r.clients[0]
    assert not c["connected"]
    assert len(c["events"]) == 1
    check_verification_failure(c["events"][0])


def test_verify_false_accepts_untrusted_server(certs):
    r = run_pair(certs, clients=[dict(ca_file=None, verify=False, server_hostname="wrong.example")])
    assert_echoed(r)
    assert r.clients[0]["peer_certificate"].to_der() == server_der(certs)


# -- alerts reach the peer -----------------------------------------------------------------------


def test_missing_client_certificate_alert_reaches_stdlib_client(certs):
    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        ctx = stdlib_client_context(certs)
        try:
            s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
        except ssl.SSLError as exc:  # TLS 1.2 fails here, TLS 1.3 at the first read
            return exc
        try:
            s.sendall(b"x\n")
            try:
                s.recv(100)
            except (ssl.SSLError, OSError) as exc:
                return exc
            return None
        finally:
            s.close()

    exc, events = stdlib_client_server_test(
        certs, client, server_ctx=required_client_cert_server(certs)
    )
    assert exc is not None
    assert isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError), repr(exc)
    text = str(exc).lower()
    assert "alert" in text and any(
        a in text for a in ("certificate required", "handshake failure", "bad certificate")
    ), text
    assert len(events) == 1 and isinstance(events[0], uvssl.SslFailure), events


def test_uvssl_client_rejection_alert_reaches_stdlib_server(certs):
    sctx = stdlib_server_context(certs, untrusted=True)
    ls = listening_socket()
    port = ls.getsockname()[1]

    def serve():
        try:
            conn, _ = ls.accept()
        finally:
            ls.close()
        conn.settimeout(PEER_TIMEOUT)
        try:
            s = sctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            conn.close()
            return exc
        s.close()
        return None

    peer = PeerThread(serve)
    peer.start()
    h = LoopHarness()
    events = []

    def event_cb(ev):
        events.append(ev)
        close_quietly(ev)

    def start():
        uvssl.tcp_ssl_connect(
            LOCALHOST,
            port,
            None,
            event_cb,
            ca_file=str(certs.ca),
            server_hostname="localhost",
            connect_cb=lambda s: h.fail("handshake with an untrusted server"),
        )

    try:
        h.run(start, until=lambda: peer.done and events)
    finally:
        ls.close()
    exc = peer.result()
    assert len(events) == 1
    check_verification_failure(events[0])
    assert isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError), repr(exc)
    assert "unknown ca" in str(exc).lower(), str(exc)
