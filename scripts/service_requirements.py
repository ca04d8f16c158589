"""Print the service's runtime requirements (pyproject's ``dependencies``) less torch and torchvision, which the
Dockerfile installs from PyTorch's own wheel index: the input of ``make lock``."""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
FROM_THEIR_OWN_INDEX = {"torch", "torchvision"}


def service_requirements() -> list[str]:
    from packaging.requirements import Requirement

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [spec for spec in dependencies if Requirement(spec).name.lower() not in FROM_THEIR_OWN_INDEX]


if __name__ == "__main__":
    sys.stdout.write("".join(f"{spec}\n" for spec in service_requirements()))
