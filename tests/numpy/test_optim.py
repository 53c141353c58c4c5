"""ParamBuffer and the NumPy optimizers, with torch.optim as the oracle."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from nnspec.backends.numpy import optim
from nnspec.backends.numpy.optim import OPTIMIZERS, hyperparameters, make_optimizer
from nnspec.backends.numpy.params import ParamBuffer
from tests.numpy.helpers import torch

SHAPES = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (10, 36), "scale": ()}
STEPS = 20

CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    ("sgd", {"lr": 0.1, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05}),
    ("sgd", {"lr": 0.1, "momentum": 0.5, "maximize": True}),
    ("adam", {}),
    ("adam", {"lr": 1e-2, "weight_decay": 0.1}),
    ("adam", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "amsgrad": True}),
    ("adam", {"lr": 1e-2, "maximize": True, "weight_decay": 0.01}),
    ("adamw", {}),
    ("adamw", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
    ("rmsprop", {}),
    ("rmsprop", {"lr": 1e-3, "centered": True}),
    ("rmsprop", {"lr": 1e-3, "momentum": 0.9}),
    ("rmsprop", {"lr": 1e-3, "alpha": 0.9, "centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("adagrad", {}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.1}),
    ("adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5, "weight_decay": 0.1, "eps": 1e-6}),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in hyper.items()) or 'defaults'}"
            for name, hyper in CASES]


def random_arrays(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {name: np.asarray(scale * rng.standard_normal(shape), dtype=np.float32)
            for name, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def trajectory():
    """Initial parameters and a sequence of gradients whose size varies from step to step."""
    rng = np.random.default_rng(1234)
    initial = random_arrays(rng)
    grads = [random_arrays(rng, scale=float(rng.uniform(0.01, 3.0))) for _ in range(STEPS)]
    return initial, grads


def run_numpy(name, hyper, initial, grads, state=None):
    buf = ParamBuffer(SHAPES)
    buf.load(initial)
    optimizer = make_optimizer(name, buf, **hyper)
    if state is not None:
        optimizer.load_state_dict(state)
    history = []
    for grad in grads:
        for key, g in grad.items():
            buf.grads[key][...] = g
        optimizer.step()
        history.append(buf.as_dict())
    return history, optimizer


# ---------------------------------------------------------------- ParamBuffer


def test_param_views_share_the_flat_buffers_in_insertion_order():
    buf = ParamBuffer(SHAPES)
    assert buf.data.dtype == buf.grad.dtype == np.float32
    assert buf.data.size == sum(int(np.prod(s)) for s in SHAPES.values())
    assert list(buf.params) == list(buf.grads) == list(SHAPES)
    offset = 0
    for name, shape in SHAPES.items():
        view = buf.params[name]
        assert view.shape == shape and np.shares_memory(view, buf.data)
        view[...] = 7.0
        size = int(np.prod(shape))
        np.testing.assert_array_equal(buf.data[offset:offset + size], 7.0)
        buf.grads[name][...] = 3.0
        np.testing.assert_array_equal(buf.grad[offset:offset + size], 3.0)
        offset += size


def test_load_copies_in_and_as_dict_copies_out():
    rng = np.random.default_rng(0)
    arrays = {k: v.astype(np.float64) for k, v in random_arrays(rng).items()}
    buf = ParamBuffer(SHAPES)
    buf.load(arrays)
    saved = buf.as_dict()
    for name in SHAPES:
        np.testing.assert_array_equal(saved[name], arrays[name].astype(np.float32))
        assert saved[name].dtype == np.float32
        assert not np.shares_memory(saved[name], buf.data)
    buf.data += 1.0
    np.testing.assert_array_equal(saved["fc.weight"], arrays["fc.weight"].astype(np.float32))


def test_load_rejects_a_wrong_shape_naming_it_and_changes_nothing():
    rng = np.random.default_rng(0)
    buf = ParamBuffer(SHAPES)
    arrays = random_arrays(rng)
    arrays["fc.weight"] = arrays["fc.weight"].T
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(10, 36\) .* but \(36, 10\)"):
        buf.load(arrays)
    assert not buf.data.any()


def test_load_rejects_missing_and_unexpected_names():
    arrays = random_arrays(np.random.default_rng(0))
    del arrays["conv.bias"]
    arrays["head.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="missing conv.bias; unexpected head.bias"):
        ParamBuffer(SHAPES).load(arrays)


# ---------------------------------------------------------------- optimizers against torch


@pytest.mark.parametrize(("name", "hyper"), CASES, ids=CASE_IDS)
def test_an_update_over_blocks_equals_one_over_the_whole_buffer(name, hyper, trajectory,
                                                                 monkeypatch):
    """Steps go over blocks of the flat buffers (scratch of one block's size); each value's
    operations are the same, so 7-value blocks (the last one short) give the same bits."""
    initial, grads = trajectory
    whole, _ = run_numpy(name, hyper, initial, grads)
    monkeypatch.setattr(optim, "_BLOCK", 7)
    blocked, optimizer = run_numpy(name, hyper, initial, grads)
    assert optimizer._tmp.size == 7
    for ours, reference in zip(blocked, whole, strict=True):
        for key in SHAPES:
            np.testing.assert_array_equal(ours[key], reference[key])


@pytest.mark.torch
@pytest.mark.parametrize(("name", "hyper"), CASES, ids=CASE_IDS)
def test_steps_match_torch(name, hyper, trajectory):
    torch_classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
                     "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
                     "adagrad": torch.optim.Adagrad}
    initial, grads = trajectory
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in initial.items()}
    reference = torch_classes[name](params.values(), **hyper)
    history, _ = run_numpy(name, hyper, initial, grads)
    for step, (grad, ours) in enumerate(zip(grads, history, strict=True)):
        for key, param in params.items():
            param.grad = torch.from_numpy(grad[key].copy())
        reference.step()
        for key, param in params.items():
            # atol: parameters start standard normal, so 1e-6 is relative to their scale
            # where a value passes near zero (torch fuses multiply-adds, NumPy rounds twice).
            np.testing.assert_allclose(
                ours[key], param.detach().numpy(), rtol=1e-6, atol=1e-6,
                err_msg=f"{key} after step {step + 1}",
            )


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_defaults_are_torchs(name):
    torch_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                   "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[name]
    torch_defaults = {p.name: p.default
                      for p in inspect.signature(torch_class.__init__).parameters.values()}
    for key, default in hyperparameters(name).items():
        assert key in torch_defaults, key
        assert default == torch_defaults[key], key


@pytest.mark.parametrize(("name", "hyper"), CASES, ids=CASE_IDS)
def test_state_round_trip_through_safetensors_continues_identically(name, hyper, trajectory,
                                                                    tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    initial, grads = trajectory
    straight, _ = run_numpy(name, hyper, initial, grads)
    first_half, optimizer = run_numpy(name, hyper, initial, grads[:STEPS // 2])
    safetensors_numpy.save_file(optimizer.state_dict(), tmp_path / "optim.safetensors")
    state = safetensors_numpy.load_file(tmp_path / "optim.safetensors")
    second_half, resumed = run_numpy(name, hyper, first_half[-1], grads[STEPS // 2:], state)
    assert resumed.step_count == STEPS
    for expected, got in zip(straight, first_half + second_half, strict=True):
        for key in SHAPES:
            np.testing.assert_array_equal(got[key], expected[key])


def test_state_dict_holds_copies():
    buf = ParamBuffer(SHAPES)
    optimizer = make_optimizer("adam", buf)
    state = optimizer.state_dict()
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["step"].shape == () and int(state["step"]) == 0
    buf.grad[...] = 1.0
    optimizer.step()
    assert not state["exp_avg"].any()


def test_load_state_dict_rejects_foreign_state():
    buf = ParamBuffer(SHAPES)
    sgd_state = make_optimizer("sgd", buf, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="Adam state needs exactly exp_avg, exp_avg_sq, step"):
        make_optimizer("adam", buf).load_state_dict(sgd_state)
    small = make_optimizer("sgd", ParamBuffer({"w": (3,)}), momentum=0.9).state_dict()
    with pytest.raises(ValueError, match=r"'momentum_buffer' has shape \(3,\)"):
        make_optimizer("sgd", buf, momentum=0.9).load_state_dict(small)


@pytest.mark.parametrize(("name", "hyper"), CASES, ids=CASE_IDS)
def test_step_reads_gradients_without_changing_them(name, hyper):
    buf = ParamBuffer(SHAPES)
    rng = np.random.default_rng(5)
    buf.load(random_arrays(rng))
    buf.grad[...] = rng.standard_normal(buf.grad.size)
    before = buf.grad.copy()
    optimizer = make_optimizer(name, buf, **hyper)
    optimizer.step()
    optimizer.step()
    np.testing.assert_array_equal(buf.grad, before)
    assert buf.data.dtype == np.float32


@pytest.mark.parametrize(("name", "hyper"), CASES, ids=CASE_IDS)
def test_tiny_gradients_underflow_quietly(name, hyper):
    buf = ParamBuffer(SHAPES)
    buf.data[...] = 1.0
    buf.grad[...] = 1e-30
    optimizer = make_optimizer(name, buf, **hyper)
    with np.errstate(all="raise"):
        for _ in range(3):
            optimizer.step()
    assert np.isfinite(buf.data).all()


def test_lr_is_read_at_every_step():
    buf = ParamBuffer({"w": (4,)})
    buf.grad[...] = 1.0
    optimizer = make_optimizer("sgd", buf, lr=0.5)
    optimizer.step()
    optimizer.lr = 0.25
    optimizer.step()
    np.testing.assert_array_equal(buf.data, -0.75)


def test_make_optimizer_explains_unknown_hyperparameters():
    buf = ParamBuffer(SHAPES)
    with pytest.raises(ValueError, match=r"adam has no hyperparameter 'beta1'.* lr, betas, eps"):
        make_optimizer("adam", buf, beta1=0.9)
    with pytest.raises(ValueError, match=r"did you mean 'momentum'"):
        make_optimizer("sgd", buf, momentun=0.9)
    with pytest.raises(ValueError, match=r"no optimizer called 'adamax'; choose one of sgd, adam"):
        make_optimizer("adamax", buf)


@pytest.mark.parametrize(
    ("name", "hyper", "message"),
    [
        ("sgd", {"lr": -1.0}, "learning rate must be >= 0"),
        ("sgd", {"nesterov": True}, "nesterov momentum needs momentum > 0"),
        ("sgd", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, "dampening = 0"),
        ("adam", {"betas": (0.9, 1.0)}, r"betas must lie in \[0, 1\)"),
        ("adam", {"betas": (0.9,)}, r"betas must be a pair"),
        ("adamw", {"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ("rmsprop", {"alpha": -0.5}, "alpha must be >= 0"),
        ("adagrad", {"lr_decay": -1.0}, "lr_decay must be >= 0"),
    ],
)
def test_invalid_hyperparameter_values_are_refused(name, hyper, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(name, ParamBuffer(SHAPES), **hyper)


def _adam_in_numpy_passes(data, grads, lr, betas, eps, weight_decay, amsgrad, decoupled):
    """torch's single-tensor Adam as NumPy passes (the interpreter's code before the
    compiled loop): the reference the loop must give bit for bit."""
    beta1, beta2 = betas
    exp_avg, exp_avg_sq, highest = (np.zeros_like(data) for _ in range(3))
    for step, grad in enumerate(grads, start=1):
        if decoupled:
            data *= 1.0 - lr * weight_decay
        else:  # L2: through the gradient
            grad = grad + data * weight_decay
        exp_avg += (grad - exp_avg) * (1.0 - beta1)
        exp_avg_sq *= beta2
        exp_avg_sq += grad * (1.0 - beta2) * grad
        second = np.maximum(highest, exp_avg_sq, out=highest) if amsgrad else exp_avg_sq
        denom = np.sqrt(second) / (1.0 - beta2**step) ** 0.5 + eps
        update = exp_avg * (-lr / (1.0 - beta1**step))
        update /= denom
        data += update
    return data


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_gives_the_bits_of_its_numpy_passes(name, amsgrad, trajectory):
    """The compiled update keeps every operation's order and precision (no fused
    multiply-adds): a contraction there would move training runs off torch's."""
    initial, grads = trajectory
    hyper = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1,
             "amsgrad": amsgrad}
    history, _ = run_numpy(name, hyper, initial, grads)
    for key in SHAPES:
        want = _adam_in_numpy_passes(initial[key].copy(), [g[key] for g in grads],
                                     hyper["lr"], hyper["betas"], hyper["eps"], 0.1, amsgrad,
                                     decoupled=name == "adamw")
        np.testing.assert_array_equal(history[-1][key], want, err_msg=key)
