"""The HTTP contract for the foundation endpoints, against the ASGI app with tiny checkpoints."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from app.api.uploads import MAX_UPLOADS
from tests.conftest import png_of, write_tiny_checkpoint


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and {"vae", "dcgan"} <= set(ready.json()["loaded"])


def test_ready_names_missing_required_families(make_client, tiny_weights):
    response = make_client(weights_dir=tiny_weights, required="vae,stylegan").get("/ready")
    assert response.status_code == 503 and response.json()["missing"] == ["stylegan"]


def test_ready_is_503_with_no_models(make_client, tmp_path):
    response = make_client(weights_dir=tmp_path).get("/ready")
    assert response.status_code == 503 and response.json()["detail"] == "no models are loaded"


def test_bad_checkpoint_is_reported_and_skipped(make_client, tmp_path):
    write_tiny_checkpoint(tmp_path, "vae")
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    client = make_client(weights_dir=tmp_path)
    body = client.get("/ready").json()
    assert body["loaded"] == ["vae"] and "not a readable safetensors file" in body["failed_files"]["broken.safetensors"]
    assert client.post("/generate/vae", json={"n": 1}).status_code == 200


def test_model_cards(client, tiny_weights):
    cards = client.get("/models").json()
    assert {card["family"] for card in cards} >= {"vae", "dcgan"}
    card = client.get("/models/vae").json()
    assert card["config"]["latent_dim"] == 6 and card["device"] == "cpu" and len(card["sha256"]) == 64
    assert card["preprocess"]["crop_fraction"] == 0.8 and card["parameters"] > 0
    assert client.get("/models/nothing").status_code == 404


@pytest.mark.parametrize("family", ["vae", "dcgan"])
def test_generate_png_grid(client, family):
    response = client.post(f"/generate/{family}", json={"n": 10, "seed": 3})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "3"
    # 16x16 images, 8 per row, 2-px gutters: 2 rows.
    assert open_png(response.content).size == (8 * 18 + 2, 2 * 18 + 2)


@pytest.mark.parametrize("family", ["vae", "dcgan"])
def test_generate_json_and_determinism(client, family):
    first = client.post(f"/generate/{family}", json={"n": 3, "seed": 11, "format": "json"}).json()
    second = client.post(f"/generate/{family}", json={"n": 3, "seed": 11, "format": "json"}).json()
    other = client.post(f"/generate/{family}", json={"n": 3, "seed": 12, "format": "json"}).json()
    assert first == second and first["seed"] == 11 and first["model"] == family
    assert first["images"] != other["images"]
    assert len(set(first["images"])) == 3, "a batch holds different faces"
    assert open_png(base64.b64decode(first["images"][0])).size == (16, 16)
    png_a = client.post(f"/generate/{family}", json={"n": 2, "seed": 5}).content
    assert png_a == client.post(f"/generate/{family}", json={"n": 2, "seed": 5}).content


def test_seed_is_random_when_omitted_and_reported(client):
    seeds = {client.post("/generate/dcgan", json={"n": 1}).headers["x-seed"] for _ in range(3)}
    assert len(seeds) == 3 and all(seed.isdigit() for seed in seeds)
    body = client.post("/generate/dcgan", json={"n": 1, "format": "json"}).json()
    assert isinstance(body["seed"], int)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"n": 0}, "greater than or equal to 1"),
        ({"n": 65}, "n must be between 1 and 64, got 65"),
        ({"n": "3"}, "valid integer"),
        ({"n": 2.5}, "valid integer"),
        ({"n": 2, "seed": -1}, "greater than or equal to 0"),
        ({"n": 2, "format": "bmp"}, "'png' or 'json'"),
        ({"n": 2, "colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_generate_validation_errors(client, body, message):
    response = client.post("/generate/vae", json=body)
    assert response.status_code == 422 and message in json.dumps(response.json())


def test_generate_rejects_malformed_json(client):
    response = client.post("/generate/vae", content=b"{n: 3", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON decode error" in response.text


def test_max_n_setting(make_client, tiny_weights):
    client = make_client(weights_dir=tiny_weights, max_n=4)
    assert client.post("/generate/dcgan", json={"n": 4}).status_code == 200
    assert "between 1 and 4" in client.post("/generate/dcgan", json={"n": 5}).text


def test_unknown_family_is_404(client):
    response = client.post("/generate/stylegan", json={"n": 1})
    assert response.status_code == 404 and "unknown family 'stylegan'" in response.json()["detail"]


def test_reconstruct_png_and_json(client, face_bytes):
    files = [("images", (f"face{i}.jpg", data, "image/jpeg")) for i, data in enumerate(face_bytes)]
    response = client.post("/vae/reconstruct", files=files)
    assert response.status_code == 200
    count = len(face_bytes)
    assert open_png(response.content).size == (count * 18 + 2, 2 * 18 + 2)  # originals row over reconstructions
    body = client.post("/vae/reconstruct", files=files, data={"format": "json"}).json()
    assert [item["filename"] for item in body["images"]] == [f"face{i}.jpg" for i in range(count)]
    errors = [item["mse"] for item in body["images"]]
    assert all(0 <= error <= 4 for error in errors) and body["mean_mse"] == pytest.approx(sum(errors) / count)
    assert open_png(base64.b64decode(body["images"][0]["reconstruction"])).size == (16, 16)


def test_reconstruct_accepts_png_and_webp_of_any_size(client):
    webp = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(webp, format="WEBP")
    files = [("images", ("a.png", png_of((7, 9)), "image/png")), ("images", ("b.webp", webp.getvalue(), "image/webp"))]
    # Plain colours, not faces: align=none takes them as already aligned (align=auto would find no face, 422).
    assert client.post("/vae/reconstruct", files=files, data={"format": "json", "align": "none"}).status_code == 200


def test_reconstruct_errors(client, face_bytes):
    assert client.post("/vae/reconstruct", data={"format": "json"}).status_code == 422  # no images field
    too_many = [("images", (f"{i}.jpg", face_bytes[0], "image/jpeg")) for i in range(33)]
    response = client.post("/vae/reconstruct", files=too_many)
    assert response.status_code == 422 and "between 1 and 32, got 33" in response.text
    response = client.post("/vae/reconstruct", files=[("images", ("notes.txt", b"hello there", "text/plain"))])
    assert response.status_code == 415 and "notes.txt: not an image" in response.json()["detail"]
    truncated = face_bytes[0][: len(face_bytes[0]) // 2]
    response = client.post("/vae/reconstruct", files=[("images", ("cut.jpg", truncated, "image/jpeg"))])
    assert response.status_code == 400 and "cut.jpg: image data is truncated" in response.json()["detail"]
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    assert (
        client.post("/vae/reconstruct", files=[("images", ("a.gif", gif.getvalue(), "image/gif"))]).status_code == 415
    )
    response = client.post("/vae/reconstruct", files=[("images", ("e.png", b"", "image/png"))])
    assert response.status_code == 400 and "empty file" in response.text
    response = client.post(
        "/vae/reconstruct", files=[("images", ("a.jpg", face_bytes[0], "image/jpeg"))], data={"format": "gif"}
    )
    assert response.status_code == 422


def test_decompression_bomb_is_refused(make_client, tiny_weights):
    client = make_client(weights_dir=tiny_weights, max_image_pixels=100 * 100)
    # A 1000x1000 PNG of one colour compresses to a few KB but would decode to 3 MB.
    response = client.post("/vae/reconstruct", files=[("images", ("bomb.png", png_of((1000, 1000)), "image/png"))])
    assert response.status_code == 413 and "1000x1000 pixels" in response.json()["detail"]


def test_upload_cap_413_from_content_length(make_client, tiny_weights):
    client = make_client(weights_dir=tiny_weights, max_upload_mb=0.01)
    response = client.post("/vae/reconstruct", files=[("images", ("big.png", b"x" * 20_000, "image/png"))])
    assert response.status_code == 413 and "larger than the 0.01 MiB allowed" in response.json()["detail"]


def test_upload_cap_413_for_chunked_bodies(make_client, tiny_weights):
    client = make_client(weights_dir=tiny_weights, max_upload_mb=0.01)

    def chunks():
        for _ in range(10):
            yield b"y" * 4096

    response = client.post("/generate/vae", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert client.get("/health").status_code == 200, "the server survives"


def test_api_key_guards_everything_but_health(make_client, tiny_weights):
    client = make_client(weights_dir=tiny_weights, api_key="s3cret-key")
    assert client.get("/health").status_code == 200
    assert client.get("/models").status_code == 401
    response = client.post("/generate/vae", json={"n": 1}, headers={"X-API-Key": "wrong-key!"})
    assert response.status_code == 401 and "X-API-Key" in response.json()["detail"]
    assert client.post("/generate/vae", json={"n": 1}, headers={"X-API-Key": "s3cret-key"}).status_code == 200


def test_api_key_may_come_as_a_bearer_token(make_client, tiny_weights):
    """What a Prometheus scrape job sends (its `authorization` setting): /metrics, like every guarded route."""
    client = make_client(weights_dir=tiny_weights, api_key="s3cret-key")
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "bearer s3cret-key"}).status_code == 200
    for wrong in ("Bearer wrong-key!", "Basic s3cret-key", "s3cret-key", "Bearer"):
        assert client.get("/metrics", headers={"Authorization": wrong}).status_code == 401, wrong
    assert client.get("/metrics").status_code == 401
    # X-API-Key, when sent, decides: a wrong one is not rescued by a right bearer token
    both = {"X-API-Key": "wrong-key!", "Authorization": "Bearer s3cret-key"}
    assert client.get("/models", headers=both).status_code == 401


def test_metrics_count_requests(client):
    client.post("/generate/vae", json={"n": 1})
    client.post("/generate/vae", json={"n": 999})
    text = client.get("/metrics").text
    assert 'facegen_requests_total{method="POST",route="/generate/vae",status="2xx"}' in text
    assert 'facegen_requests_total{method="POST",route="/generate/vae",status="4xx"}' in text


def test_settings_refuse_unsafe_values():
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="device must be"):
        Settings(device="tpu")
    with pytest.raises(ValidationError):
        Settings(max_n=0)
    with pytest.raises(ValidationError):
        Settings(api_key="short")
    assert Settings(required="vae, dcgan").required == ["vae", "dcgan"]


def test_settings_from_environment(monkeypatch):
    from app.settings import Settings

    monkeypatch.setenv("FACEGEN_MAX_N", "8")
    monkeypatch.setenv("FACEGEN_REQUIRED", "vae,dcgan")
    monkeypatch.setenv("FACEGEN_WEIGHTS_DIR", "/srv/weights")
    settings = Settings()
    assert settings.max_n == 8 and settings.required == ["vae", "dcgan"] and str(settings.weights_dir) == "/srv/weights"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate/glow", b'{"n": 1, "temperature": NaN}', "temperature"),
        ("/generate/dcgan", b'{"n": NaN}', "n"),
        ("/generate/acgan", b'{"n": 1, "toggle": "Smiling", "strength": Infinity}', "strength"),
        ("/generate/vae", b'{"n": 1, "seed": -Infinity}', "seed"),
    ],
)
def test_non_finite_json_literals_are_a_422_naming_the_field(client, path, body, field):
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(error["loc"][-1] == field for error in errors), errors


@pytest.mark.parametrize("path", ["/classify", "/vae/reconstruct", "/glow/likelihood"])
def test_every_route_taking_a_list_of_uploads_states_and_enforces_one_cap(client, face_bytes, path):
    schema = client.get("/openapi.json").json()
    reference = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    images = schema["components"]["schemas"][reference.rsplit("/", 1)[1]]["properties"]["images"]
    assert images["maxItems"] == MAX_UPLOADS and images["description"].startswith(f"1 to {MAX_UPLOADS} ")
    too_many = [("images", (f"{i}.jpg", face_bytes[0], "image/jpeg")) for i in range(MAX_UPLOADS + 1)]
    response = client.post(path, files=too_many, data={"align": "none"})
    assert response.status_code == 422
    assert f"images must be between 1 and {MAX_UPLOADS}, got {MAX_UPLOADS + 1}" in response.text
