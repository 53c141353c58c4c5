"""Learning-rate schedules and gradient clipping, with torch as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.optim import make_optimizer
from nnspec.backends.numpy.params import ParamBuffer
from nnspec.backends.numpy.schedules import (
    CosineAnnealingLR,
    LinearWarmup,
    StepLR,
    clip_grad_norm,
)
from tests.numpy.helpers import torch

STEPS = 30
BASE_LR = 0.3


def numpy_lrs(make_schedule, steps=STEPS):
    """The lr each optimizer step uses: the one set at construction, then after each step()."""
    optimizer = make_optimizer("sgd", ParamBuffer({"w": (2,)}), lr=BASE_LR)
    schedule = make_schedule(optimizer)
    lrs = [optimizer.lr]
    for _ in range(steps):
        schedule.step()
        assert schedule.get_last_lr() == optimizer.lr
        lrs.append(optimizer.lr)
    return lrs


def torch_lrs(make_scheduler, steps=STEPS):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=BASE_LR)
    scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def torch_warmup(warmup_steps, then=None):
    """What the torch backend emits for a warmup, optionally followed by another schedule."""

    def make(lr_scheduler, optimizer):
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup_steps + 1),
                                     total_iters=warmup_steps)
        if then is None:
            return ramp
        return lr_scheduler.SequentialLR(optimizer, [ramp, then(lr_scheduler, optimizer)],
                                         milestones=[warmup_steps])

    return make


def assert_same_lrs(ours, theirs):
    # torch updates most schedules recursively, we use the closed form: both are exact
    # up to float64 rounding, so they agree far beyond float32 precision.
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-15)


@pytest.mark.torch
@settings(max_examples=15, deadline=None)
@given(step_size=st.integers(1, 12), gamma=st.floats(0.05, 1.0))
def test_step_lr_matches_torch(step_size, gamma):
    assert_same_lrs(
        numpy_lrs(lambda opt: StepLR(opt, step_size, gamma)),
        torch_lrs(lambda sched, opt: sched.StepLR(opt, step_size, gamma)),
    )


@pytest.mark.torch
@settings(max_examples=15, deadline=None)
@given(t_max=st.integers(1, 40), eta_min=st.sampled_from([0.0, 1e-4, 0.05]))
def test_cosine_matches_torch_including_past_t_max(t_max, eta_min):
    assert_same_lrs(
        numpy_lrs(lambda opt: CosineAnnealingLR(opt, t_max, eta_min)),
        torch_lrs(lambda sched, opt: sched.CosineAnnealingLR(opt, t_max, eta_min)),
    )


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning")  # SequentialLR calls step(epoch) internally
@pytest.mark.parametrize("warmup_steps", [1, 4, 10])
@pytest.mark.parametrize("then", ["none", "step", "cosine"])
def test_linear_warmup_matches_torch_linear_then_sequential(warmup_steps, then):
    ours_after = {
        "none": lambda opt: None,
        "step": lambda opt: StepLR(opt, step_size=3, gamma=0.5),
        "cosine": lambda opt: CosineAnnealingLR(opt, T_max=12, eta_min=0.01),
    }[then]
    torch_after = {
        "none": None,
        "step": lambda sched, opt: sched.StepLR(opt, step_size=3, gamma=0.5),
        "cosine": lambda sched, opt: sched.CosineAnnealingLR(opt, T_max=12, eta_min=0.01),
    }[then]
    assert_same_lrs(
        numpy_lrs(lambda opt: LinearWarmup(opt, warmup_steps, after=ours_after(opt))),
        torch_lrs(torch_warmup(warmup_steps, torch_after)),
    )


def test_warmup_ramps_to_the_base_lr_then_hands_over():
    lrs = numpy_lrs(lambda opt: LinearWarmup(opt, 3, after=StepLR(opt, 2, gamma=0.1)), steps=6)
    np.testing.assert_allclose(lrs, [BASE_LR * f for f in (0.25, 0.5, 0.75, 1, 1, 0.1, 0.1)])


@pytest.mark.parametrize(
    "make_schedule",
    [
        lambda opt: StepLR(opt, 4, gamma=0.5),
        lambda opt: CosineAnnealingLR(opt, 9, eta_min=0.01),
        lambda opt: LinearWarmup(opt, 5, after=CosineAnnealingLR(opt, 9)),
    ],
    ids=["step", "cosine", "warmup-cosine"],
)
def test_resume_continues_the_same_sequence(make_schedule):
    straight = numpy_lrs(make_schedule)
    optimizer = make_optimizer("adam", ParamBuffer({"w": (2,)}), lr=BASE_LR)
    schedule = make_schedule(optimizer)
    for _ in range(12):
        schedule.step()
    state = schedule.state_dict()
    assert state["last_epoch"].shape == () and int(state["last_epoch"]) == 12

    fresh_optimizer = make_optimizer("adam", ParamBuffer({"w": (2,)}), lr=BASE_LR)
    resumed = make_schedule(fresh_optimizer)
    resumed.load_state_dict(state)
    lrs = [fresh_optimizer.lr]
    for _ in range(STEPS - 12):
        resumed.step()
        lrs.append(fresh_optimizer.lr)
    assert lrs == straight[12:]


def test_schedule_arguments_are_checked():
    optimizer = make_optimizer("sgd", ParamBuffer({"w": (2,)}), lr=0.1)
    with pytest.raises(ValueError, match="step_size must be a positive whole number"):
        StepLR(optimizer, 0)
    with pytest.raises(ValueError, match="T_max must be a positive whole number"):
        CosineAnnealingLR(optimizer, 0)
    with pytest.raises(ValueError, match="warmup_steps must be a positive whole number"):
        LinearWarmup(optimizer, 0)
    other = make_optimizer("sgd", ParamBuffer({"w": (2,)}), lr=0.1)
    with pytest.raises(ValueError, match="same optimizer"):
        LinearWarmup(optimizer, 3, after=StepLR(other, 2))


# ---------------------------------------------------------------- gradient clipping

CLIP_SHAPES = {"a.weight": (16, 8), "a.bias": (16,), "b.weight": (3, 16)}


@pytest.mark.torch
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    grad_scale=st.floats(1e-3, 1e2),
    max_norm=st.floats(1e-2, 50.0),
)
def test_clip_grad_norm_matches_torch(seed, grad_scale, max_norm):
    rng = np.random.default_rng(seed)
    buf = ParamBuffer(CLIP_SHAPES)
    buf.grad[...] = grad_scale * rng.standard_normal(buf.grad.size)
    params = []
    for name, shape in CLIP_SHAPES.items():
        param = torch.nn.Parameter(torch.zeros(shape))
        param.grad = torch.from_numpy(buf.grads[name].copy())
        params.append(param)

    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    total_norm = clip_grad_norm(buf, max_norm)

    assert isinstance(total_norm, float)
    np.testing.assert_allclose(total_norm, expected_norm.item(), rtol=1e-6)
    for name, param in zip(CLIP_SHAPES, params, strict=True):
        np.testing.assert_allclose(buf.grads[name], param.grad.numpy(), rtol=2e-6, atol=1e-12)
    assert buf.grad.dtype == np.float32


def test_clip_grad_norm_leaves_small_gradients_alone():
    buf = ParamBuffer(CLIP_SHAPES)
    buf.grad[...] = 0.01
    before = buf.grad.copy()
    assert clip_grad_norm(buf, max_norm=100.0) == pytest.approx(0.01 * np.sqrt(buf.grad.size))
    np.testing.assert_array_equal(buf.grad, before)
