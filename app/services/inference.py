"""The single seam every model call goes through.

Inference runs on one dedicated worker thread: the event loop stays free for I/O, and torch's intra-op threads
already use every core, so running two forwards at once would only make both slower. A request batcher can later
replace :class:`InferenceRunner` without touching the routes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


class InferenceTimeout(RuntimeError):
    pass


class InferenceRunner:
    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="facegen-inference")

    async def run(self, function: Callable[..., T], *args, **kwargs) -> T:
        """Run ``function(*args, **kwargs)`` under ``torch.inference_mode`` off the event loop."""

        def call() -> T:
            with torch.inference_mode():
                return function(*args, **kwargs)

        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise InferenceTimeout(f"inference took longer than {self.timeout_s:g} s") from None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
