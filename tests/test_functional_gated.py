"""The compiled LSTM and GRU (fastrnn.functional.lstm_* and gru_*) against the NumPy reference
(fastrnn.reference, itself checked against torch and finite differences), against torch.nn.LSTM /
torch.nn.GRU, and against themselves for 1, 2 and 3 threads (bitwise), on every kernel path
and both of the recurrence's splits (batch slices; hidden units for a small batch)."""

import numpy as np
import pytest

import fastrnn
from _gated import (assert_gated_close, assert_length_zero_rule, gated_case, gated_inputs,
                    random_gated_params, run_gated, run_torch_gated)
from _helpers import DTYPES, H, I, L, LAYOUT_LENGTHS, N, assert_close_rel, numerical_gradient
from fastrnn import _gated, _rnn, functional, reference

PROJ = 3  # < H, != I
CELLS = [pytest.param(("lstm", 0), id="lstm"), pytest.param(("lstm", PROJ), id="lstm-proj"),
         pytest.param(("gru", 0), id="gru")]


def _inputs(*args, **kwargs):
    """gated_inputs with lengths of 0 among the ragged ones (torch is not asked here)."""
    return gated_inputs(*args, **{"allow_zero": True, **kwargs})


def _flat(result):
    out, finals, grad_x, grad_states, grads = result
    return [out, *finals, grad_x, *grad_states, *grads.values()]


OPTIONS = [
    pytest.mark.parametrize("cell_proj", CELLS),
    pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda v: f"layers{v}"),
    pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"]),
    pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"]),
    pytest.mark.parametrize("layout,lengths_kind", LAYOUT_LENGTHS),
    pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"]),
    pytest.mark.parametrize("dtype", DTYPES),
]


def over_options(test):
    for mark in OPTIONS:
        test = mark(test)
    return test


@over_options
def test_gated_matches_reference(rng, kernel, cell_proj, num_layers, bidirectional, bias,
                                 layout, lengths_kind, with_states, dtype):
    cell, params, x, states, lengths, gy, gs, kwargs = gated_case(
        rng, cell_proj, num_layers, bidirectional, bias, layout, lengths_kind, with_states,
        dtype, allow_zero=True)
    assert_gated_close(run_gated(functional, cell, params, x, states, gy, gs, **kwargs),
                     run_gated(reference, cell, params, x, states, gy, gs, **kwargs), dtype)


# torch is slow per call here: against torch, each option's every value appears (with each
# cell, layout and dtype) rather than the full product, which the reference covers above
# (and tests/test_reference_gated.py covers the reference against torch).
TORCH_CASES = [(n, bi, bias, st) for n in (1, 2, 3) for bi in (False, True)
               for bias, st in ((True, True), (False, False))]


@pytest.mark.parametrize("cell_proj", CELLS)
@pytest.mark.parametrize("layout,lengths_kind", LAYOUT_LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [0, 11], ids=lambda c: "layers{}-{}-{}-{}".format(
    TORCH_CASES[c][0], "bi" if TORCH_CASES[c][1] else "uni",
    "bias" if TORCH_CASES[c][2] else "nobias", "state" if TORCH_CASES[c][3] else "nostate"))
def test_gated_matches_torch(rng, cell_proj, layout, lengths_kind, dtype, case):
    num_layers, bidirectional, bias, with_states = TORCH_CASES[case]
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, num_layers, bidirectional, bias, dtype, proj)
    x, states, lengths, gy, gs = _inputs(rng, cell, layout, lengths_kind, with_states,
                                         num_layers, bidirectional, dtype, proj,
                                         allow_zero=False)
    got = run_gated(functional, cell, params, x, states, gy, gs, num_layers=num_layers,
              bidirectional=bidirectional, batch_first=layout == "batch", lengths=lengths)
    expected = run_torch_gated(cell, params, x, states, lengths, gy, gs, num_layers=num_layers,
                               bidirectional=bidirectional, batch_first=layout == "batch")
    assert_gated_close(got, expected, dtype)


# Sizes for each split, enough work for 3 threads (_rnn.threads_for: 2^18 multiply-adds
# each, G·H·H_out per row and step): batch slices of 9 rows (whole register tiles); one
# sequence with H >= 128 (4 column panels): hidden units; a short call (32 rows over its
# steps) of a batch that would be sliced in a longer one: hidden units. H = 130 leaves a
# partial block of units; a projection of 40 a partial panel.
SPLITS = [pytest.param(dict(seq_len=12, batch=27, input_size=5, hidden_size=48), id="batch"),
          pytest.param(dict(seq_len=48, batch=1, input_size=5, hidden_size=130), id="columns"),
          pytest.param(dict(seq_len=2, batch=16, input_size=5, hidden_size=130),
                       id="short-call-columns")]


@pytest.mark.parametrize("cell_proj", [pytest.param(("lstm", 0), id="lstm"),
                                       pytest.param(("lstm", 40), id="lstm-proj"),
                                       pytest.param(("gru", 0), id="gru")])
@pytest.mark.parametrize("sizes", SPLITS)
@pytest.mark.parametrize("lengths_kind", [None, "ragged"], ids=["full", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_threads_bitwise_and_correct(rng, kernel, cell_proj, sizes, lengths_kind,
                                           dtype):
    """1, 2 and 3 threads give the same bits (each split), and they match the reference."""
    cell, proj = cell_proj
    proj = proj if proj < sizes["hidden_size"] else 0
    if (sizes["batch"] == 1 or sizes["seq_len"] < 3) and lengths_kind:
        lengths_kind = "short"  # (ragged lengths reach 3)
    params = random_gated_params(rng, cell, sizes["input_size"], sizes["hidden_size"], 2, True,
                                 True, dtype, proj)
    x, states, lengths, gy, gs = _inputs(rng, cell, "time", lengths_kind, True, 2, True,
                                         dtype, proj, **sizes)
    kwargs = dict(num_layers=2, bidirectional=True, lengths=lengths)
    previous = fastrnn.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            fastrnn.set_num_threads(threads)
            results.append(_flat(run_gated(functional, cell, params, x, states, gy, gs, **kwargs)))
    finally:
        fastrnn.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
    expected = _flat(run_gated(reference, cell, params, x, states, gy, gs, **kwargs))
    for i, (a, b) in enumerate(zip(results[0], expected)):
        assert_close_rel(a, b, dtype, name=f"result {i}")


@pytest.mark.parametrize("cell_proj", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_gated_length_zero_keeps_the_initial_state(rng, cell_proj, bidirectional):
    """A length of 0: zero outputs, final states = initial states, their gradients straight
    through; and a sequence length of 0 for every sequence."""
    cell, params, x, states, gy, gs = assert_length_zero_rule(functional, rng, cell_proj,
                                                               bidirectional)
    # no steps at all
    x0, gy0 = x[:0], gy[:0]
    out, finals, grad_x, grad_states, grads = run_gated(
        functional, cell, params, x0, states, gy0, gs, num_layers=2,
        bidirectional=bidirectional)
    assert out.shape == gy0.shape and grad_x.shape == x0.shape
    for s, f, g, gs_i in zip(states, finals, grad_states, gs):
        assert np.array_equal(f, s) and np.array_equal(g, gs_i)
    assert not any(g.any() for g in grads.values())


@pytest.mark.parametrize("cell_proj", [pytest.param(("lstm", 2), id="lstm-proj"),
                                       pytest.param(("gru", 0), id="gru")])
def test_gated_gradients_match_finite_differences(rng, cell_proj):
    """The compiled gradients against central differences of the compiled forward (float64,
    2 layers, bidirectional, ragged lengths, dropout between the layers)."""
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, 2, 3, 2, True, True, np.float64, proj)
    x, states, _, gy, gs = _inputs(rng, cell, "time", None, True, 2, True, np.float64, proj,
                                   seq_len=4, batch=3, input_size=2, hidden_size=3)
    lengths = np.array([4, 1, 3])
    masks = [(rng.random((4, 3, 2 * (proj or 3))) >= 0.3) / 0.7]
    kwargs = dict(num_layers=2, bidirectional=True, lengths=lengths, dropout_masks=masks)
    _, _, grad_x, grad_states, grads = run_gated(
        functional, cell, params, x, states, gy, gs, **kwargs)

    def loss():
        fwd = functional.lstm_forward if cell == "lstm" else functional.gru_forward
        hx = tuple(states) if cell == "lstm" else states[0]
        out, finals, _ = fwd(x, params, hx, keep_cache=False, **kwargs)
        finals = finals if cell == "lstm" else (finals,)
        return float((out * gy).sum() + sum((f * g).sum() for f, g in zip(finals, gs)))

    assert_close_rel(grad_x, numerical_gradient(loss, x), np.float64, tol=1e-6, name="grad_x")
    for i, s in enumerate(states):
        assert_close_rel(grad_states[i], numerical_gradient(loss, s), np.float64, tol=1e-6,
                         name=f"grad_state[{i}]")
    for k in params:
        assert_close_rel(grads[k], numerical_gradient(loss, params[k]), np.float64, tol=1e-6,
                         name=f"grad {k}")


@pytest.mark.parametrize("cell_proj", CELLS)
def test_gated_cache_owns_what_backward_reads(rng, cell_proj):
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, 2, True, True, np.float32, proj)
    x, states, lengths, gy, gs = _inputs(rng, cell, "time", "ragged", True, 2, True,
                                         np.float32, proj)
    kwargs = dict(num_layers=2, bidirectional=True, lengths=lengths)
    expected = _flat(run_gated(functional, cell, params, x, states, gy, gs, **kwargs))
    fwd, bwd = ((functional.lstm_forward, functional.lstm_backward) if cell == "lstm"
                else (functional.gru_forward, functional.gru_backward))
    _, _, cache = fwd(x, params, tuple(states) if cell == "lstm" else states[0], **kwargs)
    for a in [x, lengths, *states, *params.values()]:
        a[...] = 0  # the caller's arrays change after the forward
    got = bwd(cache, gy, tuple(gs) if cell == "lstm" else gs[0])
    got = [got[0], *(got[1] if cell == "lstm" else [got[1]]), *got[2].values()]
    n = len(expected) - len(got)
    for a, b in zip(got, expected[n:]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("cell_proj", CELLS)
def test_gated_cache_without_copies(rng, cell_proj):
    """copy=False: the cache refers to the caller's x, states, parameters and masks (no
    copies), gives the same results bit for bit, and still copies lengths."""
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, 2, True, True, np.float32, proj)
    x, states, lengths, gy, gs = _inputs(rng, cell, "time", "ragged", True, 2, True,
                                         np.float32, proj)
    masks = [rng.uniform(0, 2, (L, N, 2 * (proj or H))).astype(np.float32)]
    fwd, bwd = ((functional.lstm_forward, functional.lstm_backward) if cell == "lstm"
                else (functional.gru_forward, functional.gru_backward))
    pack = (lambda s: tuple(s)) if cell == "lstm" else (lambda s: s[0])
    kwargs = dict(num_layers=2, bidirectional=True, lengths=lengths, dropout_masks=masks)
    copied = fwd(x, params, pack(states), **kwargs)
    shared = fwd(x, params, pack(states), copy=False, **kwargs)
    cache = shared[2]
    assert np.shares_memory(cache["layer_inputs"][0], x)
    assert all(np.shares_memory(a, b) for a, b in zip(cache["states"], states))
    assert all(cache["params"][k] is params[k] for k in params)
    assert np.shares_memory(cache["dropout_masks"][0], masks[0])
    lengths[:] = 10 ** 6  # still the forward's own copy
    got = [*shared[:2], *bwd(cache, gy, pack(gs))]
    want = [*copied[:2], *bwd(copied[2], gy, pack(gs))]
    arrays = lambda r: [a for v in r for a in (v.values() if isinstance(v, dict) else
                                              v if isinstance(v, tuple) else [v])]
    assert len(arrays(got)) == len(arrays(want)) == (6 if cell == "lstm" else 4) + len(params)
    assert all(np.array_equal(a, b) for a, b in zip(arrays(got), arrays(want)))


def _lstm_params(rng, proj=0, dtype=np.float32, **kw):
    return random_gated_params(rng, "lstm", I, H, kw.get("layers", 1), False, True, dtype, proj)


def test_gated_refusals(rng):
    lstm = _lstm_params(rng)
    x = np.zeros((L, N, I), np.float32)
    h0, c0 = np.zeros((1, N, H), np.float32), np.zeros((1, N, H), np.float32)
    with pytest.raises(TypeError, match="pair"):
        functional.lstm_forward(x, lstm, h0)
    with pytest.raises(TypeError, match="pair"):
        functional.lstm_forward(x, lstm, (h0, c0, c0))
    with pytest.raises(ValueError, match="Expected hidden size"):
        functional.lstm_forward(x, lstm, (h0[:, :2], c0))
    with pytest.raises(ValueError, match="Expected cell size"):
        functional.lstm_forward(x, lstm, (h0, c0[:, :2]))
    with pytest.raises(TypeError, match="dtype"):
        functional.lstm_forward(x.astype(np.float64), lstm)
    with pytest.raises(TypeError, match="c0 dtype"):
        functional.lstm_forward(x, lstm, (h0, c0.astype(np.float64)))
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D"):
        functional.lstm_forward(x[None], lstm)
    # with a projection, h is P wide and c stays H wide
    proj = _lstm_params(rng, PROJ)
    hp = np.zeros((1, N, PROJ), np.float32)
    functional.lstm_forward(x, proj, (hp, c0))
    with pytest.raises(ValueError, match="Expected cell size"):
        functional.lstm_forward(x, proj, (hp, np.zeros((1, N, PROJ), np.float32)))
    with pytest.raises(ValueError, match="Expected hidden size"):
        functional.lstm_forward(x, proj, (h0, c0))
    big = dict(proj, weight_hr_l0=np.zeros((H, H), np.float32))
    with pytest.raises(ValueError, match="proj_size"):
        functional.lstm_forward(x, big)
    gru = random_gated_params(rng, "gru", I, H, 1, False, True, np.float32)
    with pytest.raises(ValueError, match="unexpected.*weight_hr_l0"):
        functional.gru_forward(x, dict(gru, weight_hr_l0=np.zeros((PROJ, H), np.float32)))
    with pytest.raises(ValueError, match="3·hidden_size rows"):
        functional.gru_forward(x, lstm)  # 4H = 20 rows are no GRU's
    _, _, cache = functional.lstm_forward(x, lstm)
    with pytest.raises(TypeError, match="not from gru_forward"):
        functional.gru_backward(cache, np.zeros((L, N, H), np.float32))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        functional.lstm_backward(cache, np.zeros((L, N, H + 1), np.float32))
    with pytest.raises(ValueError, match="grad_c_n must have shape"):
        functional.lstm_backward(cache, np.zeros((L, N, H), np.float32),
                                 (None, np.zeros((1, N, H + 1), np.float32)))
    cache["saves"][0][0] = cache["saves"][0][0][:, :1]
    with pytest.raises(ValueError, match="cache entries"):
        functional.lstm_backward(cache, np.zeros((L, N, H), np.float32))


@pytest.mark.parametrize("cell_proj", CELLS)
@pytest.mark.parametrize("num_layers", [2, 3], ids=lambda v: f"layers{v}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_dropout_masks_match_reference(rng, kernel, cell_proj, num_layers, dtype):
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, num_layers, True, True, dtype, proj)
    x, states, lengths, gy, gs = _inputs(rng, cell, "batch", "ragged", True, num_layers, True,
                                         dtype, proj)
    masks = [((rng.random((L, N, 2 * (proj or H))) >= 0.4) / 0.6).astype(dtype)
             for _ in range(num_layers - 1)]
    kwargs = dict(num_layers=num_layers, bidirectional=True, batch_first=True, lengths=lengths,
                  dropout_masks=masks)
    assert_gated_close(run_gated(functional, cell, params, x, states, gy, gs, **kwargs),
                     run_gated(reference, cell, params, x, states, gy, gs, **kwargs), dtype)


@pytest.mark.parametrize("cell_proj", CELLS)
def test_gated_empty_batch(rng, cell_proj):
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, 2, True, True, np.float32, proj)
    x, states, _, gy, gs = _inputs(rng, cell, "time", None, True, 2, True, np.float32, proj,
                                   batch=0)
    out, finals, grad_x, grad_states, grads = run_gated(
        functional, cell, params, x, states, gy, gs, num_layers=2, bidirectional=True)
    assert out.shape == gy.shape and grad_x.shape == x.shape
    assert [f.shape for f in finals] == [s.shape for s in states]
    assert not any(g.any() for g in grads.values())


@pytest.mark.parametrize("cell_proj", [pytest.param(("lstm", 0), id="lstm"),
                                       pytest.param(("lstm", 40), id="lstm-proj"),
                                       pytest.param(("gru", 0), id="gru")])
@pytest.mark.parametrize("lengths_kind", [None, "ragged"], ids=["full", "ragged"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("chunk", [1, 5, 12], ids=lambda c: f"chunk{c}")
def test_gated_forward_without_cache_is_bitwise_the_cached_one(rng, kernel, monkeypatch,
                                                               cell_proj, lengths_kind,
                                                               precision, chunk):
    """Without a cache (eval), the steps project their input themselves: one step at a time
    into one saved row per sequence, or, past a W_ih of MAX_PER_STEP_W_IH_BYTES (lowered here
    so that this one is past it), float32 ``chunk`` steps at a time (as many as
    MAX_EVAL_CHUNK_BYTES of saved rows hold: 5 of 12 make a ring, 12 all the rows; bf16 one).
    The outputs and final states are bitwise those of the cached forward (all L rows saved,
    the projection as one GEMM past that W_ih), for 1, 2 and 3 threads. 27 rows: 9 or more
    per thread, so the eval forward projects per step on every thread count."""
    monkeypatch.setattr(_gated, "MAX_PER_STEP_W_IH_BYTES", -1)
    cell, proj = cell_proj
    dtype = np.float32
    params = random_gated_params(rng, cell, 5, 48, 2, True, True, dtype, proj)
    x, states, lengths, _, _ = _inputs(rng, cell, "time", lengths_kind, True, 2, True, dtype,
                                       proj, seq_len=12, batch=27, input_size=5, hidden_size=48)
    width = (4 if cell == "lstm" else 3) * 48 + 48 + (48 if proj else 0)
    monkeypatch.setattr(_gated, "MAX_EVAL_CHUNK_BYTES", chunk * 27 * width * 4)
    fwd = functional.lstm_forward if cell == "lstm" else functional.gru_forward
    hx = tuple(states) if cell == "lstm" else states[0]
    kwargs = dict(num_layers=2, bidirectional=True, lengths=lengths, precision=precision)
    chunks = []
    cell_forward = _rnn.cell_forward

    def recording(*args, **kw):
        chunks.append(kw.get("chunk"))
        return cell_forward(*args, **kw)

    monkeypatch.setattr(_rnn, "cell_forward", recording)
    previous = fastrnn.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fastrnn.set_num_threads(threads)
            cached = fwd(x, params, hx, **kwargs)
            chunks.clear()
            uncached = fwd(x, params, hx, keep_cache=False, **kwargs)
            assert chunks == [chunk if precision == "float32" else 1] * 4
            assert cached[2] is not None and uncached[2] is None
            for a, b in zip(_flat_forward(cached), _flat_forward(uncached)):
                assert np.array_equal(a, b)
    finally:
        fastrnn.set_num_threads(previous)


@pytest.mark.parametrize("cell_proj", [pytest.param(("lstm", 0), id="lstm"),
                                       pytest.param(("lstm", 40), id="lstm-proj"),
                                       pytest.param(("gru", 0), id="gru")])
@pytest.mark.parametrize("lengths_kind", [None, "ragged"], ids=["full", "ragged"])
def test_gated_training_projects_a_small_w_ih_step_by_step(rng, kernel, monkeypatch, cell_proj,
                                                          lengths_kind):
    """A float32 training forward projects its input step by step while W_ih has at most
    MAX_PER_STEP_W_IH_BYTES, as one GEMM above: the outputs, final states and every
    gradient are bitwise the same either way, for 1, 2 and 3 threads (27 rows: 9 or more per
    thread)."""
    cell, proj = cell_proj
    dtype = np.float32
    params = random_gated_params(rng, cell, 5, 48, 2, True, True, dtype, proj)
    x, states, lengths, gy, gs = _inputs(rng, cell, "time", lengths_kind, True, 2, True, dtype,
                                         proj, seq_len=12, batch=27, input_size=5,
                                         hidden_size=48)
    w_ih_bytes = {params[k].nbytes for k in params if k.startswith("weight_ih")}
    calls = []
    cell_forward = _rnn.cell_forward

    def recording(*args, **kwargs):
        calls.append("x" in kwargs)
        return cell_forward(*args, **kwargs)

    monkeypatch.setattr(_rnn, "cell_forward", recording)
    previous = fastrnn.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fastrnn.set_num_threads(threads)
            results = []
            for bound, per_step in ((max(w_ih_bytes), True), (min(w_ih_bytes) - 1, False)):
                monkeypatch.setattr(_gated, "MAX_PER_STEP_W_IH_BYTES", bound)
                calls.clear()
                results.append(run_gated(functional, cell, params, x, states, gy, gs,
                                         num_layers=2, bidirectional=True, lengths=lengths))
                assert calls == [per_step] * 4
            for a, b in zip(_flat(results[0]), _flat(results[1])):
                assert np.array_equal(a, b)
    finally:
        fastrnn.set_num_threads(previous)


def _flat_forward(result):
    out, finals, _ = result
    return [out, *(finals if isinstance(finals, tuple) else (finals,))]


@pytest.mark.parametrize("with_x", [False, True], ids=["P-given", "x-given"])
def test_cell_forward_one_saved_row_needs_x(rng, with_x):
    """A save of time stride 0 (one row per sequence, reused every step) cannot hold every
    step's P: cell_forward refuses it unless it projects x itself."""
    from fastrnn import _rnn
    T, B, In, Hd, G = 4, 3, 5, 6, 4
    rows = np.zeros((1, B, G * Hd + Hd), np.float32)
    save = np.lib.stride_tricks.as_strided(rows, (T, B, rows.shape[2]), (0,) + rows.strides[1:])
    out = np.zeros((T, B, Hd), np.float32)
    h0, c0 = np.zeros((B, Hd), np.float32), np.zeros((B, Hd), np.float32)
    h_n, c_n = np.zeros_like(h0), np.zeros_like(c0)
    w_hh = rng.standard_normal((G * Hd, Hd)).astype(np.float32)
    x = rng.standard_normal((T, B, In)).astype(np.float32)
    w_ih = rng.standard_normal((G * Hd, In)).astype(np.float32)
    lengths = np.full(B, T, np.int64)
    projection = dict(x=x, w_ih=w_ih) if with_x else {}
    call = lambda: _rnn.cell_forward(_rnn.LSTM, save, out, h0, c0, w_hh, None, None,  # noqa: E731
                                     lengths, False, h_n, c_n, 1, **projection)
    if not with_x:
        with pytest.raises(ValueError, match="time stride of 0.*needs x"):
            call()
        return
    call()
    full = np.zeros((T, B, G * Hd + Hd), np.float32)
    out_full, h_full, c_full = np.zeros_like(out), np.zeros_like(h0), np.zeros_like(c0)
    _rnn.cell_forward(_rnn.LSTM, full, out_full, h0, c0, w_hh, None, None, lengths, False,
                      h_full, c_full, 1, **projection)
    assert np.array_equal(out, out_full) and np.array_equal(h_n, h_full)
    assert np.array_equal(c_n, c_full)
