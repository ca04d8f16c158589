"""What /ready reports about the weights folder: every checkpoint must load (unless relaxed), files by name only."""

from __future__ import annotations

import torch

from app.models.pipelines.base import implausible_images

from ...conftest import write_tiny_checkpoint


def test_one_bad_file_makes_ready_503_by_default(make_client, tmp_path):
    write_tiny_checkpoint(tmp_path, "vae")
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    client = make_client(weights_dir=tmp_path, device="cpu")
    response = client.get("/ready")
    body = response.json()
    assert response.status_code == 503 and body["loaded"] == ["vae"]
    assert "1 checkpoint(s) failed to load" in body["detail"]
    reason = body["failed_files"]["broken.safetensors"]
    assert reason.startswith("broken.safetensors: not a readable safetensors file")
    assert str(tmp_path) not in response.text, "no server path in the answer"
    assert client.post("/generate/vae", json={"n": 1}).status_code == 200, "the good model still serves"


def test_require_all_false_serves_what_loaded(make_client, tmp_path):
    write_tiny_checkpoint(tmp_path, "vae")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    response = make_client(weights_dir=tmp_path, device="cpu", require_all=False).get("/ready")
    assert response.status_code == 200 and "broken.safetensors" in response.json()["failed_files"]


def test_duplicate_family_names_the_other_file_not_its_path(make_client, tmp_path):
    write_tiny_checkpoint(tmp_path, "vae")
    (tmp_path / "vae.safetensors").rename(tmp_path / "a.safetensors")
    write_tiny_checkpoint(tmp_path, "vae")
    response = make_client(weights_dir=tmp_path, device="cpu").get("/ready")
    assert response.json()["failed_files"]["vae.safetensors"].endswith("already loaded from a.safetensors")
    assert str(tmp_path) not in response.text


def test_implausible_images():
    healthy = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    assert implausible_images((healthy,)) is None
    assert implausible_images((torch.rand(2, 40),)) is None, "non-image outputs are only checked for finiteness"
    assert "non-finite" in implausible_images((torch.full((2, 3, 8, 8), float("nan")),))
    constant = healthy.clone()
    constant[1] = 0.25
    assert "constant image" in implausible_images((constant,))
    assert "saturated" in implausible_images((torch.sign(torch.randn(2, 3, 8, 8)),))
