"""The event loop: start/exit, timers, cross-thread calls, signals.

One loop runs per thread; several threads may each run their own at the same time. The
module-level functions act on the loop running in the calling thread (``_dispatch.current``).
``uv_run`` and all the native work run with the GIL released; the C side calls back into the
``extern "Python"`` dispatchers of ``uvssl/_dispatch.py`` (imported here, so they are attached
before any loop exists), which find the Python object through the cffi handle stored in the C
struct and call the methods of this module's objects.

An exception raised by application code inside a callback never unwinds through C: the
dispatcher records it and either stops the loop (it then propagates out of
``start_event_loop`` after every handle was closed) or, with ``catch_app_errors=True``, hands
it to ``default_event_cb`` (or logs it) and the loop goes on (``Loop._app_error``).

Signals. Python runs its signal handlers in the main thread, between two bytecodes; a loop
asleep in ``epoll_wait`` runs none. So the main thread's loop owns ``signal.set_wakeup_fd``:
the C-level handler writes to a socket pair whose other end libuv watches, the loop wakes, and
the wakeup dispatcher is the Python code in which the handler runs. A handler that raises (the
default SIGINT handler's KeyboardInterrupt) may do so on a dispatcher's first line, before its
``try``: every dispatcher has an ``onerror`` that treats that like an application error, so the
loop stops, closes every handle and the exception propagates out of ``start_event_loop``.
``signal_handler`` installs a Python handler that queues the application's callback as a loop
call; while one is set, the signal watch is a referenced handle, so the loop waits for it.
"""

from __future__ import annotations

import collections
import logging
import signal
import socket as _socket
import sys
import threading
import weakref
from typing import Any, Callable, Optional

from ._args import (
    check_callable,
    check_keywords,
    check_seconds,
    check_signum,
    check_thread,
    get_ident,
)
from ._dispatch import current
from ._uvssl import ffi, lib
from .errors import strerror

__all__ = [
    "Loop",
    "Timer",
    "start_event_loop",
    "with_event_loop",
    "exit_event_loop",
    "delay",
    "interval",
    "call_threadsafe",
    "get_loop",
    "signal_handler",
    "free_signal_handler",
    "free_signal_handlers",
]

log = logging.getLogger("uvssl")

_running: weakref.WeakSet[Loop] = weakref.WeakSet()
_running_lock = threading.Lock()


class Loop:
    """An event loop bound to the thread that runs it.

    Create loops through ``start_event_loop``; ``get_loop()`` returns the running one.

    The loop and everything made on it (sockets, servers, streams, timers) belong to its
    thread (``thread``): only ``call_threadsafe`` and ``stop`` may be called from another one;
    anything else raises ``RuntimeError`` there. Once the loop has ended, its objects hold no
    native state and any thread may use them (they behave as closed).
    """

    def __init__(
        self,
        *,
        catch_app_errors: bool = False,
        default_event_cb: Optional[Callable[[BaseException], Any]] = None,
    ) -> None:
        """Create the native loop (not yet running)."""
        check_callable("default_event_cb", default_event_cb)
        self.catch_app_errors = bool(catch_app_errors)
        self.default_event_cb = default_event_cb
        self.thread = threading.get_ident()
        self._handle = ffi.new_handle(self)
        ptr = lib.uvs_loop_new(self._handle)
        if ptr == ffi.NULL:
            raise MemoryError("uvssl: could not create an event loop")
        self._ptr: Any = ptr
        self._ptr_lock = threading.Lock()  # other threads' wakeups vs. this loop's teardown
        self._live: set[Any] = set()  # objects with a native side, until their CLOSED event
        self._error: Optional[BaseException] = None
        self._exiting = False
        self._halted = False  # error or exit: callbacks no longer reach application code
        self._ended = False  # torn down: no native state left, objects may be used anywhere
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._sig_socks: Optional[tuple[_socket.socket, _socket.socket]] = None
        # signal_handler(): signum -> (callback, the handler it replaced)
        self._sig_handlers: dict[int, tuple[Callable[[int], Any], Any]] = {}

    # -- state -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the loop runs."""
        return self._ptr is not None

    def now(self) -> float:
        """The loop's cached monotonic time, in seconds."""
        check_thread(self, "Loop.now()")
        self._check_open()
        return float(lib.uvs_loop_now(self._ptr))

    def _check_open(self) -> None:
        if self._ptr is None:
            raise RuntimeError("uvssl: this event loop has ended")

    def _foreign(self, what: str, obj: Any = None, hint: str = "") -> None:
        """``what`` (a method of ``obj``) was called from a thread that does not run this loop.

        A running loop's objects are touched by its own thread only (libuv and the TLS engine
        have no locks, and the C side runs with the GIL released): any other thread gets a
        RuntimeError naming ``call_threadsafe``. Once the loop has ended (every handle closed
        and freed) they hold no native state any more, so they may then be used from any
        thread: they behave as closed. See ``_args.check_thread``.
        """
        if self._ended:
            return
        if obj is not None:
            what = f"{type(obj).__name__}.{what}"
        raise RuntimeError(
            f"uvssl: {what} was used from a thread that does not run its event loop (thread "
            f"{self.thread} does); use loop.call_threadsafe(...) to run it there{hint}"
        )

    # -- application errors ------------------------------------------------------------------
    def _app_error(self, exc: BaseException) -> None:
        """Route an exception raised by application code inside a callback."""
        if self.catch_app_errors and isinstance(exc, Exception):
            if self.default_event_cb is not None:
                try:
                    self.default_event_cb(exc)
                except BaseException as second:  # noqa: BLE001 - must not unwind into C
                    self._fail(second)
            else:
                log.error("uvssl: exception in a callback", exc_info=exc)
            return
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._halted = True
        if self._ptr is not None:
            lib.uvs_loop_stop(self._ptr)

    @property
    def failed(self) -> bool:
        """True once an application error or exit request stopped the loop."""
        return self._error is not None or self._exiting

    def _unhandled(self, exc: BaseException) -> None:
        """An event with no event_cb: default_event_cb if given, otherwise a log line."""
        if self.default_event_cb is not None:
            try:
                self.default_event_cb(exc)
            except BaseException as second:  # noqa: BLE001
                self._app_error(second)
        else:
            log.warning(
                "uvssl: unhandled %s (no event_cb took it; give one, or start_event_loop a "
                "default_event_cb): %s",
                type(exc).__name__,
                exc,
            )

    # -- running -----------------------------------------------------------------------------
    def _run(self, start_fn: Optional[Callable[[], Any]]) -> None:
        with _running_lock:
            _running.add(self)
        # this thread's loop, for the native thread check of Socket.write (see loop.c)
        outer = lib.uvs_loop_bind_thread(self._ptr)
        self._watch_signals()
        try:
            if start_fn is not None:
                try:
                    start_fn()
                except BaseException as exc:  # noqa: BLE001
                    self._fail(exc)
            if self._error is None and not self._exiting:
                lib.uvs_loop_run(self._ptr)
        finally:
            self._restore_signal_handlers()
            with self._ptr_lock:
                ptr, self._ptr = self._ptr, None
            # uvs_loop_free closes every handle itself and runs their CLOSED events. One native
            # call, not two: each call hands the GIL back and forth, and while another thread
            # keeps calling into C (hammering call_threadsafe, say) each reacquisition can wait
            # a long time (CPython wakes a waiting thread on every release, and it loses most
            # races for the lock, so it never asks the busy thread to yield).
            r = lib.uvs_loop_free(ptr)
            lib.uvs_loop_bind_thread(outer)
            self._live.clear()
            self._ended = True
            self._unwatch_signals()
            with _running_lock:
                _running.discard(self)
            if r != 0:
                log.error("uvssl: event loop did not close cleanly: %s", strerror(r))
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def exit(self) -> None:
        """Stop the loop: every handle is closed and ``start_event_loop`` returns.

        From the loop's own thread only; ``stop()`` works from any thread.
        """
        if get_ident() != self.thread:
            self._foreign("Loop.exit()", hint=" (or loop.stop(), which any thread may call)")
        self._exiting = True
        self._halted = True
        if self._ptr is not None:
            lib.uvs_loop_stop(self._ptr)

    # -- signals: let Ctrl-C interrupt a loop that sleeps in the kernel ----------------------
    def _watch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            a, b = _socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            old = signal.set_wakeup_fd(b.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            return
        if old != -1:
            # someone else (asyncio?) owns the wakeup fd: leave it to them
            signal.set_wakeup_fd(old)
            a.close()
            b.close()
            return
        if lib.uvs_loop_watch_fd(self._ptr, a.fileno()) != 0:
            signal.set_wakeup_fd(-1)
            a.close()
            b.close()
            return
        self._sig_socks = (a, b)

    def _unwatch_signals(self) -> None:
        if self._sig_socks is None:
            return
        signal.set_wakeup_fd(-1)
        for s in self._sig_socks:
            s.close()
        self._sig_socks = None

    # -- signal handlers on the loop (cl-async's signal-handler) ------------------------------
    def signal_handler(self, signum: int, cb: Callable[[int], Any]) -> None:
        """Run ``cb(signum)`` on this loop for each delivery of signal ``signum``, instead of
        the signal's default action (or the Python handler set before).

        Setting a handler again for the same signal replaces the callback. While any handler
        is set the loop keeps running, as it would for a server: ``free_signal_handler`` or
        ``free_signal_handlers`` let it end, and the loop's end restores every handler.
        Python runs signal handlers only in the main thread, so this needs the main thread's
        loop; two deliveries before the loop gets to run may be counted as one.
        """
        check_thread(self, "signal_handler()")
        self._check_open()
        check_callable("cb", cb, optional=False)
        num = check_signum(signum)
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "uvssl: signal_handler() needs the event loop of the main thread (Python runs"
                " signal handlers only there); use it in the loop that runs in the main thread"
            )
        if self._sig_socks is None:
            raise RuntimeError(
                "uvssl: signal_handler() cannot wake this loop: the signal wakeup descriptor"
                " (signal.set_wakeup_fd) belongs to another event loop, such as asyncio's"
            )
        try:
            old = signal.signal(num, self._on_signal)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"uvssl: signal {_signal_name(num)} cannot be handled ({e}); SIGKILL and SIGSTOP"
                " never can"
            ) from None
        if num in self._sig_handlers:
            old = self._sig_handlers[num][1]  # keep what was there before the first one
        elif not self._sig_handlers:
            lib.uvs_loop_ref_sigwatch(self._ptr, 1)
        self._sig_handlers[num] = (cb, old)

    def free_signal_handler(self, signum: int) -> None:
        """Remove this loop's handler for ``signum`` (restoring the one it replaced); a signal
        with no handler here is left alone.
        """
        check_thread(self, "free_signal_handler()")
        num = check_signum(signum)
        entry = self._sig_handlers.pop(num, None)
        if entry is None:
            return
        signal.signal(num, entry[1])
        if not self._sig_handlers and self._ptr is not None:
            lib.uvs_loop_ref_sigwatch(self._ptr, 0)

    def free_signal_handlers(self) -> None:
        """Remove every signal handler this loop set (restoring the ones they replaced)."""
        for num in list(self._sig_handlers):
            self.free_signal_handler(num)

    def _restore_signal_handlers(self) -> None:
        for num, (_cb, old) in self._sig_handlers.items():
            signal.signal(num, old)
        self._sig_handlers.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Python's handler, run in the main thread between two bytecodes (of any callback):
        # queue the application's callback as a loop call, so it runs as a callback of its own
        if signum not in self._sig_handlers or self._ptr is None:
            return
        self._calls.append((self._run_signal_cb, (signum,)))
        lib.uvs_loop_wakeup(self._ptr)

    def _run_signal_cb(self, signum: int) -> None:
        entry = self._sig_handlers.get(signum)
        if entry is not None:  # not freed since the delivery
            entry[0](signum)

    def _on_wakeup(self) -> None:
        if self._sig_socks is not None:
            try:
                while self._sig_socks[0].recv(512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
        while self._calls:
            cb, args = self._calls.popleft()
            if self.failed:
                return
            try:
                cb(*args)
            except BaseException as exc:  # noqa: BLE001
                self._app_error(exc)

    # -- cross-thread calls ------------------------------------------------------------------
    def call_threadsafe(self, cb: Callable[..., Any], *args: Any) -> None:
        """Run ``cb(*args)`` in this loop's thread soon; callable from any thread."""
        check_callable("cb", cb, optional=False)
        with self._ptr_lock:
            if self._ptr is None:
                raise RuntimeError("uvssl: this event loop has ended")
            self._calls.append((cb, args))
            lib.uvs_loop_wakeup(self._ptr)

    def stop(self) -> None:
        """Stop the loop like ``exit()``; callable from any thread.

        Every handle is closed and ``start_event_loop`` returns. From the loop's own thread
        this is ``exit()``. From another thread it queues ``exit()`` on the loop and wakes it
        (like ``call_threadsafe``), so it returns at once and the loop ends within a turn, idle
        or busy. Stopping twice, or a loop that has already ended (or is ending), is harmless:
        no error, nothing happens.
        """
        if get_ident() == self.thread:
            self.exit()
            return
        # The wakeup is sent under _ptr_lock, which _run takes to clear _ptr before it frees
        # the native loop: a uv_async_send on a freed loop would be a use after free.
        with self._ptr_lock:
            if self._ptr is None:
                return
            self._calls.append((self.exit, ()))
            lib.uvs_loop_wakeup(self._ptr)

    # -- timers ------------------------------------------------------------------------------
    def delay(self, cb: Callable[..., Any], seconds: float = 0, *args: Any) -> Timer:
        """Call ``cb(*args)`` once after ``seconds``."""
        check_thread(self, "Loop.delay()")
        check_callable("cb", cb, optional=False)
        s = check_seconds("seconds", seconds, allow_zero=True)
        return Timer(self, cb, args, s, 0.0)

    def interval(self, cb: Callable[..., Any], seconds: float, *args: Any) -> Timer:
        """Call ``cb(*args)`` every ``seconds`` until the timer is cancelled."""
        check_thread(self, "Loop.interval()")
        check_callable("cb", cb, optional=False)
        s = check_seconds("seconds", seconds, allow_zero=False)
        return Timer(self, cb, args, s, s)


class Timer:
    """A one-shot (``delay``) or repeating (``interval``) timer; ``cancel()`` stops it."""

    __slots__ = ("_loop", "_cb", "_args", "_repeat", "_ptr", "_handle", "__weakref__")

    def __init__(
        self, loop: Loop, cb: Callable[..., Any], args: tuple[Any, ...], after: float, every: float
    ) -> None:
        """Start the timer on ``loop`` (use ``delay``/``interval``)."""
        loop._check_open()
        self._loop = loop
        self._cb = cb
        self._args = args
        self._repeat = every > 0
        self._handle = ffi.new_handle(self)
        err = ffi.new("int *")
        after_ms = int(round(after * 1000))
        every_ms = max(1, int(round(every * 1000))) if every > 0 else 0
        ptr = lib.uvs_timer_new(loop._ptr, self._handle, after_ms, every_ms, err)
        if ptr == ffi.NULL:
            raise OSError(f"uvssl: could not start a timer: {strerror(err[0])}")
        self._ptr: Any = ptr
        loop._live.add(self)

    @property
    def active(self) -> bool:
        """True until the timer fired (one-shot) or was cancelled."""
        return self._ptr is not None

    def cancel(self) -> None:
        """Stop the timer; its callback will not run again. Cancelling twice is harmless."""
        if get_ident() != self._loop.thread:
            self._loop._foreign("Timer.cancel()")
        ptr, self._ptr = self._ptr, None
        if ptr is not None and self._loop._ptr is not None:
            lib.uvs_timer_close(ptr)

    def _fire(self) -> None:
        if not self._repeat:
            self.cancel()
        self._cb(*self._args)

    def _on_closed(self) -> None:
        self._ptr = None
        self._loop._live.discard(self)


# -- module-level API ------------------------------------------------------------------------


def get_loop() -> Loop:
    """Return the loop running in this thread (RuntimeError if there is none)."""
    loop: Optional[Loop] = getattr(current, "loop", None)
    if loop is None or loop._ptr is None:
        raise RuntimeError(
            "uvssl: no event loop is running in this thread; call this inside start_event_loop()"
        )
    return loop


def start_event_loop(
    start_fn: Optional[Callable[[], Any]] = None,
    *,
    catch_app_errors: bool = False,
    default_event_cb: Optional[Callable[[BaseException], Any]] = None,
) -> None:
    """Run an event loop in this thread until no handles remain or ``exit_event_loop()``.

    ``start_fn()`` runs first, inside the loop: it typically starts servers, connections and
    timers. With ``catch_app_errors=False`` an exception from any callback stops the loop,
    closes every handle and propagates from here; with ``True`` it goes to
    ``default_event_cb(exc)`` (or is logged to the ``uvssl`` logger) and the loop goes on.
    Events that have no ``event_cb`` (a connection error on a socket without one) also go to
    ``default_event_cb`` when it is given.
    """
    check_callable("start_fn", start_fn)
    if getattr(current, "loop", None) is not None and current.loop._ptr is not None:
        raise RuntimeError("uvssl: an event loop is already running in this thread")
    aio = sys.modules.get("asyncio")
    if aio is not None and aio._get_running_loop() is not None:
        raise RuntimeError(
            "uvssl: start_event_loop() would block the running asyncio loop until uvssl's loop "
            "ends; inside asyncio use uvssl.aio (await uvssl.aio.attach() runs uvssl's loop "
            "in asyncio's), or run start_event_loop in another thread"
        )
    loop = Loop(catch_app_errors=catch_app_errors, default_event_cb=default_event_cb)
    current.loop = loop
    try:
        loop._run(start_fn)
    finally:
        current.loop = None


def with_event_loop(fn: Callable[[], Any], **kw: Any) -> None:
    """The same as ``start_event_loop(fn, **kw)`` (cl-async's ``with-event-loop``)."""
    check_keywords("with_event_loop", kw, ("catch_app_errors", "default_event_cb"))
    start_event_loop(fn, **kw)


def exit_event_loop() -> None:
    """Stop this thread's loop: every handle is closed and ``start_event_loop`` returns."""
    get_loop().exit()


def delay(cb: Callable[..., Any], seconds: float = 0, *args: Any) -> Timer:
    """Call ``cb(*args)`` once, ``seconds`` from now, in this thread's loop."""
    return get_loop().delay(cb, seconds, *args)


def interval(cb: Callable[..., Any], seconds: float, *args: Any) -> Timer:
    """Call ``cb(*args)`` every ``seconds`` in this thread's loop until cancelled."""
    return get_loop().interval(cb, seconds, *args)


def call_threadsafe(cb: Callable[..., Any], *args: Any) -> None:
    """Run ``cb(*args)`` in a loop's thread, from any thread.

    The target is the loop running in the calling thread if there is one, otherwise the only
    loop running in the process. With several loops running, call ``loop.call_threadsafe`` on
    the one you mean (``get_loop()`` inside it returns it).
    """
    loop: Optional[Loop] = getattr(current, "loop", None)
    if loop is None or loop._ptr is None:
        with _running_lock:
            loops = [lp for lp in _running if lp._ptr is not None]
        if len(loops) != 1:
            raise RuntimeError(
                "uvssl: call_threadsafe needs a target loop: "
                + ("none is running" if not loops else f"{len(loops)} are running")
                + "; use loop.call_threadsafe() on the loop you mean"
            )
        loop = loops[0]
    loop.call_threadsafe(cb, *args)


def signal_handler(signum: int, cb: Callable[[int], Any]) -> None:
    """Run ``cb(signum)`` on this thread's loop for each delivery of ``signum`` instead of the
    default action (cl-async's ``signal-handler``); see ``Loop.signal_handler``.
    """
    get_loop().signal_handler(signum, cb)


def free_signal_handler(signum: int) -> None:
    """Remove this thread's loop's handler for ``signum``, restoring the one it replaced."""
    get_loop().free_signal_handler(signum)


def free_signal_handlers() -> None:
    """Remove every signal handler this thread's loop set, restoring the ones they replaced."""
    get_loop().free_signal_handlers()


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)
