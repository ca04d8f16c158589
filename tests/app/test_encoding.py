"""Encoding outputs: the grid layout matches torchvision's make_grid, PNG and GIF round trips, and where encoding
runs."""

from __future__ import annotations

import asyncio
import io
import threading

import torch
from PIL import Image
from torchvision.utils import make_grid

from app.api.responses import INLINE_ENCODE_VALUES, encoded
from app.imaging import gif_bytes, grid_png, png_bytes, tile


def test_tile_matches_torchvision_layout():
    images = torch.randint(0, 256, (11, 3, 5, 7), dtype=torch.uint8)
    for nrow in (1, 4, 8, 20):
        assert torch.equal(tile(images, nrow), make_grid(images, nrow=nrow, padding=2, pad_value=255)), nrow


def test_png_and_grid_round_trip():
    image = torch.randint(0, 256, (3, 6, 9), dtype=torch.uint8)
    decoded = torch.frombuffer(bytearray(Image.open(io.BytesIO(png_bytes(image))).tobytes()), dtype=torch.uint8)
    assert torch.equal(decoded.view(6, 9, 3).permute(2, 0, 1), image)
    grid = Image.open(io.BytesIO(grid_png(torch.zeros(3, 3, 4, 4), nrow=2)))
    assert grid.size == (2 * 6 + 2, 2 * 6 + 2)


def test_gif_has_every_frame():
    gif = Image.open(io.BytesIO(gif_bytes(torch.rand(5, 3, 8, 8) * 2 - 1)))
    assert gif.format == "GIF" and gif.n_frames == 5


def test_large_outputs_are_encoded_off_the_event_loop_small_ones_on_it():
    async def threads() -> tuple[int, int, int]:
        loop_thread = threading.get_ident()
        small = await encoded(threading.get_ident, INLINE_ENCODE_VALUES)
        large = await encoded(threading.get_ident, INLINE_ENCODE_VALUES + 1)
        return loop_thread, small, large

    loop_thread, small, large = asyncio.run(threads())
    assert small == loop_thread, "a few 64x64 images cost less to encode than a hop to a worker thread"
    assert large != loop_thread, "a large output must not hold the event loop"
