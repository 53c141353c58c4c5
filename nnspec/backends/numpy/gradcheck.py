"""Central-difference gradient checks for kernels written to the `(out, backward)` convention.

Every kernel of nnspec is checked this way in float64 (torch is the float32 oracle); the same
check serves anyone who adds a kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _is_float_array(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def numeric_gradient(loss: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of `loss()` with respect to every element of `array`, which is
    perturbed in place (and restored)."""
    grad = np.zeros_like(array)
    for element in np.ndindex(array.shape):
        original = array[element]
        array[element] = original + eps
        plus = loss()
        array[element] = original - eps
        minus = loss()
        array[element] = original
        grad[element] = (plus - minus) / (2 * eps)
    return grad


def check_gradients(kernel, arrays, differentiable=None, *, eps: float = 1e-6,
                    rtol: float = 1e-5, atol: float = 1e-6, seed: int = 1) -> None:
    """Assert that `kernel`'s backward of sum(out * probe) equals central differences.

    Float arrays are promoted to float64. `differentiable` is the set of argument positions
    that must get a gradient (default: every float array); every other argument must get
    None. Python numbers and integer arrays pass through unchanged.
    """
    arrays = [a.astype(np.float64) if _is_float_array(a) else a for a in arrays]
    if differentiable is None:
        differentiable = {i for i, a in enumerate(arrays) if _is_float_array(a)}
    out, backward = kernel(*arrays)
    probe = np.random.default_rng(seed).standard_normal(np.shape(out))
    grads = backward(probe)
    assert len(grads) == len(arrays), f"{len(grads)} gradients for {len(arrays)} arguments"
    for index, (array, grad) in enumerate(zip(arrays, grads)):
        if index not in differentiable or array is None:
            assert grad is None, f"argument {index} should get no gradient"
            continue
        numeric = numeric_gradient(lambda: float(np.sum(kernel(*arrays)[0] * probe)), array, eps)
        assert grad.dtype == np.float64, f"argument {index}: gradient is {grad.dtype}"
        np.testing.assert_allclose(grad, numeric, rtol=rtol, atol=atol,
                                   err_msg=f"argument {index}")
