"""Giving freed heap memory back to the system.

glibc keeps what a process frees for its next allocations: after a burst of large uploads (decoded photos, their
tensors, the request bodies), the server's RSS stays near the burst's peak although Python freed it all. Its
``malloc_trim`` releases the free pages of every arena at once; :class:`app.middleware.ReturnMemory` calls it when
the last large request of a burst has been answered.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger("facegen")


def _load_malloc_trim() -> object | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def trim_heap() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot (not glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)  # type: ignore[operator]
    return True
