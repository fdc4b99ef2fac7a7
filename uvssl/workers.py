"""Worker processes: one port served by several processes, each with its own event loop.

Theory of operation
-------------------
``serve_workers(n, setup_fn)`` is a small supervisor written in plain Python. libuv loops do
not survive ``fork()``, so the parent never runs a uvssl loop: it refuses to start while one
runs in the process, forks the workers before any exists, and keeps its own work to signals,
reaping and restarts. Each worker, right after the fork, runs ``start_event_loop(setup_fn)``
with a loop of its own and exits (``os._exit``) when it ends: a worker never returns into the
caller's code.

Sharing the port. In a worker every ``tcp_server`` / ``tcp_ssl_server`` listens with
SO_REUSEPORT whatever ``reuse_port`` says (``uvssl.tcp._worker_reuse_port``): the kernel then
spreads new connections over the workers' listening sockets. Port 0 would give every worker a
port of its own; pick the port in the parent first (``reserve_port``).

Pipes. Each worker has two pipes to the parent. Worker to parent: one byte when ``setup_fn``
has returned (the worker is "ready"), then nothing; the parent sees the end of the pipe when
the worker is gone, which wakes its ``select`` (no SIGCHLD handler is needed, and the parent
reaps only its own workers, never other children of the process). Parent to worker: session
ticket keys, as a count byte, a 4-byte generation number and that many 80-byte keys, or the
order to stop at once (a second Ctrl-C: count 255). A thread in the worker reads the pipe and
hands each message to the loop with ``call_threadsafe``. The end
of this pipe means the parent is gone (killed, even with SIGKILL): the worker then shuts down
gracefully, as on SIGTERM, so no worker outlives its supervisor. A pipe is portable and lets
the worker drain; ``PR_SET_PDEATHSIG`` would be Linux only and would fire when the forking
*thread* ends. A worker closes every descriptor of the supervisor it inherited (other workers' pipe
ends included, or a sibling would hold a pipe open after the parent died).

Signals. The parent handles SIGTERM, SIGINT and SIGHUP with Python handlers and
``signal.set_wakeup_fd`` (its ``select`` wakes at once). SIGTERM or SIGINT: SIGTERM to every
worker; each shuts every server on its loop down gracefully (``TcpServer.shutdown(
graceful_timeout)``) and exits once they are done. A second SIGINT (Ctrl-C twice) tells every
worker through its pipe to stop at once (close everything and exit). Workers still alive
``graceful_timeout + KILL_MARGIN`` seconds after the first signal get SIGKILL. SIGHUP is
forwarded; each worker calls ``reload_servers()``: every TLS server's context re-reads its
files. ``setup_fn`` may install its own handlers with ``signal_handler``; they replace the
worker's.

Restarts. A worker that dies while the supervisor is not stopping is restarted after a delay
that starts at ``RESTART_DELAY_MIN`` (0.1 s) and doubles up to ``RESTART_DELAY_MAX`` (10 s);
it goes back to the minimum once a worker of that slot has lived ``RESTART_RESET`` (30 s).
Each exit and restart is logged to the ``uvssl`` logger with the pid and the exit status.
A worker that dies before ``setup_fn`` returned failed to boot; after ``MAX_BOOT_FAILURES``
(5) such failures in a row (no worker became ready in between) the supervisor stops the others
and raises ``RuntimeError``: a setup that cannot work is not retried forever.

Session ticket keys. Before forking, the parent makes a key (``tickets.new_key()``). In each
worker, every TLS server context that has no ticket keys of its own
(``tickets.key_count(ctx) == 0``) gets the parent's keys: when ``setup_fn`` returns, at the
next loop turn after any later server starts (before it can accept), and after each SIGHUP and
rotation. So a client resumes its session on any worker. Every ``TICKET_KEY_ROTATION`` seconds
(3600) the parent makes a new key and sends the list ``tickets.rotated(keys, new,
keep=TICKET_KEYS_KEPT)`` (3) to the workers: a key issues tickets for an hour and is accepted
for two more, which covers OpenSSL's two-hour ticket lifetime. Keys never travel through argv
or the environment; a worker started later inherits the current list with the fork.
"""

from __future__ import annotations

# Imported here, in the parent, before any fork: socket.getaddrinfo imports it on first use, and
# a thread of the parent importing it at the moment of a fork would leave its module lock held
# in the child, where the worker's first getaddrinfo would then wait forever.
import encodings.idna  # noqa: F401
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import weakref
from typing import Any, Callable, Optional

from . import tcp as _tcp
from . import tickets
from ._args import check_callable, check_keywords
from .context import Context
from .loop import (
    _running,
    _running_lock,
    exit_event_loop,
    free_signal_handlers,
    get_loop,
    start_event_loop,
)
from .loop import signal_handler as _signal_handler
from .tcp import TcpServer

__all__ = [
    "KILL_MARGIN",
    "MAX_BOOT_FAILURES",
    "RESTART_DELAY_MAX",
    "RESTART_DELAY_MIN",
    "RESTART_RESET",
    "TICKET_KEYS_KEPT",
    "TICKET_KEY_ROTATION",
    "in_worker",
    "reload_servers",
    "reserve_port",
    "serve_workers",
]

log = logging.getLogger("uvssl")

#: The first restart delay of a worker that died (seconds); it doubles at each death in a row.
RESTART_DELAY_MIN = 0.1
#: The longest restart delay (seconds).
RESTART_DELAY_MAX = 10.0
#: A worker that lived this long (seconds) resets its slot's delay to the minimum.
RESTART_RESET = 30.0
#: Workers that die before ``setup_fn`` returned, this many times in a row, stop the supervisor.
MAX_BOOT_FAILURES = 5
#: Seconds beyond ``graceful_timeout`` a stopping worker has before it is killed (SIGKILL).
KILL_MARGIN = 5.0
#: Seconds between two rotations of the shared session ticket keys (None: never).
TICKET_KEY_ROTATION: Optional[float] = 3600.0
#: How many shared keys the workers hold: the one that issues tickets and the previous ones.
TICKET_KEYS_KEPT = 3

_KEY_LEN = tickets.KEY_LENGTH
_STOP_NOW = 0xFF  # the count byte of the pipe message that says "stop now" (a second Ctrl-C)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# The worker this process is (None in the supervisor and in any other process).
_worker: Optional[_Worker] = None
# Sockets reserve_port() made: a worker closes its copies of them.
_reserved: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def in_worker() -> bool:
    """True in a worker process started by ``serve_workers``."""
    return _worker is not None


def reserve_port(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind (without listening) a socket with SO_REUSEPORT to ``host``:``port`` and return it.

    Call it in the parent before ``serve_workers``: with ``port=0`` it picks a free port
    (``sock.getsockname()[1]``) for the workers' servers to share. While it stays open, no
    process without SO_REUSEPORT (and the same user) can take the port, even while every worker
    is down; it never receives a connection, as it does not listen. Workers close their copies.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"reserve_port: cannot bind {host!r} port {port}: {exc.strerror}"
        ) from None
    _reserved.add(sock)
    return sock


def reload_servers() -> int:
    """Reload the context of every TLS server on this thread's loop (``Context.reload()``:
    its certificate, key and CA files are read again; on any error the old ones stay).

    This is what a worker does on SIGHUP. A context shared by several servers is reloaded
    once. Errors are logged to the ``uvssl`` logger, not raised; returns how many contexts
    were reloaded.
    """
    loop = get_loop()
    done = 0
    for ctx in _server_contexts(loop):
        reload = getattr(ctx, "reload", None)
        if reload is None:
            log.error("uvssl: cannot reload %r: this Context has no reload()", ctx)
            continue
        try:
            reload()
        except Exception as exc:  # noqa: BLE001 - logged: the server goes on with the old one
            log.error("uvssl: reloading a server context failed (it keeps what it had): %s", exc)
            continue
        done += 1
    return done


def _server_contexts(loop: Any) -> list[Context]:
    """The distinct contexts of the TLS servers on ``loop`` that still listen."""
    out: list[Context] = []
    seen: set[int] = set()
    for obj in list(loop._live):
        if not isinstance(obj, TcpServer) or obj.closed:
            continue
        ctx = getattr(obj, "context", None)
        if isinstance(ctx, Context) and id(ctx) not in seen:
            seen.add(id(ctx))
            out.append(ctx)
    return out


def _describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def _flush_stdio() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except (OSError, ValueError):
            pass


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


# -- the worker side ---------------------------------------------------------------------------


class _Worker:
    """What runs in a worker process: the loop's start function, signals, the key pipe."""

    def __init__(
        self,
        index: int,
        setup_fn: Callable[[], Any],
        graceful_timeout: float,
        keys: list[bytes],
        generation: int,
        keys_r: int,
        status_w: int,
    ) -> None:
        self.index = index
        self.pid = os.getpid()
        self.setup_fn = setup_fn
        self.graceful_timeout = graceful_timeout
        self.keys = keys
        self.generation = generation
        self.keys_r = keys_r
        self.status_w = status_w
        self.loop: Any = None
        self.stopping = False
        self.finished = False
        self.left = 0
        self.share_timer: Any = None
        # contexts given the shared keys -> the generation they hold
        self.installed: weakref.WeakKeyDictionary[Context, int] = weakref.WeakKeyDictionary()

    def name(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def start(self) -> None:
        self.loop = get_loop()
        _signal_handler(signal.SIGTERM, self.on_stop)
        _signal_handler(signal.SIGINT, self.on_stop)
        _signal_handler(signal.SIGHUP, self.on_reload)
        threading.Thread(target=self.read_keys, name="uvssl-worker-keys", daemon=True).start()
        self.setup_fn()
        self.share_keys()
        try:
            os.write(self.status_w, b"R")
        except OSError:
            pass  # the parent is gone: the key pipe tells us too

    # servers: shared ticket keys
    def on_new_server(self, server: TcpServer) -> None:
        # called from TcpServer.__init__, before a TLS server has its context: look at it on
        # the next loop turn, whose timers run before it polls for connections
        if self.share_timer is None and self.loop is not None and not self.loop._halted:
            self.share_timer = self.loop.delay(self.share_keys, 0)

    def share_keys(self) -> None:
        self.share_timer = None
        for ctx in _server_contexts(self.loop):
            gen = self.installed.get(ctx)
            if gen == self.generation:
                continue
            if gen is None and tickets.key_count(ctx) != 0:
                continue  # the application gave it keys of its own
            try:
                ctx.rotate_session_ticket_keys(self.keys)
            except ValueError:
                continue  # session tickets are off on this context
            self.installed[ctx] = self.generation

    def new_keys(self, keys: list[bytes], generation: int) -> None:
        self.keys = keys
        self.generation = generation
        self.share_keys()
        log.info("uvssl: %s: session ticket keys of generation %d in use", self.name(), generation)

    def read_keys(self) -> None:
        """The key pipe's reader (a thread): messages go to the loop; its end means the
        parent is gone.
        """
        while True:
            head = _read_exactly(self.keys_r, 5)
            if len(head) == 5 and head[0] == _STOP_NOW:
                if not self.call(self.stop_now):
                    return
                continue
            if len(head) == 5:
                count, generation = head[0], int.from_bytes(head[1:], "big")
                body = _read_exactly(self.keys_r, count * _KEY_LEN)
                if len(body) == count * _KEY_LEN:
                    keys = [body[i * _KEY_LEN : (i + 1) * _KEY_LEN] for i in range(count)]
                    if not self.call(self.new_keys, keys, generation):
                        return
                    continue
            self.call(self.parent_gone)
            return

    def call(self, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            self.loop.call_threadsafe(fn, *args)
        except RuntimeError:
            return False  # the loop has ended
        return True

    def stop_now(self) -> None:
        log.info("uvssl: %s: stopping now", self.name())
        self.stopping = True
        self.finish()

    def parent_gone(self) -> None:
        if not self.stopping:
            log.warning("uvssl: %s: the supervisor is gone; shutting down", self.name())
            self.on_stop(signal.SIGTERM)

    # signals
    def on_reload(self, signum: int) -> None:
        n = reload_servers()
        self.share_keys()
        log.info("uvssl: %s: SIGHUP: %d server context(s) reloaded", self.name(), n)

    def on_stop(self, signum: int) -> None:
        if self.stopping:
            if signum == signal.SIGINT:  # a second Ctrl-C (from a terminal): stop now
                self.finish()
            return
        self.stopping = True
        servers = [
            obj
            for obj in list(self.loop._live)
            if isinstance(obj, TcpServer) and not obj.shutting_down
        ]
        self.left = len(servers)
        if not servers:
            self.finish()
            return
        for server in servers:
            server.shutdown(self.graceful_timeout, self.server_done)
        # each shutdown aborts what is left at graceful_timeout: this is only a safety net
        self.loop.delay(self.finish, self.graceful_timeout + 1.0)

    def server_done(self, server: TcpServer) -> None:
        self.left -= 1
        if self.left <= 0:
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        free_signal_handlers()
        exit_event_loop()  # whatever else the application had open closes too


def _read_exactly(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        try:
            chunk = os.read(fd, n - len(out))
        except InterruptedError:
            continue
        except OSError:
            return out
        if not chunk:
            return out
        out += chunk
    return out


def _worker_main(
    sup: _Supervisor,
    slot: _Slot,
    keys_r: int,
    status_w: int,
    loop_kw: dict[str, Any],
) -> None:
    """The child's side of the fork: never returns."""
    global _worker
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop reloads on it
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        for fd in sup.inherited_fds():
            _close(fd)
        for sock in list(_reserved):
            sock.close()
        worker = _Worker(
            slot.index,
            sup.setup_fn,
            sup.graceful_timeout,
            list(sup.keys),
            sup.generation,
            keys_r,
            status_w,
        )
        _worker = worker
        _tcp._worker_reuse_port = True
        _tcp._server_hook = worker.on_new_server
        try:
            start_event_loop(worker.start, **loop_kw)
            code = 0
        except KeyboardInterrupt:
            code = 0  # Ctrl-C twice: stopped at once, as asked
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if code:
                log.error("uvssl: %s: SystemExit(%r)", worker.name(), exc.code)
        except BaseException:  # noqa: BLE001 - reported, and the worker exits with 1
            log.exception("uvssl: %s failed", worker.name())
            code = 1
    finally:
        _flush_stdio()
        os._exit(code)


# -- the supervisor --------------------------------------------------------------------------


class _Slot:
    """One worker place: the process in it now, its pipes and its restart state."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.started = 0.0
        self.status_r = -1
        self.keys_w = -1
        self.ready = False
        self.eof = False
        self.delay = RESTART_DELAY_MIN
        self.restart_at: Optional[float] = None
        self.exit_code: Optional[int] = None

    def name(self) -> str:
        return f"worker {self.index} (pid {self.pid})"


class _Supervisor:
    def __init__(
        self,
        n: int,
        setup_fn: Callable[[], Any],
        restart: bool,
        graceful_timeout: float,
        loop_kw: dict[str, Any],
    ) -> None:
        self.setup_fn = setup_fn
        self.restart = restart
        self.graceful_timeout = graceful_timeout
        self.loop_kw = loop_kw
        self.slots = [_Slot(i) for i in range(n)]
        self.keys = [tickets.new_key()]
        self.generation = 1
        self.next_rotation: Optional[float] = None
        self.stopping = False
        self.kill_at: Optional[float] = None
        self.boot_failures = 0
        self.gave_up: Optional[str] = None
        self.pending: list[int] = []
        self.wake_r = -1
        self.wake_w = -1

    def inherited_fds(self) -> list[int]:
        fds = [self.wake_r, self.wake_w]
        for s in self.slots:
            fds += [s.status_r, s.keys_w]
        return [fd for fd in fds if fd >= 0]

    # signals
    def on_signal(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)

    def run(self) -> list[int]:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        old_handlers = {num: signal.getsignal(num) for num in _SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        try:
            for num in _SIGNALS:
                signal.signal(num, self.on_signal)
            if TICKET_KEY_ROTATION:
                self.next_rotation = time.monotonic() + TICKET_KEY_ROTATION
            for slot in self.slots:
                self.spawn(slot)
            self.supervise()
        finally:
            try:
                self.stop_all_now()
            finally:
                signal.set_wakeup_fd(old_wakeup)
                for num, old in old_handlers.items():
                    signal.signal(num, old if old is not None else signal.SIG_DFL)
                for fd in self.inherited_fds():
                    _close(fd)
                self.wake_r = self.wake_w = -1
                for s in self.slots:
                    s.status_r = s.keys_w = -1
                self.keys = []
        if self.gave_up is not None:
            raise RuntimeError(self.gave_up)
        return [s.exit_code if s.exit_code is not None else 0 for s in self.slots]

    def spawn(self, slot: _Slot) -> None:
        slot.restart_at = None
        status_r, status_w = os.pipe()
        keys_r, keys_w = os.pipe()
        _flush_stdio()  # or the child would write the parent's buffered output again
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            for fd in (status_r, status_w, keys_r, keys_w):
                _close(fd)
            log.error("uvssl: cannot start worker %d: %s", slot.index, exc)
            self.schedule_restart(slot, time.monotonic())
            return
        if pid == 0:
            _close(status_r)
            _close(keys_w)
            slot.status_r = slot.keys_w = -1
            _worker_main(self, slot, keys_r, status_w, self.loop_kw)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        _close(status_w)
        _close(keys_r)
        os.set_blocking(keys_w, False)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.status_r = status_r
        slot.keys_w = keys_w
        slot.ready = False
        slot.eof = False
        log.info("uvssl: worker %d started (pid %d)", slot.index, pid)

    def live(self) -> list[_Slot]:
        return [s for s in self.slots if s.pid]

    def supervise(self) -> None:
        while True:
            now = time.monotonic()
            live = self.live()
            waiting = [s for s in self.slots if s.restart_at is not None]
            if not live and (self.stopping or not waiting):
                return
            deadlines = [s.restart_at for s in waiting if s.restart_at is not None]
            if self.next_rotation is not None and not self.stopping:
                deadlines.append(self.next_rotation)
            if self.kill_at is not None:
                deadlines.append(self.kill_at)
            timeout = max(0.0, min(deadlines) - now) if deadlines else 5.0
            if any(s.eof for s in live):
                timeout = min(timeout, 0.05)  # gone, but not reaped yet
            fds = [self.wake_r] + [s.status_r for s in live if not s.eof]
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                readable = []
            if self.wake_r in readable:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            for s in live:
                if s.status_r in readable:
                    data = b""
                    try:
                        data = os.read(s.status_r, 64)
                    except OSError:
                        pass
                    if data:
                        if not s.ready:
                            s.ready = True
                            self.boot_failures = 0
                            log.info("uvssl: %s is ready", s.name())
                    else:
                        s.eof = True
            while self.pending:
                self.handle_signal(self.pending.pop(0))
            self.reap()
            now = time.monotonic()
            for s in self.slots:
                if s.restart_at is not None and s.restart_at <= now and not self.stopping:
                    self.spawn(s)
            if self.next_rotation is not None and now >= self.next_rotation and not self.stopping:
                self.rotate()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                for s in self.live():
                    log.warning(
                        "uvssl: %s did not exit within %g s of being asked to: killing it",
                        s.name(),
                        self.graceful_timeout + KILL_MARGIN,
                    )
                    self.send(s, signal.SIGKILL)

    def send(self, slot: _Slot, signum: int) -> None:
        try:
            os.kill(slot.pid, signum)
        except ProcessLookupError:
            pass

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            log.info("uvssl: SIGHUP: asking %d worker(s) to reload", len(self.live()))
            for s in self.live():
                self.send(s, signal.SIGHUP)
            return
        if not self.stopping:
            log.info(
                "uvssl: %s: stopping %d worker(s) gracefully (up to %g s)",
                signal.Signals(signum).name,
                len(self.live()),
                self.graceful_timeout,
            )
            self.begin_stop()
        elif signum == signal.SIGINT:
            log.info("uvssl: SIGINT again: stopping the workers now")
            # through the pipe, not as a signal: a worker may see pending signals in any order
            # (SIGINT before the SIGTERM sent earlier), but it reads the pipe in order
            for s in self.live():
                self.write(s, bytes([_STOP_NOW, 0, 0, 0, 0]))
            soon = time.monotonic() + KILL_MARGIN
            self.kill_at = soon if self.kill_at is None else min(self.kill_at, soon)

    def begin_stop(self) -> None:
        self.stopping = True
        self.kill_at = time.monotonic() + self.graceful_timeout + KILL_MARGIN
        for s in self.slots:
            s.restart_at = None
        for s in self.live():
            self.send(s, signal.SIGTERM)

    def reap(self) -> None:
        for s in self.live():
            try:
                pid, status = os.waitpid(s.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = s.pid, 0  # reaped by someone else: its status is lost
            if pid == 0:
                continue
            self.exited(s, status)

    def exited(self, slot: _Slot, status: int) -> None:
        now = time.monotonic()
        how = _describe_status(status)
        slot.exit_code = os.waitstatus_to_exitcode(status)
        name = slot.name()
        lived = now - slot.started
        booted = slot.ready
        slot.pid = 0
        _close(slot.status_r)
        _close(slot.keys_w)
        slot.status_r = slot.keys_w = -1
        if self.stopping:
            log.info("uvssl: %s %s", name, how)
            return
        if not booted:
            self.boot_failures += 1
        if not self.restart:
            log.warning("uvssl: %s %s; not restarted (restart=False)", name, how)
            return
        if self.boot_failures >= MAX_BOOT_FAILURES:
            self.gave_up = (
                f"serve_workers: {self.boot_failures} workers in a row died before setup_fn "
                f"returned (the last {how}); see the uvssl log for what failed, and fix setup_fn"
            )
            log.error("uvssl: %s %s; giving up: %s", name, how, self.gave_up)
            self.begin_stop()
            return
        if lived >= RESTART_RESET:
            slot.delay = RESTART_DELAY_MIN
        log.warning("uvssl: %s %s; restarting it in %.1f s", name, how, slot.delay)
        self.schedule_restart(slot, now)

    def schedule_restart(self, slot: _Slot, now: float) -> None:
        slot.restart_at = now + slot.delay
        slot.delay = min(slot.delay * 2, RESTART_DELAY_MAX)

    def rotate(self) -> None:
        assert TICKET_KEY_ROTATION
        self.keys = tickets.rotated(self.keys, tickets.new_key(), keep=TICKET_KEYS_KEPT)
        self.generation += 1
        self.next_rotation = time.monotonic() + TICKET_KEY_ROTATION
        msg = bytes([len(self.keys)]) + self.generation.to_bytes(4, "big") + b"".join(self.keys)
        for s in self.live():
            self.write(s, msg)
        log.info("uvssl: session ticket keys rotated (generation %d)", self.generation)

    def write(self, slot: _Slot, msg: bytes) -> None:
        try:
            os.write(slot.keys_w, msg)
        except BlockingIOError:
            log.warning("uvssl: %s does not read its pipe; a message was dropped", slot.name())
        except OSError:
            pass  # it is gone: reaped soon

    def stop_all_now(self) -> None:
        """On the way out with workers still alive (the supervisor itself failed): ask them to
        stop, wait up to graceful_timeout + KILL_MARGIN, kill the rest.
        """
        if not self.live():
            return
        for s in self.live():
            _close(s.keys_w)
            s.keys_w = -1
            self.send(s, signal.SIGTERM)
        end = time.monotonic() + self.graceful_timeout + KILL_MARGIN
        while self.live() and time.monotonic() < end:
            self.reap()
            time.sleep(0.05)
        for s in self.live():
            self.send(s, signal.SIGKILL)
            try:
                os.waitpid(s.pid, 0)
            except ChildProcessError:
                pass
            s.pid = 0


def serve_workers(
    n: int,
    setup_fn: Callable[[], Any],
    *,
    restart: bool = True,
    graceful_timeout: float = 30.0,
    **loop_kw: Any,
) -> list[int]:
    """Serve with ``n`` worker processes (``n=0``: one per CPU this process may run on), each
    running ``start_event_loop(setup_fn)`` with its own loop, until they have all exited.

    ``setup_fn`` starts the worker's servers, as a ``start_event_loop`` start function does.
    In a worker every ``tcp_server`` / ``tcp_ssl_server`` listens with SO_REUSEPORT, so they
    all serve one port and the kernel spreads connections over them; choose a fixed port
    (``reserve_port()`` picks a free one in the parent). ``loop_kw`` (``catch_app_errors``,
    ``default_event_cb``) go to each worker's ``start_event_loop``.

    The calling process supervises: a worker that dies is restarted after a delay growing from
    0.1 s to 10 s (``restart=False``: it stays dead), each exit and restart is logged to the
    ``uvssl`` logger. SIGTERM or SIGINT shuts every worker down gracefully: its servers stop
    accepting, open connections get ``graceful_timeout`` seconds to finish
    (``TcpServer.shutdown``), and a worker still there ``KILL_MARGIN`` (5) seconds later is
    killed; a second SIGINT stops them at once. SIGHUP makes each worker reload its servers'
    contexts (``reload_servers``). Workers share session ticket keys made here (rotated
    hourly) unless a context has keys of its own, so a client resumes on any worker. A worker
    whose parent dies shuts down gracefully.

    Returns each worker's last exit code (0: clean; a negative number: the signal that killed
    it). Raises ``RuntimeError`` when called while a uvssl event loop runs in this process,
    from a worker, or outside the main thread (forking needs the first two, signals the
    last), and when ``MAX_BOOT_FAILURES`` workers in a row died before ``setup_fn`` returned
    (their tracebacks are in the log). Must be called from the main thread.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"serve_workers: n must be an int >= 0 (0: one per CPU), got {n!r}")
    check_callable("setup_fn", setup_fn, optional=False)
    if not isinstance(restart, bool):
        raise TypeError(f"serve_workers: restart must be True or False, got {restart!r}")
    if (
        not isinstance(graceful_timeout, (int, float))
        or isinstance(graceful_timeout, bool)
        or not graceful_timeout >= 0
        or graceful_timeout == float("inf")
    ):
        raise ValueError(
            "serve_workers: graceful_timeout must be a number of seconds >= 0, got "
            f"{graceful_timeout!r}"
        )
    check_keywords("serve_workers", loop_kw, ("catch_app_errors", "default_event_cb"))
    if _worker is not None:
        raise RuntimeError(
            "serve_workers was called in a worker process: workers cannot start workers; call "
            "it once, in the parent"
        )
    with _running_lock:
        running = [lp for lp in _running if lp._ptr is not None]
    if running:
        raise RuntimeError(
            "serve_workers cannot fork while a uvssl event loop runs in this process (libuv "
            "loops do not survive fork): call it before start_event_loop, or after it returned"
        )
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "serve_workers must run in the main thread (it handles SIGTERM, SIGINT and SIGHUP)"
        )
    if n == 0:
        n = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return _Supervisor(n, setup_fn, restart, float(graceful_timeout), loop_kw).run()
