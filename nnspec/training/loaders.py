"""Read the user's own data files (.npz, .npy here; CSV in csv_files.py), split them, and cut
them into minibatches.

A user's data file is user input like their spec: every way it can be malformed (missing,
empty, ragged, non-numeric, NaN, wrong keys) becomes a `DataError` whose message names the
file, the line or array, and the column, so the CLI prints a sentence instead of a traceback.

Dtype conventions, shared with the built-in data sets: features are float32 (integer
features, e.g. token ids, stay int64); targets are int64 class ids when every target is an
integer or the target column holds strings (mapped to ids in sorted order), float32 otherwise.
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnspec.training.npy_sizes import size_problem


class DataError(Exception):
    """A problem with the user's data, told as a sentence plus an optional hint for the fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True, eq=False)
class UserData:
    """Arrays read from a user file; the validation split is present only if the file had one."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None


def suggest(word: str, candidates: Sequence[str]) -> str | None:
    """A "did you mean" hint for a misspelt name, or None when nothing is close."""
    by_lower = {candidate.lower(): candidate for candidate in sorted(set(candidates))}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"did you mean `{by_lower[close[0]]}`?" if close else None


def class_ids(labels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    names, ids = np.unique(labels, return_inverse=True)
    return ids.astype(np.int64).reshape(labels.shape), tuple(str(name) for name in names)


EXACT_INTEGERS = 2**53  # whole numbers beyond this are not ids; float64 cannot tell them apart


def numeric_targets(values: np.ndarray) -> np.ndarray:
    """Whole numbers become int64 ids (checked before the cast, which would wrap 1e23 round
    to a negative number); anything else stays a float target."""
    if np.all(values == np.round(values)) and np.all(np.abs(values) < EXACT_INTEGERS):
        return values.astype(np.int64)
    return values.astype(np.float32)


def sibling_hint(path: Path) -> str | None:
    """Suggest a file with a similar name in the same folder: typos in paths are common."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        siblings = [entry.name for entry in folder.iterdir() if entry.is_file()]
    except OSError:
        return None
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    return f"did you mean `{folder / close[0]}`?" if close else None


# ---------------------------------------------------------------- NumPy files


def load_npz(path: str | os.PathLike) -> UserData:
    """Read arrays `x`, `y` (and optionally `x_val`, `y_val`) from an .npz archive."""
    archive = _open_numpy(path)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds a single array, not an .npz archive of `x` and `y`",
            hint="save training data with np.savez(path, x=features, y=targets)",
        )
    with archive:
        present = list(archive.files)
        for key in ("x", "y"):
            if key not in present:
                raise DataError(
                    f"{path}: has no array named `{key}`; it holds: "
                    + (", ".join(f"`{name}`" for name in present) or "nothing"),
                    hint=suggest(key, present)
                    or "save it with np.savez(path, x=features, y=targets)",
                )
        if ("x_val" in present) != ("y_val" in present):
            given, missing = ("x_val", "y_val") if "x_val" in present else ("y_val", "x_val")
            raise DataError(f"{path}: has `{given}` but not `{missing}`; give both or neither")
        arrays = {key: _read_member(path, archive, key) for key in present if key in _NPZ_KEYS}
    x = _features(path, "x", arrays["x"])
    x_val = _features(path, "x_val", arrays["x_val"]) if "x_val" in arrays else None
    y, y_val, class_names = _npz_targets(path, arrays["y"], arrays.get("y_val"))
    _check_pair(path, "x", x, "y", y)
    if x_val is not None and y_val is not None:
        _check_pair(path, "x_val", x_val, "y_val", y_val)
        if x_val.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: samples in `x` have shape {x.shape[1:]} but samples in `x_val` "
                f"have shape {x_val.shape[1:]}"
            )
    return UserData(x=x, y=y, x_val=x_val, y_val=y_val, class_names=class_names)


_NPZ_KEYS = ("x", "y", "x_val", "y_val")


def load_named_npz(path: str | os.PathLike, inputs: Sequence[str], targets: Sequence[str]
                   ) -> UserData:
    """Arrays named like a model's inputs and its loss's targets (and optionally each with
    `_val` for a split of its own), as structured arrays: `x` with a field per input, `y`
    with a field per target, so shuffling and batching keep the samples together."""
    archive = _open_numpy(path)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive of named arrays",
                        hint="save it with np.savez(path, " + ", ".join(
                            f"{n}=..." for n in (*inputs, *targets)) + ")")
    with archive:
        present = list(archive.files)
        for key in (*inputs, *targets):
            if key not in present:
                raise DataError(
                    f"{path}: has no array named `{key}` (the model's inputs and the loss's "
                    f"targets are read by name); it holds: "
                    + (", ".join(f"`{name}`" for name in present) or "nothing"),
                    hint=suggest(key, present) or f"save it with np.savez(path, {key}=...)")
        has_val = [f"{key}_val" in present for key in (*inputs, *targets)]
        if any(has_val) and not all(has_val):
            raise DataError(f"{path}: some arrays have a `_val` split and some do not; give "
                            "every input and target one, or none")
        read = {key: _read_member(path, archive, key) for key in present
                if key.removesuffix("_val") in (*inputs, *targets)}
    def part(suffix: str):
        x = {k: _features(path, k + suffix, read[k + suffix]) for k in inputs}
        y = {k: _numeric_array(path, k + suffix, read[k + suffix]) for k in targets}
        counts = {len(a) for a in (*x.values(), *y.values())}
        if len(counts) > 1:
            raise DataError(f"{path}: the arrays{' of the split' if suffix else ''} have "
                            f"different numbers of samples: {sorted(counts)}",
                            hint="the first axis of every array counts samples")
        return named_arrays(x), named_arrays(y)

    x, y = part("")
    x_val, y_val = part("_val") if all(has_val) else (None, None)
    return UserData(x=x, y=y, x_val=x_val, y_val=y_val)


def named_arrays(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Several arrays with one first axis as one structured array, a field per name (an
    empty dict gives zero-width records)."""
    count = len(next(iter(arrays.values()))) if arrays else 0
    out = np.empty(count, [(name, a.dtype, a.shape[1:]) for name, a in arrays.items()])
    for name, array in arrays.items():
        out[name] = array
    return out


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Read prediction inputs from an .npy file; the first axis counts samples."""
    array = _open_numpy(path)
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
        raise DataError(
            f"{path}: is an .npz archive, but prediction inputs are one array in an .npy file",
            hint="save the inputs with np.save(path, inputs)",
        )
    return _features(path, "the array", array)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"


def _open_numpy(path: str | os.PathLike):
    """np.load, after checking the file's first bytes: np.load takes anything else for a pickle."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_NPY_MAGIC))
        if not head:
            raise DataError(f"{path}: the file is empty")
        if head.startswith(_PICKLE_PROTOCOL):
            raise DataError(
                f"{path}: holds Python objects (a pickle), which nnspec does not load",
                hint="save plain numeric arrays with np.save or np.savez",
            )
        if not head.startswith((_NPY_MAGIC, _ZIP_MAGIC)):
            raise DataError(
                f"{path}: is not a NumPy .npy/.npz file",
                hint="write it with np.save or np.savez; for text data use csv(...)",
            )
        problem = size_problem(path)  # np.load allocates what the header claims
        if problem:
            raise DataError(f"{path}: {problem}",
                            hint="write it again with np.save or np.savez, or use less data")
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file", hint=sibling_hint(Path(path))) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if "allow_pickle" in str(error):
            raise DataError(
                f"{path}: holds Python objects, which nnspec does not load",
                hint="save plain numeric arrays with np.save or np.savez",
            ) from None
        raise DataError(
            f"{path}: is a damaged NumPy file ({error})",
            hint="write it again with np.save or np.savez",
        ) from None


def _read_member(path: str | os.PathLike, archive, key: str) -> np.ndarray:
    try:
        member = archive[key]
        if not isinstance(member, np.ndarray):  # np.load hands back raw bytes of a non-.npy member
            raise DataError(f"{path}: member `{key}` of the archive is not a NumPy array")
        return member
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(
                f"{path}: array `{key}` holds Python objects, which nnspec does not load",
                hint="store numbers (or, for `y`, strings) rather than object arrays",
            ) from None
        raise DataError(f"{path}: array `{key}` cannot be read ({error})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path}: array `{key}` is damaged ({error})") from None


def _features(path: str | os.PathLike, key: str, array: np.ndarray) -> np.ndarray:
    """Features as float32 (integers stay int64 for token ids), at least one axis of samples."""
    name = key if key.startswith("the ") else f"`{key}`"
    if array.ndim == 0:
        raise DataError(f"{path}: {name} is a single number, not an array of samples")
    if array.shape[0] == 0:
        raise DataError(f"{path}: {name} has no samples")
    if array.dtype.kind in "iu":
        features = array.astype(np.int64)
    elif array.dtype.kind in "fb":
        features = array.astype(np.float32)
        _check_finite(path, name, features)
    else:
        raise DataError(
            f"{path}: {name} has dtype {array.dtype}, but features must be numbers",
            hint="convert it with array.astype(np.float32) before saving",
        )
    return features.reshape(-1, 1) if features.ndim == 1 else features


def _check_finite(path: str | os.PathLike, name: str, array: np.ndarray) -> None:
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        others = f", and {len(bad) - 1} more non-finite values" if len(bad) > 1 else ""
        raise DataError(
            f"{path}: {name} holds {array[index]} at index {list(index)}{others}",
            hint="remove or fill in samples with missing or infinite values",
        )


def _npz_targets(
    path: str | os.PathLike, y: np.ndarray, y_val: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """Targets of train and validation together, so string labels share one set of ids."""
    if y.dtype.kind in "US" or (y_val is not None and y_val.dtype.kind in "US"):
        if y_val is None:
            ids, names = class_ids(y)
            return ids, None, names
        both, names = class_ids(np.concatenate([y.astype(str).ravel(), y_val.astype(str).ravel()]))
        return both[: y.size].reshape(y.shape), both[y.size :].reshape(y_val.shape), names
    targets = _numeric_array(path, "y", y)
    return targets, (None if y_val is None else _numeric_array(path, "y_val", y_val)), None


def _numeric_array(path: str | os.PathLike, key: str, array: np.ndarray) -> np.ndarray:
    if array.ndim == 0:
        raise DataError(f"{path}: `{key}` is a single number, not an array of targets")
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind != "f":
        raise DataError(
            f"{path}: `{key}` has dtype {array.dtype}, but targets must be numbers or labels"
        )
    _check_finite(path, f"`{key}`", array)
    return numeric_targets(array.astype(np.float64))


def _check_pair(
    path: str | os.PathLike, x_key: str, x: np.ndarray, y_key: str, y: np.ndarray
) -> None:
    if len(x) != len(y):
        raise DataError(
            f"{path}: `{x_key}` has {len(x)} samples but `{y_key}` has {len(y)}",
            hint="the first axis of both arrays counts samples",
        )


# ---------------------------------------------------------------- splitting and batching


def train_val_split(
    x: np.ndarray, y: np.ndarray, val: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out `val` samples (a fraction in (0, 1) or a count) after a seeded shuffle.

    Returns (x_train, y_train, x_val, y_val); the same seed always holds out the same samples.
    """
    if len(x) != len(y):
        raise DataError(f"features have {len(x)} samples but targets have {len(y)}")
    n = len(x)
    if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
        raise DataError(f"the validation split must be a fraction or a count, not {val!r}")
    if isinstance(val, (float, np.floating)):
        if not 0.0 < val < 1.0:
            raise DataError(f"a validation fraction must lie strictly between 0 and 1, not {val}")
        n_val = max(1, round(n * float(val)))
    else:
        n_val = int(val)
    if not 0 < n_val < n:
        raise DataError(
            f"cannot hold out {n_val} of {n} samples for validation",
            hint="both the training and the validation part need at least one sample",
        )
    order = np.random.default_rng(seed).permutation(n)
    held_out, kept = order[:n_val], order[n_val:]
    return x[kept], y[kept], x[held_out], y[held_out]


def iterate_minibatches(
    x: np.ndarray,
    y: np.ndarray,
    batch: int,
    rng: np.random.Generator,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) batches as contiguous views, in an order fixed by the generator's state.

    Shuffling gathers the epoch's permutation once, so every batch is a contiguous slice
    rather than a fancy-indexed copy. `drop_last` skips a short final batch, for callers
    that preallocate buffers for one batch shape.
    """
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if shuffle:
        order = rng.permutation(len(x))
        x, y = x[order], y[order]
    for start in range(0, len(x), batch):
        stop = start + batch
        if drop_last and stop > len(x):
            return
        yield x[start:stop], y[start:stop]
