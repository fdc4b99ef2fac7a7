"""TLS sockets, servers and contexts (SPEC S3, S4, S5) against real peers on 127.0.0.1:
uvssl itself, the stdlib ``ssl`` module (in threads) and ``openssl s_client`` / ``s_server``."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import pickle
import socket
import ssl
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from helpers import run_loop
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    LineReader,
    LoopHarness,
    PeerThread,
    close_quietly,
    kill_process,
    listening_socket,
    openssl_binary,
    recv_exactly,
    recv_until,
    run_pair,
    serve_to_peer,
    start_s_server,
    stdlib_client_context,
    stdlib_server_context,
)

import uvssl
from uvssl.openssl import ffi, lib

pytestmark = pytest.mark.timeout(60)

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


# -- interoperability: stdlib ssl and openssl ----------------------------------------------------


def test_uvssl_client_to_stdlib_server(certs):
    sctx = stdlib_server_context(certs)
    ls = listening_socket()
    port = ls.getsockname()[1]

    def serve():
        try:
            conn, _ = ls.accept()
        finally:
            ls.close()
        conn.settimeout(PEER_TIMEOUT)
        with sctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as s:
            data = recv_until(s, b"\n")
            s.sendall(b"echo:" + data)
            tail = s.recv(100)  # uvssl's close_notify: b"" (a bare EOF would raise)
            return data, tail, s.version()

    peer = PeerThread(serve)
    peer.start()
    h = LoopHarness()
    got = bytearray()
    info = {}

    def read_cb(sock, data):
        got.extend(data)
        if got.endswith(b"\n"):
            info.update(
                version=sock.version,
                cipher=sock.cipher,
                cert=sock.peer_certificate,
                hostname=sock.server_hostname,
                connected=sock.connected,
            )
            uvssl.close_socket(sock)

    def start():
        uvssl.tcp_ssl_connect(
            LOCALHOST,
            port,
            read_cb,
            lambda ev: h.fail(f"client: {ev!r}"),
            ca_file=str(certs.ca),
            connect_cb=lambda s: s.write(b"hi from uvssl\n"),
        )

    try:
        h.run(start, until=lambda: peer.done)
    finally:
        ls.close()
    data, tail, version = peer.result()
    assert data == b"hi from uvssl\n"
    assert tail == b""
    assert bytes(got) == b"echo:hi from uvssl\n"
    assert info["version"] == version == "TLSv1.3"
    assert info["cipher"]
    assert info["connected"] is True
    assert info["hostname"] == LOCALHOST
    assert isinstance(info["cert"], uvssl.X509Certificate)
    assert info["cert"].to_der() == server_der(certs)


def test_stdlib_client_to_uvssl_server(certs):
    seen = {}

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        ctx = stdlib_client_context(certs)
        with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
            s.sendall(b"ping\n")
            data = recv_until(s, b"\n")
            version = s.version()
            s.unwrap()  # sends close_notify and waits for uvssl's answer
            return data, version

    def read_cb(sock, data):
        seen.update(version=sock.version, peer=sock.peer_certificate, alpn=sock.alpn_protocol)
        sock.write(data)

    peer, events = serve_to_peer(client, read_cb, certs=certs, until=bool)
    data, version = peer.result()
    assert data == b"ping\n"
    assert version == seen["version"] == "TLSv1.3"
    assert seen["peer"] is None
    assert seen["alpn"] is None
    assert len(events) == 1 and type(events[0]) is uvssl.SslClosed, events
    assert events[0].truncated is False


def test_openssl_s_client_to_uvssl_server(certs):
    exe = openssl_binary()
    state = {}

    def drive(port):
        proc = subprocess.Popen(
            [
                exe,
                "s_client",
                "-connect",
                f"{LOCALHOST}:{port}",
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                "-CAfile",
                str(certs.ca),
                "-verify_return_error",
                "-quiet",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(b"hello from s_client\n", timeout=10)
            return proc.returncode, out, err
        finally:
            kill_process(proc)

    buf = bytearray()

    def read_cb(sock, data):
        buf.extend(data)
        if b"\n" in buf:
            state["version"] = sock.version
            sock.write(b"uvssl says: " + bytes(buf))
            sock.close()  # close_notify ends s_client (-quiet implies -ign_eof)

    peer, events = serve_to_peer(drive, read_cb, certs=certs)
    rc, out, err = peer.result()
    assert b"uvssl says: hello from s_client\n" in out, (out, err)
    assert rc == 0, err
    assert state["version"] == "TLSv1.3"
    assert not events, events


def test_uvssl_client_to_openssl_s_server(certs):
    proc, reader, port = start_s_server(certs, ["-rev"])
    try:
        h = LoopHarness()
        got = bytearray()
        info = {}

        def read_cb(sock, data):
            got.extend(data)
            if b"olleh" in got:
                info.update(version=sock.version, cert=sock.peer_certificate)
                sock.close()
                h.done()

        def start():
            uvssl.tcp_ssl_connect(
                LOCALHOST,
                port,
                read_cb,
                lambda ev: h.fail(f"client: {ev!r}"),
                ca_file=str(certs.ca),
                server_hostname="localhost",
                connect_cb=lambda s: s.write(b"hello\n"),
            )

        h.run(start)
        assert b"olleh" in got
        assert info["version"] == "TLSv1.3"
        assert info["cert"].to_der() == server_der(certs)
    finally:
        kill_process(proc)
        reader.join()


# -- negotiation ---------------------------------------------------------------------------------


def test_tls12_negotiated_on_request(certs):
    cctx = uvssl.Context.client(max_version="tls-v1-2", ca_file=str(certs.ca))
    r = run_pair(certs, clients=[dict(ssl_ctx=cctx)])
    assert_echoed(r)
    assert r.clients[0]["version"] == "TLSv1.2"
    assert r.server_info[0]["version"] == "TLSv1.2"


def test_tls13_negotiated_on_request(server_cert_kw, certs):
    sctx = uvssl.Context.server(
        **server_cert_kw, min_version="tls-v1-3"
    )
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[{}])
    assert_echoed(r)
    assert r.clients[0]["version"] == "TLSv1.3"
    assert r.server_info[0]["version"] == "TLSv1.3"


def test_version_ranges_that_do_not_meet_fail(server_cert_kw, certs):
    sctx = uvssl.Context.server(
        **server_cert_kw, min_version="tls-v1-3"
    )
    cctx = uvssl.Context.client(max_version="tls-v1-2", ca_file=str(certs.ca))
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[dict(ssl_ctx=cctx)])
    assert not r.clients[0]["connected"]
    assert isinstance(r.clients[0]["events"][0], uvssl.SslFailure)
    assert isinstance(r.server_events[0], uvssl.SslFailure)
    assert not r.server_info


def test_alpn_negotiated_on_both_sides(server_cert_kw, certs):
    sctx = uvssl.Context.server(
        **server_cert_kw, alpn=["http/1.1"]
    )
    r = run_pair(
        certs,
        server_kw=dict(ssl_ctx=sctx),
        clients=[dict(alpn=["h2", "http/1.1"], server_hostname="localhost")],
    )
    assert_echoed(r)
    assert r.clients[0]["alpn"] == "http/1.1"
    assert r.server_info[0]["alpn"] == "http/1.1"


# -- client certificates -------------------------------------------------------------------------


def required_client_cert_server(certs):
    return uvssl.Context.server(
        certificate=str(certs.server_cert),
        key=str(certs.server_key),
        verify="required",
        ca_file=str(certs.ca),
    )


def test_client_certificate_required_and_presented(certs):
    sctx = required_client_cert_server(certs)
    cctx = uvssl.Context.client(
        ca_file=str(certs.ca), certificate=str(certs.client_cert), key=str(certs.client_key)
    )
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[dict(ssl_ctx=cctx)])
    assert_echoed(r)
    cert = r.server_info[0]["peer_certificate"]
    assert isinstance(cert, uvssl.X509Certificate)
    client_pem = certs.client_cert.read_text()
    assert cert.to_der() == ssl.PEM_cert_to_DER_cert(
        client_pem[: client_pem.index("-----END CERTIFICATE-----") + 25]
    )
    assert r.clients[0]["peer_certificate"].to_der() == server_der(certs)


def test_client_without_certificate_is_refused(certs):
    sctx = required_client_cert_server(certs)
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[{}])
    c = r.clients[0]
    assert bytes(c["got"]) == b""
    assert c["events"] and isinstance(c["events"][0], uvssl.TcpSslError), c["events"]
    assert not isinstance(c["events"][0], uvssl.SslClosed)
    assert not r.server_info  # the server never completed a handshake
    assert len(r.server_events) == 1
    ev = r.server_events[0]
    assert isinstance(ev, uvssl.SslFailure), ev
    assert ev.codes and ev.strings


# -- sessions ------------------------------------------------------------------------------------


def test_session_resumption(certs):
    cctx = uvssl.Context.client(ca_file=str(certs.ca))
    r = run_pair(
        certs,
        clients=[
            dict(ssl_ctx=cctx),
            lambda res: dict(ssl_ctx=cctx, session=res.clients[0]["session"]),
        ],
    )
    assert_echoed(r, 2)
    first, second = r.clients
    assert isinstance(first["session"], uvssl.SslSession)
    assert first["session"].resumable
    assert first["session_reused"] is False
    assert second["session_reused"] is True
    assert r.server_info[0]["session_reused"] is False
    assert r.server_info[1]["session_reused"] is True


# -- volume --------------------------------------------------------------------------------------


def test_16_mib_each_way(server_cert_kw, certs):
    n = 16 * 1024 * 1024
    chunk = 256 * 1024
    blobs = {"server": os.urandom(n), "client": os.urandom(n)}
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
            st["hash"].update(data)
            st["n"] += len(data)
            if rx["server"]["n"] >= n and rx["client"]["n"] >= n:
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
    assert rx["server"]["hash"].digest() == hashlib.sha256(blobs["client"]).digest()
    assert rx["client"]["hash"].digest() == hashlib.sha256(blobs["server"]).digest()


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


def test_idle_connection_releases_handshake_and_large_buffers(certs):
    """Once the handshake is done a connection drops its handshake timer and output buffer,
    and after traffic it keeps only small buffers (at most 1 KiB each) for reuse."""
    held = []  # (what, bytes held by the server-side connection)

    def measure(sock, what):
        held.append((what, int(lib.uvs_conn_held_bytes(sock._conn))))

    def s_read(sock, data):
        sock.write(data)
        uvssl.delay(lambda: sock.closed or measure(sock, f"after {len(data)}"), 0)

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost") as s:
            big = b"b" * 10_000  # grows both of the server's buffers past the keep limit
            s.sendall(big)
            assert recv_exactly(s, len(big)) == big
            s.sendall(b"ping\n")
            assert recv_exactly(s, 5) == b"ping\n"
            return True

    peer, _ = serve_to_peer(
        client,
        s_read,
        certs=certs,
        until=lambda _: held and held[-1][0] == "after 5",
        connect_cb=lambda sock: measure(sock, "handshake done"),
    )
    assert peer.result() is True
    assert held[0] == ("handshake done", 0), held
    after = [n for what, n in held[1:]]
    assert after and all(n <= 2 * 1024 for n in after), held
    assert after[-1] <= 1024, held  # a 5-byte echo: two small buffers kept for reuse


def test_quiet_connection_gives_back_openssl_record_buffers(certs):
    """A busy connection keeps OpenSSL's record buffers; once quiet for a few milliseconds
    and loop iterations they are freed, together with the small buffers uvssl keeps for the
    next write, and traffic afterwards still flows both ways."""
    if not lib.uvs_tls_can_free_buffers():
        pytest.skip("OpenSSL before the CVE-2024-4741 fix: buffers go with every record")
    seen = []  # (what, whether the server-side connection may hold record buffers)
    deadline = time.monotonic() + 5.0

    def held(sock):
        return bool(lib.uvs_conn_tls_buffers_held(sock._conn))

    def wait_for_release(sock):
        if sock.closed:
            return
        if held(sock) and time.monotonic() < deadline:
            uvssl.delay(lambda: wait_for_release(sock), 0.005)
            return
        # the echo of "one" left both small output buffers allocated; quiet, none is held
        seen.append(("quiet", held(sock), int(lib.uvs_conn_held_bytes(sock._conn))))
        sock.write(b"free")

    def s_read(sock, data):
        seen.append((data.decode(), held(sock)))
        sock.write(data)
        if data == b"one\n":
            wait_for_release(sock)

    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        with stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"one\n")
            assert recv_exactly(s, 8) == b"one\nfree"
            s.sendall(b"two\n")
            assert recv_exactly(s, 4) == b"two\n"
            return True

    peer, _ = serve_to_peer(
        client, s_read, certs=certs, until=lambda _: len(seen) >= 3
    )
    assert peer.result() is True
    assert seen == [("one\n", True), ("quiet", False, 0), ("two\n", True)], seen


# -- verification --------------------------------------------------------------------------------


def check_verification_failure(ev):
    assert isinstance(ev, uvssl.SslVerificationFailure), repr(ev)
    assert isinstance(ev.verify_result, int) and ev.verify_result != 0
    assert isinstance(ev.verify_result_string, str) and ev.verify_result_string
    assert ev.verify_result_string in str(ev)
    assert ev.what == "handshake"


def test_host_name_mismatch_fails_verification(certs):
    r = run_pair(certs, clients=[dict(server_hostname="wrong.example")])
    c = r.clients[0]
    assert not c["connected"]
    assert len(c["events"]) == 1
    check_verification_failure(c["events"][0])
    assert c["events"][0].verify_result == 62  # X509_V_ERR_HOSTNAME_MISMATCH


def test_untrusted_chain_fails_against_system_store(certs):
    r = run_pair(certs, clients=[dict(ca_file=None, server_hostname="localhost")])
    c = r.clients[0]
    assert not c["connected"]
    assert len(c["events"]) == 1
    check_verification_failure(c["events"][0])


def test_verify_false_accepts_untrusted_server(certs):
    r = run_pair(certs, clients=[dict(ca_file=None, verify=False, server_hostname="wrong.example")])
    assert_echoed(r)
    assert r.clients[0]["peer_certificate"].to_der() == server_der(certs)


# -- ssl_ctx forms -------------------------------------------------------------------------------


def test_stdlib_server_context_settings_apply(certs):
    sctx = stdlib_server_context(certs)
    sctx.set_alpn_protocols(["h2"])
    r = run_pair(
        certs,
        server_kw=dict(ssl_ctx=sctx),
        clients=[dict(alpn=["h2", "http/1.1"], server_hostname="localhost")],
    )
    assert_echoed(r)
    assert r.clients[0]["alpn"] == "h2"
    assert r.server_info[0]["alpn"] == "h2"


def test_stdlib_client_context_settings_apply(certs):
    good = ssl.create_default_context()
    good.load_verify_locations(str(certs.ca))
    system_only = ssl.create_default_context()
    r = run_pair(
        certs,
        clients=[
            dict(ssl_ctx=good, server_hostname="localhost"),
            dict(ssl_ctx=system_only, server_hostname="localhost"),
        ],
    )
    first, second = r.clients
    assert not first["events"], first["events"]
    assert bytes(first["got"]) == MESSAGE
    # the same code with a context lacking the CA must fail: the stdlib context is in charge
    assert not second["connected"]
    check_verification_failure(second["events"][0])


POINTER_FORMS = {
    "int": lambda ctx: ctx.pointer,
    "cffi": lambda ctx: ffi.cast("SSL_CTX *", ctx.pointer),
    "ctypes": lambda ctx: ctypes.c_void_p(ctx.pointer),
}


@pytest.mark.parametrize("form", sorted(POINTER_FORMS))
def test_raw_ssl_ctx_pointer(server_cert_kw, certs, form):
    sctx = uvssl.Context.server(
        **server_cert_kw, alpn=["proto-x"]
    )
    cctx = uvssl.Context.client(ca_file=str(certs.ca))
    conv = POINTER_FORMS[form]
    r = run_pair(
        certs,
        server_kw=dict(ssl_ctx=conv(sctx)),
        clients=[dict(ssl_ctx=conv(cctx), server_hostname="localhost", alpn=["proto-x"])],
    )
    assert_echoed(r)
    assert r.server_info[0]["alpn"] == "proto-x"  # the borrowed SSL_CTX's settings are used
    # and the borrowed client context still verifies
    r = run_pair(
        certs,
        server_kw=dict(ssl_ctx=conv(sctx)),
        clients=[dict(ssl_ctx=conv(cctx), server_hostname="wrong.example")],
    )
    check_verification_failure(r.clients[0]["events"][0])
    assert sctx.pointer and cctx.pointer  # still alive and owned by the caller


# -- failures on the server ----------------------------------------------------------------------


def test_plain_tcp_garbage_then_tls_client_still_served(server_cert_kw, certs):
    h = LoopHarness()
    server_events = []
    state = {}

    def garbage(port):
        s = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        try:
            s.sendall(b"\x00\x01 this is not TLS at all \xff\xfe\r\n" * 8)
            received = bytearray()
            try:
                while True:
                    piece = s.recv(4096)
                    if not piece:
                        break
                    received += piece
            except ConnectionResetError:
                pass
            return bytes(received)
        finally:
            s.close()

    got = bytearray()

    def start_tls_client(port):
        def read_cb(sock, data):
            got.extend(data)
            if len(got) >= len(MESSAGE):
                state["tls_ok"] = True
                sock.close()

        uvssl.tcp_ssl_connect(
            LOCALHOST,
            port,
            read_cb,
            lambda ev: h.fail(f"client: {ev!r}"),
            ca_file=str(certs.ca),
            connect_cb=lambda s: s.write(MESSAGE),
        )

    def s_event(ev):
        server_events.append(ev)
        close_quietly(ev)
        if (
            isinstance(ev, uvssl.TcpSslError)
            and not isinstance(ev, uvssl.SslClosed)
            and "client_started" not in state
        ):
            state["client_started"] = True
            start_tls_client(state["port"])

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            lambda s, d: s.write(d),
            s_event,
            **server_cert_kw,
        )
        state["port"] = srv.port
        state["peer"] = PeerThread(garbage, srv.port)
        state["peer"].start()

    h.run(
        start, until=lambda: state.get("tls_ok") and state["peer"].done and len(server_events) >= 2
    )
    state["peer"].result()
    first = server_events[0]
    assert isinstance(first, uvssl.TcpSslError) and not isinstance(first, uvssl.SslClosed), first
    assert first.codes, first
    assert len(first.strings) == len(first.codes)
    assert bytes(got) == MESSAGE
    assert isinstance(server_events[1], uvssl.SslClosed)


def test_silent_client_hits_handshake_timeout(certs):
    def silent(port):
        s = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        try:
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""
        finally:
            s.close()

    peer, events = serve_to_peer(
        silent, lambda s, d: None, certs=certs, until=bool, handshake_timeout=0.5
    )
    assert peer.result() == b""  # the connection was closed, not left hanging
    assert len(events) == 1
    assert isinstance(events[0], uvssl.SslHandshakeTimeout), events
    assert isinstance(events[0], uvssl.TcpSslError)


def stdlib_client_server_test(certs, client_fn, read_cb=None, server_ctx=None):
    """A uvssl server (echo unless ``read_cb``) and one stdlib client thread.

    Returns (client result, server events)."""
    kw = dict(ssl_ctx=server_ctx) if server_ctx is not None else {}
    peer, events = serve_to_peer(client_fn, read_cb, certs=certs, until=bool, **kw)
    return peer.result(), events


def test_peer_dropping_tcp_without_close_notify_is_truncation(certs):
    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        s = stdlib_client_context(certs).wrap_socket(raw, server_hostname="localhost")
        try:
            s.sendall(b"some data\n")
            data = recv_until(s, b"\n")
            # SSLSocket.shutdown does not send close_notify: it drops the TLS layer, then FIN
            s.shutdown(socket.SHUT_RDWR)
            return data
        finally:
            s.close()

    data, events = stdlib_client_server_test(certs, client)
    assert data == b"some data\n"
    assert len(events) == 1, events
    ev = events[0]
    assert type(ev) is uvssl.SslClosed, ev
    assert ev.truncated is True


def test_peer_sees_close_notify_when_uvssl_closes(certs):
    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        ctx = stdlib_client_context(certs)
        with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
            s.sendall(b"bye\n")
            data = bytearray()
            while True:
                piece = s.recv(4096)  # SSLEOFError here would mean: no close_notify
                if not piece:
                    break
                data += piece
            return bytes(data)

    def read_cb(sock, data):
        sock.write(b"ok\n")
        uvssl.close_socket(sock)

    peer, _ = serve_to_peer(client, read_cb, certs=certs)
    assert peer.result() == b"ok\n"


def test_writes_before_handshake_arrive_in_order(server_cert_kw, certs):
    h = LoopHarness()
    received = bytearray()
    expected = b"data=;" + b"".join(f"early-{i};".encode() for i in range(50)) + b"after-connect;"
    state = {}

    def s_read(sock, data):
        received.extend(data)
        if len(received) >= len(expected):
            h.done()

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            s_read,
            lambda ev: h.fail(f"server: {ev!r}"),
            **server_cert_kw,
        )
        sock = uvssl.tcp_ssl_connect(
            LOCALHOST,
            srv.port,
            None,
            lambda ev: h.fail(f"client: {ev!r}"),
            ca_file=str(certs.ca),
            data=b"data=;",
            connect_cb=lambda s: s.write(b"after-connect;"),
        )
        state["connected_early"] = sock.connected
        state["version_early"] = sock.version
        for i in range(50):
            sock.write(f"early-{i};".encode())

    h.run(start)
    assert state["connected_early"] is False
    assert state["version_early"] is None
    assert bytes(received) == expected


def test_peer_key_update_is_answered(certs):
    exe = openssl_binary()

    def drive(port):
        proc = subprocess.Popen(
            [
                exe,
                "s_client",
                "-connect",
                f"{LOCALHOST}:{port}",
                "-servername",
                "localhost",
                "-CAfile",
                str(certs.ca),
                "-verify_return_error",
                "-tls1_3",
                "-msg",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        reader = LineReader(proc)
        try:

            def send(line):
                proc.stdin.write(line)
                proc.stdin.flush()

            send(b"hello1\n")
            if reader.wait_for(lambda s: s == "hello1") is None:
                return "no-echo", reader.lines
            send(b"K\n")
            if reader.wait_for(lambda s: "KEYUPDATE" in s, timeout=5) is None:
                return "unsupported", reader.lines
            mark = len(reader.lines)
            send(b"hello2\n")
            if reader.wait_for(lambda s: s == "hello2") is None:
                return "no-echo-after", reader.lines
            after = reader.lines[mark:]
            send(b"hello3\n")
            third = reader.wait_for(lambda s: s == "hello3")
            proc.stdin.close()
            reader.drain(5)
            return ("ok" if third else "no-echo-3"), after
        finally:
            kill_process(proc)
            reader.join()

    peer, events = serve_to_peer(drive, certs=certs, deadline=30)
    status, lines = peer.result()
    if status == "unsupported":
        pytest.skip("this openssl s_client does not send KeyUpdate on 'K'")
    assert status == "ok", "\n".join(lines)
    sent = [s for s in lines if s.startswith(">>>") and "KeyUpdate" in s]
    answered = [s for s in lines if s.startswith("<<<") and "KeyUpdate" in s]
    if not sent:
        pytest.skip("s_client -msg did not show its KeyUpdate")
    assert answered, "uvssl did not answer the KeyUpdate:\n" + "\n".join(lines)
    bad = [ev for ev in events if not isinstance(ev, uvssl.SslClosed)]
    assert not bad, bad


# -- alerts reach the peer -----------------------------------------------------------------------


def test_missing_client_certificate_alert_reaches_stdlib_client(certs):
    def client(port):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        ctx = stdlib_client_context(certs)
        try:
            s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
        except ssl.SSLError as exc:  # TLS 1.2 fails here, TLS 1.3 at the first read
            return exc
        try:
            s.sendall(b"x\n")
            try:
                s.recv(100)
            except (ssl.SSLError, OSError) as exc:
                return exc
            return None
        finally:
            s.close()

    exc, events = stdlib_client_server_test(
        certs, client, server_ctx=required_client_cert_server(certs)
    )
    assert exc is not None
    assert isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError), repr(exc)
    text = str(exc).lower()
    assert "alert" in text and any(
        a in text for a in ("certificate required", "handshake failure", "bad certificate")
    ), text
    assert len(events) == 1 and isinstance(events[0], uvssl.SslFailure), events


def test_uvssl_client_rejection_alert_reaches_stdlib_server(certs):
    sctx = stdlib_server_context(certs, untrusted=True)
    ls = listening_socket()
    port = ls.getsockname()[1]

    def serve():
        try:
            conn, _ = ls.accept()
        finally:
            ls.close()
        conn.settimeout(PEER_TIMEOUT)
        try:
            s = sctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            conn.close()
            return exc
        s.close()
        return None

    peer = PeerThread(serve)
    peer.start()
    h = LoopHarness()
    events = []

    def event_cb(ev):
        events.append(ev)
        close_quietly(ev)

    def start():
        uvssl.tcp_ssl_connect(
            LOCALHOST,
            port,
            None,
            event_cb,
            ca_file=str(certs.ca),
            server_hostname="localhost",
            connect_cb=lambda s: h.fail("handshake with an untrusted server"),
        )

    try:
        h.run(start, until=lambda: peer.done and events)
    finally:
        ls.close()
    exc = peer.result()
    assert len(events) == 1
    check_verification_failure(events[0])
    assert isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError), repr(exc)
    assert "unknown ca" in str(exc).lower(), str(exc)


# -- bad input -----------------------------------------------------------------------------------


def in_loop(fn):
    """Run ``fn`` inside a loop (for calls that need one); its exception propagates."""
    h = LoopHarness()

    def start():
        try:
            fn()
        finally:
            h.done()

    h.run(start)


def test_missing_certificate_file(certs, tmp_path):
    missing = tmp_path / "no-such-cert.pem"
    with pytest.raises(FileNotFoundError):
        uvssl.Context.server(certificate=str(missing), key=str(certs.server_key))
    with pytest.raises(FileNotFoundError):
        uvssl.Context.server(certificate=str(certs.server_cert), key=str(tmp_path / "no.key"))
    with pytest.raises(FileNotFoundError):
        uvssl.Context.client(ca_file=str(tmp_path / "no-ca.pem"))

    def call():
        with pytest.raises(FileNotFoundError):
            uvssl.tcp_ssl_server(
                LOCALHOST, 0, None, certificate=str(missing), key=str(certs.server_key)
            )

    in_loop(call)


def test_key_not_matching_certificate(certs):
    with pytest.raises(uvssl.SslFailure) as info:
        uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.client_key))
    assert info.value.codes
    assert isinstance(info.value, uvssl.TcpSslError)


def test_encrypted_key_wrong_password(certs):
    with pytest.raises(uvssl.SslFailure) as info:
        uvssl.Context.server(
            certificate=str(certs.server_cert),
            key=str(certs.server_key_encrypted),
            certificate_password="wrong",
        )
    assert info.value.codes
    with pytest.raises(uvssl.SslFailure):  # no password: an error, never a prompt
        uvssl.Context.server(
            certificate=str(certs.server_cert), key=str(certs.server_key_encrypted)
        )

    def call():
        with pytest.raises(uvssl.SslFailure):
            uvssl.tcp_ssl_server(
                LOCALHOST,
                0,
                None,
                certificate=str(certs.server_cert),
                key=str(certs.server_key_encrypted),
                password="wrong",
            )

    in_loop(call)


def test_encrypted_key_right_password(certs):
    ctx = uvssl.Context.server(
        certificate=str(certs.server_cert),
        key=str(certs.server_key_encrypted),
        certificate_password=certs.password,
    )
    assert ctx.pointer
    r = run_pair(
        certs,
        server_kw=dict(
            certificate=str(certs.server_cert),
            key=str(certs.server_key_encrypted),
            password=certs.password.decode(),
        ),
    )
    assert_echoed(r)


def test_invalid_cipher_strings(server_cert_kw, certs):
    with pytest.raises(uvssl.SslFailure):
        uvssl.Context.client(ciphers="NOT-A-CIPHER:ALSO-NOT")
    with pytest.raises(uvssl.SslFailure):
        uvssl.Context.server(
            **server_cert_kw,
            ciphersuites="TLS_NOT_A_SUITE",
        )

    def call():
        with pytest.raises(uvssl.SslFailure):
            uvssl.tcp_ssl_connect(LOCALHOST, 9, None, ciphers="NOT-A-CIPHER")
        with pytest.raises(uvssl.SslFailure):
            uvssl.tcp_ssl_server(
                LOCALHOST,
                0,
                None,
                **server_cert_kw,
                ciphers="NOT-A-CIPHER",
            )

    in_loop(call)


def test_stdlib_context_with_sni_callback_refused(certs):
    sctx = stdlib_server_context(certs)
    sctx.sni_callback = lambda sock, name, ctx: None  # (the stdlib allows it on servers only)

    def call():
        with pytest.raises(ValueError, match="sni_callback"):
            uvssl.tcp_ssl_server(LOCALHOST, 0, None, ssl_ctx=sctx)

    in_loop(call)


def test_ssl_options_or_ciphers_with_ssl_ctx_refused(server_cert_kw, certs):
    sctx = uvssl.Context.server(**server_cert_kw)
    cctx = uvssl.Context.client(ca_file=str(certs.ca))

    def call():
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_server(
                LOCALHOST, 0, None, ssl_ctx=sctx, ssl_options=[uvssl.SSL_OP_NO_TICKET]
            )
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_connect(
                LOCALHOST, 9, None, ssl_ctx=cctx, ssl_options=[uvssl.SSL_OP_NO_TICKET]
            )
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_connect(LOCALHOST, 9, None, ssl_ctx=cctx, ciphers="HIGH")
        with pytest.raises(ValueError):
            uvssl.tcp_ssl_server(LOCALHOST, 0, None, ssl_ctx=sctx, ciphers="HIGH")

    in_loop(call)


# -- SSL_OP_* and the error classes ----------------------------------------------------------------


def test_ssl_op_constants_exported():
    for name in (
        "SSL_OP_NO_TICKET",
        "SSL_OP_NO_TLSv1_3",
        "SSL_OP_NO_COMPRESSION",
        "SSL_OP_CIPHER_SERVER_PREFERENCE",
        "SSL_OP_ALL",
    ):
        value = getattr(uvssl, name)
        assert isinstance(value, int), name
        assert name in uvssl.__all__
    assert uvssl.SSL_OP_NO_TICKET == ssl.OP_NO_TICKET
    assert uvssl.SSL_OP_NO_TLSv1_3 == ssl.OP_NO_TLSv1_3
    assert uvssl.SSL_OP_NO_COMPRESSION == ssl.OP_NO_COMPRESSION
    # OpenSSL 3 made some of them no-ops: still accepted
    uvssl.Context.client(options=[uvssl.SSL_OP_SINGLE_DH_USE, uvssl.SSL_OP_NO_SSLv2])


def test_ssl_options_take_effect(server_cert_kw, certs):
    ctx = uvssl.Context.client(options=[uvssl.SSL_OP_NO_TICKET], ca_file=str(certs.ca))
    assert lib.SSL_CTX_get_options(ffi.cast("SSL_CTX *", ctx.pointer)) & uvssl.SSL_OP_NO_TICKET
    r = run_pair(
        certs,
        server_kw=dict(
            **server_cert_kw,
            ssl_options=[uvssl.SSL_OP_NO_TLSv1_3],
        ),
        clients=[dict(ssl_options=[uvssl.SSL_OP_NO_TICKET])],
    )
    assert_echoed(r)
    assert r.clients[0]["version"] == "TLSv1.2"  # the server's ssl_options applied
    assert r.server_info[0]["version"] == "TLSv1.2"
    client_ctx = r.clients[0]["socket"].context
    opts = lib.SSL_CTX_get_options(ffi.cast("SSL_CTX *", client_ctx.pointer))
    assert opts & uvssl.SSL_OP_NO_TICKET  # the client's ssl_options applied


def test_error_class_hierarchy():
    for cls in (
        uvssl.SslVerificationFailure,
        uvssl.SslFailure,
        uvssl.SslClosed,
        uvssl.SslHandshakeTimeout,
        uvssl.SslX509Lookup,
    ):
        assert issubclass(cls, uvssl.TcpSslError), cls
        assert issubclass(cls, uvssl.SslCondition), cls
        assert issubclass(cls, uvssl.TcpError), cls
        assert issubclass(cls, uvssl.SocketError), cls
        assert issubclass(cls, OSError), cls
    assert issubclass(uvssl.SslVerificationFailure, uvssl.SslFailure)
    exc = uvssl.SslVerificationFailure(
        "certificate verification failed",
        what="handshake",
        codes=(1, 2),
        strings=("a", "b"),
        verify_result=20,
        verify_result_string="unable to get local issuer certificate",
    )
    assert isinstance(exc, OSError)
    text = str(exc)
    assert "unable to get local issuer certificate" in text and "20" in text
    assert "a" in text and "handshake" in text
    assert exc.codes == (1, 2) and exc.strings == ("a", "b")


def test_error_attributes_default_and_survive_pickling():
    closed = uvssl.SslClosed("the peer sent close_notify", what="read", identifier="shutdown")
    assert (closed.what, closed.action, closed.identifier) == ("read", "read", "shutdown")
    assert closed.codes == () and closed.strings == ()
    assert closed.verify_result is None and closed.verify_result_string is None
    assert closed.code is None and closed.socket is None and not closed.truncated
    eof = uvssl.TcpEof("the peer closed the connection", action="read")
    assert (eof.code, eof.identifier, eof.action, eof.socket) == (None, "unknown", "read", None)
    reset = uvssl.TcpError("reset", code=errno.ECONNRESET, action="write")
    assert reset.identifier == "connection-reset" and reset.errno == errno.ECONNRESET
    failure = uvssl.SslFailure("bad", what="handshake", codes=[7], strings=["x"], verify_result=0)
    for exc in (closed, eof, reset, failure):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        for name in ("message", "code", "action", "identifier", "socket"):
            assert getattr(back, name) == getattr(exc, name), name
    assert back.codes == (7,) and back.strings == ("x",) and back.verify_result == 0


# -- when a TLS server hands a connection over --------------------------------------------------


def _live_ssl_sockets() -> int:
    return sum(isinstance(o, uvssl.SslSocket) for o in uvssl.get_loop()._live)


def _act_once_accepted(certs, peer_fn, act, read_cb=None, connect_cb=None):
    """A TLS server and a peer thread ``peer_fn(port, connected, acted)``, which sets
    ``connected`` once its TCP connect returned and waits for ``acted``. The loop calls
    ``act(server)`` 0.2 s after ``connected`` (the idle loop has accepted the connection by then,
    without a handshake), then sets ``acted``. Ends when the peer is done and the server saw an
    event; returns (peer thread, server, server events)."""
    connected = threading.Event()
    acted = threading.Event()
    h = LoopHarness(15)
    st: dict = {"events": []}

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            read_cb,
            lambda ev: (st["events"].append(ev), close_quietly(ev)),
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
            connect_cb=connect_cb,
        )
        st["srv"] = srv
        st["peer"] = PeerThread(peer_fn, srv.port, connected, acted)
        st["peer"].start()
        uvssl.interval(poll, 0.01)

    def poll():
        if connected.is_set() and "at" not in st:
            st["at"] = time.monotonic()
        if "at" in st and not acted.is_set() and time.monotonic() - st["at"] > 0.2:
            act(st["srv"])
            acted.set()

    h.run(start, until=lambda: "peer" in st and st["peer"].done and bool(st["events"]))
    return st["peer"], st["srv"], st["events"]


def test_tls_server_makes_no_socket_before_the_handshake(certs):
    # A connection that never sends a ClientHello costs no Python object; when it goes away,
    # the failed handshake is still reported on a socket, as for any accepted connection.
    def silent(port, connected, acted):
        s = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        connected.set()
        try:
            assert acted.wait(PEER_TIMEOUT)
        finally:
            s.close()

    counts: list[int] = []
    connects: list = []
    peer, _, events = _act_once_accepted(
        certs, silent, lambda srv: counts.append(_live_ssl_sockets()), connect_cb=connects.append
    )
    peer.result()
    assert counts == [0]
    assert not connects, "connect_cb ran for a connection with no handshake"
    assert len(events) == 1, events
    ev = events[0]
    assert isinstance(ev, uvssl.TcpSslError) and not isinstance(ev, uvssl.SslClosed), ev
    assert isinstance(ev.socket, uvssl.SslSocket)


def test_tls_server_closed_during_a_handshake_still_hands_the_connection_over(certs):
    # close() stops listening; a connection accepted before it completes its handshake later
    # and reaches connect_cb and read_cb like any other.
    def client(port, connected, acted):
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        connected.set()
        assert acted.wait(PEER_TIMEOUT)
        ctx = stdlib_client_context(certs)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(MESSAGE)
            return recv_until(s, b"\n")

    seen: list = []
    state: dict = {}

    def close_server(srv):
        state["srv"] = srv
        srv.close()

    peer, _, events = _act_once_accepted(
        certs,
        client,
        close_server,
        read_cb=lambda s, d: s.write(d),
        connect_cb=lambda s: seen.append((s, state["srv"].closed)),
    )
    assert peer.result() == MESSAGE
    assert len(seen) == 1
    sock, server_was_closed = seen[0]
    assert server_was_closed and isinstance(sock, uvssl.SslSocket)
    assert all(isinstance(ev, uvssl.SslClosed) for ev in events), events


def _one_flight_client(certs, port, payload, close_notify=False):
    """A TLS 1.3 client that sends its last handshake message, ``payload`` and, with
    ``close_notify``, its close_notify in one ``send()``, so that the server reads them in one go;
    then it reads what comes back until the server closes. Returns the plaintext read."""
    ctx = stdlib_client_context(certs)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    got = b""
    with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as s:
        for _ in range(50):  # bounded: a TLS 1.3 handshake takes one round trip
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    s.sendall(outgoing.read())
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("the server closed during the handshake") from None
                incoming.write(data)
        else:
            raise AssertionError("no handshake after 50 rounds")
        tls.write(payload)
        if close_notify:
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
        s.sendall(outgoing.read())  # Finished + the payload's record (+ close_notify)
        closed = False
        for _ in range(200):
            data = s.recv(65536)
            if not data:
                break
            incoming.write(data)
            try:
                while not closed:
                    chunk = tls.read(65536)
                    closed = not chunk  # the server's close_notify
                    got += chunk
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # the same, after our own close_notify
                closed = True
            if closed:
                break
    return got


def _first_read_server(certs, payload, connect_cb, *, close_notify=False, **loop_kw):
    """A uvssl TLS server echoing to ``_one_flight_client``; ``connect_cb(sock, log)`` runs
    first. Returns (what the client read, the server's log): ("connect",), ("read", data,
    whether read_cb ran inside the call that handed the connection over), ("event", ev)."""
    h = LoopHarness(15)
    log: list = []
    st: dict = {}

    def read_cb(sock, data):
        frame, inside = sys._getframe(), False
        while frame is not None:
            inside = inside or frame.f_code.co_name == "uvs_py_on_accept"
            frame = frame.f_back
        log.append(("read", data, inside))
        sock.write(data)
        if b"".join(e[1] for e in log if e[0] == "read") == payload and not close_notify:
            sock.close()

    def event_cb(ev):
        log.append(("event", ev))
        close_quietly(ev)

    def on_connect(sock):
        log.append(("connect",))
        connect_cb(sock, log)

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            read_cb,
            event_cb,
            certificate=str(certs.server_cert),
            key=str(certs.server_key),
            connect_cb=on_connect,
        )
        st["peer"] = PeerThread(_one_flight_client, certs, srv.port, payload, close_notify)
        st["peer"].start()

    h.run(start, until=lambda: "peer" in st and st["peer"].done, **loop_kw)
    return st["peer"].result(), log


def test_first_data_behind_the_handshake_comes_with_the_connect(certs):
    # The request that arrives with the client's Finished reaches read_cb right after
    # connect_cb, in the same call into Python that hands the connection over.
    got, log = _first_read_server(certs, MESSAGE, lambda sock, log: None)
    assert got == MESSAGE
    assert log[0] == ("connect",)
    assert log[1] == ("read", MESSAGE, True), log


def test_first_data_then_close_notify_in_one_read(certs):
    # Finished, data and close_notify in one segment: connect, read, then SslClosed, in order.
    got, log = _first_read_server(certs, MESSAGE, lambda sock, log: None, close_notify=True)
    assert got == MESSAGE
    assert [e[0] for e in log] == ["connect", "read", "event"], log
    assert log[1][1] == MESSAGE
    assert isinstance(log[2][1], uvssl.SslClosed) and not log[2][1].truncated


def test_first_data_waits_for_a_socket_paused_in_connect_cb(certs):
    def pause(sock, log):
        sock.pause_reading()

        def resume():
            log.append(("resume",))
            sock.resume_reading()

        uvssl.delay(resume, 0.1)

    got, log = _first_read_server(certs, MESSAGE, pause)
    assert got == MESSAGE
    assert [e[0] for e in log] == ["connect", "resume", "read"], log
    assert log[2][1] == MESSAGE


def test_first_data_is_dropped_for_a_socket_closed_in_connect_cb(certs):
    got, log = _first_read_server(certs, MESSAGE, lambda sock, log: sock.close())
    assert got == b""
    assert [e[0] for e in log] == ["connect"], log


def test_first_data_still_reaches_read_cb_when_connect_cb_raises(certs):
    caught: list = []

    def boom(sock, log):
        raise KeyError("connect_cb failed")

    got, log = _first_read_server(
        certs, MESSAGE, boom, catch_app_errors=True, default_event_cb=caught.append
    )
    assert got == MESSAGE
    assert [e[0] for e in log] == ["connect", "read"], log
    assert len(caught) == 1 and isinstance(caught[0], KeyError)


# The loop decrypts every TLS socket's records into one shared buffer, at most 256 KiB per step
# (csrc/uvs.h, UVS__READ_BUF_SIZE). Records of 3,128 bytes (3,150 on the wire: TLS 1.3 adds 22)
# make the second read of a socket (64 KiB first, then 256 KiB) bring 608 bytes of plaintext more
# than that, which stay decrypted inside OpenSSL while the socket is paused.
_HELD_RECORD = 3128
_HELD_RECORDS = 120  # 378,000 bytes on the wire: both reads find all they ask for queued


def _held_records_client(certs, port, go):
    """Sends ``_HELD_RECORDS`` records of ``_HELD_RECORD`` bytes of ``a`` once the server says
    "go", then reads until the server closes."""
    ctx = stdlib_client_context(certs)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert recv_exactly(s, 2) == b"go"
            go.set()
            for _ in range(_HELD_RECORDS):
                s.sendall(b"a" * _HELD_RECORD)  # one record each
            with contextlib.suppress(OSError, ssl.SSLError):
                for _ in range(100):
                    if not s.recv(65536):
                        break


def test_first_data_survives_connect_cb_resuming_another_tls_socket(server_cert_kw, certs):
    # A connection is handed over with the plaintext that came behind its handshake, which is
    # in the loop's decryption buffer. connect_cb may make another TLS socket decrypt into that
    # buffer: here it resumes socket A, whose records OpenSSL still holds. The hand-over's data
    # must reach read_cb as it came, not overwritten by A's.
    h = LoopHarness(15)
    st: dict = {"a": None, "a_got": [], "b_got": [], "capped": False}
    go = threading.Event()
    total = _HELD_RECORD * _HELD_RECORDS

    def queued() -> int:  # bytes waiting in the kernel for A
        buf = fcntl.ioctl(st["a_fd"].fileno(), termios.FIONREAD, struct.pack("i", 0))
        return struct.unpack("i", buf)[0]

    def resume_a_when_all_queued():
        if st["a"] is not None and go.is_set() and queued() >= total + 22 * _HELD_RECORDS:
            st["poll"].cancel()
            st["a"].resume_reading()

    def read_cb(sock, data):
        if sock is st["a"]:
            st["a_got"].append(data)
            if len(data) == 256 * 1024:  # the step stopped at the buffer's end: A stops here
                st["capped"] = True
                sock.pause_reading()
                st["b"] = PeerThread(_one_flight_client, certs, st["port"], MESSAGE, name="b")
                st["b"].start()
            elif sum(map(len, st["a_got"])) == total:
                sock.close()
                if not st["capped"]:
                    h.fail("A never got a full 256 KiB step: the setup did not hold records")
            return
        st["b_got"].append(data)
        sock.write(data)
        if sum(map(len, st["b_got"])) >= len(MESSAGE):
            sock.close()

    def connect_cb(sock):
        if st["a"] is None:  # A: room in the kernel for all it sends, read once it is queued
            st["a"] = sock
            st["a_fd"] = socket.socket(fileno=os.dup(sock.fileno()))
            st["a_fd"].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.pause_reading()
            sock.write(b"go")
            st["poll"] = uvssl.interval(resume_a_when_all_queued, 0.01)
        else:  # B, handed over with MESSAGE: A decrypts what OpenSSL kept for it
            st["a"].resume_reading()

    def start():
        srv = uvssl.tcp_ssl_server(
            LOCALHOST,
            0,
            read_cb,
            close_quietly,
            **server_cert_kw,
            connect_cb=connect_cb,
        )
        st["port"] = srv.port
        st["peer_a"] = PeerThread(_held_records_client, certs, srv.port, go, name="a")
        st["peer_a"].start()

    try:
        h.run(start, until=lambda: "b" in st and st["b"].done and st["peer_a"].done)
    finally:
        if "a_fd" in st:
            st["a_fd"].close()
    st["peer_a"].result()
    assert st["capped"], "A never got a full 256 KiB step: the setup did not hold records"
    assert b"".join(st["b_got"]) == MESSAGE
    assert st["b"].result() == MESSAGE
    assert b"".join(st["a_got"]) == b"a" * total


# -- a server closing a connection as soon as it is handed over ------------------------------------


@pytest.mark.parametrize("with_request", [False, True], ids=["idle", "request-in-handshake"])
def test_close_in_connect_cb_still_sends_close_notify(server_cert_kw, certs, with_request):
    """A TLS server that closes a connection in connect_cb (the moment the handshake is done)
    closes it gracefully: a uvssl client sees the peer's close_notify, not a truncation, and a
    strict stdlib client (suppress_ragged_eofs=False) sees a clean end."""
    events: list = []

    def strict_client(port: int) -> str:
        ctx = stdlib_client_context(certs)
        with socket.create_connection(("127.0.0.1", port), timeout=PEER_TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost",
                                 suppress_ragged_eofs=False) as s:
                if with_request:
                    s.sendall(b"GET")
                try:
                    return "clean" if s.recv(100) == b"" else "data"
                except ssl.SSLError as e:
                    return f"ssl error: {e}"

    def start():
        state = {"left": 2}

        def accepted(sock):
            sock.close()
            state["left"] -= 1
            if state["left"] == 0:
                server.close()

        server = uvssl.tcp_ssl_server(
            "127.0.0.1", 0, None, None, connect_cb=accepted,
            **server_cert_kw)
        data = b"GET" if with_request else None

        def first_done(ev):
            events.append(ev)
            ev.socket.close()
            peer = PeerThread(strict_client, server.port)
            peer.start()
            start.peer = peer

        uvssl.tcp_ssl_connect("localhost", server.port, None, first_done,
                              ca_file=str(certs.ca), data=data)

    run_loop(start, timeout=20)
    assert len(events) == 1
    assert isinstance(events[0], uvssl.SslClosed) and events[0].truncated is False, events
    assert start.peer.result() == "clean"


def test_peer_leaving_right_after_its_close_notify_is_a_clean_close(server_cert_kw, certs):
    """A client that closes at once after its handshake (close_notify, FIN, and a socket that
    answers the server's session tickets with a reset) ends a clean session: the server sees
    the connection, then SslClosed without truncation, and no broken-pipe error for the
    close_notify it sends back. Twenty times, since it is a race."""
    rounds = 20
    server_events: list = []
    accepted: list = []
    client_ctx = stdlib_client_context(certs)

    def start():
        state = {"done": 0}

        def on_server_event(ev):
            server_events.append(ev)
            ev.socket.close()

        server = uvssl.tcp_ssl_server(
            "127.0.0.1", 0, None, on_server_event, connect_cb=accepted.append,
            **server_cert_kw)

        def client_connected(sock):
            sock.close()
            state["done"] += 1
            if state["done"] < rounds:
                connect()
            else:
                uvssl.delay(server.close, 0.2)

        def connect():
            uvssl.tcp_ssl_connect("localhost", server.port, None, None, ssl_ctx=client_ctx,
                                  connect_cb=client_connected)

        connect()

    run_loop(start, timeout=20)
    assert len(accepted) == rounds
    assert [type(ev).__name__ for ev in server_events] == ["SslClosed"] * rounds, server_events
    assert not any(ev.truncated for ev in server_events), server_events
