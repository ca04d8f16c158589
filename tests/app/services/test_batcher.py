"""The dynamic batcher, with a stand-in pipeline whose forward is observable: batching, slicing, shedding, deadlines,
cancellation, failures, OOM splitting, chunking, fairness between models, draining on close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from app.models.pipelines import Prepared
from app.services.batcher import Batcher, DeadlineExceeded, DoesNotFit, ForwardFailed, Overloaded


class StandIn:
    """Doubles its input; records every forward's operation and rows; optionally slow, failing or out of memory."""

    capabilities = frozenset({"sample"})

    def __init__(self, name: str = "model", seconds: float = 0.0, fail_when=None, oom_above: int | None = None):
        self.name, self.seconds, self.fail_when, self.oom_above = name, seconds, fail_when, oom_above
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def run(self, operation: str, inputs):
        rows = int(inputs[0].shape[0])
        with self.lock:
            self.calls.append((operation, rows))
        if self.seconds:
            time.sleep(self.seconds)
        if self.oom_above is not None and rows > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if self.fail_when is not None and self.fail_when(inputs[0]):
            raise RuntimeError("injected failure")
        return (inputs[0] * 2, inputs[0].sum(1))

    def __call__(self, prepared):
        return self.run(prepared.operation, prepared.inputs)

    def warmup(self):
        return request(1, 0.0)


def request(rows: int, value: float, operation: str = "sample") -> Prepared:
    return Prepared(operation, (torch.full((rows, 3), value),))


def run(coroutine):
    return asyncio.run(coroutine)


async def started(pipelines: dict, **settings) -> Batcher:
    settings = {"max_batch": 64, "delay_ms": 20, "max_queue": 1024, **settings}
    batcher = Batcher(pipelines, **settings)
    batcher.start()
    return batcher


def test_concurrent_requests_share_one_forward_and_get_their_own_rows():
    async def scenario():
        model = StandIn()
        batcher = await started({"m": model})
        sizes = [1, 3, 2, 5, 1, 4]
        results = await asyncio.gather(*(batcher.submit("m", request(n, float(i)), 5) for i, n in enumerate(sizes)))
        await batcher.close()
        return model, sizes, results

    model, sizes, results = run(scenario())
    assert model.calls == [("sample", sum(sizes))], "all six requests ran in one forward"
    for index, (n, (doubled, summed)) in enumerate(zip(sizes, results)):
        assert doubled.shape == (n, 3) and torch.all(doubled == 2 * index)
        assert torch.all(summed == 3 * index)


def test_batches_respect_max_batch_and_operations_do_not_mix():
    async def scenario():
        model = StandIn(seconds=0.01)
        batcher = await started({"m": model}, max_batch=4)
        jobs = [batcher.submit("m", request(2, 1.0, "a" if i % 2 else "b"), 5) for i in range(8)]
        await asyncio.gather(*jobs)
        await batcher.close()
        return model

    model = run(scenario())
    assert all(rows <= 4 for _, rows in model.calls)
    assert sum(rows for _, rows in model.calls) == 16 and {op for op, _ in model.calls} == {"a", "b"}


def test_a_request_larger_than_max_batch_runs_alone_in_chunks():
    async def scenario():
        model = StandIn()
        batcher = await started({"m": model}, max_batch=4)
        ((doubled, _),) = await asyncio.gather(batcher.submit("m", request(10, 3.0), 5))
        await batcher.close()
        return model, doubled

    model, doubled = run(scenario())
    assert [rows for _, rows in model.calls] == [4, 4, 2]
    assert doubled.shape == (10, 3) and torch.all(doubled == 6)


def test_full_queue_answers_at_once_with_retry_after():
    async def scenario():
        model = StandIn(seconds=0.2)
        batcher = await started({"m": model}, max_batch=2, max_queue=4, delay_ms=0)
        first = asyncio.ensure_future(batcher.submit("m", request(2, 0.0), 5))
        await asyncio.sleep(0.05)  # the first batch is now running; the queue is empty
        queued = [asyncio.ensure_future(batcher.submit("m", request(2, 1.0), 5)) for _ in range(2)]
        await asyncio.sleep(0)
        started_at = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit("m", request(1, 2.0), 5)
        refused_after = time.perf_counter() - started_at
        await asyncio.gather(first, *queued)
        await batcher.close()
        return refused.value, refused_after

    error, seconds = run(scenario())
    assert seconds < 0.05, "a refusal does not wait"
    assert error.retry_after_s >= 1 and "FACEGEN_MAX_QUEUE=4" in str(error)


def test_a_request_past_its_deadline_is_dropped_before_it_is_computed():
    async def scenario():
        model = StandIn(seconds=0.3)
        batcher = await started({"m": model}, max_batch=1, delay_ms=0)
        blocker = asyncio.ensure_future(batcher.submit("m", request(1, 0.0), 5))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit("m", request(1, 9.0), 0.1)
        await blocker
        await asyncio.sleep(0.05)
        await batcher.close()
        return model

    model = run(scenario())
    assert model.calls == [("sample", 1)], "the expired request never ran"


def test_a_cancelled_request_leaves_the_queue_and_is_never_computed():
    async def scenario():
        model = StandIn(seconds=0.2)
        batcher = await started({"m": model}, max_batch=1, delay_ms=0)
        blocker = asyncio.ensure_future(batcher.submit("m", request(1, 0.0), 5))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(batcher.submit("m", request(1, 7.0), 5))
        await asyncio.sleep(0.02)
        assert batcher.queues["m"].queued_rows == 1
        gone.cancel()
        await asyncio.sleep(0.01)
        queued_after_cancel = batcher.queues["m"].queued_rows
        await blocker
        await batcher.close()
        return model, queued_after_cancel

    model, queued = run(scenario())
    assert queued == 0 and model.calls == [("sample", 1)]


def test_a_failing_forward_fails_only_its_batch_and_the_worker_goes_on():
    async def scenario():
        model = StandIn(fail_when=lambda x: bool((x == 13).any()))
        batcher = await started({"m": model})
        bad = await asyncio.gather(
            batcher.submit("m", request(1, 13.0), 5), batcher.submit("m", request(2, 1.0), 5), return_exceptions=True
        )
        good = await batcher.submit("m", request(1, 4.0), 5)
        await batcher.close()
        return bad, good

    bad, good = run(scenario())
    assert all(isinstance(error, ForwardFailed) for error in bad)
    assert "RuntimeError" in str(bad[0]) and torch.all(good[0] == 8)


def test_out_of_memory_splits_the_batch_until_it_fits():
    async def scenario():
        model = StandIn(oom_above=4)
        batcher = await started({"m": model})
        results = await asyncio.gather(*(batcher.submit("m", request(2, float(i)), 5) for i in range(4)))
        await batcher.close()
        return model, results

    model, results = run(scenario())
    assert model.calls[0] == ("sample", 8) and all(rows <= 4 for _, rows in model.calls[1:])
    assert [float(doubled[0, 0]) for doubled, _ in results] == [0.0, 2.0, 4.0, 6.0]


def test_a_request_that_does_not_fit_alone_gets_503_and_the_service_recovers():
    async def scenario():
        model = StandIn(oom_above=4)
        batcher = await started({"m": model})
        with pytest.raises(DoesNotFit, match="does not fit"):
            await batcher.submit("m", request(6, 1.0), 5)
        after = await batcher.submit("m", request(3, 1.0), 5)
        await batcher.close()
        return after

    assert torch.all(run(scenario())[0] == 2)


def test_models_on_one_device_take_turns():
    async def scenario():
        busy, quiet = StandIn("busy", seconds=0.05), StandIn("quiet", seconds=0.05)
        batcher = await started({"busy": busy, "quiet": quiet}, max_batch=1, delay_ms=0)
        order: list[str] = []

        async def tracked(name):
            await batcher.submit(name, request(1, 1.0), 10)
            order.append(name)

        flood = [asyncio.ensure_future(tracked("busy")) for _ in range(8)]
        await asyncio.sleep(0.01)
        await tracked("quiet")
        await asyncio.gather(*flood)
        await batcher.close()
        return order

    order = run(scenario())
    assert order.index("quiet") <= 2, f"the quiet model waited behind the whole flood: {order}"


def test_close_finishes_what_is_queued():
    async def scenario():
        model = StandIn(seconds=0.05)
        batcher = await started({"m": model}, max_batch=1, delay_ms=0)
        jobs = [asyncio.ensure_future(batcher.submit("m", request(1, float(i)), 5)) for i in range(4)]
        await asyncio.sleep(0.01)
        await batcher.close(timeout_s=5)
        return await asyncio.gather(*jobs)

    results = run(scenario())
    assert [float(doubled[0, 0]) for doubled, _ in results] == [0.0, 2.0, 4.0, 6.0]


def test_warm_up_runs_each_model_once_and_drops_a_failing_one():
    async def scenario():
        good, bad = StandIn("good"), StandIn("bad", fail_when=lambda x: True)
        batcher = Batcher({"good": good, "bad": bad}, max_batch=4, delay_ms=0, max_queue=8)
        failures = await batcher.warm_up()
        batcher.executor.shutdown()
        return good, batcher, failures

    good, batcher, failures = run(scenario())
    assert good.calls == [("sample", 1)] and list(batcher.queues) == ["good"]
    assert "injected failure" in failures["bad"]


class Gated(StandIn):
    """A stand-in whose forwards block until ``gate`` opens; ``entered`` is set when a forward has started."""

    def __init__(self, name: str = "model"):
        super().__init__(name)
        self.gate, self.entered = threading.Event(), threading.Event()

    def run(self, operation: str, inputs):
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().run(operation, inputs)


async def until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def test_a_lone_request_starts_at_once_without_waiting_the_window():
    async def scenario():
        model = StandIn()
        # A window of a minute: waiting it would be unmistakable, but the batcher's own accounting says it directly.
        batcher = await started({"m": model}, delay_ms=60_000)
        doubled, _ = await asyncio.wait_for(batcher.submit("m", request(1, 5.0), 120), 30)
        queue = batcher.queues["m"]
        counts = queue.started_at_once, queue.started_after_window
        await batcher.close()
        return model, doubled, counts

    model, doubled, counts = run(scenario())
    assert model.calls == [("sample", 1)] and torch.all(doubled == 10)
    assert counts == (1, 0), "the batch started because the device was free, not after the window"


def test_requests_arriving_during_a_forward_form_the_next_batch():
    async def scenario():
        model = Gated()
        batcher = await started({"m": model}, delay_ms=60_000)
        first = asyncio.ensure_future(batcher.submit("m", request(1, 1.0), 60))
        await until(model.entered.is_set, "the first forward started")
        later = [asyncio.ensure_future(batcher.submit("m", request(n, 2.0), 60)) for n in (2, 3, 1)]
        await asyncio.sleep(0)
        model.gate.set()
        await asyncio.gather(first, *later)
        queue = batcher.queues["m"]
        counts = queue.started_at_once, queue.started_after_window
        await batcher.close()
        return model, counts

    model, counts = run(scenario())
    assert model.calls == [("sample", 1), ("sample", 6)], "the three that arrived during the forward ran together"
    assert counts == (2, 0)


async def answered_batch_of_three(model: Gated, batcher: Batcher) -> None:
    """One forward of one, then one of three (they arrived while the first ran): the last batch answered 3 rows."""
    first = asyncio.ensure_future(batcher.submit("m", request(1, 1.0), 60))
    await until(model.entered.is_set, "the first forward started")
    three = [asyncio.ensure_future(batcher.submit("m", request(1, 2.0), 60)) for _ in range(3)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(first, *three)


def test_the_clients_of_the_last_batch_coming_back_form_one_batch_not_a_forward_of_one_and_one_of_the_rest():
    async def scenario():
        model = Gated()
        batcher = await started({"m": model}, delay_ms=60_000)
        await answered_batch_of_three(model, batcher)
        # The three clients send their next requests one after another, the device idle all the while.
        again = [asyncio.ensure_future(batcher.submit("m", request(1, 3.0), 60))]
        await asyncio.sleep(0.05)
        assert model.calls == [("sample", 1), ("sample", 3)], "the first to come back waits for the others"
        again += [asyncio.ensure_future(batcher.submit("m", request(1, 3.0), 60)) for _ in range(2)]
        results = await asyncio.wait_for(asyncio.gather(*again), 30)
        queue = batcher.queues["m"]
        counts = queue.started_at_once, queue.started_after_window
        await batcher.close()
        return model, results, counts

    model, results, counts = run(scenario())
    assert model.calls == [("sample", 1), ("sample", 3), ("sample", 3)]
    assert all(torch.all(doubled == 6) for doubled, _ in results)
    assert counts == (2, 1), "it waited for the batch to fill, and started as soon as the three were there"


def test_the_wait_for_returning_clients_is_bounded_by_the_window():
    async def scenario():
        model = Gated()
        batcher = await started({"m": model}, delay_ms=100)
        await answered_batch_of_three(model, batcher)
        arrived = time.perf_counter()
        await asyncio.wait_for(batcher.submit("m", request(1, 3.0), 60), 30)  # the only one that comes back
        waited = time.perf_counter() - arrived
        await batcher.close()
        return model, waited

    model, waited = run(scenario())
    assert model.calls == [("sample", 1), ("sample", 3), ("sample", 1)]
    assert 0.09 <= waited < 5, f"it waited the 100 ms window, then ran alone (waited {waited:.3f} s)"


def test_a_request_long_after_the_last_batch_starts_at_once():
    async def scenario():
        model = Gated()
        batcher = await started({"m": model}, delay_ms=50)
        await answered_batch_of_three(model, batcher)
        await asyncio.sleep(0.2)  # longer than the window: the last batch's clients are not coming back together
        await asyncio.wait_for(batcher.submit("m", request(1, 3.0), 60), 30)
        queue = batcher.queues["m"]
        counts = queue.started_at_once, queue.started_after_window
        await batcher.close()
        return model, counts

    model, counts = run(scenario())
    assert model.calls == [("sample", 1), ("sample", 3), ("sample", 1)]
    assert counts == (3, 0)


def test_while_another_models_forward_runs_a_batch_fills_and_starts_when_the_device_frees():
    async def scenario():
        busy, quiet = Gated("busy"), StandIn("quiet")
        batcher = await started({"busy": busy, "quiet": quiet}, delay_ms=60_000)
        blocker = asyncio.ensure_future(batcher.submit("busy", request(1, 1.0), 60))
        await until(busy.entered.is_set, "the busy model's forward started")
        waiting = [asyncio.ensure_future(batcher.submit("quiet", request(1, float(i)), 60)) for i in range(3)]
        await until(
            lambda: batcher.queues["quiet"].started_after_window == 0 and len(batcher.queues["quiet"].pending) == 3,
            "queued",
        )
        assert quiet.calls == [], "nothing of the quiet model runs while the device is busy"
        busy.gate.set()  # the device frees: the quiet model's batch starts at once, well inside its minute
        results = await asyncio.wait_for(asyncio.gather(*waiting), 30)
        await blocker
        counts = batcher.queues["quiet"].started_at_once, batcher.queues["quiet"].started_after_window
        await batcher.close()
        return quiet, results, counts

    quiet, results, counts = run(scenario())
    assert quiet.calls == [("sample", 3)], "the three requests that waited for the device share one forward"
    assert [float(doubled[0, 0]) for doubled, _ in results] == [0.0, 2.0, 4.0]
    assert counts == (0, 1), "it waited for the device (the window), then started when the device freed"
