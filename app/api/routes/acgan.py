"""``POST /generate/acgan``: faces with requested CelebA attributes, and on/off pairs of one attribute.

Attributes a request leaves open are drawn per image, with the request's seed (noise first, then attributes, both
from one seeded CPU generator, so the same request gives the same bytes), from the label vector of a training face
that has every requested value: CelebA's joint distribution given the request, so ``{"Male": true}`` asks for
lipstick as rarely as CelebA's men wear it. A combination fewer than 20 training faces have is served from the
nearest faces, with a ``warning`` (``X-Warning`` on a PNG). The full attribute vector of every image is reported
back.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import ConfigDict, Field

from app.api.attributes import attribute_header, attribute_report
from app.api.deps import InferenceDep, SettingsDep, StoreDep, require_pipeline, resolve_seed
from app.api.responses import check_count, field_error, image_output
from app.models.acgan import DEFAULT_TOGGLE_STRENGTH, MAX_TOGGLE_STRENGTH
from app.models.pipelines.acgan import ACGANPipeline
from app.schemas import MAX_SEED, ImageFormat, ImagesResponse, StrictModel

router = APIRouter(prefix="/generate", tags=["generate"])


class ACGANRequest(StrictModel):
    n: int = Field(8, ge=1, description="images; with `toggle`, pairs (2n images, at most FACEGEN_MAX_N in all)")
    seed: int | None = Field(
        None, ge=0, lt=MAX_SEED + 1, description="same seed, same images; omitted: random, reported"
    )
    attributes: dict[str, bool] = Field(
        default_factory=dict,
        description="attribute name -> on/off; the model's other attributes are drawn, per image, from the "
        "label vector of a training face with every requested value (CelebA's joint distribution given the "
        "request); a combination fewer than 20 training faces have is drawn from the nearest faces and says so "
        "in `warning`",
    )
    toggle: str | None = Field(
        None,
        description="attribute shown off (row 1) and on (row 2) for the same noise "
        "and other attributes (drawn given `attributes` without the toggled one); overrides its value in "
        "`attributes`",
    )
    # Not a declared default: a generated client sends every declared default, and strength without toggle is refused.
    strength: float | None = Field(
        None,
        gt=0,
        le=MAX_TOGGLE_STRENGTH,
        description="with `toggle` only: how far the toggled attribute is pushed off and on (the generator's "
        "condition input is -strength/+strength for it, -1/+1 for the others); 1 is as trained; omitted or null: "
        f"{DEFAULT_TOGGLE_STRENGTH}, which makes the change unmistakable",
    )
    format: ImageFormat = Field("png", description="png: one grid (header X-Attributes); json: base64 PNGs")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "n": 8,
                    "seed": 42,
                    "attributes": {"Male": False, "Blond_Hair": True},
                    "toggle": "Smiling",
                    "format": "png",
                },
            ]
        }
    )


class ACGANResponse(ImagesResponse):
    attributes: list[dict[str, bool]] = Field(description="per image, in order, the full attribute vector used")
    toggle: str | None = None
    strength: float | None = Field(None, description="the toggled attribute's strength (only with `toggle`)")
    warning: str | None = Field(
        None,
        description="set when fewer than 20 training faces have the requested combination: the open attributes "
        "then come from the nearest faces (the requested values are kept); PNG responses carry it as X-Warning",
    )


@router.post(
    "/acgan",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "model": ACGANResponse,
            "description": "a PNG grid (X-Seed and X-Attributes headers, X-Warning for a combination few "
            "training faces have) or JSON",
        }
    },
)
async def generate_acgan(
    request: ACGANRequest, store: StoreDep, infer: InferenceDep, settings: SettingsDep
) -> Response:
    """``n`` samples with the requested attributes; with ``toggle``, ``n`` off/on pairs (row 1 off, row 2 on)."""
    pipeline = require_pipeline(store, "acgan", ACGANPipeline)
    if request.toggle is None and request.strength is not None:
        raise field_error("strength", "strength applies only to a toggled attribute: give `toggle` too")
    strength = DEFAULT_TOGGLE_STRENGTH if request.strength is None else request.strength
    check_count("n", request.n, 1, max(1, settings.max_n // 2) if request.toggle else settings.max_n)
    seed = resolve_seed(request.seed)
    prepared = pipeline.prepare_samples(request.n, seed, request.attributes, request.toggle, strength)
    (images,) = await infer("acgan", prepared)

    names, drawn = pipeline.attributes, prepared.drawn_attributes()
    vectors, warning = drawn.vectors, drawn.warning
    return await image_output(
        images,
        format=request.format,
        seed=seed,
        nrow=request.n if request.toggle else 8,
        json_body=lambda encoded: ACGANResponse(
            model="acgan",
            seed=seed,
            images=encoded,
            attributes=attribute_report(vectors, names),
            toggle=request.toggle,
            strength=strength if request.toggle else None,
            warning=warning,
        ),
        png_headers={"X-Attributes": attribute_header(vectors, names), **({"X-Warning": warning} if warning else {})},
    )
