"""The middleware stack: CORS with an API key as a browser sees it, bounded metric labels, HEAD, body refusals
(content encoding, stalled bodies) and JSON 500s that carry CORS headers."""

from __future__ import annotations

import asyncio
import re

import pytest

ORIGIN = "https://faces.example"
KEY = "s3cret-key"


@pytest.fixture
def browser_client(make_client, tiny_weights):
    return make_client(weights_dir=tiny_weights, device="cpu", api_key=KEY, cors_origins=f"{ORIGIN},http://localhost")


def test_preflight_is_answered_before_the_key_check(browser_client):
    # A browser sends the preflight without credentials or custom headers, whatever the page's fetch() carries.
    response = browser_client.options(
        "/generate/dcgan",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()


def test_a_refusal_carries_cors_headers_so_the_page_can_read_it(browser_client):
    response = browser_client.post("/generate/dcgan", json={"n": 1}, headers={"Origin": ORIGIN})
    assert response.status_code == 401 and "X-API-Key" in response.json()["detail"]
    assert response.headers["access-control-allow-origin"] == ORIGIN
    response = browser_client.post("/generate/dcgan", json={"n": 0}, headers={"Origin": ORIGIN, "X-API-Key": KEY})
    assert response.status_code == 422 and response.headers["access-control-allow-origin"] == ORIGIN


def test_an_allowed_request_exposes_the_seed_header(browser_client):
    response = browser_client.post(
        "/generate/dcgan", json={"n": 1, "seed": 5}, headers={"Origin": ORIGIN, "X-API-Key": KEY}
    )
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-seed" in response.headers["access-control-expose-headers"].lower()


def test_other_origins_get_no_cors_headers(browser_client):
    preflight = browser_client.options(
        "/generate/dcgan",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
    response = browser_client.post("/generate/dcgan", json={"n": 1}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 401 and "access-control-allow-origin" not in response.headers


def test_a_server_error_is_json_and_carries_cors_headers(browser_client, monkeypatch):
    from app.api.routes import models

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(models, "model_card", broken)
    response = browser_client.get("/models", headers={"Origin": ORIGIN, "X-API-Key": KEY})
    assert response.status_code == 500 and response.json()["detail"].startswith("internal server error")
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_metric_labels_come_from_fixed_sets(client):
    for index in range(30):
        client.request(f"BREW{index}", f"/made/up/{index}")
        client.get(f"/models/nothing-{index}")
    client.post("/generate/dcgan", json={"n": 1})
    text = client.get("/metrics").text
    series = re.findall(r"^facegen_requests_total\{(.*)\} ", text, re.M)
    methods = {re.search(r'method="([^"]*)"', labels).group(1) for labels in series}
    routes = {re.search(r'route="([^"]*)"', labels).group(1) for labels in series}
    statuses = {re.search(r'status="([^"]*)"', labels).group(1) for labels in series}
    assert methods <= {"GET", "POST", "HEAD", "OPTIONS", "other"} and "other" in methods
    assert "unmatched" in routes and "/models/{name}" in routes and not any("nothing" in r for r in routes)
    assert statuses <= {"2xx", "4xx", "5xx"}
    assert len(series) < 10, series


@pytest.mark.parametrize("path", ["/health", "/ready", "/models", "/models/vae", "/metrics", "/openapi.json"])
def test_head_on_get_routes_is_200_without_body(client, path):
    get, head = client.get(path), client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_head_on_a_post_route_is_405(client):
    assert client.head("/generate/vae").status_code == 405


def test_compressed_bodies_are_415_naming_the_encoding(client):
    import gzip

    response = client.post(
        "/generate/vae",
        content=gzip.compress(b'{"n": 1}'),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 415 and "Content-Encoding 'gzip' is not supported" in response.json()["detail"]


def test_a_stalled_body_is_408():
    """ASGI-level: the body's second part never comes (a real socket version is in test_slow_clients.py)."""
    from app.middleware import RequestBodyGuard

    sent = []

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        raise AssertionError("the body never completes")

    async def scenario():
        messages = [{"type": "http.request", "body": b"{", "more_body": True}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/x", "headers": [(b"content-length", b"10")]}
        await RequestBodyGuard(app, max_mb=1, read_timeout_s=0.2)(scope, receive, send)

    asyncio.run(scenario())
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b"stalled" in sent[1]["body"]
