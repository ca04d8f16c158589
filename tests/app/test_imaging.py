"""Decoding uploads: EXIF orientation applied, JPEGs decoded at reduced scale, a decoded-pixel budget per request,
decoding concurrency bounded."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from app.imaging import DecodeBudget, DecodeLimits, ImageDecodeError, decode_image, draft_size, request_budget


def jpeg_of(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save)
    return buffer.getvalue()


def sideways_photo() -> tuple[Image.Image, bytes]:
    """A 'phone photo' stored landscape with EXIF Orientation=6 (rotate 90 degrees clockwise to view): the upright
    picture is portrait, red on top, blue below."""
    upright = Image.new("RGB", (60, 100), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 50, 60, 100))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote: 100 wide, 60 high
    exif = Image.Exif()
    exif[0x0112] = 6
    return upright, jpeg_of(stored, exif=exif.tobytes())


def test_exif_orientation_is_applied():
    upright, data = sideways_photo()
    image = decode_image(data, "phone.jpg")
    assert image.size == upright.size == (60, 100)
    top, bottom = image.getpixel((30, 10)), image.getpixel((30, 90))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_exif_rotation_reaches_the_model_input(client):
    """Through the API: the sideways photo and the same picture saved upright preprocess to the same face."""
    import base64

    upright, sideways = sideways_photo()
    files = [("images", ("a.jpg", sideways, "image/jpeg")), ("images", ("b.jpg", jpeg_of(upright), "image/jpeg"))]
    # align=none: the picture is no face (align=auto would answer 422); the crop alone shows the rotation.
    body = client.post("/vae/reconstruct", files=files, data={"format": "json", "align": "none"}).json()
    first, second = (Image.open(io.BytesIO(base64.b64decode(item["original"]))) for item in body["images"])
    diff = max(abs(a - b) for a, b in zip(first.convert("RGB").tobytes(), second.convert("RGB").tobytes()))
    assert diff < 40, diff


def test_corrupt_exif_is_ignored_not_a_500():
    data = jpeg_of(Image.new("RGB", (40, 40), (9, 9, 9)), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert decode_image(data, "odd.jpg").size == (40, 40)


def test_large_jpegs_are_decoded_at_reduced_scale():
    assert draft_size(4000, 3000, 512) == (683, 512)
    assert draft_size(900, 800, 512) is None, "under 2x the target: full size"
    data = jpeg_of(Image.new("RGB", (4096, 3072), (120, 80, 40)))
    image = decode_image(data, "big.jpg", budget=DecodeBudget(DecodeLimits(decode_side=512)))
    assert min(image.size) >= 512 and image.size[0] <= 4096 // 4, image.size


def test_request_budget_counts_every_upload_of_a_request():
    data = jpeg_of(Image.new("RGB", (300, 300)))  # 90,000 pixels, decoded at full size (under 2 x 512)
    limits = DecodeLimits(max_request_pixels=200_000)
    with request_budget(limits) as budget:
        decode_image(data, "a.jpg")
        decode_image(data, "b.jpg")
        with pytest.raises(ImageDecodeError) as refused:
            decode_image(data, "c.jpg")
    assert (
        refused.value.status == 413
        and "c.jpg" in str(refused.value)
        and "FACEGEN_MAX_REQUEST_PIXELS" in str(refused.value)
    )
    assert budget.used == 180_000
    with request_budget(limits):  # the next request starts afresh
        decode_image(data, "a.jpg")


def test_request_budget_over_http(make_client, tiny_weights):
    client = make_client(weights_dir=tiny_weights, device="cpu", max_request_pixels=150_000)
    png = io.BytesIO()
    Image.new("RGB", (300, 300), (1, 2, 3)).save(png, format="PNG")
    files = [("images", (f"{i}.png", png.getvalue(), "image/png")) for i in range(2)]
    response = client.post("/classify", files=files, data={"align": "none"})  # plain colours: no face to align
    assert response.status_code == 413 and "1.png" in response.json()["detail"]
    assert client.post("/classify", files=files[:1], data={"align": "none"}).status_code == 200


def test_decoding_concurrency_is_bounded():
    limits = DecodeLimits(concurrency=1)
    data = jpeg_of(Image.new("RGB", (64, 64)))
    inside, most = 0, 0
    lock = threading.Lock()
    original_load = Image.Image.load

    def slow_load(self):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with lock:
            inside -= 1
        return original_load(self)

    Image.Image.load = slow_load
    try:
        threads = [
            threading.Thread(target=decode_image, args=(data, f"{i}.jpg", None, DecodeBudget(limits))) for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        Image.Image.load = original_load
    assert most == 1
