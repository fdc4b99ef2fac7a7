"""uvssl's exception hierarchy.

Socket errors carry Allegro CL's identifiers (``"connection-refused"``, ...) next to the errno,
and are named after cl-async's conditions. TLS errors are also ``SslCondition`` instances, the
base of LispWorks' classes, and carry Allegro's ``ssl-error`` slots: the operation (``what``),
the whole OpenSSL error queue (``codes`` and ``strings``) and the verification result.

Every error is delivered to an ``event_cb(ev)`` as an instance; ``ev.socket`` is the socket it
happened on (or None).

The end of the module builds errors for uvssl's other modules (these helpers are not part of
the public API): ``strerror`` / ``errname`` / ``errno_of`` for native (libuv) codes,
``openssl_failure`` from the thread's OpenSSL error queue, and ``tls_error``, the one mapping
from what the TLS engine captured at a failure (``captured_tls_error``) to ``SslFailure``,
``SslVerificationFailure`` or ``SslX509Lookup``, with a message that says what to do about
the common reasons; TLS sockets and ``SslStream`` both use it.
"""

from __future__ import annotations

import errno as _errno
import re as _re
from typing import Any, Callable, Optional, Sequence

from ._uvssl import ffi, lib
from .openssl import error_queue, error_strings, verify_string

__all__ = [
    "SocketError",
    "TcpError",
    "TcpEof",
    "TcpTimeout",
    "TcpRefused",
    "SocketClosed",
    "DnsError",
    "ProxyProtocolError",
    "SslCondition",
    "TcpSslError",
    "SslClosed",
    "SslFailure",
    "SslHandshakeTimeout",
    "SslVerificationFailure",
    "SslX509Lookup",
    "identifier_for_errno",
]

_IDENTIFIERS = {
    _errno.EADDRINUSE: "address-in-use",
    _errno.EADDRNOTAVAIL: "address-not-available",
    _errno.ENETDOWN: "network-down",
    _errno.ENETUNREACH: "network-down",
    _errno.ENETRESET: "network-reset",
    _errno.ECONNABORTED: "connection-aborted",
    _errno.ECONNRESET: "connection-reset",
    _errno.ENOBUFS: "no-buffer-space",
    _errno.ESHUTDOWN: "shutdown",
    _errno.EPIPE: "shutdown",
    _errno.ETIMEDOUT: "connection-timed-out",
    _errno.ECONNREFUSED: "connection-refused",
    _errno.EHOSTDOWN: "host-down",
    _errno.EHOSTUNREACH: "host-unreachable",
    _errno.ENOPROTOOPT: "protocol-not-available",
    _errno.EPROTONOSUPPORT: "protocol-not-available",
}


def identifier_for_errno(code: Optional[int]) -> str:
    """Return Allegro CL's identifier for an errno value (``"unknown"`` when it has none)."""
    if code is None:
        return "unknown"
    return _IDENTIFIERS.get(code, "unknown")


# How ``str(exc)`` names the action when the message does not already say it: "while reading",
# never "cannot write while write". The other forms a message may use for the same action.
# Other actions ("load certificate", "attach", ...) are labels for programs: the messages that
# carry them say what failed themselves.
_ACTION_PHRASES = {
    "resolve": "while resolving the host name",
    "connect": "while connecting",
    "read": "while reading",
    "write": "while writing",
    "shutdown": "while shutting down the write side",
    "accept": "while accepting a connection",
    "listen": "while starting to listen",
    "handshake": "during the TLS handshake",
}
_ACTION_FORMS = {
    "resolve": ("resolving",),
    "connect": ("connecting",),
    "read": ("reading",),
    "write": ("writing", "written"),
    "shutdown": ("shut down", "shutting down"),
    "accept": ("accepting",),
    "listen": ("listening",),
}


def _with_action(message: str, action: str) -> str:
    """``message``, followed by what was being done unless the message already says it."""
    phrase = _ACTION_PHRASES.get(action)
    if phrase is None:
        return message
    low = message.lower()
    for form in (action, *_ACTION_FORMS.get(action, ())):
        if _re.search(r"\b" + _re.escape(form) + r"\b", low):
            return message
    return f"{message} {phrase}"


class SocketError(OSError):
    """Base of every uvssl networking error.

    ``str(exc)`` is the message, then what was being done unless the message says it already
    ("... while reading"), then the identifier and errno.

    Attributes:
        identifier: Allegro CL's name for the condition, e.g. ``"connection-refused"``.
        code: the errno value, or None when the error has none (DNS, TLS).
        action: what was being done: ``"connect"``, ``"read"``, ``"write"``, ...
        socket: the ``Socket`` (or server) it happened on, or None.

    """

    # Defaults as class attributes: an instance stores only what differs, which makes an event
    # (an EOF, a close_notify: one per connection on a busy server) cheaper to build.
    code: Optional[int] = None
    action: str = ""
    socket: Any = None
    identifier: str = "unknown"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[int] = None,
        action: str = "",
        socket: Any = None,
        identifier: Optional[str] = None,
    ) -> None:
        self.message = message
        if code is not None:
            super().__init__(code, message)
            self.code = code
        else:
            super().__init__(message)
        if action:
            self.action = action
        if socket is not None:
            self.socket = socket
        if identifier is None:
            identifier = identifier_for_errno(code)
        if identifier != "unknown":
            self.identifier = identifier

    def __str__(self) -> str:
        text = _with_action(self.message, self.action)
        details = [] if self.identifier == "unknown" else [f"identifier={self.identifier}"]
        if self.code is not None:
            details.append(f"errno={self.code}")
        return f"{text} ({', '.join(details)})" if details else text

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: Any, message: str, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    OSError.__init__(obj, message)
    obj.__dict__.update(state)
    return obj


class TcpError(SocketError):
    """A TCP connection failed (cl-async's ``tcp-error``)."""


class TcpEof(TcpError):
    """The peer closed its side of the connection (cl-async's ``tcp-eof``).

    The socket stays open for writing until the application closes it.
    """


class TcpTimeout(TcpError):
    """No data arrived within ``read_timeout``, or queued data did not leave within
    ``write_timeout`` (cl-async's ``tcp-timeout``). The socket is closed.
    """


class TcpRefused(TcpError):
    """The peer refused the connection (cl-async's ``tcp-refused``)."""


class SocketClosed(TcpError):
    """An operation was attempted on a closed socket (cl-async's ``socket-closed``)."""


class DnsError(SocketError):
    """A host name could not be resolved (cl-async's ``dns-error``)."""


class ProxyProtocolError(SocketError):
    """A server with ``proxy_protocol=True`` closed a connection whose PROXY protocol header
    was missing, malformed or late, or that came from a source not in ``proxy_protocol_from``.

    ``identifier`` is ``"proxy-protocol"``; ``reason`` names what was wrong (``"signature"``,
    ``"v1-line"``, ``"v1-syntax"``, ``"v1-address"``, ``"v1-port"``, ``"v2-version"``,
    ``"v2-command"``, ``"v2-family"``, ``"v2-length"``, ``"v2-tlv"``, ``"source"``,
    ``"timeout"``, ``"eof"``, ``"memory"``); ``socket.remote_address`` is the peer that sent it.
    """

    reason: str = ""


class SslCondition(Exception):
    """Base of the TLS errors (LispWorks' ``ssl-condition``), mixed into each of them.

    Attributes (Allegro CL's ``ssl-error`` slots):
        what: the TLS operation that failed (``"handshake"``, ``"read"``, ``"write"``, ...).
        codes: the OpenSSL error codes, the whole queue, oldest first.
        strings: the texts of those codes.
        verify_result: the certificate verification result (0 is X509_V_OK), or None.
        verify_result_string: its text, or None.
    """

    what: str = ""
    codes: tuple[int, ...] = ()
    strings: tuple[str, ...] = ()
    verify_result: Optional[int] = None
    verify_result_string: Optional[str] = None


class TcpSslError(TcpError, SslCondition):
    """A TLS connection failed (cl-async's ``tcp-ssl-error``).

    ``str(exc)`` is the message, the operation unless the message names it, the OpenSSL error
    queue, and the verification result when verification failed (a result of 0, "ok", is
    left out: a server that asked for no client certificate reports it for every failure).
    """

    def __init__(
        self,
        message: str,
        *,
        what: str = "",
        codes: Sequence[int] = (),
        strings: Sequence[str] = (),
        verify_result: Optional[int] = None,
        verify_result_string: Optional[str] = None,
        code: Optional[int] = None,
        socket: Any = None,
        identifier: Optional[str] = None,
    ) -> None:
        super().__init__(message, code=code, action=what, socket=socket, identifier=identifier)
        if what:
            self.what = what
        if codes:
            self.codes = tuple(codes)
        if strings:
            self.strings = tuple(strings)
        if verify_result is not None:
            self.verify_result = verify_result
        if verify_result_string is not None:
            self.verify_result_string = verify_result_string

    def __str__(self) -> str:
        text = _with_action(self.message, self.what)
        if self.strings:  # once each: OpenSSL may queue the same error several times
            text += "; OpenSSL: " + "; ".join(dict.fromkeys(self.strings))
        # 0 (X509_V_OK) says nothing: it is also what a side that verified nothing reports
        if self.verify_result:
            text += f"; verify result {self.verify_result}"
            vstr = self.verify_result_string
            if vstr and vstr not in text:
                text += f": {vstr}"
        return text


class SslClosed(TcpSslError):
    """The TLS session ended: the peer sent close_notify, or closed TCP without it
    (``truncated`` is then True: data may have been cut off).
    """

    truncated: bool = False


class SslFailure(TcpSslError):
    """The TLS protocol failed: a bad record, an alert from the peer, a handshake failure."""


class SslHandshakeTimeout(TcpSslError):
    """The handshake did not complete within the handshake timeout."""


class SslVerificationFailure(SslFailure):
    """The peer's certificate did not verify (untrusted chain, wrong host name, revoked...)."""


class SslX509Lookup(SslFailure):
    """A certificate lookup failed (a certificate or key could not be found or used)."""


# -- building errors (for uvssl's modules) ---------------------------------------------------


def strerror(code: int) -> str:
    """The text of a libuv (or uvssl) error code."""
    return str(ffi.string(lib.uvs_strerror(code)).decode("utf-8", "replace"))


def errname(code: int) -> str:
    """The name of a libuv (or uvssl) error code ("ECONNRESET")."""
    return str(ffi.string(lib.uvs_errname(code)).decode("ascii", "replace"))


def errno_of(status: int) -> Optional[int]:
    """Libuv codes are negated errno values on Unix; DNS (EAI) codes have no errno."""
    if -4000 < status < 0 and not (-3100 < status <= -3000):
        return -status
    return None


def openssl_failure(message: str, what: str) -> SslFailure:
    """An ``SslFailure`` carrying (and clearing) this thread's OpenSSL error queue."""
    codes, strings = error_queue()
    return SslFailure(message, what=what, codes=codes, strings=strings)


# Reason codes (ERR_GET_REASON) that say "the certificate did not verify".
_SSL_R_CERTIFICATE_VERIFY_FAILED = lib.SSL_R_CERTIFICATE_VERIFY_FAILED
_X509_LOOKUP_REASONS = {
    lib.SSL_R_NO_CERTIFICATE_ASSIGNED,
    lib.SSL_R_NO_PRIVATE_KEY_ASSIGNED,
    lib.SSL_R_MISSING_RSA_CERTIFICATE,
}

# What a failed verification means and what to do, by verify result (X509_V_ERR_*).
_UNTRUSTED = {  # no path to a trusted CA: unknown issuer, self-signed, ...
    lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
    lib.X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
    lib.X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
    lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    lib.X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
}
_NAME_MISMATCH = {lib.X509_V_ERR_HOSTNAME_MISMATCH, lib.X509_V_ERR_IP_ADDRESS_MISMATCH}
_NOT_NOW = {lib.X509_V_ERR_CERT_NOT_YET_VALID, lib.X509_V_ERR_CERT_HAS_EXPIRED}
_NO_CRL = lib.X509_V_ERR_UNABLE_TO_GET_CRL
_CHAIN_TOO_LONG = lib.X509_V_ERR_CERT_CHAIN_TOO_LONG

# OpenSSL reasons (the end of an error string) a user can act on: what they mean, and what to
# do. "alert ..." is what the peer sent: it refused something of this side's.
_REASON_HINTS = (
    ("alert unknown ca", "the peer does not trust the CA that issued {this} certificate"),
    ("alert bad certificate", "the peer rejected {this} certificate"),
    ("alert certificate unknown", "the peer rejected {this} certificate"),
    ("alert unsupported certificate", "the peer rejected {this} certificate"),
    ("alert certificate expired", "the peer says {this} certificate has expired"),
    ("alert certificate revoked", "the peer says {this} certificate is revoked"),
    (
        "alert certificate required",
        "the peer requires a client certificate: give this client certificate= and key=",
    ),
    (
        "alert protocol version",
        "the two sides accept no common TLS version (uvssl's minimum is TLS 1.2)",
    ),
    (
        "alert handshake failure",
        "the peer found no acceptable parameters (cipher, TLS version or signature algorithm)",
    ),
    (
        "peer did not return a certificate",
        "the client sent no certificate, and this server requires one (verify='required')",
    ),
    ("no shared cipher", "the two sides have no cipher in common (see ciphers=)"),
    (
        "unsupported protocol",
        "the two sides accept no common TLS version (uvssl's minimum is TLS 1.2; see min_version=)",
    ),
    ("http request", "the peer sent a plain HTTP request to this TLS port"),
    ("wrong version number", "the peer does not speak TLS (is it a plain TCP or HTTP port?)"),
)


def _verification_hint(vr: int, server: bool, hostname: Optional[str]) -> str:
    """What to do about verification result ``vr`` ("" when there is nothing to say)."""
    if vr in _UNTRUSTED:
        if server:
            return "give the server's context ca_file= the CA that issued the client certificates"
        return "give ca_file= the CA that issued it (or verify=False to skip verification)"
    if vr in _NAME_MISMATCH:
        name = f"{hostname!r}" if hostname else "the name asked for"
        return f"it is not valid for {name}: connect with a server_hostname= it names"
    if vr in _NOT_NOW:
        return "check this machine's clock, or renew the certificate"
    if vr == _NO_CRL:
        return "crl_check is on, but no CRL from its issuer was loaded (crl_file=)"
    if vr == _CHAIN_TOO_LONG:
        return "the chain is longer than max_depth="
    return ""


def tls_failure_message(
    what: str,
    strings: tuple[str, ...],
    verify_failed: bool,
    vr: Optional[int],
    vstr: Optional[str],
    server: bool,
    hostname: Optional[str],
    peer: Optional[str] = None,
) -> str:
    """The message of a TLS error with OpenSSL errors queued: what failed, with whom (``peer``,
    "HOST port N", when known) and, when the reason is a common one, what it means and what
    to do. The OpenSSL texts themselves follow in ``str(exc)``, so a reason without advice is
    not repeated here.
    """
    failed = f"TLS {what} with {peer} failed" if peer else f"TLS {what} failed"
    if verify_failed and vr is not None:
        whose = "client's" if server else "server's"
        msg = f"{failed}: the {whose} certificate did not verify ({vstr})"
        hint = _verification_hint(vr, server, hostname)
        return f"{msg}: {hint}" if hint else msg
    last = strings[-1].rsplit(":", 1)[-1] if strings else ""
    for reason, meaning in _REASON_HINTS:
        if last.endswith(reason):
            this = "this server's" if server else "this client's"
            return f"{failed}: {meaning.format(this=this)}"
    return failed


#: What the TLS engine captured when a connection or stream failed: the OpenSSL error codes
#: (oldest first), the SSL_get_error result, the system error and the verification result.
CapturedTlsError = tuple[tuple[int, ...], int, int, int]


def captured_tls_error(read: Callable[..., int], native: Any) -> Optional[CapturedTlsError]:
    """Read what the TLS engine of ``native`` captured at its failure: ``read`` is
    ``lib.uvs_conn_tls_error`` for a connection, ``lib.uvs_stream_tls_error`` for a stream.
    None when there is no engine (the connection is gone).
    """
    buf = ffi.new("unsigned long[]", lib.UVS_TLS_MAX_ERRORS)
    se = ffi.new("int *")
    ye = ffi.new("int *")
    v = ffi.new("long *")
    n = read(native, buf, lib.UVS_TLS_MAX_ERRORS, se, ye, v)
    if n < 0:
        return None
    return tuple(int(buf[i]) for i in range(n)), se[0], ye[0], int(v[0])


def tls_error(
    what: str,
    captured: Optional[CapturedTlsError],
    server: bool,
    hostname: Optional[str],
    peer: Optional[str],
    socket: Any = None,
) -> TcpSslError:
    """The exception for a TLS failure, for sockets and streams alike.

    ``captured`` is what the engine recorded (``captured_tls_error``; None: nothing), ``server``
    whether this side is the server, ``hostname`` the name a client asked for, ``peer`` the
    other end ("HOST port N") when known. A certificate that did not verify gives
    ``SslVerificationFailure``; a certificate or key this side could not use,
    ``SslX509Lookup``; anything else ``SslFailure``. The message says what failed, with whom
    and, for the common reasons, what to do (``tls_failure_message``).
    """
    codes: tuple[int, ...] = ()
    ssl_err = sys_err = 0
    vr: Optional[int] = None
    if captured is not None:
        codes, ssl_err, sys_err, vr = captured
    strings = error_strings(codes)
    reasons = {int(lib.ERR_GET_REASON(c)) for c in codes}
    verified_bad = vr is not None and vr != lib.X509_V_OK
    verify_failed = _SSL_R_CERTIFICATE_VERIFY_FAILED in reasons and verified_bad
    vstr = verify_string(vr) if vr is not None else None
    failed = f"TLS {what} with {peer} failed" if peer else f"TLS {what} failed"
    if sys_err == lib.UV_EOF and not codes:
        who = f"the peer ({peer})" if peer else "the peer"
        msg = f"{who} closed the connection during the TLS handshake"
    elif codes:
        msg = tls_failure_message(what, strings, verify_failed, vr, vstr, server, hostname, peer)
    elif ssl_err == lib.SSL_ERROR_SYSCALL and sys_err:
        msg = f"{failed}: {strerror(-sys_err) if sys_err > 0 else strerror(sys_err)}"
    else:
        msg = failed
    kw: dict[str, Any] = dict(
        what=what,
        codes=codes,
        strings=strings,
        verify_result=vr,
        verify_result_string=vstr,
        socket=socket,
        code=errno_of(-sys_err) if sys_err > 0 else None,
    )
    if verify_failed:
        return SslVerificationFailure(msg, **kw)
    if reasons & _X509_LOOKUP_REASONS:
        return SslX509Lookup(msg, **kw)
    return SslFailure(msg, **kw)
