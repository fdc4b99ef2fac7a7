"""The benchmark runner: ``python -m uvssl bench`` end to end in its tiny mode.

No timing assertions: the figures of a 0.3 s cell on a shared machine are noise. The test checks
that every requested server and cell is reported (measured, or skipped when the optional peer is
not installed), in the JSON and in the printed table, and that nothing is left running.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SANITIZED, SLOWDOWN
from tls_support import kill_process, recv_exactly, stdlib_client_context

from uvssl.bench import runner

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["uvssl", "native", "aiofastnet"]
CELLS = ["echo-1", "echo-64", "bulk", "hs-full", "hs-resumed", "idle", "plain-echo-64"]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.timeout(180 * SLOWDOWN)
def test_bench_tiny_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "uvssl", "bench", "--", "--tiny",
         "--servers", ",".join(SERVERS), "--cells", ",".join(CELLS), "--json", str(out)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=170 * SLOWDOWN,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    report = json.loads(out.read_text())
    assert report["meta"]["config"]["mode"] == "tiny"
    for key in (
        "date",
        "nproc",
        "cpu_model",
        "kernel",
        "python",
        "openssl",
        "cpu_method",
        "cpu_resolution_s",
    ):
        assert key in report["meta"]
    assert list(report["cells"]) == CELLS
    assert list(report["results"]) == SERVERS
    aiofastnet_ok = _has("aiofastnet")
    for name in SERVERS:
        expected = "ok" if name != "aiofastnet" or aiofastnet_ok else "skipped"
        assert report["servers"][name]["status"] == expected
        for cell in CELLS:
            res = report["results"][name][cell]
            assert res["status"] == expected, (name, cell, res)
            if expected != "ok":
                assert res["reason"]
                continue
            for metric in report["cells"][cell]["metrics"]:
                value = res[metric]
                assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
            assert res["ops"] > 0
            # where the server's time went: user space and kernel, over the same window
            for key in ("server_user_s", "server_sys_s"):
                assert isinstance(res[key], float) and res[key] >= 0, (name, cell, key)
            # cells whose connections persist are measured after an unmeasured priming run
            primed = report["cells"][cell]["prime"]
            assert primed == (cell in ("echo-1", "echo-64", "bulk", "plain-echo-64"))
            assert (res["prime_ops"] > 0) == primed, (name, cell, res["prime_ops"])
    assert report["results"]["uvssl"]["idle"]["conns"] == 20
    for cell in CELLS:  # ratios to uvssl for every figure of the native server uvssl's is not 0
        base = report["results"]["uvssl"][cell]
        wanted = {m for m in report["cells"][cell]["metrics"] if base[m] > 0}
        assert set(report["ratios"]["native"][cell]) == wanted
    if report["meta"]["cpu_resolution_s"] < 1e-6:
        # CPU read in nanoseconds: even the setup of 20 idle connections is measurable
        for cell in CELLS:
            assert report["results"]["uvssl"][cell]["cpu_s_per_op"] > 0, cell

    table = proc.stdout
    header = next(line for line in table.splitlines() if line.startswith("cell"))
    assert header.split()[2:] == SERVERS
    for label in ("echo-1 (TLS)", "echo-64 (TLS)", "bulk (TLS)", "hs-full (TLS)",
                  "hs-resumed (TLS)", "idle-20 (TLS)", "plain-echo-64 (plain TCP)"):  # fmt: skip
        assert label in table
    for metric in ("req/s", "p50 us", "p99 us", "MB/s", "handshakes/s", "KiB/conn", "CPU us/op"):
        assert metric in table
    assert "x" in table.split("native")[-1]  # ratios are printed
    if not aiofastnet_ok:
        assert "aiofastnet: skipped" in table
    # live progress on stderr, one step per (server, cell)
    total = len(SERVERS) * len(CELLS)
    assert f"[{total}/{total}]" in proc.stderr
    assert "uvssl echo-64 ..." in proc.stderr


def test_bench_bad_usage():
    assert runner.main(["--servers", "uvssl,nope"]) == 2
    assert runner.main(["--cells", "echo-1,warp"]) == 2
    assert runner.main(["--tiny", "--duration", "-1"]) == 2
    assert runner.main(["--bogus"]) == 2


@pytest.mark.skipif(_has("matplotlib"), reason="matplotlib is installed")
def test_bench_plot_without_matplotlib_refuses_before_running(capsys):
    assert runner.main(["--tiny", "--plot", "x.png"]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_cpu_interpolation():
    samples = [(0.0, 1.0), (1.0, 2.0), (3.0, 2.0)]
    assert runner._cpu_at(samples, -1.0) == 1.0
    assert runner._cpu_at(samples, 0.5) == pytest.approx(1.5)
    assert runner._cpu_at(samples, 2.0) == 2.0
    assert runner._cpu_at(samples, 9.0) == 2.0


def test_priming_run_is_short_and_unmeasured(tmp_path):
    cfg = runner.Config.preset("full")
    cell = runner.CELLS["echo-64"]
    measured = runner._loadgen_argv(tmp_path / "lg", cell, 4433, cfg)
    priming = runner._loadgen_argv(tmp_path / "lg", cell, 4433, cfg, priming=True)

    def opt(argv, name):
        return argv[argv.index(name) + 1]

    assert float(opt(measured, "--duration")) == cfg.duration
    assert float(opt(priming, "--duration")) == runner.PRIME_SECONDS < cfg.duration
    assert float(opt(priming, "--warmup")) == 0
    # the same load otherwise: connections, size, mode
    for name in ("--mode", "--conns", "--size", "--port"):
        assert opt(priming, name) == opt(measured, name)


def test_rounds_combine_to_medians():
    cell = runner.CELLS["echo-64"]

    def ok(rps, cpu, errors=0):
        return {"status": "ok", "rps": rps, "p50_us": rps / 10, "p99_us": rps / 5,
                "cpu_s_per_op": cpu, "ops": int(rps), "seconds": 1.0, "server_cpu_s": 0.5,
                "errors": errors, "conns": 64}  # fmt: skip

    runs = [ok(100.0, 3e-5), ok(300.0, 1e-5, errors=2), ok(200.0, 2e-5)]
    res = runner.combine_rounds(cell, runs)
    assert res["status"] == "ok"
    assert res["rps"] == 200.0 and res["p50_us"] == 20.0 and res["p99_us"] == 40.0
    assert res["cpu_s_per_op"] == 2e-5  # medians per figure, not the figures of one round
    assert res["ops"] == 200 and res["errors"] == 2 and res["conns"] == 64
    assert res["rounds"] == runs
    assert runner.combine_rounds(cell, runs[:1]) is runs[0]

    failed = runner.combine_rounds(cell, [runs[0], {"status": "failed", "reason": "boom"}])
    assert failed["status"] == "failed" and failed["reason"] == "boom"
    skipped = [{"status": "skipped", "reason": "not installed"}] * 2
    assert runner.combine_rounds(cell, skipped)["status"] == "skipped"


@pytest.mark.timeout(120 * SLOWDOWN)
def test_bench_rounds_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    report_code = runner.main(
        ["--tiny", "--rounds", "2", "--servers", "uvssl,native", "--cells", "echo-1",
         "--no-progress", "--json", str(out)]
    )  # fmt: skip
    assert report_code == 0
    report = json.loads(out.read_text())
    assert report["meta"]["config"]["rounds"] == 2
    for name in ("uvssl", "native"):
        res = report["results"][name]["echo-1"]
        assert res["status"] == "ok"
        assert len(res["rounds"]) == 2 and all(r["status"] == "ok" for r in res["rounds"])
        values = sorted(r["rps"] for r in res["rounds"])
        assert res["rps"] == pytest.approx(sum(values) / 2)
    assert runner.main(["--tiny", "--rounds", "0"]) == 2


@pytest.mark.timeout(120 * SLOWDOWN)
def test_bench_udp_echo_tiny(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    servers = ["uvssl", "asyncio", "native"]
    proc = subprocess.run(
        [sys.executable, "-m", "uvssl", "bench", "--", "--tiny",
         "--servers", ",".join(servers), "--cells", "udp-echo", "--json", str(out)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=110 * SLOWDOWN,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert list(report["cells"]) == ["udp-echo"]
    assert report["cells"]["udp-echo"]["prime"]
    for name in ("uvssl", "asyncio"):
        res = report["results"][name]["udp-echo"]
        assert res["status"] == "ok", (name, res)
        assert res["ops"] > 0 and res["prime_ops"] > 0
        for metric in report["cells"]["udp-echo"]["metrics"]:
            assert math.isfinite(res[metric]) and res[metric] >= 0
        assert res["lost"] >= 0 and res["loadgen"]["error"] is None
    native = report["results"]["native"]["udp-echo"]
    assert native["status"] == "n/a" and "UDP" in native["reason"]
    assert "udp-echo (UDP)" in proc.stdout and "datagrams/s" in proc.stdout
    assert "n/a" in proc.stdout
    assert "x" in proc.stdout.split("asyncio")[-1]  # asyncio's ratio to uvssl


def test_workers_option_parses():
    from uvssl.bench.scaling import parse_workers

    assert parse_workers("1") == [1]
    assert parse_workers("4") == [1, 2, 4]  # N: 1, 2, 4, ... up to N
    assert parse_workers("6") == [1, 2, 4, 6]
    assert parse_workers("2,4") == [1, 2, 4]  # a list: those counts, and 1 as the baseline
    assert parse_workers(" 3, 1,3 ") == [1, 3]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "from 1 to"),
        (["--workers=-2"], "from 1 to"),
        (["--workers", "1,-4"], "from 1 to"),
        (["--workers", "many"], "'many' is not a worker count"),
        (["--workers", "1,2.5"], "'2.5' is not a worker count"),
        (["--workers", ","], "is not a worker count"),
        (["--workers", "100000"], "from 1 to"),
        (["--workers", "2", "--cells", "echo-1"], "--workers measures"),
        (["--threads", "0"], "thread counts must be from 1 to"),
        (["--threads", "many"], "'many' is not a thread count"),
        (["--threads", "2", "--cells", "echo-1"], "--threads measures"),
    ],
)
def test_workers_option_errors(capsys, args, message):
    assert runner.main(["--tiny", *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_workers_plan():
    from uvssl.bench.scaling import _plan

    # eight CPUs, the load client on CPU 1: workers take the others in order
    separate, shared, info = _plan([1, 2, 4, 8], list(range(8)), 0, 1)
    assert [s.cpus for s in separate] == [(0,), (0, 2), (0, 2, 3, 4)]
    assert info["not_run"] == [{"workers": 8, "reason": "7 CPUs free of the load client"}]
    assert [s.cpus for s in shared] == [(0, 0), (0, 0, 0, 0), (0,) * 8]
    assert info["shared_cpu"] == 0 and info["free_cpus"] == [0, 2, 3, 4, 5, 6, 7]
    # two CPUs: one worker on its own core; 2 and 4 only sharing it
    separate, shared, info = _plan([1, 2, 4], [0, 1], 0, 1)
    assert [s.workers for s in separate] == [1]
    assert [n["workers"] for n in info["not_run"]] == [2, 4]
    assert [s.cpus for s in shared] == [(0, 0), (0, 0, 0, 0)]
    # not pinned: no shared-core experiment, and the counts that fit beside the load client
    separate, shared, info = _plan([1, 2, 4], [0, 1, 2], None, None)
    assert [s.cpus for s in separate] == [(None,), (None, None)]
    assert not shared and "pinning" in info["shared_reason"]


@pytest.mark.timeout(90 * SLOWDOWN)
def test_bench_workers_tiny(tmp_path):
    from uvssl.bench.scaling import format_scaling

    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "uvssl", "bench", "--", "--tiny", "--workers", "2",
         "--servers", "uvssl", "--cells", "echo-64", "--json", str(out)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=80 * SLOWDOWN,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    sc = report["scaling"]
    assert sc["counts"] == [1, 2] and sc["cells"] == ["echo-64"]
    usable = report["meta"]["usable_cpus"]
    assert sc["pinned"] == (len(usable) > 1)

    separate = sc["separate"]["echo-64"]
    assert separate[0]["workers"] == 1 and separate[0]["status"] == "ok"
    assert separate[0]["speedup"] == 1.0
    rows = list(separate)
    if len(usable) > 2:  # a second free CPU: 2 workers on separate cores
        assert [r["workers"] for r in separate] == [1, 2]
        assert len(set(separate[1]["cpus"])) == 2 and sc["client_cpu"] not in separate[1]["cpus"]
    else:
        assert [r["workers"] for r in separate] == [1]
        assert [n["workers"] for n in sc["not_run"]] == [2]
    if sc["pinned"]:
        shared = sc["shared"]["echo-64"]
        assert [r["workers"] for r in shared] == [2]
        assert shared[0]["cpus"] == [separate[0]["cpus"][0]] * 2
        assert shared[0]["cpu_ratio"] > 0
        rows += shared
    for row in rows:
        assert row["status"] == "ok", row
        assert row["ops"] > 0 and row["ops_per_s"] > 0 and row["prime_ops"] > 0
        assert row["cpu_s_per_op"] > 0 and row["server_cpu_s"] > 0
        assert 0 <= row["client_busy"] < 2 and isinstance(row["client_saturated"], bool)
        if row["workers"] == 2:  # CPU time read from both workers and summed
            per_worker = row["worker_cpu_s"]
            assert len(per_worker) == 2 and all(c > 0 for c in per_worker), per_worker
            assert sum(per_worker) == pytest.approx(row["server_cpu_s"], abs=1e-3)
    projection = sc["projection"]["cells"]["echo-64"]
    assert projection["cpu_s_per_op"] == separate[0]["cpu_s_per_op"]
    assert projection["ops_per_s"][0] == pytest.approx(1 / separate[0]["cpu_s_per_op"])
    assert len(projection["ops_per_s"]) == len(sc["projection"]["cores"])

    table = proc.stdout
    assert "scaling (--workers)" in table and "speed-up" in table
    assert "projection (NOT measured)" in table
    if sc["pinned"]:
        assert "one shared core: every worker pinned to CPU" in table
    assert "[workers 1/" in proc.stderr
    # a row where the load client was busy all the time is marked, with the reason
    assert "*: the load client" not in format_scaling(report) or any(
        r["client_saturated"] for r in rows
    )
    separate[0]["client_busy"], separate[0]["client_saturated"] = 1.0, True
    marked = format_scaling(report)
    assert "100%*" in marked and "*: the load client (one thread) was busy" in marked
    if sc["pinned"]:  # a shared-core ratio above the goal is named
        sc["shared"]["echo-64"][0]["cpu_ratio"] = 1.0
        assert "ratio above" not in format_scaling(report)
        sc["shared"]["echo-64"][0]["cpu_ratio"] = 1.5
        assert "ratio above 1.05: echo-64 with 2 workers (1.500)" in format_scaling(report)


@pytest.mark.timeout(90 * SLOWDOWN)
def test_bench_threads_tiny(tmp_path):
    from uvssl.bench.scaling import format_scaling

    out = tmp_path / "bench.json"
    proc = _bench_subprocess(
        tmp_path,
        ["--threads", "2", "--servers", "uvssl", "--cells", "echo-64", "--json", str(out)],
        80 * SLOWDOWN,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert "scaling" not in report  # --workers was not asked for
    th = report["threads"]
    assert th["unit"] == "threads" and th["counts"] == [1, 2] and th["cells"] == ["echo-64"]
    separate = th["separate"]["echo-64"]
    rows = list(separate)
    if th["pinned"]:
        rows += th["shared"]["echo-64"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["ops"] > 0 and row["cpu_s_per_op"] > 0
        # the Python callbacks' CPU time, read from the server while it ran: a share of its CPU
        assert 0 < row["gil_share"] < 1, row
        assert 0 < row["gil_s"] <= row["server_cpu_s"]
        assert "worker_cpu_s" not in row  # one process
    base = separate[0]
    projection = th["projection"]["cells"]["echo-64"]["ops_per_s"]
    cap = 1 / base["gil_share"]
    for k, ops in zip(th["projection"]["cores"], projection):
        assert ops == pytest.approx(min(k, cap) / base["cpu_s_per_op"])
    table = proc.stdout
    assert "loops in threads (--threads)" in table and "GIL" in table
    assert f"one thread holds the GIL for {base['gil_share'] * 100:.1f}%" in table
    assert "min(k, 1 / GIL share)" in table
    assert "[threads 1/" in proc.stderr
    assert format_scaling(report, "threads") in table
    base["gil_share"] = None  # an unreadable GIL file shows as "?"
    assert " ?  " in format_scaling(report, "threads")


def _bench_subprocess(
    tmp_path: Path, args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "uvssl", "bench", "--", "--tiny", *args],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.timeout(90 * SLOWDOWN)
def test_bench_uvssl_aio_tiny(tmp_path):
    # the asyncio echo protocol served by uvssl.aio, next to uvssl's own server
    out = tmp_path / "bench.json"
    cells = ["echo-64", "plain-echo-64"]
    proc = _bench_subprocess(
        tmp_path,
        ["--servers", "uvssl,uvssl-aio", "--cells", ",".join(cells), "--json", str(out)],
        80 * SLOWDOWN,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["servers"]["uvssl-aio"]["status"] == "ok"
    for cell in cells:
        res = report["results"]["uvssl-aio"][cell]
        assert res["status"] == "ok", (cell, res)
        assert res["ops"] > 0 and res["prime_ops"] > 0 and res["errors"] == 0
        for metric in report["cells"][cell]["metrics"]:
            assert math.isfinite(res[metric]) and res[metric] >= 0
        assert set(report["ratios"]["uvssl-aio"][cell]) <= set(report["cells"][cell]["metrics"])
        assert "rps" in report["ratios"]["uvssl-aio"][cell]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("cell"))
    assert header.split()[2:] == ["uvssl", "uvssl-aio"]


def _wait_ready(proc: subprocess.Popen[bytes], limit: float) -> int:
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not line.startswith(b"READY "):
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            assert line, "the server exited before READY"
    assert line.startswith(b"READY "), "no READY line"
    return int(line.split()[1])


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
        return f.read()


@pytest.mark.timeout(60 * SLOWDOWN)
@pytest.mark.parametrize("impl", ["uvssl-aio", "asyncio"])
def test_py_server_uvssl_aio_runs_on_uvssl(tmp_path, certs, impl):
    # run as a plain file, the module loads uvssl only to serve through uvssl.aio: uvssl's
    # native core is then mapped in the server, and never in the stock asyncio one
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "uvssl" / "bench" / "py_servers.py"), "--impl", impl,
         "--port", "0",
         "--cert", str(certs.server_cert), "--key", str(certs.server_key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(tmp_path),
    )  # fmt: skip
    try:
        port = _wait_ready(proc, 30 * SLOWDOWN)
        ctx = stdlib_client_context(certs)
        with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOWDOWN) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                for i in range(20):
                    msg = b"ping %d " % i * 50
                    tls.sendall(msg)
                    assert recv_exactly(tls, len(msg)) == msg
        assert ("_uvssl" in _maps(proc.pid)) == (impl == "uvssl-aio")
        proc.terminate()
        assert proc.wait(timeout=10 * SLOWDOWN) == 0
    finally:
        kill_process(proc)


def test_py_server_uvssl_aio_has_no_udp():
    from uvssl.bench import py_servers

    assert py_servers.main(["--impl", "uvssl-aio", "--udp"]) == py_servers.EXIT_UNAVAILABLE


@pytest.mark.timeout(120 * SLOWDOWN)
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
@pytest.mark.skipif(not _has("aiohttp"), reason="aiohttp is not installed")
@pytest.mark.skipif(
    SANITIZED,
    reason="under AddressSanitizer aiohttp's servers take longer to start than the bench "
    "waits, and answer no request within wrk's whole-second runs",
)
def test_bench_https_hello_tiny(tmp_path):
    out = tmp_path / "bench.json"
    servers = ["uvssl", "aiohttp-uvssl"]
    if _has("uvloop"):
        servers.append("aiohttp-uvloop")
    if _has("aiofastnet"):
        servers.append("aiohttp-aiofastnet")
    proc = _bench_subprocess(
        tmp_path,
        ["--servers", ",".join(servers), "--cells", "https-hello,echo-1", "--json", str(out)],
        110 * SLOWDOWN,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    spec = report["cells"]["https-hello"]
    assert spec["conns"] == 64 and spec["prime"] and spec["base"] == "aiohttp-uvssl"
    for name in servers[1:]:
        res = report["results"][name]["https-hello"]
        assert res["status"] == "ok", (name, res)
        assert res["ops"] > 0 and res["prime_ops"] > 0 and res["errors"] == 0, res
        assert res["loadgen"]["status_errors"] == 0 and res["loadgen"]["error"] is None
        for metric in spec["metrics"]:
            assert math.isfinite(res[metric]) and res[metric] > 0, (name, metric)
        assert res["seconds"] >= 0.9  # wrk counts whole seconds
        assert res["client_cpu_s"] > 0  # wrk's two threads, read after they ended
        # the aiohttp servers serve only this cell
        assert report["results"][name]["echo-1"]["status"] == "n/a"
    # uvssl's echo server has no HTTP app; it still measures its echo cell
    assert report["results"]["uvssl"]["https-hello"]["status"] == "n/a"
    assert report["results"]["uvssl"]["echo-1"]["status"] == "ok"
    # ratios to aiohttp on uvssl.aio
    assert "aiohttp-uvssl" not in report["ratios"]
    for name in servers[2:]:
        assert set(report["ratios"][name]["https-hello"]) == set(spec["metrics"])
    assert "https-hello (HTTPS)" in proc.stdout
    assert "(https-hello: / aiohttp-uvssl)" in proc.stdout


def test_bench_https_hello_without_wrk_is_skipped(tmp_path, monkeypatch, capsys):
    # a PATH with pkg-config but no wrk, the C compiler named by its absolute path: the native
    # load client is built first with the usual PATH (where the compiler finds its assembler),
    # then found in the cache
    from uvssl.bench.native_build import build_native

    cc = shutil.which(os.environ.get("CC", "cc"))
    pkg_config = shutil.which("pkg-config")
    if cc is None or pkg_config is None:
        pytest.skip("no C compiler or pkg-config")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pkg-config").symlink_to(pkg_config)
    monkeypatch.setenv("CC", cc)
    build_native("loadgen")
    monkeypatch.setenv("PATH", str(bindir))
    out = tmp_path / "bench.json"
    code = runner.main(
        ["--tiny", "--servers", "aiohttp-uvssl", "--cells", "https-hello", "--no-progress",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    res = json.loads(out.read_text())["results"]["aiohttp-uvssl"]["https-hello"]
    assert res["status"] == "skipped" and "wrk is not installed" in res["reason"]
    assert "https-hello: skipped (wrk is not installed" in capsys.readouterr().out


@pytest.mark.skipif(SANITIZED, reason="the tool measures the normal build's servers")
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("server", "args", "unit"),
    [("uvssl", ["3000"], "request"), ("native", ["300", "handshake", "4"], "handshake")],
)
def test_cpu_split_tool(server, args, unit):
    """tools/cpu_split.sh drives a server and prints its CPU per operation, split (enough
    operations for /proc's 10 ms ticks to see some CPU time)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "cpu_split.sh"), server, *args],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[:2] == [server, ("echo" if unit == "request" else "handshake") + ":"], proc.stdout
    total, user, system = float(words[2]), float(words[8]), float(words[11])
    assert words[3:8] == ["us", "CPU", "per", unit, "="] and words[9] == "user", proc.stdout
    assert total == pytest.approx(user + system, abs=0.11) and total > 0, proc.stdout
    assert proc.stdout.rstrip().endswith(f"({args[0]} {unit}s)"), proc.stdout


def test_cpu_split_tool_refuses_an_unknown_server():
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "cpu_split.sh"), "nginx"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "unknown server nginx" in proc.stderr
