"""One checkpoint = one ``.safetensors`` file: tensors plus string metadata.

Metadata keys: ``family``, ``format_version``, ``config`` (JSON, rebuilds the module), ``preprocess`` (JSON
:class:`PreprocessSpec`), ``attributes`` (JSON list), ``metrics``, ``training`` (JSON). Module weights are stored
under their state-dict names; extra tensors the service needs (e.g. attribute directions) under ``extra.<name>``.
Loading never unpickles: safetensors parses a JSON header and raw buffers, and everything is checked before the
module is moved to its device.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .preprocess import DEFAULT_PREPROCESS, PreprocessSpec
from .registry import FamilyModule, UnknownFamilyError, build_model, config_to_json

FORMAT_VERSION = "1"
EXTRA_PREFIX = "extra."
REQUIRED_METADATA = ("family", "format_version", "config", "preprocess", "attributes", "metrics", "training")

ModuleT = TypeVar("ModuleT", bound=FamilyModule)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be served; the message says why."""


@dataclass
class Checkpoint:
    model: FamilyModule
    family: str
    config: dict[str, Any]
    preprocess: PreprocessSpec
    attributes: list[str]
    metrics: dict[str, Any]
    training: dict[str, Any]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None

    def model_as(self, kind: type[ModuleT]) -> ModuleT:
        """``model`` as its family's class ``kind``, for code that handles one family (:class:`CheckpointError`
        if the checkpoint holds another)."""
        if not isinstance(self.model, kind):
            raise CheckpointError(f"a {self.family} checkpoint holds no {kind.__name__}")
        return self.model


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: FamilyModule,
    *,
    preprocess: PreprocessSpec = DEFAULT_PREPROCESS,
    attributes: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    extras: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = torch.float16,
) -> Path:
    """Write ``model`` (a registered family) and its metadata; floating tensors stored as ``dtype`` (None keeps
    them)."""
    image_size = getattr(model.config, "image_size", preprocess.size)
    if image_size != preprocess.size:
        # Serving preprocesses uploads with this spec: a mismatch would feed the model the wrong size.
        raise ValueError(f"preprocess size {preprocess.size} does not match the model's image_size {image_size}")
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    for name, tensor in (extras or {}).items():
        tensors[EXTRA_PREFIX + name] = tensor.detach().cpu().contiguous()
    metadata = {
        "family": model.family,
        "format_version": FORMAT_VERSION,
        "config": config_to_json(model.config),
        "preprocess": preprocess.to_json(),
        "attributes": json.dumps(list(attributes or [])),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "training": json.dumps(training or {}, sort_keys=True),
    }
    return write_safetensors(path, tensors, metadata)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (a crash mid-write never leaves a half file under the real name) and
    world-readable (safetensors writes 0600; a container user must be able to read a mounted checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", allow_missing: tuple[str, ...] = ()
) -> Checkpoint:
    """Rebuild, strictly load, check and move a checkpoint. Raises :class:`CheckpointError` with the reason.

    ``allow_missing`` names tensors that may be absent and then keep the module's initial values: only for offline
    tools that upgrade older checkpoints (the service always loads strictly).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None

    missing_keys = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing_keys:
        raise CheckpointError(f"{path}: metadata lacks {missing_keys}; is this a facegen checkpoint?")
    if metadata["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {metadata['format_version']!r}, this code reads {FORMAT_VERSION!r}"
        )
    try:
        config = json.loads(metadata["config"])
        preprocess = PreprocessSpec.from_json(metadata["preprocess"])
        attributes, metrics, training = (json.loads(metadata[key]) for key in ("attributes", "metrics", "training"))
        model = build_model(metadata["family"], config)
    except UnknownFamilyError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: bad metadata ({error})") from None

    extras = {name[len(EXTRA_PREFIX) :]: t for name, t in tensors.items() if name.startswith(EXTRA_PREFIX)}
    weights = {name: t for name, t in tensors.items() if not name.startswith(EXTRA_PREFIX)}
    expected = model.state_dict()
    for name in allow_missing:
        if name in expected and name not in weights:
            weights[name] = expected[name]
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match the {metadata['family']} config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    wrong = [
        f"{name} {tuple(weights[name].shape)} != {tuple(t.shape)}"
        for name, t in expected.items()
        if weights[name].shape != t.shape
    ]
    if wrong:
        raise CheckpointError(f"{path}: wrong tensor shapes: {'; '.join(wrong[:5])}")
    # safetensors checks structure, not values: a NaN weight would silently serve black images.
    nonfinite = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if nonfinite:
        raise CheckpointError(f"{path}: non-finite values in {nonfinite[:5]}")

    model.load_state_dict(weights, strict=True)  # copies into float32 parameters
    model.eval().requires_grad_(False).to(device)
    return Checkpoint(
        model=model,
        family=metadata["family"],
        config=config,
        preprocess=preprocess,
        attributes=list(attributes),
        metrics=metrics,
        training=training,
        extras={name: t.float().to(device) for name, t in extras.items()},
        sha256=file_sha256(path),
        path=path,
    )


def amend_checkpoint(
    path: str | Path,
    *,
    extras: dict[str, torch.Tensor] | None = None,
    metrics: dict[str, Any] | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Add or replace extra tensors and merge ``metrics`` into a checkpoint's metadata, in one atomic rewrite of the
    file (or a write to ``out``); every other tensor and metadata entry is kept. Returns the merged metrics."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, tensor in (extras or {}).items():
        tensors[EXTRA_PREFIX + name] = tensor.detach().cpu().contiguous()
    merged = {**json.loads(metadata.get("metrics", "{}")), **(metrics or {})}
    metadata["metrics"] = json.dumps(merged, sort_keys=True)
    write_safetensors(out or path, tensors, metadata)
    return merged


def update_metrics(path: str | Path, new_metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge ``new_metrics`` into a checkpoint's ``metrics`` metadata, rewriting the file atomically."""
    return amend_checkpoint(path, metrics=new_metrics)
