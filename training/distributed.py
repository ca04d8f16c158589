"""Several processes, one run: PyTorch's DistributedDataParallel under ``torchrun``, and nothing home-made.

``torchrun --nproc_per_node N -m training run RECIPE`` starts N copies of the same command; each reads its rank from
the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Without torchrun the same code runs as one
process of a world of one, bit for bit the loop it always was (the GAN runs in progress resume unchanged).

How the loops use it:

- **The global batch is kept.** ``--batch-size`` is the global batch; each rank takes every ``world``-th index of
  the same global batch, drawn from one permutation every rank computes from the run's seed. That is what
  ``torch.utils.data.DistributedSampler`` does (``indices[rank::world]``), applied per batch, so the union of the
  ranks' k-th batches *is* the one-process run's k-th batch. DDP averages the ranks' gradients of their per-sample
  mean losses, which is the gradient of the global batch's mean loss.
- **One seed.** Rank r seeds its global torch RNG (dropout, the VAE's reparameterisation noise) with
  :func:`rank_seed` ``(seed, r)``, rank 0 with the seed itself. Draws that the one-process run takes from named
  generators (batch order, G's noise) are drawn for the whole global batch on every rank and sliced, so they match
  the one-process run exactly.
- **Rank 0 writes** logs, grids, checkpoints and train state; the logged scalars are the ranks' mean (the global
  batch's value), reduced with one ``all_reduce`` per step.
- **SyncBatchNorm** replaces BatchNorm on CUDA, where per-GPU batches are small enough for their statistics to
  differ from the global batch's. PyTorch implements it for GPUs only, so on CPU (gloo) each rank normalises its
  own half: the CPU test therefore compares losses within a tolerance, not bit for bit.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


WORLD = World()  # replaced by init_world() in processes started by torchrun


def get_world() -> World:
    """This process's place in the run (a world of one unless started by torchrun)."""
    return WORLD


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a no-op for one process.

    Returns the world and this rank's device: on CUDA, ``cuda:LOCAL_RANK``, whatever ``--device`` said.
    """
    global WORLD
    if not launched_by_torchrun():
        return WORLD, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    WORLD = World(dist.get_rank(), dist.get_world_size(), local_rank)
    return WORLD, device


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps ``seed`` (a one-process run is unchanged); others get distinct seeds derived from it."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7_919) % (2**63 - 1)


def shard(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of a global batch: every ``world_size``-th index, from ``rank`` (DistributedSampler's
    order). Needs a global batch divisible by the world size (checked by :func:`check_batch`)."""
    return indices[world.rank :: world.world_size] if world.distributed else indices


def check_batch(batch_size: int, world: World) -> None:
    if batch_size % world.world_size:
        raise SystemExit(
            f"--batch-size {batch_size} (the global batch) must be divisible by the {world.world_size} processes"
        )


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several processes (BatchNorm made SyncBatchNorm on
    CUDA first); the module itself otherwise. Parameters are broadcast from rank 0 on wrapping."""
    if not world.distributed:
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _ddp(module: nn.Module) -> nn.Module:
    """Through torch.compile's wrapper, if any, to what it compiled (a DDP wrapper or a plain module)."""
    return getattr(module, "_orig_mod", module)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside compile and DDP wrappers (what gets saved, sampled and called by custom methods)."""
    module = _ddp(module)
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(module: nn.Module) -> AbstractContextManager:
    """DDP's ``no_sync`` where wrapped: a backward whose gradients are thrown away need not be all-reduced."""
    module = _ddp(module)
    return module.no_sync() if isinstance(module, nn.parallel.DistributedDataParallel) else nullcontext()


def mean_scalars(values: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    """The ranks' mean of each scalar (one all_reduce); the values themselves for one process."""
    if not world.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / world.world_size).tolist()))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast_object(value: object, world: World) -> object:
    """Rank 0's ``value`` on every rank (e.g. the numbered run folder rank 0 created)."""
    if not world.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def finish(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
