"""Request checks the framework does not make, run as one app-wide dependency (after FastAPI has parsed the body):

* Form fields sent empty (``strengths=``, ``steps=``) are errors, not defaults. Starlette's form parser keeps an empty
  value as ``""`` and FastAPI then treats the field as absent, so a request that named a field but gave it no value
  would silently run with the default. (An empty *file* is the upload decoder's to refuse: 400 "empty file".)
* A JSON object with the same key twice (``{"n": 1, "n": 64}``) is refused: parsers disagree on which one wins, so
  the request is ambiguous; Python's keeps the last one silently.
"""

from __future__ import annotations

import json

from fastapi import HTTPException, Request

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def error(field: str, message: str) -> dict:
    return {"loc": ["body", field], "msg": message, "type": "value_error"}


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise HTTPException(422, [error(key, f"key {key!r} appears twice in one JSON object: give it once")])
        seen.add(key)
    return dict(pairs)


async def request_checks(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        body = await request.body()  # cached: FastAPI has read and parsed it already
        try:
            json.loads(body, object_pairs_hook=_refuse_duplicates)
        except (ValueError, RecursionError):
            pass  # not JSON: the route's own parsing has answered (or ignores a body it does not take)
        return
    if content_type not in FORM_TYPES:
        return
    form = await request.form()  # parsed once: FastAPI has already read it for the route, Starlette caches it
    empty = sorted({name for name, value in form.multi_items() if isinstance(value, str) and not value.strip()})
    if empty:
        raise HTTPException(
            422,
            [
                error(name, f"{name} is empty: give it a value, or leave the field out to use its default")
                for name in empty
            ],
        )
