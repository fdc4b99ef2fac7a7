"""keylog_file: the TLS secrets of every connection of a context, appended in the NSS key log
format (what Wireshark reads). The lines are compared with the ones a stdlib ssl peer writes for
the same connection (``SSLContext.keylog_filename``): both ends know the same secrets. Off
unless asked for, whatever SSLKEYLOGFILE says."""

from __future__ import annotations

import gc
import os
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tls_support import (
    LOCALHOST,
    MESSAGE,
    PEER_TIMEOUT,
    Certs,
    PeerThread,
    listening_socket,
    recv_exactly,
    run_pair,
    serve_to_peer,
)

import uvssl

pytestmark = pytest.mark.timeout(60)

TLS13_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
}


def secret_lines(path: Path) -> list[str]:
    """The key log lines of a file (stdlib's comment header left out)."""
    text = path.read_text()
    assert text.endswith("\n")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def stdlib_client_with_keylog(certs: Certs, log: Path, version: ssl.TLSVersion) -> Any:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.keylog_filename = str(log)
    ctx.maximum_version = version

    def client(port: int) -> bytes:
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(MESSAGE)
                return recv_exactly(s, len(MESSAGE))

    return client


@pytest.mark.parametrize(
    "version, labels",
    [(ssl.TLSVersion.TLSv1_3, TLS13_LABELS), (ssl.TLSVersion.TLSv1_2, {"CLIENT_RANDOM"})],
    ids=["tls1.3", "tls1.2"],
)
def test_server_keylog_matches_the_stdlib_clients(certs, tmp_path, version, labels):
    ours, theirs = tmp_path / "server.keylog", tmp_path / "client.keylog"
    ctx = uvssl.Context.server(
        certificate=str(certs.server_cert), key=str(certs.server_key), keylog_file=ours
    )
    peer, _ = serve_to_peer(
        stdlib_client_with_keylog(certs, theirs, version), certs=certs, until=bool, ssl_ctx=ctx
    )
    assert peer.result() == MESSAGE
    lines = secret_lines(ours)
    assert {line.split()[0] for line in lines} == labels
    # every line: LABEL <client random, 32 bytes in hex> <secret in hex>
    assert all(len(line.split()) == 3 and len(line.split()[1]) == 64 for line in lines)
    assert sorted(lines) == sorted(secret_lines(theirs))
    assert stat.S_IMODE(os.stat(ours).st_mode) == 0o600


def test_client_keylog_matches_the_stdlib_servers(certs, tmp_path):
    ours, theirs = tmp_path / "client.keylog", tmp_path / "server.keylog"
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    sctx.keylog_filename = str(theirs)
    ls = listening_socket()

    def serve() -> bytes:
        conn, _ = ls.accept()
        ls.close()
        with sctx.wrap_socket(conn, server_side=True) as s:
            data = recv_exactly(s, len(MESSAGE))
            s.sendall(data)
            return data

    server = PeerThread(serve)
    server.start()
    cctx = uvssl.Context.client(ca_file=str(certs.ca), keylog_file=str(ours))
    raw = socket.create_connection((LOCALHOST, ls.getsockname()[1]), timeout=PEER_TIMEOUT)
    with uvssl.make_ssl_client_stream(raw, context=cctx, server_hostname="localhost") as s:
        s.write(MESSAGE)
        s.flush()
        assert s.read(len(MESSAGE)) == MESSAGE
    assert server.result() == MESSAGE
    assert sorted(secret_lines(ours)) == sorted(secret_lines(theirs))
    assert {line.split()[0] for line in secret_lines(ours)} == TLS13_LABELS


def test_keylog_appends_for_every_connection_and_keeps_the_file(certs, tmp_path):
    log = tmp_path / "keys.log"
    log.write_text("# kept\n")
    os.chmod(log, 0o640)  # an existing file keeps its mode
    ctx = uvssl.Context.client(ca_file=str(certs.ca), keylog_file=log)
    r = run_pair(certs, clients=[{"ssl_ctx": ctx}, {"ssl_ctx": ctx}, {}])
    assert all(bytes(c["got"]) == MESSAGE for c in r.clients)
    text = log.read_text()
    assert text.startswith("# kept\n")
    lines = secret_lines(log)
    # two connections of this context, five TLS 1.3 secrets each; the third used another
    assert len(lines) == 10 and len({line.split()[1] for line in lines}) == 2
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o640


def _fds_on(path: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                out.append(fd)
        except OSError:
            pass
    return out


def test_keylog_file_is_opened_once_and_closed_with_the_context(certs, tmp_path):
    log = tmp_path / "once.log"
    ctx = uvssl.Context.client(ca_file=str(certs.ca), keylog_file=log)
    assert len(_fds_on(log)) == 1
    run_pair(certs, clients=[{"ssl_ctx": ctx}, {"ssl_ctx": ctx}])
    assert len(_fds_on(log)) == 1
    del ctx
    gc.collect()
    assert _fds_on(log) == []


def test_keylog_file_that_cannot_be_opened_fails_at_creation(tmp_path):
    with pytest.raises(FileNotFoundError, match="keylog_file") as ei:
        uvssl.Context.client(keylog_file=tmp_path / "no-such-dir" / "keys.log")
    assert ei.value.filename == str(tmp_path / "no-such-dir" / "keys.log")
    with pytest.raises(IsADirectoryError, match="keylog_file"):
        uvssl.Context.server(keylog_file=str(tmp_path))
    with pytest.raises(TypeError, match="keylog_file"):
        uvssl.Context.client(keylog_file=3)
    with pytest.raises(ValueError, match="keylog_file"):
        uvssl.Context.client(keylog_file="")


def test_sslkeylogfile_alone_writes_nothing(certs, tmp_path):
    """SSLKEYLOGFILE in the environment, no keylog_file: a uvssl client and server complete a
    handshake in a child process and no key log appears."""
    log = tmp_path / "env.keylog"
    script = textwrap.dedent(
        f"""
        import uvssl

        server_ctx = uvssl.Context.server(certificate={str(certs.server_cert)!r},
                                          key={str(certs.server_key)!r})
        client_ctx = uvssl.Context.client(ca_file={str(certs.ca)!r})
        done = []

        def start():
            def got(sock, data):
                done.append(data)
                sock.close()
                server.close()

            server = uvssl.tcp_ssl_server("127.0.0.1", 0, lambda s, d: s.write(d),
                                          lambda ev: ev.socket and ev.socket.close(),
                                          ssl_ctx=server_ctx)
            uvssl.tcp_ssl_connect("127.0.0.1", server.port, got, None, ssl_ctx=client_ctx,
                                  server_hostname="localhost", data=b"ping")

        uvssl.start_event_loop(start)
        assert done == [b"ping"], done
        print("handshake done")
        """
    )
    env = dict(os.environ, SSLKEYLOGFILE=str(log))
    root = str(Path(uvssl.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        timeout=40,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"handshake done" in proc.stdout
    assert not log.exists()
    # the opt-in that the README shows does write there
    ctx = uvssl.Context.client(ca_file=str(certs.ca), keylog_file=env.get("SSLKEYLOGFILE"))
    run_pair(certs, clients=[{"ssl_ctx": ctx}])
    assert {line.split()[0] for line in secret_lines(log)} == TLS13_LABELS
