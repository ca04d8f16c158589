"""Raw in-process throughput: one batched forward of the served checkpoint's pipeline (``pipeline.run``), inputs
prepared once outside the timing; no HTTP, no batcher, no PNG encoding.

The forwards run in one worker thread, as the service's batcher runs every forward (its single forward thread),
not in the main thread: on a CPU whose cores are shared (here with training runs), torch's intra-op threads behave
differently in the two (a Glow batch of 64 measured 2.3x slower in the main thread than in a worker thread), and the
e2e/raw ratio must compare like with like."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from app.models.checkpoint import CheckpointError, load_checkpoint, read_metadata
from app.models.pipelines import SAMPLE, SCORE, Pipeline, Prepared, build_pipeline
from bench.scenarios import Upload
from bench.stats import images_per_second, median

logger = logging.getLogger("bench")


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


def upload_batch(pipeline: Pipeline, upload: Upload | None, batch: int) -> torch.Tensor:
    """``batch`` copies of the uploaded face, preprocessed as the service does; a constant image without one (a
    forward's cost does not depend on the pixel values)."""
    from app.imaging import decode_image
    from app.models.preprocess import preprocess

    spec = pipeline.checkpoint.preprocess
    if upload is None:
        image = torch.zeros(3, spec.size, spec.size)
    else:
        image = preprocess(decode_image(upload.data, upload.name, 40_000_000), spec)
    return image.unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def prepare(pipeline: Pipeline, batch: int, upload: Upload | None = None) -> Prepared:
    """A request of ``batch`` rows: samples from seed 0, or ``batch`` uploads to score."""
    if SAMPLE in pipeline.capabilities:
        return pipeline.prepare_samples(batch, 0)
    if SCORE in pipeline.capabilities and hasattr(pipeline, "prepare_classification"):
        return pipeline.prepare_classification(upload_batch(pipeline, upload, batch))
    raise ValueError(
        f"{pipeline.family}: the benchmark knows no raw forward for capabilities {sorted(pipeline.capabilities)}"
    )


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_call(
    function: Callable[[], Any],
    *,
    repeats: int,
    inner: int = 1,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> float:
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


def measure_raw(
    path: Path,
    device: str,
    batches: Sequence[int] = (1, 32, 64),
    repeats: int = 5,
    upload: Upload | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """One row per batch size: median seconds of ``pipeline.run`` (in a worker thread, like the service's) and
    images/s. ``threads``: torch intra-op threads (default: torch's)."""
    pipeline = build_pipeline(load_checkpoint(path, device))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-raw") as forward_thread:
        if threads:
            forward_thread.submit(torch.set_num_threads, threads).result()
        rows = [measure_batch(pipeline, batch, repeats, upload, forward_thread, path.name) for batch in batches]
    return rows


def measure_batch(
    pipeline: Pipeline,
    batch: int,
    repeats: int,
    upload: Upload | None,
    forward_thread: concurrent.futures.Executor,
    file_name: str,
) -> dict[str, Any]:
    prepared = prepare(pipeline, batch, upload)
    inner = max(1, 16 // batch)  # small batches: average a few calls so timer noise does not dominate
    forward = functools.partial(pipeline.run, prepared.operation, prepared.inputs)
    seconds = forward_thread.submit(
        time_call, forward, repeats=repeats, inner=inner, sync=synchronizer(pipeline.device)
    ).result()
    logger.info("raw %s batch %d: %.1f ms", pipeline.family, batch, seconds * 1000)
    return {
        "family": pipeline.family,
        "operation": prepared.operation,
        "device": str(pipeline.device),
        "batch": batch,
        "file": file_name,
        "seconds": seconds,
        "images_per_s": images_per_second(batch, seconds),
    }
