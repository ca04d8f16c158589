"""Face detection with five landmarks: MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", 2016), the detector whose five points are CelebA's own landmarks (both eyes, the
nose, both mouth corners).

The three nets are the P/R/O-nets of ``facenet-pytorch`` 2.6.0 (MIT licence), whose wheel bundles weights converted
from the authors' release; ``scripts/convert_mtcnn.py`` turned those pickled state dicts once into
``app/models/data/mtcnn.safetensors``, which ships with the package, so nothing is downloaded or unpickled at run
time. The nets are re-declared here (same tensor names) and the cascade re-written around them rather than imported,
because importing ``facenet_pytorch`` pulls in torchvision, tqdm and requests at start-up (about 1.5 s on this CPU,
doubling the service's start) and its published metadata pins torch < 2.3; ``tests/app/models/test_align.py``
checks this cascade against facenet-pytorch's on real photos.

Every coordinate here is continuous: pixel (i, j) covers [j, j + 1) x [i, i + 1); boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import nn

from .align import frame_to_image, warp_square

DETECTOR_WEIGHTS = Path(__file__).parent / "data" / "mtcnn.safetensors"
THRESHOLDS = (0.6, 0.7, 0.7)  # face probability each stage needs (the MTCNN defaults)
PYRAMID_FACTOR = 0.709  # scale step between pyramid levels (face size x ~1.41 per level)
MIN_FACE_PX = 20  # the smallest face searched for, in pixels, when the pixel budget allows
# PNet's first pyramid level is kept to about this many pixels: on a 1024x1024 photo the smallest face found is
# then ~24 px (~2.5 % of the side), and detection stays well under 150 ms on two CPU cores.
PYRAMID_PIXELS = 512 * 512
CHANNELS_LAST = torch.channels_last
MIRRORED_ORDER = [1, 0, 2, 4, 3]  # in a mirror image the left eye and mouth corner are the right ones
# The box ONet reads landmarks from, for a face aligned like CelebA's mean: (left, top, side) in the 178x218 frame, the
# mean squared final MTCNN box of 300 celeba-mini train frames (std 4-8 px).
CANONICAL_BOX = (31.0, 66.0, 115.5)
REFINEMENTS = 1  # readings of the upright face after the first (1 is as good as 2 on the robustness views)


class DetectorError(RuntimeError):
    """The detector's weights cannot be loaded; the message says why."""


class PNet(nn.Module):
    """Proposal net: fully convolutional, a 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(x)))))
        return self.conv4_2(x), self.conv4_1(x).softmax(dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights come from Caffe, which flattens (C, W, H): keep its order.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), self.dense5_1(x).softmax(dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: box, five landmarks, face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x of the five points, then y, as fractions of the crop

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(dim=1)[:, 1]


@dataclass(frozen=True)
class Face:
    """One detected face, in the coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float  # ONet's face probability
    landmarks: tuple[tuple[float, float], ...]  # (x, y) of left eye, right eye, nose, left and right mouth corner

    @property
    def size(self) -> float:
        """Side of the (square-ish) face box in pixels."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the boxes kept, best first. ``mode`` "min" divides the overlap by
    the smaller box (MTCNN's last stage), which also removes a small box inside a larger one. The overlaps of all
    pairs are computed at once, so the loop only reads them: callers keep N within :class:`DetectionLimits` (500
    boxes: about 2 MB a matrix); 10,000 boxes would take GBs."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long)
    order = scores.argsort(descending=True)
    b = boxes[order, :4].double()
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    width = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(min=0)
    height = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = width * height
    if mode == "min":
        overlap = inter / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-6)
    else:
        overlap = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-6)
    suppresses = overlap > threshold
    alive = torch.ones(len(b), dtype=torch.bool)
    keep = []
    for index in range(len(b)):
        if alive[index]:
            keep.append(index)
            alive &= ~suppresses[index]
    return order[keep]


def squared(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes made square around their centres (side = the longer side)."""
    centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
    half = (boxes[:, 2:4] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def regressed(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes moved by the nets' regression outputs (fractions of the box's width and height)."""
    size = (boxes[:, 2:4] - boxes[:, :2]).repeat(1, 2)
    return boxes[:, :4] + offsets * size


def image_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float (1, 3, H, W) in MTCNN's input scale ((x - 127.5) / 128)."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    # channels-last: the nets' convolutions and max-pools run 3-4x faster in it on a CPU
    return pixels.permute(2, 0, 1)[None].float().sub_(127.5).mul_(0.0078125).contiguous(memory_format=CHANNELS_LAST)


def crops(image: Image.Image, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 4) boxes of ``image`` -> (N, 3, size, size) crops in MTCNN's input scale, black outside the image (as in
    the original MTCNN), averaged down with PIL's box filter (area averaging) or, for boxes smaller than ``size``,
    interpolated up bilinearly. PIL does each crop in C; torch's per-crop calls cost several times more."""
    width, height = image.size
    if not len(boxes):
        return torch.zeros(0, 3, size, size).contiguous(memory_format=CHANNELS_LAST)
    pieces = []
    for x0, y0, x1, y1 in boxes.round().tolist():
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        resample = Image.Resampling.BOX if x1 - x0 >= size else Image.Resampling.BILINEAR
        if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
            piece = image.resize((size, size), resample, box=(x0, y0, x1, y1))
        else:  # crop() fills outside the image with black; it needs whole pixels
            box = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
            piece = image.crop(box).resize(
                (size, size), resample, box=(x0 - box[0], y0 - box[1], x1 - box[0], y1 - box[1])
            )
        pieces.append(piece.tobytes())
    pixels = torch.frombuffer(bytearray(b"".join(pieces)), dtype=torch.uint8).view(len(pieces), size, size, 3)
    return pixels.permute(0, 3, 1, 2).float().sub_(127.5).mul_(0.0078125).contiguous(memory_format=CHANNELS_LAST)


@dataclass(frozen=True)
class DetectionLimits:
    """Bounds on the work and memory of one image's detection, whatever the photo. A photo tiled with hundreds of
    small faces gave PNet ~10,600 candidate boxes: NMS over them built N x N matrices (GBs), and landmarks for every
    face took most of 19 s. Each stage now keeps only its best-scored boxes before its NMS (whose matrices are then
    at most a few MB), and only the largest faces are read for landmarks, verified and reported. Ordinary photos come
    nowhere near these caps (a portrait: tens of boxes per stage)."""

    level_proposals: int = 400  # best PNet cells per pyramid level, before that level's NMS
    proposals: int = 500  # best boxes of all levels together, before the cross-level NMS (RNet reads the survivors)
    refined: int = 100  # best boxes RNet passes, before its NMS (ONet reads the survivors)
    faces: int = 16  # the largest faces ONet finds that get landmarks and are verified; at most this many are reported

    def __post_init__(self) -> None:
        if min(self.level_proposals, self.proposals, self.refined, self.faces) < 1:
            raise ValueError(f"every detection limit must be >= 1: {self}")


DEFAULT_LIMITS = DetectionLimits()
NET_CHUNK = 256  # crops per RNet/ONet forward, from however many images: bounds activations when many are batched
# PNet reads the pyramid levels of equal-sized images in one forward, up to this many pixels (its first layer's
# activations: 40 bytes a pixel, so ~40 MB), then starts another.
PNET_BATCH_PIXELS = 4 * PYRAMID_PIXELS
# A face is reported when ONet, reading it twice more (its squared box, and the face warped upright to CelebA's frame
# by its landmarks), each with its mirror image, gives a mean face probability of at least this. MTCNN's last stage
# alone takes patches of shoulders and hair for faces (0.79-0.96 on the test photos); those score 0.38-0.79 here,
# real faces 0.97-1.0 (`python -m training alignment`'s photos and every test photo).
VERIFY_THRESHOLD = 0.9

Wanted = Callable[[int], bool]  # image index -> whether its detection is still wanted (asked between stages)


class DetectionAbandoned(RuntimeError):
    """The detection of an image was no longer wanted (its request's deadline passed, or its client left)."""


def best(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest ``scores`` (all of them when there are fewer), in their original order: NMS
    breaks ties between equal scores (saturated at 1.0) by position, so an uncut list must stay as it was."""
    if len(scores) <= count:
        return torch.arange(len(scores))
    return scores.topk(count).indices.sort().values


class FaceDetector:
    """MTCNN's three-stage cascade, over one image or a batch of them (whose stages share forwards), bounded by
    :class:`DetectionLimits` and verified (:data:`VERIFY_THRESHOLD`). Runs wherever its nets are (``to(device)``)."""

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet):
        self.pnet, self.rnet, self.onet = pnet, rnet, onet

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    def to(self, device: str | torch.device) -> FaceDetector:
        for net in (self.pnet, self.rnet, self.onet):
            # Module.to takes memory_format at run time; torch's type stubs leave it out of every overload
            net.to(device, memory_format=CHANNELS_LAST)  # type: ignore[call-overload]
        return self

    def pyramid_scales(self, width: int, height: int, min_face: float | None = None) -> list[float]:
        """Scales at which PNet's 12-px window sees faces from ``min_face`` px up to the whole image."""
        if min_face is None:
            min_face = max(MIN_FACE_PX, math.sqrt(width * height / PYRAMID_PIXELS) * 12)
        scale, scales = 12.0 / min_face, []
        while min(width, height) * scale >= 12:
            scales.append(scale)
            scale *= PYRAMID_FACTOR
        return scales

    def detect(
        self,
        image: Image.Image,
        min_face: float | None = None,
        *,
        limits: DetectionLimits = DEFAULT_LIMITS,
        wanted: Callable[[], bool] | None = None,
    ) -> list[Face]:
        """Every face in ``image``, largest first (at most ``limits.faces``). ``min_face`` (px) defaults to what a
        budget of :data:`PYRAMID_PIXELS` for the first pyramid level allows, and never below :data:`MIN_FACE_PX`.
        ``wanted`` is asked between stages; :class:`DetectionAbandoned` when it says no."""
        found = self.detect_batch(
            [image], min_face, limits=limits, wanted=None if wanted is None else lambda _: wanted()
        )
        if found[0] is None:
            raise DetectionAbandoned("the detection was abandoned")
        return found[0]

    @torch.inference_mode()
    def detect_batch(
        self,
        images: Sequence[Image.Image],
        min_face: float | None = None,
        *,
        limits: DetectionLimits = DEFAULT_LIMITS,
        wanted: Wanted | None = None,
    ) -> list[list[Face] | None]:
        """The faces of each image, as :meth:`detect` finds them alone; the images' stages share forwards (PNet's
        for equal-sized images, RNet's and ONet's for all). ``wanted(i)`` is asked for every image still in work
        before each pyramid level and each later stage: an image no longer wanted is dropped there (its result is
        None) and the rest go on; its work stops at that point."""
        images = [image.convert("RGB") for image in images]
        results: list[list[Face] | None] = [None] * len(images)

        def still(indices: Iterable[int]) -> list[int]:
            return [i for i in indices if wanted is None or wanted(i)]

        def settle(boxes: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
            """The images still wanted that still have boxes; those without have no face."""
            for i in still(boxes):
                if not len(boxes[i]):
                    results[i] = []
            return {i: boxes[i] for i in still(boxes) if len(boxes[i])}

        boxes = settle(self.propose(images, still(range(len(images))), min_face, limits, still))
        boxes = settle(self.refine(images, boxes, limits))
        finals = settle(self.output(images, boxes, limits))
        if finals:
            for i, faces in self.verified(images, finals).items():
                results[i] = faces
        return results

    # ---- the stages: each maps image index -> its boxes ---------------------------------------------------------
    def propose(
        self,
        images: list[Image.Image],
        indices: list[int],
        min_face: float | None,
        limits: DetectionLimits,
        still: Callable[[Iterable[int]], list[int]],
    ) -> dict[int, torch.Tensor]:
        """Stage 1: PNet over each image's pyramid -> (N, 4) squared proposals. Levels are made with PIL's box filter
        (area averaging, like MTCNN's), from the photo or, below half its scale, from an earlier level: much cheaper
        than from the photo every time."""
        device = self.device
        candidates: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in indices:
            by_size.setdefault(images[i].size, []).append(i)
        for (width, height), members in by_size.items():
            scales = self.pyramid_scales(width, height, min_face)
            if not scales:
                continue
            first = math.ceil(width * scales[0]) * math.ceil(height * scales[0])
            per_forward = max(1, PNET_BATCH_PIXELS // first)
            for start in range(0, len(members), per_forward):
                group = members[start : start + per_forward]
                sources = {i: (images[i], 1.0) for i in group}
                for scale in scales:
                    group = still(group)  # the request's deadline and client, between pyramid levels
                    if not group:
                        break
                    size = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
                    levels = []
                    for i in group:
                        source, source_scale = sources[i]
                        level = source.resize(size, Image.Resampling.BOX)
                        if source_scale / scale > 2:
                            sources[i] = (level, scale)
                        levels.append(image_tensor(level))
                    offsets, probabilities = self.pnet(torch.cat(levels).to(device))
                    for k, i in enumerate(group):
                        found = self.proposals(offsets[k], probabilities[k], scale).cpu()  # boxes stay on the CPU
                        if len(found):
                            found = found[best(found[:, 4], limits.level_proposals)]
                            candidates[i].append(found[nms(found[:, :4], found[:, 4], 0.5)])
        proposals = {}
        for i, parts in candidates.items():
            if not parts:
                proposals[i] = torch.zeros(0, 4)
                continue
            found = torch.cat(parts)
            found = found[best(found[:, 4], limits.proposals)]
            found = found[nms(found[:, :4], found[:, 4], 0.7)]
            proposals[i] = squared(regressed(found[:, :4], found[:, 5:9]))
        return proposals

    def refine(
        self, images: list[Image.Image], boxes: dict[int, torch.Tensor], limits: DetectionLimits
    ) -> dict[int, torch.Tensor]:
        """Stage 2: RNet on 24x24 crops rejects most proposals and refines the rest -> (N, 4) squared boxes."""
        refined = {}
        for i, (offsets, probabilities) in self.run_net(self.rnet, 24, images, boxes).items():
            passed = probabilities > THRESHOLDS[1]
            kept, offsets, scores = boxes[i][passed], offsets[passed], probabilities[passed]
            top = best(scores, limits.refined)
            kept, offsets, scores = kept[top], offsets[top], scores[top]
            picked = nms(kept, scores, 0.7)
            refined[i] = squared(regressed(kept[picked], offsets[picked]))
        return refined

    def output(
        self, images: list[Image.Image], boxes: dict[int, torch.Tensor], limits: DetectionLimits
    ) -> dict[int, torch.Tensor]:
        """Stage 3: ONet on 48x48 crops -> the final boxes with their scores, (N, 5), the ``limits.faces`` largest
        (only they are read further)."""
        finals = {}
        for i, (offsets, _, probabilities) in self.run_net(self.onet, 48, images, boxes).items():
            passed = probabilities > THRESHOLDS[2]
            kept, offsets, scores = boxes[i][passed], offsets[passed], probabilities[passed]
            kept = regressed(kept, offsets)
            picked = nms(kept, scores, 0.7, mode="min")
            kept, scores = kept[picked], scores[picked]
            sizes = (kept[:, 2:4] - kept[:, :2]).max(dim=1).values
            largest = sizes.argsort(descending=True)[: limits.faces]
            finals[i] = torch.cat([kept[largest], scores[largest, None]], dim=1)
        return finals

    def verified(self, images: list[Image.Image], finals: dict[int, torch.Tensor]) -> dict[int, list[Face]]:
        """Stage 4: the landmarks of the final faces (:meth:`landmarks`), and only the faces ONet confirms."""
        readings = self.landmarks([images[i] for i in finals], [finals[i][:, :4] for i in finals])
        faces = {}
        for i, (points, confidence) in zip(finals, readings):
            keep = confidence >= VERIFY_THRESHOLD
            found = [
                Face(
                    box=tuple(round(v, 2) for v in row[:4]),
                    score=round(float(row[4]), 4),
                    landmarks=tuple((round(x, 2), round(y, 2)) for x, y in face_points),
                )
                for row, face_points in zip(finals[i][keep].tolist(), points[keep].tolist())
            ]
            faces[i] = sorted(found, key=lambda face: face.size, reverse=True)
        return faces

    def run_net(
        self, net: nn.Module, size: int, images: list[Image.Image], boxes: dict[int, torch.Tensor]
    ) -> dict[int, tuple[torch.Tensor, ...]]:
        """``net``'s outputs (float, on the CPU) for the ``size``-px crops of every image's boxes, in forwards of at
        most :data:`NET_CHUNK` crops whichever images they come from (crops are made per forward: memory stays
        bounded however many boxes and images there are)."""
        pieces = [
            (i, start, min(start + NET_CHUNK, len(b)))
            for i, b in boxes.items()
            for start in range(0, len(b), NET_CHUNK)
        ]
        outputs: dict[int, list[tuple[torch.Tensor, ...]]] = {i: [] for i in boxes}
        batch: list[tuple[int, int, int]] = []

        def flush() -> None:
            patches = torch.cat([crops(images[i], boxes[i][start:stop], size) for i, start, stop in batch])
            results = [t.float().cpu() for t in net(patches.to(self.device))]
            offset = 0
            for i, start, stop in batch:
                outputs[i].append(tuple(t[offset : offset + stop - start] for t in results))
                offset += stop - start
            batch.clear()

        for piece in pieces:
            if batch and sum(stop - start for _, start, stop in batch) + piece[2] - piece[1] > NET_CHUNK:
                flush()
            batch.append(piece)
        if batch:
            flush()
        return {i: tuple(torch.cat(parts) for parts in zip(*outputs[i])) for i in boxes if outputs[i]}

    def landmarks(
        self, images: list[Image.Image], boxes: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each image, the (N, 5, 2) landmarks of the faces in its ``boxes`` (final, regressed boxes) and ONet's
        (N,) mean face probability over its readings of them. Two readings, each of a crop and its mirror image
        (the two averaged):

        1. from the squared box, as MTCNN reads them;
        2. from the face warped upright to CelebA's frame by those points (:mod:`app.models.align`), through the box
           ONet gets for an average CelebA face. ONet was trained on upright faces in typical boxes; this second
           reading sees every face the same way up and scale, whatever the photo's tilt and framing, which makes the
           alignment of a rotated or rescaled face match its upright frame's (see ``python -m training alignment``).
        """
        squares = [squared(b) for b in boxes]
        first = self.read_points([crops(image, square, 48) for image, square in zip(images, squares)])
        readings = []
        for image, square, (fractions, confidence) in zip(images, squares, first):
            size = (square[:, 2:4] - square[:, :2])[:, None]
            points = fractions * size + square[:, None, :2]
            readings.append((image, points, confidence))
        left, top, side = CANONICAL_BOX
        for _ in range(REFINEMENTS):
            matrices = [[frame_to_image(face.tolist()) for face in points.double()] for _, points, _ in readings]
            patches = [
                torch.cat([image_tensor(warp_square(image, m, CANONICAL_BOX, 48)) for m in image_matrices])
                for (image, _, _), image_matrices in zip(readings, matrices)
            ]
            again = self.read_points(patches)
            updated = []
            for (image, _, confidence), image_matrices, (fractions, upright) in zip(readings, matrices, again):
                frame_points = fractions.double() * side + torch.tensor([left, top]).double()
                points = torch.stack([q @ m[:, :2].T + m[:, 2] for q, m in zip(frame_points, image_matrices)]).float()
                updated.append((image, points, (confidence + upright) / 2))
            readings = updated
        return [(points, confidence) for _, points, confidence in readings]

    def read_points(self, patches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """ONet's five points for each (N, 3, 48, 48) crop tensor, as fractions of the crop, and its face
        probability: the means of its readings of each crop and of its mirror image (the points un-mirrored), which
        cancels the net's left-right bias. One forward per :data:`NET_CHUNK` crops, whichever tensors they are in."""
        counts = [len(p) for p in patches]
        together = torch.cat(patches)
        points_parts, probability_parts = [], []
        for start in range(0, len(together), NET_CHUNK // 2):
            chunk = together[start : start + NET_CHUNK // 2].to(self.device)
            _, points, probabilities = self.onet(torch.cat([chunk, chunk.flip(3)]))
            points = torch.stack([points[:, :5], points[:, 5:]], dim=2).float().cpu()
            count = len(chunk)
            direct, mirrored = points[:count], points[count:][:, MIRRORED_ORDER]
            mirrored[:, :, 0] = 1 - mirrored[:, :, 0]
            points_parts.append((direct + mirrored) / 2)
            probabilities = probabilities.float().cpu()
            probability_parts.append((probabilities[:count] + probabilities[count:]) / 2)
        points, probabilities = torch.cat(points_parts), torch.cat(probability_parts)
        return list(zip(points.split(counts), probabilities.split(counts)))

    @staticmethod
    def proposals(offsets: torch.Tensor, probabilities: torch.Tensor, scale: float) -> torch.Tensor:
        """PNet's cells above threshold -> (N, 9): box in image pixels, score, 4 regression offsets."""
        rows, columns = torch.nonzero(probabilities >= THRESHOLDS[0], as_tuple=True)
        if not len(rows):
            return probabilities.new_zeros(0, 9)
        origin = torch.stack([columns, rows], dim=1).float() * 2  # each cell is a 12x12 window at stride 2
        boxes = torch.cat([origin / scale, (origin + 12) / scale], dim=1)
        return torch.cat([boxes, probabilities[rows, columns][:, None], offsets[:, rows, columns].T], dim=1)


NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def load_detector(path: str | Path = DETECTOR_WEIGHTS, device: str | torch.device = "cpu") -> FaceDetector:
    """The three nets from one safetensors file (tensors named ``pnet.conv1.weight``, ...), loaded strictly and
    checked for non-finite values; never unpickles. Raises :class:`DetectorError`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DetectorError(f"{path}: not a readable safetensors file ({error})") from None
    nets = {}
    for name, cls in NETS.items():
        net = cls()
        state = {key[len(name) + 1 :]: t for key, t in tensors.items() if key.startswith(name + ".")}
        bad = [key for key, t in state.items() if not torch.isfinite(t).all()]
        if bad:
            raise DetectorError(f"{path}: non-finite values in {name} {bad[:3]}")
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise DetectorError(f"{path}: {name} does not match MTCNN's architecture ({error})") from None
        nets[name] = net.eval().requires_grad_(False)
    return FaceDetector(cast(PNet, nets["pnet"]), cast(RNet, nets["rnet"]), cast(ONet, nets["onet"])).to(device)
