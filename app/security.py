"""The security headers every answer carries, and the Content-Security-Policy of the pages.

One policy for everything the server answers: scripts, styles, images and requests from this origin only, no
plugins, no framing, no ``<base>`` or form posts elsewhere. The page at ``/`` needs nothing more (a module script and
a stylesheet under ``/static``; images it shows are ``blob:`` and ``data:`` URLs it makes from API answers).

The API docs pages (``/docs``, ``/redoc``, ``app.api.routes.docs``) are built by the server, never from a request.
Their policy also trusts exactly what their HTML holds: the SHA-256 of each inline script, and the URLs of the
scripts and stylesheets it loads. The shipped pages hold none of either (Swagger UI and ReDoc are served from this
origin and started without inline script), so theirs is the base policy; ReDoc's ``blob:`` search worker and the
viewers' inline styles are why the base allows those. Nothing a client sends can add to it.
"""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser

BASE_POLICY: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    # Swagger UI and ReDoc set styles from JavaScript (ReDoc inserts <style> elements): inline styles cannot run code.
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:", "blob:"],
    "font-src": ["'self'", "data:"],
    "worker-src": ["'self'", "blob:"],  # ReDoc searches in a worker it builds from a blob
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def policy_text(policy: dict[str, list[str]]) -> str:
    return "; ".join(f"{directive} {' '.join(sources)}" for directive, sources in policy.items())


CONTENT_SECURITY_POLICY = policy_text(BASE_POLICY)

# On every answer, the app's and the server's own (408, 400, 503), JSON and HTML alike.
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class _PageResources(HTMLParser):
    """Inline scripts and the URLs of the scripts, stylesheets and icons of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts: list[str] = []
        self.script_urls: list[str] = []
        self.style_urls: list[str] = []
        self.image_urls: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script":
            if values.get("src"):
                self.script_urls.append(values["src"])
            else:
                self._in_inline_script = True
                self.inline_scripts.append("")
        elif tag == "link" and values.get("href"):
            rel = values.get("rel", "").lower().split()
            if "stylesheet" in rel:
                self.style_urls.append(values["href"])
            elif "icon" in rel or "shortcut" in rel:
                self.image_urls.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts[-1] += data


def _external(urls: list[str]) -> list[str]:
    """The absolute URLs among ``urls`` (same-origin ones are covered by 'self')."""
    return [url for url in urls if url.startswith(("https://", "http://"))]


def page_policy(html: str) -> str:
    """:data:`CONTENT_SECURITY_POLICY` extended with what one server-built page holds (see the module's docstring)."""
    found = _PageResources()
    found.feed(html)
    found.close()
    policy = {directive: list(sources) for directive, sources in BASE_POLICY.items()}
    for script in found.inline_scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        policy["script-src"].append(f"'sha256-{digest}'")
    policy["script-src"] += _external(found.script_urls)
    policy["style-src"] += _external(found.style_urls)
    policy["img-src"] += _external(found.image_urls)
    return policy_text(policy)
