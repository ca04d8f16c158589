"""Glow's routes: conditional samples, interpolation, manipulation, likelihood, and their refusals."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from app.models.attributes import LABEL_VECTORS_KEY, pack_label_vectors
from tests.conftest import ATTRIBUTE_NAMES, png_of, write_tiny_checkpoint
from tests.families.attributes import MEN_ONLY, make_up_labels
from tests.families.glow import tiny_glow_pipeline, write_served_tiny_glow

torch.set_num_threads(1)


# ---- the service -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glow_weights(tmp_path_factory):
    """A perturbed tiny Glow (so its outputs are not trivial) with directions and frequencies, stored as float32."""
    directory = tmp_path_factory.mktemp("glow-weights")
    write_served_tiny_glow(directory)
    return directory


@pytest.fixture
def glow_client(make_client, glow_weights):
    return make_client(weights_dir=glow_weights, device="cpu")


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def files_ab(face_bytes):
    return {"face_a": ("a.jpg", face_bytes[0], "image/jpeg"), "face_b": ("b.jpg", face_bytes[1], "image/jpeg")}


def test_generate_png_json_seeded_and_attributes_reported(glow_client):
    response = glow_client.post("/generate/glow", json={"n": 10, "seed": 3, "attributes": {"Smiling": True}})
    assert response.status_code == 200 and response.headers["x-seed"] == "3"
    assert png_size(response.content) == (8 * 18 + 2, 2 * 18 + 2)
    header = json.loads(response.headers["x-attributes"])
    smiling = header["names"].index("Smiling")
    assert len(header["rows"]) == 10 and all(row[smiling] == "1" for row in header["rows"])
    again = glow_client.post("/generate/glow", json={"n": 10, "seed": 3, "attributes": {"Smiling": True}})
    assert again.content == response.content

    body = glow_client.post(
        "/generate/glow", json={"n": 3, "seed": 9, "temperature": 1.0, "format": "json", "attributes": {"Male": False}}
    ).json()
    assert body["model"] == "glow" and body["seed"] == 9 and body["temperature"] == 1.0 and len(body["images"]) == 3
    assert len(body["attributes"]) == 3 and all(
        vector["Male"] is False and len(vector) == 40 for vector in body["attributes"]
    )
    cold = glow_client.post(
        "/generate/glow", json={"n": 3, "seed": 9, "temperature": 0, "format": "json", "attributes": {"Male": False}}
    ).json()
    assert cold["images"] != body["images"]


@pytest.mark.parametrize(
    "payload, needle",
    [
        ({"temperature": 1.6}, "less than or equal to 1.5"),
        ({"temperature": -0.1}, "greater than or equal to 0"),
        ({"attributes": {"Smiling": True, "Wings": True}}, "Wings"),
        ({"n": 0}, "greater than or equal to 1"),
        ({"n": 65}, "between 1 and 64"),
        ({"colour": "red"}, "Extra inputs"),
        ({"temperature": "hot"}, "float"),
    ],
)
def test_generate_validation(glow_client, payload, needle):
    response = glow_client.post("/generate/glow", json=payload)
    assert response.status_code == 422 and needle in json.dumps(response.json())
    if "Wings" in payload.get("attributes", {}):
        assert "valid" in json.dumps(response.json()) and "Smiling" in json.dumps(response.json())


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_formats_and_endpoints(glow_client, face_bytes, method):
    strip = glow_client.post("/glow/interpolate", files=files_ab(face_bytes), data={"steps": "5", "method": method})
    assert strip.status_code == 200 and png_size(strip.content) == (5 * 18 + 2, 18 + 2)
    gif = glow_client.post("/glow/interpolate", files=files_ab(face_bytes), data={"format": "gif", "method": method})
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    assert Image.open(io.BytesIO(gif.content)).n_frames >= 2
    body = glow_client.post(
        "/glow/interpolate", files=files_ab(face_bytes), data={"format": "json", "method": method}
    ).json()
    assert body["method"] == method and len(body["frames"]) == 8
    # The end frames are the reconstructions of a and b: the same as strength 0 of a manipulation of each.
    for index, face in ((0, face_bytes[0]), (-1, face_bytes[1])):
        manipulated = glow_client.post(
            "/glow/manipulate",
            files={"face": ("f.jpg", face, "image/jpeg")},
            data={"attribute": "Smiling", "strengths": "0", "format": "json"},
        ).json()
        assert body["frames"][index] == manipulated["images"][0]
        # ...and an 8-bit Glow reconstructs the preprocessed upload exactly.
        assert manipulated["original"] == manipulated["images"][0]


def test_manipulate_strengths_steps_and_formats(glow_client, face_bytes):
    files = {"face": ("f.jpg", face_bytes[2], "image/jpeg")}
    body = glow_client.post(
        "/glow/manipulate",
        files=files,
        data={"attribute": "Smiling", "strengths": "-1, -0.5,0,0.5,1", "format": "json"},
    ).json()
    assert body["attribute"] == "Smiling" and body["strengths"] == [-1, -0.5, 0, 0.5, 1]
    assert len(set(body["images"])) == 5 and body["images"][2] == body["original"]
    stepped = glow_client.post(
        "/glow/manipulate", files=files, data={"attribute": "Smiling", "steps": "3", "max_strength": "2"}
    )
    assert stepped.status_code == 200 and stepped.headers["x-strengths"] == "-2,0,2"
    assert png_size(stepped.content) == (3 * 18 + 2, 18 + 2)
    default = glow_client.post("/glow/manipulate", files=files, data={"attribute": "Male", "format": "gif"})
    assert default.status_code == 200 and default.headers["x-strengths"] == "-1,-0.5,0,0.5,1"


def test_likelihood(glow_client, face_bytes):
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(face_bytes[:3])]
    files.append(("images", ("flat.png", png_of((40, 50)), "image/png")))
    # align=none: the flat image is no face (align=auto would answer 422), and its likelihood is part of the test.
    body = glow_client.post("/glow/likelihood", files=files, data={"align": "none"}).json()
    assert body["model"] == "glow" and [image["filename"] for image in body["images"]] == [
        "0.jpg",
        "1.jpg",
        "2.jpg",
        "flat.png",
    ]
    assert all(0 < image["bits_per_dim"] < 100 for image in body["images"])
    again = glow_client.post("/glow/likelihood", files=files[:1], data={"align": "none"}).json()
    assert again["images"][0] == body["images"][0], "deterministic, and independent of the batch"


def test_upload_validation_errors(glow_client, face_bytes):
    face = ("f.jpg", face_bytes[0], "image/jpeg")
    text = ("notes.txt", b"this is not an image", "text/plain")
    cases = [
        ("/glow/interpolate", {"face_a": face}, {}, 422, "face_b"),
        ("/glow/interpolate", {"face_a": face, "face_b": text}, {}, 415, "notes.txt"),
        ("/glow/interpolate", files_ab(face_bytes), {"steps": "1"}, 422, "greater than or equal to 2"),
        ("/glow/interpolate", files_ab(face_bytes), {"steps": "33"}, 422, "less than or equal to 32"),
        ("/glow/interpolate", files_ab(face_bytes), {"method": "cubic"}, 422, "slerp"),
        ("/glow/interpolate", files_ab(face_bytes), {"format": "bmp"}, 422, "gif"),
        ("/glow/manipulate", {}, {"attribute": "Smiling"}, 422, "face"),
        ("/glow/manipulate", {"face": face}, {}, 422, "attribute"),
        ("/glow/manipulate", {"face": text}, {"attribute": "Smiling"}, 415, "notes.txt"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Wings"}, 422, "Wings"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "1,two"}, 422, "comma-separated"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "1,,2"}, 422, "comma-separated"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "nan"}, 422, "between"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "9"}, 422, "between"),
        (
            "/glow/manipulate",
            {"face": face},
            {"attribute": "Smiling", "strengths": ",".join(["0.1"] * 33)},
            422,
            "between 1 and 32",
        ),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "strengths": "1", "steps": "3"}, 422, "not both"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "steps": "40"}, 422, "less than or equal to 32"),
        ("/glow/manipulate", {"face": face}, {"attribute": "Smiling", "max_strength": "0"}, 422, "greater than 0"),
        ("/glow/likelihood", {}, {}, 422, "images"),
        ("/glow/likelihood", {"images": text}, {}, 415, "notes.txt"),
    ]
    for path, files, data, status, needle in cases:
        response = glow_client.post(path, files=files, data=data)
        assert response.status_code == status and needle in json.dumps(response.json()), (path, data, response.text)
    unknown = glow_client.post("/glow/manipulate", files={"face": face}, data={"attribute": "Wings"}).json()
    assert "valid" in json.dumps(unknown) and "Smiling" in json.dumps(unknown)
    many = [("images", (f"{i}.png", png_of((8, 8)), "image/png")) for i in range(33)]
    assert glow_client.post("/glow/likelihood", files=many).status_code == 422


def test_checkpoint_without_directions_is_503_for_manipulation(make_client, tmp_path, face_bytes):
    write_tiny_checkpoint(tmp_path, "glow")  # no extras: no directions, uniform attribute draws
    client = make_client(weights_dir=tmp_path, device="cpu")
    assert client.post("/generate/glow", json={"n": 2, "seed": 1}).status_code == 200
    response = client.post(
        "/glow/manipulate", files={"face": ("f.jpg", face_bytes[0], "image/jpeg")}, data={"attribute": "Smiling"}
    )
    assert response.status_code == 503 and "attribute directions" in response.json()["detail"]


def test_frames_report_their_status_and_refused_frames_are_grey_tiles(make_client, glow_weights, tmp_path, face_bytes):
    """With artefact limits far below the tiny random flow's own noise, edits that add any colour noise are refused
    one by one; the request still answers 200 with the rest, and says which frames were refused and at what
    strength the others were served."""
    from app.models.artefacts import ARTEFACT_LIMITS_KEY
    from app.models.checkpoint import amend_checkpoint

    (tmp_path / "glow.safetensors").write_bytes((glow_weights / "glow.safetensors").read_bytes())
    amend_checkpoint(tmp_path / "glow.safetensors", extras={ARTEFACT_LIMITS_KEY: torch.tensor([0.01, 0.001])})
    client = make_client(weights_dir=tmp_path, device="cpu")
    files = {"face": ("f.jpg", face_bytes[2], "image/jpeg")}
    data = {"attribute": "Smiling", "strengths": "-1,0,1,2"}
    body = client.post("/glow/manipulate", files=files, data={**data, "format": "json"}).json()
    assert body["strengths"] == [-1, 0, 1, 2] and body["frame_status"][1] == "ok" and body["applied_strengths"][1] == 0
    assert "refused" in body["frame_status"], "the tiny flow's edits all add colour noise"
    for status, applied, requested, image in zip(
        body["frame_status"], body["applied_strengths"], body["strengths"], body["images"]
    ):
        pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(image)))))
        assert (status == "refused") == (applied is None) == bool((pixels == 127).all() or (pixels == 128).all())
        assert status != "reduced" or abs(applied) < abs(requested)
    strip = client.post("/glow/manipulate", files=files, data=data)
    assert strip.status_code == 200 and strip.headers["x-frame-status"] == ",".join(body["frame_status"])
    refused = [str(i + 1) for i, status in enumerate(body["frame_status"]) if status == "refused"]
    assert strip.headers["x-refused-frames"] == ",".join(refused)
    assert strip.headers["x-applied-strengths"].split(",")[1] == "0"
    everything_refused = client.post(
        "/glow/manipulate", files=files, data={"attribute": "Smiling", "strengths": "2", "format": "json"}
    )
    assert everything_refused.status_code == (422 if body["frame_status"][3] == "refused" else 200)
    assert everything_refused.status_code == 200 or "every frame" in everything_refused.json()["detail"]


def test_frame_status_without_artefact_limits(glow_client, face_bytes):
    files = {"face": ("f.jpg", face_bytes[2], "image/jpeg")}
    body = glow_client.post(
        "/glow/manipulate", files=files, data={"attribute": "Smiling", "strengths": "-1,0,1", "format": "json"}
    ).json()
    assert body["frame_status"] == ["ok"] * 3 and body["applied_strengths"] == [-1, 0, 1]
    interpolation = glow_client.post("/glow/interpolate", files=files_ab(face_bytes), data={"steps": "4"})
    assert interpolation.headers["x-frame-status"] == "ok,ok,ok,ok" and "x-refused-frames" not in interpolation.headers


# ---- open attributes drawn jointly (a checkpoint with label vectors) -----------------------------------------------


@pytest.fixture(scope="module")
def joint_glow_weights(tmp_path_factory):
    """The tiny Glow carrying :func:`make_up_labels` as its training faces' label vectors: no woman has a goatee."""
    directory = tmp_path_factory.mktemp("joint-glow-weights")
    tiny_glow_pipeline(directory, extras={LABEL_VECTORS_KEY: pack_label_vectors(make_up_labels(list(ATTRIBUTE_NAMES)))})
    return directory


def test_glow_draws_a_combination_no_training_face_has_with_a_warning(make_client, joint_glow_weights):
    client = make_client(weights_dir=joint_glow_weights, device="cpu")
    request = {"n": 4, "seed": 5, "attributes": {"Male": False, MEN_ONLY: True}}
    body = client.post("/generate/glow", json={**request, "format": "json"})
    assert body.status_code == 200, body.text
    warning = body.json()["warning"]
    assert warning.startswith(f"0 of the 5000 training faces have Male=false, {MEN_ONLY}=true"), warning
    assert all(not vector["Male"] and vector[MEN_ONLY] for vector in body.json()["attributes"])
    png = client.post("/generate/glow", json=request)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-warning"] == warning
    common = client.post("/generate/glow", json={"n": 4, "seed": 5, "attributes": {"Male": True}, "format": "json"})
    assert common.status_code == 200 and common.json()["warning"] is None
    assert (
        "x-warning" not in client.post("/generate/glow", json={"n": 2, "seed": 5, "attributes": {"Male": True}}).headers
    )
