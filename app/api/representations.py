"""How the API looks to a client generated from its OpenAPI schema: operation ids, and every image in a shape a
generator can parse.

An image operation (``POST /generate/dcgan``, ``/vae/reconstruct``, ``/glow/interpolate``...) answers a PNG (or GIF)
by default and JSON with ``format=json``: that is how curl and the web page use it, and it stays. But a generated
client reads a 200 by the first content type it recognises, so one operation cannot give it bytes for an image and a
model for JSON (openapi-python-client 0.29.1 knows ``application/json``, ``*+json``, ``application/octet-stream``
and ``text/*``; not ``image/png``, whatever its schema). Hence two operations per image route:

* the image operation keeps ``format``; its 200 declares the images as binary, ``image/png`` (``image/gif``) first
  for the tools that know image types, then ``application/octet-stream`` (the same bytes, sent under that type when
  ``Accept`` asks for it: :class:`BinaryAccept`), then the JSON model of ``format=json``;
* its JSON twin, the same path plus ``/json`` (``POST /generate/dcgan/json``), takes the same inputs without
  ``format`` and always answers the model. Twins are built here from the image routes, so a new image route gets
  one without code of its own.

Operation ids are the route functions' names (``generate_dcgan``, ``classify``), the twins' with ``_json``: method
names of a generated client, where FastAPI's default repeats the path (``generate_dcgan_generate_dcgan_post``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_SUFFIX = "/json"
BINARY = {"type": "string", "format": "binary"}
OCTET_STREAM = "application/octet-stream"
IMAGE_TYPES = ("image/png", "image/gif")


def operation_id(route: APIRoute) -> str:
    return route.name


def json_model(route: APIRoute) -> type[BaseModel] | None:
    """The JSON answer's model of an image route (one whose 200 declares an image type and a model), else None."""
    answer = route.responses.get(200, {})
    images = any(media.startswith("image/") for media in answer.get("content", {}))
    return answer.get("model") if images else None


def has_format(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and "format" in annotation.model_fields


def decorators(model: type[BaseModel]) -> set[str]:
    """The names of a model's validators, serializers and computed fields, inherited ones included."""
    infos = model.__pydantic_decorators__
    return {name for kind in dataclasses.fields(infos) for name in getattr(infos, kind.name)}


_twin_models: dict[type[BaseModel], type[BaseModel]] = {}


def without_format(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` less its ``format`` field, named ``<Name>JSONRequest`` (one class per model: ``GenerateRequest``
    serves two families and must be one schema component)."""
    if model in _twin_models:
        return _twin_models[model]
    (base,) = model.__bases__
    if "format" in getattr(base, "model_fields", {}) or decorators(model) != decorators(base):
        raise TypeError(f"{model.__name__}: a JSON twin needs `format` and every validator declared on the base")
    config = dict(model.model_config)
    extra = config.get("json_schema_extra")
    if isinstance(extra, dict) and "examples" in extra:  # the examples /docs offers must be valid requests there too
        examples = [{k: v for k, v in example.items() if k != "format"} for example in extra["examples"]]
        config["json_schema_extra"] = {**extra, "examples": examples}
    fields = {name: field for name, field in model.model_fields.items() if name != "format"}
    namespace: dict[str, Any] = {
        "__module__": model.__module__,
        "__doc__": model.__doc__,
        "__annotations__": {name: field.annotation for name, field in fields.items()},
        "model_config": ConfigDict(**config),  # type: ignore[typeddict-item]
        **fields,
    }
    twin = type(f"{model.__name__.removesuffix('Request')}JSONRequest", (base,), namespace)
    _twin_models[model] = twin
    return twin


def json_twin_endpoint(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` with ``format`` fixed to json: a form field ``format`` is dropped from its parameters, a JSON
    body model with a ``format`` field is replaced by the model without it (:func:`without_format`)."""
    signature = inspect.signature(endpoint, eval_str=True)
    parameters = dict(signature.parameters)
    if "format" in parameters:
        del parameters["format"]

        async def form_twin(**values: Any) -> Any:
            return await endpoint(**values, format="json")

        twin = form_twin
    else:
        (name, body) = next((n, p) for n, p in parameters.items() if has_format(p.annotation))
        model = body.annotation
        parameters[name] = body.replace(annotation=without_format(model))

        async def body_twin(**values: Any) -> Any:
            given = values.pop(name)
            request = model.model_construct(given.model_fields_set | {"format"}, **dict(given), format="json")
            return await endpoint(**values, **{name: request})

        twin = body_twin
    twin.__signature__ = signature.replace(parameters=list(parameters.values()))  # type: ignore[attr-defined]
    twin.__doc__ = endpoint.__doc__
    return twin


def add_json_twins(router: APIRouter) -> None:
    """For every image route of ``router``, its JSON twin at the same path plus ``/json`` (see the module's
    docstring). Called on each router before the app includes it; routers are module-level, shared by every app
    built in one process, so a router keeps the twins it was given once."""
    paths = {route.path for route in router.routes if isinstance(route, APIRoute)}
    for route in list(router.routes):
        if not isinstance(route, APIRoute) or (model := json_model(route)) is None or route.path + JSON_SUFFIX in paths:
            continue
        router.add_api_route(
            route.path.removeprefix(router.prefix) + JSON_SUFFIX,  # add_api_route prefixes it again
            json_twin_endpoint(route.endpoint),
            methods=sorted(route.methods or ()),
            response_model=model,
            name=f"{route.name}{JSON_SUFFIX.replace('/', '_')}",
            tags=[tag for tag in route.tags if tag not in router.tags],
            description=f"{route.description}\n\nAlways JSON: `{route.path}` with `format=json`, for clients "
            "generated from this schema (which read one content type per operation).",
            dependencies=[dep for dep in route.dependencies if dep not in router.dependencies],
        )


def declare_binary_answers(schema: dict[str, Any]) -> None:
    """In every 200 that answers images: each image type with a binary schema, then ``application/octet-stream``
    (what generators that know no image type read as bytes), then the rest (the JSON model)."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("200", {})
            content = answer.get("content", {})
            images = [media for media in content if media.startswith("image/")]
            if not images:
                continue
            ordered = {media: {"schema": dict(BINARY)} for media in images}
            ordered[OCTET_STREAM] = {"schema": dict(BINARY)}
            ordered.update((media, value) for media, value in content.items() if media not in ordered)
            answer["content"] = ordered
            answer["description"] = (
                answer.get("description", "") + f"; the image bytes as {OCTET_STREAM} when Accept asks for it"
            )


def prefers_octet_stream(accept: str) -> bool:
    """``Accept`` names application/octet-stream and no image type (``*/*``, curl's and httpx's, names none)."""
    types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return OCTET_STREAM in types and not any(media.startswith("image/") for media in types)


class BinaryAccept:
    """Pure ASGI middleware: an image answer goes out as ``application/octet-stream`` when the request's ``Accept``
    asks for that and for no image type, as :func:`declare_binary_answers` states in the schema."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1")
        if scope["type"] != "http" or not prefers_octet_stream(accept):
            return await self.app(scope, receive, send)

        async def relabel(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (key, OCTET_STREAM.encode())
                    if key.lower() == b"content-type" and value.split(b";")[0].strip().decode() in IMAGE_TYPES
                    else (key, value)
                    for key, value in message.get("headers", [])
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, relabel)
