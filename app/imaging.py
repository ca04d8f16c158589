"""Decoding uploads safely and encoding model outputs (PNG, PNG grid, animated GIF, base64)."""

from __future__ import annotations

import base64
import io
import warnings

import torch
from PIL import Image, UnidentifiedImageError

from app.models.preprocess import to_uint8

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP"}


class ImageDecodeError(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Bytes -> fully decoded RGB image, refusing non-images, other formats, truncation and decompression bombs."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size  # read from the header: checked before any pixel is decoded
            if width * height > max_pixels:
                raise ImageDecodeError(f"{name}: {width}x{height} pixels is more than the {max_pixels} allowed", 413)
            image.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"{name}: image dimensions are too large (decompression bomb)", 413) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{name}: not an image in an accepted format ({', '.join(sorted(ALLOWED_FORMATS))})", 415
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"{name}: image data is truncated or corrupt ({error})") from None
    return image.convert("RGB")


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
