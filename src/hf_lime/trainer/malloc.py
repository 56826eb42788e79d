"""Keep freed memory in the process while training on a CPU (glibc only).

A training episode allocates and frees the same large buffers every step (the editor networks' weight gradients,
vocabulary logits). glibc serves allocations above its mmap threshold with fresh pages and gives trimmed memory
back to the operating system, so every step pays the page faults of touching that memory again. Raising the
thresholds keeps freed memory for reuse. Measured in `benchmarks/bench_episode.py` (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# the largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes: never trim in practice


def keep_freed_memory() -> bool:
    """
    Ask glibc to keep freed memory for reuse: allocations up to 32 MiB come from the heap, which is never trimmed.

    Returns:
        `bool`: whether the settings were applied (`False` off Linux or without glibc; nothing changes then).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trimmed = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    return bool(trimmed and mapped)
