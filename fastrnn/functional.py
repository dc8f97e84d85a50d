"""Stateless RNN forward and BPTT on the compiled kernels.

``rnn_forward`` returns what ``rnn_backward`` needs (the cache); nothing is kept
between calls, so several threads may share read-only parameters. The signatures match
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
"""

import functools
import numbers
import os
import sys

import numpy as np

from . import _rnn
from ._memory import cached_allocation
from .parallel import get_num_threads
from ._layout import directions, from_time_major, layer_keys, param_shapes, to_time_major

__all__ = ["rnn_forward", "rnn_backward", "available_kernels", "get_kernel", "set_kernel",
           "openmp_enabled"]

NONLINEARITIES = ("tanh", "relu")
openmp_enabled = _rnn.openmp_enabled
available_kernels = _rnn.available_kernels


def get_kernel():
    """Name of the kernel build in use: 'avx512', 'avx2' or 'portable'."""
    return _rnn.selected_kernels()


def set_kernel(name=None):
    """Force a kernel build by name (see :func:`available_kernels`); None picks the best.

    The environment variable ``FASTRNN_KERNEL`` sets the same at import time.
    """
    _rnn.select_kernels(available_kernels()[0] if name is None else name)


if os.environ.get("FASTRNN_KERNEL"):
    set_kernel(os.environ["FASTRNN_KERNEL"])


def _check_float_array(a, name, dtype):
    """``a`` as an ndarray of ``dtype``; non-float or mismatched dtypes are refused."""
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if a.dtype != dtype:
        raise TypeError(f"{name} dtype ({a.dtype}) does not match the parameters' dtype "
                        f"({np.dtype(dtype)}); convert it with {name}.astype(np.{np.dtype(dtype)})")
    return a


# every call checks the parameters against these: cached
_expected_shapes = functools.lru_cache(maxsize=64)(param_shapes)


def _check_params(params, num_layers, bidirectional):
    """Parameter dict -> (dtype, input_size, hidden_size, bias), checking names and shapes."""
    if "weight_hh_l0" not in params or "weight_ih_l0" not in params:
        raise ValueError("params must contain 'weight_ih_l0' and 'weight_hh_l0', got keys "
                         f"{sorted(params)}")
    w_ih0 = np.asarray(params["weight_ih_l0"])
    dtype = w_ih0.dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"parameters must be float32 or float64, got {dtype}")
    if w_ih0.ndim != 2:
        raise ValueError(f"weight_ih_l0 must be 2-D, got shape {w_ih0.shape}")
    hidden_size, input_size = w_ih0.shape
    bias = "bias_ih_l0" in params
    shapes = _expected_shapes(input_size, hidden_size, int(num_layers), bool(bidirectional), bias)
    if len(params) != len(shapes) or not shapes.keys() <= params.keys():
        missing = [k for k in shapes if k not in params]
        unexpected = [k for k in params if k not in shapes]
        raise ValueError(f"params do not match num_layers={num_layers}, "
                         f"bidirectional={bidirectional}, bias={bias}: missing {missing}, "
                         f"unexpected {unexpected}")
    for name, want in shapes.items():
        p = np.asarray(params[name])
        if p.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {p.shape}")
        if p.dtype != dtype:
            raise TypeError(f"{name} has dtype {p.dtype}, expected {dtype} like weight_ih_l0")
    return dtype, input_size, hidden_size, bias


def _check_lengths(lengths, batch, seq_len):
    """Lengths as a contiguous int64 array of shape (batch,), each in [0, seq_len]."""
    if lengths is None:
        return np.full(batch, seq_len, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)  # an empty list, for a batch of 0
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise TypeError(f"lengths must be integers (whole numbers), got {arr.dtype} values {arr}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},) (one per batch element), "
                         f"got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > seq_len):
        raise ValueError(f"lengths must be in [0, {seq_len}] (the sequence length), got "
                         f"min {arr.min()}, max {arr.max()}")
    # always a copy: the cache keeps it, and the caller's array may change before backward
    return np.array(arr, dtype=np.int64)


def _normalise_inputs(x, h0, lengths, params, num_layers, nonlinearity, bidirectional,
                      batch_first, dropout_masks):
    """Validate everything; return time-major contiguous arrays and the layout to undo."""
    if not isinstance(num_layers, numbers.Integral) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
    dtype, input_size, hidden_size, bias = _check_params(params, num_layers, bidirectional)
    x = _check_float_array(x, "input", dtype)
    if x.ndim not in (2, 3):
        raise ValueError(f"RNN: Expected input to be 2D or 3D, got {x.ndim}D array instead")
    if x.shape[-1] != input_size:
        raise ValueError(f"input.shape[-1] must be equal to input_size. Expected {input_size}, "
                         f"got {x.shape[-1]}")
    x, unbatched = to_time_major(x, batch_first)
    L, N = x.shape[:2]
    D = directions(bidirectional)
    # outputs and BPTT buffers hold L·N·D·H elements per layer: refuse sizes that overflow
    if L * N * D * hidden_size * dtype.itemsize * 4 > sys.maxsize:
        raise MemoryError(f"an RNN over {L} steps x {N} sequences x {D * hidden_size} "
                          f"outputs needs more memory than this machine can address")
    if h0 is None:
        h0 = np.zeros((D * num_layers, N, hidden_size), dtype=dtype)
    else:
        h0 = _check_float_array(h0, "h0", dtype)
        want = (D * num_layers, hidden_size) if unbatched else (D * num_layers, N, hidden_size)
        if h0.shape != want:
            raise ValueError(f"Expected hidden size {want}, got {h0.shape}")
        h0 = np.ascontiguousarray(h0[:, None, :] if unbatched else h0)
    if unbatched and lengths is not None:
        raise ValueError("lengths is only accepted with a batched (3-D) input")
    padded = lengths is not None
    lengths = _check_lengths(lengths, N, L)
    if padded and N and lengths.min() < L and not np.all(np.isfinite(x)):
        # steps past a length never run; zero them so non-finite padding cannot reach the
        # weight gradients (dW_ih sums dAᵀX over every row, and 0·NaN = NaN)
        x = np.where((np.arange(L)[:, None] < lengths[None, :])[:, :, None], x, 0).astype(dtype)
    if dropout_masks is not None:
        if len(dropout_masks) != num_layers - 1:
            raise ValueError(f"dropout_masks must hold num_layers - 1 = {num_layers - 1} arrays, "
                             f"got {len(dropout_masks)}")
        masks = []
        for i, m in enumerate(dropout_masks):
            m = _check_float_array(m, f"dropout_masks[{i}]", dtype)
            if m.shape != (L, N, D * hidden_size):
                raise ValueError(f"dropout_masks[{i}] must have shape {(L, N, D * hidden_size)}, "
                                 f"got {m.shape}")
            masks.append(np.ascontiguousarray(m))
        dropout_masks = masks
    return (np.ascontiguousarray(x), h0, lengths, dtype, hidden_size, bias, unbatched,
            dropout_masks)


def rnn_forward(x, params, h0=None, *, num_layers=1, nonlinearity="tanh", bidirectional=False,
                batch_first=False, lengths=None, dropout_masks=None, keep_cache=True):
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

    Returns
    -------
    output : ndarray, (L, N, D·H) (batch-first or unbatched like ``x``); read-only if
        ``keep_cache``, since backward reads it.
    h_n : ndarray, (D·num_layers, N, H) (2-D if unbatched)
    cache : dict or None
        What :func:`rnn_backward` needs. It owns everything backward reads: arguments that
        backward depends on (``x``, ``h0``, ``lengths``, the parameters, the dropout masks)
        are copied, so changing or rebinding them after this call does not change the
        gradients.
    """
    # the same large arrays every call: reuse their memory rather than fault in fresh pages
    with cached_allocation():
        return _rnn_forward(x, params, h0, num_layers, nonlinearity, bidirectional,
                            batch_first, lengths, dropout_masks, keep_cache)


def _owned(array, given):
    """``array``, copied if it may share memory with the caller's ``given``."""
    if given is not None and np.may_share_memory(array, given):
        return array.copy()
    return array


def _rnn_forward(x, params, h0, num_layers, nonlinearity, bidirectional, batch_first, lengths,
                 dropout_masks, keep_cache):
    given_x, given_h0, given_masks = x, h0, dropout_masks
    (x, h0, lengths, dtype, H, bias, unbatched, dropout_masks) = _normalise_inputs(
        x, h0, lengths, params, num_layers, nonlinearity, bidirectional, batch_first,
        dropout_masks)
    if keep_cache:
        # backward must see what this forward saw (a copy costs about one more reading of
        # each argument; detecting a change later would cost two and still fail the call)
        x, h0 = _owned(x, given_x), _owned(h0, given_h0)
        params = {name: np.array(params[name]) for name in _expected_shapes(
            x.shape[2], H, num_layers, bidirectional, bias)}
        if dropout_masks is not None:
            dropout_masks = [_owned(m, g) for m, g in zip(dropout_masks, given_masks)]
    L, N = x.shape[:2]
    D = directions(bidirectional)
    relu = nonlinearity == "relu"
    threads = get_num_threads()
    h_n = np.empty((D * num_layers, N, H), dtype=dtype)
    layer_inputs, layer_outputs = [], []
    inp = x
    for layer in range(num_layers):
        out = np.empty((L, N, D * H), dtype=dtype)
        keys = layer_keys(layer, bidirectional)
        per_step = _rnn.projection_per_step(L, N, inp.shape[2], threads)
        if not per_step:
            # P = X W_ihᵀ + (b_ih + b_hh) for every direction at once (one GEMM, X read once),
            # written where the outputs will go; the kernels pack W_ihᵀ from the row-major rows
            w_ih, b = _stacked_input_weights(params, keys, bias)
            _rnn.gemm(inp.reshape(L * N, inp.shape[2]), w_ih.T, out.reshape(L * N, D * H), b,
                      False, threads)
        for d, k in enumerate(keys):
            cols = slice(d * H, (d + 1) * H)
            # per step: (x, W_ih, b) of this direction alone, no stacked copy of the weights
            projection = (inp, *_stacked_input_weights(params, (k,), bias)) if per_step else ()
            _rnn.recurrence_forward(out[:, :, cols], h0[layer * D + d],
                                    np.ascontiguousarray(params[f"weight_hh_{k}"]), lengths,
                                    d == 1, relu, h_n[layer * D + d], threads, *projection)
        if keep_cache:
            layer_inputs.append(inp)
            layer_outputs.append(out)
        inp = out
        if dropout_masks is not None and layer < num_layers - 1:
            inp = out * dropout_masks[layer]
    output = from_time_major(inp, unbatched, batch_first)
    h_n = h_n[:, 0] if unbatched else h_n
    if not keep_cache:
        return output, h_n, None
    cache = dict(params=params, h0=h0, lengths=lengths, layer_inputs=layer_inputs,
                 layer_outputs=layer_outputs,
                 dropout_masks=dropout_masks,
                 num_layers=num_layers, relu=relu, D=D, unbatched=unbatched,
                 batch_first=batch_first, bias=bias, dtype=dtype)
    # the output is also the cache backward reads: read-only, so changing it in place
    # cannot silently change the gradients (copy it to modify it)
    output.flags.writeable = False
    return output, h_n, cache


def _check_grad(g, name, dtype, want):
    g = _check_float_array(g, name, dtype)
    if g.shape != want:
        raise ValueError(f"{name} must have shape {want} (like the forward's output), "
                         f"got {g.shape}")
    return g


def rnn_backward(cache, grad_output, grad_h_n=None):
    """Backpropagation through time for the forward pass that produced ``cache``.

    Parameters
    ----------
    cache : dict from :func:`rnn_forward`.
    grad_output : ndarray shaped like the forward's output.
    grad_h_n : ndarray shaped like h_n, or None for zeros.

    Returns
    -------
    grad_x : ndarray shaped like the forward's input.
    grad_h0 : ndarray shaped like h0.
    grads : dict mapping every parameter name to its gradient (freshly allocated).
    """
    with cached_allocation():
        return _rnn_backward(cache, grad_output, grad_h_n)


_CACHE_KEYS = frozenset(("params", "h0", "lengths", "layer_inputs", "layer_outputs",
                         "dropout_masks", "num_layers", "relu", "D", "unbatched", "batch_first",
                         "bias", "dtype"))


def _check_cache(cache):
    """Refuse a cache that is not what rnn_forward returned (an entry changed or rebound):
    every array backward hands the kernels, against the cache's own parameters. O(layers)."""
    if not isinstance(cache, dict) or not _CACHE_KEYS <= cache.keys():
        raise TypeError("cache must be the dict returned by rnn_forward (with keep_cache=True)")
    num_layers, D = cache["num_layers"], cache["D"]
    if D not in (1, 2) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"cache holds an invalid layout: num_layers={num_layers!r}, D={D!r}")
    try:
        dtype, input_size, H, bias = _check_params(cache["params"], num_layers, D == 2)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cache parameters do not match its layout: {e}") from None
    inputs, outputs, masks = cache["layer_inputs"], cache["layer_outputs"], cache["dropout_masks"]
    if (dtype != cache["dtype"] or bias != cache["bias"]
            or not all(isinstance(a, list) and len(a) == num_layers for a in (inputs, outputs))
            or not (masks is None or isinstance(masks, list) and len(masks) == num_layers - 1)):
        raise ValueError("cache entries do not match its parameters")
    shape = np.shape(inputs[0])
    L, N = shape[:2] if len(shape) == 3 else (-1, -1)
    wants = [(cache["h0"], (D * num_layers, N, H), dtype), (cache["lengths"], (N,), np.int64)]
    for layer in range(num_layers):
        wants.append((inputs[layer], (L, N, input_size if layer == 0 else D * H), dtype))
        wants.append((outputs[layer], (L, N, D * H), dtype))
    wants += [(m, (L, N, D * H), dtype) for m in masks or ()]
    for array, shape, kind in wants:
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != kind:
            raise ValueError(f"cache entries do not match its parameters: expected a {shape} "
                             f"{np.dtype(kind)} array, got "
                             f"{getattr(array, 'shape', type(array).__name__)}")
    if N and (cache["lengths"].min() < 0 or cache["lengths"].max() > L):
        raise ValueError(f"cache lengths must be in [0, {L}]")


def _rnn_backward(cache, grad_output, grad_h_n):
    _check_cache(cache)
    params, h0, lengths, dtype = cache["params"], cache["h0"], cache["lengths"], cache["dtype"]
    D, unbatched, batch_first = cache["D"], cache["unbatched"], cache["batch_first"]
    num_layers = cache["num_layers"]
    x = cache["layer_inputs"][0]
    L, N = x.shape[:2]
    H = h0.shape[2]
    out_shape = (L, N, D * H)
    if unbatched:
        want_out, want_hn = (L, D * H), (D * num_layers, H)
    else:
        want_out = (N, L, D * H) if batch_first else out_shape
        want_hn = (D * num_layers, N, H)
    grad_output = _check_grad(grad_output, "grad_output", dtype, want_out)
    if unbatched:
        grad_output = grad_output[:, None, :]
    elif batch_first:
        grad_output = grad_output.transpose(1, 0, 2)
    if grad_h_n is None:
        grad_h_n = np.zeros((D * num_layers, N, H), dtype=dtype)
    else:
        grad_h_n = _check_grad(grad_h_n, "grad_h_n", dtype, want_hn)
        grad_h_n = grad_h_n[:, None, :] if unbatched else grad_h_n
    grad_h_n = np.ascontiguousarray(grad_h_n)
    threads = get_num_threads()
    grads = {}
    grad_h0 = np.empty_like(h0)
    # dLoss/d(this layer's output): d_out, or, if w_above is set, d_out · w_above (d_out the
    # layer above's dA: see below)
    d_out, w_above = np.ascontiguousarray(grad_output), None
    for layer in reversed(range(num_layers)):
        if layer < num_layers - 1 and cache["dropout_masks"] is not None:
            d_out = d_out * cache["dropout_masks"][layer]
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
                                     *dy[1:])
        da2d = da.reshape(L * N, D * H)
        # dW_ih = dAᵀ X, dW_hh = dA_dᵀ H_prev (h0 where sequences start) and db = Σ dA, every
        # direction at once, from one reading of dA
        dw_ih = np.empty((D * H, inp.shape[2]), dtype=dtype)
        dw_hh = np.empty((D * H, H), dtype=dtype)
        db = np.empty(D * H, dtype=dtype) if cache["bias"] else None
        _rnn.weight_grads(da2d, inp2d, out, h0[layer * D:(layer + 1) * D], lengths, dw_ih,
                          dw_hh, db, threads)
        for d, k in enumerate(keys):
            cols = slice(d * H, (d + 1) * H)
            grads[f"weight_ih_{k}"] = dw_ih[cols] if D == 1 else dw_ih[cols].copy()
            grads[f"weight_hh_{k}"] = dw_hh[cols] if D == 1 else dw_hh[cols].copy()
            if cache["bias"]:
                grads[f"bias_ih_{k}"], grads[f"bias_hh_{k}"] = db[cols].copy(), db[cols].copy()
        # dX = dA W_ih, summed over directions by the reduction over D·H. For the layer below
        # (no dropout between), its BPTT computes dX_t step by step, bitwise as this GEMM,
        # while the rows are in cache: dX never makes a round trip through memory
        w_ih = _stacked_input_weights(params, keys, False)[0]
        if (layer > 0 and cache["dropout_masks"] is None
                and _rnn.projection_per_step(L, N, D * H, threads)):
            d_out, w_above = da, w_ih
        else:
            d_out, w_above = np.empty_like(inp), None
            _rnn.gemm(da2d, w_ih, d_out.reshape(L * N, inp.shape[2]), None, False, threads)
    grads = {name: grads[name] for name in params}
    grad_x = from_time_major(d_out, unbatched, batch_first)
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
