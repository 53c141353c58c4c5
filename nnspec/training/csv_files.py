"""Read the user's CSV files: a header row, feature columns and a target column, each cell
checked (a ragged row, a word among numbers, NaN, a label past any class id becomes a
`DataError` naming the file, the line and the column) and the file's size checked against
memory before it is parsed.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnspec.training.loaders import (
    DataError,
    UserData,
    class_ids,
    numeric_targets,
    sibling_hint,
    suggest,
)
from nnspec.training.npy_sizes import memory_problem


def load_csv(
    path: str | os.PathLike,
    *,
    target: str = "y",
    features: Sequence[str] | None = None,
    delimiter: str = ",",
) -> UserData:
    """Read a CSV file with a header row: numeric feature columns and one target column.

    `features` picks and orders the feature columns (default: every column but the target).
    Blank lines are skipped; line numbers in errors are the file's own, as an editor shows them.
    """
    text = read_text(path)
    header, rows, line_numbers = parse_rows(path, text, delimiter)
    if target not in header:
        raise DataError(
            f"{path}: no column named `{target}`; the columns are: {', '.join(header)}",
            hint=suggest(target, header) or 'name the target column with target="..."',
        )
    feature_names = _choose_features(path, header, target, features)
    columns = list(zip(*rows))
    x = np.empty((len(rows), len(feature_names)), dtype=np.float32)
    for j, name in enumerate(feature_names):
        cells = columns[header.index(name)]
        x[:, j] = numeric_column(path, name, cells, line_numbers)
    y, class_names = _target_column(path, target, columns[header.index(target)], line_numbers)
    return UserData(x=x, y=y, class_names=class_names)


CSV_MEMORY_FACTOR = 20  # parsed into Python rows, a CSV takes about this many times its size


def read_text(path: str | os.PathLike) -> str:
    try:
        needed = os.stat(path).st_size * CSV_MEMORY_FACTOR
        problem = memory_problem(f"reading {Path(path).name}", needed)
        if problem:
            raise DataError(f"{path}: {problem}", hint="convert it to .npz (np.savez), which "
                            "loads without parsing")
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file", hint=sibling_hint(Path(path))) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as error:  # a device or /proc file that cannot be read as text
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: is not UTF-8 text (byte {error.object[error.start]:#04x} cannot be decoded)",
            hint="save the file as UTF-8 CSV",
        ) from None



def parse_rows(
    path: str | os.PathLike, text: str, delimiter: str
) -> tuple[list[str], list[list[str]], list[int]]:
    """Split text into a header and equal-length rows, remembering each row's line number."""
    if not text.strip():
        raise DataError(f"{path}: the file is empty", hint="a CSV needs a header row and data rows")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    try:
        for cells in reader:
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if header is None:
                header = _check_header(path, [cell.strip() for cell in cells], reader.line_num)
                continue
            if len(cells) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: this row has {len(cells)} cells but the header "
                    f"names {len(header)} columns",
                    hint="every row needs one value per column",
                )
            rows.append(cells)
            line_numbers.append(reader.line_num)
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
    assert header is not None  # the text was not blank, so some row had a non-blank cell
    if not rows:
        raise DataError(f"{path}: the header is there but no data rows follow it")
    return header, rows, line_numbers


def _check_header(path: str | os.PathLike, names: list[str], line: int) -> list[str]:
    for index, name in enumerate(names, start=1):
        if not name:
            raise DataError(
                f"{path}:{line}: column {index} of the header has no name",
                hint="the first row must name every column",
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}:{line}: the header names column `{name}` twice")
        seen.add(name)
    if len(names) < 2:
        other = next((sep for sep in (";", "\t", "|") if sep in names[0]), None)
        raise DataError(
            f"{path}:{line}: the header names only one column",
            hint=f"the columns seem to be separated by {other!r}: pass delimiter={other!r}"
            if other
            else "a CSV needs feature columns and a target column",
        )
    return names


def _choose_features(
    path: str | os.PathLike, header: list[str], target: str, features: Sequence[str] | None
) -> list[str]:
    if features is None:
        chosen = [name for name in header if name != target]
    else:
        chosen = list(features)
        for name in chosen:
            if name not in header:
                raise DataError(
                    f"{path}: no column named `{name}`; the columns are: {', '.join(header)}",
                    hint=suggest(name, header),
                )
        if target in chosen:
            raise DataError(f"{path}: column `{target}` is the target and cannot be a feature")
    if not chosen:
        raise DataError(f"{path}: there are no feature columns besides the target `{target}`")
    return chosen


def numeric_column(
    path: str | os.PathLike, name: str, cells: Sequence[str], line_numbers: list[int]
) -> np.ndarray:
    """Parse one column as finite floats, pointing at the first offending cell otherwise."""
    try:
        values = np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))
    except ValueError:
        values = np.array(
            [_parse_cell(path, name, cell, line) for cell, line in zip(cells, line_numbers)]
        )
    with np.errstate(over="ignore"):
        bad = np.flatnonzero(~np.isfinite(values.astype(np.float32)))
    if bad.size:
        first = int(bad[0])
        raise DataError(
            f"{path}:{line_numbers[first]}: column `{name}` holds `{cells[first].strip()}`, "
            "which is not a finite float32 number",
            hint="remove or fill in rows with missing or infinite values",
        )
    return values


def _parse_cell(path: str | os.PathLike, name: str, cell: str, line: int) -> float:
    if not cell.strip():
        raise DataError(
            f"{path}:{line}: column `{name}` is empty",
            hint="remove or fill in rows with missing values",
        )
    try:
        return float(cell)
    except ValueError:
        raise DataError(
            f"{path}:{line}: column `{name}` holds `{cell.strip()}`, which is not a number",
            hint="feature columns must be numeric; only the target column may hold labels",
        ) from None


def _target_column(
    path: str | os.PathLike, name: str, cells: Sequence[str], line_numbers: list[int]
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Numeric targets stay numbers; a column with any non-number is a column of labels."""
    labels = [cell.strip() for cell in cells]
    for label, line in zip(labels, line_numbers):
        if not label:
            raise DataError(
                f"{path}:{line}: the target column `{name}` is empty",
                hint="every row needs a target value",
            )
    try:
        [float(label) for label in labels]
    except ValueError:
        return class_ids(np.asarray(labels))
    values = numeric_column(path, name, cells, line_numbers)
    return numeric_targets(values), None
