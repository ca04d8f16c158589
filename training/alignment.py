"""Measuring face alignment: ``python -m training alignment <what> --data ../shared/data/celeba-mini``.

* ``landmarks``: CelebA's mean landmark positions in its 178x218 frame, from the detector's five points on train
  images (the constants of :mod:`app.models.align`).
* ``celeba``: validation faces through ``align=auto`` against ``align=none``: pixel MSE of the crops and the
  classifier's attribute agreement (CelebA's frames must pass nearly unchanged).
* ``robustness``: validation faces moved by random similarity transforms (scale 0.5-1.8, rotation +-30 degrees,
  shifts) into larger frames of other content, mirrored, grey, JPEG quality 30; each view's ``auto`` crop against
  its frame's ``auto`` crop (MSE) and the classifier on it against the frame's ``none`` crop (agreement; also
  against the ``none`` crop of the frame made grey, mirrored and JPEG'd like the view, which leaves the geometry
  as the only difference).
* ``speed``: detection + alignment of a 1024x1024 photo.
* ``figure``: docs/faces.md's figure from a photo (detection, aligned crop, reconstruction, interpolation,
  manipulation).

The view generator (:func:`render_view`) is also what ``tests/app/models/test_align.py`` runs on a fixed subset.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from app.models.align import CELEBA_FRAME
from app.models.checkpoint import load_checkpoint
from app.models.detector import FaceDetector, load_detector
from app.models.pipelines import build_pipeline
from app.models.preprocess import DEFAULT_PREPROCESS, PreprocessSpec, aligned_crop, crop_and_resize, crop_square

from .alignment_figure import make_figure
from .data import SPLITS, read_partition
from .registry import register_trainer

KINDS = ("similarity", "mirror", "grey", "jpeg30", "all")


# ---- the robustness views ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """How one face is shown: its frame scaled (relative to a 178-px-wide frame), rotated (degrees, counter-clockwise
    as seen) and centred at ``centre`` of a ``canvas`` x ``canvas`` picture of other content, then optionally
    mirrored, made grey and JPEG-compressed."""

    scale: float
    angle: float
    centre: tuple[float, float]
    canvas: int = 512
    mirror: bool = False
    grey: bool = False
    jpeg_quality: int | None = None


def random_view(rng: random.Random, kind: str, canvas: int = 512, spec: PreprocessSpec = DEFAULT_PREPROCESS) -> View:
    """A random view of ``kind`` (one of :data:`KINDS`): scale 0.5-1.8, rotation +-30 degrees, and a position that
    keeps the face's crop inside the canvas."""
    scale, angle = rng.uniform(0.5, 1.8), rng.uniform(-30.0, 30.0)
    left, top, side = crop_square(*CELEBA_FRAME, spec)
    # Half the extent of the rotated crop square around the frame centre, to keep it inside the canvas.
    corners = [(left, top), (left + side, top), (left, top + side), (left + side, top + side)]
    cx, cy = CELEBA_FRAME[0] / 2, CELEBA_FRAME[1] / 2
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    xs = [scale * (cos * (x - cx) + sin * (y - cy)) for x, y in corners]
    ys = [scale * (-sin * (x - cx) + cos * (y - cy)) for x, y in corners]
    low_x, high_x = -min(xs) + 4, canvas - max(xs) - 4
    low_y, high_y = -min(ys) + 4, canvas - max(ys) - 4
    centre = (
        rng.uniform(low_x, high_x) if low_x < high_x else canvas / 2,
        rng.uniform(low_y, high_y) if low_y < high_y else canvas / 2,
    )
    return View(
        scale=round(scale, 3),
        angle=round(angle, 2),
        centre=(round(centre[0], 1), round(centre[1], 1)),
        canvas=canvas,
        mirror=kind in ("mirror", "all"),
        grey=kind in ("grey", "all"),
        jpeg_quality=30 if kind in ("jpeg30", "all") else None,
    )


def shuffled_background(images: list[Image.Image], size: int, rng: random.Random, tile: int = 32) -> Image.Image:
    """Other content, without a face: the four corners of each of ``images`` (CelebA frames: backdrop, hair,
    shoulders; the face sits in the middle), cut into ``tile``-px squares (on the 178x218 scale) in random order, as
    a ``size`` x ``size`` canvas. A mosaic of whole frames would be full of eyes and mouths that the detector could
    take for a face larger than the real one."""
    pieces = []
    for image in images:
        image = image.convert("RGB").resize(CELEBA_FRAME, Image.Resampling.BICUBIC)
        width, height = CELEBA_FRAME
        for left in (0, width - tile):
            for top in (0, tile, height - 2 * tile, height - tile):
                pieces.append(image.crop((left, top, left + tile, top + tile)))
    count = -(-size // tile)
    canvas = Image.new("RGB", (count * tile, count * tile))
    for index in range(count * count):
        canvas.paste(rng.choice(pieces), ((index % count) * tile, (index // count) * tile))
    return canvas.crop((0, 0, size, size))


def render_view(frame: Image.Image, view: View, background: Image.Image) -> Image.Image:
    """``frame`` (a CelebA aligned frame of any size) shown as ``view`` says, over ``background``."""
    frame = frame.convert("RGB")
    scale = view.scale * CELEBA_FRAME[0] / frame.width  # image pixels of the view per pixel of this frame
    # Scale with an antialiasing resize first, then rotate and place at 1:1 (a direct affine warp would alias).
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    small = frame.resize((width, height), Image.Resampling.LANCZOS)
    cos, sin = math.cos(math.radians(view.angle)), math.sin(math.radians(view.angle))
    # PIL's affine transform maps output (canvas) points to input points: the inverse of rotate-then-place.
    cx, cy = view.centre
    a, b = cos, -sin
    d, e = sin, cos
    c = width / 2 - a * cx - b * cy
    f = height / 2 - d * cx - e * cy
    size = (view.canvas, view.canvas)
    coefficients = (a, b, c, d, e, f)
    warped = small.transform(size, Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC)
    mask = Image.new("L", small.size, 255).transform(
        size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    picture = Image.composite(warped, background.convert("RGB").resize(size), mask)
    return finish_view(picture, view)


def finish_view(picture: Image.Image, view: View) -> Image.Image:
    """Mirroring, grey and JPEG compression, in that order."""
    if view.mirror:
        picture = ImageOps.mirror(picture)
    if view.grey:
        picture = picture.convert("L").convert("RGB")
    if view.jpeg_quality is not None:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=view.jpeg_quality)
        picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return picture


def reference_crop(crop: Image.Image, view: View) -> Image.Image:
    """What the view's aligned crop should be, from its frame's aligned crop: mirrored and grey as the view is."""
    if view.mirror:
        crop = ImageOps.mirror(crop)
    if view.grey:
        crop = crop.convert("L").convert("RGB")
    return crop


def auto_crop(detector: FaceDetector, image: Image.Image, spec: PreprocessSpec) -> tuple[Image.Image | None, int]:
    """The ``align=auto`` crop of ``image`` (its largest face) and the number of faces found."""
    faces = detector.detect(image)
    if not faces:
        return None, 0
    return aligned_crop(image, faces[0].landmarks, spec), len(faces)


def pixels(image: Image.Image) -> torch.Tensor:
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    return data.permute(2, 0, 1).float().div(127.5).sub(1.0)


def mse(a: Image.Image, b: Image.Image) -> float:
    """Mean squared pixel difference on the [-1, 1] scale."""
    return float(((pixels(a) - pixels(b)) ** 2).mean())


# ---- the measurements ------------------------------------------------------------------------------------------------
def split_images(root: Path, split: str, limit: int | None, every: int = 1) -> list[Path]:
    partition = read_partition(root)
    folder = root / "img_align_celeba"
    names = sorted(name for name, part in partition.items() if part == SPLITS[split] and (folder / name).is_file())
    names = names[::every]
    return [folder / name for name in (names[:limit] if limit else names)]


def measure_landmarks(args: argparse.Namespace) -> dict:
    detector = load_detector()
    paths = split_images(args.data, "train", args.limit, every=args.every)
    points, missed = [], 0
    started = time.perf_counter()
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            image = image.convert("RGB")
            faces = detector.detect(image)
        if not faces:
            missed += 1
            continue
        factor = CELEBA_FRAME[0] / image.width  # the half-size frames of celeba-mini
        points.append(torch.tensor(faces[0].landmarks) * factor)
        if (index + 1) % 500 == 0:
            print(f"{index + 1}/{len(paths)} images, {time.perf_counter() - started:.0f} s", flush=True)
    stacked = torch.stack(points)
    mean, spread = stacked.mean(0), stacked.std(0)
    names = ["left eye", "right eye", "nose", "left mouth corner", "right mouth corner"]
    result: dict = {
        "images": len(paths),
        "detected": len(points),
        "missed": missed,
        "mean": [[round(v, 2) for v in point] for point in mean.tolist()],
        "std": [[round(v, 2) for v in point] for point in spread.tolist()],
        "names": names,
    }
    print(json.dumps(result, indent=1))
    print("CELEBA_LANDMARKS = (")
    for (x, y), name in zip(result["mean"], names):
        print(f"    ({x:.1f}, {y:.1f}),  # {name}")
    print(")")
    return result


def load_classifier(path: Path):
    return build_pipeline(load_checkpoint(path))


def classify(pipeline, crops: list[Image.Image]) -> torch.Tensor:
    """0/1 attribute decisions of the classifier for 64x64 crops."""
    batch = torch.stack([pixels(crop) for crop in crops])
    (probabilities,) = pipeline(pipeline.prepare_classification(batch))
    return (probabilities > 0.5).float()


def measure_celeba(args: argparse.Namespace) -> dict:
    """``align=auto`` against ``align=none`` on validation frames."""
    detector, classifier = load_detector(), load_classifier(args.classifier)
    spec = classifier.checkpoint.preprocess
    paths = split_images(args.data, "valid", args.limit)
    errors, none_crops, auto_crops, missed = [], [], [], []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
        crop, _ = auto_crop(detector, image, spec)
        if crop is None:
            missed.append(path.name)
            continue
        plain = crop_and_resize(image, spec)
        errors.append(mse(crop, plain))
        none_crops.append(plain)
        auto_crops.append(crop)
    agreement = (classify(classifier, auto_crops) == classify(classifier, none_crops)).float()
    result = {
        "images": len(paths),
        "no_face_found": missed,
        "mse_auto_vs_none": round(statistics.fmean(errors), 4),
        "mse_median": round(statistics.median(errors), 4),
        "attribute_agreement": round(float(agreement.mean()), 4),
        "worst_attributes": worst(agreement, classifier.attributes),
    }
    print(json.dumps(result, indent=1))
    return result


def worst(agreement: torch.Tensor, names: list[str], count: int = 5) -> dict[str, float]:
    per_attribute = agreement.mean(0)
    order = per_attribute.argsort()[:count].tolist()
    return {names[i]: round(float(per_attribute[i]), 4) for i in order}


def measure_robustness(args: argparse.Namespace) -> dict:
    detector, classifier = load_detector(), load_classifier(args.classifier)
    spec = classifier.checkpoint.preprocess
    rng = random.Random(args.seed)
    paths = split_images(args.data, "valid", args.limit)
    others = split_images(args.data, "train", 200)
    by_kind: dict[str, dict[str, list]] = {
        kind: {"mse": [], "view": [], "frame": [], "same_pixels": [], "failed": []} for kind in KINDS
    }
    started = time.perf_counter()
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            frame = image.convert("RGB")
        crop, _ = auto_crop(detector, frame, spec)
        if crop is None:
            continue
        plain = crop_and_resize(frame, spec)
        for kind in KINDS:
            view = random_view(rng, kind, spec=spec)
            background_sources: list[Image.Image] = [Image.open(p) for p in rng.sample(others, 3)]
            picture = render_view(frame, view, shuffled_background(background_sources, view.canvas, rng))
            got, _ = auto_crop(detector, picture, spec)
            if got is None:
                by_kind[kind]["failed"].append({"image": path.name, **asdict(view)})
                continue
            by_kind[kind]["mse"].append(mse(got, reference_crop(crop, view)))
            by_kind[kind]["view"].append(got)
            by_kind[kind]["frame"].append(plain)
            # The frame itself mirrored, grey and JPEG'd as the view is, centre-cropped: the classifier's reading
            # with the same colour information as the view, so that only the geometry differs.
            by_kind[kind]["same_pixels"].append(crop_and_resize(finish_view(frame, view), spec))
        if (index + 1) % 50 == 0:
            print(f"{index + 1}/{len(paths)} faces, {time.perf_counter() - started:.0f} s", flush=True)
    result: dict = {"faces": len(paths), "seed": args.seed, "kinds": {}}
    all_errors, all_agreement, all_same_pixels = [], [], []
    for kind, found in by_kind.items():
        decisions = classify(classifier, found["view"])
        agreement = (decisions == classify(classifier, found["frame"])).float()
        same_pixels = (decisions == classify(classifier, found["same_pixels"])).float()
        all_errors += found["mse"]
        all_agreement.append(agreement)
        all_same_pixels.append(same_pixels)
        result["kinds"][kind] = {
            "views": len(found["mse"]) + len(found["failed"]),
            "no_face_found": len(found["failed"]),
            "mse": round(statistics.fmean(found["mse"]), 4),
            "mse_median": round(statistics.median(found["mse"]), 4),
            "attribute_agreement": round(float(agreement.mean()), 4),
            "worst_attributes": worst(agreement, classifier.attributes, 3),
            "attribute_agreement_same_pixels": round(float(same_pixels.mean()), 4),
            "failures": found["failed"][:5],
        }
    result["mse"] = round(statistics.fmean(all_errors), 4)
    result["attribute_agreement"] = round(float(torch.cat(all_agreement).mean()), 4)
    result["attribute_agreement_same_pixels"] = round(float(torch.cat(all_same_pixels).mean()), 4)
    print(json.dumps(result, indent=1))
    return result


def measure_speed(args: argparse.Namespace) -> dict:
    """Detection + alignment of a 1024x1024 photo (the test photo enlarged), wall and CPU time, best and median."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    detector = load_detector(device=device)
    with Image.open(args.photo) as image:
        photo = image.convert("RGB").resize((1024, 1024), Image.Resampling.BICUBIC)
    for _ in range(3):
        detector.detect(photo)
    walls, cpus = [], []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        faces = detector.detect(photo)
        aligned_crop(photo, faces[0].landmarks, DEFAULT_PREPROCESS)
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "wall_ms_median": round(statistics.median(walls), 1),
        "wall_ms_best": round(min(walls), 1),
        "cpu_ms_median": round(statistics.median(cpus), 1),
        "faces": len(faces),
    }
    print(json.dumps(result, indent=1))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["landmarks", "celeba", "robustness", "speed", "figure"])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/celeba-mini"))
    parser.add_argument("--classifier", type=Path, default=Path("weights/classifier.safetensors"))
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="figure: the served checkpoints")
    parser.add_argument("--photo", type=Path, default=Path("tests/data/photos/astronaut.jpg"))
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--every", type=int, default=1, help="landmarks: every n-th train image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON (figure: the PNG) here")


@register_trainer("alignment", add_arguments)
def main(args: argparse.Namespace) -> None:
    if args.what == "figure":
        make_figure(args)
        return
    measure = {
        "landmarks": measure_landmarks,
        "celeba": measure_celeba,
        "robustness": measure_robustness,
        "speed": measure_speed,
    }[args.what]
    result = measure(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
