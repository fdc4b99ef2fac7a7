"""The runnable examples in examples/ must keep working."""

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from tls_support import Certs, LineReader, kill_process, stdlib_client_context

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


@pytest.mark.timeout(90)
@pytest.mark.parametrize("host_loop", ["asyncio", "uvloop"])
def test_aiohttp_https_example(certs: Certs, host_loop: str) -> None:
    """The aiohttp example serves HTTPS with the given certificate, then stops by itself after
    the number of requests it was told."""
    pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install aiohttp)")
    args = ["--port", "0", "--requests", "3", "--cert", str(certs.server_cert)]
    args += ["--key", str(certs.server_key)]
    if host_loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
        args.append("--uvloop")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "aiohttp_https.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    reader = LineReader(proc)
    try:
        line = reader.wait_for(lambda s: s.startswith("serving on "), timeout=30)
        assert line is not None, f"the example did not start: {reader.drain()}"
        url = line.split()[-1]
        ctx = stdlib_client_context(certs)
        bodies = []
        for _ in range(3):
            with urllib.request.urlopen(url, context=ctx, timeout=30) as resp:
                bodies.append(resp.read())
        assert proc.wait(timeout=30) == 0, reader.drain()
        reader.drain()
        assert reader.lines[-1] == "served 3 requests; stopped", reader.lines
        assert all(b.startswith(b"Hello from aiohttp on uvssl (TLSv1.") for b in bodies), bodies
    finally:
        kill_process(proc)
        reader.join()
