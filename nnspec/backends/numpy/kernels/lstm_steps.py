"""A float32 LSTM direction in sample-major layout: each step's recurrent product on the
register tiles, its gate arithmetic one compiled pass, both on both cores.

`recurrent.py` keeps its sequences time-major with the batch innermost, (T, rows, N), for
NumPy's passes; an LSTM step there was BLAS's product of the (4H, H + 1) weights with the
(H + 1, N) state (2 x 1024 x 257 x 32 flops in 78 us, the narrow N its weak shape), ten
NumPy passes over (4H, N) blocks, and in the backward five passes over the whole sequence
and seven a step. Here a step's rows are samples, (N, 4H): a step's product is the tiles'
(``tiled.Product``: N rows of weights, the state the step starts from, by the transposed
recurrent weights' rows, 4H positions long, read from panels; where the input is narrow,
``_folds``, the step's input beside the state, by the input weights' rows stacked on
them), and compiled arithmetic makes the step's gates, cell and state from it, the state
where the next step's product reads it (a product reads its rows in place). Backward, a
step's product takes its gate gradients back to the state before it (and, where it folds,
to its input), and the arithmetic makes the gate gradients. Every step of a direction is one job
(``_steps_job``): where each core's product rows are its own samples the cores never meet;
else they meet at a barrier after each step's product and after its arithmetic. The weight
gradients are one product after the loop, (4H, T * N) by (T * N, F + 1 + H + 1), each
step's input kept beside the state it starts from. Gates are in torch's order (i, f, g,
o), so that neither the weights nor their gradients are reordered; the sigmoid ones'
pre-activations are halved, as in `recurrent_cells`.
"""

from __future__ import annotations

import numba
import numpy as np

from . import gemm, tiled, workers
from .blas import address
from .fused import tanh
from .workers import floats, integers, part_range

_F = np.float32


@numba.njit(inline="always")
def _gate_rows(gates, n, hidden):
    """Sample n's four gate rows (i, f, g, o) of the (N, 4H) gates, as slices (LLVM
    vectorises a loop over slices)."""
    row = n * 4 * hidden
    return (gates[row:row + hidden], gates[row + hidden:row + 2 * hidden],
            gates[row + 2 * hidden:row + 3 * hidden], gates[row + 3 * hidden:row + 4 * hidden])


_STEP_PARAMETERS = 12


@workers.Task.element_wise
def _steps_job(args, range_m, range_n, sa, sb, part):
    """params (parts, steps, 1 for the backward, the parts' product parameters (a row of
    ``tiled.PRODUCT_PARAMETERS`` each), their step parameters (a row of ``_STEP_PARAMETERS``
    each), the step parameters that move with the step (rows of index, address at step 0,
    bytes a step, step offset), how many, the product's out at step 0 and its bytes a step,
    backward 1 where the last step has a cell gradient carried in (a final one's), 1 where
    the parts must meet, the address of two int64 zeros for their meetings, and the
    product's weights at step 0 and their bytes a step). Every step of a direction in one
    dispatch; backward, a last product after the steps, at step -1's out and weights, takes
    step 0's gate gradients back. Where a part's samples, its product's rows and its
    weights are its own, the parts never meet; else (the weights too large for one core's
    cache) each step's product splits the positions, its arithmetic the samples, and the
    parts meet after each."""
    params = workers.parameters(args, 14)
    parts, steps, backward = params[0], params[1], params[2] != 0
    carried_in = params[9] != 0
    meeting, sync = params[10] != 0, params[11]
    first, end = part, part + 1
    if meeting and not workers.together(sync, part, parts):
        if part != 0:  # part 0 does it all
            return 0
        first, end, meeting = 0, parts, False
    size = tiled.PRODUCT_PARAMETERS
    products = integers(params, 3, parts * size)
    step_rows = integers(params, 4, parts * _STEP_PARAMETERS)
    moving = integers(params, 5, 4 * params[6])
    meetings = 0
    for k in range(steps):
        s = steps - 1 - k if backward else k
        # backward, the last step has no step after it to send its gradient back
        edge = backward and s == steps - 1
        for p in range(first, end):
            step_params = step_rows[p * _STEP_PARAMETERS:(p + 1) * _STEP_PARAMETERS]
            for field in range(params[6]):
                row = moving[4 * field:4 * field + 4]
                step_params[row[0]] = row[1] + (s + row[3]) * row[2]
            if backward:
                step_params[8] = 1 if not edge or carried_in else 0
            if not edge:
                product = products[p * size:(p + 1) * size]
                product[1] = params[7] + s * params[8]
                product[6] = params[12] + s * params[13]
                tiled.products_part(product, p)
        if not edge and meeting:
            meetings += 1
            workers.meet(sync + 8, parts, meetings)
        for p in range(first, end):
            step_params = step_rows[p * _STEP_PARAMETERS:(p + 1) * _STEP_PARAMETERS]
            if backward:
                _backward_part(step_params, p)
            else:
                _forward_part(step_params, p)
        if meeting:
            meetings += 1
            workers.meet(sync + 8, parts, meetings)
    if backward:  # step 0's gate gradients back: to the initial state, and its input
        for p in range(first, end):
            product = products[p * size:(p + 1) * size]
            product[1] = params[7] - params[8]
            product[6] = params[12] - params[13]
            tiled.products_part(product, p)
    return 0


@numba.njit(inline="always")
def _forward_part(params, part):
    """params (parts, hidden, batch, gates, previous cell, cell, tanh of the cell, the next
    step's rows, the rows' stride, features, the step's output, its stride). ``gates`` (N,
    4H) holds the step's pre-activations and gets the gates; the cells are (N, H). The next
    step's rows are N of its input (``features`` long, the ones included) followed by the
    state, which gets the new one, where the next step's product reads it, and the output,
    N rows of H."""
    hidden, batch, features = params[1], params[2], params[9]
    gate_rows = 4 * hidden
    gates = floats(params, 3, (batch * gate_rows,))
    previous = floats(params, 4, (batch * hidden,))
    cell = floats(params, 5, (batch * hidden,))
    tanh_cell = floats(params, 6, (batch * hidden,))
    row_stride = params[8]
    rows = floats(params, 7, (batch * row_stride,))
    out_stride = params[11]
    out = floats(params, 10, ((batch - 1) * out_stride + hidden,))
    half = _F(0.5)
    first, end = part_range(batch, part, params[0], 1)
    for n in range(first, end):  # a sample's rows as slices: LLVM vectorises those loops
        i, f, g, o = _gate_rows(gates, n, hidden)
        units = slice(n * hidden, (n + 1) * hidden)
        c_prev, c, tanh_c = previous[units], cell[units], tanh_cell[units]
        state_at = n * row_stride + features  # the next step's rows: input, then state
        h = rows[state_at:state_at + hidden]
        h_out = out[n * out_stride:n * out_stride + hidden]
        for u in range(hidden):
            out_gate = half + half * tanh(o[u])
            in_gate = half + half * tanh(i[u])
            forget = half + half * tanh(f[u])
            candidate = tanh(g[u])
            value = forget * c_prev[u] + in_gate * candidate
            squashed = tanh(value)
            o[u], i[u], f[u], g[u] = out_gate, in_gate, forget, candidate
            state = out_gate * squashed
            c[u], tanh_c[u], h[u], h_out[u] = value, squashed, state, state


@numba.njit(inline="always")
def _backward_part(params, part):
    """params (parts, hidden, batch, gates, d_state, previous cell, tanh of the cell,
    carried, carried in, d_state's row stride, the step's output gradient, its row stride).
    From the step's gates (N, 4H) and the gradient reaching its state, the step after's
    (``d_state``, N rows of H) plus the output's (N rows of H), ``gates`` gets the
    gradients of their (unhalved) pre-activations, where the next product reads them;
    ``carried`` (N, H) holds dc f of the step after (added when ``carried in``) and gets
    this step's."""
    hidden, batch = params[1], params[2]
    gate_rows = 4 * hidden
    gates = floats(params, 3, (batch * gate_rows,))
    d_stride = params[9]
    d_state = floats(params, 4, (batch * d_stride,))
    previous = floats(params, 5, (batch * hidden,))
    tanh_cell = floats(params, 6, (batch * hidden,))
    carried = floats(params, 7, (batch * hidden,))
    carried_in = params[8] != 0
    above_stride = params[11]
    above = floats(params, 10, ((batch - 1) * above_stride + hidden,))
    one = _F(1.0)
    first, end = part_range(batch, part, params[0], 1)
    for n in range(first, end):
        i, f, g, o = _gate_rows(gates, n, hidden)
        units = slice(n * hidden, (n + 1) * hidden)
        dh_after = d_state[n * d_stride:n * d_stride + hidden]
        dh_above = above[n * above_stride:n * above_stride + hidden]
        c_prev, tanh_c, dc_next = previous[units], tanh_cell[units], carried[units]
        for u in range(hidden):
            t = tanh_c[u]
            dh = dh_after[u] + dh_above[u]
            dc = dh * o[u] * (one - t * t)
            if carried_in:
                dc += dc_next[u]
            forget = f[u]
            out_gate, in_gate, candidate = o[u], i[u], g[u]
            o[u] = dh * t * out_gate * (one - out_gate)
            i[u] = dc * candidate * in_gate * (one - in_gate)
            f[u] = dc * c_prev[u] * forget * (one - forget)
            g[u] = dc * in_gate * (one - candidate * candidate)
            dc_next[u] = dc * forget


@workers.Task
def _panels_job(args, range_m, range_n, sa, sb, part):
    """params (parts, panels, their reads, positions (4H), weights, their row stride, the
    columns taken, an extra column's values or 0, scale or 0, the first read or column, 1
    for the backward's matrix): ``_panels``."""
    params = workers.parameters(args, 11)
    reads, positions, stride, columns = params[2], params[3], params[5], params[6]
    first, backward, panel = params[9], params[10] != 0, tiled.PANEL
    weights = floats(params, 4, (positions * stride,))
    if backward:  # position p is read p; the columns go from column ``first`` on
        panels = floats(params, 1, (-(-(first + columns) // panel) * positions * panel,))
        start, end = part_range(positions, part, params[0], 1)
        for p in range(start, end):
            row, done = p * stride, 0
            while done < columns:  # a run of columns within one panel at a time
                column = first + done
                lane = column % panel
                run = min(panel - lane, columns - done)
                at = ((column // panel) * positions + p) * panel + lane
                panels[at:at + run] = weights[row + done:row + done + run]
                done += run
        return 0
    # forward: position p is column p of the matrix, its reads from ``first`` on
    panels = floats(params, 1, (-(-positions // panel) * reads * panel,))
    extra = floats(params, 7, (positions,))
    scale = floats(params, 8, (positions,))
    start, end = part_range(positions, part, params[0], panel)
    for p in range(start, end):
        row, factor = p * stride, scale[p]
        at = ((p // panel) * reads + first) * panel + p % panel
        for j in range(columns):
            panels[at + j * panel] = factor * weights[row + j]
        if params[7] != 0:
            panels[at + columns * panel] = factor * extra[p]
    return 0


def _panels(out, weights, first, scale=None, extra=None, columns=None):
    """Fills ``out`` (``tiled.empty_panels``) from ``weights`` (4H rows) in one pass on both
    cores, where the sigmoid rows' halving, the bias column, the transpose and the panels'
    copy were four (with a reorder of the gates, H 512: 1.7 -> 0.4 ms). With ``scale``, the
    forward's (reads, 4H) matrix: read ``first + j`` of position p is scale[p] * weights[p,
    j], and after them scale[p] * extra[p] (the bias; None: none); without, the backward's
    (4H, width) matrix: column ``first + c`` of read p is weights[p, c]. ``columns``: the
    weights' first columns only (None: all)."""
    weights = np.ascontiguousarray(weights, _F)
    extra = None if extra is None else np.ascontiguousarray(extra, _F)
    scale = None if scale is None else np.ascontiguousarray(scale, _F).reshape(-1)
    parts = workers.parts() if weights.size >= 1 << 16 else 1
    params = np.array([parts, address(out), out.shape[1], len(weights), address(weights),
                       weights.shape[1], weights.shape[1] if columns is None else columns,
                       0 if extra is None else address(extra),
                       0 if scale is None else address(scale), first, scale is None],
                      np.int64)
    workers.run(_panels_job, params)


def _items(batch, parts, weight_bytes):
    """How many items a step's product splits its rows into: one per part where each
    part's core can keep the whole of the weights in its cache and has two samples or
    more, else 1 (the parts split the positions, each reading half the weights: with one
    sample a part, a step's product reads each weight for one or two multiply-adds, and
    reading all of them on each core cost more than the meetings; B 2 H 256, forward and
    backward, 3.2 + 3.6 -> 2.4 + 3.0 ms)."""
    fits = weight_bytes <= _CACHED_WEIGHT_BYTES and batch % parts == 0 and \
        batch >= 2 * parts
    return parts if fits else 1


def _folds(inputs, hidden, batch, parts) -> bool:
    """Whether a step's product takes the input's share too (the stacked weights): where
    the input is narrow, at most half the state, there are 8 samples or more, and the
    input's share of the weights stays in the cores' caches. Its share as one product over
    the sequence is then one BLAS runs at its worst, few reads (or, backward, few outputs
    a row) over a large output, and a step's product reads each input weight for every
    sample it reads a recurrent one for. Forward and backward, ms, as one product / folded
    (AMD EPYC, one process, alternately): T 64 F 64 B 32 H 1024 45.6 + 87.5 / 43.0 + 86.9;
    B 64 H 512 26.4 + 53.4 / 23.5 + 50.5; T 128 B 16 H 512 13.6 + 26.6 / 13.1 + 24.9; B 8
    H 512 7.1 + 15.0 / 6.8 + 14.1; T 64 B 16 H 512 F 256 8.6 + 16.4 / 8.1 + 15.5; F 64 B
    24 H 256 3.0 + 6.0 / 2.8 + 5.7 (a rule of 32 samples or more and all the stacked weights
    within the caches, from an Intel Xeon, had kept all of these as one product). With 4
    samples the reads added to each step cost more (T 128 B 4 H 256 1.7 + 2.8 / 2.0 +
    2.9), and with an input share past the caches too (T 32: F 256 B 32 H 1024, 4.2 MB,
    29.6 + 53.3 / 31.7 + 54.2; F 512 B 16 H 1024 23.8 + 36.2 / 31.2 + 41.1)."""
    input_bytes = 4 * (inputs + 1) * 4 * hidden
    return 2 * inputs <= hidden and batch >= _FOLDING_MIN_SAMPLES and \
        input_bytes <= parts * _CACHED_WEIGHT_BYTES


_FOLDING_MIN_SAMPLES = 8
# weights up to 1.5 MiB stay in a core's cache from step to step: measured on an Intel Xeon
# (2 MiB of L2 a core); on an AMD EPYC (1 MiB) 0.75 MiB split the steps of batch 8 H 256
# faster (`_items`) and of batch 64-128 slower, so it stays
_CACHED_WEIGHT_BYTES = 3 << 19


class _Blocks:
    """A (T, ...) array's step blocks by address, as ``_steps_job`` moves through them (a
    view a step, and its ``ctypes``, cost microseconds each). Holds the array: the job reads
    it by address."""

    def __init__(self, array):
        self.array = array
        self.base, self.step = address(array), array.strides[0]

    def moving(self, index, offset=0):
        """A row of ``_steps_job``'s moving step parameters: step s's block, s + offset."""
        return (index, self.base, self.step, offset)


def _all_steps(parts, steps, backward, product, step_params, moving, out, weights,
               carried_in, items):
    """Runs ``_steps_job``: every step of a direction, one dispatch (each part its own copy
    of the parameters it moves), the product's out and weights moving with the step
    (``out`` and ``weights`` (``_Blocks``), step s's blocks, s + 1's for the backward's
    weights), its rows in ``items`` (``_items``)."""
    meeting = items != parts
    moving = np.array(moving, np.int64)
    rows = np.tile(step_params, (parts, 1))
    products = np.tile(product.params, (parts, 1))
    sync = np.zeros(2, np.int64)
    weights_at = weights.base + backward * weights.step  # the backward's reads step s + 1's
    params = np.array([parts, steps, backward, address(products), address(rows),
                       address(moving), len(moving), out.base, out.step, carried_in, meeting,
                       address(sync), weights_at, weights.step], np.int64)
    workers.run(_steps_job, params)


# units (samples x hidden) from which a step's jobs split between the cores: at batch 8,
# H 256 (2,048 units) the LSTM's step went 1.71 -> 1.36 against torch split. They split at
# any batch from MEETING_MIN_HIDDEN units a sample, the cores splitting each step's
# product (``_items``): one core alone read all the weights every step, T 128 forward and
# backward, B 1 H 256 2.9 + 3.0 -> 2.0 + 2.1 ms, B 3 6.1 + 6.6 -> 3.1 + 5.1, B 1 H 512
# 21.8 + 23.4 -> 9.6 + 9.7 (at H 64 the same; at H 128 B 1 0.9 + 1.0 -> 0.7 + 0.8 and B 3
# 1.4 + 1.6 -> 1.2 + 1.6, not tried further, so the split starts at 256)
_SPLIT_MIN_UNITS = 1 << 10
_MEETING_MIN_HIDDEN = 256


def direction(layer_input, input_weights, recurrent, start, reverse, into):
    """``_direction``, an odd batch from PADDED_MIN_SAMPLES a sample more where that lets
    each core keep its own samples (``_items``): the phantom sample's input is zeros, its
    ones row too, so its state and cell stay zero and it adds nothing to any gradient. The
    cores then never meet, where the odd batch's split each step's product and met twice a
    step (T 64 H 256, forward and backward: B 9 8.7 -> 7.1 ms, B 11 9.7 -> 8.0)."""
    steps, features, batch = layer_input.shape
    gate_rows, hidden = recurrent[0].shape
    parts = _parts(batch, hidden)
    padded = -(-batch // parts) * parts
    reads = features + hidden + 1 if _folds(features - 1, hidden, padded, parts) else \
        hidden + 1
    if padded == batch or batch < PADDED_MIN_SAMPLES or \
            _items(padded, parts, 4 * reads * gate_rows) != parts:
        return _direction(layer_input, input_weights, recurrent, start, reverse, into)
    inputs = np.zeros((steps, features, padded), _F)
    inputs[:, :, :batch] = layer_input
    states = _sample_major(steps, hidden, padded)
    final, inner_backward = _direction(inputs, input_weights, recurrent,
                                       tuple(_with_phantoms(s, padded) for s in start),
                                       reverse, states)
    into[...] = states[:, :, :batch]

    def backward(d_states, d_final):
        d_padded = _sample_major(steps, hidden, padded)
        d_padded[:, :, :batch] = d_states
        d_padded[:, :, batch:] = 0
        d_input, d_start, d_input_weights, d_recurrent_weights = inner_backward(
            d_padded, tuple(None if d is None else _with_phantoms(d, padded)
                            for d in d_final))
        return d_input[:, :batch], tuple(d[:, :batch] for d in d_start), d_input_weights, \
            d_recurrent_weights

    return tuple(np.ascontiguousarray(f[:, :batch]) for f in final), backward


# odd batches from this many samples take a phantom sample (``direction``); at 5 the steps
# that meet were as fast (B 5 against B 6 at H 256: 5.0 against 5.3 ms)
PADDED_MIN_SAMPLES = 7


def _parts(batch, hidden):
    """How many parts a direction's steps split into."""
    return workers.parts() if batch * hidden >= _SPLIT_MIN_UNITS or \
        hidden >= _MEETING_MIN_HIDDEN else 1


def _sample_major(steps, hidden, batch):
    """A new (T, H, N) float32 array whose H is its unit-stride axis."""
    return np.empty((steps, batch, hidden), _F).transpose(0, 2, 1)


def _gate_scale(hidden):
    """(4H, 1): one half for the sigmoid gates' rows (i, f, o), one for g's."""
    scale = np.full((4 * hidden, 1), 0.5, _F)
    scale[2 * hidden:3 * hidden] = 1
    return scale


def _with_phantoms(columns, batch):
    """(H, N) columns followed by zero ones up to ``batch``."""
    out = np.zeros((len(columns), batch), _F)
    out[:, :columns.shape[1]] = columns
    return out


def _direction(layer_input, input_weights, recurrent, start, reverse, into):
    """One LSTM direction over ``layer_input`` (T, F + 1, N), its last row ones, from
    ``start`` (``()`` or (h0, c0), each (H, N)); the input weights (4H, F + 1) carry their
    bias column, and ``recurrent`` is (w_hh (4H, H), b_hh (4H,) or None), as torch has
    them. Writes the states to ``into``, a float32 (T,
    H, N) view whose H is its unit-stride axis (the layer's output, batch-first or a block
    of the next layer's input), in time order. Returns the final (h, c), each (H, N), and
    ``backward(d_states, d_final) -> (d_input (T, N, F) in time order, d_start,
    d_input_weights, d_recurrent_weights)``, the weight gradients as torch has them, each
    with its bias column.
    The input reads fastest as a (T, N, F + 1) array seen as (T, F + 1, N)."""
    steps, _, batch = layer_input.shape
    recurrent_weight, recurrent_bias = recurrent
    gate_rows, hidden = recurrent_weight.shape
    if recurrent_bias is None:
        recurrent_bias = np.zeros(gate_rows, _F)
    inputs = layer_input[::-1] if reverse else layer_input  # processing order
    features = inputs.shape[1]  # F + 1, the ones row included
    # each step's input and the state it starts from side by side, (T + 1, N, F + 1 + H +
    # 1): the weight gradients are then one product (T64 H256: 5.8 -> 5.2 ms)
    rows = np.empty((steps + 1, batch, features + hidden + 1), _F)
    rows[:steps, :, :features] = inputs.transpose(0, 2, 1)
    # the last block's input is never read: no step comes after the last
    step_rows = rows[:steps].reshape(steps * batch, -1)
    states = rows[:, :, features:]
    states[:, :, hidden] = 1
    states[0, :, :hidden] = start[0].T if start else 0
    cells = np.empty((steps + 1, batch, hidden), _F)
    cells[0] = start[1].T if start else 0
    tanh_cells = np.empty((steps, batch, hidden), _F)
    # where ``_folds``, each step's product reads its input and the state it starts from,
    # (N, F + 1 + H + 1), by the stacked weights (F + 1 + H + 1, 4H); else the input's
    # share is one product before the steps, which the steps' products add to
    parts = _parts(batch, hidden)
    folded_inputs = features if _folds(features - 1, hidden, batch, parts) else 0
    matrix = tiled.empty_panels(folded_inputs + hidden + 1, gate_rows)
    # the products' outputs start on a cache line, as their panels (``tiled.aligned_array``)
    gates = tiled.aligned_array((steps, batch, gate_rows))
    scale = _gate_scale(hidden)
    if folded_inputs:
        _panels(matrix, input_weights, 0, scale)
    else:
        gemm.matmul(step_rows[:, :features], (input_weights * scale).T,
                    out=gates.reshape(steps * batch, gate_rows))
    _panels(matrix, recurrent_weight, folded_inputs, scale, recurrent_bias)
    # each part's samples on its core throughout (the product's rows, with the whole of
    # the weights, and the step's arithmetic) where the weights fit its cache: the parts
    # never meet; else the products split the positions and the parts meet twice a step
    items = _items(batch, parts, 4 * matrix.shape[1] * gate_rows)
    # a step's product reads its rows in place: the input's last ``folded_inputs`` values
    # and the state after them
    product = tiled.Product(batch, gate_rows, matrix, gate_rows, rows.shape[2], items, parts,
                            accumulate=not folded_inputs)
    gate_blocks, cell_blocks, tanh_blocks, row_blocks = map(
        _Blocks, (gates, cells, tanh_cells, rows))
    out_rows = into.transpose(0, 2, 1)  # (T, N, H)
    if into.dtype != _F or out_rows.strides[2] != 4:
        raise ValueError("direction: the states go to float32 rows of H with unit stride")
    out_blocks = _Blocks(out_rows[::-1] if reverse else out_rows)
    params = np.array([parts, hidden, batch, 0, 0, 0, 0, 0, rows.shape[2], features, 0,
                       out_rows.strides[1] // 4], np.int64)
    _all_steps(parts, steps, False, product, params,
               [gate_blocks.moving(3), cell_blocks.moving(4), cell_blocks.moving(5, 1),
                tanh_blocks.moving(6), row_blocks.moving(7, 1), out_blocks.moving(10)],
               gate_blocks, _Blocks(rows[:, :, features - folded_inputs:]), False, items)
    final = (states[-1, :, :hidden].T.copy(), cells[-1].T.copy())

    def backward(d_states, d_final):
        d_final_h, d_final_cell = (*d_final, None, None)[:2]
        if reverse:
            d_states = d_states[::-1]
        # each backward step's product sends its gate gradients back to the state before
        # it (the step's arithmetic adds the output's gradient) and, where ``_folds``, to
        # its own input, through the stacked weights (4H, H + F). back_rows[k] holds the
        # gradient of state k - 1 from step k (of the initial state at k = 0), then that
        # of input k; a product after the steps gives block 0, and the last step's block
        # holds the final state's gradient
        width = hidden + folded_inputs - (folded_inputs > 0)  # (4H, H [+ F])
        back_matrix = tiled.empty_panels(gate_rows, width)
        _panels(back_matrix, recurrent_weight, 0)
        if folded_inputs:  # as the forward folded
            _panels(back_matrix, input_weights, hidden, columns=folded_inputs - 1)
        back_rows = tiled.aligned_array((steps + 1, batch, width))
        back_rows[-1, :, :hidden] = 0 if d_final_h is None else d_final_h.T
        above = d_states.transpose(0, 2, 1)  # (T, N, H), read as it is where it can be
        if above.dtype != _F or above.strides[2] != 4 or above.strides[1] < 0:
            above = np.ascontiguousarray(above, _F)
        back_items = _items(batch, parts, 4 * gate_rows * width)
        back_product = tiled.Product(batch, width, back_matrix, width, gate_rows, back_items,
                                     parts, accumulate=False)
        carried = np.empty((batch, hidden), _F)
        if d_final_cell is not None:
            carried[...] = d_final_cell.T
        back = np.array([parts, hidden, batch, 0, 0, 0, 0, address(carried), 0, width, 0,
                         above.strides[1] // 4], np.int64)
        d_blocks = _Blocks(back_rows[1:])  # step s's product writes block s + 1
        _all_steps(parts, steps, True, back_product, back,
                   [gate_blocks.moving(3), d_blocks.moving(4), cell_blocks.moving(5),
                    tanh_blocks.moving(6), _Blocks(above).moving(10)], d_blocks, gate_blocks,
                   d_final_cell is not None, back_items)
        d_start = (back_rows[0, :, :hidden].T, carried.T) if start else ()
        d_pre = gates.reshape(steps * batch, gate_rows)
        # C-ordered: the product the other way round ran 6% faster, but its transposed
        # result would be a strided copy into the model's gradients
        d_weights = gemm.matmul(d_pre.T, step_rows)
        d_input_weights, d_recurrent_weights = d_weights[:, :features], d_weights[:, features:]
        if width > hidden:  # (T, N, F), sample-major as the layer below takes it
            d_input = back_rows[:steps, :, hidden:]
        else:
            d_input = gemm.matmul(d_pre, input_weights[:, :-1]).reshape(steps, batch, -1)
        return d_input[::-1] if reverse else d_input, d_start, d_input_weights, \
            d_recurrent_weights

    return final, backward


def load() -> None:
    """Compile the jobs now (or load them from the cache), not on their first run."""
    _steps_job.load()
    _panels_job.load()
