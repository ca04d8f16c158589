"""The page in a real browser against a real server: every family samples, uploads interpolate, the manipulation
slider re-runs, errors are shown in words by the control that caused them, the API key works; no console errors."""

from __future__ import annotations

import json
import re
import struct
import time
import urllib.request

from tests.browser.conftest import API_KEY, ROOT

FACES = ROOT / "tests" / "data" / "faces"


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#server-status[data-state=ready]")
    page.evaluate("window.facegenReady")  # the bundled example faces are in their pickers


def submit(page, panel: str, button: str = "button[type=submit]") -> str:
    """Press a panel's button and wait for its outcome (the job starts synchronously in the click handler)."""
    page.click(f"{panel} form {button}")
    return wait_outcome(page, panel)


def wait_outcome(page, panel: str) -> str:
    page.wait_for_selector(f"{panel} .outcome .note, {panel} .outcome .error")
    return page.inner_text(f"{panel} .outcome")


def wait_elapsed(page, panel: str, seconds: float, timeout_s: float = 30) -> None:
    """Until a running job's clock shows ``seconds``. Polled from here: wait_for_function evaluates its predicate
    with eval, which the page's Content-Security-Policy (no 'unsafe-eval') refuses."""
    clock, deadline = page.locator(f"{panel} .elapsed"), time.monotonic() + timeout_s
    while float(clock.inner_text().split()[0]) < seconds:
        assert time.monotonic() < deadline, f"{panel}'s clock never reached {seconds} s"
        page.wait_for_timeout(50)


def decoded_sizes(page, selector: str) -> list[list[int]]:
    """Natural sizes of the matching images once decoded (decode() rejects for a broken image)."""
    return page.eval_on_selector_all(
        selector,
        "imgs => Promise.all(imgs.map(async img => {"
        " await img.decode(); return [img.naturalWidth, img.naturalHeight]; }))",
    )


def assert_decoded(page, selector: str, count: int | None = None) -> None:
    sizes = decoded_sizes(page, selector)
    assert sizes and all(width > 0 and height > 0 for width, height in sizes), (selector, sizes)
    if count is not None:
        assert len(sizes) == count, (selector, sizes)


def sampling_models(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/models", timeout=10) as response:
        return {card["name"] for card in json.load(response) if "sample" in card["capabilities"]}


def covered_order(labels: list[str], name: str) -> int:
    return next(i for i, label in enumerate(labels) if label.split(" ")[0] == name)


def test_samples_from_every_family(page, server):
    open_page(page, server)
    covered = set()

    page.fill("#samples-n", "4")
    for family in page.eval_on_selector_all("#samples-family option", "options => options.map(o => o.value)"):
        page.select_option("#samples-family", family)
        assert submit(page, "#samples").startswith("Done")
        assert_decoded(page, "#samples .result img", 1)
        assert re.fullmatch(r"\d+", page.inner_text("#samples .seed-used"))
        assert f"/generate/{family}" in page.inner_text("#samples .request code")
        covered.add(family)
    # which families have a panel of their own is read from the page: they come last, marked, and the InfoGAN
    # (rows and a code, no n) is only named, with a link to its panel
    labels = page.eval_on_selector_all("#samples-family option", "options => options.map(o => o.textContent)")
    assert "infogan" not in covered and labels[-1].endswith("(more in its panel)")
    assert [label.endswith("(more in its panel)") for label in labels] == sorted(
        label.endswith("(more in its panel)") for label in labels
    )
    assert "(more in its panel)" in labels[covered_order(labels, "acgan")]
    note = page.locator("#samples .intro .own")
    assert note.count() == 1 and "infogan draws sweeps of one code rather than n faces" in note.inner_text()
    assert note.locator("a").get_attribute("href") == "#infogan"

    # ACGAN: one attribute fixed, Smiling toggled: pairs off/on; a dice seed is the seed reported back
    page.select_option("#acgan-attribute-Male", "false")
    page.select_option("#acgan-toggle", "Smiling")
    page.fill("#acgan-n", "2")
    page.click("#acgan [aria-label='Pick a random seed']")
    seed = page.input_value("#acgan-seed")
    assert submit(page, "#acgan").startswith("Done")
    assert_decoded(page, "#acgan .pair img", 4)
    assert page.inner_text("#acgan .seed-used") == seed
    request = page.inner_text("#acgan .request code")
    assert '"toggle":"Smiling"' in request and '"Male":false' in request and f'"seed":{seed}' in request
    covered.add("acgan")

    page.fill("#infogan-rows", "2")
    assert submit(page, "#infogan").startswith("Done")
    assert_decoded(page, "#infogan .result img", 1)
    covered.add("infogan")

    page.fill("#glow-n", "2")
    page.fill("#glow-temperature", "0.5")
    assert submit(page, "#glow-samples").startswith("Done")
    assert_decoded(page, "#glow-samples .result img", 2)
    assert '"temperature":0.5' in page.inner_text("#glow-samples .request code")
    covered.add("glow")

    assert covered >= sampling_models(server)


def test_interpolate_two_uploads(page, server):
    open_page(page, server)
    page.set_input_files("#interpolate-face_a", FACES / "000003.jpg")  # a real upload from disk
    page.click("#interpolate [data-picker=face_b] .example[data-name='000002.jpg']")  # a bundled example
    page.wait_for_selector("#interpolate [data-picker=face_b] .example[data-name='000002.jpg'][aria-pressed=true]")
    page.fill("#interpolate-steps", "4")
    assert page.eval_on_selector_all("#interpolate-align option", "options => options.map(o => o.value)") == [
        "",
        "auto",
        "none",
    ]
    page.select_option("#interpolate-align", "none")  # CelebA's own crops: no detection
    with page.expect_response(lambda r: r.url.endswith("/glow/interpolate") and "gif" in r.headers["content-type"]):
        assert submit(page, "#interpolate").startswith("Done")
    assert_decoded(page, "#interpolate img.animation", 1)
    assert_decoded(page, "#interpolate .strip img", 4)
    request = page.inner_text("#interpolate .request code")
    assert "face_a=@000003.jpg" in request and "face_b=@000002.jpg" in request and "format=gif" in request
    assert "align=none" in request


def test_manipulation_slider_reruns_with_readings(page, server):
    open_page(page, server)
    assert submit(page, "#manipulate").startswith("Done")
    assert_decoded(page, "#manipulate .strip img", 6)  # the upload and 5 strengths
    page.wait_for_function("document.querySelectorAll('#manipulate .reading').length === 5")

    page.focus("#manipulate-strength")
    page.keyboard.press("ArrowRight")  # 1 -> 1.25; a keyboard step fires "change", which re-runs the request
    assert wait_outcome(page, "#manipulate").startswith("Done")
    assert "max_strength=1.25" in page.inner_text("#manipulate .request code")
    assert "strength +1.25" in page.inner_text("#manipulate .result")
    readings = page.eval_on_selector_all("#manipulate .reading", "spans => spans.map(s => s.textContent)")
    assert len(readings) == 5 and all(re.fullmatch(r"P\(Smiling\) [01]\.\d\d", text) for text in readings), readings


def test_422_is_shown_next_to_the_field(page, server, console):
    console.expect(r"status of 422")
    open_page(page, server)
    page.fill("#samples-n", "1000")
    outcome = submit(page, "#samples")
    assert "HTTP 422" in outcome
    assert "n must be between 1 and" in page.inner_text("#samples-n-error")
    assert page.get_attribute("#samples-n", "aria-invalid") == "true"
    assert "samples-n-error" in page.get_attribute("#samples-n", "aria-describedby")

    page.fill("#interpolate-steps", "99")
    assert "HTTP 422" in submit(page, "#interpolate")
    assert "less than or equal to 32" in page.inner_text("#interpolate-steps-error")


def test_progress_cancel_and_503(page, server, console):
    console.expect(r"status of 503")
    open_page(page, server)
    held = []
    page.route("**/generate/*", lambda route: held.append(route))  # never answered: the request stays in flight
    page.click("#samples form button[type=submit]")
    wait_elapsed(page, "#samples", 0.3)
    assert page.is_visible("#samples .progress .spinner")
    page.click("#samples .progress .cancel")
    assert page.inner_text("#samples .outcome") == "Cancelled."
    page.unroute("**/generate/*")

    page.route(
        "**/generate/*",
        lambda route: route.fulfill(
            status=503,
            headers={"Retry-After": "7"},
            content_type="application/json",
            body='{"detail": "the dcgan queue is full"}',
        ),
    )
    outcome = submit(page, "#samples")
    assert "HTTP 503" in outcome and "the dcgan queue is full" in outcome and "try again in 7 s" in outcome


def test_api_key(page, keyed_server, console):
    console.expect(r"status of 401")
    page.goto(keyed_server)  # the page itself is open without the key
    page.wait_for_selector("#api-key-error:has-text('needs an API key')")

    page.fill("#api-key", "wrong-key-123")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#api-key-error:has-text('refused this key')")
    assert "HTTP 401" in page.inner_text("#models .outcome")

    page.fill("#api-key", API_KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#server-status[data-state=ready]")
    assert page.evaluate("sessionStorage.getItem('facegen.apiKey')") == API_KEY
    page.fill("#samples-n", "2")
    assert submit(page, "#samples").startswith("Done")
    assert_decoded(page, "#samples .result img", 1)
    request = page.inner_text("#samples .request code")
    assert "X-API-Key: $FACEGEN_API_KEY" in request and API_KEY not in request


def test_phone_width_labels_and_keyboard(page, server):
    page.set_viewport_size({"width": 390, "height": 844})
    open_page(page, server)
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea, button')].filter(el =>
             !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim()
             && !el.querySelector('img[alt]')).map(el => el.outerHTML.slice(0, 100))"""
    )
    assert not unlabelled
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    page.focus("#samples-n")  # keyboard only: type a value, Enter submits the panel's form
    page.keyboard.press("Control+A")
    page.keyboard.type("3")
    page.keyboard.press("Enter")
    assert wait_outcome(page, "#samples").startswith("Done")
    assert_decoded(page, "#samples .result img", 1)


def test_the_page_runs_under_its_content_security_policy(page, server, console):
    """The page works with the policy enforced (open_page waits for its module scripts to have run), and the policy
    is really enforced: an injected inline script does not run."""
    response = page.goto(server)
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    open_page(page, server)
    console.expect("Content Security Policy")
    try:
        page.add_script_tag(content="window.injected = true")
    except Exception:  # noqa: BLE001 - Playwright may report the blocked script; either way it must not run
        pass
    assert page.evaluate("window.injected === undefined")


def test_copied_curl_carries_the_seed_the_server_drew_and_reproduces_the_image(page, server):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    open_page(page, server)
    page.select_option("#samples-family", "dcgan")
    page.fill("#samples-n", "2")
    assert page.input_value("#samples-seed") == "", "no seed given: the server draws one"
    # The answer the page made its image from: reading the image back with fetch(img.src) is refused by the page's
    # policy (connect-src 'self' names no blob:), and the page has no need of it.
    answers: list[bytes] = []

    def pass_on(route):  # to the server, keeping what it answered (Chromium may no longer hold a consumed body)
        answer = route.fetch()
        answers.append(answer.body())
        route.fulfill(response=answer)

    page.route(f"{server}/generate/dcgan", pass_on)
    assert submit(page, "#samples").startswith("Done")
    used = page.inner_text("#samples .seed-used")
    page.click("#samples .request .copy")
    page.wait_for_selector("#samples .request .copy:text('Copied')")
    command = page.evaluate("navigator.clipboard.readText()")
    assert f'"seed":{used}' in command, command
    body = re.search(r"-d '([^']*)'", command).group(1)
    request = urllib.request.Request(
        f"{server}/generate/dcgan", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["X-Seed"] == used
        replayed = response.read()
    assert answers == [replayed], "the copied command gives the images on screen"
    assert page.get_attribute("#samples .result img", "src").startswith("blob:")
    width, height = struct.unpack(">II", replayed[16:24])  # the PNG's IHDR
    assert decoded_sizes(page, "#samples .result img") == [[width, height]]
