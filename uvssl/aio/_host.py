"""uvssl's loop run by the asyncio loop of the same thread.

Theory of operation
-------------------
libuv keeps everything it waits for in one epoll set, whose descriptor (the *backend
descriptor*) becomes readable when any descriptor in the set is ready. The asyncio loop (its own
selector loop or uvloop) watches that one descriptor with ``add_reader``; when it is readable,
``_Host.turn`` runs one libuv turn that does not block (``uvs_loop_run_once``: due timers,
ready sockets, the TLS engine, closes, then the flush of everything the turn's callbacks
wrote). The turn returns how long libuv may sleep: the host arms one asyncio timer for it (a
``call_soon`` for 0, none for "forever"), so uvssl's timers fire when they are due, with no
polling interval. Both loops share the thread: no helper thread, no locks.

Work made outside a turn (a coroutine writes to a transport, opens a connection, arms a
timer) must reach the next turn: the C side *kicks* an embedded loop (``uvs__kick``: a
``uv_async_send`` on a handle of its own, which makes the backend descriptor readable) the
first time such a change waits for a turn. Inside a turn the kick is skipped: the turn's own
flush sees the change.

Errors. Exceptions raised by application code in uvssl callbacks go to the asyncio loop's
exception handler (``call_exception_handler``), as asyncio does for its callbacks; a
``KeyboardInterrupt`` or ``SystemExit`` propagates out of the turn, so out of ``run_forever``.

Closing. The host wraps the asyncio loop's ``close`` (on the instance): before the loop closes,
every uvssl handle is closed and the native loop freed; transports still open are marked lost
without calling their protocols (asyncio's own transports are simply dropped then), and no
ResourceWarning follows. A host whose asyncio loop is gone is also torn down when the thread
next asks for one. ``exit_event_loop()`` inside uvssl.aio closes every uvssl handle; the
asyncio loop goes on.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Callable, Optional

from .._dispatch import current
from .._uvssl import lib
from ..errors import strerror
from ..loop import Loop, _running, _running_lock

_hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Host] = weakref.WeakKeyDictionary()

_run_once = lib.uvs_loop_run_once


class _Host:
    """One uvssl loop driven by one asyncio loop (see the module's docstring)."""

    def __init__(self, aloop: asyncio.AbstractEventLoop) -> None:
        self.aloop = aloop
        self.loop = Loop(catch_app_errors=True, default_event_cb=self._app_error)
        ptr = self.loop._ptr
        r = lib.uvs_loop_embed(ptr)
        if r != 0:
            lib.uvs_loop_free(ptr)
            self.loop._ptr = None
            raise OSError(f"uvssl.aio: cannot embed uvssl's loop in asyncio: {strerror(r)}")
        self._outer = lib.uvs_loop_bind_thread(ptr)
        self.fd = int(lib.uvs_loop_backend_fd(ptr))
        self._timer: Optional[asyncio.TimerHandle] = None
        self._soon: Optional[asyncio.Handle] = None
        self._due = -1.0
        self.closed = False
        self.transports: weakref.WeakSet[Any] = weakref.WeakSet()
        self.servers: weakref.WeakSet[Any] = weakref.WeakSet()
        current.loop = self.loop
        with _running_lock:
            _running.add(self.loop)
        aloop.add_reader(self.fd, self.turn)
        self._wrap_close()
        self.turn()  # the kick's descriptor joins the backend's set in a first turn

    # -- turns -------------------------------------------------------------------------------
    def turn(self) -> None:
        """Run one libuv turn and arm the asyncio timer for the next one."""
        loop = self.loop
        ptr = loop._ptr
        if ptr is None:
            return
        timeout = _run_once(ptr)
        if loop._exiting:  # exit_event_loop(): every uvssl handle closes, asyncio goes on
            loop._exiting = loop._halted = False
            lib.uvs_loop_close_all(ptr)
            timeout = 0
        err = loop._error
        if err is not None:  # KeyboardInterrupt, SystemExit: out of the asyncio loop's run
            loop._error = None
            loop._halted = False
            self._arm(0)
            raise err
        self._arm(timeout)

    def _arm(self, timeout_ms: int) -> None:
        if timeout_ms < 0:
            self._cancel_timer()
            return
        if timeout_ms == 0:
            self._cancel_timer()
            if self._soon is None:
                self._soon = self.aloop.call_soon(self._soon_turn)
            return
        due = self.aloop.time() + timeout_ms / 1000.0
        if self._timer is not None:
            # libuv counts whole milliseconds, so the same deadline seen from two turns may
            # differ by up to one: keep the armed timer unless it is more than that late, or
            # early enough to cost a turn for nothing (a timer due later, such as a TLS
            # handshake's timeout, would otherwise be re-armed on every turn)
            if due - 0.002 <= self._due <= due + 0.001:
                return
            self._timer.cancel()
        self._due = due
        self._timer = self.aloop.call_at(due, self._timer_turn)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _soon_turn(self) -> None:
        self._soon = None
        self.turn()

    def _timer_turn(self) -> None:
        self._timer = None
        self.turn()

    # -- errors ------------------------------------------------------------------------------
    def _app_error(self, exc: BaseException) -> None:
        self.aloop.call_exception_handler(
            {"message": "uvssl.aio: exception in a uvssl callback", "exception": exc}
        )

    # -- closing -----------------------------------------------------------------------------
    def _wrap_close(self) -> None:
        aloop = self.aloop
        original: Callable[[], None] = aloop.close
        host_ref = weakref.ref(self)

        def close() -> None:
            host = host_ref()
            if host is not None:
                host.close()
            original()

        close.__doc__ = original.__doc__
        aloop.close = close  # type: ignore[method-assign]

    def close(self) -> None:
        """Close every uvssl handle and free the native loop (the asyncio loop is closing)."""
        if self.closed:
            return
        self.closed = True
        _hosts.pop(self.aloop, None)
        loop = self.loop
        for t in list(self.transports):
            t._host_closing()
        for s in list(self.servers):
            s._host_closing()
        self._cancel_timer()
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if not self.aloop.is_closed():
            self.aloop.remove_reader(self.fd)
        with loop._ptr_lock:
            ptr, loop._ptr = loop._ptr, None
        r = lib.uvs_loop_free(ptr) if ptr is not None else 0
        lib.uvs_loop_bind_thread(self._outer)
        loop._live.clear()
        loop._ended = True
        with _running_lock:
            _running.discard(loop)
        if getattr(current, "loop", None) is loop:
            current.loop = None
        if r != 0:
            raise OSError(f"uvssl.aio: the uvssl loop did not close cleanly: {strerror(r)}")


def host(aloop: Optional[asyncio.AbstractEventLoop] = None) -> _Host:
    """The host for ``aloop`` (the running asyncio loop by default), made on first use."""
    if aloop is None:
        try:
            aloop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "uvssl.aio: no asyncio loop is running; call this from a coroutine "
                "(inside asyncio.run(...))"
            ) from None
    h = _hosts.get(aloop)
    if h is not None and not h.closed:
        return h
    prior = getattr(current, "loop", None)
    if prior is not None and prior._ptr is not None:
        owner = next((x for x in list(_hosts.values()) if x.loop is prior), None)
        if owner is None:
            raise RuntimeError(
                "uvssl.aio: a uvssl loop started by start_event_loop() is running in this "
                "thread; uvssl.aio needs the thread's asyncio loop to run uvssl's"
            )
        if owner.aloop.is_closed() or not owner.aloop.is_running():
            owner.close()  # its asyncio loop is done with (never closed): free it now
        else:
            raise RuntimeError(
                "uvssl.aio: this thread's uvssl loop belongs to another running asyncio loop"
            )
    h = _Host(aloop)
    _hosts[aloop] = h
    return h


def running_host() -> Optional[_Host]:
    """The host of the running asyncio loop, if it has one (no new host is made)."""
    try:
        aloop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return _hosts.get(aloop)
