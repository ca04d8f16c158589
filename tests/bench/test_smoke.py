"""The real benchmark, end to end, at toy scale: it starts three servers on the tiny checkpoints (batching on, off,
and one with a small queue for the overload run), drives every scenario with closed-loop clients, times the raw
forwards and writes the JSON report. Bounded: two rounds of 0.5 s per cell, about 45 s in all on a busy 2-core
machine."""

from __future__ import annotations

import json

import pytest

from bench import cli

SCENARIOS = ["acgan", "classify", "dcgan", "glow", "infogan", "vae"]  # one per family with a bench request, by family
SAMPLING_FAMILIES = {"dcgan", "acgan", "vae", "glow", "infogan"}
CONCURRENCY = [1, 4]
TOP_LEVEL = {
    "server_environment",
    "config",
    "device",
    "models",
    "scenarios",
    "skipped_scenarios",
    "servers",
    "e2e",
    "ratio",
    "raw",
    "peer",
    "overload",
    "comparisons",
    "checks",
}


@pytest.fixture(scope="module")
def bench_run(tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = [
        "--startup",
        "--weights",
        str(tiny_weights),
        "--seconds",
        "0.5",
        "--warmup",
        "0.1",
        "--rounds",
        "2",
        "--concurrency",
        ",".join(map(str, CONCURRENCY)),
        "--target-concurrency",
        "4",
        "--modes",
        "on,off",
        "--no-peer",
        "--overload",
        "--overload-clients",
        "16",
        "--overload-queue",
        "8",
        "--overload-seconds",
        "0.5",
        "--probe-interval-ms",
        "50",
        "--repeats",
        "1",
        "--ratio-requests",
        "2",
        "--json",
        str(out),
    ]
    assert cli.main(argv) == 0
    return json.loads(out.read_text())


def test_report_has_every_section(bench_run):
    results = bench_run
    assert set(results) == TOP_LEVEL
    assert results["config"]["modes"] == ["on", "off"] and results["config"]["concurrency"] == CONCURRENCY
    assert results["device"] == "cpu"
    assert results["server_environment"]["fast_stack"] is True, "the servers run uvicorn with uvloop and httptools"
    assert [s["name"] for s in results["scenarios"]] == SCENARIOS and results["skipped_scenarios"] == {}
    families = {card["family"] for card in results["models"]}
    assert families >= SAMPLING_FAMILIES | {"classifier"}
    assert all("capabilities" in card for card in results["models"])


def test_e2e_rows_are_complete_and_consistent(bench_run):
    rows = bench_run["e2e"]
    cells = [(r["mode"], r["scenario"], r["concurrency"]) for r in rows]
    # the two servers run side by side and take turns, cell by cell
    assert cells == [(mode, scenario, c) for scenario in SCENARIOS for c in CONCURRENCY for mode in ("on", "off")]
    assert bench_run["config"]["rounds"] == 2
    for row in rows:
        # two rounds per cell; the row is the slower (the lower middle of two), with both throughputs beside it
        assert len(row["rounds_images_per_s"]) == 2 and row["images_per_s"] == min(row["rounds_images_per_s"]), row
        assert row["requests"] > 0, row
        assert row["ok"] + row["errors"] == row["requests"] == sum(row["statuses"].values()), row
        assert row["statuses"] == {"200": row["requests"]}, row  # default queue: nothing is shed at 4 clients
        assert row["images_per_s"] == pytest.approx(row["ok"] * row["rows_per_request"] / row["wall_s"])
        assert row["wall_s"] >= 0.5
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        # the server's CPU (from /proc, all its processes) over the cell, per image served: some, and finite
        assert row["server_cpu_s"] > 0 and 0 < row["server_cpu_ms_per_image"] < 10_000, row
    assert {r["scenario"]: r["rows_per_request"] for r in rows} == {
        "dcgan": 1,
        "acgan": 8,
        "vae": 1,
        "glow": 1,
        "classify": 1,
        "infogan": 1,
    }


def test_raw_and_ratio(bench_run):
    raw = {(r["family"], r["batch"]) for r in bench_run["raw"]}
    assert raw == {(family, batch) for family in SAMPLING_FAMILIES | {"classifier"} for batch in (1, 32, 64)}
    assert all(r["seconds"] > 0 for r in bench_run["raw"])
    ratio = {r["family"]: r for r in bench_run["ratio"]}
    assert set(ratio) == SAMPLING_FAMILIES - {"infogan"}  # a request sweeps at most 16 rows, not the ratio's 64
    for row in ratio.values():
        assert row["n"] == 64 and row["mode"] == "on" and row["requests"] == 2 and row["ok"] == 2
        assert row["raw_ms"] > 0 and row["ratio"] == pytest.approx(row["p50_ms"] / row["raw_ms"])


def test_comparisons_servers_peer_and_checks(bench_run):
    comparisons = bench_run["comparisons"]
    assert len(comparisons["batching"]) == len(SCENARIOS) * len(CONCURRENCY)
    assert all(r["throughput_ratio"] > 0 for r in comparisons["batching"])
    assert {(r["scenario"], r["mode"]) for r in comparisons["p95_growth"]} == {
        (s, m) for s in SCENARIOS for m in ("on", "off")
    }
    assert comparisons["peer"] == []
    assert bench_run["peer"] == {"status": "skipped", "reason": "--no-peer"}

    servers = bench_run["servers"]
    assert set(servers) == {"on", "off", "overload"}
    assert servers["off"]["settings"]["FACEGEN_MAX_BATCH"] == "1"
    assert "FACEGEN_MAX_BATCH" not in servers["on"]["settings"]
    assert servers["overload"]["settings"]["FACEGEN_MAX_QUEUE"] == "8"
    for info in servers.values():
        assert info["pid"] > 0 and info["rss_bytes"] > 0 and 0 < info["startup_s"] < 120

    checks = {c["name"]: c for c in bench_run["checks"]}
    for name in (
        "vae: throughput batching on / off, c=4",
        "glow: throughput batching on / off, c=4",
        "dcgan: throughput batching on / off, c=4",
        "dcgan: e2e n=64 / raw forward of 64",
        "overload: only 200 and 503",
        "overload: every 503 has Retry-After",
        "overload: /health p95",
        "server RSS (on)",
        "startup to ready (off)",
    ):
        assert name in checks, name
    for name, check in checks.items():
        assert check["passed"] in (True, False, None)
        if "LitServe" not in name:  # the peer was skipped
            assert check["value"] is not None, name
    assert checks["dcgan n=1: throughput facegen / LitServe, c=4"]["passed"] is None
    assert checks["dcgan n=1, c=4: server CPU per image, LitServe / facegen"]["passed"] is None
    assert checks["dcgan n=1, c=4: server CPU per image (every server process, /proc)"]["value"] > 0
    assert checks["server environment imports uvloop and httptools"]["passed"] is True


def test_overload_counts(bench_run):
    overload = bench_run["overload"]
    assert overload["status"] == "ok" and overload["clients"] == 16 and overload["max_queue"] == 8
    assert overload["path"] == "/generate/acgan" and overload["rows_per_request"] == 8
    assert overload["requests"] == sum(overload["statuses"].values()) > 0
    assert overload["served"] + overload["rejected"] == overload["requests"]
    assert set(overload["statuses"]) <= {"200", "503"} and overload["only_200_503"] is True
    assert overload["rejected_with_retry_after"] == overload["rejected"]
    if overload["rejected"]:
        assert overload["all_503_retry_after"] is True and overload["retry_after_min_s"] >= 1
    health = overload["health"]
    assert health["probes"] > 0 and health["statuses"] == {"200": health["probes"]}
    assert health["p95_ms"] is not None
