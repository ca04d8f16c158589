"""The bad-input corpus: every kind of bad request the service was probed with gets its own 4xx, and the body names
the problem. One row per kind: (kind, request, status, text the answer must contain)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

FACE = sorted((Path(__file__).parents[1] / "data" / "faces").glob("*.jpg"))[0].read_bytes()


def image_bytes(fmt: str, size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 60, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat_data = zlib.compress(b"\x00" * 64)
    idat = struct.pack(">I", len(idat_data)) + b"IDAT" + idat_data + struct.pack(">I", zlib.crc32(b"IDAT" + idat_data))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat


def corrupt_png() -> bytes:
    data = bytearray(image_bytes("PNG", (64, 64)))
    data[60:80] = b"\xff" * 20  # inside the IDAT stream
    return bytes(data)


@dataclass
class Case:
    kind: str
    path: str
    status: int
    says: str
    method: str = "POST"
    json: object = None
    content: bytes | None = None
    headers: dict | list = field(default_factory=dict)
    files: list | None = None
    data: dict | None = None
    settings: dict = field(default_factory=dict)


def raw(body: bytes | str, **headers) -> dict:
    return {
        "content": body.encode() if isinstance(body, str) else body,
        "headers": {"content-type": "application/json", **headers},
    }


def upload(data: bytes, name: str = "x.jpg", field_name: str = "images", **form) -> dict:
    return {"files": [(field_name, (name, data, "application/octet-stream"))], "data": form or None}


def face(**form) -> dict:
    return upload(FACE, "face.jpg", "face", **form)


CASES = [
    # ---- JSON bodies ---------------------------------------------------------------------------------------------
    Case("nan literal", "/generate/glow", 422, "temperature", **raw('{"n": 1, "temperature": NaN}')),
    Case("infinity literal", "/generate/dcgan", 422, "seed", **raw('{"n": 1, "seed": Infinity}')),
    Case("malformed json", "/generate/vae", 422, "JSON decode error", **raw("{n: 3")),
    Case("invalid utf-8", "/generate/vae", 400, "not valid UTF-8", **raw(b'{"n": "\xff\xfe"}')),
    Case("deeply nested json", "/generate/vae", 400, "nested too deeply", **raw("[" * 10_000 + "]" * 10_000)),
    Case(
        "gzip body",
        "/generate/vae",
        415,
        "Content-Encoding 'gzip'",
        **raw(gzip.compress(b'{"n": 1}'), **{"content-encoding": "gzip"}),
    ),
    Case("duplicate keys", "/generate/dcgan", 422, "'n' appears twice", **raw('{"n": 1, "n": 64}')),
    Case("json array body", "/generate/vae", 422, "valid dictionary", json=[1, 2]),
    Case(
        "wrong content type",
        "/generate/vae",
        415,
        "Content-Type: application/json (Content-Type 'text/plain')",
        **raw('{"n": 1}', **{"content-type": "text/plain"}),
    ),
    Case("json without content type", "/generate/dcgan", 415, "(no Content-Type)", content=b'{"n": 1}'),
    Case("json to an upload route", "/classify", 415, "Content-Type: multipart/form-data", json={"n": 1}),
    Case("utf-16 json", "/generate/dcgan", 400, "UTF-16, not UTF-8", **raw('{"n": 1}'.encode("utf-16"))),
    Case("utf-32 json", "/generate/vae", 400, "UTF-32", **raw('{"n": 1}'.encode("utf-32"))),
    Case("long string echoed", "/generate/vae", 422, "(100000 characters)", json={"n": "x" * 100_000}),
    Case("empty body", "/generate/vae", 422, "Field required", **raw(b"")),
    Case("string for int", "/generate/vae", 422, "valid integer", json={"n": "3"}),
    Case("fraction for int", "/generate/vae", 422, "valid integer", json={"n": 2.5}),
    Case("bool for int", "/generate/dcgan", 422, "valid integer", json={"n": True}),
    Case("n zero", "/generate/vae", 422, "greater than or equal to 1", json={"n": 0}),
    Case("n over max", "/generate/dcgan", 422, "n must be between 1 and 64", json={"n": 65}),
    Case("negative seed", "/generate/vae", 422, "greater than or equal to 0", json={"seed": -1}),
    Case("seed past 2**63", "/generate/vae", 422, "less than 9223372036854775808", json={"seed": 2**63}),
    Case("unknown field", "/generate/vae", 422, "Extra inputs are not permitted", json={"n": 1, "colour": "red"}),
    Case("bad format", "/generate/vae", 422, "'png' or 'json'", json={"format": "bmp"}),
    Case(
        "unknown attribute",
        "/generate/acgan",
        422,
        "unknown or untrained attribute(s) ['Wings']",
        json={"attributes": {"Wings": True}},
    ),
    Case("attribute not a bool", "/generate/acgan", 422, "valid boolean", json={"attributes": {"Smiling": "yes"}}),
    Case("unknown toggle", "/generate/acgan", 422, "Wings", json={"toggle": "Wings"}),
    Case(
        "strength without toggle",
        "/generate/acgan",
        422,
        "strength applies only to a toggled attribute",
        json={"strength": 2},
    ),
    Case(
        "strength out of range",
        "/generate/acgan",
        422,
        "less than or equal to 3",
        json={"toggle": "Smiling", "strength": 4},
    ),
    Case(
        "toggle pairs over max",
        "/generate/acgan",
        422,
        "n must be between 1 and 32",
        json={"n": 33, "toggle": "Smiling"},
    ),
    Case("temperature out of range", "/generate/glow", 422, "less than or equal to 1.5", json={"temperature": 2}),
    Case("code out of range", "/generate/infogan", 422, "code must be between 0 and 2", json={"code": 7}),
    Case("rows zero", "/generate/infogan", 422, "greater than or equal to 1", json={"rows": 0}),
    Case(
        "oversized body",
        "/generate/vae",
        413,
        "larger than the 0.01 MiB",
        **raw(b" " * 20_000),
        settings={"max_upload_mb": 0.01},
    ),
    Case(
        "chunked oversized body",
        "/generate/vae",
        413,
        "larger than the 0.01 MiB",
        content=(b"y" * 4096 for _ in range(10)),  # no Content-Length: counted as it arrives
        headers={"content-type": "application/json"},
        settings={"max_upload_mb": 0.01},
    ),
    Case(
        "image over the pixel limit",
        "/classify",
        413,
        "200x200 pixels is more than the 10000 allowed",
        **upload(image_bytes("PNG", (200, 200)), "big.png"),
        settings={"max_image_pixels": 100 * 100},
    ),
    Case("bad content-length", "/generate/vae", 400, "is not a number", **raw(b"{}", **{"content-length": "ten"})),
    # ---- names, paths and methods --------------------------------------------------------------------------------
    Case("unknown family", "/generate/stylegan", 404, "unknown family 'stylegan'", json={"n": 1}),
    Case("unknown model card", "/models/nothing", 404, "no model named 'nothing'", method="GET"),
    Case("unknown path", "/nowhere", 404, "Not Found", method="GET"),
    Case("wrong method", "/generate/vae", 405, "Method Not Allowed", method="GET"),
    Case("made-up method", "/health", 405, "Method Not Allowed", method="BREW"),
    Case("missing api key", "/models", 401, "X-API-Key", method="GET", settings={"api_key": "s3cret-key"}),
    Case(
        "duplicated api key",
        "/models",
        400,
        "X-API-Key given 2 times",
        method="GET",
        headers=[("x-api-key", "s3cret-key"), ("x-api-key", "s3cret-key")],
        settings={"api_key": "s3cret-key"},
    ),
    Case(  # no redirect to a Location built from the Host header
        "trailing slash",
        "/generate/dcgan/",
        404,
        "Not Found",
        json={"n": 1},
        headers={"host": "evil.test"},
    ),
    Case(
        "refused cors preflight",
        "/generate/vae",
        400,
        "CORS preflight refused: origin not allowed",
        method="OPTIONS",
        headers={"origin": "http://evil.test", "access-control-request-method": "POST"},
        settings={"cors_origins": ["http://ok.test"]},
    ),
    # ---- uploads -------------------------------------------------------------------------------------------------
    Case("missing upload", "/vae/reconstruct", 422, "Field required", data={"format": "json"}),
    Case(
        "too many uploads",
        "/classify",
        422,
        "between 1 and 32, got 33",
        files=[("images", (f"{i}.jpg", FACE, "image/jpeg")) for i in range(33)],
    ),
    Case("text as image", "/classify", 415, "notes.txt: not an image", **upload(b"hello there", "notes.txt")),
    Case(
        "unsupported format gif",
        "/classify",
        415,
        "a.gif: not an image in an accepted format",
        **upload(image_bytes("GIF"), "a.gif"),
    ),
    Case(
        "unsupported format bmp", "/vae/reconstruct", 415, "a.bmp: not an image", **upload(image_bytes("BMP"), "a.bmp")
    ),
    Case(
        "truncated jpeg",
        "/classify",
        400,
        "cut.jpg: image data is truncated",
        **upload(FACE[: len(FACE) // 2], "cut.jpg"),
    ),
    Case(
        "corrupt png",
        "/glow/likelihood",
        400,
        "bad.png: image data is truncated or corrupt",
        **upload(corrupt_png(), "bad.png"),
    ),
    Case("empty file", "/classify", 400, "e.png: empty file", **upload(b"", "e.png")),
    Case(
        "decompression bomb",
        "/vae/reconstruct",
        413,
        "decompression bomb",
        **upload(png_claiming(60000, 60000), "bomb.png"),
    ),
    Case(
        "pixel budget",
        "/classify",
        413,
        "FACEGEN_MAX_REQUEST_PIXELS",
        files=[("images", (f"{i}.png", image_bytes("PNG", (300, 300)), "image/png")) for i in range(3)],
        settings={"max_request_pixels": 200_000},
    ),
    Case("upload as plain field", "/classify", 422, "images", data={"images": "not a file"}),
    Case(
        "malformed multipart",
        "/classify",
        400,
        "multipart",
        content=b"--x\r\nnonsense",
        headers={"content-type": "multipart/form-data"},  # no boundary
    ),
    Case("bad form format", "/vae/reconstruct", 422, "'png' or 'json'", **upload(FACE, format="bmp")),
    Case(
        "multipart without closing boundary",
        "/classify",
        400,
        "ends without its closing boundary (--xx--)",
        content=b'--xx\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n' + FACE,
        headers={"content-type": "multipart/form-data; boundary=xx"},
    ),
    Case("repeated form field", "/classify", 422, "'align' appears 2 times", **upload(FACE, align=["none", "auto"])),
    Case(
        "repeated file field",
        "/glow/manipulate",
        422,
        "'face' appears 2 times",
        files=[("face", ("a.jpg", FACE, "image/jpeg")), ("face", ("b.jpg", FACE, "image/jpeg"))],
        data={"attribute": "Smiling"},
    ),
    Case(
        "file part without filename",
        "/classify",
        422,
        "this part has no filename",
        files=[("images", (None, b"x" * 200_000, "image/jpeg"))],
    ),
    Case("arabic digit strength", "/glow/manipulate", 422, "ASCII digits", **face(attribute="Smiling", strengths="١")),
    Case("underscore strength", "/glow/manipulate", 422, "ASCII digits", **face(attribute="Smiling", strengths="0_5")),
    Case("underscore steps", "/glow/manipulate", 422, "plain integer", **face(attribute="Smiling", steps="1_0")),
    Case("arabic digit steps", "/glow/manipulate", 422, "plain integer", **face(attribute="Smiling", steps="١٠")),
    Case("underscore number", "/glow/manipulate", 422, "plain number", **face(attribute="Smiling", max_strength="0_5")),
    Case("empty strengths", "/glow/manipulate", 422, "strengths is empty", **face(attribute="Smiling", strengths="")),
    Case("empty steps", "/glow/manipulate", 422, "steps is empty", **face(attribute="Smiling", steps="")),
    Case("malformed strengths", "/glow/manipulate", 422, "strengths", **face(attribute="Smiling", strengths="a,b")),
    Case("strength over cap", "/glow/manipulate", 422, "strengths", **face(attribute="Smiling", strengths="1,9")),
    Case(
        "strengths and steps",
        "/glow/manipulate",
        422,
        "either strengths or steps",
        **face(attribute="Smiling", strengths="1", steps="3"),
    ),
    Case("unknown manipulate attribute", "/glow/manipulate", 422, "Wings", **face(attribute="Wings")),
    Case(
        "interpolate one step",
        "/glow/interpolate",
        422,
        "greater than or equal to 2",
        files=[("face_a", ("a.jpg", FACE, "image/jpeg")), ("face_b", ("b.jpg", FACE, "image/jpeg"))],
        data={"steps": "1"},
    ),
    Case(
        "interpolate bad method",
        "/glow/interpolate",
        422,
        "'linear' or 'slerp'",
        files=[("face_a", ("a.jpg", FACE, "image/jpeg")), ("face_b", ("b.jpg", FACE, "image/jpeg"))],
        data={"method": "cubic"},
    ),
]


def test_the_corpus_is_at_least_40_kinds():
    kinds = [case.kind for case in CASES]
    assert len(set(kinds)) == len(kinds) >= 40


@pytest.fixture(scope="module")
def clients(tiny_weights):
    """One app per distinct settings, shared by the module's cases."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    built: dict[str, TestClient] = {}

    def get(settings: dict) -> TestClient:
        key = json.dumps(settings, sort_keys=True)
        if key not in built:
            client = TestClient(create_app(Settings(weights_dir=tiny_weights, device="cpu", **settings)))
            client.__enter__()
            built[key] = client
        return built[key]

    yield get
    for client in built.values():
        client.__exit__(None, None, None)


@pytest.mark.parametrize("case", CASES, ids=[case.kind for case in CASES])
def test_bad_input_is_a_4xx_naming_the_problem(clients, case):
    client = clients(case.settings)
    kwargs = {"headers": case.headers} if case.headers else {}
    if case.json is not None:
        kwargs["json"] = case.json
    if case.content is not None:
        kwargs["content"] = case.content
    if case.files is not None:
        kwargs["files"] = case.files
    if case.data is not None:
        kwargs["data"] = case.data
    response = client.request(case.method, case.path, **kwargs)
    assert response.status_code == case.status, response.text[:500]
    assert case.says in response.text, response.text[:500]
    assert response.headers["content-type"] == "application/json", "every refusal is JSON"
    assert response.json()["detail"], "the body says what is wrong"
    assert len(response.content) < 4096, "nothing large is echoed back"
    assert "location" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in response.headers
    assert client.get("/health").status_code == 200, "the server survives"


def test_a_field_the_route_does_not_take_is_ignored_even_repeated(clients):
    """Only the route's own fields are refused when repeated: the schema allows other form fields and the server
    ignores them, so their repeats make nothing ambiguous (a fuzzed, schema-valid request sent one twice)."""
    client = clients({})
    files = [("images", ("face.jpg", FACE, "image/jpeg"))]
    response = client.post("/classify", files=files, data={"align": "none", "note": ["a", "b"]})
    assert response.status_code == 200, response.text[:500]
    refused = client.post("/classify", files=files, data={"align": ["none", "auto"], "note": ["a", "b"]})
    assert refused.status_code == 422 and "'align' appears 2 times" in refused.text
    assert "note" not in refused.text
