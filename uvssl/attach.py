"""Attach TLS to an open connection and detach it again (LispWorks' attach-ssl).

``attach_ssl`` turns a plain ``Socket`` into an ``SslSocket`` in place: the same object, the
same callbacks, the same native connection. Bytes written before the call leave in plaintext,
bytes written after it are encrypted (queued until the handshake completes). In stream mode,
input the application has not read yet is taken as the start of the peer's handshake, so a
ClientHello that arrived together with a STARTTLS command is not lost.

``detach_ssl`` sends close_notify and waits for the peer's; everything written after the call
and everything the peer sends after its close_notify is plaintext again. When the peer's
close_notify comes first, ``event_cb`` gets ``SslClosed`` and the connection stays open:
``detach_ssl`` then continues in plaintext and ``close_socket`` ends it.
"""

from __future__ import annotations

from typing import Any, Optional

from ._args import check_callable, check_host, check_hs_timeout, check_thread, keyword_hints
from ._uvssl import ffi, lib
from .context import (
    ConfigureCallback,
    Context,
    configure_client_ssl,
    parse_version,
    resolve_ssl_ctx,
)
from .errors import SslFailure, openssl_failure, strerror
from .tcp import Socket
from .tls import SslSocket

__all__ = ["attach_ssl", "detach_ssl", "SslPointer"]


class SslPointer:
    """A raw ``SSL*`` address for ``attach_ssl(ssl_ctx=SslPointer(addr))``.

    A plain int always means an ``SSL_CTX*``; wrap an ``SSL*`` address in this class (or pass a
    cffi ``SSL *`` pointer) to attach an existing SSL object, which is borrowed.
    """

    __slots__ = ("address",)

    def __init__(self, address: int) -> None:
        """Remember ``address``, the value of an ``SSL*``."""
        if isinstance(address, bool) or not isinstance(address, int) or address <= 0:
            raise ValueError(f"SslPointer needs a positive int address, got {address!r}")
        self.address = address

    def __repr__(self) -> str:
        return f"SslPointer({self.address:#x})"


def _is_ssl_pointer(value: Any) -> bool:
    return isinstance(value, ffi.CData) and ffi.typeof(value) is ffi.typeof("SSL *")


def _default_context(spec: Any, side: str, configure: Optional[ConfigureCallback]) -> Context:
    """A fresh context for LispWorks' True / "default" / version keyword / (min, max) forms."""
    kw: dict[str, Any] = {}
    if isinstance(spec, tuple):
        kw["method"] = spec
    elif isinstance(spec, str) and spec != "default":
        kw["method"] = (parse_version("ssl_ctx", spec), None)
    ctx = Context.client(**kw) if side == "client" else Context.server(**kw)
    if configure is not None:
        configure(ctx._ctx)
    return ctx


@keyword_hints
def attach_ssl(
    socket: Socket,
    *,
    ssl_ctx: Any = True,
    ssl_side: str = "server",
    handshake_timeout: Optional[float] = None,
    tlsext_host_name: Optional[str] = None,
    ctx_configure_callback: Optional[ConfigureCallback] = None,
    ssl_configure_callback: Optional[ConfigureCallback] = None,
) -> SslSocket:
    """Start TLS on an open plain ``socket`` (STARTTLS) and return it, now an ``SslSocket``.

    ``ssl_ctx``: any form ``tcp_ssl_connect`` accepts, or ``True`` / ``"default"`` (a fresh
    default context for ``ssl_side``), a version keyword (``"tls-v1-3"``: that version or
    newer), a ``(min, max)`` tuple, or a raw ``SSL*`` (a cffi ``SSL *`` or ``SslPointer``),
    which is borrowed and used as it is (``ssl_side`` and the callbacks then do not apply and
    are an error if given). ``ctx_configure_callback(ptr)`` is called with the new ``SSL_CTX *``
    (a cffi pointer) when this call makes the context; ``ssl_configure_callback(ptr)`` with the
    new ``SSL *`` (a cffi pointer too).
    ``tlsext_host_name`` (clients) is sent as SNI and checked against the certificate.
    ``handshake_timeout``: seconds; None means the context's (60 s by default).
    """
    if not isinstance(socket, Socket):
        raise TypeError(f"socket must be a uvssl Socket, not {type(socket).__name__}")
    check_thread(socket._loop, "attach_ssl()")
    if ssl_side not in ("client", "server"):
        raise ValueError(f"ssl_side must be 'client' or 'server', got {ssl_side!r}")
    check_callable("ctx_configure_callback", ctx_configure_callback)
    check_callable("ssl_configure_callback", ssl_configure_callback)
    hs = check_hs_timeout(handshake_timeout)
    if tlsext_host_name is not None:
        tlsext_host_name = check_host("tlsext_host_name", tlsext_host_name)
        if ssl_side != "client":
            raise ValueError("tlsext_host_name is for ssl_side='client'")
    conn = socket._live_conn("attach TLS")
    if lib.uvs_conn_tls_state(conn) != 0:
        raise ValueError("TLS is already attached to this socket (detach_ssl first)")

    borrowed: Any = ffi.NULL
    ctx: Optional[Context] = None
    if isinstance(ssl_ctx, SslPointer) or _is_ssl_pointer(ssl_ctx):
        if ctx_configure_callback is not None or ssl_configure_callback is not None:
            raise ValueError("configure callbacks do not apply to a raw SSL* (it is used as is)")
        borrowed = ffi.cast(
            "SSL *", ssl_ctx.address if isinstance(ssl_ctx, SslPointer) else ssl_ctx
        )
        server = bool(lib.SSL_is_server(borrowed))
        ctx_ptr: Any = ffi.NULL
    else:
        if ssl_ctx is True or isinstance(ssl_ctx, (str, tuple)):
            ctx = _default_context(ssl_ctx, ssl_side, ctx_configure_callback)
        else:
            if ctx_configure_callback is not None:
                raise ValueError(
                    "ctx_configure_callback applies only when attach_ssl makes the context "
                    "(ssl_ctx=True, 'default', a version or a tuple); configure yours directly"
                )
            ctx = resolve_ssl_ctx(ssl_ctx, ssl_side)
        server = ssl_side == "server"
        ctx_ptr = ctx._ctx
    if hs is None:
        hs = ctx.handshake_timeout if ctx is not None else 60.0

    initial = b""
    if socket.stream is not None and socket.stream.available:
        initial = socket.stream.read()
    r = lib.uvs_conn_attach_tls(
        conn, ctx_ptr, borrowed, int(server), hs or 0.0, initial, len(initial)
    )
    if r == lib.UV_EPROTO:
        raise openssl_failure("cannot start TLS (SSL_new failed)", "attach")
    if r != 0:
        raise SslFailure(f"cannot start TLS: {strerror(r)}", what="attach", socket=socket)

    # the same object becomes an SslSocket
    socket.__class__ = SslSocket
    sslsock = socket
    assert isinstance(sslsock, SslSocket)
    sslsock._init_own()
    sslsock._context = ctx
    sslsock.server_hostname = tlsext_host_name
    sslsock._attached = True
    sslsock._connected = False
    ssl = lib.uvs_conn_ssl(conn)
    try:
        if not server and borrowed == ffi.NULL:
            assert ctx is not None
            configure_client_ssl(ssl, ctx, tlsext_host_name, True, None)
        if ctx is not None:
            ctx._configure_ssl(ssl)  # the context's own callback, if it has one
        if ssl_configure_callback is not None:
            ssl_configure_callback(ssl)
    except BaseException:
        sslsock.close(force=True)
        raise
    return sslsock


def detach_ssl(socket: Socket) -> None:
    """End TLS on ``socket`` and go on in plaintext (see the module docstring)."""
    if not isinstance(socket, Socket):
        raise TypeError(f"socket must be a uvssl Socket, not {type(socket).__name__}")
    check_thread(socket._loop, "detach_ssl()")
    conn = socket._live_conn("detach TLS")
    state = lib.uvs_conn_tls_state(conn)
    if state == 0:
        raise ValueError("no TLS is attached to this socket")
    r = lib.uvs_conn_detach_tls(conn)
    if r != 0:
        raise SslFailure(
            "cannot detach TLS now: "
            + (
                "the handshake has not completed"
                if state == lib.UVS_TLS_HANDSHAKING
                else strerror(r)
            ),
            what="detach",
            socket=socket,
        )
