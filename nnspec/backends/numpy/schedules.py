"""Learning-rate schedules with torch.optim.lr_scheduler's values, and gradient clipping.

A schedule counts its ``step()`` calls, exactly like a torch scheduler's ``last_epoch``,
and sets ``optimizer.lr`` to a closed-form function of that count. What one step means
(an epoch or an iteration) is the caller's choice, as in torch: the training loop must
call ``step()`` at the same place the generated PyTorch code calls ``scheduler.step()``.
torch's documented pattern, and the one nnspec follows, is once per epoch, after that
epoch's optimizer steps.

Construction applies the value for count 0, as torch's constructors do, so the first
optimizer step already uses the scheduled learning rate.
"""

from __future__ import annotations

import math

import numpy as np

from nnspec.backends.numpy.optim import Optimizer
from nnspec.backends.numpy.params import ParamBuffer


class LRSchedule:
    """Base class: ``lr_at(count)`` defines the schedule, the rest is bookkeeping."""

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, count: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self) -> float:
        return self.lr_at(self.last_epoch)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Only the step count: everything else comes from the spec, as the optimizer's lr does."""
        return {"last_epoch": np.array(self.last_epoch, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(LRSchedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps (torch's StepLR)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        if int(step_size) < 1:
            raise ValueError(f"step_size must be a positive whole number, not {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def lr_at(self, count: int) -> float:
        return self.base_lr * self.gamma ** (count // self.step_size)


class CosineAnnealingLR(LRSchedule):
    """Half a cosine from the base lr down to ``eta_min`` over ``T_max`` steps.

    Past ``T_max`` the cosine continues and the rate climbs again, as torch's does.
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        if int(T_max) < 1:
            raise ValueError(f"T_max must be a positive whole number, not {T_max}")
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, count: int) -> float:
        cosine = math.cos(math.pi * count / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + cosine) / 2.0


class LinearWarmup(LRSchedule):
    """Ramp the lr linearly up to the base lr over ``warmup_steps``, then run ``after``.

    Step t < W gets ``base_lr * (t + 1) / (W + 1)``, so the ramp starts above zero and
    reaches the base lr exactly at step W, where ``after`` starts from its own step 0
    (or the lr stays at the base lr when there is no ``after``). This is what torch gives
    for ``SequentialLR(opt, [LinearLR(opt, start_factor=1 / (W + 1), total_iters=W),
    after], milestones=[W])``, or for the LinearLR alone, which the torch backend emits.
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, after: LRSchedule | None = None
    ):
        if int(warmup_steps) < 1:
            raise ValueError(f"warmup_steps must be a positive whole number, not {warmup_steps}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("the schedule after the warmup must drive the same optimizer")
        self.warmup_steps = int(warmup_steps)
        self.start_factor = 1.0 / (self.warmup_steps + 1)
        self.after = after
        if after is not None:  # its constructor already moved optimizer.lr
            optimizer.lr = after.base_lr
        super().__init__(optimizer)

    def lr_at(self, count: int) -> float:
        if count >= self.warmup_steps:
            return self.base_lr if self.after is None else self.after.lr_at(count - self.warmup_steps)
        ramp = (1.0 - self.start_factor) * count / self.warmup_steps
        return self.base_lr * (self.start_factor + ramp)


def clip_grad_norm(buf: ParamBuffer, max_norm: float) -> float:
    """Scale all gradients so their joint 2-norm is at most ``max_norm``; return the norm before.

    Same rule as torch.nn.utils.clip_grad_norm_: the scale is
    ``max_norm / (norm + 1e-6)``, applied only when it is below 1. The norm is summed in
    float64: a float32 sum over a whole model's gradients drifts by about 1e-6.
    """
    wide = buf.grad.astype(np.float64)
    total_norm = math.sqrt(np.dot(wide, wide))
    scale = max_norm / (total_norm + 1e-6)
    if scale < 1.0:
        buf.grad *= scale
    return total_norm
