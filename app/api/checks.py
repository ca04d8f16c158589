"""Request checks the framework does not make, run as one app-wide dependency (after FastAPI has parsed the body):

* Form fields sent empty (``strengths=``, ``steps=``) are errors, not defaults. Starlette's form parser keeps an empty
  value as ``""`` and FastAPI then treats the field as absent, so a request that named a field but gave it no value
  would silently run with the default. (An empty *file* is the upload decoder's to refuse: 400 "empty file".)
* A JSON object with the same key twice (``{"n": 1, "n": 64}``) is refused: parsers disagree on which one wins, so
  the request is ambiguous; Python's keeps the last one silently. So is a form field given twice (``align=none&
  align=auto``), unless it is a list (``images``); a field the route does not take is ignored, repeated or not.
* A JSON body must be UTF-8 (RFC 8259): Python's parser would also read UTF-16 and UTF-32.
* A body sent with the wrong Content-Type (or none) is refused with 415 naming the header: the framework would try
  to validate the raw text and answer "Input should be a valid dictionary", echoing the body.
* Numbers in form fields are read by the schema's syntax only (ASCII digits, a sign, a point, an exponent): the
  framework's parser also takes other scripts' digits and ``1_0`` (as 10).
"""

from __future__ import annotations

import json
import re
import typing
from collections import Counter
from types import UnionType

from fastapi import HTTPException, Request
from fastapi.params import Form

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# What the schema's "integer" and "number" mean in a form field. re.ASCII: \d would take any script's digits.
NUMBER_SYNTAX = {
    int: re.compile(r"-?[0-9]+", re.ASCII),
    float: re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII),
}


def error(field: str, message: str) -> dict:
    return {"loc": ["body", field], "msg": message, "type": "value_error"}


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise HTTPException(422, [error(key, f"key {key!r} appears twice in one JSON object: give it once")])
        seen.add(key)
    return dict(pairs)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _body_kind(request: Request) -> str | None:
    """What the matched route's body is: "form", "json", or None (it takes no body)."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    if body_field is None:
        return None
    return "form" if isinstance(body_field.field_info, Form) else "json"


def _plain_type(annotation: object) -> object:
    """``int | None`` -> int; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        kept = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


def _form_fields(request: Request) -> dict[str, object]:
    """The route's form fields, by name -> their type (``int | None`` as int)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    params = getattr(dependant, "body_params", [])
    return {param.alias: _plain_type(param.field_info.annotation) for param in params}


def _refuse_wrong_content_type(content_type: str, body_kind: str | None) -> None:
    given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    if body_kind == "json" and not _is_json(content_type):
        raise HTTPException(
            415, f"this route takes a JSON object: send it with Content-Type: application/json ({given})"
        )
    if body_kind == "form" and content_type not in FORM_TYPES:
        raise HTTPException(
            415, f"this route takes an upload: send the form with Content-Type: multipart/form-data ({given})"
        )


async def request_checks(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body_kind = _body_kind(request)
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    if body_kind is not None and (content_type or has_body):
        _refuse_wrong_content_type(content_type, body_kind)
    if _is_json(content_type):
        body = await request.body()  # cached: FastAPI has read and parsed it already
        encoding = json.detect_encoding(body)
        if encoding not in ("utf-8", "utf-8-sig"):
            raise HTTPException(400, f"the JSON body is {encoding.upper()}, not UTF-8: send it as UTF-8")
        try:
            json.loads(body, object_pairs_hook=_refuse_duplicates)
        except (ValueError, RecursionError):
            pass  # not JSON: the route's own parsing has answered (or ignores a body it does not take)
        return
    if content_type not in FORM_TYPES:
        return
    form = await request.form()  # parsed once: FastAPI has already read it for the route, Starlette caches it
    fields = _form_fields(request)
    counts = Counter(name for name, _ in form.multi_items())
    # Only the route's own fields: one it does not take is ignored, however many times it is sent (the schema
    # allows other form fields), so its repeats make nothing ambiguous.
    repeated = sorted(
        name
        for name, count in counts.items()
        if count > 1 and name in fields and typing.get_origin(fields[name]) is not list
    )
    if repeated:
        raise HTTPException(
            422, [error(name, f"form field {name!r} appears {counts[name]} times: give it once") for name in repeated]
        )
    malformed = [
        error(name, f"{name} must be written as a plain {'integer' if kind is int else 'number'} in ASCII digits")
        for name, value in form.multi_items()
        if isinstance(value, str)
        and value.strip()
        and (kind := fields.get(name)) in NUMBER_SYNTAX
        and not NUMBER_SYNTAX[kind].fullmatch(value)  # type: ignore[index]
    ]
    if malformed:
        raise HTTPException(422, malformed)
    empty = sorted({name for name, value in form.multi_items() if isinstance(value, str) and not value.strip()})
    if empty:
        raise HTTPException(
            422,
            [
                error(name, f"{name} is empty: give it a value, or leave the field out to use its default")
                for name in empty
            ],
        )
