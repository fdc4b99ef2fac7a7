"""Volume and flow: 16 MiB each way through a small receive window, 300 concurrent
connections."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from tls_support import (
    LOCALHOST,
    LoopHarness,
    close_quietly,
)

import uvssl

pytestmark = pytest.mark.timeout(60)


# -- volume --------------------------------------------------------------------------------------


def test_16_mib_each_way(server_cert_kw, certs):
    n = 16 * 1024 * 1024
    chunk = 256 * 1024
    blobs: dict[str, Any] = {"server": os.urandom(n), "client": os.urandom(n)}
    rx = {side: {"hash": hashlib.sha256(), "n": 0} for side in blobs}
    h = LoopHarness(deadline=40)
    errors = []

    def sender(side):
        blob = blobs[side]
        pos = [0]

        def pump(sock):
            while pos[0] < n and not sock.closed:
                piece = blob[pos[0] : pos[0] + chunk]
                pos[0] += len(piece)
                if not sock.write(piece):
                    return  # drain_cb resumes

        return pump

    def receiver(side):
        def read_cb(sock, data):
            st = rx[side]
            st["hash"].update(data)  # type: ignore[attr-defined]
            st["n"] += len(data)  # type: ignore[operator]
            if rx["server"]["n"] >= n and rx["client"]["n"] >= n:  # type: ignore[operator]
                h.done()

        return read_cb

    def on_connect(side):
        def cb(sock):
            pump = sender(side)
            sock.set_write_buffer_limits(1 << 20, 256 << 10, drain_cb=pump)
            pump(sock)

        return cb

    def event_cb(ev):
        errors.append(ev)
        h.fail(f"unexpected event {ev!r}")

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            receiver("server"),
            event_cb,
            connect_cb=on_connect("server"),
            **server_cert_kw,
        )
        uvssl.tcp_ssl_connect(
            LOCALHOST,
            srv.port,
            receiver("client"),
            event_cb,
            connect_cb=on_connect("client"),
            ca_file=str(certs.ca),
        )

    h.run(start)
    assert not errors
    assert rx["server"]["n"] == n and rx["client"]["n"] == n
    assert rx["server"]["hash"].digest() == hashlib.sha256(blobs["client"]).digest()  # type: ignore[attr-defined]
    assert rx["client"]["hash"].digest() == hashlib.sha256(blobs["server"]).digest()  # type: ignore[attr-defined]


def test_300_concurrent_connections(server_cert_kw, certs):
    from helpers import raise_nofile_limit

    count = 300
    raise_nofile_limit(4 * count + 256)
    h = LoopHarness(deadline=45)
    ok = []
    errors = []
    server_errors = []

    def s_read(sock, data):
        sock.write(data)

    def s_event(ev):
        if not isinstance(ev, (uvssl.SslClosed, uvssl.TcpEof)):
            server_errors.append(ev)
        close_quietly(ev)

    def client(i, port):
        msg = f"message {i} from client {i}\n".encode()
        got = bytearray()

        def read_cb(sock, data):
            got.extend(data)
            if len(got) >= len(msg):
                if bytes(got) == msg:
                    ok.append(i)
                else:
                    errors.append((i, bytes(got)))
                sock.close()

        def event_cb(ev):
            errors.append((i, ev))
            close_quietly(ev)

        uvssl.tcp_ssl_connect(
            LOCALHOST,
            port,
            read_cb,
            event_cb,
            ca_file=str(certs.ca),
            connect_cb=lambda s: s.write(msg),
        )

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            s_read,
            s_event,
            **server_cert_kw,
        )
        for i in range(count):
            client(i, srv.port)

    h.run(start, until=lambda: len(ok) + len(errors) >= count)
    assert not errors[:5], f"{len(errors)} clients failed"
    assert sorted(ok) == list(range(count))
    assert not server_errors[:5]
