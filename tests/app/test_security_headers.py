"""Security headers on every answer, a Content-Security-Policy the pages satisfy, and the API key in the schema."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from app.security import CONTENT_SECURITY_POLICY, page_policy

KEY = "s3cret-key"


def directives(policy: str) -> dict[str, list[str]]:
    return {name: sources for name, *sources in (part.split() for part in policy.split(";"))}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/", {}),
        ("GET", "/static/style.css", {}),
        ("GET", "/health", {}),
        ("GET", "/openapi.json", {}),
        ("POST", "/generate/dcgan", {"json": {"n": 1}}),
        ("POST", "/generate/dcgan", {"json": {"n": 0}}),
        ("GET", "/nowhere", {}),
    ],
)
def test_every_answer_carries_the_security_headers(client, method, path, kwargs):
    response = client.request(method, path, **kwargs)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_the_policy_allows_only_this_origin_and_no_framing():
    policy = directives(CONTENT_SECURITY_POLICY)
    assert policy["default-src"] == policy["script-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert not any("unsafe" in source for source in policy["script-src"])


def test_the_page_needs_nothing_outside_the_policy(client):
    """The page loads scripts and styles by URL from this origin, with no inline script, style or handler."""
    html = client.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script would be blocked"
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler would be blocked"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "an outside URL would be blocked"


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_policy_trusts_exactly_their_own_inline_scripts(client, path):
    response = client.get(path)
    assert response.status_code == 200
    scripts = re.findall(r"<script>(.*?)</script>", response.text, re.S)
    policy = directives(response.headers["content-security-policy"])
    hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts]
    assert [source for source in policy["script-src"] if source.startswith("'sha256-")] == hashes
    # The self-hosted pages start Swagger UI and ReDoc from files under /static and /docs-assets, so their policy
    # is the base one: a script or stylesheet from elsewhere, or an inline script, would be named in it.
    assert not hashes and policy["script-src"] == ["'self'"], "the self-hosted docs pages hold no inline script"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in policy["script-src"] and policy["frame-ancestors"] == ["'none'"]
    for url in re.findall(r'<script src="([^"]+)"', response.text):
        assert url in policy["script-src"] or not url.startswith("http"), url


def test_a_page_policy_trusts_same_origin_assets_without_naming_them():
    html = (
        '<link rel="stylesheet" href="/static/docs/swagger-ui.css"><script src="/static/docs/swagger-ui.js">'
        "</script><script>SwaggerUIBundle({url: '/openapi.json'})</script>"
    )
    policy = directives(page_policy(html))
    digest = base64.b64encode(hashlib.sha256(b"SwaggerUIBundle({url: '/openapi.json'})").digest()).decode()
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert policy["style-src"] == directives(CONTENT_SECURITY_POLICY)["style-src"]


def test_with_a_key_the_schema_declares_it_and_the_docs_stay_open(make_client, tiny_weights):
    client = make_client(weights_dir=tiny_weights, device="cpu", api_key=KEY)
    assert client.get("/docs").status_code == 200 and client.get("/redoc").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "APIKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    }
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            expected = None if path == "/health" else [{"APIKey": []}]
            assert operation.get("security") == expected, path
    assert client.get("/models").status_code == 401  # the data stays behind the key


def test_without_a_key_the_schema_declares_none(client):
    schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert not any("security" in op for operations in schema["paths"].values() for op in operations.values())
