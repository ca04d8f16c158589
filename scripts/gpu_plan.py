"""How many GPUs each recipe of ``make train-gpu`` can use: the global batch is split evenly over the processes, so
the count must divide the recipe's ``batch-size``. For each recipe, the largest count up to the GPUs on this host
that does; a recipe that gets fewer than the host has is said so on stderr (on 3, 5, 6 or 7 GPUs, every recipe of
batch 32 or 64 runs on 2 or 4 of them rather than failing).

    python scripts/gpu_plan.py GPUS RECIPE.toml...   # prints "RECIPE PROCESSES" per line
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def usable_processes(batch_size: int, gpus: int) -> int:
    """The largest process count <= ``gpus`` that divides ``batch_size`` (1 at least)."""
    if batch_size < 1 or gpus < 1:
        raise ValueError(f"batch size and GPU count must be >= 1, got {batch_size} and {gpus}")
    return max(count for count in range(1, gpus + 1) if batch_size % count == 0)


def plan(gpus: int, recipes: list[Path]) -> list[tuple[str, int, str | None]]:
    """(recipe name, processes, a note when fewer than ``gpus``) for each recipe."""
    rows = []
    for recipe in recipes:
        batch_size = int(tomllib.loads(recipe.read_text())["batch-size"])
        processes = usable_processes(batch_size, gpus)
        note = None
        if processes < gpus:
            note = (
                f"{recipe.stem}: batch-size {batch_size} does not divide over {gpus} GPUs; using {processes} "
                f"(set a batch size divisible by {gpus} in {recipe} to use them all)"
            )
        rows.append((recipe.stem, processes, note))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        sys.stderr.write("usage: python scripts/gpu_plan.py GPUS RECIPE.toml...  (GPUS >= 1)\n")
        return 2
    for name, processes, note in plan(int(argv[0]), [Path(path) for path in argv[1:]]):
        if note:
            sys.stderr.write(f"== {note}\n")
        print(name, processes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
