"""Every file nnspec writes for the user goes through here, so `-o` means the same everywhere.

- `-` is standard output.
- A device node or FIFO that already exists (`/dev/null`, `/dev/stdout`, a named pipe) is
  written to directly: a rename over it would replace the device with a regular file.
- Anything else becomes a regular file, replaced atomically: the data goes whole to a hidden
  `.NAME.partial` sibling, is flushed to disk and renamed over NAME, so a reader (or a process
  killed at any instant) sees the old file or the new one, never half of one. A failed write
  (a full disk, a read-only directory) removes its partial file.

Failures are `OutputError`s with a sentence for the user: the CLI prints it and exits 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

STDOUT = "-"


class OutputError(Exception):
    """An output that cannot be written (a user situation, not a bug)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


def write_output(target: str | os.PathLike, data: bytes | str, *,
                 make_parents: bool = False) -> str:
    """Write `data` to the user's `-o` target (a path, `-` or a device); returns how to name
    it in a message. Raises OutputError."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    name = os.fspath(target)
    if name == STDOUT:
        _write_stream(payload)
        return "standard output"
    with staged(name, make_parents=make_parents) as partial:
        partial.write_bytes(payload)
    return name


@contextlib.contextmanager
def staged(target: str | os.PathLike, *, make_parents: bool = False) -> Iterator[Path]:
    """A temporary regular file to write the output into (for writers that take a path, such
    as torch.onnx); when the block ends without an exception it becomes `target`, else it is
    removed. Raises OutputError for a target that cannot be written."""
    path = Path(_checked_name(target))
    if os.fspath(target) == STDOUT:
        path = None
    special = path is None or _is_special(path)
    folder = _folder_for(path, special, make_parents)
    try:
        partial = _fresh_partial(folder, "output" if path is None else path.name)
    except OSError as error:
        raise _explain(error, path or STDOUT) from None
    try:
        yield partial
        if special:
            _copy_into(partial, path)
        else:
            _sync(partial)
            os.replace(partial, _resolved(path))
            _fsync_dir(path.parent)
    except OSError as error:
        raise _explain(error, path or STDOUT) from None
    finally:
        partial.unlink(missing_ok=True)


def check_target(target: str | os.PathLike) -> None:
    """The checks `staged` makes of the name, made up front: a command that works a while
    before writing (export imports torch and traces) learns of an empty name or a directory
    at once. Raises OutputError."""
    name = _checked_name(target)
    if name != STDOUT and not _is_special(Path(name)):
        _folder_for(Path(name), False, False)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace the regular file `path` by `data` atomically (OSError on failure, with no
    partial file left behind); refuses to rename over anything that is not a regular file."""
    path = Path(path)
    if _is_special(path) or path.is_dir():
        raise OSError(errno.EEXIST, "exists and is not a regular file", str(path))
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        if error.filename is None:  # a failed write() names no file: name the one meant
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# ---------------------------------------------------------------- helpers


def _checked_name(target: str | os.PathLike) -> str:
    name = os.fspath(target)
    if not name.strip():
        raise OutputError("the output file name is empty", "give a file name, or - for "
                          "standard output")
    if "\0" in name:
        raise OutputError(f"{name!r}: a file name cannot contain a NUL character")
    return name


def _is_special(path: Path) -> bool:
    """True for an existing node that is neither a regular file nor a directory."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _folder_for(path: Path | None, special: bool, make_parents: bool) -> Path:
    """Where the partial file goes: beside a regular target (the rename stays on one file
    system), else the system's temporary directory."""
    if special:
        import tempfile

        return Path(tempfile.gettempdir())
    try:
        is_dir = path.is_dir()
    except OSError as error:  # a name too long for the file system, a loop of links
        raise _explain(error, path) from None
    if is_dir:
        raise OutputError(f"{path}: is a directory", "give a file name inside it")
    if make_parents:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _explain(error, path) from None
    return path.parent


def _fresh_partial(folder: Path, name: str) -> Path:
    import tempfile

    fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    os.close(fd)
    return Path(partial)


def _resolved(path: Path) -> Path:
    """A symbolic link is followed, so the file it points to is what gets replaced."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _sync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _copy_into(partial: Path, target: Path | None) -> None:
    """Stream a finished output into standard output or a device node, without replacing it."""
    if target is None:
        _write_stream(partial.read_bytes())
        return
    mode = os.stat(target).st_mode
    if stat.S_ISSOCK(mode):
        raise OutputError(f"{target}: is a socket, not a file")
    with open(partial, "rb") as source, open(target, "wb") as sink:
        while chunk := source.read(1 << 20):
            sink.write(chunk)


def _write_stream(payload: bytes) -> None:
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:  # a text-only stream (click's test runner captures bytes, though)
        sys.stdout.write(payload.decode("utf-8", errors="replace"))
    else:
        stream.write(payload)
    sys.stdout.flush()


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _explain(error: OSError, path: Path | str) -> OutputError:
    """A sentence for an OSError met while writing `path`."""
    parent = Path(path).parent if path != STDOUT else None
    if isinstance(error, NotADirectoryError) or (
            parent is not None and parent.exists() and not parent.is_dir()):
        return OutputError(f"{path}: cannot write, {parent} is not a directory")
    if isinstance(error, FileNotFoundError):
        if parent is not None and not parent.exists():
            return OutputError(f"{path}: cannot write, the directory {parent} does not exist")
        return OutputError(f"{path}: cannot write, {parent} does not take new files")
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
    reason = reasons.get(error.errno, error.strerror or str(error))
    return OutputError(f"{path}: cannot write ({reason})")
