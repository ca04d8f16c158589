"""Form fields sent empty (``strengths=``, ``steps=``) are errors, not defaults.

Starlette's form parser keeps an empty value as ``""`` and FastAPI then treats the field as absent, so a request that
named a field but gave it no value would silently run with the default. This app-wide dependency answers 422 naming
every empty field instead (an empty *file* is the upload decoder's to refuse: 400 "empty file").
"""

from __future__ import annotations

from fastapi import HTTPException, Request

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def no_empty_form_values(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in FORM_TYPES:
        return
    form = await request.form()  # parsed once: FastAPI has already read it for the route, Starlette caches it
    empty = sorted({name for name, value in form.multi_items() if isinstance(value, str) and not value.strip()})
    if empty:
        raise HTTPException(
            422,
            [
                {
                    "loc": ["body", name],
                    "msg": f"{name} is empty: give it a value, or leave the field out to use its default",
                    "type": "value_error",
                }
                for name in empty
            ],
        )
