r"""From asynchronous to synchronous and back, on one TCP connection (runnable).

1. A client connects with ``tcp_connect`` and upgrades with ``attach_ssl`` (STARTTLS).
2. It ``detach_ssl``s: both sides go on in plaintext.
3. It pauses reading, duplicates the descriptor and closes the uvssl socket; the duplicate keeps
   the TCP connection alive, and a blocking ``make_ssl_client_stream`` takes it over: TLS again,
   now synchronous.

The server is a uvssl loop in a thread that speaks a tiny line protocol:
"STARTTLS\n" -> "OK\n" then TLS; the peer's close_notify -> back to plaintext; "TLS\n" -> "OK\n"
then TLS again; everything else is echoed in upper case.

    python examples/async_to_sync.py
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading

import trustme

import uvssl


def main() -> None:
    """Run the whole exchange and print what each phase saw."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    tmp = tempfile.mkdtemp()
    chain, key, cafile = (os.path.join(tmp, n) for n in ("chain.pem", "key.pem", "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(chain)
    cert.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(cafile)
    server_ctx = uvssl.Context.server(certificate=chain, key=key)
    client_ctx = uvssl.Context.client(ca_file=cafile)

    ready = threading.Event()
    port: list[int] = []

    def server_thread() -> None:
        def on_read(sock: uvssl.Socket, data: bytes) -> None:
            for line in data.splitlines(keepends=True):
                if line in (b"STARTTLS\n", b"TLS\n"):
                    sock.write(b"OK\n")
                    uvssl.attach_ssl(sock, ssl_ctx=server_ctx, ssl_side="server")
                else:
                    sock.write(line.upper())

        def on_event(ev: BaseException) -> None:
            sock = getattr(ev, "socket", None)
            if isinstance(ev, uvssl.SslClosed) and not ev.truncated:
                uvssl.detach_ssl(sock)  # answer close_notify, go on in plaintext
            elif sock is not None:
                sock.close()
                server.close()
                guard.cancel()

        def start() -> None:
            nonlocal server, guard
            server = uvssl.tcp_server("127.0.0.1", 0, on_read, on_event)
            port.append(server.port)
            ready.set()
            guard = uvssl.delay(uvssl.exit_event_loop, 20)  # a bound, in case of trouble

        server: uvssl.TcpServer
        guard: uvssl.Timer
        uvssl.start_event_loop(start)

    t = threading.Thread(target=server_thread, daemon=True)
    t.start()
    ready.wait(10)

    handoff: dict[str, int] = {}

    def client() -> None:
        phase = ["plain"]

        def on_read(sock: uvssl.Socket, data: bytes) -> None:
            print(f"async client, {phase[0]:>9}: {data!r}")
            if phase[0] == "plain" and data == b"OK\n":
                phase[0] = "tls"
                uvssl.attach_ssl(sock, ssl_ctx=client_ctx, ssl_side="client",
                                 tlsext_host_name="localhost")
                sock.write(b"secret over TLS\n")
            elif phase[0] == "tls":
                phase[0] = "plain-2"
                uvssl.detach_ssl(sock)
                sock.write(b"plaintext again\n")  # leaves once the detach completes
            elif phase[0] == "plain-2":
                # hand the connection to blocking code: stop reading, keep a duplicate of the
                # descriptor, and let uvssl close its own
                sock.pause_reading()
                handoff["fd"] = os.dup(sock.fileno())
                sock.write(b"TLS\n")
                sock.close()
                guard.cancel()

        uvssl.tcp_connect("127.0.0.1", port[0], on_read, None, data=b"STARTTLS\n")
        guard = uvssl.delay(uvssl.exit_event_loop, 20)

    uvssl.start_event_loop(client)

    raw = socket.socket(fileno=handoff["fd"])
    raw.setblocking(True)
    raw.settimeout(10)
    assert raw.recv(3) == b"OK\n"  # the server's answer to "TLS\n", still plaintext
    stream = uvssl.make_ssl_client_stream(raw, context=client_ctx, server_hostname="localhost")
    stream.write(b"now synchronous\n")
    print(f"sync stream, {stream.version}: {stream.read(100)!r}")
    stream.close()
    t.join(25)


if __name__ == "__main__":
    main()
