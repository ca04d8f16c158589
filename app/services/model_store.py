"""The loaded models: every ``*.safetensors`` in the weights folder, keyed by family, each with its pipeline. A bad
file is reported (by file name: server paths are not the client's business) and skipped; it never stops the service.
With ``verify``, each file is first checked against the folder's ``SHA256SUMS`` (:mod:`app.manifest`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.manifest import MANIFEST, WRITE_COMMAND, ManifestError, read_manifest
from app.models.checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint
from app.models.pipelines import Pipeline, build_pipeline
from app.services.device import resolve_device  # noqa: F401  (its old home; training imports it from here)

logger = logging.getLogger("facegen.models")


@dataclass
class ModelStore:
    device: torch.device
    precision: str = "float32"
    models: dict[str, Checkpoint] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # file name -> why it was skipped
    # What the manifest check found: "verified" (every file listed and matching), "absent" (no SHA256SUMS: served
    # unverified), "off" (FACEGEN_VERIFY_WEIGHTS=false), "failed" (some files refused).
    verification: str = "off"

    @classmethod
    def from_directory(
        cls, directory: Path, device: torch.device, precision: str = "float32", verify: bool = True
    ) -> ModelStore:
        store = cls(device=device, precision=precision)
        if not directory.is_dir():
            logger.warning("weights directory %s does not exist; serving no models", directory)
            return store
        expected = store.read_expected(directory) if verify else None
        for path in sorted(directory.glob("*.safetensors")):
            if expected is not None and not store.matches(path, expected):
                continue
            store.add_file(path)
        if expected is not None:
            for name in sorted(set(expected) - {path.name for path in directory.glob("*.safetensors")}):
                store.failures[name] = f"{name}: listed in {MANIFEST} but missing from the weights folder"
            if store.verification == "verified" and store.failures:
                store.verification = "failed"
        return store

    def read_expected(self, directory: Path) -> dict[str, str] | None:
        try:
            expected = read_manifest(directory)
        except ManifestError as error:
            logger.error("%s; refusing every checkpoint", error)
            self.verification = "failed"
            return {}
        if expected is None:
            logger.warning(
                "%s has no %s: checkpoints are NOT verified (write one with `%s %s`)",
                directory,
                MANIFEST,
                WRITE_COMMAND,
                directory,
            )
            self.verification = "absent"
        else:
            self.verification = "verified"
        return expected

    def matches(self, path: Path, expected: dict[str, str]) -> bool:
        """Whether ``path`` is listed in the manifest with its digest; records why not."""
        if path.name not in expected:
            reason = f"not listed in {MANIFEST} (refused; FACEGEN_VERIFY_WEIGHTS=false loads it anyway)"
        elif file_sha256(path) != expected[path.name]:
            reason = f"sha256 differs from {MANIFEST}'s (refused; FACEGEN_VERIFY_WEIGHTS=false loads it anyway)"
        else:
            return True
        self.failures[path.name] = f"{path.name}: {reason}"
        self.verification = "failed"
        logger.error("skipping %s", self.failures[path.name])
        return False

    def add_file(self, path: Path) -> None:
        try:
            checkpoint = load_checkpoint(path, self.device)
            pipeline = build_pipeline(checkpoint, self.precision)
        except CheckpointError as error:
            message = str(error)
            if message.startswith(str(path)):
                message = message[len(str(path)) :].lstrip(": ")
            self.failures[path.name] = f"{path.name}: {message}"
            logger.error("skipping %s", error)
            return
        if checkpoint.family in self.models:
            other = self.models[checkpoint.family].path
            other_name = other.name if other else "another file"
            self.failures[path.name] = f"{path.name}: a {checkpoint.family} model is already loaded from {other_name}"
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
