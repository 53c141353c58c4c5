"""nnspec: a declarative network-spec compiler.

The public API, for notebooks and scripts::

    import nnspec
    spec = nnspec.load("specs/digits_mlp.nn")      # parse, build, check (SpecError on errors)
    analysis = nnspec.analyze(text, "net.nn")      # never raises: graphs, diagnostics, symbols
    spec.summary()                                  # shapes, params, MACs (from the IR)
    model = nnspec.NumpyModel.from_spec(spec, seed=0)
    probs = model(x)                                # NumPy forward
    loss = model.loss(x, y); grads = model.backward()
    opt = nnspec.make_optimizer(spec, model); opt.step()
    model.save("weights.safetensors")
    history = nnspec.fit("specs/digits_mlp.nn", epochs=5)  # `nnspec train` (docs/python-api.md)
    data = nnspec.load_dataset("digits")           # a built-in data set's arrays

Heavy parts (NumPy backend, torch code generation) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nnspec.backends.numpy.model import NumpyModel
    from nnspec.diagnostics import Diagnostic, SpecError
    from nnspec.frontend import Analysis, Symbol, analyze
    from nnspec.spec import Spec, check_text, load, load_text

__version__ = "0.1.0"
__all__ = ["Analysis", "Dataset", "Diagnostic", "History", "NumpyModel", "Spec", "SpecError",
           "Symbol", "analyze", "check_text", "fit", "load", "load_dataset", "load_text",
           "make_optimizer", "make_schedule"]


def make_optimizer(spec: Spec, model: NumpyModel, **overrides):
    """The optimizer of the spec's train section (adam with torch's defaults if none) over the
    model's flat parameter buffer; keyword arguments override its hyperparameters."""
    from nnspec.backends.numpy.optim import make_optimizer as build

    setting = spec.train.optimizer if spec.train else None
    name = setting.name if setting else "adam"
    hyper = dict(setting.args) if setting else {}
    hyper.update(overrides)
    return build(name, model.trained, **hyper)  # frozen parameters (`freeze`) left out


def make_schedule(spec: Spec, optimizer, epochs: int | None = None):
    """The spec's lr schedule (stepped once per epoch, as torch's), or None."""
    from nnspec.backends.numpy.schedules import CosineAnnealingLR, LinearWarmup, StepLR

    setting = spec.train.schedule if spec.train else None
    if setting is None:
        return None
    args = dict(setting.args)
    warmup = args.pop("warmup", 0)
    total = epochs if epochs is not None else spec.train.epochs
    if setting.name == "step":
        after = StepLR(optimizer, args["step_size"], args["gamma"])
    else:
        after = CosineAnnealingLR(optimizer, max(1, total - warmup), args["eta_min"])
    if warmup:
        return LinearWarmup(optimizer, warmup, after=after)
    return after


# Where each public name lives. Importing the package itself stays cheap, so the `nnspec`
# command can catch a Ctrl-C from its very first line (see nnspec.cli).
_LAZY = {"Analysis": "nnspec.frontend", "Symbol": "nnspec.frontend", "analyze": "nnspec.frontend",
         "Diagnostic": "nnspec.diagnostics", "SpecError": "nnspec.diagnostics",
         "Spec": "nnspec.spec", "check_text": "nnspec.spec", "load": "nnspec.spec",
         "load_text": "nnspec.spec", "NumpyModel": "nnspec.backends.numpy.model",
         "fit": "nnspec.training.fit", "History": "nnspec.training.fit",
         "load_dataset": "nnspec.training.datasets", "Dataset": "nnspec.training.datasets"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnspec' has no attribute {name!r}")
