"""From a `data` setting to arrays that fit the model, checked before the first step.

A `data` setting (the train section's line, or `--data` on the command line) names a
built-in set or a file: `csv("f.csv", target = "y")`, `npz("f.npz")`,
`npy("x.npy", target = "y.npy")`. Every problem becomes a `SpecError` whose diagnostic
points at the spec's `data` line (no span for `--data`), with a note at the model's
`input` or `loss` line when the arrays do not fit them:

    E216  the data cannot be loaded (missing or malformed file, bad option)
    E217  the samples do not fit the model's input (shape, dtype, token range)
    E218  the targets do not fit the loss (shape, dtype, labels out of range)
    E219  a metric cannot be computed on these targets

Relative file names in a spec are relative to the spec's folder; on the command line,
to the current directory.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np

from nnspec.diagnostics import Diagnostic, Note, Span, SpecError
from nnspec.ir import ops
from nnspec.ir.train import Setting
from nnspec.training import csv_files, loaders
from nnspec.training.datasets import DATASETS, TASKS, Dataset, load_dataset
from nnspec.training.loaders import DataError
from nnspec.training.metrics import MetricError, check_metric

DATA_SEED = 0  # the data and its split do not depend on --seed: runs compare on the same samples


def from_user_data(
    data: loaders.UserData,
    *,
    task: str | None = None,
    val: float = 0.2,
    seed: int = 0,
    name: str = "user data",
) -> Dataset:
    """Turn arrays read from a user's file into a Dataset, holding out `val` if it had no split.

    The task follows the targets unless given: integer ids mean classification (per position
    when each target is a sequence), floats mean regression. Regression targets of shape (N,)
    become (N, 1) to match a `dense(1)` output.
    """
    if data.x_val is not None and data.y_val is not None:
        x_train, y_train, x_val, y_val = data.x, data.y, data.x_val, data.y_val
    else:
        x_train, y_train, x_val, y_val = loaders.train_val_split(data.x, data.y, val, seed)
    if task is None:
        is_ids = y_train.dtype == np.int64 and y_val.dtype == np.int64
        task = (
            "regression"
            if not is_ids
            else ("classification" if y_train.ndim == 1 else "sequence_classification")
        )
    if task not in TASKS:
        raise DataError(f"unknown task `{task}`", hint=loaders.suggest(task, TASKS))
    num_classes = None
    if task == "regression":
        y_train, y_val = (_as_regression_targets(y) for y in (y_train, y_val))
    else:
        y_train, y_val = (_as_class_ids(name, y) for y in (y_train, y_val))
        num_classes = _count_classes(name, y_train, y_val, data.class_names)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        task=task,
        num_classes=num_classes,
        input_shape=x_train.shape[1:],
        description=f"{name}: {len(x_train)} training and {len(x_val)} validation samples",
        attribution="supplied by the user",
        name=name,
        class_names=data.class_names,
    )


def _as_regression_targets(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float32)
    return y.reshape(-1, 1) if y.ndim == 1 else y


def _as_class_ids(name: str, y: np.ndarray) -> np.ndarray:
    if y.dtype != np.int64:
        if not np.all(y == np.round(y)):
            raise DataError(
                f"{name}: classification needs integer class ids, but the targets hold fractions",
                hint="use a regression loss such as mse, or store class ids 0..K-1",
            )
        y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(
            f"{name}: class ids must be 0 or more, but the targets hold {int(y.min())}",
            hint="number the classes 0..K-1, or store the labels as strings",
        )
    return y


def _count_classes(
    name: str, y_train: np.ndarray, y_val: np.ndarray, class_names: tuple[str, ...] | None
) -> int:
    seen = int(max(y_train.max(initial=0), y_val.max(initial=0))) + 1
    return max(seen, len(class_names)) if class_names else seen


def data_error(code: str, message: str, span: Span | None, hint: str | None = None,
               notes: tuple[Note, ...] = ()) -> SpecError:
    return SpecError([Diagnostic(code, message, span, hint, "error", notes)])


# ---------------------------------------------------------------- loading


def load_data(setting: Setting, *, base_dir: Path, val: float | None, loss: str,
              names: tuple[list[str], list[str]] | None = None) -> tuple[Dataset, str]:
    """The data set a setting names, and where its validation samples come from; `val` (if
    given) is the held-out fraction for data without a split of its own. A user file's
    targets are class ids only for cross_entropy; for other losses they are numbers to
    regress on, whatever they look like. `names`: the model's inputs and the loss's targets
    when an .npz is read by name (several of either). SpecError: E216."""
    try:
        if names is not None and setting.name == "npz":
            return _load_named(setting, base_dir, val, *names)
        return _load(setting, base_dir, val, None if loss in ops.CLASS_INDEX_LOSSES else "regression")
    except DataError as error:
        raise data_error("E216", error.message, setting.span, error.hint) from None


def read_by_name(graph, train) -> tuple[list[str], list[str]] | None:
    """The input and target names an .npz is read by, when the model takes several inputs
    or its loss several targets (or none); None for the classic `x` and `y`."""
    inputs, targets = list(graph.inputs), list(train.targets)
    return None if len(inputs) == 1 and len(targets) == 1 else (inputs, targets)


def _load_named(setting: Setting, base_dir: Path, val: float | None, inputs: list[str],
                targets: list[str]) -> tuple[Dataset, str]:
    args = dict(setting.args)
    path = base_dir / args.pop("path")
    _check_options("npz", args, loaders.load_npz)
    data = loaders.load_named_npz(path, inputs, targets)
    if data.x_val is not None:
        parts, split = (data.x, data.y, data.x_val, data.y_val), "the file's own split"
    else:
        parts = loaders.train_val_split(data.x, data.y, 0.2 if val is None else val, DATA_SEED)
        split = None
    x_train, y_train, x_val, y_val = parts
    dataset = Dataset(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, task="named",
                      num_classes=None, input_shape=(), attribution="supplied by the user",
                      description=f"{path.name}: {len(x_train)} training and {len(x_val)} "
                      "validation samples", name=path.name)
    return dataset, split or _held_out(dataset)


def _load(setting: Setting, base_dir: Path, val: float | None, task: str | None
          ) -> tuple[Dataset, str]:
    args = dict(setting.args)
    if setting.name in DATASETS:
        own_split = "val" not in DATASETS[setting.name].options
        if val is not None and not own_split:
            args["val"] = val
        dataset = load_dataset(setting.name, seed=DATA_SEED, **args)
        return dataset, "the set's own split" if own_split else _held_out(dataset)
    path = base_dir / args.pop("path")
    if setting.name == "csv":
        _check_options("csv", args, csv_files.load_csv)
        data = csv_files.load_csv(path, **args)
    elif setting.name == "npz":
        _check_options("npz", args, loaders.load_npz)
        data = loaders.load_npz(path)
    else:
        target = args.pop("target", None)
        _check_options("npy", args, None)
        if target is None:
            raise DataError(f"{path}: an .npy file holds only the inputs; training needs targets",
                            hint=f'name them: npy("{path.name}", target = "targets.npy"), '
                                 "or use one .npz with `x` and `y`")
        data = loaders.UserData(x=loaders.load_npy(path), y=loaders.load_npy(base_dir / target))
    dataset = from_user_data(data, task=task, val=0.2 if val is None else val, seed=DATA_SEED,
                             name=path.name)
    own_split = data.x_val is not None
    return dataset, "the file's own split" if own_split else _held_out(dataset)


def _held_out(dataset: Dataset) -> str:
    share = len(dataset.x_val) / (len(dataset.x_val) + len(dataset.x_train))
    return f"{share:.0%} held out"


def _check_options(source: str, args: dict, reader) -> None:
    allowed = [] if reader is None else [
        name for name, p in inspect.signature(reader).parameters.items()
        if p.kind is p.KEYWORD_ONLY]
    if source == "npy":
        allowed = ["target"]
    for option in args:
        if option not in allowed:
            raise DataError(f"{source}(...) has no option `{option}`",
                            hint=loaders.suggest(option, allowed)
                            or (f"its options are: {', '.join(allowed)}" if allowed
                                else f"{source}(...) takes only the file name"))


def load_inputs(path: str | Path, drop_column: str | None = None,
                inputs: list[str] | None = None) -> np.ndarray:
    """Inputs for `predict`: an .npy array, an .npz's `x` (for a model with several
    `inputs`, its arrays named like them), or a CSV of feature columns with a header (the
    training target column, if present, is dropped). Raises DataError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return loaders.load_npy(path)
    if suffix == ".npz":
        if inputs is not None and len(inputs) > 1:
            return loaders.load_named_npz(path, inputs, []).x
        return loaders.load_npz(path).x
    if suffix == ".csv":
        return _csv_features(path, drop_column)
    raise DataError(f"{path}: inputs are read from .npy, .npz or .csv files",
                    hint="save the inputs with np.save(path, inputs)")


def _csv_features(path: Path, drop_column: str | None) -> np.ndarray:
    header, rows, lines = csv_files.parse_rows(path, csv_files.read_text(path), ",")
    names = [name for name in header if name != drop_column]
    columns = list(zip(*rows))
    x = np.empty((len(rows), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        x[:, j] = csv_files.numeric_column(path, name, columns[header.index(name)], lines)
    return x


# ---------------------------------------------------------------- fitting to the model


def fit_inputs(model, x: np.ndarray, span: Span | None, what: str = "the data's samples"
               ) -> np.ndarray:
    """`x` converted to the model's input dtype, after checking its per-sample shape and,
    for token inputs, that every id has a row in each embedding it feeds (E217)."""
    graph = model.graph
    if x.dtype.names:  # read by name: a field per input
        return loaders.named_arrays({name: _fit_input(graph, name, x[name], span, what)
                                     for name in x.dtype.names})
    if len(graph.inputs) != 1:
        raise data_error("E217", f"the model takes {len(graph.inputs)} inputs "
                         f"({', '.join(graph.inputs)}), but a data set gives one array",
                         span, "give an .npz with an array named like each input",
                         notes=_input_notes(graph))
    return _fit_input(graph, graph.inputs[0], x, span, what)


def _fit_input(graph, name: str, x: np.ndarray, span: Span | None, what: str) -> np.ndarray:
    declared = graph.node(name).type
    shape = tuple(x.shape[1:])
    symbols: dict[str, int] = {}
    fits = len(shape) == declared.rank and all(
        got == dim if isinstance(dim, int) else symbols.setdefault(dim, got) == got
        for got, dim in zip(shape, declared.shape))
    if not fits:
        hint = None
        if math.prod(shape) == _numel(declared.shape) and _numel(declared.shape):
            hint = ("the sizes agree: reshape the data (a built-in set may take "
                    f"`shape = {list(declared.shape)}`) or add `reshape`/`flatten` to the model")
        raise data_error("E217", f"the model's input `{name}` takes samples shaped {declared}, "
                         f"but {what} are shaped {list(shape)}", span, hint, _input_notes(graph))
    if declared.dtype == "int64":
        if x.dtype.kind == "f":
            if not np.all(x == np.round(x)):
                raise data_error("E217", f"the model's input `{name}` takes integer token ids, "
                                 f"but {what} hold fractional numbers", span,
                                 notes=_input_notes(graph))
            x = x.astype(np.int64)
        _check_token_range(graph, name, x, span, what)
    elif x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def _numel(shape) -> int:
    return math.prod(shape) if all(isinstance(d, int) for d in shape) else 0


def _input_notes(graph) -> tuple[Note, ...]:
    return tuple(Note(graph.node(n).span, f"the input `{n}` is declared here")
                 for n in graph.inputs if graph.node(n).span is not None)


def _check_token_range(graph, name: str, x: np.ndarray, span: Span | None, what: str) -> None:
    for node in graph.nodes:
        if node.op != "embedding" or node.inputs[0] != name or not x.size:
            continue
        rows = node.attrs.num
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= rows:
            bad = low if low < 0 else high
            raise data_error("E217", f"{what} hold the token id {bad}, but the embedding "
                             f"`{node.module or node.name}` has rows 0..{rows - 1}", span,
                             f"make the vocabulary at least {high + 1}" if high >= rows else None,
                             (Note(node.span, "the embedding is made here"),))


def fit_dataset(model, train, dataset: Dataset) -> Dataset:
    """The data set with inputs and targets converted for this model and loss, or SpecError.

    Everything is checked on the arrays before training starts, so a mismatch is reported
    at once with the line it concerns, not as a failure in the first (or the 90th) step.
    """
    span = train.data.span if train.data is not None else None
    source = Path(train.data.args["path"]).name if "path" in train.data.args else \
        train.data.name
    what = f"the samples of {source}"
    x_train = fit_inputs(model, dataset.x_train, span, what)
    x_val = fit_inputs(model, dataset.x_val, span, what)
    if not train.targets:  # the loss reads outputs and inputs only (an autoencoder)
        if train.metrics:
            raise data_error("E219", "metrics compare an output with the data's targets, but "
                             "this loss reads no target", train.spans.get("metrics"),
                             "remove the `metrics` line")
        return dataclasses.replace(dataset, x_train=x_train, x_val=x_val)
    values = model.activations(x_train[:1])
    if dataset.y_train.dtype.names:  # read by name: a field per target
        unnamed = [m for m in train.metrics if train.metric(m)[1] is None]
        if unnamed:
            raise data_error("E219", f"`{unnamed[0]}` scores one output against one target, "
                             "but this loss takes several", train.spans.get("metrics"),
                             f"name the output it scores: `{unnamed[0]}("
                             f"{train.outputs[0][0]})`")
        fitted = []
        for y in (dataset.y_train, dataset.y_val):
            fields = {}
            for name in y.dtype.names:
                loss, pred, args = target_use(train, name)
                pred_shape = tuple(values[train.output_node(pred)].shape[1:])
                fields[name] = fit_targets(train, y[name], pred_shape, span, loss, args)
            fitted.append(loaders.named_arrays(fields))
        _check_named_metrics(train, fitted[0], values)
        return dataclasses.replace(dataset, x_train=x_train, y_train=fitted[0], x_val=x_val,
                                   y_val=fitted[1])
    loss, pred, args = target_use(train)
    pred_shape = tuple(values[train.output_node(pred)].shape[1:])
    y_train, y_val = (fit_targets(train, y, pred_shape, span, loss, args)
                      for y in (dataset.y_train, dataset.y_val))
    _check_metrics(train, y_train, loss, args, pred_shape[-1] if pred_shape else 1)
    task = ("regression" if y_train.dtype != np.int64 else
            "classification" if y_train.ndim == 1 else "sequence_classification")
    return dataclasses.replace(dataset, x_train=x_train, y_train=y_train, x_val=x_val,
                               y_val=y_val, task=task)


def target_of(train, output: str) -> str | None:
    """The data's target the loss compares `output` with, or None."""
    return next((name for name in train.targets if target_use(train, name)[1] == output), None)


def target_use(train, name: str | None = None) -> tuple[str, str, dict]:
    """The loss that takes the data's target `name` (the one target by default) —
    `cross_entropy`, `mse`, a fn's name —, the output it is compared with, and the loss's
    arguments."""
    graph = train.loss_graph
    target = next(b.node for b in train.bindings
                  if b.source == "target" and name in (None, b.name))
    by_node = {b.node: b.name for b in train.bindings}
    for user in graph.consumers()[target]:
        node = graph.node(user)
        if ops.OPS[node.op].family == "loss" and node.inputs[0] in by_node:
            return node.op, by_node[node.inputs[0]], dict(node.attrs)
    output = next(b.name for b in train.bindings if b.source == "output")
    return train.loss.name, output, train.loss.args


def fit_targets(train, y: np.ndarray, pred_shape: tuple[int, ...], span: Span | None,
                loss: str, loss_args: dict) -> np.ndarray:
    """The data's targets converted for the loss `loss` that takes them."""
    notes = (Note(train.loss.span, f"the loss `{loss}` is chosen here"),) if train.loss.span \
        else ()
    shape = tuple(y.shape[1:])
    if loss in ops.CLASS_INDEX_LOSSES:
        dim = ops.class_dim(len(pred_shape))  # [T, C]: last; [C, H, W]: first
        ids_shape, classes = pred_shape[:dim] + pred_shape[dim + 1:], pred_shape[dim]
        if y.dtype.kind == "f":
            if shape == pred_shape:
                return y.astype(np.float32)  # class probabilities
            if np.all(y == np.round(y)):  # whole numbers, too large to be read as ids
                bad = y.flat[int(np.argmax(np.abs(y)))]
                raise data_error("E218", f"the label {bad:g} is out of range: the model gives "
                                 f"{classes} class scores, so labels must be "
                                 f"0..{classes - 1}", span, "labels are numbered 0..K-1",
                                 notes)
            raise data_error("E218", "cross_entropy needs class ids, but the data's targets "
                             "are fractional numbers", span,
                             "for regression use `loss mse`; for classes store ids 0..K-1",
                             notes)
        y = _reshape_targets(y, ids_shape)
        if tuple(y.shape[1:]) != ids_shape:
            raise data_error("E218", f"cross_entropy needs one class id per "
                             f"{'position ' + str(list(ids_shape)) if ids_shape else 'sample'}"
                             f" for the model's output {list(pred_shape)}, but the data's "
                             f"targets are shaped {list(shape)}", span, None, notes)
        ignore = loss_args.get("ignore_index", -100)
        labels = y[y != ignore]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            bad = int(labels.max()) if labels.max() >= classes else int(labels.min())
            hint = (f"the last layer needs at least {bad + 1} outputs, e.g. `dense({bad + 1})`"
                    if bad >= classes else "labels are numbered 0..K-1")
            raise data_error("E218", f"the label {bad} is out of range: the model gives "
                             f"{classes} class scores, so labels must be 0..{classes - 1}",
                             span, hint, notes)
        return y.astype(np.int64)
    y = _reshape_targets(y, pred_shape)
    if tuple(y.shape[1:]) != pred_shape:
        kind = "class ids" if y.dtype.kind in "iu" else "numbers"
        hint = "for class ids use `loss cross_entropy`" if kind == "class ids" and \
            pred_shape and pred_shape != (1,) else None
        raise data_error("E218", f"the loss `{loss}` compares the model's output "
                         f"{list(pred_shape)} with targets of the same shape, but the data's "
                         f"targets are {kind} shaped {list(shape)}", span, hint, notes)
    y = y.astype(np.float32)
    if loss == "binary_cross_entropy" and y.size and (y.min() < 0 or y.max() > 1):
        raise data_error("E218", "binary_cross_entropy needs targets between 0 and 1, but the "
                         f"data's targets range from {y.min():g} to {y.max():g}", span,
                         None, notes)
    return y


def _reshape_targets(y: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
    """Targets of shape (N,) for a [1] output, or (N, 1) for one id per sample, are fine."""
    if tuple(y.shape[1:]) != want and math.prod(y.shape[1:]) == math.prod(want) and \
            (y.ndim <= 2 and len(want) <= 1):
        return y.reshape((len(y), *want))
    return y


def _check_metrics(train, y: np.ndarray, loss: str, loss_args: dict, classes: int) -> None:
    for name in train.metrics:
        try:
            check_metric(train.metric(name)[0], loss, loss_args, y.dtype == np.int64, classes)
        except MetricError as error:
            raise data_error("E219", str(error), train.spans.get("metrics")) from None


def _check_named_metrics(train, y: np.ndarray, values: dict) -> None:
    """Each `accuracy(kind)` against the target the loss compares `kind` with."""
    for name in train.metrics:
        kind, output = train.metric(name)
        target = target_of(train, output)
        if target is None:
            raise data_error("E219", f"`{name}`: the loss compares `{output}` with no target "
                             "of the data, so there is nothing to score it against",
                             train.spans.get("metrics"))
        loss, _, args = target_use(train, target)
        shape = values[train.output_node(output)].shape[1:]
        try:
            check_metric(kind, loss, args, y[target].dtype == np.int64,
                         shape[-1] if shape else 1)
        except MetricError as error:
            raise data_error("E219", f"`{name}`: {error}", train.spans.get("metrics")) from None