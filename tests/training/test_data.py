"""Reading CelebA's official layout, and the one preprocessing function."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from app.models.preprocess import PreprocessSpec, crop_and_resize, preprocess, to_uint8
from training.data import CelebA, load_split


def test_reads_splits_and_skips_rows_without_images(tiny_celeba):
    train, valid = CelebA(tiny_celeba, "train"), CelebA(tiny_celeba, "valid")
    assert len(train) == 18 and len(valid) == 6  # the partition row with no image file is skipped
    image, attributes = train[0]
    assert image.shape == (3, 64, 64) and -1 <= image.min() and image.max() <= 1
    assert attributes.shape == (40,) and set(attributes.tolist()) <= {0.0, 1.0}
    assert train.attribute_names[20] == "Male" and len(train.attribute_names) == 40
    assert len(CelebA(tiny_celeba, "train", limit=5)) == 5


def test_labels_match_the_file(tiny_celeba):
    dataset = CelebA(tiny_celeba, "train")
    row = (tiny_celeba / "list_attr_celeba.txt").read_text().splitlines()[2].split()
    assert dataset.files[0] == row[0]
    assert dataset.attributes[0].tolist() == [1.0 if v == "1" else 0.0 for v in row[1:]]


def test_errors_are_clear(tiny_celeba, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        CelebA(tiny_celeba, "everything")
    with pytest.raises(FileNotFoundError, match="no img_align_celeba"):
        CelebA(tmp_path, "train")
    with pytest.raises(ValueError, match="no images of split 'test'"):
        CelebA(tiny_celeba, "test")


def test_packed_split_is_cached_and_identical(tiny_celeba, tmp_path):
    first = load_split(tiny_celeba, "valid", cache_dir=tmp_path / "packs")
    assert len(list((tmp_path / "packs").glob("*.safetensors"))) == 1
    second = load_split(tiny_celeba, "valid", cache_dir=tmp_path / "packs")
    assert torch.equal(first.images, second.images) and first.images.dtype == torch.uint8
    images, attributes = first.batch(torch.tensor([0, 2]))
    assert torch.allclose(images[1], CelebA(tiny_celeba, "valid")[2][0])
    assert torch.equal(attributes, first.attributes[[0, 2]])


def test_preprocessing_is_relative_to_image_size():
    # A face-like pattern at full and half size crops to (nearly) the same 64x64 picture.
    full = Image.radial_gradient("L").resize((178, 218)).convert("RGB")
    half = full.resize((89, 109), Image.Resampling.LANCZOS)
    difference = (preprocess(full) - preprocess(half)).abs().mean()
    assert difference < 0.05


def test_crop_geometry():
    image = Image.new("RGB", (100, 200), (0, 0, 0))
    image.paste((255, 255, 255), (10, 60, 90, 140))  # exactly the centred 80x80 square
    cropped = crop_and_resize(image, PreprocessSpec(size=8, crop_fraction=0.8))
    pixels = torch.tensor(list(cropped.tobytes())).view(8, 8, 3).float()
    assert cropped.size == (8, 8)
    assert pixels[1:7, 1:7].min() >= 250 and pixels.mean() > 235  # only the bicubic kernel's edge sees black
    # A crop wider than the image is clipped to it instead of padding with black.
    wide = crop_and_resize(Image.new("RGB", (100, 50), (255, 0, 0)), PreprocessSpec(size=8, crop_fraction=1.0))
    assert set(wide.tobytes()[i : i + 3] for i in range(0, 8 * 8 * 3, 3)) == {bytes([255, 0, 0])}


def test_unit_range_round_trip():
    pixels = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    tensor = preprocess(image, PreprocessSpec(size=8, crop_fraction=1.0))
    assert torch.equal(to_uint8(tensor), pixels)
