"""The bench's ``--workers`` section: uvssl's server as several processes on one port.

Theory of operation
-------------------
A setup is N uvssl server processes (``python -m uvssl serve --reuse-port``, or
``uvssl.bench.plain_echo --reuse-port`` for plain TCP) listening on one port: the first is
started on port 0 and prints ``READY <port>``, the others are started on that port. Each has
its own listening socket with SO_REUSEPORT, so the kernel spreads the load client's
connections over them (by a hash of each connection's addresses and ports). The load client
is the bench's usual one, pinned to its usual CPU; the runner samples the CPU time of every
worker process and sums it, so "CPU per operation" is the whole server's.

Two experiments, each run with the same cells, in the same run, their setups taking turns
round by round (each round starts with the next setup, as the main table's servers do):

* separate cores: N = 1, 2, 4, ... workers, worker i pinned to the i-th CPU the load client
  leaves free; throughput, summed CPU per operation and speed-up over 1 worker. Only the
  counts that fit the free CPUs are run (the others are listed as not run).
* one shared core: N = 2, 4, ... workers all pinned to the CPU a single worker uses, against
  that single worker (the separate-core 1-worker setup, the same measurement). The ratio of
  CPU per operation, N sharing / 1 alone, shows what N processes cost beyond the work itself
  (scheduler switches, smaller batches per wake-up, duplicated per-process work); it holds on
  any machine, including one with too few cores for the first experiment.

From the single worker's CPU per operation the report projects the throughput of k free
cores (k / CPU per op): a projection, valid as far as the shared-core ratio stays near 1 and
the load client keeps up. The load client is one thread: the runner samples its CPU time too
and marks a setup where it was busy for most of the measured window (it, not the server, may
then be the limit).

Loops in threads (``--threads``) are the same two experiments with one process serving from N
threads, each with its own loop and listening socket on the port (``uvssl.bench.threaded_echo``):
thread i pinned to the CPU worker i would have. That server also keeps the CPU time of its
Python callbacks (``--gil-stats``), sampled with its CPU time, so each row has the share of
its CPU that held the GIL. With share g for one thread, N threads can do at most 1 / g times
one thread's work however many cores they have (the GIL-held part runs one thread at a time);
worker processes have no such limit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

from .runner import (
    CELLS,
    HOST,
    METRICS,
    BenchError,
    CellSpec,
    Config,
    _fmt,
    _measure,
    _progress,
    _Server,
    combine_rounds,
)
from .threaded_echo import read_gil_stats

__all__ = [
    "CLIENT_SATURATED",
    "MAX_WORKERS",
    "PROJECTION_CORES",
    "SCALING_CELLS",
    "SHARED_RATIO_GOAL",
    "format_scaling",
    "parse_workers",
    "run_scaling",
]

#: The cells ``--workers`` can measure (echo-64 and hs-full unless ``--cells`` says otherwise).
SCALING_CELLS: Tuple[str, ...] = ("echo-64", "hs-full", "plain-echo-64")
#: The largest worker count accepted.
MAX_WORKERS = 256
#: CPU per operation of N workers sharing one core over 1 worker alone on it: the most that
#: still means no contention and no duplicated work.
SHARED_RATIO_GOAL = 1.05
#: The load client counts as saturated when it was busy this fraction of the measured window.
CLIENT_SATURATED = 0.9
#: The core counts of the throughput projection.
PROJECTION_CORES: Tuple[int, ...] = (1, 2, 4, 8, 16)


def parse_workers(text: str, unit: str = "worker") -> List[int]:
    """The worker (or, with *unit* ``"thread"``, thread) counts of ``--workers TEXT``,
    ascending, always with 1 (the baseline).

    ``N`` means 1, 2, 4, ... (powers of two below N) and N; ``A,B,...`` means exactly those
    counts, plus 1. Raises ``argparse.ArgumentTypeError`` for anything else, a count below 1
    or above :data:`MAX_WORKERS`.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a {unit} count: give N (1, 2, 4, ... up to N) or a list like 1,2,4"
        )
    counts = set()
    for item in items:
        try:
            n = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a {unit} count: give a whole number from 1 to {MAX_WORKERS}"
            ) from None
        if not 1 <= n <= MAX_WORKERS:
            raise argparse.ArgumentTypeError(
                f"{unit} counts must be from 1 to {MAX_WORKERS}, got {n}"
            )
        counts.add(n)
    if len(items) == 1:
        (top,) = counts
        n = 1
        while n < top:
            counts.add(n)
            n *= 2
    counts.add(1)
    return sorted(counts)


def _worker_argv(cell: CellSpec, cert: Path, key: Path, port: int) -> List[str]:
    """The command line of one worker process serving *cell* on *port* with SO_REUSEPORT."""
    common = ["--host", HOST, "--port", str(port), "--reuse-port"]
    if cell.tls:
        return [sys.executable, "-m", "uvssl", "serve", *common,
                "--cert", str(cert), "--key", str(key), "--quiet"]  # fmt: skip
    return [sys.executable, "-m", "uvssl.bench.plain_echo", *common]


class _ThreadedServer(_Server):
    """One uvssl server process serving from a loop in each of N threads (thread i pinned to
    ``cpus[i]``), whose Python callbacks' CPU time is kept in ``gil_file``
    (``threaded_echo --gil-stats``) and read by the runner through ``gil_seconds``.
    """

    def __init__(
        self, cell: CellSpec, cert: Path, key: Path, cpus: Sequence[Optional[int]]
    ) -> None:
        fd, name = tempfile.mkstemp(prefix="uvssl-gil-")
        os.close(fd)
        self.gil_file = Path(name)
        argv = [sys.executable, "-m", "uvssl.bench.threaded_echo", "--host", HOST,
                "--threads", str(len(cpus)), "--gil-stats", str(self.gil_file)]  # fmt: skip
        if cell.tls:
            argv += ["--cert", str(cert), "--key", str(key)]
        if cpus and cpus[0] is not None:
            argv += ["--cpus", ",".join(str(c) for c in cpus)]
        super().__init__(argv, None)

    def gil_seconds(self) -> Optional[float]:
        """The CPU seconds the server's Python callbacks took so far, or None (unreadable)."""
        stats = read_gil_stats(str(self.gil_file))
        return None if stats is None else stats[0] / 1e9

    def __enter__(self) -> _ThreadedServer:
        try:
            super().__enter__()
        except BaseException:
            self.gil_file.unlink(missing_ok=True)
            raise
        return self

    def close(self) -> None:
        """Stop and reap the server; remove its GIL file."""
        try:
            super().close()
        finally:
            self.gil_file.unlink(missing_ok=True)


class _ServerGroup:
    """N server processes on one port, each pinned to its CPU (a context manager)."""

    def __init__(
        self, cell: CellSpec, cert: Path, key: Path, cpus: Sequence[Optional[int]]
    ) -> None:
        self.cell, self.cert, self.key = cell, cert, key
        self.cpus = list(cpus)
        self.port = 0
        self.servers: List[_Server] = []
        self._stack = contextlib.ExitStack()

    @property
    def pids(self) -> List[int]:
        """The worker processes' ids."""
        return [s.pid for s in self.servers]

    def stderr_tail(self) -> str:
        """The end of what each worker wrote on stderr."""
        tails = [(i, s.stderr_tail()) for i, s in enumerate(self.servers)]
        return "; ".join(f"worker {i}: {t}" for i, t in tails if t)

    def __enter__(self) -> _ServerGroup:
        try:
            for i, cpu in enumerate(self.cpus):
                argv = _worker_argv(self.cell, self.cert, self.key, self.port)
                server = self._stack.enter_context(_Server(argv, cpu))
                if i == 0:
                    self.port = server.port
                elif server.port != self.port:
                    raise BenchError(
                        f"worker {i} listens on port {server.port}, not on the first "
                        f"worker's {self.port}"
                    )
                self.servers.append(server)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        # SIGTERM to every worker first, so they shut down together; then reap each in turn
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                try:
                    server.proc.terminate()
                except OSError:
                    pass
        self._stack.close()


@dataclass(frozen=True)
class _Setup:
    """One measured arrangement: how many workers, on which CPUs."""

    kind: str  # "separate" or "shared"
    workers: int  # workers, or threads
    cpus: Tuple[Optional[int], ...]

    def label(self, unit: str) -> str:
        """For progress lines."""
        where = (
            "unpinned"
            if self.cpus[0] is None
            else f"CPU{'s' if self.workers > 1 else ''} " + ",".join(str(c) for c in self.cpus)
        )
        return f"{self.workers} {_word(unit, self.workers)} on {where}"


def _word(unit: str, n: int) -> str:
    """The word for *n* of *unit*: "workers" or "worker", "threads" or "thread"."""
    return unit if n != 1 else unit[:-1]


def _plan(
    counts: List[int], cpus: List[int], server_cpu: Optional[int], client_cpu: Optional[int]
) -> Tuple[List[_Setup], List[_Setup], Dict[str, Any]]:
    """The separate-core and shared-core setups for *counts*, and what the report says of them."""
    pinned = server_cpu is not None
    info: Dict[str, Any] = {"pinned": pinned, "client_cpu": client_cpu, "not_run": []}
    separate: List[_Setup] = []
    shared: List[_Setup] = []
    if pinned:
        free = [c for c in cpus if c != client_cpu]
        info["free_cpus"] = free
        for n in counts:
            if n <= len(free):
                separate.append(_Setup("separate", n, tuple(free[:n])))
        shared = [_Setup("shared", n, (server_cpu,) * n) for n in counts if n > 1]
        info["shared_cpu"] = server_cpu
        reason = f"{len(free)} CPU{'s' if len(free) != 1 else ''} free of the load client"
        if not shared:
            info["shared_reason"] = "needs a worker count above 1"
    else:
        free_count = max(1, len(cpus) - 1)
        info["free_cpus"] = None
        separate = [_Setup("separate", n, (None,) * n) for n in counts if n <= free_count]
        info["shared_cpu"] = None
        info["shared_reason"] = "needs pinning; --no-pin was given, or one CPU is usable"
        reason = f"{len(cpus)} usable CPU{'s' if len(cpus) != 1 else ''}, one for the load client"
    measured = {s.workers for s in separate}
    info["not_run"] = [{"workers": n, "reason": reason} for n in counts if n not in measured]
    return separate, shared, info


def _row(cell: CellSpec, setup: _Setup, res: Dict[str, Any]) -> Dict[str, Any]:
    row: Dict[str, Any] = {"workers": setup.workers, "cpus": list(setup.cpus), **res}
    if res.get("status") == "ok":
        row["ops_per_s"] = float(res[cell.metrics[0]])
        busy = res.get("client_busy")
        row["client_saturated"] = busy is not None and busy >= CLIENT_SATURATED
    return row


def run_scaling(
    config: Config,
    cert: Path,
    key: Path,
    loadgen: Path,
    cpus: List[int],
    server_cpu: Optional[int],
    client_cpu: Optional[int],
    unit: str = "workers",
) -> Dict[str, Any]:
    """Measure uvssl's server with ``config.workers`` processes (the report's ``scaling``),
    or with *unit* ``"threads"``, ``config.threads`` loops in threads (its ``threads``).
    """
    counts = sorted(set(config.workers if unit == "workers" else config.threads) | {1})
    separate, shared, info = _plan(counts, cpus, server_cpu, client_cpu)
    setups = separate + shared
    cells = [CELLS[c] for c in config.scaling_cells]
    total = len(cells) * len(setups) * config.rounds
    step = 0
    out: Dict[str, Any] = {
        "unit": unit,
        "counts": counts,
        "cells": [c.key for c in cells],
        **info,
        "separate": {},
        "shared": {},
        "projection": {"cores": list(PROJECTION_CORES), "cells": {}},
        "shared_ratio_goal": SHARED_RATIO_GOAL,
        "client_saturated_at": CLIENT_SATURATED,
        "method": (
            "N uvssl server processes on one port (SO_REUSEPORT; the kernel spreads the "
            "connections); separate: worker i pinned to the i-th CPU free of the load client; "
            "shared: every worker pinned to the CPU 1 worker uses; CPU/op summed over the "
            "workers; setups take turns round by round; the projection is k / (1 worker's "
            "CPU/op), not a measurement; client_busy = the load client's CPU time / the window"
        ),
    }
    if unit == "threads":
        out["method"] = (
            "one uvssl server process, N loops in N threads on one port (SO_REUSEPORT); "
            "separate: thread i pinned to the i-th CPU free of the load client; shared: every "
            "thread pinned to the CPU 1 thread uses; gil_share = CPU time inside Python "
            "callbacks (the GIL held) / the server's CPU time, both over the measured window; "
            "the rest as for workers"
        )
    for cell in cells:
        runs: Dict[_Setup, List[Dict[str, Any]]] = {s: [] for s in setups}
        for rnd in range(config.rounds):
            k = rnd % len(setups)
            for setup in setups[k:] + setups[:k]:
                step += 1
                _progress(
                    config,
                    f"[{unit} {step}/{total}] uvssl {cell.key}, {setup.label(unit)}"
                    + (f", round {rnd + 1}" if config.rounds > 1 else "")
                    + " ...",
                )
                try:
                    target = (
                        _ServerGroup(cell, cert, key, setup.cpus)
                        if unit == "workers"
                        else _ThreadedServer(cell, cert, key, setup.cpus)
                    )
                    with target as server:
                        res = _measure(cell, server, loadgen, config, client_cpu)
                except BenchError as exc:
                    res = {"status": "failed", "reason": str(exc)}
                runs[setup].append(res)
                if res["status"] == "ok":
                    m = cell.metrics[0]
                    _progress(config, f" {_fmt(res[m] * METRICS[m].scale)} {METRICS[m].label}\n")
                else:
                    _progress(config, f" {res['status']}\n")
        combined = {s: _row(cell, s, combine_rounds(cell, runs[s])) for s in setups}
        sep_rows = [combined[s] for s in separate]
        base = sep_rows[0] if sep_rows and sep_rows[0]["status"] == "ok" else None
        for row in sep_rows:
            if base is not None and row["status"] == "ok" and base["ops_per_s"] > 0:
                row["speedup"] = row["ops_per_s"] / base["ops_per_s"]
        out["separate"][cell.key] = sep_rows
        sh_rows = [combined[s] for s in shared]
        for row in sh_rows:
            if base is not None and row["status"] == "ok" and base["cpu_s_per_op"] > 0:
                row["cpu_ratio"] = row["cpu_s_per_op"] / base["cpu_s_per_op"]
        if shared:
            out["shared"][cell.key] = sh_rows
        if base is not None and base["cpu_s_per_op"] > 0:
            cpu1 = float(base["cpu_s_per_op"])
            # threads: the GIL-held share g runs one thread at a time, so at most 1 / g cores
            share = base.get("gil_share") if unit == "threads" else None
            cap = 1 / share if share else float("inf")
            out["projection"]["cells"][cell.key] = {
                "cpu_s_per_op": cpu1,
                "ops_per_s": [min(k, cap) / cpu1 for k in PROJECTION_CORES],
            }
    return out


def failed_setups(scaling: Dict[str, Any]) -> List[str]:
    """``"<cell> <N> workers (<kind>)"`` (or threads) for every setup of *scaling* that failed."""
    unit = scaling.get("unit", "workers")
    out = []
    for kind in ("separate", "shared"):
        for key, rows in scaling[kind].items():
            out += [
                f"{key} {r['workers']} {unit} ({kind})" for r in rows if r["status"] == "failed"
            ]
    return out


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt_row(r: List[str]) -> str:
        cols = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(cols).rstrip()

    return [fmt_row(header), "  ".join("-" * w for w in widths), *(fmt_row(r) for r in rows)]


def _label(key: str) -> str:
    return f"{key} ({'TLS' if CELLS[key].tls else 'plain TCP'})"


def _cpus_text(cpus: List[Optional[int]]) -> str:
    if not cpus or cpus[0] is None:
        return "-"
    if len(set(cpus)) == 1 and len(cpus) > 1:
        return f"{cpus[0]} (x{len(cpus)})"
    return ",".join(str(c) for c in cpus)


def format_scaling(report: Dict[str, Any], section: str = "scaling") -> str:
    """The report's ``scaling`` section (``--workers``), or its ``threads`` section, as text
    (part of what ``python -m uvssl bench`` prints).
    """
    sc = report[section]
    unit = sc.get("unit", "workers")
    one = unit[:-1]  # "worker", "thread"
    threads = unit == "threads"
    if threads:
        lines = [
            "loops in threads (--threads): uvssl's server as N loops in N threads of one "
            "process on one port (SO_REUSEPORT); GIL = the share of its CPU time spent in "
            "Python callbacks, which hold the GIL",
        ]
    else:
        lines = [
            "scaling (--workers): uvssl's server as N processes on one port (SO_REUSEPORT); "
            "ops/s and CPU/op for the whole server, CPU summed over its processes",
        ]
    lines.append("an op is " + "; ".join(f"{CELLS[key].op} ({key})" for key in sc["cells"]))
    notes: List[str] = []
    saturated = False

    def gil_text(r: Dict[str, Any]) -> List[str]:
        if not threads:
            return []
        share = r.get("gil_share")
        return ["?" if share is None else f"{share * 100:.1f}%"]

    if sc["pinned"]:
        free = sc["free_cpus"]
        lines.append(
            f"separate cores: {one} i pinned to the i-th CPU free of the load client (CPU "
            f"{sc['client_cpu']}); free CPUs: {', '.join(str(c) for c in free)}"
        )
    else:
        lines.append("separate cores: not pinned (--no-pin, or one usable CPU)")
    header = ["cell", unit, "CPUs", "ops/s (+)", "CPU us/op (-)", *(["GIL"] if threads else []),
              "speed-up", "client CPU"]  # fmt: skip
    rows: List[List[str]] = []
    for key, sep_rows in sc["separate"].items():
        for i, r in enumerate(sep_rows):
            row = [_label(key) if i == 0 else "", str(r["workers"]),
                   _cpus_text(r["cpus"])]  # fmt: skip
            if r["status"] != "ok":
                rows.append(row + [r["status"]] + [""] * (len(header) - 4))
                notes.append(f"{key}, {r['workers']} {unit} failed: {r.get('reason', '')}")
                continue
            busy = r.get("client_busy")
            client = "?" if busy is None else f"{busy * 100:.0f}%"
            if r.get("client_saturated"):
                client += "*"
                saturated = True
            speedup = r.get("speedup")
            rows.append(row + [_fmt(r["ops_per_s"]), _fmt(r["cpu_s_per_op"] * 1e6), *gil_text(r),
                               "" if speedup is None else f"{speedup:.2f}x", client])  # fmt: skip
    lines += _table(header, rows)
    for nr in sc["not_run"]:
        lines.append(f"{nr['workers']} {unit} on separate cores: not run ({nr['reason']})")
    if threads:
        for key, sep_rows in sc["separate"].items():
            base = sep_rows[0] if sep_rows and sep_rows[0]["status"] == "ok" else None
            share = base.get("gil_share") if base else None
            if share:
                lines.append(
                    f"{key}: one thread holds the GIL for {share * 100:.1f}% of its CPU time, so "
                    f"N threads do at most {1 / share:.1f}x its work on any number of cores "
                    f"(1 / GIL share); worker processes have no such limit"
                )
    lines.append("")
    if sc["shared"]:
        lines.append(
            f"one shared core: every {one} pinned to CPU {sc['shared_cpu']}, against 1 {one} "
            f"alone there; ratio = CPU/op of N sharing / 1 alone (no contention and no "
            f"duplicated work: at most {sc['shared_ratio_goal']:.2f})"
        )
        rows = []
        above: List[str] = []
        for key, sh_rows in sc["shared"].items():
            base = next((r for r in sc["separate"].get(key, []) if r["workers"] == 1), None)
            for i, r in enumerate([base, *sh_rows] if base else sh_rows):
                row = [_label(key) if i == 0 else "", str(r["workers"])]
                if r["status"] != "ok":
                    rows.append(row + [r["status"]] + [""] * (3 + threads))
                    if r["workers"] > 1:
                        notes.append(
                            f"{key}, {r['workers']} {unit} on one core failed: "
                            f"{r.get('reason', '')}"
                        )
                    continue
                ratio = 1.0 if r["workers"] == 1 else r.get("cpu_ratio")
                if ratio is not None and ratio > sc["shared_ratio_goal"]:
                    above.append(f"{key} with {r['workers']} {unit} ({ratio:.3f})")
                busy = r.get("client_busy")
                client = "?" if busy is None else f"{busy * 100:.0f}%"
                if r.get("client_saturated"):
                    client += "*"
                    saturated = True
                rows.append(row + [_fmt(r["ops_per_s"]), _fmt(r["cpu_s_per_op"] * 1e6),
                                   *gil_text(r), "" if ratio is None else f"{ratio:.3f}",
                                   client])  # fmt: skip
        lines += _table(["cell", unit, "ops/s (+)", "CPU us/op (-)", *(["GIL"] if threads else []),
                         "ratio", "client CPU"], rows)  # fmt: skip
        if above:
            lines.append(f"ratio above {sc['shared_ratio_goal']:.2f}: {', '.join(above)}")
    else:
        lines.append(f"one shared core: not run ({sc.get('shared_reason', '')})")
    lines.append("")
    proj = sc["projection"]
    if proj["cells"]:
        k = "min(k, 1 / GIL share)" if threads else "k"
        lines.append(
            f"projection (NOT measured): ops/s with k free cores = {k} / (1 {one}'s CPU per "
            f"op); it holds as far as the shared-core ratio stays near 1 and the load client "
            f"keeps up"
        )
        rows = [
            [_label(key), *(_fmt(v) for v in p["ops_per_s"])] for key, p in proj["cells"].items()
        ]
        lines += _table(["cell", *(f"k={k}" for k in proj["cores"])], rows)
    if saturated:
        lines.append(
            f"*: the load client (one thread) was busy for at least "
            f"{sc['client_saturated_at'] * 100:.0f}% of the measured window: it, not the "
            f"server, may be the limit of that row's ops/s (CPU/op is still the server's)"
        )
    lines += notes
    return "\n".join(lines).rstrip() + "\n"
