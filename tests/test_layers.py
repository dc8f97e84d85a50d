"""Embedding, Linear, CrossEntropyLoss, gradient clipping and the Module interface.

Backward passes are checked against central finite differences in float64 and, when torch
is importable, forward and backward against torch.nn.
"""

import numpy as np
import pytest

from _helpers import DTYPES, assert_close_rel, numerical_gradient

import fastrnn
from fastrnn import CrossEntropyLoss, Embedding, Linear, Parameter

# Embedding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_backward_matches_finite_differences(rng, padding_idx):
    emb = Embedding(6, 4, padding_idx=padding_idx, dtype=np.float64, seed=rng)
    emb.weight.data[...] = rng.standard_normal((6, 4))  # padding row too: its grad must stay 0
    idx = rng.integers(0, 6, size=(5, 3))
    idx[0, 0] = idx[1, 2] = idx[4, 1]  # repeated indices accumulate
    r = rng.standard_normal((5, 3, 4))
    out = emb(idx)
    emb.backward(r)
    expected = numerical_gradient(lambda: float(np.sum(emb.lookup(idx) * r)), emb.weight.data)
    if padding_idx is not None:
        expected[padding_idx % 6] = 0
    assert_close_rel(emb.weight.grad, expected, np.float64, tol=1e-8)
    assert out.shape == (5, 3, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch(torch, rng, dtype):
    emb = Embedding(10, 7, padding_idx=3, dtype=dtype, seed=rng)
    temb = torch.nn.Embedding(10, 7, padding_idx=3).to(torch.float64 if dtype == np.float64
                                                         else torch.float32)
    with torch.no_grad():
        temb.weight.copy_(torch.from_numpy(emb.weight.data))
    idx = rng.integers(0, 10, size=(8, 5))
    g = rng.standard_normal((8, 5, 7)).astype(dtype)
    out = emb(idx)
    tout = temb(torch.from_numpy(idx))
    tout.backward(torch.from_numpy(g))
    emb.backward(g)
    np.testing.assert_array_equal(out, tout.detach().numpy())
    assert_close_rel(emb.weight.grad, temb.weight.grad.numpy(), dtype)
    assert np.all(emb.weight.data[3] == 0), "padding row initialised to zeros"


def test_embedding_backward_is_deterministic_across_threads(rng):
    emb = Embedding(50, 300, dtype=np.float32, seed=0)  # 300 columns: several column blocks
    idx = rng.integers(0, 50, size=(200, 40))
    g = rng.standard_normal((200, 40, 300)).astype(np.float32)
    grads = []
    for threads in (1, 2, 3):
        fastrnn.set_num_threads(threads)
        try:
            emb.zero_grad()
            emb(idx)
            emb.backward(g)
            grads.append(emb.weight.grad.copy())
        finally:
            fastrnn.set_num_threads(None)
    for other in grads[1:]:
        np.testing.assert_array_equal(other, grads[0])
    # and it is the sum in index order (float32 rounding of a sequential sum)
    expected = np.zeros((50, 300), dtype=np.float32)
    np.add.at(expected, idx.reshape(-1), g.reshape(-1, 300))
    np.testing.assert_array_equal(grads[0], expected)


def test_embedding_rejects_bad_indices():
    emb = Embedding(5, 2, seed=0)
    with pytest.raises(IndexError, match="out of range"):
        emb(np.array([0, 5]))
    with pytest.raises(IndexError, match="out of range"):
        emb(np.array([-1]))
    with pytest.raises(TypeError, match="integers"):
        emb(np.array([0.0]))
    with pytest.raises(RuntimeError, match="forward pass in training mode"):
        Embedding(5, 2, seed=0).backward(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(5, 2, padding_idx=5)


def test_embedding_eval_keeps_no_cache(rng):
    emb = Embedding(5, 2, seed=0).eval()
    emb(np.array([1, 2]))
    with pytest.raises(RuntimeError):
        emb.backward(np.zeros((2, 2)))


# Linear ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)], ids=["1d", "2d", "3d"])
def test_linear_backward_matches_finite_differences(rng, bias, shape):
    lin = Linear(4, 3, bias=bias, dtype=np.float64, seed=rng)
    x = rng.standard_normal(shape)
    r = rng.standard_normal(shape[:-1] + (3,))
    y = lin(x)
    dx = lin.backward(r)
    loss = lambda: float(np.sum(Linear.forward(lin, x) * r))  # noqa: E731
    assert_close_rel(dx, numerical_gradient(loss, x), np.float64, tol=1e-8, name="dx")
    assert_close_rel(lin.weight.grad, numerical_gradient(loss, lin.weight.data), np.float64, tol=1e-8)
    if bias:
        assert_close_rel(lin.bias.grad, numerical_gradient(loss, lin.bias.data), np.float64, tol=1e-8)
    assert y.shape == shape[:-1] + (3,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_torch(torch, rng, dtype):
    lin = Linear(6, 5, dtype=dtype, seed=rng)
    tlin = torch.nn.Linear(6, 5).to(torch.float64 if dtype == np.float64 else torch.float32)
    tlin.load_state_dict({k: torch.from_numpy(v) for k, v in lin.state_dict().items()})
    x = rng.standard_normal((7, 3, 6)).astype(dtype)
    g = rng.standard_normal((7, 3, 5)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_()
    ty = tlin(tx)
    ty.backward(torch.from_numpy(g))
    y = lin(x)
    dx = lin.backward(g)
    assert_close_rel(y, ty.detach().numpy(), dtype, name="y")
    assert_close_rel(dx, tx.grad.numpy(), dtype, name="dx")
    assert_close_rel(lin.weight.grad, tlin.weight.grad.numpy(), dtype, name="dW")
    assert_close_rel(lin.bias.grad, tlin.bias.grad.numpy(), dtype, name="db")


def test_linear_is_deterministic_across_threads(rng):
    lin = Linear(70, 40, seed=rng)
    x = rng.standard_normal((300, 70)).astype(np.float32)
    g = rng.standard_normal((300, 40)).astype(np.float32)
    results = []
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        try:
            lin.zero_grad()
            y = lin(x)
            dx = lin.backward(g)
            results.append((y, dx, lin.weight.grad.copy(), lin.bias.grad.copy()))
        finally:
            fastrnn.set_num_threads(None)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_linear_init_follows_torch_bounds():
    lin = Linear(100, 50, seed=0)
    bound = 1 / np.sqrt(100)
    for p in (lin.weight.data, lin.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound


def test_linear_validates_input():
    lin = Linear(4, 2, seed=0)
    with pytest.raises(ValueError, match="in_features=4"):
        lin(np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(TypeError, match="dtype"):
        lin(np.zeros((3, 4), dtype=np.float64))
    lin(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        lin.backward(np.zeros((3, 3), dtype=np.float32))


# CrossEntropyLoss --------------------------------------------------------------------------
def _targets(rng, shape, C, ignore_index=None):
    t = rng.integers(0, C, size=shape)
    if ignore_index is not None:
        t[rng.random(shape) < 0.3] = ignore_index
    return t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all", "ignore"])
def test_cross_entropy_backward_matches_finite_differences(rng, reduction, ignore):
    ce = CrossEntropyLoss(ignore_index=-100, reduction=reduction)
    logits = rng.standard_normal((4, 3, 5)) * 3
    t = _targets(rng, (4, 3), 5, -100 if ignore else None)
    w = rng.standard_normal((4, 3))  # chain weight for 'none'
    if reduction == "none":
        value = lambda: float(np.sum(ce.forward(logits, t) * w))  # noqa: E731
        value()
        grad = ce.backward(w)
    else:
        value = lambda: ce.forward(logits, t)  # noqa: E731
        value()
        grad = ce.backward(2.5) / 2.5
    assert_close_rel(grad, numerical_gradient(value, logits), np.float64, tol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_torch(torch, rng, reduction, dtype):
    C = 7
    logits = (rng.standard_normal((6, 4, C)) * 4).astype(dtype)
    t = _targets(rng, (6, 4), C, ignore_index=-1)
    ce = CrossEntropyLoss(ignore_index=-1, reduction=reduction)
    loss = ce(logits, t)
    tl = torch.from_numpy(logits).reshape(-1, C).requires_grad_()
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(t).reshape(-1),
                                              ignore_index=-1, reduction=reduction)
    if reduction == "none":
        w = rng.standard_normal((6, 4)).astype(dtype)
        tloss.backward(torch.from_numpy(w).reshape(-1))
        assert_close_rel(loss, tloss.detach().numpy().reshape(6, 4), dtype, name="loss")
        grad = ce.backward(w)
    else:
        tloss.backward()
        assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
        grad = ce.backward()
    assert_close_rel(grad, tl.grad.numpy().reshape(6, 4, C), dtype, name="dlogits")


def test_cross_entropy_is_numerically_stable():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4 + 1, -1e4 + 2]], dtype=np.float32)
    t = np.array([2, 0])
    ce = CrossEntropyLoss(reduction="none")
    loss = ce(logits, t)
    np.testing.assert_allclose(loss, [2000.0, 2 + np.log1p(np.exp(-1) + np.exp(-2))], rtol=1e-6)
    g = ce.backward()
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g.sum(axis=-1), 0, atol=1e-6)


@pytest.mark.parametrize("C", [1, 3, 67, 1000])
def test_cross_entropy_float32_is_accurate(rng, C):
    """The float32 path (vectorised exp) against a float64 log-softmax, element by element."""
    logits = (rng.standard_normal((50, C)) * 10).astype(np.float32)
    logits[0, :] = -1e30  # every logit equally tiny: uniform
    logits[1, 0] = 80.0   # one dominant class, the rest underflow
    t = rng.integers(0, C, size=50)
    ce = CrossEntropyLoss(reduction="none")
    loss = ce(logits, t)
    x = logits.astype(np.float64)
    lse = x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
    expected = lse - x[np.arange(50), t]
    np.testing.assert_allclose(loss, expected, rtol=2e-6, atol=2e-6)
    e = np.exp(x - x.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    grad = ce.backward()
    onehot = np.eye(C)[t]
    np.testing.assert_allclose(grad, p - onehot, rtol=1e-5, atol=1e-7)


def test_cross_entropy_propagates_nan():
    logits = np.zeros((2, 9), dtype=np.float32)
    logits[0, 4] = np.nan
    loss = CrossEntropyLoss(reduction="none")(logits, np.array([1, 1]))
    assert np.isnan(loss[0]) and loss[1] == pytest.approx(np.log(9))


def test_cross_entropy_all_ignored_is_nan_with_zero_grad(torch):
    logits = np.ones((3, 4), dtype=np.float32)
    t = np.full(3, -100)
    ce = CrossEntropyLoss()
    assert np.isnan(ce(logits, t))
    assert np.isnan(torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                      torch.from_numpy(t)).item())
    np.testing.assert_array_equal(ce.backward(), 0)


def test_cross_entropy_validates():
    ce = CrossEntropyLoss()
    with pytest.raises(IndexError, match="out of bounds"):
        ce(np.zeros((2, 3), dtype=np.float32), np.array([0, 3]))
    with pytest.raises(IndexError, match="out of bounds"):
        ce(np.zeros((2, 3), dtype=np.float32), np.array([0, -1]))
    with pytest.raises(ValueError, match="shape"):
        ce(np.zeros((2, 3), dtype=np.float32), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integers"):
        ce(np.zeros((2, 3), dtype=np.float32), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(RuntimeError):
        CrossEntropyLoss().backward()


# clipping ----------------------------------------------------------------------------------
def _params_with_grads(rng, scale):
    ps = [Parameter(np.zeros(s, dtype=np.float32)) for s in [(3, 4), (5,), (2, 2, 2)]]
    for p in ps:
        p.grad[...] = rng.standard_normal(p.shape) * scale
    return ps


@pytest.mark.parametrize("norm_type", [2.0, 1.0, np.inf])
@pytest.mark.parametrize("scale", [0.01, 10.0], ids=["small", "large"])
def test_clip_grad_norm_matches_torch(torch, rng, norm_type, scale):
    ps = _params_with_grads(rng, scale)
    tps = [torch.zeros(p.shape, requires_grad=True) for p in ps]
    for p, tp in zip(ps, tps):
        tp.grad = torch.from_numpy(p.grad.copy())
    total = fastrnn.clip_grad_norm_(ps, 1.0, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, 1.0, norm_type)
    assert abs(total - ttotal.item()) <= 1e-5 * ttotal.item()
    for p, tp in zip(ps, tps):
        assert_close_rel(p.grad, tp.grad.numpy(), np.float32)


def test_clip_grad_norm_bounds_the_norm(rng):
    ps = _params_with_grads(rng, 10.0)
    before = np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2) for p in ps))
    total = fastrnn.clip_grad_norm_(ps, 2.0)
    after = np.sqrt(sum(np.sum(p.grad.astype(np.float64) ** 2) for p in ps))
    assert total == pytest.approx(before, rel=1e-6)
    assert after == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(RuntimeError, match="non-finite"):
        ps[0].grad[0, 0] = np.nan
        fastrnn.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)


def test_clip_grad_value_matches_torch(torch, rng):
    ps = _params_with_grads(rng, 3.0)
    tps = [torch.zeros(p.shape, requires_grad=True) for p in ps]
    for p, tp in zip(ps, tps):
        tp.grad = torch.from_numpy(p.grad.copy())
    fastrnn.clip_grad_value_(ps, 0.5)
    torch.nn.utils.clip_grad_value_(tps, 0.5)
    for p, tp in zip(ps, tps):
        np.testing.assert_array_equal(p.grad, tp.grad.numpy())
    assert max(np.abs(p.grad).max() for p in ps) == pytest.approx(0.5)


# Module interface --------------------------------------------------------------------------
class _Stack(fastrnn.layers.Module):
    def __init__(self):
        super().__init__()
        self.embedding = Embedding(5, 3, seed=0)
        self.rnn = fastrnn.RNN(3, 4, seed=1)
        self.decoder = Linear(4, 5, seed=2)


def test_module_names_state_dict_and_modes():
    m = _Stack()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
                     "rnn.bias_ih_l0", "rnn.bias_hh_l0", "decoder.weight", "decoder.bias"]
    assert m.decoder.weight is dict(m.named_parameters())["decoder.weight"]
    state = m.state_dict()
    other = _Stack()
    for v in state.values():
        v += 1
    other.load_state_dict(state)
    for (n, p), (_, q) in zip(m.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(q.data, p.data + 1, err_msg=n)
    m.eval()
    assert not m.training and not m.rnn.training and not m.decoder.training
    m.train()
    assert m.embedding.training and m.rnn.training
    for p in m.parameters():
        p.grad[...] = 1
    m.zero_grad()
    assert all(not p.grad.any() for p in m.parameters())


def test_module_load_state_dict_reports_mismatches():
    m = _Stack()
    state = m.state_dict()
    bad = dict(state)
    del bad["decoder.bias"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(ValueError,
                       match=r"missing keys \['decoder.bias'\].*unexpected keys \['extra'\]"):
        m.load_state_dict(bad)
    bad = dict(state, **{"decoder.weight": np.zeros((5, 5))})
    before = m.state_dict()
    with pytest.raises(ValueError, match="size mismatch for decoder.weight"):
        m.load_state_dict(bad)
    for k, v in m.state_dict().items():  # nothing changed
        np.testing.assert_array_equal(v, before[k])
