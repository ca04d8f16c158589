from __future__ import annotations

import dataclasses

from fastapi import APIRouter, HTTPException

from app.api.deps import StoreDep
from app.models.checkpoint import Checkpoint
from app.schemas import ModelCard

router = APIRouter(prefix="/models", tags=["models"])


def model_card(name: str, checkpoint: Checkpoint) -> ModelCard:
    return ModelCard(
        name=name,
        family=checkpoint.family,
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
def list_models(store: StoreDep) -> list[ModelCard]:
    return [model_card(name, checkpoint) for name, checkpoint in sorted(store.models.items())]


@router.get("/{name}")
def get_model(name: str, store: StoreDep) -> ModelCard:
    checkpoint = store.get(name)
    if checkpoint is None:
        raise HTTPException(404, f"no model named {name!r}; loaded: {sorted(store.models)}")
    return model_card(name, checkpoint)
