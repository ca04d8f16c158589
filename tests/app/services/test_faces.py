"""The face service: detection on a thread and queue of its own (a DCGAN forward completes while a detection is
blocked), batched across requests without a timer, abandoned when the client leaves or the deadline passes (the
detector's ``wanted`` then says no), 503 with Retry-After only where waiting helps, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from PIL import Image

from app.api.deps import ClientDisconnected, until_disconnected
from app.models.detector import DetectorError, Face, FaceDetector
from app.services.batcher import DeadlineExceeded, Overloaded, ServiceUnavailable
from app.services.faces import FaceService

FACE = Face(box=(1.0, 2.0, 30.0, 40.0), score=0.99, landmarks=((1.0, 1.0),) * 5)


class Gate:
    """A stand-in detector: each batch records its size, blocks until released, then records what ``wanted`` says
    of each image (what the real detector asks between stages) and finds one face per image."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.calls: list[int] = []
        self.wanted_after_release: list[list[bool]] = []

    def detect_batch(self, images, min_face=None, *, limits, wanted):
        self.calls.append(len(images))
        self.started.set()
        assert self.release.wait(10), "never released"
        self.wanted_after_release.append([wanted(i) for i in range(len(images))])
        return [[FACE] if wanted(i) else None for i in range(len(images))]


def images(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (40, 50)) for _ in range(count)]


async def service_with(gate, **options) -> FaceService:
    service = FaceService(torch.device("cpu"), load=lambda device: gate, **options)
    service.start()
    return service


async def blocked(service: FaceService, gate: Gate, count: int = 1, timeout_s: float = 30) -> asyncio.Task:
    """A find() whose batch is running (blocked in the gate)."""
    task = asyncio.ensure_future(service.find(images(count), timeout_s))
    assert await asyncio.to_thread(gate.started.wait, 10)
    return task


def test_requests_that_arrive_during_a_detection_form_the_next_batch():
    async def scenario():
        gate = Gate()
        service = await service_with(gate)
        first = await blocked(service, gate)  # started at once: nothing waits for company
        second = asyncio.ensure_future(service.find(images(2), 30))
        third = asyncio.ensure_future(service.find(images(3), 30))
        await asyncio.sleep(0.05)
        gate.release.set()
        results = await asyncio.gather(first, second, third)
        await service.close()
        return gate.calls, results

    calls, results = asyncio.run(scenario())
    assert calls == [1, 5]
    assert [len(result) for result in results] == [1, 2, 3] and results[1][0] == [FACE]


def test_a_client_that_leaves_abandons_its_detection():
    async def scenario():
        gate = Gate()
        service = await service_with(gate)
        task = await blocked(service, gate, count=2)
        task.cancel()  # what the route does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.release.set()
        await service.close()
        return gate.wanted_after_release

    assert asyncio.run(scenario()) == [[False, False]]


def test_a_disconnect_seen_by_the_route_abandons_the_detection():
    """The route's wrapper (until_disconnected) cancels find() when the ASGI disconnect arrives; the detector is then
    told the images are no longer wanted."""

    class Leaving:
        def __init__(self) -> None:
            self.gone = asyncio.Event()

        async def receive(self) -> dict:
            await self.gone.wait()
            return {"type": "http.disconnect"}

    async def scenario():
        gate = Gate()
        service = await service_with(gate)
        request = Leaving()
        task = asyncio.ensure_future(until_disconnected(request, service.find(images(1), 30)))
        assert await asyncio.to_thread(gate.started.wait, 10)
        request.gone.set()
        with pytest.raises(ClientDisconnected):
            await task
        gate.release.set()
        await service.close()
        return gate.wanted_after_release

    assert asyncio.run(scenario()) == [[False]]


def test_a_deadline_passed_during_its_own_detection_stops_it_without_retry_after():
    async def scenario():
        gate = Gate()
        service = await service_with(gate)
        task = await blocked(service, gate, timeout_s=0.2)
        with pytest.raises(DeadlineExceeded) as raised:
            await task
        gate.release.set()
        await service.close()
        return raised.value, gate.wanted_after_release

    error, wanted = asyncio.run(scenario())
    assert wanted == [[False]], "the detector is told the image is no longer wanted"
    assert error.retry_after_s is None, "its own photos took the time: retrying would not help"
    assert "fewer or smaller photos" in str(error) and "align=none" in str(error)


def test_a_deadline_passed_in_the_queue_gets_retry_after_and_is_never_computed():
    async def scenario():
        gate = Gate()
        service = await service_with(gate)
        first = await blocked(service, gate)
        with pytest.raises(DeadlineExceeded) as raised:
            await service.find(images(1), 0.2)
        gate.release.set()
        await first
        await service.close()
        return raised.value, gate.calls

    error, calls = asyncio.run(scenario())
    assert error.retry_after_s is not None and error.retry_after_s >= 1 and "busy" in str(error)
    assert calls == [1], "the expired request was dropped, not detected"


def test_a_full_queue_is_a_503_with_retry_after():
    async def scenario():
        gate = Gate()
        service = await service_with(gate, max_queue=2)
        first = await blocked(service, gate)
        waiting = asyncio.ensure_future(service.find(images(2), 30))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as raised:
            await service.find(images(1), 30)
        gate.release.set()
        await asyncio.gather(first, waiting)
        await service.close()
        return raised.value

    error = asyncio.run(scenario())
    assert error.retry_after_s is not None and "2 images are already waiting" in str(error)


def test_a_detector_that_cannot_load_fails_each_request_with_its_reason():
    def broken(device):
        raise DetectorError("mtcnn.safetensors: not a readable safetensors file")

    async def scenario():
        service = FaceService(torch.device("cpu"), load=broken)
        service.start()
        with pytest.raises(DetectorError, match="not a readable"):
            await service.find(images(1), 30)
        await service.close()
        with pytest.raises(ServiceUnavailable, match="shutting down"):
            await service.find(images(1), 30)

    asyncio.run(scenario())


# ---- in the app: detection does not hold up the models' forwards ----------------------------------------------------
def test_a_dcgan_forward_completes_while_detection_is_blocked(client, face_bytes, monkeypatch):
    gate = threading.Event()
    running = threading.Event()
    detect_batch = FaceDetector.detect_batch

    def blocking(self, *args, **kwargs):
        running.set()
        assert gate.wait(30)
        return detect_batch(self, *args, **kwargs)

    monkeypatch.setattr(FaceDetector, "detect_batch", blocking)
    answers = {}

    def classify():
        files = [("images", ("face.jpg", face_bytes[0], "image/jpeg"))]
        answers["classify"] = client.post("/classify", files=files)

    thread = threading.Thread(target=classify)
    thread.start()
    try:
        assert running.wait(30), "detection never started"
        response = client.post("/generate/dcgan", json={"n": 1, "format": "json"})
        assert response.status_code == 200, response.text
        assert thread.is_alive() and "classify" not in answers, "the DCGAN answer came while detection was blocked"
    finally:
        gate.set()
        thread.join(60)
    assert answers["classify"].status_code == 200
    assert answers["classify"].json()["images"][0]["face"]["faces_found"] == 1
