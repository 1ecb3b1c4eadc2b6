"""Keep a labeling worker's memory flat in the number of images it labels.

Decoding and batching allocate and free large buffers all the time. With glibc's defaults each thread
gets its own malloc arena, and the arenas keep the freed space as fragments between live blocks, where
nothing gives it back: resident memory grew with the input, much of it freed but held. Two arenas per
process, and handing the heap's free pages back to the OS every few seconds, keep it flat (with fixed batch
sizes too) at the same speed. Returning each large buffer on free instead (a fixed mmap threshold) was flat
too but slower: every activation buffer became a fresh, zero-filled mapping. The figures: BENCHMARKS.md
("Memory").
"""
import ctypes
import ctypes.util
import math
import time

ARENAS = 2
TRIM_EVERY_SECONDS = 2.0
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    """The C library where it has glibc's malloc tuning (musl and macOS do not: nothing to tune there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_libc = _glibc()
_last_trim = [-math.inf]  # shared by a process's bundle threads; a race costs at most one extra trim


def bound_heap() -> bool:
    """Limit this process to ARENAS malloc arenas from now on; False where the C library is not glibc.

    Arenas that exist already stay (glibc never retires one): call it before threads start.
    """
    return bool(_libc and _libc.mallopt(_M_ARENA_MAX, ARENAS))


def trim_heap() -> bool:
    """Give the heap's free pages back to the OS, at most every TRIM_EVERY_SECONDS: cheap to call often."""
    now = time.monotonic()
    if _libc is None or now - _last_trim[0] < TRIM_EVERY_SECONDS:
        return False
    _last_trim[0] = now
    _libc.malloc_trim(0)
    return True
