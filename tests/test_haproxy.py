"""uvssl behind a real HAProxy: TCP forwarding, the PROXY protocol (v1 and v2, with TLVs),
health checks, and the configuration the README gives for deploying, run as written."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Any, Callable

import pytest
from haproxy_support import (
    ServerThread,
    require_haproxy,
    start_haproxy,
)
from tls_support import PEER_TIMEOUT, Certs, recv_exactly, stdlib_client_context

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
