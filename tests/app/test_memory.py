"""Memory is given back after bursts of large uploads: the heap is trimmed once the last request of a burst that
decoded many pixels has been answered, and not after requests that decoded little."""

from __future__ import annotations

import asyncio
import io
import platform

from PIL import Image

from app.memory import trim_heap
from app.middleware import DECODED_PIXELS, ReturnMemory


def make(trims: list[int], min_pixels: int = 1000) -> ReturnMemory:
    async def app(scope, receive, send) -> None:
        await asyncio.sleep(0.01)  # all of a burst are in flight at once
        scope[DECODED_PIXELS] = scope["pixels"]  # as DecodeBudgets notes it

    return ReturnMemory(app, min_pixels=min_pixels, trim=lambda: trims.append(1))


def run_requests(middleware: ReturnMemory, pixels: list[int]) -> None:
    """One request per entry of ``pixels`` (what its uploads decode to), all in flight together."""

    async def burst() -> None:
        await asyncio.gather(*(middleware({"type": "http", "pixels": p}, None, None) for p in pixels))  # type: ignore[arg-type]
        if middleware.trimming is not None:
            await middleware.trimming

    asyncio.run(burst())


def test_a_burst_of_large_uploads_is_followed_by_one_trim():
    trims: list[int] = []
    middleware = make(trims)
    run_requests(middleware, [5000] * 8)
    assert trims == [1] and middleware.active == 0
    run_requests(middleware, [5000] * 3)
    assert trims == [1, 1]


def test_small_uploads_trim_only_once_they_add_up():
    trims: list[int] = []
    middleware = make(trims)
    run_requests(middleware, [300, 0, 200])
    assert trims == []
    run_requests(middleware, [600])
    assert trims == [1]


def test_the_app_notes_what_each_request_decoded(client):
    seen = []

    async def spy(scope, receive, send):
        await inner(scope, receive, send)
        seen.append(scope.get(DECODED_PIXELS))

    stack = client.app.middleware_stack
    while not isinstance(stack, ReturnMemory):
        stack = stack.app
    inner, stack.app = stack.app, spy
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (90, 60, 30)).save(buffer, format="PNG")
    files = {"images": ("a.png", buffer.getvalue(), "image/png")}
    assert client.post("/classify", files=files, data={"align": "none"}).status_code == 200
    assert seen == [300 * 200]


def test_trimming_works_on_this_c_library():
    assert trim_heap() == (platform.libc_ver()[0] == "glibc")
