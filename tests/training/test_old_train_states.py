"""Runs started before the one loop (training/loop.py) still resume with it.

The fixtures in ``fixtures/old_train_states/<family>/`` were written by the four hand-written loops of commit 3f654ed
(see the README there): each run of ``RECIPES`` stopped after epoch 1 of 3 (``--stop-after 1``) and left its train
state and logs; ``uninterrupted_losses.csv`` is the log of the same recipe run for all 3 epochs by that old code.
Resumed with today's loop, a run must load that state (position, optimiser moments), continue from step 5, and take
epochs 2 and 3 as the old uninterrupted run took them.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from app.models.checkpoint import load_checkpoint
from tests.conftest import make_celeba_folder
from training import loop
from training.__main__ import main
from training.recipe import RECIPE_FILE, write_recipe

FIXTURES = Path(__file__).parent / "fixtures" / "old_train_states"
STEPS_PER_EPOCH = 18 // 4  # the tiny CelebA's 18 training images in batches of 4
SHARED = {"batch-size": 4, "epochs": 3, "threads": 1, "device": "cpu", "image-size": 16}
RECIPES = {
    "vae": {"widths": [4, 8], "latent-dim": 6},
    "classifier": {"widths": [4, 8], "dropout": 0.3},
    "glow": {"image-size": 8, "levels": 1, "steps": 2, "hidden": 8, "init-images": 8, "direction-images": 8}
    | {"warmup": 3},
    "dcgan": {"latent-dim": 8, "g-width": 4, "d-width": 4, "ema": 0.9},  # the GANs' loop, its moving average
}


def read_rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def optimiser_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith("optimizer")}


@pytest.mark.parametrize("family", list(RECIPES))
def test_a_train_state_of_the_old_loops_resumes_where_it_stopped(family, tmp_path, monkeypatch):
    data = make_celeba_folder(tmp_path / "celeba")  # the folder the fixtures were trained on (same seed)
    folder = tmp_path / f"{family}-00001"
    shutil.copytree(FIXTURES / family, folder)
    uninterrupted = read_rows(folder / "uninterrupted_losses.csv")
    stopped_log = read_rows(folder / "losses.csv")
    saved_moments = optimiser_tensors(folder / "train_state.safetensors")
    assert saved_moments and [row["step"] for row in stopped_log] == list(range(1, STEPS_PER_EPOCH + 1))
    write_recipe(folder / RECIPE_FILE, family, {"data": str(data), **SHARED, **RECIPES[family]}, ["old loop"])

    loaded: dict[str, object] = {}

    def recording_resume(run, task, state):
        position = original_resume(run, task, state)
        loaded["position"] = position
        loaded["moments"] = {
            f"{name}.{index}.{key}": value.clone()
            for name, optimizer in task.optimizers.items()
            for index, entries in optimizer.state_dict()["state"].items()
            for key, value in entries.items()
        }
        return position

    original_resume = loop.resume
    monkeypatch.setattr(loop, "resume", recording_resume)
    main(["run", "--resume", str(folder)])

    position = loaded["position"]
    assert (position.epoch, position.step) == (1, STEPS_PER_EPOCH)
    moments = loaded["moments"]
    assert isinstance(moments, dict) and set(moments) == set(saved_moments)
    for key, value in saved_moments.items():
        assert torch.equal(moments[key].cpu(), value), key

    checkpoint = load_checkpoint(folder / f"{family}.safetensors")
    assert checkpoint.training["epochs"] == 3 and checkpoint.training["steps"] == 3 * STEPS_PER_EPOCH
    resumed = read_rows(folder / "losses.csv")
    assert [row["step"] for row in resumed] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert all(math.isfinite(value) for row in resumed for value in row.values())
    assert resumed[:STEPS_PER_EPOCH] == stopped_log  # the old run's epoch is kept as it was logged
    # the continued epochs are the old code's: bit for bit on the machine that wrote the fixtures; a tolerance for
    # CPUs whose vector kernels round differently
    for mine, theirs in zip(resumed[STEPS_PER_EPOCH:], uninterrupted[STEPS_PER_EPOCH:], strict=True):
        assert mine == pytest.approx(theirs, rel=1e-3, abs=1e-5), mine["step"]
