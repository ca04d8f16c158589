"""Training speed of the recipes on this machine: ``python -m training speed [RECIPE ...] [--json FILE]``.

Each recipe trains a few optimiser steps in this process under each setting (fp32; bf16 autocast; bf16 with the
channels_last memory format), on its own data, threads and batch size. A step's time is the median interval between
two successive steps of the optimiser that steps least often (G in the GANs), after the warm-up steps, so data
decoding, start-up and the epoch's end (grids, checkpoint) are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .recipe import load_recipe, parse_set, to_argv
from .registry import TRAINERS, register_trainer

RECIPES = Path(__file__).parent / "recipes"
SETTINGS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "channels-last": False},
    "bf16": {"precision": "bf16", "channels-last": False},
    "bf16+channels_last": {"precision": "bf16", "channels-last": True},
}


class StepClock:
    """Times every optimiser step of this process while active (a global post-step hook)."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = defaultdict(list)

    def __enter__(self) -> StepClock:
        self.handle = register_optimizer_step_post_hook(lambda optimizer, *_: self.record(optimizer))
        return self

    def record(self, optimizer: torch.optim.Optimizer) -> None:
        self.times[id(optimizer)].append(time.perf_counter())

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def seconds_per_step(self, warmup: int) -> float:
        """Median interval between the steps of the optimiser with the fewest steps, past ``warmup`` steps."""
        if not self.times:
            raise RuntimeError("no optimiser stepped")
        stamps = min(self.times.values(), key=len)[warmup:]
        if len(stamps) < 2:
            raise RuntimeError(f"only {len(stamps)} timed steps after {warmup} warm-up steps")
        return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def measure(family: str, options: dict[str, Any], steps: int, warmup: int) -> float:
    """Steps per second of one recipe with ``options``, over ``steps`` timed steps."""
    total = warmup + steps + 1
    batch = int(options.get("batch-size", 64))
    options = {**options, "max-steps": total, "limit": batch * (total + 1)}
    with tempfile.TemporaryDirectory(prefix="facegen-speed-") as scratch:
        argv = [*to_argv(family, options), "--out", f"{scratch}/model.safetensors", "--run-dir", f"{scratch}/run"]
        add_arguments, train = TRAINERS[family]
        parser = argparse.ArgumentParser(prog=family)
        add_arguments(parser)
        quiet = io.StringIO()
        with StepClock() as clock, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            train(parser.parse_args(argv))
    return 1.0 / clock.seconds_per_step(warmup)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", nargs="*", help="recipe files (default: every recipe in training/recipes)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per recipe and setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocations, kernel choice)")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)} (default all)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an option of every recipe"
    )
    parser.add_argument("--json", type=Path, help="write the results here")


@register_trainer("speed", add_arguments)
def run(args: argparse.Namespace) -> None:
    settings = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in settings if name not in SETTINGS]
    if unknown or not settings:
        raise SystemExit(f"speed: unknown setting(s) {unknown}; valid: {', '.join(SETTINGS)}")
    if args.steps < 2 or args.warmup < 0:
        raise SystemExit("speed: --steps must be at least 2 and --warmup at least 0")
    paths = [Path(p) for p in args.recipes] or sorted(RECIPES.glob("*.toml"))
    overrides = dict(parse_set(item) for item in args.set)
    results: dict[str, dict[str, Any]] = {}
    for path in paths:
        family, options = load_recipe(path)
        options = {**options, **overrides}
        row: dict[str, Any] = {"recipe": str(path), "batch_size": int(options.get("batch-size", 64))}
        row["threads"] = options.get("threads")
        for name in settings:
            try:
                row[name] = round(measure(family, {**options, **SETTINGS[name]}, args.steps, args.warmup), 3)
            except SystemExit as refusal:  # a trainer that refuses a setting (Glow: half precision) says why
                row[name], row[f"{name}_refused"] = None, str(refusal)
            print(f"{path.stem:>10} {name:>20}: {row[name] or 0:8.3f} steps/s", flush=True)
        if row.get("fp32"):
            for name in settings:
                if row[name]:
                    row[f"{name}_speed_up"] = round(row[name] / row["fp32"], 2)
        results[path.stem] = row
    report = {
        "command": " ".join(
            ["python -m training speed", *map(str, args.recipes), f"--steps {args.steps} --warmup {args.warmup}"]
            + [f"--settings {args.settings}", *(f"--set {item}" for item in args.set)]
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "steps": args.steps,
        "warmup": args.warmup,
        "steps_per_second": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
