"""uvssl behind a real HAProxy: TCP forwarding, the PROXY protocol (v1 and v2, with TLVs),
health checks, and the configuration the README gives for deploying, run as written."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from haproxy_support import (
    ServerThread,
    combined_pem,
    readme_block,
    readme_config,
    require_haproxy,
    start_haproxy,
    substitute,
)
from helpers import SLOWDOWN, has_ipv6_loopback
from tls_support import (
    PEER_TIMEOUT,
    Certs,
    LineReader,
    kill_process,
    recv_exactly,
    stdlib_client_context,
)

import uvssl

pytestmark = pytest.mark.timeout(120)

MESSAGE = b"hello through haproxy\n"


def tcp_config(backend_port: int, server_options: str = "") -> Callable[[int], str]:
    """A TCP-mode HAProxy configuration forwarding 127.0.0.1:PORT to the uvssl server."""

    def make(port: int) -> str:
        return f"""\
global
    nbthread 1
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option log-health-checks
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    server s1 127.0.0.1:{backend_port} {server_options}
"""

    return make


def plain_roundtrip(port: int, message: bytes = MESSAGE, source: Any = None) -> tuple[Any, bytes]:
    """Send ``message`` to 127.0.0.1:``port`` from ``source`` and read the echo; returns
    (the client's own address, what came back)."""
    with socket.create_connection(("127.0.0.1", port), PEER_TIMEOUT, source) as s:
        s.sendall(message)
        return s.getsockname(), recv_exactly(s, len(message))


def tls_roundtrip(
    port: int,
    ctx: ssl.SSLContext,
    server_hostname: str = "localhost",
    message: bytes = MESSAGE,
    source: Any = None,
) -> tuple[Any, bytes]:
    """As ``plain_roundtrip``, over TLS (verifying the server as ``server_hostname``)."""
    with socket.create_connection(("127.0.0.1", port), PEER_TIMEOUT, source) as raw:
        address = raw.getsockname()
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            s.sendall(message)
            return address, recv_exactly(s, len(message))


def plain_server(**kw: Any) -> Callable[..., Any]:
    def make(read_cb: Any, event_cb: Any, connect_cb: Any) -> Any:
        return uvssl.tcp_server("127.0.0.1", 0, read_cb, event_cb, connect_cb=connect_cb, **kw)

    return make


def tls_server(certs: Certs, **kw: Any) -> Callable[..., Any]:
    def make(read_cb: Any, event_cb: Any, connect_cb: Any) -> Any:
        return uvssl.tcp_ssl_server(
            "127.0.0.1",
            0,
            read_cb,
            event_cb,
            connect_cb=connect_cb,
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
            **kw,
        )

    return make


# -- the fixture itself: HAProxy forwarding to uvssl, no PROXY header -------------------------


def test_plain_echo_through_haproxy(tmp_path: Path) -> None:
    require_haproxy()
    with ServerThread(plain_server()) as server:
        with start_haproxy(tcp_config(server.port), tmp_path) as hap:
            for i in range(3):
                message = MESSAGE + str(i).encode()
                _, reply = plain_roundtrip(hap.port, message)
                assert reply == message
            server.wait(lambda: len(server.seen) == 3, "three connections reaching uvssl")
            # without a PROXY header uvssl sees HAProxy's connection, not the client's
            for seen in server.seen:
                assert seen.remote_address[0] == "127.0.0.1"
                assert seen.proxy_address is None
            hap.wait_for_log(rf"Connect from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:{hap.port}\b")


def test_tls_passes_through_haproxy(tmp_path: Path, certs: Certs) -> None:
    require_haproxy()
    ctx = stdlib_client_context(certs)
    with ServerThread(tls_server(certs)) as server:
        with start_haproxy(tcp_config(server.port), tmp_path) as hap:
            _, reply = tls_roundtrip(hap.port, ctx)
            assert reply == MESSAGE
            server.wait(lambda: len(server.seen) == 1, "the TLS connection reaching uvssl")
            assert server.seen[0].tls is not None and server.seen[0].tls[0].startswith("TLS")


def test_haproxy_stops_and_is_reaped(tmp_path: Path) -> None:
    require_haproxy()
    with ServerThread(plain_server()) as server:
        with start_haproxy(tcp_config(server.port), tmp_path) as hap:
            pid = hap.proc.pid
            _, reply = plain_roundtrip(hap.port)
            assert reply == MESSAGE
        assert hap.proc.returncode is not None
        with pytest.raises(ConnectionRefusedError):
            plain_roundtrip(hap.port)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_bad_config_fails_with_haproxys_words(tmp_path: Path) -> None:
    require_haproxy()

    def broken(port: int) -> str:
        return tcp_config(1)(port).replace("mode tcp", "mode nonsense")

    with pytest.raises(pytest.fail.Exception, match="rejects the configuration"):
        with start_haproxy(broken, tmp_path):
            pass


# -- the PROXY protocol ------------------------------------------------------------------------

HAS_PROXY_PROTOCOL = "proxy_protocol" in inspect.signature(uvssl.tcp_server).parameters
needs_proxy_protocol = pytest.mark.skipif(
    not HAS_PROXY_PROTOCOL, reason="this uvssl has no proxy_protocol keyword on tcp_server yet"
)
CLIENT_HOST = "127.0.0.2"  # the clients' source address: not the address HAProxy connects from
HAPROXY_SOURCE = "127.0.0.3"  # HAProxy's source address towards uvssl (``source`` below)
README = Path(__file__).resolve().parent.parent / "README.md"


def make_server(kind: str, certs: Certs, **kw: Any) -> Callable[..., Any]:
    return plain_server(**kw) if kind == "plain" else tls_server(certs, **kw)


def roundtrip(kind: str, port: int, certs: Certs, source: Any = (CLIENT_HOST, 0)) -> Any:
    """One echo through HAProxy from ``source``, plain or TLS; returns the client's address."""
    if kind == "plain":
        address, reply = plain_roundtrip(port, source=source)
    else:
        address, reply = tls_roundtrip(port, stdlib_client_context(certs), source=source)
    assert reply == MESSAGE
    return address


def seen_from(server: ServerThread, address: Any) -> Any:
    """What the server saw of the connection whose client had ``address`` (waiting for it)."""
    want = tuple(address)
    server.wait(
        lambda: any(s.remote_address == want and s.data for s in server.seen),
        f"a connection from {want} reaching uvssl",
    )
    return next(s for s in server.seen if s.remote_address == want)


def errors(server: ServerThread) -> list[BaseException]:
    """The server's events other than the end of a connection: EOF, or on TLS the close
    without close_notify of the stdlib clients here (they close the socket without
    ``unwrap``) and of HAProxy after them."""
    return [ev for ev in server.events if not isinstance(ev, (uvssl.TcpEof, uvssl.SslClosed))]


@needs_proxy_protocol
@pytest.mark.parametrize("kind", ["plain", "tls"])
@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_the_clients_address_arrives(tmp_path: Path, certs: Certs, kind: str, send: str) -> None:
    require_haproxy()
    with ServerThread(make_server(kind, certs, proxy_protocol=True)) as server:
        config = tcp_config(server.port, f"{send} source {HAPROXY_SOURCE}")
        with start_haproxy(config, tmp_path) as hap:
            clients = [roundtrip(kind, hap.port, certs) for _ in range(3)]
            for client in clients:
                assert client[0] == CLIENT_HOST
                seen = seen_from(server, client)
                assert seen.data == MESSAGE
                # the header's source: the client's own (host, port), not HAProxy's
                assert tuple(seen.remote_address) == tuple(client)
                # the connection's real peer: HAProxy, from the source address it was given
                assert seen.proxy_address[0] == HAPROXY_SOURCE
                assert seen.proxy_address[1] != client[1]
                if send == "send-proxy":
                    assert not seen.proxy_tlvs  # version 1 has no TLVs
                if kind == "tls":
                    assert seen.tls is not None and seen.tls[0].startswith("TLS")
        assert server.seen and not errors(server)


@needs_proxy_protocol
def test_without_a_header_the_connection_is_refused(tmp_path: Path) -> None:
    require_haproxy()
    with ServerThread(plain_server(proxy_protocol=True)) as server:
        # a server line without send-proxy: neither the clients nor the checks send a header
        with start_haproxy(tcp_config(server.port, "check inter 200ms"), tmp_path) as hap:
            # HAProxy's TCP check only connects, so it passes all the same: only uvssl's
            # errors for the clients' connections show that the header is missing
            hap.wait_for_log(r"Health check for server be/s1 succeeded.*\bUP\b")
            with socket.create_connection(("127.0.0.1", hap.port), PEER_TIMEOUT) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert s.recv(100) == b""  # closed without a byte of reply
            server.wait(
                lambda: any(getattr(ev, "reason", "") == "signature" for ev in server.events),
                "a ProxyProtocolError for the client's connection",
            )
        assert not any(s.data for s in server.seen)
        assert all(isinstance(ev, uvssl.ProxyProtocolError) for ev in server.events)


def tls_backend_options(certs: Certs) -> str:
    """A ``server`` line's words for re-encrypting to a uvssl TLS server (verified)."""
    return f"ssl verify required ca-file {certs.ca} sni str(localhost) verifyhost localhost"


@needs_proxy_protocol
@pytest.mark.parametrize("backend", ["plain", "tls"])
def test_v2_tlvs_from_a_haproxy_that_terminates_tls(
    tmp_path: Path, certs: Certs, backend: str
) -> None:
    require_haproxy()
    pem = combined_pem(certs.server_cert, certs.server_key, tmp_path / "site.pem")
    options = "send-proxy-v2 proxy-v2-options ssl,ssl-cipher,authority,unique-id"
    if backend == "tls":
        options += " " + tls_backend_options(certs)

    def make(port: int) -> str:
        return substitute(
            tcp_config(server.port, options)(port),
            {
                f"bind 127.0.0.1:{port}": f"bind 127.0.0.1:{port} ssl crt {pem}",
                "    default_backend be": "    unique-id-format uid-%{+X}ci:%{+X}cp\n"
                "    default_backend be",
            },
        )

    with ServerThread(make_server(backend, certs, proxy_protocol=True)) as server:
        with start_haproxy(make, tmp_path) as hap:
            ctx = stdlib_client_context(certs)
            with socket.create_connection(
                ("127.0.0.1", hap.port), PEER_TIMEOUT, (CLIENT_HOST, 0)
            ) as raw:
                client = raw.getsockname()
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(MESSAGE)
                    assert recv_exactly(s, len(MESSAGE)) == MESSAGE
                    version, cipher = s.version(), (s.cipher() or ("",))[0]
            seen = seen_from(server, client)
    tlvs = seen.proxy_tlvs
    assert tlvs["authority"] == "localhost"  # the SNI the client sent
    assert tlvs["unique_id"] == f"uid-{0x7F000002:08X}:{client[1]:04X}".encode()
    assert tlvs["ssl"]["ssl"] is True  # the client spoke TLS to HAProxy
    assert tlvs["ssl"]["version"] == version
    assert tlvs["ssl"]["cipher"] == cipher
    if backend == "tls":  # HAProxy's own TLS connection to uvssl, verified by HAProxy
        assert seen.tls is not None and seen.tls[0].startswith("TLS")


@needs_proxy_protocol
@pytest.mark.parametrize("kind", ["plain", "tls"])
@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_health_checks_send_a_header_and_the_server_stays_up(
    tmp_path: Path, certs: Certs, kind: str, send: str
) -> None:
    require_haproxy()
    options = f"check {send} check-send-proxy inter 200ms source {HAPROXY_SOURCE}"
    with ServerThread(make_server(kind, certs, proxy_protocol=True)) as server:
        with start_haproxy(tcp_config(server.port, options), tmp_path) as hap:
            hap.wait_for_log(r"Health check for server be/s1 succeeded.*\bUP\b")

            # no client has connected yet: every connection so far is a health check, which
            # connects from HAProxy's source address, sends its header (v1: the check's own
            # addresses; v2: LOCAL, meaning the connection's own) and resets
            server.wait(
                lambda: len(server.seen) + len(server.events) >= 6,
                "three health checks reaching uvssl",
            )
            with server.lock:
                addresses = [s.remote_address for s in server.seen] + server.event_addresses
            # (a check that is gone before its socket reaches Python may have no address left)
            known = [a for a in addresses if isinstance(a, tuple)]
            assert all(a[0] == HAPROXY_SOURCE for a in known), addresses
            # every check's header was accepted (none is a ProxyProtocolError); each check
            # ends as any connection the peer drops does
            dropped = (uvssl.TcpEof, uvssl.TcpError, uvssl.SslFailure)
            assert all(isinstance(e, dropped) for e in server.events), server.events
            assert not [e for e in server.events if isinstance(e, uvssl.ProxyProtocolError)]
            assert "DOWN" not in hap.log()
            client = roundtrip(kind, hap.port, certs)  # and the clients are still served
            assert seen_from(server, client).data == MESSAGE


# -- the README's configurations, run as written ----------------------------------------------


def readme_passthrough(backend_port: int) -> Callable[[int], str]:
    """The README's configuration for TLS at uvssl, only its ports changed."""
    text = readme_config(README, "passthrough")
    return lambda port: substitute(
        text, {"bind :443": f"bind 127.0.0.1:{port}", "127.0.0.1:8443": f"127.0.0.1:{backend_port}"}
    )


@needs_proxy_protocol
def test_the_readmes_config_for_tls_at_uvssl(tmp_path: Path, certs: Certs) -> None:
    require_haproxy()
    with ServerThread(tls_server(certs, proxy_protocol=True)) as server:
        with start_haproxy(readme_passthrough(server.port), tmp_path) as hap:
            client = roundtrip("tls", hap.port, certs)
            seen = seen_from(server, client)
            assert seen.remote_address == client and seen.data == MESSAGE
            assert seen.proxy_address[0] == "127.0.0.1"
            assert seen.tls is not None and seen.tls[0].startswith("TLS")
            # HAProxy logged the same client, and its health check found the server up
            hap.wait_for_log(rf"^{client[0]}:{client[1]} \[.* tls uvssl/app ")
            hap.wait_for_log(r"Health check for server uvssl/app succeeded")
            assert not [e for e in server.events if isinstance(e, uvssl.ProxyProtocolError)]


@needs_proxy_protocol
def test_the_readmes_config_for_tls_at_haproxy(tmp_path: Path, certs: Certs) -> None:
    require_haproxy()
    pem = combined_pem(certs.server_cert, certs.server_key, tmp_path / "site.pem")
    passthrough = readme_config(README, "passthrough")
    head = passthrough[: passthrough.index("\nfrontend ") + 1]  # global and defaults
    text = head + readme_config(README, "terminating")
    with ServerThread(plain_server(proxy_protocol=True)) as server:

        def make(port: int) -> str:
            return substitute(
                text,
                {
                    "bind :443": f"bind 127.0.0.1:{port}",
                    "/etc/haproxy/site.pem": str(pem),
                    "127.0.0.1:8080": f"127.0.0.1:{server.port}",
                },
            )

        with start_haproxy(make, tmp_path) as hap:
            with socket.create_connection(
                ("127.0.0.1", hap.port), PEER_TIMEOUT, (CLIENT_HOST, 0)
            ) as raw:
                client = raw.getsockname()
                with stdlib_client_context(certs).wrap_socket(
                    raw, server_hostname="localhost"
                ) as s:
                    s.sendall(MESSAGE)
                    assert recv_exactly(s, len(MESSAGE)) == MESSAGE
                    version, cipher = s.version(), (s.cipher() or ("",))[0]
            seen = seen_from(server, client)
            assert seen.tls is None  # uvssl got plain TCP: HAProxy decrypted it
            tlvs = seen.proxy_tlvs
            assert tlvs["authority"] == "localhost"
            assert tlvs["ssl"]["version"] == version and tlvs["ssl"]["cipher"] == cipher
            # unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid: hexadecimal fields
            unique = rf"7F000002:{client[1]:04X}_7F000001:{hap.port:04X}_[0-9A-F]+_[0-9A-F]+"
            pid = rf"0*{hap.proc.pid:X}"  # at least four digits: zero-padded
            assert re.fullmatch(rf"{unique}:{pid}".encode(), tlvs["unique_id"]), tlvs["unique_id"]


@needs_proxy_protocol
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_an_ipv6_clients_address_arrives(tmp_path: Path, certs: Certs, send: str) -> None:
    require_haproxy()
    with ServerThread(tls_server(certs, proxy_protocol=True)) as server:
        base = tcp_config(server.port, send)

        def make(port: int) -> str:  # a second bind, on ::1, beside the one on 127.0.0.1
            v6 = f"bind 127.0.0.1:{port}\n    bind [::1]:{port}"
            return substitute(base(port), {f"bind 127.0.0.1:{port}": v6})

        with start_haproxy(make, tmp_path) as hap:
            ctx = stdlib_client_context(certs)
            with socket.create_connection(("::1", hap.port), PEER_TIMEOUT) as raw:
                client = raw.getsockname()[:2]
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(MESSAGE)
                    assert recv_exactly(s, len(MESSAGE)) == MESSAGE
            seen = seen_from(server, client)
            assert seen.remote_address == ("::1", client[1])  # over IPv4 from HAProxy to uvssl
            assert seen.proxy_address[0] == "127.0.0.1"


def unit_service(text: str) -> dict[str, str]:
    """The ``[Service]`` settings of a systemd unit (continuation lines joined)."""
    section = ""
    settings: dict[str, str] = {}
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def replace_args(argv: list[str], replacements: dict[str, str]) -> list[str]:
    """``argv`` with each key (a whole argument, found exactly once) replaced."""
    for old, new in replacements.items():
        assert argv.count(old) == 1, f"expected {old!r} once in {argv}"
        argv = [new if a == old else a for a in argv]
    return argv


def test_the_readmes_systemd_unit(tmp_path: Path, certs: Certs) -> None:
    require_haproxy()
    unit = unit_service(readme_block(README, "systemd-unit", "uvssl.service"))
    argv = shlex.split(unit["ExecStart"])
    graceful = float(argv[argv.index("--graceful-timeout") + 1])
    workers = int(argv[argv.index("--workers") + 1])
    assert "--proxy-protocol" in argv  # it sits behind the README's HAProxy
    assert unit["KillSignal"] == "SIGTERM" and unit["KillMode"] == "mixed"
    # systemd's SIGKILL must come after the parent has drained and killed what was left
    assert float(unit["TimeoutStopSec"]) > graceful + uvssl.workers.KILL_MARGIN
    ticket_key = tmp_path / "ticket.key"
    ticket_key.write_bytes(os.urandom(80))
    ticket_key.chmod(0o600)
    argv = replace_args(
        argv,
        {
            "/usr/bin/python3": sys.executable,
            "8443": "0",  # any free port: the parent picks it for every worker and prints it
            "/etc/uvssl/server.pem": str(certs.server_cert),
            "/etc/uvssl/server.key": str(certs.server_key),
            "/etc/uvssl/ticket.key": str(ticket_key),
        },
    )
    proc = subprocess.Popen(
        argv,
        cwd=README.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the cleanup reaches every worker
    )
    lines = LineReader(proc)

    def wait_lines(text: str, count: int) -> list[str]:
        found = [lines.wait_for(lambda s: text in s, 30 * SLOWDOWN) for _ in range(count)]
        if None in found:
            pytest.fail(
                f"serve printed {text!r} fewer than {count} times:\n" + "\n".join(lines.lines)
            )
        return [s for s in found if s is not None]

    try:
        ports = {int(line.split()[1]) for line in wait_lines("READY", workers)}
        assert len(ports) == 1
        port = ports.pop()
        with start_haproxy(readme_passthrough(port), tmp_path) as hap:
            roundtrip("tls", hap.port, certs)
            # systemctl reload runs ExecReload with the main process's pid
            reload = shlex.split(unit["ExecReload"].replace("$MAINPID", str(proc.pid)))
            subprocess.run(reload, check=True, timeout=10)
            wait_lines("SIGHUP: certificate reloaded", workers)
            roundtrip("tls", hap.port, certs)
            hap.wait_for_log(r"Health check for server uvssl/app succeeded")
            # systemctl stop: KillSignal to the main process only (KillMode=mixed)
            kids = serve_children(proc.pid)
            assert len(kids) == workers
            proc.send_signal(getattr(signal, unit["KillSignal"]))
            assert proc.wait(float(unit["TimeoutStopSec"]) * SLOWDOWN) == 0
        out = lines.drain()
        assert not any("Traceback" in line for line in out), "\n".join(out)
        assert not [pid for pid in kids if pid_alive(pid)], "a worker outlived the service"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_process(proc)


def serve_children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
