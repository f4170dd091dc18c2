"""Giving freed heap back to the system (glibc; no effect elsewhere). Loading and quantizing free tensors of every
size as they go; glibc keeps freed blocks under its mmap threshold (which rises to the largest block freed so far,
up to 32 MB) inside the heap, so without this the resident set holds what was freed on top of what is in use."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
            return libc
    return None


def trim_heap() -> None:
    """Return the heap's free pages to the system now (malloc_trim: the top, and whole free pages inside it).
    checkpoint.load_model calls it after each block: the 213M model's load peaked 180 MB above its loaded size
    without, 64 MB (its head, packed) with."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve every allocation of `nbytes` or more with a map of its own, returned at once when freed, for the rest
    of the process (M_MMAP_THRESHOLD, which also stops glibc raising it): `cohere quantize`, whose chunk-sized
    temporaries otherwise pile up in the heap (measured: 485 MB -> 105 MB peak over the baseline for int8 on a 478
    MB checkpoint)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
