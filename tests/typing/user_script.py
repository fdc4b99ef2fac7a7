"""A user's script, annotated the way the README shows: `mypy --strict` must pass on it
with uvssl installed as the README installs it (tests/test_typing.py runs that check)."""

from __future__ import annotations

import os
from typing import Optional

import uvssl
from uvssl.openssl import address, lib

replies: list[bytes] = []


def on_server_read(sock: uvssl.Socket, data: bytes) -> None:
    sock.write(data.upper())


def on_client_read(sock: uvssl.Socket, data: bytes) -> None:
    replies.append(data)
    uvssl.close_socket(sock)


def on_line(sock: uvssl.Socket, stream: uvssl.AsyncStream) -> None:
    while (line := stream.readline(limit=1024)) is not None:
        stream.write(line)
    header: Optional[bytes] = stream.read_exactly(4)
    if header is not None:
        stream.unread(header)
    frame: Optional[bytes] = stream.read_until(b"\r\n\r\n")
    print(frame, stream.available, stream.read(64))


def on_event(ev: uvssl.SocketError) -> None:
    peer: Optional[tuple[str, int]] = ev.socket.remote_address if ev.socket else None
    if not isinstance(ev, uvssl.TcpEof):
        print(f"{ev.identifier} from {peer}: {ev}")


def on_connect(sock: uvssl.Socket) -> None:
    sock.set_options(nodelay=True)


def on_tls_connect(sock: uvssl.SslSocket) -> None:
    cert: Optional[uvssl.X509Certificate] = sock.peer_certificate
    print(sock.version, sock.cipher, cert.subject if cert else None)


def configure(ptr: uvssl.openssl.ffi.CData) -> None:
    lib.SSL_CTX_set_options(ptr, uvssl.SSL_OP_NO_TLSv1_3)
    print(hex(address(ptr)))


# keep the annotated callbacks' types checked against uvssl's exported callback types
read_cb: uvssl.ReadCallback = on_server_read
stream_cb: uvssl.StreamReadCallback = on_line
event_cb: uvssl.EventCallback = on_event
connect_cb: uvssl.ConnectCallback = on_connect


def main() -> None:
    server = uvssl.tcp_server("127.0.0.1", 0, on_server_read, on_event, connect_cb=on_connect)
    uvssl.tcp_connect("127.0.0.1", server.port, on_client_read, on_event, data=b"hello")
    timer: uvssl.Timer = uvssl.delay(uvssl.exit_event_loop, 5.0)
    timer.cancel()
    server.close()


def later() -> None:
    sock: uvssl.Socket = uvssl.init_tcp_socket(on_client_read, on_event, data=b"x")
    uvssl.connect_tcp_socket(sock, "localhost", 443)
    tls: uvssl.SslSocket = uvssl.init_tcp_ssl_socket(
        on_client_read, on_event, connect_cb=on_tls_connect, ca_data=open("ca.pem").read()
    )
    uvssl.connect_tcp_socket(tls, "localhost", 443)


def on_datagram(sock: uvssl.UdpSocket, data: bytes, sender: uvssl.Address) -> None:
    sock.send_to(data, *sender)


datagram_cb: uvssl.DatagramCallback = on_datagram


def on_proxied(sock: uvssl.Socket) -> None:
    client: Optional[tuple[str, int]] = sock.remote_address
    print(client, sock.proxy_address, sock.proxy_tlvs)


def with_udp_and_proxy() -> None:
    udp = uvssl.udp_socket(on_datagram, on_event, local_host="127.0.0.1")
    udp.send_to(b"x", "127.0.0.1", udp.local_address[1])
    behind = uvssl.tcp_ssl_server(
        "127.0.0.1",
        0,
        None,
        on_event,
        connect_cb=on_proxied,
        ssl_ctx=ctx,
        proxy_protocol=True,
        proxy_protocol_from=("127.0.0.1", "10.0.0.0/8"),
    )
    behind.ssl_ctx = in_memory
    new_cert: Optional[uvssl.X509Certificate] = ctx.reload()
    print(new_cert)
    udp.close()
    behind.close()


def worker_setup() -> None:
    uvssl.tcp_ssl_server("0.0.0.0", 8443, on_server_read, on_event, ssl_ctx=ctx)


uvssl.start_event_loop(main)
uvssl.start_event_loop(later)
keys = [uvssl.tickets.new_key()]
in_memory = uvssl.Context.server(
    certificate_data=open("server-chain.pem", "rb").read(),
    key_data=open("server.key").read(),
    session_ticket_keys=keys,
    keylog_file=os.environ.get("SSLKEYLOGFILE"),
)
uvssl.start_event_loop(with_udp_and_proxy)
codes: list[int] = uvssl.serve_workers(2, worker_setup, graceful_timeout=10.0)
in_memory.rotate_session_ticket_keys(uvssl.tickets.rotated(keys, uvssl.tickets.new_key()))
ctx = uvssl.Context.server(
    certificate="server.pem",
    key="server.key",
    min_version="tls-v1-2",
    alpn=["h2"],
    ctx_configure_callback=configure,
)
tls = uvssl.tcp_ssl_server("127.0.0.1", 0, None, on_event, ssl_ctx=ctx)
print(ctx.pointer, tls.port, uvssl.openssl_version()["built"])
