"""Typed dependencies for the routes: the settings, the loaded models and the inference seam."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.models.checkpoint import Checkpoint
from app.services.inference import InferenceRunner
from app.services.model_store import ModelStore
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_runner(request: Request) -> InferenceRunner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RunnerDep = Annotated[InferenceRunner, Depends(get_runner)]


def require_model(store: ModelStore, family: str) -> Checkpoint:
    """The loaded checkpoint of ``family``, or 503 saying it is not loaded."""
    checkpoint = store.get(family)
    if checkpoint is None:
        raise HTTPException(503, f"model {family!r} is not loaded on this server; loaded: {sorted(store.models)}")
    return checkpoint
