"""InfoGAN: architecture, code sweeps, ``POST /generate/infogan`` and its errors, training, evaluation."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from app.imaging import base64_pngs, grid_png
from app.models import build_model
from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.infogan import (
    InfoGANConfig,
    InfoGANDiscriminator,
    InfoGANGenerator,
    draw_codes,
    recognizer_extras,
    recognizer_from_extras,
    sweep_inputs,
)
from app.models.preprocess import PreprocessSpec
from app.models.sampling import draw_noise, seeded_generator
from training.__main__ import main
from training.evaluate_gans import AttributeJudge, code_effects, q_accuracy, top_effects
from training.infogan import add_arguments, infogan_recipe

from .conftest import TINY_CONFIGS, write_tiny_checkpoint

torch.set_num_threads(1)

CONFIG = TINY_CONFIGS["infogan"]  # 3 codes of 10 categories, noise 8, 16 px
SIDE = 16 + 2  # tiny image side plus the grid's 2-px gutter


def tiny_generator() -> InfoGANGenerator:
    torch.manual_seed(0)
    return build_model("infogan", CONFIG).eval()


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "weights"
    write_tiny_checkpoint(directory, "infogan")
    return directory


@pytest.fixture
def infogan_client(make_client, weights_dir):
    return make_client(weights_dir=weights_dir, device="cpu")


def post(client, **body):
    return client.post("/generate/infogan", json=body)


# --- model ----------------------------------------------------------------------------------------------------------


def test_shapes_ranges_and_d_q_heads():
    generator = tiny_generator()
    assert generator.noise_shape == (8,) and generator.n_codes == 3 and generator.n_categories == 10
    noise, codes = torch.randn(5, 8), draw_codes(5, 3, 10, seeded_generator(0))
    images = generator.generate(noise, codes)
    assert images.shape == (5, 3, 16, 16) and images.abs().max() <= 1 and torch.isfinite(images).all()
    discriminator = InfoGANDiscriminator(generator.config)
    real_fake, code_logits = discriminator(images)
    assert real_fake.shape == (5,) and code_logits.shape == (5, 3, 10)
    assert torch.equal(discriminator.eval().real_fake(images), discriminator(images)[0])
    with pytest.raises(ValueError, match=r"codes must have shape \(5, 3\)"):
        generator.generate(noise, codes[:, :2])


def test_paper_setting_is_the_default():
    config = InfoGANConfig()
    assert (config.noise_dim, config.n_codes, config.n_categories) == (128, 10, 10)
    generator = InfoGANGenerator(config).eval()
    assert generator.net[0].in_channels == 128 + 10 * 10  # noise and one-hot codes enter the ladder together
    assert generator.generate(torch.randn(2, 128), torch.zeros(2, 10, dtype=torch.long)).shape == (2, 3, 64, 64)
    slopes = {m.negative_slope for m in InfoGANDiscriminator(config).modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}
    with pytest.raises(ValueError, match="categories"):
        InfoGANConfig(n_categories=1)


def test_changing_only_a_code_changes_the_output_and_same_inputs_same_output():
    generator = tiny_generator()
    noise = draw_noise(generator.noise_shape, 4, seeded_generator(1))
    codes = torch.zeros(4, 3, dtype=torch.long)
    moved = codes.clone()
    moved[:, 2] = 7
    first = generator.generate(noise, codes)
    assert torch.equal(first, generator.generate(noise.clone(), codes.clone()))
    assert ((generator.generate(noise, moved) - first).abs().flatten(1).amax(1) > 0).all()


def test_sweep_inputs_walk_one_code_and_keep_the_rest():
    noise, codes = torch.randn(2, 8), torch.tensor([[1, 2, 3], [4, 5, 6]])
    swept_noise, swept_codes = sweep_inputs(noise, codes, 1, 10)
    assert swept_noise.shape == (20, 8) and swept_codes.shape == (20, 3)
    for row in range(2):
        block = slice(10 * row, 10 * row + 10)
        assert (swept_noise[block] == noise[row]).all()
        assert swept_codes[block, 1].tolist() == list(range(10))
        assert (swept_codes[block, 0] == codes[row, 0]).all() and (swept_codes[block, 2] == codes[row, 2]).all()


def test_checkpoint_round_trip_with_recognizer_extras(tmp_path):
    generator = tiny_generator()
    torch.manual_seed(1)
    recognizer = InfoGANDiscriminator(generator.config)
    path = save_checkpoint(
        tmp_path / "i.safetensors",
        generator,
        dtype=None,
        preprocess=PreprocessSpec(size=16),
        extras=recognizer_extras(recognizer, dtype=torch.float32),
    )
    loaded = load_checkpoint(path)
    assert loaded.family == "infogan" and loaded.model.config == generator.config
    noise, codes = torch.randn(3, 8), draw_codes(3, 3, 10, seeded_generator(2))
    assert torch.equal(loaded.model.generate(noise, codes), generator.generate(noise, codes))
    rebuilt = recognizer_from_extras(loaded.model.config, loaded.extras)
    for name, tensor in recognizer.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    assert recognizer_from_extras(loaded.model.config, {}) is None


# --- API ------------------------------------------------------------------------------------------------------------


def test_json_sweep_rows_match_the_model(infogan_client, weights_dir):
    response = post(infogan_client, seed=4, rows=3, code=1, format="json")
    assert response.status_code == 200 and response.headers["x-seed"] == "4"
    body = response.json()
    assert body["model"] == "infogan" and body["seed"] == 4 and body["code"] == 1
    assert len(body["rows"]) == 3 and all(len(row) == 10 for row in body["rows"])
    # Row r is noise r with its other codes fixed, code 1 walked through the 10 categories.
    rng = seeded_generator(4)
    noise, codes = draw_noise((8,), 3, rng), draw_codes(3, 3, 10, rng)
    model = load_checkpoint(weights_dir / "infogan.safetensors").model
    images = model.generate(*sweep_inputs(noise, codes, 1, 10))
    expected = base64_pngs(images)
    assert body["rows"] == [expected[0:10], expected[10:20], expected[20:30]]
    assert len(set(body["rows"][0])) > 1, "the categories give different faces"


def test_png_grid_is_rows_by_categories_and_deterministic(infogan_client):
    first = post(infogan_client, seed=9, rows=4, code=2)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == post(infogan_client, seed=9, rows=4, code=2).content
    assert first.content != post(infogan_client, seed=9, rows=4, code=0).content
    with Image.open(io.BytesIO(first.content)) as grid:
        assert grid.size == (10 * SIDE + 2, 4 * SIDE + 2)
    random_seed = post(infogan_client, rows=1)
    assert random_seed.status_code == 200 and int(random_seed.headers["x-seed"]) >= 0


def test_png_is_the_grid_of_the_json_images(infogan_client, weights_dir):
    model = load_checkpoint(weights_dir / "infogan.safetensors").model
    rng = seeded_generator(5)
    noise, codes = draw_noise((8,), 2, rng), draw_codes(2, 3, 10, rng)
    images = model.generate(*sweep_inputs(noise, codes, 0, 10))
    assert post(infogan_client, seed=5, rows=2, code=0).content == grid_png(images, nrow=10)


@pytest.mark.parametrize("code", [3, -1, 10])
def test_code_out_of_range_is_422_with_the_valid_range(infogan_client, code):
    response = post(infogan_client, seed=1, rows=1, code=code)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "code"] and "between 0 and 2" in detail["msg"]


@pytest.mark.parametrize(
    "body",
    [
        {"rows": 0},
        {"rows": 17},
        {"rows": "3"},
        {"rows": 2.5},
        {"code": "1"},
        {"seed": -5},
        {"format": "gif"},
        {"rows": 2, "n": 4},
        {"rows": 2, "codes": [1, 2]},
    ],
)
def test_bad_requests_are_422(infogan_client, body):
    response = post(infogan_client, **body)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_rows_limit_is_reported(infogan_client):
    detail = post(infogan_client, rows=17).json()["detail"][0]
    assert detail["loc"] == ["body", "rows"] and "16" in detail["msg"]
    assert post(infogan_client, rows=16, format="json").status_code == 200


# --- training and evaluation ----------------------------------------------------------------------------------------


def test_training_smoke_run_is_served_and_evaluated(tiny_celeba, tmp_path, monkeypatch, make_client):
    monkeypatch.chdir(tmp_path)  # the split pack cache (.cache/) lands here, not in the repository
    out = tmp_path / "weights" / "infogan.safetensors"
    main(
        [
            "infogan",
            "--data",
            str(tiny_celeba),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
            "--image-size",
            "16",
            "--latent-dim",
            "8",
            "--codes",
            "3",
            "--categories",
            "5",
            "--q-hidden",
            "8",
            "--g-width",
            "4",
            "--d-width",
            "4",
            "--batch-size",
            "4",
            "--max-steps",
            "3",
            "--threads",
            "1",
            "--device",
            "cpu",
        ]
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
    extra = []
    if "classifier" in TINY_CONFIGS:
        extra = ["--classifier", str(write_tiny_checkpoint(tmp_path / "judge", "classifier"))]
    main(
        [
            "evaluate",
            str(out),
            "--data",
            str(tiny_celeba),
            "--out",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
            "--threads",
            "1",
            *extra,
        ]
    )
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
        [
            "--data",
            "unused",
            "--out",
            "unused",
            "--image-size",
            "16",
            "--latent-dim",
            "8",
            "--codes",
            "3",
            "--g-width",
            "4",
            "--d-width",
            "4",
            "--q-hidden",
            "8",
        ]
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


def test_code_effects_find_the_code_that_moves_an_attribute():
    judge = AttributeJudge(Brightness(), ["Bright", "Constant"], image_size=8)
    means, spread, sweeps = code_effects(CodePainter(), judge, rows=6, batch_size=7)
    assert means.shape == (3, 5, 2) and spread.shape == (3, 2)
    assert spread[0, 0] > 0.99 and spread[1:].abs().max() < 1e-6 and spread[:, 1].abs().max() < 1e-6
    assert len(sweeps) == 3 and sweeps[0].shape == (4 * 5, 3, 8, 8)
    report = top_effects(means, spread, judge.attributes, top=2)
    assert report["0"][0] == {
        "attribute": "Bright",
        "spread": pytest.approx(1.0, abs=1e-3),
        "low_category": 0,
        "high_category": 4,
    }
    assert [entry["attribute"] for entry in report["1"]] and len(report["2"]) == 2


def test_q_accuracy_is_a_share_per_code():
    generator = tiny_generator()
    overall, per_code = q_accuracy(generator, InfoGANDiscriminator(generator.config), samples=30, batch_size=16)
    assert 0 <= overall <= 1 and len(per_code) == 3 and all(0 <= v <= 1 for v in per_code)
