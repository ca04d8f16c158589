"""ACGAN: architecture, conditioning, on/off pairs, ``POST /generate/acgan`` and its errors, training, evaluation."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from app.imaging import base64_pngs, grid_png
from app.models import build_model
from app.models.acgan import (
    DEFAULT_TOGGLE_STRENGTH,
    ACGANConfig,
    ACGANDiscriminator,
    ACGANGenerator,
    emphasis,
    toggle_pairs,
)
from app.models.attributes import FREQUENCIES_KEY, resolve_attributes
from app.models.checkpoint import load_checkpoint, save_checkpoint
from app.models.preprocess import PreprocessSpec
from app.models.sampling import draw_noise, seeded_generator
from training.__main__ import main
from training.acgan import acgan_recipe, add_arguments, attribute_loss, parse_attribute_weights
from training.evaluate_gans import AttributeJudge, acgan_scores, real_face_toggle_success

from .conftest import TINY_CONFIGS, write_tiny_checkpoint

torch.set_num_threads(1)

NAMES = TINY_CONFIGS["acgan"]["attributes"]  # Smiling, Male, Blond_Hair
FREQUENCIES = torch.tensor([0.9, 0.1, 0.5])
SIDE = 16 + 2  # tiny image side plus the grid's 2-px gutter


def tiny_generator() -> ACGANGenerator:
    torch.manual_seed(0)
    return build_model("acgan", TINY_CONFIGS["acgan"]).eval()


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "weights"
    write_tiny_checkpoint(directory, "acgan", attributes=NAMES, extras={FREQUENCIES_KEY: FREQUENCIES})
    return directory


@pytest.fixture
def acgan_client(make_client, weights_dir):
    return make_client(weights_dir=weights_dir, device="cpu")


def post(client, **body):
    return client.post("/generate/acgan", json=body)


# --- model ----------------------------------------------------------------------------------------------------------


def test_shapes_ranges_and_discriminator_heads():
    generator = tiny_generator()
    noise, attributes = torch.randn(5, 8), torch.randint(0, 2, (5, 3)).float()
    images = generator.generate(noise, attributes)
    assert images.shape == (5, 3, 16, 16) and images.abs().max() <= 1 and torch.isfinite(images).all()
    assert generator.latent_shape == (8,) and generator.attribute_names == NAMES
    real_fake, classes = ACGANDiscriminator(generator.config)(images)
    assert real_fake.shape == (5,) and classes.shape == (5, 3)
    with pytest.raises(ValueError, match=r"attributes must have shape \(5, 3\)"):
        generator.generate(noise, attributes[:, :2])


def test_discriminator_has_no_batchnorm_on_its_first_layer():
    config = ACGANConfig(image_size=16, discriminator_width=4)
    body = ACGANDiscriminator(config).body
    assert isinstance(body[0], nn.Conv2d) and isinstance(body[1], nn.LeakyReLU)
    assert any(isinstance(layer, nn.BatchNorm2d) for layer in body), "later layers keep theirs"
    assert len(config.attributes) == 13 and "Smiling" in config.attributes  # the classic course set


def test_config_refuses_no_or_repeated_attributes():
    with pytest.raises(ValueError, match="at least one"):
        ACGANConfig(attributes=())
    with pytest.raises(ValueError, match="repeat"):
        ACGANConfig(attributes=("Smiling", "Smiling"))


def test_changing_only_an_attribute_changes_the_output_and_same_inputs_same_output():
    generator = tiny_generator()
    noise = draw_noise(generator.latent_shape, 4, seeded_generator(1))
    attributes = torch.zeros(4, 3)
    flipped = attributes.clone()
    flipped[:, 0] = 1
    first = generator.generate(noise, attributes)
    assert torch.equal(first, generator.generate(noise.clone(), attributes.clone()))
    changed = (generator.generate(noise, flipped) - first).abs().flatten(1).amax(1)
    assert (changed > 0).all(), "every image reacts to its attribute"


def test_toggle_pairs_share_noise_and_other_attributes():
    noise, attributes = torch.randn(3, 8), torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    pair_noise, pair_attributes = toggle_pairs(noise, attributes, 1)
    assert torch.equal(pair_noise[:3], noise) and torch.equal(pair_noise[3:], noise)
    assert (pair_attributes[:3, 1] == 0).all() and (pair_attributes[3:, 1] == 1).all()
    others = [0, 2]
    assert torch.equal(pair_attributes[:3, others], attributes[:, others])
    assert torch.equal(pair_attributes[3:, others], attributes[:, others])
    assert torch.equal(attributes[:, 1], torch.tensor([0.0, 1, 1])), "the input is not modified"


def test_checkpoint_round_trip_keeps_attributes_and_frequencies(tmp_path):
    generator = tiny_generator()
    path = save_checkpoint(
        tmp_path / "a.safetensors",
        generator,
        attributes=NAMES,
        dtype=None,
        preprocess=PreprocessSpec(size=16),
        extras={FREQUENCIES_KEY: FREQUENCIES},
    )
    loaded = load_checkpoint(path)
    assert loaded.family == "acgan" and loaded.attributes == NAMES and loaded.model.config == generator.config
    assert torch.equal(loaded.extras[FREQUENCIES_KEY], FREQUENCIES)
    noise, attributes = torch.randn(2, 8), torch.ones(2, 3)
    assert torch.equal(loaded.model.generate(noise, attributes), generator.generate(noise, attributes))


# --- API ------------------------------------------------------------------------------------------------------------


def expected_inputs(seed: int, n: int, requested: dict[str, bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the route draws for a request: noise first, then the open attributes, from one seeded generator."""
    rng = seeded_generator(seed)
    noise = draw_noise((8,), n, rng)
    return noise, resolve_attributes(requested, NAMES, FREQUENCIES, n, rng)


def test_json_reports_every_attribute_and_honours_requests(acgan_client, weights_dir):
    response = post(acgan_client, n=4, seed=3, attributes={"Smiling": False, "Blond_Hair": True}, format="json")
    assert response.status_code == 200 and response.headers["x-seed"] == "3"
    body = response.json()
    assert body["model"] == "acgan" and body["seed"] == 3 and len(body["images"]) == 4 and body["toggle"] is None
    assert [sorted(vector) for vector in body["attributes"]] == [sorted(NAMES)] * 4
    assert all(vector["Smiling"] is False and vector["Blond_Hair"] is True for vector in body["attributes"])
    # The images are the model's output for exactly the reported vectors.
    noise, vectors = expected_inputs(3, 4, {"Smiling": False, "Blond_Hair": True})
    model = load_checkpoint(weights_dir / "acgan.safetensors").model
    assert body["images"] == base64_pngs(model.generate(noise, vectors))
    assert body["attributes"] == [{name: bool(v) for name, v in zip(NAMES, row.tolist())} for row in vectors]


def test_open_attributes_follow_the_stored_frequencies(acgan_client):
    body = post(acgan_client, n=64, seed=11, format="json").json()
    smiling = sum(vector["Smiling"] for vector in body["attributes"])
    male = sum(vector["Male"] for vector in body["attributes"])
    assert smiling > 45 and male < 19  # frequencies 0.9 and 0.1


def test_png_same_seed_same_bytes_and_attribute_header(acgan_client):
    first = post(acgan_client, n=5, seed=21, attributes={"Male": True})
    second = post(acgan_client, n=5, seed=21, attributes={"Male": True})
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == second.content and first.headers["x-attributes"] == second.headers["x-attributes"]
    assert post(acgan_client, n=5, seed=22, attributes={"Male": True}).content != first.content
    header = json.loads(first.headers["x-attributes"])
    assert header["names"] == NAMES and len(header["rows"]) == 5
    assert all(row[1] == "1" for row in header["rows"])
    with Image.open(io.BytesIO(first.content)) as grid:
        assert grid.size == (5 * SIDE + 2, SIDE + 2)


def test_toggle_gives_off_then_on_rows_from_the_same_noise(acgan_client, weights_dir):
    response = post(acgan_client, n=3, seed=5, toggle="Smiling", attributes={"Smiling": True}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["toggle"] == "Smiling" and len(body["images"]) == 6 and len(body["attributes"]) == 6
    off, on = body["attributes"][:3], body["attributes"][3:]
    for before, after in zip(off, on):
        assert before["Smiling"] is False and after["Smiling"] is True
        assert {k: v for k, v in before.items() if k != "Smiling"} == {k: v for k, v in after.items() if k != "Smiling"}
    # Calling the model directly with the shared noise reproduces both rows.
    noise, vectors = expected_inputs(5, 3, {})
    pair_noise, pair_vectors = toggle_pairs(noise, vectors, NAMES.index("Smiling"))
    model = load_checkpoint(weights_dir / "acgan.safetensors").model
    strength = emphasis(len(NAMES), NAMES.index("Smiling"), DEFAULT_TOGGLE_STRENGTH)
    images = model.generate(pair_noise, pair_vectors, strength)
    assert body["images"] == base64_pngs(images) and body["strength"] == DEFAULT_TOGGLE_STRENGTH
    assert not torch.equal(images[:3], images[3:]), "the toggled attribute changes the faces"

    png = post(acgan_client, n=3, seed=5, toggle="Smiling")
    assert png.content == grid_png(images, nrow=3)
    with Image.open(io.BytesIO(png.content)) as grid:
        assert grid.size == (3 * SIDE + 2, 2 * SIDE + 2)
    assert len(json.loads(png.headers["x-attributes"])["rows"]) == 6


def test_toggle_strength_scales_only_the_toggled_attributes_signal(acgan_client, weights_dir):
    noise, vectors = expected_inputs(5, 2, {})
    pair_noise, pair_vectors = toggle_pairs(noise, vectors, NAMES.index("Male"))
    model = load_checkpoint(weights_dir / "acgan.safetensors").model
    for strength in (1.0, 2.5):
        body = post(acgan_client, n=2, seed=5, toggle="Male", strength=strength, format="json").json()
        assert body["strength"] == strength
        assert body["images"] == base64_pngs(model.generate(pair_noise, pair_vectors, torch.tensor([1, strength, 1])))
    as_trained = post(acgan_client, n=2, seed=5, toggle="Male", strength=1, format="json").json()["images"]
    assert as_trained == base64_pngs(model.generate(pair_noise, pair_vectors)), "strength 1 is the model as trained"
    assert post(acgan_client, n=2, seed=5, format="json").json()["strength"] is None


def test_strength_changes_the_condition_signal_of_the_model():
    generator = tiny_generator()
    noise, attributes = torch.randn(2, 8), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    doubled = emphasis(3, 1, 2.0)
    assert doubled.tolist() == [1.0, 2.0, 1.0]
    assert not torch.equal(generator.generate(noise, attributes, doubled), generator.generate(noise, attributes))
    assert torch.equal(generator.generate(noise, attributes, torch.ones(3)), generator.generate(noise, attributes))


@pytest.mark.parametrize(
    "body, field, fragment",
    [
        ({"attributes": {"Sparkly": True}}, "attributes", "Sparkly"),
        ({"attributes": {"Bald": True}}, "attributes", "Bald"),  # a CelebA name, but not trained
        ({"toggle": "Bald"}, "toggle", "Bald"),
        ({"toggle": "smiling"}, "toggle", "smiling"),
    ],
)
def test_unknown_or_untrained_names_are_422_listing_the_valid_ones(acgan_client, body, field, fragment):
    response = post(acgan_client, n=2, **body)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and fragment in detail["msg"]
    assert all(name in detail["msg"] for name in NAMES)


@pytest.mark.parametrize(
    "body",
    [
        {"n": 0},
        {"n": 65},
        {"n": 33, "toggle": "Smiling"},
        {"n": -2},
        {"n": 2, "colour": "red"},
        {"n": "2"},
        {"n": 2, "seed": -1},
        {"n": 2, "format": "gif"},
        {"n": 2, "attributes": {"Smiling": "yes"}},
        {"n": 2, "attributes": {"Smiling": 1}},
        {"n": 2, "attributes": ["Smiling"]},
        {"n": 2, "toggle": 3},
        {"n": 2, "toggle": "Smiling", "strength": 0},
        {"n": 2, "toggle": "Smiling", "strength": 3.5},
        {"n": 2, "toggle": "Smiling", "strength": -1},
        {"n": 2, "toggle": "Smiling", "strength": "strong"},
    ],
)
def test_bad_requests_are_422(acgan_client, body):
    response = acgan_client.post("/generate/acgan", json=body)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_strength_without_a_toggle_is_422_saying_so(acgan_client):
    detail = post(acgan_client, n=2, strength=2).json()["detail"][0]
    assert detail["loc"] == ["body", "strength"] and "only to a toggled attribute" in detail["msg"]


def test_n_limits_are_reported(acgan_client):
    detail = post(acgan_client, n=33, toggle="Smiling").json()["detail"][0]
    assert detail["loc"] == ["body", "n"] and "between 1 and 32" in detail["msg"]
    assert post(acgan_client, n=32, toggle="Smiling").status_code == 200


# --- training and evaluation ----------------------------------------------------------------------------------------


def test_training_smoke_run_is_served(tiny_celeba, tmp_path, monkeypatch, make_client):
    monkeypatch.chdir(tmp_path)  # the split pack cache (.cache/) lands here, not in the repository
    out = tmp_path / "weights" / "acgan.safetensors"
    main(
        [
            "acgan",
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
            "--g-width",
            "4",
            "--d-width",
            "4",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--max-steps",
            "3",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--attributes",
            "Male,Smiling",
        ]
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
            "--data",
            "unused",
            "--out",
            "unused",
            "--image-size",
            "16",
            "--latent-dim",
            "8",
            "--g-width",
            "4",
            "--d-width",
            "4",
            "--attributes",
            "Male,Smiling",
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
            [
                "acgan",
                "--data",
                str(tiny_celeba),
                "--out",
                str(tmp_path / "a.safetensors"),
                "--image-size",
                "16",
                "--attributes",
                "Smiling,Sparkly",
                "--max-steps",
                "1",
                "--threads",
                "1",
            ]
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
        AttributeWriter(names), judge, conditions, torch.tensor([0.3, 0.5]), toggle="Smiling", pairs=12, batch_size=7
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


def test_toggle_success_is_reported_at_the_default_strength_and_each_compared_one():
    judge = AttributeJudge(PixelReader(2), ["Male", "Smiling"], image_size=8)
    metrics, _ = acgan_scores(
        TimidSmiles(["Male", "Smiling"]), judge, torch.zeros(4, 2), torch.tensor([0.5, 0.5]), toggle="Smiling", pairs=10
    )
    assert metrics["toggle_success_by_strength"] == {"1": 0.0, "1.25": 0.0, "1.5": 1.0, "2": 1.0}
    assert metrics["toggle_strength"] == DEFAULT_TOGGLE_STRENGTH == 1.5 and metrics["toggle_success"] == 1.0
    weak, _ = acgan_scores(
        TimidSmiles(["Male", "Smiling"]),
        judge,
        torch.zeros(4, 2),
        torch.tensor([0.5, 0.5]),
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
        torch.tensor([0.5, 0.5]),
        toggle="Smiling",
        pairs=40,
    )
    assert metrics["toggle_success_by_other_attribute"] == {"Male": [1.0, 0.0]}
    assert 0 < metrics["toggle_success"] < 1


def test_acgan_scores_need_the_classifier_to_know_the_attributes():
    from training.evaluate import EvaluationError

    judge = AttributeJudge(PixelReader(1), ["Male"], image_size=8)
    with pytest.raises(EvaluationError, match="does not judge.*Smiling"):
        acgan_scores(AttributeWriter(["Male", "Smiling"]), judge, torch.zeros(2, 2), None, toggle="Smiling", pairs=2)


def test_evaluate_command_with_a_tiny_classifier(tiny_celeba, tmp_path, weights_dir, monkeypatch):
    if "classifier" not in TINY_CONFIGS:
        pytest.skip("no tiny classifier config yet")
    classifier = write_tiny_checkpoint(tmp_path / "judge", "classifier")
    out = tmp_path / "eval"
    main(
        [
            "evaluate",
            str(weights_dir / "acgan.safetensors"),
            "--data",
            str(tiny_celeba),
            "--out",
            str(out),
            "--classifier",
            str(classifier),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--cache-dir",
            str(tmp_path / "packs"),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
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
            [
                "evaluate",
                str(weights_dir / "acgan.safetensors"),
                "--data",
                str(tiny_celeba),
                "--out",
                str(tmp_path / "eval"),
                "--device",
                "cpu",
                "--cache-dir",
                str(tmp_path / "packs"),
            ]
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
