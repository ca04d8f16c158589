"""``python -m training evaluate``: one evaluator interface (each family declares its metrics), FID for every
sampling family through its pipeline with the real faces' statistics cached per split, and the Glow evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.models.attributes import LABEL_VECTORS_KEY
from app.models.checkpoint import load_checkpoint
from app.models.glow import DIRECTIONS_KEY
from app.models.pipelines.base import SAMPLE, families_with
from app.models.pipelines.glow import DEFAULT_TEMPERATURE
from tests.conftest import ATTRIBUTE_NAMES, write_tiny_checkpoint
from training.__main__ import discover_trainers, main
from training.evaluate import EVALUATORS
from training.fid import FrechetInception
from training.label_vectors import label_vectors_for

discover_trainers()


@pytest.fixture
def cheap_fid(monkeypatch):
    """FrechetInception on per-channel means instead of the Inception network (tests/training/test_fid.py runs the
    real one; here the network's minute of CPU per test would only slow the plumbing's tests). Returns the sizes of
    the image sets whose statistics were computed."""
    computed: list[int] = []

    def statistics(self, images):
        computed.append(len(images))
        features = images.double().mean((2, 3)).numpy()
        return {"mu": features.mean(0), "sigma": np.cov(features, rowvar=False)}

    def distance(self, reference, images):
        return float(((self.statistics(images)["mu"] - reference["mu"]) ** 2).sum()) + 1.0

    monkeypatch.setattr(FrechetInception, "__init__", lambda self, device="cpu": None)
    monkeypatch.setattr(FrechetInception, "statistics", statistics)
    monkeypatch.setattr(FrechetInception, "distance", distance)
    return computed


def test_every_sampling_family_has_an_evaluator_that_scores_it_by_fid():
    for family in families_with(SAMPLE):
        spec = EVALUATORS[family]
        assert spec.fid in ("pipeline", "own") and "fid_samples" in spec.metrics, family
        assert spec.metrics, family


def evaluate(checkpoint, data, out, *extra):
    main(["evaluate", str(checkpoint), "--data", str(data), "--out", str(out), "--threads", "1", *extra])
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("family", ["vae", "infogan"])
def test_fid_through_the_pipeline_with_cached_real_statistics(family, tiny_celeba, tmp_path, cheap_fid):
    checkpoint = write_tiny_checkpoint(tmp_path / "w", family)
    options = ["--fid", "--fid-samples", "4", "--fid-cache", str(tmp_path / "fid"), "--tsne-points", "0"]
    first = evaluate(checkpoint, tiny_celeba, tmp_path / "a", *options)
    second = evaluate(checkpoint, tiny_celeba, tmp_path / "b", *options)
    assert cheap_fid == [6, 4, 4]  # the 6 validation faces once: the second run read them from the cache
    assert first["fid_samples"] == second["fid_samples"] > 0 and first["fid_generated_images"] == 4
    assert "--fid-samples 4" in first["evaluate_command"]
    assert load_checkpoint(checkpoint).metrics["fid_samples"] == first["fid_samples"]  # shown by /models
    assert len(list((tmp_path / "fid").glob("valid-6-*.safetensors"))) == 1


def test_glow_evaluator_reports_bits_agreement_manipulation_and_fid(tiny_celeba, tmp_path, cheap_fid):
    torch.manual_seed(0)
    directions = torch.randn(40, 3 * 16 * 16) * 0.5
    glow = write_tiny_checkpoint(tmp_path / "w", "glow", extras={DIRECTIONS_KEY: directions})
    classifier = write_tiny_checkpoint(tmp_path / "w", "classifier")
    metrics = evaluate(
        glow,
        tiny_celeba,
        tmp_path / "eval",
        *("--classifier", str(classifier), "--fid", "--fid-samples", "4", "--single-attribute-samples", "0"),
    )
    assert metrics["valid_bits_per_dim"] > 0
    assert 0 <= metrics["classifier_agreement"] <= 1 and 0 <= metrics["classifier_agreement_real"] <= 1
    assert set(metrics["manipulation_flip_per_attribute"]) == {"Smiling", "Male", "Eyeglasses", "Young"}
    obeyed = metrics["condition_obeyed_per_attribute"]
    assert set(obeyed) == {"Smiling", "Male", "Eyeglasses", "Blond_Hair", "Young"}
    assert all(0 <= value <= 1 for value in obeyed.values()) and metrics["condition_obeyed_min"] == min(obeyed.values())
    assert 0 <= metrics["manipulation_flip"] <= 1 and 0 <= metrics["manipulation_keep"] <= 1
    assert metrics["fid_temperature"] == DEFAULT_TEMPERATURE and metrics["fid_samples"] > 0
    for figure in ("samples.png", "conditional_samples.png", "manipulation.png"):
        assert (tmp_path / "eval" / figure).is_file()
    assert "single_attribute_agreement" not in metrics and "--single-attribute-samples 0" in metrics["evaluate_command"]


def test_glow_evaluator_reports_single_attribute_requests_beside_the_classifiers_accuracy(tiny_celeba, tmp_path):
    """What users send, measured as the ACGAN's evaluator measures it: each of the 40 attributes requested alone, on
    and off, beside real faces' label vectors with it and the classifier's balanced accuracy on the split's faces;
    and a ``Male: true`` request's make-up draws beside the split's men."""
    torch.manual_seed(0)
    extras = {
        DIRECTIONS_KEY: torch.randn(40, 3 * 16 * 16) * 0.5,
        LABEL_VECTORS_KEY: label_vectors_for(list(ATTRIBUTE_NAMES), tiny_celeba),
    }
    glow = write_tiny_checkpoint(tmp_path / "w", "glow", extras=extras)
    classifier = write_tiny_checkpoint(tmp_path / "w", "classifier")
    options = ("--classifier", str(classifier), "--single-attribute-samples", "3", "--no-write-metrics")
    metrics = evaluate(glow, tiny_celeba, tmp_path / "eval", *options)
    assert metrics["open_attributes"] == "joint" and metrics["single_attribute_samples"] == 3
    real = metrics["classifier_agreement_real_per_attribute"]
    assert list(real) == list(ATTRIBUTE_NAMES) and all(0 <= value <= 1 for value in real.values())
    assert metrics["classifier_agreement_real"] == pytest.approx(sum(real.values()) / 40, abs=1e-3)
    assert "--single-attribute-samples 3" in metrics["evaluate_command"]
    per_attribute = metrics["single_attribute_per_attribute"]
    assert list(per_attribute) == list(ATTRIBUTE_NAMES)
    for name, row in per_attribute.items():
        off, on = row["requested_alone_off_on"]
        assert row["requested_alone"] == pytest.approx((off + on) / 2, abs=1e-4), name
        # 3 images per value: each share is a multiple of a third
        assert all(round(3 * share, 3) in (0, 1, 2, 3) for share in (off, on)), name
        accuracy, given, relative = row["classifier_balanced_accuracy"], row["real_label_vectors"], row["relative"]
        assert accuracy is None or 0 <= accuracy <= 1, name
        assert given is None or 0 <= given <= 1, name
        assert relative is None or relative == pytest.approx(row["requested_alone"] / given, abs=1e-3), name
    mean = sum(row["requested_alone"] for row in per_attribute.values()) / 40
    assert metrics["single_attribute_agreement"] == pytest.approx(mean, abs=1e-4)
    relatives = [row["relative"] for row in per_attribute.values() if row["relative"] is not None]
    assert metrics["single_attribute_relative_min"] == pytest.approx(min(relatives))
    assert metrics["single_attribute_below_target"] == sorted(
        name for name, row in per_attribute.items() if row["relative"] is not None and row["relative"] < 0.97
    )
    drawn = metrics["male_open_attribute_draws"]
    assert drawn["requested"] == {"Male": True} and drawn["draws"] == 1000
    assert set(drawn["drawn_rate"]) == {"Wearing_Lipstick", "Heavy_Makeup"}
    assert all(0 <= rate <= 1 for rate in drawn["drawn_rate"].values())
    assert "single_attribute_agreement" not in load_checkpoint(glow).metrics  # --no-write-metrics
