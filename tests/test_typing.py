"""uvssl's types reach its users.

After the README's install (an editable install in compat mode, or ``pip install .``), a
user's script that imports uvssl is checked by ``mypy --strict`` against uvssl's own
annotations (``py.typed``): the README's typed example and a script over the tour's API pass,
and a script that misuses the API is rejected for exactly its mistakes, which shows that mypy
really reads uvssl's types rather than treating the module as unknown.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import BLOCKS

import uvssl

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.timeout(300)

MISUSE = """\
import uvssl

def on_read(sock: uvssl.Socket, data: str) -> None:
    pass

def on_event(ev: uvssl.TcpEof) -> None:
    pass

uvssl.tcp_server("127.0.0.1", "8080", None)
uvssl.tcp_connect("127.0.0.1", 80, None, on_event)
port: str = uvssl.tcp_server("127.0.0.1", 0, None).port
uvssl.Context.client(ca_file="ca.pem").no_such_attribute
handler: uvssl.ReadCallback = on_read
"""

#: (line, the start of mypy's message) for every mistake in MISUSE
EXPECTED_MISUSE = [
    (9, 'Argument 2 to "tcp_server" has incompatible type "str"; expected "int"'),
    (10, 'Argument 4 to "tcp_connect" has incompatible type "Callable[[TcpEof], None]"'),
    (11, 'Incompatible types in assignment (expression has type "int", variable has type "str")'),
    (12, '"Context" has no attribute "no_such_attribute"'),
    (13, 'Incompatible types in assignment (expression has type "Callable[[Socket, str], None]"'),
]


def _readme_block(heading: str) -> str:
    for block in BLOCKS:
        if block.heading == heading:
            return block.code
    raise AssertionError(f"README.md has no python block under {heading!r}")


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str]]]:
    """Run ``mypy --strict`` once, the way a user would, over three scripts in an empty
    directory outside the checkout; return each script's errors as (line, message)."""
    if shutil.which("mypy") is None and not _has_module("mypy"):
        pytest.skip("mypy is not installed: `bash tools/setup.sh` installs it with the test extra")
    work = tmp_path_factory.mktemp("typing")
    (work / "readme_example.py").write_text(_readme_block("Type checking"), encoding="utf-8")
    shutil.copy(HERE / "typing" / "user_script.py", work / "user_script.py")
    (work / "misuse.py").write_text(MISUSE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--cache-dir", str(work / ".mypy_cache"), "--no-error-summary",
            "--show-error-codes", "--hide-error-context", "--no-pretty",
            "readme_example.py", "user_script.py", "misuse.py",
        ],
        cwd=work, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert "import-not-found" not in result.stdout, result.stdout
    errors: dict[str, list[tuple[int, str]]] = {}
    for line in result.stdout.splitlines():
        m = re.match(r"^([\w.]+\.py):(\d+): error: (.*)$", line)
        if m:
            errors.setdefault(m.group(1), []).append((int(m.group(2)), m.group(3)))
        elif line.strip() and ": note:" not in line:
            raise AssertionError(f"unexpected mypy output: {line!r}\n{result.stdout}")
    return errors


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_readme_typed_example_passes_mypy_strict(mypy_report):
    assert mypy_report.get("readme_example.py", []) == []


def test_user_script_over_the_api_passes_mypy_strict(mypy_report):
    assert mypy_report.get("user_script.py", []) == []


def test_mypy_sees_uvssl_types_and_rejects_misuse(mypy_report):
    got = mypy_report.get("misuse.py", [])
    for line, start in EXPECTED_MISUSE:
        assert any(n == line and msg.startswith(start) for n, msg in got), (line, start, got)
    assert len(got) == len(EXPECTED_MISUSE), got


def test_option_constants_are_module_attributes():
    # spelled out in uvssl/__init__.py for type checkers: they must agree with the table
    for name, value in uvssl.openssl.SSL_OPTIONS.items():
        assert getattr(uvssl, name) == value
        assert name in uvssl.__all__
    constants = {n for n in vars(uvssl) if n.startswith("SSL_OP_")}
    assert constants == set(uvssl.openssl.SSL_OPTIONS)


def test_callback_types_are_exported():
    for name in uvssl.callbacks.__all__:
        assert name in uvssl.__all__ and getattr(uvssl, name) is getattr(uvssl.callbacks, name)
    assert (Path(uvssl.__file__).parent / "py.typed").exists()
