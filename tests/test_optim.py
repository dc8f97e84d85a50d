"""fastrnn.optim against torch.optim (same gradients, several steps) and against the formulas."""

import numpy as np
import pytest

from _helpers import DTYPES

from fastrnn import Parameter, optim

SHAPES = [(4, 3), (5,), (2, 1, 3)]
STEPS = 6
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


def _run_both(torch, rng, dtype, make, make_torch, order="C"):
    """Apply the same random gradients for STEPS steps; return both parameter trajectories."""
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ps = [Parameter(a.copy(order=order)) for a in init]
    tps = [torch.tensor(a.copy(), dtype=tdtype, requires_grad=True) for a in init]
    opt, topt = make(ps), make_torch(tps)
    mine, theirs = [], []
    for _ in range(STEPS):
        for p, tp in zip(ps, tps):
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad[...] = g
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
        mine.append([p.data.copy() for p in ps])
        theirs.append([tp.detach().numpy().copy() for tp in tps])
    return mine, theirs


def _assert_trajectories_close(mine, theirs, dtype):
    tol = TOL[np.dtype(dtype)]
    for step, (a, b) in enumerate(zip(mine, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(x, y, rtol=tol, atol=tol,
                                       err_msg=f"step {step + 1}, parameter {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, weight_decay=0.01),
    dict(momentum=0.5, dampening=0.1),
    dict(momentum=0.9, nesterov=True),
    dict(weight_decay=0.1),
], ids=["plain", "momentum", "momentum-wd", "dampening", "nesterov", "wd"])
def test_sgd_matches_torch(torch, rng, dtype, kw):
    mine, theirs = _run_both(torch, rng, dtype, lambda ps: optim.SGD(ps, lr=0.1, **kw),
                             lambda tps: torch.optim.SGD(tps, lr=0.1, **kw))
    _assert_trajectories_close(mine, theirs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [
    dict(lr=1e-3),
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
], ids=["default", "betas-eps", "wd"])
@pytest.mark.parametrize("order", ["C", "F"], ids=["compiled", "numpy-fortran-params"])
def test_adam_matches_torch(torch, rng, dtype, kw, order):
    """C-contiguous parameters take the compiled single-pass update; others NumPy's."""
    mine, theirs = _run_both(torch, rng, dtype, lambda ps: optim.Adam(ps, **kw),
                             lambda tps: torch.optim.Adam(tps, foreach=False, **kw), order)
    _assert_trajectories_close(mine, theirs, dtype)


def test_adam_formula_without_torch():
    """Two steps written out from the Adam paper (with torch's placement of eps)."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p = Parameter(np.array([1.0, -2.0, 0.5]))
    opt = optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps)
    g1, g2 = np.array([0.5, -1.0, 0.0]), np.array([0.1, 0.2, -0.3])
    x = p.data.copy()
    m = v = np.zeros(3)
    for t, g in enumerate([g1, g2], start=1):
        p.grad[...] = g
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
        np.testing.assert_allclose(p.data, x, rtol=1e-14, atol=1e-15)


def test_sgd_momentum_formula_without_torch():
    p = Parameter(np.array([1.0, 2.0]))
    opt = optim.SGD([p], lr=0.5, momentum=0.9)
    p.grad[...] = [1.0, -1.0]
    opt.step()
    np.testing.assert_allclose(p.data, [0.5, 2.5])  # buf = g
    opt.step()
    np.testing.assert_allclose(p.data, [0.5 - 0.5 * 1.9, 2.5 + 0.5 * 1.9])  # buf = 0.9 buf + g


def test_zero_grad_and_validation():
    p = Parameter(np.ones(3))
    p.grad[...] = 2
    opt = optim.Adam([p])
    opt.zero_grad()
    assert not p.grad.any()
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Parameters"):
        optim.SGD([np.ones(3)], lr=0.1)
    with pytest.raises(TypeError, match="iterable"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="beta"):
        optim.Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)


def test_step_updates_in_place():
    """Models hold references to the parameter arrays: the optimizer must not rebind them."""
    data = np.ones(3, dtype=np.float32)
    p = Parameter(data)
    p.grad[...] = 1
    for opt in (optim.SGD([p], lr=0.1, momentum=0.9), optim.Adam([p])):
        opt.step()
        assert p.data is data and p.data.dtype == np.float32
