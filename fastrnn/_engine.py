"""What every cell's functional forward and backward share (fastrnn.functional): the cells'
descriptions, the validation of arguments and caches, and the layer loops.

A cell is described by its name, its gates per hidden unit (Elman 1, LSTM 4, GRU 3), its
states (h; h and c) and whether it may project h (LSTM's proj_size). Everything here is
written once for all of them; what a cell adds is its per-layer work (functional.py for the
Elman cell's fused kernels, _gated.py for the gated cells' engine).
"""

import functools
import numbers
import sys
from typing import NamedTuple

import numpy as np

from . import _rnn
from ._layout import directions, param_shapes, to_time_major


class Cell(NamedTuple):
    """A cell's description: how many gates and states, and whether h may be projected."""
    name: str  # as torch names the module, for messages
    gates: int
    states: int
    proj: bool


ELMAN = Cell("RNN", 1, 1, False)
LSTM = Cell("LSTM", 4, 2, True)
GRU = Cell("GRU", 3, 1, False)
CELLS = {"rnn": ELMAN, "lstm": LSTM, "gru": GRU}  # by the modules' and functionals' names


def check_float_array(a, name, dtype):
    """``a`` as an ndarray of ``dtype``; non-float or mismatched dtypes are refused."""
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if a.dtype != dtype:
        raise TypeError(f"{name} dtype ({a.dtype}) does not match the parameters' dtype "
                        f"({np.dtype(dtype)}); convert it with {name}.astype(np.{np.dtype(dtype)})")
    return a


# every call checks the parameters against these: cached
expected_shapes = functools.lru_cache(maxsize=64)(param_shapes)


class Sizes(NamedTuple):
    """A network's sizes, read from its parameters."""
    dtype: np.dtype
    input_size: int
    hidden_size: int
    bias: bool
    proj_size: int

    @property
    def out(self):
        """Width of h: proj_size, or the hidden size."""
        return self.proj_size or self.hidden_size


def check_params(params, num_layers, bidirectional, cell=ELMAN):
    """Parameter dict -> Sizes, checking names and shapes against ``cell``'s."""
    if "weight_hh_l0" not in params or "weight_ih_l0" not in params:
        raise ValueError("params must contain 'weight_ih_l0' and 'weight_hh_l0', got keys "
                         f"{sorted(params)}")
    w_ih0 = np.asarray(params["weight_ih_l0"])
    dtype = w_ih0.dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"parameters must be float32 or float64, got {dtype}")
    if w_ih0.ndim != 2:
        raise ValueError(f"weight_ih_l0 must be 2-D, got shape {w_ih0.shape}")
    rows, input_size = w_ih0.shape
    if rows % cell.gates or rows == 0 and cell.gates > 1:
        raise ValueError(f"weight_ih_l0 of a {cell.name} must have {cell.gates}·hidden_size "
                         f"rows, got {rows}")
    hidden_size = rows // cell.gates
    bias = "bias_ih_l0" in params
    proj_size = 0
    if "weight_hr_l0" in params and cell.proj:
        w_hr = np.asarray(params["weight_hr_l0"])
        proj_size = w_hr.shape[0] if w_hr.ndim == 2 else -1
        if not 0 < proj_size < hidden_size:
            raise ValueError(f"proj_size has to be a positive integer smaller than hidden_size "
                             f"({hidden_size}): weight_hr_l0 has shape {w_hr.shape}")
    shapes = expected_shapes(input_size, hidden_size, int(num_layers), bool(bidirectional),
                             bias, cell.gates, proj_size)
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
    return Sizes(dtype, input_size, hidden_size, bias, proj_size)


def check_lengths(lengths, batch, seq_len):
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


_STATE_NAMES = (("h0", "hidden"), ("c0", "cell"))


def normalise_inputs(cell, x, states, lengths, params, num_layers, bidirectional, batch_first,
                     dropout_masks):
    """Validate everything; return time-major contiguous arrays and the layout to undo:
    x, [initial states] (zeros for None), lengths, Sizes, unbatched, dropout masks."""
    if not isinstance(num_layers, numbers.Integral) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    sizes = check_params(params, num_layers, bidirectional, cell)
    dtype, input_size, hidden_size = sizes.dtype, sizes.input_size, sizes.hidden_size
    x = check_float_array(x, "input", dtype)
    if x.ndim not in (2, 3):
        raise ValueError(f"{cell.name}: Expected input to be 2D or 3D, got {x.ndim}D array "
                         f"instead")
    if x.shape[-1] != input_size:
        raise ValueError(f"input.shape[-1] must be equal to input_size. Expected {input_size}, "
                         f"got {x.shape[-1]}")
    x, unbatched = to_time_major(x, batch_first)
    L, N = x.shape[:2]
    D = directions(bidirectional)
    # outputs and BPTT buffers hold L·N·D·(G + 2)·H elements per layer: refuse sizes that
    # overflow
    width = hidden_size if cell.gates == 1 else (cell.gates + 3) * hidden_size
    if L * N * D * width * dtype.itemsize * 4 > sys.maxsize:
        raise MemoryError(f"an {cell.name} over {L} steps x {N} sequences x {D * width} "
                          f"outputs needs more memory than this machine can address")
    widths = (sizes.out, hidden_size)[:cell.states]
    checked = []
    for s, width, (name, what) in zip(states, widths, _STATE_NAMES):
        if s is None:
            checked.append(np.zeros((D * num_layers, N, width), dtype=dtype))
            continue
        s = check_float_array(s, name, dtype)
        want = (D * num_layers, width) if unbatched else (D * num_layers, N, width)
        if s.shape != want:
            raise ValueError(f"Expected {what} size {want}, got {s.shape}")
        checked.append(np.ascontiguousarray(s[:, None, :] if unbatched else s))
    if unbatched and lengths is not None:
        raise ValueError("lengths is only accepted with a batched (3-D) input")
    padded = lengths is not None
    lengths = check_lengths(lengths, N, L)
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
            m = check_float_array(m, f"dropout_masks[{i}]", dtype)
            if m.shape != (L, N, D * sizes.out):
                raise ValueError(f"dropout_masks[{i}] must have shape "
                                 f"{(L, N, D * sizes.out)}, got {m.shape}")
            masks.append(np.ascontiguousarray(m))
        dropout_masks = masks
    return np.ascontiguousarray(x), checked, lengths, sizes, unbatched, dropout_masks


def owned(array, given):
    """``array``, copied if it may share memory with the caller's ``given``."""
    if given is not None and np.may_share_memory(array, given):
        return array.copy()
    return array


def owned_params(params, sizes, num_layers, bidirectional, cell):
    """A copy of every parameter the call reads (the cache owns what backward reads)."""
    return {name: np.array(params[name]) for name in expected_shapes(
        sizes.input_size, sizes.hidden_size, num_layers, bidirectional, sizes.bias, cell.gates,
        sizes.proj_size)}


def wanted_params(param_grads, params):
    """The names of the parameters whose gradients a backward computes: every one of
    ``params`` (True), none (False), or those ``param_grads`` names (a collection)."""
    if isinstance(param_grads, (bool, np.bool_)):
        return frozenset(params) if param_grads else frozenset()
    if isinstance(param_grads, str) or not hasattr(param_grads, "__iter__"):
        raise TypeError("param_grads must be True, False or a collection of parameter names, "
                        f"got {type(param_grads).__name__}")
    wanted = frozenset(param_grads)
    unknown = sorted(str(n) for n in wanted.difference(params))
    if unknown:
        known = list(params)
        raise ValueError(f"param_grads names parameters this network does not have: "
                         f"{unknown[:5]}; it has {known[:8] + ['...'] * (len(known) > 8)}")
    return wanted


def check_grad(g, name, dtype, want):
    """A gradient argument of ``want``'s shape and the parameters' dtype."""
    g = check_float_array(g, name, dtype)
    if g.shape != want:
        raise ValueError(f"{name} must have shape {want} (like the forward's output), "
                         f"got {g.shape}")
    return g


def grad_output_time_major(grad_output, dtype, L, N, width, unbatched, batch_first):
    """grad_output checked against the forward's output shape, as a time-major (L, N, ·) view."""
    if unbatched:
        want = (L, width)
    else:
        want = (N, L, width) if batch_first else (L, N, width)
    grad_output = check_grad(grad_output, "grad_output", dtype, want)
    if unbatched:
        return grad_output[:, None, :]
    return grad_output.transpose(1, 0, 2) if batch_first else grad_output


def grad_state(g, name, dtype, shape, unbatched):
    """A final state's gradient (None: zeros) checked against ``shape`` (D·layers, N, ·), as a
    contiguous 3-D array."""
    if g is None:
        return np.zeros(shape, dtype=dtype)
    want = (shape[0], shape[2]) if unbatched else shape
    g = check_grad(g, name, dtype, want)
    return np.ascontiguousarray(g[:, None, :] if unbatched else g)


def check_cache(cache, keys, cell, layer_arrays):
    """Refuse a cache that is not what the forward returned (an entry changed or rebound):
    every array backward hands the kernels, against the cache's own parameters. O(layers).

    ``layer_arrays(cache, layer, L, N, sizes, D)`` lists the (array, shape, dtype) of a
    layer's cell-specific entries. Returns the Sizes."""
    if not isinstance(cache, dict) or not keys <= cache.keys():
        raise TypeError(f"cache must be the dict returned by {cell.name.lower()}_forward "
                        f"(with keep_cache=True)")
    num_layers, D = cache["num_layers"], cache["D"]
    if D not in (1, 2) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"cache holds an invalid layout: num_layers={num_layers!r}, D={D!r}")
    try:
        sizes = check_params(cache["params"], num_layers, D == 2, cell)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cache parameters do not match its layout: {e}") from None
    dtype, H_out = sizes.dtype, sizes.out
    inputs, outputs, masks = cache["layer_inputs"], cache["layer_outputs"], cache["dropout_masks"]
    if (dtype != cache["dtype"] or sizes.bias != cache["bias"]
            or cache["bf16"] not in (True, False)
            or not all(isinstance(a, list) and len(a) == num_layers for a in (inputs, outputs))
            or not (masks is None or isinstance(masks, list) and len(masks) == num_layers - 1)):
        raise ValueError("cache entries do not match its parameters")
    shape = np.shape(inputs[0])
    L, N = shape[:2] if len(shape) == 3 else (-1, -1)
    wants = [(cache["lengths"], (N,), np.int64)]
    for layer in range(num_layers):
        wants.append((inputs[layer], (L, N, sizes.input_size if layer == 0 else D * H_out),
                      dtype))
        wants.append((outputs[layer], (L, N, D * H_out), dtype))
        wants += layer_arrays(cache, layer, L, N, sizes, D)
    wants += [(m, (L, N, D * H_out), dtype) for m in masks or ()]
    for array, shape, kind in wants:
        if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != kind:
            raise ValueError(f"cache entries do not match its parameters: expected a {shape} "
                             f"{np.dtype(kind)} array, got "
                             f"{getattr(array, 'shape', type(array).__name__)}")
    try:
        _rnn.check_lengths(cache["lengths"], N, L)
    except ValueError as e:
        raise ValueError(f"cache {e}") from None
    return sizes


def forward_layers(x, num_layers, dropout_masks, keep_cache, layer_forward):
    """The layer loop of a forward: ``layer_forward(layer, inp)`` -> the layer's output
    (L, N, D·H_out); dropout between layers. Returns the last layer's output (time-major)
    and, if keep_cache, each layer's input and output."""
    layer_inputs, layer_outputs = [], []
    inp = x
    for layer in range(num_layers):
        out = layer_forward(layer, inp)
        if keep_cache:
            layer_inputs.append(inp)
            layer_outputs.append(out)
        inp = out
        if dropout_masks is not None and layer < num_layers - 1:
            inp = out * dropout_masks[layer]
    return inp, layer_inputs, layer_outputs


def backward_layers(d_out, num_layers, dropout_masks, layer_backward):
    """The layer loop of a backward, top layer first: ``layer_backward(layer, d_out)``, given
    dLoss/d(the layer's output), returns dLoss/d(its input); the dropout masks between the
    layers are applied on the way. Returns dLoss/dx (time-major)."""
    for layer in reversed(range(num_layers)):
        if layer < num_layers - 1 and dropout_masks is not None:
            d_out = d_out * dropout_masks[layer]
        d_out = layer_backward(layer, d_out)
    return d_out
