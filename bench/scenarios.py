"""What the benchmark sends: one :class:`Scenario` per benchmarked family (each family's pipeline registration says
how, with a :class:`~app.models.pipelines.BenchRequest`), and which of them a server can run (from the capabilities on
its ``GET /models`` cards). Pure: no I/O beyond reading the upload once in :func:`load_upload`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.models.pipelines import BenchRequest

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
    max_rows: int | None = None  # the most rows one request may ask for (None: more than the benchmark asks)

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
        if not self.takes_rows(rows):
            raise ValueError(f"scenario {self.name} asks at most {self.max_rows} rows a request, not {rows}")
        return dataclasses.replace(self, rows=rows)

    def takes_rows(self, rows: int) -> bool:
        """Whether one request may ask for ``rows`` rows."""
        return self.max_rows is None or rows <= self.max_rows

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


def scenario_of(family: str, bench: BenchRequest) -> Scenario:
    """The scenario that measures ``family`` with its registered request."""
    body: BodyFn | None = None
    if bench.count_field is not None:
        count_field, fields = bench.count_field, dict(bench.fields)

        def body(rows: int, seed: int) -> dict[str, Any]:
            return {count_field: rows, "seed": seed, **fields}

    return Scenario(
        bench.name or family,
        family,
        bench.capability,
        "POST",
        bench.path,
        bench.rows,
        body,
        upload=bench.count_field is None,
        expect=bench.expect,
        max_rows=bench.max_rows,
    )


def all_scenarios() -> tuple[Scenario, ...]:
    """A scenario per family registered with a bench request, by family name; read at call time, so a family
    registered after this module's import (a test's toy family) is in it."""
    # Imported here, not at the top: the registries import torch and every model (seconds on a busy machine), and
    # the /health prober process (bench.overload) imports this module and must be probing at once.
    from app.models.pipelines import bench_requests

    return tuple(scenario_of(family, bench) for family, bench in bench_requests().items())


def scenario_names() -> tuple[str, ...]:
    return tuple(scenario.name for scenario in all_scenarios())


def find_scenario(name: str, scenarios: Sequence[Scenario] | None = None) -> Scenario:
    scenarios = all_scenarios() if scenarios is None else scenarios
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
    cards: Sequence[dict[str, Any]],
    wanted: Sequence[str] | None = None,
    scenarios: Sequence[Scenario] | None = None,
) -> tuple[list[Scenario], dict[str, str]]:
    """(scenarios to run, skipped name -> why): those named in ``wanted`` (default: all) that the server serves."""
    scenarios = all_scenarios() if scenarios is None else scenarios
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
