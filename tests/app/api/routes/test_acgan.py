"""``POST /generate/acgan``: attributes, toggle pairs, strength, determinism and every refusal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.imaging import base64_pngs, grid_png
from app.models.acgan import (
    DEFAULT_TOGGLE_STRENGTH,
    emphasis,
)
from app.models.checkpoint import load_checkpoint
from app.models.pipelines import build_pipeline
from app.models.pipelines.base import Tensors
from tests.families.gans import ACGAN_NAMES as NAMES
from tests.families.gans import SIDE, write_acgan_weights, write_joint_acgan_weights
from tests.families.gans import post_acgan as post
from tests.families.gans import tiny_acgan as tiny_generator

torch.set_num_threads(1)


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    return write_acgan_weights(tmp_path / "weights")


@pytest.fixture
def acgan_client(make_client, weights_dir):
    return make_client(weights_dir=weights_dir, device="cpu")


# --- API ------------------------------------------------------------------------------------------------------------


def pipeline_inputs(weights_dir: Path, n: int, seed: int, requested: dict[str, bool], **options) -> Tensors:
    """The (noise, attribute vectors, condition multipliers) the family's pipeline draws for a request: the pipeline
    owns the draw, so the route's images are compared with the model's output for these inputs."""
    pipeline = build_pipeline(load_checkpoint(weights_dir / "acgan.safetensors"))
    return pipeline.prepare_samples(n, seed, requested, **options).inputs


def test_json_reports_every_attribute_and_honours_requests(acgan_client, weights_dir):
    response = post(acgan_client, n=4, seed=3, attributes={"Smiling": False, "Blond_Hair": True}, format="json")
    assert response.status_code == 200 and response.headers["x-seed"] == "3"
    body = response.json()
    assert body["model"] == "acgan" and body["seed"] == 3 and len(body["images"]) == 4 and body["toggle"] is None
    assert [sorted(vector) for vector in body["attributes"]] == [sorted(NAMES)] * 4
    assert all(vector["Smiling"] is False and vector["Blond_Hair"] is True for vector in body["attributes"])
    # The images are the model's output for exactly the reported vectors.
    noise, vectors, _ = pipeline_inputs(weights_dir, 4, 3, {"Smiling": False, "Blond_Hair": True})
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
    # Both rows of a pair share their noise, and only the toggled attribute's condition is pushed, to the default.
    noise, vectors, multipliers = pipeline_inputs(weights_dir, 3, 5, {"Smiling": True}, toggle="Smiling")
    assert torch.equal(noise[:3], noise[3:]) and body["strength"] == DEFAULT_TOGGLE_STRENGTH
    smiling = NAMES.index("Smiling")
    assert body["attributes"] == [{name: bool(v) for name, v in zip(NAMES, row.tolist())} for row in vectors]
    assert multipliers[:, smiling].eq(DEFAULT_TOGGLE_STRENGTH).all()
    assert multipliers[:, [k for k in range(len(NAMES)) if k != smiling]].eq(1).all()
    model = load_checkpoint(weights_dir / "acgan.safetensors").model
    images = model.generate(noise, vectors, multipliers)
    assert body["images"] == base64_pngs(images)
    assert not torch.equal(images[:3], images[3:]), "the toggled attribute changes the faces"

    png = post(acgan_client, n=3, seed=5, toggle="Smiling")
    assert png.content == grid_png(images, nrow=3)
    with Image.open(io.BytesIO(png.content)) as grid:
        assert grid.size == (3 * SIDE + 2, 2 * SIDE + 2)
    assert len(json.loads(png.headers["x-attributes"])["rows"]) == 6


def test_toggle_strength_scales_only_the_toggled_attributes_signal(acgan_client, weights_dir):
    pair_noise, pair_vectors, _ = pipeline_inputs(weights_dir, 2, 5, {}, toggle="Male")
    model = load_checkpoint(weights_dir / "acgan.safetensors").model
    served = {}
    for strength in (1.0, 2.5):
        body = post(acgan_client, n=2, seed=5, toggle="Male", strength=strength, format="json").json()
        assert body["strength"] == strength
        served[strength] = body["images"]
        assert body["images"] == base64_pngs(model.generate(pair_noise, pair_vectors, torch.tensor([1, strength, 1])))
    assert served[1.0] != served[2.5], "the strength changes the faces"
    assert served[1.0] == base64_pngs(model.generate(pair_noise, pair_vectors)), "strength 1 is the model as trained"
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


# --- open attributes drawn jointly (a checkpoint with label vectors) -----------------------------------------------


@pytest.fixture
def joint_client(make_client, tmp_path):
    return make_client(weights_dir=write_joint_acgan_weights(tmp_path / "joint"), device="cpu")


def test_open_attributes_follow_the_training_faces_given_the_request(joint_client):
    body = post(joint_client, n=16, seed=1, attributes={"Male": True}, format="json").json()
    assert body["warning"] is None
    # every man of the tiny checkpoint's label vectors smiles and none is blond
    assert body["attributes"] == [{"Smiling": True, "Male": True, "Blond_Hair": False}] * 16
    women = post(joint_client, n=16, seed=1, attributes={"Male": False}, format="json").json()["attributes"]
    assert not any(vector["Smiling"] for vector in women) and 0 < sum(v["Blond_Hair"] for v in women) < 16


def test_a_combination_no_training_face_has_is_served_with_a_warning(joint_client):
    request = {"n": 6, "seed": 4, "attributes": {"Male": True, "Blond_Hair": True}}
    body = post(joint_client, **request, format="json")
    assert body.status_code == 200
    warning = body.json()["warning"]
    assert warning.startswith("0 of the 200 training faces have Male=true, Blond_Hair=true")
    assert all(vector["Male"] and vector["Blond_Hair"] for vector in body.json()["attributes"])
    png = post(joint_client, **request)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-warning"] == warning
    assert "x-warning" not in post(joint_client, n=2, seed=4, attributes={"Male": True}).headers


def test_joint_draws_give_the_same_bytes_for_the_same_seed(joint_client):
    first = post(joint_client, n=8, seed=9, attributes={"Blond_Hair": False})
    assert first.content == post(joint_client, n=8, seed=9, attributes={"Blond_Hair": False}).content
    assert (
        first.headers["x-attributes"]
        == post(joint_client, n=8, seed=9, attributes={"Blond_Hair": False}).headers["x-attributes"]
    )
    assert first.content != post(joint_client, n=8, seed=10, attributes={"Blond_Hair": False}).content
    as_json = post(joint_client, n=8, seed=9, attributes={"Blond_Hair": False}, format="json").json()
    assert as_json == post(joint_client, n=8, seed=9, attributes={"Blond_Hair": False}, format="json").json()


def test_a_toggle_pair_shares_one_draw_not_conditioned_on_the_toggled_attribute(joint_client):
    """In the tiny labels every smiler is a man: were the draw conditioned on Smiling (on or off), the pairs' Male
    would follow it. Conditioned on Blond_Hair=false only, both men and women come, and each pair's two rows share
    every attribute but Smiling."""
    body = post(
        joint_client, n=16, seed=2, toggle="Smiling", attributes={"Smiling": True, "Blond_Hair": False}, format="json"
    ).json()
    off, on = body["attributes"][:16], body["attributes"][16:]
    assert body["warning"] is None
    for before, after in zip(off, on):
        assert before["Smiling"] is False and after["Smiling"] is True
        assert before["Male"] == after["Male"] and before["Blond_Hair"] is after["Blond_Hair"] is False
    assert 0 < sum(vector["Male"] for vector in off) < 16
