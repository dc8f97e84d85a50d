"""fastrnn.LSTM and fastrnn.GRU, the modules: torch.nn.LSTM / GRU's options, names,
initialisation and state dicts, forward and backward through the compiled cells, modes and
refusals. The cells' arithmetic is tested in test_functional_gated.py."""

import numpy as np
import pytest

from _gated import state_shapes
from _helpers import DTYPES, H, I, L, N, assert_close_rel
import fastrnn

torch = pytest.importorskip("torch")

CASES = [pytest.param("lstm", dict(), id="lstm"),
         pytest.param("lstm", dict(proj_size=3), id="lstm-proj"),
         pytest.param("gru", dict(), id="gru")]


def _pair(cell, kwargs, dtype, **options):
    """(fastrnn module, torch module with the same weights)."""
    ours = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(I, H, dtype=dtype, seed=0,
                                                            **options, **kwargs)
    theirs = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(
        I, H, dtype={np.float32: torch.float32, np.float64: torch.float64}[dtype],
        **options, **kwargs)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("cell,kwargs", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [dict(), dict(num_layers=2, bidirectional=True),
                                     dict(num_layers=3, batch_first=True)],
                         ids=["1L", "2L-bi", "3L-batchfirst"])
def test_module_matches_torch_module(rng, cell, kwargs, dtype, options):
    ours, theirs = _pair(cell, kwargs, dtype, **options)
    batch_first = options.get("batch_first", False)
    x = rng.standard_normal((N, L, I) if batch_first else (L, N, I)).astype(dtype)
    shapes = state_shapes(cell, x.shape, H, options.get("num_layers", 1),
                          options.get("bidirectional", False), batch_first,
                          kwargs.get("proj_size", 0))
    states = [rng.standard_normal(s).astype(dtype) for s in shapes]
    hx = tuple(states) if cell == "lstm" else states[0]
    out, final = ours(x, hx)
    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in states]
    out_t, final_t = theirs(xt, tuple(st) if cell == "lstm" else st[0])
    gy = rng.standard_normal(out.shape).astype(dtype)
    finals = list(final) if cell == "lstm" else [final]
    finals_t = list(final_t) if cell == "lstm" else [final_t]
    gs = [rng.standard_normal(f.shape).astype(dtype) for f in finals]
    grad_x, grad_state0 = ours.backward(gy, tuple(gs) if cell == "lstm" else gs[0])
    loss = (out_t * torch.from_numpy(gy)).sum() + sum(
        (f * torch.from_numpy(g)).sum() for f, g in zip(finals_t, gs))
    loss.backward()
    assert_close_rel(out, out_t.detach().numpy(), dtype, name="output")
    for a, b in zip(finals, finals_t):
        assert_close_rel(a, b.detach().numpy(), dtype, name="final state")
    assert_close_rel(grad_x, xt.grad.numpy(), dtype, name="grad_x")
    grad_states = list(grad_state0) if cell == "lstm" else [grad_state0]
    for a, b in zip(grad_states, st):
        assert_close_rel(a, b.grad.numpy(), dtype, name="grad state")
    for name, p in theirs.named_parameters():
        assert_close_rel(getattr(ours, name).grad, p.grad.numpy(), dtype, name=name)


@pytest.mark.parametrize("cell,kwargs", CASES)
def test_names_shapes_and_initialisation_follow_torch(cell, kwargs):
    ours = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(I, H, 2, bidirectional=True,
                                                            seed=0, **kwargs)
    theirs = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H, 2, bidirectional=True,
                                                                 **kwargs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    bound = 1 / np.sqrt(H)
    for _, p in ours.named_parameters():
        assert p.data.dtype == np.float32 and np.abs(p.data).max() <= bound
        assert p.data.std() > bound / 4  # spread over the range, not constant
    assert issubclass(type(ours), fastrnn.layers.Module)


@pytest.mark.parametrize("cell,kwargs", CASES)
def test_gradients_accumulate_and_modes(rng, cell, kwargs):
    m = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(I, H, dtype=np.float64, seed=0,
                                                         **kwargs)
    x = rng.standard_normal((L, N, I))
    out, _ = m(x)
    m.backward(np.ones_like(out))
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    m(x)
    m.backward(np.ones_like(out))
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-12)
    m.zero_grad()
    assert all(not p.grad.any() for p in m.parameters())
    m.eval()
    m(x)
    with pytest.raises(RuntimeError, match="training mode"):
        m.backward(np.ones_like(out))


def test_refusals():
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        fastrnn.LSTM(I, H, proj_size=H)
    with pytest.raises(ValueError):
        fastrnn.LSTM(I, H, proj_size=-1)
    with pytest.raises(TypeError):
        fastrnn.LSTM(I, H, proj_size=1.5)
    with pytest.raises(ValueError, match="only supported for LSTM"):
        fastrnn.GRU(I, H, proj_size=2)
    with pytest.raises(ValueError, match="greater than zero"):
        fastrnn.GRU(I, 0)
