"""Typed dependencies for the routes (the settings, the loaded models and the batcher they run through) and the
helpers every route shares. Routes import from here and from :mod:`app.api.uploads`, :mod:`app.api.responses`,
never from one another."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request

from app.models.pipelines import Pipeline, Prepared
from app.models.pipelines.base import Tensors
from app.schemas import MAX_SEED
from app.services.batcher import Batcher
from app.services.model_store import ModelStore
from app.settings import Settings


# Dependencies are `async def` so FastAPI calls them on the event loop: a plain `def` would cost every request a
# hop to the thread pool and back for each of them.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]


PipelineT = TypeVar("PipelineT", bound=Pipeline)
T = TypeVar("T")


def require_pipeline(store: ModelStore, family: str, kind: type[PipelineT]) -> PipelineT:
    """The loaded pipeline of ``family`` (a ``kind``, the family's pipeline class), or 503 saying it is not loaded."""
    pipeline = store.pipelines.get(family)
    if pipeline is None:
        raise HTTPException(503, f"model {family!r} is not loaded on this server; loaded: {sorted(store.models)}")
    if not isinstance(pipeline, kind):  # the registry builds each family's own pipeline class: never
        raise TypeError(f"the {family} pipeline is a {type(pipeline).__name__}, not a {kind.__name__}")
    return pipeline


def resolve_seed(seed: int | None) -> int:
    """The request's seed, or a fresh random one (which the answer reports, so the images can be drawn again)."""
    return secrets.randbelow(MAX_SEED) if seed is None else seed


class ClientDisconnected(Exception):
    """The client went away while its request waited; nothing is sent back."""


async def _disconnected(request: Request) -> None:
    # After the body has been read, the next ASGI message is the disconnect (or nothing, until the response is sent).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, unless the client disconnects first: then it is cancelled (so its work is abandoned)
    and :class:`ClientDisconnected` is raised."""
    job = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    done: set[asyncio.Future] = set()
    try:
        done, _ = await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not job.done():
            job.cancel()
            await asyncio.wait({job})  # its clean-up (marking queued work abandoned) has run when this returns
    if job not in done:
        raise ClientDisconnected()
    return job.result()


class Inference:
    """Runs a request's prepared inputs through the batcher; a client that disconnects meanwhile is taken out of
    the queue (its rows are never computed)."""

    def __init__(self, request: Request):
        self.request = request
        self.batcher: Batcher = request.app.state.batcher
        self.timeout_s: float = request.app.state.settings.request_timeout_s

    async def __call__(self, family: str, prepared: Prepared) -> Tensors:
        queue = self.batcher.queues.get(family)
        if queue is None:
            raise HTTPException(503, f"model {family!r} is not loaded on this server")
        job = queue.enqueue(prepared, self.timeout_s)
        watcher = asyncio.ensure_future(_disconnected(self.request))
        try:
            # The job's future and one watcher task: no task per request for the job itself.
            await asyncio.wait((job.future, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            queue.finish(job)  # gone or cancelled: a job still queued leaves the queue, never computed
        if job.future.cancelled():
            raise ClientDisconnected()
        return job.future.result()


async def get_inference(request: Request) -> Inference:
    return Inference(request)


InferenceDep = Annotated[Inference, Depends(get_inference)]


@dataclass(frozen=True)
class Serving:
    """The settings, the loaded models and the batcher, as one dependency for the routes that serve the most requests
    (sampling one image): FastAPI solves each dependency of a route on every request, and three of them cost a
    one-image request more CPU than its PNG (issue 27's profile, ``python -m bench.profile``)."""

    settings: Settings
    store: ModelStore
    infer: Inference


async def get_serving(request: Request) -> Serving:
    state = request.app.state
    return Serving(state.settings, state.store, Inference(request))


ServingDep = Annotated[Serving, Depends(get_serving)]
