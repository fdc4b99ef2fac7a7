"""Argument checking: the checks of public arguments that several modules share, in one place.

The checks raise the exception Python users expect (TypeError for a wrong type, ValueError
for a wrong value) with a message that names the argument, and return the value normalised
(``check_port`` an int, ``check_seconds`` a float, ``check_data`` something cffi passes
without a copy). ``check_thread`` is the check of the one implicit argument: the calling
thread, which must be the one running the object's loop.

``unexpected_keyword`` words an unknown option the way Python does, by the name of the function
the application called (not a private helper it forwards to), with a close match as a hint:
"Context.server() got an unexpected keyword argument 'ca_flie' (did you mean 'ca_file'?)".
``keyword_hints`` adds that hint to a function with an explicit signature.

``file_path`` checks a value given where a file path is expected. A value that cannot be a
path (PEM text, DER bytes, a key pasted by mistake) is described, never shown: error messages
end up in logs, and a private key must not.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import signal
import threading
from typing import Any, Callable, Iterable, Optional, TypeVar

from ._uvssl import ffi

_F = TypeVar("_F", bound=Callable[..., Any])

# Longer than this, a value is taken for data rather than a path (PATH_MAX is 4096, but no path
# a person writes into a configuration comes close).
_MAX_SHOWN_PATH = 400
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")


def unexpected_keyword(func: str, name: str, valid: Iterable[str]) -> TypeError:
    """The TypeError Python raises for an unknown keyword, naming ``func`` (public name, with
    its class if any: "Context.server") and suggesting the closest valid name.
    """
    import difflib  # only on this error path

    msg = f"{func}() got an unexpected keyword argument {name!r}"
    close = difflib.get_close_matches(name, sorted(valid), n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return TypeError(msg)


def check_keywords(func: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise ``unexpected_keyword`` for the first name of ``given`` not in ``valid``."""
    valid_set = valid if isinstance(valid, (set, frozenset)) else frozenset(valid)
    for name in given:
        if name not in valid_set:
            raise unexpected_keyword(func, name, valid_set)


def keyword_names(fn: Callable[..., Any]) -> frozenset[str]:
    """The names ``fn`` accepts as keywords (positional-or-keyword and keyword-only)."""
    code = fn.__code__
    return frozenset(
        code.co_varnames[code.co_posonlyargcount : code.co_argcount + code.co_kwonlyargcount]
    )


def keyword_hints(fn: _F) -> _F:
    """Make an unknown keyword argument to ``fn`` suggest the closest valid one.

    Only the error path changes: the call goes straight through, and a TypeError raised while
    every keyword given is valid (from inside ``fn``) propagates as it is.
    """
    names = keyword_names(fn)
    public = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except TypeError:
            for name in kw:
                if name not in names:
                    raise unexpected_keyword(public, name, names) from None
            raise

    return wrapper  # type: ignore[return-value]


def _looks_like(data: bytes) -> tuple[str, str, str]:
    """What a value that is not a path seems to be (and a PEM label, and what to do), without
    showing any of it.
    """
    write = "write it to a file and pass the file's path"
    m = _PEM_LABEL.search(data)
    if m:
        return "PEM data", m.group(1).decode("ascii") + ", ", write
    if not _decodes(data):
        return "DER or other binary data", "", write
    if b"\x00" in data:
        return "a string with a NUL character in it", "", "pass the file's path"
    return "data, not a path", "", write


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def file_path(name: str, value: Any, what: str) -> bytes:
    """Check a ``name=`` value that must be the path of an existing file (or directory);
    return it as bytes. ``what`` says what it holds ("a PEM or DER file").

    A value of the wrong type is a TypeError. A missing file is a FileNotFoundError with the
    path. A value that names no file and cannot be a path either (a newline or NUL in it, PEM
    armour, undecodable bytes, hundreds of characters) is a FileNotFoundError too, as from
    ``open()``, but its message describes the value without showing any of it.
    """
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name}= takes the path of {what} (str, bytes or os.PathLike), "
            f"not {type(value).__name__}"
        )
    raw = os.fspath(value)
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        path = os.fsencode(raw)
    except UnicodeEncodeError:  # a str no file name can be
        path = b"\x00"
    if os.path.exists(path):
        return path
    if (
        len(data) > _MAX_SHOWN_PATH
        or b"\n" in data
        or b"\x00" in data
        or b"-----BEGIN" in data
        or not _decodes(data)
    ):
        kind, label, todo = _looks_like(data)
        unit = "characters" if isinstance(raw, str) else "bytes"
        raise FileNotFoundError(
            errno.ENOENT,
            f"{name}= takes the path of {what}; the value given looks like {kind} "
            f"({label}{len(raw):,} {unit}, not shown): {todo}",
        )
    raise FileNotFoundError(errno.ENOENT, f"{name}=: no such file or directory", os.fsdecode(path))


def pem_labels(path: bytes, limit: int = 1 << 20) -> frozenset[str]:
    """The PEM labels ("CERTIFICATE", "EC PRIVATE KEY", ...) in the first ``limit`` bytes of a
    file, to say what it holds when OpenSSL could not use it (nothing of it is shown).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(limit)
    except OSError:
        return frozenset()
    return frozenset(m.decode("ascii") for m in _PEM_LABEL.findall(head))


# -- values ----------------------------------------------------------------------------------


def check_callable(name: str, value: Any, optional: bool = True) -> None:
    """A callback argument: callable (or None when ``optional``)."""
    if value is None and optional:
        return
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")


def check_callbacks(read_cb: Any, event_cb: Any, connect_cb: Any, write_cb: Any) -> None:
    """The callbacks every connection function takes (each may be None)."""
    check_callable("read_cb", read_cb)
    check_callable("event_cb", event_cb)
    check_callable("connect_cb", connect_cb)
    check_callable("write_cb", write_cb)


def check_seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    """A duration in seconds: a number (not a bool), > 0 (or >= 0), finite, at most 1e9."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if v != v or v < 0 or (v == 0 and not allow_zero) or v > 1e9:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    return v


def check_timeout(name: str, value: Any) -> float:
    """A read or write timeout: None (0.0: no limit) or seconds > 0."""
    if value is None:
        return 0.0
    return check_seconds(name, value, allow_zero=False)


def check_hs_timeout(value: Any) -> Optional[float]:
    """A handshake timeout: None (no limit) or seconds > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"handshake_timeout must be a number of seconds or None, not {type(value).__name__}"
        )
    if value <= 0:
        raise ValueError(
            f"handshake_timeout must be > 0 seconds (or None for no limit), got {value!r}"
        )
    return float(value)


def check_signum(signum: Any) -> int:
    """A signal number of this system (an int such as ``signal.SIGTERM``)."""
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"signum must be a signal number such as signal.SIGTERM, not {signum!r}")
    if signum not in signal.valid_signals():
        raise ValueError(f"signum {int(signum)} is not a signal number of this system")
    return int(signum)


def check_max_depth(value: Any) -> int:
    """A verification depth: a non-negative int (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_depth must be a non-negative int, got {value!r}")
    return value


def check_port(port: Any) -> int:
    """A TCP port: an int (not a bool) in 0..65535."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return port


def check_host(name: str, host: Any) -> str:
    """A host name or address: a non-empty str (ASCII bytes are decoded) with no NUL."""
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if not isinstance(host, str):
        raise TypeError(f"{name} must be a str, not {type(host).__name__}")
    if not host or "\x00" in host:
        raise ValueError(f"{name} must be a non-empty host name or address, got {host!r}")
    return host


def check_backlog(backlog: Any) -> int:
    """A listen backlog: -1 (the system maximum) or a positive int."""
    if isinstance(backlog, bool) or not isinstance(backlog, int):
        raise TypeError(f"backlog must be an int, not {type(backlog).__name__}")
    if backlog < -1 or backlog > 1 << 20:
        raise ValueError(
            f"backlog must be -1 (the system maximum) or a positive int, got {backlog}"
        )
    return backlog


def check_byte_count(name: str, value: Any) -> int:
    """A write buffer limit: a non-negative int (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_data(name: str, data: Any) -> Any:
    """Return something cffi can pass as ``const char *`` (bytes stay bytes: no copy)."""
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview, bytes)):
        return ffi.from_buffer(data)
    if isinstance(data, str):
        raise TypeError(f"{name} must be bytes-like, not str (encode it first)")
    try:
        return ffi.from_buffer(data)
    except TypeError:
        raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}") from None


# -- the calling thread ----------------------------------------------------------------------

get_ident = threading.get_ident  # the thread check runs on hot paths: bound once


def check_thread(loop: Any, what: str, obj: Any = None) -> None:
    """Raise RuntimeError naming call_threadsafe unless called from ``loop``'s own thread.

    Every method of a loop's objects that reaches native or loop state calls this first (or
    inlines it: ``Socket.write``); only ``call_threadsafe`` and ``Loop.stop`` may be called
    from other threads. See ``Loop._foreign``.
    """
    if get_ident() != loop.thread:
        loop._foreign(what, obj)
