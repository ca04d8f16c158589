"""``POST /generate/infogan``: sweeps of one code, determinism and refusals."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.imaging import base64_pngs, grid_png
from app.models.checkpoint import load_checkpoint
from app.models.infogan import (
    draw_codes,
    sweep_inputs,
)
from app.models.sampling import draw_noise, seeded_generator
from tests.families.gans import SIDE, write_infogan_weights
from tests.families.gans import post_infogan as post

torch.set_num_threads(1)


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    return write_infogan_weights(tmp_path / "weights")


@pytest.fixture
def infogan_client(make_client, weights_dir):
    return make_client(weights_dir=weights_dir, device="cpu")


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
