"""Line and frame reading on stream-mode sockets: readline, read_until, read_exactly, unread.

Protocol tests run a uvssl server in stream mode against stdlib clients (plain and TLS) that
cut their messages at awkward places, separators included. The finer points (limits, the
search memo, argument checks) are driven through ``_feed``, the per-read entry point, on a
stream whose socket is a real loopback connection.
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
import threading
import time
from typing import Any, Callable, Optional

import pytest
from helpers import LOCALHOST, LoopHarness, run_loop
from tls_support import PEER_TIMEOUT, PeerThread, stdlib_client_context

import uvssl

pytestmark = pytest.mark.timeout(60)


# -- helpers -------------------------------------------------------------------------------


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected loopback TCP sockets."""
    ls = socket.create_server((LOCALHOST, 0))
    try:
        a = socket.create_connection(ls.getsockname(), timeout=PEER_TIMEOUT)
        b, _ = ls.accept()
    finally:
        ls.close()
    return a, b


def with_stream(fn: Callable[[uvssl.AsyncStream, uvssl.Socket], Any]) -> Any:
    """Run ``fn(stream, socket)`` inside a loop, on a stream-mode socket over a real
    connection (nothing arrives on it: the test feeds the stream itself); returns fn's value."""
    a, b = tcp_pair()
    out: dict[str, Any] = {}

    def start() -> None:
        sock = uvssl.tcp_open(a, None, stream=True)
        assert sock.stream is not None
        try:
            out["value"] = fn(sock.stream, sock)
        finally:
            sock.close(force=True)

    try:
        run_loop(start)
    finally:
        b.close()
    return out.get("value")


def feed(stream: uvssl.AsyncStream, data: bytes) -> None:
    """What the read path does with data that arrived."""
    stream._feed(stream.socket, data)


def send_pieces(sock: socket.socket, pieces: list[bytes]) -> None:
    """Send each piece on its own, with a pause so that they tend to arrive apart."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in pieces:
        sock.sendall(piece)
        time.sleep(0.005)


def cut(data: bytes, rng: random.Random, most: int = 7) -> list[bytes]:
    """``data`` cut at random places into pieces of 1..most bytes."""
    out = []
    i = 0
    while i < len(data):
        n = rng.randint(1, most)
        out.append(data[i : i + n])
        i += n
    return out


def serve_stream(
    on_read: Callable[[uvssl.Socket, uvssl.AsyncStream], Any],
    client: Callable[[int], Any],
    *,
    tls: Optional[dict[str, Any]] = None,
) -> Any:
    """A stream-mode uvssl server (TLS when ``tls`` holds tcp_ssl_server's keywords) and one
    blocking client thread ``client(port)``; returns what the client returned."""
    errors: list[BaseException] = []
    state: dict[str, Any] = {}

    def on_event(ev: BaseException) -> None:
        if not isinstance(ev, (uvssl.TcpEof, uvssl.SslClosed)):
            errors.append(ev)
        ev.socket.close()  # type: ignore[attr-defined]

    def start() -> None:
        if tls is None:
            srv = uvssl.tcp_server(LOCALHOST, 0, on_read, on_event, stream=True)
        else:
            srv = uvssl.tcp_ssl_server(LOCALHOST, 0, on_read, on_event, stream=True, **tls)
        state["server"] = srv
        peer = PeerThread(client, srv.port, name="framing-client")
        state["peer"] = peer
        peer.start()

    def finished() -> bool:
        peer = state.get("peer")
        if peer is not None and peer.done:
            state["server"].close()
            return True
        return False

    LoopHarness(30).run(start, finished)
    assert not errors, errors
    return state["peer"].result(10)


# -- protocols over real connections ---------------------------------------------------------


LINES = [b"hello", b"", b"a longer line with spaces", b"x" * 3000, b"last"]


def line_server(sock: uvssl.Socket, stream: uvssl.AsyncStream) -> None:
    """Answers each CRLF-terminated line with its length and the line upper-cased."""
    while True:
        line = stream.read_until(b"\r\n")
        if line is None:
            return
        assert line.endswith(b"\r\n")
        body = line[:-2]
        stream.write(b"%d %s\r\n" % (len(body), body.upper()))


def line_client(pieces: list[bytes], count: int, wrap: Optional[ssl.SSLContext] = None):
    def client(port: int) -> list[bytes]:
        raw = socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT)
        s: socket.socket = raw
        if wrap is not None:
            s = wrap.wrap_socket(raw, server_hostname="localhost")
        with s:
            send_pieces(s, pieces)
            got = bytearray()
            while got.count(b"\r\n") < count:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return bytes(got).split(b"\r\n")[:count]

    return client


def expected_replies() -> list[bytes]:
    return [b"%d %s" % (len(line), line.upper()) for line in LINES]


def test_line_protocol_with_awkward_splits():
    wire = b"".join(line + b"\r\n" for line in LINES)
    # every CRLF cut between its two bytes, and everything else at random places
    pieces: list[bytes] = []
    for part in wire.split(b"\r"):
        pieces.extend(cut(part, random.Random(len(part)), 900))
        pieces.append(b"\r")
    pieces.pop()  # the split left one "\r" too many at the end
    assert b"".join(pieces) == wire
    replies = serve_stream(line_server, line_client(pieces, len(LINES)))
    assert replies == expected_replies()


def test_line_protocol_byte_by_byte_readline():
    lines = [b"one", b"two two", b"", b"three"]
    wire = b"".join(line + b"\n" for line in lines)

    def server(sock: uvssl.Socket, stream: uvssl.AsyncStream) -> None:
        while (line := stream.readline()) is not None:
            assert line.endswith(b"\n")
            stream.write(b"<" + line[:-1] + b">\r\n")

    replies = serve_stream(server, line_client([bytes([c]) for c in wire], len(lines)))
    assert replies == [b"<" + line + b">" for line in lines]


def test_tls_stream_mode_line_protocol(certs, server_cert_kw):
    wire = b"".join(line + b"\r\n" for line in LINES)
    pieces = cut(wire, random.Random(7), 600)
    client = line_client(pieces, len(LINES), stdlib_client_context(certs))
    replies = serve_stream(line_server, client, tls=server_cert_kw)
    assert replies == expected_replies()


def test_length_prefixed_frames_with_unread():
    rng = random.Random(3)
    frames = [bytes(rng.getrandbits(8) for _ in range(n)) for n in (0, 1, 5, 300, 70000, 2)]
    wire = b"".join(struct.pack("!I", len(f)) + f for f in frames)
    pieces = cut(wire[:400], rng, 5) + cut(wire[400:], rng, 20000)
    seen: list[int] = []

    def server(sock: uvssl.Socket, stream: uvssl.AsyncStream) -> None:
        while True:
            header = stream.read_exactly(4)
            if header is None:
                return
            (n,) = struct.unpack("!I", header)
            body = stream.read_exactly(n)
            if body is None:  # not all here yet: put the header back for the next call
                stream.unread(header)
                return
            seen.append(n)
            stream.write(struct.pack("!I", len(body)) + body[::-1])

    def client(port: int) -> list[bytes]:
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as s:
            send_pieces(s, pieces)
            out = []
            for _ in frames:
                header = b""
                while len(header) < 4:
                    header += s.recv(4 - len(header))
                (n,) = struct.unpack("!I", header)
                body = bytearray()
                while len(body) < n:
                    chunk = s.recv(n - len(body))
                    assert chunk, "the server closed early"
                    body += chunk
                out.append(bytes(body))
            return out

    replies = serve_stream(server, client)
    assert replies == [f[::-1] for f in frames]
    assert seen == [len(f) for f in frames]


def test_over_limit_line_is_reported_and_buffer_kept():
    """A server that refuses lines over 16 bytes: it reports, then discards what it has."""

    def server(sock: uvssl.Socket, stream: uvssl.AsyncStream) -> None:
        while True:
            try:
                line = stream.readline(limit=16)
            except ValueError:
                junk = stream.read()  # the buffer was left as it was
                stream.write(b"too long: %d buffered\n" % len(junk))
                continue
            if line is None:
                return
            stream.write(b"ok " + line)

    def client(port: int) -> bytes:
        with socket.create_connection((LOCALHOST, port), timeout=PEER_TIMEOUT) as s:
            s.sendall(b"short\n")
            first = s.recv(100)
            s.sendall(b"y" * 17)  # 17 bytes, no newline: over the limit at once
            second = s.recv(100)
            s.sendall(b"0123456789abcdef\n")  # exactly 16 bytes before the newline
            third = s.recv(100)
            return first + second + third

    got = serve_stream(server, client)
    assert got == b"ok short\ntoo long: 17 buffered\nok 0123456789abcdef\n"


# -- exact semantics, fed directly ----------------------------------------------------------


def test_readline_returns_none_until_complete_and_keeps_newline():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        out: list[Any] = [stream.readline()]
        feed(stream, b"abc")
        out.append(stream.readline())
        feed(stream, b"\ndef\n\nrest")
        out += [stream.readline(), stream.readline(), stream.readline(), stream.readline()]
        out.append(stream.read())
        return out

    assert with_stream(body) == [None, None, b"abc\n", b"def\n", b"\n", None, b"rest"]


@pytest.mark.parametrize("sep", [b"\r\n", b"<END>", b"--", bytearray(b"::"), memoryview(b"|")])
def test_read_until_separator_split_at_every_position(sep):
    sep_bytes = bytes(sep)
    item = b"payload" + sep_bytes

    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        results = []
        for k in range(1, len(item)):
            feed(stream, item[:k])
            first = stream.read_until(sep)
            feed(stream, item[k:] + b"tail")
            results.append((first, stream.read_until(sep), stream.read()))
        return results

    for first, second, rest in with_stream(body):
        assert first is None or first == item  # complete already when cut after the separator
        assert (first or second) == item
        assert rest == b"tail"


def test_separator_made_of_a_repeated_byte():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        feed(stream, b"ab-")
        out: list[Any] = [stream.read_until(b"---")]
        feed(stream, b"-")
        out.append(stream.read_until(b"---"))
        feed(stream, b"--cd")
        out.append(stream.read_until(b"---"))
        out.append(stream.read())
        return out

    assert with_stream(body) == [None, None, b"ab---", b"-cd"]


def test_limit_boundaries():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        out: list[Any] = []
        feed(stream, b"0123456789")
        out.append(stream.readline(limit=10))  # 10 bytes, the newline may still come
        feed(stream, b"\n")
        out.append(stream.readline(limit=10))  # exactly at the limit
        feed(stream, b"0123456789A")
        with pytest.raises(ValueError, match=r"limit=10"):
            stream.readline(limit=10)
        out.append(stream.available)  # unchanged
        out.append(stream.readline(limit=11))  # a larger limit: still waiting
        feed(stream, b"\n")
        out.append(stream.readline(limit=11))
        # a multi-byte separator: the item without it may be `limit` bytes
        feed(stream, b"abc-")
        out.append(stream.read_until(b"--", limit=3))
        feed(stream, b"x")
        with pytest.raises(ValueError, match=r"b'--'"):
            stream.read_until(b"--", limit=3)
        out.append(stream.read())
        feed(stream, b"abc--")
        out.append(stream.read_until(b"--", limit=3))
        # a separator found beyond the limit is over it too, and the data stays
        feed(stream, b"waytoolong\nok\n")
        with pytest.raises(ValueError):
            stream.readline(limit=4)
        out.append(stream.read(11))
        out.append(stream.readline(limit=4))
        return out

    assert with_stream(body) == [
        None,
        b"0123456789\n",
        11,
        None,
        b"0123456789A\n",
        None,
        b"abc-x",
        b"abc--",
        b"waytoolong\n",
        b"ok\n",
    ]


def test_read_exactly():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        out: list[Any] = [stream.read_exactly(0), stream.read_exactly(1)]
        feed(stream, b"abcdef")
        out += [stream.read_exactly(7), stream.read_exactly(2), stream.read_exactly(4)]
        out.append(stream.available)
        return out

    assert with_stream(body) == [b"", None, None, b"ab", b"cdef", 0]


def test_unread():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        out: list[Any] = []
        feed(stream, b"world\n")
        stream.unread(b"")
        stream.unread(bytearray(b"hello "))
        out.append(stream.readline())
        feed(stream, b"no newline yet")
        out.append(stream.readline())  # searched to the end ...
        stream.unread(memoryview(b"early\n"))  # ... and bytes in front must still be found
        out.append(stream.readline())
        out.append(stream.read())
        return out

    assert with_stream(body) == [b"hello world\n", None, b"early\n", b"no newline yet"]


def test_another_separator_searches_again():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        feed(stream, b"a;b;c")
        out = [stream.readline(), stream.read_until(b";"), stream.readline()]
        out.append(stream.read_until(b";"))
        feed(stream, b"\n")
        out.append(stream.readline())
        return out

    assert with_stream(body) == [None, b"a;", None, b"b;", b"c\n"]


def test_partial_read_keeps_search_consistent():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[Any]:
        feed(stream, b"abcdefgh")
        out = [stream.readline(), stream.read(3), stream.readline()]
        feed(stream, b"ij\nkl\n")
        out += [stream.readline(), stream.read_exactly(1), stream.readline()]
        return out

    assert with_stream(body) == [None, b"abc", None, b"defghij\n", b"k", b"l\n"]


@pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"<END-OF-ITEM>"])
def test_long_item_in_many_pieces_is_searched_once(sep):
    """1 MiB arriving in 1,000 pieces, with a search after each: the bytes searched add up
    to about the item's length (plus len(sep) - 1 per search for a separator split across
    arrivals), not the ~500 MiB of rescanning the whole buffer every time."""
    total = 1 << 20
    piece = b"z" * (total // 1000)

    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> tuple[Any, int]:
        for _ in range(1000):
            feed(stream, piece)
            assert stream.read_until(sep, limit=2 * total) is None
            assert stream.read_until(sep, limit=2 * total) is None  # nothing new: no work
        feed(stream, sep)
        item = stream.read_until(sep, limit=2 * total)
        return item, stream._scanned

    item, scanned = with_stream(body)
    assert item == piece * 1000 + sep
    assert len(piece) * 1000 <= scanned < 3 * total


def test_many_small_frames_from_one_large_buffer():
    frames = [struct.pack("!H", i) for i in range(50000)]

    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[bytes]:
        feed(stream, b"".join(frames))
        out = []
        while (frame := stream.read_exactly(2)) is not None:
            out.append(frame)
        return out

    assert with_stream(body) == frames


# -- arguments and threads -------------------------------------------------------------------


def test_argument_checks():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> None:
        feed(stream, b"abc\n")
        with pytest.raises(TypeError, match="separator must be bytes-like.*str"):
            stream.read_until("\n")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="separator must be bytes-like.*int"):
            stream.read_until(10)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="separator must not be empty"):
            stream.read_until(b"")
        for bad in (0, -5):
            with pytest.raises(ValueError, match="limit must be > 0"):
                stream.readline(limit=bad)
        for wrong in (1.5, True, "10", None):
            with pytest.raises(TypeError, match="limit must be an int"):
                stream.read_until(b"\n", limit=wrong)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="n must be >= 0"):
            stream.read_exactly(-1)
        for wrong in (2.0, False, "2"):
            with pytest.raises(TypeError, match="n must be an int"):
                stream.read_exactly(wrong)  # type: ignore[arg-type]
        for junk in ("text", 5, None, [1]):
            with pytest.raises(TypeError, match="data must be bytes-like"):
                stream.unread(junk)  # type: ignore[arg-type]
        assert stream.read() == b"abc\n"  # nothing was taken by the refused calls

    with_stream(body)


def test_other_thread_is_refused():
    def body(stream: uvssl.AsyncStream, sock: uvssl.Socket) -> list[str]:
        feed(stream, b"line\n")
        errors: list[str] = []

        def other() -> None:
            for call in (
                stream.readline,
                lambda: stream.read_until(b"\n"),
                lambda: stream.read_exactly(1),
                lambda: stream.unread(b"x"),
            ):
                try:
                    call()
                except RuntimeError as e:
                    errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert stream.readline() == b"line\n"  # untouched
        return errors

    errors = with_stream(body)
    assert len(errors) == 4
    for name, msg in zip(("readline", "read_until", "read_exactly", "unread"), errors):
        assert f"AsyncStream.{name}()" in msg
        assert "call_threadsafe" in msg
