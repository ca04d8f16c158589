"""Convert facenet-pytorch's bundled MTCNN weights (pickled ``.pt`` state dicts) into the one safetensors file the
service loads, ``app/models/data/mtcnn.safetensors``. Run once, by a maintainer, after installing the exact version
the Makefile pins::

    .venv/bin/pip install --no-deps facenet-pytorch==2.6.0
    .venv/bin/python scripts/convert_mtcnn.py

The ``.pt`` files are read with ``torch.load(weights_only=True)`` (tensors only, no arbitrary objects) from the
installed package's folder, found without importing it (importing pulls in torchvision and requests); the nets are
then loaded strictly into this project's own declarations (:mod:`app.models.detector`) before anything is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from app.models.checkpoint import write_safetensors
from app.models.detector import DETECTOR_WEIGHTS, NETS, load_detector

SOURCE_VERSION = "facenet-pytorch==2.6.0"


def package_data_dir() -> Path:
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or spec.origin is None:
        raise SystemExit(f"facenet_pytorch is not installed: pip install --no-deps {SOURCE_VERSION}")
    return Path(spec.origin).parent / "data"


def convert(data_dir: Path, out: Path) -> Path:
    tensors = {}
    for name, cls in NETS.items():
        state = torch.load(data_dir / f"{name}.pt", map_location="cpu", weights_only=True)
        cls().load_state_dict(state, strict=True)  # refuse anything that is not exactly this architecture
        tensors.update({f"{name}.{key}": value.float().contiguous() for key, value in state.items()})
    metadata = {
        "source": SOURCE_VERSION,
        "licence": "MIT (facenet-pytorch, Tim Esler); MTCNN by Zhang, Zhang, Li and Qiao (2016)",
        "nets": json.dumps(sorted(NETS)),
    }
    write_safetensors(out, tensors, metadata)
    load_detector(out)  # round trip: the file loads strictly
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with pnet.pt, rnet.pt, onet.pt")
    parser.add_argument("--out", type=Path, default=DETECTOR_WEIGHTS)
    args = parser.parse_args()
    path = convert(args.data_dir or package_data_dir(), args.out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
