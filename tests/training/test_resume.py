"""Every family's run continues step for step: ``run --resume RUN_DIR`` after a time-boxed stop (``stop-after``)
ends with the same weights and the same log as the uninterrupted run (the GANs: tests/training/test_training.py)."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors import safe_open

import training.loop
from app.models.checkpoint import load_checkpoint
from training.__main__ import main
from training.train_state import STATE_FILE

TINY = {
    "vae": {"widths": "[4, 8]", "latent-dim": "6"},
    "classifier": {"widths": "[4, 8]", "dropout": "0.3"},  # dropout: the global random stream is restored too
    "glow": {
        "levels": "2",
        "steps": "2",
        "hidden": "8",
        "init-images": "8",
        "direction-images": "8",
        "warmup": "3",
    },
    "dcgan": {"latent-dim": "8", "g-width": "4", "d-width": "4", "ema": "0.9"},
    # q-augment: the augmentation stream is restored too
    "infogan": {"latent-dim": "8", "codes": "2", "categories": "3", "q-hidden": "4", "g-width": "4", "d-width": "4"}
    | {"q-augment": "0.1"},
}


def write_recipe(tmp_path, data, family: str) -> str:
    lines = [f'family = "{family}"', f'data = "{data}"', "image-size = 16", "batch-size = 4", "epochs = 3"]
    lines += ["threads = 1", 'device = "cpu"', *(f"{key} = {value}" for key, value in TINY[family].items())]
    path = tmp_path / f"{family}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("family", list(TINY))
def test_a_resumed_run_takes_the_same_steps_as_an_uninterrupted_one(family, tiny_celeba, tmp_path):
    recipe = write_recipe(tmp_path, tiny_celeba, family)
    runs = tmp_path / "runs"
    main(["run", recipe, "--runs", str(runs)])
    main(["run", recipe, "--runs", str(runs), "--set", "stop-after=1"])
    whole, stopped = runs / f"{family}-00000", runs / f"{family}-00001"
    assert load_checkpoint(stopped / f"{family}.safetensors").training["epochs"] == 1
    main(["run", "--resume", str(stopped), "--set", "stop-after=3"])

    expected = load_checkpoint(whole / f"{family}.safetensors")
    resumed = load_checkpoint(stopped / f"{family}.safetensors")
    assert resumed.training["steps"] == expected.training["steps"] == 3 * (18 // 4)
    for name, tensor in expected.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert read_rows(stopped / "losses.csv") == read_rows(whole / "losses.csv")


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(SystemExit, match="no recipe.toml inside"):
        main(["run", "--resume", str(tmp_path)])


class CutShort(Exception):
    """Stands for the end of a session arriving while an epoch's end (validation, figures, checkpoint) runs."""


@pytest.mark.parametrize("family", ["glow", "dcgan"])
def test_a_run_cut_short_at_an_epochs_end_keeps_that_epochs_training(family, tiny_celeba, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, tiny_celeba, family)
    runs = tmp_path / "runs"
    main(["run", recipe, "--runs", str(runs)])
    whole, cut = runs / f"{family}-00000", runs / f"{family}-00001"

    write_checkpoint = training.loop.write_checkpoint

    def cut_at_the_second_end(run, checkpoint, epoch, step, started):
        if epoch == 2:
            raise CutShort
        write_checkpoint(run, checkpoint, epoch, step, started)

    monkeypatch.setattr(training.loop, "write_checkpoint", cut_at_the_second_end)
    with pytest.raises(CutShort):
        main(["run", recipe, "--runs", str(runs)])
    monkeypatch.undo()
    with safe_open(str(cut / STATE_FILE), framework="pt") as handle:
        assert (handle.metadata() or {})["epoch"] == "2" and handle.metadata()["finished"] == "0"
    assert load_checkpoint(cut / f"{family}.safetensors").training["epochs"] == 1

    main(["run", "--resume", str(cut)])  # finishes epoch 2 (its checkpoint), then trains only epoch 3
    expected = load_checkpoint(whole / f"{family}.safetensors")
    resumed = load_checkpoint(cut / f"{family}.safetensors")
    assert resumed.training["epochs"] == 3 and resumed.training["steps"] == expected.training["steps"]
    for name, tensor in expected.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert read_rows(cut / "losses.csv") == read_rows(whole / "losses.csv")
    assert (cut / "samples_epoch002.png").is_file() or (cut / "samples_epoch002_t0.5.png").is_file()
