"""Every entry point from C into Python: the ``extern "Python"`` dispatchers.

How C calls Python. build_ffi.py declares one ``extern "Python"`` function per kind of event
(``uvs_py_on_read``, ``_on_batch``, ``_on_event``, ``_on_accept``, ``_on_timer``,
``_on_wakeup``, ``_on_sni``); ``@ffi.def_extern`` below attaches a Python function to each,
and ``lib.uvs_py_install()`` (run once, when this module is imported) points the native
core's callback table at them. Nothing else crosses from C to Python: no ``ffi.callback``.
Every native object that calls back carries, in its ``data`` field, an ``ffi.new_handle`` of
its Python object (a ``Loop``, ``Socket``, ``TcpServer``, ``Timer`` or ``Context``); the
dispatcher turns it back with ``ffi.from_handle``. The Python object keeps its handle (its
``_handle`` attribute) and stays in ``loop._live`` until the native side reports it closed
(``UVS_EV_CLOSED``), so a handle is never dangling while C may still use it. The dispatchers
know the objects only by the few methods they call (``_deliver``, ``_event``, ``_accept``,
``_fire``, ``_on_closed``, ``_on_wakeup``), and import nothing from loop.py, tcp.py or
tls.py: so ``loop.py`` imports this module, and the externs are attached before any loop can
exist. (``uvs_py_on_sni`` needs ``Context`` from context.py, which imports no loop.)

The GIL. cffi releases the GIL around every call into C, ``uv_run`` and the TLS work
included; a dispatcher's stub takes it on entry and gives it back on return. So the GIL is
held exactly while Python code runs, and one call carries as much as it can (see the batch).

Errors. An exception must never unwind into C. Each dispatcher catches what application
code raises and hands it to ``loop._app_error`` (which stops the loop, or with
``catch_app_errors=True`` reports it and goes on); once the loop is halted, dispatchers call
no application code. What escapes a dispatcher's own ``try`` (a Python signal handler runs at
the first bytecode after a signal, which may be a dispatcher's first line: Ctrl-C's
KeyboardInterrupt) goes to ``onerror=dispatch_error``, which stops this thread's loop
(``current.loop``) the same way, so it propagates out of ``start_event_loop``.

The batch. Calling into Python costs about as much as a small read itself, so the small
reads of one loop turn are collected in C (csrc/batch.c) and reach ``uvs_py_on_batch`` in one
call: one byte area and, per entry, the socket's handle and a length, in arrival order. A
read too big to copy cheaply, or one made while a batch is being handled, comes alone through
``uvs_py_on_read``, and so does a batch of one read (one busy connection), which costs less
that way. Both honour what the application did earlier in the same turn: entries of
a socket it closed are dropped, and a paused socket keeps its data (``sock._held``) until
``resume_reading()``. The read path runs once per read on every connection: it uses prebound
names.
"""

from __future__ import annotations

import logging
import ssl as _stdlib_ssl
import threading
from typing import TYPE_CHECKING, Any, Optional

from ._args import get_ident
from ._uvssl import ffi, lib
from .context import Context, resolve_ssl_ctx, ssl_owners

if TYPE_CHECKING:
    from .loop import Loop

log = logging.getLogger("uvssl")

#: ``current.loop``: the loop running in this thread (set by ``start_event_loop``), or None.
current = threading.local()

lib.uvs_py_install()

_from_handle = ffi.from_handle
_unpack = ffi.unpack
_EV_CLOSED = lib.UVS_EV_CLOSED
_EV_CONNECT = lib.UVS_EV_CONNECT


def dispatch_error(exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
    """The ``onerror`` of every dispatcher (cffi): what escaped a dispatcher's own ``try``.

    A Python signal handler runs at the first bytecode after the signal, which may be a
    dispatcher's first line, before its ``try`` (the KeyboardInterrupt of a Ctrl-C that woke
    an idle loop always lands there). Without this, cffi would print the exception and drop
    it; here it stops the thread's loop and propagates out of ``start_event_loop``, like an
    exception from a callback with ``catch_app_errors=False``.
    """
    if exc is None:
        return
    loop: Optional[Loop] = getattr(current, "loop", None)
    if loop is None:
        log.error("uvssl: exception in a native callback with no loop running", exc_info=exc)
        return
    loop._fail(exc)


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_read(data: Any, buf: Any, length: int) -> None:
    """Data arrived on a connection, too big to batch (or during a batch), or a batch of one
    piece (csrc/batch.c): deliver it now.
    """
    sock = _from_handle(data)
    loop = sock._loop
    if loop._halted or sock._closed:
        return
    if sock._held is not None:  # paused in this loop turn: kept until resume_reading()
        sock._held.append(_unpack(buf, length))
        return
    try:
        into = sock._deliver_into
        if into is not None:  # copied straight into the application's buffer
            into(buf, length)
            return
        sock._deliver(sock, _unpack(buf, length))
    except BaseException as exc:  # noqa: BLE001 - must not unwind into C
        loop._app_error(exc)


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_batch(loop_data: Any, datas: Any, lens: Any, n: int, buf: Any, length: int) -> None:
    """The small reads of one loop turn, in order (see csrc/batch.c).

    Entries of a socket closed earlier in the same batch are dropped, as the C side drops data
    that arrives after a close; a socket paused earlier in the batch keeps its data until
    ``resume_reading()``.
    """
    loop = _from_handle(loop_data)
    if loop._halted:
        return
    blob = _unpack(buf, length)
    off = 0
    for d, ln in zip(_unpack(datas, n), _unpack(lens, n)):
        chunk = blob[off : off + ln]
        off += ln
        sock = _from_handle(d)
        if sock._closed:
            continue
        if sock._held is not None:
            sock._held.append(chunk)
            continue
        try:
            sock._deliver(sock, chunk)
        except BaseException as exc:  # noqa: BLE001 - must not unwind into C
            loop._app_error(exc)
            if loop._halted:
                return


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_event(data: Any, kind: int, status: int, action: int) -> None:
    """Anything but data: connect, EOF, errors, written/drain, closed."""
    obj = _from_handle(data)
    loop = obj._loop
    if kind == _EV_CLOSED:
        obj._on_closed()
        return
    if loop._halted:
        return
    try:
        obj._event(kind, status, action)
    except BaseException as exc:  # noqa: BLE001
        loop._app_error(exc)


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_accept(server_data: Any, conn: Any, stage: int, buf: Any, length: int) -> None:
    """A server has a new connection: wrap it (leaving data NULL refuses it).

    ``stage`` (UVS_ACCEPT_*): just accepted; a TLS connection whose handshake is done (this
    stands for its connect event); or one whose handshake failed first (its error follows).
    A connection handed over after its handshake may bring the data that came with the end of
    the handshake (``length`` > 0): it is read after the connect, as on_read would deliver it.
    """
    server = _from_handle(server_data)
    loop = server._loop
    if loop._halted:
        return
    # copied first: buf is the loop's decryption buffer, which connect_cb may reuse (by
    # resuming another TLS socket, say)
    data = _unpack(buf, length) if length else None
    try:
        sock = server._accept(conn, stage)
    except BaseException as exc:  # noqa: BLE001
        loop._app_error(exc)
        return
    if data is None or sock._closed or loop._halted:
        return
    if sock._held is not None:  # paused by connect_cb: kept until resume_reading()
        sock._held.append(data)
        return
    try:
        sock._deliver(sock, data)
    except BaseException as exc:  # noqa: BLE001
        loop._app_error(exc)


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_timer(data: Any) -> None:
    """A timer fired."""
    timer = _from_handle(data)
    loop = timer._loop
    if loop._halted:
        return
    try:
        timer._fire()
    except BaseException as exc:  # noqa: BLE001
        loop._app_error(exc)


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_wakeup(loop_data: Any) -> None:
    """call_threadsafe work or a signal is pending."""
    loop = _from_handle(loop_data)
    try:
        loop._on_wakeup()
    except BaseException as exc:  # noqa: BLE001
        loop._fail(exc)


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_sni(ctx_data: Any, ssl: Any, name: Any, verdict: Any) -> Any:
    """A ClientHello named a server: ask the context's sni_callback which context to use."""
    ctx = _from_handle(ctx_data)
    sock = ssl_owners.get(int(ffi.cast("uintptr_t", ssl)))
    # The registry is shared by every loop's thread and keyed by address: an entry outlives its
    # SSL* (socket closed or detached but still referenced), and the address may by now belong
    # to a new SSL* in another loop. Only a socket of this thread's loop whose SSL* is this one
    # is the asker (reading its connection is safe here: it is this thread's).
    if sock is not None and (
        sock._loop.thread != get_ident()
        or sock._conn is None
        or lib.uvs_conn_ssl(sock._conn) != ssl
    ):
        sock = None
    server_name = None if name == ffi.NULL else ffi.string(name).decode("utf-8", "replace")
    try:
        cb = ctx.sni_callback
        if cb is None:  # removed since: keep the context
            return ffi.NULL
        chosen = cb(sock, server_name)
        if chosen is None:
            return ffi.NULL
        if isinstance(chosen, _stdlib_ssl.SSLContext):
            chosen = resolve_ssl_ctx(chosen, "server")
        if not isinstance(chosen, Context):
            raise TypeError(
                f"sni_callback must return a uvssl.Context or None, not {type(chosen).__name__}"
            )
        if sock is not None:
            sock._sni_context = chosen  # keep it alive as long as the connection
        return chosen._ctx
    except BaseException as exc:  # noqa: BLE001 - must not unwind into C
        verdict[0] = 1
        loop = getattr(sock, "_loop", None)
        if loop is not None:
            loop._app_error(exc)
        else:
            log.error("uvssl: exception in sni_callback", exc_info=exc)
        return ffi.NULL


# -- datagram sockets (csrc/udp.c, uvssl/udp.py) ---------------------------------------------

#: IPv4 senders already seen, by the key C computes for them (address << 16 | port): the
#: dispatcher hands out the same (host, port) tuple for the same sender.
udp_peers: dict[int, tuple[str, int]] = {}
#: port -> host -> the parsed native address, for ``UdpSocket.send_to``: filled when a sender
#: is first seen (an echo server's reply is not parsed again) and by ``send_to`` itself. Two
#: levels, so that a lookup builds no (host, port) tuple; see ``remember_target``.
udp_targets: dict[int, dict[str, Any]] = {}
_udp_targets_n = [0]  # entries in udp_targets, all ports together
UDP_CACHE_MAX = 4096  # both caches start over when they reach this many entries
_ADDR_T = ffi.typeof("uvs_addr_t *")
_HOST_BUF = ffi.new("char[]", 64)
_PORT_BUF = ffi.new("int *")


def udp_format(addr: Any) -> tuple[str, int]:
    """(host, port) of a native address (``uvs_addr_t *``)."""
    r = lib.uvs_addr_format(addr, _HOST_BUF, 64, _PORT_BUF)
    if r != 0:
        return ("", 0)
    return ffi.string(_HOST_BUF).decode("ascii"), int(_PORT_BUF[0])


def remember_target(host: str, port: int, addr: Any) -> None:
    """Keep the native address ``addr`` of (host, port) for ``send_to`` (bounded)."""
    if _udp_targets_n[0] >= UDP_CACHE_MAX:
        udp_targets.clear()
        _udp_targets_n[0] = 0
    hosts = udp_targets.get(port)
    if hosts is None:
        hosts = udp_targets[port] = {}
    if host not in hosts:
        _udp_targets_n[0] += 1
    hosts[host] = addr


def _udp_peer(addrs: Any, key: int) -> tuple[str, int]:
    """A sender's tuple: an IPv4 sender's is built from its key (address << 16 | port), once,
    and remembered both ways; any other's (key 2^48 + i) is formatted from ``addrs[i]``.
    """
    if key >> 48:
        return udp_format(addrs + (key & 0xFFFF))
    ip = key >> 16
    peer = (f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}", key & 0xFFFF)
    if len(udp_peers) >= UDP_CACHE_MAX:
        udp_peers.clear()
    udp_peers[key] = peer
    addr = ffi.new(_ADDR_T)
    if lib.uvs_addr_parse(peer[0].encode("ascii"), peer[1], addr) == 0:
        remember_target(peer[0], peer[1], addr)
    return peer


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_udp_batch(
    data: Any, lens: Any, keys: Any, addrs: Any, n: int, buf: Any, length: int
) -> None:
    """One socket's datagrams of one loop turn, in order, each with its sender (csrc/udp.c).

    Once the application closes the socket, the rest of the batch is dropped. This runs once
    per datagram: prebound names only.
    """
    sock = _from_handle(data)
    loop = sock._loop
    if loop._halted or sock._closed:
        return
    blob = _unpack(buf, length)
    if sock._remote is None:
        sock._out = []  # send_to collects the batch's replies (see UdpSocket._flush_collected)
    try:
        if n == 1:
            key = keys[0]
            peer = udp_peers.get(key) or _udp_peer(addrs, key)
            try:
                sock._deliver(sock, blob, peer)
            except BaseException as exc:  # noqa: BLE001 - must not unwind into C
                loop._app_error(exc)
            return
        peers = udp_peers
        off = 0
        for ln, key in zip(_unpack(lens, n), _unpack(keys, n)):
            end = off + ln
            peer = peers.get(key) or _udp_peer(addrs, key)
            try:
                sock._deliver(sock, blob[off:end], peer)
            except BaseException as exc:  # noqa: BLE001 - must not unwind into C
                loop._app_error(exc)
                if loop._halted:
                    return
            if sock._closed:
                return
            off = end
    finally:
        if sock._out is not None:
            try:
                sock._flush_collected()
            except BaseException as exc:  # noqa: BLE001
                loop._app_error(exc)


@ffi.def_extern(onerror=dispatch_error)  # type: ignore[untyped-decorator]
def uvs_py_on_udp_event(
    data: Any, kind: int, status: int, action: int, addr: Any, host: Any
) -> None:
    """Anything but data on a datagram socket: errors (with the address or host concerned)
    and its close.
    """
    sock = _from_handle(data)
    if kind == _EV_CLOSED:
        sock._on_closed()
        return
    loop = sock._loop
    if loop._halted or sock._closed:
        return
    peer = None if addr == ffi.NULL else udp_format(addr)
    if kind == _EV_CONNECT:  # connected to the address a name resolved to
        sock._resolving = None
        sock._remote_kept = peer
        return
    name = None if host == ffi.NULL else ffi.string(host).decode("utf-8", "replace")
    try:
        sock._event(status, action, peer, name)
    except BaseException as exc:  # noqa: BLE001
        loop._app_error(exc)
