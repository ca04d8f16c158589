"""``GET /``: a web page to try every model in a browser, and ``/static/``: its files.

The page is plain HTML, CSS and JavaScript in ``app/static`` (no build step, no outside URL: it works offline and
behind a firewall). It talks only to the public HTTP API, with the same requests a client would send, and shows each
one as a curl command.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(tags=["page"])
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The page itself (open without an API key: it holds no data; its requests carry the key the user types)."""
    # no-cache: the browser revalidates (a cheap 304) so a new release's page is never stale.
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
