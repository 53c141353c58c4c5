"""Shape kernels (transpose, permute, slicing, stack, pad, matmul): torch as the oracle in
float32, central differences in float64."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.backends.numpy.gradcheck import check_gradients
from nnspec.backends.numpy.kernels import shape
from tests.numpy.helpers import assert_close, torch

FEW = settings(max_examples=20, deadline=None)


def normal(rng, shape_):
    return rng.standard_normal(shape_).astype(np.float32)


def assert_matches_torch(kernel, torch_fn, arrays):
    """Forward and the gradients of sum(out * probe) agree with torch."""
    out, backward = kernel(*arrays)
    rng = np.random.default_rng(7)
    probe = normal(rng, out.shape)
    grads = backward(probe)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = torch_fn(*tensors)
    assert_close(np.asarray(out), expected)
    (expected * torch.tensor(probe)).sum().backward()
    for grad, tensor in zip(grads, tensors):
        assert_close(np.asarray(grad), tensor.grad)


@pytest.mark.torch
def test_transpose_and_permute_match_torch():
    rng = np.random.default_rng(0)
    x = normal(rng, (2, 3, 4, 5))
    assert_matches_torch(lambda a: shape.transpose(a, axis0=1, axis1=3),
                         lambda a: a.transpose(1, 3), [x])
    assert_matches_torch(lambda a: shape.permute(a, axes=(0, 3, 1, 2)),
                         lambda a: a.permute(0, 3, 1, 2), [x])
    check_gradients(lambda a: shape.permute(a, axes=(2, 0, 3, 1)), [x])
    check_gradients(lambda a: shape.transpose(a, axis0=0, axis1=2), [x])


@pytest.mark.torch
@FEW
@given(start=st.one_of(st.none(), st.integers(-6, 5)), stop=st.one_of(st.none(),
       st.integers(-6, 6)), step=st.integers(1, 3), axis=st.integers(0, 2))
def test_slices_match_torch(start, stop, step, axis):
    x = normal(np.random.default_rng(1), (6, 6, 6))
    if not len(range(6)[start:stop:step]):
        return  # an empty slice is refused by the shape rule
    index = [slice(None)] * 3
    index[axis] = slice(start, stop, step)
    assert_matches_torch(lambda a: shape.slice_axis(a, axis=axis, start=start, stop=stop,
                                                    step=step),
                         lambda a: a[tuple(index)], [x])


@pytest.mark.torch
def test_stack_and_pad_match_torch():
    rng = np.random.default_rng(2)
    xs = [normal(rng, (2, 3)) for _ in range(3)]
    for axis in (0, 1, 2, -1):
        assert_matches_torch(lambda *a, axis=axis: shape.stack(a, axis=axis),
                             lambda *a, axis=axis: torch.stack(a, dim=axis), xs)
    x = normal(rng, (2, 3, 4))
    widths = ((0, 0), (2, 0), (1, 3))
    assert_matches_torch(lambda a: shape.pad(a, widths=widths, value=0.5),
                         lambda a: torch.nn.functional.pad(a, (1, 3, 2, 0), value=0.5), [x])
    check_gradients(lambda a: shape.pad(a, widths=widths, value=-1.0), [x])
    check_gradients(lambda *a: shape.stack(a, axis=1), xs)


MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (4, 5)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 3)),
    ((4,), (4,)),
]


@pytest.mark.torch
@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_matches_torch_with_broadcasting_and_vectors(shapes):
    rng = np.random.default_rng(3)
    arrays = [normal(rng, s) for s in shapes]
    assert_matches_torch(shape.matmul, torch.matmul, arrays)
    check_gradients(shape.matmul, arrays)
