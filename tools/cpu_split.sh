#!/usr/bin/env bash
# A server's CPU per operation split into user and system time, with its context switches and
# page faults, over a long window: for telling where a difference between servers lies when the
# bench's short cells cannot (the kernel's share of a request moves by microseconds).
#
#   bash tools/cpu_split.sh SERVER [COUNT] [MODE] [CONNS]
#
# SERVER: uvssl, native, asyncio, uvloop, aiofastnet, uvssl-aio (the bench's TLS servers)
# COUNT:  operations measured (default 60000); MODE: echo or handshake (default echo);
# CONNS:  connections (default 1)
#
# The server runs on CPU 0 and the bench's load client on CPU 1. After 2,000 operations of
# warm-up, /proc is read before and after COUNT operations; the difference per operation is
# printed. Run it several times, servers taking turns: figures from one run alone are noise.
set -euo pipefail
cd "$(dirname "$0")/.."

server=${1:-}
count=${2:-60000}
mode=${3:-echo}
conns=${4:-1}
if [ -z "$server" ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
case "$mode" in echo | handshake) ;; *) echo "cpu_split.sh: MODE is echo or handshake" >&2; exit 2 ;; esac

py=$(python3 -c 'import sys; print(sys.executable)')
loadgen=$(python3 -m uvssl.bench.native_build loadgen)
work=$(mktemp -d /tmp/uvssl-cpu-split.XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

python3 - "$work" <<'EOF'
import sys
from pathlib import Path
from uvssl.bench.runner import make_certificate
make_certificate(Path(sys.argv[1]))
EOF
tls=(--cert "$work/cert.pem" --key "$work/key.pem")
case "$server" in
    uvssl) argv=("$py" -m uvssl serve --port 0 "${tls[@]}" --quiet) ;;
    native) argv=("$(python3 -m uvssl.bench.native_build echo_server)" --port 0 "${tls[@]}") ;;
    asyncio | uvloop | aiofastnet | uvssl-aio)
        argv=("$py" -m uvssl.bench.py_servers --impl "$server" --port 0 "${tls[@]}") ;;
    *) echo "cpu_split.sh: unknown server $server" >&2; exit 2 ;;
esac

taskset -c 0 "${argv[@]}" >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q '^READY' "$work/server.log" 2>/dev/null && break; sleep 0.1; done
port=$(awk '/^READY/ {print $2; exit}' "$work/server.log")
if [ -z "$port" ]; then
    echo "cpu_split.sh: the server did not start; its output:" >&2
    cat "$work/server.log" >&2
    exit 1
fi

drive() {
    local lg=("$loadgen" --port "$port" --tls --mode "$mode" --conns "$conns" --warmup 0
        --count "$1" --duration 600 --timeout 60)
    if [ "$mode" = handshake ]; then lg+=(--resume); fi
    taskset -c 1 "${lg[@]}" >"$work/lg.json"
    python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
if d.get('error') or d.get('errors'):
    sys.exit('cpu_split.sh: load client: ' + str(d.get('error') or d['errors']))
" "$work/lg.json"
}

# user and system ticks, minor faults, and context switches summed over the server's threads
snapshot() {
    python3 - "$pid" <<'EOF'
import os, sys
pid = sys.argv[1]
fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
switches = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
for tid in os.listdir(f"/proc/{pid}/task"):
    for line in open(f"/proc/{pid}/task/{tid}/status"):
        key, _, value = line.partition(":")
        if key in switches:
            switches[key] += int(value)
print(fields[11], fields[12], fields[7], switches["voluntary_ctxt_switches"],
      switches["nonvoluntary_ctxt_switches"])
EOF
}

drive 2000
before=$(snapshot)
drive "$count"
after=$(snapshot)
python3 - "$server" "$mode" "$count" "$(getconf CLK_TCK)" "$before" "$after" <<'EOF'
import sys
server, mode, n, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
a, b = (list(map(int, s.split())) for s in sys.argv[5:7])
d = [(y - x) for x, y in zip(a, b)]
unit = "request" if mode == "echo" else "handshake"
user, system = d[0] / hz / n * 1e6, d[1] / hz / n * 1e6
print(f"{server} {mode}: {user + system:.1f} us CPU per {unit} = {user:.1f} user + {system:.1f} "
      f"system; per {unit}: {d[3] / n:.2f} voluntary and {d[4] / n:.3f} involuntary context "
      f"switches, {d[2] / n:.3f} page faults ({n} {unit}s)")
EOF
