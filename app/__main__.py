"""``python -m app``: serve ``app.main:app`` with uvicorn, and exit 0 after a graceful shutdown.

On SIGTERM uvicorn stops accepting, lets requests in flight finish (up to ``--timeout-graceful-shutdown``), runs the
lifespan's shutdown (the batcher answers what is still queued), then re-raises the signal for the handler that was
installed before it started. Ours turns that into exit status 0, so an orchestrator sees a clean stop rather than a
process killed by a signal.

Connections are bounded here, at the server (:mod:`app.protocol`): idle ones close after ``FACEGEN_KEEP_ALIVE_S``,
request headers must arrive within ``FACEGEN_HEADER_TIMEOUT_S``, and past ``FACEGEN_MAX_CONNECTIONS`` open
connections or requests the answer is a JSON 503 with Retry-After (``/health`` excepted). Slow bodies are the app's
to refuse (``FACEGEN_BODY_TIMEOUT_S``, ``FACEGEN_BODY_DEADLINE_S``).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import signal
import sys

import uvicorn
from pydantic import ValidationError

from app.protocol import bounded_protocol
from app.services.device import DeviceError, resolve_device
from app.settings import Settings


def limit_malloc_arenas(count: int = 2) -> None:
    """glibc gives threads their own heaps ("arenas", up to 8 per core) and keeps what they freed; with the request
    threads and the forward thread all allocating images of varying sizes, the server's RSS then creeps up long after
    warm-up. Two arenas roughly halved the growth in the soak (``python -m bench.soak``). Must run before any thread
    starts; not glibc (musl, macOS): nothing to do."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, count)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        help="seconds requests in flight get to finish after SIGTERM",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
        resolve_device(settings.device)  # a device that cannot be used stops here, with the reason and no traceback
    except (ValidationError, DeviceError) as error:
        parser.exit(2, f"facegen: cannot start: {error}\n")
    if "MALLOC_ARENA_MAX" not in os.environ:
        limit_malloc_arenas()
    # oneDNN keeps the kernels it builds for every input shape it meets, up to 1,024 by default. Requests of any
    # size batch together, so shapes vary without end, and that cache (with its scratch memory) was what grew the
    # server's RSS by a quarter under the soak; 32 shapes keep the common ones hot at no measured cost.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        http=bounded_protocol(
            keep_alive_s=settings.keep_alive_s,
            header_timeout_s=settings.header_timeout_s,
            max_connections=settings.max_connections,
        ),
        timeout_keep_alive=math.ceil(settings.keep_alive_s),  # a backstop: the protocol closes idle ones itself
    )


if __name__ == "__main__":
    main()
