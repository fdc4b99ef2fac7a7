"""``python -m uvssl serve``: worker processes, reloading on SIGHUP, ticket key files, the
PROXY protocol flag.

Each test runs the command in a subprocess on port 0 and reads the port it prints; the peers
are stdlib ``ssl`` clients. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import SLOWDOWN
from tls_support import Certs, LineReader, kill_process

ROOT = Path(__file__).resolve().parent.parent
LINE_SECONDS = 30 * SLOWDOWN
EXIT_SECONDS = 30 * SLOWDOWN

pytestmark = pytest.mark.timeout(120 * SLOWDOWN)


class Serve:
    """``python -m uvssl serve --port 0 ...`` in a subprocess (stderr merged into stdout)."""

    def __init__(self, *args: str, ready: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvssl", "serve", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines = LineReader(self.proc)
        ports = {int(self.wait("READY").split()[1]) for _ in range(ready)}
        assert len(ports) == 1, "every worker serves the same port"
        self.port = ports.pop()

    def wait(self, text: str) -> str:
        line = self.lines.wait_for(lambda s: text in s, LINE_SECONDS)
        if line is None:
            kill_process(self.proc)
            pytest.fail(f"serve never printed {text!r}:\n" + "\n".join(self.lines.lines))
        return line

    def stop(self) -> list[str]:
        """SIGTERM; it must exit with status 0. Returns every line it printed."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(timeout=EXIT_SECONDS) == 0, "\n".join(self.lines.drain())
        finally:
            kill_process(self.proc)
        out = self.lines.drain()
        assert not any("Traceback" in s for s in out), "\n".join(out)
        return out


@pytest.fixture
def serves() -> Any:
    started: list[Serve] = []

    def start(*args: str, ready: int = 1) -> Serve:
        s = Serve(*args, ready=ready)
        started.append(s)
        return s

    yield start
    for s in started:
        kids = children(s.proc.pid)
        kill_process(s.proc)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def children(pid: int) -> list[int]:
    """The live (non-zombie) processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def client_context(certs: Optional[Certs] = None) -> ssl.SSLContext:
    if certs is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        ctx.load_verify_locations(str(certs.other_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def visit(port: int, ctx: ssl.SSLContext, session: Any = None) -> tuple[bytes, Any, bool]:
    """One echo over TLS: the server's certificate (DER), the session, whether it resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"ping")
            assert s.recv(100) == b"ping"
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return der, s.session, bool(s.session_reused)


def test_workers_serve_one_port_and_drain_on_sigterm(serves: Any, certs: Certs) -> None:
    srv = serves(
        "--workers", "2", "--cert", str(certs.server_cert), "--key", str(certs.server_key), ready=2
    )
    assert f"uvssl serve: workers (2) on 127.0.0.1 port {srv.port}" in srv.lines.lines
    kids = children(srv.proc.pid)
    assert len(kids) == 2
    ctx = client_context(certs)
    for _ in range(10):
        visit(srv.port, ctx)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as c:
            c.sendall(b"open")
            assert c.recv(100) == b"open"
            srv.proc.send_signal(signal.SIGTERM)
            assert c.recv(100) == b""  # close_notify: drained, not cut
    out = srv.stop()
    assert "uvssl serve: closed (worker exit codes [0, 0])" in out
    end = time.monotonic() + EXIT_SECONDS
    while time.monotonic() < end and any(os.path.exists(f"/proc/{p}") for p in kids):
        time.sleep(0.05)
    assert not [p for p in kids if os.path.exists(f"/proc/{p}")]


def test_sighup_reloads_the_certificate_in_every_worker(
    serves: Any, certs: Certs, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    srv = serves("--workers", "2", "--cert", str(cert), "--key", str(key), ready=2)
    ctx = client_context(certs)
    before = visit(srv.port, ctx)[0]
    shutil.copy(certs.untrusted_cert, cert)
    shutil.copy(certs.untrusted_key, key)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait("SIGHUP: certificate reloaded")
    srv.wait("SIGHUP: certificate reloaded")  # both workers
    seen = {visit(srv.port, ctx)[0] for _ in range(20)}
    assert seen != {before} and len(seen) == 1
    # a damaged file: each worker says so and keeps the certificate it has
    cert.write_text("not a certificate\n")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait("the old certificate stays")
    srv.wait("the old certificate stays")
    assert {visit(srv.port, ctx)[0] for _ in range(10)} == seen
    srv.stop()


def key_file(path: Path) -> str:
    path.write_bytes(os.urandom(80))
    return str(path)


def test_a_ticket_key_file_lets_two_servers_resume_each_others_sessions(
    serves: Any, tmp_path: Path
) -> None:
    old, new = key_file(tmp_path / "old.key"), key_file(tmp_path / "new.key")
    a = serves("--ticket-key-file", old)
    b = serves("--ticket-key-file", f"{new},{old}")  # issues under new, accepts old
    c = serves("--ticket-key-file", new, "--ticket-key-file", old)
    alone = serves()  # a key of its own
    ctx = client_context()
    _, session, reused = visit(a.port, ctx)
    assert not reused
    assert visit(b.port, ctx, session)[2]
    assert visit(c.port, ctx, session)[2]
    assert not visit(alone.port, ctx, session)[2]
    _, from_b, _ = visit(b.port, ctx)
    assert not visit(a.port, ctx, from_b)[2]  # a does not have "new"
    for s in (a, b, c, alone):
        s.stop()


def test_sighup_rereads_the_ticket_key_files(serves: Any, tmp_path: Path) -> None:
    path = tmp_path / "ticket.key"
    srv = serves("--ticket-key-file", key_file(path))
    ctx = client_context()
    _, session, _ = visit(srv.port, ctx)
    assert visit(srv.port, ctx, session)[2]
    key_file(path)  # a new key in the same file
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait("SIGHUP: 1 ticket key(s) reloaded")
    assert not visit(srv.port, ctx, session)[2]  # its key is gone
    _, fresh, _ = visit(srv.port, ctx)
    assert visit(srv.port, ctx, fresh)[2]
    srv.stop()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"k" * 48, "is 48 bytes; a key file holds exactly 80 bytes"),
        (b"k" * 81, "is too long; a key file holds exactly 80 bytes"),
        (None, "cannot read it"),
    ],
)
def test_a_bad_ticket_key_file_is_one_line(
    tmp_path: Path, content: Optional[bytes], message: str
) -> None:
    path = tmp_path / "bad.key"
    if content is not None:
        path.write_bytes(content)
    r = subprocess.run(
        [sys.executable, "-m", "uvssl", "serve", "--port", "0", "--ticket-key-file", str(path)],
        cwd=ROOT,
        capture_output=True,
        timeout=EXIT_SECONDS,
    )
    assert r.returncode != 0
    err = r.stderr.decode()
    assert err.strip().splitlines() == [f"uvssl serve: --ticket-key-file {path}: {message}"] or (
        message in err and "Traceback" not in err and err.count("\n") == 1
    ), err
    assert "kkkk" not in err


def test_bad_workers_count_is_refused() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "uvssl", "serve", "--workers", "-2"],
        cwd=ROOT,
        capture_output=True,
        timeout=EXIT_SECONDS,
    )
    assert r.returncode == 2
    assert "give 1 or more (0: one per CPU)" in r.stderr.decode()


def test_proxy_protocol_flag(serves: Any) -> None:
    srv = serves("--proxy-protocol")
    ctx = client_context()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"behind a proxy")
            assert s.recv(100) == b"behind a proxy"
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
        # no header: the server closes the connection before any TLS
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x")
                s.recv(100)
    srv.stop()
