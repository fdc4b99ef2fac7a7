#!/usr/bin/env python3
"""Fail when the native core got more expensive: instructions per operation, counted by
callgrind (tools/instr.sh), against the budgets committed in tools/perf_budget.json.

    python3 tools/perf_guard.py [CELL ...]     default: every cell in the budget file

Instruction counts do not depend on the machine's load, so this check does not flake the way
a wall-clock benchmark would; a count above budget * (1 + tolerance) fails. Needs valgrind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET = ROOT / "tools" / "perf_budget.json"


def measure(cell: str) -> float:
    """Instructions per operation of the uvssl server for ``cell``."""
    out = subprocess.run(
        ["bash", str(ROOT / "tools" / "instr.sh"), cell, "uvssl"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    print(out.strip(), flush=True)
    m = re.search(r"uvssl \S+: ([\d,]+) instructions per", out)
    if m is None:
        sys.exit(f"perf_guard: no figure in the output of tools/instr.sh {cell}")
    return float(m.group(1).replace(",", ""))


def main(argv: list[str]) -> int:
    """Measure the cells named in ``argv`` (default: all) and compare them with their budgets."""
    spec = json.loads(BUDGET.read_text())
    tolerance = float(spec["tolerance"])
    cells = argv or list(spec["cells"])
    failed = []
    for cell in cells:
        if cell not in spec["cells"]:
            sys.exit(f"perf_guard: no budget for {cell!r} in {BUDGET}")
        budget = float(spec["cells"][cell]["budget"])
        unit = spec["cells"][cell]["unit"]
        got = measure(cell)
        limit = budget * (1 + tolerance)
        change = got / budget - 1
        verdict = "ok" if got <= limit else "OVER BUDGET"
        print(
            f"perf_guard: {cell}: {got:,.0f} instructions per {unit}, budget {budget:,.0f} "
            f"({change:+.1%}; fails above {limit:,.0f}): {verdict}",
            flush=True,
        )
        if got > limit:
            failed.append(cell)
    if failed:
        print(f"perf_guard: over budget: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
