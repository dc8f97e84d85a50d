"""Property-based differential tests (hypothesis): compiled kernels against the reference.

Random shapes (including zero-sized ones), options, variable lengths, dropout masks and
memory layouts; every output and every gradient is compared, on every kernel path this
CPU supports, for the Elman RNN and for the gated cells (LSTM with and without a
projection, GRU). A second property checks, for every cell, that results are bitwise
identical for one and two threads at sizes that take the parallel paths (batch slices and
hidden-column slices), with float32 and bfloat16 products, in training and in eval mode.

By default the examples are derandomized (the same every run, so CI is stable); set
``FASTRNN_FUZZ_EXAMPLES=500`` (say) to search longer with fresh random examples.
"""

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _gated import random_gated_params, run_gated, state_shapes  # noqa: E402
from _helpers import assert_results_equal, expected_param_shapes, run_api  # noqa: E402
import fastrnn  # noqa: E402
from fastrnn import functional, reference  # noqa: E402

_EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", "0"))


def fuzz_settings(default_examples):
    """Derandomized ``default_examples`` per kernel, or FASTRNN_FUZZ_EXAMPLES random ones."""
    return settings(max_examples=_EXAMPLES or default_examples, derandomize=not _EXAMPLES,
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


LAYOUTS = ["contiguous", "fortran", "strided", "reversed", "readonly"]


def relayout(a, how):
    """The same values in another memory layout (fastrnn must not care which)."""
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., 1::2] = a
        return big[..., 1::2]
    if how == "reversed" and a.ndim:  # negative strides along the first axis
        return np.ascontiguousarray(a[::-1])[::-1]
    if how == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


def draw_stack(draw, steps, batches, inputs):
    """What every cell's case draws alike, in this order: num_layers, bidirectional, bias,
    layout ('time', 'batch' or 'unbatched'), seq_len, batch, input_size."""
    num_layers = draw(st.integers(1, 3))
    bidirectional = draw(st.booleans())
    bias = draw(st.booleans())
    layout = draw(st.sampled_from(["time", "batch", "unbatched"]))
    seq_len = draw(st.integers(0, steps))
    batch = 1 if layout == "unbatched" else draw(st.integers(0, batches))
    return num_layers, bidirectional, bias, layout, seq_len, batch, draw(st.integers(0, inputs))


def draw_lengths(draw, layout, seq_len, batch):
    """None, or a length in [0, seq_len] per sequence (batched layouts only)."""
    if layout == "unbatched" or not draw(st.booleans()):
        return None
    return np.array(draw(st.lists(st.integers(0, seq_len), min_size=batch, max_size=batch)),
                    dtype=np.int64)


@st.composite
def rnn_cases(draw):
    """Options, sizes and arrays for one forward + backward."""
    nonlinearity = draw(st.sampled_from(["tanh", "relu"]))
    # relu in float32: a pre-activation within rounding of 0 may land on either side of the
    # kink in the two implementations (an O(1) gradient difference), so relu runs in float64,
    # where that needs a value within 1e-16 of 0
    dtype = np.float64 if nonlinearity == "relu" else draw(st.sampled_from([np.float32,
                                                                            np.float64]))
    num_layers, bidirectional, bias, layout, seq_len, batch, input_size = draw_stack(
        draw, steps=7, batches=6, inputs=6)
    # across SIMD widths (4, 8, 16 lanes) and the 32-column panels of the step kernels
    hidden_size = draw(st.integers(1, 40))
    lengths = draw_lengths(draw, layout, seq_len, batch)
    D = 2 if bidirectional else 1
    p = draw(st.sampled_from([None, 0.0, 0.5, 1.0])) if num_layers > 1 else None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = 1.5 / np.sqrt(hidden_size)
    params = {name: rng.uniform(-k, k, shape).astype(dtype) for name, shape in
              expected_param_shapes(input_size, hidden_size, num_layers, bidirectional,
                                    bias).items()}
    lead = (seq_len,) if layout == "unbatched" else (
        (batch, seq_len) if layout == "batch" else (seq_len, batch))
    h_shape = (D * num_layers,) + (() if layout == "unbatched" else (batch,)) + (hidden_size,)
    x = rng.standard_normal(lead + (input_size,)).astype(dtype)
    h0 = rng.standard_normal(h_shape).astype(dtype) if draw(st.booleans()) else None
    masks = None
    if p is not None:
        masks = [((rng.random((seq_len, batch, D * hidden_size)) >= p) /
                  max(1 - p, 1e-3)).astype(dtype) for _ in range(num_layers - 1)]
    grad_output = rng.standard_normal(lead + (D * hidden_size,)).astype(dtype)
    grad_h_n = rng.standard_normal(h_shape).astype(dtype) if draw(st.booleans()) else None
    layouts = draw(st.lists(st.sampled_from(LAYOUTS), min_size=6, max_size=6))
    kwargs = dict(num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                  batch_first=layout == "batch", lengths=lengths, dropout_masks=masks)
    return dict(params=params, x=x, h0=h0, grad_output=grad_output, grad_h_n=grad_h_n,
                kwargs=kwargs, dtype=dtype, layouts=layouts)


def _maybe(a, how):
    return None if a is None else relayout(a, how)


@fuzz_settings(150)
@given(case=rnn_cases())
def test_compiled_matches_reference(kernel, case):
    params, x, h0, gy, ghn = (case[k] for k in ("params", "x", "h0", "grad_output", "grad_h_n"))
    kwargs, (lx, lh, lg, lgh, lp, lm) = case["kwargs"], case["layouts"]
    expected = run_api(reference, params, x, h0, gy, ghn, **kwargs)
    masks = kwargs["dropout_masks"]
    lengths = kwargs["lengths"]
    if lengths is not None:
        # a plain list too, except an empty one (bug H in docs/hardening.md)
        lengths = lengths.tolist() if lm == "contiguous" and lengths.size else relayout(lengths, lm)
    fast_kwargs = dict(kwargs, lengths=lengths, dropout_masks=None if masks is None else
                       [relayout(m, lm) for m in masks])
    got = run_api(functional, {k: relayout(v, lp) for k, v in params.items()}, relayout(x, lx),
                  _maybe(h0, lh), relayout(gy, lg), _maybe(ghn, lgh), **fast_kwargs)
    assert_close_fuzz(got, expected, case["dtype"])


# ‖a − b‖ ≤ REL·‖b‖ + ABS·√size. The absolute part is a few dozen ulps of an O(1) value
# (every input is O(1)): a gradient that is a small sum of O(1) terms (a cancellation) has
# only that absolute accuracy in any float32 implementation; a real bug errs by O(0.1).
REL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
ABS = {np.dtype(np.float32): 4e-6, np.dtype(np.float64): 1e-13}


def assert_close_fuzz(got, expected, dtype):
    """(output, h_n, grad_x, grad_h0, grads) of an Elman RNN, within the bound above."""
    names = ["output", "h_n", "grad_x", "grad_h0"] + [f"grad {k}" for k in expected[4]]
    assert list(got[4]) == list(expected[4])
    assert_named_close(list(zip(names, list(got[:4]) + list(got[4].values()))),
                       list(zip(names, list(expected[:4]) + list(expected[4].values()))), dtype)


def assert_named_close(got, expected, dtype):
    """Lists of (name, array), the same names in the same order, within the bound above."""
    assert [n for n, _ in got] == [n for n, _ in expected]
    rel, abs_ = REL[np.dtype(dtype)], ABS[np.dtype(dtype)]
    for (name, a), (_, b) in zip(got, expected):
        assert a.shape == b.shape and a.dtype == np.dtype(dtype), name
        assert np.all(np.isfinite(a)), name
        err = np.linalg.norm((a - b).astype(np.float64))
        assert err <= rel * np.linalg.norm(b.astype(np.float64)) + abs_ * np.sqrt(b.size), (
            f"{name}: ‖a − b‖ = {err:.3g}")


@st.composite
def parallel_cases(draw):
    """Sizes around the two-thread thresholds (fastrnn/_rnn.pyx): L·N·H² ≥ 2¹⁹ for a
    recurrence to use a second thread; N < 8 and H ≥ 256 to split hidden columns rather
    than the batch."""
    if draw(st.booleans()):  # batch slices (N ≥ 8 for two threads)
        batch, hidden = draw(st.integers(8, 40)), draw(st.integers(16, 140))
    else:  # column slices, and below 256 a small batch split into slices of one or two
        batch, hidden = draw(st.integers(1, 7)), draw(st.integers(200, 300))
    # a sequence just long enough to pass the threshold, capped to keep each example quick
    seq_len = int(min(48, max(2, -(-2**19 // (batch * hidden * hidden)) + draw(st.integers(0, 3)))))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(batch=batch, hidden=hidden, seq_len=seq_len, seed=seed,
                nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                ragged=draw(st.booleans()), bidirectional=draw(st.booleans()))


@fuzz_settings(8)
@given(case=parallel_cases())
def test_thread_count_never_changes_a_bit(kernel, case):
    rng = np.random.default_rng(case["seed"])
    L, N, H, dtype = case["seq_len"], case["batch"], case["hidden"], case["dtype"]
    D = 2 if case["bidirectional"] else 1
    params = {name: (rng.uniform(-1, 1, shape) / np.sqrt(H)).astype(dtype) for name, shape in
              expected_param_shapes(7, H, 2, case["bidirectional"], True).items()}
    x = rng.standard_normal((L, N, 7)).astype(dtype)
    gy = rng.standard_normal((L, N, D * H)).astype(dtype)
    ghn = rng.standard_normal((2 * D, N, H)).astype(dtype)
    lengths = rng.integers(0, L + 1, size=N) if case["ragged"] else None
    kwargs = dict(num_layers=2, nonlinearity=case["nonlinearity"],
                  bidirectional=case["bidirectional"], lengths=lengths)
    previous = fastrnn.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            fastrnn.set_num_threads(threads)
            results.append(run_api(functional, params, x, None, gy, ghn, **kwargs))
    finally:
        fastrnn.set_num_threads(previous)
    assert_results_equal(results[1], results[0])


@st.composite
def gated_cases(draw):
    """Options, sizes and arrays for one LSTM or GRU forward + backward."""
    cell = draw(st.sampled_from(["lstm", "gru"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    num_layers, bidirectional, bias, layout, seq_len, batch, input_size = draw_stack(
        draw, steps=6, batches=5, inputs=5)
    # partial vectors of 16 units, the epilogue's groups of four vectors (64 units and more)
    # and more than one of the gate-interleaved packing's blocks of 32 units
    hidden_size = draw(st.integers(1, 80))
    proj_size = (draw(st.integers(0, hidden_size - 1)) if cell == "lstm" and hidden_size > 1
                 else 0)
    lengths = draw_lengths(draw, layout, seq_len, batch)
    D = 2 if bidirectional else 1
    out = proj_size or hidden_size
    p = draw(st.sampled_from([None, 0.0, 0.5, 1.0])) if num_layers > 1 else None
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = random_gated_params(rng, cell, input_size, hidden_size, num_layers, bidirectional,
                                 bias, dtype, proj_size)
    lead = (seq_len,) if layout == "unbatched" else (
        (batch, seq_len) if layout == "batch" else (seq_len, batch))
    x = rng.standard_normal(lead + (input_size,)).astype(dtype)
    shapes = state_shapes(cell, x.shape, hidden_size, num_layers, bidirectional,
                          layout == "batch", proj_size)
    # each initial state and each final state's gradient given or None (zeros)
    states = [rng.standard_normal(s).astype(dtype) if draw(st.booleans()) else None
              for s in shapes]
    grad_states = [rng.standard_normal(s).astype(dtype) if draw(st.booleans()) else None
                   for s in shapes]
    masks = None
    if p is not None:
        masks = [((rng.random((seq_len, batch, D * out)) >= p) /
                  max(1 - p, 1e-3)).astype(dtype) for _ in range(num_layers - 1)]
    grad_output = rng.standard_normal(lead + (D * out,)).astype(dtype)
    layouts = draw(st.lists(st.sampled_from(LAYOUTS), min_size=6, max_size=6))
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional,
                  batch_first=layout == "batch", lengths=lengths, dropout_masks=masks)
    return dict(cell=cell, params=params, x=x, states=states, grad_output=grad_output,
                grad_states=grad_states, kwargs=kwargs, dtype=dtype, layouts=layouts)


def _flat_gated(result):
    """run_gated's result as (name, array) pairs, in its order."""
    out, finals, grad_x, grad_states, grads = result
    return ([("output", out)] + [(f"final state {i}", f) for i, f in enumerate(finals)]
            + [("grad_x", grad_x)]
            + [(f"grad of initial state {i}", g) for i, g in enumerate(grad_states)]
            + [(f"grad {k}", g) for k, g in grads.items()])


@fuzz_settings(100)
@given(case=gated_cases())
def test_compiled_gated_matches_reference(kernel, case):
    cell, params, x, states, gy, gs = (case[k] for k in ("cell", "params", "x", "states",
                                                           "grad_output", "grad_states"))
    kwargs, (lx, lh, lg, lgh, lp, lm) = case["kwargs"], case["layouts"]
    expected = run_gated(reference, cell, params, x, states, gy, gs, **kwargs)
    masks = kwargs["dropout_masks"]
    fast_kwargs = dict(kwargs, dropout_masks=None if masks is None else
                       [relayout(m, lm) for m in masks])
    got = run_gated(functional, cell, {k: relayout(v, lp) for k, v in params.items()},
                    relayout(x, lx), [_maybe(s, lh) for s in states], relayout(gy, lg),
                    [_maybe(g, lgh) for g in gs], **fast_kwargs)
    assert_named_close(_flat_gated(got), _flat_gated(expected), case["dtype"])


@st.composite
def gated_parallel_cases(draw):
    """Sizes around the gated recurrences' two-thread thresholds (_cells.pxi's
    _split_cell): L·N·G·H·H_out ≥ 2¹⁹ multiply-adds; fewer than 8 rows and H ≥ 128 split
    hidden units, otherwise batch slices; 16 rows or more project x step by step in eval
    mode and with bf16 products."""
    cell = draw(st.sampled_from(["lstm", "gru"]))
    if draw(st.booleans()):  # batch slices, with and without the projection per step
        batch, hidden = draw(st.integers(8, 40)), draw(st.integers(8, 90))
    else:  # hidden units: H >= 128, four of the split's blocks of 32 units or more
        batch, hidden = draw(st.integers(1, 7)), draw(st.integers(128, 170))
    proj = draw(st.sampled_from([0, 0, hidden // 3])) if cell == "lstm" else 0
    G, out = {"lstm": 4, "gru": 3}[cell], proj or hidden
    # a sequence just long enough to pass the threshold, capped to keep each example quick
    seq_len = int(min(24, max(2, -(-2**19 // (batch * G * hidden * out))
                              + draw(st.integers(0, 3)))))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    precision = draw(st.sampled_from(["float32", "bfloat16"])) if dtype == np.float32 else None
    return dict(cell=cell, batch=batch, hidden=hidden, proj=proj, seq_len=seq_len,
                seed=draw(st.integers(0, 2**32 - 1)), dtype=dtype, precision=precision,
                ragged=draw(st.booleans()), bidirectional=draw(st.booleans()))


@fuzz_settings(8)
@given(case=gated_parallel_cases())
def test_gated_thread_count_never_changes_a_bit(kernel, case):
    rng = np.random.default_rng(case["seed"])
    cell, L, N, H, dtype = (case[k] for k in ("cell", "seq_len", "batch", "hidden", "dtype"))
    params = random_gated_params(rng, cell, 7, H, 2, case["bidirectional"], True, dtype,
                                 case["proj"])
    x = rng.standard_normal((L, N, 7)).astype(dtype)
    D, out = 2 if case["bidirectional"] else 1, case["proj"] or H
    shapes = state_shapes(cell, x.shape, H, 2, case["bidirectional"], False, case["proj"])
    states = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gy = rng.standard_normal((L, N, D * out)).astype(dtype)
    lengths = rng.integers(0, L + 1, size=N) if case["ragged"] else None
    kwargs = dict(num_layers=2, bidirectional=case["bidirectional"], lengths=lengths,
                  precision=case["precision"])
    forward = getattr(functional, f"{cell}_forward")
    hx = tuple(states) if cell == "lstm" else states[0]
    previous = fastrnn.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            fastrnn.set_num_threads(threads)
            trained = _flat_gated(run_gated(functional, cell, params, x, states, gy, gs,
                                            **kwargs))
            output, final, _ = forward(x, params, hx, keep_cache=False, **kwargs)
            finals = final if cell == "lstm" else (final,)
            results.append(trained + [("eval output", output)]
                           + [(f"eval final state {i}", f) for i, f in enumerate(finals)])
    finally:
        fastrnn.set_num_threads(previous)
    for (name, a), (_, b) in zip(results[1], results[0]):
        assert a.shape == b.shape and np.array_equal(a, b), f"{cell} {name} differs"
