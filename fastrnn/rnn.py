"""``fastrnn.RNN``: the torch.nn.RNN-like module, built on :mod:`fastrnn.functional`."""

import math
import numbers
import warnings

import numpy as np

from . import functional
from ._layout import directions, param_shapes
from ._validate import _as_rng, _check_dtype, _check_size
from .module import Module, new_parameter
from .precision import resolve
from .stream import KeptStream, Stream, StreamOptions

__all__ = ["RNN", "LSTM", "GRU"]


class _Recurrent(Module):
    """What RNN, LSTM and GRU share: options, torch's initialisation, dropout masks, and
    forward/backward through the cell's functional pair. A subclass names its cell
    (``_cell``: functional's ``{cell}_forward`` / ``{cell}_backward``), its gates per hidden
    unit and the cell's own functional options."""

    _cell, _gates = None, 1

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, dtype, seed, precision, proj_size=0):
        super().__init__()
        self.input_size = _check_size(input_size, "input_size")
        self.hidden_size = _check_size(hidden_size, "hidden_size")
        self.num_layers = _check_size(num_layers, "num_layers")
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout!r}")
        if dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={self.num_layers}", UserWarning,
                          stacklevel=3)
        self.dtype = _check_dtype(dtype)
        resolve(precision, self.dtype)  # a float64 module refuses bfloat16 here, not per call
        self.precision = precision
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = proj_size
        self._rng = _as_rng(seed)
        self._cache = None
        self._inference = KeptStream()  # for short eval forwards
        bound = 1 / math.sqrt(self.hidden_size)  # torch: every parameter U(-1/√H, 1/√H)
        for name, shape in param_shapes(self.input_size, self.hidden_size, self.num_layers,
                                        self.bidirectional, self.bias, self._gates,
                                        proj_size).items():
            setattr(self, name, new_parameter(
                shape, self.dtype, lambda s: self._rng.uniform(-bound, bound, size=s)))

    def _repr_args(self, defaults):
        args = [f"{self.input_size}", f"{self.hidden_size}"]
        for name, default in defaults:
            value = getattr(self, name)
            if value != default:
                args.append(f"{name}={value!r}")
        if self.dtype != np.float32:
            args.append(f"dtype=np.{self.dtype}")
        if self.precision is not None:
            args.append(f"precision={self.precision!r}")
        return f"{type(self).__name__}({', '.join(args)})"

    def _clear_cache(self):
        self._cache = None

    def train(self, mode=True):
        if mode:
            self._inference.clear()  # short eval forwards' weights: not kept while training
        return super().train(mode)

    def _cell_options(self):
        """Keyword arguments of the cell's functional forward beyond the common ones."""
        return {}

    # computation -------------------------------------------------------------------------
    def _dropout_masks(self, seq_len, batch):
        if not (self.training and self.dropout > 0 and self.num_layers > 1):
            return None
        width = self.proj_size or self.hidden_size
        shape = (seq_len, batch, directions(self.bidirectional) * width)
        if self.dropout == 1:
            return [np.zeros(shape, dtype=self.dtype) for _ in range(self.num_layers - 1)]
        scale = self.dtype.type(1 / (1 - self.dropout))
        return [(self._rng.random(shape) >= self.dropout).astype(self.dtype) * scale
                for _ in range(self.num_layers - 1)]

    def _forward(self, x, hx, lengths):
        if not self.training and lengths is None:
            result = self._short_forward(x, hx)
            if result is not None:
                return result
        x_arr = np.asarray(x)
        masks = None
        if x_arr.ndim in (2, 3):
            if x_arr.ndim == 2:
                seq_len, batch = x_arr.shape[0], 1
            else:
                seq_len, batch = ((x_arr.shape[1], x_arr.shape[0]) if self.batch_first
                                  else x_arr.shape[:2])
            masks = self._dropout_masks(seq_len, batch)
        forward = getattr(functional, f"{self._cell}_forward")
        output, state, cache = forward(
            x_arr, {name: p.data for name, p in self._params.items()}, hx,
            num_layers=self.num_layers, bidirectional=self.bidirectional,
            batch_first=self.batch_first, lengths=lengths, dropout_masks=masks,
            keep_cache=self.training, precision=self.precision, **self._cell_options())
        self._cache = cache
        return output, state

    def stream(self, batch_size=1, h0=None):
        """A :class:`fastrnn.Stream` over this (unidirectional) module: run it a step or a
        chunk at a time, the state kept between calls, ``batch_size`` sequences side by side;
        ``h0`` as :meth:`fastrnn.Stream.reset` takes it."""
        return Stream(self, batch_size, h0)

    def _short_forward(self, x, hx):
        """An eval-mode forward of a few steps (:meth:`KeptStream.fits`) on the module's kept
        stream: bitwise the functional forward, without packing the weights each call. None
        where the call is not one (long sequences; arguments the functional forward must
        check and report on; another thread's call holding the stream): then that forward
        runs."""
        if (type(x) is not np.ndarray or x.dtype != self.dtype or x.ndim not in (2, 3)
                or x.shape[-1] != self.input_size):
            return None
        unbatched = x.ndim == 2
        steps, N = (x.shape[0], 1) if unbatched else (
            x.shape[:2][::-1] if self.batch_first else x.shape[:2])
        if not KeptStream.fits(steps, N):
            return None
        widths = (self.proj_size or self.hidden_size, self.hidden_size)[:2 if self._gates == 4
                                                                        else 1]
        if len(widths) == 1:
            given = (hx,)
        elif hx is None:
            given = (None, None)
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            given = tuple(hx)
        else:
            return None
        layers = directions(self.bidirectional) * self.num_layers
        for s, width in zip(given, widths):
            if s is not None and not (
                    type(s) is np.ndarray and s.dtype == self.dtype
                    and s.shape == ((layers, width) if unbatched else (layers, N, width))):
                return None
        if unbatched:  # one sequence: a batch of one, in the stream's layout
            x = x[None] if self.batch_first else x[:, None]
            given = tuple(None if s is None else s[:, None] for s in given)
        options = StreamOptions(
            self._cell, self.num_layers, self.input_size, self.hidden_size, self.proj_size,
            self.dtype, self._cell_options().get("nonlinearity") == "relu", self.batch_first,
            resolve(self.precision, self.dtype), self.bidirectional)
        result = self._inference.run(options, {name: p.data for name, p in self._params.items()},
                                     x, given)
        if result is None:
            return None
        out, finals = result
        if self._cache is not None:
            self._cache = None
        if unbatched:
            out = out[0] if self.batch_first else out[:, 0]
            finals = tuple(f[:, 0] for f in finals)
        return out, (finals if len(widths) == 2 else finals[0])

    def _backward(self, grad_output, grad_state, input_grad, param_grads):
        if self._cache is None:
            raise RuntimeError("backward needs a forward pass in training mode first "
                               f"(call .train() and then the {type(self).__name__} on x)")
        backward = getattr(functional, f"{self._cell}_backward")
        grad_x, grad_state0, grads = backward(self._cache, grad_output, grad_state,
                                              input_grad=input_grad, param_grads=param_grads)
        for name, g in (grads or {}).items():
            self._params[name].grad += g
        return grad_x, grad_state0


class RNN(_Recurrent):
    """A multi-layer Elman RNN with torch.nn.RNN's semantics and compiled kernels.

    ``h_t = act(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)`` with act = tanh or relu.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}, default 'tanh'
    bias : bool, default True
    batch_first : bool, default False
        Input and output as (N, L, ·) instead of (L, N, ·); h0 and h_n stay (D·layers, N, H).
    dropout : float in [0, 1], default 0
        Dropout on the output of every layer but the last, in training mode only.
    bidirectional : bool, default False
    dtype : {np.float32, np.float64}, default np.float32
    seed : None, int or numpy.random.Generator
        Source of the initial weights (U(-1/√H, 1/√H), as torch) and of dropout masks.
    precision : {None, 'float32', 'bfloat16'}, default None
        Of the matrix products, forward and backward (:mod:`fastrnn.precision`): 'bfloat16'
        rounds their operands to bfloat16 and sums in float32 (parameters, states and
        gradients stay float32; float32 modules only). None follows
        :func:`fastrnn.set_matmul_precision` at each call.

    Notes
    -----
    ``rnn(x, h0, lengths)`` runs forward; in training mode (the default) it keeps what
    :meth:`backward` needs, which accumulates parameter gradients into ``p.grad``.
    Unlike torch, a sequence length of 0 (or a per-sequence length of 0) is accepted:
    its outputs are empty (or 0) and h_n = h0.
    """

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32,
                 seed=None, precision=None):
        if nonlinearity not in functional.NONLINEARITIES:
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, precision)
        self.nonlinearity = nonlinearity

    def __repr__(self):
        return self._repr_args((("num_layers", 1), ("nonlinearity", "tanh"), ("bias", True),
                                ("batch_first", False), ("dropout", 0.0),
                                ("bidirectional", False)))

    def _cell_options(self):
        return {"nonlinearity": self.nonlinearity}

    def forward(self, x, h0=None, lengths=None):
        """Run the RNN over ``x``.

        Parameters
        ----------
        x : ndarray, (L, N, input_size), (N, L, input_size) if batch_first, or (L, input_size).
        h0 : ndarray, (D·num_layers, N, hidden_size) or 2-D if unbatched; None for zeros.
        lengths : array of int, (N,), optional. Valid steps per sequence, any order.

        Returns
        -------
        output : ndarray, (L, N, D·hidden_size) (batch-first or unbatched like x)
        h_n : ndarray, (D·num_layers, N, hidden_size) (2-D if unbatched)
        """
        return self._forward(x, h0, lengths)

    def backward(self, grad_output, grad_h_n=None, *, input_grad=True, param_grads=True):
        """Backpropagate through the last training-mode forward.

        Parameter gradients accumulate into ``p.grad`` (until :meth:`zero_grad`).

        Parameters
        ----------
        grad_output : ndarray shaped like that forward's output.
        grad_h_n : ndarray shaped like its h_n, or None for zeros.
        input_grad : bool, default True
            False skips the input's gradient (the first layer's product dA·W_ih, for an
            input that needs none) and returns None for ``grad_x``.
        param_grads : bool or collection of str, default True
            Which parameters' gradients to compute and accumulate: all, none (False: for
            the gradients of the input or h0 alone) or those named (frozen layers left
            out, their ``p.grad`` as it is). What is skipped is most of the work.

        Returns
        -------
        grad_x : ndarray shaped like the input, or None.
        grad_h0 : ndarray shaped like h0.
        """
        return self._backward(grad_output, grad_h_n, input_grad, param_grads)


class LSTM(_Recurrent):
    """A multi-layer LSTM with torch.nn.LSTM's semantics and compiled kernels.

    Gates i, f, g, o (torch's order in ``weight_ih`` (4H, I) and ``weight_hh`` (4H, H_out)):
    ``c_t = f ⊙ c_{t-1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)``; with ``proj_size`` P > 0,
    ``h_t = W_hr (o ⊙ tanh(c_t))`` is P wide (c stays H wide) — kept on the compiled path,
    which torch's fast CPU path drops.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bias, batch_first, dropout, bidirectional, dtype, seed, precision : as :class:`RNN`
    proj_size : int, default 0
        0 (no projection) or 0 < proj_size < hidden_size.

    Notes
    -----
    ``lstm(x, (h0, c0), lengths)`` runs forward (``hx`` None or a pair, either entry None for
    zeros); :meth:`backward` takes ``(grad_h_n, grad_c_n)`` (either None). Lengths of 0 are
    accepted (h_n = h0, c_n = c0, outputs 0), as is a sequence length of 0.
    """

    _cell, _gates = "lstm", 4

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32, seed=None,
                 precision=None):
        proj_size = _check_size(proj_size, "proj_size", allow_zero=True)
        hidden = _check_size(hidden_size, "hidden_size")
        if proj_size >= hidden:
            raise ValueError("proj_size has to be smaller than hidden_size, got "
                             f"proj_size={proj_size} and hidden_size={hidden}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, precision, proj_size)

    def __repr__(self):
        return self._repr_args((("num_layers", 1), ("bias", True), ("batch_first", False),
                                ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0)))

    def forward(self, x, hx=None, lengths=None):
        """Run the LSTM over ``x``.

        Parameters
        ----------
        x : ndarray, (L, N, input_size), (N, L, input_size) if batch_first, or (L, input_size).
        hx : None or (h0, c0): h0 (D·num_layers, N, H_out), c0 (D·num_layers, N, hidden_size)
            (2-D if unbatched), either None for zeros.
        lengths : array of int, (N,), optional. Valid steps per sequence, any order.

        Returns
        -------
        output : ndarray, (L, N, D·H_out) (batch-first or unbatched like x)
        (h_n, c_n) : the final states, shaped like h0 and c0.
        """
        return self._forward(x, hx, lengths)

    def backward(self, grad_output, grad_hx=None, *, input_grad=True, param_grads=True):
        """Backpropagate through the last training-mode forward; ``grad_hx`` is None or
        (grad_h_n, grad_c_n), either None for zeros; ``input_grad`` and ``param_grads`` as
        :meth:`RNN.backward`'s. Returns grad_x, (grad_h0, grad_c0)."""
        return self._backward(grad_output, grad_hx, input_grad, param_grads)


class GRU(_Recurrent):
    """A multi-layer GRU with torch.nn.GRU's semantics and compiled kernels.

    Gates r, z, n (torch's order): ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``,
    ``h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}``.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bias, batch_first, dropout, bidirectional, dtype, seed, precision : as :class:`RNN`

    Notes
    -----
    ``gru(x, h0, lengths)`` and ``gru.backward(grad_output, grad_h_n)`` as :class:`RNN`.
    """

    _cell, _gates = "gru", 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
                 seed=None, precision=None):
        if proj_size != 0:  # accepted only to refuse it as torch does
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, precision)

    def __repr__(self):
        return self._repr_args((("num_layers", 1), ("bias", True), ("batch_first", False),
                                ("dropout", 0.0), ("bidirectional", False)))

    def forward(self, x, h0=None, lengths=None):
        """Run the GRU over ``x``; as :meth:`RNN.forward`. Returns output, h_n."""
        return self._forward(x, h0, lengths)

    def backward(self, grad_output, grad_h_n=None, *, input_grad=True, param_grads=True):
        """Backpropagate through the last training-mode forward; as :meth:`RNN.backward`."""
        return self._backward(grad_output, grad_h_n, input_grad, param_grads)
