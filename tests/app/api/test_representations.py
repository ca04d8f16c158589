"""The API's shape for generated clients (app/api/representations.py), checked on the schema and the server without
a generator: JSON twins of the image routes, images declared binary, operation ids, declared defaults the server
accepts, and Accept: application/octet-stream."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.models.acgan import DEFAULT_TOGGLE_STRENGTH

# What openapi-python-client 0.29.1 recognises in a response's content (parser/responses.py): the first of these
# decides how it reads the body.
RECOGNISED = re.compile(r"^(application/json|application/[^/]+\+json|application/octet-stream|text/.+)$")
IMAGE_ROUTES = ["/generate/vae", "/generate/dcgan", "/generate/acgan", "/generate/infogan", "/generate/glow"]
IMAGE_ROUTES += ["/vae/reconstruct", "/glow/interpolate", "/glow/manipulate"]


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def ok_answer(document: dict[str, Any], path: str) -> dict[str, Any]:
    (operation,) = document["paths"][path].values()
    return operation["responses"]["200"]["content"]


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_operation_ids_are_the_route_names(document: dict[str, Any]) -> None:
    ids = {
        f"{method.upper()} {path}": operation["operationId"]
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert ids["POST /generate/acgan"] == "generate_acgan" and ids["POST /classify"] == "classify"
    assert ids["POST /generate/acgan/json"] == "generate_acgan_json" and ids["GET /models/{name}"] == "get_model"
    assert len(set(ids.values())) == len(ids), "operation ids must be unique"
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", value) for value in ids.values()), ids


@pytest.mark.parametrize("path", IMAGE_ROUTES)
def test_an_image_route_declares_binary_first_and_has_a_json_twin(document: dict[str, Any], path: str) -> None:
    content = ok_answer(document, path)
    types = list(content)
    assert types[0] == "image/png" and content["image/png"]["schema"] == {"type": "string", "format": "binary"}
    first = next(media for media in types if RECOGNISED.match(media))
    assert first == "application/octet-stream", f"a generated client would read {path}'s PNG as {first}"
    assert "$ref" in content["application/json"]["schema"], "format=json's answer is declared with its model"
    twin = ok_answer(document, path + "/json")
    assert list(twin) == ["application/json"] and "$ref" in twin["application/json"]["schema"]


def test_every_json_answer_declares_its_model(document: dict[str, Any]) -> None:
    """/glow/manipulate, /glow/interpolate and /ready declared none: a generated client parsed them to None."""
    bare = [
        f"{method} {path} {status}"
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        for status, response in operation["responses"].items()
        if not response.get("content", {}).get("application/json", {"schema": {"$ref": ""}}).get("schema")
    ]
    assert not bare, f"JSON answers without a schema: {bare}"


def test_every_declared_default_is_accepted(client: TestClient, document: dict[str, Any]) -> None:
    """A generated model sends every declared default; the server must take each JSON body's defaults, sent
    explicitly. ACGAN's strength (its default) was refused without toggle."""
    failures = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            media = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if media is None:
                continue
            properties = resolve(document, media["schema"])["properties"]
            body = {name: prop["default"] for name, prop in properties.items() if "default" in prop}
            body["n"] = 1 if "n" in body else None
            response = client.request(method, path, json={k: v for k, v in body.items() if v is not None})
            if response.status_code != 200:
                failures.append(f"{method} {path} {body}: {response.status_code} {response.text[:200]}")
    assert not failures, failures


def test_acgan_strength_is_not_a_declared_default_and_null_is_absent(client: TestClient, document) -> None:
    strength = document["components"]["schemas"]["ACGANRequest"]["properties"]["strength"]
    assert strength.get("default") is None
    assert client.post("/generate/acgan", json={"n": 1, "strength": None}).status_code == 200
    refused = client.post("/generate/acgan", json={"n": 1, "strength": 2})
    assert refused.status_code == 422 and "only to a toggled attribute" in refused.text
    body = client.post("/generate/acgan/json", json={"n": 1, "toggle": "Smiling"}).json()
    # the default still applies with a toggle
    assert body["strength"] == DEFAULT_TOGGLE_STRENGTH and len(body["images"]) == 2


def test_a_json_twin_answers_what_format_json_answers(client: TestClient) -> None:
    request = {"n": 2, "seed": 11}
    twin = client.post("/generate/dcgan/json", json=request)
    assert twin.status_code == 200 and twin.headers["content-type"] == "application/json"
    assert twin.json() == client.post("/generate/dcgan", json={**request, "format": "json"}).json()
    assert twin.headers["x-seed"] == "11"


def test_a_json_twin_refuses_format(client: TestClient) -> None:
    response = client.post("/generate/acgan/json", json={"n": 1, "format": "png"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "format"]


def test_an_upload_twin_answers_json(client: TestClient, face_bytes: list[bytes]) -> None:
    files = {"images": ("face.jpg", face_bytes[0], "image/jpeg")}
    response = client.post("/vae/reconstruct/json", files=files, data={"align": "none"})
    assert response.status_code == 200 and response.json()["images"][0]["filename"] == "face.jpg"
    extra = client.post("/vae/reconstruct/json", files=files, data={"align": "none", "format": "png"})
    assert extra.status_code == 200, "an unknown form field is ignored, as on every form route"
    assert extra.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "image/png"),
        ("*/*", "image/png"),
        ("application/octet-stream", "application/octet-stream"),
        ("application/octet-stream, image/png", "image/png"),
    ],
)
def test_accept_octet_stream_labels_the_image_so(client: TestClient, accept: str | None, expected: str) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.post("/generate/dcgan", json={"n": 1, "seed": 1}, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == expected
    assert response.content.startswith(b"\x89PNG")


def test_accept_octet_stream_leaves_json_alone(client: TestClient) -> None:
    response = client.post("/generate/dcgan/json", json={"n": 1}, headers={"Accept": "application/octet-stream"})
    assert response.headers["content-type"] == "application/json"
