"""Streaming inference: a unidirectional RNN, LSTM or GRU fed a step (or a chunk of steps) per
call, its state kept between calls — speech and sensor streams, controllers, generation.

>>> lstm = fastrnn.LSTM(40, 128, num_layers=2).eval()
>>> stream = lstm.stream(batch_size=1)     # holds the state, the packed weights, the buffers
>>> for frame in frames:                   # frame: (1, 40), or a chunk (T, 1, 40)
...     y = stream(frame)                  # (1, 128): the last layer's h, read-only
>>> h, c = stream.state                    # shaped like the module's (h_n, c_n)

A stream computes what the module computes in eval mode: its outputs are bitwise those of
the whole sequence through the module at once (``module(x, h0)``), however the sequence is
cut into calls and whatever the thread count.
"""

import threading
from collections import namedtuple

import numpy as np

from . import _rnn
from ._engine import CELLS, ELMAN, LSTM, check_float_array, check_params
from ._gated import _KERNEL as _GATED_KERNEL, _cell_weights
from .functional import _stacked_input_weights
from ._layout import PARAM_KINDS, layer_keys, state_index, to_time_major
from ._memory import cached_allocation
from .precision import PRECISIONS, resolve
from ._validate import _check_size

__all__ = ["Stream"]

_KERNEL = {"RNN": _rnn.ELMAN, **_GATED_KERNEL}  # the compiled core's cell numbers


# Eval-mode forwards of up to SHORT_FORWARD_STEPS steps, of up to STREAM_FORWARD_STEPS steps
# of up to STREAM_FORWARD_BATCH sequences, or of up to ROWS_STREAM_FORWARD_STEPS steps of
# 2 to ROWS_STREAM_FORWARD_BATCH sequences, run on a stream kept by the module (weights
# packed once, checked against a copy each call) rather than packing them per call: for so
# few steps the packing costs more than the whole-sequence path's one GEMM for the input
# projection saves over the stream's projection step by step. That projection reads all of
# W_ih each step for however few rows, so a single sequence's break-even comes first
# (docs/performance.md)
SHORT_FORWARD_STEPS = 8
STREAM_FORWARD_STEPS = 24
STREAM_FORWARD_BATCH = 32
ROWS_STREAM_FORWARD_STEPS = 48
ROWS_STREAM_FORWARD_BATCH = 16


class _PackedStream(_rnn.StreamCore):
    """Steps on weights packed from a dict of parameter arrays: what :class:`Stream` and the
    streams of short forwards (:class:`KeptStream`) share."""

    def _start(self, cell, num_layers, batch_size, input_size, hidden_size, proj_size, dtype,
               relu, batch_first, bf16):
        """Allocate the stream: ``cell`` 'rnn', 'lstm' or 'gru', the rest as the module's."""
        self._cell = CELLS[cell]
        self._num_layers = num_layers
        with cached_allocation():  # its buffers cache-line aligned: the threads share rows
            self._setup(_KERNEL[self._cell.name], num_layers, batch_size, input_size,
                        hidden_size, proj_size, dtype, relu, batch_first, bf16)

    def _resize(self, batch_size):
        """Run ``batch_size`` rows from now on, on the weights packed already (state zero)."""
        with cached_allocation():
            self._resize_batch(batch_size)

    def _pack(self, params):
        """Pack ``params`` (parameter arrays by torch's names) as the stream's weights."""
        sizes = check_params(params, self._num_layers, False, self._cell)
        for layer in range(self._num_layers):
            (k,) = layer_keys(layer, False)
            if self._cell is ELMAN:
                w_ih, b = _stacked_input_weights(params, (k,), sizes.bias)
                self._load(layer, w_ih, b, params[f"weight_hh_{k}"], None, None)
            else:
                self._load(layer, *_cell_weights(self._cell, params, k, sizes))
        self._checked()

    def _refresh_if_stale(self):
        # a parameter changed somewhere; a kept stream compares its weights itself
        self._checked()


class Stream(_PackedStream):
    """A unidirectional :class:`~fastrnn.RNN`, :class:`~fastrnn.LSTM` or :class:`~fastrnn.GRU`
    run step by step (``module.stream(batch_size)``).

    ``stream(x)`` runs one step, x (N, I), or a chunk, x (T, N, I) ((N, T, I) if the module is
    batch_first), from the current state, and returns the last layer's h: (N, H_out) or
    (T, N, H_out) ((N, T, H_out)). The returned array is the stream's own buffer, read-only
    and valid until the next call; ``stream(x, out=y)`` writes into ``y`` instead. Eval
    semantics: no dropout, nothing kept for backward. The GIL is released during the steps,
    so streams on different Python threads run in parallel (one stream, one thread at a
    time).

    The stream packs the module's weights once. Before each call it checks whether any
    parameter changed since (an optimizer's step, ``load_state_dict``, assigning ``p.data``,
    ``p.mark_changed()``) and repacks those of its module if so. Writing into a parameter's
    array by hand (``p.data[...] = w``) is not seen: call ``p.mark_changed()`` or
    :meth:`refresh` afterwards.

    Parameters
    ----------
    module : fastrnn.RNN, LSTM or GRU, unidirectional
    batch_size : int, default 1
        Independent sequences the stream runs side by side (rows of x).
    h0 : the initial state as :meth:`reset` takes it; None for zeros.
    precision : {None, 'float32', 'bfloat16'}
        Of its matrix products; None takes the module's (its ``precision``, or the process
        default now). Fixed for the stream's life; the packed weights are then bfloat16.
    """

    def __init__(self, module, batch_size=1, h0=None, *, precision=None, _time_major=False):
        from .rnn import _Recurrent  # (rnn imports this module)
        if not isinstance(module, _Recurrent):
            raise TypeError(f"a Stream runs a fastrnn RNN, LSTM or GRU, got "
                            f"{type(module).__name__}")
        if module.bidirectional:
            raise ValueError(f"a bidirectional {type(module).__name__} cannot be streamed: its "
                             "backward direction needs the whole sequence before its first "
                             "output; run the module on the whole sequence instead")
        batch_size = _check_size(batch_size, "batch_size")
        bf16 = resolve(module.precision if precision is None else precision, module.dtype)
        self.module = module
        self._start(module._cell, module.num_layers, batch_size, module.input_size,
                    module.hidden_size, module.proj_size, module.dtype,
                    getattr(module, "nonlinearity", "") == "relu",
                    module.batch_first and not _time_major, bf16)
        self._versions = None
        self.refresh()
        self.reset(h0)

    def __repr__(self):
        precision = ", precision='bfloat16'" if self.bf16 else ""
        return f"Stream({self.module!r}, batch_size={self.batch_size}{precision})"

    @property
    def precision(self):
        """Of the stream's matrix products: 'float32' or 'bfloat16'."""
        return PRECISIONS[self.bf16]

    # weights -----------------------------------------------------------------------------
    def _parameter_versions(self):
        return tuple((id(p), p.version) for p in self.module._params.values())

    def refresh(self):
        """Pack the module's current weights (after writing into ``p.data`` by hand)."""
        self._acquire()
        try:
            self._repack()
        finally:
            self._release()

    def _repack(self):
        self._pack({name: p.data for name, p in self.module._params.items()})
        self._versions = self._parameter_versions()

    def _refresh_if_stale(self):
        # some parameter changed somewhere: repack if it was one of this module's
        if self._parameter_versions() != self._versions:
            self._repack()  # (within the call, which holds the stream)
        else:
            self._checked()

    # state -------------------------------------------------------------------------------
    @property
    def state(self):
        """A copy of the state, shaped like the module's h_n ((h_n, c_n) for an LSTM):
        (num_layers, batch_size, H_out)."""
        self._acquire()
        try:
            h, c = self._state_buffers()
            return h.copy() if c is None else (h.copy(), c.copy())
        finally:
            self._release()

    def reset(self, h0=None, rows=None):
        """Set the state to ``h0`` (zeros if None), for every row or only ``rows``.

        Parameters
        ----------
        h0 : None, or h (num_layers, n, H_out) — for an LSTM, None or a pair (h0, c0), c0
            (num_layers, n, hidden_size), either None for zeros — where n is batch_size, or
            the number of ``rows``.
        rows : None (every row), or indices (ints or a boolean mask) of the batch rows to
            reset, as NumPy indexes the batch axis.
        """
        self._acquire()
        try:
            self._reset(h0, rows)
        finally:
            self._release()

    def _reset(self, h0, rows):
        h, c = self._state_buffers()
        N = self.batch_size
        if rows is None:
            index = slice(None)
            n = N
        else:
            if not isinstance(rows, slice):
                rows = np.asarray(rows)
                if rows.size == 0:
                    rows = rows.astype(np.intp)  # [] is a float array to NumPy
            try:
                index = np.arange(N)[rows]
            except IndexError as e:
                raise IndexError(f"rows must index the stream's batch of {N}: {e}") from None
            if index.ndim != 1:
                raise ValueError(f"rows must be one-dimensional, got shape {index.shape}")
            n = index.shape[0]
        lstm = self._cell is LSTM
        if lstm:
            if h0 is not None and not (isinstance(h0, (tuple, list)) and len(h0) == 2):
                raise TypeError("an LSTM stream's h0 is None or a pair (h0, c0)")
            given = (None, None) if h0 is None else h0
        else:
            given = (h0,)
        checked = []
        for buf, s, name in zip((h, c), given, ("h0", "c0")):
            if s is None:
                checked.append(None)
                continue
            s = check_float_array(s, name, buf.dtype)
            want = (buf.shape[0], n, buf.shape[2])
            if s.shape != want:
                raise ValueError(f"Expected {name} of shape {want} (num_layers, "
                                 f"{'batch_size' if rows is None else 'rows'}, width), got "
                                 f"{s.shape}")
            checked.append(s)
        for buf, s in zip((h, c), checked):  # everything checked before anything changes
            buf[:, index] = 0 if s is None else s


#: What a kept stream is built for: the module's options, the dtype, whether the products
#: take bfloat16 operands; cell is 'rnn', 'lstm' or 'gru'
StreamOptions = namedtuple("StreamOptions", "cell num_layers input_size hidden_size proj_size "
                                            "dtype relu batch_first bf16 bidirectional")


class KeptStream:
    """The streams a module keeps for its short eval forwards (:meth:`fits`): the weights
    packed once and compared with a copy of the parameters on every call, so that no change
    to them, however made (a write into an array by hand included), is missed. Results are
    bitwise the functional forward's. One call at a time: :meth:`run` returns None while
    another thread's call holds the streams, and that caller packs its own weights.

    A unidirectional network runs on one stream; a bidirectional one layer by layer, on a
    one-layer stream per layer and direction, the reverse direction's over the sequence
    reversed in time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kept = None  # (key, streams, copies of the weights they packed)

    @staticmethod
    def fits(steps, batch):
        """Whether a forward of ``steps`` steps of ``batch`` sequences is a short one."""
        few_steps = 0 < steps <= SHORT_FORWARD_STEPS
        short_small_batch = 0 < steps <= STREAM_FORWARD_STEPS and batch <= STREAM_FORWARD_BATCH
        several_rows = (0 < steps <= ROWS_STREAM_FORWARD_STEPS
                        and 2 <= batch <= ROWS_STREAM_FORWARD_BATCH)
        return batch > 0 and (few_steps or short_small_batch or several_rows)

    def clear(self):
        """Free the streams and the copies (until the next call)."""
        self._kept = None

    def run(self, options, params, x, states):
        """The output and final states of a forward on the kept streams.

        ``options``: a :class:`StreamOptions`; ``params`` the parameter arrays by name; ``x``
        (T, N, I), (N, T, I) if batch_first; ``states`` (h0,) or, for an LSTM, (h0, c0), each
        None (zeros) or (D·num_layers, N, width). Returns (output, finals) with finals shaped
        as ``states``, or None if the streams are busy.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._run(options, params, x, states)
        finally:
            self._lock.release()

    def _run(self, options, params, x, states):
        N = x.shape[0] if options.batch_first else x.shape[1]
        arrays = list(params.values())
        key = (options, tuple(params))
        if self._kept is None or self._kept[0] != key:
            self._kept = None  # (the old streams' memory first)
            streams, copies = _new_streams(options, N), [a.copy() for a in arrays]
            _pack_streams(streams, dict(zip(params, copies)))
            self._kept = (key, streams, copies)
        else:
            _, streams, copies = self._kept
            if streams[0].batch_size != N:  # the packed weights serve any batch
                for stream in streams:
                    stream._resize(N)
            if not _rnn.same_contents(arrays, copies):
                for a, c in zip(arrays, copies):
                    c[...] = a
                _pack_streams(streams, dict(zip(params, copies)))
        num_layers, dtype = options.num_layers, options.dtype
        width = options.proj_size or options.hidden_size
        out = np.empty(x.shape[:2] + ((2 if options.bidirectional else 1) * width,), dtype=dtype)
        if not options.bidirectional:
            (stream,) = streams
            for buf, s in zip(stream._state_buffers(), states):
                buf[...] = 0 if s is None else s
            stream(x, out=out)
            return out, tuple(b.copy() for b in stream._state_buffers()[:len(states)])
        finals = tuple(np.empty((2 * num_layers, N, w), dtype=dtype)
                       for w in (width, options.hidden_size)[:len(states)])
        inp = to_time_major(x, options.batch_first)[0]  # (time-major views)
        for layer in range(num_layers):
            y = (to_time_major(out, options.batch_first)[0] if layer == num_layers - 1
                 else np.empty((inp.shape[0], N, 2 * width), dtype=dtype))
            for d in (0, 1):
                i = state_index(layer, d, True)
                stream = streams[i]
                for buf, s in zip(stream._state_buffers(), states):
                    buf[0] = 0 if s is None else s[i]
                y_d = y[:, :, d * width:(d + 1) * width]
                stream(inp[::-1] if d else inp, out=y_d[::-1] if d else y_d)
                for final, buf in zip(finals, stream._state_buffers()):
                    final[i] = buf[0]
            inp = y
        return out, finals


def _new_streams(o, N):
    """The streams of :class:`StreamOptions` ``o`` for a batch of N: one, or a one-layer
    stream per layer and direction (in state_index order) of a bidirectional network."""
    if not o.bidirectional:
        return [_started(o, o.num_layers, N, o.input_size, o.batch_first)]
    below = 2 * (o.proj_size or o.hidden_size)  # a layer's input past the first
    return [_started(o, 1, N, o.input_size if layer == 0 else below, False)
            for layer in range(o.num_layers) for _ in range(2)]


def _started(o, num_layers, N, input_size, batch_first):
    """A stream of ``o``'s cell and sizes, with these."""
    stream = _PackedStream()
    stream._start(o.cell, num_layers, N, input_size, o.hidden_size, o.proj_size, o.dtype,
                  o.relu, batch_first, o.bf16)
    return stream


def _pack_streams(streams, params):
    """Pack ``params`` into :func:`_new_streams`' streams: all of them into the one of a
    unidirectional network, each layer and direction's into its own otherwise."""
    if len(streams) == 1:
        streams[0]._pack(params)
        return
    for i, stream in enumerate(streams):
        k = layer_keys(i // 2, True)[i % 2]  # (streams in state_index order)
        stream._pack({f"{kind}_l0": params[f"{kind}_{k}"] for kind in PARAM_KINDS
                      if f"{kind}_{k}" in params})
