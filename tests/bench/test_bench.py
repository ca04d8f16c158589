"""The benchmark's pure helpers: statistics, scenario builders, status counting, comparisons, target evaluation,
table formatting, option parsing; and the closed loop against an in-memory transport. No server, no model."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os

import httpx
import pytest

from bench import cli, e2e, overload, report, scenarios, server
from bench.e2e import Outcome
from bench.scenarios import Upload, all_scenarios, choose_scenarios, find_scenario
from bench.stats import count_statuses, images_per_second, latency_summary, median, percentile, ratio_or_none

SCENARIOS = all_scenarios()
UPLOAD = Upload("face.jpg", b"\xff\xd8jpeg bytes")


# ---- statistics -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.5), (95, 3.85), (100, 4.0), (25, 1.75)])
def test_percentile_interpolates_like_numpy(q, expected):
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_edge_cases():
    assert percentile([7.0], 95) == 7.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_images_per_second_latency_summary_and_ratio():
    assert images_per_second(64, 0.5) == 128.0
    assert images_per_second(1, 0.0) == float("inf")
    assert latency_summary([0.001, 0.002, 0.003]) == pytest.approx({"p50_ms": 2.0, "p95_ms": 2.9, "p99_ms": 2.98})
    assert latency_summary([], (50, 95)) == {"p50_ms": None, "p95_ms": None}
    assert ratio_or_none(3.0, 2.0) == 1.5
    assert ratio_or_none(None, 2.0) is None and ratio_or_none(3.0, None) is None and ratio_or_none(3.0, 0.0) is None


def test_count_statuses_uses_string_keys_sorted():
    assert count_statuses([503, "200", 200, "ReadTimeout", "503"]) == {"200": 2, "503": 2, "ReadTimeout": 1}
    assert list(count_statuses(["503", "200"])) == ["200", "503"]
    assert count_statuses([]) == {}


# ---- scenarios --------------------------------------------------------------------------------------------------


def test_scenario_table_matches_the_issue():
    assert [s.name for s in SCENARIOS] == ["acgan", "classify", "dcgan", "glow", "infogan", "vae"]  # by family name
    rows = {"dcgan": 1, "acgan": 8, "vae": 1, "glow": 1, "classify": 1, "infogan": 1}
    assert {s.name: s.rows for s in SCENARIOS} == rows
    assert find_scenario("dcgan").request(7) == {
        "method": "POST",
        "url": "/generate/dcgan",
        "json": {"n": 1, "seed": 7, "format": "png"},
    }
    assert find_scenario("vae").request(3)["json"] == {"n": 1, "seed": 3, "format": "png"}
    assert find_scenario("acgan").request(5) == {
        "method": "POST",
        "url": "/generate/acgan",
        "json": {"n": 8, "seed": 5},
    }
    assert find_scenario("glow").request(9) == {"method": "POST", "url": "/generate/glow", "json": {"n": 1, "seed": 9}}
    classify = find_scenario("classify")
    assert (classify.family, classify.capability, classify.expect) == ("classifier", "score", "application/json")
    assert classify.request(1, UPLOAD) == {
        "method": "POST",
        "url": "/classify",
        "files": [("images", ("face.jpg", UPLOAD.data, "image/jpeg"))],
    }
    with pytest.raises(ValueError):
        classify.request(1)
    assert find_scenario("infogan").request(4) == {  # one sweep of code 0: the row count is the InfoGAN's own field
        "method": "POST",
        "url": "/generate/infogan",
        "json": {"rows": 1, "seed": 4, "code": 0, "format": "png"},
    }
    with pytest.raises(KeyError):
        find_scenario("stylegan")


def test_with_rows_changes_the_image_count_of_sampling_scenarios_only():
    big = find_scenario("acgan").with_rows(64)
    assert big.rows == 64 and big.request(2)["json"] == {"n": 64, "seed": 2}
    assert find_scenario("dcgan").with_rows(64).request(0)["json"]["n"] == 64
    assert find_scenario("acgan").rows == 8  # frozen: a copy
    with pytest.raises(ValueError):
        find_scenario("classify").with_rows(64)
    with pytest.raises(ValueError, match="at most 16 rows"):
        find_scenario("infogan").with_rows(64)
    assert find_scenario("infogan").with_rows(16).request(0)["json"]["rows"] == 16
    assert find_scenario("classify").describe()["files"] == "1 image in field 'images'"
    assert find_scenario("glow").describe()["json"] == {"n": 1, "seed": 0}


CARDS = [
    {"name": "dcgan", "family": "dcgan", "capabilities": ["sample"]},
    {"name": "vae", "family": "vae", "capabilities": ["encode", "sample"]},
    {"name": "glow", "family": "glow", "capabilities": ["encode", "score"]},  # a glow that would not sample
    {"name": "classifier", "family": "classifier", "capabilities": ["score"]},
]


def test_choose_scenarios_uses_model_capabilities():
    chosen, skipped = choose_scenarios(CARDS)
    assert [s.name for s in chosen] == ["classify", "dcgan", "vae"]
    assert set(skipped) == {"acgan", "glow", "infogan"}
    assert "capability 'sample'" in skipped["glow"] and "glow(encode,score)" in skipped["glow"]
    chosen, skipped = choose_scenarios(CARDS, ["classify", "dcgan", "nope"])
    assert [s.name for s in chosen] == ["classify", "dcgan"]
    assert "unknown scenario" in skipped["nope"]
    assert choose_scenarios([{"family": "dcgan"}])[0] == []  # an old server's cards without capabilities


def test_load_upload_reads_a_real_face(tmp_path):
    upload = scenarios.load_upload()
    assert upload is not None and upload.name.endswith(".jpg") and upload.data[:2] == b"\xff\xd8"
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    assert scenarios.load_upload(png) == Upload("x.png", b"\x89PNG", "image/png")


# ---- outcomes and their summaries -------------------------------------------------------------------------------


def test_summarize_counts_statuses_and_only_times_successes():
    outcomes = [
        Outcome("200", 0.010),
        Outcome("200", 0.020),
        Outcome("503", 0.001, "2", "busy"),
        Outcome("ReadTimeout", 5.0, detail="timed out"),
        Outcome("bad-content-type", 0.01, detail="text/html"),
    ]
    summary = e2e.summarize(outcomes, rows_per_request=8, wall_s=0.5)
    assert summary["requests"] == 5 and summary["ok"] == 2 and summary["errors"] == 3
    assert summary["statuses"] == {"200": 2, "503": 1, "ReadTimeout": 1, "bad-content-type": 1}
    assert summary["ok"] + summary["errors"] == summary["requests"] == sum(summary["statuses"].values())
    assert summary["images_per_s"] == pytest.approx(2 * 8 / 0.5)
    assert summary["p50_ms"] == pytest.approx(15.0)
    assert summary["first_error"] == "503: busy"
    empty = e2e.summarize([Outcome("503", 0.1)], 1, 1.0)
    assert empty["images_per_s"] == 0.0 and empty["p95_ms"] is None


def test_parse_retry_after():
    assert overload.parse_retry_after("3") == 3
    assert overload.parse_retry_after(" 12 ") == 12
    assert overload.parse_retry_after(None) is None
    assert overload.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert overload.parse_retry_after("-1") is None


def test_summarize_overload():
    outcomes = [Outcome("200", 0.5), Outcome("503", 0.002, "1"), Outcome("503", 0.004, "7"), Outcome("200", 0.7)]
    probes = [("200", 0.003), ("200", 0.005), ("ReadTimeout", 10.0)]
    summary = overload.summarize_overload(outcomes, probes, rows_per_request=8, wall_s=2.0)
    assert summary["statuses"] == {"200": 2, "503": 2} and summary["only_200_503"] is True
    assert (summary["served"], summary["rejected"], summary["rejected_with_retry_after"]) == (2, 2, 2)
    assert summary["all_503_retry_after"] is True
    assert (summary["retry_after_min_s"], summary["retry_after_max_s"]) == (1, 7)
    assert summary["latency_503"]["p50_ms"] == pytest.approx(3.0)
    assert summary["latency_200"]["p50_ms"] == pytest.approx(600.0)
    assert summary["images_per_s"] == pytest.approx(8.0)
    health = summary["health"]
    assert health["probes"] == 3 and health["statuses"] == {"200": 2, "ReadTimeout": 1}
    assert health["p50_ms"] == pytest.approx(4.0) and health["max_ms"] == pytest.approx(5.0)

    bad = overload.summarize_overload([Outcome("503", 0.001), Outcome("500", 0.1, detail="boom")], [], 1, 1.0)
    assert bad["only_200_503"] is False and bad["all_503_retry_after"] is False
    assert bad["first_other"] == "500: boom" and bad["health"]["p95_ms"] is None
    never_full = overload.summarize_overload([Outcome("200", 0.1)], [], 1, 1.0)
    assert never_full["all_503_retry_after"] is None and never_full["retry_after_min_s"] is None
    assert overload.summarize_overload([], [], 1, 1.0)["only_200_503"] is False


# ---- the closed loop, against an in-memory server ---------------------------------------------------------------


def fake_server(request: httpx.Request) -> httpx.Response:
    seed = json.loads(request.read())["seed"]
    if seed % 3 == 0:
        return httpx.Response(503, headers={"Retry-After": "2"}, json={"detail": "busy"})
    return httpx.Response(200, headers={"content-type": "image/png"}, content=b"\x89PNG")


def test_closed_loop_run_cell_is_bounded_and_consistent():
    async def go():
        transport = httpx.MockTransport(fake_server)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            outcome = await e2e.send(client, find_scenario("dcgan"), 3)
            row = await e2e.run_cell(client, find_scenario("acgan"), 4, 0.05, 0.01, seeds=itertools.count(1))
            return outcome, row

    outcome, row = asyncio.run(go())
    assert (outcome.status, outcome.retry_after, outcome.ok) == ("503", "2", False) and "busy" in outcome.detail
    assert row["scenario"] == "acgan" and row["concurrency"] == 4 and row["rows_per_request"] == 8
    assert row["requests"] > 0 and row["ok"] + row["errors"] == row["requests"]
    assert set(row["statuses"]) == {"200", "503"} and row["errors"] == row["statuses"]["503"]
    assert row["images_per_s"] == pytest.approx(8 * row["ok"] / row["wall_s"])
    assert 0.05 <= row["wall_s"] < 5


def test_send_flags_a_200_of_the_wrong_type_and_transport_errors():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/classify":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>")

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://bench") as client:
            return (
                await e2e.send(client, find_scenario("vae"), 1),
                await e2e.send(client, find_scenario("classify"), 1, UPLOAD),
            )

    wrong_type, refused = asyncio.run(go())
    assert wrong_type.status == "bad-content-type" and wrong_type.detail == "text/html" and not wrong_type.ok
    assert refused.status == "ConnectError" and "refused" in refused.detail


def test_median_round_reports_the_middle_round_and_keeps_every_round():
    rows = [{"images_per_s": rate, "p95_ms": rate / 10} for rate in (90.0, 70.0, 110.0)]
    chosen = cli.median_round(rows)
    assert chosen["images_per_s"] == 90.0 and chosen["p95_ms"] == 9.0  # one round's row, whole
    assert chosen["rounds_images_per_s"] == [90.0, 70.0, 110.0] and "rounds_images_per_s" not in rows[0]
    assert cli.median_round(rows[:2])["images_per_s"] == 70.0  # an even count: the lower middle
    assert cli.median_round(rows[:1])["rounds_images_per_s"] == [90.0]


# ---- comparisons and targets ------------------------------------------------------------------------------------


def e2e_row(mode, scenario, concurrency, rate, p95, rows=1, cpu_ms=None):
    return {
        "server_cpu_ms_per_image": cpu_ms,
        "mode": mode,
        "scenario": scenario,
        "family": scenario,
        "rows_per_request": rows,
        "concurrency": concurrency,
        "requests": 10,
        "ok": 10,
        "errors": 0,
        "statuses": {"200": 10},
        "images_per_s": rate,
        "p50_ms": p95 / 2,
        "p95_ms": p95,
        "p99_ms": p95 * 1.1,
    }


def results(
    on_vae32=400.0,
    raw64_s=0.2,
    e2e64_p50_ms=250.0,
    peer32=100.0,
    health_p95=20.0,
    rss=1.2e9,
    startup=4.0,
    on_dcgan1=100.0,
    cpu_ms=1.5,
    peer_cpu_ms=7.5,
    fast_stack=True,
):
    rows = []
    for scenario, base in (("dcgan", 100.0), ("vae", 50.0), ("glow", 10.0)):
        for concurrency in (1, 32):
            on = on_vae32 if (scenario, concurrency) == ("vae", 32) else base * (3 if concurrency == 32 else 1)
            on = on_dcgan1 if (scenario, concurrency) == ("dcgan", 1) else on
            rows.append(e2e_row("on", scenario, concurrency, on, 10.0 * concurrency, cpu_ms=cpu_ms))
            rows.append(e2e_row("off", scenario, concurrency, base, 20.0 * concurrency, cpu_ms=2 * cpu_ms))
    return {
        "config": {"url": None, "startup": True, "threads": 2, "seconds": 5, "warmup_s": 1, "target_concurrency": 32},
        "device": "cpu",
        "server_environment": {
            "python": "/venv/bin/python",
            "uvloop": "0.23.0",
            "httptools": "0.9.0",
            "fast_stack": fast_stack,
        },
        "skipped_scenarios": {"classify": "no classifier"},
        "raw": [
            {"family": "vae", "operation": "sample", "batch": 1, "seconds": 0.01, "images_per_s": 100.0},
            {"family": "vae", "operation": "sample", "batch": 64, "seconds": raw64_s, "images_per_s": 64 / raw64_s},
        ],
        "e2e": rows,
        "ratio": [
            {
                "mode": "on",
                "scenario": "vae",
                "family": "vae",
                "n": 64,
                "concurrency": 1,
                "requests": 5,
                "statuses": {"200": 5},
                "p50_ms": e2e64_p50_ms,
                "p95_ms": e2e64_p50_ms * 1.1,
            }
        ],
        "peer": {
            "status": "ok",
            "version": "0.2.19",
            "file": "dcgan.safetensors",
            "max_batch_size": 64,
            "batch_timeout_s": 0.005,
            "e2e": [
                e2e_row("litserve", "dcgan", 32, peer32, 150.0, cpu_ms=peer_cpu_ms),
                e2e_row("litserve", "dcgan", 1, 90.0, 5.0, cpu_ms=peer_cpu_ms),
            ],
        },
        "overload": {
            "status": "ok",
            "max_queue": 64,
            "clients": 256,
            "path": "/generate/acgan",
            "rows_per_request": 8,
            "seconds": 5,
            "requests": 100,
            "statuses": {"200": 40, "503": 60},
            "only_200_503": True,
            "served": 40,
            "rejected": 60,
            "rejected_with_retry_after": 60,
            "all_503_retry_after": True,
            "retry_after_min_s": 1,
            "retry_after_max_s": 3,
            "images_per_s": 64.0,
            "latency_503": {"p50_ms": 2.0, "p95_ms": 5.0},
            "latency_200": {"p50_ms": 500.0, "p95_ms": 900.0},
            "health": {
                "probes": 100,
                "statuses": {"200": 100},
                "p50_ms": 3.0,
                "p95_ms": health_p95,
                "p99_ms": health_p95,
                "max_ms": health_p95,
            },
        },
        "servers": {
            "on": {
                "pid": 42,
                "settings": {"FACEGEN_WEIGHTS_DIR": "/w"},
                "rss_bytes": rss,
                "peak_rss_bytes": rss,
                "startup_s": startup,
            },
            "off": {
                "pid": 43,
                "settings": {"FACEGEN_WEIGHTS_DIR": "/w", "FACEGEN_MAX_BATCH": "1"},
                "rss_bytes": rss,
                "peak_rss_bytes": rss,
                "startup_s": startup,
            },
        },
    }


def test_evaluate_operators_and_ratio():
    assert report.ratio(0.3, 0.2) == pytest.approx(1.5)
    assert report.evaluate(1.5, report.RATIO_TARGET) is True  # <= 1.5 includes the limit
    assert report.evaluate(1.51, report.RATIO_TARGET) is False
    assert report.evaluate(15.0, report.STARTUP_TARGET) is False  # < 15 s excludes it
    assert report.evaluate(1.99e9, report.RSS_TARGET) is True
    assert report.evaluate(2.0, report.BATCHING_TARGETS["vae"]) is True  # >= 2 includes it
    assert report.evaluate(0.99, report.BATCHING_TARGETS["dcgan"]) is False
    assert report.evaluate(50.0, report.HEALTH_TARGET) is True  # <= 50 ms includes it
    assert report.evaluate(50.1, report.HEALTH_TARGET) is False
    assert report.evaluate(True, report.YES) is True and report.evaluate(False, report.YES) is False
    assert report.evaluate(None, report.RSS_TARGET) is None


def test_batching_comparison_and_p95_growth():
    table = report.batching_comparison(results())
    assert [(r["scenario"], r["concurrency"]) for r in table] == [
        ("dcgan", 1),
        ("dcgan", 32),
        ("vae", 1),
        ("vae", 32),
        ("glow", 1),
        ("glow", 32),
    ]
    vae32 = report.find_row(table, scenario="vae", concurrency=32)
    assert vae32["throughput_ratio"] == pytest.approx(8.0)
    assert vae32["on_p95_ms"] == 320.0 and vae32["off_p95_ms"] == 640.0
    growth = report.find_row(report.p95_growth(results()), scenario="glow", mode="off")
    assert growth["p95_c1_ms"] == 20.0 and growth["p95_ms"] == 640.0 and growth["ratio"] == pytest.approx(32.0)
    only_on = {**results(), "e2e": [r for r in results()["e2e"] if r["mode"] == "on"]}
    assert report.batching_comparison(only_on) == []


def test_ratio_rows_and_peer_comparison():
    (row,) = report.ratio_rows(results(raw64_s=0.2, e2e64_p50_ms=250.0))
    assert row["raw_ms"] == pytest.approx(200.0) and row["ratio"] == pytest.approx(1.25)
    assert report.family_ratio(results(), "vae") == pytest.approx(1.25)
    assert report.family_ratio(results(), "dcgan") is None
    peer = {r["concurrency"]: r for r in report.peer_comparison(results(peer32=100.0))}
    assert peer[32]["facegen_images_per_s"] == 300.0 and peer[32]["throughput_ratio"] == pytest.approx(3.0)
    assert peer[32]["p95_ratio"] == pytest.approx(320.0 / 150.0)
    assert peer[1]["throughput_ratio"] == pytest.approx(100.0 / 90.0) and peer[1]["mode"] == "on"
    assert report.peer_comparison({**results(), "peer": {"status": "skipped", "reason": "--no-peer"}}) == []


def test_build_checks_pass_fail_and_missing():
    checks = {c.name: c for c in report.build_checks(results())}
    assert all(c.passed for c in checks.values()), [c for c in checks.values() if not c.passed]
    assert checks["vae: throughput batching on / off, c=32"].value == pytest.approx(8.0)
    assert checks["dcgan n=1: throughput facegen / LitServe, c=32"].value == pytest.approx(3.0)
    assert {"server RSS (on)", "startup to ready (off)", "overload: /health p95"} <= set(checks)
    assert checks["dcgan n=1, c=32: server CPU per image, LitServe / facegen"].value == pytest.approx(5.0)
    assert checks["dcgan: throughput batching on / off, c=1"].value == pytest.approx(1.0)

    bad = {
        c.name: c
        for c in report.build_checks(
            results(
                on_vae32=60.0,
                e2e64_p50_ms=400.0,
                peer32=250.0,
                health_p95=300.0,
                rss=3e9,
                startup=None,
                on_dcgan1=66.0,
                cpu_ms=2.5,
                peer_cpu_ms=9.0,
                fast_stack=False,
            )
        )
    }
    for name in (
        "dcgan: throughput batching on / off, c=1",
        "dcgan n=1, c=32: server CPU per image (every server process, /proc)",
        "dcgan n=1, c=32: server CPU per image, LitServe / facegen",
        "server environment imports uvloop and httptools",
        "vae: throughput batching on / off, c=32",
        "vae: e2e n=64 / raw forward of 64",
        "dcgan n=1: throughput facegen / LitServe, c=32",
        "overload: /health p95",
        "server RSS (on)",
    ):
        assert bad[name].passed is False, name
    assert bad["startup to ready (on)"].passed is None

    none = {c.name: c for c in report.build_checks({"e2e": [], "raw": []})}
    assert all(c.passed is None for c in none.values())
    assert "overload: every 503 has Retry-After" in none and "server RSS (server)" in none
    as_json = report.checks_as_json(report.build_checks(results()))
    assert {"name", "value", "target", "passed"} <= set(as_json[0]) and as_json[0]["target"] == ">= 2.00x"


def test_markdown_table_aligns_and_right_justifies_numbers():
    table = report.markdown_table(["family", "images/s"], [["vae", 1234.56], ["dcgan", None]])
    lines = table.splitlines()
    assert lines[0] == "| family | images/s |"
    assert lines[1] == "|--------|---------:|"
    assert lines[2] == "| vae    |  1,234.6 |"
    assert lines[3] == "| dcgan  |      n/a |"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError):
        report.markdown_table(["a", "b"], [["only one"]])


def test_formatting_helpers():
    assert report.format_quantity(1.5e9, "bytes") == "1.50 GB"
    assert report.format_quantity(812e6, "bytes") == "812 MB"
    assert report.format_quantity(1.234, "x") == "1.23x"
    assert report.format_quantity(12.34, "ms") == "12.3 ms"
    assert report.format_quantity(True, "bool") == "yes" and report.format_quantity(None, "s") == "n/a"
    assert report.format_number(1234) == "1,234" and report.format_number(False) == "no"
    assert report.format_statuses({"200": 5, "503": 2, "ReadTimeout": 1}) == "503:2 ReadTimeout:1"
    assert report.format_statuses({"200": 5}) == "-" and report.format_statuses({"200": 5}, skip=()) == "200:5"
    assert report.format_settings({"FACEGEN_WEIGHTS_DIR": "/w", "FACEGEN_MAX_BATCH": "1"}) == "FACEGEN_MAX_BATCH=1"
    assert report.format_settings({"FACEGEN_WEIGHTS_DIR": "/w"}) == "defaults"


def test_render_contains_every_section_and_verdicts():
    text = report.render(results(e2e64_p50_ms=400.0))
    for heading in (
        "### raw in-process forward",
        "### end-to-end HTTP, batching on",
        "### end-to-end HTTP, batching off",
        "### batching on vs off",
        "### p95 latency at concurrency 32 vs 1",
        "### e2e n=64",
        "### peer: LitServe 0.2.19",
        "### overload: 256 clients",
        "### servers",
        "### targets",
    ):
        assert heading in text, heading
    assert "| vae: e2e n=64 / raw forward of 64" in text and "2.00x" in text and "FAIL" in text and "PASS" in text
    assert "skipped: classify: no classifier" in text and "FACEGEN_MAX_BATCH=1" in text
    assert "| 503 with Retry-After    | 60 of 60" in text


def test_render_without_measurements():
    text = report.render(
        {
            "e2e": [],
            "raw": [],
            "peer": {"status": "skipped", "reason": "--no-peer"},
            "overload": {"status": "skipped", "reason": "--no-overload"},
        }
    )
    assert "n/a" in text and "startup to ready" in text
    assert "skipped: --no-peer" in text and "skipped: --no-overload" in text


# ---- options ----------------------------------------------------------------------------------------------------


def test_option_parsing():
    assert cli.int_list("1, 8,32,8") == [1, 8, 32]
    for bad in ("", "0", "a,b", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.int_list(bad)
    args = cli.parse_args([])
    assert args.concurrency == [1, 8, 32, 64] and args.seconds == 5.0 and args.modes == ["on", "off"]
    assert args.scenarios == ["acgan", "classify", "dcgan", "glow", "infogan", "vae"]
    assert args.peer and args.overload and args.peer_concurrency == [1, 8, 32]
    assert (args.overload_clients, args.overload_queue, args.overload_scenario) == (256, 64, "acgan")
    assert args.raw_batches == [1, 32, 64] and args.ratio_n == 64 and args.target_concurrency == 32
    args = cli.parse_args(
        [
            "--concurrency",
            "1,4",
            "--target-concurrency",
            "4",
            "--no-peer",
            "--no-overload",
            "--modes",
            "off",
            "--scenarios",
            "glow,dcgan",
            "--overload-clients",
            "16",
            "--raw-batches",
            "1",
            "--ratio-n",
            "8",
        ]
    )
    assert args.peer_concurrency == [1, 4] and not args.peer and not args.overload and args.modes == ["off"]
    assert args.scenarios == ["glow", "dcgan"] and args.overload_clients == 16 and args.overload_seconds == 5.0
    assert cli.raw_batches(args) == [1, 8]
    assert cli.config_of(args)["modes"] == ["url"]  # no --startup: the given server
    with pytest.raises(SystemExit):
        cli.parse_args(["--modes", "sideways"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--scenarios", "stylegan"])
    assert cli.MODE_SETTINGS == {"on": {}, "off": {"FACEGEN_MAX_BATCH": "1"}}


def test_peer_unavailable_reasons():
    assert cli.peer_unavailable(cli.parse_args(["--no-peer"])) == "--no-peer"


# ---- server process helpers -------------------------------------------------------------------------------------


def test_child_env_drops_batching_settings_and_makes_the_repo_importable(monkeypatch):
    monkeypatch.setenv("FACEGEN_MAX_BATCH", "7")
    monkeypatch.setenv("FACEGEN_API_KEY", "kept-as-is")
    env = server.child_env({"FACEGEN_MAX_QUEUE": "64"}, drop=server.MODE_SETTINGS)
    assert "FACEGEN_MAX_BATCH" not in env and env["FACEGEN_MAX_QUEUE"] == "64"
    assert env["FACEGEN_API_KEY"] == "kept-as-is"
    assert env["PYTHONPATH"].split(":")[0] == str(server.REPO_ROOT)


def test_proc_parsing(tmp_path):
    """Port -> socket inode -> uvicorn PID, and VmRSS, from a fake /proc."""
    (tmp_path / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    listen = "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n"
    other = "   1: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 888 1\n"
    (tmp_path / "net" / "tcp").write_text(header + listen + other)
    uvicorn = b"/venv/bin/python\0/venv/bin/uvicorn\0app.main:app"
    for pid, cmd, inode in ((10, b"python\0worker.py", "888"), (11, uvicorn, "777")):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        (tmp_path / str(pid) / "cmdline").write_bytes(cmd)
        (tmp_path / str(pid) / "fd" / "3").symlink_to(f"socket:[{inode}]")
    (tmp_path / "11" / "status").write_text("Name:\tuvicorn\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert server.listening_inodes(8000, tmp_path) == {"777"}
    assert server.find_server_pid(8000, tmp_path) == 11
    assert server.find_server_pid(8001, tmp_path) is None  # listening, but not uvicorn
    assert server.read_memory(11, tmp_path) == server.Memory(1024 * 1024, 2048 * 1024)
    assert server.read_memory(99, tmp_path) is None


def test_cpu_seconds_sums_the_whole_process_tree():
    import subprocess
    import sys

    from bench import server as bench_server

    burner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
            "import sys; sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        import time

        deadline = time.monotonic() + 60
        while bench_server.cpu_seconds(burner.pid) < 0.45 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert burner.pid in bench_server.process_tree(os.getpid()), "a child is in its parent's tree"
        # The parent's figure includes the child's CPU (the child burnt 0.5 s; this process far less meanwhile).
        assert bench_server.cpu_seconds(os.getpid()) - bench_server.cpu_seconds(burner.pid) >= 0
        assert bench_server.cpu_seconds(os.getpid()) >= bench_server.cpu_seconds(burner.pid) >= 0.45
    finally:
        burner.communicate(b"")


def test_server_environment_reports_uvloop_and_httptools():
    import sys

    from bench import server as bench_server

    environment = bench_server.server_environment(sys.executable)
    assert environment["python"] == sys.executable
    assert environment["fast_stack"] is True and environment["uvloop"] and environment["httptools"]
    missing = bench_server.server_environment("/bin/false")  # a "Python" that cannot import anything
    assert missing["fast_stack"] is False and missing["uvloop"] is None
