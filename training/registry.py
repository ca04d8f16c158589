"""Trainers register a CLI sub-command here: ``python -m training <name> ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Trainer = Callable[[argparse.Namespace], None]
TRAINERS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Trainer]] = {}


def register_trainer(
    name: str, add_arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Trainer], Trainer]:
    def decorate(function: Trainer) -> Trainer:
        TRAINERS[name] = (add_arguments, function)
        return function

    return decorate
