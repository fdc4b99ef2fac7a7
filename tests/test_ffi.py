"""The FFI has one source: csrc/uvssl_api.h (and csrc/openssl_cdef.h) become build_ffi.py's
cdef by one mechanical transformation, and the compiled module must be exactly what that cdef
declares. These tests fail when the header and the built extension disagree (a stale build, a
declaration added on one side only, a constant whose value moved).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
sys.path.insert(0, str(ROOT))

import build_ffi  # noqa: E402
from uvssl._uvssl import ffi, lib  # noqa: E402

API = (CSRC / "uvssl_api.h").read_text()


def _declared() -> dict[str, list[str]]:
    """What the cdef derived from the headers declares, by kind (function, macro, ...)."""
    parsed = FFI()
    parsed.cdef(build_ffi.cdef())
    kinds: dict[str, list[str]] = {}
    for key, (tp, _) in parsed._parser._declarations.items():
        kind, _, name = key.partition(" ")
        if kind == "anonymous" and hasattr(tp, "enumerators"):
            kinds.setdefault("enumerator", []).extend(tp.enumerators)
        else:
            kinds.setdefault(kind, []).append(name)
    return kinds


def test_build_ffi_reads_its_cdef_from_the_headers() -> None:
    assert build_ffi.CDEF_HEADERS == ["openssl_cdef.h", "uvssl_api.h"]
    assert not hasattr(build_ffi, "CDEF"), "the cdef must come from csrc/, not a copy"
    expected = "".join(
        build_ffi.cdef_from_header((CSRC / h).read_text()) for h in build_ffi.CDEF_HEADERS
    )
    assert build_ffi.cdef() == expected + build_ffi.BINDING_CDEF
    assert build_ffi.ffibuilder._cdefsources == [build_ffi.cdef()]


def test_compiled_module_has_exactly_what_the_cdef_declares() -> None:
    kinds = _declared()
    names = set(dir(lib))
    declared: set[str] = set()
    for kind in ("function", "macro", "constant", "enumerator", "extern_python"):
        declared.update(kinds.get(kind, ()))
    assert declared - names == set(), "declared in the headers, missing from the built module"
    assert names - declared == set(), "in the built module, not declared: rebuild (--force)"
    typedefs, structs, unions = ffi.list_types()
    assert set(kinds["typedef"]) <= set(typedefs)


def test_every_public_prototype_is_in_lib() -> None:
    protos = set(re.findall(r"\b(uvs_\w+)\s*\(", API))
    assert len(protos) > 60
    missing = sorted(p for p in protos if not hasattr(lib, p))
    assert missing == []


def test_public_prototypes_live_in_the_public_header() -> None:
    """Every uvs_* function another C header declares is in uvssl_api.h too (tls.h still
    repeats the TLS ones), except the callback installer, which only the binding's C calls."""
    api = set(re.findall(r"^[^ /*#].*?\b(uvs_[a-z]\w*)\(", API, re.M))
    for header in sorted(CSRC.glob("*.h")):
        if header.name in ("uvssl_api.h", "openssl_cdef.h"):
            continue
        text = header.read_text()
        found = set(re.findall(r"^[^ /*#].*?\b(uvs_[a-z]\w*)\(", text, re.M))
        assert found - api - {"uvs_set_callbacks"} == set(), header.name
    assert '#include "uvssl_api.h"' in (CSRC / "uvs.h").read_text()


def _c_value(text: str) -> int:
    return int(text.strip().strip("()"), 0)


def test_constant_values_come_from_the_header() -> None:
    # enumerators with the values the header gives them
    enums = re.findall(r"^\s+(UVS_[A-Z0-9_]+) = (-?\w+),?", API, re.M)
    assert len(enums) > 30
    for name, value in enums:
        assert getattr(lib, name) == _c_value(value), name
    # object-like macros with a literal value, outside the cdef-only groups
    defines = re.findall(r"^#define (UVS_[A-Z0-9_]+) (\S.*)$", API, re.M)
    assert {n for n, _ in defines} >= {"UVS_EFOREIGN", "UVS_TLS_MAX_ERRORS"}
    for name, value in defines:
        if value != "...":
            assert getattr(lib, name) == _c_value(value), name


@pytest.mark.parametrize(
    "name,value",
    [
        ("SSL_R_CERTIFICATE_VERIFY_FAILED", 134),
        ("X509_V_ERR_HOSTNAME_MISMATCH", 62),
        ("UVS_TLS_MAX_ERRORS", 16),
        ("UVS_X509_SUBJECT", 0),
        ("UVS_X509_VERSION", 6),
    ],
)
def test_constants_python_relied_on_as_literals(name: str, value: int) -> None:
    assert getattr(lib, name) == value


def test_transformation() -> None:
    header = "\n".join(
        [
            "#ifndef X_H",
            "#define X_H",
            "#include <stdint.h>",
            "#define A (-0x10)",
            "enum { B = 1 };",
            "#ifndef UVS_CDEF",
            "typedef union { int i; } u_t;",
            "#else",
            "typedef union { ...; } u_t;",
            "#define C 3",
            "#endif",
            "#ifdef UVS_CDEF",
            "#define D ...",
            "#endif",
            "int f(u_t *u);",
            "#endif /* X_H */",
        ]
    )
    assert build_ffi.cdef_from_header(header) == "\n".join(
        [
            "#define A ...",
            "enum { B = 1 };",
            "typedef union { ...; } u_t;",
            "#define C ...",
            "#define D ...",
            "int f(u_t *u);",
            "",
        ]
    )
    for bad in (
        "#define F(x) (x)",
        "#define G 1 + \\",
        "#if FOO\nint g(void);\n#endif",
        "#ifdef UVS_CDEF\n#ifdef X\n#endif\n#endif",
        "#ifdef UVS_CDEF\nint h(void);",
    ):
        with pytest.raises(ValueError):
            build_ffi.cdef_from_header(bad)
