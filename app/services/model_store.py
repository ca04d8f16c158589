"""The loaded models: every ``*.safetensors`` in the weights folder, keyed by family, each with its pipeline. A bad
file is reported and skipped; it never stops the service."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from app.models.pipelines import Pipeline, build_pipeline

logger = logging.getLogger("facegen.models")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class ModelStore:
    device: torch.device
    precision: str = "float32"
    models: dict[str, Checkpoint] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # file name -> why it was skipped

    @classmethod
    def from_directory(cls, directory: Path, device: torch.device, precision: str = "float32") -> ModelStore:
        store = cls(device=device, precision=precision)
        if not directory.is_dir():
            logger.warning("weights directory %s does not exist; serving no models", directory)
            return store
        for path in sorted(directory.glob("*.safetensors")):
            store.add_file(path)
        return store

    def add_file(self, path: Path) -> None:
        try:
            checkpoint = load_checkpoint(path, self.device)
            pipeline = build_pipeline(checkpoint, self.precision)
        except CheckpointError as error:
            message = str(error)
            self.failures[path.name] = message if message.startswith(str(path)) else f"{path}: {message}"
            logger.error("skipping %s", error)
            return
        if checkpoint.family in self.models:
            other = self.models[checkpoint.family].path
            self.failures[path.name] = f"{path.name}: a {checkpoint.family} model is already loaded from {other}"
            logger.error("skipping %s", self.failures[path.name])
            return
        self.models[checkpoint.family] = checkpoint
        self.pipelines[checkpoint.family] = pipeline
        logger.info("loaded %s (%s) on %s", checkpoint.family, path.name, self.device)

    def get(self, family: str) -> Checkpoint | None:
        return self.models.get(family)

    def missing(self, required: list[str]) -> list[str]:
        return [family for family in required if family not in self.models]

    def remove(self, family: str, reason: str) -> None:
        """Take a loaded model out of service (e.g. its warm-up failed), reporting why under its file name."""
        checkpoint = self.models.pop(family, None)
        self.pipelines.pop(family, None)
        name = checkpoint.path.name if checkpoint is not None and checkpoint.path else family
        self.failures[name] = f"{name}: {reason}"
