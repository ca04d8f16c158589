"""The faces archive for GPU hosts: ``python -m training pack``; any trainer reads it in place of a folder."""

from __future__ import annotations

import torch

from app.models.preprocess import PreprocessSpec
from training.__main__ import main
from training.data import load_split


def test_an_archive_holds_every_split_and_trains_like_the_folder(tiny_celeba, tmp_path):
    archive = tmp_path / "faces.safetensors"
    main(["pack", "--data", str(tiny_celeba), "--out", str(archive), "--quality", "95"])
    spec = PreprocessSpec()
    for split in ("train", "valid"):
        packed, folder = load_split(archive, split, spec), load_split(tiny_celeba, split, spec, cache_dir=None)
        assert packed.files == folder.files and torch.equal(packed.attributes, folder.attributes)
        # JPEG at quality 95 of flat-coloured faces: within a few levels of the folder's pixels
        assert (packed.images.int() - folder.images.int()).abs().float().mean() < 3
    out = tmp_path / "vae.safetensors"
    main(
        ["vae", "--data", str(archive), "--out", str(out), "--run-dir", str(tmp_path / "run"), "--epochs", "1"]
        + ["--widths", "4,8", "--latent-dim", "6", "--batch-size", "4", "--max-steps", "2", "--threads", "1"]
    )
    assert out.is_file()
