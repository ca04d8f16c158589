"""``python -m training label-vectors CHECKPOINT --data DIR``: add the training faces' label vectors to an existing
checkpoint of an attribute-conditioned family (ACGAN, Glow), so that the service draws the attributes a request leaves
open jointly (:mod:`app.models.attributes`). New checkpoints get them from their trainers; this is for those written
before. Only the extra tensor is added: the weights and every other entry stay as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from app.models.attributes import LABEL_VECTORS_KEY, pack_label_vectors, unpack_label_vectors
from app.models.checkpoint import CheckpointError, amend_checkpoint, read_metadata

from .data import load_labels
from .registry import register_trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the .safetensors file to amend (rewritten atomically unless --out)")
    parser.add_argument("--data", required=True, help="the CelebA folder (or faces archive) the model was trained on")
    parser.add_argument("--split", default="train", help="the split whose faces' labels are stored (default train)")
    parser.add_argument("--out", help="write the amended checkpoint here instead of over CHECKPOINT")


def label_vectors_for(names: list[str], data: str | Path, split: str = "train") -> torch.Tensor:
    """The packed (faces, ceil(len(names) / 8)) label vectors of ``split``'s faces, columns in ``names``' order."""
    data_names, labels = load_labels(data, split)
    missing = [name for name in names if name not in data_names]
    if missing:
        raise ValueError(f"{data} has no labels for {missing}")
    return pack_label_vectors(labels[:, [data_names.index(name) for name in names]])


def add_label_vectors(
    checkpoint: str | Path, data: str | Path, split: str = "train", out: str | Path | None = None
) -> int:
    """Store ``split``'s label vectors in ``checkpoint`` (or a copy at ``out``); returns how many faces."""
    metadata = read_metadata(checkpoint)
    try:
        names = json.loads(metadata["attributes"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{checkpoint}: no attribute list in its metadata") from None
    if not names:
        raise CheckpointError(f"{checkpoint}: a {metadata.get('family')} checkpoint conditions on no attributes")
    packed = label_vectors_for(names, data, split)
    unpack_label_vectors(packed, len(names))  # the service's own check, before anything is written
    amend_checkpoint(checkpoint, extras={LABEL_VECTORS_KEY: packed}, out=out)
    return len(packed)


@register_trainer("label-vectors", add_arguments)
def run(args: argparse.Namespace) -> None:
    try:
        faces = add_label_vectors(args.checkpoint, args.data, args.split, args.out)
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"label-vectors: {error}") from None
    where = args.out or args.checkpoint
    print(f"{where}: stored the label vectors of {faces} {args.split} faces ({LABEL_VECTORS_KEY})")
