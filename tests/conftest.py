"""Shared helpers for the uvssl test suite.

Every test runs its event loop through ``run_loop``, which enforces a hard deadline: if the loop
has not ended by itself after ``timeout`` seconds, it is stopped with ``exit_event_loop()`` and
the test fails instead of hanging.

The deadline is armed from a watchdog thread through ``Loop.call_threadsafe`` rather than with a
``uvssl.delay`` timer: a pending timer is a handle, so it would keep the loop alive and a test
could never observe the loop "ending by itself" (no handles left) before the deadline. The
wakeup handle behind ``call_threadsafe`` is unreferenced, so the watchdog costs nothing while
the loop runs normally; when the deadline passes it schedules ``uvssl.exit_event_loop`` on the
loop (the very call the spec gives for stopping a loop that still has handles).
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


class LoopRun:
    """What happened during one ``run_loop``."""

    def __init__(self) -> None:
        self.deadline_hit = False
        self.loop: Optional[uvssl.Loop] = None
        self.thread: Optional[int] = None


def run_loop(
    start_fn: Optional[Callable[[], Any]] = None,
    timeout: float = 10,
    *,
    allow_deadline: bool = False,
    **kw: Any,
) -> LoopRun:
    """Run ``uvssl.start_event_loop(start_fn, **kw)`` with a hard deadline.

    Exceptions from the loop propagate. If the loop did not end by itself within ``timeout``
    seconds it is stopped with ``exit_event_loop`` and the test fails (unless
    ``allow_deadline``).
    """
    run = LoopRun()
    finished = threading.Event()
    ready = threading.Event()

    def watchdog() -> None:
        ready.wait(timeout)
        if finished.wait(timeout):
            return
        loop = run.loop
        if loop is None:
            return

        def expire() -> None:
            run.deadline_hit = True
            uvssl.exit_event_loop()

        try:
            loop.call_threadsafe(expire)
        except RuntimeError:
            pass  # the loop ended meanwhile

    def start() -> None:
        run.loop = uvssl.get_loop()
        run.thread = threading.get_ident()
        ready.set()
        if start_fn is not None:
            start_fn()

    dog = threading.Thread(target=watchdog, name="uvssl-test-watchdog", daemon=True)
    dog.start()
    try:
        uvssl.start_event_loop(start, **kw)
    finally:
        finished.set()
        ready.set()
        dog.join(5)
    if run.deadline_hit and not allow_deadline:
        pytest.fail(f"the event loop did not end by itself within {timeout} s", pytrace=False)
    return run


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
    errors: Optional[list] = None,
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
