"""The weights manifest (weights/SHA256SUMS): the shipped folder matches it, and the service refuses what does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from app.manifest import MANIFEST, WRITE_COMMAND, main, mismatches, read_manifest, write_manifest

from ..conftest import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_weights_match_their_manifest():
    problems = mismatches(ROOT / "weights")
    assert not problems, (
        "weights/SHA256SUMS does not match the checkpoints in weights/: "
        + "; ".join(problems)
        + f". After replacing checkpoints, regenerate it with `{WRITE_COMMAND} weights` and commit it."
    )


def scale_tensors(path: Path, factor: float) -> None:
    """Tamper with a checkpoint the way the probe did: every weight scaled, still finite, metadata intact."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = {
        name: tensor * factor if tensor.is_floating_point() and not name.startswith("extra.") else tensor
        for name, tensor in load_file(str(path)).items()
    }
    save_file(tensors, str(path), metadata=metadata)


@pytest.fixture
def signed_folder(tmp_path) -> Path:
    for family in ("vae", "dcgan"):
        write_tiny_checkpoint(tmp_path, family)
    write_manifest(tmp_path)
    return tmp_path


def test_write_and_check_round_trip(signed_folder, capsys):
    assert set(read_manifest(signed_folder)) == {"vae.safetensors", "dcgan.safetensors"}
    assert main(["check", str(signed_folder)]) == 0
    scale_tensors(signed_folder / "dcgan.safetensors", 1000)
    (signed_folder / "vae.safetensors").unlink()
    write_tiny_checkpoint(signed_folder, "acgan")
    assert main(["check", str(signed_folder)]) == 1
    err = capsys.readouterr().err
    assert "dcgan.safetensors: sha256 differs" in err and "acgan.safetensors is not listed" in err
    assert "vae.safetensors is listed in SHA256SUMS but missing" in err and WRITE_COMMAND in err


def test_malformed_manifest_is_an_error(tmp_path):
    from app.manifest import ManifestError

    (tmp_path / MANIFEST).write_text("not a digest line\n")
    with pytest.raises(ManifestError, match="line 1"):
        read_manifest(tmp_path)


def test_tampered_checkpoint_is_refused_and_ready_is_503(make_client, signed_folder):
    scale_tensors(signed_folder / "dcgan.safetensors", 1000)
    client = make_client(weights_dir=signed_folder, device="cpu")
    ready = client.get("/ready")
    body = ready.json()
    assert ready.status_code == 503 and body["loaded"] == ["vae"] and body["weights_verified"] == "failed"
    assert body["failed_files"] == {
        "dcgan.safetensors": "dcgan.safetensors: sha256 differs from SHA256SUMS's (refused; "
        "FACEGEN_VERIFY_WEIGHTS=false loads it anyway)"
    }
    assert client.post("/generate/dcgan", json={"n": 1}).status_code == 503


def test_unlisted_checkpoint_is_refused(make_client, signed_folder):
    write_tiny_checkpoint(signed_folder, "acgan")
    body = make_client(weights_dir=signed_folder, device="cpu").get("/ready").json()
    assert "acgan" not in body["loaded"] and "not listed in SHA256SUMS" in body["failed_files"]["acgan.safetensors"]


def test_verification_off_loads_a_mismatch_but_warm_up_catches_scaled_weights(make_client, signed_folder):
    scale_tensors(signed_folder / "dcgan.safetensors", 1000)
    client = make_client(weights_dir=signed_folder, device="cpu", verify_weights=False)
    body = client.get("/ready").json()
    assert body["weights_verified"] == "off" and "dcgan" not in body["loaded"]
    assert "warm-up failed: saturated images" in body["failed_files"]["dcgan.safetensors"]


def test_folder_without_manifest_is_served_unverified(make_client, tmp_path, caplog):
    write_tiny_checkpoint(tmp_path, "vae")
    with caplog.at_level("WARNING"):
        body = make_client(weights_dir=tmp_path, device="cpu").get("/ready").json()
    assert body["status"] == "ready" and body["weights_verified"] == "absent"
    assert "NOT verified" in caplog.text and WRITE_COMMAND in caplog.text
