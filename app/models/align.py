"""Alignment as CelebA did it: a similarity transform (rotation, uniform scale, translation) that puts a face's five
landmarks (both eyes, the nose, both mouth corners) onto CelebA's mean landmark positions in its 178x218 aligned
frame. :func:`app.models.preprocess.preprocess` applies it before the shared crop when it is given landmarks, so an
aligned upload is cropped exactly as training cropped CelebA's frames.

Coordinates are continuous: pixel (i, j) covers [j, j + 1) x [i, i + 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

CELEBA_FRAME = (178, 218)  # width, height of CelebA's aligned frames
# Mean positions of MTCNN's five points on CelebA's aligned frames (left eye, right eye, nose, left and right mouth
# corner; "left" as seen in the picture), in the 178x218 frame, continuous coordinates. Measured with this project's
# detector (app/models/detector.py) on 3,000 train images of celeba-mini (every 4th; 2,997 with a face found; the
# half-size frames' points doubled): `python -m training alignment landmarks --every 4 --limit 3000`. Spread between
# frames (std, x/y): eyes 2.1 / 1.7-1.9 px, nose 6.3 / 4.4 px, mouth corners 3.1 / 2.3-2.4 px. CelebA's own landmark
# file gives about (69, 111), (108, 111), (88, 136), (72, 152), (105, 152).
CELEBA_LANDMARKS: tuple[tuple[float, float], ...] = (
    (69.5, 111.7),
    (108.5, 111.7),
    (88.6, 135.8),
    (71.4, 153.0),
    (106.7, 153.0),
)
# How much each point counts in the fit. CelebA's frames were aligned by the eyes, roughly; the nose tip stands out of
# the face's plane and moves with the head's turn, the mouth corners with the expression. Chosen on 400 train images
# (every 37th) for the align=auto crops closest to the frames' own (align=none): pixel MSE 0.0325 with equal weights,
# 0.0255 with these (nose 0.25: 0.0270; mouth 1: 0.0290; mouth 0.25: 0.0268), the classifier's attribute agreement
# 96.7 % -> 97.4 %. `python -m training alignment celeba` measures the validation split.
LANDMARK_WEIGHTS = (1.0, 1.0, 0.0, 0.5, 0.5)

Landmarks = Sequence[Sequence[float]]


def similarity_transform(source: Landmarks, target: Landmarks, weights: Sequence[float] | None = None) -> torch.Tensor:
    """The weighted least-squares similarity (Umeyama, 1991, without reflection) mapping ``source`` points onto
    ``target`` points: a (2, 3) float64 matrix M with target ~ M @ [x, y, 1]."""
    src = torch.as_tensor(source, dtype=torch.float64)
    dst = torch.as_tensor(target, dtype=torch.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two equal (N >= 2, 2) point sets, got {tuple(src.shape)} and {tuple(dst.shape)}")
    w = torch.ones(len(src), dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    w = (w / w.sum())[:, None]
    src_mean, dst_mean = (w * src).sum(0), (w * dst).sum(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    # With points as complex numbers the best similarity is one complex factor: sum(w dst conj(src)) / sum(w |src|^2).
    variance = (w * src_c**2).sum()
    if variance <= 1e-12:
        raise ValueError("the source points coincide")
    a = (w * src_c * dst_c).sum() / variance  # s * cos(angle)
    b = (w[:, 0] * (src_c[:, 0] * dst_c[:, 1] - src_c[:, 1] * dst_c[:, 0])).sum() / variance  # s * sin(angle)
    rotation_scale = torch.stack([torch.stack([a, -b]), torch.stack([b, a])])
    translation = dst_mean - rotation_scale @ src_mean
    return torch.cat([rotation_scale, translation[:, None]], dim=1)


def transform_scale(matrix: torch.Tensor) -> float:
    """The uniform scale of a similarity matrix."""
    return float(torch.linalg.det(matrix[:, :2]).abs().sqrt())


def frame_to_image(landmarks: Landmarks) -> torch.Tensor:
    """The similarity taking CelebA-frame coordinates to the image's, for a face with these ``landmarks``."""
    return similarity_transform(CELEBA_LANDMARKS, landmarks, LANDMARK_WEIGHTS)


def warp_square(
    image: Image.Image, matrix: torch.Tensor, box: tuple[float, float, float], size: int, supersample: int = 2
) -> Image.Image:
    """The square ``box`` = (left, top, side) of the CelebA frame, as seen through ``matrix`` (frame -> image), as a
    ``size`` x ``size`` RGB image.

    The warp samples the image at about one pixel per image pixel (at most ``supersample`` x ``size`` across),
    bicubically, after box-averaging the image by an integer factor if the face is larger than that: a direct warp
    to 64 px would alias. PIL's antialiasing bicubic resize (the shared preprocessing's) then brings it to ``size``.
    Outside the image the edge pixels repeat, which looks more like CelebA's frames than black would.
    """
    left, top, side = box
    scale = transform_scale(matrix)
    extent = side * scale  # image pixels across the square
    factor = max(1, int(extent // (supersample * size)))  # box-average the image by this much first
    samples = max(size, round(extent / factor))  # pixels across the warped square
    # Where the square lands in the image, plus a margin for the bicubic kernel; only that part is decoded further.
    corners = torch.tensor([[left, top, 1], [left + side, top, 1], [left, top + side, 1], [left + side, top + side, 1]])
    points = corners.double() @ matrix.T
    margin = 2 * factor + 2
    x0 = max(0, math.floor((float(points[:, 0].min()) - margin) / factor) * factor)
    y0 = max(0, math.floor((float(points[:, 1].min()) - margin) / factor) * factor)
    x1 = min(image.width, math.ceil(float(points[:, 0].max()) + margin))
    y1 = min(image.height, math.ceil(float(points[:, 1].max()) + margin))
    if x1 - x0 < factor or y1 - y0 < factor:  # the square misses the image entirely: nothing to show
        return Image.new("RGB", (size, size), (127, 127, 127))
    region = image.crop((x0, y0, x1, y1))
    if factor > 1:
        region = region.reduce(factor)
    pixels = torch.frombuffer(bytearray(region.tobytes()), dtype=torch.uint8).view(region.height, region.width, 3)
    pixels = pixels.permute(2, 0, 1)[None].float()
    # Output pixel centres -> frame -> image -> region (reduced) -> grid_sample's [-1, 1] (align_corners=False).
    steps = (torch.arange(samples, dtype=torch.float64) + 0.5) * (side / samples)
    frame_y, frame_x = torch.meshgrid(top + steps, left + steps, indexing="ij")
    image_x = matrix[0, 0] * frame_x + matrix[0, 1] * frame_y + matrix[0, 2]
    image_y = matrix[1, 0] * frame_x + matrix[1, 1] * frame_y + matrix[1, 2]
    grid_x = (image_x - x0) / factor / region.width * 2 - 1
    grid_y = (image_y - y0) / factor / region.height * 2 - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].float()
    warped = F.grid_sample(pixels, grid, mode="bicubic", padding_mode="border", align_corners=False)
    array = warped[0].clamp_(0, 255).round_().to(torch.uint8).permute(1, 2, 0).contiguous()
    square = Image.fromarray(array.numpy(), "RGB")
    if samples == size:
        return square
    return square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
