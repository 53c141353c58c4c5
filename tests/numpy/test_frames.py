"""The compiled copies between a map and its flat frame (``frames.copy``) against NumPy's
phases (``windows.pad_into_phases``): at unit stride, at stride 2 (whose column phases are
copied a pair of values at a time) and 3, 1-D and 2-D, padding on either side, odd and even
widths, a margin, and back out of the frame."""

import math

import numba
import numpy as np
import pytest

from nnspec.backends.numpy.kernels import frames
from nnspec.backends.numpy.kernels.windows import pad_into_phases


def expected_frame(x, stride, corner, grid, margin, length):
    """The frame by NumPy: each phase's padded grid per sample, after ``margin`` zeros."""
    spatial = x.shape[2:]
    padding = [(lo, g * s - size - lo) for lo, g, s, size in zip(corner, grid, stride, spatial)]
    cropped = [(lo, max(0, hi)) for lo, hi in padding]
    phases, _ = pad_into_phases(np.swapaxes(x, 0, 1), cropped, stride)
    phases = phases[(Ellipsis, *(slice(0, g) for g in grid))]
    flat = np.zeros((len(phases), x.shape[1], length), np.float32)
    cells = x.shape[0] * math.prod(grid)
    flat[:, :, margin:margin + cells] = phases.reshape(len(phases), x.shape[1], -1)
    return flat


@pytest.mark.parametrize("shape, stride, corner, grid, margin", [
    ((3, 5, 9, 9), (2, 2), (1, 1), (6, 6), 0),      # a 3x3/2 layer's padded phases, odd map
    ((2, 4, 8, 10), (2, 2), (1, 1), (5, 6), 7),     # even map, a margin
    ((2, 3, 7, 8), (2, 2), (0, 0), (4, 4), 0),      # no padding
    ((2, 3, 7, 8), (2, 2), (3, 2), (7, 7), 5),      # odd padding on the left: phases swap
    ((2, 3, 9, 9), (1, 2), (2, 3), (13, 8), 0),     # stride 2 along columns only
    ((2, 3, 9, 9), (2, 1), (1, 1), (6, 11), 0),     # along rows only
    ((2, 3, 10, 10), (3, 3), (1, 1), (4, 4), 0),    # stride 3
    ((2, 3, 11), (2,), (2,), (8,), 3),              # 1-D
    ((2, 3, 9, 9), (2, 2), (1, 1), (5, 4), 0),      # a grid too small for the rows: cut
    ((1, 40, 16, 16), (2, 2), (3, 3), (11, 11), 0),  # both cores
])
def test_frames_are_the_padded_phases_and_copy_back(shape, stride, corner, grid, margin):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    length = margin + shape[0] * math.prod(grid) + 4
    frame = np.full((math.prod(stride), shape[1], length), np.nan, np.float32)
    frames.copy(x, frame, True, stride, corner, grid, 0 + margin)
    expected = expected_frame(x, stride, corner, grid, margin, length)
    np.testing.assert_array_equal(frame, expected)
    # out of the frame: every map value its cell's, where the grid holds it
    back = np.full_like(x, np.nan)
    frames.copy(back, frame, False, stride, corner, grid, margin)
    held = tuple(slice(0, min(size, g * s - lo)) for size, g, s, lo in
                 zip(shape[2:], grid, stride, corner))
    np.testing.assert_array_equal(back[(Ellipsis, *held)], x[(Ellipsis, *held)])


def test_both_column_phases_are_copied_without_gathers_or_scatters():
    """A pair of values at a time is loads and shuffles; every other value (a phase at a
    time) compiled to a vector gather, which AMD's cores run a value at a time."""
    @numba.njit(error_model="numpy")
    def pairs(values, frame, to_frame):
        frames._pairs(values, frame, to_frame, 0, 0, 50, 50)

    values, frame = np.arange(100, dtype=np.float32), np.zeros(100, np.float32)
    pairs(values, frame, True)
    np.testing.assert_array_equal(frame, np.concatenate([values[::2], values[1::2]]))
    code = pairs.inspect_llvm(pairs.signatures[0])
    assert "llvm.masked.gather" not in code and "llvm.masked.scatter" not in code
