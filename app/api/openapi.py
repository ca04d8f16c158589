"""The OpenAPI schema, made to state what the server does.

FastAPI's generated schema knows the request models' static limits. What only the running server knows is added
here, once the models are loaded: every error status an operation can answer (from what the operation depends on),
``n``'s maximum (``FACEGEN_MAX_N``), the attribute names of the loaded model as enums, InfoGAN's code range, and
the rules between fields (``strength`` only with ``toggle``; pairs halve ``n``'s maximum; ``strengths`` or ``steps``).
Images are declared in the shape generated clients parse (:mod:`app.api.representations`).
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from app.api.representations import declare_binary_answers
from app.middleware import APIKeyGuard
from app.models.pipelines import CAPABILITIES, families_with
from app.settings import Settings

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"title": "Detail", "type": "string"}},
    "required": ["detail"],
}
MODEL_FAMILIES = frozenset(family for capability in CAPABILITIES for family in families_with(capability))
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error(description: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def error_responses(path: str, operation: dict, settings: Settings) -> dict[str, dict]:
    responses: dict[str, dict] = {}
    if settings.api_key and path != "/health":
        responses["401"] = error("missing or wrong X-API-Key header")
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        uploads = "multipart/form-data" in body
        responses["400"] = error(
            "the body cannot be parsed (not UTF-8, JSON nested too deeply, malformed multipart)"
            + ("; an upload is empty, truncated or corrupt" if uploads else "")
        )
        responses["408"] = error("the request body stalled (FACEGEN_BODY_TIMEOUT_S)")
        responses["413"] = error(
            "the body is over FACEGEN_MAX_UPLOAD_MB"
            + (
                "; an upload has too many pixels, or the uploads together are over the request's budget"
                if uploads
                else ""
            )
        )
        responses["415"] = error(
            "a Content-Type the operation does not take; a Content-Encoding (e.g. gzip) the server does not inflate"
            + ("; an upload that is not a JPEG, PNG or WebP image" if uploads else "")
        )
    if "{" in path:
        responses["404"] = error("nothing by that name is loaded")
    if family_of(path) in MODEL_FAMILIES:  # an operation of a model family
        responses["503"] = error(
            "the model is not loaded, its queue is full, the request timed out, or the server is shutting down",
            RETRY_AFTER,
        )
    return responses


def family_of(path: str) -> str:
    """The model family an operation serves: ``/generate/<family>``, ``/<family>/<operation>``; ``/classify`` is the
    classifier's."""
    parts = path.strip("/").split("/")
    if parts[0] == "generate" and len(parts) > 1:
        return parts[1]
    return "classifier" if parts[0] == "classify" else parts[0]


def request_schema(schema: dict, operation: dict) -> dict | None:
    """The component schema of an operation's request body (JSON or multipart), resolved."""
    for media in operation.get("requestBody", {}).get("content", {}).values():
        ref = media.get("schema", {}).get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return None


def name_enum(prop: dict, names: list[str]) -> None:
    """Restrict a string (or nullable string) property to ``names``."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "string":
            branch["enum"] = list(names)


def is_upload(prop: dict) -> bool:
    return prop.get("type") == "string" and (
        prop.get("format") == "binary" or prop.get("contentMediaType") == "application/octet-stream"
    )


def add_form_facts(props: dict) -> None:
    """An upload is a non-empty file (an empty one is a 400; ``format: binary`` is how OpenAPI 3.0 tools know a file),
    a list of uploads has at least one, and a form field cannot be null (a form has no null: a field left out takes
    its default)."""
    for name, prop in list(props.items()):
        branches = [branch for branch in prop.get("anyOf", []) if branch.get("type") != "null"]
        if "anyOf" in prop and len(branches) == 1:
            del prop["anyOf"]
            props[name] = prop = {**branches[0], **prop}
        if is_upload(prop):
            prop.update(format="binary", minLength=1)
        elif prop.get("type") == "array" and is_upload(prop.get("items", {})):
            prop["items"].update(format="binary", minLength=1)
            prop.setdefault("minItems", 1)


def add_model_facts(body: dict, path: str, pipeline: Any, settings: Settings, is_form: bool) -> None:
    props = body.get("properties", {})
    if is_form:
        add_form_facts(props)
    rules = []
    if "n" in props and path.startswith("/generate/"):
        props["n"]["maximum"] = settings.max_n
    if pipeline is not None and pipeline.attributes:
        names = pipeline.attributes
        if props.get("attributes", {}).get("type") == "object":
            props["attributes"]["propertyNames"] = {"enum": list(names)}
        for field in ("toggle", "attribute"):
            if field in props:
                name_enum(props[field], names)
    if "code" in props and pipeline is not None and hasattr(pipeline.model, "n_codes"):
        props["code"].update(minimum=0, maximum=pipeline.model.n_codes - 1)
    if "toggle" in props:
        toggled = {"required": ["toggle"], "properties": {"toggle": {"type": "string"}}}
        rules.append({"if": toggled, "then": {"properties": {"n": {"maximum": max(1, settings.max_n // 2)}}}})
        if "strength" in props:  # a number (null is as absent)
            given = {"required": ["strength"], "properties": {"strength": {"type": "number"}}}
            rules.append({"if": given, "then": toggled})
    if "strengths" in props and "steps" in props:  # one or the other (or neither: 5 steps)
        body["dependentSchemas"] = {"strengths": {"properties": {"steps": False}}}
    if rules:
        body["allOf"] = rules


def exact_integer_bounds(node: Any) -> None:
    """pydantic writes integer bounds as floats (``9.223372036854776e+18`` for 2**63): a client reading them as
    doubles then accepts values the server refuses. Integral bounds are written back as JSON integers."""
    if isinstance(node, dict):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if isinstance(node.get(key), float) and node[key].is_integer() and node.get("type") == "integer":
                node[key] = int(node[key])
        for value in node.values():
            exact_integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            exact_integer_bounds(value)


API_KEY_SCHEME = "APIKey"


def declare_api_key(schema: dict[str, Any], settings: Settings) -> None:
    """With ``FACEGEN_API_KEY`` set, the ``X-API-Key`` header as a security scheme that every guarded operation
    requires: generated clients then take the key, and ``/docs`` offers "Authorize" and sends it."""
    if not settings.api_key:
        return
    schema.setdefault("components", {})["securitySchemes"] = {
        API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    }
    for path, operations in schema["paths"].items():
        if not APIKeyGuard.is_open(path):
            for operation in operations.values():
                operation["security"] = [{API_KEY_SCHEME: []}]


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    app.openapi_schema = None
    schema = copy.deepcopy(FastAPI.openapi(app))  # FastAPI's own, from the routes' models
    app.openapi_schema = None
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    store = getattr(app.state, "store", None)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for status, response in error_responses(path, operation, settings).items():
                operation["responses"].setdefault(status, response)
            body = request_schema(schema, operation)
            if body is not None:
                pipeline = store.pipelines.get(family_of(path)) if store is not None else None
                is_form = "multipart/form-data" in operation["requestBody"]["content"]
                add_model_facts(body, path, pipeline, settings, is_form)
    declare_binary_answers(schema)
    exact_integer_bounds(schema)
    declare_api_key(schema, settings)
    return schema


def install(app: FastAPI, settings: Settings) -> None:
    """Serve :func:`build_openapi` at /openapi.json, computed once the models are loaded (their attribute names are
    part of it) and cached from then on."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build_openapi(app, settings)
        if getattr(app.state, "warm", False):
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
