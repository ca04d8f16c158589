"""Every image mode an accepted format can carry decodes to the pixels a viewer shows: each case encodes an 8-bit
original (a test face) in one mode and compares the decoded upload against it. 16-bit greyscale PNGs decoded to
pure white before; transparent pixels showed whatever colour lay under them."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.imaging import BACKGROUND, decode_image

FACE = Path(__file__).parents[1] / "data" / "faces" / "000001.jpg"


def pixels(image: Image.Image) -> torch.Tensor:
    """(H, W, C) int32 tensor of an 8-bit image's pixels."""
    channels = len(image.getbands())
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, channels).to(torch.int32)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def raw_png(values: torch.Tensor, colour_type: int, depth: int) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit RGB/LA/RGBA, 2- and 4-bit greyscale): ``values``
    (H, W, C) or (H, W) integers at ``depth`` bits."""
    height, width = values.shape[:2]
    flat = values.reshape(height, -1)
    rows = []
    for row in flat.tolist():
        if depth == 16:
            body = struct.pack(f">{len(row)}H", *row)
        elif depth == 8:
            body = bytes(row)
        else:  # pack several samples per byte, most significant first, each row padded to a whole byte
            per_byte = 8 // depth
            row = row + [0] * (-len(row) % per_byte)
            body = bytes(
                sum(v << (8 - depth * (k + 1)) for k, v in enumerate(row[i : i + per_byte]))
                for i in range(0, len(row), per_byte)
            )
        rows.append(b"\x00" + body)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def original() -> Image.Image:
    """The 8-bit RGB original: a test face, cropped small."""
    with Image.open(FACE) as face:
        return face.convert("RGB").crop((40, 50, 140, 170))


def alpha_ramp(size: tuple[int, int]) -> Image.Image:
    """An alpha channel from opaque (left) to fully transparent (right)."""
    width, height = size
    ramp = torch.linspace(255, 0, width).round().to(torch.uint8).repeat(height, 1)
    return Image.frombytes("L", size, ramp.numpy().tobytes())


def over_background(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """What a viewer shows: ``rgb`` (H, W, 3) with ``alpha`` (H, W, 1) over the background."""
    background = torch.tensor(BACKGROUND, dtype=torch.int32)
    return (rgb * alpha + background * (255 - alpha) + 127) // 255


def grey(original: Image.Image) -> torch.Tensor:
    return pixels(original.convert("L")).expand(-1, -1, 3)


# Each case: the upload's bytes and the pixels it must decode to, both from the 8-bit original.
Case = Callable[[Image.Image], tuple[bytes, torch.Tensor, int]]  # (data, expected pixels, tolerance)


def png_rgb(o: Image.Image):
    return encoded(o, "PNG"), pixels(o), 0


def png_grey(o: Image.Image):
    return encoded(o.convert("L"), "PNG"), grey(o), 0


def png_grey_16bit(o: Image.Image):
    wide = Image.frombytes("I;16", o.size, (pixels(o.convert("L"))[..., 0] * 257).to(torch.int16).numpy().tobytes())
    return encoded(wide, "PNG"), grey(o), 0


def png_rgb_16bit(o: Image.Image):
    return raw_png(pixels(o) * 257, colour_type=2, depth=16), pixels(o), 0


def png_grey_4bit(o: Image.Image):
    levels = pixels(o.convert("L"))[..., 0] // 17  # 0..15
    return raw_png(levels, colour_type=0, depth=4), (levels * 17)[..., None].expand(-1, -1, 3), 0


def png_grey_2bit(o: Image.Image):
    levels = pixels(o.convert("L"))[..., 0] // 64  # 0..3
    return raw_png(levels, colour_type=0, depth=2), (levels * 85)[..., None].expand(-1, -1, 3), 0


def png_bilevel(o: Image.Image):
    bilevel = o.convert("1")
    return encoded(bilevel, "PNG"), pixels(bilevel.convert("L")).expand(-1, -1, 3), 0


def png_la(o: Image.Image):
    alpha = alpha_ramp(o.size)
    data = encoded(Image.merge("LA", (o.convert("L"), alpha)), "PNG")
    return data, over_background(grey(o), pixels(alpha)), 1


def png_la_16bit(o: Image.Image):
    alpha = pixels(alpha_ramp(o.size))
    values = torch.cat([pixels(o.convert("L")), alpha], dim=2) * 257
    return raw_png(values, colour_type=4, depth=16), over_background(grey(o), alpha), 1


def png_rgba(o: Image.Image):
    alpha = alpha_ramp(o.size)
    rgba = o.copy()
    rgba.putalpha(alpha)
    return encoded(rgba, "PNG"), over_background(pixels(o), pixels(alpha)), 1


def png_rgba_16bit(o: Image.Image):
    alpha = pixels(alpha_ramp(o.size))
    values = torch.cat([pixels(o), alpha], dim=2) * 257
    return raw_png(values, colour_type=6, depth=16), over_background(pixels(o), alpha), 1


def png_palette(o: Image.Image):
    palette = o.quantize(64)
    return encoded(palette, "PNG"), pixels(palette.convert("RGB")), 0


def png_palette_transparent(o: Image.Image):
    """A palette image whose most common entry is marked transparent (tRNS): those pixels show the background."""
    palette = o.quantize(64)
    index = max(palette.getcolors(), key=lambda pair: pair[0])[1]
    expected = pixels(palette.convert("RGB"))
    hidden = pixels(palette)[..., 0] == index
    expected[hidden] = torch.tensor(BACKGROUND, dtype=torch.int32)
    return encoded(palette, "PNG", transparency=index), expected, 0


def png_grey_transparent_level(o: Image.Image):
    level = o.convert("L")
    value = max(level.getcolors(), key=lambda pair: pair[0])[1]
    expected = grey(o).clone()
    expected[pixels(level)[..., 0] == value] = torch.tensor(BACKGROUND, dtype=torch.int32)
    return encoded(level, "PNG", transparency=value), expected, 0


def png_rgb_transparent_colour(o: Image.Image):
    colour = o.getpixel((0, 0))
    expected = pixels(o).clone()
    expected[(pixels(o) == torch.tensor(colour)).all(dim=2)] = torch.tensor(BACKGROUND, dtype=torch.int32)
    return encoded(o, "PNG", transparency=colour), expected, 0


def jpeg_rgb(o: Image.Image):
    return encoded(o, "JPEG", quality=95), pixels(o), 24


def jpeg_grey(o: Image.Image):
    return encoded(o.convert("L"), "JPEG", quality=95), grey(o), 16


def jpeg_cmyk(o: Image.Image):
    return encoded(o.convert("CMYK"), "JPEG", quality=95), pixels(o), 24


def webp_lossless_rgb(o: Image.Image):
    return encoded(o, "WEBP", lossless=True), pixels(o), 0


def webp_lossless_rgba(o: Image.Image):
    alpha = alpha_ramp(o.size)
    rgba = o.copy()
    rgba.putalpha(alpha)
    # lossless WebP may change the colour of fully transparent pixels: they show the background either way
    return encoded(rgba, "WEBP", lossless=True, exact=True), over_background(pixels(o), pixels(alpha)), 1


CASES = [
    png_rgb,
    png_grey,
    png_grey_16bit,
    png_rgb_16bit,
    png_grey_4bit,
    png_grey_2bit,
    png_bilevel,
    png_la,
    png_la_16bit,
    png_rgba,
    png_rgba_16bit,
    png_palette,
    png_palette_transparent,
    png_grey_transparent_level,
    png_rgb_transparent_colour,
    jpeg_rgb,
    jpeg_grey,
    jpeg_cmyk,
    webp_lossless_rgb,
    webp_lossless_rgba,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_every_mode_decodes_to_the_pixels_of_its_8bit_original(original, case):
    data, expected, tolerance = case(original)
    decoded = decode_image(data, f"{case.__name__}.img")
    assert decoded.mode == "RGB" and decoded.size == original.size
    difference = (pixels(decoded) - expected).abs()
    if tolerance == 0 or tolerance == 1:
        assert int(difference.max()) <= tolerance, int(difference.max())
    else:  # lossy: close on average, no pixel far off
        assert float(difference.float().mean()) < 3 and int(difference.max()) <= tolerance, (
            float(difference.float().mean()),
            int(difference.max()),
        )


def test_a_16bit_grey_png_is_not_white_through_the_api(client, original):
    """The reported case end to end: /vae/reconstruct's original of a 16-bit greyscale upload is the face's grey."""
    import base64

    data, _, _ = png_grey_16bit(original.resize((178, 218)))
    files = [("images", ("grey16.png", data, "image/png"))]
    response = client.post("/vae/reconstruct", files=files, data={"format": "json", "align": "none"})
    assert response.status_code == 200, response.text
    shown = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]["original"]))).convert("L")
    assert float(pixels(shown).float().mean()) < 200, "a blank white frame"
