"""TCP sockets and servers.

A ``Socket`` is a thin Python face on a native connection (csrc/conn.c). A TLS socket
(``SslSocket``) is the same object with a TLS engine attached, which is why every function
here accepts it.

Life of a socket. Every socket is made by ``new_socket``, whether it connects, adopts a
descriptor or was accepted: it makes the object (whose ``__init__`` sets every attribute in
one fixed order, so all sockets share one key table), gives the native connection the
object's cffi handle and puts the socket in ``loop._live``. It stays there until the native
side reports it closed (``_on_closed``, from the dispatcher's CLOSED event, or at once from
``close()`` when nothing was left to flush); the peer and local addresses are copied out then,
so they stay readable after the close.

Sockets that connect later. ``init_tcp_socket`` / ``init_tcp_ssl_socket`` make the object
without any native connection; its ``_init`` (an ``Unconnected``) keeps the writes made
meanwhile and, for TLS, how to start the engine. ``connect_tcp_socket`` gives it the connection
(``start_connection``, the path ``tcp_connect`` takes too), attaches TLS, and hands the kept
writes to C, which holds them until the connection (and handshake) is up. Nothing native
exists before that, so closing such a socket just marks it closed: no event can reach it.

Reads. The dispatchers (uvssl/_dispatch.py) hand data to ``sock._deliver``: the ``read_cb``
itself, the stream's feed in stream mode, or a discard. Small reads of one loop turn arrive
together in one batch; data for a socket paused earlier in that turn waits in ``_held`` until
``resume_reading()``.

Writes. ``write`` hands the bytes to C, which checks the calling thread (the loop is passed),
buffers them and flushes when the current callback returns, so several writes in one callback
leave in one syscall. ``write_cb`` and ``drain_cb`` events are asked for only while they are
set (the connection flags), so a socket without them costs no call into Python per write.

Servers. ``TcpServer`` wraps each accepted connection (``_accept``). ``shutdown`` stops
listening, closes every socket it accepted as soon as its writes are flushed (``_server``
tells which ones), aborts the rest at the timeout and calls ``done_cb`` when the last is gone.
"""

from __future__ import annotations

import collections
import errno as _errno
import socket as _socket
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from ._args import (
    check_backlog,
    check_byte_count,
    check_callable,
    check_callbacks,
    check_data,
    check_host,
    check_hs_timeout,
    check_port,
    check_seconds,
    check_thread,
    check_timeout,
    get_ident,
    keyword_hints,
)
from ._uvssl import ffi, lib
from .errors import (
    DnsError,
    SocketClosed,
    SocketError,
    TcpEof,
    TcpError,
    TcpRefused,
    TcpTimeout,
    errname,
    errno_of,
    strerror,
)
from .loop import Loop, get_loop
from .proxy import configure, decode_tlvs, parse_sources, proxy_error, proxy_tlvs

__all__ = [
    "Socket",
    "TcpServer",
    "AsyncStream",
    "tcp_connect",
    "tcp_server",
    "tcp_open",
    "init_tcp_socket",
    "connect_tcp_socket",
    "write_socket_data",
    "close_socket",
    "close_tcp_server",
]

BytesLike = Union[bytes, bytearray, memoryview]
ReadCb = Callable[..., Any]
#: event_cb(ev): every error and the peer's EOF is a SocketError (see callbacks.py)
EventCb = Callable[[SocketError], Any]
#: a callback that gets the socket; Any, so that a TLS socket's callbacks may take SslSocket
SocketCb = Callable[[Any], Any]

_ACTIONS = {
    lib.UVS_ACT_RESOLVE: "resolve",
    lib.UVS_ACT_CONNECT: "connect",
    lib.UVS_ACT_READ: "read",
    lib.UVS_ACT_WRITE: "write",
    lib.UVS_ACT_SHUTDOWN: "shutdown",
    lib.UVS_ACT_ACCEPT: "accept",
    lib.UVS_ACT_HANDSHAKE: "handshake",
    lib.UVS_ACT_TLS_READ: "read",
    lib.UVS_ACT_TLS_WRITE: "write",
}


def peer_name(sock: Any) -> Optional[str]:
    """The peer of ``sock`` as messages name it, ``"HOST port N"``, or None when unknown.

    A client names the host it was asked to reach, followed by the address it reached (or
    tried last) when that differs; an accepted connection names the address it came from.
    Called only to build an error, so the cost of asking the kernel does not matter.
    """
    target = getattr(sock, "_target", None)
    ip: Optional[str] = None
    port = 0
    if isinstance(sock, Socket):
        try:
            ip, port = sock._address(1)
        except SocketError:
            ip = None
    if target is not None:
        where = f"{target[0]} port {target[1]}"
        return where + (f" ({ip})" if ip is not None and ip != target[0] else "")
    return None if ip is None else f"{ip} port {port}"


def socket_error_for(status: int, action: int, sock: Any) -> SocketError:
    """Build the exception for a native error code.

    Errors on a connection name its peer: a client's, the host and port it tried (and the
    address, when the host was a name that resolved).
    """
    act = _ACTIONS.get(action, "")
    msg = f"{strerror(status)} ({errname(status)})"
    code = errno_of(status)
    if action == lib.UVS_ACT_RESOLVE:
        target = getattr(sock, "_target", None)
        name = f"{target[0]!r} (port {target[1]})" if target else "the host"
        return DnsError(
            f"could not resolve {name}: {msg}; check the host name",
            code=code,
            action=act,
            socket=sock,
        )
    where = peer_name(sock)
    if where is not None and action == lib.UVS_ACT_CONNECT:
        if code == _errno.ECONNREFUSED:
            return TcpRefused(
                f"cannot connect to {where}: refused, nothing is listening there",
                code=code,
                action=act,
                socket=sock,
            )
        msg = f"cannot connect to {where}: {msg}"
    elif where is not None:
        msg = f"connection with {where}: {msg}"
    if code == _errno.ECONNREFUSED:
        return TcpRefused(f"connection refused: {msg}", code=code, action=act, socket=sock)
    if code == _errno.ETIMEDOUT:
        return TcpTimeout(msg, code=code, action=act, socket=sock)
    return TcpError(msg, code=code, action=act, socket=sock)


class AsyncStream:
    """A non-blocking stream over a socket's buffered input (cl-async's stream mode).

    ``read(n)`` returns what is buffered (up to n bytes; all with n < 0) without blocking;
    ``write(data)`` writes to the socket. The input buffer is drained only by reading.

    For line and frame protocols, ``readline``, ``read_until`` and ``read_exactly`` return one
    complete item or None while it has not all arrived, and ``unread`` pushes bytes back in
    front. A ``read_cb`` in stream mode typically loops until they return None.

    Theory of operation. Input is one ``bytearray``: arrivals are appended (``_feed``, one
    ``+=`` on the per-read path) and items are taken from the front (``del buf[:n]``, which
    CPython does by moving the array's start, amortised O(n)). So that waiting for a long item
    costs O(its length) in total rather than a rescan of the whole buffer on every arrival,
    the stream remembers the last separator searched for (``_sep``) and the offset from which
    an occurrence of it is still possible (``_from``): every earlier start was ruled out. A
    search begins there and, when it fails, moves ``_from`` to ``len(sep) - 1`` bytes before
    the end of what it scanned, so a separator split across arrivals is still found. Taking
    bytes from the front moves ``_from`` back by as many; ``unread`` and another separator
    start over at 0. ``_scanned`` counts the bytes searched, for tests.
    """

    __slots__ = ("socket", "_buf", "_sep", "_from", "_scanned")

    def __init__(self, socket: Socket) -> None:
        """Wrap ``socket``'s input (created by uvssl for stream-mode sockets)."""
        self.socket = socket
        self._buf = bytearray()
        self._sep = b""  # the separator the memo below is for
        self._from = 0  # no occurrence of _sep starts before this offset
        self._scanned = 0  # bytes searched so far (a test counts the work with it)

    def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` buffered bytes (all of them when ``n`` < 0); b"" if none."""
        check_thread(self.socket._loop, "AsyncStream.read()")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 0 or n >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
            self._from = 0
            return out
        return self._take(n)

    def _take(self, n: int) -> bytes:
        # the first n bytes (n <= len(buf)); the search memo moves with the front
        buf = self._buf
        out = bytes(buf[:n])
        del buf[:n]
        self._from = self._from - n if self._from > n else 0
        return out

    def read_until(self, separator: BytesLike, limit: int = 65536) -> Optional[bytes]:
        """Return the buffered bytes up to and including the first ``separator``, or None
        while no separator has arrived.

        ``limit`` bounds the item without its separator: when the separator does not start
        within the first ``limit`` + 1 bytes (so the item would be longer than
        ``limit`` + ``len(separator)`` bytes), ``ValueError`` is raised as soon as that is
        known, and the buffer is left as it was (``read`` can then discard or take the data).
        Each call searches only what arrived since the last one.
        """
        check_thread(self.socket._loop, "AsyncStream.read_until()")
        sep = _check_separator(separator)
        return self._until(sep, _check_limit(limit))

    def readline(self, limit: int = 65536) -> Optional[bytes]:
        r"""Return one line, with its ``b"\n"``, or None while it is incomplete.

        ``read_until(b"\n", limit)``: a line longer than ``limit`` bytes without its newline
        raises ``ValueError`` and leaves the buffer as it was.
        """
        check_thread(self.socket._loop, "AsyncStream.readline()")
        return self._until(b"\n", _check_limit(limit))

    def _until(self, sep: bytes, limit: int) -> Optional[bytes]:
        buf = self._buf
        size = len(buf)
        seplen = len(sep)
        if sep != self._sep:
            self._sep = sep
            self._from = 0
        start = self._from
        end = limit + seplen  # an acceptable separator ends at or before this offset
        if end > size:
            end = size
        if end - start >= seplen:
            self._scanned += end - start
            i = buf.find(sep, start, end)
            if i >= 0:
                self._from = 0
                return self._take(i + seplen)
            self._from = end - seplen + 1
        if size >= limit + seplen:
            raise ValueError(
                f"stream item over the limit: no {sep!r} within the first {limit + seplen} "
                f"bytes buffered (limit={limit} bytes before the separator); the buffer is "
                "unchanged: read() to take or discard them, or pass a larger limit"
            )
        return None

    def read_exactly(self, n: int) -> Optional[bytes]:
        """Return exactly ``n`` bytes once that many are buffered, else None (nothing taken)."""
        check_thread(self.socket._loop, "AsyncStream.read_exactly()")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n > len(self._buf):
            return None
        return self._take(n)

    def unread(self, data: BytesLike) -> None:
        """Push ``data`` back in front of the buffered input: the next read returns it first.

        ``data`` is bytes-like; empty data changes nothing. Costs a copy of what is buffered.
        """
        check_thread(self.socket._loop, "AsyncStream.unread()")
        if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data must be bytes-like (bytes, bytearray or memoryview), not "
                f"{type(data).__name__}"
            )
        if len(data):
            self._buf[:0] = data
            self._from = 0

    def write(self, data: BytesLike) -> bool:
        """Write to the socket; see ``Socket.write``."""
        sock = self.socket
        if get_ident() != sock._loop.thread:
            sock._loop._foreign("AsyncStream.write()")
        return sock.write(data)

    @property
    def available(self) -> int:
        """How many bytes are buffered."""
        check_thread(self.socket._loop, "AsyncStream.available")
        return len(self._buf)

    def close(self) -> None:
        """Close the socket (gracefully)."""
        check_thread(self.socket._loop, "AsyncStream.close()")
        self.socket.close()

    def _feed(self, sock: Socket, data: bytes) -> None:
        self._buf += data
        cb = sock._read_cb
        if cb is not None:
            cb(sock, self)


def _check_separator(separator: Any) -> bytes:
    if isinstance(separator, str) or not isinstance(separator, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"separator must be bytes-like (bytes, bytearray or memoryview), not "
            f"{type(separator).__name__}"
        )
    sep = bytes(separator)
    if not sep:
        raise ValueError("separator must not be empty")
    return sep


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit <= 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    return limit


class Socket:
    """A TCP connection. See ``tcp_connect``, ``tcp_server`` and ``tcp_open``.

    Attributes:
        data: a free slot for the application.
        read_cb, event_cb, connect_cb, write_cb, drain_cb: the callbacks; assignable.
        stream: the ``AsyncStream`` in stream mode, else None.

    """

    def __init__(
        self,
        loop: Loop,
        read_cb: Optional[ReadCb],
        event_cb: Optional[EventCb],
        connect_cb: Optional[SocketCb],
        write_cb: Optional[SocketCb],
        stream: bool,
        data: Any = None,
    ) -> None:
        """Internal: every socket is made by ``new_socket`` (for the public functions)."""
        # Every attribute is set here, always in this order: CPython then keeps one key table
        # for all sockets and each socket holds only its values. Attributes added later, or in
        # another order, give each socket a dictionary of its own (about 0.8 KiB more for
        # every connection).
        self._loop = loop
        self._conn: Any = None
        self._loop_ptr = loop._ptr  # the native loop, for write()'s thread check
        self._handle = ffi.new_handle(self)
        self._closed = False
        self._connected = False
        self._flags = 0
        # data that reached a paused socket in the loop turn that paused it (see resume_reading)
        self._held: Optional[collections.deque[bytes]] = None
        self._server: Optional[TcpServer] = None  # the server that accepted it
        self._target: Optional[tuple[str, int]] = None  # (host, port) a client connects to
        self._addrs: Any = None  # the addresses, kept from the native side at the close
        self._init: Optional[Unconnected] = None  # made by init_tcp_socket/init_tcp_ssl_socket
        self._proxy: Optional[bytes] = None  # the PROXY header's v2 TLVs (uvssl/proxy.py)
        self.data = data
        self._read_cb = read_cb
        self.event_cb = event_cb
        self.connect_cb = connect_cb
        self._write_cb = write_cb
        self._drain_cb: Optional[SocketCb] = None
        self.stream: Optional[AsyncStream] = AsyncStream(self) if stream else None
        self._deliver: Callable[[Socket, Any], Any] = self._pick_deliver()
        self._init_own()

    def _init_own(self) -> None:
        """A subclass sets its own attributes here, right after the base's (see above)."""

    # -- wiring ------------------------------------------------------------------------------
    def _pick_deliver(self) -> Callable[[Socket, Any], Any]:
        # what the read dispatcher calls with (socket, bytes): the read_cb itself when it can
        if self.stream is not None:
            return self.stream._feed
        return self._read_cb if self._read_cb is not None else _discard

    @property
    def read_cb(self) -> Optional[ReadCb]:
        """Called as ``read_cb(socket, data)`` (``read_cb(socket, stream)`` in stream mode)."""
        return self._read_cb

    @read_cb.setter
    def read_cb(self, cb: Optional[ReadCb]) -> None:
        check_thread(self._loop, "read_cb (assignment)", self)
        check_callable("read_cb", cb)
        self._read_cb = cb
        self._deliver = self._pick_deliver()

    def _attach(self, conn: Any, read_timeout: float = 0.0, write_timeout: float = 0.0) -> None:
        """Bind the native connection (see ``new_socket``), with its timeouts (0: none)."""
        self._conn = conn
        self._loop._live.add(self)
        self._sync_flags()
        if read_timeout or write_timeout:
            lib.uvs_conn_set_timeouts(conn, read_timeout, write_timeout)

    #: Set (to ``fn(pointer, length)``) by an embedding that copies each read straight from
    #: the native read buffer into a buffer of its own (uvssl.aio's BufferedProtocol
    #: transports): the socket's reads then skip the batch and arrive one by one, as cffi
    #: pointers valid during the call. None: reads arrive as bytes through ``read_cb``.
    _deliver_into: Optional[Callable[[Any, int], Any]] = None

    def _sync_flags(self) -> None:
        flags = 0
        if self._deliver_into is not None:
            flags |= _CF_UNBATCHED
        if self._write_cb is not None:
            flags |= _CF_NOTIFY_WRITTEN
        if self._drain_cb is not None:
            flags |= _CF_NOTIFY_DRAIN
        if self._conn is not None and flags != self._flags:
            lib.uvs_conn_set_flags(self._conn, flags)
        self._flags = flags

    @property
    def write_cb(self) -> Optional[SocketCb]:
        """Called with the socket when everything written so far has reached the kernel."""
        return self._write_cb

    @write_cb.setter
    def write_cb(self, cb: Optional[SocketCb]) -> None:
        check_thread(self._loop, "write_cb (assignment)", self)
        check_callable("write_cb", cb)
        self._write_cb = cb
        self._sync_flags()

    @property
    def drain_cb(self) -> Optional[SocketCb]:
        """Called with the socket when its write buffer falls to the low-water mark."""
        return self._drain_cb

    @drain_cb.setter
    def drain_cb(self, cb: Optional[SocketCb]) -> None:
        check_thread(self._loop, "drain_cb (assignment)", self)
        check_callable("drain_cb", cb)
        self._drain_cb = cb
        self._sync_flags()

    def _live_conn(self, action: str) -> Any:
        conn = self._conn
        if conn is None and not self._closed and self._init is not None:
            raise SocketError(
                f"socket is not connected yet; cannot {action}: connect_tcp_socket() it first",
                code=_errno.ENOTCONN,
                action=action,
                socket=self,
            )
        if conn is None or self._closed:
            raise SocketClosed(
                f"socket is closed; cannot {action}",
                action=action,
                socket=self,
                identifier="shutdown",
            )
        return conn

    # -- state -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the socket was closed (by the application, an error, or the peer)."""
        return self._closed

    @property
    def connected(self) -> bool:
        """True once the connection (and TLS handshake, if any) is up and until it closes."""
        return self._connected and not self._closed

    @property
    def loop(self) -> Loop:
        """The loop this socket belongs to."""
        return self._loop

    def fileno(self) -> int:
        """The OS socket descriptor (owned by uvssl: do not close it)."""
        check_thread(self._loop, "fileno()", self)
        r = lib.uvs_conn_fileno(self._live_conn("get its descriptor"))
        if r < 0:
            raise SocketError(
                f"cannot get the socket's descriptor: {strerror(r)}",
                code=errno_of(r),
                action="fileno",
                socket=self,
            )
        return int(r)

    def _address(self, peer: int) -> tuple[str, int]:
        host = ffi.new("char[]", 64)
        port = ffi.new("int *")
        conn = self._conn
        if conn is not None:
            r = lib.uvs_conn_address(conn, peer, host, 64, port)
        elif self._addrs is not None:  # kept from when it was open
            r = lib.uvs_addr_format(
                ffi.addressof(self._addrs, "peer" if peer else "local"), host, 64, port
            )
        else:
            r = lib.UV_ENOTCONN
        if r != 0:
            which = "peer" if peer else "local"
            raise SocketError(
                f"the {which} address is not known: the connection "
                + ("never got that far" if r == lib.UV_ENOTCONN else f"failed ({strerror(r)})"),
                code=errno_of(r),
                action="getpeername" if peer else "getsockname",
                socket=self,
            )
        return ffi.string(host).decode("ascii"), int(port[0])

    @property
    def local_address(self) -> tuple[str, int]:
        """(host, port) of this end; still readable after the socket closed."""
        check_thread(self._loop, "local_address", self)
        return self._address(0)

    @property
    def remote_address(self) -> tuple[str, int]:
        """(host, port) of the peer; still readable after the socket closed (for a client
        whose connection failed: the address it tried last).
        """
        check_thread(self._loop, "remote_address", self)
        return self._address(1)

    @property
    def proxy_address(self) -> Optional[tuple[str, int]]:
        """(host, port) of the proxy (the real TCP peer) for a connection accepted by a server
        with ``proxy_protocol=True``, whose ``remote_address`` is then the client's from the
        header; None for any other socket.
        """
        if self._proxy is None:
            return None
        check_thread(self._loop, "proxy_address", self)
        host = ffi.new("char[]", 64)
        port = ffi.new("int *")
        conn = self._conn
        if conn is not None:
            r = lib.uvs_conn_proxy_address(conn, host, 64, port)
        else:  # kept from when it was open
            r = lib.uvs_addr_format(ffi.addressof(self._addrs, "proxy"), host, 64, port)
        if r != 0:
            return None
        return ffi.string(host).decode("ascii"), int(port[0])

    @property
    def proxy_tlvs(self) -> Optional[dict[Union[str, int], Any]]:
        """The PROXY protocol v2 header's TLVs as a dict (see the README: ``"alpn"``,
        ``"authority"``, ``"unique_id"``, ``"ssl"``, unknown types by number); empty for a v1
        header or a v2 header without TLVs; None when the socket was not accepted through
        the PROXY protocol.
        """
        proxy = self._proxy
        return None if proxy is None else decode_tlvs(proxy)

    @property
    def write_buffer_size(self) -> int:
        """Bytes accepted by ``write`` that have not reached the kernel yet."""
        check_thread(self._loop, "write_buffer_size", self)
        if self._conn is None:
            return 0
        return int(lib.uvs_conn_write_buffer_size(self._conn))

    # -- I/O ---------------------------------------------------------------------------------
    def write(self, data: BytesLike) -> bool:
        """Queue ``data``; it leaves when the current callback returns.

        Returns True while the write buffer is at or below its high-water mark and False once
        it is above it: a writer should then stop and wait for ``drain_cb``. On a socket from
        ``init_tcp_socket`` not connected yet, the data waits and leaves once it is.
        Raises ``SocketClosed`` on a closed socket, and on a TLS socket whose session has
        ended (the peer's close_notify answered) until ``detach_ssl`` makes it plaintext.
        Raises ``RuntimeError`` when called from a thread other than the loop's.
        """
        conn = self._conn
        if conn is None or self._closed:
            check_thread(self._loop, "write()", self)
            init = self._init
            if init is not None and init.writes is not None and not self._closed:
                if self._loop._ptr is None:
                    raise SocketClosed(
                        "the event loop has ended; cannot write",
                        action="write",
                        socket=self,
                        identifier="shutdown",
                    )
                init.queue(data)  # not connected yet: sent once it is (TLS: after the handshake)
                return True
            self._live_conn("write")  # raises SocketClosed
        buf = data if type(data) is bytes else check_data("data", data)
        # The thread check runs in C, where it costs a few instructions instead of the 500 it
        # costs here per request: the loop is passed, and a thread that does not run it gets
        # UVS_EFOREIGN before the connection is touched. (The loop's memory outlives every
        # connection that has a Socket: the loop is freed after all of them are closed.)
        r: int = _conn_write(self._loop_ptr, conn, buf, len(buf))
        if not r:
            return True
        if r < 0:
            if r == _E_FOREIGN:
                check_thread(self._loop, "write()", self)  # raises RuntimeError
                reason = "the event loop has ended; cannot write"  # meanwhile: nothing ran
            elif r == _UV_ESHUTDOWN:
                reason = (
                    "the TLS session has ended (close_notify both ways); detach_ssl() first to "
                    "go on in plaintext"
                )
            else:
                reason = f"socket is closing; cannot write ({strerror(r)})"
            raise SocketClosed(
                reason,
                action="write",
                socket=self,
                identifier="shutdown",
            )
        return False  # above the high-water mark

    def close(self, force: bool = False) -> None:
        """Close the socket. Graceful by default: pending writes are flushed first (and
        close_notify sent on TLS), and a failure to flush them still reaches ``event_cb``;
        ``force=True`` drops them and closes at once. With nothing left to flush (or forced),
        the socket is finished when this returns: no event reaches it any more.
        """
        check_thread(self._loop, "close()", self)
        if self._closed:
            return
        self._closed = True
        # with nothing left to flush, the native side is done with this socket at once: no
        # closed event comes back (one call into Python less per connection)
        if self._conn is not None and lib.uvs_conn_release(self._conn, 1 if force else 0):
            self._on_closed()

    def shutdown(self, how: str = "write") -> None:
        """Half-close: after pending writes, send FIN; reading goes on."""
        check_thread(self._loop, "shutdown()", self)
        if how != "write":
            raise ValueError(f"how must be 'write' (only the write side can be shut), got {how!r}")
        r = lib.uvs_conn_shutdown(self._live_conn("shut down"))
        if r != 0:
            raise SocketClosed(
                f"cannot shut down the write side: {strerror(r)}", action="shutdown", socket=self
            )

    def set_options(
        self, *, nodelay: Optional[bool] = None, keepalive: Union[bool, float, None] = None
    ) -> None:
        """Set TCP_NODELAY (on by default) and SO_KEEPALIVE (``True``, or the idle time in
        seconds before probes start; ``False`` turns it off).
        """
        check_thread(self._loop, "set_options()", self)
        conn = self._live_conn("set options")
        if nodelay is not None:
            if not isinstance(nodelay, bool):
                raise TypeError(f"nodelay must be a bool, not {type(nodelay).__name__}")
            r = lib.uvs_conn_nodelay(conn, int(nodelay))
            if r != 0:
                raise SocketError(
                    f"cannot set TCP_NODELAY: {strerror(r)}",
                    code=errno_of(r),
                    action="setsockopt",
                    socket=self,
                )
        if keepalive is not None:
            if keepalive is True:
                on, secs = 1, 60
            elif keepalive is False:
                on, secs = 0, 0
            else:
                secs = int(check_seconds("keepalive", keepalive, allow_zero=False))
                on, secs = 1, max(1, secs)
            r = lib.uvs_conn_keepalive(conn, on, secs)
            if r != 0:
                raise SocketError(
                    f"cannot set SO_KEEPALIVE: {strerror(r)}",
                    code=errno_of(r),
                    action="setsockopt",
                    socket=self,
                )

    def set_timeouts(self, read_timeout: Optional[float], write_timeout: Optional[float]) -> None:
        """Change the read/write timeouts (seconds; None disables)."""
        check_thread(self._loop, "set_timeouts()", self)
        r_s = check_timeout("read_timeout", read_timeout)
        w_s = check_timeout("write_timeout", write_timeout)
        r = lib.uvs_conn_set_timeouts(self._live_conn("set timeouts"), r_s, w_s)
        if r != 0:
            raise ValueError(f"cannot set the timeouts: {strerror(r)}")

    def pause_reading(self) -> None:
        """Stop reading until ``resume_reading()``; the kernel buffers, then the peer waits.

        No ``read_cb`` runs for this socket from now on until it resumes. Data already read in
        the same loop turn (small reads reach the application once per turn) is kept for it.
        """
        check_thread(self._loop, "pause_reading()", self)
        lib.uvs_conn_pause(self._live_conn("pause reading"))
        if self._held is None:
            self._held = collections.deque()

    def resume_reading(self) -> None:
        """Start reading again after ``pause_reading()``.

        Data kept since the pause is delivered first, from inside this call; if ``read_cb``
        pauses the socket again meanwhile, the rest stays kept and reading stays off.
        """
        check_thread(self._loop, "resume_reading()", self)
        conn = self._live_conn("resume reading")
        held = self._held
        if held is None:
            lib.uvs_conn_resume(conn)
            return
        self._held = None
        loop = self._loop
        while held:
            if self._held is not None or self._closed or loop._halted:
                # paused again (or closed) by read_cb: what is left waits, before newer data
                if self._held is not None:
                    # after what read_cb kept of its own chunk (a BufferedProtocol's rest)
                    self._held.extend(held)
                return
            try:
                self._deliver(self, held.popleft())
            except BaseException as exc:  # noqa: BLE001 - routed like any callback's error
                loop._app_error(exc)
        if self._held is None and not self._closed:
            lib.uvs_conn_resume(conn)

    def set_write_buffer_limits(
        self,
        high: Optional[int] = None,
        low: Optional[int] = None,
        drain_cb: Optional[SocketCb] = None,
    ) -> None:
        """Set the write buffer's high- and low-water marks (bytes; defaults 64 KiB, and a
        quarter of high). ``write`` returns False above high; ``drain_cb(socket)`` (given here
        or assigned to ``socket.drain_cb``) runs when the buffer falls back to low.
        """
        check_thread(self._loop, "set_write_buffer_limits()", self)
        hi = 64 * 1024 if high is None else check_byte_count("high", high)
        lo = hi // 4 if low is None else check_byte_count("low", low)
        if lo > hi:
            raise ValueError(f"low ({lo}) must not exceed high ({hi})")
        if drain_cb is not None:
            self.drain_cb = drain_cb
        lib.uvs_conn_set_limits(self._live_conn("set limits"), hi, lo)

    # -- events from C -----------------------------------------------------------------------
    def _event(self, kind: int, status: int, action: int) -> None:
        if kind == _EV_WRITTEN:
            if self._write_cb is not None:
                self._write_cb(self)
            return
        if kind == _EV_DRAIN:
            if self._drain_cb is not None:
                self._drain_cb(self)
            return
        if kind == _EV_CONNECT:
            self._connected = True
            self._on_connected()
            return
        if kind == _EV_EOF:
            self._report(
                TcpEof(
                    "the peer closed its end of the connection (EOF on read); this end can still "
                    "write until it closes",
                    action="read",
                    socket=self,
                ),
                eof=True,
            )
            return
        self._closed = True
        self._report(self._error_for(kind, status, action))

    def _on_connected(self) -> None:
        if self.connect_cb is not None:
            self.connect_cb(self)

    def _error_for(self, kind: int, status: int, action: int) -> SocketError:
        if action == _ACT_PROXY:
            return proxy_error(status, self)
        if kind in (lib.UVS_EV_READ_TIMEOUT, lib.UVS_EV_WRITE_TIMEOUT):
            what = "read" if kind == lib.UVS_EV_READ_TIMEOUT else "write"
            where = peer_name(self)
            on = f" on the connection with {where}" if where is not None else ""
            return TcpTimeout(
                f"read timed out{on}: no data arrived within read_timeout; the socket is closed"
                if what == "read"
                else f"write timed out{on}: queued data did not leave within write_timeout (is "
                "the peer reading?); the socket is closed",
                code=_errno.ETIMEDOUT,
                action=what,
                socket=self,
                identifier="connection-timed-out",
            )
        return socket_error_for(status, action, self)

    def _report(self, exc: SocketError, eof: bool = False) -> None:
        if self.event_cb is not None:
            self.event_cb(exc)
        elif eof:
            self.close()
        else:
            self._loop._unhandled(exc)

    def _on_closed(self) -> None:
        conn = self._conn
        if conn is not None:
            self._addrs = addrs = _new_addrs()
            _copy_addresses(conn, addrs)
        self._conn = None
        self._closed = True
        self._connected = False
        self._loop._live.discard(self)
        server = self._server
        if server is not None and server._draining is not None:
            server._drained(self)

    def _abort(self) -> None:
        """Close at once, dropping what is left to send (a shutdown's timeout)."""
        self._closed = True
        conn = self._conn
        if conn is not None and lib.uvs_conn_release(conn, 1):
            self._on_closed()

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Leaving a ``with`` block closes the socket gracefully."""
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._connected:
            state = "connected"
        elif self._conn is None and self._init is not None:
            state = "not connected"
        else:
            state = "connecting"
        return f"<{type(self).__name__} {state}>"


# the C side's event kinds and connection flags, looked up once (lib.X is a lookup each time)
_EV_WRITTEN = lib.UVS_EV_WRITTEN
_EV_DRAIN = lib.UVS_EV_DRAIN
_EV_CONNECT = lib.UVS_EV_CONNECT
_EV_EOF = lib.UVS_EV_EOF
_ACT_PROXY = lib.UVS_ACT_PROXY
_ACCEPT_FAILED = lib.UVS_ACCEPT_FAILED
_UV_ESHUTDOWN = lib.UV_ESHUTDOWN
_CF_NOTIFY_WRITTEN = lib.UVS_CF_NOTIFY_WRITTEN
_CF_NOTIFY_DRAIN = lib.UVS_CF_NOTIFY_DRAIN
_CF_UNBATCHED = lib.UVS_CF_UNBATCHED


def _discard(sock: Socket, data: bytes) -> None:
    """The read path of a socket with no read_cb: incoming data is dropped."""


_conn_write = lib.uvs_conn_write
_E_FOREIGN = lib.UVS_EFOREIGN
_copy_addresses = lib.uvs_conn_copy_addresses
_ADDRS_T = ffi.typeof("uvs_addrs_t *")


def _new_addrs() -> Any:
    return ffi.new(_ADDRS_T)


class Unconnected:
    """What a socket made by ``init_tcp_socket`` / ``init_tcp_ssl_socket`` keeps (``_init``).

    Until ``connect_tcp_socket`` such a socket has no native connection at all: writes wait
    here, in order, and go to the connection when it is made (C then queues them until it is
    up, and on TLS until the handshake is done, as it does for ``tcp_connect``'s ``data=``).
    ``start_tls(sock, host)``, set by ``init_tcp_ssl_socket``, attaches the TLS engine right
    after the connection is made. A socket made with ``fd=`` is connected from the start
    (``adopted``): it keeps the object only so that ``connect_tcp_socket`` can say why not.
    """

    __slots__ = ("writes", "read_timeout", "write_timeout", "start_tls", "started", "adopted")

    def __init__(self, read_timeout: float, write_timeout: float, adopted: bool = False) -> None:
        """Timeouts in seconds (0: none), applied once the connection exists."""
        self.writes: Optional[list[bytes]] = None if adopted else []
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.start_tls: Optional[Callable[[Socket, str], None]] = None
        self.started = adopted  # connect_tcp_socket was called (or fd= connected it)
        self.adopted = adopted

    def queue(self, data: BytesLike) -> None:
        """Keep a copy of ``data`` for when the socket connects."""
        copy = data if type(data) is bytes else bytes(ffi.buffer(check_data("data", data)))
        assert self.writes is not None
        self.writes.append(copy)


# -- servers ---------------------------------------------------------------------------------


# Set by uvssl.workers in a worker process (serve_workers): every server there listens with
# SO_REUSEPORT, so that the workers share their port, and the worker hears of each new server
# (to give its TLS context the workers' shared session ticket keys).
_worker_reuse_port = False
_server_hook: Optional[Callable[[TcpServer], Any]] = None


class TcpServer:
    """A listening TCP server (``tcp_server``). ``port`` is the bound port."""

    _socket_class: type[Socket] = Socket

    def __init__(
        self,
        loop: Loop,
        bind_address: Optional[str],
        port: int,
        read_cb: Optional[ReadCb],
        event_cb: Optional[EventCb],
        connect_cb: Optional[SocketCb],
        backlog: int,
        stream: bool,
        reuse_port: bool,
    ) -> None:
        """Internal: use ``tcp_server``."""
        self._loop = loop
        self.read_cb = read_cb
        self.event_cb = event_cb
        self.connect_cb = connect_cb
        self.stream = stream
        self._closed = False
        self._ptr: Any = None
        # shutdown(): the connections still to close (None until it is called), its callback
        # and its timeout's timer
        self._draining: Optional[set[Socket]] = None
        self._done_cb: Optional[Callable[[TcpServer], Any]] = None
        self._drain_timer: Any = None
        self._proxy = False  # accepted connections start with a PROXY header
        self._handle = ffi.new_handle(self)
        ip = _bind_ip(bind_address, port)
        err = ffi.new("int *")
        reuse_port = reuse_port or _worker_reuse_port
        ptr = lib.uvs_server_new(
            loop._ptr, self._handle, ip.encode("ascii"), port, backlog, int(reuse_port), err
        )
        if ptr == ffi.NULL:
            code = err[0]
            raise SocketError(
                f"cannot listen on {ip!r} port {port}: {strerror(code)}",
                code=errno_of(code),
                action="listen",
            )
        self._ptr = ptr
        self.address = ip
        self.port = int(lib.uvs_server_port(ptr))
        loop._live.add(self)
        if _server_hook is not None:
            _server_hook(self)

    @property
    def closed(self) -> bool:
        """True once the server was closed."""
        return self._closed

    def fileno(self) -> int:
        """The listening socket's descriptor (owned by uvssl)."""
        check_thread(self._loop, "fileno()", self)
        if self._ptr is None:
            raise SocketClosed("the server is closed; it has no descriptor", action="fileno")
        return int(lib.uvs_server_fileno(self._ptr))

    def close(self) -> None:
        """Stop listening. Connections already accepted stay open (see ``shutdown``)."""
        check_thread(self._loop, "close()", self)
        if self._closed:
            return
        self._closed = True
        if self._ptr is not None and self._loop._ptr is not None:
            lib.uvs_server_close(self._ptr)

    def shutdown(
        self, timeout: float = 30.0, done_cb: Optional[Callable[[TcpServer], Any]] = None
    ) -> None:
        """Shut the server down gracefully.

        It stops listening at once. Each connection it accepted is closed as soon as what was
        written to it has been flushed (TLS: close_notify, then FIN), exactly as
        ``close()`` closes one; a TLS connection still in its handshake, which the
        application never saw, is closed at once. Connections still not closed after
        ``timeout`` seconds (a peer that does not read, say) are aborted. ``done_cb(server)``
        runs once the last connection and the listening socket are gone. Call it once.
        """
        check_thread(self._loop, "shutdown()", self)
        check_callable("done_cb", done_cb)
        secs = check_seconds("timeout", timeout, allow_zero=True)
        if self._draining is not None:
            raise RuntimeError("uvssl: shutdown() was already called on this server")
        loop = self._loop
        loop._check_open()
        self._draining = draining = set()
        self._done_cb = done_cb
        if self._ptr is not None and not self._closed:
            lib.uvs_server_abort_unannounced(self._ptr)
        self.close()
        for obj in list(loop._live):
            if isinstance(obj, Socket) and obj._server is self and obj._conn is not None:
                draining.add(obj)
        for sock in list(draining):
            if not sock._closed:
                sock.close()  # forgets it at once when nothing is left to flush
        if draining:
            self._drain_timer = loop.delay(self._abort_draining, secs)
        self._maybe_done()

    @property
    def shutting_down(self) -> bool:
        """True once ``shutdown()`` was called."""
        return self._draining is not None

    def _abort_draining(self) -> None:
        self._drain_timer = None
        for sock in list(self._draining or ()):
            sock._abort()

    def _drained(self, sock: Socket) -> None:
        assert self._draining is not None
        self._draining.discard(sock)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._draining or self._ptr is not None or self._draining is None:
            return
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None:
            timer.cancel()
        cb, self._done_cb = self._done_cb, None
        if cb is not None and not self._loop._halted:  # not while the loop is torn down
            try:
                cb(self)
            except BaseException as exc:  # noqa: BLE001 - may run from a native callback
                self._loop._app_error(exc)

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Leaving a ``with`` block stops the server listening (``close()``)."""
        self.close()

    def _accept(self, conn: Any, stage: int) -> Socket:
        sock = new_socket(
            self._socket_class,
            self._loop,
            self.read_cb,
            self.event_cb,
            self.connect_cb,
            None,
            self.stream,
            accepted=conn,
            server=self,
        )
        if self._proxy and stage != _ACCEPT_FAILED:
            sock._proxy = proxy_tlvs(conn)
        try:
            self._accepted(sock, stage)
        except BaseException as exc:  # noqa: BLE001 - the socket is taken: its data follows
            self._loop._app_error(exc)
        return sock

    def _enable_proxy(self, timeout: Optional[float], sources: Any) -> None:
        """``proxy_protocol=True``: headers due within ``timeout`` (None: no limit), from
        ``sources`` (already parsed; None: anywhere).
        """
        configure(self._ptr, 0.0 if timeout is None else timeout, sources)
        self._proxy = True

    def _accepted(self, sock: Socket, stage: int) -> None:
        if stage == _ACCEPT_FAILED:
            return  # its PROXY header failed (or the source was refused): the error follows
        sock._connected = True
        if self.connect_cb is not None:
            self.connect_cb(sock)

    def _event(self, kind: int, status: int, action: int) -> None:
        exc = socket_error_for(status, action, self)
        if self.event_cb is not None:
            self.event_cb(exc)
        else:
            self._loop._unhandled(exc)

    def _on_closed(self) -> None:
        self._ptr = None
        self._closed = True
        self._loop._live.discard(self)
        if self._draining is not None:
            self._maybe_done()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.address}:{self.port}{' closed' if self._closed else ''}>"
        )


def _bind_ip(bind_address: Optional[str], port: int) -> str:
    if bind_address is None or bind_address in ("", "*"):
        return "0.0.0.0"
    host = check_host("bind_address", bind_address)
    try:
        infos = _socket.getaddrinfo(host, port, type=_socket.SOCK_STREAM, flags=_socket.AI_PASSIVE)
    except _socket.gaierror as e:
        raise DnsError(f"cannot resolve bind_address {host!r}: {e}", action="resolve") from None
    return str(infos[0][4][0])


# -- module-level API ------------------------------------------------------------------------

#: a plain server's default deadline for the PROXY protocol header (seconds): a proxy sends it
#: with its first bytes, so a peer silent this long is not a working proxy
PROXY_HEADER_TIMEOUT = 10.0


_S = TypeVar("_S", bound=Socket)


def new_socket(
    cls: type[_S],
    loop: Loop,
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb],
    connect_cb: Optional[SocketCb],
    write_cb: Optional[SocketCb],
    stream: bool,
    *,
    target: Optional[tuple[str, int]] = None,
    fd: Optional[int] = None,
    accepted: Any = None,
    server: Optional[TcpServer] = None,
    read_timeout: float = 0.0,
    write_timeout: float = 0.0,
) -> _S:
    """The one path by which every ``Socket`` (and ``SslSocket``) gets its native connection.

    At most one of: ``target`` (host, port), to connect to; ``fd``, a connected descriptor to
    adopt; ``accepted``, a connection ``server`` accepted (the native side made it and waits
    for its handle). With none, the socket has no connection yet (``init_tcp_socket``; its
    ``_init`` is set and ``connect_tcp_socket`` makes the connection later, through
    ``start_connection``). A connection that cannot be started raises the ``SocketError`` for
    it. Arguments are checked by the caller; timeouts are seconds (0: none).
    """
    sock = cls(loop, read_cb, event_cb, connect_cb, write_cb, stream)
    if accepted is not None:
        sock._server = server
        lib.uvs_conn_set_data(accepted, sock._handle)
        sock._attach(accepted, read_timeout, write_timeout)
    elif target is not None or fd is not None:
        start_connection(sock, target, fd, read_timeout, write_timeout)
    else:
        sock._init = Unconnected(read_timeout, write_timeout)
    return sock


def start_connection(
    sock: Socket,
    target: Optional[tuple[str, int]],
    fd: Optional[int],
    read_timeout: float,
    write_timeout: float,
) -> None:
    """Give ``sock`` its native connection: connecting to ``target`` or adopting ``fd``."""
    err = ffi.new("int *")
    loop = sock._loop
    if target is not None:
        sock._target = target
        host, port = target
        conn = lib.uvs_conn_connect(loop._ptr, sock._handle, host.encode("idna"), port, err)
    else:
        conn = lib.uvs_conn_open(loop._ptr, sock._handle, fd, err)
    if conn == ffi.NULL:
        raise socket_error_for(err[0], lib.UVS_ACT_CONNECT, sock)
    sock._attach(conn, read_timeout, write_timeout)


@keyword_hints
def tcp_connect(
    host: str,
    port: int,
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb] = None,
    *,
    data: Optional[BytesLike] = None,
    stream: bool = False,
    connect_cb: Optional[Callable[[Socket], Any]] = None,
    write_cb: Optional[Callable[[Socket], Any]] = None,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    dont_drain_read_buffer: bool = False,
) -> Socket:
    """Connect to ``host``:``port`` (names resolve asynchronously; IPv4 and IPv6).

    ``read_cb(socket, data)`` gets each chunk read (``read_cb(socket, stream)`` in stream
    mode); ``event_cb(exc)`` gets errors and EOF; ``connect_cb(socket)`` runs once connected;
    ``write_cb(socket)`` when everything written has reached the kernel. ``data`` is sent as
    soon as the connection is up (writes made before that are queued in order).
    ``read_timeout``/``write_timeout`` (seconds) close the socket with ``TcpTimeout``.
    ``stream=True`` (or cl-async's ``dont_drain_read_buffer=True``) keeps input in
    ``socket.stream`` until the application reads it.
    """
    host = check_host("host", host)
    port = check_port(port)
    check_callbacks(read_cb, event_cb, connect_cb, write_cb)
    if data is not None:
        check_data("data", data)
    loop = get_loop()
    r_s = check_timeout("read_timeout", read_timeout)
    w_s = check_timeout("write_timeout", write_timeout)
    sock = new_socket(
        Socket,
        loop,
        read_cb,
        event_cb,
        connect_cb,
        write_cb,
        bool(stream or dont_drain_read_buffer),
        target=(host, port),
        read_timeout=r_s,
        write_timeout=w_s,
    )
    if data is not None:
        sock.write(data)
    return sock


@keyword_hints
def tcp_server(
    bind_address: Optional[str],
    port: int,
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb] = None,
    *,
    connect_cb: Optional[Callable[[Socket], Any]] = None,
    backlog: int = -1,
    stream: bool = False,
    reuse_port: bool = False,
    proxy_protocol: bool = False,
    proxy_protocol_from: Optional[Sequence[str]] = None,
    handshake_timeout: Optional[float] = PROXY_HEADER_TIMEOUT,
) -> TcpServer:
    """Listen on ``bind_address``:``port`` (port 0 picks a free one: see ``server.port``).

    Every accepted connection is a ``Socket`` with the given callbacks; ``connect_cb(socket)``
    runs when it is accepted. ``backlog=-1`` means the system maximum. ``reuse_port=True``
    sets SO_REUSEPORT so several processes or threads can serve one port.

    ``proxy_protocol=True``: every connection starts with a PROXY protocol header (v1 or v2,
    as HAProxy's ``send-proxy`` / ``send-proxy-v2`` write it), read before anything reaches
    Python; ``remote_address`` is then the client's, ``proxy_address`` the proxy's and
    ``proxy_tlvs`` the v2 TLVs, and ``connect_cb`` runs once the header is in. A connection
    whose header is missing, malformed or not complete within ``handshake_timeout`` seconds
    (default 10; None: no limit; used only with the protocol) is closed and reported to
    ``event_cb`` as ``ProxyProtocolError``. ``proxy_protocol_from`` (addresses and CIDR
    networks, IPv4 or IPv6) refuses connections from anywhere else.
    """
    port = check_port(port)
    check_callbacks(read_cb, event_cb, connect_cb, None)
    backlog = check_backlog(backlog)
    proxy_timeout = check_hs_timeout(handshake_timeout)
    sources = check_proxy_options(proxy_protocol, proxy_protocol_from)
    server = TcpServer(
        get_loop(),
        bind_address,
        port,
        read_cb,
        event_cb,
        connect_cb,
        backlog,
        bool(stream),
        bool(reuse_port),
    )
    if proxy_protocol:
        server._enable_proxy(proxy_timeout, sources)
    return server


def check_proxy_options(proxy_protocol: Any, proxy_protocol_from: Any) -> Optional[list[Any]]:
    """Check ``proxy_protocol`` and ``proxy_protocol_from``; the parsed sources (None: any)."""
    if not isinstance(proxy_protocol, bool):
        raise TypeError(
            f"proxy_protocol must be True or False, not {type(proxy_protocol).__name__}"
        )
    if proxy_protocol_from is None:
        return None
    if not proxy_protocol:
        raise ValueError(
            "proxy_protocol_from= needs proxy_protocol=True: it lists the proxies whose "
            "PROXY protocol headers the server accepts"
        )
    return parse_sources(proxy_protocol_from)


@keyword_hints
def tcp_open(
    fd_or_socket: Union[int, _socket.socket],
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb] = None,
    *,
    data: Optional[BytesLike] = None,
    stream: bool = False,
    connect_cb: Optional[Callable[[Socket], Any]] = None,
    write_cb: Optional[Callable[[Socket], Any]] = None,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    dont_drain_read_buffer: bool = False,
) -> Socket:
    """Adopt an already connected TCP socket (a ``socket.socket`` or a descriptor).

    uvssl takes ownership: a ``socket.socket`` is detached, a descriptor will be closed by
    uvssl. ``connect_cb``, if given, runs from the loop right away.
    """
    check_callbacks(read_cb, event_cb, connect_cb, write_cb)
    if data is not None:
        check_data("data", data)
    r_s = check_timeout("read_timeout", read_timeout)
    w_s = check_timeout("write_timeout", write_timeout)
    loop = get_loop()
    sock = open_fd(
        Socket,
        loop,
        "fd_or_socket",
        fd_or_socket,
        read_cb,
        event_cb,
        connect_cb,
        write_cb,
        bool(stream or dont_drain_read_buffer),
        r_s,
        w_s,
    )
    _opened(sock, data)
    return sock


def _opened(sock: Socket, data: Optional[BytesLike]) -> None:
    # a plain socket made from a connected descriptor: data= now, connect_cb from the loop
    if data is not None:
        sock.write(data)
    sock._connected = True
    if sock.connect_cb is not None:
        sock._loop.delay(_late_connect_cb, 0, sock)


def open_fd(
    cls: type[_S],
    loop: Loop,
    name: str,
    fd_or_socket: Any,
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb],
    connect_cb: Optional[SocketCb],
    write_cb: Optional[SocketCb],
    stream: bool,
    read_timeout: float,
    write_timeout: float,
) -> _S:
    """Check that ``fd_or_socket`` (the argument ``name``: a ``socket.socket`` or a
    descriptor) is a connected TCP socket and make a ``cls`` socket that owns it (a
    ``socket.socket`` is detached). Raises ValueError/TypeError, or the ``SocketError`` of a
    descriptor libuv refuses; the descriptor is left to the caller then.
    """
    if isinstance(fd_or_socket, _socket.socket):
        pysock = fd_or_socket
    elif isinstance(fd_or_socket, int) and not isinstance(fd_or_socket, bool):
        try:
            pysock = _socket.socket(fileno=fd_or_socket)
        except OSError as e:
            raise ValueError(f"{name} {fd_or_socket} is not a socket: {e}") from None
    else:
        raise TypeError(
            f"{name} must be a socket.socket or an int, not {type(fd_or_socket).__name__}"
        )
    if pysock.fileno() < 0:
        raise ValueError(f"{name} is a closed socket")
    if pysock.type != _socket.SOCK_STREAM or pysock.family not in (
        _socket.AF_INET,
        _socket.AF_INET6,
    ):
        if not isinstance(fd_or_socket, _socket.socket):
            pysock.detach()
        raise ValueError(f"{name} must be a TCP (SOCK_STREAM, AF_INET/AF_INET6) socket")
    try:
        pysock.getpeername()
    except OSError:
        if not isinstance(fd_or_socket, _socket.socket):
            pysock.detach()
        raise ValueError(f"{name} must be connected") from None
    try:
        sock = new_socket(
            cls,
            loop,
            read_cb,
            event_cb,
            connect_cb,
            write_cb,
            stream,
            fd=pysock.fileno(),
            read_timeout=read_timeout,
            write_timeout=write_timeout,
        )
    except SocketError:
        if not isinstance(fd_or_socket, _socket.socket):
            pysock.detach()
        raise
    pysock.detach()
    return sock


def _late_connect_cb(sock: Socket) -> None:
    if not sock.closed and sock.connect_cb is not None:
        sock.connect_cb(sock)


@keyword_hints
def init_tcp_socket(
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb] = None,
    *,
    fd: Union[int, _socket.socket, None] = None,
    data: Optional[BytesLike] = None,
    stream: bool = False,
    connect_cb: Optional[Callable[[Socket], Any]] = None,
    write_cb: Optional[Callable[[Socket], Any]] = None,
    read_timeout: Optional[float] = None,
    write_timeout: Optional[float] = None,
    dont_drain_read_buffer: bool = False,
) -> Socket:
    """Make a TCP ``Socket`` that is not connected yet; ``connect_tcp_socket`` connects it.

    The keywords are ``tcp_connect``'s. Until it connects, writes (``data=`` first) wait in
    order and leave once the connection is up; ``close()`` just discards the socket (no
    callback runs). With ``fd=`` (a connected ``socket.socket`` or descriptor, taken over as
    ``tcp_open`` does) the socket is connected at once and ``connect_tcp_socket`` refuses it.
    """
    check_callbacks(read_cb, event_cb, connect_cb, write_cb)
    if data is not None:
        check_data("data", data)
    r_s = check_timeout("read_timeout", read_timeout)
    w_s = check_timeout("write_timeout", write_timeout)
    loop = get_loop()
    streamed = bool(stream or dont_drain_read_buffer)
    if fd is not None:
        sock = open_fd(
            Socket, loop, "fd", fd, read_cb, event_cb, connect_cb, write_cb, streamed, r_s, w_s
        )
        sock._init = Unconnected(r_s, w_s, adopted=True)
        _opened(sock, data)
        return sock
    sock = new_socket(
        Socket,
        loop,
        read_cb,
        event_cb,
        connect_cb,
        write_cb,
        streamed,
        read_timeout=r_s,
        write_timeout=w_s,
    )
    if data is not None:
        sock.write(data)
    return sock


def connect_tcp_socket(socket: Socket, host: str, port: int) -> Socket:
    """Connect a socket made by ``init_tcp_socket`` / ``init_tcp_ssl_socket`` to
    ``host``:``port`` and return it.

    As ``tcp_connect`` does: the name resolves asynchronously, each address is tried in
    turn, failures (``DnsError``, ``TcpRefused``, ...) go to ``event_cb`` and name the host
    and port; ``connect_cb`` runs once connected (TLS: after the handshake, whose
    ``server_hostname`` is ``host`` unless one was given). What was written before leaves
    then. Raises ``SocketClosed`` on a closed socket, ``SocketError`` (EISCONN) on one that is
    connected or connecting already, and ValueError on a socket ``init_*`` did not make.
    """
    if not isinstance(socket, Socket):
        raise TypeError(f"socket must be a uvssl Socket, not {type(socket).__name__}")
    check_thread(socket._loop, "connect_tcp_socket()")
    host = check_host("host", host)
    port = check_port(port)
    init = socket._init
    if socket._closed:
        raise SocketClosed(
            "socket is closed; cannot connect it (make a new one with init_tcp_socket())",
            action="connect",
            socket=socket,
            identifier="shutdown",
        )
    if init is None:
        raise ValueError(
            "connect_tcp_socket() connects a socket made by init_tcp_socket() or "
            "init_tcp_ssl_socket(); this one was connected (or connecting) when it was made"
        )
    if init.started:
        raise SocketError(
            "socket is already connected: it was made with fd=, a connected descriptor"
            if init.adopted
            else f"socket is already connecting or connected (to {peer_name(socket)}); "
            "connect_tcp_socket() is called once per socket",
            code=_errno.EISCONN,
            action="connect",
            socket=socket,
        )
    socket._loop._check_open()
    init.started = True
    writes, init.writes = init.writes, None
    start_tls, init.start_tls = init.start_tls, None
    try:
        start_connection(socket, (host, port), None, init.read_timeout, init.write_timeout)
    except BaseException:
        socket._closed = True
        raise
    if start_tls is not None:
        start_tls(socket, host)  # closes the socket if it raises
    for chunk in writes or ():
        socket.write(chunk)
    return socket


def write_socket_data(
    socket: Socket,
    data: BytesLike,
    *,
    read_cb: Optional[ReadCb] = None,
    write_cb: Optional[SocketCb] = None,
    event_cb: Optional[EventCb] = None,
) -> bool:
    """Write ``data`` to ``socket``; callbacks given here replace the socket's.

    Returns ``socket.write``'s answer (False once above the high-water mark).
    """
    if not isinstance(socket, Socket):
        raise TypeError(f"socket must be a uvssl Socket, not {type(socket).__name__}")
    check_thread(socket._loop, "write_socket_data()")
    check_callbacks(read_cb, event_cb, None, write_cb)
    if read_cb is not None:
        socket.read_cb = read_cb
    if event_cb is not None:
        socket.event_cb = event_cb
    if write_cb is not None:
        socket.write_cb = write_cb
    return socket.write(data)


def close_socket(socket: Socket, *, force: bool = False) -> None:
    """Close ``socket``: gracefully (pending writes flushed first) or, with ``force``, at once."""
    if not isinstance(socket, Socket):
        raise TypeError(f"socket must be a uvssl Socket, not {type(socket).__name__}")
    check_thread(socket._loop, "close_socket()")
    socket.close(force=force)


def close_tcp_server(server: TcpServer) -> None:
    """Stop ``server`` listening; its open connections are not affected."""
    if not isinstance(server, TcpServer):
        raise TypeError(f"server must be a uvssl TcpServer, not {type(server).__name__}")
    check_thread(server._loop, "close_tcp_server()")
    server.close()
