"""Keep freed memory in the process instead of handing it back to the kernel.

A training step allocates megabytes of temporaries; with glibc's defaults every large block
comes fresh from mmap and is page-faulted in again on first touch, which doubled step times
on this project's machines. Raising glibc's mmap and trim thresholds makes freed blocks
reusable. It is process-wide, so it is applied when an interpreter model is created (the
process is then a training process), and only where glibc is the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the thresholds once; False where it does not apply (not Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
