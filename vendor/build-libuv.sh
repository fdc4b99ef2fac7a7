#!/usr/bin/env bash
# Build libuv as a static PIC library from a source tree: bash vendor/build-libuv.sh SRC [PREFIX]
set -euo pipefail
src="${1:?usage: build-libuv.sh LIBUV_SOURCE_DIR [PREFIX]}"
prefix="${2:-$(cd "$(dirname "$0")" && pwd)/libuv-static}"
[ -f "$src/CMakeLists.txt" ] || { echo "build-libuv: $src has no CMakeLists.txt (not a libuv tree?)" >&2; exit 2; }
command -v cmake >/dev/null || { echo "build-libuv: cmake is needed (apt-get install cmake)" >&2; exit 2; }
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
      -DLIBUV_BUILD_SHARED=OFF -DLIBUV_BUILD_TESTS=OFF -DCMAKE_INSTALL_PREFIX="$prefix" >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
cmake --install "$build" >/dev/null
# libuv names its static archive libuv_a.a in some releases
if [ -f "$prefix/lib/libuv_a.a" ] && [ ! -f "$prefix/lib/libuv.a" ]; then
    cp "$prefix/lib/libuv_a.a" "$prefix/lib/libuv.a"
fi
echo "build-libuv: installed into $prefix (set UVSSL_LIBUV_PREFIX=$prefix)"
