from __future__ import annotations

import dataclasses

from fastapi import APIRouter, HTTPException

from app.api.deps import StoreDep
from app.models.pipelines import Pipeline
from app.schemas import ModelCard

router = APIRouter(prefix="/models", tags=["models"])


def model_card(name: str, pipeline: Pipeline) -> ModelCard:
    checkpoint = pipeline.checkpoint
    return ModelCard(
        name=name,
        family=checkpoint.family,
        capabilities=sorted(pipeline.capabilities),
        precision=pipeline.precision if pipeline.reduced_precision else "float32",
        file=checkpoint.path.name if checkpoint.path else "",
        sha256=checkpoint.sha256,
        device=str(next(checkpoint.model.parameters()).device),
        parameters=sum(p.numel() for p in checkpoint.model.parameters()),
        config=checkpoint.config,
        preprocess=dataclasses.asdict(checkpoint.preprocess),
        attributes=checkpoint.attributes,
        metrics=checkpoint.metrics,
        training=checkpoint.training,
    )


@router.get("")
async def list_models(store: StoreDep) -> list[ModelCard]:
    """A card per loaded model: what it is, what it can do (sample, encode, score), how it was trained and scored."""
    return [model_card(name, pipeline) for name, pipeline in sorted(store.pipelines.items())]


@router.get("/{name}")
async def get_model(name: str, store: StoreDep) -> ModelCard:
    """The card of one loaded model (404 naming the loaded ones otherwise)."""
    pipeline = store.pipelines.get(name)
    if pipeline is None:
        raise HTTPException(404, f"no model named {name!r}; loaded: {sorted(store.models)}")
    return model_card(name, pipeline)
