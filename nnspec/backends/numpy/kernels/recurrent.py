"""Recurrent layers (Elman RNN, LSTM, GRU) with PyTorch's parameters, gate order and results.

At the API, sequences are batch first, ``(N, T, F)``, and parameters carry torch's names,
shapes and gate order, so weights move to ``nn.RNN``/``nn.LSTM``/``nn.GRU`` unchanged.

Inside, the batch is the innermost axis, because a recurrence is many small steps and each
elementwise call is then one contiguous run:

- a layer's input is kept *feature-major*, ``(F + 1, T, N)``, with a last row of ones, so
  the input projection of every step (bias included) is one matrix product, and the bias
  gradient falls out of the weight-gradient product;
- each direction keeps its hidden states as ``(T + 1, H + 1, N)`` (state 0 is the zero
  initial state, the last row is ones), so one fused product per step applies every gate's
  recurrent weights and bias;
- gates are reordered so that every sigmoid gate comes first, and their rows are pre-scaled
  by one half: one ``tanh`` over the whole gate block then yields all of them, since
  ``sigmoid(a) = 0.5 + 0.5 * tanh(a / 2)``;
- before the reverse loop of the backward pass, everything that does not depend on the
  incoming gradient is computed for all steps at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def rnn(x, params, *, mode, hidden, layers, bidirectional, nonlinearity="tanh"):
    """Run a stacked recurrent net over ``x`` (N, T, F) from a zero initial state.

    ``mode`` is "rnn", "lstm" or "gru"; ``params`` maps torch's parameter names
    (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) to arrays; a missing bias means the layer
    has none (torch's ``bias=False``). ``nonlinearity`` ("tanh" or "relu") applies to "rnn".
    Returns the output sequence (N, T, dirs * H), as ``nn.LSTM(batch_first=True)`` does, and
    ``backward(d_output) -> (dx, d_params)`` with ``d_params`` keyed like ``params``.
    """
    cell = _CELLS.get(mode)
    if cell is None:
        raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {sorted(_CELLS)}")
    if mode == "rnn" and nonlinearity not in _ACTIVATIONS:
        raise ValueError(f"rnn nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    batch, steps, _ = x.shape
    directions = 2 if bidirectional else 1
    layer_input = _feature_major_with_ones(x.transpose(2, 1, 0))
    layer_backwards = []
    for layer in range(layers):
        output = np.empty((directions * hidden + 1, steps, batch), x.dtype)
        output[-1] = 1
        direction_backwards = []
        for direction in range(directions):
            names = _parameter_names(layer, direction)
            states, direction_backward = _run_direction(
                cell, layer_input, *(params.get(name) for name in names),
                reverse=direction == 1, nonlinearity=nonlinearity,
            )
            output[direction * hidden:(direction + 1) * hidden] = states.transpose(1, 0, 2)
            direction_backwards.append((names, direction_backward))
        layer_backwards.append(direction_backwards)
        layer_input = output
    result = np.ascontiguousarray(layer_input[:-1].transpose(2, 1, 0))

    def backward(d_output):
        d_params = {}
        d_layer_output = d_output.transpose(2, 1, 0)
        for direction_backwards in reversed(layer_backwards):
            d_layer_input = None
            for direction, (names, direction_backward) in enumerate(direction_backwards):
                d_states = d_layer_output[direction * hidden:(direction + 1) * hidden]
                d_input, *d_weights = direction_backward(d_states.transpose(1, 0, 2))
                if d_layer_input is None:
                    d_layer_input = d_input
                else:
                    d_layer_input += d_input
                for name, grad in zip(names, d_weights):
                    if name in params:
                        d_params[name] = grad
            d_layer_output = d_layer_input.reshape(-1, steps, batch)
        dx = np.ascontiguousarray(d_layer_output.transpose(2, 1, 0))
        return dx, d_params

    return result, backward


def last_step(output, *, hidden, bidirectional):
    """The sequence summary torch calls ``h_n`` of the top layer, shape (N, dirs * H).

    Forward direction: the output at the last step; backward direction: the output at the
    first step, where its pass over the sequence ends. ``backward(d) -> (d_output,)`` puts
    ``d`` back in place, zeros elsewhere, ready for ``rnn``'s backward.
    """
    if bidirectional:
        summary = np.concatenate([output[:, -1, :hidden], output[:, 0, hidden:]], axis=1)
    else:
        summary = output[:, -1].copy()

    def backward(d_summary):
        d_output = np.zeros_like(output)
        d_output[:, -1, :hidden] = d_summary[:, :hidden]
        if bidirectional:
            d_output[:, 0, hidden:] = d_summary[:, hidden:]
        return (d_output,)

    return summary, backward


@dataclass(frozen=True)
class _Cell:
    """How one recurrent mode arranges its gates and runs its recurrence."""

    gate_order: tuple[int, ...]  # torch's gate block for each internal block
    sigmoid_gates: int  # the leading internal blocks that pass through a sigmoid
    run: Callable  # (pre, recurrent, recurrent_weight, states, nonlinearity) -> backward


def _parameter_names(layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return tuple(f"{kind}{suffix}" for kind in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))


def _feature_major_with_ones(features_time_batch):
    """Copy an (F, T, N) view into a contiguous (F + 1, T, N) array whose last row is ones."""
    rows, steps, batch = features_time_batch.shape
    extended = np.empty((rows + 1, steps, batch), features_time_batch.dtype)
    extended[:-1] = features_time_batch
    extended[-1] = 1
    return extended


def _run_direction(cell, layer_input, w_ih, b_ih, w_hh, b_hh, *, reverse, nonlinearity):
    """One direction of one layer: returns its states (T, H, N) in time order and a backward.

    The backward takes d_states (T, H, N) in time order and returns
    ``(d_input (F + 1, T * N) minus the ones row, d_w_ih, d_b_ih, d_w_hh, d_b_hh)``.
    """
    rows, steps, batch = layer_input.shape
    hidden = w_hh.shape[1]
    gates = len(cell.gate_order)
    order = np.concatenate(
        [np.arange(block * hidden, (block + 1) * hidden) for block in cell.gate_order]
    )
    input_weights = _with_bias_column(w_ih, b_ih)[order]
    recurrent_weights = _with_bias_column(w_hh, b_hh)[order]
    scale = np.ones((gates * hidden, 1), layer_input.dtype)
    scale[: cell.sigmoid_gates * hidden] = 0.5
    flat_input = layer_input.reshape(rows, steps * batch)
    pre = ((input_weights * scale) @ flat_input).reshape(gates * hidden, steps, batch)
    if reverse:
        pre = pre[:, ::-1]
    states = np.empty((steps + 1, hidden + 1, batch), layer_input.dtype)
    states[0, :hidden] = 0
    states[:, hidden] = 1
    recurrent_weight_t = np.ascontiguousarray(recurrent_weights[:, :hidden].T)
    steps_backward = cell.run(pre, recurrent_weights * scale, recurrent_weight_t, states, nonlinearity)
    outputs = states[1:, :hidden]

    def backward(d_states):
        if reverse:
            d_states = d_states[::-1]
        d_pre, d_recurrent = steps_backward(np.ascontiguousarray(d_states))
        if reverse:
            d_pre = d_pre[::-1]
        d_pre = np.ascontiguousarray(d_pre.transpose(1, 0, 2)).reshape(gates * hidden, -1)
        d_recurrent = np.ascontiguousarray(d_recurrent.transpose(1, 0, 2)).reshape(gates * hidden, -1)
        previous_states = np.ascontiguousarray(states[:-1].transpose(1, 0, 2)).reshape(hidden + 1, -1)
        d_input_weights = _to_torch_order(d_pre @ flat_input.T, order)
        d_recurrent_weights = _to_torch_order(d_recurrent @ previous_states.T, order)
        d_input = input_weights[:, :-1].T @ d_pre
        return (
            d_input,
            d_input_weights[:, :-1], d_input_weights[:, -1],
            d_recurrent_weights[:, :-1], d_recurrent_weights[:, -1],
        )

    return (outputs[::-1] if reverse else outputs), backward


def _with_bias_column(weight, bias):
    column = np.zeros((weight.shape[0], 1), weight.dtype) if bias is None else bias[:, None]
    return np.concatenate([weight, column], axis=1)


def _to_torch_order(internal, order):
    result = np.empty_like(internal)
    result[order] = internal
    return result


def _lstm_steps(pre, recurrent, recurrent_weight_t, states, _nonlinearity):
    """LSTM recurrence with internal gate order (o, i, f, g): sigmoid gates first, and the
    three gates the cell-state gradient drives (i, f, g) adjacent."""
    gate_rows, steps, batch = pre.shape
    hidden = gate_rows // 4
    dtype = pre.dtype
    gates = np.empty((steps, gate_rows, batch), dtype)
    cells = np.empty((steps + 1, hidden, batch), dtype)
    cells[0] = 0
    tanh_cells = np.empty((steps, hidden, batch), dtype)
    input_times_candidate = np.empty((hidden, batch), dtype)
    o, i, f, g = (slice(k * hidden, (k + 1) * hidden) for k in range(4))
    for t in range(steps):
        gate = gates[t]
        np.matmul(recurrent, states[t], out=gate)
        gate += pre[:, t]
        np.tanh(gate, out=gate)
        sigmoids = gate[: 3 * hidden]
        sigmoids *= 0.5
        sigmoids += 0.5
        np.multiply(gate[f], cells[t], out=cells[t + 1])
        np.multiply(gate[i], gate[g], out=input_times_candidate)
        cells[t + 1] += input_times_candidate
        np.tanh(cells[t + 1], out=tanh_cells[t])
        np.multiply(gate[o], tanh_cells[t], out=states[t + 1, :hidden])

    def backward(d_states):
        # local[t] holds, per step, the factors that turn d_h into (d_c, d_o) (rows 0:2H)
        # and d_c into (d_i, d_f, d_g) (rows 2H:5H); grads[t] is laid out the same way, so
        # grads[t, H:] is the gradient of the pre-activations (o, i, f, g) in one block.
        local = np.empty((steps, 5 * hidden, batch), dtype)
        sigmoid_slope = gates[:, : 3 * hidden] * (1 - gates[:, : 3 * hidden])
        dh_to_dc = local[:, :hidden]
        np.square(tanh_cells, out=dh_to_dc)
        np.subtract(1, dh_to_dc, out=dh_to_dc)
        dh_to_dc *= gates[:, o]
        np.multiply(tanh_cells, sigmoid_slope[:, o], out=local[:, hidden:2 * hidden])
        np.multiply(gates[:, g], sigmoid_slope[:, i], out=local[:, 2 * hidden:3 * hidden])
        np.multiply(cells[:-1], sigmoid_slope[:, f], out=local[:, 3 * hidden:4 * hidden])
        dc_to_dg = local[:, 4 * hidden:]
        np.square(gates[:, g], out=dc_to_dg)
        np.subtract(1, dc_to_dg, out=dc_to_dg)
        dc_to_dg *= gates[:, i]
        del sigmoid_slope

        grads = np.empty((steps, 5 * hidden, batch), dtype)
        dh_buffer = np.empty((hidden, batch), dtype)
        carried = np.empty((hidden, batch), dtype)
        for t in reversed(range(steps)):
            if t == steps - 1:
                dh = d_states[t]
            else:
                dh = dh_buffer
                np.matmul(recurrent_weight_t, grads[t + 1, hidden:], out=dh)
                dh += d_states[t]
            grad = grads[t]
            np.multiply(
                local[t, : 2 * hidden].reshape(2, hidden, batch), dh,
                out=grad[: 2 * hidden].reshape(2, hidden, batch),
            )
            dc = grad[:hidden]
            if t < steps - 1:
                np.multiply(gates[t + 1, f], grads[t + 1, :hidden], out=carried)
                dc += carried
            np.multiply(
                local[t, 2 * hidden:].reshape(3, hidden, batch), dc,
                out=grad[2 * hidden:].reshape(3, hidden, batch),
            )
        d_pre = grads[:, hidden:]
        return d_pre, d_pre

    return backward


def _gru_steps(pre, recurrent, recurrent_weight_t, states, _nonlinearity):
    """GRU recurrence in torch's gate order (r, z, n), with torch's
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) and h' = (1 - z) * n + z * h."""
    gate_rows, steps, batch = pre.shape
    hidden = gate_rows // 3
    dtype = pre.dtype
    projections = np.empty((steps, gate_rows, batch), dtype)
    resets_updates = np.empty((steps, 2 * hidden, batch), dtype)
    candidates = np.empty((steps, hidden, batch), dtype)
    r, z, n = (slice(k * hidden, (k + 1) * hidden) for k in range(3))
    for t in range(steps):
        projection = projections[t]
        np.matmul(recurrent, states[t], out=projection)
        gate = resets_updates[t]
        np.add(projection[: 2 * hidden], pre[: 2 * hidden, t], out=gate)
        np.tanh(gate, out=gate)
        gate *= 0.5
        gate += 0.5
        candidate = candidates[t]
        np.multiply(gate[r], projection[n], out=candidate)
        candidate += pre[n, t]
        np.tanh(candidate, out=candidate)
        state = states[t + 1, :hidden]
        np.subtract(states[t, :hidden], candidate, out=state)
        state *= gate[z]
        state += candidate

    def backward(d_states):
        resets, updates = resets_updates[:, r], resets_updates[:, z]
        dh_to_dn = (1 - updates) * (1 - candidates * candidates)
        # local[t]: factors from d_h to the gradient of the recurrent projection (r, z, n)
        local = np.empty((steps, gate_rows, batch), dtype)
        np.multiply(dh_to_dn * projections[:, n], resets * (1 - resets), out=local[:, r])
        np.multiply(
            states[:-1, :hidden] - candidates, updates * (1 - updates), out=local[:, z]
        )
        np.multiply(dh_to_dn, resets, out=local[:, n])

        d_projections = np.empty((steps, gate_rows, batch), dtype)
        dhs = np.empty((steps, hidden, batch), dtype)
        carried = np.empty((hidden, batch), dtype)
        for t in reversed(range(steps)):
            dh = dhs[t]
            if t == steps - 1:
                np.copyto(dh, d_states[t])
            else:
                np.matmul(recurrent_weight_t, d_projections[t + 1], out=dh)
                dh += d_states[t]
                np.multiply(updates[t + 1], dhs[t + 1], out=carried)
                dh += carried
            np.multiply(
                local[t].reshape(3, hidden, batch), dh,
                out=d_projections[t].reshape(3, hidden, batch),
            )
        d_pre = np.empty_like(d_projections)
        d_pre[:, : 2 * hidden] = d_projections[:, : 2 * hidden]
        np.multiply(dhs, dh_to_dn, out=d_pre[:, n])
        return d_pre, d_projections

    return backward


def _elman_steps(pre, recurrent, recurrent_weight_t, states, nonlinearity):
    """Elman recurrence h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    hidden, steps, batch = pre.shape
    activation = _ACTIVATIONS[nonlinearity]
    for t in range(steps):
        state = states[t + 1, :hidden]
        np.matmul(recurrent, states[t], out=state)
        state += pre[:, t]
        activation(state, out=state)

    def backward(d_states):
        outputs = states[1:, :hidden]
        if nonlinearity == "tanh":
            slope = 1 - outputs * outputs
        else:
            slope = (outputs > 0).astype(pre.dtype)
        d_pre = np.empty((steps, hidden, batch), pre.dtype)
        for t in reversed(range(steps)):
            grad = d_pre[t]
            if t == steps - 1:
                np.copyto(grad, d_states[t])
            else:
                np.matmul(recurrent_weight_t, d_pre[t + 1], out=grad)
                grad += d_states[t]
            grad *= slope[t]
        return d_pre, d_pre

    return backward


def _relu(a, out):
    return np.maximum(a, 0, out=out)


_ACTIVATIONS = {"tanh": np.tanh, "relu": _relu}

_CELLS = {
    "rnn": _Cell(gate_order=(0,), sigmoid_gates=0, run=_elman_steps),
    "lstm": _Cell(gate_order=(3, 0, 1, 2), sigmoid_gates=3, run=_lstm_steps),
    "gru": _Cell(gate_order=(0, 1, 2), sigmoid_gates=2, run=_gru_steps),
}
