"""Shared builders and comparisons for the fastrnn tests.

Everything here is independent of fastrnn's code paths: parameter names and shapes are
written out from torch's conventions, inputs are random, and the torch runner drives
``torch.nn.RNN`` itself (packing variable lengths the way torch users do).
"""

import re
import threading

import numpy as np
import pytest

# Sizes small enough that one case takes milliseconds; H != I and D·H != I catch transposes.
L, N, I, H = 6, 4, 3, 5

# a tiny corpus and train-lm options that train in a fraction of a second (the CLI tests)
LM_TEXT = "to be or not to be, that is the question.\n" * 300
TINY_LM = ["--hidden", "24", "--layers", "1", "--embedding", "8", "--seq-len", "20",
           "--batch", "4", "--lr", "0.01", "--sample-length", "20", "--threads", "1"]

REL_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
ABS_FLOOR = {np.dtype(np.float32): 1e-7, np.dtype(np.float64): 1e-14}

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]

# (layout, lengths kind): variable lengths are not defined for unbatched input.
LAYOUT_LENGTHS = [
    pytest.param("time", None, id="time"),
    pytest.param("time", "ragged", id="time-ragged"),
    pytest.param("time", "short", id="time-short"),
    pytest.param("batch", None, id="batchfirst"),
    pytest.param("batch", "ragged", id="batchfirst-ragged"),
    pytest.param("batch", "short", id="batchfirst-short"),
    pytest.param("unbatched", None, id="unbatched"),
]


def over_all_options(test):
    """Parametrize ``test`` over the full product of RNN options (the conformance matrix)."""
    marks = [
        pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda v: f"layers{v}"),
        pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"]),
        pytest.mark.parametrize("nonlinearity", ["tanh", "relu"]),
        pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"]),
        pytest.mark.parametrize("layout,lengths_kind", LAYOUT_LENGTHS),
        pytest.mark.parametrize("with_h0", [False, True], ids=["noh0", "h0"]),
        pytest.mark.parametrize("dtype", DTYPES),
    ]
    for mark in marks:
        test = mark(test)
    return test


def assert_close_rel(a, b, dtype, tol=None, name="array"):
    """Assert ‖a − b‖ ≤ tol·‖b‖ (tol 1e-5 for float32, 1e-10 for float64), shapes equal.

    Plus an absolute floor of ABS_FLOOR (about one float32 ulp of an O(1) value) per element,
    RMS: when ‖b‖ is tiny (all zeros, or a dead relu layer whose one live output is a
    cancellation of O(1) terms) the relative error measures rounding, not correctness.
    """
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{name}: shape {a.shape} != expected {b.shape}"
    tol = REL_TOL[np.dtype(dtype)] if tol is None else tol
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert np.all(np.isfinite(a64)), f"{name}: non-finite values"
    err, ref = np.linalg.norm(a64 - b64), np.linalg.norm(b64)
    floor = ABS_FLOOR[np.dtype(dtype)] * np.sqrt(b.size)
    assert err <= tol * ref + floor, (
        f"{name}: ‖a − b‖ = {err:.3g}, relative {err / ref if ref else np.inf:.3g} > {tol:g}")


def assert_grads_close(grads, expected, dtype, tol=None):
    """Every parameter gradient close to ``expected``; same names, in the same order."""
    assert list(grads) == list(expected)
    for name in expected:
        assert_close_rel(grads[name], expected[name], dtype, tol, name=f"grad {name}")


def expected_param_shapes(input_size, hidden_size, num_layers, bidirectional, bias):
    """torch.nn.RNN's parameter names and shapes in torch's order, written out independently."""
    D = 2 if bidirectional else 1
    shapes = {}
    for layer in range(num_layers):
        in_features = input_size if layer == 0 else D * hidden_size
        for suffix in ["", "_reverse"][:D]:
            shapes[f"weight_ih_l{layer}{suffix}"] = (hidden_size, in_features)
            shapes[f"weight_hh_l{layer}{suffix}"] = (hidden_size, hidden_size)
            if bias:
                shapes[f"bias_ih_l{layer}{suffix}"] = (hidden_size,)
                shapes[f"bias_hh_l{layer}{suffix}"] = (hidden_size,)
    return shapes


def random_params(rng, input_size, hidden_size, num_layers, bidirectional, bias, dtype):
    """Random weights in torch's init range U(-1/√H, 1/√H), scaled up so relu stays active."""
    k = 1.5 / np.sqrt(hidden_size)
    return {name: rng.uniform(-k, k, size=shape).astype(dtype)
            for name, shape in expected_param_shapes(input_size, hidden_size, num_layers,
                                                     bidirectional, bias).items()}


def make_lengths(kind, seq_len, batch, allow_zero=True):
    """Unsorted per-sequence lengths. 'ragged' has max == L; 'short' has max < L.

    torch refuses zero-length sequences, so ``allow_zero=False`` replaces the 0 with 2.
    """
    if kind is None:
        return None
    if kind == "ragged":
        base = [3, seq_len, 0 if allow_zero else 2, 1]
    elif kind == "short":
        base = [seq_len - 2, 1, seq_len - 1, 2]
    else:
        raise AssertionError(kind)
    return np.array((base * batch)[:batch], dtype=np.int64)


def make_inputs(rng, *, layout, lengths_kind, with_h0, num_layers, bidirectional, dtype,
                seq_len=L, batch=N, input_size=I, hidden_size=H, allow_zero_length=True):
    """x, h0, lengths, grad_output and grad_h_n in the user-facing layout for these options."""
    D = 2 if bidirectional else 1
    if layout == "unbatched":
        x_shape, h_shape = (seq_len, input_size), (D * num_layers, hidden_size)
        y_shape = (seq_len, D * hidden_size)
    else:
        x_shape = ((batch, seq_len, input_size) if layout == "batch"
                   else (seq_len, batch, input_size))
        h_shape = (D * num_layers, batch, hidden_size)
        y_shape = x_shape[:2] + (D * hidden_size,)
    x = rng.standard_normal(x_shape).astype(dtype)
    h0 = rng.standard_normal(h_shape).astype(dtype) * 0.5 if with_h0 else None
    lengths = make_lengths(lengths_kind, seq_len, batch, allow_zero_length)
    grad_output = rng.standard_normal(y_shape).astype(dtype)
    grad_h_n = rng.standard_normal(h_shape).astype(dtype)
    return x, h0, lengths, grad_output, grad_h_n


def make_dropout_masks(rng, num_layers, seq_len, batch, hidden_size, bidirectional, p, dtype):
    """num_layers − 1 inverted-dropout masks (L, N, D·H) with values 0 or 1/(1−p)."""
    D = 2 if bidirectional else 1
    return [((rng.random((seq_len, batch, D * hidden_size)) >= p) / (1 - p)).astype(dtype)
            for _ in range(num_layers - 1)]


def forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths=None,
                   dropout_masks=None):
    """Keyword arguments shared by reference.rnn_forward and functional.rnn_forward."""
    return dict(num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                batch_first=layout == "batch", lengths=lengths, dropout_masks=dropout_masks)


def run_torch_module(module, xt, hx, lengths, batch_first):
    """``module(xt, hx)``; with ``lengths``, through pack_padded_sequence(enforce_sorted=False)
    and back with pad_packed_sequence(total_length=L), as torch users do."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    if lengths is None:
        return module(xt, hx)
    packed = pack_padded_sequence(xt, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
                                  batch_first=batch_first, enforce_sorted=False)
    out, final = module(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=batch_first,
                                 total_length=xt.shape[1 if batch_first else 0])
    return out, final


def run_torch(params, x, h0, lengths, grad_output, grad_h_n, *, num_layers, nonlinearity,
              bidirectional, batch_first):
    """Forward and backward through torch.nn.RNN with these weights.

    Returns output, h_n, grad_x, grad_h0, {name: grad} as NumPy arrays. Variable lengths go
    through pack_padded_sequence(enforce_sorted=False) / pad_packed_sequence(total_length=L).
    """
    torch = pytest.importorskip("torch")
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[x.dtype]
    hidden_size = params["weight_hh_l0"].shape[0]
    module = torch.nn.RNN(x.shape[-1], hidden_size, num_layers=num_layers,
                          nonlinearity=nonlinearity, bias="bias_ih_l0" in params,
                          batch_first=batch_first, bidirectional=bidirectional, dtype=dtype)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    D = 2 if bidirectional else 1
    if h0 is None:  # explicit zeros so torch reports grad_h0 too
        h_shape = (D * num_layers,) + (() if x.ndim == 2 else (x.shape[0 if batch_first else 1],))
        h0 = np.zeros(h_shape + (hidden_size,), dtype=x.dtype)
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    out, hn = run_torch_module(module, xt, ht, lengths, batch_first)
    loss = (out * torch.from_numpy(grad_output)).sum() + (hn * torch.from_numpy(grad_h_n)).sum()
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    return (out.detach().numpy(), hn.detach().numpy(), xt.grad.numpy(), ht.grad.numpy(), grads)


def numerical_gradient(f, arr, eps=1e-6):
    """Central differences of scalar ``f()`` w.r.t. every entry of ``arr`` (perturbed in
    place and restored)."""
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        saved = arr[idx]
        arr[idx] = saved + eps
        plus = f()
        arr[idx] = saved - eps
        minus = f()
        arr[idx] = saved
        g[idx] = (plus - minus) / (2 * eps)
    return g


def numerical_gradients(loss, x, h0, params, eps=1e-6):
    """Central differences of scalar ``loss(x, h0, params)`` w.r.t. every entry of each input.

    ``loss`` must not modify its arguments. Returns grad_x, grad_h0, {name: grad}.
    """
    x, h0 = x.copy(), h0.copy()
    params = {k: v.copy() for k, v in params.items()}
    f = lambda: loss(x, h0, params)  # noqa: E731 - closes over the arrays being perturbed
    return (numerical_gradient(f, x, eps), numerical_gradient(f, h0, eps),
            {k: numerical_gradient(f, v, eps) for k, v in params.items()})


def match_all(*fragments):
    """Regex matching a message that contains every fragment (literally), in any order."""
    return match_patterns(*(re.escape(str(f)) for f in fragments))


def match_patterns(*patterns):
    """Regex matching a message that contains a match of every pattern, in any order."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in patterns)


def match_shape(shape):
    """Regex for a shape printed as a tuple or a list: (2, 4, 5) or [2, 4, 5]."""
    return r"[\(\[]" + r",\s*".join(str(s) for s in shape) + r",?[\)\]]"


def run_api(api, params, x, h0, grad_output, grad_h_n, **kwargs):
    """Forward then backward through ``api`` (fastrnn.reference or fastrnn.functional).

    Returns output, h_n, grad_x, grad_h0, {name: grad}.
    """
    out, hn, cache = api.rnn_forward(x, params, h0, **kwargs)
    grad_x, grad_h0, grads = api.rnn_backward(cache, grad_output, grad_h_n)
    return out, hn, grad_x, grad_h0, grads


def run_module(rnn, x, h0, lengths, grad_output, grad_h_n):
    """Forward then backward through a fastrnn.RNN module with freshly zeroed gradients.

    Returns output, h_n, grad_x, grad_h0, {name: grad} (copies).
    """
    rnn.zero_grad()
    out, hn = rnn(x, h0, lengths)
    grad_x, grad_h0 = rnn.backward(grad_output, grad_h_n)
    grads = {name: np.array(p.grad) for name, p in rnn.named_parameters()}
    return out, hn, grad_x, grad_h0, grads


def assert_results_close(got, expected, dtype, tol=None):
    """Compare (output, h_n, grad_x, grad_h0, grads) tuples; ``got`` must also have ``dtype``."""
    for name, a, b in zip(["output", "h_n", "grad_x", "grad_h0"], got[:4], expected[:4]):
        assert np.asarray(a).dtype == np.dtype(dtype), f"{name}: dtype {np.asarray(a).dtype}"
        assert_close_rel(a, b, dtype, tol, name=name)
    for name, g in got[4].items():
        assert np.asarray(g).dtype == np.dtype(dtype), f"grad {name}: dtype {np.asarray(g).dtype}"
    assert_grads_close(got[4], expected[4], dtype, tol)


def assert_results_equal(got, expected):
    """Bitwise equality of two (output, h_n, grad_x, grad_h0, grads) tuples."""
    for name, a, b in zip(["output", "h_n", "grad_x", "grad_h0"], got[:4], expected[:4]):
        assert np.asarray(a).shape == np.asarray(b).shape, name
        assert np.array_equal(a, b), f"{name} differs"
    assert list(got[4]) == list(expected[4])
    for name in expected[4]:
        assert np.array_equal(got[4][name], expected[4][name]), f"grad {name} differs"


def relu_kink_risk(params, x, h0, *, num_layers, bidirectional, layout, lengths, masks):
    """Whether some layer ≥ 1 receives an all-zero input row at a valid step.

    With relu and no bias, such a row (all units of the layer below dead, or dropped) next
    to a zero state gives a pre-activation of exactly 0, where relu has a kink and finite
    differences measure ½ instead of relu'(0) = 0. Layer 0 sees random x, never a zero row.
    """
    from fastrnn import reference

    D = 2 if bidirectional else 1
    seq_len = x.shape[1 if layout == "batch" else 0]
    batch = 1 if layout == "unbatched" else x.shape[0 if layout == "batch" else 1]
    valid = (np.arange(seq_len)[:, None] < (np.full(batch, seq_len) if lengths is None
                                             else np.asarray(lengths))[None, :])
    for layer in range(1, num_layers):
        below = {k: v for k, v in params.items() if int(re.search(r"_l(\d+)", k)[1]) < layer}
        out, _, _ = reference.rnn_forward(
            x, below, None if h0 is None else h0[:D * layer],
            **forward_kwargs(layer, "relu", bidirectional, layout, lengths,
                             None if masks is None else masks[:layer - 1]))
        out = out[:, None] if layout == "unbatched" else (
            out.transpose(1, 0, 2) if layout == "batch" else out)
        if masks is not None:
            out = out * masks[layer - 1]
        if np.any(np.all(out == 0, axis=2) & valid):
            return True
    return False


def in_threads(work, count):
    """Run ``work(i)`` for i < count in as many threads, started together; their results."""
    results, errors = [None] * count, []
    barrier = threading.Barrier(count)

    def target(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results
