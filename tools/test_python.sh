#!/usr/bin/env bash
# Run the test suite under another Python: a scratch copy of the tree, a venv made with that
# interpreter, the package and its test extras installed there, the extension built in place.
# The normal in-place build (uvssl/_uvssl.abi3.so, shared by every Python) is untouched.
#   bash tools/test_python.sh PYTHON [pytest args...]
#   bash tools/test_python.sh "$(pyenv root)/versions/3.9.18/bin/python" -q
set -euo pipefail
py=${1:?usage: tools/test_python.sh PYTHON [pytest args...]}
shift
src="$(cd "$(dirname "$0")/.." && pwd)"
ver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
work="${UVSSL_PYVER_DIR:-/tmp/uvssl-py$ver}"
rm -rf "$work"
mkdir -p "$work/tree"
(cd "$src" && git ls-files -co --exclude-standard | grep -v '\.so$' | tar -cf - -T -) | tar -xf - -C "$work/tree"
"$py" -m venv "$work/venv"
vpy="$work/venv/bin/python"
pipq=(-q --disable-pip-version-check --root-user-action=ignore)
"$vpy" -m pip install "${pipq[@]}" --upgrade pip
# setuptools: venvs of Python 3.12+ come without it, and setup.py build_ext needs it
"$vpy" -m pip install "${pipq[@]}" setuptools wheel "$work/tree[test]"
cd "$work/tree"
"$vpy" setup.py -q build_ext --inplace --force >/dev/null 2>&1 || "$vpy" setup.py build_ext --inplace --force
echo "pyver: Python $ver, testing $("$vpy" -c 'import uvssl._uvssl as m; print(m.__file__)')"
"$vpy" -m pytest -p no:cacheprovider "$@"
