"""Browser tests: a real server (uvicorn on a free loopback port, the shipped weights) and Debian's chromium driven by
Playwright. Playwright's own browser download is never used: it points at the installed executable.

Without chromium (``apt-get install chromium``; ``make test`` installs it as root) or Playwright (the dev extra) these
tests skip, saying so. Every test leaves a screenshot in ``.cache/browser-screenshots/`` for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights"
SCREENSHOTS = ROOT / ".cache" / "browser-screenshots"
CHROMIUM = os.environ.get("FACEGEN_CHROMIUM", "/usr/bin/chromium")
API_KEY = "browser-test-key"
INSTALL_HINT = "install it with `sudo apt-get install -y --no-install-recommends chromium` (or run `make test` as root)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@contextmanager
def running_server(weights_dir: Path, log_path: Path, api_key: str | None = None) -> Iterator[str]:
    """``python -m app`` on a free loopback port, yielded as its base URL once ``/ready`` answers 200."""
    port = free_port()
    env = {**os.environ, "FACEGEN_WEIGHTS_DIR": str(weights_dir), "FACEGEN_DEVICE": "cpu", "FACEGEN_TORCH_THREADS": "1"}
    env.pop("FACEGEN_API_KEY", None)
    if api_key:
        env["FACEGEN_API_KEY"] = api_key
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while get_status(f"{url}/ready", {"X-API-Key": api_key or ""}) != 200:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not become ready; its log:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if path is None:
        pytest.skip(f"no chromium at {CHROMIUM}: {INSTALL_HINT}")
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly, at the end of the run, that the browser tests did not run and how to make them run."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if "tests/browser/" in report.nodeid]
    if skipped:
        terminalreporter.write_sep("#", f"{len(skipped)} BROWSER TESTS SKIPPED", red=True, bold=True)
        terminalreporter.write_line(f"### {skipped[0].longrepr[2]}", red=True, bold=True)
        terminalreporter.write_sep("#", red=True, bold=True)


@pytest.fixture(scope="package")  # torn down with this package: Playwright's loop must not outlive it
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path)
        yield browser
        browser.close()


@pytest.fixture(scope="package")
def server(browser, tmp_path_factory) -> Iterator[str]:
    """The shipped weights, no API key. Depends on `browser` so a machine without chromium starts no server."""
    with running_server(WEIGHTS, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="package")
def keyed_server(browser, tmp_path_factory) -> Iterator[str]:
    """FACEGEN_API_KEY set; the DCGAN alone (small and quick to load) is all the key tests need."""
    weights = tmp_path_factory.mktemp("keyed-weights")
    (weights / "dcgan.safetensors").symlink_to(WEIGHTS / "dcgan.safetensors")
    with running_server(weights, weights / "server.log", api_key=API_KEY) as url:
        yield url


class Console:
    """Console errors and uncaught exceptions of a page; a test names the ones it provokes (a 422 it asked for)."""

    def __init__(self):
        self.errors: list[str] = []
        self.expected: list[re.Pattern] = []

    def expect(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [error for error in self.errors if not any(pattern.search(error) for pattern in self.expected)]


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser, console, request):
    """A fresh browser context (its own session storage) at desktop size; screenshot at the end, pass or fail."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and console.errors.append(message.text))
    page.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=SCREENSHOTS / f"{request.node.name}.png", full_page=True)
    finally:
        context.close()
    assert not console.unexpected(), f"console errors: {console.unexpected()}"
