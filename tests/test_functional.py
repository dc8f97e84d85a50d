"""The compiled functional API (fastrnn.functional) against the NumPy reference.

Each conformance test runs once per compiled kernel path this CPU supports (``kernel``).
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import (LAYOUT_LENGTHS, DTYPES, H, I, L, N, assert_close_rel, assert_grads_close,
                      assert_results_close, assert_results_equal, forward_kwargs,
                      make_dropout_masks, make_inputs, numerical_gradients, over_all_options,
                      random_params, relu_kink_risk, run_api)
import fastrnn
from fastrnn import functional, reference


@over_all_options
def test_functional_matches_reference(kernel, rng, num_layers, bidirectional, nonlinearity, bias,
                                      layout, lengths_kind, with_h0, dtype):
    params = random_params(rng, I, H, num_layers, bidirectional, bias, dtype)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=with_h0, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype)
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths)
    assert_results_close(run_api(functional, params, x, h0, gy, ghn, **kwargs),
                         run_api(reference, params, x, h0, gy, ghn, **kwargs), dtype)


@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("layout,lengths_kind", LAYOUT_LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_dropout_masks_match_reference(kernel, rng, num_layers, bidirectional,
                                                  nonlinearity, layout, lengths_kind, dtype):
    params = random_params(rng, I, H, num_layers, bidirectional, True, dtype)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=True, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype)
    batch = 1 if layout == "unbatched" else N
    masks = make_dropout_masks(rng, num_layers, L, batch, H, bidirectional, 0.4, dtype)
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths, masks)
    got = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    assert_results_close(got, run_api(reference, params, x, h0, gy, ghn, **kwargs), dtype)
    if nonlinearity == "tanh":  # the masks matter (a relu layer may be dead and hide them)
        undropped = functional.rnn_forward(x, params, h0, **forward_kwargs(
            num_layers, nonlinearity, bidirectional, layout, lengths))[0]
        assert not np.allclose(got[0], undropped)


@pytest.mark.parametrize("layers_dropout", [(1, False), (2, False), (2, True)],
                         ids=["layers1", "layers2", "layers2-dropout"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout,lengths_kind", [
    p for p in LAYOUT_LENGTHS if p.id in ("time-ragged", "batchfirst-short", "unbatched")])
def test_functional_gradients_match_finite_differences(kernel, rng, layers_dropout, bidirectional,
                                                       nonlinearity, bias, layout, lengths_kind):
    seq_len, batch, input_size, hidden_size = 4, 3, 2, 4
    num_layers, dropout = layers_dropout
    mask_batch = 1 if layout == "unbatched" else batch
    for _ in range(100):  # relu without bias: resample away from its kink at exactly 0
        params = random_params(rng, input_size, hidden_size, num_layers, bidirectional, bias,
                               np.float64)
        x, h0, lengths, gy, ghn = make_inputs(
            rng, layout=layout, lengths_kind=lengths_kind, with_h0=True, num_layers=num_layers,
            bidirectional=bidirectional, dtype=np.float64, seq_len=seq_len, batch=batch,
            input_size=input_size, hidden_size=hidden_size)
        masks = (make_dropout_masks(rng, num_layers, seq_len, mask_batch, hidden_size,
                                    bidirectional, 0.3, np.float64) if dropout else None)
        if nonlinearity == "tanh" or bias or not relu_kink_risk(
                params, x, h0, num_layers=num_layers, bidirectional=bidirectional, layout=layout,
                lengths=lengths, masks=masks):
            break
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths, masks)

    def loss(x_, h0_, params_):
        out, hn, _ = functional.rnn_forward(x_, params_, h0_, **kwargs)
        return np.sum(out * gy) + np.sum(hn * ghn)

    _, _, grad_x, grad_h0, grads = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    num_x, num_h0, num_grads = numerical_gradients(loss, x, h0, params)
    assert_close_rel(grad_x, num_x, np.float64, 1e-6, name="grad_x")
    assert_close_rel(grad_h0, num_h0, np.float64, 1e-6, name="grad_h0")
    assert_grads_close(grads, num_grads, np.float64, 1e-6)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layout", ["time", "batch", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_empty_sequence_returns_h0(kernel, rng, bidirectional, layout, dtype):
    """L = 0 is allowed (torch refuses it): empty output, h_n = h0, gradients pass straight."""
    num_layers, D = 2, 2 if bidirectional else 1
    params = random_params(rng, I, H, num_layers, bidirectional, True, dtype)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    dtype=dtype, seq_len=0)
    out, hn, grad_x, grad_h0, grads = run_api(
        functional, params, x, h0, gy, ghn,
        **forward_kwargs(num_layers, "tanh", bidirectional, layout))
    assert out.shape == gy.shape and out.shape[-1] == D * H
    assert np.array_equal(hn, h0)
    assert grad_x.shape == x.shape
    assert np.array_equal(grad_h0, ghn)
    assert list(grads) == list(params)
    assert all(np.all(g == 0) for g in grads.values())


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time", "batchfirst"])
def test_functional_empty_batch(kernel, rng, bidirectional, batch_first):
    num_layers, D = 2, 2 if bidirectional else 1
    layout = "batch" if batch_first else "time"
    params = random_params(rng, I, H, num_layers, bidirectional, True, np.float32)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    dtype=np.float32, batch=0)
    out, hn, grad_x, grad_h0, grads = run_api(
        functional, params, x, h0, gy, ghn,
        **forward_kwargs(num_layers, "tanh", bidirectional, layout, np.zeros(0, np.int64)))
    assert out.shape == ((0, L, D * H) if batch_first else (L, 0, D * H))
    assert hn.shape == (D * num_layers, 0, H)
    assert grad_x.shape == x.shape and grad_h0.shape == h0.shape
    assert all(np.all(g == 0) for g in grads.values())


@pytest.mark.parametrize("variant", ["fortran", "strided", "readonly"])
def test_functional_accepts_any_memory_layout(kernel, rng, variant):
    """Non-contiguous, Fortran-ordered and read-only arrays (inputs, params, gradients) work."""
    num_layers, bidirectional = 2, True
    params = random_params(rng, I, H, num_layers, bidirectional, True, np.float64)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout="time", lengths_kind="ragged", with_h0=True, num_layers=num_layers,
        bidirectional=bidirectional, dtype=np.float64)
    kwargs = forward_kwargs(num_layers, "tanh", bidirectional, "time", lengths)
    expected = run_api(reference, params, x, h0, gy, ghn, **kwargs)
    contiguous = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    assert_results_close(contiguous, expected, np.float64)

    def relayout(a):
        if variant == "fortran":
            return np.asfortranarray(a)
        if variant == "strided":
            big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
            big[..., ::2] = a
            return big[..., ::2]
        a = a.copy()
        a.flags.writeable = False
        return a

    got = run_api(functional, {k: relayout(v) for k, v in params.items()}, relayout(x),
                  relayout(h0), relayout(gy), relayout(ghn), **kwargs)
    assert_results_equal(got, contiguous)


def test_kernel_selection():
    kernels = functional.available_kernels()
    assert "portable" in kernels
    assert len(set(kernels)) == len(kernels)
    previous = functional.get_kernel()
    assert previous in kernels
    try:
        for name in kernels:
            functional.set_kernel(name)
            assert functional.get_kernel() == name
    finally:
        functional.set_kernel(previous)
    assert functional.get_kernel() == previous


def test_set_kernel_refuses_unknown_name():
    previous = functional.get_kernel()
    with pytest.raises(ValueError, match="no_such_kernel"):
        functional.set_kernel("no_such_kernel")
    assert functional.get_kernel() == previous


def test_kernel_from_environment():
    """FASTRNN_KERNEL selects the kernel at import time."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    env = dict(os.environ, FASTRNN_KERNEL="portable",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", "import fastrnn.functional as f; print(f.get_kernel())"],
        env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "portable"


@pytest.mark.parametrize("a_trans", [False, True], ids=["a", "aT"])
@pytest.mark.parametrize("b_layout", ["rows", "transposed-view"])
@pytest.mark.parametrize("M,N,K", [(3, 5, 7), (17, 70, 600), (9, 530, 33), (40, 75, 1100),
                                   (1, 300, 1000)],
                         ids=["tiny", "k-blocks", "column-blocks", "long-reduction", "one-row"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_gemm_matches_numpy(kernel, M, N, K, a_trans, b_layout, dtype):
    """The GEMM under every pass: op(a) either way, b row-major or a transposed view (packed
    from its rows), sizes past the K blocks (256, or 512 for float AVX-512), the column
    blocks and ragged panels, one row for two threads; 2 threads give bitwise the result of
    one (with op(a) = aᵀ, they share the packing of b)."""
    from fastrnn import _rnn

    rng = np.random.default_rng(M * N + K)
    a = rng.standard_normal((K, M) if a_trans else (M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    if b_layout == "transposed-view":
        b = np.ascontiguousarray(b.T).T
    bias = rng.standard_normal(N).astype(dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)
    expected = c0.astype(np.float64) + (a.T if a_trans else a).astype(np.float64) @ b + bias
    c, c1 = c0.copy(), c0.copy()
    _rnn.gemm(a, b, c, bias, True, 2, a_trans)
    assert_close_rel(c, expected, dtype, name="gemm")
    _rnn.gemm(a, b, c1, bias, True, 1, a_trans)
    assert np.array_equal(c, c1)


@pytest.mark.parametrize("M,N,K", [(17, 70, 600), (9, 530, 33), (5, 0, 40), (6, 3, 0)],
                         ids=["k-blocks", "column-blocks", "no-columns", "no-rows"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_gemm_sums_the_rows_of_op_a(kernel, M, N, K, dtype):
    """With op(a) = aᵀ, the GEMM also returns aᵀ's row sums (the bias gradient): each row
    of a counted once although the column blocks each read it, with no columns at all, and
    bitwise the same with 1 and 2 threads."""
    from fastrnn import _rnn

    rng = np.random.default_rng(M + N + K)
    a = rng.standard_normal((K, M)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    results = []
    for threads in (1, 2):
        c, sums = np.empty((M, N), dtype), np.full(M, np.nan, dtype)
        _rnn.gemm(a, b, c, None, False, threads, True, sums)
        assert_close_rel(c, a.T.astype(np.float64) @ b, dtype, name="gemm")
        assert_close_rel(sums, a.astype(np.float64).sum(axis=0), dtype, name="sums")
        results.append(sums)
    assert np.array_equal(results[0], results[1])
    with pytest.raises(ValueError, match="a_sums needs a_trans"):
        _rnn.gemm(np.ascontiguousarray(a.T), b, np.empty((M, N), dtype), None, False, 1, False,
                  np.empty(M, dtype))


@pytest.mark.parametrize("L,N,I,H,D", [(5, 7, 13, 40, 2), (40, 16, 9, 24, 2), (2, 3, 5, 530, 1),
                                       (2, 3, 530, 8, 2), (4, 3, 0, 16, 2)],
                         ids=["ragged", "k-blocks", "hidden-blocks", "input-blocks", "no-input"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_grads_match_numpy(kernel, L, N, I, H, D, dtype):
    """A layer's dW_ih, dW_hh (each direction against its previous states: h_{t-1} forward,
    h_{t+1} in reverse, h0 where a sequence starts) and db from one pass over dA, against
    NumPy; bitwise the same for 1, 2 and 3 threads (3: a thread's rows cross directions)."""
    from fastrnn import _rnn

    rng = np.random.default_rng(L * N + I + H)
    lengths = rng.integers(0, L + 1, size=N)
    lengths[0] = L
    valid = np.arange(L)[:, None] < lengths[None, :]
    da = (rng.standard_normal((L, N, D * H)) * valid[:, :, None]).astype(dtype)
    x = rng.standard_normal((L, N, I)).astype(dtype)
    out = (rng.standard_normal((L, N, D * H)) * valid[:, :, None]).astype(dtype)
    h0 = rng.standard_normal((D, N, H)).astype(dtype)
    da2d, x2d = da.reshape(L * N, D * H), x.reshape(L * N, I)
    expected_hh = []
    for d in range(D):
        hprev = np.zeros((L, N, H))
        for n in range(N):
            for t in range(lengths[n]):
                if d == 0:
                    hprev[t, n] = h0[0, n] if t == 0 else out[t - 1, n, :H]
                else:
                    hprev[t, n] = h0[1, n] if t == lengths[n] - 1 else out[t + 1, n, H:]
        a = da2d[:, d * H:(d + 1) * H].astype(np.float64)
        expected_hh.append(a.T @ hprev.reshape(L * N, H))
    results = []
    for threads in (1, 2, 3):
        dw_ih, dw_hh = np.full((D * H, I), np.nan, dtype), np.full((D * H, H), np.nan, dtype)
        db = np.full(D * H, np.nan, dtype)
        _rnn.weight_grads(da2d, x2d, out, h0, lengths, dw_ih, dw_hh, db, threads)
        assert_close_rel(dw_ih, da2d.T.astype(np.float64) @ x2d, dtype, name="dW_ih")
        assert_close_rel(dw_hh, np.concatenate(expected_hh), dtype, name="dW_hh")
        assert_close_rel(db, da2d.astype(np.float64).sum(axis=0), dtype, name="db")
        results.append((dw_ih, dw_hh, db))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))
    with pytest.raises(ValueError, match="shapes do not match"):
        _rnn.weight_grads(da2d, x2d, out, h0, lengths, dw_ih, np.empty((D * H, H + 1), dtype),
                          db, 1)


def test_compiled_tanh_within_three_ulp(kernel):
    """The float32 tanh of the recurrence's store (a polynomial, not libm) against tanh in
    float64 rounded, on 1 of every 4099 floats from the smallest normal to past 20 and
    their negatives, subnormals, ±0 and the values where the result rounds to ±1."""
    from fastrnn import _rnn

    bits = np.arange(0x00800000, 0x41C00000, 4099, dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), [0.0, 1e-45, 1e-40, 8.9, 9.02, 10.0, 1e30]])
    x = np.concatenate([x, -x]).astype(np.float32)
    n = x.size
    # one step, h0 = 0 and W_hh = 0: the output is tanh(P), P = x
    out = x.reshape(1, n, 1).copy()
    h_n = np.empty((n, 1), np.float32)
    _rnn.recurrence_forward(out, np.zeros((n, 1), np.float32), np.zeros((1, 1), np.float32),
                            np.ones(n, np.int64), False, False, h_n, 2)
    expected = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
    error = np.abs(out.ravel() - expected) / ulp
    assert error.max() <= 3, f"{error.max():.2f} ulp at x = {x[error.argmax()]!r}"
    nonzero = x != 0  # P + h·W_hh = -0 + 0 is +0: the sign of a zero input is not kept
    assert np.array_equal(np.signbit(out.ravel()[nonzero]), np.signbit(x[nonzero]))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("L,N,I,H", [(7, 37, 13, 64), (4, 29, 20, 72), (5, 1, 9, 256),
                                     (6, 3, 600, 40)],
                         ids=["batch-slices", "ragged-panel", "columns", "k-blocks"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_projection_per_step_is_bitwise_the_gemm(kernel, L, N, I, H, reverse, dtype):
    """The recurrence computing P_t = x_t W_ihᵀ + b itself, step by step, gives the bits of
    the GEMM over all steps followed by the recurrence: with and without bias, tanh and
    relu, ragged lengths, batch slices (whole register blocks of rows in one tile with the
    projection, the rest in two passes) or column slices, 1 and 2 threads."""
    from fastrnn import _rnn

    rng = np.random.default_rng(L * N + I)
    x = rng.standard_normal((L, N, I)).astype(dtype)
    w_ih = (rng.standard_normal((H, I)) / np.sqrt(I)).astype(dtype)
    w_hh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype)
    lengths = rng.integers(0, L + 1, size=N)
    lengths[0] = L
    for bias, relu, threads in itertools.product(
            (rng.standard_normal(H).astype(dtype), None), (False, True), (1, 2)):
        expected, expected_hn = np.empty((L, N, H), dtype), np.empty((N, H), dtype)
        _rnn.gemm(x.reshape(L * N, I), w_ih.T, expected.reshape(L * N, H), bias, False, threads)
        _rnn.recurrence_forward(expected, h0, w_hh, lengths, reverse, relu, expected_hn,
                                threads)
        out, h_n = np.full((L, N, H), np.nan, dtype), np.empty((N, H), dtype)
        _rnn.recurrence_forward(out, h0, w_hh, lengths, reverse, relu, h_n, threads, x, w_ih,
                                bias)
        assert np.array_equal(out, expected) and np.array_equal(h_n, expected_hn)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("L,N,K,H", [(7, 37, 26, 64), (5, 1, 18, 256), (6, 19, 600, 40)],
                         ids=["batch-slices", "columns", "k-blocks"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bptt_output_gradient_per_step_is_bitwise_the_gemm(kernel, L, N, K, H, reverse, dtype):
    """The BPTT computing dY_t = dA_above_t · W itself, step by step (W a column slice, as
    one direction's columns of the layer above's W_ih), gives the bits of the GEMM over all
    steps followed by the BPTT: ragged lengths, batch or column slices, 1 and 2 threads."""
    from fastrnn import _rnn

    rng = np.random.default_rng(L * N + K)
    lengths = rng.integers(0, L + 1, size=N)
    lengths[0] = L
    valid = (np.arange(L)[:, None] < lengths[None, :])[:, :, None]
    out = (np.tanh(rng.standard_normal((L, N, H))) * valid).astype(dtype)
    da_above = rng.standard_normal((L, N, K)).astype(dtype)
    w = (rng.standard_normal((K, 2 * H)) / np.sqrt(K)).astype(dtype)
    w_hh = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    grad_h_n = rng.standard_normal((N, H)).astype(dtype)
    for relu, threads in itertools.product((False, True), (1, 2)):
        dy = np.empty((L * N, 2 * H), dtype)
        _rnn.gemm(da_above.reshape(L * N, K), w, dy, None, False, threads)
        dy = dy.reshape(L, N, 2 * H)[:, :, H:]
        expected_da, expected_h0 = np.empty((L, N, H), dtype), np.empty((N, H), dtype)
        _rnn.recurrence_backward(out, dy, grad_h_n, w_hh, lengths, reverse, relu, expected_da,
                                 expected_h0, threads)
        da, h0 = np.full((L, N, H), np.nan, dtype), np.full((N, H), np.nan, dtype)
        _rnn.recurrence_backward(out, da_above, grad_h_n, w_hh, lengths, reverse, relu, da, h0,
                                 threads, w[:, H:])
        assert np.array_equal(da, expected_da) and np.array_equal(h0, expected_h0)
    with pytest.raises(ValueError, match="grad_out must be"):
        _rnn.recurrence_backward(out, da_above, grad_h_n, w_hh, lengths, reverse, False, da, h0,
                                 1, w[1:, H:])
    with pytest.raises(ValueError, match="grad_out must be"):  # fewer steps than out
        _rnn.recurrence_backward(out, da_above[1:], grad_h_n, w_hh, lengths, reverse, False, da,
                                 h0, 1, w[:, H:])


def test_projection_per_step_refuses_mismatched_shapes():
    from fastrnn import _rnn

    out, h0, h_n = np.empty((2, 3, 4)), np.zeros((3, 4)), np.empty((3, 4))
    with pytest.raises(ValueError, match="must be"):
        _rnn.recurrence_forward(out, h0, np.zeros((4, 4)), np.full(3, 2), False, False, h_n, 1,
                                np.zeros((2, 3, 5)), np.zeros((4, 6)), None)


@pytest.mark.parametrize("batch,hidden", [(5, 8), (1, 256)], ids=["batch-slices", "columns"])
def test_recurrence_backward_writes_every_row_of_grad_a(kernel, batch, hidden):
    """grad_a may come uninitialised: every row is written, dA up to each length, 0 after."""
    from fastrnn import _rnn

    rng = np.random.default_rng(batch)
    L = 6
    out = np.tanh(rng.standard_normal((L, batch, hidden))).astype(np.float32)
    grad_out = rng.standard_normal((L, batch, hidden)).astype(np.float32)
    w_hh = (rng.standard_normal((hidden, hidden)) / hidden).astype(np.float32)
    lengths = rng.integers(0, L + 1, size=batch)
    lengths[0] = 2
    grad_a = np.full((L, batch, hidden), np.nan, dtype=np.float32)
    grad_h0 = np.empty((batch, hidden), dtype=np.float32)
    _rnn.recurrence_backward(out, grad_out, np.zeros((batch, hidden), np.float32), w_hh,
                             lengths, False, False, grad_a, grad_h0, 2)
    assert np.isfinite(grad_a).all()
    past = np.arange(L)[:, None] >= lengths[None, :]
    assert (grad_a[past] == 0).all()
