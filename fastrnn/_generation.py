"""Generation from an Embedding → recurrent network → Linear stack, for every cell.

:func:`sample_tokens` (re-exported by :mod:`fastrnn.models`, whose models call it) and the
two helpers the models use to pass a recurrent state around whatever the cell: a state is
one array (RNN, GRU) or the pair (h, c) (LSTM), as the modules take and return it.
"""

import numpy as np

from . import _ops, _rnn
from ._validate import _as_rng, _check_indices, _check_int, _check_real, _check_size
from .parallel import get_num_threads
from .rnn import GRU, LSTM, RNN
from .stream import Stream

__all__ = ["sample_tokens", "state_arrays", "as_state"]

_STATE_NAMES = ("h0", "c0")


def state_arrays(state):
    """A recurrent state as a list of arrays: [h], or [h, c] for an LSTM's pair."""
    return list(state) if isinstance(state, tuple) else [state]


def as_state(arrays):
    """The inverse of :func:`state_arrays`: one array, or the pair (h, c)."""
    return tuple(arrays) if len(arrays) == 2 else arrays[0]


def _state_widths(rnn):
    """Widths of the states a module carries per layer: (H,), or (H_out, H) for an LSTM."""
    if isinstance(rnn, LSTM):
        return (rnn.proj_size or rnn.hidden_size, rnn.hidden_size)
    return (rnn.hidden_size,)


def _initial_states(rnn, h0, B, single):
    """h0 (None, an array, or an LSTM's pair whose entries may be None) as a list of
    (num_layers, B, width) arrays of the RNN's dtype, zeros where not given."""
    widths = _state_widths(rnn)
    if h0 is None:
        given = [None] * len(widths)
    elif len(widths) == 2:
        if not isinstance(h0, (tuple, list)) or len(h0) != 2:
            raise TypeError(f"h0 of an LSTM must be None or a pair (h0, c0), got "
                            f"{type(h0).__name__}")
        given = list(h0)
    else:
        given = [h0]
    states = []
    for s, width, name in zip(given, widths, _STATE_NAMES):
        if s is None:
            states.append(np.zeros((rnn.num_layers, B, width), dtype=rnn.dtype))
            continue
        s = np.asarray(s)
        want = (rnn.num_layers, width) if single else (rnn.num_layers, B, width)
        if s.dtype != rnn.dtype:
            raise TypeError(f"{name} dtype ({s.dtype}) does not match the RNN's dtype "
                            f"({rnn.dtype})")
        if s.shape != want:
            raise ValueError(f"{name} must have shape {want}, got {s.shape}")
        states.append(s[:, None] if single else s)
    return states


def sample_tokens(embedding, rnn, decoder, prime, length, *, h0=None, temperature=1.0,
                  top_k=None, seed=None, eos=None, pad=0):
    """Generate tokens from an Embedding → RNN (or LSTM, GRU) → Linear stack.

    Per step: embed the last token, run every layer's cell, project to logits, and
    pick the next token: argmax if ``temperature`` is 0, else a draw from
    softmax(logits / temperature), restricted to the ``top_k`` largest logits if given.

    Parameters
    ----------
    embedding : Embedding
    rnn : RNN, LSTM or GRU, unidirectional
    decoder : Linear, the RNN's output width (hidden_size, or an LSTM's proj_size) -> number
        of tokens
    prime : int array (P,) or (B, P), P ≥ 1
        Tokens fed first, one row per sequence; the first draw follows the last of them.
    length : int
        Tokens to generate per row.
    h0 : the initial state, None for zeros: an array (num_layers, B, H), or (num_layers, H)
        for a 1-D prime; for an LSTM the pair (h0, c0) of such arrays, either None.
    temperature : float ≥ 0, default 1
    top_k : int, optional
    seed : None, int or numpy.random.Generator
        One 64-bit seed per row is drawn from it for that row's xoshiro256** generator.
    eos : int, optional
        A row stops after generating this token; the rest of the row is ``pad``.

    Returns
    -------
    tokens : int64 array (B, length), or (length,) for a 1-D prime
    lengths : int64 array (B,) (or int), tokens generated per row (up to and including eos)
    h : the state after the prime and every generated token but the last (the last is not
        fed back): shaped as ``h0`` (for an LSTM the pair (h, c)).
    """
    if not isinstance(rnn, (RNN, LSTM, GRU)):
        raise TypeError(f"rnn must be a fastrnn.RNN, LSTM or GRU, got {type(rnn).__name__}")
    if rnn.bidirectional:
        raise ValueError("generation needs a unidirectional RNN")
    for layer, name in ((embedding, "embedding"), (decoder, "decoder")):
        if layer.dtype != rnn.dtype:
            raise TypeError(f"{name} dtype {layer.dtype} does not match the RNN's {rnn.dtype}")
    out_width = _state_widths(rnn)[0]
    if embedding.embedding_dim != rnn.input_size or decoder.in_features != out_width:
        raise ValueError("embedding_dim must equal rnn.input_size and decoder.in_features "
                         "must equal rnn.hidden_size (an LSTM's proj_size if set)")
    dtype, V = rnn.dtype, embedding.num_embeddings
    prime = np.asarray(prime)
    if prime.ndim not in (1, 2) or prime.shape[-1] < 1:
        raise ValueError(f"prime must have shape (P,) or (B, P) with P ≥ 1, got {prime.shape}")
    single = prime.ndim == 1
    prime = _check_indices(prime[None] if single else prime, "prime token", V,
                           is_out=f"out of range for an Embedding of {V} rows")
    B = prime.shape[0]
    length = _check_size(length, "length", allow_zero=True)
    if length > 1 and decoder.out_features > V:
        raise ValueError(f"generated tokens are fed back: the decoder's {decoder.out_features} "
                         f"classes must all be rows of the {V}-row embedding")
    temperature = _check_real(temperature, "temperature", low=0.0)
    top_k = 0 if top_k is None else _check_size(top_k, "top_k")
    eos = -1 if eos is None else _check_int(eos, "eos", low=0, high=decoder.out_features)
    pad = _check_int(pad, "pad", low=np.iinfo(np.int64).min, high=np.iinfo(np.int64).max)
    initial = _initial_states(rnn, h0, B, single)
    # the network runs on a stream (its weights packed once; bitwise the module's forward,
    # as in training and evaluation): the prime in one call, then one step per token
    stream = Stream(rnn, B, as_state(initial), _time_major=True)
    table, w_dec = embedding.weight.data, np.ascontiguousarray(decoder.weight.data).T
    b_dec = decoder.bias.data if decoder.has_bias else None
    threads = get_num_threads()
    top = stream(table[prime.T])[-1]
    states = np.empty((B, 4), dtype=np.uint64)
    _ops.seed_generators(_as_rng(seed).integers(0, 2**64, size=B, dtype=np.uint64), states)
    tokens = np.full((B, length), pad, dtype=np.int64)
    lengths = np.full(B, length, dtype=np.int64)
    running = np.ones(B, dtype=bool)
    ended_state = [np.empty_like(a) for a in initial]  # each ended row's state at its end
    logits = np.empty((B, decoder.out_features), dtype=dtype)
    drawn = np.empty(B, dtype=np.int64)
    for s in range(length):
        _rnn.gemm(top, w_dec, logits, b_dec, False, threads)  # logits = h_top W_decᵀ + b
        _ops.choose_tokens(logits, temperature, top_k, states, drawn, threads)
        tokens[running, s] = drawn[running]
        if eos >= 0:
            ended = running & (drawn == eos)
            if ended.any():
                lengths[ended] = s + 1
                running &= ~ended
                for keep, now in zip(ended_state, state_arrays(stream.state)):
                    keep[:, ended] = now[:, ended]
        if s + 1 == length or not running.any():
            break
        # rows that ended run on (the stream steps every row); their tokens are not kept
        top = stream(table[drawn])
    state = state_arrays(stream.state)
    for now, keep in zip(state, ended_state):
        now[:, ~running] = keep[:, ~running]
    if single:
        return tokens[0], int(lengths[0]), as_state([a[:, 0] for a in state])
    return tokens, lengths, as_state(state)
