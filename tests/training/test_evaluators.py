"""``python -m training evaluate``: figures, metrics.json, metrics merged into the checkpoint, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.models.checkpoint import load_checkpoint
from app.models.preprocess import PreprocessSpec
from tests.conftest import cli, flags, write_tiny_checkpoint
from training.__main__ import main
from training.data import load_split
from training.evaluate import EvaluationError, evaluator_for
from training.vae import validation_mse

torch.set_num_threads(1)


def run_evaluate(checkpoint: Path, data: Path, out: Path, **options: object) -> None:
    """``evaluate`` on the CPU; ``options`` come last, so they override (argparse keeps the last value)."""
    main(
        [
            *cli(
                "evaluate",
                checkpoint,
                data=data,
                out=out,
                device="cpu",
                threads=1,
                cache_dir=out.parent / "packs",
                tsne_points=6,
            ),
            *flags(**options),
        ]
    )


@pytest.fixture
def vae_checkpoint(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "weights", "vae", preprocess=PreprocessSpec(size=16))


def test_vae_evaluation_writes_figures_metrics_and_updates_checkpoint(vae_checkpoint, tiny_celeba, tmp_path, capsys):
    out = tmp_path / "eval"
    run_evaluate(vae_checkpoint, tiny_celeba, out)

    for name in ("reconstructions.png", "samples.png", "tsne.png", "metrics.json"):
        assert (out / name).is_file(), name
    with Image.open(out / "reconstructions.png") as grid:  # 6 valid faces over their reconstructions, 16 px + padding 2
        assert grid.size == (6 * 18 + 2, 2 * 18 + 2)
    with Image.open(out / "samples.png") as grid:  # 32 samples, 8 per row
        assert grid.size == (8 * 18 + 2, 4 * 18 + 2)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_split"] == "valid"
    assert metrics["valid_images"] == 6
    assert math.isfinite(metrics["valid_mse"]) and 0 < metrics["valid_mse"] < 4  # [-1, 1] pixels: at most 2 ** 2
    assert "valid_mse" in capsys.readouterr().out

    reloaded = load_checkpoint(vae_checkpoint)
    assert reloaded.metrics["valid_mse"] == metrics["valid_mse"]
    assert reloaded.metrics["evaluated_split"] == "valid"
    # The number is the posterior-mean reconstruction MSE on the checkpoint's own preprocessing.
    split = load_split(tiny_celeba, "valid", reloaded.preprocess, cache_dir=None)
    assert validation_mse(reloaded.model, split, torch.device("cpu")) == pytest.approx(metrics["valid_mse"], abs=1e-6)


def test_no_write_metrics_leaves_the_checkpoint_alone(vae_checkpoint, tiny_celeba, tmp_path):
    before = vae_checkpoint.read_bytes()
    run_evaluate(vae_checkpoint, tiny_celeba, tmp_path / "eval", no_write_metrics=True, tsne_points=0, limit=4)
    assert vae_checkpoint.read_bytes() == before
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["valid_images"] == 4
    assert not (tmp_path / "eval" / "tsne.png").exists()


def test_unknown_attribute_is_refused_with_the_valid_names(vae_checkpoint, tiny_celeba, tmp_path):
    with pytest.raises(SystemExit, match=r"unknown attribute 'Beard'; valid attributes: .*Male.*Smiling"):
        run_evaluate(vae_checkpoint, tiny_celeba, tmp_path / "eval", attribute="Beard")
    assert not (tmp_path / "eval").exists()  # refused before any work


def test_family_without_evaluator_is_refused_naming_those_with_one(tiny_celeba, tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path / "weights", "classifier")
    with pytest.raises(
        SystemExit, match=r"no evaluator for family 'classifier'; families with evaluators: .*dcgan.*glow.*vae"
    ):
        run_evaluate(checkpoint, tiny_celeba, tmp_path / "eval")
    with pytest.raises(EvaluationError, match="no evaluator for family 'classifier'"):
        evaluator_for("classifier")
    assert issubclass(EvaluationError, ValueError)


def test_empty_split_and_missing_checkpoint_give_clear_errors(vae_checkpoint, tiny_celeba, tmp_path):
    with pytest.raises(SystemExit, match="no images of split 'test'"):
        run_evaluate(vae_checkpoint, tiny_celeba, tmp_path / "eval", split="test")
    with pytest.raises(SystemExit, match="missing.safetensors: no such file"):
        run_evaluate(tmp_path / "missing.safetensors", tiny_celeba, tmp_path / "eval")
