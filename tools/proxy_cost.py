"""What the PROXY protocol costs a server per connection, in instructions (callgrind).

    python3 tools/proxy_cost.py [--small N] [--large N]

A plain uvssl TCP server runs under valgrind's callgrind, once with ``proxy_protocol=True``
and once without; a client process (not counted) makes N connections to it, each sending a
v2 header with two TLVs (the proxied runs) and one byte, reading the byte's echo and closing.
Each server runs twice (N small and N large) and the difference of the totals divided by the
difference of the connections is its cost per connection, start-up cancelled out. The
difference between the two servers' costs is what the protocol adds per connection: the C
parser and its bookkeeping, the deadline timer, and the Python side (``proxy_tlvs``). The C
parser's part (the self cost of proxy.c's functions, without the allocations and the timer
they ask for) is printed too, from the large proxied run's profile. Compare with a resumed
TLS handshake (about 2.5 M instructions: tools/perf_budget.json, hs-resumed). Needs valgrind;
takes a minute or two.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

SERVER = r"""
import sys
import uvssl

proxy = sys.argv[1] == "1"

def start():
    def on_read(sock, data):
        sock.write(data)
        sock.close()

    def on_event(err):
        if err.socket is not None:
            err.socket.close()

    def stop(signum):
        uvssl.exit_event_loop()

    server = uvssl.tcp_server("127.0.0.1", 0, on_read, on_event, proxy_protocol=proxy)
    uvssl.signal_handler(15, stop)
    print("READY", server.port, flush=True)

uvssl.start_event_loop(start)
"""

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def header() -> bytes:
    """A v2 TCP4 header with ALPN and authority TLVs, as HAProxy's send-proxy-v2 writes it."""
    tlvs = struct.pack("!BH", 1, 2) + b"h2" + struct.pack("!BH", 2, 11) + b"example.com"
    body = socket.inet_aton("192.0.2.1") + socket.inet_aton("192.0.2.2")
    body += struct.pack("!HH", 40000, 443) + tlvs
    return SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body


def client(port: int, n: int, proxy: bool) -> None:
    """Make n connections, one after another: header (when proxied) and a byte, then its echo."""
    payload = (header() if proxy else b"") + b"x"
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(payload)
            if s.recv(10) != b"x":
                sys.exit("proxy_cost: the server did not echo")


def measure(work: Path, proxy: bool, n: int) -> tuple[int, Path]:
    """Total instructions of a server run that served n connections, and its profile."""
    out = work / f"cg.{int(proxy)}.{n}"
    script = work / "server.py"
    script.write_text(SERVER)
    env = dict(os.environ, PYTHONPATH=str(HERE))
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(script),
            "1" if proxy else "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        sys.exit("proxy_cost: the server did not start")
    client(int(line.split()[1]), n, proxy)
    time.sleep(0.5)
    proc.terminate()
    proc.wait(120)
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if m is None:
        sys.exit("proxy_cost: no totals in the callgrind output")
    return int(m.group(1)), out


def c_part(profile: Path) -> int:
    """Self cost of proxy.c's functions in a profile."""
    ann = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(profile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0
    for line in ann.splitlines():
        if "csrc/proxy.c:" in line and "=>" not in line:  # self costs, not calls
            m = re.match(r"\s*([\d,]+)", line)
            if m:
                total += int(m.group(1).replace(",", ""))
    return total


def main() -> None:
    """Measure and print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="uvssl-proxy-cost.") as tmp:
        work = Path(tmp)
        per = {}
        for proxy in (False, True):
            ir1, _ = measure(work, proxy, args.small)
            ir2, prof = measure(work, proxy, args.large)
            per[proxy] = (ir2 - ir1) / (args.large - args.small)
            print(
                f"{'proxied' if proxy else 'plain'} server: {per[proxy]:,.0f} instructions "
                "per connection"
            )
            if proxy:
                c_self = c_part(prof) / args.large
        added = per[True] - per[False]
        print(
            f"the PROXY protocol adds {added:,.0f} instructions per connection "
            f"({added / 2.5e6:.2%} of a 2.5 M-instruction resumed handshake); "
            f"proxy.c's own functions: {c_self:,.0f}"
        )


if __name__ == "__main__":
    main()
