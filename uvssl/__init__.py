"""uvssl: high-throughput TCP and TLS networking for Python.

A libuv event loop and an OpenSSL TLS engine run natively in C; Python gets callbacks, socket
objects, TLS contexts and, when it wants them, the raw ``SSL_CTX*`` / ``SSL*`` handles.
See README.md for a tour; ``help(uvssl.tcp_connect)`` and friends for the details.
"""

from __future__ import annotations

from .attach import SslPointer, attach_ssl, detach_ssl
from .context import (
    Context,
    create_ssl_client_context,
    create_ssl_server_context,
    make_ssl_client_context,
    make_ssl_server_context,
)
from .errors import (
    DnsError,
    SocketClosed,
    SocketError,
    SslClosed,
    SslCondition,
    SslFailure,
    SslHandshakeTimeout,
    SslVerificationFailure,
    SslX509Lookup,
    TcpEof,
    TcpError,
    TcpRefused,
    TcpSslError,
    TcpTimeout,
)
from .loop import (
    Loop,
    Timer,
    call_threadsafe,
    delay,
    exit_event_loop,
    free_signal_handler,
    free_signal_handlers,
    get_loop,
    interval,
    signal_handler,
    start_event_loop,
    with_event_loop,
)
from .openssl import SSL_OPTIONS, openssl_version
from .stream import (
    SslStream,
    get_ssl_peer_certificate,
    get_ssl_verify_result,
    make_ssl_client_stream,
    make_ssl_server_stream,
    ssl_do_handshake,
)
from .tcp import (
    AsyncStream,
    Socket,
    TcpServer,
    close_socket,
    close_tcp_server,
    tcp_connect,
    tcp_open,
    tcp_server,
    write_socket_data,
)
from .tls import SslSession, SslSocket, TcpSslServer, tcp_ssl_connect, tcp_ssl_server
from .udp import DatagramTruncated, UdpSocket, udp_socket
from .x509 import X509Certificate

globals().update(SSL_OPTIONS)  # SSL_OP_NO_TICKET, ... (cl-async's +ssl-op-...+ list)

__version__ = "0.1.0"

__all__ = [
    *SSL_OPTIONS,
    "AsyncStream",
    "Context",
    "SslPointer",
    "SslStream",
    "get_ssl_peer_certificate",
    "get_ssl_verify_result",
    "make_ssl_client_stream",
    "make_ssl_server_stream",
    "ssl_do_handshake",
    "attach_ssl",
    "detach_ssl",
    "SslSession",
    "SslSocket",
    "TcpSslServer",
    "X509Certificate",
    "create_ssl_client_context",
    "create_ssl_server_context",
    "make_ssl_client_context",
    "make_ssl_server_context",
    "openssl_version",
    "tcp_ssl_connect",
    "tcp_ssl_server",
    "DnsError",
    "Loop",
    "Socket",
    "SocketClosed",
    "SocketError",
    "SslClosed",
    "SslCondition",
    "SslFailure",
    "SslHandshakeTimeout",
    "SslVerificationFailure",
    "SslX509Lookup",
    "TcpEof",
    "TcpError",
    "TcpRefused",
    "TcpServer",
    "TcpSslError",
    "TcpTimeout",
    "Timer",
    "call_threadsafe",
    "close_socket",
    "close_tcp_server",
    "delay",
    "exit_event_loop",
    "free_signal_handler",
    "free_signal_handlers",
    "get_loop",
    "interval",
    "signal_handler",
    "start_event_loop",
    "tcp_connect",
    "tcp_open",
    "tcp_server",
    "udp_socket",
    "UdpSocket",
    "DatagramTruncated",
    "with_event_loop",
    "write_socket_data",
]
