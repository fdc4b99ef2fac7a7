"""TLS helpers for the test suite: certificates, peer threads, `openssl` subprocesses and
uvssl TLS servers/clients run in one loop (through ``helpers.LoopHarness``, the one loop
harness: see tests/helpers.py for how its deadline works)."""

from __future__ import annotations

import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from helpers import LOCALHOST as LOCALHOST
from helpers import LoopHarness as LoopHarness

import uvssl

PEER_TIMEOUT = 10.0  # socket timeout for stdlib peers (seconds)


# -- certificates ------------------------------------------------------------------------------


@dataclass
class Certs:
    dir: Path
    ca: Path  # the CA that signed server/client
    server_cert: Path  # chain file: leaf (+ intermediates, none with trustme's default)
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA
    untrusted_cert: Path  # server cert for localhost/127.0.0.1 signed by other_ca
    untrusted_key: Path
    server_key_encrypted: Path  # server_key encrypted with PASSWORD
    password: bytes = b"correct horse"


def make_certs(dirpath: Path) -> Certs:
    import trustme
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client.example")
    other = trustme.CA()
    untrusted = other.issue_cert("localhost", "127.0.0.1")

    def w(name: str, blob: Any) -> Path:
        p = dirpath / name
        blob.write_to_path(str(p))
        return p

    def w_chain(name: str, leaf: Any) -> Path:
        p = dirpath / name
        p.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        return p

    certs = Certs(
        dir=dirpath,
        ca=w("ca.pem", ca.cert_pem),
        server_cert=w_chain("server.pem", server),
        server_key=w("server.key", server.private_key_pem),
        client_cert=w_chain("client.pem", client),
        client_key=w("client.key", client.private_key_pem),
        other_ca=w("other-ca.pem", other.cert_pem),
        untrusted_cert=w_chain("untrusted.pem", untrusted),
        untrusted_key=w("untrusted.key", untrusted.private_key_pem),
        server_key_encrypted=dirpath / "server-enc.key",
    )
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    certs.server_key_encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(certs.password),
        )
    )
    return certs


# -- peer threads -----------------------------------------------------------------------------


class PeerThread(threading.Thread):
    """A thread running a blocking peer; its exception (if any) is re-raised by ``result``."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "tls-peer") -> None:
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self._args = args
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc
        finally:
            self.finished.set()

    def result(self, timeout: float = 30.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"peer thread {self.name} did not finish"
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def done(self) -> bool:
        return self.finished.is_set()


def stdlib_server_context(certs: Certs, *, untrusted: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if untrusted:
        ctx.load_cert_chain(str(certs.untrusted_cert), str(certs.untrusted_key))
    else:
        ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    return ctx


def stdlib_client_context(certs: Certs, *, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return ctx


def listening_socket() -> socket.socket:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((LOCALHOST, 0))
    ls.listen(8)
    ls.settimeout(PEER_TIMEOUT)
    return ls


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def recv_until(s: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    out = bytearray()
    while marker not in out and len(out) < limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def free_port() -> int:
    s = socket.socket()
    s.bind((LOCALHOST, 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


# -- openssl subprocesses ---------------------------------------------------------------------


def openssl_binary() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command is not installed")
    return path


class LineReader:
    """Reads a subprocess's (merged) output lines in a thread; ``wait_for`` a predicate."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._q: queue.Queue[Optional[str]] = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True, name="openssl-reader")
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self._q.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self._q.put(None)

    def wait_for(self, pred: Callable[[str], bool], timeout: float = 10.0) -> Optional[str]:
        """Return the first new line matching ``pred`` (None on timeout or EOF)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self._q.put(None)  # keep reporting EOF
                return None
            self.lines.append(line)
            if pred(line):
                return line

    def drain(self, timeout: float = 5.0) -> list[str]:
        """Collect the remaining lines until EOF (or timeout)."""
        self.wait_for(lambda _line: False, timeout)
        return self.lines

    def join(self, timeout: float = 5.0) -> None:
        self._t.join(timeout)


def kill_process(proc: Optional[subprocess.Popen[bytes]]) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


def start_s_server(
    certs: Certs, extra: list[str], attempts: int = 5
) -> tuple[subprocess.Popen[bytes], LineReader, int]:
    """Start ``openssl s_server`` on a free port (retrying on a port clash); wait for ACCEPT."""
    exe = openssl_binary()
    last = ""
    for _ in range(attempts):
        port = free_port()
        proc = subprocess.Popen(
            [
                exe,
                "s_server",
                "-accept",
                str(port),
                "-cert",
                str(certs.server_cert),
                "-key",
                str(certs.server_key),
                "-naccept",
                "1",
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        reader = LineReader(proc)
        line = reader.wait_for(lambda s: s.strip() == "ACCEPT", timeout=10)
        if line is not None:
            return proc, reader, port
        last = "\n".join(reader.lines)
        kill_process(proc)
        reader.join()
    pytest.fail(f"openssl s_server did not start: {last}")
    raise AssertionError  # unreachable


# -- a uvssl TLS echo server and a sequence of uvssl clients in one loop ----------------------


def describe(sock: Any) -> dict[str, Any]:
    """The TLS facts of a connected ``SslSocket``."""
    return {
        "version": sock.version,
        "cipher": sock.cipher,
        "alpn": sock.alpn_protocol,
        "peer_certificate": sock.peer_certificate,
        "session_reused": sock.session_reused,
        "server_hostname": sock.server_hostname,
    }


class PairResult:
    def __init__(self) -> None:
        self.server_info: list[dict[str, Any]] = []  # one per handshake completed on the server
        self.server_events: list[BaseException] = []
        self.clients: list[dict[str, Any]] = []  # one per client: got, events, connected, ...
        self.server: Any = None

    @property
    def client_events(self) -> list[BaseException]:
        return [ev for c in self.clients for ev in c["events"]]


def close_quietly(ev: BaseException) -> None:
    """Close the socket an event happened on, if it is still open."""
    s = getattr(ev, "socket", None)
    if s is not None and not s.closed:
        s.close()


def serve_to_peer(
    peer_fn: Callable[[int], Any],
    read_cb: Optional[Callable[[Any, bytes], Any]] = None,
    event_cb: Optional[Callable[[BaseException], Any]] = None,
    *,
    certs: Optional[Certs] = None,
    until: Optional[Callable[[list[BaseException]], Any]] = None,
    deadline: float = 15.0,
    **server_kw: Any,
) -> tuple[PeerThread, list[BaseException]]:
    """Run a uvssl server against one blocking peer: ``peer_fn(port)`` in a PeerThread.

    With ``certs`` the server is a TLS server using the test certificate (unless ``ssl_ctx`` or
    ``certificate`` is among ``server_kw``); without, a plain TCP server. It echoes unless
    ``read_cb`` is given. Every server event is recorded and then passed to ``event_cb``
    (default: close the event's socket). The loop ends once the peer finished and, when given,
    ``until(events)`` is true (or the peer failed). Returns the peer thread (call ``result()``)
    and the server's events.
    """
    h = LoopHarness(deadline)
    events: list[BaseException] = []
    state: dict[str, PeerThread] = {}
    if certs is not None and "ssl_ctx" not in server_kw and "certificate" not in server_kw:
        server_kw.update(certificate=str(certs.server_cert), key=str(certs.server_key))
    on_event_cb = event_cb if event_cb is not None else close_quietly

    def on_event(ev: BaseException) -> None:
        events.append(ev)
        on_event_cb(ev)

    def start() -> None:
        echo = read_cb if read_cb is not None else (lambda sock, data: sock.write(data))
        listen = uvssl.tcp_ssl_server if certs is not None else uvssl.tcp_server
        srv = listen(LOCALHOST, 0, echo, on_event, **server_kw)
        state["peer"] = PeerThread(peer_fn, srv.port)
        state["peer"].start()

    def finished() -> bool:
        peer = state["peer"]
        return peer.done and (peer.error is not None or until is None or bool(until(events)))

    h.run(start, until=finished)
    return state["peer"], events


def run_pair(
    certs: Certs,
    *,
    server_kw: Optional[dict[str, Any]] = None,
    clients: Any = ({},),
    message: bytes = b"hello over TLS\n",
    server_events: Optional[int] = None,
    deadline: float = 15.0,
) -> PairResult:
    """Run a uvssl TLS echo server and ``clients`` (kwargs for ``tcp_ssl_connect``, or callables
    taking the PairResult so far and returning them) one after another in one loop.

    Each client writes ``message`` from connect_cb, reads the echo, keeps its ``session`` and
    closes. Client kwargs default to ``ca_file=CA`` (pass ``ca_file=None`` for the system store)
    unless ``ssl_ctx`` is given. The loop ends when every client finished (echo or error) and
    the server saw ``server_events`` (default: one per client) terminal events.
    """
    h = LoopHarness(deadline)
    r = PairResult()
    skw = dict(server_kw or {})
    if "ssl_ctx" not in skw and "certificate" not in skw:
        skw.update(certificate=str(certs.server_cert), key=str(certs.server_key))
    want_server_events = len(clients) if server_events is None else server_events

    def s_connect(sock: Any) -> None:
        r.server_info.append(describe(sock))

    def s_read(sock: Any, data: bytes) -> None:
        sock.write(data)

    def s_event(ev: BaseException) -> None:
        r.server_events.append(ev)
        close_quietly(ev)

    def next_client() -> None:
        i = len(r.clients)
        if i >= len(clients):
            return
        spec = clients[i]
        kw = dict(spec(r) if callable(spec) else spec)
        host = kw.pop("host", LOCALHOST)
        if "ssl_ctx" not in kw:
            kw.setdefault("ca_file", str(certs.ca))
        info: dict[str, Any] = {
            "got": bytearray(),
            "events": [],
            "connected": False,
            "finished": False,
        }
        r.clients.append(info)

        def finish() -> None:
            if not info["finished"]:
                info["finished"] = True
                next_client()

        def c_connect(sock: Any) -> None:
            info["connected"] = True
            info.update(describe(sock))
            sock.write(message)

        def c_read(sock: Any, data: bytes) -> None:
            info["got"] += data
            if len(info["got"]) >= len(message) and not sock.closed:
                info["session"] = sock.session
                info["session_reused"] = sock.session_reused
                sock.close()
                finish()

        def c_event(ev: BaseException) -> None:
            info["events"].append(ev)
            s = getattr(ev, "socket", None)
            if s is not None and not s.closed:
                s.close()
            finish()

        info["socket"] = uvssl.tcp_ssl_connect(
            host, r.server.port, c_read, c_event, connect_cb=c_connect, **kw
        )

    def start() -> None:
        r.server = uvssl.tcp_ssl_server(LOCALHOST, 0, s_read, s_event, connect_cb=s_connect, **skw)
        next_client()

    def finished() -> bool:
        return (
            len(r.clients) == len(clients)
            and all(c["finished"] for c in r.clients)
            and len(r.server_events) >= want_server_events
        )

    h.run(start, until=finished)
    return r


# -- shared by the tests/test_tls_*.py modules ---------------------------------------------


MESSAGE = b"hello over TLS\n"


def server_der(certs) -> bytes:
    pem = certs.server_cert.read_text()
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return ssl.PEM_cert_to_DER_cert(first)


def assert_echoed(r, n: int = 1, message: bytes = MESSAGE) -> None:
    assert len(r.clients) == n
    for i, c in enumerate(r.clients):
        assert not c["events"], f"client {i} got {c['events']!r}"
        assert bytes(c["got"]) == message, f"client {i}"
    bad = [ev for ev in r.server_events if not isinstance(ev, uvssl.SslClosed)]
    assert not bad, f"server got {bad!r}"


def required_client_cert_server(certs):
    return uvssl.Context.server(
        certificate=str(certs.server_cert),
        key=str(certs.server_key),
        verify="required",
        ca_file=str(certs.ca),
    )


def check_verification_failure(ev):
    assert isinstance(ev, uvssl.SslVerificationFailure), repr(ev)
    assert isinstance(ev.verify_result, int) and ev.verify_result != 0
    assert isinstance(ev.verify_result_string, str) and ev.verify_result_string
    assert ev.verify_result_string in str(ev)
    assert ev.what == "handshake"


def stdlib_client_server_test(certs, client_fn, read_cb=None, server_ctx=None):
    """A uvssl server (echo unless ``read_cb``) and one stdlib client thread.

    Returns (client result, server events)."""
    kw = dict(ssl_ctx=server_ctx) if server_ctx is not None else {}
    peer, events = serve_to_peer(client_fn, read_cb, certs=certs, until=bool, **kw)
    return peer.result(), events
