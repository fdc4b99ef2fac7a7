#!/usr/bin/env bash
# Server instructions per operation, counted by valgrind's callgrind: a figure that stays put on
# a noisy shared machine, where wall-clock CPU moves by tens of percent from one hour to the next.
#
#   bash tools/instr.sh CELL SERVER [SMALL LARGE]
#
# CELL:   echo (64 B over 64 TLS connections, per request), echo-1 (the same over one TLS
#         connection, one request at a time), plain-echo (64 B over 64 plain TCP
#         connections), bulk (64 KiB chunks over one TLS connection, per MB echoed), hs-full and
#         hs-resumed (TLS 1.3 handshakes, per handshake), udp-echo (64 B datagrams, 64 in
#         flight, per datagram echoed)
# SERVER: uvssl, native, asyncio, uvloop, aiofastnet (the bench's servers; udp-echo: uvssl,
#         asyncio, uvloop)
#
# The server runs under callgrind on CPU 0 while the bench's load client drives it from CPU 1,
# twice: once for SMALL operations and once for LARGE (bulk: seconds). The difference of the two
# totals divided by the difference of the operations is the cost of one operation, with start-up
# and shut-down cancelled out. Needs valgrind (apt-get install valgrind); takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

cell=${1:-}
server=${2:-}
if [ -z "$cell" ] || [ -z "$server" ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
command -v valgrind >/dev/null || { echo "instr.sh: valgrind is not installed" >&2; exit 2; }

py=$(python3 -c 'import sys; print(sys.executable)')  # the real interpreter, not a shim
loadgen=$(python3 -m uvssl.bench.native_build loadgen)
work=$(mktemp -d /tmp/uvssl-instr.XXXXXX)
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'EOF'
import sys
from pathlib import Path
from uvssl.bench.runner import make_certificate
make_certificate(Path(sys.argv[1]))
EOF

tls=(--cert "$work/cert.pem" --key "$work/key.pem")
lg_tls=(--tls)
udp=0
case "$cell" in
    echo) lg=(--mode echo --conns 64); small=${3:-2000}; large=${4:-12000}; unit=request ;;
    echo-1) lg=(--mode echo --conns 1); small=${3:-1000}; large=${4:-5000}; unit=request ;;
    plain-echo) lg=(--mode echo --conns 64); small=${3:-2000}; large=${4:-22000}; unit=request
        tls=(); lg_tls=(--plain) ;;
    bulk) lg=(--mode bulk); small=${3:-2}; large=${4:-6}; unit=MB ;;
    hs-full) lg=(--mode handshake --conns 16); small=${3:-100}; large=${4:-600}; unit=handshake ;;
    hs-resumed) lg=(--mode handshake --conns 16 --resume); small=${3:-100}; large=${4:-600}
        unit=handshake ;;
    udp-echo) lg=(--inflight 64 --size 64); small=${3:-2000}; large=${4:-22000}; unit=datagram
        udp=1; tls=(); lg_tls=(); loadgen=$(python3 -m uvssl.bench.native_build udp_load) ;;
    *) echo "instr.sh: unknown cell $cell" >&2; exit 2 ;;
esac

case "$udp:$server" in
    1:uvssl) argv=("$py" -m uvssl.bench.udp_echo --port 0) ;;
    1:asyncio | 1:uvloop) argv=("$py" -m uvssl.bench.py_servers --impl "$server" --port 0 --udp) ;;
    1:*) echo "instr.sh: $server has no UDP echo server" >&2; exit 2 ;;
    0:uvssl)
        if [ ${#tls[@]} -gt 0 ]; then
            argv=("$py" -m uvssl serve --port 0 "${tls[@]}" --quiet)
        else
            argv=("$py" -m uvssl.bench.plain_echo --port 0)
        fi ;;
    0:native)
        argv=("$(python3 -m uvssl.bench.native_build echo_server)" --port 0)
        if [ ${#tls[@]} -gt 0 ]; then argv+=("${tls[@]}"); else argv+=(--plain); fi ;;
    0:asyncio | 0:uvloop | 0:aiofastnet)
        argv=("$py" -m uvssl.bench.py_servers --impl "$server" --port 0)
        if [ ${#tls[@]} -gt 0 ]; then argv+=("${tls[@]}"); else argv+=(--plain); fi ;;
    *) echo "instr.sh: unknown server $server" >&2; exit 2 ;;
esac

# one run: prints "<instructions> <operations>"
measure() {
    local n=$1 out="$work/cg.$1" log="$work/server.$1.log" pid port ops
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" "${argv[@]}" \
        >"$log" 2>"$work/valgrind.$1.log" &
    pid=$!
    for _ in $(seq 1 600); do grep -q '^READY' "$log" 2>/dev/null && break; sleep 0.1; done
    port=$(awk '/^READY/ {print $2; exit}' "$log")
    if [ -z "$port" ]; then
        kill "$pid" 2>/dev/null || true
        echo "instr.sh: the server did not start; see $log" >&2
        exit 1
    fi
    if [ "$cell" = bulk ]; then
        taskset -c 1 "$loadgen" --port "$port" "${lg_tls[@]}" "${lg[@]}" --warmup 0 \
            --duration "$n" --timeout 60 >"$work/lg.$n.json"
    else
        taskset -c 1 "$loadgen" --port "$port" "${lg_tls[@]}" "${lg[@]}" --warmup 0 \
            --count "$n" --duration 600 --timeout 60 >"$work/lg.$n.json"
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    ops=$(python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
if d.get('error'):
    sys.exit('load client: ' + d['error'])
print(d['bytes'] / 1e6 if '$cell' == 'bulk' else d.get('requests') or d['handshakes'])
" "$work/lg.$n.json")
    echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$out") $ops"
}

read -r ir1 ops1 < <(measure "$small")
read -r ir2 ops2 < <(measure "$large")
python3 -c "
ir1, ops1, ir2, ops2 = map(float, '$ir1 $ops1 $ir2 $ops2'.split())
per = (ir2 - ir1) / (ops2 - ops1)
print(f'$server $cell: {per:,.0f} instructions per $unit '
      f'({ops1:g} and {ops2:g} operations: {ir1:,.0f} and {ir2:,.0f} instructions)')
"
