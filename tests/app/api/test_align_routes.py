"""``align`` on every upload route: auto (detect, align the largest face, report it; 422 without a face) and none
(today's centre crop); several faces, a tiny face's warning, detection on its own thread, and outputs
that are NaN, infinite or diverged refused with a 422 instead of being returned as images."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.models import build_model
from app.models.checkpoint import save_checkpoint
from app.models.detector import FaceDetector
from app.models.glow import DIRECTIONS_KEY
from app.models.preprocess import PreprocessSpec
from tests.conftest import ATTRIBUTE_NAMES, TINY_CONFIGS, png_of, write_tiny_checkpoint

PHOTO = Path(__file__).parents[2] / "data" / "photos" / "astronaut.jpg"


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return PHOTO.read_bytes()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Tiny VAE and Glow (16 px, the Glow with attribute directions) and a tiny classifier at the real 64 px."""
    directory = tmp_path_factory.mktemp("align-weights")
    write_tiny_checkpoint(directory, "vae")
    size = TINY_CONFIGS["glow"]["image_size"]
    # small: manipulation strength 1 is MANIPULATION_UNIT (2) directions, and a tiny flow diverges quickly
    directions = torch.randn((40, 3 * size * size), generator=torch.Generator().manual_seed(0)) * 0.1
    write_tiny_checkpoint(directory, "glow", extras={DIRECTIONS_KEY: directions})
    torch.manual_seed(0)
    classifier = build_model("classifier", {**TINY_CONFIGS["classifier"], "image_size": 64})
    save_checkpoint(
        directory / "classifier.safetensors", classifier, preprocess=PreprocessSpec(size=64), attributes=ATTRIBUTE_NAMES
    )
    return directory


@pytest.fixture(scope="module")
def client(weights):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(weights_dir=weights, device="cpu"))) as client:
        yield client


def upload_requests(face: bytes, name: str = "face.jpg") -> dict[str, dict]:
    """Every upload route with a minimal valid request carrying ``face``."""
    image = (name, face, "image/jpeg")
    return {
        "/vae/reconstruct": {"files": [("images", image)], "data": {"format": "json"}},
        "/classify": {"files": [("images", image)], "data": {}},
        "/glow/interpolate": {"files": [("face_a", image), ("face_b", image)], "data": {"format": "json"}},
        "/glow/manipulate": {"files": [("face", image)], "data": {"attribute": "Smiling", "format": "json"}},
        "/glow/likelihood": {"files": [("images", image)], "data": {}},
    }


def reports(path: str, body: dict) -> list[dict]:
    """The face reports of a JSON answer of ``path``, one per upload."""
    if path == "/glow/interpolate":
        return body["faces"]
    if path == "/glow/manipulate":
        return [body["face"]]
    return [image["face"] for image in body["images"]]


def test_every_upload_route_aligns_and_reports_the_face(client, photo):
    for path, request in upload_requests(photo, "astronaut.jpg").items():
        response = client.post(path, **request)
        assert response.status_code == 200, (path, response.text)
        for report in reports(path, response.json()):
            assert report["align"] == "auto" and report["faces_found"] == 1, path
            x0, y0, x1, y1 = report["box"]
            assert 160 < x0 < x1 < 290 and 40 < y0 < y1 < 195, path  # her face, not her shoulders
            assert len(report["landmarks"]) == 5 and report["score"] > 0.9 and report["warning"] is None


def test_align_none_is_the_centre_crop_and_says_so(client, photo):
    for path, request in upload_requests(photo).items():
        response = client.post(path, files=request["files"], data={**request["data"], "align": "none"})
        assert response.status_code == 200, (path, response.text)
        for report in reports(path, response.json()):
            assert report["align"] == "none" and report["faces_found"] is None and report["box"] is None


def test_auto_and_none_crop_differently_on_a_photo_and_alike_on_celeba(client, photo, face_bytes):
    def original(data: bytes, align: str) -> torch.Tensor:
        files = [("images", ("x.jpg", data, "image/jpeg"))]
        body = client.post("/vae/reconstruct", files=files, data={"format": "json", "align": align}).json()
        image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["original"]))).convert("RGB")
        return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float() / 127.5 - 1

    def mse(data: bytes) -> float:
        return float(((original(data, "auto") - original(data, "none")) ** 2).mean())

    assert mse(photo) > 0.1, "the centre crop of a portrait is not its face"
    assert mse(face_bytes[0]) < 0.05, "a CelebA frame passes nearly unchanged"


def test_no_face_is_a_422_naming_the_file_on_every_route(client):
    flat = png_of((300, 240), (40, 120, 200))
    for path, request in upload_requests(flat, "sky.png").items():
        response = client.post(path, **request)
        assert response.status_code == 422, (path, response.text)
        detail = response.json()["detail"][0]
        assert "no face found in sky.png" in detail["msg"] and "align=none" in detail["msg"], path
        assert detail["loc"][-1] in ("images", "face"), path


def test_several_faces_the_largest_is_used_and_all_are_counted(client, face_bytes):
    with Image.open(PHOTO) as photo:
        canvas = Image.new("RGB", (900, 560), (90, 90, 90))
        canvas.paste(photo.convert("RGB"), (0, 0))
    with Image.open(io.BytesIO(face_bytes[0])) as small:
        canvas.paste(small.convert("RGB").resize((120, 147)), (650, 300))
    files = [("images", ("two.jpg", jpeg(canvas), "image/jpeg"))]
    report = client.post("/classify", files=files).json()["images"][0]["face"]
    assert report["faces_found"] == 2
    assert report["box"][0] < 400, "the astronaut's face (the larger one), not the small one on the right"


def test_a_tiny_face_is_aligned_with_a_warning(client, face_bytes):
    with Image.open(io.BytesIO(face_bytes[0])) as face:
        small = face.convert("RGB").resize((62, 76), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (240, 240), (70, 70, 70))
    canvas.paste(small, (90, 80))
    files = [("images", ("tiny.jpg", jpeg(canvas), "image/jpeg"))]
    response = client.post("/classify", files=files)
    assert response.status_code == 200, response.text
    report = response.json()["images"][0]["face"]
    assert report["faces_found"] == 1 and report["face_px"] < 64
    assert "px across" in report["warning"] and "blurred" in report["warning"]


def test_detection_runs_on_its_own_thread_in_one_batch(client, photo, monkeypatch):
    calls = []
    detect_batch = FaceDetector.detect_batch

    def spy(self, images, *args, **kwargs):
        calls.append((threading.current_thread().name, len(images)))
        return detect_batch(self, images, *args, **kwargs)

    monkeypatch.setattr(FaceDetector, "detect_batch", spy)
    files = [("images", ("a.jpg", photo, "image/jpeg")), ("images", ("b.jpg", photo, "image/jpeg"))]
    assert client.post("/classify", files=files).status_code == 200
    assert calls == [("facegen-detect_0", 2)], "both uploads in one batch, on the detection thread"


def test_an_unknown_align_value_is_a_422(client, photo):
    response = client.post("/classify", files=[("images", ("a.jpg", photo, "image/jpeg"))], data={"align": "dlib"})
    assert response.status_code == 422 and "auto" in response.text and "none" in response.text


# ---- outputs that cannot be shown are refused, not returned as black, white or grey frames ---------------------------
def glow_model(client):
    return client.app.state.store.pipelines["glow"].model


def test_diverged_glow_frames_are_refused_alone_and_a_request_only_when_every_frame_is(client, photo, monkeypatch):
    model = glow_model(client)
    decode = model.decode
    calls = []

    def diverging(latents):
        """The first decoding of a manipulation is the upload's own latent then its frames: every frame blows up,
        as unaligned portraits did, and so does every retry at a smaller strength; the reconstruction does not."""
        images = decode(latents)
        flat = model.flatten_latents(latents)
        moved = (flat != flat[0]).any(dim=1) if not calls else torch.ones(len(flat), dtype=torch.bool)
        calls.append(len(flat))
        images[moved] = images[moved] * 1e12
        return images

    monkeypatch.setattr(model, "decode", diverging)
    data = {"attribute": "Smiling", "strengths": "-1,-0.5,0,0.5", "align": "none", "format": "json"}
    response = client.post("/glow/manipulate", files={"face": ("a.jpg", photo, "image/jpeg")}, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["frame_status"] == ["refused", "refused", "ok", "refused"]
    assert body["applied_strengths"] == [None, None, 0, None]
    assert calls == [5, 3, 3, 3], "the upload and its 4 frames, then the 3 failed ones at 0.75, 0.5 and 0.25"
    calls.clear()
    data = {"attribute": "Smiling", "strengths": "-1,0.5", "align": "none"}
    response = client.post("/glow/manipulate", files={"face": ("a.jpg", photo, "image/jpeg")}, data=data)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "every frame of a.jpg moved along Smiling failed" in detail and "try align=auto" in detail
    monkeypatch.setattr(model, "decode", lambda latents: decode(latents).fill_(float("nan")))
    files = {"face_a": ("a.jpg", photo, "image/jpeg"), "face_b": ("b.jpg", photo, "image/jpeg")}
    response = client.post("/glow/interpolate", files=files, data={"steps": "3"})
    assert response.status_code == 422 and "every frame diverged" in response.json()["detail"]


def test_a_non_finite_latent_or_reconstruction_is_a_422(client, photo, monkeypatch):
    model = glow_model(client)
    encode = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda images: encode(images) * float("inf"))
    response = client.post(
        "/glow/manipulate", files={"face": ("me.jpg", photo, "image/jpeg")}, data={"attribute": "Male"}
    )
    assert response.status_code == 422 and "latent of me.jpg is not finite" in response.json()["detail"]

    vae = client.app.state.store.pipelines["vae"].model
    monkeypatch.setattr(vae, "reconstruct", lambda images: torch.full_like(images, float("nan")))
    files = [("images", ("me.jpg", photo, "image/jpeg"))]
    response = client.post("/vae/reconstruct", files=files)
    assert response.status_code == 422 and "reconstruction of me.jpg is not finite" in response.json()["detail"]


def test_glow_pipeline_flags_only_unusable_frames(tiny_weights):
    from app.models.checkpoint import load_checkpoint
    from app.models.pipelines import build_pipeline

    pipeline = build_pipeline(load_checkpoint(tiny_weights / "glow.safetensors"))
    latents = torch.zeros(3, pipeline.latent_dim)
    images, unusable = pipeline.run("decode", (latents,))
    assert unusable.dtype == torch.bool and unusable.tolist() == [False, False, False]
    assert torch.isfinite(images).all() and images.abs().max() <= 1
