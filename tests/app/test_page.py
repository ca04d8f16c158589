"""``GET /`` and its static files, through the ASGI app: served, self-contained, open without the API key.

What the page does in a browser is tested in ``tests/browser/``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.api.routes.page import STATIC_DIR
from app.models.pipelines.glow import DEFAULT_TEMPERATURE, MAX_TEMPERATURE

TEXT_FILES = sorted(path for path in STATIC_DIR.rglob("*") if path.suffix in {".html", ".css", ".js", ".svg"})
# An absolute URL anywhere (http://host, https://host, protocol-relative //host.tld/...) would break offline use.
OUTSIDE_URL = re.compile(r"(?:https?:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b|https?://", re.IGNORECASE)


def test_root_serves_the_page(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/main.js">' in response.text


def test_every_file_the_page_names_is_served(client):
    html = client.get("/").text
    paths = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', html))
    assert {"/static/style.css", "/static/js/main.js", "/static/favicon.svg"} <= paths
    for path in paths:
        assert client.get(path).status_code == 200, path
    for example in (STATIC_DIR / "examples").glob("*.jpg"):
        response = client.get(f"/static/examples/{example.name}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"


def test_the_glow_temperature_slider_starts_where_the_api_does():
    html = (STATIC_DIR / "index.html").read_text()
    slider = re.search(r'<input id="glow-temperature"[^>]*>', html)
    assert slider is not None
    assert f'value="{DEFAULT_TEMPERATURE}"' in slider.group() and f'max="{MAX_TEMPERATURE}"' in slider.group()
    assert f'<output for="glow-temperature">{DEFAULT_TEMPERATURE}</output>' in html


def test_every_module_import_resolves():
    """The ES modules import each other by relative path: a typo would only show in a browser."""
    scripts = sorted((STATIC_DIR / "js").rglob("*.js"))
    assert scripts
    for script in scripts:
        for target in re.findall(r'from\s+"(\.{1,2}/[^"]+)"', script.read_text()):
            assert (script.parent / target).resolve().is_file(), f"{script.name} imports missing {target}"


def test_examples_named_by_the_page_are_bundled():
    ui = (STATIC_DIR / "js" / "ui.js").read_text()
    names = re.search(r"EXAMPLE_FACES = \[([^\]]+)\]", ui).group(1)
    bundled = {path.name for path in (STATIC_DIR / "examples").glob("*.jpg")}
    assert set(re.findall(r'"([^"]+)"', names)) == bundled and len(bundled) >= 3
    html = (STATIC_DIR / "index.html").read_text()
    for listed in re.findall(r'data-example="([^"]+)"', html):
        assert set(listed.split()) <= bundled


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda path: str(path.relative_to(STATIC_DIR)))
def test_no_outside_urls(path: Path):
    """No CDN, font or other outside URL: the page works offline and behind a firewall."""
    text = path.read_text()
    if path.suffix == ".svg":  # an SVG names its XML namespace; a browser never fetches it
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not OUTSIDE_URL.search(text), OUTSIDE_URL.search(text).group(0)


def test_page_is_open_without_the_api_key(make_client, tiny_weights):
    """A browser cannot send a header when it opens a URL: the page and its files are open, the API is not."""
    client = make_client(weights_dir=tiny_weights, api_key="s3cret-key")
    assert client.get("/").status_code == 200
    assert client.get("/static/js/main.js").status_code == 200
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    # the open prefix leads to the static folder only: a path that climbs out of it reaches nothing
    assert client.get("/static/../models").status_code != 200
    assert client.get("/static/%2e%2e/models").status_code != 200
