"""The TLS engine (csrc/tls.c) on its own: no socket, no event loop, no libuv.

``tests/engine/test_engine.c`` runs a client engine and a server engine against each other in
memory (handshake, data both ways, KeyUpdate, close_notify in both orders, a truncated record,
garbage, an oversized record, refused state transitions). This module compiles it with gcc
against OpenSSL alone, which is itself a check that the engine needs nothing else, and runs it
with certificates from trustme. Any failed check fails the test, with the program's output.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PROGRAM = Path(__file__).resolve().parent / "engine" / "test_engine.c"
ENGINE_SOURCES = [CSRC / "tls.c", CSRC / "buf.c"]

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")


def openssl_flags() -> list[str]:
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "openssl"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ["-lssl", "-lcrypto"]
    return shlex.split(out)


def compile_program(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert GCC is not None
    cmd = [
        GCC,
        "-std=c99",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-g",
        *extra,
        f"-I{CSRC}",
        str(PROGRAM),
        *(str(s) for s in ENGINE_SOURCES),
        *openssl_flags(),
        "-o",
        str(out),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cert_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    import trustme

    d = tmp_path_factory.mktemp("engine-certs")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    chain, key, ca_file = d / "chain.pem", d / "key.pem", d / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(chain), append=i > 0)
    ca.cert_pem.write_to_path(str(ca_file))
    return [str(chain), str(key), str(ca_file)]


def run_program(exe: Path, args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env)
    report = f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.returncode == 0, report
    assert not [line for line in r.stdout.splitlines() if line.startswith("FAIL")], report
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith(" checks, 0 failed"), report
    assert int(last.split()[0]) > 100, report  # every test function ran


def test_engine_needs_only_openssl() -> None:
    """The engine's sources include no libuv header and nothing of the loop's (uvs.h)."""
    assert GCC is not None
    for src in ENGINE_SOURCES:
        deps = subprocess.run(
            [GCC, "-std=c99", "-D_GNU_SOURCE", "-M", f"-I{CSRC}", *openssl_flags(), str(src)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        names = {Path(d).name for d in deps.replace("\\\n", " ").split()[1:]}
        assert "uv.h" not in names and "uvs.h" not in names, (src, sorted(names))
        assert "ssl.h" in names or src.name == "buf.c"


def test_engine_in_memory(tmp_path: Path, cert_args: list[str]) -> None:
    exe = tmp_path / "test_engine"
    c = compile_program(exe)
    assert c.returncode == 0, c.stderr
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    run_program(exe, cert_args, env)


def test_engine_in_memory_sanitized(tmp_path: Path, cert_args: list[str]) -> None:
    """The same under AddressSanitizer, LeakSanitizer and UBSan: no leak, no bad access."""
    exe = tmp_path / "test_engine_asan"
    c = compile_program(exe, "-fsanitize=address,undefined", "-fno-omit-frame-pointer")
    if c.returncode != 0:
        pytest.skip(f"no sanitizer runtime: {c.stderr.strip()[:200]}")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=23"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    run_program(exe, cert_args, env)
