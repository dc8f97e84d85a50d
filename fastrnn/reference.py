"""Pure NumPy forward and backpropagation through time: the executable specification.

Written to be read, not to be fast. Every compiled path in fastrnn is tested against this
file. Semantics are torch's (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``); per step, with
``a = x_t W_ihᵀ`` (the input part) and ``r = h_{t-1} W_hhᵀ`` (the recurrent part), split by
gate where there are several, and b = b_ih + b_hh:

    Elman  h_t = act(a + r + b),  act = tanh or relu
    LSTM   i, f, g, o = σ(·), σ(·), tanh(·), σ(·) of a + r + b, gate by gate
           c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)   (then h_t W_hrᵀ with proj_size)
    GRU    r, z = σ(·) of a + r + b for those gates,
           n = tanh(a_n + b_in + r ⊙ (r_n + b_hn)),   h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

with multiple layers, both directions, dropout between layers, and variable lengths
(torch's PackedSequence semantics without packing: outputs past a sequence's length are 0,
the final states are those at the sequence's own last step, and the reverse direction
starts from that step; a length of 0 leaves the initial state).

Parameters are a dict with torch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...).

Precision of the matrix products (``precision=``; None: :func:`fastrnn.get_matmul_precision`
when the forward runs; backward uses the forward's). With ``"bfloat16"`` (float32 arrays
only) every ``@`` below goes through :meth:`_Cell.matmul`, which rounds BOTH operands with
:func:`round_to_bfloat16` (to nearest, ties to even) and multiplies in float32, where
bf16×bf16 products are exact and only the sums round. Those products are, per step,

    forward    x_t W_ihᵀ,  h_{t-1} W_hhᵀ,  and with proj_size m_t W_hrᵀ
    backward   dA W_ih (→ dx),  dAᵀ x_t (→ dW_ih),  dRᵀ h_{t-1} (→ dW_hh),
               dR W_hh (→ dh_{t-1}),  and with proj_size dh W_hr (→ dm), dhᵀ m_t (→ dW_hr)

(dA, dR: the gradients of a and r; x_t is the layer's input after dropout, h_{t-1} the
float32 state, h0 at a sequence's first step). Nothing else is rounded: biases, the gates'
activations and products (⊙), the LSTM's c, h as kept between steps and used in the GRU's
``z ⊙ h_{t-1}``, every gradient and the parameters stay float32. The compiled kernels sum in
an order of their own, so they agree with this model within a small tolerance, not bitwise.
"""

import numpy as np

from ._layout import directions, from_time_major, layer_keys, param_names, to_time_major
from .precision import resolve

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward",
           "gru_backward", "param_names", "round_to_bfloat16"]


def round_to_bfloat16(a):
    """``a`` rounded to the nearest bfloat16 value, ties to even, as a float32 array.

    bfloat16 is float32's upper 16 bits (same exponent range, 8 significand bits instead of
    24), so rounding is integer arithmetic on the bit pattern. Infinities stay, finite values
    beyond bfloat16's largest round to ±inf, subnormals round like any other value (no
    flush to zero), and NaN stays NaN.

    Parameters
    ----------
    a : array_like of float32

    Returns
    -------
    ndarray of float32, the shape of ``a``; every value but NaN (returned as given) is
    representable in bfloat16.
    """
    a = np.asarray(a)
    if a.dtype != np.float32:
        raise TypeError(f"round_to_bfloat16 takes float32 values, got {a.dtype}")
    bits = a.view(np.uint32).astype(np.uint64)  # 64 bits: the carry below never wraps
    # add just under half of the dropped 16 bits' range, plus 1 if the kept part is odd
    # (so a tie carries into an even kept part), and drop them; a carry out of the
    # significand raises the exponent, up to inf
    odd = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + odd) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    # a NaN's payload could carry it to the other sign's zero, or vanish and leave inf
    return np.where(np.isnan(a), a, rounded)


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


# ---------------------------------------------------------------------------------------
# Cells. forward(a, r, states, w) -> (new states, what backward needs), a and r without
# biases; backward(dh, dc, saved, w) -> (d of a + b_ih, d of r + b_hh, d of the previous
# states but through r, gradients of the cell's own weights). A cell also carries the
# precision of the products, its own and its layer's.
# ---------------------------------------------------------------------------------------

class _Cell:
    bf16 = False  # bfloat16 products? Set by _forward, from its precision and dtype

    def matmul(self, a, b):
        """a @ b: with bfloat16 products, of both operands rounded to bfloat16 (float32 sums)."""
        if self.bf16:
            a, b = round_to_bfloat16(a), round_to_bfloat16(b)
        return a @ b


class _Elman(_Cell):
    gates, has_c = 1, False

    def __init__(self, nonlinearity="tanh"):
        self.nonlinearity = nonlinearity

    def forward(self, a, r, states, w):
        (h_prev,) = states
        z = a + r + (w["b_ih"] + w["b_hh"])
        h = np.tanh(z) if self.nonlinearity == "tanh" else np.maximum(z, 0)
        return (h,), h

    def backward(self, dh, dc, h, w):
        # act'(z) from h = act(z): tanh' = 1 - h², relu' = [h > 0] (a NaN h passes, as torch)
        grad = 1 - h * h if self.nonlinearity == "tanh" else (~(h <= 0)).astype(h.dtype)
        da = dh * grad
        return da, da, (0,), {}


class _LSTM(_Cell):
    gates, has_c = 4, True

    def forward(self, a, r, states, w):
        h_prev, c_prev = states
        i, f, g, o = np.split(a + r + (w["b_ih"] + w["b_hh"]), 4, axis=1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c = f * c_prev + i * g
        m = o * np.tanh(c)
        h = self.matmul(m, w["hr"].T) if "hr" in w else m
        return (h, c), (i, f, g, o, c, c_prev, m)

    def backward(self, dh, dc, saved, w):
        i, f, g, o, c, c_prev, m = saved
        grads = {}
        if "hr" in w:  # h = m W_hrᵀ
            grads["hr"] = self.matmul(dh.T, m)
            dh = self.matmul(dh, w["hr"])
        tanh_c = np.tanh(c)
        # dc_t gathers the carried gradient and h_t's: h = o ⊙ tanh(c)
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        di, df, dg, do = dc * g, dc * c_prev, dc * i, dh * tanh_c
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g),
                             do * o * (1 - o)], axis=1)
        return dz, dz, (0, dc * f), grads


class _GRU(_Cell):
    gates, has_c = 3, False

    def forward(self, a, r, states, w):
        (h_prev,) = states
        a_r, a_z, a_n = np.split(a + w["b_ih"], 3, axis=1)
        r_r, r_z, r_n = np.split(r + w["b_hh"], 3, axis=1)
        reset, update = _sigmoid(a_r + r_r), _sigmoid(a_z + r_z)
        n = np.tanh(a_n + reset * r_n)
        h = (1 - update) * n + update * h_prev
        return (h,), (reset, update, n, r_n, h_prev)

    def backward(self, dh, dc, saved, w):
        reset, update, n, r_n, h_prev = saved
        dn = dh * (1 - update) * (1 - n * n)
        dr = dn * r_n * reset * (1 - reset)
        du = dh * (h_prev - n) * update * (1 - update)
        da = np.concatenate([dr, du, dn], axis=1)
        dr_part = np.concatenate([dr, du, dn * reset], axis=1)
        return da, dr_part, (dh * update,), {}


# ---------------------------------------------------------------------------------------
# One layer, one direction, for any cell
# ---------------------------------------------------------------------------------------

def _time_index(step, lengths, reverse):
    """Time index each batch element visits at this step, and which elements are still running."""
    running = step < lengths
    t = lengths - 1 - step if reverse else np.full_like(lengths, step)
    return np.where(running, t, 0), running


def _direction_forward(cell, x, states0, w, lengths, reverse):
    """x (L, N, I), states0 [(N, H_out)] or [h0, c0] -> out (L, N, H_out), final states, and
    per step the rows that ran, their time indices and what the cell saved."""
    L, N = x.shape[:2]
    states = [s.copy() for s in states0]
    out = np.zeros((L, N, states[0].shape[1]), dtype=x.dtype)
    steps = []
    for step in range(L):
        t, running = _time_index(step, lengths, reverse)
        rows = np.nonzero(running)[0]
        t = t[rows]
        h_prev = states[0][rows]
        a = cell.matmul(x[t, rows], w["ih"].T)  # the input part
        r = cell.matmul(h_prev, w["hh"].T)      # the recurrent part
        new, saved = cell.forward(a, r, [s[rows] for s in states], w)
        for s, v in zip(states, new):
            s[rows] = v
        out[t, rows] = states[0][rows]
        steps.append((rows, t, h_prev, saved))
    return out, states, steps


def _direction_backward(cell, x, steps, w, d_out, d_states_n):
    """BPTT for one layer, one direction. Returns dx, the initial states' gradients, and
    the gradients of w's entries."""
    dx = np.zeros_like(x)
    grads = {k: np.zeros_like(v) for k, v in w.items()}
    d_states = [d.copy() for d in d_states_n]  # dLoss/d(state) carried backwards in time
    for rows, t, h_prev, saved in reversed(steps):
        dh = d_out[t, rows] + d_states[0][rows]
        dc = d_states[1][rows] if cell.has_c else None
        da, dr, d_prev, cell_grads = cell.backward(dh, dc, saved, w)
        # a + b_ih = x W_ihᵀ + b_ih ;  r + b_hh = h_prev W_hhᵀ + b_hh
        dx[t, rows] = cell.matmul(da, w["ih"])
        grads["ih"] += cell.matmul(da.T, x[t, rows])
        grads["b_ih"] += da.sum(axis=0)
        grads["hh"] += cell.matmul(dr.T, h_prev)
        grads["b_hh"] += dr.sum(axis=0)
        d_states[0][rows] = cell.matmul(dr, w["hh"]) + d_prev[0]
        if cell.has_c:
            d_states[1][rows] = d_prev[1]
        for k, g in cell_grads.items():
            grads[k] += g
    return dx, d_states, grads


# ---------------------------------------------------------------------------------------
# Layers, directions and layouts
# ---------------------------------------------------------------------------------------

_PARAM_KEYS = {"ih": "weight_ih", "hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
               "hr": "weight_hr"}


def _weights(params, k, bias, dtype):
    """This layer and direction's weights by role; zero biases where there are none."""
    w = {role: params[f"{prefix}_{k}"] for role, prefix in _PARAM_KEYS.items()
         if f"{prefix}_{k}" in params}
    if not bias:
        w["b_ih"] = w["b_hh"] = np.zeros(w["hh"].shape[0], dtype)
    return w


def _forward(cell, x, params, states0, num_layers, bidirectional, batch_first, lengths,
             dropout_masks, precision):
    """The multi-layer forward for any cell; states0 is a list of (D·layers, N, ·) arrays or
    None entries (zeros). Returns output, final states and the cache (whose cell keeps the
    precision for backward)."""
    x, unbatched = to_time_major(np.asarray(x), batch_first)
    cell.bf16 = resolve(precision, x.dtype)  # the process default as it is now
    L, N = x.shape[:2]
    D = directions(bidirectional)
    w_hh = params["weight_hh_l0"]
    widths = (w_hh.shape[1], w_hh.shape[0] // cell.gates)[:len(states0)]  # h: H_out, c: H
    states0 = [np.zeros((D * num_layers, N, width), x.dtype) if s is None
               else (np.asarray(s)[:, None, :] if unbatched else np.asarray(s))
               for s, width in zip(states0, widths)]
    lengths = (np.full(N, L, dtype=np.int64) if lengths is None
               else np.asarray(lengths, dtype=np.int64))
    bias = "bias_ih_l0" in params
    finals = [np.zeros_like(s) for s in states0]
    layers = []
    inp = x
    for layer in range(num_layers):
        outs, directions_steps = [], []
        for d, k in enumerate(layer_keys(layer, bidirectional)):
            i = layer * D + d
            out, states, steps = _direction_forward(
                cell, inp, [s[i] for s in states0], _weights(params, k, bias, x.dtype),
                lengths, d == 1)
            for final, s in zip(finals, states):
                final[i] = s
            outs.append(out)
            directions_steps.append(steps)
        layers.append((inp, directions_steps))
        inp = np.concatenate(outs, axis=2)
        if dropout_masks is not None and layer < num_layers - 1:
            inp = inp * dropout_masks[layer]
    cache = dict(cell=cell, params=params, layers=layers, dropout_masks=dropout_masks,
                 num_layers=num_layers, bidirectional=bidirectional, unbatched=unbatched,
                 batch_first=batch_first, bias=bias, state_shapes=[s.shape for s in states0])
    finals = [f[:, 0] if unbatched else f for f in finals]
    return from_time_major(inp, unbatched, batch_first), finals, cache


def _backward(cache, grad_output, grad_states):
    """BPTT through the forward that made ``cache``; grad_states: one array or None per
    state. Returns grad_x, the initial states' gradients and every parameter's gradient."""
    cell, params, unbatched = cache["cell"], cache["params"], cache["unbatched"]
    bidirectional, bias = cache["bidirectional"], cache["bias"]
    D = directions(bidirectional)
    grad_output = np.asarray(grad_output)
    if unbatched:
        grad_output = grad_output[:, None, :]
    elif cache["batch_first"]:
        grad_output = grad_output.transpose(1, 0, 2)
    grad_states = [np.zeros(shape, grad_output.dtype) if g is None
                   else (np.asarray(g)[:, None, :] if unbatched else np.asarray(g))
                   for g, shape in zip(grad_states, cache["state_shapes"])]
    grads, grad_states0 = {}, [np.zeros_like(g) for g in grad_states]
    d_out = grad_output
    for layer in reversed(range(cache["num_layers"])):
        if layer < cache["num_layers"] - 1 and cache["dropout_masks"] is not None:
            d_out = d_out * cache["dropout_masks"][layer]
        inp, directions_steps = cache["layers"][layer]
        d_inp = np.zeros_like(inp)
        width = d_out.shape[2] // D
        for d, k in enumerate(layer_keys(layer, bidirectional)):
            i = layer * D + d
            w = _weights(params, k, bias, inp.dtype)
            dx, d_states0, g = _direction_backward(
                cell, inp, directions_steps[d], w, d_out[:, :, d * width:(d + 1) * width],
                [s[i] for s in grad_states])
            d_inp += dx
            for g0, d0 in zip(grad_states0, d_states0):
                g0[i] = d0
            for role, prefix in _PARAM_KEYS.items():
                if f"{prefix}_{k}" in params:
                    grads[f"{prefix}_{k}"] = g[role]
        d_out = d_inp
    grads = {name: grads[name] for name in params}
    grad_states0 = [g[:, 0] if unbatched else g for g in grad_states0]
    return from_time_major(d_out, unbatched, cache["batch_first"]), grad_states0, grads


# ---------------------------------------------------------------------------------------
# The three networks
# ---------------------------------------------------------------------------------------

def rnn_forward(x, params, h0=None, *, num_layers=1, nonlinearity="tanh", bidirectional=False,
                batch_first=False, lengths=None, dropout_masks=None, precision=None):
    """Forward pass of a multi-layer, optionally bidirectional Elman RNN.

    Parameters
    ----------
    x : ndarray, shape (L, N, I), (N, L, I) if ``batch_first``, or (L, I) unbatched.
    params : dict of str to ndarray, torch's names; biases are used iff ``bias_ih_l0`` is present.
    h0 : ndarray, shape (D·num_layers, N, H) or (D·num_layers, H) unbatched; None for zeros.
    lengths : array of int, shape (N,), optional. Valid steps per batch element.
    dropout_masks : list of ``num_layers - 1`` arrays of shape (L, N, D·H), optional.
        Multiplied into each layer's output before it feeds the next layer.
    precision : {None, 'float32', 'bfloat16'}
        Of the matrix products (see the module's docstring); None follows
        :func:`fastrnn.get_matmul_precision` for float32 arrays (float64 computes in float64).
        'bfloat16' with float64 arrays raises ValueError. Backward uses the forward's.

    Returns
    -------
    output, h_n, cache
        ``cache`` holds what :func:`rnn_backward` needs.
    """
    output, (h_n,), cache = _forward(_Elman(nonlinearity), x, params, [h0], num_layers,
                                     bidirectional, batch_first, lengths, dropout_masks,
                                     precision)
    return output, h_n, cache


def rnn_backward(cache, grad_output, grad_h_n=None):
    """Backpropagation through time for the forward pass that produced ``cache``.

    Returns
    -------
    grad_x, grad_h0, grads
        ``grads`` maps every parameter name to its gradient.
    """
    grad_x, (grad_h0,), grads = _backward(cache, grad_output, [grad_h_n])
    return grad_x, grad_h0, grads


def lstm_forward(x, params, hx=None, *, num_layers=1, bidirectional=False, batch_first=False,
                 lengths=None, dropout_masks=None, precision=None):
    """Forward pass of a multi-layer, optionally bidirectional LSTM (torch.nn.LSTM).

    ``hx`` is None or a pair (h0, c0), either None for zeros: h0 (D·num_layers, N, H_out),
    c0 (D·num_layers, N, H) (2-D unbatched). With ``weight_hr_l0`` in ``params`` (proj_size
    P > 0) h is projected to H_out = P. ``precision`` as in :func:`rnn_forward`. Returns
    ``output, (h_n, c_n), cache``.
    """
    h0, c0 = (None, None) if hx is None else hx
    output, (h_n, c_n), cache = _forward(_LSTM(), x, params, [h0, c0], num_layers,
                                         bidirectional, batch_first, lengths, dropout_masks,
                                         precision)
    return output, (h_n, c_n), cache


def lstm_backward(cache, grad_output, grad_hx=None):
    """BPTT for :func:`lstm_forward`. ``grad_hx`` is None or (grad_h_n, grad_c_n), either
    None for zeros. Returns ``grad_x, (grad_h0, grad_c0), grads``."""
    g_h, g_c = (None, None) if grad_hx is None else grad_hx
    grad_x, (grad_h0, grad_c0), grads = _backward(cache, grad_output, [g_h, g_c])
    return grad_x, (grad_h0, grad_c0), grads


def gru_forward(x, params, h0=None, *, num_layers=1, bidirectional=False, batch_first=False,
                lengths=None, dropout_masks=None, precision=None):
    """Forward pass of a multi-layer, optionally bidirectional GRU (torch.nn.GRU).
    ``precision`` as in :func:`rnn_forward`. Returns ``output, h_n, cache``."""
    output, (h_n,), cache = _forward(_GRU(), x, params, [h0], num_layers, bidirectional,
                                     batch_first, lengths, dropout_masks, precision)
    return output, h_n, cache


def gru_backward(cache, grad_output, grad_h_n=None):
    """BPTT for :func:`gru_forward`. Returns ``grad_x, grad_h0, grads``."""
    grad_x, (grad_h0,), grads = _backward(cache, grad_output, [grad_h_n])
    return grad_x, grad_h0, grads
