"""Datagram (UDP) sockets on uvssl's loop.

A ``UdpSocket`` is a thin Python face on a native datagram socket (csrc/udp.c), made by
``udp_socket``. It stays in ``loop._live`` until the native side reports it closed.

Receiving. The native side reads with recvmmsg() into 64 KiB slots (no IP datagram can be
truncated there) and hands all the datagrams of one loop turn to the dispatcher
(``uvs_py_on_udp_batch`` in _dispatch.py) in one call, which calls ``read_cb(sock, data,
(host, port))`` for each. The sender tuple is made once per IPv4 sender and reused; the same
sender's parsed native address is remembered for ``send_to`` (``udp_targets``), so an echo
server's reply is never parsed.

Sending. ``send_to`` / ``send`` copy the datagram to the socket's native queue; the queue leaves
when the current callback returns, in as few sendmmsg() calls as possible (see csrc/udp.c).
While the dispatcher hands a socket its batch, ``send_to`` to a known address only appends the
datagram (bytes) and its native address to ``_out``, and the dispatcher passes them all to C
in one call at the end of the batch (``_flush_collected``; ``close()`` flushes them first), so
an echo server makes one call into C per batch instead of one per reply.
IP literals are parsed once per (host, port) and remembered; names are resolved asynchronously
(for the socket's address family) and the datagram leaves when the answer comes. Errors of
sending, of resolving and ICMP errors reported by the kernel reach ``event_cb`` (or the loop's
unhandled-error path without one); a datagram larger than an IP datagram can carry is refused
at the call.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, Callable, Optional, Union

from . import _dispatch
from ._args import (
    check_callable,
    check_data,
    check_host,
    check_port,
    check_thread,
    get_ident,
    keyword_hints,
)
from ._uvssl import ffi, lib
from .errors import DnsError, SocketClosed, SocketError, errname, errno_of, strerror
from .loop import Loop, get_loop

__all__ = ["UdpSocket", "DatagramTruncated", "udp_socket", "MAX_DATAGRAM_V4", "MAX_DATAGRAM_V6"]

BytesLike = Union[bytes, bytearray, memoryview]
Address = tuple[str, int]
ReadCb = Callable[["UdpSocket", bytes, Address], Any]
EventCb = Callable[[SocketError], Any]

#: The largest datagram payload over IPv4 (65,535 minus the IP and UDP headers).
MAX_DATAGRAM_V4 = 65507
#: The largest datagram payload over IPv6 (65,535 minus the UDP header; no jumbograms).
MAX_DATAGRAM_V6 = 65527

_ADDR_T = ffi.typeof("uvs_addr_t *")
_udp_send = lib.uvs_udp_send
_udp_send_many = lib.uvs_udp_send_many
_new = ffi.new
_LENS_T = ffi.typeof("size_t[]")
_ADDRS_T = ffi.typeof("uvs_addr_t *[]")
_get_ident = get_ident
_E_FOREIGN = lib.UVS_EFOREIGN
_targets = _dispatch.udp_targets
_ACTIONS = {
    lib.UVS_ACT_RESOLVE: "resolve",
    lib.UVS_ACT_CONNECT: "connect",
    lib.UVS_ACT_READ: "read",
    lib.UVS_ACT_WRITE: "write",
}


class DatagramTruncated(SocketError):
    """A datagram arrived larger than the receive buffer and was cut short by the kernel.

    It is reported instead of delivered; ``sender`` is its (host, port).
    """

    identifier = "datagram-truncated"

    def __init__(self, message: str, sender: Optional[Address], **kw: Any) -> None:
        """Made by uvssl with the sender's address."""
        super().__init__(message, **kw)
        self.sender = sender


def _discard(sock: UdpSocket, data: bytes, address: Address) -> None:
    """The read path of a socket with no read_cb: datagrams are dropped."""


def _parse(host: str, port: int) -> Any:
    """The native address of an IP literal, or None when ``host`` is not one."""
    addr = ffi.new(_ADDR_T)
    if lib.uvs_addr_parse(host.encode("ascii", "replace"), port, addr) != 0:
        return None
    return addr


def _is_v6(addr: Any) -> bool:
    return bool(lib.uvs_addr_is_v6(addr))


def _any_address(v6: bool, port: int) -> Any:
    return _parse("::" if v6 else "0.0.0.0", port)


class UdpSocket:
    """A datagram socket (``udp_socket``).

    Attributes:
        data: a free slot for the application.
        read_cb: ``read_cb(sock, data, (host, port))`` per datagram; assignable.
        event_cb: ``event_cb(error)`` for errors; assignable.

    """

    def __init__(self, loop: Loop, read_cb: Optional[ReadCb], event_cb: Optional[EventCb]) -> None:
        """Internal: use ``udp_socket``."""
        self._loop = loop
        self._loop_ptr = loop._ptr  # for send()'s thread check, done in C
        self._ptr: Any = None
        self._handle = ffi.new_handle(self)
        self._closed = False
        self._read_cb = read_cb
        self._deliver: ReadCb = read_cb if read_cb is not None else _discard
        self.event_cb = event_cb
        self.data: Any = None
        self._v6 = False  # the socket's family is IPv6 (known once bound)
        self._remote: Optional[Address] = None  # the (host, port) it was connected to
        self._resolving: Optional[str] = None  # the remote name being resolved
        self._local_kept: Optional[Address] = None  # addresses kept at the close
        self._remote_kept: Optional[Address] = None
        self._thread = loop.thread
        # While the dispatcher hands this socket its datagrams, send_to collects datagrams
        # for known addresses here and the dispatcher passes them to C in one call at the end
        # (see _flush_collected); None otherwise.
        # datagram and native address alternate in the list
        self._out: Optional[list[Any]] = None

    # -- callbacks -------------------------------------------------------------------------
    @property
    def read_cb(self) -> Optional[ReadCb]:
        """Called as ``read_cb(sock, data, (host, port))`` for every datagram."""
        return self._read_cb

    @read_cb.setter
    def read_cb(self, cb: Optional[ReadCb]) -> None:
        check_thread(self._loop, "read_cb (assignment)", self)
        check_callable("read_cb", cb)
        self._read_cb = cb
        self._deliver = cb if cb is not None else _discard

    # -- state -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or the socket could not connect)."""
        return self._closed

    @property
    def loop(self) -> Loop:
        """The loop this socket belongs to."""
        return self._loop

    def _live(self, action: str) -> Any:
        ptr = self._ptr
        if ptr is None or self._closed:
            raise SocketClosed(
                f"UDP socket is closed; cannot {action}",
                action=action,
                socket=self,
                identifier="shutdown",
            )
        return ptr

    def _fail(self, r: int, what: str, action: str) -> SocketError:
        return SocketError(
            f"{what}: {strerror(r)} ({errname(r)})", code=errno_of(r), action=action, socket=self
        )

    def fileno(self) -> int:
        """The OS socket descriptor (owned by uvssl: do not close it)."""
        check_thread(self._loop, "fileno()", self)
        r = int(lib.uvs_udp_fileno(self._live("get its descriptor")))
        if r < 0:
            raise self._fail(r, "cannot get the UDP socket's descriptor", "fileno")
        return r

    def _address(self, peer: int) -> Address:
        addr = ffi.new(_ADDR_T)
        r = lib.uvs_udp_address(self._ptr, peer, addr)
        if r != 0:
            raise self._fail(
                r,
                "the UDP socket is not connected" if peer else "the UDP socket has no address",
                "getpeername" if peer else "getsockname",
            )
        return _dispatch.udp_format(addr)

    @property
    def local_address(self) -> Address:
        """(host, port) this socket is bound to; still readable after the close."""
        check_thread(self._loop, "local_address", self)
        if self._ptr is None or self._closed:
            if self._local_kept is None:
                raise SocketClosed(
                    "UDP socket closed before it had an address", action="getsockname", socket=self
                )
            return self._local_kept
        return self._address(0)

    @property
    def remote_address(self) -> Address:
        """(host, port) of the peer of a connected socket; still readable after the close."""
        check_thread(self._loop, "remote_address", self)
        if self._ptr is None or self._closed:
            if self._remote_kept is None:
                raise SocketClosed(
                    "UDP socket closed while not connected", action="getpeername", socket=self
                )
            return self._remote_kept
        return self._address(1)

    # -- sending ---------------------------------------------------------------------------
    def _too_big(self, n: int, v6: bool, where: str) -> None:
        limit = MAX_DATAGRAM_V6 if v6 else MAX_DATAGRAM_V4
        if n > limit:
            raise ValueError(
                f"datagram of {n} bytes to {where} is too large: "
                f"{'IPv6' if v6 else 'IPv4'} carries at most {limit} bytes; split it"
            )

    def _sent(self, r: int, what: str) -> None:
        if r == _E_FOREIGN:
            check_thread(self._loop, what, self)  # raises RuntimeError
            r = lib.UV_EBADF  # the loop has ended meanwhile
        if r == lib.UV_EISCONN:
            raise ValueError(
                "send_to() on a connected UDP socket: it sends only to its peer; use send()"
            )
        if r == lib.UV_EBADF:
            raise SocketClosed(
                f"UDP socket is closing; cannot {what}",
                action="write",
                socket=self,
                identifier="shutdown",
            )
        raise self._fail(r, f"cannot queue a datagram ({what})", "write")

    def send_to(self, data: BytesLike, host: str, port: int) -> None:
        """Send one datagram to ``host`` (an IP address or a name) port ``port``.

        IP addresses go when the current callback returns; names are resolved first, without
        blocking, and a failure reaches ``event_cb`` as ``DnsError``. Raises ``ValueError``
        for a datagram larger than IP carries (65,507 bytes over IPv4, 65,527 over IPv6) and
        on a connected socket (use ``send``), ``SocketClosed`` on a closed socket, and
        ``RuntimeError`` from another thread.
        """
        # The fast path: a (host, port) seen before, as an echo server's reply is. Inside the
        # dispatcher's batch for this socket, the datagram is collected (the batch's replies
        # reach C in one call); otherwise it goes to C now, which checks the thread and
        # whether the socket is closed.
        try:
            addr = _targets[port][host]
        except (KeyError, TypeError):
            self._send_to_slow(data, host, port)
            return
        out = self._out
        if (
            out is not None
            and type(data) is bytes
            and len(data) <= MAX_DATAGRAM_V4
            and _get_ident() == self._thread
        ):
            out += (data, addr)
            return
        ptr = self._ptr
        if ptr is None:
            self._send_to_slow(data, host, port)
            return
        buf = data if type(data) is bytes else check_data("data", data)
        n = len(buf)
        if n > MAX_DATAGRAM_V4:
            self._too_big(n, _is_v6(addr), f"{host} port {port}")
        r = _udp_send(self._loop_ptr, ptr, buf, n, addr)
        if r:
            self._sent(r, "send_to()")

    def _flush_collected(self) -> None:
        """Pass the datagrams collected by ``send_to`` during a batch to C, in one call."""
        out = self._out
        self._out = None
        if not out:
            return
        bufs = out[0::2]
        ptr = self._ptr
        if ptr is None:
            return  # closed by the loop's end meanwhile: nothing will be sent any more
        r = _udp_send_many(
            self._loop_ptr,
            ptr,
            b"".join(bufs),
            _new(_LENS_T, list(map(len, bufs))),
            _new(_ADDRS_T, out[1::2]),
            len(bufs),
        )
        if r:
            self._sent(r, "send_to()")

    def _send_to_slow(self, data: BytesLike, host: str, port: int) -> None:
        """``send_to`` for a (host, port) not seen yet, a name, or a closed socket."""
        check_thread(self._loop, "send_to()", self)
        ptr = self._live("send")
        buf = data if type(data) is bytes else check_data("data", data)
        n = len(buf)
        host = check_host("host", host)
        port = check_port(port)
        if self._remote is not None:
            raise ValueError(
                "send_to() on a connected UDP socket: it sends only to its peer; use send()"
            )
        addr = _parse(host, port)
        if addr is None:  # a name: resolved, then sent
            self._too_big(n, self._v6, f"{host!r} port {port}")
            r = int(lib.uvs_udp_send_name(ptr, buf, n, host.encode("idna"), port))
            if r != 0:
                if r == lib.UV_EINVAL:
                    raise ValueError(f"cannot send to {host!r}: the host name is too long")
                self._sent(r, "send_to()")
            return
        _dispatch.remember_target(host, port, addr)
        self._too_big(n, _is_v6(addr), f"{host} port {port}")
        r = _udp_send(self._loop_ptr, ptr, buf, n, addr)
        if r:
            self._sent(r, "send_to()")

    def send(self, data: BytesLike) -> None:
        """Send one datagram to the connected peer (see ``udp_socket``'s ``remote_host``).

        Raises as ``send_to`` does, and ``SocketError`` on a socket that is not connected.
        """
        ptr = self._ptr
        if ptr is None or self._closed:
            check_thread(self._loop, "send()", self)
            self._live("send")
        if self._remote is None:
            check_thread(self._loop, "send()", self)
            raise SocketError(
                "send() on an unconnected UDP socket: give remote_host to udp_socket(), or use "
                "send_to()",
                action="write",
                socket=self,
                identifier="not-connected",
            )
        buf = data if type(data) is bytes else check_data("data", data)
        n = len(buf)
        if n > MAX_DATAGRAM_V4:
            self._too_big(n, self._v6, f"{self._remote[0]} port {self._remote[1]}")
        r = _udp_send(self._loop_ptr, ptr, buf, n, ffi.NULL)
        if r:
            self._sent(r, "send()")

    # -- options ---------------------------------------------------------------------------
    def _membership(self, group: str, interface: Optional[str], join: bool) -> None:
        what = "join_group()" if join else "leave_group()"
        check_thread(self._loop, what, self)
        ptr = self._live("join a group" if join else "leave a group")
        group = check_host("group", group)
        iface = ffi.NULL if interface is None else check_host("interface", interface).encode()
        r = lib.uvs_udp_membership(ptr, group.encode("ascii", "replace"), iface, int(join))
        if r != 0:
            on = "" if interface is None else f" on interface {interface!r}"
            raise self._fail(
                r,
                f"cannot {'join' if join else 'leave'} multicast group {group!r}{on} (is it a "
                "multicast address of the socket's family, and is there a multicast route?)",
                "setsockopt",
            )

    def join_group(self, group: str, interface: Optional[str] = None) -> None:
        """Join multicast ``group`` (an IP address), on the interface whose address is
        ``interface`` (default: the system's choice).
        """
        self._membership(group, interface, True)

    def leave_group(self, group: str, interface: Optional[str] = None) -> None:
        """Leave multicast ``group`` joined with ``join_group``."""
        self._membership(group, interface, False)

    def set_options(
        self,
        *,
        broadcast: Optional[bool] = None,
        multicast_ttl: Optional[int] = None,
        multicast_loop: Optional[bool] = None,
    ) -> None:
        """Set SO_BROADCAST, the multicast TTL (1..255) and multicast loopback."""
        check_thread(self._loop, "set_options()", self)
        ptr = self._live("set options")
        todo: list[tuple[str, int, int]] = []
        for name, flag, which in (
            ("broadcast", broadcast, lib.UVS_UDP_OPT_BROADCAST),
            ("multicast_loop", multicast_loop, lib.UVS_UDP_OPT_MULTICAST_LOOP),
        ):
            if flag is not None:
                if not isinstance(flag, bool):
                    raise TypeError(f"{name} must be a bool, not {type(flag).__name__}")
                todo.append((name, which, int(flag)))
        if multicast_ttl is not None:
            if isinstance(multicast_ttl, bool) or not isinstance(multicast_ttl, int):
                raise TypeError(f"multicast_ttl must be an int, not {type(multicast_ttl).__name__}")
            if not 1 <= multicast_ttl <= 255:
                raise ValueError(f"multicast_ttl must be in 1..255, got {multicast_ttl}")
            todo.append(("multicast_ttl", lib.UVS_UDP_OPT_MULTICAST_TTL, multicast_ttl))
        for name, which, value in todo:
            r = lib.uvs_udp_option(ptr, which, value)
            if r != 0:
                raise self._fail(r, f"cannot set {name}={value} on the UDP socket", "setsockopt")

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the socket; idempotent. Datagrams already accepted by ``send``/``send_to``
        still leave; no callback runs for this socket any more.
        """
        check_thread(self._loop, "close()", self)
        if self._closed:
            return
        self._flush_collected()  # what send_to accepted leaves too
        self._closed = True
        ptr = self._ptr
        if ptr is None:
            return
        for peer in (0, 1):
            try:
                kept = self._address(peer)
            except SocketError:
                continue
            if peer:
                self._remote_kept = kept
            else:
                self._local_kept = kept
        lib.uvs_udp_close(ptr, 0)

    def _on_closed(self) -> None:
        self._ptr = None
        self._closed = True
        self._loop._live.discard(self)

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Leaving a ``with`` block closes the socket."""
        self.close()

    def __repr__(self) -> str:
        return f"<UdpSocket {'closed' if self._closed else 'open'}>"

    # -- events from C ---------------------------------------------------------------------
    def _event(
        self, status: int, action: int, peer: Optional[Address], host: Optional[str]
    ) -> None:
        act = _ACTIONS.get(action, "")
        msg = f"{strerror(status)} ({errname(status)})"
        code = errno_of(status)
        fatal = False
        exc: SocketError
        if action == lib.UVS_ACT_RESOLVE:
            fatal = host is not None and host == self._resolving
            what = "connect the UDP socket to" if fatal else "send a datagram to"
            exc = DnsError(
                f"could not resolve {host!r} to {what} it: {msg}; check the host name",
                code=code,
                action=act,
                socket=self,
            )
        elif action == lib.UVS_ACT_CONNECT:
            fatal = True
            exc = SocketError(
                f"cannot connect the UDP socket to {host!r}: {msg}",
                code=code,
                action=act,
                socket=self,
            )
        elif action == lib.UVS_ACT_READ and status == lib.UV_EMSGSIZE and peer is not None:
            exc = DatagramTruncated(
                f"datagram from {peer[0]} port {peer[1]} was truncated: it is larger than the "
                "receive buffer; it was dropped",
                peer,
                code=_errno.EMSGSIZE,
                action=act,
                socket=self,
            )
        else:
            where = peer if peer is not None else self._remote
            on = f" (peer {where[0]} port {where[1]})" if where is not None else ""
            verb = "receiving on" if action == lib.UVS_ACT_READ else "sending from"
            hint = ""
            if code == _errno.ECONNREFUSED:
                hint = "; nothing listens at the peer's port (ICMP port unreachable)"
            exc = SocketError(
                f"error {verb} UDP socket{on}: {msg}{hint}", code=code, action=act, socket=self
            )
        if fatal:
            self._resolving = None
            self._remote = None
        try:
            if self.event_cb is not None:
                self.event_cb(exc)
            else:
                self._loop._unhandled(exc)
        finally:
            if fatal and not self._closed:
                self.close()


@keyword_hints
def udp_socket(
    read_cb: Optional[ReadCb] = None,
    event_cb: Optional[EventCb] = None,
    *,
    local_host: Optional[str] = None,
    local_port: int = 0,
    remote_host: Optional[str] = None,
    remote_port: Optional[int] = None,
    reuse_port: bool = False,
    broadcast: bool = False,
) -> UdpSocket:
    """Make a UDP socket on the running loop.

    ``read_cb(sock, data, (host, port))`` gets each datagram with its sender; ``event_cb(err)``
    gets errors (``DnsError``, ``DatagramTruncated``, ``SocketError``; without it they go to the
    loop's unhandled-error path). ``local_host`` (an IP address; default any IPv4 address, or
    the remote's family) and ``local_port`` (0: any) are where it binds. With ``remote_host``
    (an IP address or a name, resolved without blocking) and ``remote_port`` the socket is
    connected: ``send(data)`` sends there and datagrams from elsewhere are dropped by the
    kernel. ``reuse_port`` sets SO_REUSEPORT (several sockets share the port), ``broadcast``
    SO_BROADCAST.
    """
    return _make(
        read_cb,
        event_cb,
        local_host=local_host,
        local_port=local_port,
        remote_host=remote_host,
        remote_port=remote_port,
        reuse_port=reuse_port,
        broadcast=broadcast,
    )


def _make(
    read_cb: Optional[ReadCb],
    event_cb: Optional[EventCb],
    *,
    local_host: Optional[str],
    local_port: int,
    remote_host: Optional[str],
    remote_port: Optional[int],
    reuse_port: bool,
    broadcast: bool,
    slot: int = 0,
) -> UdpSocket:
    """``udp_socket``; ``slot`` (tests only) is the receive buffer's size when not 64 KiB."""
    check_callable("read_cb", read_cb)
    check_callable("event_cb", event_cb)
    local_port = check_port(local_port)
    for name, flag in (("reuse_port", reuse_port), ("broadcast", broadcast)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, not {type(flag).__name__}")
    remote_addr: Any = None
    if remote_host is not None:
        remote_host = check_host("remote_host", remote_host)
        if remote_port is None:
            raise ValueError("remote_port is required with remote_host")
        remote_port = check_port(remote_port)
        if remote_port == 0:
            raise ValueError("remote_port must be in 1..65535 to connect, got 0")
        remote_addr = _parse(remote_host, remote_port)
    elif remote_port is not None:
        raise ValueError("remote_port was given without remote_host")
    local: Any = None
    if local_host is not None:
        local_host = check_host("local_host", local_host)
        if local_host == "localhost":
            local_host = "127.0.0.1"
        local = _parse(local_host, local_port)
        if local is None:
            raise ValueError(
                f"local_host must be an IP address (such as '127.0.0.1' or '::'), got "
                f"{local_host!r}"
            )
    elif remote_addr is not None:
        local = _any_address(_is_v6(remote_addr), local_port)
    elif remote_host is None:
        local = _any_address(False, local_port)
    loop = get_loop()
    sock = UdpSocket(loop, read_cb, event_cb)
    flags = (lib.UVS_UDP_REUSE_PORT if reuse_port else 0) | (
        lib.UVS_UDP_BROADCAST if broadcast else 0
    )
    err = ffi.new("int *")
    ptr = lib.uvs_udp_new(
        loop._ptr, sock._handle, ffi.NULL if local is None else local, flags, slot, err
    )
    if ptr == ffi.NULL:
        r = err[0]
        where = f"{local_host or ('::' if local is not None and _is_v6(local) else '0.0.0.0')}"
        raise SocketError(
            f"cannot bind a UDP socket to {where} port {local_port}: {strerror(r)} ({errname(r)})",
            code=errno_of(r),
            action="bind",
        )
    sock._ptr = ptr
    sock._v6 = local is not None and _is_v6(local)
    loop._live.add(sock)
    if local is not None:  # kept for after the close (the loop's end closes it too)
        sock._local_kept = sock._address(0)
    if remote_host is not None and remote_port is not None:
        if remote_addr is not None:
            r = int(lib.uvs_udp_connect(ptr, remote_addr))
            if r != 0:
                sock.close()
                raise SocketError(
                    f"cannot connect a UDP socket to {remote_host} port {remote_port}: "
                    f"{strerror(r)} ({errname(r)})",
                    code=errno_of(r),
                    action="connect",
                )
            sock._remote_kept = sock._address(1)
        else:
            r = int(
                lib.uvs_udp_connect_name(
                    ptr, remote_host.encode("idna"), remote_port, local_port, flags
                )
            )
            if r != 0:
                sock.close()
                raise SocketError(
                    f"cannot resolve {remote_host!r}: {strerror(r)}",
                    code=errno_of(r),
                    action="resolve",
                )
            sock._resolving = remote_host
        sock._remote = (remote_host, remote_port)
    return sock
