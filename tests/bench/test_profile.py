"""``python -m bench.profile``'s readings: per-thread CPU from /proc, py-spy's collapsed stacks, cProfile's statistics,
the batch counts from /metrics. No server: a fake /proc, recorded stacks, a profile of this process."""

from __future__ import annotations

import cProfile
import json
import time

import httpx
import pytest

from bench import profile, server


def write_thread(proc, pid: int, tid: int, name: str, utime: int, stime: int) -> None:
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True, exist_ok=True)
    # comm may hold spaces and parentheses: the fields are read after the last ")"
    (task / "stat").write_text(f"{tid} (odd (name) x) S 1 2 3 4 5 6 7 8 9 10 {utime} {stime} 0 0 20 0 1 0\n")
    (task / "comm").write_text(name + "\n")


def test_thread_cpu_reads_each_threads_user_and_system_time_and_sums_by_role(tmp_path):
    ticks = server.CLOCK_TICKS
    write_thread(tmp_path, 50, 50, "python", ticks * 2, ticks)  # the main thread: uvicorn's event loop
    write_thread(tmp_path, 50, 51, "python", ticks, 0)
    write_thread(tmp_path, 50, 52, "libuv-worker", 0, 0)
    before = profile.thread_cpu(50, tmp_path)
    assert before[50] == profile.ThreadCPU("python", 3.0)
    write_thread(tmp_path, 50, 50, "python", ticks * 3, ticks)
    write_thread(tmp_path, 50, 51, "python", ticks * 5, 0)
    write_thread(tmp_path, 50, 53, "python", ticks, 0)  # a thread started during the run counts from zero
    spent = profile.thread_cpu_spent(before, profile.thread_cpu(50, tmp_path), main_tid=50)
    assert spent == {"event loop": pytest.approx(1.0), "python": pytest.approx(5.0), "libuv-worker": 0.0}
    assert profile.thread_cpu(999, tmp_path) == {}


def test_collapsed_stacks_rank_functions_once_per_stack_and_split_out_the_event_loop():
    stacks = [
        "thread (0x1);_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118);"
        "send (uvicorn/protocols/http/httptools_impl.py:501) 6",
        "thread (0x1);Runner.run (asyncio/runners.py:118);f (app/x.py:3);g (app/x.py:9);f (app/x.py:4) 2",
        "thread (0x2);Thread._bootstrap (threading.py:995);forward (app/models/dcgan.py:80) 12",
        "garbage line without a count",
    ]
    every, loop = profile.parse_collapsed(stacks)
    assert every.total == 20 and loop.total == 8
    assert every.cumulative["f (app/x.py)"] == 2, "a recursive function counts once per stack"
    assert every.own["forward (app/models/dcgan.py)"] == 12 and every.own["f (app/x.py)"] == 2
    assert "forward (app/models/dcgan.py)" not in loop.cumulative
    rows = profile.ranked(loop.own, loop.total, ms_per_request=4.0, top=1)
    assert rows == [
        {"function": "send (uvicorn/protocols/http/httptools_impl.py)", "share": 0.75, "ms_per_request": 3.0}
    ]


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cprofile_statistics_give_cpu_per_request_by_function(tmp_path):
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    for _ in range(4):
        spin(0.01)
    profiler.disable()
    stats_file = tmp_path / "loop.pstats"
    profiler.dump_stats(stats_file)
    table = profile.ranked_pstats(stats_file, requests=2, top=50)
    row = next(row for row in table["top_cumulative"] if row["function"].startswith("spin "))
    assert row["function"] == "spin (tests/bench/test_profile.py)"
    assert row["calls_per_request"] == 2.0
    assert 18 <= row["cumulative_ms_per_request"] < 40, "two 10 ms spins per request, in CPU time"
    assert table["profiled_ms_per_request"] >= row["cumulative_ms_per_request"] * 0.9


def test_function_names_drop_the_installation_prefix():
    assert profile.function_name(("~", 0, "<built-in method time.sleep>")) == "<built-in method time.sleep>"
    site = "/venv/lib/python3.11/site-packages/fastapi/routing.py"
    assert profile.function_name((site, 10, "app")) == "app (fastapi/routing.py)"
    stdlib = "/usr/lib/python3.11/asyncio/base_events.py"
    assert profile.function_name((stdlib, 10, "_run_once")) == "_run_once (asyncio/base_events.py)"
    assert profile.function_name((f"{server.REPO_ROOT}/app/main.py", 1, "f")) == "f (app/main.py)"


def test_batch_counts_come_from_the_family_s_histogram():
    text = (
        '# TYPE facegen_batch_requests histogram\nfacegen_batch_requests_count{family="dcgan"} 12.0\n'
        'facegen_batch_requests_sum{family="dcgan"} 96.0\nfacegen_batch_requests_count{family="vae"} 3.0\n'
    )
    assert profile.batches(httpx.Response(200, text=text), "dcgan") == (12.0, 96.0)
    assert profile.batches(httpx.Response(200, text=text), "acgan") == (0.0, 0.0)


def test_options_default_to_the_issue_s_cell_with_cprofile():
    args = profile.parse_args([])
    assert (args.scenario, args.concurrency, args.batching, args.profiler) == ("dcgan", 32, "on", "cprofile")
    with pytest.raises(SystemExit):
        profile.parse_args(["--profiler", "perf"])


def test_a_short_profile_of_a_real_server_on_the_tiny_checkpoints(tiny_weights, tmp_path, capsys):
    out = tmp_path / "profile.json"
    argv = ["--weights", str(tiny_weights), "--concurrency", "4", "--seconds", "1", "--warmup", "0.2"]
    profile.main([*argv, "--top", "200", "--json", str(out), "--pstats", str(tmp_path / "loop.pstats")])
    figures = json.loads(out.read_text())
    assert figures["server_environment"]["fast_stack"], "profiled on uvloop and httptools, as production runs"
    assert figures["requests_ok"] > 0 and figures["requests_per_forward"] >= 1
    assert figures["server_cpu_ms_per_request"] > 0 and "event loop" in figures["cpu_ms_per_request_by_thread"]
    functions = {row["function"] for row in figures["event_loop_cprofile"]["top_cumulative"]}
    assert "run_asgi (uvicorn/protocols/http/httptools_impl.py)" in functions
    assert "generate_dcgan (app/api/routes/generate.py)" in functions
    assert (tmp_path / "loop.pstats").stat().st_size > 0
    assert "event loop, cProfile" in capsys.readouterr().out
