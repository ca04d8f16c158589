"""ACGAN training and evaluation: the attribute loss, smoke runs the service serves, the evaluator's scores."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from app.models.acgan import (
    DEFAULT_TOGGLE_STRENGTH,
)
from app.models.attributes import FREQUENCIES_KEY, LABEL_VECTORS_KEY, IndependentAttributes, unpack_label_vectors
from app.models.checkpoint import load_checkpoint
from app.models.sampling import seeded_generator
from tests.conftest import TINY_CONFIGS, cli, flags, write_tiny_checkpoint
from tests.families.gans import ACGAN_NAMES as NAMES
from tests.families.gans import SIDE, write_acgan_weights
from tests.families.gans import post_acgan as post
from training.__main__ import main
from training.acgan import acgan_recipe, add_arguments, attribute_loss, parse_attribute_weights
from training.attribute_judge import AttributeJudge
from training.evaluate_gans import acgan_scores, real_face_toggle_success

torch.set_num_threads(1)


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    return write_acgan_weights(tmp_path / "weights")


# --- training and evaluation ----------------------------------------------------------------------------------------


def test_training_smoke_run_is_served(tiny_celeba, tmp_path, monkeypatch, make_client):
    monkeypatch.chdir(tmp_path)  # the split pack cache (.cache/) lands here, not in the repository
    out = tmp_path / "weights" / "acgan.safetensors"
    main(
        cli(
            "acgan",
            data=tiny_celeba,
            out=out,
            run_dir=tmp_path / "run",
            image_size=16,
            latent_dim=8,
            g_width=4,
            d_width=4,
            batch_size=4,
            epochs=2,
            max_steps=3,
            threads=1,
            device="cpu",
            attributes=["Male", "Smiling"],
        )
    )

    checkpoint = load_checkpoint(out)
    assert checkpoint.family == "acgan" and checkpoint.attributes == ["Male", "Smiling"]
    assert checkpoint.config["attributes"] == ["Male", "Smiling"] and checkpoint.training["steps"] == 3
    # The frequencies are the training split's (18 images of the synthetic set).
    lines = (tiny_celeba / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    train = {
        line.split()[0]
        for line in (tiny_celeba / "list_eval_partition.txt").read_text().splitlines()
        if line.split()[1] == "0"
    }
    rows = [line.split() for line in lines[2:] if line.split() and line.split()[0] in train]
    expected = [sum(row[1 + names.index(name)] == "1" for row in rows) / len(rows) for name in ("Male", "Smiling")]
    assert checkpoint.extras[FREQUENCIES_KEY].tolist() == pytest.approx(expected)
    # ... and so are the label vectors the service draws open attributes from, one per training face.
    stored = unpack_label_vectors(checkpoint.extras[LABEL_VECTORS_KEY], 2)
    wanted = sorted((row[1 + names.index("Male")] == "1", row[1 + names.index("Smiling")] == "1") for row in rows)
    assert sorted(tuple(vector) for vector in stored.tolist()) == wanted
    assert {"train_acc_cls_real", "train_acc_cls_fake", "train_acc_real", "train_acc_fake"} <= set(checkpoint.metrics)

    header = (tmp_path / "run" / "losses.csv").read_text().splitlines()[0].split(",")
    assert {"loss_cls_real", "acc_cls_real", "loss_cls_fake", "acc_cls_fake", "acc_real", "acc_fake"} <= set(header)
    assert (tmp_path / "run" / "curves.png").is_file()
    with Image.open(tmp_path / "run" / "samples_epoch001.png") as grid:  # 2 blocks of off/on rows of 8 pairs
        assert grid.size == (8 * SIDE + 2, 4 * SIDE + 2)

    client = make_client(weights_dir=tmp_path / "weights", device="cpu")
    response = post(client, n=2, seed=1, toggle="Smiling", format="json")
    assert response.status_code == 200 and len(response.json()["images"]) == 4
    assert "Blond_Hair" in post(client, n=1, toggle="Blond_Hair").json()["detail"][0]["msg"]


def test_attribute_loss_is_the_vector_log_likelihood_summed_over_attributes():
    # Uninformed logits: each attribute costs ln 2, so a vector of A attributes costs A ln 2, whatever the batch.
    for attributes in (1, 13):
        target = (torch.rand(5, attributes) < 0.5).float()
        loss = attribute_loss(torch.zeros(5, attributes), target)
        assert loss.item() == pytest.approx(attributes * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    confident = torch.tensor([[8.0, -8.0]])
    assert (
        attribute_loss(confident, torch.tensor([[1.0, 0.0]]))
        < 1e-3
        < attribute_loss(confident, torch.tensor([[0.0, 1.0]]))
    )


def test_attribute_weights_scale_only_the_named_terms():
    names = ("Male", "Smiling", "Bangs")
    weights = parse_attribute_weights("Smiling=3, Bangs=0", names)
    assert weights.tolist() == [1.0, 3.0, 0.0]
    assert parse_attribute_weights("  ", names) is None
    logits, target = (
        torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.4]]),
        torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
    )
    terms = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = (terms[:, 0] + 3 * terms[:, 1]).sum() / 2
    assert attribute_loss(logits, target, weights).item() == pytest.approx(expected.item(), rel=1e-6)
    assert attribute_loss(logits, target, torch.ones(3)).item() == pytest.approx(attribute_loss(logits, target).item())


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("Sparkly=2", "'Sparkly', not a trained attribute; trained: Male, Smiling"),
        ("Smiling", "NAME=WEIGHT"),
        ("Smiling=-1", "WEIGHT >= 0"),
        ("Smiling=abc", "'Smiling=abc'"),
        ("Smiling=nan", "WEIGHT >= 0"),
    ],
)
def test_attribute_weights_refuse_bad_items(text, fragment):
    with pytest.raises(SystemExit, match=re.escape(fragment)):
        parse_attribute_weights(text, ("Male", "Smiling"))


@pytest.mark.parametrize(
    "options, expected_weight",
    [([], 1.0), (["--class-weight", "0.5"], 0.5), (["--g-class-weight", "3"], 3.0), (["--g-class-weight", "0"], 0.0)],
)
def test_generator_attribute_weight(options, expected_weight):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *flags(
                data="unused",
                out="unused",
                image_size=16,
                latent_dim=8,
                g_width=4,
                d_width=4,
                attributes=["Male", "Smiling"],
            ),
            *options,
        ]
    )
    names = ["Male", "Smiling"]
    recipe = acgan_recipe(args, names, torch.tensor([[1, 0], [0, 1], [1, 1]]))
    torch.manual_seed(0)
    inputs = recipe.draw_inputs(4, torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]]), torch.Generator().manual_seed(0))
    fake = recipe.generator(*inputs)
    loss, scalars = recipe.generator_loss(recipe.discriminator, fake, inputs)
    assert loss.item() == pytest.approx(scalars["loss_g_adv"] + expected_weight * scalars["loss_cls_fake"], rel=1e-5)


def test_training_refuses_unknown_attributes(tiny_celeba, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="unknown attribute.*Sparkly.*valid: 5_o_Clock_Shadow"):
        main(
            cli(
                "acgan",
                data=tiny_celeba,
                out=tmp_path / "a.safetensors",
                image_size=16,
                attributes=["Smiling", "Sparkly"],
                max_steps=1,
                threads=1,
            )
        )


class AttributeWriter(nn.Module):
    """A stand-in generator that paints its attribute vector into the first pixels: a perfect ACGAN."""

    def __init__(self, names: list[str]):
        super().__init__()
        self.attribute_names, self.latent_shape = names, (4,)
        self.dummy = nn.Parameter(torch.zeros(()))

    def generate(
        self, noise: torch.Tensor, attributes: torch.Tensor, strength: torch.Tensor | None = None
    ) -> torch.Tensor:
        images = torch.zeros(len(noise), 3, 8, 8)
        images[:, 0, 0, : attributes.shape[1]] = (attributes * 2 - 1) * (1 if strength is None else strength)
        return images


class PixelReader(nn.Module):
    """A stand-in classifier reading those pixels back (``sign`` -1 makes it always wrong)."""

    def __init__(self, count: int, sign: float = 1.0):
        super().__init__()
        self.count, self.sign = count, sign

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.sign * 10 * images[:, 0, 0, : self.count]


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_acgan_scores_agreement_and_toggle_success(sign, expected):
    names = ["Male", "Smiling"]
    judge = AttributeJudge(PixelReader(2, sign), ["Male", "Smiling"], image_size=8)
    conditions = torch.randint(0, 2, (40, 2), generator=seeded_generator(0)).float()
    metrics, images = acgan_scores(
        AttributeWriter(names),
        judge,
        conditions,
        IndependentAttributes(names, torch.tensor([0.3, 0.5])),
        toggle="Smiling",
        pairs=12,
        batch_size=7,
    )
    assert metrics["classifier_agreement"] == expected and metrics["toggle_success"] == expected
    assert metrics["classifier_agreement_per_attribute"] == {"Male": expected, "Smiling": expected}
    assert metrics["toggle_attribute"] == "Smiling" and metrics["toggle_pairs"] == 12
    assert images["pair_images"].shape == (20, 3, 8, 8) and images["samples"].shape == (32, 3, 8, 8)


class MaleSuppressesSmiles(AttributeWriter):
    """Writes Smiling only for faces asked not to be Male: a conflict between two conditions."""

    def generate(
        self, noise: torch.Tensor, attributes: torch.Tensor, strength: torch.Tensor | None = None
    ) -> torch.Tensor:
        suppressed = attributes.clone()
        suppressed[:, 1] *= 1 - attributes[:, 0]
        return super().generate(noise, suppressed, strength)


class TimidSmiles(AttributeWriter):
    """Paints Smiling 1.25 lower than asked: "on" reads as on only once its strength exceeds 1.25."""

    def generate(
        self, noise: torch.Tensor, attributes: torch.Tensor, strength: torch.Tensor | None = None
    ) -> torch.Tensor:
        images = super().generate(noise, attributes, strength)
        images[:, 0, 0, 1] -= 1.25
        return images


HALF = IndependentAttributes(["Male", "Smiling"], torch.tensor([0.5, 0.5]))


def test_toggle_success_is_reported_at_the_default_strength_and_each_compared_one():
    judge = AttributeJudge(PixelReader(2), ["Male", "Smiling"], image_size=8)
    metrics, _ = acgan_scores(
        TimidSmiles(["Male", "Smiling"]), judge, torch.zeros(4, 2), HALF, toggle="Smiling", pairs=10
    )
    # TimidSmiles shows a smile only past strength 1.25: each compared strength, and the default, is scored by that.
    by_strength = metrics["toggle_success_by_strength"]
    assert by_strength["1"] == 0.0, "as trained (strength 1) is always among the compared strengths"
    assert by_strength == {key: float(float(key) > 1.25) for key in by_strength} and len(by_strength) > 1
    assert metrics["toggle_strength"] == DEFAULT_TOGGLE_STRENGTH
    assert metrics["toggle_success"] == float(DEFAULT_TOGGLE_STRENGTH > 1.25)
    weak, _ = acgan_scores(
        TimidSmiles(["Male", "Smiling"]),
        judge,
        torch.zeros(4, 2),
        HALF,
        toggle="Smiling",
        pairs=10,
        strength=1.0,
    )
    assert weak["toggle_success"] == 0.0 and weak["toggle_probability_on"] < 0.5


def test_toggle_success_is_split_by_each_other_attribute():
    judge = AttributeJudge(PixelReader(2), ["Male", "Smiling"], image_size=8)
    metrics, _ = acgan_scores(
        MaleSuppressesSmiles(["Male", "Smiling"]),
        judge,
        torch.zeros(4, 2),
        HALF,
        toggle="Smiling",
        pairs=40,
    )
    assert metrics["toggle_success_by_other_attribute"] == {"Male": [1.0, 0.0]}
    assert 0 < metrics["toggle_success"] < 1


def test_acgan_scores_need_the_classifier_to_know_the_attributes():
    from training.evaluate import EvaluationError

    judge = AttributeJudge(PixelReader(1), ["Male"], image_size=8)
    with pytest.raises(EvaluationError, match="does not judge.*Smiling"):
        acgan_scores(AttributeWriter(["Male", "Smiling"]), judge, torch.zeros(2, 2), HALF, toggle="Smiling", pairs=2)


def test_evaluate_command_with_a_tiny_classifier(tiny_celeba, tmp_path, weights_dir, monkeypatch):
    if "classifier" not in TINY_CONFIGS:
        pytest.skip("no tiny classifier config yet")
    classifier = write_tiny_checkpoint(tmp_path / "judge", "classifier")
    out = tmp_path / "eval"
    main(
        cli(
            "evaluate",
            weights_dir / "acgan.safetensors",
            data=tiny_celeba,
            out=out,
            classifier=classifier,
            device="cpu",
            threads=1,
            cache_dir=tmp_path / "packs",
            single_attribute_samples=4,
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    # what users send: each attribute requested alone, on and off, beside real label vectors and the judge's accuracy
    assert metrics["single_attribute_samples"] == 4 and metrics["open_attributes"] == "independent"
    assert set(metrics["single_attribute_per_attribute"]) == set(NAMES)
    for row in metrics["single_attribute_per_attribute"].values():
        assert 0 <= row["requested_alone"] <= 1 and len(row["requested_alone_off_on"]) == 2
        assert set(row) >= {"real_label_vectors", "classifier_balanced_accuracy", "relative"}
    drawn = metrics["male_open_attribute_draws"]
    assert drawn["requested"] == {"Male": True} and drawn["draws"] == 1000
    assert 0 <= metrics["classifier_agreement"] <= 1 and set(metrics["classifier_agreement_per_attribute"]) == set(
        NAMES
    )
    assert metrics["toggle_attribute"] == "Smiling" and 0 <= metrics["toggle_success"] <= 1
    assert 0 <= metrics["classifier_agreement_real"] <= 1
    assert set(metrics["classifier_agreement_real_per_attribute"]) == set(NAMES)
    for name in ("toggle_Smiling.png", "samples.png", "agreement.png"):
        assert (out / name).is_file(), name
    assert load_checkpoint(weights_dir / "acgan.safetensors").metrics["toggle_success"] == metrics["toggle_success"]


def test_evaluate_command_without_a_classifier_says_how_to_give_one(tiny_celeba, tmp_path, weights_dir):
    with pytest.raises(SystemExit, match="--classifier"):
        main(
            cli(
                "evaluate",
                weights_dir / "acgan.safetensors",
                data=tiny_celeba,
                out=tmp_path / "eval",
                device="cpu",
                cache_dir=tmp_path / "packs",
            )
        )


def test_real_face_toggle_success_weights_each_combination_by_its_share():
    # One other attribute, on for 1/4 of the faces. With it off the judge is always right; with it on the judge
    # calls every face "on": right on the toggled-on face, wrong on the toggled-off one, so those pairs all fail.
    toggle = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])
    other = torch.tensor([[0], [0], [0], [0], [1], [1], [0], [0]])
    judged_on = torch.tensor([False, False, True, True, True, True, False, True])
    success, rows = real_face_toggle_success(judged_on, toggle, other)
    assert [row["share"] for row in rows] == pytest.approx([0.75, 0.25])
    assert rows[0]["accuracy"] == [1.0, 1.0] and rows[1]["accuracy"] == [0.0, 1.0]
    assert rows[0]["faces"] == [3, 3] and rows[1]["faces"] == [1, 1]
    assert success == pytest.approx(0.75)
    perfect, _ = real_face_toggle_success(toggle.bool(), toggle, other)
    assert perfect == pytest.approx(1.0)
