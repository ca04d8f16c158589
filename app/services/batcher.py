"""The dynamic batcher: the one seam between routes and pipelines.

Per loaded model, a queue and one worker coroutine. The worker takes the waiting requests of one operation (up to
``max_batch`` rows), concatenates their inputs, runs one forward and answers each request with its own rows. There is
no timer when the device is idle: a request that finds the forward thread free starts its forward at once, and the
requests that arrive while a forward runs form the next batch. A worker waits for its batch to fill, up to
``delay_s`` from its oldest request's arrival, only when waiting costs nothing or is likely to pay: while a forward is
in flight (another model's, or a face detection; the forward could not start anyway, and the wait ends when the device
frees), and when the model's last batch has just been answered to more rows than are waiting now (the clients it
answered are sending their next requests: starting at once would split them into a forward of one and a forward of
the rest, each paying a forward's fixed cost). A lone client's batch of one expects one: it never waits.

All models on a device share one forward thread, so on a CPU two forwards never fight over the cores, and the
thread's FIFO queue takes the models' batches in turn (none starves).

Requests arrive with their inputs already drawn from their own seeds (:class:`app.models.pipelines.Prepared`), so a
request gives the same images alone or inside any batch.

Load is shed, not queued without bound: past ``max_queue`` waiting rows a request is refused at once
(:class:`Overloaded`, 503 with Retry-After from the queue and the measured forward rate); a request whose deadline
passes while it waits is dropped before it is computed; a cancelled request (client gone) leaves the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.models.pipelines import Pipeline, Prepared
from app.models.pipelines.base import Tensors, implausible_images
from app.services.device import is_device_fault, is_out_of_memory

logger = logging.getLogger("facegen.batcher")
T = TypeVar("T")


class ServiceUnavailable(RuntimeError):
    """The request was not computed; the service answers 503 with this message (and Retry-After when set)."""

    def __init__(self, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(ServiceUnavailable):
    pass


class DeadlineExceeded(ServiceUnavailable):
    pass


class DoesNotFit(ServiceUnavailable):
    pass


class ForwardFailed(RuntimeError):
    """The forward of the batch this request was in raised; answered 500."""


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set or ``timeout_s`` has passed (which sets it: the caller clears it before waiting and
    checks why it woke). A timer, not ``asyncio.wait_for``'s task per wait: a batch wakes its worker once per
    request."""
    timer = asyncio.get_running_loop().call_later(timeout_s, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


@dataclass(eq=False)
class Job:
    operation: str
    inputs: Tensors = field(repr=False)
    rows: int
    arrived: float
    deadline: float
    future: asyncio.Future = field(repr=False)
    queued: bool = True  # in its model's pending queue (cleared when taken for a batch or discarded)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)  # answers 503 at the deadline


class BatcherMetrics:
    def __init__(self, registry: CollectorRegistry | None):
        self.batch_rows = Histogram(
            "facegen_batch_rows",
            "rows (images) per forward",
            ["family"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
        self.batch_requests = Histogram(
            "facegen_batch_requests",
            "requests per forward",
            ["family"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.queue_rows = Gauge("facegen_queue_rows", "rows waiting in the queue", ["family"], registry=registry)
        self.queue_wait = Histogram(
            "facegen_queue_wait_seconds",
            "time from arrival to the start of its forward",
            ["family"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.forward_seconds = Histogram(
            "facegen_forward_seconds",
            "duration of one batched forward",
            ["family"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.shed = Counter(
            "facegen_shed_requests",
            "requests answered without being computed",
            ["family", "reason"],
            registry=registry,
        )


class ModelQueue:
    """The queue and worker of one model."""

    def __init__(self, name: str, pipeline: Pipeline, batcher: Batcher):
        self.name, self.pipeline, self.batcher = name, pipeline, batcher
        self.pending: deque[Job] = deque()
        self.queued_rows = 0
        self.wake = asyncio.Event()
        self.rows_per_s: float | None = None  # moving average of the forward rate, for Retry-After
        self.task: asyncio.Task | None = None
        # What the worker did, for the metrics and the tests: batches started at once (the device was free) and
        # batches that waited for the window (a forward was in flight).
        self.started_at_once = 0
        self.started_after_window = 0
        # The rows of the last batch answered, and when (loop time): the clients it answered come back together.
        self.last_rows = 0
        self.last_answered = -math.inf
        # The metrics' children of this model, looked up once: labels() takes a lock and hashes on every call.
        metrics = batcher.metrics
        self.queue_rows = metrics.queue_rows.labels(name)
        self.shed_queue_full = metrics.shed.labels(name, "queue_full")
        self.shed_deadline = metrics.shed.labels(name, "deadline")
        self.batch_requests = metrics.batch_requests.labels(name)
        self.batch_rows = metrics.batch_rows.labels(name)
        self.queue_wait = metrics.queue_wait.labels(name)
        self.forward_seconds = metrics.forward_seconds.labels(name)

    # ---- the request side ---------------------------------------------------------------------------------------
    def enqueue(self, prepared: Prepared, timeout_s: float) -> Job:
        """Queue ``prepared`` (or refuse it at once: full queue, shutting down); its answer comes on ``job.future``,
        a 503 when it is not computed within ``timeout_s``. Whoever enqueues calls :meth:`finish` once it stops
        waiting. A plain future and a timer, no task: a request's wait costs the event loop next to nothing."""
        batcher = self.batcher
        if batcher.closing:
            raise ServiceUnavailable("the server is shutting down", retry_after_s=1)
        if batcher.fault is not None:
            raise ServiceUnavailable(f"{self.name}: the device failed; the server must restart")
        rows = prepared.rows
        if self.queued_rows and self.queued_rows + rows > batcher.max_queue:
            raise Overloaded(self.overloaded_message(), retry_after_s=self.retry_after_s(rows))
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = Job(prepared.operation, prepared.inputs, rows, now, now + timeout_s, loop.create_future())
        job.timer = loop.call_at(job.deadline, self.expire, job, timeout_s)
        self.pending.append(job)
        self.queued_rows += rows
        self.queue_rows.set(self.queued_rows)
        self.wake.set()
        return job

    def expire(self, job: Job, timeout_s: float) -> None:
        if job.future.done():
            return
        self.shed_deadline.inc()
        job.future.set_exception(
            DeadlineExceeded(
                f"{self.name}: not answered within FACEGEN_REQUEST_TIMEOUT_S={timeout_s:g} s (the server is busy)",
                retry_after_s=self.retry_after_s(job.rows),
            )
        )

    def finish(self, job: Job) -> None:
        """The request stopped waiting (answered, timed out, cancelled: the client went away): a job still queued
        is dropped, never computed."""
        if job.timer is not None:
            job.timer.cancel()
        if not job.future.done():
            job.future.cancel()
        self.discard(job)

    async def submit(self, prepared: Prepared, timeout_s: float) -> Tensors:
        job = self.enqueue(prepared, timeout_s)
        try:
            return await job.future
        finally:
            self.finish(job)

    def overloaded_message(self) -> str:
        """What a request refused for a full queue is told (counted here: every refusal says it once)."""
        self.shed_queue_full.inc()
        return (
            f"{self.name}: {self.queued_rows} images are already waiting (FACEGEN_MAX_QUEUE={self.batcher.max_queue}); "
            "try again shortly"
        )

    def retry_after_s(self, rows: int) -> int:
        rate = self.rows_per_s or 1.0
        return max(1, math.ceil((self.queued_rows + rows) / rate))

    def discard(self, job: Job) -> None:
        # Checked by flag: deque.remove of a job already taken would raise a ValueError whose message formats the
        # job, and formatting its tensors cost about as much as the rest of a one-image request.
        if not job.queued:
            return
        job.queued = False
        self.pending.remove(job)
        self.queued_rows -= job.rows
        self.queue_rows.set(self.queued_rows)

    # ---- the worker side ----------------------------------------------------------------------------------------
    async def work(self) -> None:
        loop = asyncio.get_running_loop()
        batcher = self.batcher
        while True:
            self.drop_finished()
            if not self.pending:
                if batcher.closing:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            first = self.pending[0]
            if batcher.delay_s > 0 and self.worth_filling(first):
                fill_until = first.arrived + batcher.delay_s
                while not batcher.closing and self.worth_filling(first) and (remaining := fill_until - loop.time()) > 0:
                    self.wake.clear()
                    await wait_event(self.wake, remaining)
                self.started_after_window += 1
            else:
                self.started_at_once += 1
            jobs = self.take(first.operation, loop.time())
            if jobs:
                await self.execute(jobs)

    def drop_finished(self) -> None:
        while self.pending and self.pending[0].future.done():
            self.discard(self.pending[0])

    def worth_filling(self, first: Job) -> bool:
        """Whether the batch led by ``first`` should wait for more rows (the window bounds the wait): the device is
        busy, or the last batch has just been answered to more rows than wait now."""
        batcher = self.batcher
        rows = self.rows_of(first.operation)
        if rows >= batcher.max_batch:
            return False
        if batcher.in_flight:
            return True
        return rows < self.last_rows and first.arrived - self.last_answered < batcher.delay_s

    def rows_of(self, operation: str) -> int:
        return sum(job.rows for job in self.pending if job.operation == operation and not job.future.done())

    def take(self, operation: str, now: float) -> list[Job]:
        """The oldest jobs of ``operation`` up to ``max_batch`` rows (the first always, however large: it is chunked);
        jobs past their deadline are answered 503 instead."""
        taken: list[Job] = []
        rows = 0
        for job in list(self.pending):
            if job.operation != operation or job.future.done():
                continue
            if job.deadline <= now:
                self.discard(job)
                self.shed_deadline.inc()
                job.future.set_exception(DeadlineExceeded(f"{self.name}: waited past its deadline"))
                continue
            if taken and rows + job.rows > self.batcher.max_batch:
                break
            taken.append(job)
            rows += job.rows
        for job in taken:
            self.discard(job)
        return taken

    async def execute(self, jobs: list[Job]) -> None:
        started = asyncio.get_running_loop().time()
        self.batch_requests.observe(len(jobs))
        for job in jobs:
            self.queue_wait.observe(started - job.arrived)
        inputs = tuple(torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*(job.inputs for job in jobs)))
        out_of_memory = False
        try:
            outputs = await self.batcher.forward(self, jobs[0].operation, inputs)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - every failure is answered, none kills the worker
            # Only a verdict leaves this block: the error's traceback holds the failed forward's tensors (activations
            # on the GPU), which must be freed before the cache is emptied and the halves are retried.
            out_of_memory = is_out_of_memory(error)
            if not out_of_memory:
                self.fail(jobs, error)
                return
        if out_of_memory:
            del inputs
            await self.split_after_oom(jobs)
            return
        offset = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(tuple(output[offset : offset + job.rows] for output in outputs))
            offset += job.rows
        self.last_rows, self.last_answered = offset, asyncio.get_running_loop().time()

    def fail(self, jobs: list[Job], error: BaseException) -> None:
        """Answer every job of a batch whose forward raised ``error`` (not out of memory): 500, or 503 once the device
        is broken (the batcher then reports unhealthy until the process restarts)."""
        sizes = [job.rows for job in jobs]
        logger.error(
            "forward of %s/%s failed for a batch of %d requests (rows %s): %r",
            self.name,
            jobs[0].operation,
            len(jobs),
            sizes,
            error,
        )
        if is_device_fault(error):
            self.batcher.device_failed(f"{type(error).__name__}: {error}")
        for job in jobs:
            if job.future.done():
                continue
            if self.batcher.fault is not None:
                job.future.set_exception(ServiceUnavailable(f"{self.name}: the device failed; the server must restart"))
            else:
                job.future.set_exception(
                    ForwardFailed(
                        f"{self.name}: the model failed on this batch ({type(error).__name__}); see the server log"
                    )
                )

    async def split_after_oom(self, jobs: list[Job]) -> None:
        if torch.cuda.is_available():
            # On the forward thread, after any forward in flight: the freed blocks go back to the driver only once no
            # kernel still uses them.
            await asyncio.get_running_loop().run_in_executor(self.batcher.executor, torch.cuda.empty_cache)
        if len(jobs) == 1:
            self.batcher.metrics.shed.labels(self.name, "out_of_memory").inc()
            if not jobs[0].future.done():
                jobs[0].future.set_exception(
                    DoesNotFit(
                        f"{self.name}: this request alone ({jobs[0].rows} images) does not fit in the device's memory; "
                        "ask for fewer images",
                        retry_after_s=None,
                    )
                )
            return
        logger.warning("%s: out of memory on a batch of %d requests; retrying in halves", self.name, len(jobs))
        half = len(jobs) // 2
        await self.execute(jobs[:half])
        await self.execute(jobs[half:])


class Batcher:
    """All models of one device. ``forward`` is the single place a model runs for the service."""

    def __init__(
        self,
        pipelines: dict[str, Pipeline],
        *,
        max_batch: int,
        delay_ms: float,
        max_queue: int,
        metrics: BatcherMetrics | None = None,
    ):
        if max_batch < 1 or max_queue < 1 or delay_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and delay_ms >= 0")
        self.max_batch, self.delay_s, self.max_queue = max_batch, delay_ms / 1000, max_queue
        self.metrics = metrics or BatcherMetrics(CollectorRegistry())
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="facegen-forward")
        self.queues: dict[str, ModelQueue] = {}
        self.closing = False
        # Why the device is unusable (a sticky CUDA error such as an illegal address): /health and /ready answer 503
        # from then on, so the orchestrator restarts the process; None while healthy.
        self.fault: str | None = None
        self.in_flight = 0  # forwards handed to the forward thread and not yet finished
        for name, pipeline in pipelines.items():
            self.queues[name] = ModelQueue(name, pipeline, self)

    def device_failed(self, reason: str) -> None:
        if self.fault is None:
            logger.critical("the device failed, every forward will fail until the process restarts: %s", reason)
            self.fault = reason

    def start(self) -> None:
        for queue in self.queues.values():
            queue.task = asyncio.get_running_loop().create_task(queue.work(), name=f"batcher-{queue.name}")

    async def submit(self, name: str, prepared: Prepared, timeout_s: float) -> Tensors:
        """The outputs of ``prepared`` (rows in the same order), computed in some batch."""
        return await self.queues[name].submit(prepared, timeout_s)

    def on_device(self, function: Callable[[], T]) -> asyncio.Future[T]:
        """``function()`` on the forward thread, counted in :attr:`in_flight` until it has finished; when the
        device frees, the workers waiting for their batches to fill start at once."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, function)
        self.in_flight += 1
        future.add_done_callback(self._device_done)
        return future

    def _device_done(self, _: asyncio.Future) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            for queue in self.queues.values():
                if queue.pending:
                    queue.wake.set()

    async def forward(self, queue: ModelQueue, operation: str, inputs: Tensors) -> Tensors:
        rows = int(inputs[0].shape[0])
        started = time.perf_counter()
        outputs = await self.on_device(functools.partial(self.run_chunked, queue.pipeline, operation, inputs))
        seconds = time.perf_counter() - started
        queue.forward_seconds.observe(seconds)
        queue.batch_rows.observe(rows)
        rate = rows / max(seconds, 1e-6)
        queue.rows_per_s = rate if queue.rows_per_s is None else 0.8 * queue.rows_per_s + 0.2 * rate
        return outputs

    def run_chunked(self, pipeline: Pipeline, operation: str, inputs: Tensors) -> Tensors:
        """One forward, or, for a request larger than ``max_batch``, one per ``max_batch`` rows."""
        rows = int(inputs[0].shape[0])
        if rows <= self.max_batch:
            return pipeline.run(operation, inputs)
        parts = [
            pipeline.run(operation, tuple(t[start : start + self.max_batch] for t in inputs))
            for start in range(0, rows, self.max_batch)
        ]
        return tuple(torch.cat(chunks) for chunks in zip(*parts))

    async def warm_up(self) -> dict[str, str]:
        """One small forward per model, off the event loop, before the service reports ready. A model whose warm-up
        fails, or whose images are implausible (non-finite, constant, saturated), is taken out of service; returns
        name -> why, for each."""
        loop = asyncio.get_running_loop()
        failures = {}
        for name, queue in list(self.queues.items()):
            try:
                prepared = queue.pipeline.warmup()
                started = time.perf_counter()
                outputs = await loop.run_in_executor(self.executor, queue.pipeline, prepared)
                # A first estimate of the forward rate, so the Retry-After of the first refusals is not a guess.
                queue.rows_per_s = prepared.rows / max(time.perf_counter() - started, 1e-6)
                problem = implausible_images(outputs)
                if problem is not None:
                    raise ValueError(problem)
            except Exception as error:  # noqa: BLE001 - one bad model must not stop the others
                failures[name] = f"warm-up failed: {error}"
                logger.error("%s: warm-up failed, not serving it: %r", name, error)
                del self.queues[name]
        return failures

    async def close(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued (bounded by ``timeout_s``), then stop the workers and the forward thread."""
        self.closing = True
        tasks = [queue.task for queue in self.queues.values() if queue.task is not None]
        for queue in self.queues.values():
            queue.wake.set()
        if tasks:
            done, still = await asyncio.wait(tasks, timeout=timeout_s)
            for task in still:
                task.cancel()
        for queue in self.queues.values():
            for job in list(queue.pending):
                if not job.future.done():
                    job.future.set_exception(ServiceUnavailable("the server is shutting down", retry_after_s=1))
        self.executor.shutdown(wait=True, cancel_futures=True)
