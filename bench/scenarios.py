"""What the benchmark sends: one :class:`Scenario` per measured endpoint, and which of them a server can run (from
the capabilities on its ``GET /models`` cards). Pure: no I/O beyond reading the upload once in :func:`load_upload`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Capability names as app.models.pipelines spells them (not imported: the bench reads them off GET /models).
SAMPLE, SCORE = "sample", "score"
FACES_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "faces"

BodyFn = Callable[[int, int], dict[str, Any]]  # (rows, seed) -> JSON body


@dataclass(frozen=True)
class Upload:
    """One file sent as multipart field ``field`` with every request of an upload scenario (read once)."""

    name: str
    data: bytes
    content_type: str = "image/jpeg"
    field: str = "images"


@dataclass(frozen=True)
class Scenario:
    """One request shape: ``method path`` with ``body(rows, seed)`` as JSON, or (``upload``) one multipart file;
    ``rows`` images per request (what images/s counts); served when a loaded model of ``family`` can do
    ``capability``; a 200 counts only with a Content-Type starting with ``expect``."""

    name: str
    family: str
    capability: str
    method: str
    path: str
    rows: int
    body: BodyFn | None = None
    upload: bool = False
    expect: str = "image/png"

    def request(self, seed: int, upload: Upload | None = None) -> dict[str, Any]:
        """Keyword arguments of ``httpx.AsyncClient.request`` for the request with ``seed``."""
        kwargs: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.upload:
            if upload is None:
                raise ValueError(f"scenario {self.name} uploads an image: give one")
            kwargs["files"] = [(upload.field, (upload.name, upload.data, upload.content_type))]
        elif self.body is not None:
            kwargs["json"] = self.body(self.rows, seed)
        return kwargs

    def with_rows(self, rows: int) -> Scenario:
        """The same request asking for ``rows`` images (sampling scenarios only)."""
        if self.body is None or self.upload:
            raise ValueError(f"scenario {self.name} has no image count to change")
        return dataclasses.replace(self, rows=rows)

    def describe(self) -> dict[str, Any]:
        example = self.request(0, Upload("face.jpg", b"")) if self.upload else self.request(0)
        shown = {"files": f"{self.rows} image in field 'images'"} if self.upload else {"json": example.get("json")}
        return {
            "name": self.name,
            "family": self.family,
            "capability": self.capability,
            "method": self.method,
            "path": self.path,
            "rows": self.rows,
            **shown,
        }


def png_body(rows: int, seed: int) -> dict[str, Any]:
    return {"n": rows, "seed": seed, "format": "png"}


def n_seed_body(rows: int, seed: int) -> dict[str, Any]:
    """ACGAN and Glow: the service's defaults for the rest (attributes drawn, Glow's served temperature, PNG)."""
    return {"n": rows, "seed": seed}


def generate(name: str, rows: int, body: BodyFn = png_body, family: str | None = None) -> Scenario:
    family = family or name
    return Scenario(name, family, SAMPLE, "POST", f"/generate/{family}", rows, body)


SCENARIOS: tuple[Scenario, ...] = (
    generate("dcgan", 1),
    generate("acgan", 8, n_seed_body),
    generate("vae", 1),
    generate("glow", 1, n_seed_body),
    Scenario("classify", "classifier", SCORE, "POST", "/classify", 1, upload=True, expect="application/json"),
)
SCENARIO_NAMES = tuple(scenario.name for scenario in SCENARIOS)


def find_scenario(name: str, scenarios: Sequence[Scenario] = SCENARIOS) -> Scenario:
    for scenario in scenarios:
        if scenario.name == name:
            return scenario
    raise KeyError(f"no scenario {name!r}; known: {[s.name for s in scenarios]}")


def servable(scenario: Scenario, cards: Iterable[dict[str, Any]]) -> bool:
    """Whether a loaded model (``GET /models`` card) of the scenario's family has its capability."""
    return any(
        card.get("family") == scenario.family and scenario.capability in card.get("capabilities", ()) for card in cards
    )


def choose_scenarios(
    cards: Sequence[dict[str, Any]], wanted: Sequence[str] | None = None, scenarios: Sequence[Scenario] = SCENARIOS
) -> tuple[list[Scenario], dict[str, str]]:
    """(scenarios to run, skipped name -> why): those named in ``wanted`` (default: all) that the server serves."""
    chosen, skipped = [], {}
    names = list(wanted) if wanted else [s.name for s in scenarios]
    known = {s.name: s for s in scenarios}
    for name in names:
        scenario = known.get(name)
        if scenario is None:
            skipped[name] = f"unknown scenario (known: {', '.join(known)})"
        elif not servable(scenario, cards):
            families = sorted({f"{c.get('family')}({','.join(c.get('capabilities', []))})" for c in cards})
            skipped[name] = (
                f"no loaded {scenario.family} model with capability {scenario.capability!r} "
                f"(GET /models: {', '.join(families) or 'none'})"
            )
        else:
            chosen.append(scenario)
    return chosen, skipped


def card_for(family: str, cards: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    return next((card for card in cards if card.get("family") == family), None)


def load_upload(path: Path | None = None) -> Upload | None:
    """The face every upload scenario sends: ``path``, else the first of tests/data/faces/*.jpg; None if absent."""
    if path is None:
        faces = sorted(FACES_DIR.glob("*.jpg"))
        if not faces:
            return None
        path = faces[0]
    content_type = {".png": "image/png", ".webp": "image/webp"}.get(path.suffix.lower(), "image/jpeg")
    return Upload(path.name, path.read_bytes(), content_type)
