"""Stateless RNN, LSTM and GRU forward and BPTT on the compiled kernels.

``rnn_forward`` (``lstm_forward``, ``gru_forward``) returns what ``rnn_backward``
(``lstm_backward``, ``gru_backward``) needs (the cache); nothing is kept between calls, so
several threads may share read-only parameters. The signatures match
:mod:`fastrnn.reference`, which is the specification these functions are tested against.

Per call, Python validates inputs and allocates outputs once; then, per layer and
direction, the compiled code runs

* forward: ``P = X W_ihᵀ + b`` as one GEMM over all L·N rows, then the recurrence
  ``h_t = act(P_t + h_{t-1} W_hhᵀ)`` with each thread owning a slice of the batch (for
  batches of at least 8 rows per thread, P_t is computed inside the recurrence instead,
  step by step, with the same arithmetic);
* backward: the dA recurrence per batch slice, then one pass over all L·N rows of dA for
  ``dW_ih``, ``dW_hh`` and ``db`` (the threads share the packing of the other operand), and
  ``dX`` as a GEMM (for a layer below another, computed step by step inside that layer's
  dA recurrence instead, with the same arithmetic).

The Elman cell runs its fused kernels here; the gated cells (LSTM, GRU) are in
:mod:`fastrnn._gated`, on the same engine (_engine.py: validation and the layer loop; the
compiled split, gathering and GEMMs).
"""

import os

import numpy as np

from . import _rnn
from ._engine import (ELMAN, backward_layers, check_cache, forward_layers,
                      grad_output_time_major, grad_state, normalise_inputs, owned, owned_params,
                      wanted_params)
from ._memory import cached_allocation
from .parallel import get_num_threads
from .precision import resolve
from ._layout import direction_param_names, directions, from_time_major, layer_keys

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward",
           "gru_backward", "available_kernels", "get_kernel", "set_kernel", "openmp_enabled"]

NONLINEARITIES = ("tanh", "relu")
openmp_enabled = _rnn.openmp_enabled
available_kernels = _rnn.available_kernels


def get_kernel():
    """Name of the kernel build in use: 'avx512_bf16', 'avx512', 'avx2' or 'portable'."""
    return _rnn.selected_kernels()


def set_kernel(name=None):
    """Force a kernel build by name (see :func:`available_kernels`); None picks the best.

    The environment variable ``FASTRNN_KERNEL`` sets the same at import time.
    """
    _rnn.select_kernels(available_kernels()[0] if name is None else name)


if os.environ.get("FASTRNN_KERNEL"):
    set_kernel(os.environ["FASTRNN_KERNEL"])


def rnn_forward(x, params, h0=None, *, num_layers=1, nonlinearity="tanh", bidirectional=False,
                batch_first=False, lengths=None, dropout_masks=None, keep_cache=True,
                precision=None, copy=True):
    """Forward pass of a multi-layer, optionally bidirectional Elman RNN (compiled).

    Parameters
    ----------
    x : ndarray, shape (L, N, I), (N, L, I) if ``batch_first``, or (L, I) unbatched.
        Its dtype must equal the parameters' (float32 or float64).
    params : dict of str to ndarray
        torch.nn.RNN's parameter names and shapes; biases are used iff ``bias_ih_l0`` is present.
    h0 : ndarray, shape (D·num_layers, N, H), or (D·num_layers, H) unbatched; None for zeros.
    num_layers, nonlinearity, bidirectional, batch_first
        As in ``torch.nn.RNN``.
    lengths : array of int, shape (N,), optional
        Valid steps of each batch element, in any order, each in [0, L]. Outputs past a
        length are 0 and h_n is the state at each element's own last step.
    dropout_masks : list of ``num_layers - 1`` arrays of shape (L, N, D·H), optional
        Multiplied into each layer's output (time-major) before it feeds the next layer.
    keep_cache : bool, default True
        False for inference: no cache is returned (None), the arguments are not copied for
        it, and ``output`` is writable.
    precision : {None, 'float32', 'bfloat16'}
        Of the matrix products (:mod:`fastrnn.precision`): 'bfloat16' rounds their operands
        to bfloat16 and sums in float32 (float32 arrays only); None follows
        :func:`fastrnn.set_matmul_precision`. Backward uses the forward's.
    copy : bool, default True
        Whether the cache holds copies of the arguments backward reads (``x``, ``h0``, the
        parameters, the dropout masks). False saves the copies' time and memory when the
        caller guarantees that these arrays are not changed before backward
        (:mod:`fastrnn.torch` does: torch's version counters of the saved tensors refuse
        a backward after an in-place change).

    Returns
    -------
    output : ndarray, (L, N, D·H) (batch-first or unbatched like ``x``); read-only if
        ``keep_cache``, since backward reads it.
    h_n : ndarray, (D·num_layers, N, H) (2-D if unbatched)
    cache : dict or None
        What :func:`rnn_backward` needs. Unless ``copy`` is False, it owns everything
        backward reads: arguments that backward depends on (``x``, ``h0``, ``lengths``, the
        parameters, the dropout masks) are copied, so changing or rebinding them after this
        call does not change the gradients (``lengths`` is copied in any case).
    """
    # the same large arrays every call: reuse their memory rather than fault in fresh pages
    with cached_allocation():
        return _rnn_forward(x, params, h0, num_layers, nonlinearity, bidirectional,
                            batch_first, lengths, dropout_masks, keep_cache, precision, copy)


def _rnn_forward(x, params, h0, num_layers, nonlinearity, bidirectional, batch_first, lengths,
                 dropout_masks, keep_cache, precision, copy):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
    given_x, given_h0, given_masks = x, h0, dropout_masks
    x, (h0,), lengths, sizes, unbatched, dropout_masks = normalise_inputs(
        ELMAN, x, [h0], lengths, params, num_layers, bidirectional, batch_first, dropout_masks)
    dtype, H, bias = sizes.dtype, sizes.hidden_size, sizes.bias
    bf16 = resolve(precision, dtype)
    if keep_cache and copy:
        # backward must see what this forward saw (a copy costs about one more reading of
        # each argument; detecting a change later would cost two and still fail the call)
        x, h0 = owned(x, given_x), owned(h0, given_h0)
        params = owned_params(params, sizes, num_layers, bidirectional, ELMAN)
        if dropout_masks is not None:
            dropout_masks = [owned(m, g) for m, g in zip(dropout_masks, given_masks)]
    L, N = x.shape[:2]
    D = directions(bidirectional)
    relu = nonlinearity == "relu"
    threads = get_num_threads()
    h_n = np.empty((D * num_layers, N, H), dtype=dtype)

    def layer_forward(layer, inp):
        out = np.empty((L, N, D * H), dtype=dtype)
        keys = layer_keys(layer, bidirectional)
        per_step = _rnn.projection_per_step(L, N, inp.shape[2], threads)
        if not per_step:
            # P = X W_ihᵀ + (b_ih + b_hh) for every direction at once (one GEMM, X read once),
            # written where the outputs will go; the kernels pack W_ihᵀ from the row-major rows
            w_ih, b = _stacked_input_weights(params, keys, bias)
            _rnn.gemm(inp.reshape(L * N, inp.shape[2]), w_ih.T, out.reshape(L * N, D * H), b,
                      False, threads, bf16=bf16)
        for d, k in enumerate(keys):
            cols = slice(d * H, (d + 1) * H)
            # per step: (x, W_ih, b) of this direction alone, no stacked copy of the weights
            projection = (inp, *_stacked_input_weights(params, (k,), bias)) if per_step else ()
            _rnn.recurrence_forward(out[:, :, cols], h0[layer * D + d],
                                    np.ascontiguousarray(params[f"weight_hh_{k}"]), lengths,
                                    d == 1, relu, h_n[layer * D + d], threads, *projection,
                                    bf16=bf16)
        return out

    inp, layer_inputs, layer_outputs = forward_layers(x, num_layers, dropout_masks, keep_cache,
                                                      layer_forward)
    output = from_time_major(inp, unbatched, batch_first)
    h_n = h_n[:, 0] if unbatched else h_n
    if not keep_cache:
        return output, h_n, None
    cache = dict(params=params, h0=h0, lengths=lengths, layer_inputs=layer_inputs,
                 layer_outputs=layer_outputs,
                 dropout_masks=dropout_masks,
                 num_layers=num_layers, relu=relu, D=D, unbatched=unbatched,
                 batch_first=batch_first, bias=bias, dtype=dtype, bf16=bf16)
    # the output is also the cache backward reads: read-only, so changing it in place
    # cannot silently change the gradients (copy it to modify it)
    output.flags.writeable = False
    return output, h_n, cache


def rnn_backward(cache, grad_output, grad_h_n=None, *, input_grad=True, param_grads=True):
    """Backpropagation through time for the forward pass that produced ``cache``.

    Parameters
    ----------
    cache : dict from :func:`rnn_forward`.
    grad_output : ndarray shaped like the forward's output.
    grad_h_n : ndarray shaped like h_n, or None for zeros.
    input_grad : bool, default True
        Whether to compute ``grad_x``. False skips the first layer's product dA·W_ih (for
        an input that needs no gradient: features rather than an embedding's output) and
        returns None for it; every other result is the same, bit for bit.
    param_grads : bool or collection of str, default True
        Which parameters' gradients to compute: all, none (False: for the gradient of the
        input or initial state alone, a saliency map, say) or those named (frozen layers
        left out). The products of a layer and direction none of whose parameters is named
        are skipped, most of a backward; every result computed is the same, bit for bit.

    Returns
    -------
    grad_x : ndarray shaped like the forward's input, or None.
    grad_h0 : ndarray shaped like h0.
    grads : dict mapping each parameter name asked for to its gradient (freshly allocated),
        or None if none was.
    """
    with cached_allocation():
        return _rnn_backward(cache, grad_output, grad_h_n, input_grad, param_grads)


_CACHE_KEYS = frozenset(("params", "h0", "lengths", "layer_inputs", "layer_outputs",
                         "dropout_masks", "num_layers", "relu", "D", "unbatched", "batch_first",
                         "bias", "dtype", "bf16"))


def _elman_arrays(cache, layer, L, N, sizes, D):
    """The Elman cache's own arrays: h0 (checked with the first layer)."""
    if layer:
        return []
    return [(cache["h0"], (D * cache["num_layers"], N, sizes.hidden_size), sizes.dtype)]


def _rnn_backward(cache, grad_output, grad_h_n, input_grad, param_grads):
    check_cache(cache, _CACHE_KEYS, ELMAN, _elman_arrays)
    params, h0, lengths, dtype = cache["params"], cache["h0"], cache["lengths"], cache["dtype"]
    D, unbatched, batch_first = cache["D"], cache["unbatched"], cache["batch_first"]
    num_layers, bf16 = cache["num_layers"], cache["bf16"]
    x = cache["layer_inputs"][0]
    L, N = x.shape[:2]
    H = h0.shape[2]
    grad_output = grad_output_time_major(grad_output, dtype, L, N, D * H, unbatched,
                                         batch_first)
    grad_h_n = grad_state(grad_h_n, "grad_h_n", dtype, (D * num_layers, N, H), unbatched)
    threads = get_num_threads()
    wanted = wanted_params(param_grads, params)
    grads = {}
    grad_h0 = np.empty_like(h0)
    # dLoss/d(this layer's output): d_out, or, if w_above is set, d_out · w_above (d_out the
    # layer above's dA: see below)
    w_above = None

    def layer_backward(layer, d_out):
        nonlocal w_above
        inp = cache["layer_inputs"][layer]
        out = cache["layer_outputs"][layer]
        inp2d = inp.reshape(L * N, inp.shape[2])
        keys = layer_keys(layer, D == 2)
        # dA of every direction side by side, (L, N, D·H) like the output
        da = np.empty((L, N, D * H), dtype=dtype)
        for d, k in enumerate(keys):
            i = layer * D + d
            cols = slice(d * H, (d + 1) * H)
            dy = (d_out[:, :, cols],) if w_above is None else (d_out, w_above[:, cols])
            _rnn.recurrence_backward(out[:, :, cols], dy[0], grad_h_n[i],
                                     np.ascontiguousarray(params[f"weight_hh_{k}"]), lengths,
                                     d == 1, cache["relu"], da[:, :, cols], grad_h0[i], threads,
                                     *dy[1:], bf16=bf16)
        da2d = da.reshape(L * N, D * H)
        # (both directions' at once: all of the layer's if any is wanted)
        if not wanted.isdisjoint(direction_param_names(keys)):
            # dW_ih = dAᵀ X, dW_hh = dA_dᵀ H_prev (h0 where sequences start) and db = Σ dA,
            # every direction at once, from one reading of dA
            dw_ih = np.empty((D * H, inp.shape[2]), dtype=dtype)
            dw_hh = np.empty((D * H, H), dtype=dtype)
            db = np.empty(D * H, dtype=dtype) if cache["bias"] else None
            _rnn.weight_grads(da2d, inp2d, out, h0[layer * D:(layer + 1) * D], lengths, dw_ih,
                              dw_hh, db, threads, bf16)
            for d, k in enumerate(keys):
                cols = slice(d * H, (d + 1) * H)
                grads[f"weight_ih_{k}"] = dw_ih[cols] if D == 1 else dw_ih[cols].copy()
                grads[f"weight_hh_{k}"] = dw_hh[cols] if D == 1 else dw_hh[cols].copy()
                if cache["bias"]:
                    grads[f"bias_ih_{k}"] = db[cols].copy()
                    grads[f"bias_hh_{k}"] = db[cols].copy()
        # dX = dA W_ih, summed over directions by the reduction over D·H. For the layer below
        # (no dropout between), its BPTT computes dX_t step by step, bitwise as this GEMM,
        # while the rows are in cache: dX never makes a round trip through memory (what is
        # passed down is then this layer's dA, and w_above its W_ih)
        if not (layer or input_grad):
            return None
        w_ih = _stacked_input_weights(params, keys, False)[0]
        if (layer > 0 and cache["dropout_masks"] is None
                and _rnn.projection_per_step(L, N, D * H, threads)):
            w_above = w_ih
            return da
        w_above = None
        d_in = np.empty_like(inp)
        _rnn.gemm(da2d, w_ih, d_in.reshape(L * N, inp.shape[2]), None, False, threads,
                  bf16=bf16)
        return d_in

    d_out = backward_layers(np.ascontiguousarray(grad_output), num_layers,
                            cache["dropout_masks"], layer_backward)
    grads = {name: grads[name] for name in params if name in wanted} if wanted else None
    grad_x = None if d_out is None else from_time_major(d_out, unbatched, batch_first)
    return grad_x, (grad_h0[:, 0] if unbatched else grad_h0), grads


def _stacked_input_weights(params, keys, bias):
    """(W_ih of the directions in keys stacked, (D·H, I) row-major; b_ih + b_hh likewise or
    None)."""
    w = [np.asarray(params[f"weight_ih_{k}"]) for k in keys]
    w = np.ascontiguousarray(w[0]) if len(w) == 1 else np.concatenate(w)
    if not bias:
        return w, None
    b = [np.asarray(params[f"bias_ih_{k}"]) + np.asarray(params[f"bias_hh_{k}"]) for k in keys]
    return w, (b[0] if len(b) == 1 else np.concatenate(b))


from ._gated import gru_backward, gru_forward, lstm_backward, lstm_forward  # noqa: E402
