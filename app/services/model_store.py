"""The loaded models: every ``*.safetensors`` in the weights folder, keyed by family. A bad file is reported and
skipped; it never stops the service."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint

logger = logging.getLogger("facegen.models")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class ModelStore:
    device: torch.device
    models: dict[str, Checkpoint] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # file name -> why it was skipped

    @classmethod
    def from_directory(cls, directory: Path, device: torch.device) -> "ModelStore":
        store = cls(device=device)
        if not directory.is_dir():
            logger.warning("weights directory %s does not exist; serving no models", directory)
            return store
        for path in sorted(directory.glob("*.safetensors")):
            store.add_file(path)
        return store

    def add_file(self, path: Path) -> None:
        try:
            checkpoint = load_checkpoint(path, self.device)
        except CheckpointError as error:
            self.failures[path.name] = str(error)
            logger.error("skipping %s", error)
            return
        if checkpoint.family in self.models:
            other = self.models[checkpoint.family].path
            self.failures[path.name] = f"{path.name}: a {checkpoint.family} model is already loaded from {other}"
            logger.error("skipping %s", self.failures[path.name])
            return
        self.models[checkpoint.family] = checkpoint
        logger.info("loaded %s (%s) on %s", checkpoint.family, path.name, self.device)

    def get(self, family: str) -> Checkpoint | None:
        return self.models.get(family)

    def missing(self, required: list[str]) -> list[str]:
        return [family for family in required if family not in self.models]
