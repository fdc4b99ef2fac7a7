"""Shared session ticket keys: checking them and handing them to an ``SSL_CTX``.

Theory of operation: a server encrypts the session tickets it gives clients with a ticket key;
OpenSSL makes one at random per context, so by default a ticket only resumes on the context
that issued it. Servers given the same list of keys (``session_ticket_keys=`` on
``Context.server``, or ``Context.rotate_session_ticket_keys``) resume each other's sessions,
across threads, processes and machines. The mechanism is native (csrc/tickets.c): the keys
are copied into C memory owned by the ``SSL_CTX`` (wiped when replaced or when the context is
freed), and OpenSSL's ticket callback picks the key there. This module only checks what it is
given and passes it on; it never keeps a key, and no message it makes ever shows key bytes.

A key is 80 bytes, the layout of nginx's ``ssl_session_ticket_key`` files (16-byte name, 32-byte
HMAC-SHA256 secret, 32-byte AES-256 key), so ``[open(p, "rb").read() for p in paths]`` loads the
files nginx uses, and ``openssl rand 80 > ticket.key`` (or ``new_key()``) makes one. The first
key issues tickets; all of them are accepted, and a ticket under an older key is renewed under
the first. Rotate by putting a new key first and dropping the oldest.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ._uvssl import ffi, lib
from .errors import openssl_failure

__all__ = [
    "KEY_LENGTH",
    "MAX_KEYS",
    "check_keys",
    "check_option",
    "install",
    "key_count",
    "new_key",
    "rotated",
]

#: The length of one key: 16-byte name, 32-byte HMAC secret, 32-byte AES-256 key.
KEY_LENGTH = int(lib.UVS_TICKET_KEY_LEN)

#: The most keys one context takes. A rotation needs the current key and the few before it that
#: tickets still in use were issued under; every key kept longer extends the time a stolen key
#: decrypts recorded sessions, and every resumption looks through the list.
MAX_KEYS = int(lib.UVS_TICKET_KEYS_MAX)


def new_key() -> bytes:
    """A fresh random key (80 bytes from the operating system's CSPRNG, like
    ``openssl rand 80``).
    """
    return os.urandom(KEY_LENGTH)


def rotated(keys: Any, new: bytes, keep: int = 2) -> list[bytes]:
    """The key list after one rotation step: ``new`` first, then the newest ``keep - 1`` of
    ``keys`` (so tickets issued under them still resume and get renewed under ``new``).
    """
    current = check_keys("keys", keys)
    fresh = check_keys("new", [new])[0]
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= MAX_KEYS:
        raise ValueError(f"keep must be an int from 1 to {MAX_KEYS}, got {keep!r}")
    out = [fresh] + [k for k in current if k[:16] != fresh[:16]]
    return out[:keep]


def check_keys(name: str, keys: Any) -> list[bytes]:
    """``keys`` as a list of 80-byte ``bytes``, or TypeError/ValueError saying what is wrong
    (by position and length, never by content).
    """
    if isinstance(keys, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"{name} must be a list of keys, not one bytes object: give [key] for a single key"
        )
    if isinstance(keys, (str, os.PathLike)):
        raise TypeError(
            f"{name} takes the keys' bytes, not file names: read nginx-style key files with "
            "[open(path, 'rb').read() for path in paths]"
        )
    try:
        items = list(keys)
    except TypeError:
        raise TypeError(
            f"{name} must be a list of {KEY_LENGTH}-byte keys, not {type(keys).__name__}"
        ) from None
    if not items:
        raise ValueError(f"{name} must hold at least one key (the first issues tickets)")
    if len(items) > MAX_KEYS:
        raise ValueError(
            f"{name} holds {len(items)} keys; at most {MAX_KEYS} are taken (keep the current key "
            "and the few previous ones whose tickets should still resume)"
        )
    out: list[bytes] = []
    names: dict[bytes, int] = {}
    for i, k in enumerate(items):
        if not isinstance(k, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name}[{i}] must be bytes, not {type(k).__name__}")
        b = bytes(k)
        if len(b) != KEY_LENGTH:
            hint = (
                " (that is nginx's older AES-128 form; AES-256 needs the 80-byte form: make a "
                f"new key with 'openssl rand {KEY_LENGTH}')"
                if len(b) == 48
                else f" (make one with 'openssl rand {KEY_LENGTH}' or os.urandom({KEY_LENGTH}))"
            )
            raise ValueError(f"{name}[{i}] is {len(b)} bytes; a key must be {KEY_LENGTH}{hint}")
        j = names.setdefault(b[:16], i)
        if j != i:
            raise ValueError(
                f"{name}[{j}] and {name}[{i}] have the same name (their first 16 bytes): each "
                "key needs its own name"
            )
        out.append(b)
    return out


def check_option(
    keys: Any, server: bool, ssl_side: Optional[str], session_tickets: bool
) -> Optional[list[bytes]]:
    """``session_ticket_keys=`` of ``Context.client`` / ``Context.server``, checked against
    the other options (None when not given).
    """
    if keys is None:
        return None
    checked = check_keys("session_ticket_keys", keys)
    if not server and ssl_side != "both":
        raise ValueError(
            "session_ticket_keys is for server contexts (Context.server, or ssl_side='both')"
        )
    if not session_tickets:
        raise ValueError("session_ticket_keys needs session_tickets=True (tickets are off)")
    return checked


def install(ctx_ptr: Any, name: str, keys: list[bytes]) -> None:
    """Give the ``SSL_CTX*`` ``ctx_ptr`` the checked ``keys`` (replacing any it had); on any
    failure it keeps the keys it had.
    """
    buf = bytearray(KEY_LENGTH * len(keys))
    for i, k in enumerate(keys):
        buf[i * KEY_LENGTH : (i + 1) * KEY_LENGTH] = k
    try:
        r = lib.uvs_ctx_set_ticket_keys(ctx_ptr, ffi.from_buffer("unsigned char[]", buf), len(keys))
    finally:
        buf[:] = bytes(len(buf))  # our copy of the secrets goes now, whatever happened
    if r == 1:
        return
    if r == lib.UVS_TICKETS_ECLIENT:
        raise ValueError(
            f"{name}: this is a client context; session tickets are issued by servers (use "
            "Context.server, or ssl_side='both')"
        )
    if r == lib.UVS_TICKETS_EDISABLED:
        raise ValueError(
            f"{name}: session tickets are turned off on this context (session_tickets=False or "
            "SSL_OP_NO_TICKET); turn them on to use ticket keys"
        )
    if r == lib.UVS_TICKETS_EARGS:
        raise ValueError(f"{name} must hold 1 to {MAX_KEYS} keys")
    raise openssl_failure(f"cannot install the session ticket keys ({name})", "set ticket keys")


def key_count(ctx: Any) -> int:
    """How many shared ticket keys a ``Context`` (or an ``SSL_CTX*``, as a cffi pointer or an
    int address) has: 0 when none were given (OpenSSL's own per-context key is used).
    """
    ptr = getattr(ctx, "_ctx", ctx)
    if isinstance(ptr, int) and not isinstance(ptr, bool):
        ptr = ffi.cast("SSL_CTX *", ptr)
    if not isinstance(ptr, ffi.CData) or ptr == ffi.NULL:
        raise TypeError(f"key_count takes a Context or an SSL_CTX*, not {type(ctx).__name__}")
    return int(lib.uvs_ctx_ticket_key_count(ptr))
