"""What every registered family must do, run over the registry (timm's habit): a new family gets these tests by
registering its module and its pipeline. Each family's own tests cover what is particular to it."""

from __future__ import annotations

import pytest
import torch

from app.models import list_families
from app.models.checkpoint import load_checkpoint
from app.models.pipelines import ENCODE, SAMPLE, SCORE, build_pipeline, families_with, pipeline_class
from tests.conftest import write_tiny_checkpoint

SAMPLERS = families_with(SAMPLE)


def test_every_family_has_a_pipeline_with_capabilities():
    for family in list_families():
        capabilities = pipeline_class(family).capabilities
        assert capabilities and capabilities <= {SAMPLE, ENCODE, SCORE}, family


@pytest.fixture(scope="module")
def pipelines(tiny_weights):
    return {
        family: build_pipeline(load_checkpoint(tiny_weights / f"{family}.safetensors")) for family in list_families()
    }


@pytest.mark.parametrize("family", list_families())
def test_warm_up_gives_finite_outputs_with_one_row_per_input(family, pipelines):
    pipeline = pipelines[family]
    prepared = pipeline.warmup()
    outputs = pipeline(prepared)
    for output in outputs:
        assert output.device.type == "cpu" and output.shape[0] == prepared.rows
        assert torch.isfinite(output).all()


@pytest.mark.parametrize("family", SAMPLERS)
def test_sampling_is_seeded_in_range_and_row_wise(family, pipelines):
    pipeline = pipelines[family]
    first, again, other = pipeline.sample(3, 11), pipeline.sample(3, 11), pipeline.sample(3, 12)
    assert torch.equal(first, again), "same seed, same images"
    assert not torch.equal(first, other)
    assert first.dim() == 4 and first.shape[1] == 3 and first.shape[0] % 3 == 0
    assert torch.isfinite(first).all() and first.min() >= -1 and first.max() <= 1
    assert first.flatten(1).std(1).min() > 0, "no blank images"
    prepared = pipeline.prepare_samples(3, 11)
    assert all(tensor.device.type == "cpu" for tensor in prepared.inputs), "inputs are drawn on the CPU"
    # Row-wise: the first rows of a larger draw run alone give the same images as inside the larger batch.
    rows = pipeline.run(prepared.operation, tuple(t[:1] for t in prepared.inputs))[0]
    assert (rows - first[:1]).abs().max() < 1e-5


@pytest.mark.parametrize("family", SAMPLERS)
def test_sampling_routes_answer_422_on_a_bad_request(family, client):
    response = client.post(f"/generate/{family}", json={"not_a_field": 1})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "not_a_field"
    response = client.post(f"/generate/{family}", json={"seed": -1})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "seed"


def uploads(face: bytes) -> dict[str, dict]:
    """Every upload route, with a minimal valid multipart request and the family that serves it."""
    image = ("face.jpg", face, "image/jpeg")
    return {
        "/vae/reconstruct": {"family": "vae", "files": [("images", image)]},
        "/classify": {"family": "classifier", "files": [("images", image)]},
        "/glow/interpolate": {"family": "glow", "files": [("face_a", image), ("face_b", image)]},
        "/glow/manipulate": {"family": "glow", "files": [("face", image)], "data": {"attribute": "Smiling"}},
        "/glow/likelihood": {"family": "glow", "files": [("images", image)]},
    }


IMAGE_UPLOAD_ROUTES = ("/vae/reconstruct", "/glow/interpolate", "/glow/manipulate")


def test_every_post_route_answers_503_naming_its_family_when_it_is_not_loaded(make_client, tmp_path, face_bytes):
    write_tiny_checkpoint(tmp_path, "dcgan")  # one model loaded, so the service is up; others are missing
    client = make_client(weights_dir=tmp_path, device="cpu")
    requests = {f"/generate/{family}": {"family": family, "json": {}} for family in SAMPLERS if family != "dcgan"}
    requests.update(uploads(face_bytes[0]))
    # ...and the JSON twin of every image route (app/api/representations.py), with the same request
    images = [path for path in requests if path.startswith("/generate/") or path in IMAGE_UPLOAD_ROUTES]
    requests.update({f"{path}/json": dict(requests[path]) for path in images})
    served = {path for path, operations in client.get("/openapi.json").json()["paths"].items() if "post" in operations}
    assert served - {"/generate/dcgan", "/generate/dcgan/json"} == set(requests), "every POST route is in this table"
    for path, request in requests.items():
        family = request.pop("family")
        response = client.post(path, **request)
        assert response.status_code == 503, (path, response.text)
        assert f"{family!r} is not loaded" in response.json()["detail"], path
