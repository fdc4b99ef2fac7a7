"""uvssl's echo server as N loops in N threads of one process, on one port (the bench's
``--threads``).

Run as ``python -m uvssl.bench.threaded_echo --threads N [--cert C --key K] [--cpus A,B,...]
[--gil-stats FILE] [--host H] [--port P]``: TLS echo with a certificate, plain-TCP echo
without one, with ``python -m uvssl serve``'s own callbacks (``echo_read``, ``echo_event``).

Theory of operation
-------------------
Each thread runs its own loop (``start_event_loop``) with its own listening socket on the one
port, all with SO_REUSEPORT, so the kernel spreads connections over the threads as it does
over worker processes. Thread 0 listens first (port 0 picks the port), the others then bind
that port. With ``--cpus`` thread i pins itself to the (i mod count)-th CPU listed
(``sched_setaffinity`` on a thread pins that thread only). TLS threads share one ``Context``.
Once every thread listens the server prints ``READY <port>``; SIGTERM or SIGINT stop every
loop (``Loop.stop()``, from the main thread, which does nothing else) and it exits 0. A thread
that fails to start stops the others and the server exits 1 with the reason.

The GIL. uv_run and the TLS work run with the GIL released; it is held while Python code runs
in a callback. ``--gil-stats FILE`` turns on the native core's callback timing
(``uvs_py_time_callbacks``): FILE holds two native-endian unsigned 64-bit counters, the CPU
nanoseconds spent inside Python callbacks summed over every thread and the number of calls,
kept up to date in a shared mapping of the file, so the bench can read them while the server
runs and take the difference over its measured window. That time over the server's CPU time
is the share of a request's CPU that holds the GIL: the part that cannot run in parallel, which
bounds the speed-up of N threads by 1 / share (Amdahl), whatever the number of cores.
"""

from __future__ import annotations

import argparse
import mmap
import os
import signal
import struct
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

from .. import Context, get_loop, start_event_loop, tcp_server, tcp_ssl_server
from ..__main__ import echo_event, echo_read
from .._uvssl import ffi, lib

__all__ = ["GIL_STATS_SIZE", "main", "read_gil_stats", "serve", "time_callbacks"]

#: The size of a ``--gil-stats`` file: two unsigned 64-bit counters (nanoseconds, calls).
GIL_STATS_SIZE = 16
#: How long each thread may take to start listening.
START_TIMEOUT = 30.0

_kept: List[Any] = []  # the mapping and the cffi view of it: alive as long as the process


def time_callbacks(path: str) -> None:
    """Make *path* a ``GIL_STATS_SIZE``-byte file of zeros, map it, and have the native core
    add the CPU time of every Python callback and their count to it. Call it before any loop
    runs. Raises ``OSError`` when the file cannot be made or the thread CPU clock read.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, GIL_STATS_SIZE)
        mapping = mmap.mmap(fd, GIL_STATS_SIZE)
    finally:
        os.close(fd)
    counters = ffi.from_buffer("uint64_t[]", mapping)
    err = lib.uvs_py_time_callbacks(counters)
    if err:
        mapping.close()
        raise OSError(-err, f"cannot time the Python callbacks: {os.strerror(-err)}", path)
    _kept.extend((mapping, counters))


def read_gil_stats(path: str) -> Optional[Tuple[int, int]]:
    """What a ``--gil-stats`` file holds so far: (CPU nanoseconds inside Python callbacks,
    calls), or None while it cannot be read (not made yet, or already removed).
    """
    try:
        with open(path, "rb") as f:
            data = f.read(GIL_STATS_SIZE)
    except OSError:
        return None
    if len(data) != GIL_STATS_SIZE:
        return None
    ns, calls = struct.unpack("=QQ", data)
    return int(ns), int(calls)


def serve(
    host: str,
    port: int,
    threads: int,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    cpus: Optional[List[int]] = None,
) -> int:
    """Serve echo from *threads* loops until SIGTERM or SIGINT; print ``READY <port>``.

    Returns 0 after a signal, 1 when a thread could not start (the reason on stderr).
    """
    ctx = Context.server(certificate=cert, key=key) if cert else None
    stop = threading.Event()
    states: List[Dict[str, Any]] = []

    def run(state: Dict[str, Any]) -> None:
        i = state["index"]
        try:
            if cpus:
                os.sched_setaffinity(0, {cpus[i % len(cpus)]})  # this thread only

            def start() -> None:
                state["loop"] = get_loop()
                if ctx is not None:
                    port = tcp_ssl_server(host, state["port"], echo_read, echo_event,
                                          ssl_ctx=ctx, reuse_port=True).port  # fmt: skip
                else:
                    port = tcp_server(host, state["port"], echo_read, echo_event,
                                      reuse_port=True).port  # fmt: skip
                state["port"] = port
                state["ready"].set()

            start_event_loop(start, catch_app_errors=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            state["error"] = f"thread {i}: {exc}"
            stop.set()
        finally:
            state["ready"].set()

    def start_thread(i: int, on_port: int) -> Dict[str, Any]:
        state: Dict[str, Any] = {"index": i, "port": on_port, "ready": threading.Event()}
        state["thread"] = threading.Thread(target=run, args=(state,), name=f"loop-{i}")
        states.append(state)
        state["thread"].start()
        if not state["ready"].wait(START_TIMEOUT) and "error" not in state:
            state["error"] = f"thread {i}: not listening after {START_TIMEOUT:.0f} s"
        return state

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        first = start_thread(0, port)
        for i in range(1, threads):
            if "error" in first or stop.is_set():
                break
            start_thread(i, first["port"])
        errors = [s["error"] for s in states if "error" in s]
        if not errors:
            print(f"READY {first['port']}", flush=True)
            while not stop.wait(0.5):
                pass
            errors = [s["error"] for s in states if "error" in s]
    finally:
        for state in states:
            loop = state.get("loop")
            if loop is not None:
                loop.stop()
        for state in states:
            state["thread"].join(START_TIMEOUT)
        for s, handler in old.items():
            signal.signal(s, handler)
    for error in errors:
        print(f"threaded_echo: {error}", file=sys.stderr)
    return 1 if errors else 0


def _cpu_list(text: str) -> List[int]:
    try:
        cpus = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of CPU numbers") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of CPU numbers")
    return cpus


def _thread_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: give a thread count from 1 to 256")
    return n


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the command line and run the server; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m uvssl.bench.threaded_echo",
        description="uvssl echo server: N loops in N threads on one port (SO_REUSEPORT).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--threads", type=_thread_count, default=1, metavar="N")
    parser.add_argument("--cert", help="certificate chain (PEM); without it: plain TCP")
    parser.add_argument("--key", help="private key (PEM)")
    parser.add_argument("--cpus", type=_cpu_list, help="pin thread i to the (i mod n)-th CPU")
    parser.add_argument(
        "--gil-stats", metavar="FILE", help="keep the CPU time of Python callbacks in FILE"
    )
    args = parser.parse_args(argv)
    if args.key and not args.cert:
        parser.error("--key needs --cert")
    if args.gil_stats:
        try:
            time_callbacks(args.gil_stats)
        except OSError as exc:
            parser.error(f"--gil-stats: {exc}")
    return serve(args.host, args.port, args.threads, args.cert, args.key, args.cpus)


if __name__ == "__main__":
    sys.exit(main())
