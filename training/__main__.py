"""``python -m training run training/recipes/<family>.toml``, ``python -m training <family> --data DIR --out
weights/<family>.safetensors ...`` and ``python -m training evaluate``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .distributed import finish, get_world
from .registry import TRAINERS


def discover_trainers() -> None:
    """Import every module of the package: each registers its sub-commands with ``@register_trainer``."""
    package = __package__ or "training"
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name != "__main__":
            importlib.import_module(f"{package}.{module.name}")


def main(argv: list[str] | None = None) -> None:
    discover_trainers()
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _) in sorted(TRAINERS.items()):
        add_arguments(commands.add_parser(name, help=f"train or run {name}"))
    args = parser.parse_args(argv)
    TRAINERS[args.command][1](args)
    finish(get_world())  # under torchrun: leave the process group together


if __name__ == "__main__":
    main(sys.argv[1:])
