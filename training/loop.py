"""The one training loop every family runs in; a family hands it only what is its own.

The shape is stylegan3's ``training_loop`` and nanoGPT's ``train.py``: set up (threads, process group, seeds,
device), build, resume, then epoch after epoch of batches -> step -> log, and at each epoch's end the train state,
then validation, figures, the checkpoint and the train state marked finished. What lives here, once: the batch order
and its sharding over the ranks (:mod:`.distributed`), resume (:mod:`.train_state`), the per-step log
(``losses.csv``) and its reduction over the ranks, the progress bar, ``--max-steps`` and ``--stop-after``, the
checkpoint's write with the metadata every run records, mixed precision and DDP wrapping (through :class:`Run`),
and the moving average of weights (:func:`ema_copy`).

What a family hands over is a :class:`Task`, made by a function of the :class:`Run`:

- its modules, optimisers, loss scalers and named random streams (what the train state saves);
- ``step``: one optimiser step on a :class:`Batch`, returning the scalars to log (:class:`Logged`);
- ``end_epoch``: on rank 0, its validation and sample figures, returning the :class:`Checkpoint` to write
  (the module to ship, its metrics, its extra tensors and training metadata);
- optional hooks: ``start`` (once the run's position is known: schedulers fast-forwarded) and ``start_epoch``.

Nothing here draws a random number: the order of draws is each family's, so runs started before this module existed
resume step for step (tests/training/test_old_train_states.py resumes train states the hand-written loops wrote).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from app.models.checkpoint import save_checkpoint
from app.models.preprocess import PreprocessSpec
from app.models.registry import FamilyModule

from .data import PackedSplit, load_split
from .distributed import World, barrier, check_batch, mean_scalars, shard
from .runtime import (
    StepLog,
    autocast,
    grad_scaler,
    prepare_for_training,
    preprocess_spec,
    run_dir,
    seed_rank,
    setup,
    shuffled_batches,
    to_batch,
    training_metadata,
)
from .train_state import (
    RunPosition,
    TrainState,
    load_run_state,
    load_train_state,
    rng_streams,
    save_run_state,
    save_train_state,
)

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass
class Run:
    """What the loop has set up when a family builds its task: options, device, training split, run folder."""

    args: argparse.Namespace
    device: torch.device
    spec: PreprocessSpec
    train: PackedSplit
    out_dir: Path
    world: World | None = None  # set by modules_built()

    def split(self, name: str) -> PackedSplit:
        """Another split of the run's data set (``valid``), preprocessed as the training one."""
        return load_split(self.args.data, name, self.spec, self.args.limit)

    def modules_built(self) -> World:
        """Called by the family once its modules exist: every rank has built the same ones from the run's seed, and
        from here each rank draws dropout and other global-stream noise from its own seed. Checks the global batch
        divides over the ranks."""
        self.world = seed_rank(self.args)
        check_batch(self.args.batch_size, self.world)
        return self.world

    def prepare(self, module: nn.Module) -> nn.Module:
        """The module to call in the step (channels_last, DDP, compiled as asked); save and sample ``module``."""
        if self.world is None:
            raise RuntimeError("Run.prepare before Run.modules_built")
        return prepare_for_training(module, self.world, self.device, self.args)

    def autocast(self) -> AbstractContextManager:
        return autocast(self.args, self.device)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return grad_scaler(self.args, self.device)

    def to_batch(self, images: torch.Tensor) -> torch.Tensor:
        return to_batch(images, self.args, self.device)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.args.batch_size


@dataclass
class Batch:
    indices: torch.Tensor  # the global batch's indices into the training split (the same on every rank)
    number: int  # its place in the epoch, from 0
    images: torch.Tensor  # this rank's share, on the CPU
    attributes: torch.Tensor  # this rank's share, on the CPU


@dataclass
class Logged:
    """What a step logs: ``scalars`` are averaged over the ranks (the global batch's value); ``shared`` are the same
    on every rank (a learning rate) and logged as they are."""

    scalars: dict[str, float]
    shared: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochEnd:
    epoch: int  # the epoch just finished, from 1
    step: int  # optimiser steps taken so far
    log: StepLog  # every logged step, this epoch's included


@dataclass
class Checkpoint:
    """What a family ships after an epoch; the loop adds the preprocessing and the run's training metadata."""

    module: FamilyModule
    metrics: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)  # the family's own, after the metadata every run records
    extras: dict[str, torch.Tensor] | None = None
    attributes: list[str] | None = None  # None: the training split's attribute names
    dtype: torch.dtype | None = torch.float16  # None keeps float32 (a flow needs it to stay invertible)


@dataclass
class Task:
    """A family's part of a run."""

    name: str  # the progress bar's label
    columns: list[str]  # losses.csv's columns after epoch and step
    # (batch, epoch, number of the step being taken) -> what to log; None when no optimiser step counts (a GAN's
    # discriminator-only step)
    step: Callable[[Batch, int, int], Logged | None]
    end_epoch: Callable[[EpochEnd], Checkpoint]  # rank 0 only: validation, figures, the checkpoint's content
    postfix: Callable[[dict[str, float]], dict[str, str]]  # the progress bar's figures from a step's scalars
    modules: dict[str, nn.Module]  # saved in the train state (the plain modules, not the prepared ones)
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, torch.amp.GradScaler]
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # named streams the step draws from
    # False: every draw comes from the named generators, the same on every rank, so the train state holds neither
    # the global streams nor per-rank files (the GANs, whose states were always written that way)
    global_streams: bool = True
    start: Callable[[RunPosition], None] | None = None  # on every rank, once the position is known (fresh or resumed)
    start_epoch: Callable[[int], None] | None = None  # on every rank, before the epoch's batches are drawn


def one_model(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """A :class:`Task`'s modules, optimisers and scalers for a family that trains one model (``**one_model(...)``),
    under the names its train states have always used."""
    return {"modules": {"model": model}, "optimizers": {"optimizer": optimizer}, "scalers": {"scaler": scaler}}


def optimiser_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and one update, through the loss scaler (the plain calls unless fp16)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def ema_copy(module: ModuleT, decay: float) -> ModuleT:
    """A frozen copy of ``module`` that :func:`update_ema` keeps as the moving average of its weights (what gets
    shipped); ``module`` itself when ``decay`` is 0."""
    return copy.deepcopy(module).eval().requires_grad_(False) if decay > 0 else module


@torch.no_grad()
def update_ema(average: nn.Module, live: nn.Module, decay: float) -> None:
    """Move the averaged parameters towards the live ones; buffers (BatchNorm statistics) are copied."""
    if average is live:
        return
    for average_parameter, parameter in zip(average.parameters(), live.parameters()):
        average_parameter.lerp_(parameter, 1 - decay)
    for average_buffer, buffer in zip(average.buffers(), live.buffers()):
        average_buffer.copy_(buffer)


def train(args: argparse.Namespace, make_task: Callable[[Run], Task]) -> None:
    """Run ``make_task``'s family from the options every trainer shares (see :func:`.runtime.add_common_arguments`)."""
    device = setup(args)
    spec = preprocess_spec(args)
    run = Run(args, device, spec, load_split(args.data, "train", spec, args.limit), run_dir(args))
    task = make_task(run)
    if run.world is None:
        raise RuntimeError(f"{task.name}: the task must call Run.modules_built() once its modules exist")
    world = run.world
    order = torch.Generator().manual_seed(args.seed)  # the batch order, the same on every rank
    state: TrainState = {
        "modules": task.modules,
        "optimizers": task.optimizers,
        "generators": {"order": order, **task.generators, **(rng_streams(device) if task.global_streams else {})},
        "scalers": task.scalers,
    }
    barrier(world)  # rank 0 made the run folder
    position = resume(run, task, state) if args.resume else RunPosition(0, 0, 0.0)
    log = (
        StepLog(run.out_dir / "losses.csv", task.columns, position.step if args.resume else None)
        if world.is_main
        else None
    )
    if task.start is not None:
        task.start(position)
    started, step = time.time() - position.seconds, position.step
    if not position.finished:  # the last run was cut short at its epoch's end: do it now, as it would have
        finish_epoch(run, task, state, log, position.epoch, step, started)
    for epoch in range(position.epoch + 1, args.epochs + 1):
        if task.start_epoch is not None:
            task.start_epoch(epoch)
        progress = tqdm(
            list(shuffled_batches(len(run.train), args.batch_size, order)),
            desc=f"{task.name} epoch {epoch}",
            disable=not world.is_main,
        )
        for number, indices in enumerate(progress):
            images, attributes = run.train.batch(shard(indices, world))
            logged = task.step(Batch(indices, number, images, attributes), epoch, step + 1)
            if logged is None:
                continue
            step += 1
            scalars = mean_scalars(logged.scalars, world, device)
            if log is not None:
                log.append(epoch=epoch, step=step, **scalars, **logged.shared)
            progress.set_postfix(task.postfix(scalars))
            if args.max_steps and step >= args.max_steps:
                break
        # The epoch's training is kept first: the end (validation, figures, a Glow's attribute directions) can take
        # minutes, and a run cut short there resumes by doing it, not by training the epoch again.
        save_state(run, task, state, RunPosition(epoch, step, time.time() - started, finished=False))
        finish_epoch(run, task, state, log, epoch, step, started)
        if (args.max_steps and step >= args.max_steps) or epoch == args.stop_after:
            break


def finish_epoch(
    run: Run, task: Task, state: TrainState, log: StepLog | None, epoch: int, step: int, started: float
) -> None:
    """The end of ``epoch``: rank 0's validation, figures and checkpoint, then the train state marked finished."""
    if log is not None:
        write_checkpoint(run, task.end_epoch(EpochEnd(epoch, step, log)), epoch, step, started)
    save_state(run, task, state, RunPosition(epoch, step, time.time() - started))
    if run.world is not None:
        barrier(run.world)


def resume(run: Run, task: Task, state: TrainState) -> RunPosition:
    """Restore the train state in place and say where the run stopped."""
    if task.global_streams:
        return load_run_state(run.out_dir, run.world.rank if run.world else 0, state)
    return load_train_state(run.out_dir, **state)


def save_state(run: Run, task: Task, state: TrainState, position: RunPosition) -> None:
    """After every epoch: rank 0 writes the train state; with global streams, the other ranks write theirs."""
    rank = run.world.rank if run.world else 0
    if task.global_streams:
        save_run_state(run.out_dir, rank, position, state)
    elif rank == 0:
        save_train_state(run.out_dir, position, **state)


def write_checkpoint(run: Run, checkpoint: Checkpoint, epoch: int, step: int, started: float) -> None:
    """The family's checkpoint with what every run records (data, options, steps, time, hardware...), rewritten
    after every epoch at ``--out``."""
    args = run.args
    save_checkpoint(
        args.out,
        checkpoint.module,
        preprocess=run.spec,
        attributes=run.train.attribute_names if checkpoint.attributes is None else checkpoint.attributes,
        metrics=checkpoint.metrics,
        extras=checkpoint.extras,
        training={
            **training_metadata(
                args, images=len(run.train), epochs_done=epoch, steps=step, started=started, device=run.device
            ),
            **checkpoint.training,
        },
        dtype=checkpoint.dtype,
    )
