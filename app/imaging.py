"""Decoding uploads safely and encoding model outputs (PNG, PNG grid, animated GIF, base64).

Decoding is bounded three ways, because the models need a few hundred pixels of face, never 40 megapixels: each
upload's size is read from its header and refused (413) before any pixel is decoded when it is over the per-image
limit or over what is left of its request's decoded-pixel budget; JPEGs are decoded at reduced scale (libjpeg's DCT
scaling, "draft mode") when they are much larger than needed; and only a few decodes run at once server-wide, so
parallel requests cannot multiply the peak memory.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import io
import logging
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from app.models.preprocess import to_uint8

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP"}
logger = logging.getLogger("facegen.imaging")


class ImageDecodeError(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DecodeLimits:
    """Server-wide decoding limits (from the settings); ``slots`` bounds the decodes running at once."""

    max_image_pixels: int = 40_000_000
    max_request_pixels: int = 64_000_000
    decode_side: int = 512
    concurrency: int = 2
    slots: threading.BoundedSemaphore = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", threading.BoundedSemaphore(self.concurrency))


class DecodeBudget:
    """The decoded pixels one request may still spend, all its uploads together (thread-safe: uploads are decoded in
    worker threads)."""

    def __init__(self, limits: DecodeLimits):
        self.limits, self.used = limits, 0
        self._lock = threading.Lock()

    def charge(self, name: str, width: int, height: int) -> None:
        with self._lock:
            if self.used + width * height > self.limits.max_request_pixels:
                raise ImageDecodeError(
                    f"{name}: decoding it ({width}x{height} pixels) would take this request past its budget of "
                    f"{self.limits.max_request_pixels} decoded pixels for all uploads together "
                    f"(FACEGEN_MAX_REQUEST_PIXELS; {self.used} already used): send fewer or smaller images",
                    413,
                )
            self.used += width * height


# The current request's budget: set by the app's middleware around each request, read where uploads are decoded
# (worker threads inherit it: anyio runs them in a copy of the caller's context).
_current_budget: contextvars.ContextVar[DecodeBudget | None] = contextvars.ContextVar("decode_budget", default=None)
DEFAULT_LIMITS = DecodeLimits()


@contextlib.contextmanager
def request_budget(limits: DecodeLimits) -> Iterator[DecodeBudget]:
    """Within the block, :func:`decode_image` charges one fresh :class:`DecodeBudget` of ``limits``."""
    budget = DecodeBudget(limits)
    token = _current_budget.set(budget)
    try:
        yield budget
    finally:
        _current_budget.reset(token)


def draft_size(width: int, height: int, side: int) -> tuple[int, int] | None:
    """The size to ask a JPEG decoder for so that the shorter side stays at least ``side`` (None: full size)."""
    scale = side / min(width, height)
    if scale >= 0.5:  # libjpeg scales by 1/2, 1/4, 1/8: nothing to gain
        return None
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def upright(image: Image.Image, name: str) -> Image.Image:
    """The image as a person sees it: EXIF orientation (e.g. 6, a phone held upright) applied. A corrupt EXIF block
    is ignored rather than refused: the pixels are fine."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001 - EXIF parsers raise many types on junk
        logger.info("%s: ignoring unreadable EXIF orientation (%r)", name, error)
        return image


# Modes that carry an alpha channel (PNG's LA/RGBA, at 8 or 16 bits; WebP's RGBA; premultiplied variants).
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# 16-bit greyscale PNGs (Pillow's modes for them): Pillow's convert("RGB") clips them at 255, so all but the
# darkest 0.4 % of values came out pure white.
WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
BACKGROUND = (255, 255, 255)  # what transparent pixels show: a white page, as an image viewer would


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image an accepted format can carry -> 8-bit RGB with the pixels a viewer shows: 16-bit greyscale scaled
    to 8 bits (rounded), transparency (an alpha channel, or a palette entry, grey level or colour marked transparent)
    composited over :data:`BACKGROUND`, palettes, bilevel, greyscale and CMYK through Pillow's own conversions.
    (Pillow already reduces 16-bit RGB and RGBA PNGs to their high bytes, and un-inverts Adobe CMYK JPEGs.)"""
    if image.mode in WIDE_GREY_MODES:
        values = torch.frombuffer(bytearray(image.convert("I").tobytes()), dtype=torch.int32).clamp(0, 65535)
        grey = Image.frombytes("L", image.size, ((values * 255 + 32767) // 65535).to(torch.uint8).numpy().tobytes())
        transparent = image.info.get("transparency")
        if not isinstance(transparent, int):
            return grey.convert("RGB")
        alpha = Image.frombytes("L", image.size, ((values != transparent).to(torch.uint8) * 255).numpy().tobytes())
        image = Image.merge("LA", (grey, alpha))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        with warnings.catch_warnings():  # a palette's transparency as bytes: converting to RGBA is the advice
            warnings.simplefilter("ignore", UserWarning)
            rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(
    data: bytes, name: str, max_pixels: int | None = None, budget: DecodeBudget | None = None
) -> Image.Image:
    """Bytes -> decoded, upright 8-bit RGB image (:func:`to_rgb`), refusing non-images, other formats,
    truncation, decompression bombs and uploads past the request's decoded-pixel budget (the current request's, see
    :func:`request_budget`, or ``budget``; offline callers without one get a fresh budget of the default limits)."""
    budget = budget or _current_budget.get() or DecodeBudget(DEFAULT_LIMITS)
    limits = budget.limits
    max_pixels = limits.max_image_pixels if max_pixels is None else min(max_pixels, limits.max_image_pixels)
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size  # read from the header: checked before any pixel is decoded
            if width * height > max_pixels:
                raise ImageDecodeError(f"{name}: {width}x{height} pixels is more than the {max_pixels} allowed", 413)
            if image.format == "JPEG" and (size := draft_size(width, height, limits.decode_side)) is not None:
                image.draft("RGB", size)  # decode at 1/2..1/8 scale: a fraction of the time and memory
            budget.charge(name, *image.size)
            with limits.slots:
                image.load()
                image = to_rgb(upright(image, name))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"{name}: image dimensions are too large (decompression bomb)", 413) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{name}: not an image in an accepted format ({', '.join(sorted(ALLOWED_FORMATS))})", 415
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"{name}: image data is truncated or corrupt ({error})") from None
    return image


def png_bytes(image: torch.Tensor) -> bytes:
    """One uint8 (3, H, W) tensor -> PNG bytes."""
    array = image.permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    # zlib level 1 with Huffman-only coding (strategy 2): on 64-image grids it encodes ~2x faster than the default
    # strategy and the files come out slightly smaller; noisy pixels leave LZ77 little to find anyway.
    Image.fromarray(array, "RGB").save(buffer, format="PNG", compress_level=1, compress_type=2)
    return buffer.getvalue()


def tile(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: int = 255) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> one (3, H', W') mosaic, ``nrow`` per row, with gutters (torchvision's make_grid layout;
    written here so the service does not import torchvision, which doubles its start-up time)."""
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = -(-count // columns)
    cell_h, cell_w = height + padding, width + padding
    canvas = torch.full((channels, rows * cell_h + padding, columns * cell_w + padding), pad_value, dtype=images.dtype)
    for index, image in enumerate(images):
        top, left = (index // columns) * cell_h + padding, (index % columns) * cell_w + padding
        canvas[:, top : top + height, left : left + width] = image
    return canvas


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """[-1, 1] float images (N, 3, H, W) -> one PNG grid, ``nrow`` images per row, 2-px white gutters."""
    return png_bytes(tile(to_uint8(images), nrow=nrow))


def gif_bytes(frames: torch.Tensor, duration_ms: int = 120) -> bytes:
    """[-1, 1] float frames (N, 3, H, W) -> an animated, looping GIF."""
    pictures = [Image.fromarray(frame.permute(1, 2, 0).numpy(), "RGB") for frame in to_uint8(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    return buffer.getvalue()


def base64_pngs(images: torch.Tensor) -> list[str]:
    return [base64.b64encode(png_bytes(image)).decode("ascii") for image in to_uint8(images)]
