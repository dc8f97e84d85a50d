"""bfloat16 matrix products on the compiled paths (precision="bfloat16") against the
reference's bfloat16 model, torch's bf16 modules, and themselves across thread counts."""

import contextlib

import numpy as np
import pytest

from _gated import gated_inputs, random_gated_params, run_gated
from _helpers import make_inputs, random_params
import fastrnn
from fastrnn import _rnn, functional, reference

CELLS = ["tanh", "relu", "lstm", "lstm-proj", "gru"]
PROJ = 3

# ‖compiled − model‖ ≤ MODEL_TOL·‖model‖ for every result. Measured on these cases (every
# kernel build, 200 resampled cases per cell): at most 3.2e-6, float32 summation order.
MODEL_TOL = 2e-5
# and ‖compiled − model‖ ≤ DISCRIMINATION·‖compiled − float32 result‖: a path that forgot to
# round some product would be as far from the model as from float32 (measured ≤ 1e-3)
DISCRIMINATION = 0.05
# rounded intermediates (h, dA, ...) of the model at least this many float32 ulps from a
# bfloat16 rounding boundary: see _clear_of_ties
TIE_MARGIN_ULPS = 16


@pytest.fixture
def default_precision():
    """Restore the process default precision after the test."""
    previous = fastrnn.get_matmul_precision()
    yield
    fastrnn.set_matmul_precision(previous)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ref = np.linalg.norm(b)
    return np.linalg.norm(a - b) / ref if ref else np.linalg.norm(a)


def _run(api, cell, case, **precision):
    """Forward and backward of ``case`` through ``api``; {result name: array}."""
    params, x, states, gy, gs, kwargs = case
    if cell in ("tanh", "relu"):
        out, hn, cache = api.rnn_forward(x, params, states[0], nonlinearity=cell, **kwargs,
                                         **precision)
        gx, gh0, grads = api.rnn_backward(cache, gy, gs[0])
        finals, g_states = [hn], [gh0]
    else:
        out, finals, gx, g_states, grads = run_gated(api, cell.split("-")[0], params, x, states,
                                                     gy, gs, **kwargs, **precision)
    return dict(output=out, grad_x=gx, **{f"final{i}": f for i, f in enumerate(finals)},
                **{f"grad_state{i}": g for i, g in enumerate(g_states)},
                **{f"grad {k}": v for k, v in grads.items()})


def _make_case(rng, cell, layout, lengths_kind, num_layers, bidirectional, L=6, N=4, I=3, H=5):
    """params, x, [states], grad_output, [grad_states], forward kwargs (float32)."""
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional,
                  batch_first=layout == "batch")
    if cell in ("tanh", "relu"):
        params = random_params(rng, I, H, num_layers, bidirectional, True, np.float32)
        x, h0, lengths, gy, ghn = make_inputs(
            rng, layout=layout, lengths_kind=lengths_kind, with_h0=True, num_layers=num_layers,
            bidirectional=bidirectional, dtype=np.float32, seq_len=L, batch=N, input_size=I,
            hidden_size=H)
        states, gs = [h0], [ghn]
    else:
        name, proj = ("lstm", PROJ) if cell == "lstm-proj" else (cell, 0)
        params = random_gated_params(rng, name, I, H, num_layers, bidirectional, True,
                                     np.float32, proj)
        x, states, lengths, gy, gs = gated_inputs(
            rng, name, layout, lengths_kind, True, num_layers, bidirectional, np.float32, proj,
            seq_len=L, batch=N, input_size=I, hidden_size=H, allow_zero=True)
    return params, x, states, gy, gs, dict(kwargs, lengths=lengths)


@contextlib.contextmanager
def _recording_rounded_operands():
    """The arrays the reference rounds to bfloat16 while in the block."""
    seen, rounding = [], reference.round_to_bfloat16

    def record(a):
        seen.append(np.array(a))
        return rounding(a)

    reference.round_to_bfloat16 = record
    try:
        yield seen
    finally:
        reference.round_to_bfloat16 = rounding


def _clear_of_ties(seen, inputs):
    """Whether every rounded operand that is an intermediate (not a parameter or x: those
    are the same float32 values on both paths) is at least TIE_MARGIN_ULPS float32 ulps from
    the midpoint between two bfloat16 values. The compiled kernels sum in another order, so
    their intermediates differ from the model's by a few float32 ulps; one that lands on the
    other side of a midpoint is rounded one bfloat16 ulp away (2^-8 relative), and through the
    recurrence that spreads to a bfloat16-sized difference: not a bug, and no tight bound
    would hold (measured in ~5 % of random cases). Values below 2^-10 of their array's
    largest are exempt: a change of their ulp is negligible."""
    for a in seen:
        if a.size == 0:
            continue
        values = a.ravel()
        bits = values.view(np.uint32)
        counted = (np.abs(values) >= np.abs(values).max() * 2.0**-10) & ~np.isin(bits, inputs)
        if np.any(np.abs((bits[counted] & 0xFFFF).astype(np.int64) - 0x8000) < TIE_MARGIN_ULPS):
            return False
    return True


def _case_and_model(rng, cell, *options, **sizes):
    """A random case whose bfloat16 model has no intermediate near a rounding tie
    (resampled, as test_reference resamples relu away from its kink), with the model's
    results."""
    for _ in range(100):
        case = _make_case(rng, cell, *options, **sizes)
        inputs = np.concatenate([np.ravel(v) for v in case[0].values()]
                                + [case[1].ravel()]).view(np.uint32)
        with _recording_rounded_operands() as seen:
            model = _run(reference, cell, case, precision="bfloat16")
        if _clear_of_ties(seen, inputs):
            return case, model
    raise AssertionError("no case clear of bfloat16 ties in 100 draws")


def _assert_matches_model(got, model, fp32):
    assert list(got) == list(model)
    discriminating = 0
    for name in model:
        a = np.asarray(got[name])
        assert a.dtype == np.float32 and a.shape == model[name].shape, name
        assert np.all(np.isfinite(a)), name
        err = _rel(a, model[name])
        assert err <= MODEL_TOL, f"{name}: ‖got − model‖/‖model‖ = {err:.3g} > {MODEL_TOL:g}"
        err32 = _rel(a, fp32[name])
        if err32 > 0:  # (a result bf16 does not change, e.g. a dead relu unit's zeros)
            discriminating += 1
            assert err <= DISCRIMINATION * err32, (
                f"{name}: as far from the bf16 model ({err:.3g}) as from float32 ({err32:.3g})")
    assert discriminating >= len(model) // 2  # most results differ between bf16 and float32


LAYOUTS = [pytest.param("time", "ragged", id="time-ragged"),  # lengths include 0
           pytest.param("batch", "short", id="batchfirst-short"),
           pytest.param("time", None, id="time"),
           pytest.param("unbatched", None, id="unbatched")]
STACKS = [pytest.param(1, False, id="layers1-uni"), pytest.param(2, True, id="layers2-bi")]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout,lengths_kind", LAYOUTS)
@pytest.mark.parametrize("num_layers,bidirectional", STACKS)
def test_compiled_bf16_matches_the_reference_model(rng, kernel, cell, layout, lengths_kind,
                                                   num_layers, bidirectional):
    case, model = _case_and_model(rng, cell, layout, lengths_kind, num_layers, bidirectional)
    got = _run(functional, cell, case, precision="bfloat16")
    fp32 = _run(reference, cell, case, precision="float32")
    _assert_matches_model(got, model, fp32)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("sizes", [
    pytest.param(dict(L=5, N=1, I=7, H=128), id="N1-H128"),   # split by columns
    pytest.param(dict(L=5, N=3, I=7, H=130), id="N3-H130"),
    pytest.param(dict(L=4, N=20, I=9, H=24), id="N20-H24"),   # split by batch
])
def test_bf16_is_bitwise_the_same_for_1_and_2_threads(rng, kernel, restore_threads, cell,
                                                      sizes):
    case = _make_case(rng, cell, "time", "ragged", 2, True, **sizes)
    results = []
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        results.append(_run(functional, cell, case, precision="bfloat16"))
    for name in results[0]:
        assert np.array_equal(results[0][name], results[1][name]), name
    assert not np.array_equal(results[0]["output"],
                              _run(functional, cell, case, precision="float32")["output"])


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
def test_bf16_output_error_no_worse_than_torch_bf16(rng, torch, cell):
    L, N, I, H = 20, 8, 32, 64
    params, x, states, _, _, _ = _make_case(rng, cell, "time", None, 1, False, L, N, I, H)
    name = {"tanh": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell]
    module = getattr(torch.nn, name)(I, H)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    hx = tuple(torch.from_numpy(s) for s in states) if cell == "lstm" else torch.from_numpy(
        states[0])
    with torch.no_grad():
        y32 = module(torch.from_numpy(x), hx)[0].numpy()
        module = module.to(torch.bfloat16)
        hx16 = (tuple(s.to(torch.bfloat16) for s in hx) if cell == "lstm"
                else hx.to(torch.bfloat16))
        y16 = module(torch.from_numpy(x).to(torch.bfloat16), hx16)[0].float().numpy()
    forward = getattr(functional, f"{'rnn' if cell == 'tanh' else cell}_forward")
    ours = forward(x, params, tuple(states) if cell == "lstm" else states[0],
                   precision="bfloat16")[0]
    ours32 = forward(x, params, tuple(states) if cell == "lstm" else states[0])[0]
    assert _rel(ours32, y32) < 1e-5  # the same network
    err, torch_err = _rel(ours, y32), _rel(y16, y32)
    assert 0 < err <= torch_err, f"fastrnn bf16 {err:.3g}, torch bf16 {torch_err:.3g}"


# ---------------------------------------------------------------------------------------
# The process default and the precision keyword
# ---------------------------------------------------------------------------------------

def test_set_and_get_matmul_precision(default_precision):
    assert fastrnn.get_matmul_precision() == "float32"  # (FASTRNN_MATMUL_PRECISION unset)
    fastrnn.set_matmul_precision("bfloat16")
    assert fastrnn.get_matmul_precision() == "bfloat16"
    fastrnn.set_matmul_precision("float32")
    assert fastrnn.get_matmul_precision() == "float32"
    for bad in ("bf16", "highest", None, "BFLOAT16"):
        with pytest.raises(ValueError, match="float32.*bfloat16"):
            fastrnn.set_matmul_precision(bad)
    assert fastrnn.get_matmul_precision() == "float32"


@pytest.mark.parametrize("cell", CELLS)
def test_default_and_explicit_precision(rng, default_precision, cell):
    case = _make_case(rng, cell, "time", "ragged", 2, True)
    bf16 = _run(functional, cell, case, precision="bfloat16")
    fp32 = _run(functional, cell, case, precision="float32")
    assert not np.array_equal(bf16["output"], fp32["output"])
    plain = _run(functional, cell, case)
    fastrnn.set_matmul_precision("bfloat16")
    under_bf16 = _run(functional, cell, case)
    explicit_fp32 = _run(functional, cell, case, precision="float32")
    for name in bf16:
        assert np.array_equal(plain[name], fp32[name]), name
        assert np.array_equal(under_bf16[name], bf16[name]), name
        assert np.array_equal(explicit_fp32[name], fp32[name]), name
    with pytest.raises(ValueError, match="bfloat16"):
        _run(functional, cell, case, precision="half")


@pytest.mark.parametrize("cell", CELLS)
def test_backward_uses_the_forwards_precision(rng, default_precision, cell):
    case = _make_case(rng, cell, "time", None, 1, False)
    expected = _run(functional, cell, case, precision="bfloat16")
    params, x, states, gy, gs, kwargs = case
    name = "rnn" if cell in ("tanh", "relu") else cell.split("-")[0]
    extra = dict(nonlinearity=cell) if name == "rnn" else {}
    hx = tuple(states) if name == "lstm" else states[0]
    _, _, cache = getattr(functional, f"{name}_forward")(x, params, hx, precision="bfloat16",
                                                         **kwargs, **extra)
    fastrnn.set_matmul_precision("float32")  # (already; and changing it now changes nothing)
    grad_x = getattr(functional, f"{name}_backward")(
        cache, gy, tuple(gs) if name == "lstm" else gs[0])[0]
    assert np.array_equal(grad_x, expected["grad_x"])


@pytest.mark.parametrize("cell", CELLS)
def test_float64_refuses_bf16_and_ignores_the_default(rng, default_precision, cell):
    params, x, states, gy, gs, kwargs = _make_case(rng, cell, "time", "short", 2, True)
    case64 = ({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64),
              [s.astype(np.float64) for s in states], gy.astype(np.float64),
              [g.astype(np.float64) for g in gs], kwargs)
    with pytest.raises(ValueError, match="float32"):
        _run(functional, cell, case64, precision="bfloat16")
    plain = _run(functional, cell, case64)
    fastrnn.set_matmul_precision("bfloat16")
    under_bf16 = _run(functional, cell, case64)
    for name in plain:
        assert under_bf16[name].dtype == np.float64
        assert np.array_equal(under_bf16[name], plain[name]), name
    # and the result is float64's: the float64 reference within 1e-10
    expected = _run(reference, cell, case64)
    for name in plain:
        assert _rel(plain[name], expected[name]) < 1e-10, name


# ---------------------------------------------------------------------------------------
# Modules and streams
# ---------------------------------------------------------------------------------------

MODULES = [pytest.param("RNN", {}, id="RNN"), pytest.param("LSTM", {}, id="LSTM"),
           pytest.param("LSTM", dict(proj_size=PROJ), id="LSTM-proj"),
           pytest.param("GRU", {}, id="GRU")]


def _functional_of(module_name, module, x):
    name = "rnn" if module_name == "RNN" else module_name.lower()
    params = {k: np.array(p.data) for k, p in module.named_parameters()}
    return getattr(functional, f"{name}_forward")(
        x, params, num_layers=module.num_layers, bidirectional=module.bidirectional,
        precision="bfloat16")


@pytest.mark.parametrize("module_name,options", MODULES)
def test_module_bf16_forward_and_backward_equal_functional(rng, default_precision,
                                                           module_name, options):
    module = getattr(fastrnn, module_name)(5, 8, num_layers=2, bidirectional=True, seed=3,
                                           precision="bfloat16", **options)
    assert module.precision == "bfloat16"
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    out, state = module(x)
    expected, expected_state, cache = _functional_of(module_name, module, x)
    assert np.array_equal(out, expected)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    expected_state if isinstance(expected_state, tuple) else (expected_state,)):
        assert np.array_equal(a, b)
    gy = rng.standard_normal(out.shape).astype(np.float32)
    grad_x = module.backward(gy)[0]
    name = "rnn" if module_name == "RNN" else module_name.lower()
    assert np.array_equal(grad_x, getattr(functional, f"{name}_backward")(cache, gy)[0])
    # float32 modules follow the default when they run; bf16 ones keep theirs
    plain = getattr(fastrnn, module_name)(5, 8, num_layers=2, bidirectional=True, seed=3,
                                          **options)
    assert plain.precision is None
    fp32_out = plain(x)[0]
    assert not np.array_equal(fp32_out, out)
    fastrnn.set_matmul_precision("bfloat16")
    assert np.array_equal(plain(x)[0], out)
    assert np.array_equal(module(x)[0], out)
    fastrnn.set_matmul_precision("float32")
    assert np.array_equal(plain(x)[0], fp32_out)
    explicit = getattr(fastrnn, module_name)(5, 8, num_layers=2, bidirectional=True, seed=3,
                                             precision="float32", **options)
    fastrnn.set_matmul_precision("bfloat16")
    assert np.array_equal(explicit(x)[0], fp32_out)


@pytest.mark.parametrize("module_name,options", MODULES)
def test_module_refuses_bf16_for_float64_and_bad_names(module_name, options):
    with pytest.raises(ValueError, match="float32"):
        getattr(fastrnn, module_name)(3, 4, dtype=np.float64, precision="bfloat16", **options)
    with pytest.raises(ValueError, match="bfloat16"):
        getattr(fastrnn, module_name)(3, 4, precision="fp16", **options)


@pytest.mark.parametrize("module_name,options", MODULES)
@pytest.mark.parametrize("steps", [3, 40])  # (short forwards run on the module's own stream)
def test_bf16_stream_equals_the_bf16_forward(rng, default_precision, module_name, options,
                                             steps):
    module = getattr(fastrnn, module_name)(5, 8, num_layers=2, seed=4, precision="bfloat16",
                                           **options).eval()
    x = rng.standard_normal((steps, 3, 5)).astype(np.float32)
    expected = _functional_of(module_name, module, x)[0]
    assert np.array_equal(module(x)[0], expected)
    stream = module.stream(3)
    assert stream.precision == "bfloat16"
    # (copies: a stream's output may be its own buffer, reused by the next call)
    chunks = [np.array(stream(x[:2])), np.array(stream(x[2:]))]
    assert np.array_equal(np.concatenate(chunks), expected)
    step_by_step = module.stream(3)
    assert np.array_equal(np.stack([np.array(step_by_step(x[t])) for t in range(steps)]), expected)
    # a float32 module's stream takes the default of when it was made
    plain = getattr(fastrnn, module_name)(5, 8, num_layers=2, seed=4, **options).eval()
    fastrnn.set_matmul_precision("bfloat16")
    made_under_bf16 = plain.stream(3)
    fastrnn.set_matmul_precision("float32")
    assert made_under_bf16.precision == "bfloat16"
    assert np.array_equal(made_under_bf16(x), expected)


def test_bf16_subnormals_are_zero_on_the_native_build_only(kernel):
    """vdpbf16ps (the avx512_bf16 build) treats subnormal operands as zero and flushes
    subnormal products; the rounding builds keep both, as the reference model does. float32
    subnormals lie below 1.2e-38, far under anything an RNN's weights and states hold."""
    tiny = np.full((8, 32), 1e-39, np.float32)   # subnormal operands (float32 and bf16)
    small = np.full((8, 32), 1e-20, np.float32)  # normal operands, subnormal products 1e-39
    ones, smaller = np.ones((32, 32), np.float32), np.full((32, 32), 1e-19, np.float32)
    for a, b in ((tiny, ones), (small, smaller)):
        c = np.zeros((8, 32), np.float32)
        _rnn.gemm(a, b, c, None, False, 1, bf16=True)
        if kernel == "avx512_bf16":
            assert not c.any()
        else:  # 32 products of about 1e-39: a normal sum near 3.2e-38
            assert np.allclose(c, 3.2e-38, rtol=0.02, atol=0)
