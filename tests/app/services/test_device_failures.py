"""What CUDA failures do to the batcher and the health routes, with the errors injected on the CPU: every allocation
failure splits the batch (with the failed forward's tensors freed first), and a sticky device error turns the
service unhealthy."""

from __future__ import annotations

import asyncio
import threading
import weakref

import pytest
import torch

from app.models.pipelines import Prepared
from app.services.batcher import Batcher, ForwardFailed, ServiceUnavailable
from app.services.device import is_device_fault, is_out_of_memory

ALLOCATION_FAILURES = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
]
DEVICE_FAULTS = [
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: unspecified launch failure"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("CUDA error: GPU has fallen off the bus"),
]


@pytest.mark.parametrize("error", ALLOCATION_FAILURES, ids=lambda e: str(e).split("\n")[0][:40])
def test_every_allocation_failure_is_out_of_memory_and_none_is_a_fault(error):
    assert is_out_of_memory(error)
    assert not is_device_fault(error)


@pytest.mark.parametrize("error", DEVICE_FAULTS, ids=lambda e: str(e)[:40])
def test_sticky_cuda_errors_are_faults(error):
    assert is_device_fault(error) and not is_out_of_memory(error)


def test_ordinary_errors_are_neither():
    for error in (RuntimeError("shape mismatch"), ValueError("CUDA error: out of memory"), KeyError("x")):
        assert not is_device_fault(error) and not is_out_of_memory(error)


class Exploding:
    """Fails any forward above ``fits`` rows with ``error`` raised from a frame that holds a large tensor (the
    activations a real failed forward leaves in its traceback); records, at each forward, whether the tensor of the
    previous failed forward was still alive."""

    capabilities = frozenset({"sample"})

    def __init__(self, error: BaseException, fits: int):
        self.error, self.fits = error, fits
        self.calls: list[int] = []
        self.alive_at_retry: list[bool] = []
        self.previous: weakref.ref | None = None
        self.lock = threading.Lock()

    def run(self, operation: str, inputs):
        rows = int(inputs[0].shape[0])
        with self.lock:
            self.calls.append(rows)
            if self.previous is not None:
                self.alive_at_retry.append(self.previous() is not None)
        if rows > self.fits:
            activations = torch.empty(8 * 1024 * 1024)  # 32 MiB, referenced only by this frame
            self.previous = weakref.ref(activations)
            raise type(self.error)(*self.error.args)  # a fresh one: its traceback is this forward's alone
        return (inputs[0] * 2,)

    def __call__(self, prepared):
        return self.run(prepared.operation, prepared.inputs)

    def warmup(self):
        return Prepared("sample", (torch.zeros(1, 3),))


async def answers(model, sizes: list[int]) -> tuple[Batcher, list]:
    batcher = Batcher({"m": model}, max_batch=64, delay_ms=20, max_queue=1024)
    batcher.start()
    requests = (Prepared("sample", (torch.full((n, 3), float(i)),)) for i, n in enumerate(sizes))
    results = await asyncio.gather(*(batcher.submit("m", r, 5) for r in requests), return_exceptions=True)
    await batcher.close()
    return batcher, results


@pytest.mark.parametrize("error", ALLOCATION_FAILURES, ids=lambda e: str(e).split("\n")[0][:40])
def test_allocation_failures_split_the_batch_after_freeing_the_failed_forward(error):
    model = Exploding(error, fits=4)
    batcher, results = asyncio.run(answers(model, [2, 2, 2, 2]))
    assert model.calls[0] == 8 and all(rows <= 4 for rows in model.calls[1:])
    assert [float(result[0][0, 0]) for result in results] == [0.0, 2.0, 4.0, 6.0]
    assert model.alive_at_retry and not any(model.alive_at_retry), "the retry ran while the failed tensors lived"
    assert batcher.fault is None


@pytest.mark.parametrize("error", DEVICE_FAULTS[:2], ids=lambda e: str(e)[:40])
def test_a_device_fault_answers_503_and_refuses_later_requests(error):
    async def scenario():
        batcher = Batcher({"m": Exploding(error, fits=0)}, max_batch=64, delay_ms=0, max_queue=1024)
        batcher.start()
        with pytest.raises(ServiceUnavailable, match="device failed"):
            await batcher.submit("m", Prepared("sample", (torch.zeros(1, 3),)), 5)
        with pytest.raises(ServiceUnavailable, match="must restart"):
            await batcher.submit("m", Prepared("sample", (torch.zeros(1, 3),)), 5)
        await batcher.close()
        return batcher

    assert str(error) in str(asyncio.run(scenario()).fault)


def test_an_ordinary_failure_is_500_and_leaves_the_service_healthy():
    async def scenario():
        batcher = Batcher({"m": Exploding(RuntimeError("bad shape"), fits=0)}, max_batch=64, delay_ms=0, max_queue=8)
        batcher.start()
        with pytest.raises(ForwardFailed):
            await batcher.submit("m", Prepared("sample", (torch.zeros(1, 3),)), 5)
        await batcher.close()
        return batcher

    assert asyncio.run(scenario()).fault is None


def test_health_and_ready_turn_503_after_a_device_fault(make_client, tiny_weights, monkeypatch):
    client = make_client(weights_dir=tiny_weights, device="cpu")
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    pipeline = client.app.state.store.pipelines["dcgan"]

    def broken(operation, inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(pipeline, "run", broken)
    response = client.post("/generate/dcgan", json={"n": 1, "seed": 1})
    assert response.status_code == 503 and "device failed" in response.json()["detail"]
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy" and "illegal memory access" in health.json()["detail"]
    assert client.head("/health").status_code == 503  # FastAnswers' early answer steps aside for HEAD too
    ready = client.get("/ready")
    assert ready.status_code == 503 and "the device failed" in ready.json()["detail"]
    # every family is refused now, not only the one that failed: the device is shared
    assert client.post("/generate/vae", json={"n": 1, "seed": 1}).status_code == 503
