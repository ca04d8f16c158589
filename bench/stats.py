"""Pure statistics helpers (no timing, no I/O): easy to test."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def images_per_second(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.inf


def latency_summary(seconds: Sequence[float], quantiles: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}`` of latencies given in seconds; None each when empty."""
    return {f"p{q}_ms": percentile(seconds, q) * 1000 if seconds else None for q in quantiles}


def count_statuses(statuses: Iterable[str | int]) -> dict[str, int]:
    """Status (HTTP code or error name) -> how many, keys as strings, sorted by key."""
    counts = Counter(str(status) for status in statuses)
    return dict(sorted(counts.items()))


def ratio_or_none(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
