"""The timed calls: one builder per (implementation, pass), all on the same weights and data.

:func:`make_workload` builds a fastrnn model from a seed, copies its weights into the other
implementations, and returns one call of the pass with a cheap check of what it returns. The
table of ``fastrnn bench`` and the pytest-benchmark suite in ``benchmarks/`` both time these.
"""
import dataclasses

import numpy as np

from .. import reference
from .._layout import directions
from ..rnn import RNN

__all__ = ["IMPLEMENTATIONS", "DTYPE", "Workload", "available", "make_workload", "import_torch"]

# the first is the one the others are compared to
IMPLEMENTATIONS = ("fastrnn", "reference", "torch")
DTYPE = np.float32


def import_torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@dataclasses.dataclass
class Workload:
    """``call()`` runs one pass; :meth:`check` verifies what it returned (cheaply)."""

    call: object
    shapes: tuple

    def check(self, result):
        """Assert the arrays ``result`` holds have the expected shapes and are finite."""
        arrays = [np.asarray(r.detach() if hasattr(r, "detach") else r) for r in result]
        shapes = tuple(a.shape for a in arrays)
        assert shapes == self.shapes, f"result shapes {shapes}, expected {self.shapes}"
        for a, shape in zip(arrays, shapes):
            assert np.isfinite(a).all(), f"non-finite values in a result of shape {shape}"


def _fastrnn_fwd(model, x, grad_out):
    model.eval()
    return lambda: model(x)


def _fastrnn_fwd_bwd(model, x, grad_out):
    model.train()

    def call():
        out, _ = model(x)
        grad_x, _ = model.backward(grad_out)
        return out, grad_x
    return call


def _reference_fwd(model, x, grad_out):
    params = model.state_dict()
    kw = dict(num_layers=model.num_layers, bidirectional=model.bidirectional)
    return lambda: reference.rnn_forward(x, params, **kw)[:2]


def _reference_fwd_bwd(model, x, grad_out):
    params = model.state_dict()
    kw = dict(num_layers=model.num_layers, bidirectional=model.bidirectional)

    def call():
        out, _, cache = reference.rnn_forward(x, params, **kw)
        grad_x, _, _ = reference.rnn_backward(cache, grad_out)
        return out, grad_x
    return call


def _torch_module(model):
    torch = import_torch()
    m = torch.nn.RNN(model.input_size, model.hidden_size, model.num_layers,
                     bidirectional=model.bidirectional)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return torch, m


def _torch_fwd(model, x, grad_out):
    torch, m = _torch_module(model)
    m.eval()
    xt = torch.from_numpy(x)

    def call():
        with torch.inference_mode():
            return m(xt)
    return call


def _torch_fwd_bwd(model, x, grad_out):
    torch, m = _torch_module(model)
    m.train()
    for p in m.parameters():  # as fastrnn's, the parameter gradients exist before the first call
        p.grad = torch.zeros_like(p)
    xt = torch.from_numpy(x).requires_grad_()  # fastrnn always computes the input's gradient
    gt = torch.from_numpy(grad_out)

    def call():
        xt.grad = None  # a fresh input gradient per call, as fastrnn returns
        out, _ = m(xt)
        out.backward(gt)
        return out, xt.grad
    return call


# (implementation, pass) -> builder(model, x, grad_out) -> call
BUILDERS = {
    ("fastrnn", "fwd"): _fastrnn_fwd,
    ("fastrnn", "fwd+bwd"): _fastrnn_fwd_bwd,
    ("reference", "fwd"): _reference_fwd,
    ("reference", "fwd+bwd"): _reference_fwd_bwd,
    ("torch", "fwd"): _torch_fwd,
    ("torch", "fwd+bwd"): _torch_fwd_bwd,
}


def available(impl, pass_):
    """Whether ``impl`` can run ``pass_`` here (torch must be importable)."""
    return (impl, pass_) in BUILDERS and (impl != "torch" or import_torch() is not None)


def make_workload(impl, pass_, size, seed=0):
    """Build the model, input and output gradient of ``size`` and one call of ``pass_``.

    Every implementation gets the same weights (fastrnn's initialisation from ``seed``, copied
    into the others) and the same input and output gradient.
    """
    model = RNN(size.I, size.H, size.layers, bidirectional=size.bidirectional, dtype=DTYPE,
                seed=seed)
    rng = np.random.default_rng(seed)
    D = directions(size.bidirectional)
    x = rng.standard_normal((size.T, size.N, size.I), dtype=DTYPE)
    grad_out = rng.standard_normal((size.T, size.N, D * size.H), dtype=DTYPE)
    call = BUILDERS[impl, pass_](model, x, grad_out)
    second = (D * size.layers, size.N, size.H) if pass_ == "fwd" else x.shape  # h_n or grad_x
    return Workload(call, ((size.T, size.N, D * size.H), second))
