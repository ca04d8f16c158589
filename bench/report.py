"""Targets, their evaluation and the markdown report. Pure functions over the plain results dict that
``--json`` writes, so they are testable without a server."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

OPERATORS = {"<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Target:
    op: str
    limit: float
    unit: str

    def __str__(self) -> str:
        return f"{self.op} {format_quantity(self.limit, self.unit)}"


# The service's targets: HTTP adds at most 50 % to a batch of 64, the server stays under 2 GB, it is ready in 15 s.
RATIO_TARGET = Target("<=", 1.5, "x")
RSS_TARGET = Target("<", 2e9, "bytes")
STARTUP_TARGET = Target("<", 15.0, "s")
RATIO_BATCH = 64  # the ratio compares e2e n=64 (concurrency 1, p50) with the raw forward of a batch of 64


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    target: Target
    passed: bool | None  # None: not measured


def evaluate(value: float | None, target: Target) -> bool | None:
    """True/False against ``target``; None when the figure was not measured."""
    if value is None:
        return None
    return OPERATORS[target.op](value, target.limit)


def ratio(e2e_seconds: float | None, raw_seconds: float | None) -> float | None:
    if e2e_seconds is None or not raw_seconds:
        return None
    return e2e_seconds / raw_seconds


def families_of(results: dict[str, Any]) -> list[str]:
    seen = [row["family"] for row in results.get("raw", [])] + [row["family"] for row in results.get("e2e", [])]
    return list(dict.fromkeys(seen))


def find_row(rows: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


def family_ratio(results: dict[str, Any], family: str) -> float | None:
    """e2e p50 latency of n=64 at concurrency 1, divided by the raw forward time of a batch of 64."""
    raw = find_row(results.get("raw", []), family=family, batch=RATIO_BATCH)
    e2e = find_row(results.get("e2e", []), family=family, n=RATIO_BATCH, concurrency=1)
    e2e_seconds = e2e["p50_ms"] / 1000 if e2e and e2e.get("p50_ms") is not None else None
    return ratio(e2e_seconds, raw["seconds"] if raw else None)


def build_checks(results: dict[str, Any]) -> list[Check]:
    checks = []
    for family in families_of(results):
        value = family_ratio(results, family)
        checks.append(Check(f"{family}: e2e n={RATIO_BATCH} / raw forward of {RATIO_BATCH}", value, RATIO_TARGET,
                            evaluate(value, RATIO_TARGET)))
    for name, key, target in (("server RSS", "rss_bytes", RSS_TARGET), ("startup to ready", "startup_s", STARTUP_TARGET)):
        value = results.get(key)
        checks.append(Check(name, value, target, evaluate(value, target)))
    return checks


def checks_as_json(checks: Sequence[Check]) -> list[dict[str, Any]]:
    return [{**asdict(check), "target": str(check.target)} for check in checks]


# ---- formatting -------------------------------------------------------------------------------------------------

def format_number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.{digits}f}"


def format_quantity(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "bytes":
        return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / 1e6:.0f} MB"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.2f} {unit}"


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


def render(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    device = results.get("device") or "n/a"
    threads = results.get("threads") or "torch default"
    parts = [f"## facegen benchmark: {results.get('url', '?')}",
             f"device {device}, bench torch threads {threads}, {results.get('requests', '?')} requests per e2e cell"]
    raw_rows = [[r["family"], r["batch"], r["seconds"] * 1000, r["images_per_s"]] for r in results.get("raw", [])]
    parts += ["### raw in-process forward (model.generate, median)",
              markdown_table(["family", "batch", "ms / forward", "images/s"], raw_rows) if raw_rows else "n/a"]
    e2e_rows = [[r["family"], r["n"], r["concurrency"], r["requests"], r["errors"], r["images_per_s"], r["p50_ms"], r["p95_ms"]]
                for r in results.get("e2e", [])]
    parts += ["### end-to-end HTTP (POST /generate/<family>, png)",
              markdown_table(["family", "n", "concurrency", "requests", "errors", "images/s", "p50 ms", "p95 ms"], e2e_rows)
              if e2e_rows else "n/a"]
    pid = results.get("server_pid")
    parts += ["### server", f"pid {pid if pid is not None else 'n/a'}, RSS {format_quantity(results.get('rss_bytes'), 'bytes')}"
              f" (peak {format_quantity(results.get('peak_rss_bytes'), 'bytes')}), startup to ready "
              f"{format_quantity(results.get('startup_s'), 's')}"]
    checks = build_checks(results)
    check_rows = [[c.name, format_quantity(c.value, c.target.unit), str(c.target), verdict(c.passed)] for c in checks]
    parts += ["### targets", markdown_table(["check", "value", "target", "result"], check_rows)]
    return "\n\n".join(parts) + "\n"
