"""Layers for training sequence models, in the explicit forward/backward style of fastrnn.RNN.

Every layer keeps, in training mode, what its :meth:`backward` needs from the last
forward call; ``backward(grad)`` returns the gradient with respect to the input and adds
the parameter gradients into ``p.grad`` (until :meth:`Module.zero_grad`). There is no
autograd engine: a model calls its layers' backward methods in reverse order.

The heavy loops are compiled: the embedding scatter-add and the fused log-softmax
cross-entropy (:mod:`fastrnn._ops`), and the matrix products of :class:`Linear`, which use
the same GEMM kernels as the RNN. Measured on the character-LM decoder (3200 × 256 → 67,
one thread), they take about half of NumPy's (OpenBLAS) time, their results do not depend
on the thread count, and they share the RNN's OpenMP threads instead of starting a second
(BLAS) thread pool that competes with it.
"""

import math

import numpy as np

from . import _ops, _rnn
from ._validate import (_as_rng, _check_dtype, _check_grad_output, _check_indices, _check_int,
                        _check_real, _check_size, _checked_grad)
from .module import Module, Parameter, new_parameter
from .parallel import get_num_threads

__all__ = ["Module", "Embedding", "Linear", "CrossEntropyLoss", "clip_grad_norm_",
           "clip_grad_value_"]


def _threads_for(n_elements):
    """Threads for an elementwise loop over ``n_elements`` (the policy of fastrnn._rnn)."""
    return _rnn.elementwise_threads(n_elements, get_num_threads())


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim`` (torch.nn.Embedding).

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    padding_idx : int, optional
        This row is initialised to zeros and never receives a gradient (torch semantics;
        negative values count from the end).
    dtype : {np.float32, np.float64}
    seed : None, int or numpy.random.Generator
        Source of the initial weights, N(0, 1) as in torch.

    Notes
    -----
    ``emb(indices)`` maps an integer array of any shape (...) to (..., embedding_dim).
    :meth:`backward` scatter-adds the output gradient into ``weight.grad`` in compiled code,
    in a fixed order (the result does not depend on the thread count); it returns None,
    since integer indices have no gradient.
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *, dtype=np.float32,
                 seed=None):
        super().__init__()
        self.num_embeddings = _check_size(num_embeddings, "num_embeddings")
        self.embedding_dim = _check_size(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            padding_idx = _check_int(padding_idx, "padding_idx")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError("padding_idx must be within num_embeddings, got "
                                 f"{padding_idx} for {self.num_embeddings}")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = _check_dtype(dtype)
        rng = _as_rng(seed)

        def fill(shape):
            weight = rng.standard_normal(shape)
            if padding_idx is not None:
                weight[padding_idx] = 0
            return weight

        self.weight = new_parameter((self.num_embeddings, self.embedding_dim), self.dtype, fill)
        self._cache = None

    def __repr__(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad})"

    def _clear_cache(self):
        self._cache = None

    def _indices(self, indices):
        return _check_indices(indices, "index", self.num_embeddings, is_out="out of range for "
                              f"an Embedding of {self.num_embeddings} rows")

    def lookup(self, indices):
        """The rows for ``indices`` (validated), without keeping anything for backward."""
        return self.weight.data[self._indices(indices)]

    def forward(self, indices):
        """Rows of the table: (...) integer indices -> (..., embedding_dim)."""
        idx = self._indices(indices)
        # the cache owns its indices: the caller may change theirs before backward
        self._cache = idx.copy() if self.training else None
        return self.weight.data[idx]

    def backward(self, grad_output):
        """Add the gradient of every looked-up row into ``weight.grad``; returns None."""
        if self._cache is None:
            raise self._no_cache_error()
        idx = self._cache
        g = _check_grad_output(grad_output, idx.shape + (self.embedding_dim,), self.dtype)
        g = np.ascontiguousarray(g).reshape(-1, self.embedding_dim)
        pad = -1 if self.padding_idx is None else self.padding_idx
        dW = _checked_grad(self.weight, "weight", kernel=True)
        _ops.embedding_backward(idx.reshape(-1), g, dW, pad, _threads_for(g.size))
        return None


class Linear(Module):
    """``y = x Wᵀ + b`` over arrays shaped (..., in_features) (torch.nn.Linear).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : {np.float32, np.float64}
    seed : None, int or numpy.random.Generator
        Source of the initial weights, U(-1/√in, 1/√in) for weight and bias as in torch.
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None):
        super().__init__()
        self.in_features = _check_size(in_features, "in_features")
        self.out_features = _check_size(out_features, "out_features")
        self.dtype = _check_dtype(dtype)
        rng = _as_rng(seed)
        bound = 1 / math.sqrt(self.in_features)
        shape = (self.out_features, self.in_features)
        self.weight = new_parameter(shape, self.dtype,
                                    lambda s: rng.uniform(-bound, bound, size=s))
        self.has_bias = bool(bias)
        if self.has_bias:
            self.bias = new_parameter((self.out_features,), self.dtype,
                                      lambda s: rng.uniform(-bound, bound, size=s))
        self._cache = None

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.has_bias})")

    def _clear_cache(self):
        self._cache = None

    def forward(self, x):
        """(..., in_features) -> (..., out_features)."""
        x = np.asarray(x)
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype ({x.dtype}) does not match the parameters' dtype "
                            f"({self.dtype})")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"input.shape[-1] must be in_features={self.in_features}, "
                             f"got shape {x.shape}")
        # the cache and the GEMM both want the input as contiguous rows (..., in) -> (M, in)
        x2 = np.ascontiguousarray(x.reshape(-1, self.in_features))
        if self.training and x2.flags.writeable and np.shares_memory(x2, x):
            # backward reads X: the cache owns it, unless it is read-only (an RNN's output)
            x2 = x2.copy()
        y = np.empty((x2.shape[0], self.out_features), dtype=self.dtype)
        # y = X Wᵀ + b: one GEMM over all leading dimensions, bias added in its epilogue
        _rnn.gemm(x2, np.ascontiguousarray(self.weight.data).T, y,
                  self.bias.data if self.has_bias else None, False, get_num_threads())
        self._cache = (x2, x.shape) if self.training else None
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, grad_output):
        """Accumulate dW = dYᵀ X and db = Σ dY; return dX = dY W."""
        if self._cache is None:
            raise self._no_cache_error()
        x2, x_shape = self._cache
        g = _check_grad_output(grad_output, x_shape[:-1] + (self.out_features,), self.dtype)
        g2 = np.ascontiguousarray(g.reshape(-1, self.out_features))
        threads = get_num_threads()
        # dW += dYᵀ X, reading dY transposed in place and accumulating into the gradient;
        # Σ_rows dY (db) from the same reading of dY
        db = np.empty(self.out_features, dtype=self.dtype) if self.has_bias else None
        dW = _checked_grad(self.weight, "weight", kernel=True)
        if self.has_bias:
            _checked_grad(self.bias, "bias", kernel=True)
        _rnn.gemm(g2, x2, dW, None, True, threads, True, db)
        if self.has_bias:
            self.bias.grad += db
        dx = np.empty_like(x2)
        _rnn.gemm(g2, self.weight.data, dx, None, False, threads)  # dX = dY W
        return dx.reshape(x_shape)


_REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyLoss:
    """Cross-entropy of logits (..., C) against integer class targets (...) (torch semantics).

    ``loss = ce(logits, targets)`` computes ``-log softmax(logits)[target]`` with a fused,
    numerically stable log-softmax (compiled), reduced by ``reduction``: 'mean' over the
    targets that are not ``ignore_index`` (NaN if there are none, as torch), 'sum', or
    'none' (an array shaped like ``targets``, 0 at ignored positions). ``ce.backward()``
    returns d loss / d logits.

    Unlike torch, the class dimension is the last one (the layout of :class:`Linear`'s
    output), not dimension 1.

    Parameters
    ----------
    ignore_index : int, default -100
        Targets with this value contribute neither to the loss nor to the gradient.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    """

    def __init__(self, ignore_index=-100, reduction="mean"):
        if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
            raise ValueError(f"{reduction!r} is not a valid value for reduction; "
                             f"expected one of {_REDUCTIONS}")
        self.ignore_index = _check_int(ignore_index, "ignore_index")
        self.reduction = reduction
        self._cache = None

    def __repr__(self):
        return f"CrossEntropyLoss(ignore_index={self.ignore_index}, reduction={self.reduction!r})"

    def __call__(self, logits, targets):
        return self.forward(logits, targets)

    def forward(self, logits, targets):
        """The loss: a float for 'mean' and 'sum', an array shaped like targets for 'none'."""
        logits = np.asarray(logits)
        targets = np.asarray(targets)
        if logits.dtype not in (np.float32, np.float64):
            raise TypeError(f"logits must be a float32 or float64 array, got dtype {logits.dtype}")
        if targets.dtype.kind not in "iu":
            raise TypeError(f"targets must be integers (class indices), got dtype {targets.dtype}")
        if logits.ndim < 1 or logits.shape[:-1] != targets.shape:
            raise ValueError(f"logits must have shape targets.shape + (C,) = "
                             f"{targets.shape + ('C',)}, got {logits.shape}")
        C = logits.shape[-1]
        if C == 0:
            raise ValueError(f"logits must have at least one class, got shape {logits.shape}")
        x = np.ascontiguousarray(logits).reshape(-1, C)
        t = _check_indices(targets, "Target", C, ignore=self.ignore_index,
                           is_out=f"out of bounds for {C} classes").reshape(-1)
        losses = np.empty(t.shape[0], dtype=logits.dtype)
        probs = np.empty_like(x)
        _ops.cross_entropy_forward(x, t, self.ignore_index, losses, probs, _threads_for(x.size))
        count = int(np.count_nonzero(t != self.ignore_index))
        self._cache = (probs, t, count, targets.shape, logits.shape)
        if self.reduction == "none":
            return losses.reshape(targets.shape)
        total = float(losses.sum(dtype=np.float64))
        if self.reduction == "sum":
            return total
        return total / count if count else float("nan")

    def backward(self, grad=1.0):
        """d loss / d logits for the last forward call.

        Parameters
        ----------
        grad : float, or for reduction='none' an array shaped like the targets
            The gradient of the final objective with respect to the loss (chain rule).

        Returns
        -------
        ndarray shaped like the logits.
        """
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward needs a forward call first")
        probs, t, count, t_shape, shape = self._cache
        if self.reduction == "none":
            g = np.asarray(grad)
            if g.dtype.kind not in "fiu":
                raise TypeError(f"grad must be a real number or a float array shaped like the "
                                f"targets {t_shape}, got dtype {g.dtype}")
            if g.shape not in ((), t_shape):
                raise ValueError(f"grad must be a scalar or have the targets' shape {t_shape},"
                                 f" got {g.shape}")
            scale = np.ascontiguousarray(np.broadcast_to(g.astype(probs.dtype), t_shape))
            scale = scale.reshape(-1)
        else:
            g = _check_real(grad, "grad", allow_inf=True)
            if self.reduction == "mean":
                g = g / count if count else 0.0
            scale = np.full(t.shape[0], g, dtype=probs.dtype)
        out = np.empty_like(probs)
        _ops.cross_entropy_backward(probs, t, self.ignore_index, scale, out,
                                    _threads_for(out.size))
        return out.reshape(shape)


def _grads(parameters):
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    try:
        parameters = list(parameters)
    except TypeError:
        raise TypeError("parameters must be a Parameter or an iterable of Parameters, got "
                        f"{type(parameters).__name__}") from None
    for i, p in enumerate(parameters):
        if not isinstance(p, Parameter):
            raise TypeError(f"parameters[{i}] must be a Parameter, got {type(p).__name__}")
    return [_checked_grad(p, f"parameters[{i}]") for i, p in enumerate(parameters)]


def _vector_norm(a, p):
    """torch.linalg.vector_norm(a, p) of an array, accumulated in float64."""
    if p in (math.inf, -math.inf):
        if not a.size:
            raise RuntimeError(f"cannot compute the {p} norm of an empty gradient (torch "
                               "refuses it too: the max/min of nothing is undefined)")
        m = np.abs(a)
        return float(m.max() if p > 0 else m.min())
    if p == 0:
        return float(np.count_nonzero(a))
    if p == 2.0:
        a = a.reshape(-1)
        return math.sqrt(float(np.dot(a, a)))  # a BLAS dot: no temporary array
    with np.errstate(divide="ignore", over="ignore"):  # |0|^p for p < 0 is inf, as torch's
        return float(np.sum(np.abs(a.astype(np.float64, copy=False)) ** p) ** (1.0 / p))


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale gradients in place so that their total norm is at most ``max_norm`` (torch's).

    The total norm is the ``norm_type``-norm of the vector of the gradients' norms (for
    p ≠ 0 the norm of all gradients concatenated); gradients are multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))``, so a NaN norm or ``max_norm`` makes them
    NaN and a negative ``max_norm`` flips their sign, exactly as in torch.

    Parameters
    ----------
    parameters : Parameter or iterable of Parameter
    max_norm : float (anything ``float()`` accepts, as torch)
    norm_type : float or str, default 2
        Any p torch's ``vector_norm`` accepts: positive, negative, 0 (the number of
        non-zero entries), ``inf`` or ``'inf'`` (max-abs), ``-inf`` (min-abs).
    error_if_nonfinite : bool, default False
        Raise RuntimeError if the total norm is NaN or infinite.

    Returns
    -------
    float
        The total norm of the gradients before clipping.
    """
    grads = _grads(parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)  # torch's conversions
    if not grads:
        return 0.0
    total = _vector_norm(np.array([_vector_norm(g, norm_type) for g in grads]), norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, "
                           "so it cannot be clipped")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # NaN included, as torch's clamp(coef, max=1)
        for g in grads:
            g *= g.dtype.type(coef)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clip every gradient element into [-clip_value, clip_value], in place (torch's).

    ``clip_value`` is converted with ``float()``, as torch does.
    """
    clip_value = float(clip_value)
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
