"""The runtime a training run stands on, beneath the loop (:mod:`.loop`): the options every trainer shares, threads,
seeds and device, precision, DDP and compile wrapping, the run folder (CSV log, curves, grids), checkpoint metadata."""

from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from app.models.checkpoint import Checkpoint, save_checkpoint
from app.models.preprocess import PreprocessSpec
from app.models.registry import FamilyModule
from app.services import device as devices

from .distributed import World, get_world, init_world, rank_seed, wrap
from .plots import plot_smoothed, saved_figure

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_common_arguments(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float) -> None:
    parser.add_argument("--data", required=True, help="CelebA folder in the official layout")
    parser.add_argument("--out", required=True, help="checkpoint to write (.safetensors), rewritten every epoch")
    parser.add_argument("--run-dir", help="where logs, curves and grids go (default: runs/<checkpoint name>)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke runs)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke runs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--crop-fraction", type=float, default=PreprocessSpec.crop_fraction)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run from its run folder's train_state.safetensors (written every epoch) up "
        "to --epochs; give the options the run started with (`run --resume RUN_DIR` does so by itself)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCH",
        help="stop after this epoch, schedules still spanning --epochs (a time-boxed session; go on with --resume)",
    )
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="fp32",
        help="autocast dtype of forward passes (bf16, or fp16 with a GradScaler; CUDA; bf16 also runs on a CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the modules that train (CUDA mostly)")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic CUDA kernels (slower): a resumed run then repeats the uninterrupted one step for step on "
        "CUDA too; without it only on the CPU (cuDNN's autotuned and atomic-add kernels vary run to run)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last memory format for modules and batches (CUDA)"
    )


def add_mend_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """The options of a command that mends a checkpoint in place (``vae-fit-prior``, ``gan-recalibrate``)."""
    parser.add_argument("checkpoint", help=checkpoint_help)
    parser.add_argument("--threads", type=int)


def set_threads(args: argparse.Namespace) -> None:
    """``--threads``: torch's CPU threads (left to torch when not given)."""
    if args.threads:
        torch.set_num_threads(args.threads)


def resolve_device(name: str) -> torch.device:
    """``--device``'s device, checked as the service checks FACEGEN_DEVICE; a device that cannot be used ends the run
    with the reason (no GPU visible, a driver too old, cuda:N beyond the host's GPUs, a misspelt name)."""
    try:
        return devices.resolve_device(name, setting="--device")
    except devices.DeviceError as error:
        raise SystemExit(str(error)) from None


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, the process group when started by torchrun, the seeds; returns this rank's device.

    The modules are built after this, from the run's seed on every rank (DDP broadcasts rank 0's anyway); rank r
    then draws its own dropout and reparameterisation noise from :func:`rank_seed` (see :func:`seed_rank`).
    """
    set_threads(args)
    code_version()
    world, device = init_world(resolve_device(args.device))
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    if getattr(args, "deterministic", False):
        deterministic_kernels(device)
    if args.precision == "fp16" and device.type != "cuda":
        raise SystemExit("--precision fp16 needs CUDA (use bf16 on a CPU)")
    if args.precision == "bf16" and device.type == "cpu" and world.is_main and not cpu_has_native_bf16():
        print(
            "warning: --precision bf16 on a CPU without AVX-512 BF16 or AMX: autocast emulates it, about 25x slower "
            "than fp32 here; add --set precision=fp32 (or --precision fp32)",
            flush=True,
        )
    if world.distributed and args.resume and not args.run_dir:
        raise SystemExit("--resume with several processes needs --run-dir")
    return device


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), read from ``/proc/cpuinfo``'s flags;
    True where they cannot be read (not Linux), so nothing is claimed without evidence."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flag_lines = [line.split(":", 1)[1] for line in cpuinfo.splitlines() if line.startswith("flags")]
    flags = {flag for line in flag_lines for flag in line.split()}
    return not flags or bool(flags & {"avx512_bf16", "amx_bf16"})


def deterministic_kernels(device: torch.device) -> None:
    """Only kernels that give the same bits every run, on CUDA (the CPU's already do): no cuDNN autotuning, cuDNN's
    deterministic algorithms, torch's deterministic implementations (an op without one raises, naming itself), and
    the cuBLAS workspace setting those need. It must be set before the first cuBLAS call, which is why it is here."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


def seed_rank(args: argparse.Namespace) -> World:
    """Reseed the global RNG for this rank once the modules are built (rank 0: unchanged)."""
    world = get_world()
    if world.rank:
        torch.manual_seed(rank_seed(args.seed, world.rank))
    return world


def autocast(args: argparse.Namespace, device: torch.device) -> AbstractContextManager:
    """Mixed precision for forward passes (``--precision``); nothing for fp32."""
    dtype = PRECISIONS[args.precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(args: argparse.Namespace, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that acts for fp16 only; with it disabled, ``scale``/``step`` are the plain calls."""
    return torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")


def prepare_module(module: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """channels_last (in place) when asked; returns the module to *call*: compiled under ``--compile``. Save and
    sample the module given, not the compiled wrapper (its state-dict names carry a prefix).

    Given a module already in DistributedDataParallel, channels_last comes too late (DDP laid its gradient buckets
    out for the old strides): :func:`prepare_for_training` does the three steps in the right order."""
    if args.channels_last:
        module.to(memory_format=torch.channels_last)
    # torch.compile of a Module returns an OptimizedModule (a Module); its stubs declare only the callable
    return torch.compile(module) if args.compile else module  # type: ignore[return-value]


def prepare_for_training(
    module: torch.nn.Module, world: World, device: torch.device, args: argparse.Namespace
) -> torch.nn.Module:
    """The module to *call* in the loop: channels_last first (when asked), then DistributedDataParallel (several
    processes), then ``torch.compile`` (``--compile``). DDP sizes its gradient buckets from the parameters' strides
    when it wraps: converting afterwards costs a copy per bucket every step and a stride-mismatch warning."""
    if args.channels_last:
        module.to(memory_format=torch.channels_last)
    wrapped = wrap(module, world, device)
    return torch.compile(wrapped) if args.compile else wrapped  # type: ignore[return-value]


def to_batch(images: torch.Tensor, args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    """A batch on the device, in channels_last when asked (pinned first on CUDA so the copy overlaps compute)."""
    if device.type == "cuda":
        images = images.pin_memory().to(device, non_blocking=True)
    else:
        images = images.to(device)
    return images.contiguous(memory_format=torch.channels_last) if args.channels_last else images


def hardware(device: torch.device) -> str:
    """What a run ran on, for the model card: GPU name(s) x processes, or the CPU and its threads."""
    world = get_world()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return f"{world.world_size} x {name}" if world.distributed else name


def preprocess_spec(args: argparse.Namespace) -> PreprocessSpec:
    return PreprocessSpec(size=args.image_size, crop_fraction=args.crop_fraction)


def run_dir(args: argparse.Namespace) -> Path:
    path = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.out).stem
    if get_world().is_main:
        path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def code_version() -> str:
    """The commit this process started from (asked once: :func:`setup` asks before training, so a commit made while
    a long run trains does not relabel its checkpoints)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_metadata(
    args: argparse.Namespace,
    *,
    images: int,
    epochs_done: int,
    steps: int,
    started: float,
    device: torch.device | None = None,
) -> dict[str, Any]:
    recipe = getattr(args, "recipe", None)
    return {
        "data": str(args.data),
        "train_images": images,
        "epochs": epochs_done,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "code_version": code_version(),
        "seconds": round(time.time() - started, 1),
        # Every command-line option, so a checkpoint says which recipe made it (loss weights, schedules, widths).
        "options": {
            name: value
            for name, value in sorted(vars(args).items())
            if value is None or isinstance(value, (str, int, float, bool))
        },
        "processes": get_world().world_size,
        "precision": args.precision,
        **({"hardware": hardware(device)} if device is not None else {}),
        # `run RECIPE`: the recipe file and every option it resolved to (with --set), so the run can be repeated
        **({"recipe": recipe} if recipe else {}),
    }


def rewrite_checkpoint(path: str | Path, checkpoint: Checkpoint, model: FamilyModule, metrics: dict[str, Any]) -> None:
    """Write ``checkpoint`` back to ``path`` with ``model``'s tensors and ``metrics``, everything else as it was (a
    command that mends a checkpoint written before training did the mending)."""
    save_checkpoint(
        path,
        model,
        preprocess=checkpoint.preprocess,
        attributes=checkpoint.attributes,
        metrics=metrics,
        training=checkpoint.training,
        extras=checkpoint.extras or None,
    )


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches over one epoch; the last partial batch is dropped (BatchNorm dislikes tiny batches)."""
    order = torch.randperm(count, generator=generator)
    for start in range(0, count - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


class StepLog:
    """Per-step scalars appended to ``losses.csv``, kept in memory for plotting."""

    def __init__(self, path: Path, columns: list[str], resume_after_step: int | None = None):
        """``resume_after_step``: a continued run keeps the rows in ``path`` up to that step (a run stopped mid-epoch
        logged steps its saved state does not hold; they are taken again) instead of starting the file afresh."""
        self.path, self.columns = path, ["epoch", "step", *columns]
        self.rows: list[dict[str, float]] = []
        if resume_after_step is not None and path.is_file():
            with open(path, newline="") as handle:
                rows = [{key: float(row[key]) for key in self.columns} for row in csv.DictReader(handle)]
            self.rows = [row for row in rows if row["step"] <= resume_after_step]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.columns)
            writer.writerows([self._formatted(row) for row in self.rows])

    def _formatted(self, row: dict[str, float]) -> list[str]:
        return [f"{row[key]:.6g}" for key in self.columns]

    def append(self, **values: float) -> None:
        row = {key: float(values[key]) for key in self.columns}
        self.rows.append(row)
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow(self._formatted(row))

    def epoch_mean(self, epoch: int, column: str) -> float:
        """The mean of ``column`` over the logged steps of ``epoch`` (what the model cards show of training)."""
        values = [row[column] for row in self.rows if row["epoch"] == epoch]
        return sum(values) / len(values)

    def plot(self, path: Path, panels: dict[str, list[str]], smooth: int = 25) -> None:
        """One subplot per panel title, each with its columns, moving-averaged over ``smooth`` steps."""
        with saved_figure(path, panels=len(panels)) as (_, axes):
            for axis, (title, columns) in zip(axes, panels.items()):
                for column in columns:
                    plot_smoothed(axis, self.rows, column, smooth=smooth)
                axis.set_title(title)
                axis.legend()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    save_image(images.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
