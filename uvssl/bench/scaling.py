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
"""

from __future__ import annotations

import argparse
import contextlib
import sys
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


def parse_workers(text: str) -> List[int]:
    """The worker counts of ``--workers TEXT``, ascending, always with 1 (the baseline).

    ``N`` means 1, 2, 4, ... (powers of two below N) and N; ``A,B,...`` means exactly those
    counts, plus 1. Raises ``argparse.ArgumentTypeError`` for anything else, a count below 1
    or above :data:`MAX_WORKERS`.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a worker count: give N (1, 2, 4, ... up to N) or a list like 1,2,4"
        )
    counts = set()
    for item in items:
        try:
            n = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a worker count: give a whole number from 1 to {MAX_WORKERS}"
            ) from None
        if not 1 <= n <= MAX_WORKERS:
            raise argparse.ArgumentTypeError(
                f"worker counts must be from 1 to {MAX_WORKERS}, got {n}"
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
    workers: int
    cpus: Tuple[Optional[int], ...]

    @property
    def label(self) -> str:
        """For progress lines."""
        where = (
            "unpinned"
            if self.cpus[0] is None
            else f"CPU{'s' if self.workers > 1 else ''} " + ",".join(str(c) for c in self.cpus)
        )
        return f"{self.workers} worker{'s' if self.workers > 1 else ''} on {where}"


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
) -> Dict[str, Any]:
    """Measure uvssl's server with ``config.workers`` processes; the report's ``scaling``."""
    counts = sorted(set(config.workers) | {1})
    separate, shared, info = _plan(counts, cpus, server_cpu, client_cpu)
    setups = separate + shared
    cells = [CELLS[c] for c in config.scaling_cells]
    total = len(cells) * len(setups) * config.rounds
    step = 0
    out: Dict[str, Any] = {
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
    for cell in cells:
        runs: Dict[_Setup, List[Dict[str, Any]]] = {s: [] for s in setups}
        for rnd in range(config.rounds):
            k = rnd % len(setups)
            for setup in setups[k:] + setups[:k]:
                step += 1
                _progress(
                    config,
                    f"[scaling {step}/{total}] uvssl {cell.key}, {setup.label}"
                    + (f", round {rnd + 1}" if config.rounds > 1 else "")
                    + " ...",
                )
                try:
                    with _ServerGroup(cell, cert, key, setup.cpus) as group:
                        res = _measure(cell, group, loadgen, config, client_cpu)
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
            out["projection"]["cells"][cell.key] = {
                "cpu_s_per_op": cpu1,
                "ops_per_s": [k / cpu1 for k in PROJECTION_CORES],
            }
    return out


def failed_setups(scaling: Dict[str, Any]) -> List[str]:
    """``"<cell> <N> workers (<kind>)"`` for every setup of *scaling* that failed."""
    out = []
    for kind in ("separate", "shared"):
        for key, rows in scaling[kind].items():
            out += [
                f"{key} {r['workers']} workers ({kind})" for r in rows if r["status"] == "failed"
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


def format_scaling(report: Dict[str, Any]) -> str:
    """The report's ``scaling`` section as text (part of what ``python -m uvssl bench`` prints)."""
    sc = report["scaling"]
    lines = [
        "scaling (--workers): uvssl's server as N processes on one port (SO_REUSEPORT); "
        "ops/s and CPU/op for the whole server, CPU summed over its processes",
        "an op is " + "; ".join(f"{CELLS[key].op} ({key})" for key in sc["cells"]),
    ]
    notes: List[str] = []
    saturated = False
    if sc["pinned"]:
        free = sc["free_cpus"]
        lines.append(
            f"separate cores: worker i pinned to the i-th CPU free of the load client (CPU "
            f"{sc['client_cpu']}); free CPUs: {', '.join(str(c) for c in free)}"
        )
    else:
        lines.append("separate cores: not pinned (--no-pin, or one usable CPU)")
    header = ["cell", "workers", "CPUs", "ops/s (+)", "CPU us/op (-)", "speed-up", "client CPU"]
    rows: List[List[str]] = []
    for key, sep_rows in sc["separate"].items():
        for i, r in enumerate(sep_rows):
            row = [_label(key) if i == 0 else "", str(r["workers"]),
                   _cpus_text(r["cpus"])]  # fmt: skip
            if r["status"] != "ok":
                rows.append(row + [r["status"], "", "", ""])
                notes.append(f"{key}, {r['workers']} workers failed: {r.get('reason', '')}")
                continue
            busy = r.get("client_busy")
            client = "?" if busy is None else f"{busy * 100:.0f}%"
            if r.get("client_saturated"):
                client += "*"
                saturated = True
            speedup = r.get("speedup")
            rows.append(row + [_fmt(r["ops_per_s"]), _fmt(r["cpu_s_per_op"] * 1e6),
                               "" if speedup is None else f"{speedup:.2f}x", client])  # fmt: skip
    lines += _table(header, rows)
    for nr in sc["not_run"]:
        lines.append(f"{nr['workers']} workers on separate cores: not run ({nr['reason']})")
    lines.append("")
    if sc["shared"]:
        lines.append(
            f"one shared core: every worker pinned to CPU {sc['shared_cpu']}, against 1 worker "
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
                    rows.append(row + [r["status"], "", "", ""])
                    if r["workers"] > 1:
                        notes.append(
                            f"{key}, {r['workers']} workers on one core failed: "
                            f"{r.get('reason', '')}"
                        )
                    continue
                ratio = 1.0 if r["workers"] == 1 else r.get("cpu_ratio")
                if ratio is not None and ratio > sc["shared_ratio_goal"]:
                    above.append(f"{key} with {r['workers']} workers ({ratio:.3f})")
                busy = r.get("client_busy")
                client = "?" if busy is None else f"{busy * 100:.0f}%"
                if r.get("client_saturated"):
                    client += "*"
                    saturated = True
                rows.append(row + [_fmt(r["ops_per_s"]), _fmt(r["cpu_s_per_op"] * 1e6),
                                   "" if ratio is None else f"{ratio:.3f}", client])  # fmt: skip
        lines += _table(["cell", "workers", "ops/s (+)", "CPU us/op (-)", "ratio", "client CPU"],
                        rows)  # fmt: skip
        if above:
            lines.append(f"ratio above {sc['shared_ratio_goal']:.2f}: {', '.join(above)}")
    else:
        lines.append(f"one shared core: not run ({sc.get('shared_reason', '')})")
    lines.append("")
    proj = sc["projection"]
    if proj["cells"]:
        lines.append(
            "projection (NOT measured): ops/s with k free cores = k / (1 worker's CPU per op); "
            "it holds as far as the shared-core ratio stays near 1 and the load client keeps up"
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
