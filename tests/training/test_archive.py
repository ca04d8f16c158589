"""The faces archive for GPU hosts: ``python -m training pack``; any trainer reads it in place of a folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from app.models.checkpoint import load_checkpoint, write_safetensors
from app.models.preprocess import PreprocessSpec
from tests.conftest import write_tiny_checkpoint
from tests.families.gans import write_acgan_weights
from training.__main__ import main
from training.data import load_labels, load_split
from training.evaluate import EvaluationError, attribute_names


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


def test_evaluate_reads_an_archive_like_the_folder(tiny_celeba, tmp_path):
    """The labels come from the archive without decoding, and the scores match the folder's."""
    weights_dir = write_acgan_weights(tmp_path / "weights")
    size = load_checkpoint(weights_dir / "acgan.safetensors").preprocess.size
    archive = tmp_path / "faces.safetensors"
    main(["pack", "--data", str(tiny_celeba), "--out", str(archive), "--quality", "95", "--image-size", str(size)])
    for split in ("train", "valid"):
        names, labels = load_labels(archive, split)
        folder_names, folder_labels = load_labels(tiny_celeba, split)
        assert names == folder_names and torch.equal(labels, folder_labels)
    assert attribute_names(archive) == attribute_names(tiny_celeba)

    classifier = write_tiny_checkpoint(tmp_path / "judge", "classifier")
    scores = {}
    for name, data in (("folder", tiny_celeba), ("archive", archive)):
        checkpoint = tmp_path / f"acgan-{name}.safetensors"
        shutil.copy(weights_dir / "acgan.safetensors", checkpoint)
        arguments = ["evaluate", str(checkpoint), "--data", str(data), "--out", str(tmp_path / name)]
        main([*arguments, "--classifier", str(classifier), "--threads", "1", "--cache-dir", str(tmp_path / "packs")])
        scores[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    # the same labels ask for the same samples: every generated-sample score is identical
    for key in ("classifier_agreement", "toggle_success"):
        assert scores["archive"][key] == scores["folder"][key], key
    assert abs(scores["archive"]["classifier_agreement_real"] - scores["folder"]["classifier_agreement_real"]) < 0.1


def test_a_file_that_is_not_an_archive_is_refused_by_name(tmp_path):
    not_archive = tmp_path / "weights.safetensors"
    write_safetensors(not_archive, {"x": torch.zeros(1)}, {"family": "dcgan"})
    with pytest.raises(EvaluationError, match="not a faces archive"):
        attribute_names(not_archive)
    with pytest.raises(ValueError, match="not a faces archive"):
        load_labels(not_archive, "valid")
