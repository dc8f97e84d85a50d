"""Data helpers for sequence models: tokenizers, a vocabulary, padding, splits and batches.

>>> from fastrnn import data
>>> vocab = data.Vocab(data.char_tokenize("hello world"))
>>> ids = vocab.encode(data.char_tokenize("hello"))
>>> vocab.decode(ids, sep="")
'hello'

Any callable mapping a string to a list of string tokens is a tokenizer. For Chinese, for
example, ``jieba`` (an optional, separately installed package) segments words:
``get_tokenizer("jieba")`` returns ``jieba.lcut``.
"""

import json
import math
import numbers
from collections import Counter

import numpy as np

from ._validate import _as_rng, _check_indices, _check_int, _check_size

__all__ = ["Vocab", "PAD", "UNK", "char_tokenize", "whitespace_tokenize", "get_tokenizer",
           "TOKEN_SEPARATORS", "pad_sequences", "train_val_test_split", "batch_iterator",
           "lm_batches"]

PAD, UNK = "<pad>", "<unk>"
_VOCAB_FORMAT = "fastrnn.Vocab/1"


# tokenizers ------------------------------------------------------------------------------
def char_tokenize(text):
    """Characters: ``list(text)``."""
    return list(text)


def whitespace_tokenize(text):
    """Words separated by any run of whitespace: ``text.split()``."""
    return text.split()


def _jieba_tokenize(text):
    try:
        import jieba
    except ImportError as e:
        raise ImportError("the 'jieba' tokenizer needs the jieba package: pip install jieba") from e
    return jieba.lcut(text)


_TOKENIZERS = {"char": char_tokenize, "whitespace": whitespace_tokenize,
               "jieba": _jieba_tokenize}
# how decode joins the tokens each named tokenizer produced back into text
TOKEN_SEPARATORS = {"char": "", "whitespace": " ", "jieba": ""}


def get_tokenizer(tokenizer):
    """A tokenizer by name ('char', 'whitespace', 'jieba') or any callable str -> list of str."""
    if callable(tokenizer):
        return tokenizer
    if tokenizer not in _TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected one of "
                         f"{sorted(_TOKENIZERS)} or a callable")
    return _TOKENIZERS[tokenizer]


# vocabulary ------------------------------------------------------------------------------
class Vocab:
    """A token <-> id mapping with ``<pad>`` = 0 and ``<unk>`` = 1.

    Parameters
    ----------
    tokens : iterable of str, or iterable of iterables of str, optional
        The training tokens (a flat stream or a list of tokenized sequences). Tokens are
        numbered after the specials by decreasing frequency, ties in order of appearance.
        A list of strings is a stream of tokens: tokenize texts first
        (``Vocab(char_tokenize(t) for t in texts)``), or each whole text is one token.
    min_freq : int, default 1
        Tokens seen fewer times are left out (they encode as ``<unk>``).
    max_size : int, optional
        At most this many tokens, specials included.
    specials : sequence of str, default ('<pad>', '<unk>')
        Reserved tokens numbered first; must start with the pad and unk tokens.
    """

    def __init__(self, tokens=(), min_freq=1, max_size=None, specials=(PAD, UNK)):
        if isinstance(specials, str):
            raise TypeError(f"specials must be a sequence of str, got the str {specials!r}")
        specials = list(specials)
        if specials[:2] != [PAD, UNK]:
            raise ValueError(f"specials must start with {PAD!r} and {UNK!r}, got {specials}")
        min_freq = _check_size(min_freq, "min_freq")
        if max_size is not None:
            max_size = _check_size(max_size, "max_size")
            if max_size < len(specials):
                raise ValueError(f"max_size must be at least the {len(specials)} specials, "
                                 f"got {max_size}")
        counts = Counter()
        for item in tokens:
            if isinstance(item, str):
                counts[item] += 1
            elif isinstance(item, (bytes, numbers.Number)) or not hasattr(item, "__iter__"):
                raise TypeError(f"tokens must be str or iterables of str, got "
                                f"{type(item).__name__} {item!r:.40}")
            else:
                counts.update(item)
        # Counter keeps insertion order, and sorted() is stable: ties stay in first-seen order
        ordered = sorted((t for t, c in counts.items() if c >= min_freq and t not in specials),
                         key=lambda t: -counts[t])
        itos = specials + ordered
        if max_size is not None:
            itos = itos[:max_size]
        self._set(itos, len(specials))

    def _set(self, itos, n_specials):
        # what save() could not write (or load() would refuse) is refused here
        for t in itos:
            if not isinstance(t, str):
                raise TypeError(f"vocabulary tokens must be str, got {type(t).__name__} {t!r:.40}")
        try:
            "".join(itos).encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"vocabulary tokens must be valid Unicode text (they are saved "
                             f"as UTF-8): {e}") from None
        n_specials = _check_int(n_specials, "n_specials")
        if not 2 <= n_specials <= len(itos):
            raise ValueError(f"n_specials must be in [2, {len(itos)}] (the pad and unk tokens "
                             f"at least), got {n_specials}")
        stoi = {t: i for i, t in enumerate(itos)}
        if len(stoi) != len(itos):
            raise ValueError("vocabulary tokens must be distinct")
        self.itos, self.stoi, self.n_specials = itos, stoi, n_specials

    @classmethod
    def from_tokens(cls, itos, n_specials=2):
        """A Vocab with exactly this id order (``itos[0]`` must be '<pad>', ``itos[1]`` '<unk>')."""
        if isinstance(itos, str):
            raise TypeError(f"itos must be a sequence of str, got the str {itos!r:.40}")
        itos = list(itos)
        if itos[:2] != [PAD, UNK]:
            raise ValueError(f"the first tokens must be {PAD!r} and {UNK!r}, got {itos[:2]}")
        vocab = cls.__new__(cls)
        vocab._set(itos, n_specials)
        return vocab

    pad_index = 0
    unk_index = 1

    def __len__(self):
        return len(self.itos)

    def __contains__(self, token):
        return token in self.stoi

    def __getitem__(self, token):
        return self.stoi.get(token, self.unk_index)

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.itos == other.itos and \
            self.n_specials == other.n_specials

    def __repr__(self):
        return f"Vocab(size={len(self)})"

    def encode(self, tokens):
        """Token ids as an int64 array; unknown tokens map to ``<unk>`` (1)."""
        get, unk = self.stoi.get, self.unk_index
        return np.fromiter((get(t, unk) for t in tokens), dtype=np.int64)

    def decode(self, ids, sep=None, skip_specials=False):
        """Tokens for ``ids``: a list, or joined into a string with ``sep`` if it is given.

        Raises TypeError for non-integer ids, IndexError for an id outside the vocabulary.
        """
        if sep is not None and not isinstance(sep, str):
            raise TypeError(f"sep must be a str or None, got {type(sep).__name__}")
        n = len(self.itos)
        ids = _check_indices(ids, "token id", n, is_out=f"out of range for a vocabulary of {n}")
        ids = ids.reshape(-1)
        tokens = [self.itos[i] for i in ids.tolist()
                  if not (skip_specials and i < self.n_specials)]
        return tokens if sep is None else sep.join(tokens)

    # JSON, no pickle -----------------------------------------------------------------------
    def to_json(self):
        """The vocabulary as a JSON string."""
        return json.dumps({"format": _VOCAB_FORMAT, "itos": self.itos,
                           "n_specials": self.n_specials}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text):
        """Inverse of :meth:`to_json`; raises ValueError for anything else."""
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: deep nesting
            raise ValueError(f"not a fastrnn vocabulary (invalid JSON: {e})") from e
        if not isinstance(obj, dict) or obj.get("format") != _VOCAB_FORMAT:
            raise ValueError(f"not a fastrnn vocabulary (expected format {_VOCAB_FORMAT!r})")
        itos, n_specials = obj.get("itos"), obj.get("n_specials")
        if (not isinstance(itos, list) or not all(isinstance(t, str) for t in itos)
                or type(n_specials) is not int or not 2 <= n_specials <= len(itos)):
            raise ValueError("corrupt fastrnn vocabulary: bad 'itos' or 'n_specials'")
        try:
            return cls.from_tokens(itos, n_specials)
        except TypeError as e:  # from a file, every failure is a ValueError
            raise ValueError(f"corrupt fastrnn vocabulary: {e}") from e

    def save(self, path):
        """Write the vocabulary to ``path`` as UTF-8 JSON."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path):
        """Read a vocabulary written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


# padding, splits, batches ----------------------------------------------------------------
def pad_sequences(sequences, pad_value=0, batch_first=False, max_len=None, dtype=None):
    """Stack sequences of different lengths into one padded array.

    Parameters
    ----------
    sequences : sequence of 1-D arrays (or lists), each (L_i,) or (L_i, *feature)
    pad_value : scalar, default 0 (the ``<pad>`` id)
    batch_first : bool, default False
        (N, L_max, ...) if True, else (L_max, N, ...) as torch's ``pad_sequence``.
    max_len : int, optional
        Pad (or truncate) to this length instead of the longest sequence.
    dtype : optional, default: that of the first sequence (int64 for lists of ints)

    Returns
    -------
    padded : ndarray
    lengths : int64 ndarray (N,), each sequence's length (after truncation); pass it to
        the RNN as ``lengths`` so padding never reaches states or gradients.
    """
    if isinstance(sequences, (str, bytes, np.ndarray)) and np.ndim(sequences) < 2:
        raise TypeError(f"sequences must be a sequence of 1-D arrays or lists, got "
                        f"{type(sequences).__name__}")
    seqs = [np.asarray(s) for s in sequences]
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    trailing = seqs[0].shape[1:]
    for i, s in enumerate(seqs):
        if s.ndim < 1 or s.shape[1:] != trailing:
            raise ValueError(f"sequence {i} has shape {s.shape}; every sequence must be "
                             f"(L_i,) + {trailing}")
        if s.dtype.kind not in "biufc":
            raise TypeError(f"sequence {i} has dtype {s.dtype}; expected numbers")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    L = int(lengths.max()) if max_len is None else _check_size(max_len, "max_len",
                                                               allow_zero=True)
    lengths = np.minimum(lengths, L)
    if dtype is None:
        # empty lists come out as float64 arrays: they should not decide the dtype
        dtypes = [s.dtype for s in seqs if s.size]
        dtype = np.result_type(*dtypes) if dtypes else np.int64
    dtype = np.dtype(dtype)
    pad = np.asarray(pad_value)
    if pad.ndim or pad.dtype.kind not in "biufc":
        raise TypeError(f"pad_value must be a number, got {pad_value!r:.40}")
    with np.errstate(invalid="ignore"):
        fill = pad.astype(dtype)
    if not (fill == pad or (pad != pad and fill != fill)):  # NaN stays NaN
        # np.full would truncate 2.5 to 2 (or wrap -1 to 255) without a word
        raise ValueError(f"pad_value {pad_value!r} cannot be represented in dtype {dtype}")
    out = np.full((len(seqs), L) + trailing, fill, dtype=dtype)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        out[i, :n] = s[:n]
    if not batch_first:
        out = np.ascontiguousarray(np.swapaxes(out, 0, 1))
    return out, lengths


def _take(data, index):
    if isinstance(data, np.ndarray):
        return data[index]
    return type(data)(data[i] for i in index) if isinstance(data, tuple) else \
        [data[i] for i in index]


def _sized_length(data, name):
    """len(data) for a list, tuple or array of at least one dimension (what _take indexes)."""
    if isinstance(data, np.ndarray):
        if data.ndim == 0:
            raise ValueError(f"{name} must have at least one dimension, got a 0-d array")
    elif not isinstance(data, (list, tuple)):
        raise TypeError(f"{name} must be a list, tuple or ndarray, got {type(data).__name__}")
    return len(data)


def train_val_test_split(data, val=0.1, test=0.1, shuffle=True, seed=None):
    """Split a sequence (list or array) into train, validation and test parts.

    Parameters
    ----------
    data : list or ndarray
    val, test : float in [0, 1) (fractions) or int (counts)
    shuffle : bool, default True
        Shuffle before splitting; with False the parts are contiguous (train first), which
        is what a token stream for a language model needs.
    seed : None, int or numpy.random.Generator

    Returns
    -------
    train, val, test : the same type as ``data``.
    """
    n = _sized_length(data, "data")

    def count(x, name):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name} must be a fraction in [0, 1) or a count (int), got "
                            f"{type(x).__name__}")
        if isinstance(x, numbers.Integral):
            return _check_size(x, name, allow_zero=True)
        if not 0 <= x < 1:
            raise ValueError(f"{name} must be a fraction in [0, 1) or a count, got {x!r}")
        return int(math.floor(x * n))

    n_val, n_test = count(val, "val"), count(test, "test")
    if n_val + n_test > n:
        raise ValueError(f"val ({n_val}) + test ({n_test}) exceed the {n} items")
    n_train = n - n_val - n_test
    if shuffle:
        order = _as_rng(seed).permutation(n)
        return (_take(data, order[:n_train]), _take(data, order[n_train:n_train + n_val]),
                _take(data, order[n_train + n_val:]))
    return data[:n_train], data[n_train:n_train + n_val], data[n_train + n_val:]


def batch_iterator(*datasets, batch_size, shuffle=False, seed=None, drop_last=False):
    """Yield mini-batches of one or more aligned datasets (lists or arrays of equal length).

    Parameters
    ----------
    *datasets : lists or ndarrays, indexed together
    batch_size : int
    shuffle : bool, default False
        A new random order on every pass (one generator from ``seed``: re-running with the
        same seed gives the same batches).
    seed : None, int or numpy.random.Generator
    drop_last : bool, default False
        Leave out a last, smaller batch.

    Returns
    -------
    iterator
        One batch per dataset (a tuple if more than one dataset), in each dataset's type.
        The arguments are checked by this call, not at the first ``next()``.
    Variable-length sequences can then be padded with :func:`pad_sequences`.
    """
    if not datasets:
        raise ValueError("batch_iterator needs at least one dataset")
    lengths = [_sized_length(d, f"datasets[{i}]") for i, d in enumerate(datasets)]
    if any(k != lengths[0] for k in lengths):
        raise ValueError(f"datasets must have equal lengths, got {lengths}")
    batch_size = _check_size(batch_size, "batch_size")
    rng = _as_rng(seed)
    # checked here, when called: a generator function would check only at the first next()
    return _batches(datasets, lengths[0], batch_size, bool(shuffle), rng, bool(drop_last))


def _batches(datasets, n, batch_size, shuffle, rng, drop_last):
    order = rng.permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        batch = tuple(_take(d, index) for d in datasets)
        yield batch if len(batch) > 1 else batch[0]


def lm_batches(ids, batch_size, seq_len, batch_first=False):
    """Contiguous-stream batches for a language model (truncated BPTT), as torch's
    word_language_model: the token stream is cut into ``batch_size`` equal streams, one per
    batch column, and walked ``seq_len`` steps at a time, so the hidden state at the end of
    one batch is the right initial state for the next.

    Parameters
    ----------
    ids : 1-D int array, the whole token stream
    batch_size, seq_len : int
    batch_first : bool, default False

    Returns
    -------
    iterator of (x, y), checked by this call (not at the first ``next()``)
    x, y : int64 arrays (L, batch_size) ((batch_size, L) if batch_first) with y the next
        token of every x; L = seq_len except possibly a shorter last batch.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D integer array, got shape {ids.shape}")
    # token ids are indices: integers, non-negative, and none wraps around in the int64 cast
    ids = _check_indices(ids, "token id", np.iinfo(np.int64).max)
    batch_size = _check_size(batch_size, "batch_size")
    seq_len = _check_size(seq_len, "seq_len")
    n = len(ids) // batch_size
    if n < 2:
        raise ValueError(f"{len(ids)} tokens are too few for {batch_size} streams of at least 2")
    # column b is the stream ids[b·n : (b+1)·n]
    streams = np.ascontiguousarray(ids[:n * batch_size].reshape(batch_size, n).T)
    # checked here, when called: a generator function would check only at the first next()
    return _lm_batches(streams, seq_len, bool(batch_first))


def _lm_batches(streams, seq_len, batch_first):
    n = streams.shape[0]
    for i in range(0, n - 1, seq_len):
        L = min(seq_len, n - 1 - i)
        x, y = streams[i:i + L], streams[i + 1:i + 1 + L]
        if batch_first:
            yield np.ascontiguousarray(x.T), np.ascontiguousarray(y.T)
        else:
            yield x, y
