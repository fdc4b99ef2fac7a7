"""Datagram sockets: receiving with the sender, sending to addresses and names, connected
sockets, batching, size limits, truncation, ICMP errors, multicast, options, closing, threads
and argument checks. Peers are stdlib sockets on loopback.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

import pytest
from helpers import LOCALHOST, LoopHarness, has_ipv6_loopback, run_loop

import uvssl
from uvssl import udp as udp_mod
from uvssl._uvssl import lib

pytestmark = pytest.mark.timeout(30)

V6 = pytest.param(
    "::1",
    marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here"),
)


def peer(host: str = LOCALHOST) -> socket.socket:
    """A stdlib datagram socket bound on loopback, non-blocking."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # the kernel caps it
    s.bind((host, 0))
    s.setblocking(False)
    return s


def drain(s: socket.socket, into: list[Any]) -> None:
    """Move whatever datagrams ``s`` has into ``into`` as (data, address)."""
    while True:
        try:
            data, addr = s.recvfrom(70000)
        except BlockingIOError:
            return
        into.append((data, addr[:2]))


def freed_port(host: str = LOCALHOST) -> int:
    """A UDP port nothing is bound to (bound once, then released)."""
    s = peer(host)
    port = s.getsockname()[1]
    s.close()
    return int(port)


# -- receiving and sending ---------------------------------------------------------------


@pytest.mark.parametrize("host", [LOCALHOST, V6])
def test_receive_with_sender_and_reply(host):
    client = peer(host)
    got: list[Any] = []
    replies: list[Any] = []
    state: dict[str, Any] = {}

    def read_cb(sock, data, address):
        got.append((data, address))
        sock.send_to(data.upper(), *address)

    def start():
        sock = state["sock"] = uvssl.udp_socket(read_cb, local_host=host)
        client.sendto(b"hello", sock.local_address)

    def until():
        drain(client, replies)
        return replies

    try:
        LoopHarness().run(start, until)
        assert got == [(b"hello", client.getsockname()[:2])]
        assert isinstance(got[0][0], bytes)
        assert replies == [(b"HELLO", state["sock"].local_address)]
    finally:
        client.close()


def test_send_to_name_is_resolved():
    receiver = peer()
    port = receiver.getsockname()[1]
    got: list[Any] = []
    errors: list[Any] = []

    def start():
        sock = uvssl.udp_socket(event_cb=errors.append, local_host=LOCALHOST)
        sock.send_to(b"by name", "localhost", port)
        sock.send_to(bytearray(b"by address"), LOCALHOST, port)

    def until():
        drain(receiver, got)
        return len(got) == 2 or errors

    try:
        LoopHarness().run(start, until)
        assert errors == []
        assert sorted(d for d, _ in got) == [b"by address", b"by name"]
    finally:
        receiver.close()


def test_dns_failure_reaches_event_cb():
    errors: list[Any] = []
    open_then: list[bool] = []

    def event_cb(exc):
        errors.append(exc)
        open_then.append(not exc.socket.closed)

    def start():
        sock = uvssl.udp_socket(event_cb=event_cb, local_host=LOCALHOST)
        sock.send_to(b"x", "no-such-host.invalid", 9)

    LoopHarness().run(start, lambda: errors)
    assert len(errors) == 1
    exc = errors[0]
    assert isinstance(exc, uvssl.DnsError)
    assert "no-such-host.invalid" in str(exc)
    assert open_then == [True]  # the socket goes on


def test_connect_to_unresolvable_name_closes_the_socket():
    errors: list[Any] = []

    def start():
        sock = uvssl.udp_socket(
            event_cb=errors.append, remote_host="nowhere.invalid", remote_port=9
        )
        sock.send(b"queued until the name resolves")

    LoopHarness().run(start, lambda: errors)
    assert isinstance(errors[0], uvssl.DnsError)
    assert "nowhere.invalid" in str(errors[0])
    assert errors[0].socket.closed


@pytest.mark.parametrize("remote", [LOCALHOST, "localhost"])
def test_connected_socket_sends_and_drops_others(remote):
    partner = peer()
    stranger = peer()
    got: list[Any] = []
    at_partner: list[Any] = []
    state: dict[str, Any] = {}

    def read_cb(sock, data, address):
        got.append((data, address))

    def start():
        sock = state["sock"] = uvssl.udp_socket(
            read_cb, remote_host=remote, remote_port=partner.getsockname()[1]
        )
        sock.send(b"to partner")

    def until():
        drain(partner, at_partner)
        if at_partner and "sent" not in state:
            state["sent"] = True
            here = at_partner[0][1]
            stranger.sendto(b"from stranger", here)
            partner.sendto(b"from partner", here)
        return got

    try:
        LoopHarness().run(start, until)
        assert at_partner[0][0] == b"to partner"
        assert got == [(b"from partner", partner.getsockname()[:2])]
        assert state["sock"].remote_address == partner.getsockname()[:2]
    finally:
        partner.close()
        stranger.close()


@pytest.mark.parametrize("host", [LOCALHOST, V6])
def test_datagrams_of_one_turn_arrive_in_order(host):
    clients = [peer(host), peer(host)]  # two senders, interleaved
    got: list[bytes] = []
    senders: list[Any] = []
    state: dict[str, Any] = {}
    count = 200

    def read_cb(sock, data, address):
        got.append(data)
        senders.append(address)
        if len(got) == count:
            sock.close()

    def start():
        sock = uvssl.udp_socket(read_cb, local_host=host)
        state["mmsg"] = lib.uvs_udp_using_recvmmsg(sock._ptr)
        # all of them wait in the kernel before the loop polls once
        for i in range(count):
            clients[i % 2].sendto(b"datagram %d" % i, sock.local_address)

    try:
        run_loop(start)
        assert state["mmsg"] == 1
        assert got == [b"datagram %d" % i for i in range(count)]
        names = [c.getsockname()[:2] for c in clients]
        assert senders == [names[i % 2] for i in range(count)]
    finally:
        for c in clients:
            c.close()


def test_replies_of_one_turn_all_leave_in_order():
    client = peer()
    replies: list[Any] = []
    count = 60

    def read_cb(sock, data, address):
        sock.send_to(data, *address)
        sock.send_to(data + b"+", *address)

    def start():
        sock = uvssl.udp_socket(read_cb, local_host=LOCALHOST)
        for i in range(count):
            client.sendto(b"%d" % i, sock.local_address)

    def until():
        drain(client, replies)
        return len(replies) >= 2 * count

    try:
        LoopHarness().run(start, until)
        want = [x for i in range(count) for x in (b"%d" % i, b"%d+" % i)]
        assert [d for d, _ in replies] == want
    finally:
        client.close()


# -- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "limit"), [(LOCALHOST, 65507), pytest.param("::1", 65527)])
def test_size_limit(host, limit):
    if ":" in host and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    receiver = peer(host)
    got: list[Any] = []
    raised: list[BaseException] = []

    def start():
        sock = uvssl.udp_socket(local_host=host)
        try:
            sock.send_to(b"x" * (limit + 1), host, receiver.getsockname()[1])
        except ValueError as exc:
            raised.append(exc)
        sock.send_to(b"y" * limit, host, receiver.getsockname()[1])

    def until():
        drain(receiver, got)
        return got

    try:
        LoopHarness().run(start, until)
        assert len(raised) == 1
        assert str(limit + 1) in str(raised[0]) and str(limit) in str(raised[0])
        assert got[0][0] == b"y" * limit
    finally:
        receiver.close()


def test_largest_datagram_is_received_whole():
    client = peer()
    got: list[bytes] = []

    def read_cb(sock, data, address):
        got.append(data)
        sock.close()

    def start():
        sock = uvssl.udp_socket(read_cb, local_host=LOCALHOST)
        client.sendto(b"small", sock.local_address)
        client.sendto(b"z" * 65507, sock.local_address)

    try:
        LoopHarness().run(start, lambda: got)
        assert got == [b"small"]  # closed in the first read_cb: the big one never arrives
        got.clear()

        def read_all(sock, data, address):
            got.append(data)
            if len(got) == 2:
                sock.close()

        def start2():
            sock = uvssl.udp_socket(read_all, local_host=LOCALHOST)
            client.sendto(b"z" * 65507, sock.local_address)
            client.sendto(b"after", sock.local_address)

        run_loop(start2)
        assert got == [b"z" * 65507, b"after"]
    finally:
        client.close()


def test_truncated_datagram_is_reported_not_delivered():
    # 64 KiB receive slots cannot truncate an IP datagram; a socket made with a 1 KiB slot
    # (uvssl's test hook) lets the kernel truncate one, which is what the report is about
    client = peer()
    got: list[Any] = []
    errors: list[Any] = []

    def read_cb(sock, data, address):
        got.append(data)
        sock.close()

    def start():
        sock = udp_mod._make(
            read_cb,
            errors.append,
            local_host=LOCALHOST,
            local_port=0,
            remote_host=None,
            remote_port=None,
            reuse_port=False,
            broadcast=False,
            slot=1024,
        )
        client.sendto(b"t" * 2000, sock.local_address)
        client.sendto(b"fits", sock.local_address)

    try:
        run_loop(start)
        assert got == [b"fits"]
        assert len(errors) == 1
        exc = errors[0]
        assert isinstance(exc, uvssl.DatagramTruncated)
        assert isinstance(exc, uvssl.SocketError)
        assert exc.identifier == "datagram-truncated"
        assert exc.sender == client.getsockname()[:2]
        assert "truncated" in str(exc) and str(client.getsockname()[1]) in str(exc)
    finally:
        client.close()


# -- errors from the network ---------------------------------------------------------------


def test_icmp_port_unreachable_on_connected_socket():
    errors: list[Any] = []
    port = freed_port()

    def start():
        sock = uvssl.udp_socket(event_cb=errors.append, remote_host=LOCALHOST, remote_port=port)
        sent = [0]

        def again():
            if errors or sent[0] >= 50:
                timer.cancel()
                sock.close()
                return
            sent[0] += 1
            sock.send(b"anyone?")

        timer = uvssl.interval(again, 0.02)

    run_loop(start)
    assert errors, "no error for datagrams to a port nothing listens on"
    exc = errors[0]
    assert type(exc) is uvssl.SocketError
    assert exc.code == errno.ECONNREFUSED
    assert exc.identifier == "connection-refused"
    assert str(port) in str(exc)


# -- multicast and options -----------------------------------------------------------------


def test_multicast_join_receive_leave():
    group = "239.255.77.77"
    got: list[Any] = []
    state: dict[str, Any] = {}
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOCALHOST))
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

    def read_cb(sock, data, address):
        got.append(data)

    def start():
        sock = state["sock"] = uvssl.udp_socket(read_cb, local_host="0.0.0.0")
        try:
            sock.join_group(group, LOCALHOST)
        except uvssl.SocketError as exc:
            state["refused"] = exc
            sock.close()
            return
        state["port"] = sock.local_address[1]

    def until():
        if "refused" in state:
            return True
        if not got:
            sender.sendto(b"to the group", (group, state["port"]))
            return False
        return True

    try:
        LoopHarness().run(start, until)
        if "refused" in state:
            pytest.skip(f"the kernel refuses multicast here: {state['refused']}")
        assert got[0] == b"to the group"

        def leave():
            sock = uvssl.udp_socket(local_host="0.0.0.0")
            sock.join_group(group, LOCALHOST)
            sock.leave_group(group, LOCALHOST)
            with pytest.raises(uvssl.SocketError, match="cannot leave multicast group"):
                sock.leave_group(group, LOCALHOST)  # not a member any more
            with pytest.raises(uvssl.SocketError, match="cannot join multicast group"):
                sock.join_group("10.1.2.3", LOCALHOST)  # not a multicast address
            sock.close()

        run_loop(leave)
    finally:
        sender.close()


def test_set_options_reach_the_socket():
    seen: dict[str, Any] = {}

    def start():
        with uvssl.udp_socket(local_host=LOCALHOST) as sock:
            s = socket.socket(fileno=sock.fileno())
            try:
                sock.set_options(broadcast=True, multicast_ttl=7, multicast_loop=False)
                seen["broadcast"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
                seen["ttl"] = s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL)
                seen["loop"] = s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP)
                sock.set_options(broadcast=False)
                seen["broadcast2"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
            finally:
                s.detach()
            with pytest.raises(ValueError, match="multicast_ttl"):
                sock.set_options(multicast_ttl=0)
            with pytest.raises(TypeError, match="broadcast"):
                sock.set_options(broadcast=1)  # type: ignore[arg-type]
        with uvssl.udp_socket(local_host=LOCALHOST, broadcast=True) as sock:
            s = socket.socket(fileno=sock.fileno())
            seen["at_creation"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
            s.detach()

    run_loop(start)
    assert seen == {"broadcast": 1, "ttl": 7, "loop": 0, "broadcast2": 0, "at_creation": 1}


def test_reuse_port_and_address_in_use():
    outcome: dict[str, Any] = {}

    def start():
        a = uvssl.udp_socket(local_host=LOCALHOST, reuse_port=True)
        port = a.local_address[1]
        b = uvssl.udp_socket(local_host=LOCALHOST, local_port=port, reuse_port=True)
        outcome["shared"] = b.local_address[1] == port
        with pytest.raises(uvssl.SocketError) as info:
            uvssl.udp_socket(local_host=LOCALHOST, local_port=port)
        outcome["error"] = info.value
        a.close()
        b.close()

    run_loop(start)
    assert outcome["shared"]
    exc = outcome["error"]
    assert exc.identifier == "address-in-use"
    assert "127.0.0.1" in str(exc) and "bind" in str(exc)


# -- closing, threads, arguments ------------------------------------------------------------


def test_close_semantics():
    client = peer()
    got: list[bytes] = []
    state: dict[str, Any] = {}

    def read_cb(sock, data, address):
        got.append(data)
        sock.close()
        sock.close()  # idempotent

    def start():
        sock = state["sock"] = uvssl.udp_socket(read_cb, local_host=LOCALHOST)
        state["local"] = sock.local_address
        for i in range(5):
            client.sendto(b"%d" % i, sock.local_address)

    try:
        run_loop(start)
        sock = state["sock"]
        assert got == [b"0"]  # nothing after the close
        assert sock.closed
        assert sock.local_address == state["local"]  # kept
        for call in (
            lambda: sock.send_to(b"x", LOCALHOST, 9),
            lambda: sock.send(b"x"),
            sock.fileno,
            lambda: sock.join_group("239.1.1.1"),
            lambda: sock.set_options(broadcast=True),
        ):
            with pytest.raises(uvssl.SocketClosed, match="closed"):
                call()
        with pytest.raises(uvssl.SocketClosed, match="not connected"):
            _ = sock.remote_address
    finally:
        client.close()


def test_close_flushes_what_was_accepted():
    receiver = peer()
    got: list[Any] = []

    def start():
        with uvssl.udp_socket(local_host=LOCALHOST) as sock:
            for i in range(20):
                sock.send_to(b"%d" % i, LOCALHOST, receiver.getsockname()[1])

    def until():
        drain(receiver, got)
        return len(got) == 20

    try:
        LoopHarness().run(start, until)
        assert [d for d, _ in got] == [b"%d" % i for i in range(20)]
    finally:
        receiver.close()


def test_calls_from_another_thread_raise():
    results: dict[str, Any] = {}

    def start():
        sock = uvssl.udp_socket(local_host=LOCALHOST)

        def foreign():
            for name, call in (
                ("send_to()", lambda: sock.send_to(b"x", LOCALHOST, 9)),
                ("close()", sock.close),
                ("local_address", lambda: sock.local_address),
            ):
                try:
                    call()
                except RuntimeError as exc:
                    results[name] = str(exc)

        t = threading.Thread(target=foreign)
        t.start()
        t.join(10)
        results["open"] = not sock.closed
        sock.close()

    run_loop(start)
    assert results["open"]
    for name in ("send_to()", "close()", "local_address"):
        assert "call_threadsafe" in results[name] and name in results[name], results


def test_bad_arguments():
    def start():
        with pytest.raises(TypeError, match="read_cb"):
            uvssl.udp_socket(read_cb=42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="port"):
            uvssl.udp_socket(local_port="53")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="0..65535"):
            uvssl.udp_socket(local_port=70000)
        with pytest.raises(ValueError, match="IP address"):
            uvssl.udp_socket(local_host="not an address")
        with pytest.raises(ValueError, match="remote_port"):
            uvssl.udp_socket(remote_host=LOCALHOST)
        with pytest.raises(ValueError, match="remote_host"):
            uvssl.udp_socket(remote_port=9)
        with pytest.raises(TypeError, match="reuse_port"):
            uvssl.udp_socket(reuse_port="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unexpected_keyword"):
            uvssl.udp_socket(unexpected_keyword=1)  # type: ignore[call-arg]
        with uvssl.udp_socket(local_host=LOCALHOST) as sock:
            with pytest.raises(TypeError, match="str"):
                sock.send_to("text", LOCALHOST, 9)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="0..65535"):
                sock.send_to(b"x", LOCALHOST, -1)
            with pytest.raises(TypeError, match="host"):
                sock.send_to(b"x", ["list"], 9)  # type: ignore[arg-type]
            with pytest.raises(uvssl.SocketError, match="unconnected"):
                sock.send(b"x")
        with uvssl.udp_socket(remote_host=LOCALHOST, remote_port=9) as sock:
            with pytest.raises(ValueError, match="send()"):
                sock.send_to(b"x", LOCALHOST, 10)

    run_loop(start)


def test_read_cb_exception_propagates():
    client = peer()

    def my_udp_read_cb(sock, data, address):
        raise RuntimeError(f"udp boom {data!r}")

    def start():
        sock = uvssl.udp_socket(my_udp_read_cb, local_host=LOCALHOST)
        client.sendto(b"hi", sock.local_address)

    try:
        with pytest.raises(RuntimeError, match="udp boom b'hi'"):
            LoopHarness().run(start)
    finally:
        client.close()


def test_read_cb_exception_with_catch_app_errors_goes_on():
    client = peer()
    caught: list[Any] = []
    got: list[bytes] = []

    def read_cb(sock, data, address):
        got.append(data)
        if len(got) == 1:
            raise ValueError("first datagram")
        sock.close()

    def start():
        sock = uvssl.udp_socket(read_cb, local_host=LOCALHOST)
        client.sendto(b"one", sock.local_address)
        client.sendto(b"two", sock.local_address)

    try:
        run_loop(start, catch_app_errors=True, default_event_cb=caught.append)
        assert got == [b"one", b"two"]
        assert [str(e) for e in caught] == ["first datagram"]
    finally:
        client.close()


# -- replies sent from read_cb ---------------------------------------------------------------


def test_replies_collected_in_a_batch_survive_close_and_errors():
    # read_cb's replies to known senders are collected during a batch and handed to C at its
    # end: a close or an exception in read_cb must not lose the ones already accepted
    client = peer()
    replies: list[Any] = []
    caught: list[BaseException] = []
    seen: list[bytes] = []

    def read_cb(sock, data, address):
        seen.append(data)
        sock.send_to(b"reply to " + data, *address)
        if data == b"2":
            raise ValueError("after sending")
        if data == b"4":
            sock.send_to(b"last", *address)
            sock.close()
            with pytest.raises(uvssl.SocketClosed):
                sock.send_to(b"too late", *address)

    def start():
        sock = uvssl.udp_socket(read_cb, local_host=LOCALHOST)
        for i in range(1, 7):
            client.sendto(b"%d" % i, sock.local_address)

    def until():
        drain(client, replies)
        return len(replies) >= 5

    try:
        LoopHarness().run(start, until, catch_app_errors=True, default_event_cb=caught.append)
        assert seen == [b"1", b"2", b"3", b"4"]  # nothing after the close
        assert [d for d, _ in replies] == [
            b"reply to 1",
            b"reply to 2",
            b"reply to 3",
            b"reply to 4",
            b"last",
        ]
        assert [str(e) for e in caught] == ["after sending"]
    finally:
        client.close()


def test_reply_through_another_socket_and_connected_refusal():
    client = peer()
    replies: list[Any] = []
    state: dict[str, Any] = {}

    def read_cb(sock, data, address):
        state["other"].send_to(data + b" via other", *address)
        with pytest.raises(ValueError, match="send()"):
            state["connected"].send_to(b"x", *address)  # a known address, still refused

    def start():
        state["other"] = uvssl.udp_socket(local_host=LOCALHOST)
        state["connected"] = uvssl.udp_socket(remote_host=LOCALHOST, remote_port=9)
        sock = uvssl.udp_socket(read_cb, local_host=LOCALHOST)
        client.sendto(b"hi", sock.local_address)

    def until():
        drain(client, replies)
        return replies

    try:
        LoopHarness().run(start, until)
        assert replies == [(b"hi via other", state["other"].local_address)]
    finally:
        client.close()
