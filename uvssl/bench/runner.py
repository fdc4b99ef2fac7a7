"""``python -m uvssl bench``: uvssl against a native C server, asyncio, uvloop and aiofastnet.

Servers (``--servers``; all by default):

==================  ==========================================================================
uvssl               ``python -m uvssl serve`` (plain TCP: ``uvssl.bench.plain_echo``)
native              ``native/echo_server.c``: single-threaded epoll + OpenSSL, the upper bound
asyncio             ``py_servers``: an ``asyncio.Protocol`` echo on the stock loop + ``ssl``
uvloop              the same protocol on uvloop's loop and TLS transport
aiofastnet          the same protocol through ``aiofastnet.create_server`` (when installed)
uvssl-aio           the same protocol through ``uvssl.aio.create_server`` on the stock loop
aiohttp-uvssl       ``aiohttp_servers``: an aiohttp app served by ``uvssl.aio.create_server``
aiohttp-uvloop      the same app on aiohttp's ``web.TCPSite`` on uvloop
aiohttp-aiofastnet  the same app on ``web.TCPSite``, the stock loop patched by aiofastnet
==================  ==========================================================================

The aiohttp servers serve only the https-hello cell, and only they serve it; the other pairs
are reported ``n/a``.

Every server and the native load client (``native/loadgen.c``) run as separate processes on
loopback. When the machine has more than one usable CPU the server is pinned to the first and
the load client to the second (``os.sched_setaffinity`` in the child before ``exec``). Each
(server, cell) pair gets a fresh server process, so no cell inherits another's state (session
cache, heap, idle connections).

Cells (``--cells``; all by default):

=================  =====================================================================
echo-1             64-byte TLS echo, 1 connection: requests/s, p50/p99 latency
echo-64            64-byte TLS echo, 64 connections: requests/s, p50/p99 latency
bulk               64 KiB chunks echoed over one TLS connection: MB/s (1 MB = 1e6 bytes)
hs-full            full TLS 1.3 handshakes per second
hs-resumed         resumed TLS 1.3 handshakes (session tickets) per second
idle               server memory per idle TLS connection (RSS growth / connections)
plain-echo-64      64-byte plain-TCP echo, 64 connections (uvssl: ``uvssl.bench.plain_echo``)
udp-echo           64-byte UDP echo, 64 datagrams in flight: datagrams/s, p50/p99 latency
https-hello        aiohttp ``GET /`` (body ``hello``) over HTTPS, 64 connections, driven by
                   ``wrk``: requests/s, p50/p99 latency (ratios to aiohttp-uvssl)
=================  =====================================================================

The udp-echo cell has its own load client (``native/udp_load.c``: one connected UDP socket,
a bounded number of requests in flight, a request without a reply after 200 ms counted as lost
and sent again, so loss never stalls it) and its own servers: ``uvssl.bench.udp_echo``
(``udp_socket``) and an ``asyncio.DatagramProtocol`` on asyncio and on uvloop
(``py_servers --udp``). The native server, aiofastnet and uvssl-aio have no UDP echo:
``n/a``.

The https-hello cell's load client is ``wrk`` (``wrk -t2 -c64 -d<N>s --latency``, N the
measured seconds rounded up to a whole second, as wrk counts them), run once unmeasured for
the warm-up (whole seconds too) and then measured on new connections, so the 64 TLS
handshakes of the measured run fall inside its window. A Lua ``done`` hook makes wrk print
its figures as one line of JSON after its text summary, in the load client's format (requests,
seconds, rps, p50_us, p99_us, errors), so the window and the CPU per request below are
computed exactly as for the other cells. wrk does not verify the certificate. Without ``wrk``
on the PATH the cell is reported skipped, with the reason. wrk runs two threads, so its
``client_busy`` can reach 2; its CPU time is read in clock ticks from ``/proc/<pid>/stat``,
which keeps the time of its threads after they end.

Server CPU per operation
------------------------
While the load client runs, the runner samples the server's CPU time about every 10 ms: the
scheduler's own count for each of its threads, in nanoseconds (``/proc/<pid>/task/*/schedstat``),
or, on a kernel that does not keep it, ``utime + stime`` from ``/proc/<pid>/stat`` in clock ticks
(usually 10 ms); the report's ``cpu_resolution_s`` says which. Samples carry time stamps from
``time.monotonic()`` (CLOCK_MONOTONIC, the load client's clock too). The load
client measures only after its setup and warm-up phases and prints its JSON right after the
measured window ends (it then only closes its connections), reporting the window's length as
``seconds``. So the window is ``[t_json - seconds, t_json]`` where ``t_json`` is when the JSON
arrived; the server's CPU at both ends is interpolated between samples, and the difference is
divided by the operations the load client counted in that window: requests (echo), 64 KiB
chunks echoed (bulk), handshakes (hs-*). Setup and warm-up are excluded. For ``idle`` the
window runs from just before the load client starts to its ``IDLE <n>`` line, and an operation
is one connection opened (handshake plus one echo). The error is the interpolation between two
samples at each end of the window (and, with clock ticks, about one tick at each end: 20 ms over
a 2 s window, 1%).

Every sample also reads ``utime`` and ``stime`` from ``/proc/<pid>/stat``, the time the
server's threads spent in user space and in the kernel (clock ticks, attributed by the kernel
at each tick). The JSON gives them for the same window as ``server_user_s`` and
``server_sys_s``: where a server's time goes, in its own code and libraries or in system calls
and the network stack. They are exact to a tick or two at each end, so they mean something in
the full mode's 5-second cells, not in ``--tiny``'s.

Rounds
------
Timing on a shared machine is noisy: the same cell can move 10-30% between two runs. With
``--rounds N`` (3 in full mode) every (server, cell) is measured N times, each time with a fresh
server process; within a cell the servers take turns and each round starts with the next server,
so a slow spell of the machine does not always hit the same one. Each reported figure is the
median of its rounds (figure by figure); the rounds themselves are in the JSON under
``rounds``. A round that fails makes the cell failed.

Priming
-------
In the cells whose connections stay open for the whole run (echo-1, echo-64, bulk,
plain-echo-64), the measured connections would otherwise be the first a fresh server process
ever served. No long-running server is in that state, and it can cost a server far more than
its steady state: glibc's malloc serves blocks above its mmap threshold (128 KiB at first)
with ``mmap``/``munmap``, and raises the threshold only when such a block is freed. A server
that allocates a large read buffer per read (uvloop + ssl does, 256 KiB) pays a map, page
faults and an unmap per request until its first connection closes: 3x its steady-state CPU
per request on this kind of machine. So before those cells the load client runs once
unmeasured for ``PRIME_SECONDS`` with the same connections, which then close, and the measured
run opens new ones. The handshake cells open and close connections all the time and need no
priming; the idle cell measures memory growth from the fresh state on purpose.

The load client's own CPU time is sampled the same way, and each result carries it for the
same window (``client_cpu_s``) and as a share of the window (``client_busy``): near 1, the load
client (one thread) rather than the server may be what limits the throughput.

Worker processes
----------------
``--workers N`` (1, 2, 4, ... up to N) or ``--workers A,B,...`` adds a section measuring
uvssl's server as several processes on one port (SO_REUSEPORT), each pinned to a CPU free of
the load client, and 2 or more sharing the one CPU a single worker uses; server CPU is summed
over the processes. See ``uvssl.bench.scaling``.

Loops in threads
----------------
``--threads N`` (or a list, as for ``--workers``) adds the same section for uvssl's server as
N loops in N threads of one process on one port (``uvssl.bench.threaded_echo``), with the
share of the server's CPU time its Python callbacks took, holding the GIL (``gil_share``):
the part of a request that cannot run in parallel.

Idle memory: ``VmRSS`` from ``/proc/<pid>/status`` before the load client starts and when it
prints ``IDLE <n>``; (after - before) / n. Then its stdin is closed and it finishes.

``--plot FILE.png`` needs matplotlib: without it the runner refuses at once (exit status 2,
before running anything) rather than running the whole bench and failing at the end.

Exit status: 0 when every cell of every available server measured something (an unavailable
optional server, or the https-hello cell without wrk, is reported as skipped, which is not
a failure), 1 when a cell failed or the
native programs cannot be built, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from .native_build import NativeBuildError, build_native

__all__ = [
    "CELLS",
    "METRICS",
    "PRESETS",
    "SERVERS",
    "BenchError",
    "CellSpec",
    "Config",
    "MetricSpec",
    "format_table",
    "main",
    "make_certificate",
    "run",
    "write_plot",
]

HOST = "127.0.0.1"
#: Exit status of ``py_servers`` when the implementation is not installed.
EXIT_UNAVAILABLE = 3
#: Seconds a server gets to print ``READY <port>``.
SERVER_START_TIMEOUT = 30.0
#: Seconds a server gets to exit after SIGTERM before it is killed.
SERVER_STOP_TIMEOUT = 5.0
#: Seconds between two samples of the server's CPU time.
SAMPLE_INTERVAL = 0.01
#: Seconds of the unmeasured priming run before a cell whose connections persist.
PRIME_SECONDS = 0.5
#: Upper bound on the samples kept per load-client run (about 30 minutes at 100 Hz).
MAX_SAMPLES = 200_000

SERVERS: Tuple[str, ...] = (
    "uvssl", "native", "asyncio", "uvloop", "aiofastnet", "uvssl-aio",
    "aiohttp-uvssl", "aiohttp-uvloop", "aiohttp-aiofastnet",
)  # fmt: skip
#: The servers that have a UDP echo (the udp-echo cell); the others are reported ``n/a``.
UDP_SERVERS: Tuple[str, ...] = ("uvssl", "asyncio", "uvloop")
#: The aiohttp servers: they serve only the https-hello cell, which only they serve.
HTTP_SERVERS: Tuple[str, ...] = ("aiohttp-uvssl", "aiohttp-uvloop", "aiohttp-aiofastnet")
#: wrk's threads and the seconds before it counts a request as timed out (https-hello).
WRK_THREADS = 2
WRK_TIMEOUT = "5s"


@dataclass(frozen=True)
class MetricSpec:
    """How one figure is named, shown and compared."""

    label: str
    higher_is_better: bool
    scale: float = 1.0  # the table shows value * scale


METRICS: Dict[str, MetricSpec] = {
    "rps": MetricSpec("req/s", True),
    "dgps": MetricSpec("datagrams/s", True),
    "p50_us": MetricSpec("p50 us", False),
    "p99_us": MetricSpec("p99 us", False),
    "mbps": MetricSpec("MB/s", True),
    "hps": MetricSpec("handshakes/s", True),
    "bytes_per_conn": MetricSpec("KiB/conn", False, 1 / 1024),
    "cpu_s_per_op": MetricSpec("CPU us/op", False, 1e6),
}


@dataclass(frozen=True)
class CellSpec:
    """One benchmark cell: a load-client mode and the figures it yields."""

    key: str
    title: str
    mode: str  # loadgen --mode
    tls: bool
    conns: int  # 0: Config.idle_conns / Config.hs_conns
    size: int
    metrics: Tuple[str, ...]
    op: str  # what one operation is, for CPU/op
    resume: bool = False
    #: The cell's connections stay open for the whole run, so a fresh server would be measured
    #: in a state no long-running server is in: run a priming load first (see "Priming").
    prime: bool = False
    #: the server the other servers' figures are divided by, for the ratios
    base: str = "uvssl"


CELLS: Dict[str, CellSpec] = {
    c.key: c
    for c in (
        CellSpec("echo-1", "64 B echo, 1 conn", "echo", True, 1, 64,
                 ("rps", "p50_us", "p99_us", "cpu_s_per_op"), "request", prime=True),
        CellSpec("echo-64", "64 B echo, 64 conns", "echo", True, 64, 64,
                 ("rps", "p50_us", "p99_us", "cpu_s_per_op"), "request", prime=True),
        CellSpec("bulk", "64 KiB bulk echo", "bulk", True, 1, 65536,
                 ("mbps", "cpu_s_per_op"), "64 KiB chunk echoed", prime=True),
        CellSpec("hs-full", "full TLS 1.3 handshakes", "handshake", True, 0, 64,
                 ("hps", "cpu_s_per_op"), "handshake (+ one 64 B echo, close)"),
        CellSpec("hs-resumed", "resumed TLS 1.3 handshakes", "handshake", True, 0, 64,
                 ("hps", "cpu_s_per_op"), "handshake (+ one 64 B echo, close)", resume=True),
        CellSpec("idle", "memory per idle TLS conn", "idle", True, 0, 64,
                 ("bytes_per_conn", "cpu_s_per_op"), "connection opened (handshake + echo)"),
        CellSpec("plain-echo-64", "64 B plain-TCP echo, 64 conns", "echo", False, 64, 64,
                 ("rps", "p50_us", "p99_us", "cpu_s_per_op"), "request", prime=True),
        CellSpec("udp-echo", "64 B UDP echo, 64 in flight", "udp-echo", False, 64, 64,
                 ("dgps", "p50_us", "p99_us", "cpu_s_per_op"), "datagram echoed", prime=True),
        CellSpec("https-hello", "aiohttp GET / over HTTPS, 64 conns (wrk)", "http", True, 64, 0,
                 ("rps", "p50_us", "p99_us", "cpu_s_per_op"), "HTTP request (GET /, 5-byte body)",
                 prime=True, base="aiohttp-uvssl"),
    )
}  # fmt: skip

#: Per-mode defaults: measured seconds, warm-up seconds, idle connections, handshake slots,
#: load-client setup timeout, rounds (each figure is the median over the rounds).
PRESETS: Dict[str, Dict[str, Any]] = {
    "full": {"duration": 5.0, "warmup": 1.0, "idle_conns": 5000, "hs_conns": 16,
             "timeout": 60.0, "rounds": 3},
    "quick": {"duration": 1.5, "warmup": 0.5, "idle_conns": 1000, "hs_conns": 16,
              "timeout": 30.0, "rounds": 1},
    "tiny": {"duration": 0.3, "warmup": 0.1, "idle_conns": 20, "hs_conns": 4,
             "timeout": 15.0, "rounds": 1},
}  # fmt: skip


class BenchError(RuntimeError):
    """A cell could not be measured (server did not start, load client failed, ...)."""


class _Unavailable(BenchError):
    """The server's implementation is not installed (reported as skipped)."""


@dataclass
class Config:
    """What to run. Build one from :data:`PRESETS` or by hand; pass it to :func:`run`."""

    servers: List[str] = field(default_factory=lambda: list(SERVERS))
    cells: List[str] = field(default_factory=lambda: list(CELLS))
    mode: str = "quick"
    duration: float = 1.5
    warmup: float = 0.5
    idle_conns: int = 1000
    hs_conns: int = 16
    timeout: float = 30.0  # load client's setup deadline (opening connections)
    rounds: int = 1  # measurements per (server, cell); figures are their medians
    pin: bool = True
    progress: bool = True  # progress lines on stderr
    #: worker-process counts for the scaling section (``--workers``); empty: no such section
    workers: List[int] = field(default_factory=list)
    #: thread counts for the loops-in-threads section (``--threads``); empty: no such section
    threads: List[int] = field(default_factory=list)
    #: the cells the scaling sections measure (some of ``scaling.SCALING_CELLS``)
    scaling_cells: List[str] = field(default_factory=lambda: ["echo-64", "hs-full"])

    @classmethod
    def preset(cls, mode: str, **overrides: Any) -> Config:
        """A configuration for *mode* (``full``, ``quick`` or ``tiny``) with *overrides*."""
        if mode not in PRESETS:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(PRESETS)}")
        values = dict(PRESETS[mode])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(mode=mode, **values)

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name in self.servers:
            if name not in SERVERS:
                raise ValueError(f"unknown server {name!r}; expected some of {', '.join(SERVERS)}")
        for name in self.cells:
            if name not in CELLS:
                raise ValueError(f"unknown cell {name!r}; expected some of {', '.join(CELLS)}")
        if not self.servers or not self.cells:
            raise ValueError("at least one server and one cell are needed")
        if not 0 < self.duration <= 3600:
            raise ValueError(f"duration must be in (0, 3600] seconds, got {self.duration}")
        if not 0 <= self.warmup <= 600:
            raise ValueError(f"warmup must be in [0, 600] seconds, got {self.warmup}")
        if not 1 <= self.idle_conns <= 100_000:
            raise ValueError(f"idle connections must be in [1, 100000], got {self.idle_conns}")
        if not 1 <= self.hs_conns <= 1024:
            raise ValueError(f"handshake slots must be in [1, 1024], got {self.hs_conns}")
        if not 1 <= self.timeout <= 3600:
            raise ValueError(f"timeout must be in [1, 3600] seconds, got {self.timeout}")
        if not 1 <= self.rounds <= 100:
            raise ValueError(f"rounds must be in [1, 100], got {self.rounds}")
        for option, counts in (("--workers", self.workers), ("--threads", self.threads)):
            if not counts:
                continue
            from .scaling import MAX_WORKERS, SCALING_CELLS

            for n in counts:
                if not 1 <= n <= MAX_WORKERS:
                    raise ValueError(
                        f"{option[2:-1]} counts must be in [1, {MAX_WORKERS}], got {n}"
                    )
            if not self.scaling_cells:
                raise ValueError(
                    f"{option} measures {', '.join(SCALING_CELLS)}: select at least one"
                )
            for name in self.scaling_cells:
                if name not in SCALING_CELLS:
                    raise ValueError(
                        f"{option} cannot measure cell {name!r}; it measures "
                        f"{', '.join(SCALING_CELLS)}"
                    )


# -- machine facts --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _usable_cpus() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _openssl_versions() -> Dict[str, str]:
    out = {"python_ssl": ssl.OPENSSL_VERSION}
    try:
        from ..openssl import openssl_version

        out["uvssl"] = str(openssl_version()["loaded"][1])
    except Exception as exc:  # uvssl's extension not built: still report the rest
        out["uvssl"] = f"unavailable ({exc})"
    cli = shutil.which("openssl")
    if cli:
        try:
            out["system"] = subprocess.run(
                [cli, "version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def machine_info() -> Dict[str, Any]:
    """Date, CPU, kernel, Python and OpenSSL versions, for the report's header."""
    uname = platform.uname()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count() or 1,
        "usable_cpus": _usable_cpus(),
        "cpu_model": _cpu_model(),
        "kernel": f"{uname.system} {uname.release} {uname.machine}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "openssl": _openssl_versions(),
    }


# -- /proc ----------------------------------------------------------------------------------

_CLK_TCK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _cpu_seconds(pid: int, split: Optional[Tuple[float, float]]) -> Optional[float]:
    """The CPU time of process *pid* (all its threads) in seconds, None if it is gone.

    The scheduler's own account of the time each thread ran, in nanoseconds
    (``/proc/<pid>/task/<tid>/schedstat``), when the kernel keeps it; otherwise utime + stime
    from ``/proc/<pid>/stat`` (*split*, just read by ``_cpu_split``), which counts in clock
    ticks (10 ms): too coarse for a cell that costs the server a few milliseconds in all.
    """
    if _SCHEDSTAT:
        try:
            total = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            return total / 1e9
        except (OSError, ValueError, IndexError):
            pass  # gone, or a thread ended between the listing and the read: use /proc/stat
    return None if split is None else split[0] + split[1]


def _cpu_split(pid: int) -> Optional[Tuple[float, float]]:
    """(user, kernel) CPU time of process *pid* in seconds, or None if it is gone.

    ``utime`` and ``stime`` of ``/proc/<pid>/stat``: all its threads, in clock ticks.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # fields from 3 (state) on
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def _rss_bytes(pid: int) -> int:
    """VmRSS of process *pid* in bytes."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError as exc:
        raise BenchError(f"cannot read the server's memory: {exc}") from exc
    raise BenchError("no VmRSS in /proc/<pid>/status")


def _cpu_at(samples: Sequence[Tuple[float, float]], t: float) -> float:
    """The CPU time at instant *t*, linearly interpolated between *samples* (time, cpu)."""
    if not samples:
        raise BenchError("no CPU samples of the server")
    if t <= samples[0][0]:
        return samples[0][1]
    if t >= samples[-1][0]:
        return samples[-1][1]
    lo, hi = 0, len(samples) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if samples[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, c0), (t1, c1) = samples[lo], samples[hi]
    return c0 if t1 <= t0 else c0 + (c1 - c0) * (t - t0) / (t1 - t0)


# -- child processes ------------------------------------------------------------------------

try:
    _LIBC: Optional[ctypes.CDLL] = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _child_setup(cpu: Optional[int]) -> Callable[[], None]:
    """A ``preexec_fn``: pin to *cpu*, raise the descriptor limit, die with the runner."""

    def setup() -> None:
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:
                pass
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            target = hard if hard != resource.RLIM_INFINITY else 1 << 20
            if soft == resource.RLIM_INFINITY or soft < target:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            pass
        if _LIBC is not None:  # SIGTERM if the runner dies, so nothing is left behind
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return setup


def _child_env() -> Dict[str, str]:
    """The environment for Python children: this uvssl first on the import path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _reap(proc: subprocess.Popen[bytes], timeout: float = SERVER_STOP_TIMEOUT) -> None:
    """Stop *proc*: SIGTERM, wait up to *timeout*, then SIGKILL and wait."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
                pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def _tail(f: IO[bytes], limit: int = 600) -> str:
    try:
        f.seek(0)
        text = f.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
    return text[-limit:]


class _Server:
    """One running server process (a context manager that always reaps it)."""

    def __init__(self, argv: List[str], cpu: Optional[int]) -> None:
        self.argv = argv
        self.cpu = cpu
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.port = 0
        self.errfile: IO[bytes] = tempfile.TemporaryFile()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def pids(self) -> List[int]:
        """The server's process ids: one."""
        return [self.pid]

    def stderr_tail(self) -> str:
        """The end of what the server wrote on stderr."""
        return _tail(self.errfile)

    def __enter__(self) -> _Server:
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self.errfile,
                env=_child_env(),
                preexec_fn=_child_setup(self.cpu),
            )
        except OSError as exc:
            self.errfile.close()
            raise BenchError(f"cannot start {self.argv[0]}: {exc}") from exc
        try:
            self.port = self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline and len(buf) < 65536:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 4096)
                buf += chunk
                for line in buf.splitlines():
                    if line.startswith(b"READY "):
                        return int(line.split()[1])
                if chunk:
                    continue
            if self.proc.poll() is not None:
                if self.proc.returncode == EXIT_UNAVAILABLE:
                    raise _Unavailable(self.stderr_tail() or "not installed")
                raise BenchError(
                    f"server exited with status {self.proc.returncode} before READY: "
                    f"{self.stderr_tail() or buf.decode('utf-8', 'replace')}"
                )
        raise BenchError(f"server printed no READY line within {SERVER_START_TIMEOUT:.0f} s")

    def close(self) -> None:
        """Stop and reap the server."""
        if self.proc is not None:
            _reap(self.proc)
        self.errfile.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Target(Protocol):
    """What the load client runs against: one server process, or several on one port."""

    port: int

    @property
    def pids(self) -> List[int]:
        """The server's process ids (CPU time and memory are summed over them)."""

    def stderr_tail(self) -> str:
        """The end of what the server's processes wrote on stderr."""


@dataclass
class _LoadRun:
    """What one load-client run produced."""

    result: Dict[str, Any]
    samples: List[Tuple[float, float]]
    t_start: float
    t_json: float
    idle: Optional[Dict[str, float]] = None
    user_samples: List[Tuple[float, float]] = field(default_factory=list)
    sys_samples: List[Tuple[float, float]] = field(default_factory=list)
    #: the load client's own CPU time (time, seconds)
    client_samples: List[Tuple[float, float]] = field(default_factory=list)
    #: with several server processes, each one's CPU time (time, seconds), in pid order
    pid_samples: List[List[Tuple[float, float]]] = field(default_factory=list)
    #: a server with ``gil_seconds``: the CPU time its Python callbacks took (time, seconds)
    gil_samples: List[Tuple[float, float]] = field(default_factory=list)


def _run_loadgen(
    argv: List[str],
    cpu: Optional[int],
    server: _Target,
    limit: float,
    idle: bool,
    client_threads: bool = False,
) -> _LoadRun:
    """Run the load client while sampling the server's CPU; bounded by *limit* seconds.

    The server's CPU time is the sum over its processes (a sample is kept only when every one
    of them could be read); the load client's own CPU time is sampled too. With *idle*, on the
    ``IDLE <n>`` line the server's RSS and CPU are read, then the client's stdin is closed so it
    ends. With *client_threads* (wrk: its threads end before it prints its figures, and an
    ended thread leaves ``/proc/<pid>/task``) the client's CPU time is utime + stime from
    ``/proc/<pid>/stat``, which keeps the ended threads' time, in clock ticks.
    """
    pids = list(server.pids)
    rss_before = sum(_rss_bytes(pid) for pid in pids) if idle else 0
    samples: List[Tuple[float, float]] = []
    user_samples: List[Tuple[float, float]] = []
    sys_samples: List[Tuple[float, float]] = []
    client_samples: List[Tuple[float, float]] = []
    pid_samples: List[List[Tuple[float, float]]] = [[] for _ in pids] if len(pids) > 1 else []
    gil_samples: List[Tuple[float, float]] = []
    # a server that times its Python callbacks (scaling's threaded server) says how long
    gil_seconds: Optional[Callable[[], Optional[float]]] = getattr(server, "gil_seconds", None)
    client_pid = 0

    def sample() -> None:
        cpus: List[float] = []
        users: List[float] = []
        kernels: List[float] = []
        for pid in pids:
            split = _cpu_split(pid)
            c = _cpu_seconds(pid, split)
            if c is not None:
                cpus.append(c)
            if split is not None:
                users.append(split[0])
                kernels.append(split[1])
        now = time.monotonic()
        if len(samples) >= MAX_SAMPLES:
            return
        if len(cpus) == len(pids):
            samples.append((now, sum(cpus)))
            for series, c in zip(pid_samples, cpus):
                series.append((now, c))
        if len(users) == len(pids):
            user_samples.append((now, sum(users)))
            sys_samples.append((now, sum(kernels)))
        if gil_seconds is not None:
            gil = gil_seconds()
            if gil is not None:
                gil_samples.append((now, gil))
        if client_pid:
            csplit = _cpu_split(client_pid)
            if client_threads:
                c = None if csplit is None else csplit[0] + csplit[1]
            else:
                c = _cpu_seconds(client_pid, csplit)
            if c is not None:
                client_samples.append((now, c))

    sample()
    t_start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if idle else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_child_setup(cpu),
        )
    except OSError as exc:
        raise BenchError(f"cannot start the load client: {exc}") from exc
    client_pid = proc.pid
    idle_info: Optional[Dict[str, float]] = None
    t_json = 0.0
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        bufs: Dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
        open_fds = [out_fd, err_fd]
        deadline = t_start + limit
        while open_fds:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"load client still running after {limit:.0f} s; killed")
            sample()
            ready, _, _ = select.select(open_fds, [], [], SAMPLE_INTERVAL)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.remove(fd)
                    continue
                if len(bufs[fd]) < 1 << 20:
                    bufs[fd] += chunk
                if fd != out_fd:
                    continue
                at = bufs[fd].find(b"IDLE ")
                eol = bufs[fd].find(b"\n", at) if at >= 0 else -1
                if idle and idle_info is None and eol > at:
                    line = bytes(bufs[fd][at + 5 : eol])
                    sample()
                    idle_info = {
                        "n": float(int(line)),
                        "t": time.monotonic(),
                        "rss_before": float(rss_before),
                        "rss_after": float(sum(_rss_bytes(pid) for pid in pids)),
                    }
                    assert proc.stdin is not None
                    proc.stdin.close()
                if not t_json and b"{" in bufs[fd] and bufs[fd].rstrip().endswith(b"}"):
                    t_json = time.monotonic()
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise BenchError("load client did not exit") from exc
    finally:
        _reap(proc, 2.0)
    err = bufs[err_fd].decode("utf-8", "replace").strip()
    text = bufs[out_fd].decode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"load client printed no result (status {proc.returncode}): {err[-600:]}")
    result: Dict[str, Any] = json.loads(lines[-1])
    if proc.returncode != 0:
        detail = result.get("error") or err[-600:]
        tail = server.stderr_tail()
        raise BenchError(
            f"load client failed (status {proc.returncode}): {detail}"
            + (f"; server stderr: {tail}" if tail else "")
        )
    return _LoadRun(
        result,
        samples,
        t_start,
        t_json or time.monotonic(),
        idle_info,
        user_samples,
        sys_samples,
        client_samples,
        pid_samples,
        gil_samples,
    )


# -- one cell -------------------------------------------------------------------------------


def _server_argv(
    name: str, tls: bool, cert: Path, key: Path, native: Optional[Path], udp: bool = False
) -> List[str]:
    tls_args = ["--cert", str(cert), "--key", str(key)]
    common = ["--host", HOST, "--port", "0"]
    if name in HTTP_SERVERS:
        impl = name[len("aiohttp-") :]
        return [sys.executable, "-m", "uvssl.bench.aiohttp_servers", "--impl", impl, *common,
                *tls_args]  # fmt: skip
    if udp:
        if name == "uvssl":
            return [sys.executable, "-m", "uvssl.bench.udp_echo", *common]
        return [sys.executable, "-m", "uvssl.bench.py_servers", "--impl", name, *common, "--udp"]
    if name == "uvssl":
        if tls:
            return [sys.executable, "-m", "uvssl", "serve", *common, *tls_args, "--quiet"]
        return [sys.executable, "-m", "uvssl.bench.plain_echo", *common]
    if name == "native":
        if native is None:
            raise BenchError("the native echo server could not be built")
        return [str(native), *common, *(tls_args if tls else ["--plain"])]
    return [
        sys.executable, "-m", "uvssl.bench.py_servers", "--impl", name, *common,
        *(tls_args if tls else ["--plain"]),
    ]  # fmt: skip


#: wrk's Lua script for the https-hello cell: when the run ends, one line of JSON with the
#: figures the load client's JSON has (``done`` runs after wrk's own text summary).
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  local seconds = summary.duration / 1e6
  local rps = 0
  if seconds > 0 then rps = summary.requests / seconds end
  local err = "null"
  if summary.requests == 0 then err = '"no request completed"' end
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "rps": %.3f, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"errors": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "bytes": %d, "error": %s}\\n',
    summary.requests, seconds, rps, latency:percentile(50), latency:percentile(99),
    errors, e.connect, e.read, e.write, e.status, e.timeout, summary.bytes, err))
end
"""


def _wrk_argv(
    wrk: Path, script: Path, cell: CellSpec, port: int, cfg: Config, priming: bool = False
) -> List[str]:
    """The command line of wrk for *cell* (https-hello); with *priming*, the unmeasured warm-up.

    wrk takes whole seconds: the measured run lasts ``ceil(duration)`` (at least 1), the
    warm-up ``ceil(warmup)`` (at least 1).
    """
    seconds = max(1, math.ceil(cfg.warmup if priming else cfg.duration))
    return [
        str(wrk), f"-t{WRK_THREADS}", f"-c{cell.conns}", f"-d{seconds}s", "--latency",
        "--timeout", WRK_TIMEOUT, "-s", str(script), f"https://{HOST}:{port}/",
    ]  # fmt: skip


def _loadgen_argv(
    loadgen: Path, cell: CellSpec, port: int, cfg: Config, priming: bool = False
) -> List[str]:
    """The load client's command line for *cell*; with *priming*, a short unmeasured run."""
    if cell.mode == "udp-echo":  # native/udp_load.c
        udp = [
            str(loadgen), "--host", HOST, "--port", str(port), "--size", str(cell.size),
            "--inflight", str(cell.conns), "--timeout", f"{cfg.timeout:g}",
        ]  # fmt: skip
        if priming:
            return udp + ["--duration", f"{min(PRIME_SECONDS, cfg.duration):g}", "--warmup", "0"]
        return udp + ["--duration", f"{cfg.duration:g}", "--warmup", f"{cfg.warmup:g}"]
    conns = cell.conns
    if cell.mode == "idle":
        conns = cfg.idle_conns
    elif cell.mode == "handshake":
        conns = cfg.hs_conns
    argv = [
        str(loadgen), "--mode", cell.mode, "--host", HOST, "--port", str(port),
        "--tls" if cell.tls else "--plain", "--conns", str(conns), "--size", str(cell.size),
        "--timeout", f"{cfg.timeout:g}", "--max-errors", "1000",
    ]  # fmt: skip
    if cell.mode == "idle":
        argv += ["--hold", f"{cfg.timeout + 30:g}"]
    elif priming:
        argv += ["--duration", f"{min(PRIME_SECONDS, cfg.duration):g}", "--warmup", "0"]
    else:
        argv += ["--duration", f"{cfg.duration:g}", "--warmup", f"{cfg.warmup:g}"]
    if cell.resume:
        argv.append("--resume")
    return argv


def _ops(cell: CellSpec, result: Dict[str, Any]) -> int:
    """The operations a load-client run of *cell* counted (see ``CellSpec.op``)."""
    if cell.mode in ("echo", "udp-echo", "http"):
        return int(result["requests"])
    if cell.mode == "bulk":
        return int(result["bytes"]) // cell.size
    return int(result["handshakes"])


def _measure(
    cell: CellSpec,
    server: _Target,
    loadgen: Path,
    cfg: Config,
    client_cpu: Optional[int],
    wrk_script: Optional[Path] = None,
) -> Dict[str, Any]:
    """Run the load client against *server* for *cell*; return the cell's figures.

    For the https-hello cell *loadgen* is wrk and *wrk_script* its Lua script (``WRK_SCRIPT``).
    """
    limit = cfg.timeout + cfg.warmup + cfg.duration + 30.0

    def argv_for(priming: bool) -> List[str]:
        if cell.mode == "http":
            if wrk_script is None:
                raise BenchError("the https-hello cell needs wrk's script")
            return _wrk_argv(loadgen, wrk_script, cell, server.port, cfg, priming=priming)
        return _loadgen_argv(loadgen, cell, server.port, cfg, priming=priming)

    wrk = cell.mode == "http"
    prime_ops = 0
    if cell.prime:
        prime = _run_loadgen(
            argv_for(True), client_cpu, server, limit, idle=False, client_threads=wrk
        ).result
        if prime.get("error"):
            raise BenchError(f"priming run failed: {prime['error']}")
        prime_ops = _ops(cell, prime)
    run = _run_loadgen(
        argv_for(False), client_cpu, server, limit, idle=cell.mode == "idle", client_threads=wrk
    )
    r = run.result
    out: Dict[str, Any] = {"status": "ok", "errors": int(r.get("errors", 0))}
    out["prime_ops"] = prime_ops
    if r.get("error"):
        out["client_error"] = r["error"]
    if cell.mode == "idle":
        if run.idle is None:
            raise BenchError("load client never printed IDLE <n>")
        n = int(run.idle["n"])
        if n <= 0:
            raise BenchError(f"no idle connection could be opened: {r.get('error')}")
        t0, t1 = run.t_start, run.idle["t"]
        growth = run.idle["rss_after"] - run.idle["rss_before"]
        out.update(
            conns=n,
            rss_before=int(run.idle["rss_before"]),
            rss_after=int(run.idle["rss_after"]),
            bytes_per_conn=max(0.0, growth) / n,
            ops=n,
            seconds=float(r.get("setup_seconds", run.idle["t"] - run.t_start)),
        )
    else:
        seconds = float(r.get("seconds", 0.0))
        if cell.mode in ("echo", "udp-echo", "http"):
            out.update(rps=float(r["rps"]), p50_us=float(r["p50_us"]), p99_us=float(r["p99_us"]))
            if cell.mode == "udp-echo":
                out.update(dgps=float(r["rps"]), lost=int(r.get("lost", 0)))
        elif cell.mode == "bulk":
            out.update(mbps=float(r["mbps"]), bytes=int(r["bytes"]))
        else:
            out.update(hps=float(r["hps"]), resumed=int(r.get("resumed", 0)))
        out.update(ops=_ops(cell, r), seconds=seconds, conns=int(r.get("conns", cell.conns)))
        t0, t1 = run.t_json - seconds, run.t_json
    cpu = max(0.0, _cpu_at(run.samples, t1) - _cpu_at(run.samples, t0))
    out["server_cpu_s"] = round(cpu, 4)
    if run.user_samples:
        user = _cpu_at(run.user_samples, t1) - _cpu_at(run.user_samples, t0)
        kernel = _cpu_at(run.sys_samples, t1) - _cpu_at(run.sys_samples, t0)
        out["server_user_s"] = round(max(0.0, user), 4)
        out["server_sys_s"] = round(max(0.0, kernel), 4)
    out["cpu_s_per_op"] = cpu / out["ops"] if out["ops"] > 0 else 0.0
    if run.gil_samples and cpu > 0:  # the time Python callbacks took: the GIL held
        gil = max(0.0, _cpu_at(run.gil_samples, t1) - _cpu_at(run.gil_samples, t0))
        out["gil_s"] = round(gil, 4)
        out["gil_share"] = gil / cpu
    if run.pid_samples:  # several server processes: each one's share
        out["worker_cpu_s"] = [
            round(max(0.0, _cpu_at(ps, t1) - _cpu_at(ps, t0)), 4) for ps in run.pid_samples
        ]
    if run.client_samples and t1 > t0:
        client = max(0.0, _cpu_at(run.client_samples, t1) - _cpu_at(run.client_samples, t0))
        out["client_cpu_s"] = round(client, 4)
        out["client_busy"] = round(client / (t1 - t0), 3)
    out["loadgen"] = r
    return out


# -- certificates ---------------------------------------------------------------------------


def make_certificate(directory: Path) -> Tuple[Path, Path]:
    """Write a throwaway self-signed EC P-256 certificate and key for ``localhost``.

    Uses the ``cryptography`` package when importable, else the ``openssl`` command. Returns
    (certificate path, key path).
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        cli = shutil.which("openssl")
        if cli is None:
            raise BenchError(
                "cannot make a certificate: install the cryptography package or openssl"
            ) from None
        proc = subprocess.run(
            [cli, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", "/CN=localhost"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise BenchError(f"openssl req failed: {proc.stderr.strip()}") from None
        return cert, key
    import ipaddress

    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .sign(pkey, hashes.SHA256())
    )
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


# -- the run --------------------------------------------------------------------------------


def _progress(cfg: Config, text: str, end: str = "") -> None:
    if cfg.progress:
        sys.stderr.write(text + end)
        sys.stderr.flush()


def combine_rounds(cell: CellSpec, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One result from a (server, cell)'s rounds: each figure is the median over the rounds.

    A round that failed makes the cell failed (its reason is kept); a server skipped in every
    round is skipped. The rounds themselves are kept under ``rounds`` when there is more than
    one; a single round is returned as it is.
    """
    if len(runs) == 1:
        return runs[0]
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        return {"status": "failed", "reason": failed[0]["reason"], "rounds": runs}
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return dict(runs[0])
    out: Dict[str, Any] = {"status": "ok"}
    for key in (*cell.metrics, "ops", "seconds", "server_cpu_s"):
        out[key] = statistics.median(float(r[key]) for r in ok)
    # absent when /proc/<pid>/stat was not read, or the client's CPU could not be
    for key in ("server_user_s", "server_sys_s", "client_cpu_s", "client_busy", "gil_share"):
        if all(key in r for r in ok):
            out[key] = statistics.median(float(r[key]) for r in ok)
    out["ops"] = int(out["ops"])
    out["prime_ops"] = int(statistics.median(int(r.get("prime_ops", 0)) for r in ok))
    out["errors"] = sum(int(r.get("errors", 0)) for r in ok)
    out["conns"] = ok[0]["conns"]
    for r in ok:
        if r.get("client_error"):
            out["client_error"] = r["client_error"]
            break
    out["rounds"] = runs
    return out


def _summary(cell: CellSpec, res: Dict[str, Any]) -> str:
    if res["status"] != "ok":
        return str(res["status"])
    m = cell.metrics[0]
    return f"{_fmt(res[m] * METRICS[m].scale)} {METRICS[m].label}"


def run(config: Config) -> Dict[str, Any]:
    """Run the benchmark described by *config*; return the report (see ``--json``).

    Raises :class:`BenchError` when the native load client cannot be built, ValueError for a
    bad configuration. A server that cannot run is reported in the result, not raised.
    """
    config.validate()
    cpus = _usable_cpus()
    server_cpu: Optional[int] = None
    client_cpu: Optional[int] = None
    if config.pin and len(cpus) > 1:
        server_cpu, client_cpu = cpus[0], cpus[1]
    try:
        loadgen = build_native("loadgen")
    except NativeBuildError as exc:
        raise BenchError(f"cannot build the native load client: {exc}") from exc
    udp_load: Optional[Path] = None
    udp_error = ""
    if any(CELLS[c].mode == "udp-echo" for c in config.cells):
        try:
            udp_load = build_native("udp_load")
        except NativeBuildError as exc:
            udp_error = f"cannot build the UDP load client: {exc}"
    wrk: Optional[Path] = None
    if any(CELLS[c].mode == "http" for c in config.cells):
        found = shutil.which("wrk")
        wrk = Path(found) if found else None
    native: Optional[Path] = None
    native_error = ""
    if "native" in config.servers:
        try:
            native = build_native("echo_server")
        except NativeBuildError as exc:
            native_error = str(exc)

    results: Dict[str, Dict[str, Dict[str, Any]]] = {s: {} for s in config.servers}
    servers: Dict[str, Dict[str, Any]] = {s: {"status": "ok"} for s in config.servers}
    if native_error:
        servers["native"] = {"status": "failed", "reason": native_error}
    cells = [CELLS[c] for c in config.cells]
    rounds = config.rounds
    total = len(cells) * len(config.servers) * rounds
    width = len(str(total))
    step = 0
    t_begin = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="uvssl-bench-") as tmp:
        cert, key = make_certificate(Path(tmp))
        wrk_script = Path(tmp) / "report.lua"
        wrk_script.write_text(WRK_SCRIPT, encoding="utf-8")

        def measure_once(name: str, cell: CellSpec) -> Dict[str, Any]:
            status = servers[name]
            if status["status"] != "ok":
                return {"status": status["status"], "reason": status["reason"]}
            udp = cell.mode == "udp-echo"
            http = cell.mode == "http"
            if udp and name not in UDP_SERVERS:
                return {"status": "n/a", "reason": f"{name} has no UDP echo server"}
            if udp and udp_load is None:
                return {"status": "failed", "reason": udp_error}
            if http != (name in HTTP_SERVERS):
                what = "serves only the https-hello cell" if not http else "is not an aiohttp app"
                return {"status": "n/a", "reason": f"{name} {what}"}
            if http and wrk is None:
                return {
                    "status": "skipped",
                    "reason": "wrk is not installed (the https-hello cell's load client: "
                    "apt-get install wrk)",
                }
            try:
                argv = _server_argv(name, cell.tls, cert, key, native, udp=udp)
                with _Server(argv, server_cpu) as server:
                    lg = loadgen
                    if udp and udp_load is not None:
                        lg = udp_load
                    elif http and wrk is not None:
                        lg = wrk
                    return _measure(cell, server, lg, config, client_cpu, wrk_script)
            except _Unavailable as exc:
                servers[name] = {"status": "skipped", "reason": str(exc).strip()}
                return {"status": "skipped", "reason": servers[name]["reason"]}
            except BenchError as exc:
                return {"status": "failed", "reason": str(exc)}

        for cell in cells:
            runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in config.servers}
            for rnd in range(rounds):
                # the servers take turns, and each round starts with the next one, so a drift
                # in the machine's speed does not always land on the same server
                k = rnd % len(config.servers)
                for name in config.servers[k:] + config.servers[:k]:
                    step += 1
                    label = f"{name} {cell.key}" + (f" round {rnd + 1}" if rounds > 1 else "")
                    _progress(config, f"[{step:>{width}}/{total}] {label} ...")
                    res = measure_once(name, cell)
                    runs[name].append(res)
                    _progress(config, " " + _summary(cell, res), "\n")
            for name in config.servers:
                results[name][cell.key] = combine_rounds(cell, runs[name])
        scaling: Dict[str, Dict[str, Any]] = {}
        for unit, counts in (("workers", config.workers), ("threads", config.threads)):
            if counts:
                from .scaling import run_scaling

                scaling[unit] = run_scaling(
                    config, cert, key, loadgen, cpus, server_cpu, client_cpu, unit=unit
                )
    elapsed = time.monotonic() - t_begin

    ratios: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name in config.servers:
        for cell in cells:
            if name == cell.base:
                continue
            mine = results[name].get(cell.key, {})
            ref = results.get(cell.base, {}).get(cell.key, {})
            if mine.get("status") != "ok" or ref.get("status") != "ok":
                continue
            for m in cell.metrics:
                if ref.get(m, 0) > 0:
                    ratios.setdefault(name, {}).setdefault(cell.key, {})[m] = mine[m] / ref[m]

    report: Dict[str, Any] = {
        "version": 1,
        "meta": {
            **machine_info(),
            "config": asdict(config),
            "elapsed_seconds": round(elapsed, 2),
            "pinning": {"server_cpu": server_cpu, "client_cpu": client_cpu},
            "cpu_method": (
                "server CPU time (nanoseconds from /proc/<pid>/task/*/schedstat"
                + (
                    ""
                    if _SCHEDSTAT
                    else ", not kept by this kernel: utime+stime ticks from /proc/<pid>/stat"
                )
                + ") sampled every ~10 ms, interpolated "
                "at both ends of the load client's measured window [t_json - seconds, t_json] "
                "(setup and warm-up excluded), divided by the operations it counted; idle: "
                "from load-client start to its IDLE line, per connection opened"
            ),
            "cpu_resolution_s": 1e-9 if _SCHEDSTAT else 1 / _CLK_TCK,
            "ratio_base": "uvssl",  # a cell's own "base" says when it is another server
        },
        "metrics": {k: asdict(v) for k, v in METRICS.items()},
        "cells": {
            c.key: {
                **asdict(c),
                "conns": (
                    config.idle_conns
                    if c.mode == "idle"
                    else config.hs_conns
                    if c.mode == "handshake"
                    else c.conns
                ),
            }
            for c in cells
        },
        "servers": servers,
        "results": results,
        "ratios": ratios,
    }
    if "workers" in scaling:
        report["scaling"] = scaling["workers"]
    if "threads" in scaling:
        report["threads"] = scaling["threads"]
    return report


# -- output ---------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _cell_label(report: Dict[str, Any], key: str) -> str:
    c = report["cells"][key]
    if c["mode"] == "idle":
        return f"idle-{c['conns']} (TLS)"
    if c["mode"] == "udp-echo":
        return f"{key} (UDP)"
    if c["mode"] == "http":
        return f"{key} (HTTPS)"
    return f"{key} ({'TLS' if c['tls'] else 'plain TCP'})"


def format_table(report: Dict[str, Any]) -> str:
    """The report as a text table with a header (what ``python -m uvssl bench`` prints)."""
    meta = report["meta"]
    cfg = meta["config"]
    names: List[str] = list(report["results"])
    ossl = meta["openssl"]
    pin = meta["pinning"]
    lines = [
        f"uvssl bench ({cfg['mode']} mode) - {meta['date']}",
        f"machine: {meta['nproc']} CPUs ({meta['cpu_model']}), {meta['kernel']}",
        f"python: {meta['python']}; OpenSSL: uvssl {ossl.get('uvssl')}, "
        f"python ssl {ossl.get('python_ssl')}",
        (
            f"server on CPU {pin['server_cpu']}, load client on CPU {pin['client_cpu']}"
            if pin["server_cpu"] is not None
            else "not pinned (only one usable CPU, or --no-pin)"
        )
        + f"; per cell {cfg['warmup']:g} s warm-up + {cfg['duration']:g} s measured"
        + (f", {cfg['rounds']} rounds (figures are medians)" if cfg.get("rounds", 1) > 1 else "")
        + "; "
        f"idle: {cfg['idle_conns']} connections; handshakes: {cfg['hs_conns']} at a time",
        "ratios are server / uvssl"
        + "".join(
            f" ({key}: / {c.get('base')})"
            for key, c in report["cells"].items()
            if c.get("base", "uvssl") != "uvssl"
        )
        + "; (+) higher is better, (-) lower is better; CPU/op = server CPU per operation",
        "",
    ]
    header = ["cell", "metric", *names]
    rows: List[List[str]] = []
    notes: List[str] = []
    for key in report["cells"]:
        spec = report["cells"][key]
        for i, m in enumerate(spec["metrics"]):
            ms = METRICS[m]
            row = [_cell_label(report, key) if i == 0 else "",
                   f"{ms.label} ({'+' if ms.higher_is_better else '-'})"]  # fmt: skip
            for name in names:
                res = report["results"][name].get(key, {})
                status = res.get("status", "missing")
                if status != "ok":
                    row.append(status)
                    if i == 0 and status == "failed":
                        notes.append(f"{name} {key} failed: {res.get('reason', '')}")
                    skipped_cell = report["servers"].get(name, {}).get("status") == "ok"
                    if i == 0 and status == "skipped" and skipped_cell:
                        note = f"{key}: skipped ({res.get('reason', '')})"
                        if note not in notes:
                            notes.append(note)
                    continue
                text = _fmt(res[m] * ms.scale)
                if res.get("errors"):
                    text += "*"
                ratio = report["ratios"].get(name, {}).get(key, {}).get(m)
                if ratio is not None:
                    text += f" {ratio:.2f}x"
                row.append(text)
            rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt_row(r: List[str]) -> str:
        cols = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cols += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        return "  ".join(cols).rstrip()

    lines.append(fmt_row(header))
    lines.append("  ".join("-" * w for w in widths))
    lines += [fmt_row(r) for r in rows]
    lines.append("")
    for name, st in report["servers"].items():
        if st["status"] == "skipped":
            lines.append(f"{name}: skipped ({st.get('reason', '')})")
    if any(r.get("errors") for res in report["results"].values() for r in res.values()):
        lines.append("*: the load client counted errors in that cell (see the JSON)")
    lines += notes
    for section in ("scaling", "threads"):
        if report.get(section):
            from .scaling import format_scaling

            lines += ["", format_scaling(report, section)]
    return "\n".join(lines).rstrip() + "\n"


def write_plot(report: Dict[str, Any], path: str) -> None:
    """Write a PNG chart of *report*: per cell, the main figure and CPU/op for each server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report["cells"])
    names = list(report["results"])
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 2.6 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        spec = report["cells"][key]
        for col, m in enumerate((spec["metrics"][0], "cpu_s_per_op")):
            ax = axes[row][col]
            ms = METRICS[m]
            values = []
            for name in names:
                res = report["results"][name].get(key, {})
                values.append(res[m] * ms.scale if res.get("status") == "ok" else 0.0)
            bars = ax.bar(names, values, color=["C0" if n == "uvssl" else "C7" for n in names])
            for bar, name, v in zip(bars, names, values):
                res = report["results"][name].get(key, {})
                label = _fmt(v) if res.get("status") == "ok" else str(res.get("status", ""))
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)  # fmt: skip
            better = "higher" if ms.higher_is_better else "lower"
            ax.set_title(f"{_cell_label(report, key)}: {ms.label} ({better} is better)", fontsize=9)
            ax.tick_params(labelsize=8)
    fig.suptitle(f"uvssl bench ({report['meta']['config']['mode']}), {report['meta']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line ---------------------------------------------------------------------------


def _split(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _workers(text: str) -> List[int]:
    from .scaling import parse_workers

    return parse_workers(text)


def _threads(text: str) -> List[int]:
    from .scaling import parse_workers

    return parse_workers(text, unit="thread")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m uvssl bench",
        description=(
            "Benchmark uvssl's TLS server against a native C epoll+OpenSSL server, asyncio+ssl, "
            "uvloop+ssl and aiofastnet, driven by a native load client on loopback; an asyncio "
            "Protocol on uvssl.aio against the same on the others; aiohttp over HTTPS on "
            "uvssl.aio, uvloop and aiofastnet, driven by wrk."
        ),
        epilog=f"servers: {', '.join(SERVERS)}; cells: {', '.join(CELLS)}",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_const",
        dest="mode",
        const="quick",
        help="short cells, 1000 idle connections (about 90 seconds)",
    )
    mode.add_argument(
        "--full",
        action="store_const",
        dest="mode",
        const="full",
        help="5 s cells, 3 rounds with medians, 5000 idle connections (about 12 minutes; "
        "the default)",
    )
    mode.add_argument(
        "--tiny",
        action="store_const",
        dest="mode",
        const="tiny",
        help="0.3 s cells, 20 idle connections (a smoke test; figures are noise)",
    )
    p.add_argument("--servers", type=_split, help="comma-separated servers (default: all)")
    p.add_argument("--cells", type=_split, help="comma-separated cells (default: all)")
    p.add_argument("--duration", type=float, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, help="warm-up seconds per cell")
    p.add_argument("--idle-conns", type=int, help="connections for the idle cell")
    p.add_argument(
        "--rounds",
        type=int,
        help="measure each (server, cell) N times, servers taking turns; report medians "
        "(full: 3, quick and tiny: 1)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        metavar="N|A,B,...",
        help="also measure uvssl's server as several processes on one port: N means 1, 2, 4, "
        "... up to N workers, a list means those counts (1 is always measured); each on its "
        "own CPU while CPUs are free of the load client, and 2 or more sharing one CPU; "
        "cells echo-64 and hs-full, or those of --cells among echo-64, hs-full, plain-echo-64",
    )
    p.add_argument(
        "--threads",
        type=_threads,
        metavar="N|A,B,...",
        help="also measure uvssl's server as N loops in N threads of one process on one port "
        "(counts and cells as for --workers), with the share of its CPU time that holds the GIL",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin server and client to CPUs")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="write a chart (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(mode="full")  # fmt: skip
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m uvssl bench``; returns the exit status."""
    parser = _parser()
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["--"]:  # ``python -m uvssl bench -- --quick`` passes it through
        args_in = args_in[1:]
    try:
        args = parser.parse_args(args_in)
    except SystemExit as exc:  # --help or bad usage
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = Config.preset(
            args.mode,
            servers=args.servers,
            cells=args.cells,
            duration=args.duration,
            warmup=args.warmup,
            idle_conns=args.idle_conns,
            rounds=args.rounds,
            pin=not args.no_pin,
            progress=not args.no_progress,
        )
        if args.workers or args.threads:
            from .scaling import SCALING_CELLS

            config.workers = args.workers or []
            config.threads = args.threads or []
            if args.cells:
                config.scaling_cells = [c for c in args.cells if c in SCALING_CELLS]
        config.validate()
    except ValueError as exc:
        print(f"python -m uvssl bench: error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "python -m uvssl bench: error: --plot needs matplotlib "
                "(pip install matplotlib, or uvssl[bench]); nothing was run",
                file=sys.stderr,
            )
            return 2

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through every finally: children are reaped

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        report = run(config)
    except BenchError as exc:
        print(f"python -m uvssl bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npython -m uvssl bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    sys.stdout.write(format_table(report))
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        print(f"figures written to {args.json}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"chart written to {args.plot}")
    failed = [
        f"{name} {cell}"
        for name, res in report["results"].items()
        for cell, r in res.items()
        if r.get("status") == "failed"
    ]
    for section in ("scaling", "threads"):
        if report.get(section):
            from .scaling import failed_setups

            failed += failed_setups(report[section])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
