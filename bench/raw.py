"""Raw in-process throughput: the served checkpoint's ``model.generate`` on a batch, no HTTP, no PNG encoding."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.models.checkpoint import CheckpointError, load_checkpoint, read_metadata
from app.models.sampling import draw_noise, seeded_generator
from bench.stats import images_per_second, median

logger = logging.getLogger("bench")

ForwardFn = Callable[[nn.Module, int, torch.device], Callable[[], Any]]


def noise_inputs(model: nn.Module, n: int, generator: torch.Generator) -> tuple:
    return (draw_noise(model.latent_shape, n, generator),)


def attribute_inputs(model: nn.Module, n: int, generator: torch.Generator) -> tuple:
    """Noise plus an all-off attribute vector (the cost of a forward does not depend on the attribute values)."""
    return (*noise_inputs(model, n, generator), torch.zeros(n, len(model.attribute_names)))


def generate_with(make_inputs: Callable[[nn.Module, int, torch.Generator], tuple]) -> ForwardFn:
    """A raw forward through ``model.generate(*make_inputs(...))``, the inputs made once, outside the timing."""

    def forward(model: nn.Module, n: int, device: torch.device) -> Callable[[], Any]:
        inputs = tuple(t.to(device) for t in make_inputs(model, n, seeded_generator(n)))
        return lambda: model.generate(*inputs)

    return forward


def glow_forward(model: nn.Module, n: int, device: torch.device) -> Callable[[], Any]:
    """Glow samples through ``sample`` (noise drawn on the CPU from a seed, as the service does)."""
    conditions = torch.zeros(n, model.config.num_attributes, device=device)
    return lambda: model.sample(conditions, 0.7, seeded_generator(n))


# The call timed per family, (model, batch, device) -> call; default: ``generate`` on noise. A family whose generate
# takes more inputs, or that samples another way, adds an entry.
RAW_FORWARDS: dict[str, ForwardFn] = {"acgan": generate_with(attribute_inputs), "glow": glow_forward}


def find_checkpoint(weights_dir: Path, family: str, file_name: str | None = None) -> Path | None:
    """The file the server reported for ``family`` if it is in ``weights_dir``, else any file of that family."""
    if file_name and (weights_dir / file_name).is_file():
        return weights_dir / file_name
    for path in sorted(weights_dir.glob("*.safetensors")):
        try:
            if read_metadata(path).get("family") == family:
                return path
        except CheckpointError:
            continue
    return None


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_call(function: Callable[[], Any], *, repeats: int, inner: int = 1, warmup: int = 2,
              sync: Callable[[], None] = lambda: None) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``inner`` back-to-back calls, after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        sync()
        samples.append((time.perf_counter() - start) / inner)
    return median(samples)


def measure_raw(path: Path, family: str, device: str, batches: Sequence[int] = (1, 64), repeats: int = 5) -> list[dict]:
    """One row per batch size: median seconds per forward and images/s."""
    checkpoint = load_checkpoint(path, device)
    model = checkpoint.model
    target = torch.device(device)
    make_forward = RAW_FORWARDS.get(family, generate_with(noise_inputs))
    rows = []
    for batch in batches:
        call = make_forward(model, batch, target)

        def forward() -> None:
            with torch.inference_mode():
                call()

        inner = max(1, 16 // batch)  # small batches: average a few calls so timer noise does not dominate
        seconds = time_call(forward, repeats=repeats, inner=inner, sync=synchronizer(target))
        rows.append({"family": family, "device": str(target), "batch": batch, "file": path.name,
                     "seconds": seconds, "images_per_s": images_per_second(batch, seconds)})
        logger.info("raw %s batch %d: %.1f ms", family, batch, seconds * 1000)
    del checkpoint, model
    return rows
