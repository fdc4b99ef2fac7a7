"""The README's tour runs as written.

Every ```python block of README.md runs, in the order the README gives them, as a script of
its own in a fresh ``python3``, all of them in one empty directory (the first block writes the
certificates the others use). A block followed by an ```output block must print exactly that;
no block may write anything to stderr (an unhandled event logged by uvssl, a warning, a
traceback) or take longer than 30 seconds. Running one block alone runs the blocks before it
first, so ``-k`` works too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK_SECONDS = 30

pytestmark = pytest.mark.timeout(BLOCK_SECONDS * 20)


@dataclass
class Block:
    index: int
    heading: str
    line: int
    code: str
    output: Optional[str]

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.index:02d}-{slug}"


_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def parse_readme(text: str) -> list[Block]:
    """The python blocks of ``text``, each with the output block that follows it, if any."""
    fences = list(_FENCE.finditer(text))
    blocks: list[Block] = []
    for i, m in enumerate(fences):
        if m.group(1) != "python":
            continue
        output = None
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        if nxt is not None and nxt.group(1) == "output" and not text[m.end() : nxt.start()].strip():
            output = nxt.group(2).rstrip("\n")
        blocks.append(
            Block(
                index=len(blocks),
                heading=_last_heading(text, m.start()),
                line=text.count("\n", 0, m.start()) + 1,
                code=m.group(2),
                output=output,
            )
        )
    return blocks


def _last_heading(text: str, end: int) -> str:
    """The last Markdown heading before ``end``, skipping fenced blocks (where a line that
    starts with "#" is a comment)."""
    heading = ""
    inside = False
    for line in text[:end].splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            heading = line.lstrip("#").strip()
    return heading


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))


class Tour:
    """Runs the blocks in order in one directory, each at most once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.results: dict[int, subprocess.CompletedProcess[str]] = {}

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        for earlier in BLOCKS[: block.index]:
            if earlier.index not in self.results:
                self._run(earlier)
        if block.index not in self.results:
            self._run(block)
        return self.results[block.index]

    def _run(self, block: Block) -> None:
        script = self.directory / f"block_{block.id}.py"
        script.write_text(block.code, encoding="utf-8")
        env = os.environ.copy()
        env.pop("SSLKEYLOGFILE", None)  # a key log is not part of the tour
        if "UVSSL_TEST_SLOWDOWN" in env and "ASAN_OPTIONS" in env:
            # Under tools/asan.sh the blocks run sanitized too, and AddressSanitizer's memory
            # checks stay on; leak checking does not: LeakSanitizer's exit-time tracer crashed
            # once in a short-lived child ("Tracer caught signal 11"), and leaks are what the
            # rest of the suite checks, in process, over the same native code.
            env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        try:
            result = subprocess.run(
                [sys.executable, script.name],
                cwd=self.directory,
                capture_output=True,
                text=True,
                timeout=BLOCK_SECONDS,
                env=env,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(
                f"README.md line {block.line} ({block.id}) did not finish within "
                f"{BLOCK_SECONDS} s; it printed {exc.stdout!r}, stderr {exc.stderr!r}"
            )
        self.results[block.index] = result


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Tour:
    return Tour(tmp_path_factory.mktemp("readme-tour"))


def test_the_readme_has_a_tour_to_run() -> None:
    assert len(BLOCKS) >= 10, f"only {len(BLOCKS)} python blocks found in README.md"
    missing = [b.id for b in BLOCKS if b.output is None]
    assert not missing, f"python blocks without an ```output block after them: {missing}"
    assert "trustme" in BLOCKS[0].code, "the first block should make the tour's certificates"


def test_parse_readme_pairs_blocks_with_their_output() -> None:
    text = (
        "# A\n\n```python\nprint(1)\n```\n\n```output\n1\n```\n\n"
        "## B\n\n```python\nx = 2\n```\n\ntext\n\n```output\nnot this one's\n```\n"
    )
    a, b = parse_readme(text)
    assert (a.heading, a.code, a.output, a.line) == ("A", "print(1)\n", "1", 3)
    assert (b.heading, b.output) == ("B", None)  # prose between: not its output
    assert b.id == "01-b"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block: Block, tour: Tour) -> None:
    result = tour.run(block)
    where = f"README.md line {block.line} ({block.id})"
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    assert result.stderr == "", f"{where} wrote to stderr:\n{result.stderr}"
    if block.output is not None:
        assert result.stdout.rstrip("\n") == block.output, f"{where} printed something else"


def test_no_file_cites_a_document_outside_the_repository() -> None:
    """Comments and docs cite only what a reader of this repository can open: not the project
    specification's sections or design notes, which live outside it."""
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are not known")
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # built from pieces, so that this file does not match itself
    outside = re.compile(r"\b" + "SP" + r"EC( S\d|\.md)|" + "DES" + r"IGN\.md|shared/" + "seeds")
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix not in {".py", ".c", ".h", ".md", ".sh", ".toml", ".yaml", ".json", ""}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue
        hits += [
            f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if outside.search(line)
        ]
    assert not hits, f"files cite documents that are not in the repository: {hits}"
