"""asyncio transports over uvssl sockets (plain TCP and TLS).

Theory of operation
-------------------
A ``Transport`` owns one uvssl ``Socket`` (or ``SslSocket``) made by ``create_connection`` or
accepted by ``create_server``; the socket's callbacks drive the protocol, always from inside a
libuv turn that the asyncio loop ran (see ``_host``):

- data read -> ``data_received(data)``, or for a ``BufferedProtocol`` ``get_buffer`` /
  ``buffer_updated`` (the bytes are copied into the protocol's buffer, in pieces as large as
  it offers);
- the peer's EOF -> ``eof_received()``; the transport closes unless it returns true (plain TCP:
  this end may go on writing). On TLS the peer's close_notify is the EOF and the transport
  always closes, as asyncio's TLS transports do;
- an error -> ``connection_lost(exc)``; a close -> ``connection_lost(None)`` once the socket
  has flushed and closed. ``connection_lost`` runs from ``call_soon``, never inside ``close()``;
- flow control: uvssl's write buffer marks are the transport's; ``write`` returning "above the
  high mark" calls ``pause_writing()`` and the socket's drain callback (buffer back down to
  the low mark) calls ``resume_writing()``.

Exceptions raised by protocol callbacks go to the asyncio loop's exception handler and close
the transport (asyncio's "fatal error" path), except ``KeyboardInterrupt`` and ``SystemExit``,
which propagate.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional, Union

from ..errors import SocketError, SslClosed, TcpEof
from ..tcp import Socket
from ..tls import SslSocket

log = logging.getLogger("uvssl")

_DEFAULT_HIGH = 64 * 1024


class _AioSocket(Socket):
    """A ``Socket`` that tells its transport when it has closed."""

    _aio: Optional[Transport] = None

    def _on_closed(self) -> None:
        super()._on_closed()
        t = self._aio
        if t is not None:
            t._socket_closed()


class _AioSslSocket(SslSocket):
    """An ``SslSocket`` that tells its transport when it has closed."""

    _aio: Optional[Transport] = None

    def _on_closed(self) -> None:
        super()._on_closed()
        t = self._aio
        if t is not None:
            t._socket_closed()


class SslObject:
    """What ``get_extra_info("ssl_object")`` returns: the parts of ``ssl.SSLObject`` that
    servers and clients read (aiohttp, uvicorn), answered from the connection's ``SSL*``.
    """

    def __init__(self, sock: SslSocket, context: Any, server_side: bool) -> None:
        """Internal: made by the transport of a TLS connection."""
        self._sock = sock
        self.context = context
        self.server_side = server_side
        self.server_hostname = None if server_side else sock.server_hostname

    def getpeercert(self, binary_form: bool = False) -> Union[dict[str, Any], bytes, None]:
        """The peer's certificate: as ``ssl.SSLObject.getpeercert`` gives it (a dict of the
        decoded fields, or DER bytes with ``binary_form=True``); None without one.
        """
        cert = self._sock.peer_certificate
        if cert is None:
            return None
        if binary_form:
            return cert.to_der()
        serial = format(cert.serial_number, "X")
        return {
            "subject": _stdlib_name(cert.subject),
            "issuer": _stdlib_name(cert.issuer),
            "version": cert.version,
            "serialNumber": serial if len(serial) % 2 == 0 else "0" + serial,
            "notBefore": cert.not_before.strftime("%b %d %H:%M:%S %Y GMT"),
            "notAfter": cert.not_after.strftime("%b %d %H:%M:%S %Y GMT"),
            "subjectAltName": tuple(cert.subject_alt_names),
        }

    def selected_alpn_protocol(self) -> Optional[str]:
        """The protocol ALPN selected, or None."""
        return self._sock.alpn_protocol

    def selected_npn_protocol(self) -> None:
        """NPN is not offered (it was replaced by ALPN): always None."""
        return None

    def version(self) -> Optional[str]:
        """The negotiated protocol ("TLSv1.3")."""
        return self._sock.version

    def cipher(self) -> Optional[tuple[str, str, int]]:
        """(cipher name, protocol, secret bits), as ``ssl.SSLObject.cipher`` gives it."""
        return _cipher_tuple(self._sock)

    def compression(self) -> None:
        """TLS compression is never used: always None."""
        return None

    def session_reused(self) -> bool:
        """True when the handshake resumed a session."""
        return self._sock.session_reused


# OpenSSL's short attribute names -> the long ones ``ssl`` uses in getpeercert()
_LONG_NAMES = {
    "CN": "commonName",
    "O": "organizationName",
    "OU": "organizationalUnitName",
    "C": "countryName",
    "ST": "stateOrProvinceName",
    "L": "localityName",
    "DC": "domainComponent",
    "UID": "userId",
    "GN": "givenName",
    "SN": "surname",
    "street": "streetAddress",
    "jurisdictionC": "jurisdictionCountryName",
    "jurisdictionST": "jurisdictionStateOrProvinceName",
    "jurisdictionL": "jurisdictionLocalityName",
}


def _stdlib_name(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str]], ...]:
    """A name as ``ssl.SSLObject.getpeercert`` gives it: its RDNs in the certificate's order
    (uvssl's own are in RFC 2253 order, the reverse), attributes under their long names.
    """
    return tuple(((_LONG_NAMES.get(k, k), v),) for k, v in reversed(pairs))


def _cipher_tuple(sock: SslSocket) -> Optional[tuple[str, str, int]]:
    from .._uvssl import ffi, lib

    ssl = sock._ssl()
    if ssl == ffi.NULL or not sock._connected:
        return None
    c = lib.SSL_get_current_cipher(ssl)
    if c == ffi.NULL:
        return None
    name = ffi.string(lib.SSL_CIPHER_get_name(c)).decode()
    version = ffi.string(lib.SSL_CIPHER_get_version(c)).decode()
    bits = int(lib.SSL_CIPHER_get_bits(c, ffi.NULL))
    return (name, version, bits)


class Transport(asyncio.Transport):
    """An ``asyncio.Transport`` over a uvssl connection (see the module's docstring)."""

    def __init__(
        self,
        host: Any,
        sock: Union[_AioSocket, _AioSslSocket],
        protocol: asyncio.BaseProtocol,
        *,
        server: Any = None,
        sslcontext: Any = None,
        server_side: bool = False,
    ) -> None:
        """Internal: made by ``create_connection`` and ``create_server``."""
        super().__init__()
        self._host = host
        self._aloop: asyncio.AbstractEventLoop = host.aloop
        self._sock = sock
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._server = server
        self._closing = False
        self._lost = False
        self._eof_sent = False
        self._writing_paused = False
        self._reading = True
        self._writes_after_lost = 0
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4
        self._sslcontext = sslcontext
        self._server_side = server_side
        self._ssl_object: Optional[SslObject] = None
        self._peername: Any = None
        self._sockname: Any = None
        sock._aio = self
        sock.read_cb = self._on_data
        sock.event_cb = self._on_event
        sock.set_write_buffer_limits(self._high, self._low, self._on_drain)
        try:
            self._peername = sock.remote_address
            self._sockname = sock.local_address
        except (SocketError, OSError):
            pass
        host.transports.add(self)
        if server is not None:
            server._attach(self)

    # -- the protocol's side -----------------------------------------------------------------
    def _start(self) -> None:
        """Announce the connection to the protocol (connection_made)."""
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001
            self._fatal_error(exc, "protocol.connection_made() call failed")

    def _on_data(self, sock: Any, data: bytes) -> None:
        if self._lost:
            return
        proto = self._protocol
        try:
            if not self._buffered:
                proto.data_received(data)  # type: ignore[attr-defined]
                return
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view))).cast("B")  # type: ignore[attr-defined]
                n = min(len(buf), len(view))
                if n == 0:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                buf[:n] = view[:n]
                view = view[n:]
                proto.buffer_updated(n)  # type: ignore[attr-defined]
                if self._lost or self._closing:
                    return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001
            what = "buffer_updated()" if self._buffered else "data_received()"
            self._fatal_error(exc, f"protocol.{what} call failed")

    def _on_event(self, exc: BaseException) -> None:
        if isinstance(exc, (TcpEof, SslClosed)):
            try:
                keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as err:  # noqa: BLE001
                self._fatal_error(err, "protocol.eof_received() call failed")
                return
            if isinstance(exc, SslClosed) or not keep_open:
                self.close()
            return
        # any other event is an error that closed the socket
        self._closing = True
        self._connection_lost(exc)

    def _on_drain(self, sock: Any) -> None:
        if self._writing_paused:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001
                self._aloop.call_exception_handler(
                    {
                        "message": "protocol.resume_writing() failed",
                        "exception": exc,
                        "transport": self,
                        "protocol": self._protocol,
                    }
                )

    def _maybe_pause(self) -> None:
        if self._writing_paused:
            return
        self._writing_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001
            self._aloop.call_exception_handler(
                {
                    "message": "protocol.pause_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        self._aloop.call_exception_handler(
            {
                "message": f"uvssl.aio: fatal error on transport: {message}",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            }
        )
        self._force_close(exc)

    def _force_close(self, exc: Optional[BaseException]) -> None:
        if self._lost:
            return
        self._closing = True
        # connection_lost gets ``exc`` (asyncio's fatal-error path): the socket's own closed
        # notice may come inside close(force=True), and would report None first
        self._connection_lost(exc)
        if not self._sock.closed:
            self._sock.close(force=True)

    def _socket_closed(self) -> None:
        """The socket finished closing (flushed, or dropped)."""
        self._connection_lost(None)

    def _connection_lost(self, exc: Optional[BaseException]) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._host.closed:
            return  # the asyncio loop is closing: nothing more runs
        self._aloop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Optional[BaseException]) -> None:
        try:
            # asyncio's stubs say Exception; what arrives here is one, or None
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            server = self._server
            self._server = None
            if server is not None:
                server._detach(self)

    def _host_closing(self) -> None:
        """The asyncio loop is closing: the host closes the socket; the protocol is not told."""
        self._lost = True
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server._detach(self)

    # -- asyncio.BaseTransport ---------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """"peername", "sockname", "socket" (None: the descriptor is uvssl's), and on TLS
        "ssl_object", "sslcontext", "peercert", "cipher", "compression".
        """
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        sock = self._sock
        if not isinstance(sock, SslSocket):
            return default
        if name == "sslcontext":
            return self._sslcontext
        if name == "ssl_object":
            if self._ssl_object is None:
                self._ssl_object = SslObject(sock, self._sslcontext, self._server_side)
            return self._ssl_object
        if sock.closed:
            return default
        if name == "peercert":
            return self.get_extra_info("ssl_object").getpeercert()
        if name == "cipher":
            return _cipher_tuple(sock)
        if name == "compression":
            return None
        return default

    def is_closing(self) -> bool:
        """True once the transport is closing or closed."""
        return self._closing

    def close(self) -> None:
        """Close after the buffered data is sent (TLS: close_notify too); then
        ``connection_lost(None)``.
        """
        if self._closing:
            return
        self._closing = True
        self._sock.close()  # may finish at once: _socket_closed then schedules connection_lost

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol."""
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The current protocol."""
        return self._protocol

    # -- asyncio.ReadTransport ---------------------------------------------------------------
    def is_reading(self) -> bool:
        """True unless reading is paused (or the transport is closing)."""
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        """Stop calling the protocol's data callbacks until ``resume_reading()``."""
        if self._closing or not self._reading:
            return
        self._reading = False
        self._sock.pause_reading()

    def resume_reading(self) -> None:
        """Resume the data callbacks after ``pause_reading()``."""
        if self._closing or self._reading:
            return
        self._reading = True
        self._sock.resume_reading()

    # -- asyncio.WriteTransport --------------------------------------------------------------
    def set_write_buffer_limits(
        self, high: Optional[int] = None, low: Optional[int] = None
    ) -> None:
        """Set the flow-control marks (bytes): ``pause_writing()`` above ``high``,
        ``resume_writing()`` at ``low`` (defaults: 64 KiB, and a quarter of high).
        """
        if high is None:
            high = _DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        if not self._sock.closed:
            self._sock.set_write_buffer_limits(high, low)
            if self._sock.write_buffer_size > high:
                self._maybe_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high)."""
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        """Bytes written that have not reached the kernel yet."""
        if self._sock.closed:
            return 0
        return self._sock.write_buffer_size

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Queue ``data``; it is sent at the end of this turn of the loops."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._lost or self._sock.closed:
            self._writes_after_lost += 1
            if self._writes_after_lost == 5:
                log.warning("uvssl.aio: socket.send() raised exception.")
            return
        if not self._sock.write(data):
            self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        """Write each bytes-like object of ``list_of_data``, as one write."""
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Send EOF after the buffered data (plain TCP only; see ``can_write_eof``)."""
        if self._closing or self._eof_sent:
            return
        if isinstance(self._sock, SslSocket):
            raise NotImplementedError("write_eof() is not supported on a TLS transport")
        self._eof_sent = True
        self._sock.shutdown("write")

    def can_write_eof(self) -> bool:
        """True for plain TCP; False for TLS (close_notify ends the session both ways)."""
        return not isinstance(self._sock, SslSocket)

    def abort(self) -> None:
        """Close at once, dropping buffered data; ``connection_lost(None)`` follows."""
        self._force_close(None)

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        kind = "TLS" if isinstance(self._sock, SslSocket) else "TCP"
        return f"<uvssl.aio.Transport {kind} {state} peer={self._peername}>"

