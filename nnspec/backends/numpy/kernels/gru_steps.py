"""A float32 GRU step's gate arithmetic, forward and backward, as one compiled pass on both
cores, in `recurrent_cells`' layout: a step's blocks (rows, N), the batch innermost, the
sigmoid gates' pre-activations halved.

NumPy made a step's gates in about ten passes over (H, N) and (2H, N) blocks, and the
backward in a dozen passes over the whole sequence before its loop and five a step, each pass
on one core. Here each is one job over the hidden units, split between the cores; the
recurrent products around it stay on BLAS (a training step of T 64, H 256 at batch 256:
264 -> 229 ms).
"""

from __future__ import annotations

import numpy as np

from . import workers
from .fused import tanh
from .workers import floats, part_range

_F = np.float32


@workers.Task
def _forward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, hidden, batch, projection, input projection, previous state, resets
    and updates, projected n, candidate, state): from the step's recurrent projection (3H,
    N) and input projection (3H, N), the gates r and z (2H, N), W_hn h + b_hn and the
    candidate n (H, N) to keep, and the new state (H, N)."""
    params = workers.parameters(args, 10)
    hidden, batch = params[1], params[2]
    projection = floats(params, 3, (3 * hidden * batch,))
    inputs = floats(params, 4, (3 * hidden * batch,))
    previous = floats(params, 5, (hidden * batch,))
    gates = floats(params, 6, (2 * hidden * batch,))
    projected_n = floats(params, 7, (hidden * batch,))
    candidates = floats(params, 8, (hidden * batch,))
    state = floats(params, 9, (hidden * batch,))
    half = _F(0.5)
    start, end = part_range(hidden, part, params[0], 1)
    for unit in range(start, end):  # a unit's rows as slices: LLVM vectorises those loops
        r_at, z_at, n_at = unit * batch, (hidden + unit) * batch, (2 * hidden + unit) * batch
        at = unit * batch
        p_r, p_z, p_n = (projection[r_at:r_at + batch], projection[z_at:z_at + batch],
                         projection[n_at:n_at + batch])
        x_r, x_z, x_n = (inputs[r_at:r_at + batch], inputs[z_at:z_at + batch],
                         inputs[n_at:n_at + batch])
        r_out, z_out = gates[r_at:r_at + batch], gates[z_at:z_at + batch]
        h_prev, h = previous[at:at + batch], state[at:at + batch]
        kept_n, kept_c = projected_n[at:at + batch], candidates[at:at + batch]
        for n in range(batch):
            reset = half + half * tanh(p_r[n] + x_r[n])
            update = half + half * tanh(p_z[n] + x_z[n])
            hidden_n = p_n[n]
            candidate = tanh(reset * hidden_n + x_n[n])
            r_out[n], z_out[n], kept_n[n], kept_c[n] = reset, update, hidden_n, candidate
            h[n] = (h_prev[n] - candidate) * update + candidate
    return 0


@workers.Task
def _backward_job(args, range_m, range_n, sa, sb, part):
    """params (parts, hidden, batch, d_state, recurrent gradient or 0, carried, carried in,
    resets and updates, projected n, candidate, previous state, d_rows, their step). From
    the gradient reaching the step's state (its own, what the next step's product sends,
    and ``carried``, z dh of the next step, when ``carried in``): the gradients of n's
    pre-activation and of the recurrent projection (r, z, n), 4H rows of N values
    ``d_rows``' step apart; ``carried`` gets this step's z dh."""
    params = workers.parameters(args, 13)
    hidden, batch = params[1], params[2]
    d_state = floats(params, 3, (hidden * batch,))
    recurrent = params[4] != 0
    from_next = floats(params, 4 if recurrent else 3, (hidden * batch,))
    carried = floats(params, 5, (hidden * batch,))
    carried_in = params[6] != 0
    gates = floats(params, 7, (2 * hidden * batch,))
    projected_n = floats(params, 8, (hidden * batch,))
    candidates = floats(params, 9, (hidden * batch,))
    previous = floats(params, 10, (hidden * batch,))
    row_step = params[12]
    d_rows = floats(params, 11, ((4 * hidden - 1) * row_step + batch,))
    one = _F(1.0)
    start, end = part_range(hidden, part, params[0], 1)
    for unit in range(start, end):
        r_at, z_at, at = unit * batch, (hidden + unit) * batch, unit * batch
        own, sent, kept = (d_state[at:at + batch], from_next[at:at + batch],
                           carried[at:at + batch])
        resets, updates = gates[r_at:r_at + batch], gates[z_at:z_at + batch]
        hidden_ns, cands, h_prev = (projected_n[at:at + batch], candidates[at:at + batch],
                                    previous[at:at + batch])
        n_row, r_row = unit * row_step, (hidden + unit) * row_step
        z_row, hn_row = (2 * hidden + unit) * row_step, (3 * hidden + unit) * row_step
        d_pre_n, d_r = d_rows[n_row:n_row + batch], d_rows[r_row:r_row + batch]
        d_z, d_hn = d_rows[z_row:z_row + batch], d_rows[hn_row:hn_row + batch]
        for n in range(batch):
            dh = own[n]
            if recurrent:
                dh += sent[n]
            if carried_in:
                dh += kept[n]
            reset, update, candidate = resets[n], updates[n], cands[n]
            dn = dh * (one - update) * (one - candidate * candidate)
            d_r[n] = dn * hidden_ns[n] * reset * (one - reset)
            d_z[n] = dh * (h_prev[n] - candidate) * update * (one - update)
            d_hn[n] = dn * reset
            d_pre_n[n] = dn
            kept[n] = update * dh
    return 0


class Steps:
    """The jobs' parameters for one sequence, made once; each step sets its addresses."""

    def __init__(self, hidden, batch):
        parts = min(hidden, workers.parts()) if hidden * batch >= 1 << 12 else 1
        self.forward = np.zeros(10, np.int64)
        self.forward[:3] = parts, hidden, batch
        self.backward = np.zeros(13, np.int64)
        self.backward[:3] = parts, hidden, batch

    def step(self, projection, inputs, previous, gates, projected_n, candidate, state):
        """Addresses of C-ordered float32 blocks: (3H, N), (3H, N), (H, N), (2H, N) and
        three (H, N)."""
        self.forward[3:] = projection, inputs, previous, gates, projected_n, candidate, state
        workers.run(_forward_job, self.forward)

    def step_back(self, d_state, from_next, carried, carried_in, gates, projected_n,
                  candidate, previous, d_rows, row_step):
        """``from_next`` 0 for none; ``d_rows`` the address of the step's first value of 4H
        rows (n's pre-activation, r, z, n), ``row_step`` floats apart; the others addresses
        as in ``step``."""
        self.backward[3:] = (d_state, from_next, carried, carried_in, gates, projected_n,
                             candidate, previous, d_rows, row_step)
        workers.run(_backward_job, self.backward)


def load() -> None:
    """Compile the jobs now (or load them from the cache), not on their first run."""
    _forward_job.load()
    _backward_job.load()
