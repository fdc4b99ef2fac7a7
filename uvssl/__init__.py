"""uvssl: high-throughput TCP and TLS networking for Python.

A libuv event loop and an OpenSSL TLS engine run natively in C; Python gets callbacks, socket
objects, TLS contexts and, when it wants them, the raw ``SSL_CTX*`` / ``SSL*`` handles.
See README.md for a tour; ``help(uvssl.tcp_connect)`` and friends for the details.
"""

from __future__ import annotations

from .attach import SslPointer, attach_ssl, detach_ssl
from .callbacks import (
    Address,
    ConfigureCallback,
    ConnectCallback,
    DatagramCallback,
    DrainCallback,
    EventCallback,
    ReadCallback,
    ShutdownDoneCallback,
    SniCallback,
    StreamReadCallback,
    WriteCallback,
)
from .context import (
    Context,
    create_ssl_client_context,
    create_ssl_server_context,
    make_ssl_client_context,
    make_ssl_server_context,
)
from .errors import (
    DnsError,
    ProxyProtocolError,
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
    connect_tcp_socket,
    init_tcp_socket,
    tcp_connect,
    tcp_open,
    tcp_server,
    write_socket_data,
)
from .tls import (
    SslSession,
    SslSocket,
    TcpSslServer,
    init_tcp_ssl_socket,
    tcp_ssl_connect,
    tcp_ssl_server,
)
from .udp import DatagramTruncated, UdpSocket, udp_socket
from .workers import serve_workers
from .x509 import X509Certificate

# cl-async's +ssl-op-...+ list, spelled out so that type checkers see every name
SSL_OP_ALL: int = SSL_OPTIONS["SSL_OP_ALL"]
SSL_OP_NO_QUERY_MTU: int = SSL_OPTIONS["SSL_OP_NO_QUERY_MTU"]
SSL_OP_COOKIE_EXCHANGE: int = SSL_OPTIONS["SSL_OP_COOKIE_EXCHANGE"]
SSL_OP_NO_TICKET: int = SSL_OPTIONS["SSL_OP_NO_TICKET"]
SSL_OP_CISCO_ANYCONNECT: int = SSL_OPTIONS["SSL_OP_CISCO_ANYCONNECT"]
SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION: int = SSL_OPTIONS[
    "SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION"
]
SSL_OP_NO_COMPRESSION: int = SSL_OPTIONS["SSL_OP_NO_COMPRESSION"]
SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION: int = SSL_OPTIONS[
    "SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION"
]
SSL_OP_SINGLE_ECDH_USE: int = SSL_OPTIONS["SSL_OP_SINGLE_ECDH_USE"]
SSL_OP_SINGLE_DH_USE: int = SSL_OPTIONS["SSL_OP_SINGLE_DH_USE"]
SSL_OP_EPHEMERAL_RSA: int = SSL_OPTIONS["SSL_OP_EPHEMERAL_RSA"]
SSL_OP_CIPHER_SERVER_PREFERENCE: int = SSL_OPTIONS["SSL_OP_CIPHER_SERVER_PREFERENCE"]
SSL_OP_TLS_ROLLBACK_BUG: int = SSL_OPTIONS["SSL_OP_TLS_ROLLBACK_BUG"]
SSL_OP_NO_SSLv2: int = SSL_OPTIONS["SSL_OP_NO_SSLv2"]
SSL_OP_NO_SSLv3: int = SSL_OPTIONS["SSL_OP_NO_SSLv3"]
SSL_OP_NO_TLSv1: int = SSL_OPTIONS["SSL_OP_NO_TLSv1"]
SSL_OP_NO_TLSv1_1: int = SSL_OPTIONS["SSL_OP_NO_TLSv1_1"]
SSL_OP_NO_TLSv1_2: int = SSL_OPTIONS["SSL_OP_NO_TLSv1_2"]
SSL_OP_NO_TLSv1_3: int = SSL_OPTIONS["SSL_OP_NO_TLSv1_3"]
SSL_OP_NO_RENEGOTIATION: int = SSL_OPTIONS["SSL_OP_NO_RENEGOTIATION"]
SSL_OP_IGNORE_UNEXPECTED_EOF: int = SSL_OPTIONS["SSL_OP_IGNORE_UNEXPECTED_EOF"]

__version__ = "0.1.0"

__all__ = [
    "SSL_OP_ALL",
    "SSL_OP_NO_QUERY_MTU",
    "SSL_OP_COOKIE_EXCHANGE",
    "SSL_OP_NO_TICKET",
    "SSL_OP_CISCO_ANYCONNECT",
    "SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION",
    "SSL_OP_NO_COMPRESSION",
    "SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION",
    "SSL_OP_SINGLE_ECDH_USE",
    "SSL_OP_SINGLE_DH_USE",
    "SSL_OP_EPHEMERAL_RSA",
    "SSL_OP_CIPHER_SERVER_PREFERENCE",
    "SSL_OP_TLS_ROLLBACK_BUG",
    "SSL_OP_NO_SSLv2",
    "SSL_OP_NO_SSLv3",
    "SSL_OP_NO_TLSv1",
    "SSL_OP_NO_TLSv1_1",
    "SSL_OP_NO_TLSv1_2",
    "SSL_OP_NO_TLSv1_3",
    "SSL_OP_NO_RENEGOTIATION",
    "SSL_OP_IGNORE_UNEXPECTED_EOF",
    "AsyncStream",
    "Address",
    "ConfigureCallback",
    "ConnectCallback",
    "DatagramCallback",
    "DrainCallback",
    "EventCallback",
    "ReadCallback",
    "ShutdownDoneCallback",
    "SniCallback",
    "StreamReadCallback",
    "WriteCallback",
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
    "init_tcp_ssl_socket",
    "DnsError",
    "ProxyProtocolError",
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
    "init_tcp_socket",
    "connect_tcp_socket",
    "udp_socket",
    "UdpSocket",
    "DatagramTruncated",
    "with_event_loop",
    "write_socket_data",
    "serve_workers",
]
