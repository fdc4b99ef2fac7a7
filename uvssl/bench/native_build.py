"""Compile the benchmark's native programs (``uvssl/bench/native/*.c``) on demand.

The reference echo server and the load client are single C files linked against the
system OpenSSL. They are compiled with the machine's C compiler the first time the
benchmark needs them and cached; a cached binary is reused for as long as the source, the
compiler and the flags stay the same (they are hashed into the binary's name).

This module only needs the standard library: it must work before (and without) uvssl's
own compiled extension.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

__all__ = ["NativeBuildError", "build_native", "cache_dir", "native_source"]

#: Compiler flags, besides OpenSSL's. The sources are written to build warning-free with them.
CFLAGS: List[str] = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
_NATIVE_DIR = Path(__file__).resolve().parent / "native"


class NativeBuildError(RuntimeError):
    """A native benchmark program could not be built (missing compiler, headers, ...)."""


def native_source(name: str) -> Path:
    """Return the path of ``uvssl/bench/native/<name>.c``, checking that it exists."""
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid native program name: {name!r}")
    src = _NATIVE_DIR / f"{name}.c"
    if not src.is_file():
        raise NativeBuildError(f"no native source {src}")
    return src


def cache_dir() -> Path:
    """Return the directory compiled programs are cached in.

    ``$UVSSL_BENCH_CACHE`` if set, else ``$XDG_CACHE_HOME/uvssl/bench``, else
    ``~/.cache/uvssl/bench``.
    """
    explicit = os.environ.get("UVSSL_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "uvssl" / "bench"


def _compiler() -> List[str]:
    """Return the C compiler command (``$CC`` or ``cc``), or raise if there is none."""
    cc = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    path = shutil.which(cc[0])
    if path is None:
        raise NativeBuildError(
            f"C compiler {cc[0]!r} not found: the benchmark compiles its native programs; "
            "install a C compiler (Debian/Ubuntu: apt install build-essential) or set $CC"
        )
    return [path, *cc[1:]]


def _openssl_flags() -> List[str]:
    """Return OpenSSL's compile and link flags from pkg-config, or the usual defaults."""
    pkg_config = shutil.which("pkg-config")
    if pkg_config is not None:
        try:
            out = subprocess.run(
                [pkg_config, "--cflags", "--libs", "openssl"],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            flags = shlex.split(out)
            if flags:
                return flags
    return ["-lssl", "-lcrypto"]


def _explain_failure(stderr: str) -> str:
    """Turn a compiler's error output into a hint about what is missing."""
    if re.search(r"openssl/\w+\.h", stderr) and ("No such file" in stderr or "not found" in stderr):
        return (
            "OpenSSL development headers are missing "
            "(Debian/Ubuntu: apt install libssl-dev; Fedora: dnf install openssl-devel)"
        )
    if re.search(r"cannot find -l(ssl|crypto)", stderr) or "library not found" in stderr:
        return (
            "the OpenSSL libraries could not be linked "
            "(Debian/Ubuntu: apt install libssl-dev; Fedora: dnf install openssl-devel)"
        )
    if re.search(r"(stdio|stdlib|string)\.h", stderr) and "No such file" in stderr:
        return "the C library headers are missing (Debian/Ubuntu: apt install build-essential)"
    return "the C compiler failed"


def build_native(name: str, *, force: bool = False, cache: Optional[Path] = None) -> Path:
    """Compile ``uvssl/bench/native/<name>.c`` if needed; return the executable's path.

    The executable is cached under :func:`cache_dir` (or *cache*) with a name that
    includes a hash of the source, compiler and flags, so it is rebuilt only when one of
    them changes. Builds are atomic (compile to a temporary file, then rename), so
    concurrent callers are safe. Older builds of the same program are removed.

    Raises :class:`NativeBuildError` naming what is missing (a C compiler, or OpenSSL's
    development package ``libssl-dev``) when compiling fails.
    """
    src = native_source(name)
    cc = _compiler()
    cmd_flags = [*CFLAGS, *_openssl_flags()]
    digest = hashlib.sha256()
    digest.update(src.read_bytes())
    digest.update("\0".join([*cc, *cmd_flags, sys.platform]).encode())
    tag = digest.hexdigest()[:16]

    out_dir = cache if cache is not None else cache_dir()
    exe = out_dir / f"{name}-{tag}"
    if not force and exe.is_file() and os.access(exe, os.X_OK):
        return exe
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NativeBuildError(f"cannot create the cache directory {out_dir}: {exc}") from exc

    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    # Libraries must follow the source file for the linker, so split the flags.
    compile_flags = [f for f in cmd_flags if not f.startswith(("-l", "-L"))]
    link_flags = [f for f in cmd_flags if f.startswith(("-l", "-L"))]
    cmd = [*cc, *compile_flags, "-o", str(tmp), str(src), *link_flags]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeBuildError(f"could not run the C compiler {cc[0]}: {exc}") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise NativeBuildError(
                f"building {src.name} failed: {_explain_failure(detail)}\n"
                f"command: {shlex.join(cmd)}\n{detail}"
            )
        tmp.chmod(0o755)
        os.replace(tmp, exe)
    finally:
        if tmp.exists():
            tmp.unlink()
    for old in out_dir.glob(f"{name}-*"):
        if old != exe and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", old.name):
            try:
                old.unlink()
            except OSError:
                pass
    return exe


def main(argv: Optional[List[str]] = None) -> int:
    """Build the named native programs (default: all) and print their paths."""
    names = argv if argv is not None else sys.argv[1:]
    if not names:
        names = sorted(p.stem for p in _NATIVE_DIR.glob("*.c"))
    try:
        for name in names:
            print(build_native(name))
    except (NativeBuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
