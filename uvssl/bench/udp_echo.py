"""uvssl's UDP echo server for the benchmark's udp-echo cell.

Run as ``python -m uvssl.bench.udp_echo [--host H] --port P``. Once bound it prints
``READY <port>`` on stdout; SIGTERM or SIGINT stop it cleanly (exit 0). Every datagram is sent
straight back to its sender (``sock.send_to(data, host, port)``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Optional

from .. import UdpSocket, exit_event_loop, start_event_loop, udp_socket

__all__ = ["main", "serve"]


def _read(sock: UdpSocket, data: bytes, address: tuple[str, int]) -> None:
    sock.send_to(data, address[0], address[1])


def _event(ev: BaseException) -> None:
    """Errors (an ICMP error for a client gone, say) are not fatal to an echo server."""


def serve(host: str, port: int) -> None:
    """Serve UDP echo on *host*:*port* until SIGTERM or SIGINT; print ``READY <port>``."""

    def start() -> None:
        sock = udp_socket(_read, _event, local_host=host, local_port=port)
        print(f"READY {sock.local_address[1]}", flush=True)

    def on_signal(signum: int, frame: Any) -> None:
        exit_event_loop()

    old_term = signal.signal(signal.SIGTERM, on_signal)
    old_int = signal.signal(signal.SIGINT, on_signal)
    try:
        start_event_loop(start, catch_app_errors=True)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def main(argv: Optional[list[str]] = None) -> int:
    """Parse the command line and run the server; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m uvssl.bench.udp_echo", description="uvssl UDP echo server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
