"""The API documents itself: every route says what it does (its docstring, which /docs shows as the operation's
description), and every JSON request body carries an example that /docs offers as a request that works."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.api import routes
from app.api.routes import generate


def route_modules_routes() -> list[APIRoute]:
    """Every APIRoute of app/api/routes (as app.main includes them), the hidden ones too (GET /, the fallback)."""
    routers = [
        importlib.import_module(f"{routes.__name__}.{module.name}").router
        for module in pkgutil.iter_modules(routes.__path__)
    ]
    routers.append(generate.fallback_router)
    return [route for router in routers for route in router.routes if isinstance(route, APIRoute)]


def route_id(route: APIRoute) -> str:
    return f"{'/'.join(sorted(route.methods or ()))} {route.path}"


@pytest.mark.parametrize("route", route_modules_routes(), ids=route_id)
def test_every_route_has_a_docstring(route: APIRoute) -> None:
    assert inspect.getdoc(route.endpoint), f"{route_id(route)}: {route.endpoint.__qualname__} has no docstring"


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def json_examples(document: dict[str, Any], operation: dict[str, Any]) -> list[Any] | None:
    """The examples of an operation's JSON request body (on the media type or its schema), or None without one."""
    media = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if media is None:
        return None
    schema = media.get("schema", {})
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    found = [example.get("value") for example in media.get("examples", {}).values()]
    found += [media["example"]] if "example" in media else []
    found += list(schema.get("examples", [])) + ([schema["example"]] if "example" in schema else [])
    return found


def test_every_operation_is_described(document: dict[str, Any]) -> None:
    undescribed = [
        f"{method} {path}" for method, path, operation in operations(document) if not operation.get("description")
    ]
    assert document["paths"] and not undescribed, f"operations without a description (a docstring): {undescribed}"


def test_every_json_body_has_an_example(document: dict[str, Any]) -> None:
    with_json = [
        (method, path, op) for method, path, op in operations(document) if json_examples(document, op) is not None
    ]
    missing = [f"{method} {path}" for method, path, operation in with_json if not json_examples(document, operation)]
    assert with_json and not missing, f"JSON request bodies without an example: {missing}"


def test_every_json_example_is_a_working_request(client: TestClient, document: dict[str, Any]) -> None:
    """What /docs offers to send is accepted: each example, posted as it is, answers 200 (tiny models)."""
    failures = []
    for method, path, operation in operations(document):
        for example in json_examples(document, operation) or []:
            response = client.request(method, path, json=example)
            if response.status_code != 200:
                failures.append(f"{method} {path} {example}: {response.status_code} {response.text[:200]}")
    assert not failures, failures
