"""fp16 loss scales travel in the train state, and train states written before they did still load."""

from __future__ import annotations

import torch
from safetensors import safe_open

from training.train_state import STATE_FILE, RunPosition, load_train_state, save_train_state


def pieces(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    return {"model": model}, {"optimizer": optimizer}, {"order": torch.Generator().manual_seed(seed)}


def scaler_at(scale: float, tracker: int) -> torch.amp.GradScaler:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    state = scaler.state_dict()
    state.update(scale=scale, _growth_tracker=tracker)
    scaler.load_state_dict(state)
    return scaler


def test_the_loss_scale_and_its_growth_tracker_are_restored(tmp_path):
    modules, optimizers, generators = pieces()
    save_train_state(
        tmp_path, RunPosition(2, 40, 1.0), modules, optimizers, generators, scalers={"g": scaler_at(512.0, 17)}
    )
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    modules, optimizers, generators = pieces(1)
    position = load_train_state(tmp_path, modules, optimizers, generators, scalers={"g": fresh})
    assert position.step == 40
    assert fresh.get_scale() == 512.0 and fresh.state_dict()["_growth_tracker"] == 17


def test_a_state_written_without_scales_still_loads_with_fresh_scalers(tmp_path):
    modules, optimizers, generators = pieces()
    save_train_state(tmp_path, RunPosition(1, 10, 1.0), modules, optimizers, generators)  # as before scalers
    with safe_open(str(tmp_path / STATE_FILE), framework="pt") as handle:
        assert not any(key.startswith("scaler.") for key in handle.keys())
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    modules, optimizers, generators = pieces(1)
    position = load_train_state(tmp_path, modules, optimizers, generators, scalers={"g": fresh})
    assert position == RunPosition(1, 10, 1.0)
    assert fresh.get_scale() == 1024.0


def test_disabled_scalers_write_nothing(tmp_path):
    modules, optimizers, generators = pieces()
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    save_train_state(tmp_path, RunPosition(1, 1, 0.0), modules, optimizers, generators, scalers={"g": disabled})
    with safe_open(str(tmp_path / STATE_FILE), framework="pt") as handle:
        assert not any(key.startswith("scaler.") for key in handle.keys())
