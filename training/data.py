"""CelebA in its official layout, read by the same code for the full data set and for ``celeba-mini``.

``img_align_celeba/NNNNNN.jpg``, ``list_attr_celeba.txt`` (count, 40 names, then rows of +-1) and
``list_eval_partition.txt`` (0 train, 1 valid, 2 test). Only images listed in both files *and* present on disk are
used, so a subset folder works unchanged. Decoding JPEGs dominates a CPU epoch, so :func:`load_split` packs a
split once into a uint8 tensor file (``.cache`` beside the run, never in the data folder) and reuses it.

The same functions read a faces archive (one safetensors file written by ``python -m training pack``,
:mod:`.archive`) in place of a folder: reading lives here, writing there, so the two modules import one way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from app.models.preprocess import DEFAULT_PREPROCESS, PreprocessSpec, crop_and_resize, pil_to_uint8, uint8_to_unit_range

# not a circular import: training.distributed imports only torch
from .distributed import get_world

SPLITS = {"train": 0, "valid": 1, "test": 2}


def read_attribute_table(root: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Names of the 40 attributes and, per file name, its 0/1 labels."""
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    table: dict[str, list[int]] = {}
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"list_attr_celeba.txt: row {fields[0]!r} has {len(fields) - 1} values, expected {len(names)}"
            )
        table[fields[0]] = [1 if value == "1" else 0 for value in fields[1:]]
    return names, table


def read_partition(root: Path) -> dict[str, int]:
    partition: dict[str, int] = {}
    for line in (root / "list_eval_partition.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            partition[fields[0]] = int(fields[1])
    return partition


class CelebA(Dataset):
    """One split of CelebA: items are ``(image in [-1, 1] of shape (3, S, S), float attribute vector of 0/1)``."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        spec: PreprocessSpec = DEFAULT_PREPROCESS,
        limit: int | None = None,
    ):
        self.root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if not (self.root / "img_align_celeba").is_dir():
            raise FileNotFoundError(f"{self.root} is not a CelebA folder: no img_align_celeba/ inside")
        self.split, self.spec = split, spec
        self.attribute_names, table = read_attribute_table(self.root)
        partition = read_partition(self.root)
        on_disk = {path.name for path in (self.root / "img_align_celeba").glob("*.jpg")}
        self.files = sorted(
            name for name, part in partition.items() if part == SPLITS[split] and name in table and name in on_disk
        )
        if limit is not None:
            self.files = self.files[:limit]
        if not self.files:
            raise ValueError(f"no images of split {split!r} found in {self.root}")
        self.attributes = torch.tensor([table[name] for name in self.files], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.files)

    def load_uint8(self, index: int) -> torch.Tensor:
        with Image.open(self.root / "img_align_celeba" / self.files[index]) as image:
            return pil_to_uint8(crop_and_resize(image, self.spec))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return uint8_to_unit_range(self.load_uint8(index)), self.attributes[index]


@dataclass
class PackedSplit:
    """A whole split in memory: uint8 images (N, 3, S, S) and 0/1 attributes (N, 40)."""

    images: torch.Tensor
    attributes: torch.Tensor
    attribute_names: list[str]
    files: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return uint8_to_unit_range(self.images[indices]), self.attributes[indices]


def load_labels(root: str | Path, split: str, limit: int | None = None) -> tuple[list[str], torch.Tensor]:
    """The attribute names and (N, 40) labels of one split of a CelebA folder or a faces archive; no image is
    decoded."""
    if Path(root).is_file():
        return archive_labels(root, split, limit)
    dataset = CelebA(root, split, limit=limit)
    return dataset.attribute_names, dataset.attributes


def load_split(
    root: str | Path,
    split: str,
    spec: PreprocessSpec = DEFAULT_PREPROCESS,
    limit: int | None = None,
    cache_dir: str | Path | None = ".cache/packs",
) -> PackedSplit:
    """Decode (or reuse a pack of) one split through the shared preprocessing. ``root`` may also be an archive
    written by ``python -m training pack`` (:mod:`.archive`)."""
    if Path(root).is_file():
        return load_archive_split(root, split, spec, limit)
    dataset = CelebA(root, split, spec, limit)
    key = hashlib.sha256("\n".join([str(Path(root).resolve()), spec.to_json(), *dataset.files]).encode()).hexdigest()[
        :16
    ]
    pack = Path(cache_dir) / f"{split}-{key}.safetensors" if cache_dir else None
    if pack is not None and pack.exists():
        images = load_file(pack)["images"]
    else:
        images = torch.stack(
            [
                dataset.load_uint8(i)
                for i in tqdm(
                    range(len(dataset)), desc=f"decoding {split}", leave=False, disable=not get_world().is_main
                )
            ]
        )
        if pack is not None:
            # write then rename: several torchrun processes may decode the same split at once
            pack.parent.mkdir(parents=True, exist_ok=True)
            partial = pack.with_name(f"{pack.name}.{os.getpid()}.partial")
            save_file({"images": images}, str(partial))
            os.replace(partial, pack)
    return PackedSplit(images, dataset.attributes, dataset.attribute_names, dataset.files)


# --- faces archives (written by `python -m training pack`, :mod:`.archive`) ------------------------------------


def archive_labels(path: str | Path, split: str, limit: int | None = None) -> tuple[list[str], torch.Tensor]:
    """The attribute names and the (N, 40) float 0/1 labels of one split of an archive, decoding no image."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "attribute_names" not in metadata:
            raise ValueError(f"{path} is not a faces archive written by `python -m training pack`")
        partition, attributes = handle.get_tensor("partition"), handle.get_tensor("attributes")
    chosen = (partition == SPLITS[split]).nonzero().flatten()[:limit]
    if len(chosen) == 0:
        raise ValueError(f"no images of split {split!r} in {path}")
    return json.loads(metadata["attribute_names"]), attributes[chosen].float()


def load_archive_split(path: str | Path, split: str, spec: PreprocessSpec, limit: int | None = None) -> PackedSplit:
    """One split of an archive as a :class:`PackedSplit`; the archive's preprocessing must be ``spec``."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if PreprocessSpec.from_json(metadata["preprocess"]).to_json() != spec.to_json():
        raise ValueError(
            f"{path} was packed with preprocessing {metadata['preprocess']}, the run asks {spec.to_json()}"
        )
    chosen = (tensors["partition"] == SPLITS[split]).nonzero().flatten()
    if limit is not None:
        chosen = chosen[:limit]
    if len(chosen) == 0:
        raise ValueError(f"no images of split {split!r} in {path}")
    data, offsets = tensors["jpeg"].numpy(), tensors["offsets"].tolist()
    images = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB")).copy()
            ).permute(2, 0, 1)
            for i in chosen.tolist()
        ]
    )
    files = json.loads(metadata["files"])
    return PackedSplit(
        images,
        tensors["attributes"][chosen].float(),
        json.loads(metadata["attribute_names"]),
        [files[i] for i in chosen.tolist()],
    )
