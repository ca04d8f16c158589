"""The checkpoint format: metadata keys, float16 storage, every refusal with its message."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from app.models import build_model
from app.models.checkpoint import (
    REQUIRED_METADATA,
    CheckpointError,
    amend_checkpoint,
    load_checkpoint,
    save_checkpoint,
    update_metrics,
)
from app.models.preprocess import PreprocessSpec
from tests.conftest import TINY_CONFIGS


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("vae", TINY_CONFIGS["vae"])
    path = save_checkpoint(
        tmp_path / "vae.safetensors",
        model,
        preprocess=PreprocessSpec(size=16),
        attributes=["Male"],
        extras={"direction": torch.ones(3)},
    )
    return path, model


def rewrite(path, tensors=None, metadata=None):
    with safe_open(str(path), framework="pt") as handle:
        old_meta = handle.metadata()
    save_file(tensors if tensors is not None else load_file(path), str(path), metadata=metadata or old_meta)


def test_metadata_keys_and_float16_storage(saved):
    path, model = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert handle.get_tensor("decoder.0.weight").dtype == torch.float16
    assert set(REQUIRED_METADATA) <= set(metadata)
    assert metadata["family"] == "vae" and json.loads(metadata["config"])["latent_dim"] == 6
    assert json.loads(metadata["preprocess"])["size"] == 16
    loaded = load_checkpoint(path)
    assert loaded.attributes == ["Male"] and loaded.preprocess == PreprocessSpec(size=16)
    assert torch.equal(loaded.extras["direction"], torch.ones(3)) and len(loaded.sha256) == 64
    # float16 storage rounds weights by at most ~1e-3 relative.
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.allclose(loaded.model.state_dict()[name], tensor, rtol=2e-3, atol=1e-4), name


def test_update_metrics_merges(saved):
    path, _ = saved
    update_metrics(path, {"valid_mse": 0.02})
    update_metrics(path, {"other": 1})
    assert load_checkpoint(path).metrics == {"valid_mse": 0.02, "other": 1}


def test_amend_adds_extras_and_metrics_in_one_write_keeping_the_rest(saved, tmp_path):
    path, model = saved
    update_metrics(path, {"valid_mse": 0.02})
    out = tmp_path / "amended.safetensors"
    merged = amend_checkpoint(path, extras={"units": torch.tensor([1.5, 2.0])}, metrics={"calibrated": 2}, out=out)
    assert merged == {"valid_mse": 0.02, "calibrated": 2}
    amended, original = load_checkpoint(out), load_checkpoint(path)
    assert "units" not in original.extras  # ``out`` leaves the source as it was
    assert torch.equal(amended.extras["units"], torch.tensor([1.5, 2.0]))
    assert torch.equal(amended.extras["direction"], torch.ones(3)) and amended.metrics == merged
    for name, tensor in original.model.state_dict().items():
        assert torch.equal(amended.model.state_dict()[name], tensor), name
    amend_checkpoint(out, extras={"units": torch.zeros(2)})  # replaces in place; metrics kept
    assert torch.equal(load_checkpoint(out).extras["units"], torch.zeros(2)) and load_checkpoint(out).metrics == merged


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_not_safetensors(tmp_path):
    path = tmp_path / "pickle.safetensors"
    path.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_truncated(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_header_length_lies(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_unknown_family(saved):
    path, _ = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    rewrite(path, metadata={**metadata, "family": "stylegan9"})
    with pytest.raises(CheckpointError, match="unknown model family 'stylegan9'"):
        load_checkpoint(path)


def test_missing_metadata(saved):
    path, _ = saved
    rewrite(path, metadata={"family": "vae"})
    with pytest.raises(CheckpointError, match="metadata lacks"):
        load_checkpoint(path)


def test_wrong_format_version(saved):
    path, _ = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    rewrite(path, metadata={**metadata, "format_version": "99"})
    with pytest.raises(CheckpointError, match="format_version '99'"):
        load_checkpoint(path)


def test_missing_tensor(saved):
    path, _ = saved
    tensors = load_file(path)
    del tensors["decoder.0.weight"]
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"missing \['decoder.0.weight'\]"):
        load_checkpoint(path)


def test_extra_tensor(saved):
    path, _ = saved
    rewrite(path, {**load_file(path), "sneaky.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected \['sneaky.weight'\]"):
        load_checkpoint(path)


def test_wrong_shape(saved):
    path, _ = saved
    tensors = load_file(path)
    tensors["mu_head.bias"] = torch.zeros(7, dtype=torch.float16)
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"wrong tensor shapes: mu_head.bias \(7,\) != \(6,\)"):
        load_checkpoint(path)


def test_non_finite(saved):
    path, _ = saved
    tensors = load_file(path)
    tensors["mu_head.bias"][0] = float("nan")
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"non-finite values in \['mu_head.bias'\]"):
        load_checkpoint(path)


def test_config_that_does_not_build(saved):
    path, _ = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    rewrite(path, metadata={**metadata, "config": json.dumps({"depth": 3})})
    with pytest.raises(CheckpointError, match="bad metadata.*no field"):
        load_checkpoint(path)


def test_allow_missing_is_only_for_named_tensors(saved):
    path, model = saved
    tensors = load_file(path)
    del tensors["prior_mean"], tensors["prior_scale_tril"]
    rewrite(path, tensors)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)
    upgraded = load_checkpoint(path, allow_missing=("prior_mean", "prior_scale_tril"))
    assert torch.equal(upgraded.model.prior_scale_tril, torch.eye(6))


def test_checkpoints_are_readable_by_other_users(saved):
    path, _ = saved
    assert path.stat().st_mode & 0o044 == 0o044  # a container's non-root user reads mounted weights
