"""uvssl's plain-TCP echo server for the benchmark's plain-TCP rows.

Run as ``python -m uvssl.bench.plain_echo [--host H] --port P [--reuse-port]``; with
``--reuse-port`` several of them can serve one port (the bench's ``--workers``). Once listening
it prints ``READY <port>`` on stdout; SIGTERM or SIGINT stop it cleanly (exit 0). Every received
chunk is written straight back (``sock.write(data)``); a connection is closed on EOF or any
error.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Optional

from .. import Socket, exit_event_loop, start_event_loop, tcp_server

__all__ = ["main", "serve"]


def _read(sock: Socket, data: bytes) -> None:
    sock.write(data)


def _event(ev: BaseException) -> None:
    sock = getattr(ev, "socket", None)
    if sock is not None and not sock.closed:
        sock.close()


def serve(host: str, port: int, reuse_port: bool = False) -> None:
    """Serve plain-TCP echo on *host*:*port* until SIGTERM or SIGINT; print ``READY <port>``.

    With *reuse_port* the listening socket has SO_REUSEPORT, so other processes can serve the
    same port.
    """

    def start() -> None:
        server = tcp_server(host, port, _read, _event, reuse_port=reuse_port)
        print(f"READY {server.port}", flush=True)

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
        prog="python -m uvssl.bench.plain_echo", description="uvssl plain-TCP echo server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--reuse-port", action="store_true", help="set SO_REUSEPORT (several servers, one port)"
    )
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, args.reuse_port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
