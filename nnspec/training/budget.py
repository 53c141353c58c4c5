"""Will it fit? The memory a command is about to allocate, estimated from the IR (the numbers
`nnspec summary` prints), against what this process can still get, before anything is
allocated: `dense(10**12)` is refused with the numbers instead of dying in the allocator.

What a process can get is the least of the machine's available memory (/proc/meminfo
MemAvailable, else sysconf), its cgroup's remaining memory.max and its address-space limit
(ulimit -v) less what it already maps. Where none of these can be read, nothing is refused.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

# Training holds the weights, their gradients and up to two optimizer slots (adam's moments),
# and every activation of a batch with its gradient.
TRAIN_PARAM_COPIES = 4
TRAIN_ACTIVATION_COPIES = 2
# Export holds the weights in NumPy, in the torch module and in the ONNX file being built,
# and traces two samples.
EXPORT_PARAM_COPIES = 3
EXPORT_BATCH = 2


class TooBig(Exception):
    """A model or batch that would not fit in memory (a user situation, not a bug)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def check_fits(graph, *, what: str, batch: int, param_copies: int = 1,
               activation_copies: int = 1, training: bool = False) -> None:
    """Raise TooBig when `what` (a command's work on `graph` with `batch` samples at once)
    needs more memory than this process can get."""
    from nnspec.summary import summarize

    summary = summarize(graph)
    per_sample = summary.train_activation_bytes if training else \
        summary.infer_activation_bytes
    per_sample = per_sample if isinstance(per_sample, int) else 0  # symbolic dims: unknown
    params = summary.param_bytes * param_copies
    activations = per_sample * batch * activation_copies
    needed = params + activations
    available = available_bytes()
    if available is None or needed <= available:
        return
    held = " with gradients and optimizer state" if training else (
        f", held {param_copies} times" if param_copies > 1 else "")
    parts = [f"{human(params)} for the {human(summary.param_bytes)} of parameters{held}"]
    if activations:
        parts.append(f"{human(activations)} of activations for {batch} sample"
                     f"{'s' if batch != 1 else ''} at once")
    raise TooBig(f"{what} would need about {human(needed)} of memory ({', '.join(parts)}), "
                 f"but only {human(available)} is available",
                 "make the model smaller (--set NAME=VALUE)"
                 + (" or the batch (--batch)" if training and activations else ""))


def available_bytes() -> int | None:
    """What this process can still allocate, or None if nothing says."""
    limits = [v for v in (_machine_available(), _cgroup_available(), _address_space_left())
              if v is not None]
    return max(0, min(limits)) if limits else None


def human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            break
        size /= 1024
    if unit == "bytes":
        return f"{int(size)} bytes"
    return f"{size:,.1f} {unit}" if size < 1e6 else f"{n:.3g} bytes"


def _machine_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), if it has a limit."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().splitlines()[0].split(":", 2)[2]
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError, IndexError):
        return None


def _address_space_left() -> int | None:
    """RLIMIT_AS (ulimit -v) less the address space this process already maps."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return soft
