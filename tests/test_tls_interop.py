"""Interoperability and negotiation: uvssl against the stdlib ``ssl`` module (in
threads) and ``openssl s_client`` / ``s_server``; protocol versions, ALPN, ``ssl_ctx`` forms
and SSL_OP_* options taking effect."""

from __future__ import annotations

import ctypes
import socket
import ssl
import subprocess
from typing import Any

import pytest
from tls_support import (
    LOCALHOST,
    MESSAGE,
    PEER_TIMEOUT,
    LineReader,
    LoopHarness,
    PeerThread,
    assert_echoed,
    check_verification_failure,
    close_quietly,
    kill_process,
    listening_socket,
    openssl_binary,
    recv_until,
    run_pair,
    serve_to_peer,
    server_der,
    start_s_server,
    stdlib_client_context,
    stdlib_server_context,
)

import uvssl
from uvssl.openssl import ffi, lib

pytestmark = pytest.mark.timeout(60)


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
    info: dict[Any, Any] = {}

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
    seen: dict[Any, Any] = {}

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
    state: dict[Any, Any] = {}

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
        info: dict[Any, Any] = {}

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
    sctx = uvssl.Context.server(**server_cert_kw, min_version="tls-v1-3")
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[{}])
    assert_echoed(r)
    assert r.clients[0]["version"] == "TLSv1.3"
    assert r.server_info[0]["version"] == "TLSv1.3"


def test_version_ranges_that_do_not_meet_fail(server_cert_kw, certs):
    sctx = uvssl.Context.server(**server_cert_kw, min_version="tls-v1-3")
    cctx = uvssl.Context.client(max_version="tls-v1-2", ca_file=str(certs.ca))
    r = run_pair(certs, server_kw=dict(ssl_ctx=sctx), clients=[dict(ssl_ctx=cctx)])
    assert not r.clients[0]["connected"]
    assert isinstance(r.clients[0]["events"][0], uvssl.SslFailure)
    assert isinstance(r.server_events[0], uvssl.SslFailure)
    assert not r.server_info


def test_alpn_negotiated_on_both_sides(server_cert_kw, certs):
    sctx = uvssl.Context.server(**server_cert_kw, alpn=["http/1.1"])
    r = run_pair(
        certs,
        server_kw=dict(ssl_ctx=sctx),
        clients=[dict(alpn=["h2", "http/1.1"], server_hostname="localhost")],
    )
    assert_echoed(r)
    assert r.clients[0]["alpn"] == "http/1.1"
    assert r.server_info[0]["alpn"] == "http/1.1"


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
    sctx = uvssl.Context.server(**server_cert_kw, alpn=["proto-x"])
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
    state: dict[Any, Any] = {}

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
        start,
        until=lambda: state.get("tls_ok") and state["peer"].done and len(server_events) >= 2,
    )
    state["peer"].result()
    first = server_events[0]
    assert isinstance(first, uvssl.TcpSslError) and not isinstance(first, uvssl.SslClosed), first
    assert first.codes, first
    assert len(first.strings) == len(first.codes)
    assert bytes(got) == MESSAGE
    assert isinstance(server_events[1], uvssl.SslClosed)


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
                proc.stdin.write(line)  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]

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
            proc.stdin.close()  # type: ignore[union-attr]
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
