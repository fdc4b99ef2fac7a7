"""Bad input and the error classes: missing files, mismatched and encrypted keys, invalid
cipher strings, refused option combinations, SSL_OP_* constants, the error hierarchy and
pickling."""

from __future__ import annotations

import errno
import pickle
import ssl

import pytest
from tls_support import (
    LOCALHOST,
    LoopHarness,
    assert_echoed,
    run_pair,
    stdlib_server_context,
)

import uvssl

pytestmark = pytest.mark.timeout(60)


# -- bad input -----------------------------------------------------------------------------------


def in_loop(fn):
    """Run ``fn`` inside a loop (for calls that need one); its exception propagates."""
    h = LoopHarness()

    def start():
        try:
            fn()
        finally:
            h.done()

    h.run(start)


def test_missing_certificate_file(certs, tmp_path):
    missing = tmp_path / "no-such-cert.pem"
    with pytest.raises(FileNotFoundError):
        uvssl.Context.server(certificate=str(missing), key=str(certs.server_key))
    with pytest.raises(FileNotFoundError):
        uvssl.Context.server(certificate=str(certs.server_cert), key=str(tmp_path / "no.key"))
    with pytest.raises(FileNotFoundError):
        uvssl.Context.client(ca_file=str(tmp_path / "no-ca.pem"))

    def call():
        with pytest.raises(FileNotFoundError):
            uvssl.tcp_ssl_server(
                LOCALHOST, 0, None, certificate=str(missing), key=str(certs.server_key)
            )

    in_loop(call)


def test_key_not_matching_certificate(certs):
    with pytest.raises(uvssl.SslFailure) as info:
        uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.client_key))
    assert info.value.codes
    assert isinstance(info.value, uvssl.TcpSslError)


def test_encrypted_key_wrong_password(certs):
    with pytest.raises(uvssl.SslFailure) as info:
        uvssl.Context.server(
            certificate=str(certs.server_cert),
            key=str(certs.server_key_encrypted),
            certificate_password="wrong",
        )
    assert info.value.codes
    with pytest.raises(uvssl.SslFailure):  # no password: an error, never a prompt
        uvssl.Context.server(
            certificate=str(certs.server_cert), key=str(certs.server_key_encrypted)
        )

    def call():
        with pytest.raises(uvssl.SslFailure):
            uvssl.tcp_ssl_server(
                LOCALHOST,
                0,
                None,
                certificate=str(certs.server_cert),
                key=str(certs.server_key_encrypted),
                password="wrong",
            )

    in_loop(call)


def test_encrypted_key_right_password(certs):
    ctx = uvssl.Context.server(
        certificate=str(certs.server_cert),
        key=str(certs.server_key_encrypted),
        certificate_password=certs.password,
    )
    assert ctx.pointer
    r = run_pair(
        certs,
        server_kw=dict(
            certificate=str(certs.server_cert),
            key=str(certs.server_key_encrypted),
            password=certs.password.decode(),
        ),
    )
    assert_echoed(r)


def test_invalid_cipher_strings(server_cert_kw, certs):
    with pytest.raises(uvssl.SslFailure):
        uvssl.Context.client(ciphers="NOT-A-CIPHER:ALSO-NOT")
    with pytest.raises(uvssl.SslFailure):
        uvssl.Context.server(
            **server_cert_kw,
            ciphersuites="TLS_NOT_A_SUITE",
        )

    def call():
        with pytest.raises(uvssl.SslFailure):
            uvssl.tcp_ssl_connect(LOCALHOST, 9, None, ciphers="NOT-A-CIPHER")
        with pytest.raises(uvssl.SslFailure):
            uvssl.tcp_ssl_server(
                LOCALHOST,
                0,
                None,
                **server_cert_kw,
                ciphers="NOT-A-CIPHER",
            )

    in_loop(call)


def test_stdlib_context_with_sni_callback_refused(certs):
    sctx = stdlib_server_context(certs)
    sctx.sni_callback = lambda sock, name, ctx: None  # (the stdlib allows it on servers only)

    def call():
        with pytest.raises(ValueError, match="sni_callback"):
            uvssl.tcp_ssl_server(LOCALHOST, 0, None, ssl_ctx=sctx)

    in_loop(call)


def test_ssl_options_or_ciphers_with_ssl_ctx_refused(server_cert_kw, certs):
    sctx = uvssl.Context.server(**server_cert_kw)
    cctx = uvssl.Context.client(ca_file=str(certs.ca))

    def call():
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_server(
                LOCALHOST,
                0,
                None,
                ssl_ctx=sctx,
                ssl_options=[uvssl.SSL_OP_NO_TICKET],
            )
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_connect(
                LOCALHOST,
                9,
                None,
                ssl_ctx=cctx,
                ssl_options=[uvssl.SSL_OP_NO_TICKET],
            )
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_connect(LOCALHOST, 9, None, ssl_ctx=cctx, ciphers="HIGH")
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_server(LOCALHOST, 0, None, ssl_ctx=sctx, ciphers="HIGH")

    in_loop(call)


# -- SSL_OP_* and the error classes ----------------------------------------------------------------


def test_ssl_op_constants_exported():
    for name in (
        "SSL_OP_NO_TICKET",
        "SSL_OP_NO_TLSv1_3",
        "SSL_OP_NO_COMPRESSION",
        "SSL_OP_CIPHER_SERVER_PREFERENCE",
        "SSL_OP_ALL",
    ):
        value = getattr(uvssl, name)
        assert isinstance(value, int), name
        assert name in uvssl.__all__
    assert uvssl.SSL_OP_NO_TICKET == ssl.OP_NO_TICKET
    assert uvssl.SSL_OP_NO_TLSv1_3 == ssl.OP_NO_TLSv1_3
    assert uvssl.SSL_OP_NO_COMPRESSION == ssl.OP_NO_COMPRESSION
    # OpenSSL 3 made some of them no-ops: still accepted
    uvssl.Context.client(options=[uvssl.SSL_OP_SINGLE_DH_USE, uvssl.SSL_OP_NO_SSLv2])


def test_error_class_hierarchy():
    for cls in (
        uvssl.SslVerificationFailure,
        uvssl.SslFailure,
        uvssl.SslClosed,
        uvssl.SslHandshakeTimeout,
        uvssl.SslX509Lookup,
    ):
        assert issubclass(cls, uvssl.TcpSslError), cls
        assert issubclass(cls, uvssl.SslCondition), cls
        assert issubclass(cls, uvssl.TcpError), cls
        assert issubclass(cls, uvssl.SocketError), cls
        assert issubclass(cls, OSError), cls
    assert issubclass(uvssl.SslVerificationFailure, uvssl.SslFailure)
    exc = uvssl.SslVerificationFailure(
        "certificate verification failed",
        what="handshake",
        codes=(1, 2),
        strings=("a", "b"),
        verify_result=20,
        verify_result_string="unable to get local issuer certificate",
    )
    assert isinstance(exc, OSError)
    text = str(exc)
    assert "unable to get local issuer certificate" in text and "20" in text
    assert "a" in text and "handshake" in text
    assert exc.codes == (1, 2) and exc.strings == ("a", "b")


def test_error_attributes_default_and_survive_pickling():
    closed = uvssl.SslClosed("the peer sent close_notify", what="read", identifier="shutdown")
    assert (closed.what, closed.action, closed.identifier) == ("read", "read", "shutdown")
    assert closed.codes == () and closed.strings == ()
    assert closed.verify_result is None and closed.verify_result_string is None
    assert closed.code is None and closed.socket is None and not closed.truncated
    eof = uvssl.TcpEof("the peer closed the connection", action="read")
    assert (eof.code, eof.identifier, eof.action, eof.socket) == (None, "unknown", "read", None)
    reset = uvssl.TcpError("reset", code=errno.ECONNRESET, action="write")
    assert reset.identifier == "connection-reset" and reset.errno == errno.ECONNRESET
    failure = uvssl.SslFailure("bad", what="handshake", codes=[7], strings=["x"], verify_result=0)
    for exc in (closed, eof, reset, failure):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        for name in ("message", "code", "action", "identifier", "socket"):
            assert getattr(back, name) == getattr(exc, name), name
    assert back.codes == (7,) and back.strings == ("x",) and back.verify_result == 0
