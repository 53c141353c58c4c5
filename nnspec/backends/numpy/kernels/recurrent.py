"""Recurrent layers (Elman RNN, LSTM, GRU) with PyTorch's parameters, gate order and results.

At the API, sequences are batch first, ``(N, T, F)``, and parameters carry torch's names,
shapes and gate order, so weights move to ``nn.RNN``/``nn.LSTM``/``nn.GRU`` unchanged.

Inside, sequences are time-major with the batch innermost, ``(T, rows, N)``: a recurrence is
many small steps, and each step's elementwise calls then run over contiguous blocks.

- A layer's input carries a last row of ones, ``(T, F + 1, N)``, so the input projection of
  every step, bias included, is computed before the loop; each direction's hidden states are
  kept as ``(T + 1, H + 1, N)`` (state 0 is the initial state, zero unless given; the last
  row is ones), so
  one product per step applies every gate's recurrent weights and bias. Both bias gradients
  then fall out of the weight-gradient products.
- Gates are reordered so that the sigmoid gates come first, and their rows are pre-scaled by
  one half: one ``tanh`` over the whole gate block then yields all of them, since
  ``sigmoid(a) = 0.5 + 0.5 * tanh(a / 2)``.
- Before the reverse loop of the backward pass, everything that does not depend on the
  incoming gradient is computed for all steps at once.
"""

from __future__ import annotations

import numpy as np

from . import gemm, lstm_steps, recurrent_cells
from .blas import SMALL_TRANSPOSE, transpose
from .recurrent_cells import ACTIVATIONS, CELLS, feature_major


def rnn(x, params, *, mode, hidden, layers, bidirectional, nonlinearity="tanh"):
    """Run a stacked recurrent net over ``x`` (N, T, F) from a zero initial state.

    ``mode`` is "rnn", "lstm" or "gru"; ``params`` maps torch's parameter names
    (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) to arrays; a missing bias means the layer
    has none (torch's ``bias=False``). ``nonlinearity`` ("tanh" or "relu") applies to "rnn".
    Returns the output sequence (N, T, dirs * H), as ``nn.LSTM(batch_first=True)`` does, and
    ``backward(d_output) -> (dx, d_params)`` with ``d_params`` keyed like ``params``;
    ``last_step`` turns the output into the top layer's final state.
    """
    output, _, backward = _stack(x, params, (), mode, hidden, layers, bidirectional,
                                 nonlinearity, 0.0, None)

    def output_backward(d_output):
        dx, _, d_params = backward(d_output, ())
        return dx, d_params

    return output, output_backward


def rnn_states(x, initial, params, *, mode, hidden, layers, bidirectional, nonlinearity="tanh",
               dropout=0.0, rng=None):
    """``rnn`` from given initial states, also giving the final ones, as torch's modules do.

    ``initial`` is ``()`` (zero states), ``(h0,)`` or, for an LSTM, ``(h0, c0)``: arrays
    (N, layers * dirs, H) — torch's ``h_0`` with the batch first — or (layers * dirs, H), one
    state for every sample. ``dropout`` (with an ``rng``; None while evaluating) zeroes
    outputs of every layer but the last, scaled by 1 / (1 - p), as torch does while training.
    Returns ``(output, h_n[, c_n])``, each final state (N, layers * dirs, H), and
    ``backward(d_output, d_h_n[, d_c_n]) -> (dx, d_h0[, d_c0], d_params)``; any gradient may
    be None (no gradient), and an initial state's gradient has its shape.
    """
    kinds = 2 if mode == "lstm" else 1
    if initial and len(initial) != kinds:
        raise ValueError(f"{mode} takes {kinds} initial state(s), got {len(initial)}")
    output, finals, backward = _stack(x, params, initial, mode, hidden, layers, bidirectional,
                                      nonlinearity, dropout if rng is not None else 0.0, rng)

    def states_backward(d_output, *d_finals):
        if d_output is None:
            d_output = np.zeros_like(output)
        dx, d_initial, d_params = backward(d_output, d_finals)
        d_initial = tuple(d if state.ndim == 3 else d.sum(axis=0)
                          for d, state in zip(d_initial, initial))
        return (dx, *d_initial, d_params)

    return (output, *finals[:kinds]), states_backward


def _stack(x, params, initial, mode, hidden, layers, bidirectional, nonlinearity, dropout, rng):
    """The layers one after another: the output, the final states [h_n, c_n] (N, L * D, H),
    and ``backward(d_output, d_finals) -> (dx, d_initial, d_params)``."""
    cell = CELLS.get(mode)
    if cell is None:
        raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {sorted(CELLS)}")
    if mode == "rnn" and nonlinearity not in ACTIVATIONS:
        raise ValueError(f"rnn nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    batch, steps, _ = x.shape
    directions = 2 if bidirectional else 1
    # initial states as (L * D, H, N), the layout a direction's states array takes
    starts = [np.broadcast_to(state if state.ndim == 3 else state[None],
                              (batch, layers * directions, hidden)).transpose(1, 2, 0)
              for state in initial]
    if not batch or not steps:
        return _no_steps(x, params, starts, hidden, layers * directions, directions)
    finals = [np.empty((batch, layers * directions, hidden), x.dtype) for _ in range(2)]
    # the float32 LSTM's steps are sample-major: between its layers the sequences are
    # (T, N, F) arrays seen as (T, F, N), so each hand-over copies runs of features
    compiled_lstm = _sample_major(cell, x.dtype)
    layer_input = _with_ones(x, compiled_lstm)
    result = np.empty((batch, steps, directions * hidden), x.dtype)
    layer_backwards = []
    masks = []
    for layer in range(layers):
        if layer == layers - 1:
            output = result.transpose(1, 2, 0)
        else:
            output = _time_major_array(steps, directions * hidden + 1, batch, x.dtype,
                                       compiled_lstm)
            output[:, -1] = 1
        direction_backwards = []
        for direction in range(directions):
            names = _parameter_names(layer, direction)
            index = layer * directions + direction
            units = slice(direction * hidden, (direction + 1) * hidden)
            final, direction_backward = _run_direction(
                cell, layer_input, *(params.get(name) for name in names),
                tuple(start[index] for start in starts), output[:, units],
                reverse=direction == 1, nonlinearity=nonlinearity,
            )
            for kind, state in enumerate(final):
                finals[kind][:, index] = state.T
            direction_backwards.append((names, index, direction_backward))
        if dropout and layer < layers - 1:
            keep = rng.random(output[:, :-1].shape) >= dropout
            masks.append(keep.astype(x.dtype) / np.asarray(1 - dropout, x.dtype))
            output[:, :-1] *= masks[-1]
        layer_backwards.append((layer_input, direction_backwards))
        layer_input = output

    def backward(d_output, d_finals):
        d_params = {}
        d_initial = [np.zeros((layers * directions, hidden, batch), x.dtype) for _ in starts]
        # time-major, (T, D * H, N), as NumPy's steps take it; the float32 LSTM's take the
        # batch-first view as it is (their steps are sample-major)
        d_layer_output = d_output.transpose(1, 2, 0) if compiled_lstm else \
            _time_major(d_output)
        for layer, (layer_input, direction_backwards) in reversed(list(enumerate(
                layer_backwards))):
            if layer < len(masks):
                d_layer_output = d_layer_output * masks[layer]
            # the float32 LSTM's steps keep their inputs in their own layout
            input_rows = None if compiled_lstm else feature_major(layer_input)
            d_layer_input = None
            for direction, (names, index, direction_backward) in enumerate(direction_backwards):
                d_states = d_layer_output[:, direction * hidden:(direction + 1) * hidden]
                d_last = tuple(None if d is None else d[:, index].T for d in d_finals)
                d_input_rows, d_start, *d_weights = direction_backward(d_states, input_rows,
                                                                       d_last)
                for kind, grad in enumerate(d_start):
                    d_initial[kind][index] = grad
                if d_layer_input is None:
                    d_layer_input = d_input_rows
                else:
                    d_layer_input += d_input_rows
                for name, grad in zip(names, d_weights):
                    if name in params:
                        d_params[name] = grad
            d_layer_output = d_layer_input.transpose(0, 2, 1) if compiled_lstm else \
                d_layer_input.transpose(1, 0, 2)
        dx = np.empty(x.shape, x.dtype)
        if compiled_lstm:  # (T, N, F) to (N, T, F): runs of features
            dx.transpose(1, 0, 2)[...] = d_layer_input
        else:
            _between_layouts(d_layer_output, dx.transpose(1, 2, 0))
        return dx, tuple(np.ascontiguousarray(d.transpose(2, 0, 1)) for d in d_initial), \
            d_params

    return result, finals, backward


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


def _no_steps(x, params, starts, hidden, states, directions):
    """``_stack`` over an empty batch or sequence: an empty output, the initial states as the
    final ones, and a backward that hands the final states' gradients to the initial ones
    (and zeros to the input and the weights)."""
    batch, steps, _ = x.shape
    output = np.zeros((batch, steps, directions * hidden), x.dtype)
    finals = [np.zeros((batch, states, hidden), x.dtype) for _ in range(2)]
    for final, start in zip(finals, starts):
        final[...] = start.transpose(2, 0, 1)

    def backward(d_output, d_finals):
        d_initial = tuple(np.zeros((batch, states, hidden), x.dtype) if d is None else
                          np.array(d, x.dtype) for d, _ in zip((*d_finals, None, None), starts))
        return np.zeros_like(x), d_initial, {name: np.zeros_like(value)
                                             for name, value in params.items()}

    return output, finals, backward


def _parameter_names(layer, direction):
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return tuple(f"{kind}{suffix}" for kind in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))


def _time_major_array(steps, rows, batch, dtype, sample_major):
    """An empty (T, R, N) array, or with ``sample_major`` a (T, N, R) one seen as (T, R, N)."""
    if sample_major:
        return np.empty((steps, batch, rows), dtype).transpose(0, 2, 1)
    return np.empty((steps, rows, batch), dtype)


def _with_ones(x, sample_major):
    """A batch-first (N, T, F) sequence as a (T, F + 1, N) array whose last row is ones
    (``_time_major_array``'s)."""
    batch, steps, features = x.shape
    extended = _time_major_array(steps, features + 1, batch, x.dtype, sample_major)
    if sample_major:
        extended.transpose(0, 2, 1)[:, :, :-1] = x.transpose(1, 0, 2)
    else:
        _between_layouts(x.transpose(1, 2, 0), extended[:, :-1])
    extended[:, -1] = 1
    return extended


def _time_major(x):
    """A batch-first (N, T, F) sequence as a contiguous (T, F, N) array."""
    out = np.empty((x.shape[1], x.shape[2], x.shape[0]), x.dtype)
    _between_layouts(x.transpose(1, 2, 0), out)
    return out


def _between_layouts(source, target):
    """target[t] = source[t] for (T, R, C) views of which one has unit-stride rows and the
    other unit-stride columns (a sequence's time-major and batch-first layouts): a transposed
    copy per step (``blas.transpose``) where the steps are large, as NumPy's copy of the
    whole transposed view runs at under 1 GB/s (GRU at batch 256: 31 ms a copy against
    3.3), else NumPy's (the float32 LSTM's steps, whose (T, N, H) states it copies along
    H)."""
    if source[0].size < SMALL_TRANSPOSE or source.strides[1] != source.itemsize and \
            source.strides[2] != source.itemsize:
        target[...] = source
        return
    for t in range(source.shape[0]):
        step = source[t]
        if step.strides[1] == step.itemsize:  # its rows are runs, the target's columns
            transpose(step, out=target[t].T)
        else:
            transpose(step.T, out=target[t])


def _run_direction(cell, layer_input, w_ih, b_ih, w_hh, b_hh, start, into, *, reverse,
                   nonlinearity):
    """One direction of one layer over ``layer_input`` (T, F + 1, N) from ``start``: ``()``
    for zero states, or its initial (h,) or (h, c), each (H, N).

    Writes its states to ``into`` (T, H, N), in time order, and returns its final (h,) or
    (h, c) (H, N) and ``backward(d_states, input_rows, d_final)``, which takes d_states
    (T, H, N) in time order, the input as ``feature_major`` rows and the final states'
    gradients (each may be None) and returns ``(d_input as (F, T, N), d_start, d_w_ih,
    d_b_ih, d_w_hh, d_b_hh)``, ``d_start`` holding the gradients of the given initial
    states; the float32 LSTM's ``d_input`` is (T, N, F) (``_sample_major``).
    """
    if _sample_major(cell, layer_input.dtype):  # the weights as torch has them
        return _compiled_lstm(layer_input, _with_bias_column(w_ih, b_ih), (w_hh, b_hh), start,
                              into, reverse)
    steps, _, batch = layer_input.shape
    hidden = w_hh.shape[1]
    gate_rows = len(cell.gate_order) * hidden
    order = np.concatenate(
        [np.arange(block * hidden, (block + 1) * hidden) for block in cell.gate_order]
    )
    input_weights = _with_bias_column(w_ih, b_ih)[order]
    scale = np.ones((gate_rows, 1), layer_input.dtype)
    scale[: cell.sigmoid_gates * hidden] = 0.5
    recurrent_weights = _with_bias_column(w_hh, b_hh)[order]
    if batch >= recurrent_cells.STEPWISE_MIN_BATCH:  # a product per step, over the batch
        pre = np.matmul(input_weights * scale, layer_input)
    else:
        # one product for all steps (a product per step over a small batch, 2048 x 513 by
        # 513 x 16 for 128 steps, took 35 ms; one product and this copy, 16), feature-major,
        # then the (T, G, N) layout the steps read
        pre_rows = gemm.matmul(input_weights * scale, feature_major(layer_input))
        pre = np.ascontiguousarray(pre_rows.reshape(gate_rows, steps, batch).transpose(1, 0, 2))
        del pre_rows
    states = np.empty((steps + 1, hidden + 1, batch), layer_input.dtype)
    states[0, :hidden] = start[0] if start else 0
    states[:, hidden] = 1
    recurrent_weight_t = np.ascontiguousarray(recurrent_weights[:, :hidden].T)
    steps_backward, final_cell = cell.run(
        pre[::-1] if reverse else pre, recurrent_weights * scale, recurrent_weight_t, states,
        nonlinearity, start,
    )
    final = (states[-1, :hidden].copy(),) + ((final_cell,) if final_cell is not None else ())

    def in_time_order(per_step):
        return per_step[::-1] if reverse else per_step

    def backward(d_states, input_rows, d_final):
        d_states = in_time_order(d_states)
        d_final_h, d_final_cell = (*d_final, None, None)[:2]
        if d_final_h is not None:
            d_states = np.array(d_states)
            d_states[-1] += d_final_h
        dtype = layer_input.dtype
        d_input_weights = np.zeros((gate_rows, input_rows.shape[0]), dtype)
        d_recurrent_weights = np.zeros((gate_rows, hidden + 1), dtype)
        # in processing order; the reverse direction's seen in time order at the end
        d_input_rows = np.empty((input_rows.shape[0] - 1, steps, batch), dtype)
        inputs = input_rows.reshape(-1, steps, batch)

        def take(block, d_pre, d_recurrent):
            """The weight gradients' and the input gradient's products of a block of steps."""
            if reverse:  # the block's input columns in processing order
                block_inputs = inputs[:, steps - block.stop:steps - block.start][:, ::-1]
            else:
                block_inputs = inputs[:, block]
            block_inputs = block_inputs.reshape(len(block_inputs), -1)
            d_block_inputs = d_input_rows[:, block].reshape(len(d_input_rows), -1)
            previous = feature_major(states[block])
            for grads, weights, parts, rows_of in (
                    (d_input_weights, input_weights, d_pre, block_inputs),
                    (d_recurrent_weights, None, d_recurrent, previous)):
                first = 0
                for part in parts:
                    rows = slice(first, first + len(part))
                    gemm.add_product(part, rows_of.T, grads[rows])
                    if weights is not None:
                        (gemm.add_product if first else gemm.matmul)(
                            weights[rows, :-1].T, part, d_block_inputs)
                    first += len(part)

        d_start = steps_backward(np.ascontiguousarray(d_states), d_final_cell, take)
        return _direction_grads(d_input_rows[:, ::-1] if reverse else d_input_rows, d_start,
                                d_input_weights, d_recurrent_weights, order)

    _between_layouts(in_time_order(states[1:, :hidden]), into)
    return final, backward


def _direction_grads(d_input_rows, d_start, d_input_weights, d_recurrent_weights, order):
    """A direction backward's results, its weight gradients in torch's gate order."""
    d_input_weights = _to_torch_order(d_input_weights, order)
    d_recurrent_weights = _to_torch_order(d_recurrent_weights, order)
    return (d_input_rows, d_start, d_input_weights[:, :-1], d_input_weights[:, -1],
            d_recurrent_weights[:, :-1], d_recurrent_weights[:, -1])


def _sample_major(cell, dtype) -> bool:
    """Whether a direction runs on ``lstm_steps``' sample-major steps: a float32 LSTM's."""
    return cell is CELLS["lstm"] and dtype == np.float32


def _compiled_lstm(layer_input, input_weights, recurrent, start, into, reverse):
    """``_run_direction`` of a float32 LSTM, on ``lstm_steps``' sample-major steps, which
    keep torch's gate order; ``recurrent`` is (w_hh, b_hh) as ``lstm_steps.direction``
    takes it."""
    final, steps_backward = lstm_steps.direction(layer_input, input_weights, recurrent, start,
                                                 reverse, into)

    def backward(d_states, _input_rows, d_final):
        d_input, d_start, d_input_weights, d_recurrent_weights = steps_backward(d_states,
                                                                                d_final)
        return (d_input, d_start, d_input_weights[:, :-1], d_input_weights[:, -1],
                d_recurrent_weights[:, :-1], d_recurrent_weights[:, -1])

    return final, backward


def _with_bias_column(weight, bias):
    column = np.zeros((weight.shape[0], 1), weight.dtype) if bias is None else bias[:, None]
    return np.concatenate([weight, column], axis=1)


def _to_torch_order(internal, order):
    result = np.empty_like(internal)
    result[order] = internal
    return result
