"""The data half of the training script's fixed text (`train_script.py` puts it between
its head and its training loop): reading data files and nnspec's sample sets, the held-out
split, inputs and targets as tensors, metrics and the validation pass."""

TEXT = '''\
def read_data_file(path, target):
    """(x, y, x_val, y_val) from an .npz (`x`, `y`, optionally `x_val`, `y_val`) or a CSV
    file (a header row; the `target` column holds the targets, the others are features).
    A file that cannot be read ends the script with a sentence, not a traceback."""
    import zipfile

    try:
        return read_arrays(path, target)
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file") from None
    except KeyError as error:
        raise SystemExit(f"{path}: has no array {error} (it needs x and y)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if "pickle" in str(error):
            error = "it holds Python objects (a pickle), which are not loaded"
        raise SystemExit(f"{path}: cannot read the data: {error}") from None


def read_arrays(path, target):
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as arrays:
            found = {key: arrays[key] for key in arrays.files}
        return found["x"], found["y"], found.get("x_val"), found.get("y_val")
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = [row for row in csv.reader(f) if row]
    if target not in header:
        raise SystemExit(f"{path}: no column {target!r} (choose one with --target)")
    column = header.index(target)
    x = np.array([[float(v) for i, v in enumerate(row) if i != column] for row in rows])
    labels = [row[column] for row in rows]
    try:
        y = np.array([float(v) for v in labels])
    except ValueError:  # class names, numbered in sorted order
        names = sorted(set(labels))
        y = np.array([names.index(v) for v in labels])
    return x, y, None, None


def read_sample_set(name, options):
    """nnspec's built-in data set `name` and its validation split (needs nnspec)."""
    try:
        from nnspec.training.datasets import load_dataset
    except ImportError:
        raise SystemExit(
            f"the spec trains on nnspec's `{name}` set: pip install nnspec, or pass --data"
        ) from None
    data = load_dataset(name, seed=0, **options)
    return data.x_train, data.y_train, data.x_val, data.y_val


def check_counts(x, y, x_name, y_name):
    """Samples there are, and a target for each."""
    if np.ndim(x) == 0 or len(x) == 0:
        raise SystemExit(f"the data has no samples in {x_name}")
    if np.ndim(y) == 0 or len(y) != len(x):
        raise SystemExit(f"{x_name} has {len(x)} samples, {y_name} {np.size(y)}")


def hold_out(x, y, fraction):
    """A seeded split: the same samples are held out in every process and every run."""
    order = np.random.default_rng(0).permutation(len(x))
    held = max(1, round(len(x) * fraction))
    return x[order[held:]], y[order[held:]], x[order[:held]], y[order[:held]]


def as_inputs(x):
    """Samples as the model takes them: token ids or float32 features."""
    dtype = torch.long if TRAIN_SECTION["token_input"] else torch.float32
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def as_targets(y, output_shape):
    """Targets as the loss takes them: class ids for cross_entropy unless shaped like the
    output (class probabilities), else values shaped like the output."""
    y = np.asarray(y)
    if y.dtype.kind not in "iufb":
        raise SystemExit(f"the targets have dtype {y.dtype}, but must be numbers")
    if TRAIN_SECTION["class_targets"] and tuple(y.shape[1:]) != output_shape:
        if not np.all(y == np.round(y)):
            raise SystemExit("cross_entropy needs whole-number class ids as targets")
        classes = output_shape[0 if len(output_shape) >= 3 else -1]  # [C, H, W]: first
        counted = y[y != TRAIN_SECTION["ignore_index"]]
        if counted.size and (counted.min() < 0 or counted.max() >= classes):
            bad = counted.max() if counted.max() >= classes else counted.min()
            raise SystemExit(
                f"the label {bad:g} is out of range: the model gives {classes} class "
                f"scores, so labels must be 0..{classes - 1}"
            )
        return torch.as_tensor(y.astype(np.int64))
    if y.size != len(y) * int(np.prod(output_shape)):
        raise SystemExit(
            f"the targets are shaped {list(y.shape[1:])} per sample, but the model's "
            f"output is {list(output_shape)}"
        )
    return torch.as_tensor(y, dtype=torch.float32).reshape(len(y), *output_shape)


def metric_sums(name, out, y):
    """(sum, count) of a metric over one batch: accuracy, mae or mse."""
    if name == "mae":
        return (out - y).abs().sum(), y.numel()
    if name == "mse":
        return ((out - y) ** 2).sum(), y.numel()
    threshold = TRAIN_SECTION["threshold"]
    if threshold is not None:  # binary_cross_entropy: probabilities or logits
        hits = (out > threshold) == (y > 0.5)
        return hits.sum(), hits.numel()
    classes = 1 if out.dim() >= 4 else -1  # (B, C, H, W) as torch; else the last dim
    if y.is_floating_point():  # class probabilities as targets
        hits = out.argmax(classes) == y.argmax(classes)
        return hits.sum(), hits.numel()
    counted = y != TRAIN_SECTION["ignore_index"]
    return ((out.argmax(classes) == y) & counted).sum(), counted.sum()


@torch.no_grad()
def evaluate(model, x, y, batch, rank, world):
    """Validation loss (mean over samples) and metrics. Each process scores every
    world-th sample; the sums are added up across processes."""
    model.eval()
    metrics = TRAIN_SECTION["metrics"]
    device = next(model.parameters()).device
    sums = torch.zeros(2 + 2 * len(metrics), dtype=torch.float64, device=device)
    x, y = x[rank::world], y[rank::world]  # (world 1 under FSDP: all run every batch)
    for start in range(0, len(x), batch):
        xb = x[start : start + batch].to(device)
        yb = y[start : start + batch].to(device)
        out = model(xb)
        loss = loss_fn(__LOGITS__, yb)
        sums[0] += loss * len(xb)
        sums[1] += len(xb)
        for i, name in enumerate(metrics):
            total, count = metric_sums(name, out, yb)
            sums[2 + 2 * i] += total
            sums[3 + 2 * i] += count
    if world > 1:
        dist.all_reduce(sums)
    scores = {"val_loss": (sums[0] / sums[1]).item()}
    for i, name in enumerate(metrics):
        scores[f"val_{name}"] = (sums[2 + 2 * i] / sums[3 + 2 * i]).item()
    return scores


'''
