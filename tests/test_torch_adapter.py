"""fastrnn.torch.RNN against torch.nn.RNN: constructor, parameters, outputs, gradients, errors.

torch.nn.RNN is the independent reference throughout (same weights via state_dict);
torch.autograd.gradcheck checks the backward against finite differences of the forward.
"""

import copy
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from _helpers import assert_close_rel, make_lengths  # noqa: E402

L, N, I, H = 6, 4, 3, 5
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
TORCH_DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
LAYOUTS = ["time", "batchfirst", "unbatched", "packed", "packed-sorted"]


def assert_tensors_close(a, b, dtype, name):
    assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
    assert_close_rel(a.detach().numpy(), b.detach().numpy(), NP_DTYPE[dtype], name=name)


def flat_results(result):
    """(output, h_n) or, for an LSTM, (output, h_n, c_n) of a module's call."""
    output, state = result
    return (output, *state) if isinstance(state, tuple) else (output, state)


def make_pair(*args, **kwargs):
    """torch.nn.RNN and fastrnn.torch.RNN built the same way, with the same weights."""
    reference = torch.nn.RNN(*args, **kwargs)
    module = ft.RNN(*args, **kwargs)
    module.load_state_dict(reference.state_dict())
    return reference, module


def layout_inputs(layout, num_layers, bidirectional, dtype, with_h0, seq_len=L, batch=N,
                  input_size=I, hidden_size=H):
    """(make_input(x) -> module input, x leaf, h0 leaf or None, lengths or None)."""
    D = 2 if bidirectional else 1
    if layout == "unbatched":
        x = torch.randn(seq_len, input_size, dtype=dtype)
        h_shape = (D * num_layers, hidden_size)
    else:
        x = torch.randn(*((batch, seq_len) if layout == "batchfirst" else (seq_len, batch)),
                        input_size, dtype=dtype)
        h_shape = (D * num_layers, batch, hidden_size)
    h0 = 0.5 * torch.randn(h_shape, dtype=dtype) if with_h0 else None
    lengths = None
    if layout.startswith("packed"):
        lengths = torch.from_numpy(make_lengths("ragged", seq_len, batch, allow_zero=False))
        if layout == "packed-sorted":
            lengths = lengths.sort(descending=True).values
    sorted_ok = layout == "packed-sorted"

    def make_input(x):
        if lengths is None:
            return x
        return pack_padded_sequence(x, lengths, enforce_sorted=sorted_ok)

    return make_input, x.requires_grad_(), None if h0 is None else h0.requires_grad_(), lengths


def output_data(out, ref_out, layout):
    """The outputs' data, checking that packed outputs are packed like torch's."""
    if not layout.startswith("packed"):
        return out, ref_out
    assert isinstance(out, PackedSequence)
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        a, b = getattr(out, field), getattr(ref_out, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    return out.data, ref_out.data


def run(module, make_input, x, h0, grad_output, grad_h_n):
    """Forward, then backward of Σ output·g + Σ h_n·g; returns results and gradients."""
    x.grad = None
    if h0 is not None:
        h0.grad = None
    module.zero_grad()
    out, h_n = module(make_input(x), h0)
    out_data = out.data if isinstance(out, PackedSequence) else out
    if grad_output is None:
        grad_output = torch.randn_like(out_data)
        grad_h_n = torch.randn_like(h_n)
    ((out_data * grad_output).sum() + (h_n * grad_h_n).sum()).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return out, h_n, x.grad.clone(), None if h0 is None else h0.grad.clone(), grads, \
        grad_output, grad_h_n


# ------------------------------------------------------------------------------ no torch
def test_import_fastrnn_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np, fastrnn
        out, h_n = fastrnn.RNN(3, 4, seed=0)(np.zeros((2, 1, 3), dtype=np.float32))
        assert out.shape == (2, 1, 4)
        try:
            import fastrnn.torch
        except ImportError as e:
            assert "fastrnn[torch]" in str(e), e
        else:
            raise AssertionError("fastrnn.torch imported without torch")
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastrnn.__file__)), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_module_uses_real_torch():
    assert ft.torch is torch
    assert issubclass(ft.RNN, torch.nn.RNN)


# ---------------------------------------------------------------------- constructor, params
@pytest.mark.parametrize("args,kwargs", [
    ((3, 5), {}),
    ((3, 5, 2, "relu", False, True, 0.25, True), {}),
    ((3, 5), dict(num_layers=3, nonlinearity="relu", bias=False, batch_first=True,
                  dropout=0.5, bidirectional=True, device="cpu", dtype=torch.float64)),
    ((), dict(input_size=4, hidden_size=2, dtype=torch.float16)),
], ids=["defaults", "positional", "keywords", "half-builds"])
def test_constructor_parameters_and_init_match_torch(args, kwargs):
    torch.manual_seed(7)
    reference = torch.nn.RNN(*args, **kwargs)
    torch.manual_seed(7)
    module = ft.RNN(*args, **kwargs)
    assert repr(module) == repr(reference)
    ref_params = list(reference.named_parameters())
    params = list(module.named_parameters())
    assert [n for n, _ in params] == [n for n, _ in ref_params]
    for (name, p), (_, q) in zip(params, ref_params):
        assert p.shape == q.shape and p.dtype == q.dtype and p.device == q.device, name
        assert torch.equal(p, q), f"{name}: initialisation differs from torch.nn.RNN"
    for attr in ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias",
                 "batch_first", "dropout", "bidirectional", "_flat_weights_names"):
        assert getattr(module, attr) == getattr(reference, attr), attr


@pytest.mark.parametrize("kwargs", [dict(proj_size=2), dict(nonlinearity="gelu")])
def test_constructor_errors_match_torch(kwargs):
    with pytest.raises(ValueError) as expected:
        torch.nn.RNN(3, 5, **kwargs)
    with pytest.raises(ValueError) as got:
        ft.RNN(3, 5, **kwargs)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("direction", ["torch-to-fastrnn", "fastrnn-to-torch"])
def test_state_dict_loads_both_ways(direction):
    kwargs = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    torch.manual_seed(1)
    source = (torch.nn.RNN if direction == "torch-to-fastrnn" else ft.RNN)(I, H, **kwargs)
    target = (ft.RNN if direction == "torch-to-fastrnn" else torch.nn.RNN)(I, H, **kwargs)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))  # strict: same keys and shapes
    x = torch.randn(L, N, I, dtype=torch.float64)
    for a, b in zip(target(x), source(x)):
        assert_tensors_close(a, b, torch.float64, "output")


def test_deepcopy_keeps_class_and_results():
    module = ft.RNN(I, H, num_layers=2)
    clone = copy.deepcopy(module)
    assert type(clone) is ft.RNN
    x = torch.randn(L, N, I)
    assert torch.equal(clone(x)[0], module(x)[0])


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("convert", ["double", "to_float64", "type_float64", "float", "cpu",
                                     "to_cpu", "share_memory"])
def test_module_conversions_are_torchs(name, convert):
    """torch's Module methods built on Module._apply (dtype and device conversions,
    share_memory) work on the adapter's modules as on torch's own, same results after."""
    torch.manual_seed(7)
    reference = getattr(torch.nn, name)(I, H, num_layers=2)
    module = getattr(ft, name)(I, H, num_layers=2)
    module.load_state_dict(reference.state_dict())
    how = {"double": lambda m: m.double(), "to_float64": lambda m: m.to(torch.float64),
           "type_float64": lambda m: m.type(torch.float64), "float": lambda m: m.float(),
           "cpu": lambda m: m.cpu(), "to_cpu": lambda m: m.to("cpu"),
           "share_memory": lambda m: m.share_memory()}[convert]
    assert how(module) is module
    how(reference)
    dtype = reference.weight_ih_l0.dtype
    assert all(p.dtype == dtype for p in module.parameters())
    x = torch.randn(L, N, I, dtype=dtype)
    for got, want in zip(flat_results(module(x)), flat_results(reference(x))):
        assert_tensors_close(got, want, dtype, convert)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_parametrized_weights_are_used(name, grad):
    """A weight behind torch.nn.utils.parametrize (weight_norm here: the name becomes a
    property computed from two parameters) is read as torch reads it, and its gradient
    reaches the parametrization's own parameters."""
    torch.manual_seed(11)
    reference = getattr(torch.nn, name)(I, H)
    module = getattr(ft, name)(I, H)
    module.load_state_dict(reference.state_dict())
    for m in (reference, module):
        torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
        with torch.no_grad():  # a norm unlike the weight's own, so that it matters
            m.parametrizations.weight_hh_l0.original0.mul_(0.5)
    x = torch.randn(L, N, I)
    with torch.set_grad_enabled(grad):
        results = [flat_results(m(x)) for m in (reference, module)]
    for got, want in zip(results[1], results[0]):
        assert_tensors_close(got, want, torch.float32, name)
    if grad:
        for results_m in results:
            sum(r.sum() for r in results_m).backward()
        for (n, p), q in zip(reference.named_parameters(), module.parameters()):
            assert_tensors_close(q.grad, p.grad, torch.float32, n)


# ---------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("with_h0", [False, True], ids=["noh0", "h0"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["layers1", "layers2"])
def test_outputs_and_gradients_match_torch(num_layers, bidirectional, nonlinearity, bias, layout,
                                           with_h0, dtype):
    torch.manual_seed(3)
    reference, module = make_pair(I, H, num_layers=num_layers, nonlinearity=nonlinearity,
                                  bias=bias, bidirectional=bidirectional,
                                  batch_first=layout == "batchfirst", dtype=dtype)
    make_input, x, h0, _ = layout_inputs(layout, num_layers, bidirectional, dtype, with_h0)
    *expected, grad_output, grad_h_n = run(reference, make_input, x, h0, None, None)
    *got, _, _ = run(module, make_input, x, h0, grad_output, grad_h_n)

    out, ref_out = output_data(got[0], expected[0], layout)
    assert out.shape == ref_out.shape and got[1].shape == expected[1].shape
    assert_tensors_close(out, ref_out, dtype, "output")
    for name, a, b in zip(["h_n", "grad_x", "grad_h0"], got[1:4], expected[1:4]):
        if b is not None:
            assert_tensors_close(a, b, dtype, name)
    assert list(got[4]) == list(expected[4])
    for name in expected[4]:
        assert_tensors_close(got[4][name], expected[4][name], dtype, f"grad {name}")


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("layout", ["tensor", "packed"])
@pytest.mark.parametrize("x_grad,frozen", [(False, "none"), (True, "all"),
                                           (True, "first layer"), (True, "none")],
                         ids=["features", "frozen-weights", "frozen-first-layer", "all"])
def test_backward_skips_gradients_nobody_asked_for(name, layout, x_grad, frozen, monkeypatch):
    """An input that does not require grad (features, not an embedding's output) or frozen
    weights (a saliency map, a fine-tuned top layer): BPTT is asked for only what autograd
    needs (the first layer's dX product, frozen layers' weight products skipped), and what
    is asked for is torch's."""
    torch.manual_seed(9)
    reference = getattr(torch.nn, name)(I, H, num_layers=2, bidirectional=True)
    module = getattr(ft, name)(I, H, num_layers=2, bidirectional=True)
    module.load_state_dict(reference.state_dict())
    backward_name = f"{name.lower()}_backward"
    asked = []
    real = getattr(ft.functional, backward_name)

    def spy(*args, **kwargs):
        asked.append((kwargs["input_grad"], set(kwargs["param_grads"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(ft.functional, backward_name, spy)
    x = torch.randn(L, N, I, requires_grad=x_grad)
    h0 = torch.randn(4, N, H, requires_grad=True)  # its gradient is always computed
    hx = (h0, torch.zeros(4, N, H)) if name == "LSTM" else h0
    lengths = torch.tensor([L, 3, L - 1, 2])
    trained = [n for n, _ in module.named_parameters()
               if frozen == "none" or frozen == "first layer" and "_l0" not in n]
    grads = []
    for m in (reference, module):
        for n, p in m.named_parameters():
            p.requires_grad_(n in trained)
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if layout == "packed" \
            else x
        out, _ = m(inp, hx)
        (out.data if layout == "packed" else out).pow(2).sum().backward()
        params = dict(m.named_parameters())
        assert [n for n in params if params[n].grad is not None] == trained
        grads.append([h0.grad.clone(), *(params[n].grad for n in trained),
                      *([x.grad.clone()] if x_grad else [])])
        x.grad = h0.grad = None
    for got, want in zip(grads[1], grads[0]):
        assert_tensors_close(got, want, torch.float32, "gradient")
    assert asked == [(x_grad, set(trained))]


@pytest.mark.parametrize("lengths", [[5, 5], [5, 3]], ids=["whole", "ragged"])
def test_packed_output_may_be_modified_in_place(lengths):
    """As with torch's RNN and GRU, a packed output's data is the caller's to modify before
    backward (whole and ragged sequences alike)."""
    module = ft.GRU(I, H)
    x = torch.randn(5, 2, I, requires_grad=True)
    out, _ = module(pack_padded_sequence(x, torch.tensor(lengths)))
    out.data.mul_(2)
    out.data.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("order", ["identity", "permuted", "none"])
def test_packed_whole_sequences_match_torch(name, bidirectional, order):
    """A PackedSequence whose sequences are all whole runs on views of its data (no
    unpacking): outputs, states and gradients are torch's for any sorted order, with hx
    in the caller's batch order."""
    torch.manual_seed(5)
    reference = getattr(torch.nn, name)(I, H, num_layers=2, bidirectional=bidirectional)
    module = getattr(ft, name)(I, H, num_layers=2, bidirectional=bidirectional)
    module.load_state_dict(reference.state_dict())
    D = 2 if bidirectional else 1
    sizes = torch.full((L,), N, dtype=torch.int64)
    perm = {"identity": torch.arange(N), "permuted": torch.tensor([2, 0, 3, 1]),
            "none": None}[order]
    inverse = None if perm is None else torch.argsort(perm)
    data = torch.randn(L * N, I, requires_grad=True)
    hx = 0.5 * torch.randn(D * 2, N, H)
    hx = (hx, torch.randn_like(hx)) if name == "LSTM" else hx
    results, grads = [], []
    for m in (reference, module):
        data.grad = None
        out, state = m(PackedSequence(data, sizes, perm, inverse), hx)
        assert torch.equal(out.batch_sizes, sizes)
        flat = (out.data, *(state if isinstance(state, tuple) else (state,)))
        sum((r * torch.linspace(-1, 1, r.numel()).view_as(r)).sum() for r in flat).backward()
        results.append(flat)
        grads.append([data.grad.clone(), *(p.grad for p in m.parameters())])
        m.zero_grad()
    for got, want in zip(results[1], results[0]):
        assert_tensors_close(got, want, torch.float32, "result")
    for got, want in zip(grads[1], grads[0]):
        assert_tensors_close(got, want, torch.float32, "gradient")


@pytest.mark.parametrize("used", ["output", "h_n"])
def test_gradients_when_only_one_result_is_used(used):
    torch.manual_seed(4)
    reference, module = make_pair(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(L, N, I, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (module, reference):
        x.grad = None
        out, h_n = m(x)
        (out if used == "output" else h_n).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        assert_tensors_close(a, b, torch.float64, "grad")


def test_non_contiguous_inputs():
    torch.manual_seed(5)
    reference, module = make_pair(I, H, num_layers=2, dtype=torch.float64)
    x = torch.randn(N, L, I, dtype=torch.float64).transpose(0, 1)
    h0 = torch.randn(N, 2, H, dtype=torch.float64).transpose(0, 1)
    assert not x.is_contiguous() and not h0.is_contiguous()
    for a, b in zip(module(x, h0), reference(x, h0)):
        assert_tensors_close(a, b, torch.float64, "result")


def test_forward_sees_zero_copy_views(monkeypatch):
    seen = {}
    real_forward = ft.functional.rnn_forward

    def spy(x, params, h0=None, **kwargs):
        seen.update(x=x, params=params, h0=h0)
        return real_forward(x, params, h0, **kwargs)

    monkeypatch.setattr(ft.functional, "rnn_forward", spy)
    module = ft.RNN(I, H, num_layers=2)
    x, h0 = torch.randn(L, N, I), torch.randn(2, N, H)
    module(x, h0)
    assert np.shares_memory(seen["x"], x.numpy())
    assert np.shares_memory(seen["h0"], h0.numpy())
    for name, p in module.named_parameters():
        assert np.shares_memory(seen["params"][name], p.detach().numpy()), name


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_forward_without_autograd(context):
    torch.manual_seed(6)
    reference, module = make_pair(I, H, num_layers=2)
    x = torch.randn(L, N, I)
    with getattr(torch, context)():
        out, h_n = module(x)
    assert out.grad_fn is None and not out.requires_grad
    assert_tensors_close(out, reference(x)[0], torch.float32, "output")


# ------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("num_layers,bidirectional,nonlinearity,bias,layout,dropout", [
    (1, False, "tanh", True, "time", 0.0),
    (2, True, "tanh", True, "batchfirst", 0.0),
    (2, False, "relu", False, "unbatched", 0.0),
    (2, True, "tanh", False, "packed", 0.0),
    (3, True, "relu", True, "time", 0.4),
    (2, False, "tanh", True, "packed", 0.5),
])
def test_gradcheck(num_layers, bidirectional, nonlinearity, bias, layout, dropout):
    torch.manual_seed(9)
    module = ft.RNN(2, 3, num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                    batch_first=layout == "batchfirst", dropout=dropout,
                    bidirectional=bidirectional, dtype=torch.float64)
    make_input, x, h0, _ = layout_inputs(layout, num_layers, bidirectional, torch.float64, True,
                                         seq_len=4, batch=3, input_size=2, hidden_size=3)
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, h0, *params):
        torch.manual_seed(10)  # the same dropout masks at every evaluation
        out, h_n = torch.func.functional_call(module, dict(zip(names, params)),
                                              (make_input(x), h0))
        return (out.data if isinstance(out, PackedSequence) else out), h_n

    assert torch.autograd.gradcheck(f, (x, h0, *params))


# --------------------------------------------------------------------------------- dropout
def test_dropout_follows_torch_seed_and_mode():
    module = ft.RNN(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    reference = torch.nn.RNN(I, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    reference.load_state_dict(module.state_dict())
    x = torch.randn(L, N, I, dtype=torch.float64)
    torch.manual_seed(0)
    first = module(x)[0]
    torch.manual_seed(0)
    assert torch.equal(module(x)[0], first)
    torch.manual_seed(1)
    assert not torch.equal(module(x)[0], first)
    module.eval(), reference.eval()
    assert not torch.equal(module(x)[0], first)
    assert_tensors_close(module(x)[0], reference(x)[0], torch.float64, "eval output")


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_dropout_masks_scale_and_rate(p):
    # layer 1 copies its dropped-out input: relu(m ⊙ out0 · Iᵀ + h · 0) = m ⊙ out0 (out0 ≥ 0)
    torch.manual_seed(11)
    module = ft.RNN(I, H, num_layers=2, nonlinearity="relu", bias=False, dropout=p,
                    dtype=torch.float64)
    with torch.no_grad():
        module.weight_ih_l1.copy_(torch.eye(H))
        module.weight_hh_l1.zero_()
    layer0 = torch.nn.RNN(I, H, nonlinearity="relu", bias=False, dtype=torch.float64)
    layer0.load_state_dict({"weight_ih_l0": module.weight_ih_l0,
                            "weight_hh_l0": module.weight_hh_l0})
    x = torch.randn(40, 16, I, dtype=torch.float64)
    out0 = layer0(x)[0].detach()
    out = module(x)[0].detach()
    active = out0 > 0
    mask = out[active] / out0[active]
    assert active.sum() > 500
    if p == 1.0:
        assert torch.all(out == 0)
        return
    kept = mask != 0
    assert torch.allclose(mask[kept], torch.full_like(mask[kept], 1 / (1 - p)))
    assert abs(kept.double().mean().item() - (1 - p)) < 0.05


# ---------------------------------------------------------------------- autograd contracts
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_backward_frees_the_cache(monkeypatch, name):
    """The BPTT cache lives as long as torch keeps the saved tensors: through a backward with
    retain_graph, freed by the last backward although the graph (loss) is still alive."""
    import weakref

    refs = []
    forward_name = f"{name.lower()}_forward"
    real_forward = getattr(ft.functional, forward_name)

    def spy(*args, **kwargs):
        out, h_n, cache = real_forward(*args, **kwargs)
        refs.append(weakref.ref(cache["layer_outputs"][0]))  # layer 0's outputs: internal
        return out, h_n, cache

    monkeypatch.setattr(ft.functional, forward_name, spy)
    module = getattr(ft, name)(I, H, num_layers=2)
    loss = module(torch.randn(L, N, I))[0].sum()
    alive = refs[0]() is not None  # (not inside assert: pytest would keep the array alive)
    assert alive
    loss.backward(retain_graph=True)
    alive = refs[0]() is not None
    assert alive, "retain_graph: the BPTT cache was freed"
    loss.backward()
    assert refs[0]() is None, "the BPTT cache outlived backward"


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("how", ["checkpoint", "checkpoint-reentrant", "copying-hooks"])
def test_saved_tensor_hooks(name, how):
    """Activation checkpointing (which drops what forward saves and recomputes it in
    backward) and saved-tensor hooks that copy what is saved give the gradients of a plain
    backward, bit for bit."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    module = getattr(ft, name)(I, H, num_layers=2, dtype=torch.float64)
    x = torch.randn(L, N, I, dtype=torch.float64, requires_grad=True)

    def gradients(run):
        module.zero_grad()
        x.grad = None
        run().pow(2).sum().backward()
        return [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]

    expected = gradients(lambda: module(x)[0])
    if how == "copying-hooks":
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            got = gradients(lambda: module(x)[0])
    else:
        got = gradients(lambda: checkpoint(lambda inp: module(inp)[0], x,
                                           use_reentrant=how == "checkpoint-reentrant"))
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, modified", [
    (name, modified) for name in ("RNN", "LSTM")
    for modified in ("output", "weight", "input", "h0") + (("c0",) if name == "LSTM" else ())])
def test_in_place_modification_before_backward_is_an_error(name, modified):
    """What BPTT reads is saved for backward, not copied: changing it in place in between is
    torch's error, as for torch's modules."""
    module = getattr(ft, name)(I, H)
    x = torch.randn(L, N, I, requires_grad=modified == "input")
    states = (torch.randn(1, N, H), torch.randn(1, N, H))
    out, _ = module(x, states if name == "LSTM" else states[0])
    with torch.no_grad():
        {"output": out, "weight": module.weight_hh_l0, "input": x, "h0": states[0],
         "c0": states[1]}[modified].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# ------------------------------------------------------------------------------ from_torch
class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, I)
        self.encoder = torch.nn.RNN(I, H, num_layers=2, bidirectional=True)
        self.stack = torch.nn.ModuleList([torch.nn.RNN(2 * H, H), torch.nn.LSTM(H, H),
                                          torch.nn.GRU(H, H)])
        self.custom = type("MyRNN", (torch.nn.RNN,), {})(H, H)

    def forward(self, tokens):
        y = self.embed(tokens)
        y = self.stack[0](self.encoder(y)[0])[0]
        return self.custom(self.stack[2](self.stack[1](y)[0])[0])[0]


def test_from_torch_converts_in_place():
    torch.manual_seed(12)
    model = _Model()
    tokens = torch.randint(0, 10, (L, N))
    before = model(tokens).detach()
    params = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    assert ft.from_torch(model) is model
    assert type(model.encoder) is ft.RNN and type(model.stack[0]) is ft.RNN
    assert type(model.stack[1]) is ft.LSTM and type(model.stack[2]) is ft.GRU
    assert type(model.custom).__name__ == "MyRNN"  # subclasses keep their own forward
    assert all(p is params[name] for name, p in model.named_parameters())
    assert_tensors_close(model(tokens), before, torch.float32, "output")

    weight = model.encoder.weight_hh_l0.detach().clone()
    model(tokens).sum().backward()
    optimizer.step()  # the optimizer built before the conversion still owns the parameters
    assert not torch.equal(model.encoder.weight_hh_l0, weight)


def test_from_torch_converts_a_bare_rnn_and_refuses_non_modules():
    rnn = torch.nn.RNN(I, H)
    assert type(ft.from_torch(rnn)) is ft.RNN
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ft.from_torch("not a module")


# ---------------------------------------------------------------------- unsupported inputs
@pytest.mark.parametrize("what", ["model", "input", "hx"])
def test_non_cpu_tensors_are_refused(what):
    module = ft.RNN(I, H, device="meta" if what == "model" else "cpu")
    x = torch.randn(L, N, I, device="meta" if what == "input" else "cpu")
    hx = torch.zeros(1, N, H, device="meta" if what == "hx" else "cpu")
    with pytest.raises(RuntimeError, match=r"(?s)CPU tensors only.*meta"):
        module(x, hx)


@pytest.mark.parametrize("what", ["hx", "cx"])
def test_lstm_states_on_other_devices_are_named(what):
    module = ft.LSTM(I, H)
    h, c = (torch.zeros(1, N, H, device="meta" if s == what else "cpu") for s in ("hx", "cx"))
    with pytest.raises(RuntimeError, match=rf"(?s)CPU tensors only, but {what} is on.*meta"):
        module(torch.randn(L, N, I), (h, c))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("what", ["model", "input"])
def test_half_precision_is_refused(dtype, what):
    module = ft.RNN(I, H, dtype=dtype if what == "model" else torch.float32)
    x = torch.randn(L, N, I, dtype=dtype if what == "input" else torch.float32)
    with pytest.raises(TypeError, match=rf"torch.float32 and torch.float64 only.*{dtype}"):
        module(x)


def test_integer_and_sparse_inputs_are_refused():
    module = ft.RNN(I, H)
    with pytest.raises(TypeError, match="torch.float32 and torch.float64 only"):
        module(torch.zeros(L, N, I, dtype=torch.int64))
    with pytest.raises(TypeError, match="dense"):
        module(torch.zeros(L, N, I).to_sparse())


def test_hx_dtype_mismatch_is_refused():
    module = ft.RNN(I, H)
    with pytest.raises(ValueError, match=r"hx dtype \(torch.float64\) does not match"):
        module(torch.zeros(L, N, I), torch.zeros(1, N, H, dtype=torch.float64))


@pytest.mark.parametrize("x_shape,hx_shape,x_dtype", [
    ((L, N, I), None, torch.float64),       # input dtype differs from the weights'
    ((2, L, N, I), None, torch.float32),    # 4-D input
    ((L, N, I + 1), None, torch.float32),   # wrong input size
    ((L, N, I), (2, N, H), torch.float32),  # wrong hx size
    ((L, N, I), (1, H), torch.float32),     # 2-D hx with batched input
    ((L, I), (1, N, H), torch.float32),     # 3-D hx with unbatched input
], ids=["dtype", "4d", "input-size", "hx-size", "hx-2d", "hx-3d"])
def test_invalid_inputs_raise_like_torch(x_shape, hx_shape, x_dtype):
    reference, module = make_pair(I, H)
    x = torch.zeros(x_shape, dtype=x_dtype)
    hx = None if hx_shape is None else torch.zeros(hx_shape)
    with pytest.raises((ValueError, RuntimeError)) as expected:
        reference(x, hx)
    with pytest.raises(expected.type) as got:
        module(x, hx)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("cls", [ft.RNN, ft.LSTM, ft.GRU], ids=["rnn", "lstm", "gru"])
def test_precision_bfloat16_runs_fastrnns_bf16_products(cls):
    """module.precision = "bfloat16": the forward and every gradient are fastrnn's functional
    bf16 results on the same weights (not float32's), on float32 tensors."""
    torch.manual_seed(0)
    module = cls(I, H, num_layers=2, bidirectional=True)
    module.precision = "bfloat16"
    x = torch.randn(L, N, I, requires_grad=True)
    out, _ = module(x)
    g = torch.randn_like(out)
    out.backward(g)
    params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    forward = getattr(fastrnn.functional, f"{cls.__name__.lower()}_forward")
    backward = getattr(fastrnn.functional, f"{cls.__name__.lower()}_backward")
    want, _, cache = forward(x.detach().numpy(), params, num_layers=2, bidirectional=True,
                             precision="bfloat16")
    grad_x, _, grads = backward(cache, g.numpy())
    assert out.dtype == torch.float32 and np.array_equal(out.detach().numpy(), want)
    assert np.array_equal(x.grad.numpy(), grad_x)
    for name, p in module.named_parameters():
        assert np.array_equal(p.grad.numpy(), grads[name]), name
    float32, _, _ = forward(x.detach().numpy(), params, num_layers=2, bidirectional=True,
                            precision="float32")
    assert not np.array_equal(want, float32)
    module.precision = "half"
    with pytest.raises(ValueError, match="matmul precision"):
        module(x)
