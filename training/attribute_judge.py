"""Attribute agreement, a metric shared by the evaluators of the conditional families (acgan, infogan, glow) and the
Glow calibration: the project's attribute classifier (family ``classifier``) judges generated faces.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from app.models.checkpoint import load_checkpoint

from .evaluation import EvaluationError

BATCH_SIZE = 250  # images per classifier forward


@dataclass
class AttributeJudge:
    """The attribute classifier as a judge of generated faces: images in [-1, 1] -> P(attribute)."""

    model: nn.Module  # forward: (N, 3, S, S) in [-1, 1] -> logits (N, len(attributes))
    attributes: list[str]  # the order of the classifier's outputs
    image_size: int  # input side it was trained on; other sizes are resized to it
    source: str = ""  # where it came from (reported with the metrics)

    def columns(self, names: list[str]) -> list[int]:
        missing = [name for name in names if name not in self.attributes]
        if missing:
            raise EvaluationError(f"the classifier does not judge {missing}; it knows {self.attributes}")
        return [self.attributes.index(name) for name in names]

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size:
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return torch.sigmoid(self.model(images).float())


def load_judge(path: str | Path, device: torch.device) -> AttributeJudge:
    """An :class:`AttributeJudge` from a ``classifier`` checkpoint."""
    checkpoint = load_checkpoint(path, device)
    if checkpoint.family != "classifier":
        raise EvaluationError(f"{path} is a {checkpoint.family!r} checkpoint, not an attribute classifier")
    return AttributeJudge(
        checkpoint.model,
        checkpoint.attributes,
        checkpoint.preprocess.size,
        f"{Path(path).name} sha256:{checkpoint.sha256[:12]}",
    )


def classifier_path(args: argparse.Namespace) -> Path | None:
    """``--classifier``, else ``classifier.safetensors`` beside the evaluated checkpoint when it exists."""
    given = getattr(args, "classifier", None)
    if given:
        if not Path(given).is_file():
            raise EvaluationError(f"--classifier {given}: no such file")
        return Path(given)
    beside = Path(args.checkpoint).with_name("classifier.safetensors")
    return beside if beside.is_file() else None


def batched(function: Callable[..., torch.Tensor], *inputs: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """``function`` over slices of ``inputs`` (same first dimension), results concatenated on the CPU."""
    starts = range(0, len(inputs[0]), batch_size)
    return torch.cat([function(*(t[i : i + batch_size] for t in inputs)).cpu() for i in starts])


def attribute_calls(
    judge: AttributeJudge, images: torch.Tensor, columns: list[int], device: torch.device | None = None
) -> torch.Tensor:
    """The judge's 0/1 calls (N, len(columns)) of its outputs ``columns`` on ``images``, in batches moved to
    ``device`` (the judge's), gathered on the CPU."""
    return batched(
        lambda x: judge.probabilities(x if device is None else x.to(device))[:, columns] > 0.5, images
    ).float()
