"""What a NumPy file says it holds, checked before np.load believes it.

np.load allocates the array its header declares before reading a byte of data, so a 100-byte
.npy whose header claims 1e11 rows asks for 400 GB. Each header (of an .npy, or of every
member of an .npz) is read here with `ast.literal_eval`, as NumPy reads it, and its size is
compared with the bytes that are really there and with the memory this process can get.
"""

from __future__ import annotations

import ast
import math
import zipfile
from pathlib import Path

import numpy as np

from nnspec.training.budget import available_bytes, human

MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 20  # NumPy's own headers are a few hundred bytes


def size_problem(path: str | Path) -> str | None:
    """Why the .npy/.npz at `path` cannot be loaded as declared, or None if it can."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC))
        if head.startswith(MAGIC):
            handle.seek(0)
            return _member_problem("the array", handle, path.stat().st_size)
    with zipfile.ZipFile(path) as archive:
        total = 0
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                name = f"`{info.filename[:-4]}`"
                problem = _member_problem(name, member, info.file_size)
            if problem:
                return problem
            total += info.file_size
        return memory_problem("loading the arrays", total)


def _member_problem(name: str, stream, size: int) -> str | None:
    """Compare one .npy header's declared data size with the `size` bytes of its file."""
    declared = _declared(stream)
    if declared is None:  # not an array at all: np.load says so in its own words
        return None
    if isinstance(declared, str):
        return f"{name} has a damaged header ({declared})"
    offset, shape, nbytes = declared
    if nbytes > size - offset:
        return (f"the header of {name} declares shape {list(shape)} ({human(nbytes)}), but "
                f"the file holds only {human(max(0, size - offset))} of data")
    return memory_problem(f"loading {name}", nbytes)


def memory_problem(what: str, nbytes: int) -> str | None:
    """`what` (taking `nbytes`) would not fit in the memory available: say so, else None."""
    available = available_bytes()
    if available is not None and nbytes > available:
        return f"{what} takes {human(nbytes)} of memory, but only {human(available)} is available"
    return None


def _declared(stream) -> tuple[int, tuple[int, ...], int] | str | None:
    """(header length, shape, data bytes) of an .npy stream, what is wrong with its header,
    or None when it is no .npy."""
    prefix = stream.read(8)
    if len(prefix) < 8 or not prefix.startswith(MAGIC):
        return None
    major = prefix[6]
    width = 2 if major == 1 else 4
    length = int.from_bytes(stream.read(width), "little")
    if length > MAX_HEADER:
        return f"a header of {length:,} bytes"
    try:
        text = stream.read(length).decode("utf-8" if major >= 3 else "latin1")
        header = ast.literal_eval(text)
        shape = tuple(header["shape"])
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            return f"shape {shape!r}"
        itemsize = np.dtype(header["descr"]).itemsize
    except (ValueError, SyntaxError, TypeError, KeyError, UnicodeDecodeError,
            MemoryError, RecursionError) as error:
        return str(error) or type(error).__name__
    return 8 + width + length, shape, math.prod(shape) * itemsize
