"""Recipes as files and numbered run folders: ``python -m training run training/recipes/dcgan.toml``.

A recipe is a TOML file (``training/recipes/<family>.toml``): ``family = "<trainer>"`` and one line per option of
that trainer, spelled as its command-line flag without the dashes in front (``g-width = 64`` is ``--g-width 64``),
each with a comment saying why it has that value (stylegan3's habit). TOML because the standard library reads it
(``tomllib``, Python 3.11; the ``tomli`` package on 3.10), it has comments (JSON has none) and, unlike YAML, no
implicit typing surprises (``no`` or ``3e-6`` stay what they look like).

``run`` resolves the recipe (``--set KEY=VALUE`` overrides, parsed as TOML values, else taken as strings;
``--device``/``--precision``/``--compile`` are shortcuts), makes a fresh numbered folder ``runs/<family>-NNNNN``
(numbers are never reused: the next is one above the highest in the folder), writes the resolved recipe there as
``recipe.toml`` and trains with the checkpoint, logs, curves, grids and train state in that folder. The checkpoint's
``training`` metadata records the resolved recipe. ``run --resume RUN_DIR`` continues a run from its own
``recipe.toml`` (``--set epochs=N`` to go further) step for step. Under ``torchrun`` rank 0 makes the folder and
tells the others its name.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .distributed import broadcast_object, init_world
from .registry import TRAINERS, register_trainer
from .runtime import resolve_device

RECIPES_DIR = Path(__file__).parent / "recipes"
RECIPE_FILE = "recipe.toml"
# Options a run decides itself: the checkpoint and logs live in the numbered folder; resuming is `run --resume`.
RUN_DECIDES = ("out", "run-dir", "resume")
RUN_NUMBER = re.compile(r"-(\d{5})$")


class RecipeError(ValueError):
    """A recipe that cannot be run (unknown family, unknown option, bad value); the message says why."""


def read_toml(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def trainer_actions(family: str) -> dict[str, argparse.Action]:
    """The options of ``family``'s trainer by flag name without dashes (``g-width``), from its own parser."""
    if family not in TRAINERS:
        raise RecipeError(f"unknown family {family!r}; trainers: {', '.join(sorted(TRAINERS))}")
    parser = argparse.ArgumentParser(add_help=False)
    TRAINERS[family][0](parser)
    return {
        option[2:]: action for action in parser._actions for option in action.option_strings if option.startswith("--")
    }


def load_recipe(path: str | Path) -> tuple[str, dict[str, Any]]:
    """``(family, options)`` of a recipe file; every key checked against the family's trainer."""
    try:
        table = read_toml(path)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RecipeError(f"{path}: {error}") from None
    table = dict(table)
    family = table.pop("family", None)
    if not isinstance(family, str):
        raise RecipeError(f'{path}: needs a line family = "<trainer>"')
    check_options(family, table, source=str(path))
    return family, table


def check_options(family: str, options: dict[str, Any], source: str) -> None:
    actions = trainer_actions(family)
    for key, value in options.items():
        if key in RUN_DECIDES:
            raise RecipeError(f"{source}: {key!r} is decided by the run (its numbered folder), not by a recipe")
        if key not in actions:
            raise RecipeError(
                f"{source}: {key!r} is not an option of the {family} trainer; its options: "
                f"{', '.join(sorted(k for k in actions if k not in RUN_DECIDES))}"
            )
        if isinstance(value, dict):
            raise RecipeError(f"{source}: {key!r} must be a plain value, not a table")


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a TOML value (``2``, ``1e-4``, ``true``, ``"x"``, ``[32, 64]``), else a
    string (``data=/mnt/celeba``)."""
    key, separator, text = item.partition("=")
    key = key.strip().removeprefix("--")
    if not separator or not key:
        raise RecipeError(f"--set needs KEY=VALUE, got {item!r}")
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def to_argv(family: str, options: dict[str, Any]) -> list[str]:
    """The trainer's command line for ``options`` (so its own parser converts and checks every value)."""
    actions = trainer_actions(family)
    argv: list[str] = []
    for key, value in options.items():
        action = actions[key]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise RecipeError(f"{key!r} is a switch: true or false, got {value!r}")
            if value:
                argv.append(f"--{key}")
        elif isinstance(value, list):
            argv += [f"--{key}", ",".join(str(item) for item in value)]
        else:
            argv += [f"--{key}", format_value(value) if isinstance(value, bool) else str(value)]
    return argv


def format_value(value: Any) -> str:
    """A TOML literal for a recipe value (str, int, float, bool or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecipeError(f"recipe values must be finite, got {value}")
        return repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value) if isinstance(value, str) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    raise RecipeError(f"cannot write {value!r} into a recipe")


def write_recipe(path: Path, family: str, options: dict[str, Any], header: list[str]) -> Path:
    lines = [f"# {line}" for line in header]
    lines.append(f"family = {format_value(family)}")
    lines += [f"{key} = {format_value(value)}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def next_run_dir(root: Path, family: str) -> Path:
    """A fresh ``root/<family>-NNNNN``: one above the highest number of any run folder in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(match.group(1)) for child in root.iterdir() if (match := RUN_NUMBER.search(child.name))]
    number = max(numbers, default=-1) + 1
    while True:
        path = root / f"{family}-{number:05d}"
        try:
            path.mkdir()  # exclusive: two runs started at once cannot share a folder
            return path
        except FileExistsError:
            number += 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe file, e.g. training/recipes/dcgan.toml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an option (repeatable)"
    )
    parser.add_argument("--device", help="shortcut for --set device=...")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="shortcut for --set precision=...")
    parser.add_argument("--compile", action="store_true", help="shortcut for --set compile=true")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its recipe.toml")
    parser.add_argument("--runs", default="runs", help="folder of the numbered run folders (default runs)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and command; train nothing")


def resolve(args: argparse.Namespace) -> tuple[str, dict[str, Any], str]:
    """``(family, options, source)`` from the recipe (or the resumed run's) and the overrides."""
    if args.resume:
        source = str(Path(args.resume) / RECIPE_FILE)
        if args.recipe:
            raise RecipeError("give a recipe or --resume RUN_DIR, not both (the run folder holds its recipe)")
        if not Path(source).is_file():
            raise RecipeError(f"--resume {args.resume}: no {RECIPE_FILE} inside; is it a run folder of `run`?")
    elif args.recipe:
        source = args.recipe
    else:
        raise RecipeError("give a recipe file (see training/recipes/) or --resume RUN_DIR")
    family, options = load_recipe(source)
    overrides = dict(parse_set(item) for item in args.set)
    for key, value in (("device", args.device), ("precision", args.precision), ("compile", args.compile or None)):
        if value is not None:
            overrides[key] = value
    check_options(family, overrides, source="--set")
    return family, {**options, **overrides}, source


@register_trainer("run", add_arguments)
def run(args: argparse.Namespace) -> None:
    """Train a recipe in a fresh numbered run folder, or continue one (``--resume RUN_DIR``)."""
    try:
        family, options, source = resolve(args)
        trainer_argv = to_argv(family, options)
    except RecipeError as error:
        raise SystemExit(f"run: {error}") from None
    add_options, train = TRAINERS[family]
    parser = argparse.ArgumentParser(prog=f"python -m training run ({family})")
    add_options(parser)
    if args.dry_run:
        print(f"{family} from {source}")
        print("python -m training " + shlex.join([family, *trainer_argv, "--out", "RUN_DIR/..."]))
        return
    world, _ = init_world(resolve_device(str(options.get("device", "auto"))))
    if args.resume:
        folder = Path(args.resume)
    else:
        folder = Path(str(broadcast_object(str(next_run_dir(Path(args.runs), family)) if world.is_main else "", world)))
    if world.is_main:
        write_recipe(
            folder / RECIPE_FILE,
            family,
            options,
            [f"resolved from {source}", f"overrides: {shlex.join(args.set) or 'none'}"],
        )
    trainer_args = parser.parse_args(
        [*trainer_argv, "--out", str(folder / f"{family}.safetensors"), "--run-dir", str(folder)]
        + (["--resume"] if args.resume else [])
    )
    trainer_args.recipe = {"source": source, "run_dir": str(folder), "family": family, "options": options}
    if world.is_main:  # under torchrun every rank runs this: one line, not one per process
        print(f"{family}: run folder {folder}", flush=True)
    train(trainer_args)
