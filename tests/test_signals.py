"""Signals: Ctrl-C and raising signal handlers stop the loop; signal_handler runs
callbacks on the loop; ``python -m uvssl serve`` drains on SIGTERM and on the first Ctrl-C.

A signal delivered to the test process would hit pytest too, so every test that sends SIGINT or
SIGTERM does it to a child process running a short script. Each child prints lines the test
waits for, and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import SLOWDOWN, run_loop
from tls_support import Certs, LineReader, kill_process

import uvssl

ROOT = Path(__file__).resolve().parent.parent

CHILD_SECONDS = 20 * SLOWDOWN  # for a child to end after the signal
LINE_SECONDS = 30 * SLOWDOWN  # for a child to print the line a test waits for

pytestmark = pytest.mark.timeout(60 * SLOWDOWN)

# Every child script starts with this: a way to count its descriptors, and the loop's result
# reported on stdout (KeyboardInterrupt or SystemExit by name, then the descriptors left open).
PRELUDE = """
import os, signal, sys, time
import uvssl

def nfds():
    return len(os.listdir("/proc/self/fd"))

uvssl.start_event_loop()  # libuv opens its process-wide descriptors once, on the first loop

def report(start, **kw):
    base = nfds()
    try:
        uvssl.start_event_loop(start, **kw)
        print("ENDED", flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    except SystemExit as e:
        print("SystemExit", e.code, flush=True)
    print("FDS", nfds() - base, flush=True)
"""


def spawn(body: str) -> tuple[subprocess.Popen[bytes], LineReader]:
    script = PRELUDE + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, LineReader(proc)


def finish(proc: subprocess.Popen[bytes], lines: LineReader) -> tuple[list[str], str]:
    try:
        proc.wait(timeout=CHILD_SECONDS)
    except subprocess.TimeoutExpired:
        kill_process(proc)
        pytest.fail(f"the child did not end within {CHILD_SECONDS:g} s of the signal")
    lines.join()
    out = lines.drain()
    assert proc.stderr is not None
    err = proc.stderr.read().decode("utf-8", "replace")
    assert "Exception ignored" not in err, err
    return out, err


def wait_line(lines: LineReader, text: str, proc: subprocess.Popen[bytes]) -> str:
    """The first line that starts with ``text`` or, for text with a space, contains it."""
    line = lines.wait_for(lambda s: s.startswith(text) or (" " in text and text in s), LINE_SECONDS)
    if line is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        err = proc.stderr.read().decode("utf-8", "replace")
        kill_process(proc)
        pytest.fail(f"the child never printed {text!r}; stderr: {err}")
    return line


# -- Ctrl-C and raising handlers -------------------------------------------------------------


def test_ctrl_c_stops_an_idle_loop() -> None:
    proc, lines = spawn(
        """
        def start():
            uvssl.tcp_server("127.0.0.1", 0, None)
            uvssl.delay(lambda: print("READY", flush=True), 0.05)
        report(start)
        """
    )
    wait_line(lines, "READY", proc)
    time.sleep(0.2)  # asleep in the kernel by now
    proc.send_signal(signal.SIGINT)
    out, _ = finish(proc, lines)
    assert "KeyboardInterrupt" in out
    assert "FDS 0" in out  # every handle closed


def test_ctrl_c_stops_a_busy_loop() -> None:
    # a client and an echo server in one loop, ping-ponging as fast as they can
    proc, lines = spawn(
        """
        count = [0]
        def start():
            def echo(sock, data):
                sock.write(data)
            server = uvssl.tcp_server("127.0.0.1", 0, echo)
            def again(sock, data):
                count[0] += 1
                if count[0] == 1000:
                    print("READY", flush=True)
                sock.write(data)
            uvssl.tcp_connect("127.0.0.1", server.port, again, data=b"x" * 64)
        report(start)
        print("ROUNDS", count[0], flush=True)
        """
    )
    wait_line(lines, "READY", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = finish(proc, lines)
    assert "KeyboardInterrupt" in out
    assert "FDS 0" in out
    rounds = [int(s.split()[1]) for s in out if s.startswith("ROUNDS")]
    assert rounds and rounds[0] >= 1000


def test_a_python_signal_handler_that_raises_stops_the_loop() -> None:
    proc, lines = spawn(
        """
        def on_term(signum, frame):
            raise SystemExit(7)
        signal.signal(signal.SIGTERM, on_term)
        def start():
            uvssl.tcp_server("127.0.0.1", 0, None)
            uvssl.delay(lambda: print("READY", flush=True), 0.05)
        report(start)
        """
    )
    wait_line(lines, "READY", proc)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = finish(proc, lines)
    assert "SystemExit 7" in out
    assert "FDS 0" in out


def test_ctrl_c_during_1000_tls_handshakes_in_flight(certs: Certs) -> None:
    proc, lines = spawn(
        f"""
        d = {str(certs.dir)!r}
        server_ctx = uvssl.Context.server(certificate=d + "/server.pem", key=d + "/server.key")
        client_ctx = uvssl.Context.client(ca_file=d + "/ca.pem")
        done = [0]
        def start():
            def accepted(sock):
                done[0] += 1
                if done[0] == 50:
                    print("READY", flush=True)
            server = uvssl.tcp_ssl_server("127.0.0.1", 0, None, lambda ev: None,
                                          ssl_ctx=server_ctx, connect_cb=accepted, backlog=2048)
            for _ in range(1000):
                uvssl.tcp_ssl_connect("127.0.0.1", server.port, None, lambda ev: None,
                                      ssl_ctx=client_ctx, server_hostname="localhost")
        report(start)
        print("DONE", done[0], flush=True)
        """
    )
    wait_line(lines, "READY", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = finish(proc, lines)
    assert "KeyboardInterrupt" in out
    assert "FDS 0" in out
    done = [int(s.split()[1]) for s in out if s.startswith("DONE")]
    assert done and 50 <= done[0] < 1000, out  # stopped with handshakes still in flight


def test_ctrl_c_with_catch_app_errors_still_stops() -> None:
    # catch_app_errors routes Exceptions; a KeyboardInterrupt is not one
    proc, lines = spawn(
        """
        def start():
            uvssl.tcp_server("127.0.0.1", 0, None)
            uvssl.delay(lambda: print("READY", flush=True), 0.05)
        report(start, catch_app_errors=True, default_event_cb=lambda e: print("CAUGHT", e))
        """
    )
    wait_line(lines, "READY", proc)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = finish(proc, lines)
    assert "KeyboardInterrupt" in out
    assert not any(s.startswith("CAUGHT") for s in out)


# -- signal_handler ----------------------------------------------------------------------------


def test_signal_handler_runs_on_the_loop_for_each_delivery() -> None:
    got: list[int] = []
    threads: list[int] = []
    before = signal.getsignal(signal.SIGUSR1)

    def on_usr1(signum: int) -> None:
        got.append(signum)
        threads.append(threading.get_ident())
        if len(got) < 3:
            uvssl.delay(os.kill, 0.01, os.getpid(), signal.SIGUSR1)
        else:
            uvssl.free_signal_handler(signal.SIGUSR1)

    def start() -> None:
        uvssl.signal_handler(signal.SIGUSR1, on_usr1)
        uvssl.delay(os.kill, 0.01, os.getpid(), signal.SIGUSR1)

    run_loop(start)  # ends by itself once the handler is freed
    assert got == [signal.SIGUSR1] * 3
    assert set(threads) == {threading.get_ident()}
    assert signal.getsignal(signal.SIGUSR1) == before


def test_signal_handler_keeps_the_loop_alive_until_freed() -> None:
    got: list[int] = []

    def start() -> None:
        uvssl.signal_handler(signal.SIGUSR2, got.append)
        # nothing else keeps the loop: a signal sent from another thread, a little later
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2)).start()
        uvssl.delay(lambda: None, 0)

        def check_and_free() -> None:
            if got:
                uvssl.free_signal_handlers()
            else:
                uvssl.delay(check_and_free, 0.05)

        uvssl.delay(check_and_free, 0.05)

    run_loop(start)
    assert got == [signal.SIGUSR2]


def test_signal_handlers_are_restored_when_the_loop_ends() -> None:
    def mine(signum: int, frame: Any) -> None:
        pass

    old = signal.signal(signal.SIGUSR1, mine)
    try:

        def start() -> None:
            uvssl.signal_handler(signal.SIGUSR1, lambda n: None)
            uvssl.signal_handler(signal.SIGUSR1, lambda n: None)  # replaced, not stacked
            assert signal.getsignal(signal.SIGUSR1) is not mine
            uvssl.delay(uvssl.exit_event_loop, 0.01)

        run_loop(start)
        assert signal.getsignal(signal.SIGUSR1) is mine
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_signal_handler_callback_error_propagates() -> None:
    def boom(signum: int) -> None:
        raise ValueError("from the signal callback")

    def start() -> None:
        uvssl.signal_handler(signal.SIGUSR1, boom)
        uvssl.delay(os.kill, 0.01, os.getpid(), signal.SIGUSR1)

    with pytest.raises(ValueError, match="from the signal callback"):
        run_loop(start)


def test_signal_handler_checks_its_arguments() -> None:
    errors: list[BaseException] = []

    def start() -> None:
        for signum, cb in [
            ("SIGTERM", print),
            (True, print),
            (10_000, print),
            (signal.SIGKILL, print),
            (signal.SIGUSR1, "print"),
        ]:
            try:
                uvssl.signal_handler(signum, cb)  # type: ignore[arg-type]
            except (TypeError, ValueError) as e:
                errors.append(e)

    run_loop(start)
    kinds = [type(e) for e in errors]
    assert kinds == [TypeError, TypeError, ValueError, ValueError, TypeError], errors
    assert "SIGKILL" in str(errors[3])
    assert "cb must be callable" in str(errors[4])


def test_signal_handler_needs_the_main_threads_loop() -> None:
    result: list[BaseException] = []

    def in_thread() -> None:
        def start() -> None:
            try:
                uvssl.signal_handler(signal.SIGUSR1, print)
            except RuntimeError as e:
                result.append(e)

        uvssl.start_event_loop(start)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(10)
    assert len(result) == 1
    assert "main thread" in str(result[0])


def test_free_signal_handler_of_an_unset_signal_is_harmless() -> None:
    def start() -> None:
        uvssl.free_signal_handler(signal.SIGUSR2)
        uvssl.free_signal_handlers()

    run_loop(start)


# -- python -m uvssl serve ---------------------------------------------------------------------


def start_serve(*extra: str) -> tuple[subprocess.Popen[bytes], LineReader, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvssl", "serve", "--port", "0", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines = LineReader(proc)
    line = wait_line(lines, "READY", proc)
    return proc, lines, int(line.split()[1])


def tls_client(port: int, rcvbuf: int = 0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.socket()
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_drains_gracefully(sig: int) -> None:
    proc, lines, port = start_serve()
    try:
        c = tls_client(port)
        c.sendall(b"hello")
        assert c.recv(100) == b"hello"
        proc.send_signal(sig)
        # the open connection gets a clean close_notify (a truncation would raise SSLEOFError)
        assert c.recv(100) == b""
        c.close()
        assert proc.wait(timeout=CHILD_SECONDS) == 0
        lines.join()
        out = lines.drain()
        assert any("shutting down" in s for s in out), out
        assert any("closed" in s for s in out), out
    finally:
        kill_process(proc)


def test_serve_stops_at_once_on_a_second_ctrl_c() -> None:
    proc, lines, port = start_serve("--graceful-timeout", "60")
    c = None
    try:
        c = tls_client(port, rcvbuf=16384)
        c.setblocking(False)
        # a client that sends and never reads: the server's echo backs up, so the graceful
        # shutdown cannot finish before its (long) timeout. A small receive window, and sending
        # until the server has stopped taking data for 0.5 s: stopping at the first full send
        # buffer could leave an echo small enough for the kernel's buffers, and the drain
        # would then finish at once.
        payload = b"x" * 65536
        deadline = time.monotonic() + 10
        sent = 0
        stalled_since: Optional[float] = None
        while time.monotonic() < deadline and sent < 64 * 1024 * 1024:
            try:
                sent += c.send(payload)
                stalled_since = None
            except (ssl.SSLWantWriteError, BlockingIOError):
                now = time.monotonic()
                if stalled_since is None:
                    stalled_since = now
                elif now - stalled_since > 0.5:
                    break
                time.sleep(0.01)
        assert sent > 0
        proc.send_signal(signal.SIGINT)
        wait_line(lines, ": shutting down", proc)
        time.sleep(0.5)
        assert proc.poll() is None, "the first Ctrl-C must drain, not stop"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=CHILD_SECONDS) == 0
        lines.join()
        assert any("closed" in s for s in lines.drain())
    finally:
        if c is not None:
            c.close()
        kill_process(proc)
