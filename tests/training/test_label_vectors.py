"""``python -m training label-vectors``: an existing checkpoint gains its training faces' label vectors, nothing else
changes, and the service then draws open attributes jointly."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from app.models.attributes import LABEL_VECTORS_KEY, unpack_label_vectors
from app.models.checkpoint import load_checkpoint
from app.models.pipelines import build_pipeline
from tests.conftest import cli, write_tiny_checkpoint
from tests.families.gans import ACGAN_NAMES, write_acgan_weights
from training.__main__ import main
from training.data import load_labels


def stored(path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata()), {name: handle.get_tensor(name) for name in handle.keys()}


def test_label_vectors_are_added_to_an_existing_checkpoint(tiny_celeba, tmp_path, capsys):
    path = write_acgan_weights(tmp_path) / "acgan.safetensors"
    metadata, tensors = stored(path)
    assert not build_pipeline(load_checkpoint(path)).attribute_source.joint

    main(cli("label-vectors", path, data=tiny_celeba))

    assert "stored the label vectors of 18 train faces" in capsys.readouterr().out
    new_metadata, new_tensors = stored(path)
    assert new_metadata == metadata and set(new_tensors) == set(tensors) | {f"extra.{LABEL_VECTORS_KEY}"}
    assert all(torch.equal(new_tensors[name], tensor) for name, tensor in tensors.items())
    names, labels = load_labels(tiny_celeba, "train")
    expected = labels[:, [names.index(name) for name in ACGAN_NAMES]].bool()
    assert torch.equal(unpack_label_vectors(new_tensors[f"extra.{LABEL_VECTORS_KEY}"], len(ACGAN_NAMES)), expected)
    pipeline = build_pipeline(load_checkpoint(path))
    assert pipeline.attribute_source.joint
    drawn = pipeline.prepare_samples(50, 0).drawn_attributes().vectors
    assert all(row in expected.float().tolist() for row in drawn.tolist()), "every vector is a training face's"


def test_label_vectors_can_be_written_to_a_copy(tiny_celeba, tmp_path):
    path = write_acgan_weights(tmp_path) / "acgan.safetensors"
    before = path.read_bytes()
    main(cli("label-vectors", path, data=tiny_celeba, out=tmp_path / "copy.safetensors"))
    assert path.read_bytes() == before and load_checkpoint(tmp_path / "copy.safetensors").extras[
        LABEL_VECTORS_KEY
    ].shape == (18, 1)


def test_a_checkpoint_without_attributes_is_refused(tiny_celeba, tmp_path):
    path = write_tiny_checkpoint(tmp_path, "dcgan", attributes=[])
    with pytest.raises(SystemExit, match="label-vectors: .*conditions on no attributes"):
        main(cli("label-vectors", path, data=tiny_celeba))


def test_a_data_folder_without_the_attributes_is_refused(tiny_celeba, tmp_path):
    path = write_tiny_checkpoint(tmp_path, "acgan", attributes=["Smiling", "Male", "Sparkly"])
    with pytest.raises(SystemExit, match=r"label-vectors: .*no labels for \['Sparkly'\]"):
        main(cli("label-vectors", path, data=tiny_celeba))
