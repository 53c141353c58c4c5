"""Running the real `dot`, and writing a diagram where the user asked: a file, a device, stdout.

Every failure a user can cause (no Graphviz, an unknown format, a place that cannot be
written) is a `RenderError` whose message says what to do; the CLI prints it.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from nnspec.backends.graphviz.dot import to_dot

FORMATS = ("svg", "png", "pdf", "dot")
STDOUT = "-"
INSTALL_HINT = ("install Graphviz: `apt-get install graphviz` (Debian/Ubuntu) or "
                "`brew install graphviz` (macOS)")


class RenderError(Exception):
    """Rendering could not run or be written; the message says what to do."""


DOT_SECONDS = 120  # per run of `dot`; a layout past this is reported, not waited for


def pipe(dot: str, fmt: str, seconds: float = DOT_SECONDS) -> bytes:
    """The diagram in `fmt`, drawn by the Graphviz `dot` program from DOT text.

    `dot`'s layout has been seen to spin without end on a small graph it draws at once
    when run again (in a busy test run), so a run past `seconds` is stopped and tried once
    more before it is reported."""
    import shutil
    import subprocess

    program = shutil.which("dot")
    if program is None:
        raise RenderError(f"the Graphviz `dot` program was not found; {INSTALL_HINT}; or write "
                          "DOT text (`--format dot`), which needs no Graphviz")
    for attempt in (1, 2):
        try:
            done = subprocess.run([program, "-Kdot", f"-T{fmt}"], input=dot.encode("utf-8"),
                                  capture_output=True, timeout=seconds, check=False)
            break
        except subprocess.TimeoutExpired:
            if attempt == 2:
                raise RenderError(f"`dot` did not finish drawing in {seconds:g} s (twice); "
                                  "fold blocks with --depth N, or write DOT text with "
                                  "--format dot") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"`dot` failed: {message or f'exit status {done.returncode}'}")
    return done.stdout


def _with_dpi(dot: str, dpi: int) -> str:
    """PNG only: more pixels per inch, so small shape labels stay sharp."""
    header, rest = dot.split("\n", 1)
    return f"{header}\n  graph [dpi={dpi}];\n{rest}"


def format_for(out_path, fmt: str | None = None) -> str:
    """The output format: `fmt` if given, else the file's suffix (`.gv` is DOT too).

    Standard output (`-`) and devices (`/dev/stdout`) have no suffix and get SVG, as when
    no output is named.
    """
    name = str(out_path)
    if not name:
        raise RenderError("the output name is empty; name a file, or `-` for stdout")
    if fmt is None and (name == STDOUT or _is_device(name)):
        return "svg"
    fmt = (fmt or Path(out_path).suffix.lstrip(".")).lower()
    fmt = "dot" if fmt == "gv" else fmt
    if fmt not in FORMATS:
        raise RenderError(f"cannot write {out_path} as {fmt or 'a file without a suffix'}; "
                          f"use a .svg, .png, .pdf or .dot file or pick a format "
                          f"({', '.join(FORMATS)})")
    return fmt


def render(spec, out_path, fmt: str | None = None, **options) -> Path:
    """Write the diagram of a `Spec` (or `Graph`) to `out_path` (`-`: stdout); returns the path.

    The format follows the suffix unless `fmt` is given; `options` are `to_dot`'s. DOT
    needs no Graphviz binary; svg, png and pdf run the real `dot` and raise `RenderError`
    with the install command when it is missing.
    """
    fmt = format_for(out_path, fmt)
    dot = to_dot(spec, **options)
    data = dot.encode("utf-8") if fmt == "dot" else pipe(
        _with_dpi(dot, 144) if fmt == "png" else dot, fmt)
    write_output(data, out_path)
    return Path(out_path)


def render_svg(spec, **options) -> str:
    """SVG text of the diagram (`Spec._repr_svg_` shows it in notebooks)."""
    return pipe(to_dot(spec, **options), "svg").decode("utf-8")


# ---- writing the bytes -----------------------------------------------------------------------


def write_output(data: bytes, out_path) -> None:
    """Write `data` to stdout (`-`), into a device or pipe as it is, or to a regular file.

    A regular file is written beside itself and renamed into place, so a failed write never
    leaves half a diagram; anything else (`/dev/null`, a named pipe) is written into and
    never replaced.
    """
    name = str(out_path)
    if name == STDOUT:
        _write_stdout(data)
        return
    if not name:
        raise RenderError("the output name is empty; name a file, or `-` for stdout")
    try:
        if _is_device(name):
            with open(name, "wb") as stream:
                stream.write(data)
            return
        path = Path(os.path.realpath(name))  # through a symlink, to the file it names
        if path.is_dir():
            raise RenderError(f"cannot write {name}: it is a folder")
        _make_parent(path.parent, name)
        _replace(path, data, name)
    except (OSError, ValueError) as err:  # ValueError: a NUL character in the name
        raise RenderError(f"cannot write {name}: {getattr(err, 'strerror', None) or err}") from None


def _is_device(name: str) -> bool:
    """An existing output that is neither a regular file nor a folder (`/dev/null`, a pipe)."""
    try:
        mode = os.stat(name).st_mode
    except (OSError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _write_stdout(data: bytes) -> None:
    sys.stdout.flush()
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # the reader stopped early (`| head`); point stdout at nothing so exit stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise RenderError("stdout was closed before the whole diagram was written") from None


def _make_parent(parent: Path, name: str) -> None:
    """Create the missing folders above the output; say which part is a file when one is."""
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise RenderError(f"cannot write {name}: {folder} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RenderError(f"cannot write {name}: cannot create {parent} "
                          f"({err.strerror or err})") from None


def _replace(path: Path, data: bytes, name: str) -> None:
    partial = path.with_name(f".{path.name[:200]}.{os.getpid()}.partial")
    try:  # 0o666 minus the umask: the permissions a plain `open(path, "wb")` would give
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise RenderError(f"cannot write {name}: cannot create a file in {path.parent} "
                          f"({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
