"""Worker processes: ``serve_workers`` runs a supervisor and worker processes that share a port.

Every test that forks runs the supervisor in a child process (a short script), never in the
test process: the test sends it signals, kills its workers and reads what it prints. Each
worker prints ``WORKER <pid>`` when its setup has run, and answers every connection with its
pid, so the test knows which worker it reached. The kernel spreads connections over the
workers at random, so tests connect until they have seen what they need, a bounded number of
times. The supervisor's log (the ``uvssl`` logger) goes to the same output, one line per
record, prefixed ``LOG``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from helpers import SLOWDOWN, run_loop
from tls_support import Certs

import uvssl
import uvssl.workers

ROOT = Path(__file__).resolve().parent.parent
LINE_SECONDS = 30 * SLOWDOWN  # for the supervisor to print what a test waits for
EXIT_SECONDS = 30 * SLOWDOWN  # for the supervisor (and its workers) to end
ATTEMPTS = 300  # connections made while looking for a given worker

pytestmark = pytest.mark.timeout(120 * SLOWDOWN)

PRELUDE = """
import logging, os, signal, socket, sys, time
import uvssl, uvssl.workers

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
sys.stderr = sys.stdout
hold = uvssl.workers.reserve_port("127.0.0.1")
PORT = hold.getsockname()[1]
print("PORT", PORT, flush=True)

def answer_pid(sock, data):
    sock.write(str(os.getpid()).encode())

def ready():   # one write: the workers print at the same time
    sys.stdout.flush()
    os.write(1, f"WORKER {os.getpid()}\\n".encode())

def run(n, setup, **kw):
    try:
        result = uvssl.serve_workers(n, setup, **kw)
    except Exception as exc:
        print("RAISED", type(exc).__name__, exc, flush=True)
    else:
        print("RESULT", result, flush=True)
"""


class Lines:
    """The child's output lines, read by a thread; searched from any index, waited for."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.eof = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def find(self, pred: Callable[[str], bool], start: int = 0) -> Optional[int]:
        with self.cond:
            for i in range(start, len(self.lines)):
                if pred(self.lines[i]):
                    return i
        return None

    def wait(self, pred: Callable[[str], bool], start: int = 0, count: int = 1) -> list[str]:
        """The first ``count`` lines from ``start`` on that match, waiting for them."""
        end = time.monotonic() + LINE_SECONDS
        with self.cond:
            while True:
                found = [s for s in self.lines[start:] if pred(s)]
                if len(found) >= count:
                    return found[:count]
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    text = "\n".join(self.lines[-40:])
                    pytest.fail(f"the supervisor did not print the expected line:\n{text}")
                self.cond.wait(left)

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


class Supervisor:
    """A child process running ``serve_workers`` in a script."""

    def __init__(self, body: str, *args: str) -> None:
        script = PRELUDE + textwrap.dedent(body)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.out = Lines(self.proc)
        self.port = int(self.out.wait(lambda s: s.startswith("PORT "))[0].split()[1])

    def workers(self, count: int, start: int = 0) -> list[int]:
        """The pids of the first ``count`` workers that became ready after line ``start``."""
        found = self.out.wait(lambda s: s.startswith("WORKER "), start, count)
        return [int(s.split()[1]) for s in found]

    def log(self, text: str, start: int = 0, count: int = 1) -> list[str]:
        return self.out.wait(lambda s: s.startswith("LOG ") and text in s, start, count)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, tracebacks: bool = False) -> str:
        """Wait for the supervisor to end; its last ``RESULT`` / ``RAISED`` line. No worker
        may have logged a traceback, unless ``tracebacks``."""
        try:
            code = self.proc.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the supervisor did not end:\n{self.out.text()}")
        self.out.thread.join(5)
        assert code == 0, self.out.text()
        assert tracebacks or "Traceback" not in self.out.text(), self.out.text()
        ends = [s for s in self.out.lines if s.startswith(("RESULT", "RAISED"))]
        assert ends, self.out.text()
        return ends[-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def supervisors() -> Any:
    """Start supervisors with ``start(body, *args)``; whatever is left is killed at the end,
    workers included (a worker whose supervisor is killed stops by itself, but a test that
    failed half-way should not leave one to find that out)."""
    started: list[Supervisor] = []

    def start(body: str, *args: str) -> Supervisor:
        sup = Supervisor(body, *args)
        started.append(sup)
        return sup

    yield start
    for sup in started:
        if sup.proc.poll() is None:
            pids = [int(s.split()[1]) for s in sup.out.lines if s.startswith("WORKER ")]
            sup.kill()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_gone(pids: list[int]) -> None:
    """Every one of ``pids`` ends (bounded wait): no worker outlives its supervisor."""
    end = time.monotonic() + EXIT_SECONDS
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "worker processes were left behind"


def ask_pid(port: int) -> int:
    """Connect, send a byte, return the pid the worker answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"?")
        return int(c.recv(100))


def pids_seen(port: int, want: Callable[[set[int]], bool]) -> set[int]:
    """Ask for pids until ``want(seen)`` (at most ATTEMPTS connections)."""
    seen: set[int] = set()
    for _ in range(ATTEMPTS):
        seen.add(ask_pid(port))
        if want(seen):
            break
    return seen


PID_SERVER = """
def setup():
    uvssl.tcp_server("127.0.0.1", PORT, answer_pid)   # reuse_port not given: False
    ready()
"""


def test_two_workers_serve_one_port_and_stop_on_sigterm(supervisors: Any) -> None:
    sup = supervisors(PID_SERVER + "run(2, setup)\n")
    pids = sup.workers(2)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert pids_seen(sup.port, lambda seen: seen == set(pids)) == set(pids)
    sup.signal(signal.SIGTERM)
    assert sup.finish() == "RESULT [0, 0]"
    sup.log("SIGTERM: stopping 2 worker(s) gracefully")
    assert_gone(pids)


def test_a_killed_worker_is_restarted_and_the_log_says_so(supervisors: Any) -> None:
    sup = supervisors(PID_SERVER + "run(2, setup)\n")
    first = sup.workers(2)
    mark = len(sup.out.lines)
    os.kill(first[0], signal.SIGKILL)
    line = sup.log(f"(pid {first[0]}) was killed by SIGKILL; restarting it in 0.1 s", mark)[0]
    assert line.startswith("LOG uvssl: worker ")
    new = sup.workers(1, mark)[0]
    assert new not in first
    sup.log(f"started (pid {new})", mark)
    assert new in pids_seen(sup.port, lambda seen: new in seen)
    sup.signal(signal.SIGTERM)
    assert sup.finish() == "RESULT [0, 0]"
    assert_gone([first[1], new])


def test_restart_false_leaves_dead_workers_dead(supervisors: Any) -> None:
    sup = supervisors(PID_SERVER + "run(2, setup, restart=False)\n")
    a, b = sup.workers(2)
    os.kill(a, signal.SIGKILL)
    sup.log(f"(pid {a}) was killed by SIGKILL; not restarted (restart=False)")
    # the other one goes on alone, and no third worker appears
    assert pids_seen(sup.port, lambda seen: len(seen) >= 20) == {b}
    os.kill(b, signal.SIGKILL)
    assert sup.finish() == "RESULT [-9, -9]"  # returns once every worker is gone
    assert len([s for s in sup.out.lines if s.startswith("WORKER ")]) == 2


def test_sigterm_lets_a_response_in_flight_complete(supervisors: Any) -> None:
    size = 32 * 1024 * 1024
    sup = supervisors(
        f"""
        def setup():
            def reply(sock, data):
                sock.write(b"x" * {size})
            uvssl.tcp_server("127.0.0.1", PORT, reply)
            ready()
        run(2, setup, graceful_timeout=60)
        """
    )
    pids = sup.workers(2)
    c = socket.create_connection(("127.0.0.1", sup.port), timeout=10)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.sendall(b"go")
    got = len(c.recv(65536))
    assert got > 0
    sup.signal(signal.SIGTERM)  # the response is mostly still in the worker's buffers
    sup.log("SIGTERM: stopping 2 worker(s) gracefully")
    while True:
        chunk = c.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    c.close()
    assert got == size  # all of it, then EOF
    assert sup.finish() == "RESULT [0, 0]"
    assert_gone(pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sup.port), timeout=5).close()


def test_a_second_ctrl_c_stops_draining_workers_at_once(supervisors: Any) -> None:
    sup = supervisors(
        """
        def setup():
            uvssl.tcp_server("127.0.0.1", PORT, lambda sock, data: sock.write(b"x" * (64 << 20)))
            ready()
        run(1, setup, graceful_timeout=600)
        """
    )
    (pid,) = sup.workers(1)
    c = socket.create_connection(("127.0.0.1", sup.port), timeout=10)
    c.sendall(b"go")  # and never read: the drain cannot finish
    assert c.recv(10)
    sup.signal(signal.SIGINT)
    sup.log("SIGINT: stopping 1 worker(s) gracefully")
    assert alive(pid)
    sup.signal(signal.SIGINT)
    sup.log("SIGINT again: stopping the workers now")
    assert sup.finish() == "RESULT [0]"  # long before graceful_timeout
    c.close()
    assert_gone([pid])


def test_workers_stop_when_the_supervisor_is_killed(supervisors: Any) -> None:
    sup = supervisors(PID_SERVER + "run(2, setup)\n")
    pids = sup.workers(2)
    sup.kill()  # SIGKILL: no chance to tell the workers
    assert_gone(pids)


def test_sighup_reloads_every_workers_certificate(
    supervisors: Any, certs: Certs, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    sup = supervisors(
        f"""
        ctx = uvssl.Context.server(certificate={str(cert)!r}, key={str(key)!r})
        def setup():
            uvssl.tcp_ssl_server("127.0.0.1", PORT, answer_pid, ssl_ctx=ctx)
            ready()
        run(2, setup)
        """
    )
    pids = set(sup.workers(2))
    client = ssl.create_default_context(cafile=str(certs.ca))
    client.load_verify_locations(str(certs.other_ca))

    def issuers() -> dict[int, bytes]:
        seen: dict[int, bytes] = {}
        for _ in range(ATTEMPTS):
            with socket.create_connection(("127.0.0.1", sup.port), timeout=10) as raw:
                with client.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"?")
                    pid = int(s.recv(100))
                    der = s.getpeercert(binary_form=True)
                    assert der is not None
                    seen[pid] = der
            if set(seen) == pids:
                break
        return seen

    before = issuers()
    assert set(before) == pids and len(set(before.values())) == 1
    shutil.copy(certs.untrusted_cert, cert)
    shutil.copy(certs.untrusted_key, key)
    mark = len(sup.out.lines)
    sup.signal(signal.SIGHUP)
    sup.log("SIGHUP: 1 server context(s) reloaded", mark, count=2)
    after = issuers()
    assert set(after) == pids  # reloaded in place: no worker was restarted
    assert len(set(after.values())) == 1
    assert set(after.values()) != set(before.values())
    sup.signal(signal.SIGTERM)
    assert sup.finish() == "RESULT [0, 0]"


TLS_SETUP = """
ctx = uvssl.Context.server(certificate=sys.argv[1], key=sys.argv[2])
MODE = sys.argv[3]

def setup():
    def start():
        c = ctx
        if MODE == "own":   # a context with keys of its own, different in every worker
            c = uvssl.Context.server(certificate=sys.argv[1], key=sys.argv[2],
                                     session_ticket_keys=[uvssl.tickets.new_key()])
        uvssl.tcp_ssl_server("127.0.0.1", PORT, answer_pid, ssl_ctx=c)
        ready()
    if MODE == "late":   # a server started on a later loop turn
        uvssl.delay(start, 0.05)
    else:
        start()
"""


def tls_visit(port: int, client: ssl.SSLContext, session: Any = None) -> tuple[int, Any, bool]:
    """One TLS 1.3 connection: the worker's pid, the session to resume, whether it resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"?")
            pid = int(s.recv(100))  # the tickets came before it
            return pid, s.session, bool(s.session_reused)


def client_context(certs: Certs) -> ssl.SSLContext:
    client = ssl.create_default_context(cafile=str(certs.ca))
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    return client


def resumed_elsewhere(port: int, client: ssl.SSLContext, first: int, session: Any) -> bool:
    """Offer ``session`` until a worker other than ``first`` answers; did it resume?"""
    for _ in range(ATTEMPTS):
        pid, _, reused = tls_visit(port, client, session)
        if pid != first:
            return reused
    pytest.fail(f"{ATTEMPTS} connections never reached a second worker")
    raise AssertionError


@pytest.mark.parametrize("mode", ["shared", "late", "own"])
def test_a_session_from_one_worker_resumes_on_another(
    supervisors: Any, certs: Certs, mode: str
) -> None:
    sup = supervisors(
        TLS_SETUP + "run(2, setup)\n", str(certs.server_cert), str(certs.server_key), mode
    )
    sup.workers(2)
    client = client_context(certs)
    first, session, reused = tls_visit(sup.port, client)
    assert not reused
    # the parent's keys, unless the contexts have their own ("own": a full handshake)
    assert resumed_elsewhere(sup.port, client, first, session) is (mode != "own")
    sup.signal(signal.SIGTERM)
    assert sup.finish() == "RESULT [0, 0]"


def test_ticket_keys_rotate_and_old_sessions_expire(supervisors: Any, certs: Certs) -> None:
    every = 1.0 * SLOWDOWN
    sup = supervisors(
        TLS_SETUP + f"uvssl.workers.TICKET_KEY_ROTATION = {every}\nrun(2, setup)\n",
        str(certs.server_cert),
        str(certs.server_key),
        "shared",
    )
    sup.workers(2)
    client = client_context(certs)
    _, old, _ = tls_visit(sup.port, client)
    # three rotations later (keep=3), the key that issued it is gone in every worker
    mark = sup.out.find(lambda s: "rotated (generation" in s) or 0
    gen = int(sup.log("rotated (generation", mark)[0].rsplit(" ", 1)[1].rstrip(")")) + 3
    sup.log(f"session ticket keys of generation {gen} in use", count=2)
    pid, fresh, reused = tls_visit(sup.port, client, old)
    assert not reused
    # a fresh ticket resumes, on any worker, under the keys of the moment
    assert resumed_elsewhere(sup.port, client, pid, fresh)
    sup.signal(signal.SIGTERM)
    assert sup.finish() == "RESULT [0, 0]"


def test_a_failing_setup_is_retried_with_backoff_then_given_up(supervisors: Any) -> None:
    sup = supervisors(
        """
        def setup():
            raise ValueError("the configuration is missing")
        run(1, setup)
        """
    )
    end = sup.finish(tracebacks=True)
    assert end.startswith("RAISED RuntimeError serve_workers: 5 workers in a row died before")
    text = sup.out.text()
    assert text.count("ValueError: the configuration is missing") == 5  # each one logged
    delays = [line.rsplit(" in ", 1)[1] for line in text.splitlines() if "restarting it" in line]
    assert delays == ["0.1 s", "0.2 s", "0.4 s", "0.8 s"]  # growing, then it gives up
    assert "giving up" in text


def test_a_worker_that_fails_once_is_restarted(supervisors: Any, tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"
    sup = supervisors(
        f"""
        def setup():
            if not os.path.exists({str(flag)!r}):
                open({str(flag)!r}, "w").close()
                raise ValueError("not yet")
            uvssl.tcp_server("127.0.0.1", PORT, answer_pid)
            ready()
        run(1, setup)
        """
    )
    (pid,) = sup.workers(1)
    sup.log("exited with status 1; restarting it in 0.1 s")
    assert ask_pid(sup.port) == pid
    sup.signal(signal.SIGTERM)
    assert sup.finish(tracebacks=True) == "RESULT [0]"
    assert sup.out.text().count("ValueError: not yet") == 1


def test_serve_workers_cannot_run_inside_a_worker(supervisors: Any) -> None:
    sup = supervisors(
        """
        def setup():
            try:
                uvssl.serve_workers(1, print)
            except RuntimeError as exc:
                print("INNER", exc, flush=True)
            print("IN WORKER", uvssl.workers.in_worker(), flush=True)
            uvssl.tcp_server("127.0.0.1", PORT, answer_pid)
            ready()
        print("IN PARENT", uvssl.workers.in_worker(), flush=True)
        run(1, setup)
        """
    )
    sup.workers(1)
    inner = sup.out.wait(lambda s: s.startswith("INNER "))[0]
    assert "in a worker process" in inner
    assert sup.out.find(lambda s: s == "IN WORKER True") is not None
    assert sup.out.find(lambda s: s == "IN PARENT False") is not None
    sup.signal(signal.SIGTERM)
    assert sup.finish() == "RESULT [0]"


# -- refused before any fork (in the test process) -----------------------------------------


@pytest.mark.parametrize(
    ("args", "kw", "exc", "text"),
    [
        ((-1, print), {}, ValueError, "n must be an int >= 0"),
        (("2", print), {}, ValueError, "n must be an int >= 0"),
        ((True, print), {}, ValueError, "n must be an int >= 0"),
        ((1, None), {}, TypeError, "setup_fn must be callable"),
        ((1, print), {"restart": "yes"}, TypeError, "restart must be True or False"),
        ((1, print), {"graceful_timeout": -1}, ValueError, "graceful_timeout must be"),
        ((1, print), {"graceful_timeout": float("nan")}, ValueError, "graceful_timeout"),
        ((1, print), {"catch_app_errrors": True}, TypeError, "catch_app_errors"),
    ],
)
def test_bad_arguments_are_refused(args: Any, kw: Any, exc: type, text: str) -> None:
    with pytest.raises(exc, match=text):
        uvssl.serve_workers(*args, **kw)


def test_refused_while_a_loop_runs_in_the_process() -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            uvssl.serve_workers(1, print)
        except RuntimeError as exc:
            errors.append(exc)

    run_loop(start)
    assert len(errors) == 1 and "while a uvssl event loop runs" in str(errors[0])


def test_refused_outside_the_main_thread() -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            uvssl.serve_workers(1, print)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    t.join(10)
    assert len(errors) == 1 and "main thread" in str(errors[0])


def test_reserve_port_holds_a_port_that_reuse_port_servers_share() -> None:
    hold = uvssl.workers.reserve_port("127.0.0.1")
    try:
        port = hold.getsockname()[1]
        other = socket.socket()
        with pytest.raises(OSError):  # taken for anyone without SO_REUSEPORT
            other.bind(("127.0.0.1", port))
        other.close()
        served: list[int] = []

        def start() -> None:
            server = uvssl.tcp_server("127.0.0.1", port, None, reuse_port=True)
            served.append(server.port)
            server.close()

        run_loop(start)
        assert served == [port]
        with pytest.raises(OSError, match="reserve_port: cannot bind '192.0.2.1'"):
            uvssl.workers.reserve_port("192.0.2.1")  # not an address of this machine
    finally:
        hold.close()
