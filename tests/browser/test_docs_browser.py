"""/docs (Swagger UI) and /redoc (ReDoc) render every operation of /openapi.json with the network cut off: every
request the browser makes outside the server is refused and recorded, and none may be made."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

# ReDoc's sidebar attribution: a decorative image from Redocly's CDN, which ReDoc itself hides when it fails to load
# (its onError). The one outside resource either page asks for; the documentation is whole without it. The page's
# Content-Security-Policy (img-src names no outside origin) blocks it before the network is tried, so normally the
# refusal is the policy's; the network cut catches it should the policy ever let it through.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def document(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as response:
        return json.load(response)


def operations(url: str) -> set[tuple[str, str]]:
    paths = document(url)["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item if method in METHODS}


def operation_ids(url: str) -> set[str]:
    paths = document(url)["paths"]
    return {
        operation["operationId"] for item in paths.values() for method, operation in item.items() if method in METHODS
    }


@pytest.fixture
def offline_page(page, server):
    """The page with every request that leaves the server refused (as on a machine without internet access)."""
    refused: list[str] = []

    def only_the_server(route):
        if route.request.url.startswith(server + "/"):
            return route.continue_()
        refused.append(route.request.url)
        return route.abort()

    page.route("**/*", only_the_server)
    page.refused = refused
    return page


def test_swagger_ui_renders_every_operation_offline(offline_page, server, console):
    page, expected = offline_page, operations(server)
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock-summary-path")
    page.locator(".opblock").nth(len(expected) - 1).wait_for(state="attached")
    shown = {
        tuple(pair)
        for pair in page.eval_on_selector_all(
            ".opblock",
            "blocks => blocks.map(b => [b.querySelector('.opblock-summary-method').textContent.trim(),"
            " b.querySelector('.opblock-summary-path').getAttribute('data-path')])",
        )
    }
    assert shown == expected
    assert page.refused == [], page.refused
    assert console.unexpected() == []


def test_redoc_renders_every_operation_offline(offline_page, server, console):
    page, expected, ids = offline_page, operations(server), operation_ids(server)
    page.goto(f"{server}/redoc")
    # A locator, not wait_for_function: that one polls with eval, which the page's policy (no 'unsafe-eval') refuses
    page.locator("[data-section-id^='operation/']").nth(len(ids) - 1).wait_for(state="attached", timeout=60_000)
    shown = page.eval_on_selector_all(
        "[data-section-id^='operation/']", "sections => sections.map(s => s.getAttribute('data-section-id'))"
    )
    assert {section.removeprefix("operation/") for section in shown} == ids
    text = page.inner_text("body")
    for _, path in expected:
        assert path in text, f"{path} is not on the ReDoc page"
    assert set(page.refused) <= {REDOC_LOGO}, page.refused
    blocked = f"^Loading the image '{re.escape(REDOC_LOGO)}' violates the following Content Security Policy directive"
    if page.refused:
        console.expect(r"^Failed to load resource: net::ERR_FAILED$")  # that logo, refused by the network cut
    if page.refused or any(re.search(blocked, error) for error in console.errors):
        console.expect(blocked)  # that logo, refused by the policy
        assert page.eval_on_selector_all("img[alt='redocly logo']", "imgs => imgs.length") == 0, "ReDoc hid it"
