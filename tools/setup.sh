#!/usr/bin/env bash
# Install what uvssl needs on a Debian/Ubuntu machine (as root) and build it in place.
#   bash tools/setup.sh          runtime + test dependencies (haproxy: the suite runs uvssl behind it)
#   bash tools/setup.sh --bench  also the bench's optional peers (uvloop, aiofastnet, aiohttp,
#                                matplotlib) and wrk (the load client of its aiohttp cell)
#   bash tools/setup.sh --dev    the linters (ruff, mypy), coverage, valgrind and the bench peers too
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(gcc pkg-config libuv1-dev libssl-dev openssl haproxy)
if [ "${1:-}" = "--dev" ]; then
    pkgs+=(valgrind)  # tools/perf_guard.py counts instructions with callgrind
fi
if [ "${1:-}" = "--dev" ] || [ "${1:-}" = "--bench" ]; then
    pkgs+=(wrk)  # the bench's https-hello cell (aiohttp over HTTPS) is driven by wrk
fi
need=()
for pkg in "${pkgs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

extras="test"
if [ "${1:-}" = "--dev" ]; then
    extras="dev"
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    --config-settings editable_mode=compat -e ".[$extras]"
if [ "${1:-}" = "--dev" ] || [ "${1:-}" = "--bench" ]; then
    # the bench extras are optional: a missing one is reported as skipped by the bench
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        uvloop aiohttp matplotlib || echo "setup: uvloop/aiohttp/matplotlib unavailable; the bench skips them"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        aiofastnet || echo "setup: aiofastnet unavailable; the bench reports it as skipped"
fi
python3 -c "import uvssl; print('setup: uvssl', uvssl.__version__, 'ready;', uvssl.openssl_version()['loaded'][1])"
