"""The `--train-script` part of a generated file: a command-line entry point that trains the
model as its spec's train section says, on one process or data-parallel under torchrun.

The script is fixed text; only a settings dict and three small choices (the model's class,
whether its final softmax is fused into the loss, whether there is a schedule) come from the
spec, and each is printed by `literal` or checked as an identifier, as for the model code.
File names in a spec are text, so they never reach the script: data files are passed on its
command line, and nnspec's sample sets are named by their (checked) registry names.
"""

from __future__ import annotations

from nnspec.backends.torch import script_data
from nnspec.backends.torch.names import checked_identifier, file_label, literal, reject
from nnspec.backends.torch.source import Group, Stmt, expr, layout
from nnspec.ir import ops
from nnspec.training.datasets import DATASETS

SCRIPT_METRICS = ("accuracy", "mae", "mse")  # what `metric_sums` in the script computes

# Module-level names the script defines or imports; the generator keeps them free.
RESERVED = ("TRAIN_SECTION", "read_data_file", "read_arrays", "start_from", "read_sample_set",
            "check_counts", "hold_out", "as_inputs", "as_targets", "metric_sums", "evaluate",
            "setup_processes", "save_atomically", "device_name", "pick_device",
            "shard_by_block", "cpu_state", "parse_args", "main", "train", "argparse", "csv",
            "gc", "os", "time", "np", "dist")

_HEAD = '''\
# ---- training entry point ----------------------------------------------------------------
#   python FILE.py --help
#   python FILE.py --data train.npz --device cuda          one process, CPU or one GPU
#   torchrun --nproc_per_node=N FILE.py [options]          data-parallel over N processes
#   torchrun ... FILE.py --strategy fsdp                   weights sharded block by block
#   python FILE.py --precision bf16 --compile              mixed precision, torch.compile


'''

_SCRIPT = _HEAD + script_data.TEXT + '''\
def device_name(text):
    """--device's form: cpu, cuda, cuda:N, mps or auto."""
    kind, colon, index = text.partition(":")
    if kind in ("cpu", "mps", "auto") and not colon:
        return kind
    if kind == "cuda" and (not colon or index.isascii() and index.isdigit()):
        return f"cuda:{int(index)}" if colon else kind
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a device: use cpu, cuda, cuda:N (a GPU's index), mps or auto"
    )


def pick_device(requested):
    """`auto`: CUDA if there is a GPU, else Apple's MPS, else the CPU; a device this
    machine does not have stops the script with a message."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = requested.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SystemExit(f"--device {requested}: PyTorch sees no CUDA GPU")
        if index and int(index) >= count:
            seen = ", ".join(f"cuda:{i}" for i in range(count))
            raise SystemExit(f"--device {requested}: PyTorch sees only {seen}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("--device mps: Apple's Metal (MPS) is not available here")
    return requested


def shard_by_block(model):
    """FSDP2: each instance of the spec's blocks (the classes of this file), innermost
    first, then the whole model, holds only its share of the weights between uses."""
    from torch.distributed.fsdp import fully_shard

    ours = type(model).__module__
    for module in reversed(list(model.modules())[1:]):
        if type(module).__module__ == ours:
            fully_shard(module)
    fully_shard(model)


def cpu_state(model):
    """The whole state dict on the CPU, so checkpoints load on any device; under FSDP every
    process takes part in gathering the shards."""
    state = {}
    for key, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        state[key] = value.detach().cpu()
    return state


def setup_processes(requested):
    """(rank, world size, device). Under torchrun (which sets WORLD_SIZE) this process joins
    the group first: NCCL with one GPU per process for CUDA, Gloo for the CPU."""
    if "WORLD_SIZE" not in os.environ:
        device = torch.device(requested)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # what torch puts on "cuda" goes there too
        return 0, 1, device
    if requested.startswith("cuda"):
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device(requested)
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def save_atomically(state, path):
    """Whole to a hidden partial file, then renamed: a killed run never leaves half a file."""
    folder, name = os.path.split(path)
    partial = os.path.join(folder, f".{name}.partial")
    try:
        save_weights(state, partial)
        os.replace(partial, path)
    except OSError as error:  # a full disk: no partial file is left behind
        if os.path.exists(partial):
            os.remove(partial)
        raise SystemExit(f"{path}: cannot write ({error.strerror or error})")


def start_from(model, path):
    """Load --weights, refusing a file that is missing, damaged or holds NaN or infinities."""
    from safetensors import SafetensorError

    try:
        load_weights(model, path)
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file") from None
    except (OSError, KeyError, RuntimeError, ValueError, SafetensorError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SystemExit(f"{path}: cannot load the weights: {first}") from None
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise SystemExit(f"{path}: the weight {name} holds NaN or infinite values")


def parse_args(argv=None):
    section = TRAIN_SECTION
    parser = argparse.ArgumentParser(
        description="Train __MODEL__ as its spec's train section says."
    )
    add = parser.add_argument
    add("--data", help=".npz file (x, y[, x_val, y_val]) or .csv file with a header")
    add("--target", default="y", help="the target column of a .csv file (%(default)s)")
    add(
        "--epochs",
        type=int,
        default=section["epochs"],
        help="passes over the data (%(default)s)",
    )
    add(
        "--batch",
        type=int,
        default=section["batch"],
        help="global batch size, all processes together (%(default)s)",
    )
    add("--lr", type=float, help="replace the learning rate of make_optimizer")
    add(
        "--seed",
        type=int,
        default=section["seed"],
        help="initial weights and batch order (%(default)s)",
    )
    add(
        "--val",
        type=float,
        default=section["val"],
        help="held-out fraction when the data has no x_val (%(default)s)",
    )
    add("--steps", type=int, default=0, help="stop after N optimizer steps (0: never)")
    add("--log-every", type=int, default=0, metavar="N", help="print every Nth loss")
    add("--weights", help="start from these safetensors weights")
    add("--out", default="checkpoints", help="folder for the weights (%(default)s)")
    add(
        "--device",
        type=device_name,
        default="auto",
        help="cpu, cuda, cuda:N, mps or auto (%(default)s: cuda, else mps, else cpu); "
        "under torchrun each process takes the GPU of its LOCAL_RANK",
    )
    add(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast to this type; fp16 adds a gradient scaler (%(default)s)",
    )
    add("--compile", action="store_true", help="run the model through torch.compile")
    add(
        "--strategy",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="under torchrun: replicate the model, or shard it block by block (%(default)s)",
    )
    args = parser.parse_args(argv)
    lowest = {"epochs": 1, "batch": 1, "seed": 0, "steps": 0, "log_every": 0}
    for name, low in lowest.items():
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be {low} or more")
    if not 0 < args.val < 1:
        parser.error("--val must be between 0 and 1")
    if args.lr is not None and not 0 <= args.lr < float("inf"):
        parser.error("--lr must be a number, 0 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = setup_processes(pick_device(args.device))
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} does not split over {world} processes")
    train(args, rank, world, device)
    if dist.is_initialized():
        # DistributedDataParallel sits in a reference cycle: free it while the group is
        # up, then leave together (a peer gone mid-teardown aborts the others).
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def train(args, rank, world, device):
    """The spec's training loop on this process's share of every global batch."""
    torch.manual_seed(args.seed)  # the same initial weights in every process
    model = __MODEL__()
    if args.weights:
        start_from(model, args.weights)
    model.to(device)
    if args.data:
        x, y, x_val, y_val = read_data_file(args.data, args.target)
    elif TRAIN_SECTION["sample_set"] is not None:
        x, y, x_val, y_val = read_sample_set(*TRAIN_SECTION["sample_set"])
    else:
        raise SystemExit("the spec reads its data from a file: pass it with --data")
    check_counts(x, y, "x", "y")
    if x_val is None:
        x, y, x_val, y_val = hold_out(x, y, args.val)
    check_counts(x_val, y_val, "x_val", "y_val")
    x, x_val = as_inputs(x), as_inputs(x_val)
    try:
        with torch.no_grad():
            output_shape = tuple(model.eval()(x[:1].to(device)).shape[1:])
    except (RuntimeError, IndexError) as error:
        first = str(error).strip().splitlines()[0]
        raise SystemExit(f"samples shaped {list(x.shape[1:])} do not fit: {first}")
    y, y_val = as_targets(y, output_shape), as_targets(y_val, output_shape)
    data = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.DistributedSampler(
        data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed
    )
    loader = torch.utils.data.DataLoader(data, args.batch // world, sampler=sampler)
    fsdp = dist.is_initialized() and args.strategy == "fsdp"
    if fsdp:  # before the optimizer, which must hold the sharded parameters
        shard_by_block(model)
    optimizer = make_optimizer(model)
    if args.lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = args.lr
    scheduler = __SCHEDULER__
    net = model
    if dist.is_initialized() and not fsdp:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        net = torch.compile(net)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    torch.manual_seed(args.seed + 1 + rank)  # dropout: its own stream in each process
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"{args.out}: cannot create it ({error.strerror or error})")
    if rank == 0:
        print(
            f"__MODEL__: {len(x)} training / {len(x_val)} validation samples, "
            f"{world} process{'es' if world > 1 else ''} on {device}, global batch {args.batch}"
        )
    clip, patience = TRAIN_SECTION["clip"], TRAIN_SECTION["early_stop"]
    step, best, bad_epochs = 0, None, 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        seen = torch.zeros(2, dtype=torch.float64, device=device)
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            with torch.autocast(device.type, dtype=low, enabled=low is not None):
                loss = loss_fn(net(__INPUT__), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            count = seen.new_tensor(len(xb))
            batch_sums = torch.stack([loss.detach().double() * count, count])
            seen += batch_sums
            if args.log_every and step % args.log_every == 0:
                if dist.is_initialized():
                    dist.all_reduce(batch_sums)
                mean = (batch_sums[0] / batch_sums[1]).item()
                if rank == 0:
                    print(f"step {step}  loss {mean:.6f}")
            if step == args.steps:
                break
        if dist.is_initialized():
            dist.all_reduce(seen)
        train_loss = (seen[0] / seen[1]).item()
        shares = (0, 1) if fsdp else (rank, world)
        scores = evaluate(model, x_val, y_val, args.batch, *shares)
        if scheduler is not None:
            scheduler.step()
        if not np.isfinite(train_loss) or not np.isfinite(scores["val_loss"]):
            raise SystemExit(f"the loss became {train_loss} in epoch {epoch + 1}")
        improved = best is None or scores["val_loss"] < best[0]
        if improved:
            best, bad_epochs = (scores["val_loss"], epoch + 1), 0
        else:
            bad_epochs += 1
        state = cpu_state(model)
        if rank == 0:
            if improved:
                save_atomically(state, os.path.join(args.out, "best.safetensors"))
            save_atomically(state, os.path.join(args.out, "last.safetensors"))
            parts = [f"epoch {epoch + 1}/{args.epochs}", f"train_loss {train_loss:.4f}"]
            parts += [f"{key} {value:.4f}" for key, value in scores.items()]
            parts += [f"lr {lr:.3g}", f"{time.perf_counter() - started:.2f}s"]
            print("  ".join(parts))
        if step == args.steps or (patience and bad_epochs >= patience):
            break
    if rank == 0:
        print(f"best val_loss {best[0]:.4f} at epoch {best[1]}; weights in {args.out}")


if __name__ == "__main__":
    main()'''


def script_text(spec, model_class: str) -> str:
    """The training entry point for `spec`, whose model class is `model_class`."""
    train = spec.train
    if train is None or train.loss_graph is None:
        raise ValueError("the spec has no train section to make a training script from")
    if len(spec.graph.inputs) != 1:
        raise ValueError(f"the training script feeds one input array, but the model takes "
                         f"{len(spec.graph.inputs)}")
    if [b.node for b in train.bindings] != ["pred", "target"]:
        raise ValueError("the training script gives the loss the model's one output and one "
                         "target array, but this loss reads "
                         + ", ".join(b.name for b in train.bindings))
    model_class = checked_identifier(model_class)
    settings = _settings(spec)
    fused = bool(train.fused_softmax)
    text = (_SCRIPT
            .replace("__LOGITS__", "model(xb, return_logits=True)" if fused else "out")
            .replace("__INPUT__", "xb, return_logits=True" if fused else "xb")
            .replace("__SCHEDULER__", "make_scheduler(optimizer)" if train.schedule else "None")
            .replace("__MODEL__", model_class))
    return settings + "\n\n\n" + text


def _settings(spec) -> str:
    """`TRAIN_SECTION = {...}`: the train section's numbers and the few facts about the
    model and loss the script needs, laid out as `ruff format` would."""
    train = spec.train
    loss = train.loss
    threshold = None
    if loss.name == "binary_cross_entropy":
        threshold = 0.0 if loss.args.get("logits") else 0.5
    metrics = tuple(_checked_metric(m, train.spans.get("metrics")) for m in train.metrics)
    if train.early_stop_metric != "val_loss":
        raise reject("the generated training script stops early on val_loss only, not on "
                     f"{train.early_stop_metric}", train.spans.get("early_stop"),
                     "write `early_stop N` for --train-script")
    entries = [
        ("epochs", literal(train.epochs)),
        ("batch", literal(train.batch)),
        ("seed", literal(train.seed)),
        ("val", literal(float(train.val))),
        ("clip", literal(None if train.clip is None else float(train.clip))),
        ("early_stop", literal(train.early_stop)),
        ("metrics", "(" + ", ".join(metrics) + ("," if len(metrics) == 1 else "") + ")"),
        ("sample_set", _sample_set(train)),
        ("token_input", literal(spec.graph.node(spec.graph.inputs[0]).type.dtype == "int64")),
        ("class_targets", literal(loss.name in ops.CLASS_INDEX_LOSSES)),
        ("ignore_index", literal(int(loss.args.get("ignore_index", -100))
                                 if loss.name in ops.CLASS_INDEX_LOSSES else -100)),
        ("threshold", literal(threshold)),
    ]
    where = file_label(spec.program.source.path)
    span = train.spans.get("data") or train.spans.get("loss")
    if span is not None:
        where += f":{span.line}"
    head = [f"# The train section of {where}; the command-line options override it. `batch`",
            "# is the global batch: under torchrun each of N processes takes batch / N of it.",
            "# `sample_set` names nnspec's built-in data (used when nnspec is installed); with",
            "# None, the spec reads a file: pass it with --data."]
    value = Group((), "{", tuple(expr(f'"{key}": ', text) for key, text in entries), "}")
    return "\n".join(head + layout([Stmt("TRAIN_SECTION", expr(value))], str))


def _checked_metric(name: str, span) -> str:
    if name not in SCRIPT_METRICS:
        raise reject(f"the generated training script computes {', '.join(SCRIPT_METRICS)}; "
                     f"`{name}` is `nnspec train`'s only", span,
                     "leave it out of `metrics` for --train-script, or train with nnspec")
    return f'"{name}"'


def _sample_set(train) -> str:
    """`("digits", {"shape": (1, 8, 8)})` for a built-in set, else `None` (a file)."""
    data = train.data
    if data is None or data.name not in DATASETS:
        return "None"
    options = dict(data.args)
    if "val" in train.spans and "val" in DATASETS[data.name].options and "val" not in options:
        options["val"] = train.val
    pairs = ", ".join(f'"{checked_identifier(k)}": '
                      + literal(tuple(v) if isinstance(v, list) else v)
                      for k, v in options.items())
    return f'("{checked_identifier(data.name)}", {{{pairs}}})'
