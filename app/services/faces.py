"""The face detector of the service: loaded on the models' device the first time an upload asks for alignment, and
run on the batcher's forward thread (:meth:`app.services.batcher.Batcher.call`), between model batches, so that
detection never fights the models for the cores."""

from __future__ import annotations

import logging
import threading

import torch
from PIL import Image
from starlette.datastructures import State

from app.models.detector import DETECTOR_WEIGHTS, DetectorError, Face, FaceDetector, load_detector
from app.services.batcher import Batcher

logger = logging.getLogger("facegen.faces")


class FaceFinder:
    """One detector on one device, fed through one batcher."""

    def __init__(self, detector: FaceDetector, batcher: Batcher):
        self.detector, self.batcher = detector, batcher

    @classmethod
    def load(cls, device: torch.device, batcher: Batcher) -> FaceFinder:
        """Load and warm up (each net's first forward on a device is several times slower than the next)."""
        detector = load_detector(DETECTOR_WEIGHTS, device)
        warm = Image.new("RGB", (160, 200), (128, 128, 128))
        detector.detect(warm)
        with torch.inference_mode():
            detector.rnet(torch.zeros(2, 3, 24, 24, device=device))
            detector.onet(torch.zeros(2, 3, 48, 48, device=device))
        logger.info("face detector (MTCNN) loaded on %s", device)
        return cls(detector, batcher)

    def detect_all(self, images: list[Image.Image]) -> list[list[Face]]:
        return [self.detector.detect(image) for image in images]

    async def find(self, images: list[Image.Image], timeout_s: float | None = None) -> list[list[Face]]:
        """Every face of each image, largest first."""
        return await self.batcher.call(self.detect_all, images, timeout_s=timeout_s)


_loading = threading.Lock()


def _load_once(state: State, device: torch.device, batcher: Batcher) -> FaceFinder:
    with _loading:  # two first requests at once load it once
        finder = getattr(state, "face_finder", None)
        if finder is None or finder.batcher is not batcher:
            finder = FaceFinder.load(device, batcher)
            state.face_finder = finder
        return finder


async def face_finder(state: State, timeout_s: float | None = None) -> FaceFinder:
    """The app's finder (``state`` is ``app.state``), loaded on first use; :class:`DetectorError` if it cannot be."""
    batcher: Batcher = state.batcher
    finder = getattr(state, "face_finder", None)
    if finder is not None and finder.batcher is batcher:
        return finder
    try:
        return await batcher.call(_load_once, state, state.store.device, batcher, timeout_s=timeout_s)
    except DetectorError:
        logger.exception("the face detector cannot be loaded")
        raise
