"""The event loop: timers, exit, errors in callbacks, threads."""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

import pytest
from helpers import LOCALHOST, echo_server, port_is_free, run_loop

import uvssl

pytestmark = pytest.mark.timeout(30)


def tb_names(exc: BaseException) -> list[str]:
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


# -- timers ------------------------------------------------------------------------------------


def test_delay_fires_with_args_in_order():
    calls: list[Any] = []

    def start():
        uvssl.delay(calls.append, 0.05, "late")
        uvssl.delay(calls.append, 0.01, "early")
        uvssl.delay(lambda a, b: calls.append((a, b)), 0, 1, 2)

    run_loop(start)
    assert calls == [(1, 2), "early", "late"]


def test_delay_default_seconds_is_zero():
    calls = []
    run_loop(lambda: uvssl.delay(lambda: calls.append("x")))
    assert calls == ["x"]


def test_cancelled_delay_does_not_fire_and_loop_ends():
    calls = []
    timers: dict[Any, Any] = {}

    def start():
        t = uvssl.delay(lambda: calls.append("cancelled"), 0.05)
        assert t.active
        t.cancel()
        assert not t.active
        t.cancel()  # harmless twice
        timers["t"] = t
        uvssl.delay(lambda: calls.append("other"), 0.1)

    run_loop(start)
    assert calls == ["other"]
    assert not timers["t"].active


def test_cancel_from_another_timer():
    calls = []

    def start():
        victim = uvssl.delay(lambda: calls.append("victim"), 0.2)
        uvssl.delay(victim.cancel, 0.01)

    run_loop(start)
    assert calls == []


def test_timer_active_until_fired():
    seen: dict[Any, Any] = {}

    def start():
        t = uvssl.delay(lambda: seen.setdefault("inside", t.active), 0.01)
        seen["before"] = t.active
        seen["timer"] = t

    run_loop(start)
    assert seen["before"] is True
    # a one-shot timer is no longer active once it fired (even inside its own callback)
    assert seen["inside"] is False
    assert seen["timer"].active is False


def test_interval_repeats_until_cancelled():
    ticks = []
    state: dict[Any, Any] = {}

    def tick(tag):
        ticks.append(tag)
        assert state["timer"].active
        if len(ticks) == 3:
            state["timer"].cancel()
            assert not state["timer"].active

    def start():
        state["timer"] = uvssl.interval(tick, 0.01, "t")

    run_loop(start)
    assert ticks == ["t", "t", "t"]
    assert not state["timer"].active


def test_interval_cancelled_from_outside():
    ticks = []

    def start():
        t = uvssl.interval(lambda: ticks.append(1), 0.01)
        uvssl.delay(t.cancel, 0.1)

    run_loop(start)
    assert len(ticks) >= 1


# -- exit and with_event_loop ------------------------------------------------------------------


def test_exit_event_loop_with_listening_server():
    state: dict[Any, Any] = {}

    def start():
        srv = uvssl.tcp_server(LOCALHOST, 0, lambda s, d: None)
        state["server"] = srv
        uvssl.delay(uvssl.exit_event_loop, 0.05)

    run = run_loop(start)
    assert not run.deadline_hit
    assert state["server"].closed
    assert port_is_free(state["server"].port)


def test_exit_event_loop_with_pending_timer():
    calls = []

    def start():
        uvssl.delay(lambda: calls.append("never"), 5)
        uvssl.delay(uvssl.exit_event_loop, 0.01)

    run_loop(start)
    assert calls == []


def test_exit_event_loop_in_start_fn():
    calls = []

    def start():
        uvssl.delay(lambda: calls.append("never"), 0)
        uvssl.exit_event_loop()

    run_loop(start)
    assert calls == []


def test_with_event_loop_is_start_event_loop():
    seen = []

    def start():
        seen.append(uvssl.get_loop())
        uvssl.delay(lambda: seen.append("timer"), 0.01)  # type: ignore[arg-type]

    uvssl.with_event_loop(start)
    assert isinstance(seen[0], uvssl.Loop)
    assert seen[1] == "timer"  # type: ignore[comparison-overlap]
    with pytest.raises(RuntimeError):
        uvssl.get_loop()  # the loop has ended


def test_with_event_loop_passes_keywords():
    caught = []

    def boom():
        raise KeyError("k")

    def start():
        uvssl.delay(boom, 0)
        uvssl.delay(lambda: caught.append("later"), 0.02)

    uvssl.with_event_loop(start, catch_app_errors=True, default_event_cb=caught.append)
    assert isinstance(caught[0], KeyError)
    assert caught[1] == "later"


def test_with_event_loop_propagates_errors():
    def my_with_loop_failure():
        raise ValueError("with-loop")

    with pytest.raises(ValueError, match="with-loop") as ei:
        uvssl.with_event_loop(lambda: uvssl.delay(my_with_loop_failure, 0))
    assert "my_with_loop_failure" in tb_names(ei.value)


# -- application errors ------------------------------------------------------------------------


def test_timer_exception_propagates_and_closes_everything():
    state: dict[str, Any] = {"later": False}

    def my_failing_timer_cb():
        raise ZeroDivisionError("timer boom")

    def start():
        state["server"] = srv = echo_server()
        state["client"] = uvssl.tcp_connect(LOCALHOST, srv.port, lambda s, d: None)
        state["timer"] = uvssl.interval(lambda: None, 0.01)
        uvssl.delay(lambda: state.__setitem__("later", True), 0.5)
        uvssl.delay(my_failing_timer_cb, 0.05)

    with pytest.raises(ZeroDivisionError, match="timer boom") as ei:
        run_loop(start)
    assert "my_failing_timer_cb" in tb_names(ei.value)
    assert state["later"] is False
    assert state["server"].closed
    assert state["client"].closed
    assert not state["timer"].active
    assert port_is_free(state["server"].port)

    # a new loop works afterwards, on the same port
    port = state["server"].port
    got = []

    def again():
        srv = echo_server(port=port)
        assert srv.port == port

        def on_read(sock, data):
            got.append(data)
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, port, on_read, data=b"again")

    run_loop(again)
    assert got == [b"again"]


def test_read_cb_exception_propagates_and_closes_everything():
    state: dict[Any, Any] = {}

    def my_read_cb_that_raises(sock, data):
        raise RuntimeError(f"read boom {data!r}")

    def start():
        state["server"] = srv = echo_server()
        state["client"] = uvssl.tcp_connect(LOCALHOST, srv.port, my_read_cb_that_raises, data=b"hi")

    with pytest.raises(RuntimeError, match="read boom b'hi'") as ei:
        run_loop(start)
    assert "my_read_cb_that_raises" in tb_names(ei.value)
    assert state["client"].closed
    assert state["server"].closed
    assert port_is_free(state["server"].port)

    run_loop(lambda: uvssl.delay(lambda: None, 0))  # a second loop starts fine


def test_start_fn_exception_propagates():
    def my_bad_start():
        uvssl.tcp_server(LOCALHOST, 0, lambda s, d: None)
        raise LookupError("start boom")

    with pytest.raises(LookupError, match="start boom") as ei:
        run_loop(my_bad_start)
    assert "my_bad_start" in tb_names(ei.value)


def test_event_cb_exception_propagates():
    state: dict[Any, Any] = {}

    def my_event_cb_that_raises(ev):
        raise ArithmeticError(f"event boom {type(ev).__name__}")

    def start():
        # a bound but not listening socket refuses connections
        import socket

        s = socket.socket()
        s.bind((LOCALHOST, 0))
        state["blocker"] = s
        uvssl.tcp_connect(LOCALHOST, s.getsockname()[1], None, my_event_cb_that_raises)

    try:
        with pytest.raises(ArithmeticError, match="event boom TcpRefused") as ei:
            run_loop(start)
    finally:
        state["blocker"].close()
    assert "my_event_cb_that_raises" in tb_names(ei.value)


def test_catch_app_errors_with_default_event_cb():
    caught: list[Any] = []
    later = []

    def my_failing_cb():
        raise ValueError("caught boom")

    def start():
        uvssl.delay(my_failing_cb, 0.01)
        uvssl.delay(lambda: later.append("fired"), 0.05)

    run_loop(start, catch_app_errors=True, default_event_cb=caught.append)
    assert len(caught) == 1
    assert isinstance(caught[0], ValueError)
    assert str(caught[0]) == "caught boom"
    assert "my_failing_cb" in tb_names(caught[0])
    assert later == ["fired"]


def test_catch_app_errors_read_cb_connection_goes_on():
    caught: list[Any] = []
    got = []

    def start():
        srv = echo_server()

        def read_cb(sock, data):
            got.append(data)
            if len(got) == 1:
                sock.write(b"second")
                raise ValueError("first read")
            sock.close()
            srv.close()

        uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, data=b"first")

    run_loop(start, catch_app_errors=True, default_event_cb=caught.append)
    assert got == [b"first", b"second"]
    assert [str(e) for e in caught] == ["first read"]


def test_catch_app_errors_logs_without_default_event_cb(caplog):
    later = []

    def my_logged_failure():
        raise ValueError("logged boom")

    def start():
        uvssl.delay(my_logged_failure, 0.01)
        uvssl.delay(lambda: later.append("fired"), 0.05)

    with caplog.at_level(logging.DEBUG, logger="uvssl"):
        run_loop(start, catch_app_errors=True)
    assert later == ["fired"]
    records = [r for r in caplog.records if r.name == "uvssl"]
    assert records, "nothing was logged to the 'uvssl' logger"
    matching = [
        r
        for r in records
        if r.exc_info and isinstance(r.exc_info[1], ValueError) or "logged boom" in r.getMessage()
    ]
    assert matching, [r.getMessage() for r in records]
    assert any(r.levelno >= logging.ERROR for r in matching)


# -- threads -----------------------------------------------------------------------------------


def _keep_alive_until_called(state, name):
    """A long timer that keeps the loop alive; returns a callback that records and stops it."""
    state["keeper"] = uvssl.delay(lambda: state.setdefault("expired", True), 8)

    def cb(*args):
        state[name] = (threading.get_ident(), args)
        state["keeper"].cancel()

    return cb


def test_call_threadsafe_module_level():
    state: dict[Any, Any] = {}

    def start():
        cb = _keep_alive_until_called(state, "called")
        threading.Thread(target=uvssl.call_threadsafe, args=(cb, 1, "two")).start()

    run = run_loop(start)
    assert "expired" not in state
    assert state["called"] == (run.thread, (1, "two"))


def test_call_threadsafe_via_get_loop():
    state: dict[Any, Any] = {}

    def start():
        cb = _keep_alive_until_called(state, "called")
        loop = uvssl.get_loop()
        threading.Thread(target=loop.call_threadsafe, args=(cb, "x")).start()

    run = run_loop(start)
    assert "expired" not in state
    assert state["called"] == (run.thread, ("x",))


def test_call_threadsafe_bad_argument():
    def start():
        with pytest.raises(TypeError, match=r"\bcb\b"):
            uvssl.call_threadsafe(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"\bcb\b"):
            uvssl.get_loop().call_threadsafe("not callable")  # type: ignore[arg-type]

    run_loop(start)


def test_gil_released_while_waiting():
    """Another thread runs Python code to completion while the loop sleeps on a timer.

    If uv_run held the GIL, the counting thread could not run until the 8 s fallback timer
    fired, so its call_threadsafe would never come before it.
    """
    state: dict[Any, Any] = {}
    go = threading.Event()
    counted = []

    def counter(loop):
        go.wait(10)
        n = 0
        while n < 100_000:
            n += 1
        counted.append(n)
        loop.call_threadsafe(state["done"])

    def start():
        state["done"] = _keep_alive_until_called(state, "finished")
        threading.Thread(target=counter, args=(uvssl.get_loop(),), daemon=True).start()
        go.set()

    run_loop(start)
    assert counted == [100_000]
    assert "finished" in state
    assert "expired" not in state


def _echo_exchange(results, key, barrier, rounds=50):
    tid = threading.get_ident()
    out: dict[Any, Any] = {"replies": [], "loops": set(), "tids": set()}

    def start():
        barrier.wait(10)  # both loops exist and are starting at the same time
        loop = uvssl.get_loop()
        out["loop"] = loop
        srv = echo_server()

        def read_cb(sock, data):
            out["tids"].add(threading.get_ident())
            out["loops"].add(uvssl.get_loop())
            out["buf"] = out.get("buf", b"") + data
            expect = f"{key}-{len(out['replies'])};".encode()
            if out["buf"] == expect:
                out["replies"].append(out["buf"])
                out["buf"] = b""
                if len(out["replies"]) == rounds:
                    sock.close()
                    srv.close()
                else:
                    sock.write(f"{key}-{len(out['replies'])};".encode())

        uvssl.tcp_connect(LOCALHOST, srv.port, read_cb, data=f"{key}-0;".encode())

    try:
        run_loop(start)
        results[key] = (tid, out)
    except BaseException as e:  # noqa: BLE001
        results[key] = e


def test_two_loops_in_two_threads():
    results: dict[Any, Any] = {}
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=_echo_exchange, args=(results, k, barrier)) for k in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    assert not any(t.is_alive() for t in threads)
    for k in ("a", "b"):
        if isinstance(results[k], BaseException):
            raise results[k]
    (tid_a, a), (tid_b, b) = results["a"], results["b"]
    assert tid_a != tid_b
    assert len(a["replies"]) == 50 and len(b["replies"]) == 50
    assert a["replies"][-1] == b"a-49;" and b["replies"][-1] == b"b-49;"
    assert a["tids"] == {tid_a} and b["tids"] == {tid_b}
    assert a["loops"] == {a["loop"]} and b["loops"] == {b["loop"]}
    assert a["loop"] is not b["loop"]


def test_module_call_threadsafe_ambiguous_with_two_loops():
    """With two loops running, the module-level call from a third thread cannot pick one."""
    barrier = threading.Barrier(3)
    release = threading.Event()
    errors = []

    def worker():
        def start():
            keeper = uvssl.interval(lambda: release.is_set() and keeper.cancel(), 0.01)  # type: ignore[func-returns-value]
            barrier.wait(10)

        try:
            run_loop(start)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        barrier.wait(10)
        with pytest.raises(RuntimeError):
            uvssl.call_threadsafe(lambda: None)
    finally:
        release.set()
        for t in threads:
            t.join(20)
    assert not errors


# -- misuse ------------------------------------------------------------------------------------


def test_get_loop_outside_a_loop():
    with pytest.raises(RuntimeError):
        uvssl.get_loop()
    with pytest.raises(RuntimeError):
        uvssl.delay(lambda: None, 0)
    with pytest.raises(RuntimeError):
        uvssl.exit_event_loop()


def test_call_threadsafe_without_any_loop():
    with pytest.raises(RuntimeError):
        uvssl.call_threadsafe(lambda: None)


def test_nested_start_event_loop_raises():
    seen = []

    def start():
        outer = uvssl.get_loop()
        with pytest.raises(RuntimeError):
            uvssl.start_event_loop(lambda: seen.append("inner ran"))
        # the outer loop is untouched
        assert uvssl.get_loop() is outer
        uvssl.delay(lambda: seen.append("outer timer"), 0)

    run_loop(start)
    assert seen == ["outer timer"]


def test_nested_start_event_loop_from_callback_raises():
    seen = []

    def cb():
        with pytest.raises(RuntimeError):
            uvssl.with_event_loop(lambda: seen.append("inner ran"))
        seen.append("ok")

    run_loop(lambda: uvssl.delay(cb, 0))
    assert seen == ["ok"]


def test_bad_timer_arguments():
    def start():
        with pytest.raises(TypeError, match=r"\bcb\b"):
            uvssl.delay("not callable", 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"\bcb\b"):
            uvssl.interval(None, 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="seconds"):
            uvssl.delay(lambda: None, -1)
        with pytest.raises(ValueError, match="seconds"):
            uvssl.interval(lambda: None, 0)
        with pytest.raises(ValueError, match="seconds"):
            uvssl.interval(lambda: None, -0.5)
        with pytest.raises(ValueError, match="seconds"):
            uvssl.delay(lambda: None, float("nan"))
        with pytest.raises(TypeError, match="seconds"):
            uvssl.delay(lambda: None, "1")  # type: ignore[arg-type]

    run_loop(start)


def test_bad_start_event_loop_arguments():
    with pytest.raises(TypeError, match="start_fn"):
        uvssl.start_event_loop(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="default_event_cb"):
        uvssl.start_event_loop(lambda: None, default_event_cb="nope")  # type: ignore[arg-type]
    # neither left a loop behind
    with pytest.raises(RuntimeError):
        uvssl.get_loop()


@pytest.mark.timeout(60)
def test_1000_raising_callbacks_with_catch_app_errors_while_serving() -> None:
    # every server read raises after answering: the loop goes on, and every error is reported
    caught: list[BaseException] = []
    replies = [0]

    def start() -> None:
        def on_server_read(sock: uvssl.Socket, data: bytes) -> None:
            sock.write(data)
            raise ValueError(f"callback error {len(caught)}")

        server = uvssl.tcp_server("127.0.0.1", 0, on_server_read)

        def on_reply(sock: uvssl.Socket, data: bytes) -> None:
            replies[0] += 1
            if replies[0] == 1000:
                sock.close()
                server.close()
            else:
                sock.write(b"again")

        uvssl.tcp_connect("127.0.0.1", server.port, on_reply, data=b"first")

    run_loop(start, timeout=30, catch_app_errors=True, default_event_cb=caught.append)
    assert replies[0] == 1000
    assert len(caught) == 1000
    assert all(isinstance(e, ValueError) for e in caught)
