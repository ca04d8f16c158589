"""``GET /docs`` (Swagger UI) and ``GET /redoc`` (ReDoc), served from files shipped with the service, so that both
render on a machine without internet access (FastAPI's default pages load them from a CDN).

The two viewers' bundles come from the pinned ``fastapi-offline`` package (its ``static`` folder: Swagger UI's
``swagger-ui-bundle.js`` and ``swagger-ui.css``, ReDoc's ``redoc.standalone.js``; MIT-licensed, as are Swagger UI,
Apache-2.0, and ReDoc, MIT) and are served under ``/docs-assets/``. The pages hold no inline script: Swagger UI
starts from ``/static/docs/swagger-init.js`` and ReDoc from its ``<redoc>`` element, so a Content-Security-Policy
of ``script-src 'self'`` allows them (both viewers still set inline styles, and ReDoc runs its search in a
``blob:`` worker: ``style-src 'self' 'unsafe-inline'``, ``worker-src 'self' blob:``, ``img-src 'self' data:``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS_PREFIX = "/docs-assets"

SWAGGER_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>facegen API: Swagger UI</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="{ASSETS_PREFIX}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PREFIX}/swagger-ui-bundle.js"></script>
<script src="/static/docs/swagger-init.js"></script>
</body>
</html>
"""

REDOC_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>facegen API: ReDoc</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/static/docs/redoc.css">
</head>
<body>
<redoc spec-url="openapi.json"></redoc>
<script src="{ASSETS_PREFIX}/redoc.standalone.js"></script>
</body>
</html>
"""

router = APIRouter(tags=["docs"])
router.mount(ASSETS_PREFIX, StaticFiles(directory=ASSETS_DIR), name="docs-assets")


@router.get("/docs", include_in_schema=False)
async def swagger_ui() -> HTMLResponse:
    """Swagger UI over /openapi.json, from the shipped bundle."""
    return HTMLResponse(SWAGGER_PAGE)


@router.get("/redoc", include_in_schema=False)
async def redoc() -> HTMLResponse:
    """ReDoc over /openapi.json, from the shipped bundle."""
    return HTMLResponse(REDOC_PAGE)


# The HTML pages above: their Content-Security-Policy is computed from their own HTML (app.security.page_policy), so
# an inline script or an outside asset added to them later is trusted exactly, and nothing else is.
PAGE_PATHS = frozenset(route.path for route in router.routes if isinstance(route, APIRoute))
