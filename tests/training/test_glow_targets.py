"""glow-targets' own arithmetic: diversity as mean pairwise cosine distance, and the guard's frame counts."""

import pytest
import torch

from tests.families.glow import random_images, tiny_glow_pipeline
from training.glow_targets import manipulation_guard, mean_pairwise_cosine_distance


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
