"""The timed calls: one builder per (implementation, pass), all on the same weights and data.

:func:`make_workload` builds a fastrnn model of a cell (``rnn``, ``lstm``, ``gru``) from a
seed, copies its weights into the other implementations, and returns one call of the pass with
a cheap check of what it returns, and :meth:`Workload.compare` checks it once against
fastrnn's result. The table of ``fastrnn bench`` and the pytest-benchmark suite in
``benchmarks/`` both time these.

The peers: the NumPy reference, torch (nn.RNN / nn.LSTM / nn.GRU), ONNX Runtime (forward only,
:mod:`.onnx_peer`) and JAX (:mod:`.jax_peer`). A peer that is not installed is
:func:`missing`; the optional ones are imported only by the builders that use them.
"""
import dataclasses
import importlib.util

import numpy as np

from .. import reference
from .._layout import directions
from ..precision import get_matmul_precision
from ..rnn import GRU, LSTM, RNN

__all__ = ["IMPLEMENTATIONS", "BF16_IMPLEMENTATIONS", "PEERS", "DTYPE", "CHECK_RTOL",
           "CHECK_RTOL_BF16", "Workload", "available", "missing", "make_workload", "import_torch",
           "flat_arrays", "cell_of", "bf16", "check_rtol"]

# the first is the one the others are compared to; the others are its peers
IMPLEMENTATIONS = ("fastrnn", "reference", "torch", "onnxruntime", "jax")
PEERS = IMPLEMENTATIONS[1:]
# with bfloat16 products (the process default, fastrnn.set_matmul_precision): fastrnn's own
# float32 as a peer; torch in bfloat16; ONNX Runtime and JAX, float32 only, left out
BF16_IMPLEMENTATIONS = ("fastrnn", "fastrnn_fp32", "reference", "torch")
DTYPE = np.float32
# float32 over a sequence: a peer agrees with fastrnn to this relative tolerance (of the
# largest magnitude of each result); a wrong weight conversion is off by O(1). torch in
# bfloat16 also rounds its states and sums: a few bf16 ulps
CHECK_RTOL = 1e-3
CHECK_RTOL_BF16 = 5e-2


def bf16():
    """Whether this run's float32 products are bfloat16 (the process default)."""
    return get_matmul_precision() == "bfloat16"


def check_rtol():
    """The tolerance of this run's comparisons with fastrnn's results."""
    return CHECK_RTOL_BF16 if bf16() else CHECK_RTOL

# implementation -> the modules it needs, beyond fastrnn's own
_REQUIRES = {"torch": ("torch",), "onnxruntime": ("onnxruntime", "onnx"), "jax": ("jax",)}
_MODELS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
_REFERENCE = {"rnn": (reference.rnn_forward, reference.rnn_backward),
              "lstm": (reference.lstm_forward, reference.lstm_backward),
              "gru": (reference.gru_forward, reference.gru_backward)}


def cell_of(model):
    """'rnn', 'lstm' or 'gru': the cell of a fastrnn model."""
    return next(cell for cell, cls in _MODELS.items() if type(model) is cls)


def import_torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def missing(impl):
    """The first module ``impl`` needs that is not installed, or None.

    Looked up without importing (``import jax`` alone takes a second); a module set to None in
    ``sys.modules`` counts as missing, as ``import`` would fail."""
    for module in _REQUIRES.get(impl, ()):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def flat_arrays(result):
    """The arrays of a (possibly nested) result tuple, as NumPy arrays."""
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in flat_arrays(r)]
    if hasattr(result, "detach"):  # a tensor, perhaps bfloat16 (which NumPy lacks)
        return [result.detach().float().numpy()]
    return [np.asarray(result)]


@dataclasses.dataclass
class Workload:
    """``call()`` runs one pass; :meth:`check` verifies what it returned (cheaply),
    :meth:`compare` against fastrnn's result (once)."""

    call: object
    shapes: tuple

    def check(self, result):
        """Assert the arrays ``result`` holds have the expected shapes and are finite."""
        arrays = flat_arrays(result)[:len(self.shapes)]
        shapes = tuple(a.shape for a in arrays)
        assert shapes == self.shapes, f"result shapes {shapes}, expected {self.shapes}"
        for a, shape in zip(arrays, shapes):
            assert np.isfinite(a).all(), f"non-finite values in a result of shape {shape}"

    def compare(self, result, expected, rtol=None):
        """The largest error of ``result`` against fastrnn's ``expected``, relative to each
        array's largest magnitude; AssertionError where it exceeds ``rtol`` (default:
        :func:`check_rtol`)."""
        rtol = check_rtol() if rtol is None else rtol
        self.check(result)
        worst = 0.0
        pairs = zip(flat_arrays(result), flat_arrays(expected)[:len(self.shapes)])
        for k, (a, b) in enumerate(pairs):
            scale = max(float(np.abs(b).max(initial=0)), np.finfo(DTYPE).tiny)
            err = float(np.abs(a.astype(np.float64) - b).max(initial=0)) / scale
            assert err <= rtol, (f"result {k} (shape {b.shape}) differs from fastrnn's by "
                                 f"{err:.2g} of its largest magnitude (> {rtol:g})")
            worst = max(worst, err)
        return worst


def _fastrnn_fwd(model, x, grad_out):
    model.eval()
    return lambda: model(x)


def _fastrnn_fp32(builder):
    """fastrnn's builder with float32 products whatever the default (the bf16 run's peer)."""
    def build(model, x, grad_out):
        model.precision = "float32"
        return builder(model, x, grad_out)
    return build


def _fastrnn_fwd_bwd(model, x, grad_out):
    model.train()

    def call():
        out, _ = model(x)
        grad_x, _ = model.backward(grad_out)
        return out, grad_x
    return call


def _reference_kwargs(model):
    return dict(num_layers=model.num_layers, bidirectional=model.bidirectional)


def _reference_fwd(model, x, grad_out):
    params, forward = model.state_dict(), _REFERENCE[cell_of(model)][0]
    return lambda: forward(x, params, **_reference_kwargs(model))[:2]


def _reference_fwd_bwd(model, x, grad_out):
    params, (forward, backward) = model.state_dict(), _REFERENCE[cell_of(model)]

    def call():
        out, _, cache = forward(x, params, **_reference_kwargs(model))
        grad_x = backward(cache, grad_out)[0]
        return out, grad_x
    return call


def _torch_module(model):
    torch = import_torch()
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell_of(model)]
    m = module(model.input_size, model.hidden_size, model.num_layers,
               bidirectional=model.bidirectional)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return torch, m.to(torch.bfloat16) if bf16() else m


def _torch_tensor(torch, a):
    """``a`` as the torch module takes it: bfloat16 in a bf16 run."""
    t = torch.from_numpy(a)
    return t.to(torch.bfloat16) if bf16() else t


def _torch_fwd(model, x, grad_out):
    torch, m = _torch_module(model)
    m.eval()
    xt = _torch_tensor(torch, x)

    def call():
        with torch.inference_mode():
            return m(xt)
    return call


def _torch_fwd_bwd(model, x, grad_out):
    torch, m = _torch_module(model)
    m.train()
    for p in m.parameters():  # as fastrnn's, the parameter gradients exist before the first call
        p.grad = torch.zeros_like(p)
    xt = _torch_tensor(torch, x).requires_grad_()  # fastrnn always computes the input's gradient
    gt = _torch_tensor(torch, grad_out)

    def call():
        xt.grad = None  # a fresh input gradient per call, as fastrnn returns
        out, _ = m(xt)
        out.backward(gt)
        return out, xt.grad
    return call


def _onnxruntime_fwd(model, x, grad_out):
    from .onnx_peer import onnx_forward_call

    return onnx_forward_call(model, x)


def _jax_fwd(model, x, grad_out):
    from .jax_peer import jax_forward_call

    return jax_forward_call(model, x)


def _jax_fwd_bwd(model, x, grad_out):
    from .jax_peer import jax_forward_backward_call

    return jax_forward_backward_call(model, x, grad_out)


# (implementation, pass) -> builder(model, x, grad_out) -> call
BUILDERS = {
    ("fastrnn", "fwd"): _fastrnn_fwd,
    ("fastrnn", "fwd+bwd"): _fastrnn_fwd_bwd,
    ("fastrnn_fp32", "fwd"): _fastrnn_fp32(_fastrnn_fwd),
    ("fastrnn_fp32", "fwd+bwd"): _fastrnn_fp32(_fastrnn_fwd_bwd),
    ("reference", "fwd"): _reference_fwd,
    ("reference", "fwd+bwd"): _reference_fwd_bwd,
    ("torch", "fwd"): _torch_fwd,
    ("torch", "fwd+bwd"): _torch_fwd_bwd,
    ("onnxruntime", "fwd"): _onnxruntime_fwd,
    ("jax", "fwd"): _jax_fwd,
    ("jax", "fwd+bwd"): _jax_fwd_bwd,
}


def available(impl, pass_):
    """Whether ``impl`` can run ``pass_`` here (what it needs must be installed)."""
    if (impl, pass_) not in BUILDERS or (bf16() and impl not in BF16_IMPLEMENTATIONS):
        return False
    return import_torch() is not None if impl == "torch" else missing(impl) is None


def make_workload(impl, pass_, size, seed=0, cell="rnn"):
    """Build the model of ``cell``, input and output gradient of ``size`` and one call of
    ``pass_``.

    Every implementation gets the same weights (fastrnn's initialisation from ``seed``, copied
    into the others) and the same input and output gradient.
    """
    model = _MODELS[cell](size.I, size.H, size.layers, bidirectional=size.bidirectional,
                          dtype=DTYPE, seed=seed)
    rng = np.random.default_rng(seed)
    D = directions(size.bidirectional)
    x = rng.standard_normal((size.T, size.N, size.I), dtype=DTYPE)
    grad_out = rng.standard_normal((size.T, size.N, D * size.H), dtype=DTYPE)
    call = BUILDERS[impl, pass_](model, x, grad_out)
    out = (size.T, size.N, D * size.H)
    if pass_ != "fwd":
        return Workload(call, (out, x.shape))  # output, grad_x
    state = (D * size.layers, size.N, size.H)
    return Workload(call, (out, state, state) if cell == "lstm" else (out, state))  # h_n, c_n
