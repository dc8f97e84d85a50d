"""fastrnn.torch.LSTM and fastrnn.torch.GRU against torch.nn.LSTM and torch.nn.GRU:
constructor, parameters, outputs, gradients (every option, proj_size included), gradcheck,
training with Adam (RNN too), autograd contracts, refusals.

torch's own modules are the independent reference (same weights via state_dict).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import PackedSequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402
from fastrnn import functional  # noqa: E402
from test_torch_adapter import (LAYOUTS, TORCH_DTYPES, H, I, L, N,  # noqa: E402
                                assert_tensors_close, layout_inputs, output_data)

# (module name, proj_size): the LSTM with and without a projection, the GRU
CELLS = [pytest.param(("LSTM", 0), id="lstm"), pytest.param(("LSTM", 3), id="lstm-proj"),
         pytest.param(("GRU", 0), id="gru")]
WITH_RNN = CELLS + [pytest.param(("RNN", 0), id="rnn")]  # contracts shared with fastrnn.torch.RNN
# oneDNN's bfloat16 LSTM needs these instructions (it refuses the cell on a Zen 3, say)
NATIVE_BF16 = "avx512_bf16" in functional.available_kernels()


def make_pair(name, *args, proj_size=0, **kwargs):
    """torch's module and fastrnn's, built the same way, with the same weights."""
    if proj_size:
        kwargs["proj_size"] = proj_size
    reference = getattr(torch.nn, name)(*args, **kwargs)
    module = getattr(ft, name)(*args, **kwargs)
    module.load_state_dict(reference.state_dict())
    return reference, module


def initial_states(name, h0, proj_size, hidden_size=H):
    """hx for the module: h0 (P wide with a projection) and, for an LSTM, a c0 (H wide)."""
    if h0 is None:
        return None
    if name != "LSTM":
        return h0
    c0 = (0.5 * torch.randn(*h0.shape[:-1], hidden_size, dtype=h0.dtype)).requires_grad_()
    if proj_size:
        h0 = h0[..., :proj_size].detach().clone().requires_grad_()
    return h0, c0


def state_tensors(state):
    """h_n, or h_n and c_n, as a tuple (empty for None)."""
    if state is None:
        return ()
    return tuple(state) if isinstance(state, tuple) else (state,)


def run(module, make_input, x, hx, grads=None):
    """Forward, then backward of Σ output·g + Σ state·g; returns the results, the
    gradients of x, of every initial state and of every parameter, and the g used."""
    for t in (x, *state_tensors(hx)):
        t.grad = None
    module.zero_grad()
    out, state = module(make_input(x), hx)
    out_data = out.data if isinstance(out, PackedSequence) else out
    finals = state_tensors(state)
    if grads is None:
        grads = [torch.randn_like(t) for t in (out_data, *finals)]
    loss = sum((t * g).sum() for t, g in zip((out_data, *finals), grads))
    loss.backward()
    return dict(out=out, finals=finals, grad_x=x.grad.clone(),
                grad_states=[t.grad.clone() for t in state_tensors(hx)],
                params={n: p.grad.clone() for n, p in module.named_parameters()}), grads


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=3, bias=False, dropout=0.2,
                                                 bidirectional=True, batch_first=True)],
                         ids=["defaults", "options"])
def test_constructor_parameters_and_state_dict_match_torch(cell, kwargs):
    name, proj = cell
    torch.manual_seed(1)
    reference = getattr(torch.nn, name)(I, H, proj_size=proj, **kwargs) if proj else \
        getattr(torch.nn, name)(I, H, **kwargs)
    torch.manual_seed(1)
    module = getattr(ft, name)(I, H, proj_size=proj, **kwargs) if proj else \
        getattr(ft, name)(I, H, **kwargs)
    assert isinstance(module, getattr(torch.nn, name))
    assert repr(module) == repr(reference)
    names = [n for n, _ in module.named_parameters()]
    assert names == [n for n, _ in reference.named_parameters()]
    for (n, p), q in zip(module.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), f"{n}: torch's initialisation, drawn the same way"
    other = getattr(torch.nn, name)(I, H, proj_size=proj, **kwargs) if proj else \
        getattr(torch.nn, name)(I, H, **kwargs)
    other.load_state_dict(module.state_dict())
    module.load_state_dict(other.state_dict())


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("with_h0", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["layers1", "layers2"])
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_and_gradients_match_torch(cell, num_layers, bidirectional, bias, layout,
                                           with_h0, dtype):
    name, proj = cell
    torch.manual_seed(3)
    reference, module = make_pair(name, I, H, num_layers=num_layers, bias=bias,
                                  bidirectional=bidirectional, proj_size=proj,
                                  batch_first=layout == "batchfirst", dtype=dtype)
    make_input, x, h0, _ = layout_inputs(layout, num_layers, bidirectional, dtype, with_h0)
    hx = initial_states(name, h0, proj)
    expected, grads = run(reference, make_input, x, hx)
    got, _ = run(module, make_input, x, hx, grads)

    out, ref_out = output_data(got["out"], expected["out"], layout)
    assert out.shape == ref_out.shape
    assert_tensors_close(out, ref_out, dtype, "output")
    assert len(got["finals"]) == len(expected["finals"]) == (2 if name == "LSTM" else 1)
    for i, (a, b) in enumerate(zip(got["finals"], expected["finals"])):
        assert a.shape == b.shape
        assert_tensors_close(a, b, dtype, f"final state {i}")
    assert_tensors_close(got["grad_x"], expected["grad_x"], dtype, "grad_x")
    for i, (a, b) in enumerate(zip(got["grad_states"], expected["grad_states"])):
        assert_tensors_close(a, b, dtype, f"grad of initial state {i}")
    assert list(got["params"]) == list(expected["params"])
    for n in expected["params"]:
        assert_tensors_close(got["params"][n], expected["params"][n], dtype, f"grad {n}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional,bias,layout,dropout", [
    (1, False, True, "time", 0.0),
    (2, True, True, "batchfirst", 0.0),
    (2, False, False, "unbatched", 0.0),
    (2, True, True, "packed", 0.0),
    (3, True, True, "time", 0.4),
])
def test_gradcheck(cell, num_layers, bidirectional, bias, layout, dropout):
    name, proj = cell
    torch.manual_seed(9)
    kwargs = dict(proj_size=min(proj, 2)) if proj else {}
    module = getattr(ft, name)(2, 3, num_layers=num_layers, bias=bias,
                               batch_first=layout == "batchfirst", dropout=dropout,
                               bidirectional=bidirectional, dtype=torch.float64, **kwargs)
    make_input, x, h0, _ = layout_inputs(layout, num_layers, bidirectional, torch.float64, True,
                                         seq_len=4, batch=3, input_size=2, hidden_size=3)
    states = state_tensors(initial_states(name, h0, min(proj, 2), hidden_size=3))
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, *tensors):
        torch.manual_seed(10)  # the same dropout masks at every evaluation
        hx = tensors[:len(states)]
        out, state = torch.func.functional_call(
            module, dict(zip(names, tensors[len(states):])),
            (make_input(x), hx if name == "LSTM" else hx[0]))
        return (out.data if isinstance(out, PackedSequence) else out, *state_tensors(state))

    assert torch.autograd.gradcheck(f, (x, *states, *params))


def bidirectional_pair(cell, seed):
    """torch's and fastrnn's 2-layer bidirectional float64 ``cell``, and an input."""
    name, proj = cell
    torch.manual_seed(seed)
    reference, module = make_pair(name, I, H, num_layers=2, bidirectional=True, proj_size=proj,
                                  dtype=torch.float64)
    return reference, module, torch.randn(L, N, I, dtype=torch.float64)


@pytest.mark.parametrize("cell", WITH_RNN)
def test_adam_training_matches_torch(cell):
    reference, module, x = bidirectional_pair(cell, 8)
    target = torch.randn(L, N, 2 * (cell[1] or H), dtype=torch.float64)
    for m in (reference, module):
        optimizer = torch.optim.Adam(m.parameters(), lr=0.01)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(m(x)[0], target).backward()
            optimizer.step()
    for (n, p), q in zip(module.named_parameters(), reference.parameters()):
        assert_tensors_close(p, q, torch.float64, n)


@pytest.mark.parametrize("cell", WITH_RNN)
def test_autograd_contracts(cell):
    """A second backward needs retain_graph; in-place changes to what BPTT reads are caught;
    double backward is refused loudly."""
    name, proj = cell
    kwargs = dict(proj_size=proj) if proj else {}
    module = getattr(ft, name)(I, H, dtype=torch.float64, **kwargs)
    x = torch.randn(L, N, I, dtype=torch.float64, requires_grad=True)
    loss = module(x)[0].sum()
    loss.backward(retain_graph=True)
    once = module.weight_hh_l0.grad.clone()
    loss.backward()
    assert_tensors_close(module.weight_hh_l0.grad, 2 * once, torch.float64, "grad")
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    out, _ = module(x)
    with torch.no_grad():
        module.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    (grad_x,) = torch.autograd.grad(module(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"fastrnn.torch.{name} does not support double"):
        grad_x.sum().backward()


@pytest.mark.parametrize("cell", CELLS)
def test_only_final_states_used(cell):
    reference, module, x = bidirectional_pair(cell, 4)
    x.requires_grad_()
    grads = []
    for m in (module, reference):
        x.grad = None
        state_tensors(m(x)[1])[-1].square().sum().backward()  # c_n for an LSTM, else h_n
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert_tensors_close(a, b, torch.float64, "grad")


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_unsupported_tensors_are_refused(name):
    module = getattr(ft, name)(I, H)
    with pytest.raises(RuntimeError, match=rf"(?s)fastrnn.torch.{name} runs on CPU tensors only"):
        module(torch.randn(L, N, I, device="meta"))
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=rf"torch.float32 and torch.float64 only.*{dtype}"):
            getattr(ft, name)(I, H, dtype=dtype)(torch.randn(L, N, I, dtype=dtype))


@pytest.mark.parametrize("hx", [torch.zeros(1, N, H), (torch.zeros(1, N, H),),
                                [torch.zeros(1, N, H), None]],
                         ids=["tensor", "one-tuple", "none-in-pair"])
def test_lstm_hx_must_be_a_pair_of_tensors(hx):
    with pytest.raises(TypeError, match=r"hx must be a pair \(h_0, c_0\)"):
        ft.LSTM(I, H)(torch.zeros(L, N, I), hx)


# (input shape, h0 shape, c0 shape) with w for h0's width (the projection, or H)
STATE_CASES = {
    "h-size": ((L, N, I), (2, N, "w"), (1, N, H)),  # h0 of the wrong size
    "c-size": ((L, N, I), (1, N, "w"), (1, N, H + 1)),  # c0 of the wrong size
    "2d": ((L, N, I), (1, "w"), (1, H)),  # 2-D states with batched input
    "3d": ((L, I), (1, N, "w"), (1, N, H)),  # 3-D states with unbatched input
}


@pytest.mark.parametrize("cell,case", [
    pytest.param(cell.values[0], case, id=f"{cell.id}-{case}") for cell in CELLS
    for case in STATE_CASES if not (cell.values[0][0] == "GRU" and case == "c-size")])
def test_invalid_states_raise_like_torch(cell, case):
    name, proj = cell
    reference, module = make_pair(name, I, H, proj_size=proj)
    x_shape, h_shape, c_shape = STATE_CASES[case]
    h = torch.zeros([proj or H if d == "w" else d for d in h_shape])
    hx = (h, torch.zeros(c_shape)) if name == "LSTM" else h
    x = torch.zeros(x_shape)
    with pytest.raises((ValueError, RuntimeError)) as expected:
        reference(x, hx)
    with pytest.raises(expected.type) as got:
        module(x, hx)
    assert str(got.value) == str(expected.value)


def test_from_torch_converts_lstm_and_gru_with_the_same_results():
    torch.manual_seed(12)
    model = torch.nn.Sequential()
    model.lstm = torch.nn.LSTM(I, H, proj_size=2, num_layers=2)
    model.gru = torch.nn.GRU(2, H, bidirectional=True)
    x = torch.randn(L, N, I)
    before = model.gru(model.lstm(x)[0])[0].detach()
    ft.from_torch(model)
    assert type(model.lstm) is ft.LSTM and type(model.gru) is ft.GRU
    assert_tensors_close(model.gru(model.lstm(x)[0])[0], before, torch.float32, "output")
    assert np.isfinite(before.numpy()).all()


@pytest.mark.parametrize("cell", WITH_RNN)
@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "frozen"])
def test_forward_without_autograd_keeps_no_cache(cell, context, monkeypatch):
    """With nothing to differentiate (torch.no_grad, inference_mode, or neither the input nor
    any weight requiring a gradient) the forward keeps no BPTT cache, and its results are
    bitwise those of the forward autograd records; 27 rows, ragged, 2 layers, bidirectional
    (for the gated cells the uncached forward saves one row per sequence)."""
    from fastrnn import functional
    name, proj = cell
    kwargs = dict(proj_size=proj) if proj else {}
    module = getattr(ft, name)(I, H, num_layers=2, bidirectional=True, **kwargs)
    x = torch.randn(L, 27, I)
    lengths = torch.randint(1, L + 1, (27,))
    lengths[0] = L
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    recorded = module(packed)
    keep = []
    forward = getattr(functional, f"{name.lower()}_forward")

    def spy(*args, **kw):
        keep.append(kw.get("keep_cache", True))
        return forward(*args, **kw)

    monkeypatch.setattr(functional, f"{name.lower()}_forward", spy)
    if context == "frozen":
        for p in module.parameters():
            p.requires_grad_(False)
        got = module(packed)
    else:
        with getattr(torch, context)():
            got = module(packed)
    assert keep == [False]
    out, finals = got[0].data, state_tensors(got[1])
    assert out.grad_fn is None and not out.requires_grad
    assert torch.equal(out, recorded[0].data)
    for a, b in zip(finals, state_tensors(recorded[1])):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- torch.compile
# (torch's own import of its compiler warns about its own deprecated API)
COMPILER_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(COMPILER_WARNING)
@pytest.mark.parametrize("cell", WITH_RNN)
@pytest.mark.parametrize("grad", [True, False], ids=["train", "no_grad"])
def test_torch_compile_runs_the_module_as_it_is(cell, grad):
    """torch.compile (dynamo) breaks the graph at the module's forward and runs it as it is:
    results and gradients bitwise the uncompiled module's. Tracing into it instead failed
    for the Elman RNN (np.nditer) and took seconds for the others."""
    name, proj = cell
    torch.manual_seed(8)
    module = getattr(ft, name)(I, H, num_layers=2, **(dict(proj_size=proj) if proj else {}))
    x = torch.randn(L, N, I, requires_grad=grad)
    compiled = torch.compile(module, backend="eager", fullgraph=False)
    results = []
    for m in (module, compiled):
        x.grad = None
        module.zero_grad()
        with torch.set_grad_enabled(grad):
            out, state = m(x)
        tensors = [out, *state_tensors(state)]
        if grad:
            sum(t.square().sum() for t in tensors).backward()
            tensors += [x.grad] + [p.grad for p in module.parameters()]
        results.append([t.detach().clone() for t in tensors])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings(COMPILER_WARNING)
def test_torch_compile_of_a_model_around_the_module():
    """The default backend (inductor) compiles what surrounds the module."""
    torch.manual_seed(9)
    model = torch.nn.Sequential(torch.nn.Linear(I, I), ft.GRU(I, H, batch_first=True))
    head = torch.nn.Linear(H, 2)

    def loss(m, x):
        out, h_n = m(x)
        return head(out).square().mean() + h_n.sum()

    x = torch.randn(N, L, I)
    eager = loss(model, x)
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = loss(torch.compile(model), x)
    compiled.backward()
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # (torch.jit.trace's own)
@pytest.mark.parametrize("cell", WITH_RNN)
@pytest.mark.parametrize("how", ["trace-no_grad", "trace", "trace-model", "export"])
def test_trace_and_export_are_refused(cell, how):
    """A trace records torch's operators only: under no_grad the traced module returned the
    traced call's output for every input. Tracing and exporting are refused, saying why."""
    name, proj = cell
    module = getattr(ft, name)(I, H, **(dict(proj_size=proj) if proj else {})).eval()
    x = torch.randn(L, N, I)
    target = torch.nn.Sequential(module) if how == "trace-model" else module
    recorder = "torch.export" if how == "export" else "torch.jit.trace"
    with pytest.raises(RuntimeError,
                       match=rf"{recorder} cannot record fastrnn.torch.{name}.*torch.nn.{name}"):
        if how == "export":
            torch.export.export(target, (x,))
        else:
            with torch.set_grad_enabled(how != "trace-no_grad"):
                torch.jit.trace(target, (x,))
    assert module(x)[0].shape == (L, N, proj or H)  # the module itself still runs


# ---------------------------------------------------------------------------- torch.autocast
def autocast_inputs(name, proj, dtype):
    """x and hx (both states for an LSTM) of ``dtype``, leaves requiring gradients."""
    x = torch.randn(L, N, I).to(dtype).requires_grad_()
    h0 = torch.randn(1, N, proj or H).to(dtype).requires_grad_()
    if name != "LSTM":
        return x, h0
    return x, (h0, torch.randn(1, N, H).to(dtype).requires_grad_())


def results_and_grads(module, x, hx, call):
    """The results of ``call(module, x, hx)`` and the gradients of a loss of them."""
    for t in (x, *state_tensors(hx)):
        t.grad = None
    module.zero_grad()
    out, state = call(module, x, hx)
    results = [out, *state_tensors(state)]
    sum(t.float().square().sum() for t in results).backward()
    return ([t.detach() for t in results]
            + [t.grad for t in (x, *state_tensors(hx))] + [p.grad for p in module.parameters()])


@pytest.mark.parametrize("cell", WITH_RNN)
@pytest.mark.parametrize("lower", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("given", ["float32", "lower"])
def test_autocast_as_torchs_modules(cell, lower, given):
    """Under a CPU torch.autocast, results in the dtypes torch's module gives (the RNN and
    LSTM always in the autocast dtype, the GRU when its input is), values close to torch's,
    and bitwise what the module computes for float32 copies of the arguments (bfloat16
    products for a bfloat16 autocast) converted to that dtype, gradients included."""
    name, proj = cell
    torch.manual_seed(12)
    reference, module = make_pair(name, I, H, proj_size=proj)
    x, hx = autocast_inputs(name, proj, torch.float32 if given == "float32" else lower)

    def autocast(m, x, hx):
        with torch.autocast("cpu", dtype=lower):
            return m(x, hx)

    got = results_and_grads(module, x, hx, autocast)
    try:
        want = results_and_grads(reference, x, hx, autocast)
    except RuntimeError:  # oneDNN's LSTM refuses float32 input under an autocast to a dtype
        # the CPU has no instructions for: float16, and bfloat16 without AVX512_BF16
        assert name == "LSTM" and not proj and given == "float32"
        assert lower == torch.float16 or not NATIVE_BF16
        want = None
    if want is not None:
        for k, (a, b) in enumerate(zip(got, want)):
            if k == 2 and proj and given == "float32":
                # torch's projected LSTM (not oneDNN's) keeps c_n float32 for float32 input;
                # fastrnn gives every result in the autocast dtype
                assert (a.dtype, b.dtype) == (lower, torch.float32)
                continue
            assert a.dtype == b.dtype
        for a, b in zip(got[:3], want[:3]):
            assert torch.allclose(a.float(), b.float(), atol=0.03)
    applies = name != "GRU" or given == "lower"
    out_dtype = lower if applies else torch.float32

    def explicit(m, x, hx):
        m.precision = "bfloat16" if applies and lower == torch.bfloat16 else None
        try:
            out, state = m(x.float(), tuple(s.float() for s in hx) if name == "LSTM"
                           else hx.float())
        finally:
            m.precision = None
        return out.to(out_dtype), (tuple(s.to(out_dtype) for s in state) if name == "LSTM"
                                   else state.to(out_dtype))

    expected = results_and_grads(module, x, hx, explicit)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_autocast_with_packed_sequences_and_float64(cell):
    name, proj = cell
    torch.manual_seed(13)
    _, module = make_pair(name, I, H, proj_size=proj)
    x = torch.randn(L, N, I)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x.bfloat16(), torch.arange(L, L - N, -1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = module(packed)
    module.precision = "bfloat16"
    plain_out, plain_state = module(packed.to(torch.float32))
    assert out.data.dtype == torch.bfloat16
    assert torch.equal(out.data, plain_out.data.bfloat16())
    for a, b in zip(state_tensors(state), state_tensors(plain_state)):
        assert torch.equal(a, b.bfloat16())
    module.precision = None
    module.double()  # autocast leaves float64 alone, as torch's modules
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out64 = module(x.double())[0]
    assert out64.dtype == torch.float64 and torch.equal(out64, module(x.double())[0])


# ---------------------------------------------------------------------------- torch.func
@pytest.mark.parametrize("cell", WITH_RNN)
def test_torch_func_grad_and_vjp_as_autograd(cell):
    """torch.func.grad (of the parameters through functional_call, and of the input) and
    torch.func.vjp give bitwise the gradients autograd gives; 2 layers, h0 given."""
    name, proj = cell
    torch.manual_seed(14)
    module = getattr(ft, name)(I, H, num_layers=2, **(dict(proj_size=proj) if proj else {}))
    x = torch.randn(L, N, I)
    hx = initial_states(name, 0.5 * torch.randn(2, N, H), proj)
    hx = tuple(s.detach() for s in hx) if name == "LSTM" else hx
    params = {k: v.detach() for k, v in module.named_parameters()}

    def loss(p, x):
        out, state = torch.func.functional_call(module, p, (x, hx))
        return out.square().sum() + sum(s.sum() for s in state_tensors(state))

    grads, grad_x = torch.func.grad(loss, argnums=(0, 1))(params, x)
    x_leaf = x.clone().requires_grad_()
    loss(dict(module.named_parameters()), x_leaf).backward()
    assert torch.equal(grad_x, x_leaf.grad)
    for k, p in module.named_parameters():
        assert torch.equal(grads[k], p.grad), k
    out, vjp = torch.func.vjp(lambda t: torch.func.functional_call(module, params, (t,))[0], x)
    cotangent = torch.randn_like(out)
    x_leaf.grad = None
    torch.func.functional_call(module, params, (x_leaf,))[0].backward(cotangent)
    assert torch.equal(vjp(cotangent)[0], x_leaf.grad)


@pytest.mark.parametrize("cell", WITH_RNN)
def test_torch_func_vmap_and_second_order_refused(cell):
    name, proj = cell
    module = getattr(ft, name)(I, H, **(dict(proj_size=proj) if proj else {}))
    params = {k: v.detach() for k, v in module.named_parameters()}

    def loss(p, x):
        return torch.func.functional_call(module, p, (x,))[0].square().sum()

    x = torch.randn(L, N, I)
    with pytest.raises(RuntimeError, match=f"fastrnn.torch.{name} does not support "
                                           f"torch.func.vmap.*torch.nn.{name}"):
        torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1))(params, x[:, :, None])
    with pytest.raises(RuntimeError, match=f"fastrnn.torch.{name} does not support double"):
        torch.func.grad(lambda t: torch.func.grad(loss, argnums=1)(params, t).sum())(x)
