"""The recurrences of the recurrent layers, one step function per mode (Elman RNN, LSTM,
GRU), and how each mode arranges its gates (``CELLS``). `recurrent.py` stacks layers and
directions around them; the layouts they share (time-major, batch innermost, a ones row
carrying the bias, sigmoid gates first and pre-halved) are described there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import gru_steps
from .blas import address


@dataclass(frozen=True)
class Cell:
    """How one recurrent mode arranges its gates and runs its recurrence.

    ``run(pre, recurrent, recurrent_weight_t, states, nonlinearity, start)`` gets the input
    projections (T, G, N) in processing order, the recurrent weights with their bias column
    (G, H + 1), both with sigmoid rows halved, the plain W_hh.T for the backward, the
    ``states`` array to fill (its state 0 already the initial one) and ``start``, the given
    initial states (``()`` when zero; an LSTM's cell state is its second). It returns
    ``backward(d_states, d_final_cell, take) -> d_start``, the gradients of the given
    initial states, and the final cell state (an LSTM's; else None). The backward hands the
    gradients of the (unhalved) input and recurrent projections to ``take(steps, d_pre,
    d_recurrent)`` a block of steps at a time (``steps`` a slice, in processing order),
    each a tuple of feature-major (rows, steps * N) blocks that stack to the G gate rows
    (the same tuple when they are equal), valid until ``take`` returns. The backward runs
    once, so it may overwrite ``pre`` and whatever ``run`` saved.
    """

    gate_order: tuple[int, ...]  # torch's gate block for each internal block
    sigmoid_gates: int  # the leading internal blocks that pass through a sigmoid
    run: Callable


# from this batch on, the input projection and the weight gradients are one product per
# step, over the batch (long enough for BLAS), instead of one product over feature-major
# copies of the whole sequence or of blocks of steps (GRU T64 H256 at batch 256: those
# copies took 40 ms of a 230 ms step)
STEPWISE_MIN_BATCH = 128

# columns (steps x batch) per block of the weight-gradient products: an inner dimension
# long enough for BLAS's full rate, a few MiB of gradients at a time
BLOCK_COLUMNS = 512


def feature_major(time_rows_batch):
    """(T, R, N) -> contiguous (R, T * N): every step's columns side by side, for one product
    that sums a weight gradient over all steps."""
    steps, rows, batch = time_rows_batch.shape
    return np.ascontiguousarray(time_rows_batch.transpose(1, 0, 2)).reshape(rows, steps * batch)


def _in_blocks(d_pre, d_recurrent, take):
    """``take`` every block of steps of whole-sequence gradients given as (T, R_i, N) row
    blocks: feature-major copies of a block of steps, or one step's rows as they are from
    ``STEPWISE_MIN_BATCH`` on."""
    steps, _, batch = d_pre[0].shape
    span = 1 if batch >= STEPWISE_MIN_BATCH else max(1, BLOCK_COLUMNS // batch)
    for first in range(0, steps, span):
        block = slice(first, min(steps, first + span))
        pre_rows = tuple(feature_major(part[block]) for part in d_pre)
        take(block, pre_rows, pre_rows if d_recurrent is d_pre else
             tuple(feature_major(part[block]) for part in d_recurrent))


def _project_state(recurrent, state, zero, out):
    """out = recurrent @ state; a zero state leaves only the bias column."""
    if zero:
        np.copyto(out, recurrent[:, -1:])
    else:
        np.matmul(recurrent, state, out=out)


def _state_grad(d_state, recurrent_weight_t, d_next_projection, out):
    """out = the gradient reaching a step's state: the output's own, plus (before the last
    step, ``d_next_projection`` not None) what the next step's recurrent projection sends."""
    if d_next_projection is None:
        np.copyto(out, d_state)
    else:
        np.matmul(recurrent_weight_t, d_next_projection, out=out)
        out += d_state


def _lstm_steps(pre, recurrent, recurrent_weight_t, states, _nonlinearity, start):
    """LSTM recurrence with internal gate order (o, i, f, g): the sigmoid gates first."""
    steps, gate_rows, batch = pre.shape
    hidden = gate_rows // 4
    dtype = pre.dtype
    gates = np.empty((steps, gate_rows, batch), dtype)
    cells = np.empty((steps + 1, hidden, batch), dtype)
    cells[0] = start[1] if start else 0
    tanh_cells = np.empty((steps, hidden, batch), dtype)
    input_times_candidate = np.empty((steps, hidden, batch), dtype)
    o, i, f, g = (slice(k * hidden, (k + 1) * hidden) for k in range(4))
    sigmoids = slice(0, 3 * hidden)
    outputs = states[1:, :hidden]
    # iterating over per-step views costs less interpreter time than indexing every array
    per_step = zip(pre, gates, states[:-1], outputs, cells[:-1], cells[1:],
                   input_times_candidate, tanh_cells)
    for t, (pre_t, gate, h_prev, h, c_prev, c, i_times_g, tanh_c) in enumerate(per_step):
        _project_state(recurrent, h_prev, t == 0 and not start, gate)
        gate += pre_t
        np.tanh(gate, out=gate)
        gate[sigmoids] *= 0.5
        gate[sigmoids] += 0.5
        np.multiply(gate[f], c_prev, out=c)
        np.multiply(gate[i], gate[g], out=i_times_g)
        c += i_times_g
        np.tanh(c, out=tanh_c)
        np.multiply(gate[o], tanh_c, out=h)
    final_cell = cells[-1].copy()

    def backward(d_states, d_final_cell, take):
        # The factors that turn d_h into d_c and d_o, and d_c into d_i, d_f and d_g, each in
        # two passes from the saved products h = o tanh c and i g. They overwrite saved arrays
        # the rest of the backward no longer reads (it runs once), as do d_gates and d_cells.
        gate_o, gate_i, gate_f, gate_g = (gates[:, block] for block in (o, i, f, g))
        dh_dc = tanh_cells  # o (1 - tanh^2 c)
        np.multiply(outputs, tanh_cells, out=dh_dc)
        np.subtract(gate_o, dh_dc, out=dh_dc)
        dc_dg = gate_g  # i (1 - g^2)
        np.multiply(input_times_candidate, gate_g, out=dc_dg)
        np.subtract(gate_i, dc_dg, out=dc_dg)
        dc_di = gate_i  # g i (1 - i)
        np.multiply(input_times_candidate, gate_i, out=dc_di)
        np.subtract(input_times_candidate, dc_di, out=dc_di)
        dh_do = gate_o  # tanh c o (1 - o)
        np.multiply(outputs, gate_o, out=dh_do)
        np.subtract(outputs, dh_do, out=dh_do)
        dc_df = input_times_candidate  # c_prev f (1 - f)
        np.multiply(gate_f, gate_f, out=dc_df)
        np.subtract(gate_f, dc_df, out=dc_df)
        dc_df *= cells[:-1]

        # d_gates[t] holds the gradient of the pre-activations (o, i, f, g) in one block
        d_gates = pre
        d_cells = cells[1:]
        dh_buffer = np.empty((hidden, batch), dtype)
        carried = np.empty((hidden, batch), dtype)
        next_d_gate = next_dc = next_forget = None  # of step t + 1
        per_step = zip(*(a[::-1] for a in (d_states, dh_dc, dh_do, dc_di, dc_df, dc_dg,
                                            d_gates, d_cells, gate_f)))
        for d_out, dh_dc_t, dh_do_t, dc_di_t, dc_df_t, dc_dg_t, d_gate, dc, forget in per_step:
            if next_d_gate is None:
                dh = d_out
            else:
                dh = dh_buffer
                np.matmul(recurrent_weight_t, next_d_gate, out=dh)
                dh += d_out
            np.multiply(dh, dh_do_t, out=d_gate[o])
            np.multiply(dh, dh_dc_t, out=dc)
            if next_d_gate is not None:
                np.multiply(next_forget, next_dc, out=carried)
                dc += carried
            elif d_final_cell is not None:
                dc += d_final_cell
            np.multiply(dc, dc_di_t, out=d_gate[i])
            np.multiply(dc, dc_df_t, out=d_gate[f])
            np.multiply(dc, dc_dg_t, out=d_gate[g])
            next_d_gate, next_dc, next_forget = d_gate, dc, forget
        d_start = ()
        if start:  # through step 0's recurrent projection, and its forget gate
            d_start = (recurrent_weight_t @ next_d_gate, next_forget * next_dc)
        d_gates = (d_gates,)
        _in_blocks(d_gates, d_gates, take)
        return d_start

    return backward, final_cell


def _gru_steps(pre, recurrent, recurrent_weight_t, states, _nonlinearity, start):
    """GRU recurrence in torch's gate order (r, z, n), with torch's
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) and h' = (1 - z) * n + z * h.

    Saved for backward: the gates r and z, the candidates n and W_hn h + b_hn (and the
    states), not the input or recurrent projections, whose storage backward would only
    reuse; its factors are then computed in the storage of the saved values they replace.
    Float32 runs each step's arithmetic as one compiled job (``gru_steps``)."""
    steps, gate_rows, batch = pre.shape
    hidden = gate_rows // 3
    dtype = pre.dtype
    projection = np.empty((gate_rows, batch), dtype)  # one step's recurrent projection
    resets_updates = np.empty((steps, 2 * hidden, batch), dtype)
    candidates = np.empty((steps, hidden, batch), dtype)
    projected_n = np.empty((steps, hidden, batch), dtype)
    resets, updates = resets_updates[:, :hidden], resets_updates[:, hidden:]
    pre_rz, pre_n = pre[:, : 2 * hidden], pre[:, 2 * hidden:]
    previous, outputs = states[:-1, :hidden], states[1:, :hidden]
    if dtype == np.float32:
        return _compiled_gru_steps(pre, recurrent, recurrent_weight_t, states, start,
                                   projection, resets_updates, projected_n, candidates)
    for t in range(steps):
        _project_state(recurrent, states[t], t == 0 and not start, projection)
        gate = resets_updates[t]
        np.add(projection[: 2 * hidden], pre_rz[t], out=gate)
        np.tanh(gate, out=gate)
        gate *= 0.5
        gate += 0.5
        np.copyto(projected_n[t], projection[2 * hidden:])
        candidate = candidates[t]
        np.multiply(resets[t], projected_n[t], out=candidate)
        candidate += pre_n[t]
        np.tanh(candidate, out=candidate)
        np.subtract(previous[t], candidate, out=outputs[t])
        outputs[t] *= updates[t]
        outputs[t] += candidate

    def backward(d_states, _d_final_cell, take):
        # factors from d_h to the gradient of the recurrent projection (r, z, n)
        dh_dz = np.subtract(previous, candidates)  # (h - n) z (1 - z)
        scratch = np.subtract(1, updates)
        scratch *= updates
        dh_dz *= scratch
        dh_dn = candidates  # (1 - z)(1 - n^2): through n's tanh
        np.square(candidates, out=dh_dn)
        np.subtract(1, dh_dn, out=dh_dn)
        np.subtract(1, updates, out=scratch)
        dh_dn *= scratch
        dh_dr = projected_n  # dh_dn (W_hn h + b_hn) r (1 - r)
        dh_dr *= dh_dn
        np.subtract(1, resets, out=scratch)
        scratch *= resets
        dh_dr *= scratch
        dh_dhn = resets  # dh_dn r
        dh_dhn *= dh_dn

        d_projections = np.empty((steps, gate_rows, batch), dtype)
        d_r, d_z, d_hn = (d_projections[:, k * hidden:(k + 1) * hidden] for k in range(3))
        dhs = scratch
        carried = np.empty((hidden, batch), dtype)
        for t in reversed(range(steps)):
            dh = dhs[t]
            last = t == steps - 1
            _state_grad(d_states[t], recurrent_weight_t, None if last else d_projections[t + 1],
                        dh)
            if not last:
                np.multiply(updates[t + 1], dhs[t + 1], out=carried)
                dh += carried
            np.multiply(dh, dh_dr[t], out=d_r[t])
            np.multiply(dh, dh_dz[t], out=d_z[t])
            np.multiply(dh, dh_dhn[t], out=d_hn[t])
        d_start = ()
        if start:  # through step 0's recurrent projection and its update gate
            d_start = (recurrent_weight_t @ d_projections[0] + updates[0] * dhs[0],)
        d_pre_n = dh_dn
        d_pre_n *= dhs
        _in_blocks((d_projections[:, : 2 * hidden], d_pre_n), (d_projections,), take)
        return d_start

    return backward, None


def _compiled_gru_steps(pre, recurrent, recurrent_weight_t, states, start, projection,
                        resets_updates, projected_n, candidates):
    """``_gru_steps`` in float32, its arithmetic ``gru_steps``' jobs: the same saved values,
    and in the backward no passes over the whole sequence."""
    steps, gate_rows, batch = pre.shape
    hidden = gate_rows // 3
    jobs = gru_steps.Steps(hidden, batch)
    block = hidden * batch * 4  # bytes of an (H, N) block
    state_bytes = states[0].nbytes
    for t in range(steps):
        _project_state(recurrent, states[t], t == 0 and not start, projection)
        jobs.step(address(projection), address(pre[t]),
                  address(states) + t * state_bytes, address(resets_updates[t]),
                  address(projected_n) + t * block, address(candidates) + t * block,
                  address(states) + (t + 1) * state_bytes)

    def backward(d_states, _d_final_cell, take):
        d_states = np.ascontiguousarray(d_states, np.float32)
        span = min(steps, max(1, BLOCK_COLUMNS // batch))
        # a block of steps' gradients, feature-major (rows, steps, N), written by the steps
        # where ``take`` reads them: n's pre-activation, then the recurrent projection's
        # (r, z, n). A whole sequence of them and its feature-major copies were the GRU's
        # backward peak (T 64, H 256, batch 32: 6 + 2 + 3 MiB, now 2)
        rows = np.empty((4 * hidden, span, batch), np.float32)
        from_next = np.empty((hidden, batch), np.float32)  # the next step's product sends
        carried = np.empty((hidden, batch), np.float32)
        for end in range(steps, 0, -span):
            first = max(0, end - span)
            for t in reversed(range(first, end)):
                column = t - first
                jobs.step_back(address(d_states) + t * block,
                               0 if t == steps - 1 else address(from_next), address(carried),
                               t != steps - 1, address(resets_updates[t]),
                               address(projected_n) + t * block,
                               address(candidates) + t * block,
                               address(states) + t * state_bytes,
                               address(rows) + column * batch * 4, span * batch)
                if t or start:  # what this step sends back through its recurrent product
                    np.matmul(recurrent_weight_t, rows[hidden:, column], out=from_next)
            d_rows = rows[:, : end - first].reshape(4 * hidden, -1)
            take(slice(first, end), (d_rows[hidden:3 * hidden], d_rows[:hidden]),
                 (d_rows[hidden:],))
        # through step 0's recurrent projection and its update gate (carried)
        return (from_next + carried,) if start else ()

    return backward, None


def _elman_steps(pre, recurrent, recurrent_weight_t, states, nonlinearity, start):
    """Elman recurrence h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    steps, hidden, _ = pre.shape
    activation = ACTIVATIONS[nonlinearity]
    outputs = states[1:, :hidden]
    for t in range(steps):
        _project_state(recurrent, states[t], t == 0 and not start, outputs[t])
        outputs[t] += pre[t]
        activation(outputs[t], out=outputs[t])

    def backward(d_states, _d_final_cell, take):
        if nonlinearity == "tanh":
            slope = 1 - outputs * outputs
        else:
            slope = (outputs > 0).astype(pre.dtype)
        d_pre = pre  # the backward runs once; the input projection is no longer needed
        for t in reversed(range(steps)):
            grad = d_pre[t]
            _state_grad(d_states[t], recurrent_weight_t, None if t == steps - 1 else d_pre[t + 1],
                        grad)
            grad *= slope[t]
        d_start = (recurrent_weight_t @ d_pre[0],) if start else ()
        d_pre = (d_pre,)
        _in_blocks(d_pre, d_pre, take)
        return d_start

    return backward, None


def _relu(a, out):
    return np.maximum(a, 0, out=out)


ACTIVATIONS = {"tanh": np.tanh, "relu": _relu}

CELLS = {
    "rnn": Cell(gate_order=(0,), sigmoid_gates=0, run=_elman_steps),
    "lstm": Cell(gate_order=(3, 0, 1, 2), sigmoid_gates=3, run=_lstm_steps),
    "gru": Cell(gate_order=(0, 1, 2), sigmoid_gates=2, run=_gru_steps),
}
