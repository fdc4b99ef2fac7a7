"""Shared helpers for the uvssl test suite: the one loop harness and plain-socket helpers.

Every test runs its event loop through ``LoopHarness`` (or its shorthand ``run_loop``), which
enforces a hard deadline: if the loop has not ended after ``deadline`` seconds, it is stopped with
``exit_event_loop()`` and the test fails instead of hanging.

The deadline is armed from a watchdog thread through ``Loop.call_threadsafe`` rather than with a
``uvssl.delay`` timer: a pending timer is a handle, so it would keep the loop alive and a test
could never observe the loop "ending by itself" (no handles left) before the deadline. The
wakeup handle behind ``call_threadsafe`` is unreferenced, so the watchdog costs nothing while
the loop runs normally; when the deadline passes it schedules ``uvssl.exit_event_loop`` on the
loop (the very call the spec gives for stopping a loop that still has handles).

A loop ends in one of two ways, chosen per run:

* by itself, when no handles are left (``run_loop(start_fn)``, or ``LoopHarness.run(...,
  hold=False)``);
* held open until the test ends it (``LoopHarness.run(start_fn, until=...)``, the default):
  a 20 ms interval polls ``until`` and the test may also call ``h.done()`` (or ``h.fail(msg)``,
  which records a failure) from a callback. The interval is the handle that keeps the loop
  alive, as a test that waits for a peer thread needs.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
from typing import Any, Callable, Optional

import pytest

import uvssl

LOCALHOST = "127.0.0.1"

# tools/asan.sh sets UVSSL_TEST_SLOWDOWN: under AddressSanitizer everything (child processes
# included) runs several times slower, so tests that wait on whole processes widen their limits,
# and resident-memory figures mean nothing (the sanitizer keeps freed blocks in quarantine).
SLOWDOWN = float(os.environ.get("UVSSL_TEST_SLOWDOWN", "1"))
SANITIZED = SLOWDOWN > 1


class LoopHarness:
    """Runs one uvssl loop with a deadline; collects failures seen inside callbacks."""

    def __init__(self, deadline: float = 15.0) -> None:
        self.deadline = deadline
        self.failures: list[str] = []
        self.deadline_hit = False
        self.loop: Optional[uvssl.Loop] = None
        self.thread: Optional[int] = None
        self._done = False

    @property
    def timed_out(self) -> bool:
        return self.deadline_hit

    def done(self) -> None:
        """End the loop (call from inside it)."""
        if not self._done:
            self._done = True
            uvssl.exit_event_loop()

    def fail(self, msg: str) -> None:
        """Record a failure and end the loop (call from inside it)."""
        self.failures.append(msg)
        self.done()

    def run(
        self,
        start_fn: Optional[Callable[[], Any]] = None,
        until: Optional[Callable[[], object]] = None,
        *,
        hold: bool = True,
        allow_deadline: bool = False,
        check: bool = True,
        **loop_kw: Any,
    ) -> LoopHarness:
        """Run ``uvssl.start_event_loop(start_fn, **loop_kw)`` with the deadline.

        With ``hold`` (the default) the loop is kept open until ``until()`` is true or
        ``done()`` is called; without, it ends by itself when no handles are left. Exceptions
        from the loop propagate. Hitting the deadline fails the test (unless ``allow_deadline``),
        as do failures recorded with ``fail`` (unless ``check`` is false).
        """
        finished = threading.Event()
        ready = threading.Event()

        def watchdog() -> None:
            ready.wait(self.deadline)
            if finished.wait(self.deadline):
                return
            loop = self.loop
            if loop is None:
                return

            def expire() -> None:
                self.deadline_hit = True
                self._done = True
                uvssl.exit_event_loop()

            try:
                loop.call_threadsafe(expire)
            except RuntimeError:
                pass  # the loop ended meanwhile

        def poll() -> None:
            if not self._done and until is not None and until():
                self.done()

        def start() -> None:
            self.loop = uvssl.get_loop()
            self.thread = threading.get_ident()
            ready.set()
            if hold:
                uvssl.interval(poll, 0.02)
            if start_fn is not None:
                start_fn()

        dog = threading.Thread(target=watchdog, name="uvssl-test-watchdog", daemon=True)
        dog.start()
        try:
            uvssl.start_event_loop(start, **loop_kw)
        finally:
            finished.set()
            ready.set()
            dog.join(5)
        if self.deadline_hit and not allow_deadline:
            how = "end by itself" if not hold else "finish"
            self.failures.append(f"the event loop did not {how} within {self.deadline} s")
        if self.failures and (check or (self.deadline_hit and not allow_deadline)):
            pytest.fail("; ".join(self.failures), pytrace=False)
        return self


def run_loop(
    start_fn: Optional[Callable[[], Any]] = None,
    timeout: float = 10,
    *,
    allow_deadline: bool = False,
    **kw: Any,
) -> LoopHarness:
    """Run a loop that must end by itself within ``timeout`` seconds (``LoopHarness.run`` with
    ``hold=False``); returns the harness (``deadline_hit``, ``loop``, ``thread``)."""
    return LoopHarness(timeout).run(start_fn, hold=False, allow_deadline=allow_deadline, **kw)


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True if a plain listening socket can be bound to ``host``:``port`` right now.

    SO_REUSEADDR is set (as libuv and every server do) so that connections left in TIME_WAIT
    by a closed server do not count: only a socket still bound or listening does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def echo_server(
    host: str = LOCALHOST,
    port: int = 0,
    *,
    errors: Optional[list[Any]] = None,
    **kw: Any,
) -> uvssl.TcpServer:
    """Start (inside a loop) a server that echoes everything and closes on the peer's EOF.

    Errors other than EOF are appended to ``errors`` (if given) and close the connection.
    """

    def read_cb(sock: uvssl.Socket, data: bytes) -> None:
        sock.write(data)

    def event_cb(ev: BaseException) -> None:
        if not isinstance(ev, uvssl.TcpEof) and errors is not None:
            errors.append(ev)
        sock = getattr(ev, "socket", None)
        if sock is not None and not sock.closed:
            sock.close()

    return uvssl.tcp_server(host, port, read_cb, event_cb, **kw)


def raise_nofile_limit(wanted: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to ``wanted`` if the hard limit allows; else skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def has_ipv6_loopback() -> bool:
    """True if ::1 can be bound on this machine."""
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
