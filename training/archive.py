"""A small archive of the training faces, for a GPU host: ``python -m training pack --data DIR --out FILE``.

One safetensors file (the project never unpickles): every face of every split cropped and resized by the shared
preprocessing to 64x64 and stored as a JPEG (``jpeg``: the bytes concatenated, ``offsets``: where each starts),
the 0/1 attributes (``attributes``, uint8 (N, 40)) and the split of each face (``partition``: 0 train, 1 valid,
2 test); the metadata holds the attribute names, the file names and the preprocessing. celeba-mini's 15,063 faces
take 35 MB at quality 90 (a raw uint8 pack: 185 MB). Any trainer reads it in place of a CelebA folder
(``--set data=faces64.safetensors``): the faces are decoded once into the same uint8 pack as a folder's
(:func:`training.data.load_split` reads archives; this module only writes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.models.checkpoint import write_safetensors
from app.models.preprocess import DEFAULT_PREPROCESS, PreprocessSpec

from .data import SPLITS, CelebA
from .registry import register_trainer


def pack(root: str | Path, out: str | Path, spec: PreprocessSpec = DEFAULT_PREPROCESS, quality: int = 90) -> Path:
    chunks, offsets, attributes, partition, files, names = [], [0], [], [], [], None
    for split, number in SPLITS.items():
        try:
            dataset = CelebA(root, split, spec)
        except ValueError:
            continue  # a subset without this split
        names = dataset.attribute_names
        for index in range(len(dataset)):
            buffer = io.BytesIO()
            Image.fromarray(dataset.load_uint8(index).permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
            chunks.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
            offsets.append(offsets[-1] + len(chunks[-1]))
        attributes.append(dataset.attributes.to(torch.uint8))
        partition += [number] * len(dataset)
        files += dataset.files
    tensors = {
        "jpeg": torch.from_numpy(np.concatenate(chunks)),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "attributes": torch.cat(attributes),
        "partition": torch.tensor(partition, dtype=torch.uint8),
    }
    metadata = {"attribute_names": json.dumps(names), "files": json.dumps(files), "preprocess": spec.to_json()}
    metadata["jpeg_quality"] = str(quality)
    return write_safetensors(out, tensors, metadata)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CelebA folder in the official layout")
    parser.add_argument("--out", required=True, help="the archive to write (.safetensors)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the faces")
    parser.add_argument(
        "--image-size", type=int, default=DEFAULT_PREPROCESS.size, help="side of the packed faces (the models': 64)"
    )


@register_trainer("pack", add_arguments)
def run(args: argparse.Namespace) -> None:
    spec = dataclasses.replace(DEFAULT_PREPROCESS, size=args.image_size)
    path = pack(args.data, args.out, spec, quality=args.quality)
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
