"""Argument errors that name the public function and never echo secrets.

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
from typing import Any, Callable, Iterable, TypeVar

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
