"""Add the training labels' covariance to a Glow checkpoint made before the trainer saved it (extra tensor
``attribute_covariance``), keeping every other tensor and the metadata. The service conditions samples on several
attributes, and manipulates one with the others held, through it (app/models/pipelines/glow.py).

    python scripts/add_glow_label_covariance.py weights/glow.safetensors --data ../shared/data/celeba-mini
    python -m app.manifest write weights
"""

from __future__ import annotations

import argparse

import torch

from app.models.checkpoint import amend_checkpoint, read_metadata
from app.models.glow import COVARIANCE_KEY
from app.models.preprocess import PreprocessSpec
from training.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the CelebA folder the checkpoint was trained on")
    parser.add_argument("--out", help="where to write (default: rewrite the checkpoint in place)")
    args = parser.parse_args()
    train = load_split(args.data, "train", PreprocessSpec.from_json(read_metadata(args.checkpoint)["preprocess"]), None)
    amend_checkpoint(args.checkpoint, extras={COVARIANCE_KEY: torch.cov(train.attributes.float().T)}, out=args.out)


if __name__ == "__main__":
    main()
