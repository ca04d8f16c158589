"""A client generated from the app's OpenAPI schema works out of the box: openapi-python-client (the version pinned
in the dev extras) generates a package into a temporary folder, which is imported and called as a user would call
it, every operation, with only the required fields; each answers 200 and a parsed answer (a File of image bytes for
images, a model for JSON, text for the metrics). About 30 s on two busy cores (generation, then the tiny models)."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.models.acgan import DEFAULT_TOGGLE_STRENGTH
from app.models.attributes import FREQUENCIES_KEY
from app.models.glow import DIRECTIONS_KEY
from app.settings import Settings

from ...conftest import FACES_DIR, TINY_CONFIGS, write_tiny_checkpoint

pytest.importorskip("openapi_python_client", reason="pip install -e '.[dev]' (openapi-python-client, Python 3.11+)")

PACKAGE = "facegen_client"  # openapi-python-client's name for a schema titled "facegen"
PNG, GIF = b"\x89PNG\r\n\x1a\n", b"GIF8"
FACE = sorted(FACES_DIR.glob("*.jpg"))[0]


def write_weights(folder: Path) -> None:
    """A tiny checkpoint of every family; Glow with attribute directions, so /glow/manipulate serves."""
    for family in TINY_CONFIGS:
        if family != "glow":
            write_tiny_checkpoint(folder, family)
    generator = torch.Generator().manual_seed(0)
    extras = {
        DIRECTIONS_KEY: torch.randn((40, 3 * TINY_CONFIGS["glow"]["image_size"] ** 2), generator=generator) * 0.01,
        FREQUENCIES_KEY: torch.rand(40, generator=generator),
    }
    write_tiny_checkpoint(folder, "glow", extras=extras, dtype=None)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[TestClient]:
    weights = tmp_path_factory.mktemp("weights")
    write_weights(weights)
    with TestClient(create_app(Settings(weights_dir=weights, device="cpu", torch_threads=1))) as client:
        yield client


@pytest.fixture(scope="module")
def schema(served: TestClient) -> dict[str, Any]:
    return served.get("/openapi.json").json()


@pytest.fixture(scope="module")
def package(schema: dict[str, Any], tmp_path_factory) -> Iterator[ModuleType]:
    """The generated client, imported from a temporary folder (taken out of sys.modules afterwards)."""
    folder = tmp_path_factory.mktemp("client")
    (folder / "openapi.json").write_text(json.dumps(schema))
    # No post hooks: they only run ruff over the generated code (formatting), and need it on PATH.
    (folder / "config.yaml").write_text("post_hooks: []\n")
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(folder / "openapi.json")]
    command += ["--meta", "none", "--config", str(folder / "config.yaml"), "--output-path", str(folder / PACKAGE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # Warnings name the operations or responses the generator left out: there must be none.
    assert "Warning" not in done.stdout + done.stderr and "WARNING" not in done.stdout + done.stderr, done.stdout
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


class Generated:
    """What a user of the generated package touches: its client (on the in-process app), models and operations."""

    def __init__(self, package: ModuleType, served: TestClient):
        self.package = package
        self.client = package.Client(base_url=str(served.base_url))
        self.client.set_httpx_client(served)  # the TestClient is an httpx.Client: requests go to the app in-process
        self.models = importlib.import_module(f"{PACKAGE}.models")
        self.types = importlib.import_module(f"{PACKAGE}.types")

    def operation(self, tag: str, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")

    def call(self, tag: str, name: str, /, **arguments: Any) -> Any:
        """The operation's ``sync_detailed`` as a user calls it; asserts 200 and returns the parsed answer."""
        response = self.operation(tag, name).sync_detailed(client=self.client, **arguments)
        assert response.status_code == 200, f"{name}: {response.status_code} {response.content[:300]!r}"
        assert response.parsed is not None, f"{name}: the answer was not parsed"
        return response.parsed

    def file(self, path: Path = FACE) -> Any:
        return self.types.File(payload=io.BytesIO(path.read_bytes()), file_name=path.name, mime_type="image/jpeg")

    def image(self, parsed: Any, signature: bytes = PNG) -> bytes:
        assert isinstance(parsed, self.types.File), f"an image parses to a File, got {type(parsed).__name__}"
        data = parsed.payload.read()
        assert data.startswith(signature), data[:16]
        return data

    def model(self, parsed: Any, name: str) -> Any:
        assert isinstance(parsed, getattr(self.models, name)), f"expected {name}, got {type(parsed).__name__}"
        return parsed


@pytest.fixture(scope="module")
def gen(package: ModuleType, served: TestClient) -> Generated:
    return Generated(package, served)


# Every operation of the schema, called as a user would: constructors with only the required fields (and the one
# choice a user makes to pick a format or an attribute), each answer checked for its type and a telling value.
def health(g: Generated) -> None:
    assert g.model(g.call("health", "health"), "Health").status == "ok"


def ready(g: Generated) -> None:
    answer = g.model(g.call("health", "ready"), "Readiness")
    assert answer.status == "ready" and "glow" in answer.loaded


def metrics(g: Generated) -> None:
    assert "facegen" in g.call("health", "metrics")


def list_models(g: Generated) -> None:
    cards = g.call("models", "list_models")
    assert {g.model(card, "ModelCard").family for card in cards} >= {"vae", "dcgan", "acgan", "infogan", "glow"}


def get_model(g: Generated) -> None:
    assert g.model(g.call("models", "get_model", name="acgan"), "ModelCard").name == "acgan"


def generate_vae(g: Generated) -> None:
    g.image(g.call("generate", "generate_vae", body=g.models.GenerateRequest(n=2)))


def generate_dcgan(g: Generated) -> None:
    g.image(g.call("generate", "generate_dcgan", body=g.models.GenerateRequest(n=2)))


def generate_acgan(g: Generated) -> None:
    g.image(g.call("generate", "generate_acgan", body=g.models.ACGANRequest(n=1)))


def generate_infogan(g: Generated) -> None:
    g.image(g.call("generate", "generate_infogan", body=g.models.InfoGANRequest(rows=1)))


def generate_glow(g: Generated) -> None:
    g.image(g.call("glow", "generate_glow", body=g.models.GlowRequest(n=2)))


def generate_vae_json(g: Generated) -> None:
    answer = g.call("generate", "generate_vae_json", body=g.models.GenerateJSONRequest(n=2, seed=3))
    assert g.model(answer, "ImagesResponse").seed == 3 and len(answer.images) == 2


def generate_dcgan_json(g: Generated) -> None:
    answer = g.call("generate", "generate_dcgan_json", body=g.models.GenerateJSONRequest(n=2))
    assert g.model(answer, "ImagesResponse").model == "dcgan" and len(answer.images) == 2


def generate_acgan_json(g: Generated) -> None:
    answer = g.model(g.call("generate", "generate_acgan_json", body=g.models.ACGANJSONRequest(n=1)), "ACGANResponse")
    assert len(answer.images) == 1 and answer.strength is None


def generate_infogan_json(g: Generated) -> None:
    answer = g.call("generate", "generate_infogan_json", body=g.models.InfoGANJSONRequest(rows=1))
    assert len(g.model(answer, "InfoGANResponse").rows) == 1


def generate_glow_json(g: Generated) -> None:
    answer = g.call("glow", "generate_glow_json", body=g.models.GlowJSONRequest(n=2))
    assert len(g.model(answer, "GlowImagesResponse").images) == 2


def reconstruct(g: Generated) -> None:
    g.image(g.call("vae", "reconstruct", body=g.models.BodyReconstruct(images=[g.file()])))


def reconstruct_json(g: Generated) -> None:
    answer = g.call("vae", "reconstruct_json", body=g.models.BodyReconstructJson(images=[g.file()]))
    assert g.model(answer, "AlignedReconstructResponse").images[0].filename == FACE.name


def interpolate(g: Generated) -> None:
    body = g.models.BodyInterpolate(face_a=g.file(), face_b=g.file())
    g.image(g.call("glow", "interpolate", body=body))
    gif = g.models.BodyInterpolate(face_a=g.file(), face_b=g.file(), format_=g.models.BodyInterpolateFormat.GIF)
    g.image(g.call("glow", "interpolate", body=gif), GIF)


def interpolate_json(g: Generated) -> None:
    answer = g.call("glow", "interpolate_json", body=g.models.BodyInterpolateJson(face_a=g.file(), face_b=g.file()))
    assert len(g.model(answer, "InterpolationResponse").frames) == 8  # the default steps


def manipulate(g: Generated) -> None:
    body = g.models.BodyManipulate(face=g.file(), attribute=g.models.BodyManipulateAttribute.SMILING)
    g.image(g.call("glow", "manipulate", body=body))


def manipulate_json(g: Generated) -> None:
    body = g.models.BodyManipulateJson(face=g.file(), attribute=g.models.BodyManipulateJsonAttribute.SMILING)
    answer = g.model(g.call("glow", "manipulate_json", body=body), "ManipulationResponse")
    assert answer.attribute == "Smiling" and len(answer.images) == 5  # the default 5 steps


def likelihood(g: Generated) -> None:
    answer = g.call("glow", "likelihood", body=g.models.BodyLikelihood(images=[g.file()]))
    assert g.model(answer, "LikelihoodResponse").images[0].bits_per_dim > 0


def classify(g: Generated) -> None:
    answer = g.model(
        g.call("classifier", "classify", body=g.models.BodyClassify(images=[g.file()])), "ClassifyResponse"
    )
    assert len(answer.images[0].attributes.additional_properties) == 40


CALLS: dict[str, Callable[[Generated], None]] = {
    call.__name__: call
    for call in (
        health,
        ready,
        metrics,
        list_models,
        get_model,
        generate_vae,
        generate_dcgan,
        generate_acgan,
        generate_infogan,
        generate_glow,
        generate_vae_json,
        generate_dcgan_json,
        generate_acgan_json,
        generate_infogan_json,
        generate_glow_json,
        reconstruct,
        reconstruct_json,
        interpolate,
        interpolate_json,
        manipulate,
        manipulate_json,
        likelihood,
        classify,
    )
}


def test_every_operation_of_the_schema_is_called_here(schema: dict[str, Any]) -> None:
    ids = {operation["operationId"] for methods in schema["paths"].values() for operation in methods.values()}
    assert ids == set(CALLS), f"operations not called here: {ids - set(CALLS)}; called but absent: {set(CALLS) - ids}"


@pytest.mark.parametrize("operation", CALLS)
def test_the_generated_client_calls_the_operation(gen: Generated, operation: str) -> None:
    CALLS[operation](gen)


# The three failures of issue 26, each as a user of the generated client met it.
def test_acgan_request_with_only_n_is_served(gen: Generated) -> None:
    """It was a 422: the schema declared strength's default, so the client always sent it, without toggle."""
    assert "strength" not in gen.models.ACGANRequest(n=1).to_dict()
    gen.image(gen.call("generate", "generate_acgan", body=gen.models.ACGANRequest(n=1)))
    toggled = gen.models.ACGANJSONRequest(n=1, toggle=gen.models.ACGANJSONRequestToggleType0.SMILING)
    answer = gen.model(gen.call("generate", "generate_acgan_json", body=toggled), "ACGANResponse")
    assert answer.strength == DEFAULT_TOGGLE_STRENGTH


def test_a_png_answer_parses_to_its_bytes(gen: Generated, served: TestClient) -> None:
    """It was a UnicodeDecodeError: the client read every 200 as JSON, the PNG too."""
    request = gen.models.GenerateRequest(n=1, seed=7)
    data = gen.image(gen.call("generate", "generate_dcgan", body=request))
    assert data == served.post("/generate/dcgan", json={"n": 1, "seed": 7}).content


def test_glow_sequences_and_ready_parse_to_their_models(gen: Generated) -> None:
    """They parsed to None: their 200 responses declared no JSON schema."""
    body = gen.models.BodyManipulateJson(
        face=gen.file(), attribute=gen.models.BodyManipulateJsonAttribute.SMILING, strengths="-1,0,1"
    )
    assert gen.model(gen.call("glow", "manipulate_json", body=body), "ManipulationResponse").strengths == [-1, 0, 1]
    frames = gen.call(
        "glow", "interpolate_json", body=gen.models.BodyInterpolateJson(face_a=gen.file(), face_b=gen.file(), steps=3)
    )
    assert len(gen.model(frames, "InterpolationResponse").frames) == 3
    assert gen.model(gen.call("health", "ready"), "Readiness").status == "ready"
