"""The train section as the command line or `nnspec.fit` changes it: `--data` and
`--optimizer` text read in the spec's syntax, overrides applied, the optimizer built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nnspec.diagnostics import Diagnostic, DiagnosticError, SpecError
from nnspec.ir import ops
from nnspec.ir.train import Setting, TrainConfig
from nnspec.training.backend import TrainableModel


class OverrideError(ValueError):
    """A command-line override that cannot be applied (a usage error)."""


# ---------------------------------------------------------------- settings


def parse_setting(key: str, text: str) -> Setting:
    """`--data` / `--optimizer` text in the spec's syntax, e.g. `digits(shape = [1, 8, 8])`,
    `csv("f.csv", target = "y")`, `sgd(lr = 0.1, momentum = 0.9)`; a bare file name ending in
    .csv/.npz/.npy is also a data setting. An optimizer keeps only the hyperparameters the
    text gives (checked like the spec's), so `apply_overrides` can tell what to carry over.
    Raises OverrideError."""
    from nnspec.diagnostics import render_inline
    from nnspec.ir.build import Builder
    from nnspec.ir.train import data_setting, hyper_setting
    from nnspec.syntax import ast
    from nnspec.syntax.parser import parse_value

    suffix = Path(text).suffix.lower()
    if key == "data" and "(" not in text and suffix in (".csv", ".npz", ".npy"):
        return Setting(suffix[1:], {"path": text}, None)
    try:
        expr = parse_value(text, f"--{key}")
        setting = ast.Setting(expr.span, key, (expr,))
        program = ast.Program(expr.span.source, ())
        builder = Builder(program)
        if key == "data":
            return data_setting(builder, setting)
        resolved = hyper_setting(builder, setting, ops.OPTIMIZERS, "optimizer")
        expr = setting.values[0]
        given = set()
        if isinstance(expr, ast.Call):
            hyper = [a.name for a in ops.OPTIMIZERS[resolved.name].hyper]
            given = {*hyper[:len(expr.args)], *(k.name for k in expr.kwargs)}
        return Setting(resolved.name, {k: v for k, v in resolved.args.items() if k in given},
                       None)
    except SpecError as error:
        raise OverrideError(f"cannot read --{key} {text!r}: "
                            f"{render_inline(error.diagnostics[0])}") from None
    except DiagnosticError as error:
        d = error.diagnostic
        raise OverrideError(f"--{key} {text!r}: {d.message}" + (f" ({d.hint})" if d.hint else "")
                            ) from None


def apply_overrides(train: TrainConfig, *, epochs: int | None = None, batch: int | None = None,
                    lr: float | None = None, optimizer: Setting | None = None,
                    seed: int | None = None, val: float | None = None,
                    data: Setting | None = None, early_stop: int | None = None) -> TrainConfig:
    """The train section with command-line overrides applied (None keeps the spec's value).

    A new optimizer starts from torch's defaults and keeps the spec's learning rate unless
    it sets its own; `--lr` wins over both. Raises OverrideError for unknown names.
    """
    chosen = train.optimizer
    if optimizer is not None:
        if optimizer.name not in ops.OPTIMIZERS:
            from nnspec.diagnostics import did_you_mean

            raise OverrideError(f"unknown optimizer `{optimizer.name}`; "
                                + (did_you_mean(optimizer.name, ops.OPTIMIZERS)
                                   or f"choose one of: {', '.join(ops.OPTIMIZERS)}"))
        allowed = {a.name: a.default for a in ops.OPTIMIZERS[optimizer.name].hyper}
        unknown = [k for k in optimizer.args if k not in allowed]
        if unknown:
            raise OverrideError(f"{optimizer.name} has no hyperparameter `{unknown[0]}`; its "
                                f"hyperparameters are {', '.join(allowed)}")
        args = {**allowed, "lr": train.optimizer.args.get("lr", allowed["lr"]), **optimizer.args}
        chosen = Setting(optimizer.name, args, None)
    if lr is not None:
        chosen = Setting(chosen.name, {**chosen.args, "lr": lr}, chosen.span)
    changes = {"epochs": epochs, "batch": batch, "seed": seed, "val": val, "data": data,
               "early_stop": early_stop}
    return dataclasses.replace(train, optimizer=chosen,
                               **{k: v for k, v in changes.items() if v is not None})


def build_optimizer(setting: Setting, model: TrainableModel):
    """The optimizer of `setting` over the model's parameters; a user's value the
    optimizer refuses is located at the spec's setting or the `--optimizer` option."""
    try:
        return model.make_optimizer(setting)
    except ValueError as error:  # values the catalogue's checks let through, e.g. betas >= 1
        if setting.span is not None:
            raise SpecError([Diagnostic("E163", str(error), setting.span)]) from None
        raise OverrideError(f"--optimizer: {error}") from None


def describe_optimizer(setting: Setting) -> str:
    defaults = {a.name: a.default for a in ops.OPTIMIZERS[setting.name].hyper}
    shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in setting.args.items() if k == "lr" or v != defaults.get(k)]
    return f"{setting.name}({', '.join(shown)})"
