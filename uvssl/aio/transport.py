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
from typing import Any, Callable, Optional, Union

from .._uvssl import ffi, lib
from ..errors import SocketError, SslClosed, TcpEof
from ..tcp import Socket
from ..tls import SslSocket

log = logging.getLogger("uvssl")

_DEFAULT_HIGH = 64 * 1024
_conn_write = lib.uvs_conn_write
_memmove = ffi.memmove
_from_buffer = ffi.from_buffer
_unpack = ffi.unpack


class _TellsTransport:
    """Mixed into the socket classes below: a closed socket tells its transport."""

    _aio: Optional[Transport] = None

    def _on_closed(self) -> None:
        super()._on_closed()  # type: ignore[misc]
        t = self._aio
        if t is not None:
            t._socket_closed()


class _AioSocket(_TellsTransport, Socket):
    """A ``Socket`` that tells its transport when it has closed."""


class _AioSslSocket(_TellsTransport, SslSocket):
    """An ``SslSocket`` that tells its transport when it has closed (and ``start_tls`` when
    its handshake is done).
    """

    _aio_handshake: Optional[Callable[[], None]] = None

    def _on_connected(self) -> None:
        super()._on_connected()
        done = self._aio_handshake
        if done is not None:
            self._aio_handshake = None
            done()


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
        return _stdlib_cert_dict(cert)

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


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _long_name(short: str) -> str:
    """OpenSSL's long name of an attribute ("CN" -> "commonName"), as the stdlib gives it."""
    nid = lib.OBJ_sn2nid(short.encode())
    if nid == 0:  # NID_undef: an OID without a short name, shown dotted either way
        return short
    name = lib.OBJ_nid2ln(nid)
    return short if name == ffi.NULL else str(ffi.string(name).decode())


def _asn1_time(when: Any) -> str:
    """A time as OpenSSL prints it ("Jan  1 00:00:00 2000 GMT"), in English in any locale."""
    return f"{_MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S} {when.year} GMT"


def _stdlib_cert_dict(cert: Any) -> dict[str, Any]:
    """``cert`` (an ``X509Certificate``) as ``ssl.SSLSocket.getpeercert()`` gives one: long
    attribute names, the name's entries in the certificate's order (the most general first),
    the serial number in upper-case hex of whole bytes, times as OpenSSL prints them.
    """

    def name(pairs: Any) -> tuple[tuple[tuple[str, str]], ...]:
        # X509Certificate lists the most specific entry first (RFC 2253): reversed here
        return tuple(((_long_name(k), v),) for k, v in reversed(pairs))

    serial = format(cert.serial_number, "X")
    sans = tuple(
        (kind, value.upper() if kind == "IP Address" and ":" in value else value)
        for kind, value in cert.subject_alt_names
    )
    out: dict[str, Any] = {
        "subject": name(cert.subject),
        "issuer": name(cert.issuer),
        "version": cert.version,
        "serialNumber": serial if len(serial) % 2 == 0 else "0" + serial,
        "notBefore": _asn1_time(cert.not_before),
        "notAfter": _asn1_time(cert.not_after),
    }
    if sans:
        out["subjectAltName"] = sans
    return out


def _cipher_tuple(sock: SslSocket) -> Optional[tuple[str, str, int]]:
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
        self._writable = True  # write() may go straight to the socket: not lost, no EOF sent
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4
        self._sslcontext = sslcontext
        self._server_side = server_side
        self._ssl_object: Optional[SslObject] = None
        self._peername: Any = None
        self._sockname: Any = None
        sock._aio = self
        self._set_read_path()
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

    def _on_data_received(self, sock: Any, data: bytes) -> None:
        # the read callback for a Protocol: the socket delivers nothing once closed, and a
        # transport is lost only with its socket closed or handed over (start_tls)
        try:
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001
            self._fatal_error(exc, "protocol.data_received() call failed")

    def _set_read_path(self) -> None:
        sock = self._sock
        if self._buffered:
            # reads skip the batch and are copied from uvssl's read buffer into the
            # protocol's (_on_data_into); data kept while paused comes back as bytes (_on_data)
            sock.read_cb = self._on_data
            sock._deliver_into = self._on_data_into
        else:
            sock.read_cb = self._on_data_received
            sock._deliver_into = None
        sock._sync_flags()

    def _on_data_into(self, ptr: Any, n: int) -> None:
        if self._lost:
            return
        proto: Any = self._protocol
        off = 0
        try:
            while off < n:
                dest = proto.get_buffer(n - off)
                m = min(memoryview(dest).nbytes, n - off)
                if m == 0:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                _memmove(dest, ptr + off, m)
                off += m
                proto.buffer_updated(m)
                if self._lost or self._closing:
                    return
                if not self._reading and off < n:  # paused: the rest waits for resume_reading
                    self._keep(_unpack(ptr + off, n - off))
                    return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001
            self._fatal_error(exc, "protocol.buffer_updated() call failed")

    def _keep(self, rest: bytes) -> None:
        held = self._sock._held
        if held is not None:
            held.append(rest)

    def _on_data(self, sock: Any, data: bytes) -> None:
        # a BufferedProtocol's data kept while reading was paused, now delivered
        self._on_data_into(_from_buffer(data), len(data))

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
        self._writable = False
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
        self._writable = False
        if self._host.closed:
            return  # the asyncio loop is closing: nothing more runs
        self._aloop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Optional[BaseException]) -> None:
        try:
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)
        finally:
            server = self._server
            self._server = None
            if server is not None:
                server._detach(self)

    def _hand_over(self) -> Any:
        """``start_tls``: the socket leaves this transport for a new one; this one is done
        (closing, and its protocol is not told: the new transport carries on).
        """
        sock = self._sock
        self._lost = True
        self._closing = True
        self._writable = False
        sock._aio = None
        self._host.transports.discard(self)
        server, self._server = self._server, None
        if server is not None:
            server._detach(self)
        return server

    def _host_closing(self) -> None:
        """The asyncio loop is closing: the host closes the socket; the protocol is not told."""
        self._lost = True
        self._closing = True
        self._writable = False
        server, self._server = self._server, None
        if server is not None:
            server._detach(self)

    # -- asyncio.BaseTransport ---------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Connection details: "peername", "sockname", and on TLS
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
        self._writable = False
        self._sock.close()  # may finish at once: _socket_closed then schedules connection_lost

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol."""
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        if not self._lost:
            self._set_read_path()

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
        if self._writable and type(data) is bytes and data:
            # the common case in one native call: Socket.write's checks are this
            # transport's state (_writable) and the C side's own (thread, closing)
            sock = self._sock
            conn = sock._conn
            if conn is not None:
                r = _conn_write(sock._loop_ptr, conn, data, len(data))
                if r == 0:
                    return
                if r > 0:  # above the high-water mark
                    self._maybe_pause()
                    return
        self._write_checked(data)

    def _write_checked(self, data: Union[bytes, bytearray, memoryview]) -> None:
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
        self._writable = False
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
