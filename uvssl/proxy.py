"""The PROXY protocol's Python side: sources, the header's results, errors.

Theory of operation. The header itself is read and checked in C (csrc/proxy.c), on the
connection's read path, before any byte reaches the TLS engine or Python: a server with
``proxy_protocol=True`` hands a connection to Python only once its header is complete
(``TcpServer._accept`` then copies the TLVs with ``proxy_tlvs``; the proxy's
address stays with the connection's other addresses) or rejected (the socket
arrives already failed and its event is a ``ProxyProtocolError``, built by ``proxy_error``).
This module turns ``proxy_protocol_from`` (addresses and CIDR networks) into the native
source list the server checks at accept (``configure``), and decodes the v2 TLVs that C kept
as raw bytes into a dict, lazily (``decode_tlvs``, when ``proxy_tlvs`` is read).

``proxy_tlvs`` keys: ``"alpn"`` (str, latin-1), ``"authority"`` (str), ``"crc32c"`` (int),
``"unique_id"`` (bytes), ``"netns"`` (str), ``"ssl"`` (a dict: ``"client"`` (int flags),
``"verify"`` (int, 0 when the client's certificate verified), ``"ssl"`` / ``"cert_conn"`` /
``"cert_sess"`` (the client flags as bools), ``"version"``, ``"cn"``, ``"cipher"``,
``"sig_alg"``, ``"key_alg"`` (str), other sub-TLVs by number (bytes)); any other type by
number (bytes). NOOP TLVs are skipped; when a type repeats, the last one wins.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
from typing import Any, Optional, Union

from ._uvssl import ffi, lib
from .errors import ProxyProtocolError, strerror

__all__ = ["configure", "decode_tlvs", "proxy_error", "proxy_tlvs", "parse_sources"]

_TLV_NAMES = {0x01: "alpn", 0x02: "authority", 0x03: "crc32c", 0x05: "unique_id", 0x30: "netns"}
_SSL_SUB_NAMES = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}
_TLV_NOOP = 0x04
_TLV_SSL = 0x20

#: reason code (UVS_PROXY_E*) -> (short name, what was wrong)
_REASONS: dict[int, tuple[str, str]] = {
    lib.UVS_PROXY_ESIGNATURE: (
        "signature",
        "the connection did not start with a PROXY protocol header (neither the v1 'PROXY ' "
        "text nor the v2 signature)",
    ),
    lib.UVS_PROXY_ELINE: ("v1-line", "the v1 header had no CRLF within its 107-byte maximum"),
    lib.UVS_PROXY_ESYNTAX: (
        "v1-syntax",
        "the v1 header's fields were malformed (protocol not TCP4/TCP6/UNKNOWN, or not "
        "exactly two addresses and two ports separated by single spaces)",
    ),
    lib.UVS_PROXY_EADDRESS: (
        "v1-address",
        "a v1 header address was not a valid address of its protocol's family",
    ),
    lib.UVS_PROXY_EPORT: (
        "v1-port",
        "a v1 header port was not a decimal number 0..65535 without leading zeros",
    ),
    lib.UVS_PROXY_EVERSION: ("v2-version", "the v2 header's version was not 2"),
    lib.UVS_PROXY_ECOMMAND: ("v2-command", "the v2 header's command was neither LOCAL nor PROXY"),
    lib.UVS_PROXY_EFAMILY: (
        "v2-family",
        "the v2 header's address family/protocol is not supported (only UNSPEC, TCP over "
        "IPv4 and TCP over IPv6; UDP and UNIX sockets are refused)",
    ),
    lib.UVS_PROXY_ELENGTH: (
        "v2-length",
        "the v2 header's length was too short for its family's addresses",
    ),
    lib.UVS_PROXY_ETLV: ("v2-tlv", "a v2 header TLV ran past the end of the header"),
    lib.UVS_PROXY_ESOURCE: (
        "source",
        "the connection came from an address not in proxy_protocol_from (it was refused at accept)",
    ),
    lib.UVS_PROXY_ETIMEOUT: (
        "timeout",
        "no complete PROXY protocol header arrived within handshake_timeout",
    ),
    lib.UVS_PROXY_EEOF: (
        "eof",
        "the peer closed the connection before the PROXY protocol header was complete",
    ),
}


def parse_sources(sources: Any) -> list[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]]:
    """``proxy_protocol_from``: a sequence of IPv4/IPv6 addresses or CIDR networks (str)."""
    if isinstance(sources, (str, bytes)):
        raise TypeError(
            "proxy_protocol_from must be a sequence of addresses or networks, e.g. "
            '("127.0.0.1", "10.0.0.0/8"), not a single string'
        )
    try:
        items = list(sources)
    except TypeError:
        raise TypeError(
            "proxy_protocol_from must be a sequence of addresses or networks (str), not "
            f"{type(sources).__name__}"
        ) from None
    if not items:
        raise ValueError(
            "proxy_protocol_from is empty: no connection could ever be accepted; give the "
            "load balancers' addresses, or leave it out to accept headers from anywhere"
        )
    nets: list[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f"proxy_protocol_from entries must be str (an address or a CIDR network), "
                f"not {type(item).__name__}"
            )
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"proxy_protocol_from entry {item!r} is neither an IPv4/IPv6 address nor a "
                'CIDR network such as "10.0.0.0/8" or "fd00::/8"'
            ) from None
    return nets


def configure(
    server_ptr: Any,
    timeout: float,
    nets: Optional[list[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]]],
) -> None:
    """Turn the protocol on for a native server: headers due within ``timeout`` seconds (0:
    no limit), from the ``nets`` (None: anywhere).
    """
    nets = nets or []
    arr = ffi.new("uvs_proxy_net_t[]", max(1, len(nets)))
    for i, net in enumerate(nets):
        arr[i].family = net.version
        arr[i].prefix = net.prefixlen
        raw = net.network_address.packed
        ffi.memmove(arr[i].addr, raw, len(raw))
    r = lib.uvs_server_set_proxy(server_ptr, 1, timeout, arr, len(nets))
    if r != 0:
        raise MemoryError(f"uvssl: cannot turn the PROXY protocol on for the server: {strerror(r)}")


_TLV_PTR = "unsigned char **"


def proxy_tlvs(conn: Any) -> bytes:
    """The raw v2 TLVs of an accepted connection's header (b"" when it had none)."""
    n = lib.uvs_conn_proxy_tlvs(conn, ffi.NULL)
    if n == 0:
        return b""
    ptr = ffi.new(_TLV_PTR)
    n = lib.uvs_conn_proxy_tlvs(conn, ptr)
    return bytes(ffi.buffer(ptr[0], n))


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _walk(raw: bytes, start: int = 0) -> list[tuple[int, bytes]]:
    out = []
    off = start
    while off + 3 <= len(raw):
        n = (raw[off + 1] << 8) | raw[off + 2]
        out.append((raw[off], raw[off + 3 : off + 3 + n]))
        off += 3 + n
    return out


def decode_tlvs(raw: bytes) -> dict[Union[str, int], Any]:
    """The v2 TLVs (already checked by the parser) as a dict; the keys are listed in this
    module's docstring.
    """
    out: dict[Union[str, int], Any] = {}
    for kind, value in _walk(raw):
        if kind == _TLV_NOOP:
            continue
        if kind == _TLV_SSL:
            out["ssl"] = _decode_ssl(value)
            continue
        name = _TLV_NAMES.get(kind)
        if name == "alpn":
            out[name] = value.decode("latin-1")
        elif name in ("authority", "netns"):
            out[name] = _text(value)
        elif name == "crc32c":
            out[name] = int.from_bytes(value, "big")
        elif name == "unique_id":
            out[name] = bytes(value)
        else:
            out[kind] = bytes(value)
    return out


def _decode_ssl(value: bytes) -> dict[Union[str, int], Any]:
    client = value[0] if value else 0
    ssl: dict[Union[str, int], Any] = {
        "client": client,
        "verify": int.from_bytes(value[1:5], "big"),
        "ssl": bool(client & 0x01),
        "cert_conn": bool(client & 0x02),
        "cert_sess": bool(client & 0x04),
    }
    for kind, sub in _walk(value, 5):
        name = _SSL_SUB_NAMES.get(kind)
        if name is not None:
            ssl[name] = _text(sub)
        else:
            ssl[kind] = bytes(sub)
    return ssl


def proxy_error(status: int, sock: Any) -> ProxyProtocolError:
    """The ``ProxyProtocolError`` for a connection that failed with reason ``status``."""
    reason, what = _REASONS.get(
        status, ("memory", f"reading the PROXY protocol header failed ({strerror(status)})")
    )
    peer = ""
    conn = getattr(sock, "_conn", None)
    if conn is not None:
        host = ffi.new("char[]", 64)
        port = ffi.new("int *")
        if lib.uvs_conn_address(conn, 1, host, 64, port) == 0:
            peer = f" from {ffi.string(host).decode('ascii')} port {int(port[0])}"
    advice = (
        " Add the load balancer's address to proxy_protocol_from."
        if reason == "source"
        else " Check that the load balancer sends the PROXY protocol (HAProxy: send-proxy or "
        "send-proxy-v2 on the server line), or turn proxy_protocol off."
    )
    exc = ProxyProtocolError(
        f"PROXY protocol: connection{peer} closed: {what}.{advice}",
        code=_errno.ETIMEDOUT if reason == "timeout" else _errno.EPROTO,
        action="proxy",
        socket=sock,
        identifier="proxy-protocol",
    )
    exc.reason = reason
    return exc
