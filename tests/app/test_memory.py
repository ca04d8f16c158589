"""Memory is given back after bursts of large uploads: the heap is trimmed once the last one has been answered."""

from __future__ import annotations

import asyncio

from app.memory import trim_heap
from app.middleware import ReturnMemory


def run_requests(middleware: ReturnMemory, lengths: list[int]) -> None:
    """``lengths``: Content-Length of each request, all in flight together."""

    async def one(length: int) -> None:
        scope = {"type": "http", "headers": [(b"content-length", str(length).encode())]}
        await middleware(scope, None, None)  # type: ignore[arg-type]

    async def burst() -> None:
        await asyncio.gather(*(one(length) for length in lengths))
        if middleware.trimming is not None:
            await middleware.trimming

    asyncio.run(burst())


def make(trims: list[int], min_bytes: int = 1000) -> ReturnMemory:
    async def app(scope, receive, send) -> None:
        await asyncio.sleep(0.01)  # all of a burst are in flight at once

    return ReturnMemory(app, min_bytes=min_bytes, trim=lambda: trims.append(1))


def test_a_burst_of_large_requests_is_followed_by_one_trim():
    trims: list[int] = []
    middleware = make(trims)
    run_requests(middleware, [5000] * 8)
    assert trims == [1] and middleware.active == 0
    run_requests(middleware, [5000] * 3)
    assert trims == [1, 1]


def test_small_requests_trim_nothing():
    trims: list[int] = []
    run_requests(make(trims), [10, 999, 0])
    assert trims == []


def test_trimming_works_on_this_c_library():
    import platform

    assert trim_heap() == (platform.libc_ver()[0] == "glibc")
