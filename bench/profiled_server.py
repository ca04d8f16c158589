"""``python -m bench.profiled_server app.main:app --port P ...``: uvicorn's command line, with a deterministic
profiler on the event loop's thread that a benchmark switches on and off by signal (see :mod:`bench.profile`).

cProfile with the thread's CPU clock (``time.thread_time``): a function's figure is the CPU the event loop spent in
it, however little of a shared core the server got (a wall clock would count the time it waited for the core). Time
in C (uvloop's I/O, httptools' parser, system calls) counts to the builtin that ran it, ``run_until_complete``.

* ``SIGUSR1``: start profiling (the handler runs on the main thread, uvicorn's event loop);
* ``SIGUSR2``: stop, and write the statistics (``pstats``) to ``$FACEGEN_PROFILE_OUT``.
"""

from __future__ import annotations

import cProfile
import os
import signal
import time
from types import FrameType

from uvicorn.main import main as uvicorn_cli

OUTPUT = "FACEGEN_PROFILE_OUT"

profiler = cProfile.Profile(time.thread_time)


def start(signum: int, frame: FrameType | None) -> None:
    profiler.enable()


def stop(signum: int, frame: FrameType | None) -> None:
    profiler.disable()
    profiler.dump_stats(os.environ[OUTPUT])


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    uvicorn_cli()
