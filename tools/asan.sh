#!/usr/bin/env bash
# Run the test suite against an AddressSanitizer + LeakSanitizer build of the native core.
# The build happens in a scratch copy of the tree, so the normal in-place build is untouched.
#   bash tools/asan.sh [pytest args...]
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="${UVSSL_ASAN_DIR:-/tmp/uvssl-asan}"
rm -rf "$work"
mkdir -p "$work"
(cd "$src" && git ls-files -co --exclude-standard | grep -v '\.so$' | tar -cf - -T -) | tar -xf - -C "$work"
cd "$work"
py="$(python3 -c 'import sys; print(sys.executable)')"   # the real binary, not a shim
UVSSL_SANITIZE=1 "$py" build_ffi.py >/dev/null 2>&1
asan_rt="$(gcc -print-file-name=libasan.so)"
# Allocations that live as long as the interpreter and are not ours: cffi's module and
# attribute caches, objects Python does not free at exit, and the cryptography package's Rust
# extension (trustme uses it), and OpenSSL's decoder and key-management caches (process-wide,
# filled the first time a key is decoded or a context made). None of them is memory the native
# core owns.
cat > lsan.supp <<'SUPP'
leak:_my_Py_InitModule
leak:lib_build_cpython_func
leak:lib_build_and_cache_attr
leak:_PyObject_GC_New
leak:cryptography/hazmat/bindings/_rust.abi3.so
leak:OSSL_DECODER_do_all_provided
leak:EVP_KEYMGMT_fetch
SUPP
loaded="$(LD_PRELOAD="$asan_rt" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$work" \
    "$py" -c 'import uvssl._uvssl as m; print(m.__file__)')"
case "$loaded" in
    "$work"/*) echo "asan: testing $loaded" ;;
    *) echo "asan: the sanitized extension was not the one imported ($loaded)" >&2; exit 1 ;;
esac
export PYTHONMALLOC=malloc
export UVSSL_TEST_SLOWDOWN=5  # tests that run whole server processes widen their time limits
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_odr_violation=0:fast_unwind_on_malloc=0:malloc_context_size=40"
export LSAN_OPTIONS="suppressions=$work/lsan.supp:print_suppressions=0:exitcode=0"  # the parse below decides
set +e
LD_PRELOAD="$asan_rt" PYTHONPATH="$work" "$py" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$work/asan.log"
status=${PIPESTATUS[0]}
set -e
# Memory errors always fail. Leaks fail when the native core allocated them (walking up from the
# allocation, a frame in csrc/ before any Python frame; the build names sources "csrc/x.c");
# what Python objects still own at interpreter exit (stdlib ssl objects, say) is reported as a
# count only. tests/conftest.py frees uvssl's context cache before exit, so a context alive then
# is a leak.
"$py" - "$work/asan.log" <<'PARSE' || status=1
import re, sys
text = open(sys.argv[1], errors="replace").read()
if "ERROR: AddressSanitizer" in text:
    print("asan: memory errors found", file=sys.stderr)
    sys.exit(1)
blocks = [b for b in re.split(r"\n(?=(?:Direct|Indirect) leak of )", text)
          if re.match(r"(Direct|Indirect) leak", b)]
frame = re.compile(r"#\d+ 0x[0-9a-f]+ in (\S+) (\S+)")
python = re.compile(r"^(_?Py|_cffi|cffi_|b_|_my_Py|lib_build)|python3|_cffi_backend")
def ours_allocated(block):
    # The native core allocated a block when, walking up from malloc, a csrc/ frame comes
    # before any frame of Python or cffi (a Python callback run from C allocates for Python);
    # so did uvssl's Python code when the first such frame is a call through the compiled
    # module (_cffi_f_SSL_CTX_new, say: an SSL_CTX that uvssl made and never freed).
    for fn, where in frame.findall(block):
        if re.search(r"(^|/)csrc/", where) or fn.startswith("_cffi_f_"):
            return True
        if python.search(fn) or python.search(where):
            return False
    return False
ours = [b for b in blocks if ours_allocated(b)]
others = [b for b in blocks if not ours_allocated(b)]
print(f"asan: {len(ours)} leak reports from the native core, {len(others)} from elsewhere at exit")
for b in ours[:10]:
    print(b[:3000], file=sys.stderr)
sys.exit(1 if ours else 0)
PARSE
echo "asan: log in $work/asan.log"
exit "$status"
