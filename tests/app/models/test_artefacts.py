"""The pixel-noise artefact detector on frames the previous Glow served: it flags every speckled one and passes clean
edits (glasses included) and every real validation-style face in tests/data."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.models.artefacts import ArtefactLimits, colour_noise, speckled
from app.models.preprocess import crop_and_resize, pil_to_unit_range

FIXTURES = Path(__file__).parents[2] / "data" / "artefacts"


def load(path: Path) -> torch.Tensor:
    pixels = np.array(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 127.5 - 1


def reference_of(path: Path) -> torch.Tensor:
    upload = path.stem.split("_")[1]
    return load(FIXTURES / f"reference_{upload}.png")


def fixtures(kind: str) -> list[Path]:
    found = sorted(FIXTURES.glob(f"{kind}_*.png"))
    assert found, f"no {kind} fixtures in {FIXTURES}"
    return found


@pytest.mark.parametrize("path", fixtures("speckled"), ids=lambda p: p.stem)
def test_speckled_frames_are_flagged(path):
    assert bool(speckled(load(path), colour_noise(reference_of(path)))[0])


@pytest.mark.parametrize("path", fixtures("clean"), ids=lambda p: p.stem)
def test_clean_edits_pass(path):
    assert not bool(speckled(load(path), colour_noise(reference_of(path)))[0])


@pytest.mark.parametrize("path", fixtures("reference"), ids=lambda p: p.stem)
def test_reconstructions_pass_on_their_own(path):
    assert not bool(speckled(load(path))[0])


def test_real_faces_stay_under_the_ceiling():
    faces = sorted((Path(__file__).parents[2] / "data" / "faces").glob("*.jpg"))
    images = torch.stack([pil_to_unit_range(crop_and_resize(Image.open(path).convert("RGB"))) for path in faces])
    assert (colour_noise(images) < ArtefactLimits().ceiling).all()


def test_colour_noise_ignores_grey_detail_and_sees_colour_speckles():
    generator = torch.Generator().manual_seed(0)
    grey = torch.rand((1, 1, 64, 64), generator=generator).expand(1, 3, 64, 64) * 2 - 1  # sharp, colourless
    flat = torch.zeros((1, 3, 64, 64))
    patch = flat.clone()
    patch[:, :, 20:30, 20:30] = torch.rand((1, 3, 10, 10), generator=generator) * 2 - 1  # one block of colour noise
    scores = colour_noise(torch.cat([grey, flat, patch]))
    assert scores[0] == pytest.approx(0, abs=1e-6) and scores[1] == 0
    assert scores[2] > ArtefactLimits().ceiling


def test_non_finite_frames_are_artefacts_and_references_broadcast():
    frames = torch.zeros((3, 3, 16, 16))
    frames[1, 0, 3, 3] = float("nan")
    frames[2, :, 4:10, 4:10] = torch.rand((3, 6, 6), generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert speckled(frames, torch.zeros(1)).tolist() == [False, True, True]


def test_a_noisy_reference_does_not_sink_its_edits_but_added_noise_does():
    limits = ArtefactLimits()
    noisy = torch.tensor([limits.ceiling + 0.1])
    frames = torch.zeros((2, 3, 16, 16))
    frames[1, :, 4:10, 4:10] = torch.rand((3, 6, 6), generator=torch.Generator().manual_seed(2)) * 2 - 1
    high = colour_noise(frames[1:]).item()
    assert not bool(speckled(frames[1:], torch.tensor([high - limits.margin / 2]), limits)[0])
    assert bool(speckled(frames[1:], torch.tensor([high - 2 * limits.margin]), limits)[0])
    assert not bool(speckled(frames[:1], noisy, limits)[0])
