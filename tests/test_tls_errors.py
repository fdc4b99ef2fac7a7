"""uvssl.errors.tls_error: one mapping from a captured TLS failure to an exception, used by
TLS sockets and by SslStream alike (no network needed).
"""

from __future__ import annotations

import uvssl
from uvssl.errors import tls_error
from uvssl.openssl import lib

_ERR_LIB_SSL = 20


def _ssl_code(reason: int) -> int:
    # ERR_PACK(ERR_LIB_SSL, 0, reason) in OpenSSL 3's layout
    code = (_ERR_LIB_SSL << 23) | reason
    assert lib.ERR_GET_REASON(code) == reason
    return code


def test_certificate_lookup_failure_is_x509_lookup():
    # SSL_R_NO_CERTIFICATE_ASSIGNED, SSL_R_NO_PRIVATE_KEY_ASSIGNED, SSL_R_MISSING_RSA_CERTIFICATE
    for reason in (177, 190, 168):
        exc = tls_error("handshake", ((_ssl_code(reason),), 1, 0, 0), True, None, "h port 1")
        assert type(exc) is uvssl.SslX509Lookup, reason
        assert exc.what == "handshake" and exc.verify_result == 0
        assert str(exc).startswith("TLS handshake with h port 1 failed")


def test_verify_failure_needs_a_bad_result():
    code = _ssl_code(134)  # SSL_R_CERTIFICATE_VERIFY_FAILED
    exc = tls_error("handshake", ((code,), 1, 0, 20), False, "example.org", None)
    assert type(exc) is uvssl.SslVerificationFailure
    assert "the server's certificate did not verify" in exc.message
    exc = tls_error("handshake", ((code,), 1, 0, 0), False, "example.org", None)
    assert type(exc) is uvssl.SslFailure


def test_peer_closed_and_system_errors():
    exc = tls_error("handshake", ((), 5, lib.UV_EOF, 0), False, None, "h port 1")
    assert type(exc) is uvssl.SslFailure
    assert exc.message == "the peer (h port 1) closed the connection during the TLS handshake"
    exc = tls_error("read", ((), lib.SSL_ERROR_SYSCALL, 104, 0), False, None, None)
    assert exc.message.startswith("TLS read failed: ") and exc.code == 104
    exc = tls_error("write", None, False, None, None, socket="s")
    assert exc.message == "TLS write failed" and exc.verify_result is None and exc.socket == "s"
