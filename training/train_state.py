"""Everything a GAN run needs to continue where it stopped, in one safetensors file beside its logs.

The served checkpoint holds only the averaged generator; a stopped run also needs D, the live G, both optimisers'
moments and the random streams that order the batches and draw G's inputs. Restored, the continued run takes the
same steps the uninterrupted one would have (sessions here end at a fixed time, so long runs span several).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from safetensors import safe_open
from torch import nn

from app.models.checkpoint import write_safetensors

STATE_FILE = "train_state.safetensors"


@dataclass
class RunPosition:
    epoch: int  # epochs completed
    step: int  # optimiser steps of G completed
    seconds: float  # training time so far
    # whether the epoch's end (validation, figures, the checkpoint) was done: the state is written before it too, so
    # that an epoch's training survives a run cut short there (older states, written only after it, say nothing)
    finished: bool = True


class _TrainStateRequired(TypedDict):
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    generators: dict[str, torch.Generator]


class TrainState(_TrainStateRequired, total=False):
    """What a trainer hands :func:`save_train_state` and :func:`load_train_state` (as ``**state``)."""

    # fp16's loss scales: without them a resumed run restarts at the initial scale (2**16) and skips steps to find
    # its scale again. Optional: states written before they were saved still load (the scalers start afresh).
    scalers: dict[str, torch.amp.GradScaler]


def _scaler_tensors(name: str, scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor]:
    if not scaler.is_enabled():
        return {}
    state = scaler.state_dict()
    return {
        f"scaler.{name}.scale": torch.tensor(float(state["scale"]), dtype=torch.float64),
        f"scaler.{name}.growth_tracker": torch.tensor(int(state["_growth_tracker"]), dtype=torch.int64),
    }


def _load_scaler(name: str, scaler: torch.amp.GradScaler, tensors: dict[str, torch.Tensor]) -> None:
    key = f"scaler.{name}.scale"
    if not scaler.is_enabled() or key not in tensors:
        return  # fp32/bf16, or a state from before the scales were saved
    state = scaler.state_dict()
    state["scale"] = float(tensors[key])
    state["_growth_tracker"] = int(tensors[f"scaler.{name}.growth_tracker"])
    scaler.load_state_dict(state)


def _optimizer_tensors(name: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{name}.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def _load_optimizer(name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(name + "."):
            index, entry = key[len(name) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[entry] = value
    # The hyper-parameters come from this run's arguments; only the per-parameter moments are restored.
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_train_state(
    directory: Path,
    position: RunPosition,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    scalers: dict[str, torch.amp.GradScaler] | None = None,
) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        tensors.update(
            {f"{name}.{key}": value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
        )
    for name, optimizer in optimizers.items():
        tensors.update({key: value.cpu().contiguous() for key, value in _optimizer_tensors(name, optimizer).items()})
    for name, generator in generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    for name, scaler in (scalers or {}).items():
        tensors.update(_scaler_tensors(name, scaler))
    # atomic: a run killed mid-write keeps the previous epoch's state
    return write_safetensors(
        directory / STATE_FILE,
        tensors,
        {
            "epoch": str(position.epoch),
            "step": str(position.step),
            "seconds": f"{position.seconds:.1f}",
            "finished": str(int(position.finished)),
        },
    )


def fast_forward(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Step a freshly built scheduler ``steps`` times (no optimiser step): the learning rate (and OneCycle's
    momentum) a resumed run continues from, with no scheduler state to save."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
        for _ in range(steps):
            scheduler.step()


def rng_streams(device: torch.device) -> dict[str, torch.Generator]:
    """The global random streams a loop draws from implicitly (dropout, reparameterisation noise), by name."""
    streams = {"global": torch.default_generator}
    if device.type == "cuda":
        streams["global_cuda"] = torch.cuda.default_generators[device.index or 0]
    return streams


def rank_streams_file(directory: Path, rank: int) -> Path:
    return directory / f"train_state.rank{rank}.safetensors"


def _save_rank_streams(directory: Path, rank: int, epoch: int, streams: dict[str, torch.Generator]) -> None:
    tensors = {f"rng.{name}": generator.get_state() for name, generator in streams.items()}
    write_safetensors(rank_streams_file(directory, rank), tensors, {"epoch": str(epoch)})


def _load_rank_streams(directory: Path, rank: int, epoch: int, streams: dict[str, torch.Generator]) -> None:
    path = rank_streams_file(directory, rank)
    if not path.is_file():
        raise SystemExit(
            f"--resume: no random streams of rank {rank} at {path}; resume with the number of processes the run "
            "was stopped with, or in one process"
        )
    with safe_open(str(path), framework="pt") as handle:
        saved_epoch = int((handle.metadata() or {}).get("epoch", -1))
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if saved_epoch != epoch:
        raise SystemExit(f"--resume: {path} is of epoch {saved_epoch}, the train state of epoch {epoch}")
    for name, generator in streams.items():
        generator.set_state(tensors[f"rng.{name}"])


def save_run_state(directory: Path, rank: int, position: RunPosition, state: TrainState) -> None:
    """After an epoch, on every rank: rank 0 writes the train state; each other rank writes its random streams beside
    it. Under torchrun, ranks other than 0 draw dropout and reparameterisation noise from their own seeds
    (:func:`training.runtime.seed_rank`), so a run of several processes resumes step for step only with them."""
    if rank == 0:
        save_train_state(directory, position, **state)
    else:
        _save_rank_streams(directory, rank, position.epoch, state["generators"])


def load_run_state(directory: Path, rank: int, state: TrainState) -> RunPosition:
    """Restore what :func:`save_run_state` wrote, for this rank; refuses rank files of another epoch."""
    position = load_train_state(directory, **state)
    if rank != 0:
        _load_rank_streams(directory, rank, position.epoch, state["generators"])
    return position


def load_train_state(
    directory: Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    scalers: dict[str, torch.amp.GradScaler] | None = None,
) -> RunPosition:
    """Restore ``modules``, ``optimizers`` and ``generators`` in place (strictly) and say where the run stopped."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise SystemExit(f"--resume: no training state at {path}; it is written after every epoch of a run")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, module in modules.items():
        prefix = name + "."
        device = next(module.parameters()).device
        module.load_state_dict(
            {key[len(prefix) :]: value.to(device) for key, value in tensors.items() if key.startswith(prefix)},
            strict=True,
        )
    for name, optimizer in optimizers.items():
        _load_optimizer(name, optimizer, tensors)
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng.{name}"])
    for name, scaler in (scalers or {}).items():
        _load_scaler(name, scaler, tensors)
    return RunPosition(
        int(metadata["epoch"]),
        int(metadata["step"]),
        float(metadata["seconds"]),
        finished=metadata.get("finished", "1") == "1",
    )
