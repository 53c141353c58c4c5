"""ONNX export of a spec's model: the generated PyTorch module, with nnspec's weights,
through `torch.onnx.export` (the torch.export-based exporter), checked by `onnx.checker`.

The batch dim, and every symbolic dim of the spec (`[T, 16]`), stay dynamic in the file.
The model is exported in eval mode and gives what `nnspec predict` gives: a classifier whose
softmax nnspec fuses into the loss for training still ends in its softmax here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from nnspec.backends.torch.runtime import load_generated, load_numpy_state

EXAMPLE_BATCH = 2  # torch.export treats sizes 0 and 1 as constants; 2 stays symbolic
EXAMPLE_DIM = 4  # the size given to a symbolic dim while tracing


class ExportError(Exception):
    """The exporter or the ONNX checker refused the model (a message for the user)."""


def example_inputs(graph) -> tuple[tuple[torch.Tensor, ...], tuple[dict, ...]]:
    """Inputs to trace with, and which of their dims are dynamic (batch and symbols)."""
    tensors, dynamic = [], []
    for name in graph.inputs:
        t = graph.node(name).type
        shape = [EXAMPLE_BATCH] if t.batched else []
        shape += [d if isinstance(d, int) else EXAMPLE_DIM for d in t.shape]
        tensors.append(torch.zeros(shape, dtype=torch.long) if t.dtype == "int64"
                       else torch.zeros(shape))
        first = 1 if t.batched else 0
        dims = {first + i: torch.export.Dim.AUTO for i, d in enumerate(t.shape)
                if not isinstance(d, int)}
        if t.batched:
            dims[0] = torch.export.Dim.AUTO
        dynamic.append(dims)
    return tuple(tensors), tuple(dynamic)


def export_onnx(spec, out_path: str | Path, weights: dict[str, np.ndarray]) -> Path:
    """Write the model of `spec` with `weights` (nnspec's names) to `out_path` as ONNX,
    atomically, after `onnx.checker.check_model` accepted it. Raises ExportError."""
    import onnx

    out_path = Path(out_path)
    _, model_class = load_generated(spec)
    net = model_class()
    load_numpy_state(net, spec.graph, weights)
    net.eval()
    inputs, dynamic = example_inputs(spec.graph)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".partial",
                               dir=out_path.parent)
    os.close(fd)
    chatter = io.StringIO()
    try:
        with _quiet(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            torch.onnx.export(net, inputs, tmp, input_names=list(spec.graph.inputs),
                              output_names=["output"], dynamic_shapes=dynamic, dynamo=True,
                              external_data=False)
        onnx.checker.check_model(tmp, full_check=True)
        os.replace(tmp, out_path)
    except Exception as error:  # the exporter's many error types all mean "cannot export"
        Path(tmp).unlink(missing_ok=True)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"torch.onnx could not export {spec.graph.name}: {first}") from error
    return out_path


@contextlib.contextmanager
def _quiet():
    """The exporter warns about things that do not concern the user (torchvision missing,
    deprecations inside torch); keep the command's output to what it did."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
