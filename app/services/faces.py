"""The face detector of the service: a thread and a queue of its own, apart from the models' forward thread, so that
detection (tens of ms for a portrait, seconds for a photo full of faces) never holds up a family's forward.

Requests that arrive while a detection runs form the next batch, whose stages share forwards
(:meth:`app.models.detector.FaceDetector.detect_batch`): no timer, so a lone request never waits for company. Each
request carries a deadline; the detector asks, between pyramid levels and between stages, whether each image is
still wanted, so a request whose deadline passed or whose client left stops being computed at the next stage instead
of running to the end. Load is shed like the batcher's: past ``max_queue`` waiting images, 503 with Retry-After.

The detector loads on this thread the first time an upload asks for alignment (a server that never aligns never
pays for it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from app.models.detector import (
    DEFAULT_LIMITS,
    DETECTOR_WEIGHTS,
    DetectionLimits,
    DetectorError,
    Face,
    FaceDetector,
    load_detector,
)
from app.services.batcher import DeadlineExceeded, Overloaded, ServiceUnavailable

logger = logging.getLogger("facegen.faces")
MAX_BATCH_IMAGES = 32  # images per detection batch (one /classify request's most)


class DetectionFailed(RuntimeError):
    """The detector raised on a batch; answered 500."""


def load_warm(device: torch.device) -> FaceDetector:
    """The detector on ``device``, warmed up (each net's first forward on a device is several times slower)."""
    detector = load_detector(DETECTOR_WEIGHTS, device)
    detector.detect(Image.new("RGB", (160, 200), (128, 128, 128)))
    with torch.inference_mode():
        detector.rnet(torch.zeros(2, 3, 24, 24, device=device))
        detector.onet(torch.zeros(2, 3, 48, 48, device=device))
    logger.info("face detector (MTCNN) loaded on %s", device)
    return detector


@dataclass(eq=False)
class DetectionJob:
    images: list[Image.Image] = field(repr=False)
    deadline: float  # time.monotonic() seconds: read from the detection thread
    future: asyncio.Future = field(repr=False)
    abandoned: bool = False  # set on the event loop when the request stops waiting (deadline, client gone)
    alone: bool = False  # ran in a batch of its own (its time was its own images')

    def wanted(self) -> bool:
        return not self.abandoned and time.monotonic() < self.deadline


class FaceService:
    """One detector on one device, behind one queue and one thread."""

    def __init__(
        self,
        device: torch.device,
        *,
        max_queue: int = 1024,
        max_batch_images: int = MAX_BATCH_IMAGES,
        limits: DetectionLimits = DEFAULT_LIMITS,
        load: Callable[[torch.device], FaceDetector] = load_warm,
    ):
        if max_queue < 1 or max_batch_images < 1:
            raise ValueError("max_queue and max_batch_images must be >= 1")
        self.device, self.max_queue, self.max_batch_images, self.limits = device, max_queue, max_batch_images, limits
        self.load = load
        self.detector: FaceDetector | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="facegen-detect")
        self.pending: deque[DetectionJob] = deque()
        self.queued_images = 0
        self.images_per_s: float | None = None  # moving average, for Retry-After
        self.closing = False
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.work(), name="face-detection")

    # ---- the request side ---------------------------------------------------------------------------------------
    async def find(self, images: list[Image.Image], timeout_s: float) -> list[list[Face]]:
        """Every face of each image, largest first; 503 when the queue is full or the deadline passes (then its
        detection stops at the next stage). Cancelling the caller (client gone) abandons the work the same way."""
        if self.closing or self.wake is None:
            raise ServiceUnavailable("the server is shutting down", retry_after_s=1)
        count = len(images)
        if self.queued_images and self.queued_images + count > self.max_queue:
            raise Overloaded(
                f"face detection: {self.queued_images} images are already waiting (FACEGEN_MAX_QUEUE="
                f"{self.max_queue}); try again shortly",
                retry_after_s=self.retry_after_s(count),
            )
        loop = asyncio.get_running_loop()
        job = DetectionJob(images, time.monotonic() + timeout_s, loop.create_future())
        self.pending.append(job)
        self.queued_images += count
        self.wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            if job.alone:  # its own images took the time: waiting would not help, smaller photos would
                raise DeadlineExceeded(
                    f"face detection on these {count} uploads did not finish within FACEGEN_REQUEST_TIMEOUT_S="
                    f"{timeout_s:g} s: send fewer or smaller photos, or align=none"
                ) from None
            raise DeadlineExceeded(
                f"face detection not finished within FACEGEN_REQUEST_TIMEOUT_S={timeout_s:g} s (the server is busy)",
                retry_after_s=self.retry_after_s(count),
            ) from None
        finally:
            if not job.future.done():
                job.abandoned = True  # the detection thread drops it at its next check
                job.future.cancel()
            self.discard(job)

    def retry_after_s(self, count: int) -> int:
        rate = self.images_per_s or 1.0
        return max(1, math.ceil((self.queued_images + count) / rate))

    def discard(self, job: DetectionJob) -> None:
        if job in self.pending:
            self.pending.remove(job)
            self.queued_images -= len(job.images)

    # ---- the worker side ----------------------------------------------------------------------------------------
    def take(self) -> list[DetectionJob]:
        """The oldest wanted jobs up to ``max_batch_images`` images (the first always); the rest are dropped."""
        taken: list[DetectionJob] = []
        images = 0
        for job in list(self.pending):
            if not job.wanted() or job.future.done():
                self.discard(job)
                continue
            if taken and images + len(job.images) > self.max_batch_images:
                break
            self.discard(job)
            taken.append(job)
            images += len(job.images)
        return taken

    async def work(self) -> None:
        assert self.wake is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = self.take()
            if not jobs:
                if self.closing:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            for job in jobs:
                job.alone = len(jobs) == 1
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run, jobs)
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # noqa: BLE001 - every failure is answered, none kills the worker
                if not isinstance(error, DetectorError):
                    logger.error("face detection failed on a batch of %d requests: %r", len(jobs), error)
                    error = DetectionFailed(f"face detection failed ({type(error).__name__}); see the server log")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            count = sum(len(job.images) for job in jobs)
            rate = count / max(time.perf_counter() - started, 1e-6)
            self.images_per_s = rate if self.images_per_s is None else 0.8 * self.images_per_s + 0.2 * rate
            for job, faces in zip(jobs, results):
                if job.future.done():
                    continue
                if faces is None:
                    job.future.set_exception(DeadlineExceeded("face detection: abandoned past its deadline"))
                else:
                    job.future.set_result(faces)

    def run(self, jobs: list[DetectionJob]) -> list[list[list[Face]] | None]:
        """On the detection thread: one batch over every job's images; None for a job no longer wanted."""
        if self.detector is None:
            self.detector = self.load(self.device)
        images = [image for job in jobs for image in job.images]
        owners = [job for job in jobs for _ in job.images]
        found = self.detector.detect_batch(images, limits=self.limits, wanted=lambda i: owners[i].wanted())
        results: list[list[list[Face]] | None] = []
        start = 0
        for job in jobs:
            faces = found[start : start + len(job.images)]
            start += len(job.images)
            results.append(None if any(f is None for f in faces) else [f for f in faces if f is not None])
        return results

    async def close(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued (bounded by ``timeout_s``), then stop the worker and the thread."""
        self.closing = True
        if self.wake is not None:
            self.wake.set()
        if self.task is not None:
            _, still = await asyncio.wait({self.task}, timeout=timeout_s)
            for task in still:
                task.cancel()
        for job in list(self.pending):
            job.abandoned = True
            if not job.future.done():
                job.future.set_exception(ServiceUnavailable("the server is shutting down", retry_after_s=1))
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown)
