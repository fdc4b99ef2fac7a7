"""The bench's loops-in-threads server (uvssl.bench.threaded_echo) and the native core's timing
of Python callbacks behind its GIL figure."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
from helpers import SLOWDOWN, run_loop
from tls_support import Certs, kill_process, recv_exactly, stdlib_client_context

import uvssl
from uvssl._uvssl import ffi, lib

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60 * SLOWDOWN)


def _start(args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvssl.bench.threaded_echo", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY "):
        kill_process(proc)
        raise AssertionError(f"no READY line: {line!r} {proc.stderr.read()!r}")  # type: ignore[union-attr]
    return proc, int(line.split()[1])


def _gil(path: Path) -> tuple[int, int]:
    ns, calls = struct.unpack("=QQ", path.read_bytes())
    return ns, calls


def _loop_threads(pid: int) -> dict[int, int]:
    """Each thread of *pid* but the main one, with the CPU nanoseconds it has run."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) == pid:
            continue
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            out[int(tid)] = int(f.read().split()[0])
    return out


def _echo(port: int, ctx: Optional[ssl.SSLContext], payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOWDOWN) as raw:
        if ctx is None:
            raw.sendall(payload)
            return recv_exactly(raw, len(payload))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(payload)
            return recv_exactly(tls, len(payload))


def test_tls_echo_from_three_threads_with_gil_counters(certs: Certs, tmp_path: Path) -> None:
    stats = tmp_path / "gil"
    proc, port = _start(["--threads", "3", "--cert", str(certs.server_cert),
                         "--key", str(certs.server_key), "--gil-stats", str(stats)])  # fmt: skip
    try:
        assert stats.stat().st_size == 16
        ns0, calls0 = _gil(stats)
        ctx = stdlib_client_context(certs)
        before = _loop_threads(proc.pid)
        assert len(before) == 3  # one loop thread each, besides the main thread
        for i in range(40):  # the kernel spreads connections over the three listeners
            payload = f"request {i} ".encode() * 50
            assert _echo(port, ctx, payload) == payload
        ns1, calls1 = _gil(stats)
        # every connection's hand-over and close reach Python: each a timed call
        assert calls1 - calls0 >= 40 and ns1 > ns0
        after = _loop_threads(proc.pid)
        busy = [tid for tid, t in after.items() if t - before[tid] > 0]
        assert len(busy) == 3, (before, after)  # 40 connections: every thread served some
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10 * SLOWDOWN) == 0
    finally:
        kill_process(proc)


def test_plain_echo_pinned_threads_and_sigint(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    proc, port = _start(["--threads", "2", "--cpus", str(cpu)])
    try:
        for i in range(10):
            assert _echo(port, None, b"plain %d" % i) == b"plain %d" % i
        for tid in _loop_threads(proc.pid):
            assert os.sched_getaffinity(tid) == {cpu}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10 * SLOWDOWN) == 0
    finally:
        kill_process(proc)


def test_a_thread_that_cannot_listen_is_an_error(tmp_path: Path) -> None:
    held = socket.socket()  # a listener without SO_REUSEPORT: no thread can share its port
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        proc = subprocess.run(
            [sys.executable, "-m", "uvssl.bench.threaded_echo", "--threads", "2",
             "--port", str(held.getsockname()[1])],
            capture_output=True, text=True, env=env, timeout=30 * SLOWDOWN,
        )  # fmt: skip
    finally:
        held.close()
    assert proc.returncode == 1
    assert "READY" not in proc.stdout
    assert "threaded_echo: thread 0:" in proc.stderr and "address" in proc.stderr.lower()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "0"], "thread count from 1 to 256"),
        (["--threads", "x"], "thread count from 1 to 256"),
        (["--cpus", "a,b"], "not a list of CPU numbers"),
        (["--key", "k.pem"], "--key needs --cert"),
        (["--gil-stats", "/nonexistent-dir/gil"], "--gil-stats"),
    ],
)
def test_bad_arguments(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "uvssl.bench.threaded_echo", *args],
        capture_output=True, text=True, timeout=30 * SLOWDOWN,
    )  # fmt: skip
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_callback_timing_counts_cpu_time_in_python_and_turns_off() -> None:
    counters = ffi.new("uint64_t[2]")
    burn = 0.05

    def busy() -> None:  # CPU time inside one Python callback
        end = time.thread_time() + burn
        while time.thread_time() < end:
            pass

    def idle() -> None:
        time.sleep(burn)  # no CPU time: a thread that waits adds nothing

    def start() -> None:
        uvssl.delay(busy, 0.001)
        uvssl.delay(idle, 0.002)

    assert lib.uvs_py_time_callbacks(counters) == 0
    try:
        run_loop(start)
    finally:
        assert lib.uvs_py_time_callbacks(ffi.NULL) == 0
    ns, calls = counters[0], counters[1]
    assert calls >= 2  # the two timers, and whatever else the loop called
    assert burn * 1e9 <= ns < 1.8 * burn * 1e9 * SLOWDOWN, ns
    run_loop(start)  # timing is off again: the counters stay as they were
    assert (counters[0], counters[1]) == (ns, calls)
