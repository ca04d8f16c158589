"""InfoGAN training and evaluation: the shared body and Q's head, smoke runs, code effects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from app.models.checkpoint import load_checkpoint
from app.models.infogan import (
    InfoGANDiscriminator,
    recognizer_from_extras,
)
from tests.conftest import TINY_CONFIGS, cli, flags, write_tiny_checkpoint
from tests.families.gans import SIDE, write_infogan_weights
from tests.families.gans import post_infogan as post
from tests.families.gans import tiny_infogan as tiny_generator
from training.__main__ import main
from training.attribute_judge import AttributeJudge
from training.evaluate_gans import code_effects, q_accuracy, top_effects
from training.infogan import add_arguments, augment_for_q, infogan_recipe

torch.set_num_threads(1)


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    return write_infogan_weights(tmp_path / "weights")


# --- training and evaluation ----------------------------------------------------------------------------------------


def test_training_smoke_run_is_served_and_evaluated(tiny_celeba, tmp_path, monkeypatch, make_client):
    monkeypatch.chdir(tmp_path)  # the split pack cache (.cache/) lands here, not in the repository
    out = tmp_path / "weights" / "infogan.safetensors"
    main(
        cli(
            "infogan",
            data=tiny_celeba,
            out=out,
            run_dir=tmp_path / "run",
            image_size=16,
            latent_dim=8,
            codes=3,
            categories=5,
            q_hidden=8,
            g_width=4,
            d_width=4,
            batch_size=4,
            max_steps=3,
            threads=1,
            device="cpu",
        )
    )

    checkpoint = load_checkpoint(out)
    assert checkpoint.family == "infogan" and checkpoint.training["steps"] == 3
    assert (checkpoint.config["noise_dim"], checkpoint.config["n_codes"], checkpoint.config["n_categories"]) == (
        8,
        3,
        5,
    )
    assert {"train_acc_q", "train_acc_real", "train_acc_fake"} <= set(checkpoint.metrics)
    assert recognizer_from_extras(checkpoint.model.config, checkpoint.extras) is not None
    header = (tmp_path / "run" / "losses.csv").read_text().splitlines()[0].split(",")
    assert {"loss_info", "acc_q", "loss_d_real", "loss_d_fake", "acc_real", "acc_fake"} <= set(header)
    with Image.open(tmp_path / "run" / "samples_epoch001.png") as grid:  # 8 rows sweeping code 0's 5 categories
        assert grid.size == (5 * SIDE + 2, 8 * SIDE + 2)

    client = make_client(weights_dir=tmp_path / "weights", device="cpu")
    body = post(client, seed=2, rows=2, code=2, format="json").json()
    assert len(body["rows"]) == 2 and all(len(row) == 5 for row in body["rows"])
    assert "between 0 and 2" in post(client, rows=1, code=3).json()["detail"][0]["msg"]

    # Evaluation without a classifier still measures Q; with one (when the family has a tiny config) the codes too.
    extra = {}
    if "classifier" in TINY_CONFIGS:
        extra = {"classifier": write_tiny_checkpoint(tmp_path / "judge", "classifier")}
    main(cli("evaluate", out, data=tiny_celeba, out=tmp_path / "eval", device="cpu", threads=1, **extra))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["q_accuracy"] <= 1 and len(metrics["q_accuracy_per_code"]) == 3
    if extra:
        assert set(metrics["code_effects"]) == {"0", "1", "2"} and len(metrics["code_effects"]["0"]) == 3
        assert (tmp_path / "eval" / "code_effects.png").is_file() and (tmp_path / "eval" / "sweep_code2.png").is_file()
    assert load_checkpoint(out).metrics["q_accuracy"] == metrics["q_accuracy"]


class CodePainter(nn.Module):
    """A stand-in generator whose brightness is code 0's category and nothing else."""

    noise_shape, n_codes, n_categories = (4,), 3, 5

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def generate(self, noise: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        level = codes[:, 0].float() / (self.n_categories - 1) * 2 - 1
        return level[:, None, None, None].expand(len(codes), 3, 8, 8).clone()


class Brightness(nn.Module):
    """A stand-in classifier: attribute 0 is "bright", attribute 1 ignores the image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([20 * images.mean((1, 2, 3)), torch.zeros(len(images))], dim=1)


def test_the_d_q_step_trains_q_head_on_the_codes_but_not_the_body():
    """Q's head learns the codes on D's side too, not only through G's step; the shared body stays D's."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        flags(data="unused", out="unused", image_size=16, latent_dim=8, codes=3, g_width=4, d_width=4, q_hidden=8)
    )
    recipe = infogan_recipe(args, [], torch.zeros(0, 40))
    torch.manual_seed(0)
    noise, codes = recipe.draw_inputs(6, torch.zeros(6, 40), torch.Generator().manual_seed(0))
    fake = recipe.generator(noise, codes).detach()
    real = torch.rand(6, 3, 16, 16) * 2 - 1
    d = recipe.discriminator
    loss, _ = recipe.discriminator_loss(d, real, None, fake, (noise, codes))
    other_loss, _ = recipe.discriminator_loss(d, real, None, fake, (noise, (codes + 1) % 10))
    assert loss.item() != pytest.approx(other_loss.item())  # the codes asked of G enter D's loss

    def body_gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        d.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in d.body.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(body_gradients(loss), body_gradients(other_loss))), (
        "the shared body learns the real/fake task only"
    )
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.q_head.parameters())


def test_q_augmentation_moves_each_image_its_own_way_within_the_range():
    images = (torch.rand(1, 3, 16, 16) * 2 - 1).expand(4, 3, 16, 16).contiguous()
    views = augment_for_q(images, 0.125, torch.Generator().manual_seed(0))
    assert views.shape == images.shape
    assert views.min() >= images.min() - 1e-6 and views.max() <= images.max() + 1e-6  # convex combinations only
    assert all(not torch.allclose(views[0], views[i], atol=1e-3) for i in range(1, 4))  # per image, not per batch
    assert torch.equal(views, augment_for_q(images, 0.125, torch.Generator().manual_seed(0)))  # its stream decides
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(augment_for_q(flat, 0.125, torch.Generator().manual_seed(1)), flat)
    # the low-pass: a one-pixel checkerboard (a pattern G could hide a code in) is gone at strength 0
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(1, 3, 16, 16) * 2 - 1
    assert augment_for_q(checker, 0.0, torch.Generator()).abs().max() < 1e-5


def test_code_effects_find_the_code_that_moves_an_attribute():
    judge = AttributeJudge(Brightness(), ["Bright", "Constant"], image_size=8)
    effects = code_effects(CodePainter(), judge, rows=6, batch_size=7)
    assert effects.means.shape == (3, 5, 2) and effects.spread.shape == (3, 2) and effects.row_std.shape == (3, 2)
    spread, row_std = effects.spread, effects.row_std
    assert spread[0, 0] > 0.99 and spread[1:].abs().max() < 1e-6 and spread[:, 1].abs().max() < 1e-6
    # code 0 paints levels -1 .. 1 over its 5 categories in every row, judged about 0, 0, 0.5, 1, 1: deviation sqrt(0.2)
    assert row_std[0, 0].item() == pytest.approx(0.2**0.5, abs=1e-3) and row_std[1:].abs().max() < 1e-6
    assert effects.meaningful_codes() == [0] and effects.meaningful_codes(threshold=0.5) == []
    assert len(effects.sweeps) == 3 and effects.sweeps[0].shape == (4 * 5, 3, 8, 8)
    report = top_effects(effects, judge.attributes, top=2)
    assert report["0"][0] == {
        "attribute": "Bright",
        "std": pytest.approx(0.2**0.5, abs=1e-3),
        "spread": pytest.approx(1.0, abs=1e-3),
        "low_category": 0,
        "high_category": 4,
    }
    assert [entry["attribute"] for entry in report["1"]] and len(report["2"]) == 2


def test_q_accuracy_is_a_share_per_code():
    generator = tiny_generator()
    overall, per_code = q_accuracy(generator, InfoGANDiscriminator(generator.config), samples=30, batch_size=16)
    assert 0 <= overall <= 1 and len(per_code) == 3 and all(0 <= v <= 1 for v in per_code)
