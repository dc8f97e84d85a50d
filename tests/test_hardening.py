"""Hardening: no input may crash the interpreter, corrupt memory or return garbage silently.

Complements test_errors.py (the common refusals, messages naming expected and actual) with
the rest of issue 6: every argument's dtype, lengths and dropout-mask refusals, zero-sized
dimensions, sizes whose buffers would overflow, NaN and inf against torch.nn.RNN, garbage
in the padding of a variable-length batch, aliasing between arguments and results,
read-only arrays, and hostile model and vocabulary files.
"""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from _helpers import (DTYPES, H, I, L, N, assert_results_close, assert_results_equal,
                      expected_param_shapes, forward_kwargs, make_dropout_masks, make_inputs, match_all, match_patterns,
                      match_shape, random_params, run_api, run_module, run_torch)
import fastrnn
from fastrnn import _rnn, data, functional, load_model, reference, save_model
from fastrnn.models import RNNLanguageModel

LAYERS, D = 2, 2


def params_for(dtype=np.float32, num_layers=LAYERS, bidirectional=True, bias=True,
               input_size=I, hidden_size=H, seed=0):
    return random_params(np.random.default_rng(seed), input_size, hidden_size, num_layers,
                         bidirectional, bias, dtype)


def inputs_for(dtype=np.float32, seq_len=L, batch=N, seed=1, lengths_kind=None):
    """x, h0, lengths, grad_output, grad_h_n for a 2-layer bidirectional RNN, time-major."""
    return make_inputs(np.random.default_rng(seed), layout="time", lengths_kind=lengths_kind,
                       with_h0=True, num_layers=LAYERS, bidirectional=True, dtype=dtype,
                       seq_len=seq_len, batch=batch)


# dtypes of every argument ------------------------------------------------------------------

BAD_DTYPES = [np.int32, np.bool_, object, np.complex64, np.float16, np.dtype(">f4")]
BAD_DTYPE_IDS = ["int32", "bool", "object", "complex64", "float16", "big-endian"]


def _with_dtype(a, dtype):
    return np.asarray(a).astype(dtype)


@pytest.mark.parametrize("slot", ["params", "bias", "dropout_mask", "grad_output", "grad_h_n"])
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=BAD_DTYPE_IDS)
def test_every_argument_refuses_non_float_dtypes(slot, dtype):
    """A TypeError naming the dtype got; nothing is converted silently."""
    params = params_for()
    x, h0, _, gy, ghn = inputs_for()
    masks = [np.ones((L, N, D * H), dtype=np.float32)]
    if slot == "params":
        params = {k: _with_dtype(v, dtype) for k, v in params.items()}
    elif slot == "bias":
        params["bias_ih_l1_reverse"] = _with_dtype(params["bias_ih_l1_reverse"], dtype)
    elif slot == "dropout_mask":
        masks = [_with_dtype(masks[0], dtype)]
    with pytest.raises(TypeError, match=match_all(np.dtype(dtype))) as info:
        _, _, cache = functional.rnn_forward(x, params, h0, num_layers=LAYERS, bidirectional=True,
                                             dropout_masks=masks)
        if slot == "grad_output":
            gy = _with_dtype(gy, dtype)
        elif slot == "grad_h_n":
            ghn = _with_dtype(ghn, dtype)
        functional.rnn_backward(cache, gy, ghn)
    if slot in ("grad_output", "grad_h_n"):
        assert slot in str(info.value)


@pytest.mark.parametrize("slot", ["x", "h0"])
@pytest.mark.parametrize("dtype", [np.float16, np.dtype(">f4")], ids=["float16", "big-endian"])
def test_inputs_refuse_half_and_non_native_floats(slot, dtype):
    x, h0, _, _, _ = inputs_for()
    args = dict(x=x, h0=h0)
    args[slot] = args[slot].astype(dtype)
    with pytest.raises(TypeError, match=match_all(np.dtype(dtype))):
        functional.rnn_forward(args["x"], params_for(), args["h0"], num_layers=LAYERS,
                               bidirectional=True)


def test_module_refuses_parameters_replaced_by_wrong_arrays():
    """``p.data`` is a public attribute: a wrong array put there is refused on the next forward."""
    rnn = fastrnn.RNN(I, H, LAYERS, bidirectional=True, seed=0)
    x = inputs_for()[0]
    rnn.weight_hh_l1.data = np.zeros((H, H + 1), dtype=np.float32)
    with pytest.raises(ValueError, match=match_patterns("weight_hh_l1", match_shape((H, H)),
                                                        match_shape((H, H + 1)))):
        rnn(x)
    rnn.weight_hh_l1.data = np.zeros((H, H), dtype=np.float64)
    with pytest.raises(TypeError, match=match_all("weight_hh_l1", "float64", "float32")):
        rnn(x)


# lengths and dropout masks -----------------------------------------------------------------

LENGTHS_ERRORS = [
    ("nan", [np.nan, 1, 2, 3], TypeError, "float"),
    ("inf", [np.inf, 1, 2, 3], TypeError, "float"),
    ("strings", ["1", "2", "3", "4"], TypeError, "U1"),
    ("object", np.array([1, 2, 3, 4], dtype=object), TypeError, "object"),
    ("complex", np.array([1, 2, 3, 4], dtype=complex), TypeError, "complex"),
    ("scalar", 3, ValueError, match_patterns(match_shape((N,)), r"\(\)")),
    ("uint64-max", np.array([2**64 - 1, 1, 2, 3], dtype=np.uint64), ValueError,
     "18446744073709551615"),
]


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("lengths,error,match", [pytest.param(*c[1:], id=c[0])
                                                 for c in LENGTHS_ERRORS] + [
    pytest.param([1e20, 1, 2, 3], ValueError, r"1e\+?20|10{20}", id="float-beyond-int64")])
def test_lengths_refusals(lengths, error, match):
    x, h0, _, _, _ = inputs_for()
    with pytest.raises(error, match=match):
        functional.rnn_forward(x, params_for(), h0, num_layers=LAYERS, bidirectional=True,
                               lengths=lengths)


MASK = np.ones((L, N, D * H), dtype=np.float32)
MASK_ERRORS = [
    ("too-few", [], ValueError, match_all("1", "0")),
    ("too-many", [MASK, MASK], ValueError, match_all("1", "2")),
    ("shape", [MASK[:, :, :H]], ValueError,
     match_patterns(match_shape((L, N, D * H)), match_shape((L, N, H)))),
    ("dtype", [MASK.astype(np.float64)], TypeError, match_all("float64", "float32")),
    ("none-entry", [None], TypeError, "object"),
    ("not-a-sequence", 5, TypeError, "int"),
]


@pytest.mark.parametrize("masks,error,match",
                         [pytest.param(*c[1:], id=c[0]) for c in MASK_ERRORS])
def test_dropout_mask_refusals(masks, error, match):
    x, h0, _, _, _ = inputs_for()
    with pytest.raises(error, match=match):
        functional.rnn_forward(x, params_for(), h0, num_layers=LAYERS, bidirectional=True,
                               dropout_masks=masks)


def _params_missing(p):
    del p["weight_hh_l1"]
    return p, ["weight_hh_l1"]


def _params_extra(p):
    p["weight_hh_l2"] = p["weight_hh_l1"]
    return p, ["weight_hh_l2"]


def _params_half_bias(p):
    del p["bias_hh_l0"]
    return p, ["bias_hh_l0"]


@pytest.mark.parametrize("corrupt", [_params_missing, _params_extra, _params_half_bias],
                         ids=["missing", "unexpected", "half-bias"])
def test_functional_params_refusals(corrupt):
    params, named = corrupt(params_for())
    x, h0, _, _, _ = inputs_for()
    with pytest.raises(ValueError, match=match_all(*named)):
        functional.rnn_forward(x, params, h0, num_layers=LAYERS, bidirectional=True)


@pytest.mark.parametrize("params", [None, [], "weight_ih_l0"], ids=["none", "list", "str"])
def test_functional_params_of_the_wrong_type(params):
    with pytest.raises((TypeError, ValueError)):
        functional.rnn_forward(inputs_for()[0], params, num_layers=LAYERS, bidirectional=True)


@pytest.mark.parametrize("layout", ["batch", "unbatched"])
def test_gradients_of_the_wrong_shape_for_each_layout(layout):
    """test_errors covers time-major; here a time-major or batched gradient is refused where
    the forward was batch-first or unbatched."""
    rng = np.random.default_rng(2)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=LAYERS, bidirectional=True, dtype=np.float32)
    out, hn, cache = functional.rnn_forward(x, params_for(), h0, num_layers=LAYERS,
                                            bidirectional=True, batch_first=layout == "batch")
    wrong_gy = gy.transpose(1, 0, 2) if layout == "batch" else gy[:, None, :]
    with pytest.raises(ValueError, match=match_patterns(match_shape(out.shape),
                                                        match_shape(wrong_gy.shape))):
        functional.rnn_backward(cache, wrong_gy, ghn)
    wrong_ghn = ghn[:, :1] if layout == "batch" else ghn[:, None, :]
    with pytest.raises(ValueError, match=match_patterns(match_shape(hn.shape),
                                                        match_shape(wrong_ghn.shape))):
        functional.rnn_backward(cache, gy, wrong_ghn)


# zero-sized dimensions ---------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_lengths_zero(kernel, bidirectional, dtype):
    """Every sequence empty inside a non-empty batch: outputs 0, h_n = h0, gradients pass to h0."""
    Dn = 2 if bidirectional else 1
    rng = np.random.default_rng(3)
    params = params_for(dtype, bidirectional=bidirectional)
    x, h0, _, gy, ghn = make_inputs(rng, layout="time", lengths_kind=None, with_h0=True,
                                    num_layers=LAYERS, bidirectional=bidirectional, dtype=dtype)
    lengths = np.zeros(N, dtype=np.int64)
    out, hn, gx, gh0, grads = run_api(functional, params, x, h0, gy, ghn, **forward_kwargs(
        LAYERS, "tanh", bidirectional, "time", lengths))
    assert out.shape == (L, N, Dn * H) and not out.any()
    assert np.array_equal(hn, h0)
    assert gx.shape == x.shape and not gx.any()
    assert np.array_equal(gh0, ghn)
    assert not any(g.any() for g in grads.values())


@pytest.mark.parametrize("lengths", [[], np.array([]), np.array([], dtype=np.float32)],
                         ids=["list", "float64", "float32"])
def test_empty_batch_accepts_empty_lengths_of_any_spelling(lengths):
    x = np.zeros((L, 0, I), dtype=np.float32)
    out, hn, _ = functional.rnn_forward(x, params_for(), None, num_layers=LAYERS,
                                        bidirectional=True, lengths=lengths)
    assert out.shape == (L, 0, D * H) and hn.shape == (D * LAYERS, 0, H)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time", "batchfirst"])
def test_empty_sequence_and_empty_batch_together(kernel, batch_first):
    x = np.zeros((0, 0, I), dtype=np.float32)
    out, hn, cache = functional.rnn_forward(x, params_for(), None, num_layers=LAYERS,
                                            bidirectional=True, batch_first=batch_first,
                                            dropout_masks=[np.zeros((0, 0, D * H), np.float32)])
    assert out.shape == (0, 0, D * H) and hn.shape == (D * LAYERS, 0, H)
    gx, gh0, grads = functional.rnn_backward(cache, np.zeros_like(out), np.zeros_like(hn))
    assert gx.shape == x.shape and gh0.shape == hn.shape
    assert all(g.shape == p.shape and not g.any() for g, p in zip(grads.values(),
                                                                   params_for().values()))


@pytest.mark.parametrize("input_size,hidden_size", [(0, H), (I, 0), (0, 0)],
                         ids=["input0", "hidden0", "both0"])
def test_zero_feature_sizes_match_reference(kernel, input_size, hidden_size):
    """torch.nn.RNN refuses these sizes (so does fastrnn.RNN); the functional API computes
    them like the reference: a bias-only recurrence, or empty states."""
    rng = np.random.default_rng(4)
    params = {k: rng.uniform(-0.5, 0.5, shape) for k, shape in expected_param_shapes(
        input_size, hidden_size, LAYERS, True, True).items()}
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout="time", lengths_kind="ragged", with_h0=True, num_layers=LAYERS,
        bidirectional=True, dtype=np.float64, input_size=input_size, hidden_size=hidden_size)
    kwargs = forward_kwargs(LAYERS, "tanh", True, "time", lengths)
    assert_results_close(run_api(functional, params, x, h0, gy, ghn, **kwargs),
                         run_api(reference, params, x, h0, gy, ghn, **kwargs), np.float64)


# sizes that do not fit -----------------------------------------------------------------------
# Every buffer here is ≥ 2⁵⁷ bytes, beyond any address space (even with 5-level paging), so
# its allocation fails at once; and nothing large is allocated before it.

def test_module_too_large_to_allocate():
    with pytest.raises(MemoryError):
        fastrnn.RNN(2**28, 2**28)


def test_inputs_too_large_to_copy():
    x = np.broadcast_to(np.float32(0), (2**47, 2**8, 1))  # 2⁵⁷ bytes once made contiguous
    params = {"weight_ih_l0": np.zeros((4, 1), np.float32),
              "weight_hh_l0": np.zeros((4, 4), np.float32)}
    with pytest.raises(MemoryError):
        functional.rnn_forward(x, params)


def test_weights_too_large_to_pack():
    hidden = 2**28  # W_hh made contiguous: 2⁵⁸ bytes; L = N = 0, so h0, h_n, output are empty
    params = {"weight_ih_l0": np.zeros((hidden, 0), np.float32),
              "weight_hh_l0": np.broadcast_to(np.float32(0), (hidden, hidden))}
    with pytest.raises(MemoryError):
        functional.rnn_forward(np.zeros((0, 0, 0), np.float32), params)


def test_compiled_gemm_refuses_more_rows_than_its_int_indices():
    """Rows beyond INT_MAX are refused before the kernels run. Zero-stride views stand in
    for the 2³¹-row operands, so even a missing check would touch only a few bytes."""
    rows = 2**31 + 1
    as_strided = np.lib.stride_tricks.as_strided
    a = as_strided(np.zeros(1, np.float32), shape=(rows, 1), strides=(0, 4))
    b = np.zeros((1, 1), np.float32)
    c = as_strided(np.zeros(1, np.float32), shape=(rows, 1), strides=(0, 4))
    with pytest.raises(MemoryError, match=str(rows)):
        _rnn.gemm(a, b, c, None, False, 1)


@pytest.mark.parametrize("case", ["module-weights", "output"])
def test_buffer_size_overflow_is_a_memory_error(case):
    """Sizes whose byte count overflows 64 bits: MemoryError, as the issue asks. (An input
    that large cannot exist: NumPy refuses to create it.)"""
    if case == "module-weights":
        with pytest.raises(MemoryError):
            fastrnn.RNN(2**62, 2)
    else:
        x = np.zeros((2**58, 2, 0), np.float32)  # no bytes; its buffers would need 2⁶⁴+
        params = {"weight_ih_l0": np.zeros((8, 0), np.float32),
                  "weight_hh_l0": np.zeros((8, 8), np.float32)}
        with pytest.raises(MemoryError):
            functional.rnn_forward(x, params)


# non-finite values against torch ----------------------------------------------------------------

NONFINITE = {
    "x-nan": ("x", (2, 1, 0), np.nan),
    "x-inf": ("x", (2, 1, 0), np.inf),
    "x-neg-inf": ("x", (2, 1, 0), -np.inf),
    "x-huge": ("x", (2, 1, slice(None)), 1e30),
    "h0-nan": ("h0", (0, 2, 1), np.nan),
    "weight-nan": ("weight_ih_l1", (1, 0), np.nan),
    "weight-inf": ("weight_hh_l0", (1, 2), np.inf),
    "bias-nan": ("bias_hh_l0", (0,), np.nan),
    "grad_output-nan": ("grad_output", (3, 0, 1), np.nan),
    "grad_output-inf": ("grad_output", (3, 0, 1), np.inf),
}


def _nonfinite_cases():
    for case in NONFINITE:
        for nonlinearity in ("tanh", "relu"):
            for dtype, dtype_id in ((np.float32, "f32"), (np.float64, "f64")):
                yield pytest.param(case, nonlinearity, dtype,
                                   id=f"{case}-{nonlinearity}-{dtype_id}")


def assert_nonfinite_close(got, expected, dtype):
    """NaN where torch has NaN, the same infinities, finite values close."""
    names = ["output", "h_n", "grad_x", "grad_h0"] + [f"grad {k}" for k in expected[4]]
    tol = 1e-4 if dtype == np.float32 else 1e-9
    for name, a, b in zip(names, list(got[:4]) + list(got[4].values()),
                          list(expected[:4]) + list(expected[4].values())):
        finite = np.abs(b[np.isfinite(b)])
        scale = finite.max() if finite.size else 1.0
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(scale, 1.0), equal_nan=True,
                                   err_msg=name)


@pytest.fixture(scope="module")
def torch_results():
    """torch.nn.RNN's results per (case, nonlinearity, dtype), computed once for all kernels.

    One intra-op thread: on a small shared machine torch's thread pool and fastrnn's OpenMP
    threads otherwise wait on each other for a scheduler tick per call.
    """
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {}
    torch.set_num_threads(threads)


def _nonfinite_inputs(case, dtype):
    where, index, value = NONFINITE[case]
    rng = np.random.default_rng(5)
    params = random_params(rng, I, H, LAYERS, True, True, dtype)
    x, h0, _, gy, ghn = make_inputs(rng, layout="time", lengths_kind=None, with_h0=True,
                                    num_layers=LAYERS, bidirectional=True, dtype=dtype)
    arrays = dict(params, x=x, h0=h0, grad_output=gy)
    arrays[where][index] = value
    return params, x, h0, gy, ghn


@pytest.mark.parametrize("case,nonlinearity,dtype", list(_nonfinite_cases()))
def test_nonfinite_values_propagate_as_in_torch(torch_results, kernel, case, nonlinearity, dtype):
    params, x, h0, gy, ghn = _nonfinite_inputs(case, dtype)
    key = (case, nonlinearity, np.dtype(dtype).name)
    with np.errstate(all="ignore"):
        got = run_api(functional, params, x, h0, gy, ghn,
                      **forward_kwargs(LAYERS, nonlinearity, True, "time"))
        if key not in torch_results:
            torch_results[key] = run_torch(params, x, h0, None, gy, ghn, num_layers=LAYERS,
                                           nonlinearity=nonlinearity, bidirectional=True,
                                           batch_first=False)
    assert_nonfinite_close(got, torch_results[key], dtype)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"),
                                   pytest.param(np.float64, id="f64")])
def test_tanh_of_huge_and_infinite_values_is_exactly_one(kernel, dtype):
    """libm's and torch's tanh round to ±1 beyond |x| ≈ 9.01 (float32) or 19.1 (float64)."""
    x = np.array([20, 1e30, np.inf, -20, -1e30, -np.inf], dtype=dtype).reshape(1, -1, 1)
    params = {"weight_ih_l0": np.ones((1, 1), dtype), "weight_hh_l0": np.zeros((1, 1), dtype)}
    out, _, _ = functional.rnn_forward(x, params)
    assert out.ravel().tolist() == [1, 1, 1, -1, -1, -1]


def test_relu_gradient_passes_through_nan_like_torch(kernel):
    """torch's relu backward is ``h <= 0 ? 0 : grad``: a NaN output passes its gradient."""
    params = {"weight_ih_l0": np.ones((1, 1), np.float64),
              "weight_hh_l0": np.zeros((1, 1), np.float64)}
    x = np.array([[[np.nan]]])
    _, _, cache = functional.rnn_forward(x, params, nonlinearity="relu")
    grad_x, _, grads = functional.rnn_backward(cache, np.ones((1, 1, 1)))
    # dA = 1 (passed through), dX = dA·W_ih = 1, dW_ih = dA·x = NaN
    assert grad_x.ravel().tolist() == [1.0]
    assert np.isnan(grads["weight_ih_l0"]).all()


@pytest.mark.parametrize("fill", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_everywhere_never_crashes(kernel, fill, dtype):
    """All-NaN or all-inf weights and inputs, at sizes that use two threads (batch slices,
    then hidden-column slices with a barrier per step)."""
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    try:
        for (seq_len, batch, hidden) in ((24, 37, 64), (12, 1, 256)):
            params = random_params(np.random.default_rng(6), 8, hidden, 2, True, True, dtype)
            for k in ("weight_hh_l0", "bias_ih_l1_reverse"):
                params[k][...] = fill
            x = np.full((seq_len, batch, 8), fill, dtype=dtype)
            with np.errstate(all="ignore"):
                out, hn, cache = functional.rnn_forward(x, params, num_layers=2,
                                                        bidirectional=True)
                gx, gh0, grads = functional.rnn_backward(cache, np.full_like(out, fill))
            assert out.shape == (seq_len, batch, 2 * hidden) and gx.shape == x.shape
    finally:
        fastrnn.set_num_threads(previous)


# garbage in the padding of a variable-length batch -----------------------------------------

@pytest.mark.parametrize("slot,fill", [
    pytest.param("x", np.nan, id="x-nan"),
    pytest.param("x", np.inf, id="x-inf"),
    pytest.param("x", 1e30, id="x-huge"),
    pytest.param("grad_output", np.nan, id="grad_output-nan"),
    pytest.param("grad_output", np.inf, id="grad_output-inf"),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_past_each_length_are_ignored(kernel, slot, fill, dtype):
    """Steps past a sequence's length are padding (torch never sees them once packed):
    whatever they hold, every result equals that of zero padding, bit for bit."""
    params = params_for(dtype)
    x, h0, lengths, gy, ghn = inputs_for(dtype, lengths_kind="short")
    kwargs = forward_kwargs(LAYERS, "tanh", True, "time", lengths)
    padding = np.arange(L)[:, None] >= lengths[None, :]
    x[padding], gy[padding] = 0, 0
    clean = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    dirty = {"x": x.copy(), "grad_output": gy.copy()}
    dirty[slot][padding] = fill
    with np.errstate(all="ignore"):
        got = run_api(functional, params, dirty["x"], h0, dirty["grad_output"], ghn, **kwargs)
    assert_results_equal(got, clean)


# aliasing --------------------------------------------------------------------------------------

def _all_arrays(result):
    out, hn, gx, gh0, grads = result
    return {"output": out, "h_n": hn, "grad_x": gx, "grad_h0": gh0,
            **{f"grad {k}": g for k, g in grads.items()}}


def test_aliased_arguments_give_the_results_of_copies(kernel):
    """Arguments sharing memory (h0 inside x's buffer, one array for several parameters,
    one mask for every layer, the forward's own results as gradients) are only read."""
    rng = np.random.default_rng(7)
    hidden = I  # square W_ih so that one array can serve as W_ih and W_hh
    buf = rng.standard_normal(L * N * I + 2 * LAYERS * N * hidden).astype(np.float64)
    x = buf[:L * N * I].reshape(L, N, I)
    h0 = buf[L * N * I - 7:][:2 * LAYERS * N * hidden].reshape(2 * LAYERS, N, hidden)  # overlaps x
    shared_w = rng.uniform(-0.5, 0.5, (hidden, hidden))
    shared_b = rng.uniform(-0.5, 0.5, hidden)
    params = random_params(rng, I, hidden, LAYERS, True, True, np.float64)
    params.update(weight_ih_l0=shared_w, weight_hh_l0=shared_w, weight_hh_l1=shared_w,
                  bias_ih_l0=shared_b, bias_hh_l0=shared_b, bias_hh_l1_reverse=shared_b)
    mask = ((rng.random((L, N, 2 * hidden)) > 0.3) / 0.7).astype(np.float64)
    kwargs = dict(num_layers=LAYERS, bidirectional=True, dropout_masks=[mask])

    out, hn, cache = functional.rnn_forward(x, params, h0, **kwargs)
    aliased = (out, hn) + functional.rnn_backward(cache, out, hn)  # gradients = the results
    copies = {k: v.copy() for k, v in params.items()}
    out2, hn2, cache2 = functional.rnn_forward(x.copy(), copies, h0.copy(), **kwargs)
    separate = (out2, hn2) + functional.rnn_backward(cache2, out2.copy(), hn2.copy())
    assert_results_equal(aliased, separate)


@pytest.mark.parametrize("layout", ["time", "batch", "unbatched"])
def test_results_share_no_memory_with_arguments_or_each_other(kernel, layout):
    rng = np.random.default_rng(8)
    params = params_for(np.float64)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=None if layout == "unbatched" else "ragged",
        with_h0=True, num_layers=LAYERS, bidirectional=True, dtype=np.float64)
    masks = make_dropout_masks(rng, LAYERS, L, 1 if layout == "unbatched" else N, H, True, 0.3,
                               np.float64)
    results = _all_arrays(run_api(functional, params, x, h0, gy, ghn, **forward_kwargs(
        LAYERS, "relu", True, layout, lengths, masks)))
    arguments = dict(params, x=x, h0=h0, grad_output=gy, grad_h_n=ghn, mask=masks[0])
    for rname, r in results.items():
        for aname, a in arguments.items():
            assert not np.shares_memory(r, a), f"{rname} shares memory with {aname}"
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.shares_memory(results[a], results[b]), f"{a} and {b} share memory"


@pytest.mark.parametrize("api", ["module", "functional"])
@pytest.mark.parametrize("layout", ["time", "unbatched"])
def test_modifying_the_output_in_place_does_not_change_gradients(api, layout):
    """torch raises when a tensor saved for backward was modified in place; here the
    gradients must not change (a private cache, or a read-only output that refuses)."""
    rng = np.random.default_rng(9)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=LAYERS, bidirectional=True, dtype=np.float64)
    params = params_for(np.float64)

    def run(mutate):
        if api == "module":
            rnn = fastrnn.RNN(I, H, LAYERS, bidirectional=True, dtype=np.float64)
            rnn.load_state_dict(params)
            out, _ = rnn(x, h0)
            mutate(out)
            grad_x, grad_h0 = rnn.backward(gy, ghn)
            return grad_x, grad_h0, {k: p.grad for k, p in rnn.named_parameters()}
        out, _, cache = functional.rnn_forward(x, params, h0, num_layers=LAYERS,
                                               bidirectional=True)
        mutate(out)
        return functional.rnn_backward(cache, gy, ghn)

    def scale(out):
        try:
            out *= 0.5
        except ValueError:  # a read-only output is a correct fix too
            pass

    expected = run(lambda out: None)
    got = run(scale)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    for name in expected[2]:
        assert np.array_equal(got[2][name], expected[2][name]), name


# read-only ---------------------------------------------------------------------------------

def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def test_read_only_lengths_and_masks(kernel):
    """test_functional covers read-only x, h0, params and gradients; lengths and masks too."""
    rng = np.random.default_rng(10)
    params = params_for(np.float64)
    x, h0, lengths, gy, ghn = inputs_for(np.float64, lengths_kind="ragged")
    masks = make_dropout_masks(rng, LAYERS, L, N, H, True, 0.5, np.float64)
    expected = run_api(functional, params, x, h0, gy, ghn,
                       **forward_kwargs(LAYERS, "tanh", True, "time", lengths, masks))
    got = run_api(functional, params, x, h0, gy, ghn, **forward_kwargs(
        LAYERS, "tanh", True, "time", _readonly(lengths.astype(np.int64)),
        [_readonly(m) for m in masks]))
    assert_results_equal(got, expected)


def test_module_with_read_only_parameters(kernel):
    x, h0, lengths, gy, ghn = inputs_for(np.float64, lengths_kind="short")
    rnn = fastrnn.RNN(I, H, LAYERS, bidirectional=True, dtype=np.float64, seed=1)
    expected = run_module(rnn, x, h0, lengths, gy, ghn)
    for p in rnn.parameters():
        p.data = _readonly(p.data)
    assert_results_equal(run_module(rnn, x, h0, lengths, gy, ghn), expected)
    with pytest.raises(ValueError, match="read-only"):
        rnn.load_state_dict(rnn.state_dict())  # refused by NumPy, not a crash


# hostile files -------------------------------------------------------------------------------

class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def saved(tmp_path):
    """A valid model file's arrays and a writer for altered copies of it."""
    path = tmp_path / "good.npz"
    save_model(path, RNNLanguageModel(5, 2, 3, seed=0), data.Vocab("abc"))
    with np.load(path) as f:
        arrays = dict(f)
    header = json.loads(arrays["fastrnn_header"].tobytes())

    def write(name, **changes):
        out = tmp_path / name
        np.savez(out, **{k: v for k, v in dict(arrays, **changes).items() if v is not None})
        return out

    return arrays, header, write


def _json_bytes(obj_or_text):
    text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
    return np.frombuffer(text.encode(), dtype=np.uint8)


DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("entry", ["fastrnn_header", "param.decoder.bias", "vocab."])
def test_pickled_entries_are_refused_unexecuted(saved, tmp_path, entry):
    _, _, write = saved
    marker = tmp_path / "code-ran"
    path = write("evil.npz", **{entry: np.array([_Payload(str(marker))], dtype=object)})
    with pytest.raises(ValueError, match="(?i)pickle|object"):
        load_model(path)
    assert not marker.exists()


def test_a_pickle_named_npz_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["fastrnn_header", "vocab."])
def test_deeply_nested_json_in_a_model_file(saved, entry):
    _, _, write = saved
    with pytest.raises(ValueError):
        load_model(write("deep.npz", **{entry: _json_bytes(DEEP_JSON)}))


def test_deeply_nested_json_vocabulary(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(DEEP_JSON)
    with pytest.raises(ValueError):
        data.Vocab.load(path)


@pytest.mark.parametrize("content", [b"\xff\xfe", b"\x00" * 10, b'{"format": 1}'],
                         ids=["not-utf8", "nul", "wrong-format"])
def test_corrupt_vocabulary_files(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_bytes(content)
    with pytest.raises(ValueError):  # UnicodeDecodeError is a ValueError
        data.Vocab.load(path)


@pytest.mark.parametrize("vocab_size, embedding_dim", [(2**20, 2**8), (2**45, 2**10)],
                         ids=["1GB", "beyond-address-space"])
def test_huge_sizes_in_the_header_are_refused_before_allocating(saved, vocab_size,
                                                                embedding_dim):
    """A few hundred bytes must not make the loader allocate (and fill) gigabytes."""
    import tracemalloc

    _, header, write = saved
    config = dict(header["config"], vocab_size=vocab_size, embedding_dim=embedding_dim)
    path = write("huge.npz", fastrnn_header=_json_bytes(dict(header, config=config)))
    tracemalloc.start()  # numpy reports its data buffers to tracemalloc
    try:
        with pytest.raises(ValueError, match="does not match its configuration"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24, f"loading a {path.stat().st_size}-byte file allocated {peak} bytes"


def test_huge_array_shape_in_an_entry_header(saved, tmp_path):
    arrays, _, _ = saved
    path = tmp_path / "huge-entry.npz"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in arrays.items():
            if k != "param.decoder.bias":
                buf = io.BytesIO()
                np.save(buf, v)
                z.writestr(k + ".npy", buf.getvalue())
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (2**58,)})  # and no data
        z.writestr("param.decoder.bias.npy", buf.getvalue())
    with pytest.raises(ValueError):
        load_model(path)


def _corrupt_compressed(arrays, path):
    np.savez_compressed(path, **arrays)
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("case", ["empty", "truncated-zip", "corrupt-deflate", "string-param"])
def test_damaged_model_files_raise_value_error(saved, tmp_path, case):
    arrays, _, write = saved
    if case == "empty":
        path = tmp_path / "empty.npz"
        path.write_bytes(b"")
    elif case == "truncated-zip":
        path = tmp_path / "truncated.npz"
        path.write_bytes(write("full.npz").read_bytes()[:200])
    elif case == "corrupt-deflate":
        path = _corrupt_compressed(arrays, tmp_path / "deflate.npz")
    else:
        path = write("strings.npz", **{"param.decoder.bias": np.array(["a"] * 5)})
    with pytest.raises(ValueError):
        load_model(path)


@pytest.mark.parametrize("case", ["truncated-entries", "bad-npy-entry", "large-npy-header",
                                  "nan-weights", "float16-weights"])
def test_damaged_entries_are_refused_or_loaded_safely(saved, tmp_path, case):
    arrays, _, write = saved
    path = tmp_path / f"{case}.npz"
    if case in ("truncated-entries", "bad-npy-entry", "large-npy-header"):
        with zipfile.ZipFile(path, "w") as z:
            for k, v in arrays.items():
                buf = io.BytesIO()
                np.save(buf, v)
                body = buf.getvalue()
                if case == "truncated-entries":
                    body = body[:len(body) // 2]
                elif k == "fastrnn_header":
                    body = (b"not an npy entry" if case == "bad-npy-entry" else
                            b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 65535)
                z.writestr(k + ".npy", body)
        with pytest.raises(ValueError):
            load_model(path)
    else:
        bias = np.full(5, np.nan if case == "nan-weights" else 0.5,
                       dtype=np.float32 if case == "nan-weights" else np.float16)
        model, _, _ = load_model(write(path.name, **{"param.decoder.bias": bias}))
        np.testing.assert_array_equal(model.decoder.bias.data, bias.astype(np.float32))
    assert os.path.exists(path)


# what the forward's cache owns (issue 14) ---------------------------------------------------

def _changes_after_forward():
    """(name, change(args)) pairs: each changes, in place or by rebinding, one argument the
    caller handed to a training-mode forward, between that forward and its backward."""
    def rebind_weight(args):
        args["params"]["weight_hh_l0"] = np.zeros((1, 1), np.float32)

    def scale_weight(args):
        args["params"]["weight_hh_l1_reverse"] *= 3

    def huge_lengths(args):
        args["lengths"][:] = 10 ** 6

    def shorter_lengths(args):
        args["lengths"][:] = 1

    def scale_x(args):
        args["x"] *= 2

    def scale_h0(args):
        args["h0"] += 1

    def zero_mask(args):
        args["masks"][0][:] = 0

    return {f.__name__: f for f in (rebind_weight, scale_weight, huge_lengths, shorter_lengths,
                                     scale_x, scale_h0, zero_mask)}


CHANGES = _changes_after_forward()


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_functional_cache_owns_what_backward_reads(change):
    """Changing or rebinding any argument after forward leaves backward's gradients those of
    the forward that ran (they used to crash on lengths, read a (1, 1) weight as (H, H) or
    silently change dW_ih)."""
    x, h0, lengths, gy, ghn = inputs_for(lengths_kind="ragged")
    masks = make_dropout_masks(np.random.default_rng(2), LAYERS, L, N, H, True, 0.3, np.float32)
    kwargs = dict(num_layers=LAYERS, bidirectional=True)
    args = dict(x=x.copy(), h0=h0.copy(), lengths=np.array(lengths, np.int64),
                params=params_for(), masks=[m.copy() for m in masks])
    _, _, cache = functional.rnn_forward(args["x"], args["params"], args["h0"],
                                         lengths=args["lengths"], dropout_masks=args["masks"],
                                         **kwargs)
    change(args)
    grad_x, grad_h0, grads = functional.rnn_backward(cache, gy, ghn)
    _, _, clean = functional.rnn_forward(x, params_for(), h0, lengths=lengths,
                                         dropout_masks=masks, **kwargs)
    want_x, want_h0, want = functional.rnn_backward(clean, gy, ghn)
    assert np.array_equal(grad_x, want_x) and np.array_equal(grad_h0, want_h0)
    assert grads.keys() == want.keys()
    assert all(np.array_equal(grads[k], want[k]) for k in want)


def test_functional_cache_without_copies():
    """copy=False: the cache refers to the caller's x, h0, parameters and masks instead of
    copies, with bitwise the same results; lengths are still copied."""
    x, h0, lengths, gy, ghn = inputs_for(lengths_kind="ragged")
    masks = make_dropout_masks(np.random.default_rng(2), LAYERS, L, N, H, True, 0.3, np.float32)
    params = params_for()
    lengths = np.array(lengths, np.int64)
    kwargs = dict(num_layers=LAYERS, bidirectional=True, lengths=lengths, dropout_masks=masks)
    out, h_n, cache = functional.rnn_forward(x, params, h0, copy=False, **kwargs)
    assert np.shares_memory(cache["layer_inputs"][0], x) and np.shares_memory(cache["h0"], h0)
    assert all(cache["params"][k] is params[k] for k in params)
    assert all(np.shares_memory(a, b) for a, b in zip(cache["dropout_masks"], masks))
    lengths_given = lengths.copy()
    lengths[:] = 10 ** 6  # still the forward's own copy
    got = (out, h_n, *functional.rnn_backward(cache, gy, ghn))
    out, h_n, clean = functional.rnn_forward(x, params, h0, **dict(kwargs, lengths=lengths_given))
    want = (out, h_n, *functional.rnn_backward(clean, gy, ghn))
    assert all(np.array_equal(a, b) for a, b in zip(got[:4], want[:4]))
    assert got[4].keys() == want[4].keys()
    assert all(np.array_equal(got[4][k], want[4][k]) for k in want[4])


def test_module_backward_unaffected_by_changes_after_forward():
    """The issue's crash: ``rnn(x, lengths=buf); buf[:] = 10**6; rnn.backward(g)``, and the
    same for x and a parameter changed in place before backward."""
    x, _, lengths, gy, _ = inputs_for(lengths_kind="ragged")
    results = []
    for modify in (False, True):
        rnn = fastrnn.RNN(I, H, LAYERS, bidirectional=True, seed=0)
        buf, xb = np.array(lengths, np.int64), x.copy()
        rnn(xb, lengths=buf)
        if modify:
            buf[:] = 10 ** 6
            xb[:] = 0
            rnn.weight_hh_l0.data[...] = 0
        grad_x, grad_h0 = rnn.backward(gy)
        results.append((grad_x, grad_h0, *(p.grad for p in rnn.parameters())))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def _tamper_cases():
    def lengths_huge(cache):
        cache["lengths"] = np.full(N, 10 ** 6, np.int64)

    def lengths_short(cache):
        cache["lengths"] = np.full(N - 1, L, np.int64)

    def weight_rebound(cache):
        cache["params"]["weight_hh_l0"] = np.zeros((1, 1), np.float32)

    def input_shrunk(cache):
        cache["layer_inputs"][0] = np.zeros((1, 1, I), np.float32)

    def output_shrunk(cache):
        cache["layer_outputs"][1] = np.zeros((L, N, H), np.float32)

    def h0_wrong(cache):
        cache["h0"] = np.zeros((1, N, H), np.float32)

    def layers_more(cache):
        cache["num_layers"] = 100

    def layer_dropped(cache):
        cache["layer_inputs"].pop()

    def dtype_changed(cache):
        cache["dtype"] = np.dtype(np.float64)

    def key_deleted(cache):
        del cache["lengths"]

    return {f.__name__: f for f in (lengths_huge, lengths_short, weight_rebound, input_shrunk,
                                     output_shrunk, h0_wrong, layers_more, layer_dropped,
                                     dtype_changed, key_deleted)}


TAMPER = _tamper_cases()


@pytest.mark.parametrize("tamper", TAMPER.values(), ids=TAMPER.keys())
def test_backward_refuses_a_tampered_cache(tamper):
    """The cache is a plain dict: an entry changed by hand is refused with a clear error
    before any kernel reads it."""
    x, h0, lengths, gy, ghn = inputs_for(lengths_kind="ragged")
    _, _, cache = functional.rnn_forward(x, params_for(), h0, lengths=lengths,
                                         num_layers=LAYERS, bidirectional=True)
    tamper(cache)
    with pytest.raises((ValueError, TypeError), match="cache"):
        functional.rnn_backward(cache, gy, ghn)


def test_forward_without_cache_returns_writable_output():
    x, h0, _, _, _ = inputs_for()
    kwargs = dict(num_layers=LAYERS, bidirectional=True)
    out, h_n, cache = functional.rnn_forward(x, params_for(), h0, keep_cache=False, **kwargs)
    want_out, want_hn, _ = functional.rnn_forward(x, params_for(), h0, **kwargs)
    assert cache is None and out.flags.writeable
    assert np.array_equal(out, want_out) and np.array_equal(h_n, want_hn)
