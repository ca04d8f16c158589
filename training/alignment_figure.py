"""docs/faces.md's figure of a photo that is not a CelebA frame, through the service itself (in-process, the shipped
weights): ``python -m training alignment figure --photo tests/data/photos/astronaut.jpg --out docs/alignment.png``.

Row 1: the photo with the face found and its five landmarks; the align=none crop (the centre of the photo) and the
VAE's reconstruction of it; the align=auto crop and its reconstruction. Row 2: Glow interpolation from the photo's
face to a CelebA face. Row 3: the photo's face moved along Smiling (strengths -1 ... 1). The numbers beside it (the
classifier, VAE MSE, bits per dimension, both ways) are printed as JSON and kept in runs/alignment/.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from app.main import create_app
from app.settings import Settings

CELEBA_FACE = Path("tests/data/faces/000001.jpg")
CELL = 128  # a 64x64 output shown at 2x
GAP = 8


def decode_png(data: bytes | str) -> Image.Image:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return Image.open(io.BytesIO(raw)).convert("RGB")


def enlarged(image: Image.Image) -> Image.Image:
    return image.resize((CELL, CELL), Image.Resampling.NEAREST)


def strip_frames(png: bytes, count: int) -> list[Image.Image]:
    """The frames of a PNG strip (2-px gutters, as app.imaging.tile lays them out)."""
    strip = decode_png(png)
    size = (strip.width - 2) // count - 2
    return [strip.crop((2 + i * (size + 2), 2, 2 + i * (size + 2) + size, 2 + size)) for i in range(count)]


def make_figure(args: argparse.Namespace) -> dict:
    # optional dependency: Starlette's TestClient needs httpx, which only the dev extras install
    from fastapi.testclient import TestClient

    photo_bytes = args.photo.read_bytes()
    celeba_bytes = CELEBA_FACE.read_bytes()
    name = args.photo.name
    upload = [("images", (name, photo_bytes, "image/jpeg"))]
    numbers: dict = {"photo": str(args.photo)}
    with TestClient(create_app(Settings(weights_dir=args.weights, device=args.device))) as client:
        crops, reconstructions = {}, {}
        for align in ("none", "auto"):
            body = client.post("/vae/reconstruct", files=upload, data={"format": "json", "align": align}).json()
            item = body["images"][0]
            crops[align], reconstructions[align] = decode_png(item["original"]), decode_png(item["reconstruction"])
            classified = client.post("/classify", files=upload, data={"align": align}).json()["images"][0]
            bits = client.post("/glow/likelihood", files=upload, data={"align": align}).json()["images"][0]
            manipulated = client.post(
                "/glow/manipulate",
                files={"face": (name, photo_bytes, "image/jpeg")},
                data={"attribute": "Smiling", "strengths": "-1,-0.5,0,0.5,1", "align": align},
            )
            numbers[align] = {
                "vae_mse": round(item["mse"], 4),
                "Male": classified["attributes"]["Male"],
                "Smiling": classified["attributes"]["Smiling"],
                "Young": classified["attributes"]["Young"],
                "bits_per_dim": round(bits["bits_per_dim"], 3),
                "manipulate_status": manipulated.status_code,
                "manipulate_detail": None if manipulated.status_code == 200 else manipulated.json()["detail"],
            }
            if align == "auto":
                numbers["face"] = item["face"]
                manipulation = strip_frames(manipulated.content, 5)
        interpolation_png = client.post(
            "/glow/interpolate",
            files={"face_a": (name, photo_bytes, "image/jpeg"), "face_b": (CELEBA_FACE.name, celeba_bytes)},
            data={"steps": "8", "align": "auto"},
        ).content
        interpolation = strip_frames(interpolation_png, 8)

    face = numbers["face"]
    with Image.open(args.photo) as image:
        shown = image.convert("RGB")
    draw = ImageDraw.Draw(shown)
    width = max(2, shown.width // 200)
    draw.rectangle(face["box"], outline=(255, 40, 40), width=width)
    for x, y in face["landmarks"]:
        r = 2 * width
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(40, 255, 40))
    side = 2 * CELL + GAP
    shown = shown.resize((round(shown.width * side / shown.height), side), Image.Resampling.LANCZOS)

    font = ImageFont.load_default(size=15)
    label_h = 22
    row1 = [crops["none"], reconstructions["none"], crops["auto"], reconstructions["auto"]]
    width = max(shown.width + GAP + 4 * (CELL + GAP), 8 * (CELL + GAP))
    height = label_h + side + 2 * (label_h + CELL + GAP)
    figure = Image.new("RGB", (width + GAP, height + GAP), (255, 255, 255))
    pen = ImageDraw.Draw(figure)
    pen.text((GAP, 4), "photo: face found, 5 landmarks", fill=(0, 0, 0), font=font)
    figure.paste(shown, (GAP, label_h))
    left = GAP + shown.width + GAP
    captions = ["align=none crop", "its VAE recon.", "align=auto crop", "its VAE recon."]
    for index, (image, caption) in enumerate(zip(row1, captions)):
        x = left + index * (CELL + GAP)
        pen.text((x, 4), caption, fill=(0, 0, 0), font=font)
        figure.paste(enlarged(image), (x, label_h + (side - CELL) // 2))
    top = label_h + side + GAP
    pen.text((GAP, top), "Glow: interpolation to a CelebA face (align=auto)", fill=(0, 0, 0), font=font)
    for index, frame in enumerate(interpolation):
        figure.paste(enlarged(frame), (GAP + index * (CELL + GAP), top + label_h))
    top += label_h + CELL + GAP
    pen.text((GAP, top), "Glow: Smiling -1, -0.5, 0, 0.5, 1 (align=auto)", fill=(0, 0, 0), font=font)
    for index, frame in enumerate(manipulation):
        figure.paste(enlarged(frame), (GAP + index * (CELL + GAP), top + label_h))

    out = args.out or Path("docs/alignment.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, optimize=True)
    record = Path("runs/alignment") / f"{out.stem}.json"  # the numbers go into docs/faces.md; this is the record
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(numbers, indent=1) + "\n")
    print(json.dumps(numbers, indent=1))
    print(f"wrote {out}")
    return numbers
