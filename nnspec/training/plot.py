"""The loss-curve plot of a run: train and validation loss, and the metrics, per epoch.

matplotlib is optional (`pip install "nnspec[plot]"`) and imported only here, with the
non-interactive Agg backend so a run never needs a display. The PNG is written atomically
like every other file of the run directory.
"""

from __future__ import annotations

import io
from pathlib import Path

from nnspec.outputs import write_atomic


def plot_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Loss curves on the left (log scale when they span a decade), metrics on the right."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    metrics = [key for key in history[0] if key.startswith("val_") and key != "val_loss"]
    figure = Figure(figsize=(10 if metrics else 6, 4), dpi=100, layout="constrained")
    axes = figure.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    losses = axes[0]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        losses.plot(epochs, [row[key] for row in history], marker="." if len(epochs) < 50
                    else None, label=label)
    values = [row[k] for row in history for k in ("train_loss", "val_loss")]
    if min(values) > 0 and max(values) / min(values) > 10:
        losses.set_yscale("log")
    losses.set(xlabel="epoch", ylabel="loss", title=title)
    losses.legend()
    losses.grid(alpha=0.3)
    if metrics:
        panel = axes[1]
        for key in metrics:
            panel.plot(epochs, [row[key] for row in history], label=key.removeprefix("val_"))
        panel.set(xlabel="epoch", title="validation metrics")
        panel.legend()
        panel.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())


def plot_confusion(matrix, class_names: list[str] | None, path: Path, title: str) -> None:
    """A confusion matrix (rows: true class, columns: predicted), each row's share of its
    samples as the colour and the count written in the cell when the matrix is small."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    classes = len(matrix)
    names = [str(n) for n in class_names] if class_names and len(class_names) == classes \
        else [str(i) for i in range(classes)]
    side = min(12.0, 3.0 + 0.4 * classes)
    figure = Figure(figsize=(side + 1, side), dpi=100, layout="constrained")
    axes = figure.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the true class")
    if classes <= 20:
        ticks = range(classes)
        axes.set_xticks(ticks, names, rotation=90 if classes > 10 else 0)
        axes.set_yticks(ticks, names)
        for row in ticks:
            for col in ticks:
                axes.text(col, row, str(matrix[row, col]), ha="center", va="center",
                          color="white" if shares[row, col] > 0.5 else "black", fontsize=8)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())
