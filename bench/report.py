"""Targets, their evaluation, the comparisons between runs and the markdown report. Pure functions over the plain
results dict that ``--json`` writes, so they are testable without a server."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.stats import ratio_or_none

OPERATORS = {"<": operator.lt, "<=": operator.le, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    op: str
    limit: float | bool
    unit: str

    def __str__(self) -> str:
        return f"{self.op} {format_quantity(self.limit, self.unit)}"


# The service's targets.
RATIO_TARGET = Target("<=", 1.5, "x")  # HTTP adds at most 50 % to a batch of 64
RSS_TARGET = Target("<", 2e9, "bytes")
STARTUP_TARGET = Target("<", 15.0, "s")
# Dynamic batching at the target concurrency, throughput on / off: at least 2x where a forward of one is far from
# saturating the cores (vae, glow), and no loss where the forward is already cheap (dcgan).
BATCHING_TARGETS = {"vae": Target(">=", 2.0, "x"), "glow": Target(">=", 2.0, "x"), "dcgan": Target(">=", 1.0, "x")}
# One client, batching on / off: an idle device starts a forward at once, so batching costs a lone client nothing.
SINGLE_CLIENT_TARGETS = {"dcgan": Target(">=", 0.95, "x"), "vae": Target(">=", 0.95, "x")}
PEER_TARGET = Target(">=", 1.5, "x")  # facegen (batching on) / LitServe, throughput of DCGAN n=1
PEER_SCENARIO = "dcgan"
# The server's CPU per image (every process of it, from /proc), DCGAN n=1 at the target concurrency: what a request
# costs beyond its forward is the bill on a GPU host, where the forward is nearly free.
CPU_TARGET = Target("<=", 2.0, "ms")
PEER_CPU_TARGET = Target(">=", 4.0, "x")  # LitServe's CPU per image / facegen's, same run
HEALTH_TARGET = Target("<=", 50.0, "ms")  # /health p95 while overloaded
YES = Target("==", True, "bool")
RATIO_BATCH = 64  # the ratio compares e2e n=64 (concurrency 1, p50) with the raw forward of a batch of 64
TARGET_CONCURRENCY = 32
ON, OFF, PEER_MODE = "on", "off", "litserve"


@dataclass(frozen=True)
class Check:
    name: str
    value: float | bool | None
    target: Target
    passed: bool | None  # None: not measured


def evaluate(value: float | bool | None, target: Target) -> bool | None:
    """True/False against ``target``; None when the figure was not measured."""
    if value is None:
        return None
    return bool(OPERATORS[target.op](value, target.limit))


def ratio(e2e_seconds: float | None, raw_seconds: float | None) -> float | None:
    return ratio_or_none(e2e_seconds, raw_seconds)


def find_row(rows: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


def unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def target_concurrency(results: dict[str, Any]) -> int:
    return (results.get("config") or {}).get("target_concurrency") or TARGET_CONCURRENCY


def facegen_mode(results: dict[str, Any]) -> str | None:
    """The run that stands for the service as deployed: batching on if measured, else the only one (``--url``)."""
    modes = unique([row["mode"] for row in results.get("e2e", [])])
    return ON if ON in modes else (modes[0] if modes else None)


def e2e_value(results: dict[str, Any], mode: str | None, scenario: str, concurrency: int, key: str) -> Any:
    row = find_row(results.get("e2e", []), mode=mode, scenario=scenario, concurrency=concurrency)
    return row.get(key) if row else None


# ---- comparisons ------------------------------------------------------------------------------------------------


def batching_comparison(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario and concurrency measured in both modes: throughput on, off and their ratio; p95 on and off."""
    rows = results.get("e2e", [])
    cells = unique([(r["scenario"], r["concurrency"]) for r in rows if r["mode"] in (ON, OFF)])
    table = []
    for scenario, concurrency in cells:
        on = find_row(rows, mode=ON, scenario=scenario, concurrency=concurrency)
        off = find_row(rows, mode=OFF, scenario=scenario, concurrency=concurrency)
        if on is None or off is None:
            continue
        table.append(
            {
                "scenario": scenario,
                "concurrency": concurrency,
                "on_images_per_s": on["images_per_s"],
                "off_images_per_s": off["images_per_s"],
                "throughput_ratio": ratio_or_none(on["images_per_s"], off["images_per_s"]),
                "on_p95_ms": on["p95_ms"],
                "off_p95_ms": off["p95_ms"],
            }
        )
    return table


def p95_growth(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario and mode: p95 at the target concurrency divided by p95 at concurrency 1."""
    high = target_concurrency(results)
    table = []
    for mode, scenario in unique([(r["mode"], r["scenario"]) for r in results.get("e2e", [])]):
        low_p95 = e2e_value(results, mode, scenario, 1, "p95_ms")
        high_p95 = e2e_value(results, mode, scenario, high, "p95_ms")
        table.append(
            {
                "scenario": scenario,
                "mode": mode,
                "concurrency": high,
                "p95_c1_ms": low_p95,
                "p95_ms": high_p95,
                "ratio": ratio_or_none(high_p95, low_p95),
            }
        )
    return table


def ratio_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The e2e n=64 measurements with the raw forward of the same batch and their ratio (p50 / raw)."""
    table = []
    for row in results.get("ratio", []):
        raw = find_row(results.get("raw", []), family=row["family"], batch=row["n"])
        raw_ms = raw["seconds"] * 1000 if raw else None
        table.append({**row, "raw_ms": raw_ms, "ratio": ratio_or_none(row.get("p50_ms"), raw_ms)})
    return table


def family_ratio(results: dict[str, Any], family: str) -> float | None:
    """e2e p50 latency of n=64 at concurrency 1, divided by the raw forward time of a batch of 64."""
    row = find_row(ratio_rows(results), family=family, n=RATIO_BATCH)
    return row["ratio"] if row else None


def peer_comparison(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per concurrency the peer was measured at: facegen's (batching on) DCGAN n=1 against LitServe's."""
    peer = results.get("peer") or {}
    mode = facegen_mode(results)
    table = []
    for row in peer.get("e2e", []):
        concurrency = row["concurrency"]
        ours_rate = e2e_value(results, mode, row["scenario"], concurrency, "images_per_s")
        ours_p95 = e2e_value(results, mode, row["scenario"], concurrency, "p95_ms")
        table.append(
            {
                "scenario": row["scenario"],
                "concurrency": concurrency,
                "mode": mode,
                "facegen_images_per_s": ours_rate,
                "peer_images_per_s": row["images_per_s"],
                "throughput_ratio": ratio_or_none(ours_rate, row["images_per_s"]) if row["ok"] else None,
                "facegen_p95_ms": ours_p95,
                "peer_p95_ms": row["p95_ms"],
                "p95_ratio": ratio_or_none(ours_p95, row["p95_ms"]),
                "facegen_cpu_ms_per_image": e2e_value(
                    results, mode, row["scenario"], concurrency, "server_cpu_ms_per_image"
                ),
                "peer_cpu_ms_per_image": row.get("server_cpu_ms_per_image"),
            }
        )
    return table


def cpu_per_image(results: dict[str, Any]) -> dict[str, float | None]:
    """Server CPU ms per image, DCGAN n=1 at the target concurrency: facegen (batching on), LitServe, their ratio."""
    high = target_concurrency(results)
    ours = e2e_value(results, facegen_mode(results), PEER_SCENARIO, high, "server_cpu_ms_per_image")
    peer_row = find_row((results.get("peer") or {}).get("e2e", []), scenario=PEER_SCENARIO, concurrency=high)
    theirs = peer_row.get("server_cpu_ms_per_image") if peer_row else None
    return {"facegen_ms": ours, "litserve_ms": theirs, "litserve_over_facegen": ratio_or_none(theirs, ours)}


def comparisons(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "batching": batching_comparison(results),
        "p95_growth": p95_growth(results),
        "peer": peer_comparison(results),
        "cpu_per_image": cpu_per_image(results),
    }


# ---- checks -----------------------------------------------------------------------------------------------------


def build_checks(results: dict[str, Any]) -> list[Check]:
    checks = []
    high = target_concurrency(results)
    for scenario, target in BATCHING_TARGETS.items():
        row = find_row(batching_comparison(results), scenario=scenario, concurrency=high)
        value = row["throughput_ratio"] if row else None
        checks.append(
            Check(f"{scenario}: throughput batching on / off, c={high}", value, target, evaluate(value, target))
        )
    for scenario, target in SINGLE_CLIENT_TARGETS.items():
        row = find_row(batching_comparison(results), scenario=scenario, concurrency=1)
        value = row["throughput_ratio"] if row else None
        checks.append(Check(f"{scenario}: throughput batching on / off, c=1", value, target, evaluate(value, target)))
    cpu = cpu_per_image(results)
    checks.append(
        Check(
            f"{PEER_SCENARIO} n=1, c={high}: server CPU per image (every server process, /proc)",
            cpu["facegen_ms"],
            CPU_TARGET,
            evaluate(cpu["facegen_ms"], CPU_TARGET),
        )
    )
    checks.append(
        Check(
            f"{PEER_SCENARIO} n=1, c={high}: server CPU per image, LitServe / facegen",
            cpu["litserve_over_facegen"],
            PEER_CPU_TARGET,
            evaluate(cpu["litserve_over_facegen"], PEER_CPU_TARGET),
        )
    )
    environment = results.get("server_environment") or {}
    checks.append(
        Check(
            "server environment imports uvloop and httptools",
            environment.get("fast_stack"),
            YES,
            evaluate(environment.get("fast_stack"), YES),
        )
    )
    families = unique([row["family"] for row in results.get("ratio", [])])
    for family in families:
        value = family_ratio(results, family)
        checks.append(
            Check(
                f"{family}: e2e n={RATIO_BATCH} / raw forward of {RATIO_BATCH}",
                value,
                RATIO_TARGET,
                evaluate(value, RATIO_TARGET),
            )
        )
    peer_row = find_row(peer_comparison(results), scenario=PEER_SCENARIO, concurrency=high)
    value = peer_row["throughput_ratio"] if peer_row else None
    checks.append(
        Check(
            f"{PEER_SCENARIO} n=1: throughput facegen / LitServe, c={high}",
            value,
            PEER_TARGET,
            evaluate(value, PEER_TARGET),
        )
    )
    overload = results.get("overload") or {}
    health = overload.get("health") or {}
    for name, value, target in (
        ("overload: only 200 and 503", overload.get("only_200_503"), YES),
        ("overload: every 503 has Retry-After", overload.get("all_503_retry_after"), YES),
        ("overload: /health p95", health.get("p95_ms"), HEALTH_TARGET),
    ):
        checks.append(Check(name, value, target, evaluate(value, target)))
    servers = results.get("servers") or {"server": {}}
    for label, info in servers.items():
        for name, key, target in (
            ("server RSS", "rss_bytes", RSS_TARGET),
            ("startup to ready", "startup_s", STARTUP_TARGET),
        ):
            value = info.get(key)
            checks.append(Check(f"{name} ({label})", value, target, evaluate(value, target)))
    return checks


def checks_as_json(checks: Sequence[Check]) -> list[dict[str, Any]]:
    return [{**asdict(check), "target": str(check.target)} for check in checks]


# ---- formatting -------------------------------------------------------------------------------------------------


def format_number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def format_quantity(value: float | bool | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "bool" or isinstance(value, bool):
        return "yes" if value else "no"
    if unit == "bytes":
        return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / 1e6:.0f} MB"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.2f} {unit}"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_statuses(statuses: dict[str, int] | None, skip: tuple[str, ...] = ("200",)) -> str:
    """``{"200": 9, "503": 3}`` -> "503:3" (statuses in ``skip`` left out); "-" when nothing is left."""
    shown = [f"{status}:{count}" for status, count in (statuses or {}).items() if status not in skip]
    return " ".join(shown) if shown else "-"


def format_settings(settings: dict[str, str] | None, skip: tuple[str, ...] = ("FACEGEN_WEIGHTS_DIR",)) -> str:
    """A started server's settings, ``KEY=value`` (the weights folder left out); "defaults" when none is left."""
    shown = [f"{key}={value}" for key, value in (settings or {}).items() if key not in skip]
    return " ".join(shown) if shown else "defaults"


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; columns padded to line up in a terminal, numbers right-aligned."""
    cells = [[str(c) for c in headers]] + [[c if isinstance(c, str) else format_number(c) for c in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_looks_numeric(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _looks_numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x"))
    except ValueError:
        return text == "n/a"
    return True


def table_or(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "n/a") -> str:
    return markdown_table(headers, rows) if rows else empty


def render(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    config = results.get("config") or {}
    high = target_concurrency(results)
    environment = results.get("server_environment") or {}
    parts = [
        f"## facegen benchmark: {config.get('url') or ('started servers' if config.get('startup') else '?')}",
        f"server environment {environment.get('python', 'n/a')}: uvloop {environment.get('uvloop') or 'MISSING'}, "
        f"httptools {environment.get('httptools') or 'MISSING'}",
        f"device {results.get('device') or 'n/a'}, torch threads {config.get('threads') or 'torch default'}, "
        f"{config.get('seconds', '?')} s per cell after {config.get('warmup_s', '?')} s of warm-up, "
        f"targets at concurrency {high}",
    ]
    skipped = results.get("skipped_scenarios") or {}
    if skipped:
        parts.append("skipped: " + "; ".join(f"{name}: {why}" for name, why in skipped.items()))

    raw_rows = [
        [r["family"], r.get("operation", ""), r["batch"], r["seconds"] * 1000, r["images_per_s"]]
        for r in results.get("raw", [])
    ]
    parts += [
        "### raw in-process forward (pipeline.run, median)",
        table_or(["family", "operation", "batch", "ms / forward", "images/s"], raw_rows),
    ]

    for mode in unique([row["mode"] for row in results.get("e2e", [])]):
        rows = [
            [
                r["scenario"],
                r["rows_per_request"],
                r["concurrency"],
                r["requests"],
                format_statuses(r["statuses"]),
                r["images_per_s"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r.get("server_cpu_ms_per_image"),
            ]
            for r in results["e2e"]
            if r["mode"] == mode
        ]
        settings = (results.get("servers") or {}).get(mode, {}).get("settings") or {}
        shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k in ("FACEGEN_MAX_BATCH", "FACEGEN_MAX_QUEUE"))
        parts += [
            f"### end-to-end HTTP, {mode_label(mode)}" + (f" ({shown})" if shown else ""),
            markdown_table(
                [
                    "scenario",
                    "images/request",
                    "concurrency",
                    "requests",
                    "errors",
                    "images/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "server CPU ms/image",
                ],
                rows,
            ),
        ]

    batching = [
        [
            r["scenario"],
            r["concurrency"],
            r["on_images_per_s"],
            r["off_images_per_s"],
            format_ratio(r["throughput_ratio"]),
            r["on_p95_ms"],
            r["off_p95_ms"],
        ]
        for r in batching_comparison(results)
    ]
    parts += [
        "### batching on vs off",
        table_or(
            ["scenario", "concurrency", "images/s on", "images/s off", "on / off", "p95 ms on", "p95 ms off"],
            batching,
            "n/a (needs --modes on,off)",
        ),
    ]
    growth = [
        [r["scenario"], r["mode"], r["p95_c1_ms"], r["p95_ms"], format_ratio(r["ratio"])] for r in p95_growth(results)
    ]
    parts += [
        f"### p95 latency at concurrency {high} vs 1",
        table_or(["scenario", "mode", "p95 ms c=1", f"p95 ms c={high}", "ratio"], growth),
    ]

    ratio_table = [
        [
            r["family"],
            r["n"],
            r["raw_ms"],
            r["p50_ms"],
            r["p95_ms"],
            format_statuses(r.get("statuses")),
            format_ratio(r["ratio"]),
        ]
        for r in ratio_rows(results)
    ]
    parts += [
        f"### e2e n={RATIO_BATCH} (concurrency 1, {mode_label(facegen_mode(results))}) vs raw forward "
        f"(target {RATIO_TARGET})",
        table_or(["family", "n", "raw ms", "e2e p50 ms", "e2e p95 ms", "errors", "p50 / raw"], ratio_table),
    ]

    peer = results.get("peer") or {}
    if peer.get("status") == "ok":
        peer_rows = [
            [
                r["concurrency"],
                r["peer_images_per_s"],
                r["peer_p95_ms"],
                r["facegen_images_per_s"],
                r["facegen_p95_ms"],
                format_ratio(r["throughput_ratio"]),
                format_ratio(r["p95_ratio"]),
                r.get("peer_cpu_ms_per_image"),
                r.get("facegen_cpu_ms_per_image"),
            ]
            for r in peer_comparison(results)
        ]
        errors = [[r["concurrency"], format_statuses(r["statuses"])] for r in peer.get("e2e", []) if r["errors"]]
        parts += [
            f"### peer: LitServe {peer.get('version', '')} serving {peer.get('file', 'the DCGAN checkpoint')} "
            f"(max_batch_size {peer.get('max_batch_size')}, batch_timeout {peer.get('batch_timeout_s')} s, "
            f"{peer.get('warmup_s', 0)} s warm-up first)",
            table_or(
                [
                    "concurrency",
                    "LitServe images/s",
                    "LitServe p95 ms",
                    "facegen images/s",
                    "facegen p95 ms",
                    "throughput facegen / LitServe",
                    "p95 facegen / LitServe",
                    "LitServe CPU ms/image",
                    "facegen CPU ms/image",
                ],
                peer_rows,
            ),
        ]
        if errors:
            parts.append(markdown_table(["concurrency", "LitServe errors"], errors))
    else:
        parts += ["### peer: LitServe", f"skipped: {peer.get('reason', 'not run')}"]

    overload = results.get("overload") or {}
    if overload.get("status", "ok") == "ok" and overload.get("requests") is not None:
        health = overload.get("health") or {}
        retry = (
            f"{overload['retry_after_min_s']}-{overload['retry_after_max_s']} s"
            if overload.get("retry_after_min_s") is not None
            else "n/a"
        )
        rows = [
            ["requests", format_number(overload["requests"])],
            ["by status", format_statuses(overload["statuses"], skip=())],
            ["only 200 and 503", format_quantity(overload["only_200_503"], "bool")],
            ["503 with Retry-After", f"{overload['rejected_with_retry_after']:,} of {overload['rejected']:,}"],
            ["Retry-After range", retry],
            ["503 latency p50 / p95", _pair(overload["latency_503"])],
            ["200 latency p50 / p95", _pair(overload["latency_200"])],
            ["images/s served", format_number(overload["images_per_s"])],
            ["/health probes", f"{health.get('probes', 0):,} ({format_statuses(health.get('statuses'), skip=())})"],
            [
                "/health p50 / p95 / max",
                " / ".join(format_number(health.get(key)) for key in ("p50_ms", "p95_ms", "max_ms")) + " ms",
            ],
        ]
        parts += [
            f"### overload: {overload['clients']} clients, POST {overload['path']} "
            f"({overload['rows_per_request']} images each), FACEGEN_MAX_QUEUE={overload.get('max_queue')}, "
            f"{overload['seconds']} s",
            markdown_table(["figure", "value"], rows),
        ]
    else:
        parts += ["### overload", f"skipped: {overload.get('reason', 'not run')}"]

    server_rows = [
        [
            label,
            format_settings(info.get("settings")),
            "n/a" if info.get("pid") is None else info["pid"],
            format_quantity(info.get("rss_bytes"), "bytes"),
            format_quantity(info.get("peak_rss_bytes"), "bytes"),
            format_quantity(info.get("startup_s"), "s"),
        ]
        for label, info in (results.get("servers") or {}).items()
    ]
    parts += [
        "### servers",
        table_or(["server", "settings", "pid", "RSS", "peak RSS", "startup to ready"], server_rows),
    ]

    check_rows = [
        [c.name, format_quantity(c.value, c.target.unit), str(c.target), verdict(c.passed)]
        for c in build_checks(results)
    ]
    parts += ["### targets", markdown_table(["check", "value", "target", "result"], check_rows)]
    return "\n\n".join(parts) + "\n"


def mode_label(mode: str | None) -> str:
    """on/off: the started servers; anything else (``--url``): the server given."""
    return f"batching {mode}" if mode in (ON, OFF) else "the given server" if mode else "n/a"


def _pair(latency: dict[str, float | None]) -> str:
    return f"{format_number(latency.get('p50_ms'))} / {format_number(latency.get('p95_ms'))} ms"
