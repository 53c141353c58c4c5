"""How a training process allocates: freed memory kept in the process, and ordinary pages.

A training step allocates megabytes of temporaries; with glibc's defaults every large block
comes fresh from mmap and is page-faulted in again on first touch, which doubled step times
on this project's machines. Raising glibc's mmap and trim thresholds makes freed blocks
reusable. It is process-wide, so it is applied when an interpreter model is created (the
process is then a training process), and only where glibc is the allocator.

And keep NumPy's arrays on ordinary pages (``small_pages``): NumPy asks the kernel for
transparent huge pages for every array of 4 MB and more, whose 2 MB of physically
contiguous memory line up a large map's channels, a power of two of bytes apart, on the
same few sets of the core's cache. A convolution reading its maps in place then misses at
every channel: 64 -> 32 channels on 128x128 maps, batch 2, forward 4.2 ms on ordinary
pages and 6.9-9.2 ms on huge ones (torch 3.4); a U-Net's step on those maps 1.20x torch's
time against 1.06x. Whether the kernel has huge pages to give varies from run to run, and
so did these times. No workload measured slower on ordinary pages (ResNets, GPT, ViT,
GRU, LSTM, MobileNet, U-Nets, within 1%). Torch allocates without asking for them.
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


@functools.cache
def small_pages() -> bool:
    """Stop NumPy asking for transparent huge pages for new arrays (its madvise, a runtime
    switch of ``NUMPY_MADVISE_HUGEPAGE``); False where this NumPy has no such switch."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        return False
    switch(False)
    return True
