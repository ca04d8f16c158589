"""One module per feature, each exposing a ``router``: the app includes every module's (adding a route is adding a
module). A family defined outside this package (a plugin, a test's toy family) adds its router with
:func:`register_router` before the app is created."""

from __future__ import annotations

from fastapi import APIRouter

_REGISTERED: list[APIRouter] = []


def register_router(router: APIRouter) -> APIRouter:
    """Include ``router`` in every app created from now on (after the package's own routers)."""
    if router not in _REGISTERED:
        _REGISTERED.append(router)
    return router


def unregister_router(router: APIRouter) -> None:
    """Leave ``router`` out of apps created from now on."""
    if router in _REGISTERED:
        _REGISTERED.remove(router)


def registered_routers() -> list[APIRouter]:
    """The routers added with :func:`register_router`, in the order they were added."""
    return list(_REGISTERED)
