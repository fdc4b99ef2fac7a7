"""The runnable examples in examples/ must keep working."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_async_to_sync_example() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "async_to_sync.py")],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "async client,     plain: b'OK\\n'",
        "async client,       tls: b'SECRET OVER TLS\\n'",
        "async client,   plain-2: b'PLAINTEXT AGAIN\\n'",
        "sync stream, TLSv1.3: b'NOW SYNCHRONOUS\\n'",
    ]
