"""Face detection (MTCNN, weights from safetensors) and alignment to CelebA's landmark positions: the detector on a
real non-CelebA photo and on CelebA frames, against facenet-pytorch's own cascade, the similarity geometry, CelebA's
frames passing nearly unchanged, and a fixed subset of the robustness views (``python -m training alignment
robustness`` measures the full set)."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from app.models.align import CELEBA_LANDMARKS, similarity_transform, transform_scale
from app.models.detector import DETECTOR_WEIGHTS, DetectorError, load_detector
from app.models.preprocess import DEFAULT_PREPROCESS, PreprocessSpec, aligned_crop, crop_and_resize, preprocess
from training.alignment import View, auto_crop, mse, reference_crop, render_view, shuffled_background

PHOTO = Path(__file__).parents[2] / "data" / "photos" / "astronaut.jpg"


@pytest.fixture(scope="module")
def detector():
    return load_detector()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(PHOTO) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def frames(face_paths) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in face_paths[:3]]


def check_face_geometry(face) -> None:
    """Eyes above the nose above the mouth, left before right, everything inside the box (with a margin)."""
    (lx, ly), (rx, ry), (_, ny), (mlx, mly), (mrx, mry) = face.landmarks
    assert lx < rx and mlx < mrx
    assert max(ly, ry) < ny < min(mly, mry)
    x0, y0, x1, y1 = face.box
    margin = 0.1 * face.size
    assert all(x0 - margin < x < x1 + margin and y0 - margin < y < y1 + margin for x, y in face.landmarks)


def test_detects_the_face_in_a_real_photo(detector, photo):
    faces = detector.detect(photo)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95
    x0, y0, x1, y1 = face.box
    assert 160 < x0 < 200 and 40 < y0 < 80 and 250 < x1 < 290 and 150 < y1 < 195  # her head, not her shoulders
    check_face_geometry(face)


def test_detects_celeba_faces_at_both_sizes(detector, frames):
    half = frames[0].resize((89, 109), Image.Resampling.LANCZOS)  # as most of celeba-mini's frames are
    for frame in [*frames, half]:
        faces = detector.detect(frame)
        assert faces, frame.size
        check_face_geometry(faces[0])
        factor = 178 / frame.width
        eyes = torch.tensor(faces[0].landmarks[:2]) * factor
        assert (eyes - torch.tensor(CELEBA_LANDMARKS[:2])).abs().max() < 12, "CelebA frames are aligned by the eyes"


def test_no_face_in_plain_or_noisy_pictures(detector):
    assert detector.detect(Image.new("RGB", (300, 200), (40, 120, 200))) == []
    noise = torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert detector.detect(Image.fromarray(noise.numpy(), "RGB")) == []


def test_several_faces_largest_first(detector, photo, frames):
    canvas = Image.new("RGB", (900, 560), (90, 90, 90))
    canvas.paste(photo, (0, 0))
    canvas.paste(frames[0].resize((120, 147)), (650, 300))  # a smaller CelebA face beside her
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].size > faces[1].size
    assert faces[0].box[0] < 400 and faces[1].box[0] > 650


def test_matches_facenet_pytorch_on_the_same_images(detector, photo, frames):
    """Our re-written cascade (PIL crops, continuous coordinates) finds the same faces and landmarks as the package
    the weights come from, within a few percent of the face size."""
    facenet = pytest.importorskip("facenet_pytorch", reason="dev extra: pip install --no-deps facenet-pytorch==2.6.0")
    reference = facenet.MTCNN(keep_all=True, device="cpu")
    for image in [photo, *frames]:
        boxes, _, points = reference.detect(image, landmarks=True)
        ours = detector.detect(image, min_face=20)
        assert len(ours) == len(boxes), image.size
        size = ours[0].size
        theirs_points = torch.tensor([[float(v) for v in point] for point in points[0]])
        theirs_box = torch.tensor([float(v) for v in boxes[0]])
        landmark_error = (torch.tensor(ours[0].landmarks) - theirs_points).abs().max()
        box_error = (torch.tensor(ours[0].box) - theirs_box).abs().max()
        assert landmark_error < 0.05 * size and box_error < 0.1 * size, (image.size, landmark_error, box_error)


def test_weights_load_strictly_and_refuse_bad_files(tmp_path):
    tensors = load_file(DETECTOR_WEIGHTS)
    broken = dict(tensors)
    broken["onet.dense5.weight"] = torch.full_like(tensors["onet.dense5.weight"], float("nan"))
    save_file(broken, tmp_path / "nan.safetensors")
    with pytest.raises(DetectorError, match="non-finite"):
        load_detector(tmp_path / "nan.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("rnet.dense4")}, tmp_path / "missing.safetensors")
    with pytest.raises(DetectorError, match="rnet"):
        load_detector(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DetectorError, match="not a readable"):
        load_detector(tmp_path / "junk.safetensors")


def test_similarity_transform_recovers_rotation_scale_and_shift():
    angle, scale, shift = math.radians(20), 2.5, torch.tensor([30.0, -7.0], dtype=torch.float64)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]).double()
    source = torch.tensor(CELEBA_LANDMARKS, dtype=torch.float64)
    target = source @ (scale * rotation).T + shift
    matrix = similarity_transform(source, target)
    assert torch.allclose(matrix[:, :2], scale * rotation, atol=1e-9) and torch.allclose(matrix[:, 2], shift)
    assert transform_scale(matrix) == pytest.approx(scale)
    with pytest.raises(ValueError):
        similarity_transform([(1.0, 1.0)] * 5, target)


def test_mean_landmarks_of_a_frame_give_its_own_crop(frames):
    """The aligned crop of a frame whose landmarks sit exactly at CelebA's means is the plain (align=none) crop."""
    for frame in frames:
        factor = frame.width / 178
        landmarks = [(x * factor, y * factor) for x, y in CELEBA_LANDMARKS]
        assert mse(aligned_crop(frame, landmarks), crop_and_resize(frame)) < 2e-4


def test_alignment_undoes_a_known_similarity(frames):
    """Rotate, scale and shift a frame inside a larger picture, move the landmarks with it: the aligned crop is the
    frame's own crop (no detector involved: this is the geometry alone)."""
    frame = frames[0]
    angle, scale = 25.0, 2.0
    picture = frame.resize((frame.width * 2, frame.height * 2), Image.Resampling.BICUBIC).rotate(
        angle, resample=Image.Resampling.BICUBIC, expand=True
    )
    centre_in = (frame.width * scale / 2, frame.height * scale / 2)
    centre_out = (picture.width / 2, picture.height / 2)
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    landmarks = []
    for x, y in CELEBA_LANDMARKS:  # PIL rotates counter-clockwise as seen: y grows downwards
        dx, dy = x * scale - centre_in[0], y * scale - centre_in[1]
        landmarks.append((centre_out[0] + cos * dx + sin * dy, centre_out[1] - sin * dx + cos * dy))
    factor = frame.width / 178
    plain = aligned_crop(frame, [(x * factor, y * factor) for x, y in CELEBA_LANDMARKS])
    assert mse(aligned_crop(picture, landmarks), plain) < 0.003


def test_spec_reads_checkpoints_from_before_alignment_existed():
    old = '{"center_y_fraction": 0.5, "crop_fraction": 0.8, "size": 64}'
    assert PreprocessSpec.from_json(old).alignment == "celeba"
    assert PreprocessSpec.from_json(PreprocessSpec(alignment="none").to_json()).alignment == "none"
    with pytest.raises(ValueError, match="alignment"):
        PreprocessSpec(alignment="dlib")


def test_preprocess_with_landmarks_is_the_aligned_crop(frames):
    frame = frames[1].resize((89, 109), Image.Resampling.LANCZOS)
    landmarks = [(x / 2, y / 2) for x, y in CELEBA_LANDMARKS]
    tensor = preprocess(frame, DEFAULT_PREPROCESS, landmarks)
    assert tensor.shape == (3, 64, 64) and -1 <= tensor.min() and tensor.max() <= 1
    assert torch.allclose(tensor, preprocess(frame, DEFAULT_PREPROCESS), atol=0.05)


def test_a_tiny_face_is_still_aligned(detector, frames):
    small = frames[0].resize((62, 76), Image.Resampling.LANCZOS)  # a face ~30 px wide
    canvas = Image.new("RGB", (200, 200), (60, 60, 60))
    canvas.paste(small, (70, 60))
    crop, found = auto_crop(detector, canvas, DEFAULT_PREPROCESS)
    assert found == 1 and crop.size == (64, 64)


# Fixed views: the extremes of the robustness set (scale 0.5 and 1.8, +-30 degrees) and each kind of change.
VIEWS = [
    View(scale=0.55, angle=-30.0, centre=(150.0, 300.0)),
    View(scale=1.75, angle=28.0, centre=(260.0, 250.0)),
    View(scale=1.0, angle=12.0, centre=(300.0, 200.0), mirror=True),
    View(scale=0.8, angle=-18.0, centre=(200.0, 260.0), grey=True),
    View(scale=1.2, angle=5.0, centre=(256.0, 256.0), jpeg_quality=30),
    View(scale=0.9, angle=-25.0, centre=(240.0, 280.0), mirror=True, grey=True, jpeg_quality=30),
]


def test_transformed_faces_align_to_their_frames_crop(detector, frames, face_paths):
    """Each view's align=auto crop matches its frame's align=auto crop (mirrored and grey as the view is): the
    fixed subset of ``python -m training alignment robustness`` (whose full set averages under 0.02)."""
    rng = random.Random(0)
    background = shuffled_background(frames, 512, rng)
    errors = []
    # 000003's face is turned half away (the detector misses it grey, mirrored and JPEG'd): the full measurement
    # counts such misses; this subset keeps the frontal faces.
    for frame in [Image.open(path).convert("RGB") for path in face_paths if path.name != "000003.jpg"]:
        crop, _ = auto_crop(detector, frame, DEFAULT_PREPROCESS)
        for view in VIEWS:
            picture = render_view(frame, view, background)
            got, found = auto_crop(detector, picture, DEFAULT_PREPROCESS)
            assert found >= 1, (frame.size, view)
            errors.append(mse(got, reference_crop(crop, view)))
    assert max(errors) < 0.06, errors
    assert sum(errors) / len(errors) < 0.02, errors


def test_rendered_views_are_what_they_say(frames):
    background = Image.new("RGB", (512, 512), (0, 0, 0))
    view = View(scale=1.0, angle=0.0, centre=(256.0, 256.0), grey=True, jpeg_quality=30)
    picture = render_view(frames[0], view, background)
    assert picture.size == (512, 512)
    red, green, blue = picture.getpixel((256, 256))
    assert abs(red - green) < 8 and abs(green - blue) < 8, "grey"
    assert picture.getpixel((5, 5)) == (0, 0, 0) or max(picture.getpixel((5, 5))) < 10, "the background shows"
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    assert buffer.tell() > 0
