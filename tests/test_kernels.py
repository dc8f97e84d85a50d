"""The compiled kernels through fastrnn._rnn, called directly: the GEMM and its row sums,
the weight gradients, the float32 tanh, and the recurrences' per-step products (input
projection forward, output gradient in BPTT) against the GEMM over all steps.

Each test that takes ``kernel`` runs once per compiled kernel path this CPU supports.
"""

import itertools

import numpy as np
import pytest

from _helpers import DTYPES, assert_close_rel


@pytest.mark.parametrize("a_trans", [False, True], ids=["a", "aT"])
@pytest.mark.parametrize("b_layout", ["rows", "transposed-view"])
@pytest.mark.parametrize("M,N,K", [(3, 5, 7), (17, 70, 600), (9, 530, 33), (40, 75, 1100),
                                   (1, 300, 1000), (150, 530, 1100), (5, 1100, 600),
                                   (40, 2050, 300), (3, 300, 250)],
                         ids=["tiny", "k-blocks", "column-blocks", "long-reduction", "one-row",
                              "row-groups", "few-rows-large-b", "column-split-ragged",
                              "few-rows-small-b"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_gemm_matches_numpy(kernel, M, N, K, a_trans, b_layout, dtype):
    """The GEMM under every pass: op(a) either way, b row-major or a transposed view (packed
    from its rows), sizes past the K blocks (256, or 512 for float AVX-512), the column
    blocks and ragged panels, one row for two threads, aᵀ copied in several groups of rows
    (64 at a 512-deep K block) with a partial last one, a few rows of a large or a smaller b
    (two threads split c's columns, the second's ragged); 2 threads give bitwise the result
    of one (with op(a) = aᵀ, they share the packing of b)."""
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


@pytest.mark.parametrize("gates,hidden,blocks,M,K", [(4, 5, 1, 7, 3), (3, 40, 2, 20, 600),
                                                     (4, 150, 1, 9, 1), (3, 33, 2, 1, 70),
                                                     (4, 160, 2, 9, 500), (3, 100, 1, 8, 300)],
                         ids=["tiny", "k-blocks-two-directions", "one-input", "one-row",
                              "column-split", "column-split-small-b"])
@pytest.mark.parametrize("dtype,bf16", [(np.float32, False), (np.float64, False),
                                        (np.float32, True)], ids=["float32", "float64", "bf16"])
def test_compiled_gemm_reads_weights_in_gate_layout(kernel, gates, hidden, blocks, M, K, dtype,
                                                    bf16):
    """``gate_layout``: a gated cell's weights in torch's row order (a block of G·H rows per
    direction) read gate-interleaved, bitwise what the GEMM gives on a reordered copy, as
    the forward's x W_ihᵀ (the gates along op(b)'s columns) and the backward's dA W_ih
    (along its rows), with 1 and 2 threads (which split the columns of a large b)."""
    from fastrnn import _rnn

    rng = np.random.default_rng(gates * hidden + M + K)
    GH = gates * hidden
    w = rng.standard_normal((blocks * GH, K)).astype(dtype)  # torch's order, stacked
    order = np.concatenate([_rnn.gate_rows(gates, hidden) + i * GH for i in range(blocks)])
    x = rng.standard_normal((M, K)).astype(dtype)
    da = rng.standard_normal((M, blocks * GH)).astype(dtype)
    bias = rng.standard_normal(blocks * GH).astype(dtype)
    expected_p, expected_dx = np.empty((M, blocks * GH), dtype), np.empty((M, K), dtype)
    _rnn.gemm(x, np.ascontiguousarray(w[order]).T, expected_p, bias, False, 1, bf16=bf16)
    _rnn.gemm(da, np.ascontiguousarray(w[order]), expected_dx, None, False, 1, bf16=bf16)
    assert_close_rel(expected_p, x.astype(np.float64) @ w[order].T + bias, dtype,
                     tol=1e-2 if bf16 else None, name="reference")
    for threads in (1, 2):
        p, dx = np.empty_like(expected_p), np.empty_like(expected_dx)
        _rnn.gemm(x, w.T, p, bias, False, threads, bf16=bf16, gate_layout=(gates, hidden, 1))
        _rnn.gemm(da, w, dx, None, False, threads, bf16=bf16, gate_layout=(gates, hidden, 0))
        assert np.array_equal(p, expected_p)
        assert np.array_equal(dx, expected_dx)


@pytest.mark.parametrize("gates,hidden,blocks,K,N", [(4, 5, 1, 7, 3), (3, 40, 2, 600, 70),
                                                     (4, 33, 1, 1, 300)],
                         ids=["tiny", "k-blocks-two-directions", "one-step"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["", "accumulate"])
@pytest.mark.parametrize("dtype,bf16", [(np.float32, False), (np.float64, False),
                                        (np.float32, True)], ids=["float32", "float64", "bf16"])
def test_compiled_gemm_writes_weight_gradients_in_gate_layout(kernel, gates, hidden, blocks, K,
                                                              N, accumulate, dtype, bf16):
    """``c_gate_layout``: a weight gradient dAᵀX whose rows the product yields gate-interleaved
    written straight to torch's row order, bitwise the reordered rows of the plain product
    (added to c's own rows with ``accumulate``); the row sums stay in the product's order;
    1 and 2 threads (a team sharing b's packing)."""
    from fastrnn import _rnn

    rng = np.random.default_rng(gates * hidden + K + N)
    M = blocks * gates * hidden
    order = np.concatenate([_rnn.gate_rows(gates, hidden) + i * gates * hidden
                            for i in range(blocks)])
    da = rng.standard_normal((K, M)).astype(dtype)
    x = rng.standard_normal((K, N)).astype(dtype)
    c0 = rng.standard_normal((M, N)).astype(dtype)  # in torch's order
    plain, plain_sums = c0[order].copy(), np.empty(M, dtype)
    _rnn.gemm(da, x, plain, None, accumulate, 1, True, plain_sums, bf16=bf16)
    expected = np.empty_like(plain)
    expected[order] = plain
    assert_close_rel(expected, (c0 if accumulate else 0) + da.T.astype(np.float64)[np.argsort(
        order)] @ x, dtype, tol=1e-2 if bf16 else None, name="reference")
    for threads in (1, 2):
        c, sums = c0.copy(), np.empty(M, dtype)
        _rnn.gemm(da, x, c, None, accumulate, threads, True, sums, bf16=bf16,
                  c_gate_layout=(gates, hidden))
        assert np.array_equal(c, expected)
        assert np.array_equal(sums, plain_sums)


def test_compiled_gemm_refuses_a_bad_gate_layout():
    from fastrnn import _rnn

    w, x = np.zeros((12, 5), np.float32), np.zeros((2, 5), np.float32)
    c = np.zeros((2, 12), np.float32)
    with pytest.raises(ValueError, match="not supported with a_trans"):
        _rnn.gemm(np.zeros((5, 2), np.float32), w.T, c, None, False, 1, True,
                  gate_layout=(4, 3, 1))
    with pytest.raises(ValueError, match="axis must be 0 or 1, got 2"):
        _rnn.gemm(x, w.T, c, gate_layout=(4, 3, 2))
    with pytest.raises(ValueError, match=r"multiple of 4·2 rows, got 12"):
        _rnn.gemm(x, w.T, c, gate_layout=(4, 2, 1))
    with pytest.raises(ValueError, match="3 gates and 0 hidden units"):
        _rnn.gemm(x, w.T, c, gate_layout=(3, 0, 1))
    with pytest.raises(ValueError, match=r"multiple of 4·2 rows, got 2"):
        _rnn.gemm(x, w.T, c, c_gate_layout=(4, 2))
    with pytest.raises(ValueError, match="contiguous rows"):  # rows along axis 0 must be rows
        _rnn.gemm(np.zeros((2, 12), np.float32), w, np.zeros((2, 5), np.float32),
                  gate_layout=(4, 3, 1))


@pytest.mark.parametrize("M,N,K", [(17, 70, 600), (9, 530, 33), (5, 0, 40), (6, 3, 0),
                                   (150, 530, 1100)],
                         ids=["k-blocks", "column-blocks", "no-columns", "no-rows", "row-groups"])
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


@pytest.mark.parametrize("a_trans", [False, True], ids=["a", "aT"])
def test_compiled_bf16_gemm_is_the_product_of_rounded_operands(kernel, a_trans):
    """bfloat16 products: op(a) @ b of the operands rounded to bfloat16, summed in float32
    (within float32 rounding of the exact sum), past the K blocks, the column blocks and the
    groups of aᵀ's rows copied at a time (with the pairs of k vdpbf16ps takes); aᵀ's row
    sums stay the float32 sums of the unrounded values; 2 threads bitwise 1."""
    from fastrnn import _rnn, reference

    M, N, K = 150, 530, 1101
    rng = np.random.default_rng(7)
    a = rng.standard_normal((K, M) if a_trans else (M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    op_a = reference.round_to_bfloat16(a.T if a_trans else a).astype(np.float64)
    expected = op_a @ reference.round_to_bfloat16(b).astype(np.float64)
    results = []
    for threads in (1, 2):
        c = np.empty((M, N), np.float32)
        sums = np.full(M, np.nan, np.float32) if a_trans else None
        _rnn.gemm(a, b, c, None, False, threads, a_trans, sums, bf16=True)
        assert_close_rel(c, expected, np.float32, name="bf16 gemm")
        if a_trans:
            assert_close_rel(sums, a.astype(np.float64).sum(axis=0), np.float32, name="sums")
        results.append((c, sums))
    assert np.array_equal(results[0][0], results[1][0])
    if a_trans:
        assert np.array_equal(results[0][1], results[1][1])


def _bf16_rounding_cases():
    """float32 values whose rounding to bfloat16 is worth checking one by one: ties (the
    dropped half exactly 0x8000) with even and odd kept parts, one bit either side of a tie,
    values that round up across a power of two and past the largest bfloat16 to inf,
    infinities, NaN and random bit patterns of both signs. No subnormal: on the avx512_bf16
    build they count as zero (test_bf16.py, test_bf16_subnormals_are_zero_...)."""
    rng = np.random.default_rng(20261206)
    sign = rng.integers(0, 2, 2000, dtype=np.uint32) << 15
    kept = rng.integers(0x0080, 0x7F80, 2000, dtype=np.uint32) | sign  # normal, finite
    low = np.array([0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF], np.uint32)
    bits = (kept[:, None] << 16 | low).ravel()
    special = np.array([0x3F80_8000, 0x3F81_8000, 0x3FFF_FFFF, 0x7F7F_7FFF, 0x7F7F_8000,
                        0x7F7F_FFFF, 0xFF7F_FFFF, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000,
                        0x7F80_0001, 0x0080_0000, 0x8080_0000], np.uint32)
    random = rng.integers(0, 2 ** 32, 3001, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([bits, special, random]).view(np.float32)
    return values[~((np.abs(values) < np.finfo(np.float32).tiny) & (values != 0))]


def test_compiled_bf16_operands_round_like_the_model(kernel):
    """Every operand of a bfloat16 product is rounded as reference.round_to_bfloat16 rounds
    it (to nearest, ties to even; inf, NaN kept; past the largest bf16, inf), in every path
    that converts one: row-major A one k or a pair of k a row, Aᵀ's pairs of rows (either
    half of a 32-bit word), B's rows and pairs of rows, B from a transposed view. Each value
    meets an exact 1 (and its partner in a pair an exact 0), so the product is the rounded
    value itself."""
    from fastrnn import _rnn, reference

    v = _bf16_rounding_cases()
    n = v.size
    expected = reference.round_to_bfloat16(v)
    partner = np.random.default_rng(1).standard_normal(n).astype(np.float32)  # finite: 0·it = 0
    one, zero = np.float32(1), np.float32(0)
    low, high = np.array([[one], [zero]]), np.array([[zero], [one]])  # pick a pair's half

    def product(a, b, a_trans=False):
        c = np.empty(((a.T if a_trans else a).shape[0], b.shape[1]), np.float32)
        _rnn.gemm(a, b, c, None, False, 2, a_trans, None, True)
        return c

    results = {
        "A, one k": product(v[:, None], np.array([[one]]))[:, 0],
        "A, k pair, low half": product(np.stack([v, partner], 1), low)[:, 0],
        "A, k pair, high half": product(np.stack([partner, v], 1), high)[:, 0],
        "A^T, low half": product(np.stack([v, partner]), low, True)[:, 0],
        "A^T, high half": product(np.stack([partner, v]), high, True)[:, 0],
        "B, one k": product(np.array([[one]]), v[None, :])[0],
        "B, low half": product(low.T, np.stack([v, partner]))[0],
        "B, high half": product(high.T, np.stack([partner, v]))[0],
        "B transposed view": product(low.T, np.stack([v, partner], 1).T)[0],
    }
    for path, got in results.items():
        wrong = ~((got == expected) | (np.isnan(got) & np.isnan(expected)))
        assert not wrong.any(), (f"{path}: {wrong.sum()} values rounded differently, e.g. "
                                 f"{v[wrong][:3].view(np.uint32)} -> {got[wrong][:3]}, "
                                 f"expected {expected[wrong][:3]}")


@pytest.mark.parametrize("L,N,I,H,D", [(5, 7, 13, 40, 2), (40, 16, 9, 24, 2), (2, 3, 5, 530, 1),
                                       (2, 3, 530, 8, 2), (4, 3, 0, 16, 2)],
                         ids=["ragged", "k-blocks", "hidden-blocks", "input-blocks", "no-input"])
@pytest.mark.parametrize("gates", [None, 4], ids=["elman", "gates"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_grads_match_numpy(kernel, L, N, I, H, D, gates, dtype):
    """A layer's dW_ih, dW_hh (each direction against its previous states: h_{t-1} forward,
    h_{t+1} in reverse, h0 where a sequence starts) and db from one pass over dA, against
    NumPy; bitwise the same for 1, 2 and 3 threads (3: a thread's rows cross directions).
    With ``gates``, dA's columns are a gated cell's gates, gate-interleaved (the kernels'
    order), G·H per direction, and the gradients' rows come out in torch's order."""
    from fastrnn import _rnn
    from fastrnn._gated import _interleave

    rng = np.random.default_rng(L * N + I + H)
    W = H * (gates or 1)  # dA's columns per direction
    lengths = rng.integers(0, L + 1, size=N)
    lengths[0] = L
    valid = np.arange(L)[:, None] < lengths[None, :]
    da = (rng.standard_normal((L, N, D * W)) * valid[:, :, None]).astype(dtype)
    x = rng.standard_normal((L, N, I)).astype(dtype)
    out = (rng.standard_normal((L, N, D * H)) * valid[:, :, None]).astype(dtype)
    h0 = rng.standard_normal((D, N, H)).astype(dtype)
    da2d, x2d = da.reshape(L * N, D * W), x.reshape(L * N, I)
    # row c of a direction's products is row order[c] of its gradients
    order = _interleave(gates, H)[0] if gates else np.arange(W)
    rows = np.concatenate([d * W + order for d in range(D)])
    expected_ih, expected_hh = np.empty((D * W, I)), np.empty((D * W, H))
    expected_ih[rows] = da2d.T.astype(np.float64) @ x2d
    for d in range(D):
        hprev = np.zeros((L, N, H))
        for n in range(N):
            for t in range(lengths[n]):
                if d == 0:
                    hprev[t, n] = h0[0, n] if t == 0 else out[t - 1, n, :H]
                else:
                    hprev[t, n] = h0[1, n] if t == lengths[n] - 1 else out[t + 1, n, H:]
        a = da2d[:, d * W:(d + 1) * W].astype(np.float64)
        expected_hh[rows[d * W:(d + 1) * W]] = a.T @ hprev.reshape(L * N, H)
    layout = dict(c_gate_layout=(gates, H)) if gates else {}
    results = []
    for threads in (1, 2, 3):
        dw_ih, dw_hh = np.full((D * W, I), np.nan, dtype), np.full((D * W, H), np.nan, dtype)
        db = np.full(D * W, np.nan, dtype)
        _rnn.weight_grads(da2d, x2d, out, h0, lengths, dw_ih, dw_hh, db, threads, **layout)
        assert_close_rel(dw_ih, expected_ih, dtype, name="dW_ih")
        assert_close_rel(dw_hh, expected_hh, dtype, name="dW_hh")
        assert_close_rel(db, da2d.astype(np.float64).sum(axis=0), dtype, name="db")
        results.append((dw_ih, dw_hh, db))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))
    with pytest.raises(ValueError, match="shapes do not match"):
        _rnn.weight_grads(da2d, x2d, out, h0, lengths, dw_ih, np.empty((D * W, H + 1), dtype),
                          db, 1, **layout)
    if gates:  # a layout that does not tile dA's columns
        with pytest.raises(ValueError, match="shapes do not match"):
            _rnn.weight_grads(da2d, x2d, out, h0, lengths, dw_ih, dw_hh, db, 1,
                              c_gate_layout=(gates + 1, H))


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


def test_compiled_sigmoid_within_two_ulp(kernel):
    """The float32 sigmoid of the gated cells' epilogue against 1/(1 + e^-x) in float64, on 1
    of every 4099 floats from the smallest normal to past 96 and their negatives (tiny
    results for x << 0 included, where (1 + tanh(x/2))/2 gave 0), ±0 and subnormal inputs;
    results below the smallest normal float within one of its steps; NaN stays NaN."""
    from fastrnn import _rnn

    bits = np.arange(0x00800000, 0x42C00000, 4099, dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), [0.0, 1e-45, 1e-40, 17.0, 88.0, 89.0, 1e30]])
    x = np.concatenate([x, -x, [np.nan]]).astype(np.float32)
    n = x.size
    # one LSTM step of H = 1, h0 = c0 = 0 and W_hh = 0: the saved gates are σ(P_i), σ(P_f),
    # tanh(P_g), σ(P_o); P_i = x
    save = np.zeros((1, n, 5), np.float32)
    save[0, :, 0] = x
    _rnn.cell_forward(_rnn.LSTM, save, np.empty((1, n, 1), np.float32),
                      np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32),
                      np.zeros((4, 1), np.float32), None, None, np.ones(n, np.int64), False,
                      np.empty((n, 1), np.float32), np.empty((n, 1), np.float32), 2)
    got = save[0, :, 0]
    assert np.isnan(got[-1])
    with np.errstate(over="ignore"):
        expected = 1 / (1 + np.exp(-x[:-1].astype(np.float64)))
    tiny = np.finfo(np.float32).tiny
    step = np.where(expected < tiny, tiny,
                    np.spacing(expected.astype(np.float32)).astype(np.float64))
    error = np.abs(got[:-1] - expected) / step
    assert error.max() <= 2, f"{error.max():.2f} ulp at x = {x[error.argmax()]!r}"


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("L,N,I,H", [(7, 37, 13, 64), (4, 29, 20, 72), (5, 1, 9, 256),
                                     (2, 16, 13, 256), (6, 3, 600, 40)],
                         ids=["batch-slices", "ragged-panel", "columns", "short-call-columns",
                              "k-blocks"])
@pytest.mark.parametrize("dtype,bf16", [(np.float32, False), (np.float64, False),
                                        (np.float32, True)], ids=["f32", "f64", "bf16"])
def test_projection_per_step_is_bitwise_the_gemm(kernel, L, N, I, H, reverse, dtype, bf16):
    """The recurrence computing P_t = x_t W_ihᵀ + b itself, step by step, gives the bits of
    the GEMM over all steps followed by the recurrence: with and without bias, tanh and
    relu, ragged lengths, batch slices (whole register blocks of rows in one tile with the
    projection, the rest in two passes) or column slices, 1 and 2 threads, float32 and
    bfloat16 products."""
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
        _rnn.gemm(x.reshape(L * N, I), w_ih.T, expected.reshape(L * N, H), bias, False, threads,
                  bf16=bf16)
        _rnn.recurrence_forward(expected, h0, w_hh, lengths, reverse, relu, expected_hn,
                                threads, bf16=bf16)
        out, h_n = np.full((L, N, H), np.nan, dtype), np.empty((N, H), dtype)
        _rnn.recurrence_forward(out, h0, w_hh, lengths, reverse, relu, h_n, threads, x, w_ih,
                                bias, bf16=bf16)
        assert np.array_equal(out, expected) and np.array_equal(h_n, expected_hn)


@pytest.mark.parametrize("H", [64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_elman_step_sums_in_halves_where_w_hh_is_small(kernel, H, dtype):
    """The Elman step's h W_hhᵀ is (P + Σ_{k < H/2}) + Σ_{k >= H/2} where W_hh is at most
    64 KiB, else P + Σ_k in order (gemm.h, recurrence_steps.h): with h = 1 and a row
    1, 0, ..., 0, big, -big, 0, ... (big at k = H/2, where 1 + big rounds to big) the first
    gives 1 and the second 0. Every path: batch 1 (column slices) and 19 (a register block
    of rows and the rest), with the projection per step or given, 1 and 2 threads."""
    from fastrnn import _rnn

    big = 2.0 ** (np.finfo(dtype).nmant + 1)
    w_hh = np.zeros((H, H), dtype)
    w_hh[:, 0], w_hh[:, H // 2], w_hh[:, H // 2 + 1] = 1, big, -big
    expected = 1 if H * H * np.dtype(dtype).itemsize <= 64 << 10 else 0
    I = 5
    for N, threads, projected in itertools.product((1, 19), (1, 2), (False, True)):
        out, h_n = np.zeros((1, N, H), dtype), np.empty((N, H), dtype)
        inputs = (np.zeros((1, N, I), dtype), np.ones((H, I), dtype), None) if projected else ()
        _rnn.recurrence_forward(out, np.ones((N, H), dtype), w_hh, np.ones(N, np.int64), False,
                                True, h_n, threads, *inputs)
        assert np.all(out == expected), (N, threads, projected)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("L,N,K,H", [(7, 37, 26, 64), (5, 1, 18, 256), (2, 16, 26, 256),
                                     (6, 19, 600, 40)],
                         ids=["batch-slices", "columns", "short-call-columns", "k-blocks"])
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


@pytest.mark.parametrize("gates", [3, 4])
@pytest.mark.parametrize("hidden", [1, 31, 32, 33, 70, 130])
def test_gate_rows_follow_the_documented_layout(gates, hidden):
    # src_c/cell_steps.h: blocks of 32 units, block jb .. jb+w at column G·jb, gate q of
    # unit jb + u at G·jb + q·w + u; torch keeps gate q's rows at q·H ..
    from fastrnn import _rnn

    want = np.empty(gates * hidden, dtype=np.intp)
    for jb in range(0, hidden, 32):
        w = min(32, hidden - jb)
        for q, u in itertools.product(range(gates), range(w)):
            want[gates * jb + q * w + u] = q * hidden + jb + u
    np.testing.assert_array_equal(_rnn.gate_rows(gates, hidden), want)
    for bad in ((0, hidden), (gates, -1), (gates, 2**31 // gates + 1)):
        with pytest.raises(ValueError, match="gates must be positive"):
            _rnn.gate_rows(*bad)


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


def test_policy_functions_follow_their_documented_rules():
    """The thread and fusion policy the Python layers ask: threads per 2^18 multiply-adds
    (at least 1, at most the count given), the projection per step from 8 rows per thread,
    pointwise passes parallel from 2^15 elements."""
    from fastrnn import _rnn

    assert _rnn.threads_for(3 * 2 ** 18, 2) == 2
    assert _rnn.threads_for(3 * 2 ** 18, 8) == 3
    assert _rnn.threads_for(100, 4) == 1
    assert _rnn.projection_per_step(5, 16, 3, 2) is True
    assert _rnn.projection_per_step(5, 15, 3, 2) is False
    assert _rnn.projection_per_step(0, 16, 3, 2) is False
    assert _rnn.projection_per_step(5, 16, 0, 2) is False
    assert _rnn.elementwise_threads(2 ** 15, 4) == 4
    assert _rnn.elementwise_threads(2 ** 15 - 1, 4) == 1
