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
# cffi's backend keeps one module-init allocation for the life of the process: not ours.
cat > lsan.supp <<'SUPP'
leak:_my_Py_InitModule
SUPP
loaded="$(LD_PRELOAD="$asan_rt" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$work" \
    "$py" -c 'import uvssl._uvssl as m; print(m.__file__)')"
case "$loaded" in
    "$work"/*) echo "asan: testing $loaded" ;;
    *) echo "asan: the sanitized extension was not the one imported ($loaded)" >&2; exit 1 ;;
esac
export PYTHONMALLOC=malloc
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_odr_violation=0"
export LSAN_OPTIONS="suppressions=$work/lsan.supp:print_suppressions=0"
LD_PRELOAD="$asan_rt" PYTHONPATH="$work" "$py" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$work/asan.log"
status=${PIPESTATUS[0]}
if grep -q "ERROR: AddressSanitizer\|ERROR: LeakSanitizer" "$work/asan.log"; then
    echo "asan: sanitizer errors found (see $work/asan.log)" >&2
    exit 1
fi
exit "$status"
