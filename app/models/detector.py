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
    pairs are computed at once (a few hundred boxes: under a megabyte), so the loop only reads them."""
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


class FaceDetector:
    """MTCNN's three-stage cascade over one image. Runs wherever its nets are (``to(device)``)."""

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

    @torch.inference_mode()
    def detect(self, image: Image.Image, min_face: float | None = None) -> list[Face]:
        """Every face in ``image`` (RGB), largest first. ``min_face`` (px) defaults to what a budget of
        :data:`PYRAMID_PIXELS` for the first pyramid level allows, and never below :data:`MIN_FACE_PX`."""
        image = image.convert("RGB")
        device = self.device
        width, height = image.size

        # Stage 1: PNet over the pyramid. Levels are made with PIL's box filter (area averaging, like MTCNN's), from
        # the photo or, below half its scale, from an earlier level: much cheaper than from the photo every time.
        candidates = []
        source, source_scale = image, 1.0
        for scale in self.pyramid_scales(width, height, min_face):
            size = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
            level = source.resize(size, Image.Resampling.BOX)
            if source_scale / scale > 2:
                source, source_scale = level, scale
            offsets, probabilities = self.pnet(image_tensor(level).to(device))
            found = self.proposals(offsets[0], probabilities[0], scale).cpu()  # boxes are kept on the CPU
            if len(found):
                candidates.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        if not candidates:
            return []
        boxes = torch.cat(candidates)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        boxes = squared(regressed(boxes[:, :4], boxes[:, 5:9]))

        # Stage 2: RNet on 24x24 crops rejects most proposals and refines the rest.
        offsets, probabilities = (t.float().cpu() for t in self.rnet(crops(image, boxes, 24).to(device)))
        passed = probabilities > THRESHOLDS[1]
        boxes, offsets, scores = boxes[passed], offsets[passed], probabilities[passed]
        if not len(boxes):
            return []
        picked = nms(boxes, scores, 0.7)
        boxes = squared(regressed(boxes[picked], offsets[picked]))

        # Stage 3: ONet on 48x48 crops gives the final boxes, then the five landmarks from them.
        offsets, _, probabilities = (t.float().cpu() for t in self.onet(crops(image, boxes, 48).to(device)))
        passed = probabilities > THRESHOLDS[2]
        boxes, offsets, scores = boxes[passed], offsets[passed], probabilities[passed]
        if not len(boxes):
            return []
        boxes = regressed(boxes, offsets)
        picked = nms(boxes, scores, 0.7, mode="min")
        boxes, scores = boxes[picked], scores[picked]
        landmarks = self.landmarks(image, boxes)
        faces = [
            Face(
                box=tuple(round(v, 2) for v in box),
                score=round(float(score), 4),
                landmarks=tuple((round(x, 2), round(y, 2)) for x, y in points),
            )
            for box, score, points in zip(boxes.tolist(), scores.tolist(), landmarks.tolist())
        ]
        return sorted(faces, key=lambda face: face.size, reverse=True)

    def landmarks(self, image: Image.Image, boxes: torch.Tensor) -> torch.Tensor:
        """(N, 5, 2) landmarks of the faces in ``boxes`` (final, regressed boxes), in two readings of ONet, each of a
        crop and its mirror image (the two averaged):

        1. from the squared box, as MTCNN reads them;
        2. from the face warped upright to CelebA's frame by those points (:mod:`app.models.align`), through the box
           ONet gets for an average CelebA face. ONet was trained on upright faces in typical boxes; this second
           reading sees every face the same way up and scale, whatever the photo's tilt and framing, which makes the
           alignment of a rotated or rescaled face match its upright frame's (see ``python -m training alignment``).
        """
        boxes = squared(boxes)
        size = (boxes[:, 2:4] - boxes[:, :2])[:, None]
        points = self.read_points(crops(image, boxes, 48)) * size + boxes[:, None, :2]
        left, top, side = CANONICAL_BOX
        for _ in range(REFINEMENTS):
            matrices = [frame_to_image(face.tolist()) for face in points.double()]
            patches = torch.cat([image_tensor(warp_square(image, m, CANONICAL_BOX, 48)) for m in matrices])
            frame_points = self.read_points(patches).double() * side + torch.tensor([left, top]).double()
            points = torch.stack([q @ m[:, :2].T + m[:, 2] for q, m in zip(frame_points, matrices)]).float()
        return points

    def read_points(self, patches: torch.Tensor) -> torch.Tensor:
        """ONet's five points for (N, 3, 48, 48) crops, as fractions of the crop: the mean of its readings of each
        crop and of its mirror image (un-mirrored), which cancels the net's left-right bias."""
        patches = patches.to(self.device)
        _, points, _ = self.onet(torch.cat([patches, patches.flip(3)]))
        points = torch.stack([points[:, :5], points[:, 5:]], dim=2).float().cpu()
        count = len(patches)
        direct, mirrored = points[:count], points[count:][:, MIRRORED_ORDER]
        mirrored[:, :, 0] = 1 - mirrored[:, :, 0]
        return (direct + mirrored) / 2

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
