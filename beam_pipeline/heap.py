"""Keep a labeling worker's memory flat in the number of images it decodes.

With glibc's defaults, a long run's resident memory creeps up with the input size (measured: 1.75 GiB
after 1,000 images, 2.09 GiB after 10,000): every decode thread gets its own malloc arena, and freeing a
large buffer raises the threshold above which blocks are mmapped, so later batch-sized buffers land on
fragmented heaps that never shrink. Fixing the threshold at 1 MiB (batches and big decodes come from mmap
and go back on free; per-image tensors stay on the fast heap) and allowing two arenas per process keeps
it flat (1.78 GiB after 10,000) at the same speed; README "Memory" has the figures.
"""
import ctypes
import ctypes.util

MMAP_THRESHOLD_BYTES = 1 << 20
ARENAS = 2
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's mallopt parameter numbers (malloc.h)


def bound_heap() -> bool:
    """Apply the two malloc settings to this process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt, nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_ARENA_MAX, ARENAS))
