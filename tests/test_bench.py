"""The benchmark's pure helpers: statistics, target evaluation, table formatting, family discovery. No timing."""

from __future__ import annotations

import pytest

from bench import e2e, report, server
from bench.stats import images_per_second, median, percentile


def results(raw64_s=0.2, e2e64_p50_ms=250.0, rss=1.2e9, startup=4.0):
    return {
        "url": "http://127.0.0.1:8000", "device": "cpu", "threads": 1, "requests": 3,
        "raw": [{"family": "vae", "batch": 1, "seconds": 0.01, "images_per_s": 100.0},
                {"family": "vae", "batch": 64, "seconds": raw64_s, "images_per_s": 64 / raw64_s}],
        "e2e": [{"family": "vae", "n": n, "concurrency": c, "requests": 3, "errors": 0, "images_per_s": 10.0,
                 "p50_ms": e2e64_p50_ms if (n, c) == (64, 1) else 999.0, "p95_ms": 1000.0}
                for n in (1, 64) for c in (1, 8)],
        "rss_bytes": rss, "peak_rss_bytes": rss, "startup_s": startup, "server_pid": 42,
    }


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


def test_images_per_second():
    assert images_per_second(64, 0.5) == 128.0
    assert images_per_second(1, 0.0) == float("inf")


def test_ratio_and_evaluation():
    assert report.ratio(0.3, 0.2) == pytest.approx(1.5)
    assert report.ratio(None, 0.2) is None and report.ratio(0.3, None) is None and report.ratio(0.3, 0.0) is None
    assert report.evaluate(1.5, report.RATIO_TARGET) is True  # <= 1.5 includes the limit
    assert report.evaluate(1.51, report.RATIO_TARGET) is False
    assert report.evaluate(15.0, report.STARTUP_TARGET) is False  # < 15 s excludes it
    assert report.evaluate(1.99e9, report.RSS_TARGET) is True
    assert report.evaluate(None, report.RSS_TARGET) is None


def test_family_ratio_uses_p50_of_n64_at_concurrency_1():
    assert report.family_ratio(results(raw64_s=0.2, e2e64_p50_ms=250.0), "vae") == pytest.approx(1.25)
    assert report.family_ratio(results(), "dcgan") is None


def test_build_checks_pass_fail_and_missing():
    checks = {c.name: c for c in report.build_checks(results(e2e64_p50_ms=400.0, rss=3e9, startup=None))}
    assert checks["vae: e2e n=64 / raw forward of 64"].passed is False  # 2.0x
    assert checks["server RSS"].passed is False
    assert checks["startup to ready"].passed is None
    ok = report.build_checks(results())
    assert all(c.passed for c in ok)
    assert report.checks_as_json(ok)[0]["target"] == "<= 1.50x"


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


def test_format_quantity():
    assert report.format_quantity(1.5e9, "bytes") == "1.50 GB"
    assert report.format_quantity(812e6, "bytes") == "812 MB"
    assert report.format_quantity(1.234, "x") == "1.23x"
    assert report.format_quantity(None, "s") == "n/a"


def test_render_contains_every_section_and_verdicts():
    text = report.render(results(e2e64_p50_ms=400.0))
    for heading in ("### raw in-process forward", "### end-to-end HTTP", "### server", "### targets"):
        assert heading in text
    assert "| vae: e2e n=64 / raw forward of 64 | 2.00x" in text and "FAIL" in text and "PASS" in text


def test_render_without_measurements():
    text = report.render({"url": "u", "raw": [], "e2e": []})
    assert "n/a" in text and "startup to ready" in text


OPENAPI = {
    "paths": {
        "/generate/vae": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/GenerateRequest"}}}}}},
        "/generate/dcgan": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/GenerateRequest"}}}}}},
        "/generate/infogan": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"properties": {"rows": {}, "code": {}, "seed": {}}}}}}}},
    },
    "components": {"schemas": {"GenerateRequest": {"properties": {"n": {}, "seed": {}, "format": {}}}}},
}


def test_sampling_families_keeps_endpoints_with_the_default_body():
    cards = [{"family": f} for f in ("vae", "dcgan", "infogan", "glow")]
    assert e2e.request_fields(OPENAPI, "/generate/vae") == {"n", "seed", "format"}
    assert e2e.request_fields(OPENAPI, "/generate/glow") is None
    assert sorted(e2e.sampling_families(cards, OPENAPI)) == ["dcgan", "vae"]


def test_request_body_default_and_override(monkeypatch):
    assert e2e.request_body("vae", 64, 7) == {"n": 64, "seed": 7, "format": "png"}
    monkeypatch.setitem(e2e.REQUEST_BODIES, "infogan", lambda n, seed: {"rows": 1, "code": 0, "seed": seed})
    assert e2e.request_body("infogan", 10, 3) == {"rows": 1, "code": 0, "seed": 3}
    assert "infogan" in e2e.sampling_families([{"family": "infogan"}], OPENAPI)


def test_proc_parsing(tmp_path):
    """Port -> socket inode -> uvicorn PID, and VmRSS, from a fake /proc."""
    (tmp_path / "net").mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    listen = "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n"
    other = "   1: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 888 1\n"
    (tmp_path / "net" / "tcp").write_text(header + listen + other)
    for pid, cmd, inode in ((10, b"python\0worker.py", "888"), (11, b"/venv/bin/python\0/venv/bin/uvicorn\0app.main:app", "777")):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        (tmp_path / str(pid) / "cmdline").write_bytes(cmd)
        (tmp_path / str(pid) / "fd" / "3").symlink_to(f"socket:[{inode}]")
    (tmp_path / "11" / "status").write_text("Name:\tuvicorn\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert server.listening_inodes(8000, tmp_path) == {"777"}
    assert server.find_server_pid(8000, tmp_path) == 11
    assert server.find_server_pid(8001, tmp_path) is None  # listening, but not uvicorn
    assert server.read_memory(11, tmp_path) == server.Memory(1024 * 1024, 2048 * 1024)
    assert server.read_memory(99, tmp_path) is None
