"""uvssl's exception hierarchy (SPEC S3).

Socket errors carry Allegro CL's identifiers (``"connection-refused"``, ...) next to the errno,
and are named after cl-async's conditions. TLS errors are also ``SslCondition`` instances, the
base of LispWorks' classes, and carry Allegro's ``ssl-error`` slots: the operation (``what``),
the whole OpenSSL error queue (``codes`` and ``strings``) and the verification result.

Every error is delivered to an ``event_cb(ev)`` as an instance; ``ev.socket`` is the socket it
happened on (or None).
"""

from __future__ import annotations

import errno as _errno
import re as _re
from typing import Any, Optional, Sequence

__all__ = [
    "SocketError",
    "TcpError",
    "TcpEof",
    "TcpTimeout",
    "TcpRefused",
    "SocketClosed",
    "DnsError",
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
