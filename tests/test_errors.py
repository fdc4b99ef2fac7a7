"""Error messages that help (issue 15): what failed, on what, and what to do, never key material
or file contents, never a private function's name, never the same thing twice.

Real sockets on 127.0.0.1 and trustme certificates throughout; see tls_support for the harness.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from tls_support import (
    LOCALHOST,
    PEER_TIMEOUT,
    LoopHarness,
    PeerThread,
    close_quietly,
    listening_socket,
    run_pair,
    serve_to_peer,
)

import uvssl

pytestmark = pytest.mark.timeout(60)

X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_HOSTNAME_MISMATCH = 62


def pem_body(path: Path) -> str:
    """The base64 lines of a PEM file: what must never reach a message."""
    return "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))


def texts(exc: BaseException) -> str:
    """Everything an exception shows or carries as text: str, repr, args and filename."""
    parts = [str(exc), repr(exc), *(str(a) for a in exc.args)]
    for attr in ("filename", "filename2", "message"):
        parts.append(str(getattr(exc, attr, "")))
    return "\n".join(parts)


def assert_not_echoed(exc: BaseException, *paths: Path) -> None:
    shown = texts(exc)
    for path in paths:
        data = path.read_text()
        body = pem_body(path)
        assert body[:40] not in shown, shown
        assert body[-40:] not in shown, shown
        for line in data.splitlines():
            if not line.startswith("-----") and len(line) > 16:
                assert line not in shown, (line, shown)


def repeats_itself(text: str) -> bool:
    """True for "cannot write while write"-style messages: a "while X" / "during X" / "(during
    X)" whose X the text already said before it.
    """
    for m in re.finditer(r"\b(?:while|during) (?:the )?(\w+(?: \w+)?)", text):
        if re.search(r"\b" + re.escape(m.group(1)) + r"\b", text[: m.start()]):
            return True
    return False


def test_repeats_itself_detects_the_old_composition():
    assert repeats_itself("socket is closed; cannot write while write (identifier=shutdown)")
    assert repeats_itself("TLS handshake failed: x (during handshake)")
    assert not repeats_itself("ECONNRESET: connection reset by peer while reading")


# -- key material and file contents are never echoed ---------------------------------------------


@pytest.mark.parametrize("as_type", [bytes, str])
@pytest.mark.parametrize("option", ["certificate", "key", "ca_file", "crl_file", "ca_directory"])
def test_pem_given_as_a_path_is_described_not_shown(certs, option, as_type):
    source = certs.server_key if option == "key" else certs.server_cert
    value = as_type(source.read_bytes()) if as_type is bytes else source.read_text()
    kw: dict[str, Any] = {option: value}
    if option == "key":
        kw["certificate"] = str(certs.server_cert)
    build = uvssl.Context.server if option in ("certificate", "key") else uvssl.Context.client
    with pytest.raises(FileNotFoundError) as ei:
        build(**kw)
    exc = ei.value
    assert_not_echoed(exc, source)
    assert exc.errno == errno.ENOENT and exc.filename is None
    text = str(exc)
    assert text.startswith(f"[Errno 2] {option}= takes the path of "), text
    assert "looks like PEM data" in text and "not shown" in text, text
    assert f"{len(value):,} " in text, text
    assert "write it to a file" in text, text
    # the PEM label says what was pasted (it is not secret): a private key, here
    if option == "key":
        assert "PRIVATE KEY" in text, text


def test_private_key_bytes_as_certificate_never_reach_the_log(certs):
    """The case seen by a new user: the key's bytes given as certificate=."""
    key = certs.server_key.read_bytes()
    for build in (
        lambda: uvssl.Context.server(certificate=key, key=str(certs.server_key)),
        lambda: uvssl.make_ssl_server_context(certificate=key),
        lambda: uvssl.create_ssl_server_context(certificate=key),
    ):
        with pytest.raises(FileNotFoundError) as ei:
            build()
        assert_not_echoed(ei.value, certs.server_key)
        assert "EC PRIVATE KEY" in str(ei.value) or "PRIVATE KEY" in str(ei.value)


def test_der_bytes_and_other_non_paths_are_described(certs):
    der = ssl.PEM_cert_to_DER_cert(certs.ca.read_text())
    with pytest.raises(FileNotFoundError) as ei:
        uvssl.Context.client(ca_file=der)
    assert "DER or other binary data" in str(ei.value) and f"{len(der):,} bytes" in str(ei.value)
    assert repr(der)[2:30] not in texts(ei.value)
    long_value = "x" * 1000
    with pytest.raises(FileNotFoundError) as ei:
        uvssl.Context.client(ca_file=long_value)
    assert long_value[:100] not in texts(ei.value) and "1,000 characters" in str(ei.value)
    with pytest.raises(FileNotFoundError) as ei:
        uvssl.Context.client(ca_file="/tmp/secret\x00tail")
    assert "secret" not in texts(ei.value) and "NUL" in str(ei.value)


def test_a_missing_file_is_named_by_its_path(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(FileNotFoundError) as ei:
        uvssl.Context.server(certificate=missing)
    assert ei.value.filename == str(missing)
    assert str(ei.value) == f"[Errno 2] certificate=: no such file or directory: '{missing}'"
    with pytest.raises(TypeError, match=r"^ca_file= takes the path of .*, not int$"):
        uvssl.Context.client(ca_file=5)


def test_pem_through_the_socket_and_stream_entry_points_is_not_echoed(certs):
    cert = certs.server_cert.read_bytes()
    key = certs.server_key.read_text()
    state: dict[str, BaseException] = {}

    def start():
        for name, call in (
            ("server", lambda: uvssl.tcp_ssl_server(LOCALHOST, 0, None, certificate=cert)),
            (
                "server key",
                lambda: uvssl.tcp_ssl_server(
                    LOCALHOST, 0, None, certificate=str(certs.server_cert), key=key
                ),
            ),
            ("client", lambda: uvssl.tcp_ssl_connect(LOCALHOST, 1, None, ca_file=cert)),
        ):
            try:
                call()
            except FileNotFoundError as exc:
                state[name] = exc

    h = LoopHarness()
    h.run(start, until=lambda: True)
    assert set(state) == {"server", "server key", "client"}
    for exc in state.values():
        assert_not_echoed(exc, certs.server_cert, certs.server_key)
    with socket.socket() as s:
        with pytest.raises(FileNotFoundError) as ei:
            uvssl.make_ssl_server_stream(s, certificate=str(certs.server_cert), key=key)
        assert_not_echoed(ei.value, certs.server_key)
        assert s.fileno() != -1


def test_verify_given_a_path_points_to_ca_file(certs):
    pem = certs.ca.read_text()
    with pytest.raises(ValueError, match="ca_file=") as ei:
        uvssl.Context.client(verify=pem)
    assert_not_echoed(ei.value, certs.ca)
    with pytest.raises(TypeError, match=r"verify must be a bool, not str \(a CA file goes in"):
        uvssl.tcp_ssl_connect(LOCALHOST, 1, None, verify=str(certs.ca))  # type: ignore[arg-type]


# -- load failures say what the file holds (without showing it) and what to do -------------------


def test_key_file_given_as_certificate(certs):
    with pytest.raises(uvssl.SslFailure) as ei:
        uvssl.Context.server(certificate=str(certs.server_key), key=str(certs.server_key))
    text = str(ei.value)
    assert f"certificate={str(certs.server_key)!r}" in text
    assert "holds a private key, not a certificate" in text and "key=" in text
    assert ei.value.what == "load certificate" and ei.value.strings
    assert_not_echoed(ei.value, certs.server_key)


def test_certificate_without_key(certs):
    with pytest.raises(uvssl.SslFailure, match="private key") as ei:
        uvssl.Context.server(certificate=str(certs.server_cert))
    text = str(ei.value)
    assert "key= was not given" in text and str(certs.server_cert) in text
    assert_not_echoed(ei.value, certs.server_cert)


def test_encrypted_key_without_or_with_a_wrong_password(certs):
    with pytest.raises(uvssl.SslFailure) as ei:
        uvssl.Context.server(
            certificate=str(certs.server_cert), key=str(certs.server_key_encrypted)
        )
    assert "encrypted: give its password" in str(ei.value)
    with pytest.raises(uvssl.SslFailure, match="password") as ei:
        uvssl.Context.server(
            certificate=str(certs.server_cert),
            key=str(certs.server_key_encrypted),
            certificate_password="wrong",
        )
    assert "wrong" not in texts(ei.value)
    assert_not_echoed(ei.value, certs.server_key_encrypted)
    # each OpenSSL error once, however often OpenSSL queued it
    shown = str(ei.value).split("; OpenSSL: ", 1)[1].split("; ")
    assert len(shown) == len(set(shown)) == len(dict.fromkeys(ei.value.strings))


def test_key_of_another_certificate(certs):
    with pytest.raises(uvssl.SslFailure, match="does not match") as ei:
        uvssl.Context.server(certificate=str(certs.server_cert), key=str(certs.untrusted_key))
    text = str(ei.value)
    assert str(certs.server_cert) in text and str(certs.untrusted_key) in text
    assert_not_echoed(ei.value, certs.untrusted_key, certs.server_cert)


def test_der_key_without_keytype(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    der = tmp_path / "server.der"
    der.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(uvssl.SslFailure, match="keytype='der'"):
        uvssl.Context.server(certificate=str(certs.server_cert), key=str(der))


def test_bad_ciphers_say_which_option_takes_what():
    with pytest.raises(uvssl.SslFailure, match=r"ciphers='NOPE'.*ciphersuites="):
        uvssl.Context.client(ciphers="NOPE")
    with pytest.raises(uvssl.SslFailure, match=r"ciphersuites='NOPE'.*TLS_AES_128_GCM_SHA256"):
        uvssl.Context.client(ciphersuites="NOPE")


# -- an unknown option is reported by the public function the application called -----------------


def _context_calls() -> list[tuple[str, Callable[..., Any]]]:
    return [
        ("Context.client", uvssl.Context.client),
        ("Context.server", uvssl.Context.server),
        ("make_ssl_client_context", uvssl.make_ssl_client_context),
        ("make_ssl_server_context", uvssl.make_ssl_server_context),
        ("create_ssl_client_context", uvssl.create_ssl_client_context),
        ("create_ssl_server_context", uvssl.create_ssl_server_context),
    ]


@pytest.mark.parametrize("name,fn", _context_calls(), ids=[n for n, _ in _context_calls()])
def test_unknown_context_option_names_the_public_function(name, fn):
    with pytest.raises(TypeError) as ei:
        fn(ca_flie="/etc/ssl/ca.pem")
    assert str(ei.value) == (
        f"{name}() got an unexpected keyword argument 'ca_flie' (did you mean 'ca_file'?)"
    )
    with pytest.raises(TypeError) as ei:
        fn(zzz=1)
    assert str(ei.value) == f"{name}() got an unexpected keyword argument 'zzz'"


def test_unknown_stream_option_names_the_public_function(certs):
    ctx = uvssl.Context.client(ca_file=str(certs.ca))
    with socket.socket() as s:
        for fn, name in (
            (uvssl.make_ssl_client_stream, "make_ssl_client_stream"),
            (uvssl.make_ssl_server_stream, "make_ssl_server_stream"),
        ):
            for extra in ({}, {"context": ctx}):
                with pytest.raises(TypeError) as ei:
                    fn(s, certficate="x", **extra)
                assert str(ei.value) == (
                    f"{name}() got an unexpected keyword argument 'certficate' "
                    "(did you mean 'certificate'?)"
                )
                assert "_build" not in str(ei.value)
        # a real Context option that a given context fixes is refused as such, not as unknown
        with pytest.raises(ValueError, match=r"sni_callback cannot be given with context="):
            uvssl.make_ssl_client_stream(s, context=ctx, sni_callback=lambda *a: None)
        assert s.fileno() != -1


def _socket_calls() -> list[tuple[str, Callable[[], Any], str, str]]:
    return [
        (
            "tcp_connect",
            lambda: uvssl.tcp_connect(LOCALHOST, 1, None, read_timout=1),  # type: ignore[call-arg]
            "read_timout",
            "read_timeout",
        ),
        (
            "tcp_server",
            lambda: uvssl.tcp_server(LOCALHOST, 0, None, reuseport=True),  # type: ignore[call-arg]
            "reuseport",
            "reuse_port",
        ),
        ("tcp_open", lambda: uvssl.tcp_open(0, None, conect_cb=None), "conect_cb", "connect_cb"),  # type: ignore[call-arg]
        (
            "tcp_ssl_connect",
            lambda: uvssl.tcp_ssl_connect(LOCALHOST, 1, None, ca_flie="x"),  # type: ignore[call-arg]
            "ca_flie",
            "ca_file",
        ),
        (
            "tcp_ssl_server",
            lambda: uvssl.tcp_ssl_server(LOCALHOST, 0, None, certficate="x"),  # type: ignore[call-arg]
            "certficate",
            "certificate",
        ),
        ("attach_ssl", lambda: uvssl.attach_ssl(None, ssl_sid="client"), "ssl_sid", "ssl_side"),  # type: ignore[arg-type, call-arg]
        (
            "with_event_loop",
            lambda: uvssl.with_event_loop(lambda: None, catch_app_error=True),
            "catch_app_error",
            "catch_app_errors",
        ),
    ]


@pytest.mark.parametrize(
    "name,call,wrong,right", _socket_calls(), ids=[c[0] for c in _socket_calls()]
)
def test_unknown_keyword_names_the_function_and_suggests(name, call, wrong, right):
    # the keywords are checked before anything else: no loop is needed to see the error
    with pytest.raises(TypeError) as ei:
        call()
    assert str(ei.value) == (
        f"{name}() got an unexpected keyword argument {wrong!r} (did you mean {right!r}?)"
    )


def test_a_type_error_from_inside_passes_through_the_hints():
    with pytest.raises(TypeError, match=r"^host must be a str, not int$"):
        uvssl.tcp_connect(5, 1, None, read_timeout=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^socket must be a uvssl Socket, not NoneType$"):
        uvssl.attach_ssl(None, ssl_side="client")  # type: ignore[arg-type]


# -- no message repeats itself --------------------------------------------------------------------


def test_operations_on_a_closed_socket_do_not_repeat_themselves():
    seen: dict[str, BaseException] = {}

    def start():
        srv = uvssl.tcp_server(LOCALHOST, 0, None, close_quietly)

        def connected(sock):
            sock.close()
            srv.close()
            for name, op in (
                ("write", lambda: sock.write(b"x")),
                ("write_socket_data", lambda: uvssl.write_socket_data(sock, b"x")),
                ("fileno", sock.fileno),
                ("shutdown", sock.shutdown),
                ("set_options", lambda: sock.set_options(nodelay=True)),
                ("set_timeouts", lambda: sock.set_timeouts(1, 1)),
                ("pause_reading", sock.pause_reading),
                ("resume_reading", sock.resume_reading),
                ("set_write_buffer_limits", lambda: sock.set_write_buffer_limits(10, 5)),
                ("attach_ssl", lambda: uvssl.attach_ssl(sock)),
                ("detach_ssl", lambda: uvssl.detach_ssl(sock)),
            ):
                try:
                    op()
                except uvssl.SocketClosed as exc:
                    seen[name] = exc

        uvssl.tcp_connect(LOCALHOST, srv.port, None, close_quietly, connect_cb=connected)

    h = LoopHarness()
    h.run(start, until=lambda: len(seen) == 11)
    for name, exc in seen.items():
        text = str(exc)
        assert not repeats_itself(text), (name, text)
        assert "while" not in text and "during" not in text, (name, text)
        assert text.startswith("socket is closed; cannot "), (name, text)
        assert exc.identifier == "shutdown" and exc.action, (name, exc.action)  # type: ignore[attr-defined]
    assert str(seen["write"]) == "socket is closed; cannot write (identifier=shutdown)"
    assert seen["write"].action == "write"  # type: ignore[attr-defined]
    assert seen["attach_ssl"].action == "attach TLS"  # type: ignore[attr-defined]


def test_the_action_is_added_only_when_the_message_lacks_it():
    reset = uvssl.TcpError(
        "ECONNRESET: connection reset by peer", code=errno.ECONNRESET, action="read"
    )
    assert str(reset) == (
        "ECONNRESET: connection reset by peer while reading (identifier=connection-reset, "
        f"errno={errno.ECONNRESET})"
    )
    assert reset.action == "read"
    said = uvssl.TcpError("cannot write: the socket is closing", action="write")
    assert str(said) == "cannot write: the socket is closing"  # no "identifier=unknown" noise
    tls = uvssl.SslFailure("TLS handshake failed", what="handshake", strings=("a", "a", "b"))
    assert str(tls) == "TLS handshake failed; OpenSSL: a; b"
    assert tls.strings == ("a", "a", "b") and tls.what == tls.action == "handshake"
    plain = uvssl.SslFailure("the handshake timer fired", what="read")
    assert str(plain) == "the handshake timer fired while reading"
    for exc in (reset, said, tls, plain):
        assert not repeats_itself(str(exc)), str(exc)
        assert str(pickle.loads(pickle.dumps(exc))) == str(exc)


def test_timeout_and_eof_events_do_not_repeat_themselves():
    events: list[BaseException] = []

    # the server closes its second connection at once: an EOF for that client
    def start_all():
        state: dict[str, Any] = {"n": 0}

        def accepted(sock):
            state["n"] += 1
            if state["n"] == 2:
                sock.close()

        srv = uvssl.tcp_server(LOCALHOST, 0, None, close_quietly, connect_cb=accepted)

        def on_event(ev):
            events.append(ev)
            close_quietly(ev)
            if len(events) == 2:
                srv.close()

        uvssl.tcp_connect(
            LOCALHOST,
            srv.port,
            None,
            on_event,
            read_timeout=0.3,
            connect_cb=lambda s: uvssl.tcp_connect(LOCALHOST, srv.port, None, on_event),
        )

    h = LoopHarness()
    h.run(start_all, until=lambda: len(events) >= 2)
    kinds = {type(ev) for ev in events}
    assert kinds == {uvssl.TcpTimeout, uvssl.TcpEof}, events
    for ev in events:
        assert not repeats_itself(str(ev)), str(ev)
        assert ev.action == "read"  # type: ignore[attr-defined]
    timeout = next(ev for ev in events if isinstance(ev, uvssl.TcpTimeout))
    assert "read_timeout" in str(timeout) and "while" not in str(timeout)


# -- TLS: a verify result only when verification failed ------------------------------------------


def test_server_side_handshake_failure_shows_no_verify_result_0(certs):
    # the client does not trust the server: it aborts with an alert; the server's event
    r = run_pair(certs, clients=[dict(ca_file=str(certs.other_ca), server_hostname="localhost")])
    assert len(r.server_events) == 1
    ev = r.server_events[0]
    assert isinstance(ev, uvssl.SslFailure), repr(ev)
    assert ev.verify_result == 0 and ev.verify_result_string == "ok"  # attributes kept
    text = str(ev)
    assert "verify result" not in text, text
    assert not repeats_itself(text), text
    assert re.match(
        r"TLS handshake with 127\.0\.0\.1 port \d+ failed: the peer does not trust the CA that "
        r"issued ",
        text,
    ), text
    assert "this server's certificate" in text, text
    assert "; OpenSSL: " in text and "unknown ca" in text, text
    assert text.count("unknown ca") == 1, text


def test_client_verification_failure_shows_its_verify_result(certs):
    r = run_pair(certs, clients=[dict(ca_file=str(certs.other_ca), server_hostname="localhost")])
    (ev,) = r.client_events
    assert isinstance(ev, uvssl.SslVerificationFailure), repr(ev)
    assert ev.verify_result == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    text = str(ev)
    assert f"verify result {ev.verify_result}" in text, text
    assert text.count(ev.verify_result_string) == 1, text  # type: ignore[arg-type]
    assert "the server's certificate did not verify" in text and "ca_file=" in text, text
    assert not repeats_itself(text), text


def test_host_name_mismatch_names_the_host(certs):
    r = run_pair(certs, clients=[dict(server_hostname="wrong.example")])
    ev = r.client_events[0]
    assert isinstance(ev, uvssl.SslVerificationFailure), repr(ev)
    assert ev.verify_result == X509_V_ERR_HOSTNAME_MISMATCH
    text = str(ev)
    assert "'wrong.example'" in text and "server_hostname=" in text, text
    assert f"verify result {X509_V_ERR_HOSTNAME_MISMATCH}" in text
    server_ev = r.server_events[0]
    assert "verify result" not in str(server_ev), str(server_ev)
    assert "rejected this server's certificate" in str(server_ev), str(server_ev)


def test_plain_http_to_a_tls_port(certs):
    def peer(port):
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                s.recv(100)
            except OSError:
                pass

    p, events = serve_to_peer(peer, certs=certs, until=lambda evs: evs)
    p.result()
    assert len(events) == 1 and isinstance(events[0], uvssl.SslFailure), events
    text = str(events[0])
    assert "plain HTTP request" in text and "verify result" not in text, text


def test_required_client_certificate_missing(certs):
    sctx = uvssl.Context.server(
        certificate=str(certs.server_cert),
        key=str(certs.server_key),
        verify="required",
        ca_file=str(certs.ca),
    )

    def peer(port):
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.recv(10)
            except (ssl.SSLError, OSError):
                pass

    p, events = serve_to_peer(peer, certs=certs, ssl_ctx=sctx, until=lambda evs: evs)
    p.result()
    text = str(events[0])
    assert "sent no certificate" in text and "verify='required'" in text, text
    assert "verify result" not in text, text


def test_stream_failures_show_a_verify_result_only_when_verification_failed(certs):
    # a server stream whose client rejects the certificate: no "verify result 0"
    ls = listening_socket()
    port = ls.getsockname()[1]

    def client():
        ctx = ssl.create_default_context(cafile=str(certs.other_ca))
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as raw:
            try:
                ctx.wrap_socket(raw, server_hostname="localhost")
            except ssl.SSLError:
                pass

    peer = PeerThread(client)
    peer.start()
    conn, _ = ls.accept()
    ls.close()
    conn.settimeout(PEER_TIMEOUT)
    stream = uvssl.make_ssl_server_stream(
        conn, certificate=str(certs.server_cert), key=str(certs.server_key)
    )
    with pytest.raises(uvssl.SslFailure) as ei:
        uvssl.ssl_do_handshake(stream)
    stream.close()
    peer.result()
    assert ei.value.verify_result == 0
    assert "verify result" not in str(ei.value), str(ei.value)
    assert "does not trust" in str(ei.value), str(ei.value)

    # a client stream that does not trust the server: the verify result is shown
    ls = listening_socket()
    port = ls.getsockname()[1]

    def server():
        c, _ = ls.accept()
        ls.close()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
        c.settimeout(PEER_TIMEOUT)
        try:
            ctx.wrap_socket(c, server_side=True)
        except (ssl.SSLError, OSError):
            c.close()

    peer = PeerThread(server)
    peer.start()
    s = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
    stream = uvssl.make_ssl_client_stream(
        s, ca_file=str(certs.other_ca), server_hostname="localhost"
    )
    with pytest.raises(uvssl.SslVerificationFailure) as ei:
        uvssl.ssl_do_handshake(stream)
    stream.close()
    peer.result()
    text = str(ei.value)
    assert f"verify result {ei.value.verify_result}" in text and ei.value.verify_result != 0
    assert "ca_file=" in text and not repeats_itself(text), text


# -- the command line ------------------------------------------------------------------------------


def test_serve_reports_a_bad_certificate_without_a_traceback(certs):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "uvssl", "serve", "--cert", str(certs.server_key)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith("uvssl serve: --cert/--key: cannot load certificate="), (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert pem_body(certs.server_key)[:40] not in proc.stderr
