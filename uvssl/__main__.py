"""Command line: ``python -m uvssl serve | bench | demo``.

serve   a TLS echo server (a throwaway self-signed certificate unless --cert/--key are given;
        --workers N for N processes on one port; SIGHUP reloads the certificate)
bench   the benchmark: uvssl against a native C server, asyncio, uvloop and aiofastnet
demo    a short plain-TCP echo demonstration on 127.0.0.1
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any, Optional

from . import (
    Context,
    Socket,
    SocketError,
    TcpEof,
    free_signal_handler,
    free_signal_handlers,
    signal_handler,
    start_event_loop,
    tcp_connect,
    tcp_server,
    tcp_ssl_server,
    tickets,
    workers,
)
from ._uvssl import ffi, lib
from .errors import openssl_failure


def self_signed_context(common_name: str = "localhost", days: int = 7) -> tuple[Context, str]:
    """A server ``Context`` with a fresh self-signed certificate; returns it and the
    certificate's SHA-256 fingerprint (``AB:CD:...``).
    """
    ctx = Context.server()
    fp = ffi.new("unsigned char[32]")
    if lib.uvs_ctx_use_self_signed(ctx._ctx, common_name.encode("utf-8"), days, fp) != 1:
        raise openssl_failure("cannot make a self-signed certificate", "self-signed")
    return ctx, ":".join(f"{b:02X}" for b in bytes(ffi.buffer(fp, 32)))


# Write buffer limits of a connection that has echoed more than the default high-water mark
# (64 KiB) ahead of its peer: a bulk sender, which keeps more in flight.
_BULK_HIGH = 256 * 1024
_BULK_LOW = 64 * 1024


def echo_read(sock: Socket, data: bytes) -> None:
    """``serve``'s ``read_cb``: write the data back; stop reading while the peer does not."""
    if sock.write(data):
        return
    if sock.drain_cb is None:
        # The first time: bulk-sized limits, set here rather than for every connection at
        # connect, so that a connection which never gets this far costs nothing for them.
        sock.set_write_buffer_limits(_BULK_HIGH, _BULK_LOW, drain_cb=echo_drain)
        if sock.write_buffer_size <= _BULK_HIGH:
            return
    sock.pause_reading()  # the peer is not reading: stop until our buffer drains


def echo_drain(sock: Socket) -> None:
    """``serve``'s ``drain_cb``: the write buffer has drained, so read again."""
    if not sock.closed:
        sock.resume_reading()


def echo_event(ev: BaseException) -> None:
    """``serve``'s ``event_cb``: close the connection on EOF or any error."""
    sock = getattr(ev, "socket", None)
    if sock is not None and not sock.closed:
        sock.close()


def say(text: str) -> None:
    """Print one line with one write: worker processes share the output, and their lines
    must not interleave.
    """
    sys.stdout.flush()
    data = (text + "\n").encode("utf-8", "replace")
    while data:
        data = data[os.write(sys.stdout.fileno(), data) :]


def read_ticket_key_files(paths: list[str]) -> list[bytes]:
    """The session ticket keys in ``paths`` (nginx's format: 80 bytes a file), first first;
    SystemExit with a one-line message naming the file that is wrong (never its content).
    """
    keys: list[bytes] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                key = f.read(tickets.KEY_LENGTH + 1)
        except OSError as exc:
            raise SystemExit(
                f"uvssl serve: --ticket-key-file {path}: cannot read it: {exc.strerror}"
            ) from None
        if len(key) != tickets.KEY_LENGTH:
            size = f"{len(key)} bytes" if len(key) <= tickets.KEY_LENGTH else "too long"
            raise SystemExit(
                f"uvssl serve: --ticket-key-file {path}: is {size}; a key file holds exactly "
                f"{tickets.KEY_LENGTH} bytes (make one with 'openssl rand {tickets.KEY_LENGTH} "
                f"> {path}')"
            )
        keys.append(key)
    try:
        return tickets.check_keys("--ticket-key-file", keys)
    except (TypeError, ValueError) as exc:  # two files with the same key name, too many
        raise SystemExit(f"uvssl serve: {exc}") from None


def serve(
    host: str,
    port: int,
    cert: Optional[str],
    key: Optional[str],
    quiet: bool,
    reuse_port: bool = False,
    graceful_timeout: float = 30.0,
    workers_n: Optional[int] = None,
    ticket_key_files: Optional[list[str]] = None,
    proxy_protocol: bool = False,
) -> None:
    """Run the TLS echo server until Ctrl-C or SIGTERM.

    SIGTERM and the first Ctrl-C shut it down gracefully (``TcpServer.shutdown``: no new
    connections, each open one closed once its echo is flushed, the rest aborted after
    ``graceful_timeout`` seconds); a second Ctrl-C stops it at once. SIGHUP reloads the
    certificate and key files (``Context.reload``) and the ticket key files.

    With ``workers_n`` (0: one per CPU) it runs that many worker processes
    (``serve_workers``) on one port, which the parent reserves first (so ``port=0`` picks
    one port for all of them); each worker prints its own ``READY`` line.
    """
    key_files = list(ticket_key_files or [])
    keys = read_ticket_key_files(key_files) if key_files else None
    if cert is None and key is not None:
        raise SystemExit("uvssl serve: --key needs --cert")
    if cert is None:
        ctx, fingerprint = self_signed_context()
        if keys is not None:
            ctx.rotate_session_ticket_keys(keys)
    else:
        try:
            ctx = Context.server(certificate=cert, key=key, session_ticket_keys=keys)
        except (OSError, ValueError) as exc:  # a missing or unusable file: no traceback
            raise SystemExit(f"uvssl serve: --cert/--key: {exc}") from None
        fingerprint = ""

    hold = None
    if workers_n is not None:
        # the workers' servers share one port: reserve it here (port 0 picks it), so that
        # each worker listens on the same one, and a port in use is one message, not a
        # crashing worker after another
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
        try:
            hold = workers.reserve_port(host, port)
        except OSError as exc:
            raise SystemExit(f"uvssl serve: {exc}; choose another --port or --host") from None
        port = hold.getsockname()[1]

    def tag() -> str:
        return f"uvssl serve (worker {os.getpid()})" if workers.in_worker() else "uvssl serve"

    def start() -> None:
        try:
            server = tcp_ssl_server(
                host,
                port,
                echo_read,
                echo_event,
                ssl_ctx=ctx,
                reuse_port=reuse_port,
                proxy_protocol=proxy_protocol,
            )
        except SocketError as exc:  # the address is taken, or not this machine's
            hint = "; choose another --port" if exc.identifier == "address-in-use" else ""
            raise SystemExit(f"uvssl serve: {exc}{hint}") from None
        if fingerprint and not quiet and workers_n is None:
            say(f"uvssl serve: self-signed certificate, SHA-256 {fingerprint}")
        say(f"READY {server.port}")
        if not quiet:
            say(
                f"{tag()}: TLS echo on {server.address}:{server.port} "
                "(Ctrl-C or SIGTERM to stop, SIGHUP to reload)"
            )

        def drain(signum: int) -> None:
            if server.shutting_down:
                return
            # from now on a Ctrl-C raises KeyboardInterrupt again: the loop stops at once
            free_signal_handler(signal.SIGINT)
            if not quiet:
                say(
                    f"{tag()}: {signal.Signals(signum).name}: shutting down (up to"
                    f" {graceful_timeout:g} s for open connections; Ctrl-C again to stop now)"
                )
            server.shutdown(graceful_timeout, lambda srv: free_signal_handlers())

        def reload(signum: int) -> None:
            if cert is not None:
                try:
                    leaf = ctx.reload()
                except (OSError, ValueError) as exc:
                    say(f"{tag()}: SIGHUP: {exc}; the old certificate stays")
                else:
                    fp = leaf.fingerprint() if leaf is not None else "?"
                    say(f"{tag()}: SIGHUP: certificate reloaded, SHA-256 {fp}")
            elif not quiet:
                say(f"{tag()}: SIGHUP: a self-signed certificate has no file to reload")
            if key_files:
                try:
                    ctx.rotate_session_ticket_keys(read_ticket_key_files(key_files))
                except SystemExit as exc:
                    say(f"{exc}; the old ticket keys stay")
                else:
                    say(f"{tag()}: SIGHUP: {len(key_files)} ticket key(s) reloaded")

        signal_handler(signal.SIGTERM, drain)
        signal_handler(signal.SIGINT, drain)
        signal_handler(signal.SIGHUP, reload)

    if hold is not None:
        assert workers_n is not None
        with hold:
            if not quiet:
                if fingerprint:
                    say(f"uvssl serve: self-signed certificate, SHA-256 {fingerprint}")
                count = workers_n or "one per CPU"
                say(f"uvssl serve: workers ({count}) on {host} port {port}")
            codes = workers.serve_workers(
                workers_n, start, graceful_timeout=graceful_timeout, catch_app_errors=True
            )
        if not quiet:
            say(f"uvssl serve: closed (worker exit codes {codes})")
        return
    try:
        start_event_loop(start, catch_app_errors=True)
    except KeyboardInterrupt:
        pass
    if not quiet:
        say("uvssl serve: closed")


def demo(messages: int = 20000, connections: int = 8) -> None:
    """Echo messages over plain TCP on 127.0.0.1 and print what was exchanged."""
    state: dict[str, Any] = {"done": 0, "echoed": 0, "first": b""}
    payload = b"hello from uvssl "

    def srv_read(sock: Socket, data: bytes) -> None:
        sock.write(data)

    def srv_event(ev: BaseException) -> None:
        if isinstance(ev, TcpEof):
            ev.socket.close()

    def start() -> None:
        server = tcp_server("127.0.0.1", 0, srv_read, srv_event)
        per_conn = messages // connections
        print(
            f"demo: echo server on 127.0.0.1:{server.port}; {connections} clients x "
            f"{per_conn} messages",
            flush=True,
        )

        def make_client(i: int) -> None:
            left = [per_conn]
            buf = bytearray()
            msg = payload + str(i).encode() + b"\n"

            def cli_read(sock: Socket, data: bytes) -> None:
                buf.extend(data)
                while len(buf) >= len(msg):
                    if not state["first"]:
                        state["first"] = bytes(buf[: len(msg)])
                    del buf[: len(msg)]
                    state["echoed"] += 1
                    left[0] -= 1
                    if left[0] == 0:
                        sock.close()
                        state["done"] += 1
                        if state["done"] == connections:
                            server.close()
                        return
                    sock.write(msg)

            tcp_connect("127.0.0.1", server.port, cli_read, data=msg)

        for i in range(connections):
            make_client(i)

    t0 = time.perf_counter()
    start_event_loop(start)
    dt = time.perf_counter() - t0
    print(f"demo: first echo {state['first']!r}")
    print(
        f"demo: {state['echoed']} messages echoed in {dt:.2f} s "
        f"= {state['echoed'] / dt:,.0f} round trips/s (one process: clients and server share "
        "it; see `python -m uvssl bench` for real figures)"
    )


def _port(text: str) -> int:
    """An argparse type: a TCP port number (0 picks a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not in 0..65535")
    return port


def _count(text: str) -> int:
    """An argparse type: a number of worker processes (0: one per CPU)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} workers: give 1 or more (0: one per CPU)")
    return n


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``python -m uvssl``."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["bench"]:
        # the bench has its own parser (and its own --help)
        from .bench.runner import main as bench_main

        return int(bench_main(args_in[1:]))
    p = argparse.ArgumentParser(
        prog="python -m uvssl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a TLS echo server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=8443)
    s.add_argument("--cert", help="certificate chain (PEM)")
    s.add_argument("--key", help="private key (PEM)")
    s.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
    s.add_argument("--quiet", action="store_true", help="print only the READY line(s)")
    s.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help="serve from N worker processes sharing the port (0: one per CPU); each prints"
        " its READY line",
    )
    s.add_argument(
        "--ticket-key-file",
        action="append",
        metavar="FILE",
        help="a session ticket key file (80 bytes, nginx's format); repeat it or give a"
        " comma-separated list: the first issues tickets, all are accepted",
    )
    s.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="every connection starts with a PROXY protocol header (v1 or v2)",
    )
    s.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM or the first Ctrl-C, how long open connections may take to finish"
        " (default 30)",
    )
    d = sub.add_parser("demo", help="a plain-TCP echo demonstration")
    d.add_argument("--messages", type=int, default=20000)
    d.add_argument("--connections", type=int, default=8)
    sub.add_parser("bench", help="run the benchmark (python -m uvssl bench --help)")
    args = p.parse_args(args_in)
    if args.cmd == "serve":
        if not args.graceful_timeout >= 0:
            p.error("--graceful-timeout must be a number of seconds >= 0")
        key_files = [f for arg in args.ticket_key_file or [] for f in arg.split(",") if f.strip()]
        if args.ticket_key_file and not key_files:
            p.error("--ticket-key-file needs a file name")
        serve(
            args.host,
            args.port,
            args.cert,
            args.key,
            args.quiet,
            args.reuse_port,
            args.graceful_timeout,
            args.workers,
            key_files,
            args.proxy_protocol,
        )
    elif args.cmd == "demo":
        demo(args.messages, args.connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
