"""Encoding outputs: the grid layout matches torchvision's make_grid, PNG and GIF round trips."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision.utils import make_grid

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
