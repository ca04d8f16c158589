"""glow-targets' own arithmetic: diversity as mean pairwise cosine distance, the guard's frame counts, and samples
drawn at the temperatures asked for."""

import argparse

import pytest
import torch

from app.models.pipelines.glow import DEFAULT_TEMPERATURE
from tests.families.glow import random_images, tiny_glow_pipeline
from training.fid import pipeline_samples
from training.glow_targets import manipulation_guard, mean_pairwise_cosine_distance, temperature_list


def test_mean_pairwise_cosine_distance():
    same = torch.ones((5, 3))
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0)
    orthogonal = torch.eye(4)
    assert mean_pairwise_cosine_distance(orthogonal) == pytest.approx(1)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine_distance(opposite) == pytest.approx(2)


@pytest.mark.parametrize(("limits", "expect_refusals"), [(None, False), (torch.tensor([1e-4, 1e-5]), True)])
def test_manipulation_guard_counts_every_frame(tmp_path, limits, expect_refusals):
    pipeline = tiny_glow_pipeline(tmp_path, limits)
    figures = manipulation_guard(pipeline, random_images(3, 16))
    assert figures["manipulation_frames"] == 3 * 4 * 2
    shares = [figures[f"manipulation_frames_{kind}"] for kind in ("ok", "reduced", "refused")]
    assert sum(shares) == pytest.approx(1, abs=1e-3)
    assert (figures["manipulation_frames_refused"] > 0) == expect_refusals
    assert set(figures["manipulation_requests_with_a_refused_frame"]) == {"Smiling", "Male", "Eyeglasses", "Young"}


def test_temperatures_are_read_as_a_comma_separated_list_within_the_services_range():
    assert temperature_list("0.5, 0.7,") == (0.5, 0.7)
    for wrong in ("0.5,warm", "2.0", "-0.1"):
        with pytest.raises(argparse.ArgumentTypeError):
            temperature_list(wrong)


def test_samples_are_drawn_at_the_requested_temperature(tmp_path):
    pipeline = tiny_glow_pipeline(tmp_path)
    cold = pipeline_samples(pipeline, 3, seed=1, temperature=0.0)
    served = pipeline_samples(pipeline, 3, seed=1)
    assert torch.equal(served, pipeline_samples(pipeline, 3, seed=1, temperature=DEFAULT_TEMPERATURE))
    assert not torch.equal(cold, served)
    warm = pipeline_samples(pipeline, 3, seed=1, temperature=1.0)
    # the same noise scaled further from the prior's mean: warmer samples spread further from the cold ones
    assert (warm - cold).abs().mean() > (served - cold).abs().mean()
