"""Fuzzing the PROXY protocol header parser: thousands of inputs (random bytes, valid headers
cut at every length, oversized and mutated ones) go through the native parser, whose every
answer must equal what the reference parser written here in Python computes; a smaller set
goes through real sockets to a server, whole and one byte per write.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from typing import Any, Optional

import pytest
from helpers import LOCALHOST, LoopHarness

import uvssl
from uvssl._uvssl import ffi, lib

pytestmark = pytest.mark.timeout(60)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107

# the native parser's verdicts
E = {
    "signature": lib.UVS_PROXY_ESIGNATURE,
    "line": lib.UVS_PROXY_ELINE,
    "syntax": lib.UVS_PROXY_ESYNTAX,
    "address": lib.UVS_PROXY_EADDRESS,
    "port": lib.UVS_PROXY_EPORT,
    "version": lib.UVS_PROXY_EVERSION,
    "command": lib.UVS_PROXY_ECOMMAND,
    "family": lib.UVS_PROXY_EFAMILY,
    "length": lib.UVS_PROXY_ELENGTH,
    "tlv": lib.UVS_PROXY_ETLV,
}

# what a parse gives: ("more",) | ("reject", code) | ("ok", length, fields)
Result = tuple[Any, ...]


# -- the reference parser -----------------------------------------------------------------


def _port(tok: bytes) -> Optional[int]:
    if not 1 <= len(tok) <= 5 or not all(48 <= b <= 57 for b in tok):
        return None
    if len(tok) > 1 and tok[0] == 48:
        return None
    v = int(tok)
    return v if v <= 65535 else None


def _addr(family: int, tok: bytes) -> Optional[bytes]:
    if not tok or len(tok) >= 48:
        return None
    try:
        return socket.inet_pton(family, tok.decode("latin-1"))
    except (OSError, ValueError):
        return None


def ref_v1(buf: bytes) -> Result:
    nl = buf.find(b"\n", 0, V1_MAX)
    if nl < 0:
        return ("reject", E["line"]) if len(buf) >= V1_MAX else ("more",)
    if nl < 7 or buf[nl - 1] != 13:
        return ("reject", E["line"])
    line = buf[6 : nl - 1]
    toks = line.split(b" ")
    if toks[0] == b"UNKNOWN":
        return ("ok", nl + 1, (1, 1, 0, b"", b"", 0, 0, 0, 0))
    if len(toks) > 6:
        return ("reject", E["syntax"])
    if toks[0] == b"TCP4":
        fam, af, size = 1, socket.AF_INET, 4
    elif toks[0] == b"TCP6":
        fam, af, size = 2, socket.AF_INET6, 16
    else:
        return ("reject", E["syntax"])
    if len(toks) != 5:
        return ("reject", E["syntax"])
    src, dst = _addr(af, toks[1]), _addr(af, toks[2])
    if src is None or dst is None:
        return ("reject", E["address"])
    sp, dp = _port(toks[3]), _port(toks[4])
    if sp is None or dp is None:
        return ("reject", E["port"])
    assert len(src) == size
    return ("ok", nl + 1, (1, 1, fam, src, dst, sp, dp, 0, 0))


def _tlvs_ok(buf: bytes, off: int, end: int, nested: bool) -> bool:
    while off < end:
        if end - off < 3:
            return False
        n = struct.unpack_from("!H", buf, off + 1)[0]
        if off + 3 + n > end:
            return False
        if not nested and buf[off] == 0x20:
            if n < 5 or not _tlvs_ok(buf, off + 8, off + 3 + n, True):
                return False
        off += 3 + n
    return True


def ref_v2(buf: bytes) -> Result:
    if len(buf) < 16:
        return ("more",)
    version, cmd, fam = buf[12] >> 4, buf[12] & 15, buf[13]
    if version != 2:
        return ("reject", E["version"])
    if cmd not in (0, 1):
        return ("reject", E["command"])
    blen = struct.unpack_from("!H", buf, 14)[0]
    family, alen = 0, 0
    if cmd == 1:
        if fam == 0x11:
            family, alen = 1, 12
        elif fam == 0x21:
            family, alen = 2, 36
        elif fam != 0:
            return ("reject", E["family"])
        if blen < alen:
            return ("reject", E["length"])
    total = 16 + blen
    if len(buf) < total:
        return ("more",)
    src = dst = b""
    sp = dp = 0
    if family == 1:
        src, dst = buf[16:20], buf[20:24]
        sp, dp = struct.unpack_from("!HH", buf, 24)
    elif family == 2:
        src, dst = buf[16:32], buf[32:48]
        sp, dp = struct.unpack_from("!HH", buf, 48)
    toff = tlen = 0
    if cmd == 1:
        if not _tlvs_ok(buf, 16 + alen, total, False):
            return ("reject", E["tlv"])
        toff, tlen = 16 + alen, blen - alen
    return ("ok", total, (2, cmd, family, src, dst, sp, dp, toff, tlen))


def ref_parse(buf: bytes) -> Result:
    if not buf:
        return ("more",)
    if buf[0:1] == b"P":
        if not b"PROXY ".startswith(buf[:6]):
            return ("reject", E["signature"])
        return ("more",) if len(buf) < 6 else ref_v1(buf)
    if not SIG.startswith(buf[:12]):
        return ("reject", E["signature"])
    return ref_v2(buf)


_HDR = ffi.new("uvs_proxy_hdr_t *")


def c_parse(buf: bytes) -> Result:
    h = _HDR
    r = lib.uvs_proxy_parse(buf, len(buf), h)
    if r == 0:
        return ("more",)
    if r < 0:
        return ("reject", r)
    size = {0: 0, 1: 4, 2: 16}[h.family]
    fields = (
        h.version,
        h.command,
        h.family,
        bytes(ffi.buffer(h.src, size)),
        bytes(ffi.buffer(h.dst, size)),
        h.src_port,
        h.dst_port,
        h.tlv_off,
        h.tlv_len,
    )
    return ("ok", r, fields)


# -- inputs -------------------------------------------------------------------------------


def rand_tlvs(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randrange(4)):
        kind = rng.choice([0x01, 0x02, 0x04, 0x05, 0x20, 0x30, rng.randrange(256)])
        if kind == 0x20:
            sub = b"".join(
                struct.pack("!BH", k, len(v)) + v
                for k, v in ((rng.choice([0x21, 0x22, 0x23]), rng.randbytes(rng.randrange(8))),)
            )
            value = bytes([rng.randrange(8)]) + rng.randbytes(4) + sub
        else:
            value = rng.randbytes(rng.randrange(12))
        out += struct.pack("!BH", kind, len(value)) + value
    return out


def valid_header(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        a = ".".join(str(rng.randrange(256)) for _ in range(4))
        b = ".".join(str(rng.randrange(256)) for _ in range(4))
        return f"PROXY TCP4 {a} {b} {rng.randrange(65536)} {rng.randrange(65536)}\r\n".encode()
    if kind == 1:
        a = socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
        b = socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
        return f"PROXY TCP6 {a} {b} {rng.randrange(65536)} {rng.randrange(65536)}\r\n".encode()
    if kind == 2:
        return (
            b"PROXY UNKNOWN"
            + (b" " + rng.randbytes(20).replace(b"\n", b"") if rng.random() < 0.5 else b"")
            + b"\r\n"
        )
    fam, alen = {3: (0x11, 12), 4: (0x21, 36), 5: (0x00, 0)}[kind]
    cmd = 1 if rng.random() < 0.8 else 0
    body = rng.randbytes(alen) + rand_tlvs(rng)
    return SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b))]
        elif op == 2:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif b:  # flip one bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def corpus(seed: int = 20261207) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for _ in range(1500):
        out.append(rng.randbytes(rng.randrange(0, 80)))
    for _ in range(800):
        out.append(SIG + rng.randbytes(rng.randrange(0, 60)))
        out.append(b"PROXY " + rng.randbytes(rng.randrange(0, 120)))
    for _ in range(300):
        toks = [rng.choice([b"TCP4", b"TCP6", b"UNKNOWN", b"tcp4", b""])]
        for _ in range(rng.randrange(6)):
            toks.append(
                rng.choice(
                    [
                        b"1.2.3.4",
                        b"::1",
                        b"256.1.1.1",
                        b"65535",
                        b"65536",
                        b"0",
                        b"00",
                        b"-1",
                        b"1.2.3",
                        b"fe80::1%lo",
                        b"",
                        b"::ffff:1.2.3.4",
                        b"80 ",
                    ]
                )
            )
        out.append(b"PROXY " + b" ".join(toks) + rng.choice([b"\r\n", b"\n", b"\r\r\n", b""]))
    for _ in range(400):
        h = valid_header(rng)
        out.append(h + rng.randbytes(rng.randrange(0, 10)))
        for n in range(len(h)):
            out.append(h[:n])
    for _ in range(2500):
        out.append(mutate(rng, valid_header(rng)))
    # oversized and length mismatches
    out.append(b"PROXY TCP4 " + b"1" * 200 + b"\r\n")
    out.append(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n")  # 107 bytes exactly: valid
    out.append(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15) + b"\r\n")  # 108: too long
    out.append(SIG + b"\x21\x11\xff\xff" + b"\x00" * 100)
    for fam in range(256):
        for vc in (0x20, 0x21, 0x22, 0x11, 0x31):
            out.append(SIG + bytes([vc, fam]) + b"\x00\x24" + b"\x00" * 36)
    return out


# -- the parser alone ---------------------------------------------------------------------


def test_native_parser_agrees_with_the_reference():
    cases = corpus()
    assert len(cases) > 10000
    seen = {"more": 0, "reject": 0, "ok": 0}
    for buf in cases:
        want = ref_parse(buf)
        got = c_parse(buf)
        assert got == want, (buf[:120], got, want)
        seen[got[0]] += 1
    # the corpus exercises all three answers, in numbers
    assert min(seen.values()) > 500, seen


def test_every_proper_prefix_of_a_valid_header_needs_more():
    rng = random.Random(7)
    for _ in range(300):
        h = valid_header(rng)
        tail = rng.randbytes(rng.randrange(1, 20))
        full = c_parse(h + tail)
        assert full[0] == "ok" and full[1] == len(h), (h, full)
        for n in range(len(h)):
            assert c_parse(h[:n]) == ("more",), (h, n)


def test_the_largest_v2_header():
    body = b"\x00" * 12 + b"\x04" + struct.pack("!H", 65535 - 15) + b"\x00" * (65535 - 15)
    header = SIG + b"\x21\x11\xff\xff" + body
    assert len(header) == 16 + 65535
    assert c_parse(header)[:2] == ("ok", len(header))
    assert c_parse(header[:-1]) == ("more",)


# -- through real sockets -----------------------------------------------------------------


def socket_cases() -> list[bytes]:
    rng = random.Random(99)
    cases: list[bytes] = []
    for _ in range(12):
        cases.append(valid_header(rng))
    for _ in range(12):
        cases.append(mutate(rng, valid_header(rng)))
    for _ in range(6):
        cases.append(rng.randbytes(rng.randrange(1, 40)))
    for _ in range(6):  # cut short: the client's FIN ends them
        h = valid_header(rng)
        cases.append(h[: rng.randrange(1, len(h))])
    return cases


def expected_remote(buf: bytes) -> Optional[tuple[str, int]]:
    """The client address a valid header names (None: the real peer stays)."""
    r = ref_parse(buf)
    assert r[0] == "ok"
    _, cmd, fam, src, _, sp, _, _, _ = r[2]
    if cmd != 1 or fam == 0:
        return None
    af = socket.AF_INET if fam == 1 else socket.AF_INET6
    return socket.inet_ntop(af, src), sp


@pytest.mark.parametrize("bytewise", [False, True])
def test_fuzzed_headers_through_a_server(bytewise):
    cases = socket_cases()
    verdicts = [ref_parse(c)[0] for c in cases]
    assert set(verdicts) == {"ok", "reject", "more"}
    seen: list[Any] = []  # per connection, in order: ("ok", remote) or ("error", reason)
    finished = threading.Event()
    client_errors: list[BaseException] = []

    def on_connect(sock: uvssl.Socket) -> None:
        seen.append(("ok", sock.remote_address, sock.proxy_address))

    def on_read(sock: uvssl.Socket, data: bytes) -> None:
        sock.write(data)

    def on_event(ev: BaseException) -> None:
        if isinstance(ev, uvssl.ProxyProtocolError):
            seen.append(("error", ev.reason))
        s = getattr(ev, "socket", None)
        if s is not None and not s.closed:
            s.close()

    def client(port: int) -> None:
        try:
            for case in cases:
                with socket.create_connection((LOCALHOST, port), timeout=10) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    try:
                        if bytewise:
                            for i in range(len(case)):
                                s.sendall(case[i : i + 1])
                        else:
                            s.sendall(case)
                        verdict = ref_parse(case)[0]
                        if verdict == "ok":  # what followed the header comes back first
                            want = case[ref_parse(case)[1] :] + b"!"
                            s.sendall(b"!")
                            got = b""
                            for _ in range(100):
                                if len(got) >= len(want):
                                    break
                                got += s.recv(100)
                            assert got == want
                            s.shutdown(socket.SHUT_WR)
                        elif verdict == "more":
                            s.shutdown(socket.SHUT_WR)
                        for _ in range(100):  # until the server closes
                            if not s.recv(100):
                                break
                    except (ConnectionResetError, BrokenPipeError):
                        pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            client_errors.append(exc)
        finally:
            finished.set()

    def on_closing_read(sock: uvssl.Socket, data: bytes) -> None:
        on_read(sock, data)

    def start() -> None:
        server = uvssl.tcp_server(
            LOCALHOST, 0, on_closing_read, on_event, connect_cb=on_connect, proxy_protocol=True
        )
        threading.Thread(target=client, args=(server.port,), daemon=True).start()

    LoopHarness(30).run(start, until=finished.is_set)
    assert client_errors == []
    assert len(seen) == len(cases), seen
    for case, got in zip(cases, seen):
        r = ref_parse(case)
        if r[0] == "ok":
            want = expected_remote(case)
            assert got[0] == "ok", (case, got)
            assert got[1] == (want if want is not None else got[2]), (case, got)
        elif r[0] == "more":
            assert got == ("error", "eof"), (case, got)
        else:
            assert got[0] == "error" and got[1] not in ("eof", "timeout"), (case, got)
