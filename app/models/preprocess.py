"""The one preprocessing function shared by training and serving.

CelebA's aligned frames are 178x218 (the mini set also has 89x109 copies), uploads come in any size, so the crop is
expressed as fractions of the image: a centred square whose side is ``crop_fraction`` of the width, then a resize
to ``size``x``size`` and a scale to [-1, 1]. The spec is stored in every checkpoint so the service crops uploads
exactly as training cropped faces.

Uploads that are not aligned like CelebA's frames come with five landmarks (from :mod:`app.models.detector`):
:func:`preprocess` then takes the same crop from the CelebA frame the landmarks imply (:mod:`app.models.align`),
so training (CelebA's frames, no landmarks) and serving share this one function.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from .align import CELEBA_FRAME, Landmarks, frame_to_image, warp_square

ALIGNMENTS = ("celeba", "none")


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 64  # output side in pixels
    crop_fraction: float = 0.8  # side of the square crop, as a fraction of the image width (~140 px of 178)
    center_y_fraction: float = 0.5  # vertical centre of the crop, as a fraction of the image height
    # The frame the training images had: "celeba" = CelebA's aligned frames, so uploads can be aligned to CelebA's
    # landmark positions (align=auto); "none" = no known alignment, uploads are only centre-cropped. Checkpoints
    # written before this field existed were all trained on CelebA's frames, hence the default.
    alignment: str = "celeba"

    def __post_init__(self) -> None:
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls(**json.loads(text))


DEFAULT_PREPROCESS = PreprocessSpec()


def crop_square(width: float, height: float, spec: PreprocessSpec = DEFAULT_PREPROCESS) -> tuple[float, float, float]:
    """(left, top, side) of the crop in a ``width`` x ``height`` frame: a centred square of ``spec.crop_fraction``
    of the width, clipped to the frame."""
    side = min(spec.crop_fraction * width, width, height)
    center_x, center_y = width / 2, spec.center_y_fraction * height
    top = min(max(center_y - side / 2, 0), height - side)
    return center_x - side / 2, top, side


def crop_and_resize(image: Image.Image, spec: PreprocessSpec = DEFAULT_PREPROCESS) -> Image.Image:
    """Centre-crop a square of ``spec.crop_fraction`` of the width (clipped to the image) and resize it."""
    image = image.convert("RGB")
    left, top, side = crop_square(*image.size, spec)
    box = (left, top, left + side, top + side)
    # Image.resize with a box crops and resamples in one step, sub-pixel exact at any input size.
    return image.resize((spec.size, spec.size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def pil_to_unit_range(image: Image.Image) -> torch.Tensor:
    """uint8 RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    return uint8_to_unit_range(pil_to_uint8(image))


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.size[1], image.size[0], 3).permute(2, 0, 1).contiguous()


def uint8_to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div(127.5).sub(1.0)


def aligned_crop(image: Image.Image, landmarks: Landmarks, spec: PreprocessSpec = DEFAULT_PREPROCESS) -> Image.Image:
    """The crop :func:`crop_and_resize` would take from the CelebA frame in which ``landmarks`` (five (x, y) points
    in ``image``'s pixels) sit at CelebA's mean positions: one similarity warp, then the same antialiased resize."""
    return warp_square(image.convert("RGB"), frame_to_image(landmarks), crop_square(*CELEBA_FRAME, spec), spec.size)


def preprocess(
    image: Image.Image, spec: PreprocessSpec = DEFAULT_PREPROCESS, landmarks: Landmarks | None = None
) -> torch.Tensor:
    """The shared pipeline: any-size face image -> (3, size, size) float tensor in [-1, 1]. Without ``landmarks``
    the image is taken as aligned like CelebA's frames (training, and uploads with align=none); with them, the face
    is first aligned to CelebA's landmark positions (:func:`aligned_crop`)."""
    if landmarks is None:
        return pil_to_unit_range(crop_and_resize(image, spec))
    return pil_to_unit_range(aligned_crop(image, landmarks, spec))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images (..., 3, H, W) -> uint8, clamped, on the CPU."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
