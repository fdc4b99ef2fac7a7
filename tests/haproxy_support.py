"""A real HAProxy in front of uvssl, for the tests: configuration, start, readiness, stop.

Theory of operation. HAProxy cannot listen on port 0 and report the port it got, so a
frontend port is chosen the usual way: bind a socket to port 0 on loopback, note the port,
close it. Another process may take the port before HAProxy binds it; HAProxy then exits at
once saying so, and ``start_haproxy`` picks a new port and tries again (a few times). The
configuration is therefore a function of the frontend port (``make_config(port)``).

HAProxy runs in the foreground (``haproxy -db -f CONFIG``) as a child process, with stdout and
stderr merged into one pipe that a reader thread drains into ``HAProxy.lines``: the tests read
its log there (``log stdout`` in ``global`` sends the log to stdout; ``option
log-health-checks`` puts each health-check verdict in it), and a full pipe could never block
HAProxy. ``wait_for_log`` waits, bounded, for a line matching a pattern.

Ready means the frontend port is listening, checked by trying to bind it ourselves (a bind
fails while HAProxy listens there). A probe connection would not do: in TCP mode HAProxy
connects to the server for every connection it accepts, so the server under test would see
the probe as a client.

Stopping sends SIGTERM (HAProxy's immediate stop), waits a bounded time, then SIGKILL, and
checks that the process really exited and how. Every wait is bounded; nothing here waits on
a socket or a process without a limit.

The uvssl server behind HAProxy runs on its own event loop in a thread (``ServerThread``, on
``helpers.LoopHarness``), so that the test's thread is free to start HAProxy and to be the
client. A socket's attributes may only be read on its loop's thread, so the server records what
it sees (addresses, TLVs, TLS parameters, events) in its callbacks, under a lock the test takes
to read them. The README's configurations are read from README.md itself (``readme_block``,
by an HTML comment marker before the fenced block), so the tests run the text users copy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from helpers import LOCALHOST, SLOWDOWN, LoopHarness, port_is_free

import uvssl

HAPROXY = shutil.which("haproxy")
SKIP_REASON = "haproxy is not installed: bash tools/setup.sh installs it"
START_TIMEOUT = 10.0 * SLOWDOWN  # seconds for HAProxy to listen
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL, then again for the exit
START_ATTEMPTS = 5  # fresh frontend ports tried when the chosen one was taken meanwhile


def require_haproxy() -> str:
    """The haproxy binary's path; skips the test when it is not installed, unless the
    environment says it must be (CI sets ``UVSSL_REQUIRE_HAPROXY=1``: there a missing HAProxy
    is a failure, never a silent skip)."""
    if HAPROXY is None:
        if os.environ.get("UVSSL_REQUIRE_HAPROXY") == "1":
            pytest.fail(SKIP_REASON + " (UVSSL_REQUIRE_HAPROXY=1 requires it)", pytrace=False)
        pytest.skip(SKIP_REASON)
    return HAPROXY


def free_port(host: str = LOCALHOST) -> int:
    """A port that was free on ``host`` a moment ago (bound to port 0, then closed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def substitute(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; each key must occur exactly once (so a
    config edited elsewhere fails loudly here instead of running with a stale address)."""
    for old, new in replacements.items():
        n = text.count(old)
        if n != 1:
            raise AssertionError(f"expected {old!r} exactly once in the config, found it {n} times")
        text = text.replace(old, new)
    return text


def readme_block(readme: Path, kind: str, name: str) -> str:
    """The text of README.md's fenced block that follows the marker ``<!-- KIND: NAME -->``,
    exactly as written there."""
    text = readme.read_text(encoding="utf-8")
    marker = f"<!-- {kind}: {name} -->"
    at = text.find(marker)
    if at < 0:
        raise AssertionError(f"README.md has no {marker!r} marker before a fenced block")
    m = re.compile(r"\s*```[a-z]*\n(.*?)^```$", re.M | re.S).match(text, at + len(marker))
    if m is None:
        raise AssertionError(f"README.md's {marker!r} is not followed by a fenced block")
    return m.group(1)


def readme_config(readme: Path, name: str) -> str:
    """The HAProxy configuration README.md gives after ``<!-- haproxy-config: NAME -->``."""
    return readme_block(readme, "haproxy-config", name)


class HAProxy:
    """A running HAProxy child process and what it has logged."""

    def __init__(self, proc: subprocess.Popen[bytes], config: str, port: int) -> None:
        self.proc = proc
        self.config = config
        self.port = port  # the frontend port
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="haproxy-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def log(self) -> str:
        """Everything HAProxy has written so far, one line per entry."""
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first log line matching the regular expression ``pattern``, waiting up to
        ``timeout`` seconds for it; fails the test (showing the log) if none comes."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout * SLOWDOWN
        with self._cond:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m is not None:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.2))
        pytest.fail(f"HAProxy never logged {pattern!r}; its log:\n{self.log()}", pytrace=False)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still running after a bound; returns the exit status
        (``Popen.returncode``) and fails the test if the process outlives both."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"HAProxy (pid {self.proc.pid}) survived SIGKILL", pytrace=False)
        self._reader.join(STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _listening(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Wait (bounded) until ``port`` on loopback is taken while ``proc`` runs; False if the
    process exited first or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if not port_is_free(port):
            return proc.poll() is None
        time.sleep(0.02)
    return False


@contextmanager
def start_haproxy(make_config: Callable[[int], str], workdir: Path) -> Iterator[HAProxy]:
    """Run HAProxy with the configuration ``make_config(frontend_port)`` (written to
    ``workdir/haproxy.cfg``) until the block ends, then stop it and check it exited.

    The configuration must bind its frontend to 127.0.0.1 on the port it is given. If HAProxy
    exits before listening because the port was taken meanwhile, another port is tried; any
    other early exit fails the test with HAProxy's own words.
    """
    binary = require_haproxy()
    cfg_path = workdir / "haproxy.cfg"
    # HAProxy is not under test: keep tools/asan.sh's preloaded sanitizer runtime out of it
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    last_error = ""
    for _attempt in range(START_ATTEMPTS):
        port = free_port()
        config = make_config(port)
        cfg_path.write_text(config, encoding="utf-8")
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
            env=env,
        )
        if check.returncode != 0:
            pytest.fail(
                f"HAProxy rejects the configuration {cfg_path}:\n"
                f"{check.stdout.decode('utf-8', 'replace')}\n--- config ---\n{config}",
                pytrace=False,
            )
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(cfg_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        hap = HAProxy(proc, config, port)
        ready = _listening(proc, port, START_TIMEOUT)
        if not ready:
            status = hap.stop()
            last_error = f"exit status {status}; its log:\n{hap.log()}"
            if re.search(r"cannot bind|Address already in use", hap.log()):
                continue  # the port was taken between our check and HAProxy's bind
            pytest.fail(
                f"HAProxy did not start listening on port {port}: {last_error}", pytrace=False
            )
        try:
            yield hap
        finally:
            status = hap.stop()
            # SIGTERM: HAProxy stops at once and dies of the signal (or exits 0 when it had
            # already stopped); anything else means it crashed or was killed.
            if status not in (0, -signal.SIGTERM):
                pytest.fail(
                    f"HAProxy ended with status {status} instead of stopping on SIGTERM; "
                    f"its log:\n{hap.log()}",
                    pytrace=False,
                )
        return
    pytest.fail(
        f"HAProxy could not bind a free loopback port in {START_ATTEMPTS} attempts: {last_error}",
        pytrace=False,
    )


def combined_pem(cert_chain: Path, key: Path, out: Path) -> Path:
    """Write the certificate chain and its key into one PEM file (HAProxy's ``crt`` takes
    both from one file) and return its path."""
    out.write_bytes(cert_chain.read_bytes() + key.read_bytes())
    os.chmod(out, 0o600)
    return out


# -- a uvssl server on a loop of its own ------------------------------------------------------


@dataclass
class Seen:
    """What a uvssl server saw of one connection, recorded inside the loop's thread (a
    socket's attributes may only be read there)."""

    remote_address: Any = None
    proxy_address: Any = None
    proxy_tlvs: Any = None
    tls: Optional[tuple[Any, Any]] = None  # (version, cipher) on a TLS server
    data: bytearray = field(default_factory=bytearray)


def _attribute(sock: Any, name: str) -> Any:
    """``sock.NAME``, or the ``SocketError`` reading it raised (kept as the value, for the
    test to judge: a callback that raised would end the server's loop)."""
    try:
        return getattr(sock, name, None)
    except uvssl.SocketError as exc:
        return exc


def snapshot(sock: Any) -> Seen:
    """The addresses, TLVs and TLS parameters ``sock`` reports right now."""
    seen = Seen(
        remote_address=_attribute(sock, "remote_address"),
        proxy_address=_attribute(sock, "proxy_address"),
        proxy_tlvs=_attribute(sock, "proxy_tlvs"),
    )
    if isinstance(sock, uvssl.SslSocket):
        seen.tls = (sock.version, sock.cipher)
    return seen


class ServerThread:
    """A uvssl echo server on its own event loop in a thread, for the length of a ``with``.

    ``make(read_cb, event_cb, connect_cb)`` runs inside the loop and returns the server (made
    with those callbacks and whatever keywords the test wants). Each connection the server
    accepts is echoed; ``seen`` gets a ``Seen`` per connection when it is accepted (plain) or
    handshaken (TLS), ``events`` every exception ``event_cb`` gets (EOF closes the socket and
    is recorded too) and ``event_addresses`` the ``remote_address`` of each one's socket.
    Leaving the block ends the loop and re-raises a failure from it.
    """

    def __init__(self, make: Callable[..., Any], deadline: float = 60.0) -> None:
        self._make = make
        self._harness = LoopHarness(deadline * SLOWDOWN)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.lock = threading.Lock()  # held while the loop records; hold it to read
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="uvssl-server", daemon=True)
        self._by_socket: dict[int, Seen] = {}
        self.port = 0
        self.seen: list[Seen] = []
        self.events: list[BaseException] = []
        self.event_addresses: list[Any] = []  # the socket's remote_address for each event

    def _run(self) -> None:
        def connect_cb(sock: Any) -> None:
            seen = snapshot(sock)
            with self.lock:
                self._by_socket[id(sock)] = seen
                self.seen.append(seen)

        def read_cb(sock: Any, data: bytes) -> None:
            with self.lock:
                seen = self._by_socket.get(id(sock))
                if seen is None:  # accepted before connect_cb existed for it: record it now
                    seen = self._by_socket[id(sock)] = snapshot(sock)
                    self.seen.append(seen)
                seen.data += data
            sock.write(data)

        def event_cb(ev: BaseException) -> None:
            sock = getattr(ev, "socket", None)
            address = None if sock is None else _attribute(sock, "remote_address")
            with self.lock:
                self.events.append(ev)
                self.event_addresses.append(address)
            if sock is not None and not sock.closed:
                sock.close()

        def start() -> None:
            server = self._make(read_cb, event_cb, connect_cb)
            self.port = server.port
            self._ready.set()

        try:
            self._harness.run(start, until=self._stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self._error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None or not self.port:
            self.__exit__(None, None, None)
            raise AssertionError(f"the uvssl server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT * 2)
        if self._thread.is_alive():
            raise AssertionError("the uvssl server's loop did not end")
        if self._error is not None:
            raise self._error

    def wait(self, predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        """Wait (bounded) until ``predicate()`` is true; fail saying ``what`` did not happen."""
        deadline = time.monotonic() + timeout * SLOWDOWN
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return
            if self._error is not None or not self._thread.is_alive():
                break
            time.sleep(0.02)
        with self.lock:
            state = f"seen={self.seen!r} events={self.events!r}"
        pytest.fail(f"{what} did not happen within {timeout} s ({state})", pytrace=False)
