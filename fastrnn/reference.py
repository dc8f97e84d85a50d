"""Pure NumPy RNN forward and backpropagation through time: the executable specification.

Written to be read, not to be fast. Every compiled path in fastrnn is tested against
this file. Semantics are those of ``torch.nn.RNN``:

    h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh),   act = tanh or relu

with multiple layers, both directions, dropout between layers, and variable lengths
(torch's PackedSequence semantics without packing: outputs past a sequence's length
are 0, h_n is the state at the sequence's own last step, and the reverse direction
starts from that step).

Parameters are a dict with torch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...).
"""

import numpy as np

from ._layout import directions, from_time_major, layer_keys, param_names, to_time_major

__all__ = ["rnn_forward", "rnn_backward", "param_names"]


def _act(a, nonlinearity):
    return np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)


def _act_grad(h, nonlinearity):
    """act'(a) written in terms of h = act(a): tanh' = 1 - h², relu' = [h > 0] (so relu'(0) = 0;
    a NaN output passes the gradient, as in torch)."""
    return 1 - h * h if nonlinearity == "tanh" else (~(h <= 0)).astype(h.dtype)


def _time_index(step, lengths, reverse):
    """Time index each batch element visits at this step, and which elements are still running."""
    running = step < lengths
    t = lengths - 1 - step if reverse else np.full_like(lengths, step)
    return np.where(running, t, 0), running


def _direction_forward(x, h0, w_ih, w_hh, b, lengths, reverse, nonlinearity):
    """One layer, one direction. x (L, N, I), h0 (N, H) -> out (L, N, H), h_n (N, H)."""
    L, N = x.shape[:2]
    out = np.zeros((L, N, w_hh.shape[0]), dtype=x.dtype)
    h = h0.copy()
    for step in range(L):
        t, running = _time_index(step, lengths, reverse)
        rows = np.nonzero(running)[0]
        t = t[rows]
        # h_t = act(x_t W_ihᵀ + h_{t-1} W_hhᵀ + b)
        h[rows] = _act(x[t, rows] @ w_ih.T + h[rows] @ w_hh.T + b, nonlinearity)
        out[t, rows] = h[rows]
    return out, h


def _direction_backward(x, h0, out, w_ih, w_hh, lengths, reverse, nonlinearity, d_out, d_hn):
    """BPTT for one layer, one direction. Returns dx, dh0, dW_ih, dW_hh, db."""
    L = x.shape[0]
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(w_hh.shape[0], dtype=x.dtype)
    g = d_hn.copy()  # dLoss/dh carried backwards through time
    for step in reversed(range(L)):
        t, running = _time_index(step, lengths, reverse)
        rows = np.nonzero(running)[0]
        t = t[rows]
        h = out[t, rows]
        if step == 0:
            h_prev = h0[rows]
        else:
            h_prev = out[t + (1 if reverse else -1), rows]
        # dA_t = (dY_t + g) ⊙ act'(h_t)
        da = (d_out[t, rows] + g[rows]) * _act_grad(h, nonlinearity)
        # g = dA_t W_hh ;  dW_hh += dA_tᵀ h_{t-1} ;  dW_ih += dA_tᵀ x_t ;  db += Σ dA_t
        g[rows] = da @ w_hh
        dw_hh += da.T @ h_prev
        dw_ih += da.T @ x[t, rows]
        db += da.sum(axis=0)
        dx[t, rows] = da @ w_ih
    return dx, g, dw_ih, dw_hh, db


def _inputs(x, h0, lengths, num_layers, bidirectional, batch_first, hidden_size):
    """x (L, N, I) and h0 (D·layers, N, H) time-major, lengths (N,); and the 'unbatched' flag."""
    x, unbatched = to_time_major(x, batch_first)
    L, N = x.shape[:2]
    if h0 is None:
        h0 = np.zeros((directions(bidirectional) * num_layers, N, hidden_size), dtype=x.dtype)
    elif unbatched:
        h0 = h0[:, None, :]
    lengths = np.full(N, L, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    return x, h0, lengths, unbatched


def rnn_forward(x, params, h0=None, *, num_layers=1, nonlinearity="tanh", bidirectional=False,
                batch_first=False, lengths=None, dropout_masks=None):
    """Forward pass of a multi-layer, optionally bidirectional Elman RNN.

    Parameters
    ----------
    x : ndarray, shape (L, N, I), (N, L, I) if ``batch_first``, or (L, I) unbatched.
    params : dict of str to ndarray, torch's names; biases are used iff ``bias_ih_l0`` is present.
    h0 : ndarray, shape (D·num_layers, N, H) or (D·num_layers, H) unbatched; None for zeros.
    lengths : array of int, shape (N,), optional. Valid steps per batch element.
    dropout_masks : list of ``num_layers - 1`` arrays of shape (L, N, D·H), optional.
        Multiplied into each layer's output before it feeds the next layer.

    Returns
    -------
    output, h_n, cache
        ``cache`` holds what :func:`rnn_backward` needs.
    """
    hidden_size = params["weight_hh_l0"].shape[0]
    inp, h0, lengths, unbatched = _inputs(x, h0, lengths, num_layers, bidirectional,
                                          batch_first, hidden_size)
    bias = "bias_ih_l0" in params
    D = directions(bidirectional)
    layer_inputs, layer_outputs, h_n = [], [], []
    for layer in range(num_layers):
        outs = []
        for d, k in enumerate(layer_keys(layer, bidirectional)):
            b = params[f"bias_ih_{k}"] + params[f"bias_hh_{k}"] if bias else 0
            o, h = _direction_forward(inp, h0[layer * D + d], params[f"weight_ih_{k}"],
                                      params[f"weight_hh_{k}"], b, lengths, d == 1, nonlinearity)
            outs.append(o)
            h_n.append(h)
        layer_inputs.append(inp)
        layer_outputs.append(outs)
        inp = np.concatenate(outs, axis=2)
        if dropout_masks is not None and layer < num_layers - 1:
            inp = inp * dropout_masks[layer]
    cache = dict(params=params, h0=h0, lengths=lengths, layer_inputs=layer_inputs,
                 layer_outputs=layer_outputs, dropout_masks=dropout_masks, num_layers=num_layers,
                 nonlinearity=nonlinearity, bidirectional=bidirectional, unbatched=unbatched,
                 batch_first=batch_first, bias=bias)
    h_n = np.stack(h_n)
    return (from_time_major(inp, unbatched, batch_first), h_n[:, 0] if unbatched else h_n, cache)


def rnn_backward(cache, grad_output, grad_h_n=None):
    """Backpropagation through time for the forward pass that produced ``cache``.

    Parameters
    ----------
    grad_output : ndarray shaped like the forward's output.
    grad_h_n : ndarray shaped like h_n, or None for zeros.

    Returns
    -------
    grad_x, grad_h0, grads
        ``grads`` maps every parameter name to its gradient.
    """
    params, h0, lengths = cache["params"], cache["h0"], cache["lengths"]
    bidirectional, unbatched = cache["bidirectional"], cache["unbatched"]
    D = directions(bidirectional)
    H = h0.shape[2]
    if unbatched:
        grad_output = grad_output[:, None, :]
        grad_h_n = None if grad_h_n is None else grad_h_n[:, None, :]
    elif cache["batch_first"]:
        grad_output = grad_output.transpose(1, 0, 2)
    if grad_h_n is None:
        grad_h_n = np.zeros_like(h0)
    grads, grad_h0 = {}, np.zeros_like(h0)
    d_out = grad_output
    for layer in reversed(range(cache["num_layers"])):
        if layer < cache["num_layers"] - 1 and cache["dropout_masks"] is not None:
            d_out = d_out * cache["dropout_masks"][layer]
        inp = cache["layer_inputs"][layer]
        d_inp = np.zeros_like(inp)
        for d, k in enumerate(layer_keys(layer, bidirectional)):
            i = layer * D + d
            dx, dh0, dw_ih, dw_hh, db = _direction_backward(
                inp, h0[i], cache["layer_outputs"][layer][d], params[f"weight_ih_{k}"],
                params[f"weight_hh_{k}"], lengths, d == 1, cache["nonlinearity"],
                d_out[:, :, d * H:(d + 1) * H], grad_h_n[i])
            d_inp += dx
            grad_h0[i] = dh0
            grads[f"weight_ih_{k}"], grads[f"weight_hh_{k}"] = dw_ih, dw_hh
            if cache["bias"]:
                grads[f"bias_ih_{k}"], grads[f"bias_hh_{k}"] = db, db.copy()
        d_out = d_inp
    grads = {name: grads[name] for name in params}
    grad_x = from_time_major(d_out, unbatched, cache["batch_first"])
    return grad_x, grad_h0[:, 0] if unbatched else grad_h0, grads
