"""Schemathesis over every operation of the OpenAPI schema, against the ASGI app with tiny checkpoints: positive
data (schema-valid requests must be accepted) and negative data (schema-invalid ones must be refused with a 4xx),
no server errors, and only documented status codes. Bounded (a few examples per operation and mode, no shrinking)
so it fits in about a minute on two busy cores."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    negative_data_rejection,
    positive_data_acceptance,
    status_code_conformance,
)
from schemathesis.transport.serialization import Binary  # noqa: E402

from app.main import create_app  # noqa: E402
from app.manifest import write_manifest  # noqa: E402
from app.models.attributes import FREQUENCIES_KEY  # noqa: E402
from app.models.glow import DIRECTIONS_KEY  # noqa: E402
from app.settings import Settings  # noqa: E402

from ...conftest import FACES_DIR, TINY_CONFIGS, write_tiny_checkpoint  # noqa: E402

EXAMPLES = 12
SERVER_DEADLINE_S = 45.0  # FACEGEN_REQUEST_TIMEOUT_S of the fuzzed app: the longest any request may take to answer
# JSON Schema cannot say "a JPEG of a face": uploads are drawn from real faces so that schema-valid requests are
# also requests the server can serve (random bytes would be refused 415, correctly but uselessly).
FACES = sorted(path.read_bytes() for path in Path(FACES_DIR).glob("*.jpg"))
schemathesis.openapi.format("binary", st.sampled_from(FACES).map(Binary))


def build_schema():
    folder = Path(tempfile.mkdtemp(prefix="facegen-fuzz-"))  # module-level: schemathesis needs the schema to collect
    for family in TINY_CONFIGS:
        if family != "glow":
            write_tiny_checkpoint(folder, family)
    # Glow with attribute directions, so /glow/manipulate can serve (without them it is a documented 503).
    generator = torch.Generator().manual_seed(0)
    latent_dim = 3 * TINY_CONFIGS["glow"]["image_size"] ** 2
    extras = {
        DIRECTIONS_KEY: torch.randn((40, latent_dim), generator=generator) * 0.01,  # small: a tiny flow diverges early
        FREQUENCIES_KEY: torch.rand(40, generator=generator),
    }
    write_tiny_checkpoint(folder, "glow", extras=extras, dtype=None)
    write_manifest(folder)
    settings = Settings(weights_dir=folder, device="cpu", torch_threads=1, request_timeout_s=SERVER_DEADLINE_S)
    app = create_app(settings)
    # Loading the schema starts the app's lifespan (models load, enums and limits join the schema); schemathesis
    # keeps it running for the rest of the session.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # The client waits out the server's own deadline (schemathesis' default is 10 s): /classify of 32 faces with
    # align=auto takes ~1.5 s on an idle core and can pass 10 s on a loaded one, a slow answer, not a wrong one. A
    # request past the deadline is still answered (a 503 naming it), so a hang is still a failure, never a stall.
    schema.config.request_timeout = settings.request_timeout_s + 15
    schema.config.generation.update(
        modes=["positive", "negative"], max_examples=EXAMPLES, no_shrink=True, deterministic=True
    )
    return schema


schema = build_schema()


UPLOAD_CONTENT_REFUSALS = ("not an image", "truncated or corrupt", "empty file")


@schemathesis.check
def schema_valid_requests_accepted(ctx, response, case):
    """schemathesis' positive_data_acceptance, less one thing JSON Schema cannot state: that a file part holds a
    decodable image. Its coverage phase fills file parts with arbitrary strings whatever strategy is registered for
    them; the server's 400/415 naming the bad upload is then right. Everything else is checked unchanged."""
    if response.status_code in (400, 415) and any(text in response.text for text in UPLOAD_CONTENT_REFUSALS):
        return None
    return positive_data_acceptance(ctx, response, case)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_states_what_the_server_does(case):
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, schema_valid_requests_accepted, negative_data_rejection]
    )
