"""Synchronous TLS streams over an existing socket (Allegro CL's make-ssl-*-stream).

``make_ssl_client_stream(sock, ...)`` / ``make_ssl_server_stream(sock, ...)`` return an
``SslStream``, a binary ``io.RawIOBase``: wrap it in ``io.BufferedRWPair`` or
``io.TextIOWrapper`` for buffered or text I/O. The blocking I/O and the crypto run in C
(csrc/stream.c, the same TLS engine as the event loop) with the GIL released, so other Python
threads keep running while a stream waits. A socket timeout (``sock.settimeout``) applies to
each blocking step and raises ``TimeoutError``.

The handshake happens at the first read or write, or at once with ``ssl_do_handshake``.
Closing the stream sends close_notify and closes the socket.

Threads: a stream is not tied to a thread, but one ``SSL`` object must never run in two threads
at once (OpenSSL does not lock it, and the C side runs without the GIL), so a stream serves one
call at a time: a call made while another thread is inside one on the same stream (a read
blocked waiting for data, say) raises ``RuntimeError`` instead of waiting.
"""

from __future__ import annotations

import io
import socket as _socket
import threading
from typing import Any, Optional, Union

from ._args import check_keywords, check_max_depth
from ._uvssl import ffi, lib
from .context import (
    CONTEXT_OPTIONS,
    Context,
    configure_client_ssl,
    verify_mode,
    version_range,
)
from .errors import (
    SslClosed,
    SslFailure,
    TcpSslError,
    captured_tls_error,
    strerror,
    tls_error,
)
from .openssl import error_queue
from .x509 import X509Certificate

__all__ = [
    "SslStream",
    "make_ssl_client_stream",
    "make_ssl_server_stream",
    "ssl_do_handshake",
    "get_ssl_peer_certificate",
    "get_ssl_verify_result",
]

# Options that may override the context for one stream.
_PER_STREAM = ("method", "ciphers", "verify", "max_depth", "min_version", "max_version")
# Every option the make_ssl_*_stream functions take; with context=, the others are the
# context's to fix and an error to repeat.
_STREAM_OPTIONS = CONTEXT_OPTIONS | {"context", "server_hostname"}


class SslStream(io.RawIOBase):
    """A blocking TLS stream over a connected socket (see the module docstring)."""

    def __init__(self, sock: _socket.socket, ctx: Context, server: bool) -> None:
        """Internal: use ``make_ssl_client_stream`` / ``make_ssl_server_stream``."""
        # Held while a call runs OpenSSL on this stream's SSL* (or frees it). Taken without
        # waiting: a second thread gets a RuntimeError at once. Waiting instead would turn the
        # common mistake of a reader thread and a writer thread sharing one stream into a
        # silent deadlock (the reader holds the stream while it blocks in the kernel for data
        # the writer never gets to send), and close() from another thread would wait for
        # that read forever; an error names the problem where it happens.
        self._busy = threading.Lock()
        super().__init__()
        self._sock = sock
        self.context = ctx
        self.server_side = server
        # the peer, for error messages: asked now, since a reset connection cannot tell it
        self._peer: Optional[str] = None
        try:
            addr = sock.getpeername()
            if isinstance(addr, tuple) and len(addr) >= 2:
                self._peer = f"{addr[0]} port {addr[1]}"
        except OSError:
            pass
        err = ffi.new("int *")
        ptr = lib.uvs_stream_new(ctx._ctx, sock.fileno(), int(server), err)
        if ptr == ffi.NULL:
            codes, strings = error_queue()
            raise SslFailure(
                f"cannot create the TLS stream: {strerror(err[0])}",
                what="create",
                codes=codes,
                strings=strings,
            )
        self._s: Any = ptr
        self.server_hostname: Optional[str] = None

    # -- io.RawIOBase --------------------------------------------------------------------------
    def readable(self) -> bool:
        """True: a TLS stream reads."""
        return True

    def writable(self) -> bool:
        """True: a TLS stream writes."""
        return True

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self._sock.fileno()

    def _live(self) -> Any:
        if self._s is None:
            raise ValueError("I/O operation on a closed SslStream")
        return self._s

    def _enter(self, what: str) -> Any:
        """Take the stream for one call (see ``__init__``) and return its native pointer;
        the caller releases ``_busy`` when done.
        """
        if not self._busy.acquire(False):
            raise _busy_error(what)
        if self._s is None:
            self._busy.release()
            raise ValueError("I/O operation on a closed SslStream")
        return self._s

    def _sync_timeout(self, s: Any) -> None:
        t = self._sock.gettimeout()
        lib.uvs_stream_set_timeout(s, -1 if t is None else max(0, int(t * 1000)))

    def readinto(self, b: Any) -> int:
        """Read up to len(b) bytes into b; 0 at the peer's close_notify."""
        s = self._enter("read()")
        try:
            self._sync_timeout(s)
            n = len(memoryview(b).cast("B"))
            if n == 0:
                return 0
            r = lib.uvs_stream_read(s, ffi.from_buffer(b, require_writable=True), n)
            if r < 0:
                raise self._error(int(r), "read")
            return int(r)
        finally:
            self._busy.release()

    def write(self, b: Any) -> int:
        """Write all of b (blocking until the kernel took it); returns len(b)."""
        s = self._enter("write()")
        try:
            self._sync_timeout(s)
            if isinstance(b, str):
                raise TypeError("SslStream.write takes bytes-like data, not str")
            buf = ffi.from_buffer(b)
            r = lib.uvs_stream_write(s, buf, len(buf))
            if r < 0:
                raise self._error(int(r), "write")
            return int(r)
        finally:
            self._busy.release()

    def do_handshake(self) -> None:
        """Run the handshake now (it otherwise happens at the first read or write)."""
        s = self._enter("do_handshake()")
        try:
            self._sync_timeout(s)
            r = lib.uvs_stream_handshake(s)
            if r != 0:
                raise self._error(int(r), "handshake")
        finally:
            self._busy.release()

    def close(self) -> None:
        """Send close_notify (best effort), free the TLS state and close the socket.

        Closing is a call like the others: while another thread is inside one on this stream
        it raises ``RuntimeError``, as the SSL* cannot be freed under that call. To end a read
        blocked in another thread, ``shutdown(socket.SHUT_RDWR)`` the socket the stream was
        made from: the read then returns or fails, and the stream can be closed.
        """
        busy = getattr(self, "_busy", None)
        if busy is not None and getattr(self, "_s", None) is not None:
            if not busy.acquire(False):
                raise _busy_error("close()")
            try:
                s, self._s = self._s, None
                if s is not None:  # else another thread closed it meanwhile
                    try:
                        self._sync_timeout(s)
                        lib.uvs_stream_shutdown(s)
                    finally:
                        lib.uvs_stream_free(s)
                        self._sock.close()
            finally:
                busy.release()
        super().close()

    # -- TLS details -----------------------------------------------------------------------------
    def _ssl(self) -> Any:
        return lib.uvs_stream_ssl(self._live())

    @property
    def version(self) -> Optional[str]:
        """The negotiated protocol, or None before the handshake."""
        s = self._enter("version")
        try:
            v = ffi.string(lib.SSL_get_version(lib.uvs_stream_ssl(s))).decode()
        finally:
            self._busy.release()
        return None if v == "unknown" else str(v)

    @property
    def cipher(self) -> Optional[str]:
        """The negotiated cipher, or None before the handshake."""
        s = self._enter("cipher")
        try:
            c = lib.SSL_get_current_cipher(lib.uvs_stream_ssl(s))
            return None if c == ffi.NULL else str(ffi.string(lib.SSL_CIPHER_get_name(c)).decode())
        finally:
            self._busy.release()

    @property
    def peer_certificate(self) -> Optional[X509Certificate]:
        """The peer's certificate, or None."""
        s = self._enter("peer_certificate")
        try:
            return X509Certificate._peer_of(lib.uvs_stream_ssl(s))
        finally:
            self._busy.release()

    @property
    def verify_result(self) -> int:
        """The certificate verification result (0 is X509_V_OK)."""
        s = self._enter("verify_result")
        try:
            return int(lib.SSL_get_verify_result(lib.uvs_stream_ssl(s)))
        finally:
            self._busy.release()

    @property
    def ssl_pointer(self) -> int:
        """The raw ``SSL*`` as an int."""
        s = self._enter("ssl_pointer")
        try:
            return int(ffi.cast("uintptr_t", lib.uvs_stream_ssl(s)))
        finally:
            self._busy.release()

    # -- errors ----------------------------------------------------------------------------------
    def _error(self, r: int, what: str) -> BaseException:
        if r == lib.UVS_STREAM_ETLS:
            captured = captured_tls_error(lib.uvs_stream_tls_error, self._s)
            return tls_error(what, captured, self.server_side, self.server_hostname, self._peer)
        if r == lib.UV_ETIMEDOUT:
            where = self._peer
            return TimeoutError(
                f"TLS {what}{f' with {where}' if where else ''} timed out: the socket's "
                f"timeout ({self._sock.gettimeout()} s, see settimeout) passed"
            )
        if r == lib.UV_EOF:
            exc = SslClosed(
                f"TLS {what}: the peer{f' ({self._peer})' if self._peer else ''} closed the "
                "connection without close_notify (data may be truncated)",
                what=what,
            )
            exc.truncated = True
            return exc
        with_peer = f" with {self._peer}" if self._peer else ""
        return TcpSslError(
            f"TLS {what}{with_peer} failed: {strerror(r)}",
            what=what,
            code=-r if -4000 < r < 0 else None,
        )


def _busy_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"uvssl: SslStream.{what} was called while another thread is inside a call on the same "
        "stream; a TLS stream serves one thread at a time (give each thread its own "
        "connection, or serialize the calls with a lock)"
    )


def _to_socket(sock: Union[_socket.socket, int]) -> _socket.socket:
    if isinstance(sock, _socket.socket):
        if sock.fileno() < 0:
            raise ValueError("sock is closed")
        return sock
    if isinstance(sock, int) and not isinstance(sock, bool):
        try:
            return _socket.socket(fileno=sock)
        except OSError as e:
            raise ValueError(f"sock {sock} is not a socket: {e}") from None
    raise TypeError(
        f"sock must be a connected socket.socket or a descriptor, not {type(sock).__name__}"
    )


def _make(sock: Any, side: str, opts: dict[str, Any]) -> SslStream:
    public = f"make_ssl_{side}_stream"
    check_keywords(public, opts, _STREAM_OPTIONS)
    s = _to_socket(sock)
    context = opts.pop("context", None)
    server_hostname = opts.pop("server_hostname", None)
    if server_hostname is not None and side != "client":
        raise ValueError("server_hostname is for client streams")
    if context is not None:
        if not isinstance(context, Context):
            raise TypeError(f"context must be a uvssl.Context, not {type(context).__name__}")
        fixed = [k for k in opts if k not in _PER_STREAM]
        if fixed:
            raise ValueError(
                f"{public}(): {', '.join(fixed)} cannot be given with context= (the context "
                f"fixes {'it' if len(fixed) == 1 else 'them'}; per stream, only "
                f"{', '.join(_PER_STREAM)} may be given)"
            )
        ctx = context
        overrides = opts
    else:
        overrides = {}
        ctx = Context._build(side, **opts)
    stream = SslStream(s, ctx, side == "server")
    try:
        _apply_overrides(stream, ctx, overrides, server_hostname)
        ctx._configure_ssl(stream._ssl())
    except BaseException:
        lib.uvs_stream_free(stream._s)
        stream._s = None
        raise
    return stream


def _apply_overrides(
    stream: SslStream, ctx: Context, o: dict[str, Any], server_hostname: Optional[str]
) -> None:
    ssl = stream._ssl()
    if "method" in o or "min_version" in o or "max_version" in o:
        lo, hi = version_range(o.get("min_version"), o.get("max_version"), o.get("method"))
        if (
            lib.SSL_set_min_proto_version(ssl, lo) != 1
            or lib.SSL_set_max_proto_version(ssl, hi) != 1
        ):
            raise SslFailure("cannot set the TLS version range", what="configure")
    if "ciphers" in o:
        c = o["ciphers"]
        if not isinstance(c, str):
            raise TypeError(f"ciphers must be a str, not {type(c).__name__}")
        if lib.SSL_set_cipher_list(ssl, c.encode("ascii")) != 1:
            codes, strings = error_queue()
            raise SslFailure(
                f"invalid ciphers={c!r}: OpenSSL knows no TLS 1.2 cipher in it",
                what="configure",
                codes=codes,
                strings=strings,
            )
    verify = o.get("verify")
    if "verify" in o:
        lib.SSL_set_verify(ssl, verify_mode(verify, stream.server_side), ffi.NULL)
    if "max_depth" in o:
        lib.SSL_set_verify_depth(ssl, check_max_depth(o["max_depth"]))
    if server_hostname is not None:
        if not isinstance(server_hostname, str) or not server_hostname:
            raise TypeError("server_hostname must be a non-empty str")
        verifying = bool(lib.SSL_get_verify_mode(ssl) & lib.SSL_VERIFY_PEER)
        stream.server_hostname = server_hostname
        configure_client_ssl(ssl, ctx, server_hostname, verifying, None)


def make_ssl_client_stream(sock: Union[_socket.socket, int], **opts: Any) -> SslStream:
    """A client TLS stream over a connected socket.

    Options: those of ``Context.client`` (when no ``context`` is given), or ``context=`` plus
    the per-stream overrides ``method``, ``min_version``, ``max_version``, ``ciphers``,
    ``verify`` and ``max_depth``; and ``server_hostname`` (SNI and host name check; without it
    only the chain is verified).
    """
    return _make(sock, "client", dict(opts))


def make_ssl_server_stream(sock: Union[_socket.socket, int], **opts: Any) -> SslStream:
    """A server TLS stream over a connected socket (options as ``make_ssl_client_stream``,
    with ``Context.server``'s: ``certificate`` and ``key`` are usually needed).
    """
    return _make(sock, "server", dict(opts))


def ssl_do_handshake(stream: SslStream) -> None:
    """Run the stream's handshake now."""
    if not isinstance(stream, SslStream):
        raise TypeError(f"stream must be an SslStream, not {type(stream).__name__}")
    stream.do_handshake()


def get_ssl_peer_certificate(stream: SslStream) -> Optional[X509Certificate]:
    """The peer's certificate (after the handshake), or None."""
    if not isinstance(stream, SslStream):
        raise TypeError(f"stream must be an SslStream, not {type(stream).__name__}")
    return stream.peer_certificate


def get_ssl_verify_result(stream: SslStream) -> int:
    """The certificate verification result of the stream (0 is X509_V_OK)."""
    if not isinstance(stream, SslStream):
        raise TypeError(f"stream must be an SslStream, not {type(stream).__name__}")
    return stream.verify_result
