"""The gated cells (LSTM, GRU) on the compiled engine: their layer work around
``_rnn.cell_forward`` / ``_rnn.cell_backward``; validation and the layer loop are _engine's.

Per layer and direction, forward: the gates' input projection ``P = X W_ihᵀ + b`` as one GEMM
over all L·N rows (with a batch of 8 rows per thread and bfloat16 products, no cache for
BPTT or a W_ih of at most 2 MiB, step by step inside the recurrence instead), then the
recurrence (per step ``h_{t-1} W_hhᵀ``, an LSTM's accumulated onto P in the same tiles, and
the cell's epilogue, which saves the gate activations and c for BPTT; without a cache, into
one row per sequence that every step reuses). Backward: the recurrence of the epilogue's
derivative (dA, and for a GRU dR, the recurrent side's), then the weight gradients over all
rows, as the Elman RNN's: one pass over a layer's dA (``_rnn.weight_grads``) gives
``dW_ih = dAᵀX``, ``dW_hh = dRᵀH_prev`` (H_prev read through row pointers into the outputs
and h0) and the biases' sums; an LSTM's dR is its dA, so all of them at once; a GRU's dW_ih
is a GEMM on dA, then dR is made from dA in place for the pass of dW_hh. ``dW_hr = dhᵀM``
and ``dX = dA W_ih`` are GEMMs.

The kernels compute the gates gate-interleaved (src_c/cell_steps.h): they pack W_hh (and
W_ih, for a projection step by step) from torch's order themselves; here the biases, and
W_ih for the GEMMs of P and dX, are permuted, and the gradients' rows permuted back.
"""

import functools

import numpy as np

from . import _rnn
from ._engine import (GRU, LSTM, backward_layers, check_cache, forward_layers,
                      grad_output_time_major, grad_state, normalise_inputs, owned,
                      owned_params, wanted_params)
from ._layout import direction_param_names, directions, from_time_major, layer_keys
from ._memory import cached_allocation
from .parallel import get_num_threads
from .precision import resolve

_KERNEL = {"LSTM": _rnn.LSTM, "GRU": _rnn.GRU}


@functools.lru_cache(maxsize=64)
def _interleave(gates, hidden_size):
    """(perm, inverse): row perm[c] of a torch-ordered (G·H, ·) weight is row c of the
    gate-interleaved one (the kernels' order, ``_rnn.gate_rows``); inverse undoes it."""
    perm = _rnn.gate_rows(gates, hidden_size)
    inverse = np.argsort(perm)
    perm.flags.writeable = inverse.flags.writeable = False  # cached: shared by every call
    return perm, inverse


def _cell_weights(cell, params, k, sizes, biases=True):
    """A direction's weights for the kernels: W_ih and W_hh (contiguous, torch's order), b
    (P's bias, gate-interleaved, or None), b_hh (added to h W_hhᵀ: the GRU's b_hn,
    gate-interleaved, else None), W_hr or None. Without ``biases`` (backward does not read
    them), b and b_hh are None."""
    H = sizes.hidden_size
    perm = _interleave(cell.gates, H)[0]
    w_ih = np.ascontiguousarray(params[f"weight_ih_{k}"])
    w_hh = np.ascontiguousarray(params[f"weight_hh_{k}"])
    b = b_hh = None
    if sizes.bias and biases:
        b_i, b_h = np.asarray(params[f"bias_ih_{k}"]), np.asarray(params[f"bias_hh_{k}"])
        if cell is LSTM:
            b = (b_i + b_h)[perm]
        else:  # b_hn stays inside the reset product: only r's and z's biases are summed
            b = np.concatenate([b_i[:2 * H] + b_h[:2 * H], b_i[2 * H:]])[perm]
            b_hh = np.concatenate([np.zeros(2 * H, b_h.dtype), b_h[2 * H:]])[perm]
    w_hr = (np.ascontiguousarray(params[f"weight_hr_{k}"]) if sizes.proj_size else None)
    return w_ih, b, w_hh, b_hh, w_hr


# A float32 training forward reads W_ih of at most this many bytes step by step, and an eval
# forward chunk by chunk beyond it; past it (the grid's XL, 6-8 MiB) a training forward's
# GEMM first wins (docs/performance.md)
MAX_PER_STEP_W_IH_BYTES = 2 << 20
# Saved rows of an eval forward's chunk of steps projected at once (a ring of them)
MAX_EVAL_CHUNK_BYTES = 16 << 20


def _per_step(L, N, input_size, threads, bf16, keep_cache, w_ih_bytes):
    """The input projection inside the recurrence, step by step (``_rnn.projection_per_step``)
    rather than one GEMM first? With bfloat16 products, whose faster products make P's round
    trip through memory a larger share; without a cache for BPTT, where the saved rows then
    shrink to one per sequence (or a ring: _eval_chunk); and in float32 training up to a W_ih
    (``w_ih_bytes``) of MAX_PER_STEP_W_IH_BYTES, where P's round trip costs more than reading
    W_ih every step (docs/performance.md)."""
    return ((bf16 or not keep_cache or w_ih_bytes <= MAX_PER_STEP_W_IH_BYTES)
            and _rnn.projection_per_step(L, N, input_size, threads))


def _eval_chunk(L, N, W, itemsize, w_ih_bytes, bf16):
    """Steps an eval forward projecting step by step projects at a time: one, or, in float32
    past a W_ih of MAX_PER_STEP_W_IH_BYTES, as many as MAX_EVAL_CHUNK_BYTES of saved rows
    hold, so that W_ih is read once a chunk rather than once a step (``cell_forward``'s
    ``chunk``; bf16 products measured no faster so)."""
    if bf16 or w_ih_bytes <= MAX_PER_STEP_W_IH_BYTES:
        return 1
    return max(1, min(L, MAX_EVAL_CHUNK_BYTES // max(1, N * W * itemsize)))


def _step_rows(L, N, W, dtype, kept):
    """Rows a recurrence writes its steps in: all L (``kept`` >= L), a ring of ``kept`` rows
    per sequence (cell_forward's chunk), or one row per sequence that every step reuses
    (``kept`` = 1: a view of time stride 0, for what nothing reads after its step)."""
    if kept >= L:
        return np.empty((L, N, W), dtype=dtype)  # the kernels zero the rows past a length
    rows = np.empty((kept, N, W), dtype=dtype)
    if kept > 1:
        return rows
    # (the ndarray constructor: as_strided is Python, a noticeable share of a short call)
    return np.ndarray((L, N, W), dtype, rows, 0, (0,) + rows.strides[1:])


def _save_width(cell, sizes):
    """Columns of a step's saved row: the gates, c (LSTM) or W_hn h + b_hn (GRU), and m."""
    H = sizes.hidden_size
    return cell.gates * H + H + (H if sizes.proj_size else 0)


def _forward(cell, x, params, states, num_layers, bidirectional, batch_first, lengths,
             dropout_masks, keep_cache, precision, copy):
    given_x, given_states, given_masks = x, states, dropout_masks
    x, states, lengths, sizes, unbatched, dropout_masks = normalise_inputs(
        cell, x, states, lengths, params, num_layers, bidirectional, batch_first, dropout_masks)
    if keep_cache and copy:
        # backward must see what this forward saw
        x = owned(x, given_x)
        states = [owned(s, g) for s, g in zip(states, given_states)]
        params = owned_params(params, sizes, num_layers, bidirectional, cell)
        if dropout_masks is not None:
            dropout_masks = [owned(m, g) for m, g in zip(dropout_masks, given_masks)]
    dtype, H, H_out = sizes.dtype, sizes.hidden_size, sizes.out
    bf16 = resolve(precision, dtype)
    L, N = x.shape[:2]
    D = directions(bidirectional)
    G, W = cell.gates, _save_width(cell, sizes)
    threads = get_num_threads()
    lstm = cell is LSTM
    finals = [np.empty_like(s) for s in states]
    saves = []

    def layer_forward(layer, inp):
        out = np.empty((L, N, D * H_out), dtype=dtype)
        layer_saves = []
        for d, k in enumerate(layer_keys(layer, bidirectional)):
            i = layer * D + d
            w_ih, b, w_hh, b_hh, w_hr = _cell_weights(cell, params, k, sizes)
            per_step = _per_step(L, N, inp.shape[2], threads, bf16, keep_cache, w_ih.nbytes)
            chunk = (_eval_chunk(L, N, W, dtype.itemsize, w_ih.nbytes, bf16)
                     if per_step and not keep_cache else 1)
            # BPTT reads every step's row; a projection step by step needs a chunk's
            save = _step_rows(L, N, W, dtype, chunk if per_step and not keep_cache else L)
            projection = {}
            if per_step:
                projection = dict(x=inp, w_ih=w_ih, bias=b, chunk=chunk)
            else:
                _rnn.gemm(inp.reshape(L * N, inp.shape[2]), w_ih.T,
                          save.reshape(L * N, W)[:, :G * H], b, False, threads, bf16=bf16,
                          gate_layout=(G, H, 1))
            _rnn.cell_forward(_KERNEL[cell.name], save, out[:, :, d * H_out:(d + 1) * H_out],
                              states[0][i], states[1][i] if lstm else None, w_hh, b_hh, w_hr,
                              lengths, d == 1, finals[0][i], finals[1][i] if lstm else None,
                              threads, bf16=bf16, **projection)
            layer_saves.append(save)
        if keep_cache:
            saves.append(layer_saves)
        return out

    inp, layer_inputs, layer_outputs = forward_layers(x, num_layers, dropout_masks, keep_cache,
                                                      layer_forward)
    output = from_time_major(inp, unbatched, batch_first)
    finals = [f[:, 0] if unbatched else f for f in finals]
    if not keep_cache:
        return output, finals, None
    cache = dict(cell=cell.name, params=params, states=states, lengths=lengths,
                 layer_inputs=layer_inputs, layer_outputs=layer_outputs, saves=saves,
                 dropout_masks=dropout_masks, num_layers=num_layers, D=D, unbatched=unbatched,
                 batch_first=batch_first, bias=sizes.bias, dtype=dtype, bf16=bf16)
    output.flags.writeable = False  # backward reads it (as rnn_forward's)
    return output, finals, cache


_CACHE_KEYS = frozenset(("cell", "params", "states", "lengths", "layer_inputs",
                         "layer_outputs", "saves", "dropout_masks", "num_layers", "D",
                         "unbatched", "batch_first", "bias", "dtype", "bf16"))


def _check_gated_cache(cache, cell):
    def layer_arrays(cache, layer, L, N, sizes, D):
        saves = cache["saves"]
        if not (isinstance(saves, list) and len(saves) == cache["num_layers"]
                and isinstance(saves[layer], list) and len(saves[layer]) == D
                and isinstance(cache["states"], list) and len(cache["states"]) == cell.states):
            raise ValueError("cache entries do not match its parameters")
        wants = [(s, (L, N, _save_width(cell, sizes)), sizes.dtype) for s in saves[layer]]
        if layer == 0:
            widths = (sizes.out, sizes.hidden_size)
            wants += [(s, (D * cache["num_layers"], N, w), sizes.dtype)
                      for s, w in zip(cache["states"], widths)]
        return wants

    if isinstance(cache, dict) and cache.get("cell", cell.name) != cell.name:
        raise TypeError(f"cache is from a {cache['cell']}, not from {cell.name.lower()}_forward")
    return check_cache(cache, _CACHE_KEYS, cell, layer_arrays)


def _backward(cell, cache, grad_output, grad_states, input_grad, param_grads):
    sizes = _check_gated_cache(cache, cell)
    params, states, lengths = cache["params"], cache["states"], cache["lengths"]
    D, unbatched, batch_first = cache["D"], cache["unbatched"], cache["batch_first"]
    num_layers, dtype, bf16 = cache["num_layers"], sizes.dtype, cache["bf16"]
    H, H_out, G = sizes.hidden_size, sizes.out, cell.gates
    lstm = cell is LSTM
    L, N = cache["layer_inputs"][0].shape[:2]
    grad_output = grad_output_time_major(grad_output, dtype, L, N, D * H_out, unbatched,
                                         batch_first)
    names = ("grad_h_n", "grad_c_n")
    grad_states = [grad_state(g, name, dtype, s.shape, unbatched)
                   for g, name, s in zip(grad_states, names, states)]
    grad_states0 = [np.empty_like(s) for s in states]
    threads = get_num_threads()
    inverse = _interleave(G, H)[1]
    W = _save_width(cell, sizes)
    wanted = wanted_params(param_grads, params)
    grads = {}

    def layer_backward(layer, d_out):
        inp, out = cache["layer_inputs"][layer], cache["layer_outputs"][layer]
        inp2d = inp.reshape(L * N, inp.shape[2])
        keys = layer_keys(layer, D == 2)
        da = np.empty((L, N, D * G * H), dtype=dtype)
        w_ihs, recurrent = [], []

        def one_pass(x2d):
            """dW_ih = dAᵀX, dW_hh = dAᵀH_prev and db = ΣdA of every direction from one
            reading of da as it is now (rows in torch's order, db in dA's), and a function
            giving direction d's rows of one of them (a copy when there are two)."""
            dw_ih = np.empty((D * G * H, x2d.shape[1]), dtype=dtype)
            dw_hh = np.empty((D * G * H, H_out), dtype=dtype)
            db = np.empty(D * G * H, dtype=dtype) if sizes.bias else None
            _rnn.weight_grads(da.reshape(L * N, D * G * H), x2d, out,
                              np.ascontiguousarray(states[0][layer * D:(layer + 1) * D]),
                              lengths, dw_ih, dw_hh, db, threads, bf16, c_gate_layout=(G, H))
            rows = lambda a, d: a if D == 1 else a[d * G * H:(d + 1) * G * H].copy()
            return dw_ih, dw_hh, db, rows

        for d, k in enumerate(keys):
            i, cols, gcols = layer * D + d, slice(d * H_out, (d + 1) * H_out), \
                slice(d * G * H, (d + 1) * G * H)
            w_ih, _, w_hh, _, w_hr = _cell_weights(cell, params, k, sizes, biases=False)
            w_ihs.append(w_ih)
            save = cache["saves"][layer][d]
            # a direction's weight gradients, all of them if any is wanted
            direction_grads = not wanted.isdisjoint(direction_param_names((k,)))
            # dLoss/dh_t: read after its step only by the projection's gradient
            dh = _step_rows(L, N, H_out, dtype, L if sizes.proj_size and direction_grads else 1)
            _rnn.cell_backward(_KERNEL[cell.name], save, out[:, :, cols], d_out[:, :, cols],
                               states[0][i], states[1][i] if lstm else None, grad_states[0][i],
                               grad_states[1][i] if lstm else None, w_hh, w_hr, lengths, d == 1,
                               da[:, :, gcols], None, dh, grad_states0[0][i],
                               grad_states0[1][i] if lstm else None, threads, bf16=bf16)
            if not direction_grads:
                continue
            if sizes.proj_size:
                # dW_hr = Σ_t dh_tᵀ m_t
                dw_hr = np.empty((H_out, H), dtype=dtype)
                _rnn.gemm(dh.reshape(L * N, H_out), save.reshape(L * N, W)[:, G * H + H:],
                          dw_hr, None, False, threads, True, None, bf16)
                grads[f"weight_hr_{k}"] = dw_hr
            if lstm:  # (dW_ih, dW_hh and the biases' for the whole layer below)
                continue
            # dW_ih = dAᵀX and db_ih = ΣdA from one reading of its rows
            dw_ih = np.empty((G * H, inp.shape[2]), dtype=dtype)
            db_ih = np.empty(G * H, dtype=dtype) if sizes.bias else None
            _rnn.gemm(da[:, :, gcols].reshape(L * N, G * H), inp2d, dw_ih, None, False, threads,
                      True, db_ih, bf16, c_gate_layout=(G, H))
            grads[f"weight_ih_{k}"] = dw_ih
            if sizes.bias:
                grads[f"bias_ih_{k}"] = db_ih[inverse]
            recurrent.append((d, k, save))
        if lstm and not wanted.isdisjoint(direction_param_names(keys)):
            # An LSTM's dR is its dA: all its weight gradients from one reading of dA
            dw_ih, dw_hh, db, rows = one_pass(inp2d)
            for d, k in enumerate(keys):
                grads[f"weight_ih_{k}"], grads[f"weight_hh_{k}"] = rows(dw_ih, d), rows(dw_hh, d)
                if sizes.bias:
                    grads[f"bias_ih_{k}"] = rows(db, d)[inverse]
                    grads[f"bias_hh_{k}"] = grads[f"bias_ih_{k}"].copy()
        # dX = dA W_ih, summed over the directions by the reduction over D·G·H (not for the
        # input when its gradient is not asked for)
        d_in = None
        if layer or input_grad:
            w_ih = w_ihs[0] if D == 1 else np.concatenate(w_ihs)
            d_in = np.empty_like(inp)
            _rnn.gemm(da.reshape(L * N, D * G * H), w_ih, d_in.reshape(L * N, inp.shape[2]),
                      None, False, threads, bf16=bf16, gate_layout=(G, H, 0))
        if recurrent:
            # a GRU's dW_hh = dRᵀH_prev and db_hh = ΣdR, dR made from dA in place now that dX
            # has read it (no (L, N, D·3H) array of its own); both directions in one pass
            # (one not wanted keeps its dA: its rows are dropped)
            for d, _, save in recurrent:
                _rnn.gru_recurrent_side(da[:, :, d * G * H:(d + 1) * G * H], save, threads)
            _, dw_hh, db_hh, rows = one_pass(inp2d[:, :0])
            for d, k, _ in recurrent:
                grads[f"weight_hh_{k}"] = rows(dw_hh, d)
                if sizes.bias:
                    grads[f"bias_hh_{k}"] = rows(db_hh, d)[inverse]
        return d_in

    d_out = backward_layers(np.ascontiguousarray(grad_output), num_layers,
                            cache["dropout_masks"], layer_backward)
    grads = {name: grads[name] for name in params if name in wanted} if wanted else None
    grad_x = None if d_out is None else from_time_major(d_out, unbatched, batch_first)
    grad_states0 = [g[:, 0] if unbatched else g for g in grad_states0]
    return grad_x, grad_states0, grads


def _pair(hx, name):
    """(first, second) of an LSTM's state argument: None, or a pair whose entries may be None."""
    if hx is None:
        return None, None
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{name} of an LSTM must be None or a pair (h, c), got "
                        f"{type(hx).__name__}" + (f" of length {len(hx)}"
                                                  if isinstance(hx, (tuple, list)) else ""))
    return hx[0], hx[1]


def lstm_forward(x, params, hx=None, *, num_layers=1, bidirectional=False, batch_first=False,
                 lengths=None, dropout_masks=None, keep_cache=True, precision=None, copy=True):
    """Forward pass of a multi-layer, optionally bidirectional LSTM (torch.nn.LSTM), compiled.

    Parameters
    ----------
    x : ndarray, (L, N, I), (N, L, I) if ``batch_first``, or (L, I) unbatched.
    params : dict of str to ndarray, torch.nn.LSTM's names and shapes (``weight_hr_*`` for
        a projection: proj_size P > 0, h is P wide, c is H wide).
    hx : None or a pair (h0, c0), either None for zeros: h0 (D·num_layers, N, H_out),
        c0 (D·num_layers, N, H) (2-D unbatched).
    lengths, dropout_masks, keep_cache, precision, copy
        As in :func:`fastrnn.functional.rnn_forward` (masks (L, N, D·H_out)); with bfloat16
        products, c stays float32.

    Returns
    -------
    output : ndarray (L, N, D·H_out) in ``x``'s layout; read-only if ``keep_cache``.
    (h_n, c_n) : the states at each sequence's last step (h0, c0 for a length of 0).
    cache : dict for :func:`lstm_backward`, or None. It owns everything backward reads
        (unless ``copy`` is False).
    """
    h0, c0 = _pair(hx, "hx")
    with cached_allocation():
        output, (h_n, c_n), cache = _forward(LSTM, x, params, [h0, c0], num_layers,
                                             bidirectional, batch_first, lengths,
                                             dropout_masks, keep_cache, precision, copy)
    return output, (h_n, c_n), cache


def lstm_backward(cache, grad_output, grad_hx=None, *, input_grad=True, param_grads=True):
    """BPTT for :func:`lstm_forward`. ``grad_hx`` is None or (grad_h_n, grad_c_n), either
    None for zeros; ``input_grad`` and ``param_grads`` as
    :func:`fastrnn.functional.rnn_backward`'s. Returns ``grad_x, (grad_h0, grad_c0), grads``
    (every parameter's gradient, freshly allocated, in torch's order)."""
    g_h, g_c = _pair(grad_hx, "grad_hx")
    with cached_allocation():
        grad_x, (grad_h0, grad_c0), grads = _backward(LSTM, cache, grad_output, [g_h, g_c],
                                                      input_grad, param_grads)
    return grad_x, (grad_h0, grad_c0), grads


def gru_forward(x, params, h0=None, *, num_layers=1, bidirectional=False, batch_first=False,
                lengths=None, dropout_masks=None, keep_cache=True, precision=None, copy=True):
    """Forward pass of a multi-layer, optionally bidirectional GRU (torch.nn.GRU), compiled.

    The arguments are :func:`fastrnn.functional.rnn_forward`'s (without ``nonlinearity``),
    with torch.nn.GRU's parameters. Returns ``output, h_n, cache``.
    """
    with cached_allocation():
        output, (h_n,), cache = _forward(GRU, x, params, [h0], num_layers, bidirectional,
                                         batch_first, lengths, dropout_masks, keep_cache,
                                         precision, copy)
    return output, h_n, cache


def gru_backward(cache, grad_output, grad_h_n=None, *, input_grad=True, param_grads=True):
    """BPTT for :func:`gru_forward` (``input_grad`` and ``param_grads`` as
    :func:`fastrnn.functional.rnn_backward`'s). Returns ``grad_x, grad_h0, grads``."""
    with cached_allocation():
        grad_x, (grad_h0,), grads = _backward(GRU, cache, grad_output, [grad_h_n], input_grad,
                                              param_grads)
    return grad_x, grad_h0, grads
