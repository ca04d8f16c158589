"""The classifier trainer's grey augmentation: black-and-white photos are part of what it learns from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.__main__ import main
from training.classifier import make_grey


def test_make_grey_is_pils_luma_on_the_chosen_rows_only():
    pixels = torch.randint(0, 256, (3, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images = pixels.float() / 127.5 - 1
    grey = make_grey(images, torch.tensor([True, False, True]))
    for row in (0, 2):
        picture = Image.fromarray(pixels[row].permute(1, 2, 0).numpy()).convert("L")
        expected = torch.from_numpy(np.array(picture)).float() / 127.5 - 1
        for channel in range(3):  # PIL rounds to whole levels: within one level of the exact luma
            torch.testing.assert_close(grey[row, channel], expected, atol=1 / 127.5 + 1e-6, rtol=0)
    assert torch.equal(grey[1], images[1])


@pytest.mark.parametrize("probability", ["-0.1", "1.5"])
def test_grey_probability_outside_zero_one_is_refused(probability, tiny_celeba, tmp_path):
    arguments = ["classifier", "--data", str(tiny_celeba), "--out", str(tmp_path / "c.safetensors")]
    with pytest.raises(SystemExit, match="--grey-probability must be in \\[0, 1\\]"):
        main([*arguments, "--grey-probability", probability])
