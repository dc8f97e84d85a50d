"""The five classic RNN architectures, built from fastrnn's layers with explicit backward.

=============================  ============================================================
``RNNLanguageModel``           many-to-many, equal lengths: Embedding → RNN → Linear; text
                               generation by sampling
``ConditionalGenerator``       one-to-many: a class label sets the initial state, the
                               sequence is generated from it
``SequenceClassifier``         many-to-one: a class from the final hidden state
``SequenceTagger``             many-to-many tagging: a label per step, bidirectional
``Seq2Seq``                    many-to-many, unequal lengths: encoder–decoder, teacher
                               forcing in training, greedy decoding at inference
=============================  ============================================================

Each model has ``forward(...)`` (or ``model(...)``), which keeps what backward needs in
training mode, and ``backward(grad_logits)``, which accumulates every parameter's gradient;
plus the :class:`~fastrnn.layers.Module` interface (``named_parameters``, ``zero_grad``,
``train``/``eval``, ``state_dict``/``load_state_dict``) and ``config()``, the constructor
arguments that :func:`fastrnn.save_model` stores. Time-major (L, N) token arrays by
default, as fastrnn.RNN; ``batch_first=True`` for (N, L). Padded batches pass ``lengths``
to the RNN, so padding reaches neither states nor gradients.
"""

import math

import numpy as np

from . import _ops, _rnn, functional
from ._layout import directions
from .data import lm_batches
from ._validate import (_as_rng, _check_dtype, _check_indices, _check_int, _check_real,
                        _check_size)
from .layers import CrossEntropyLoss, Embedding, Linear
from .module import Module
from .parallel import get_num_threads
from .rnn import RNN

__all__ = ["RNNLanguageModel", "ConditionalGenerator", "SequenceClassifier", "SequenceTagger",
           "Seq2Seq", "sample_tokens", "accuracy", "MODELS"]


def sample_tokens(embedding, rnn, decoder, prime, length, *, h0=None, temperature=1.0,
                  top_k=None, seed=None, eos=None, pad=0):
    """Generate tokens from an Embedding → RNN → Linear stack.

    Per step: embed the last token, run every RNN layer's cell, project to logits, and
    pick the next token: argmax if ``temperature`` is 0, else a draw from
    softmax(logits / temperature), restricted to the ``top_k`` largest logits if given.

    Parameters
    ----------
    embedding : Embedding
    rnn : RNN, unidirectional
    decoder : Linear, hidden_size -> number of tokens
    prime : int array (P,) or (B, P), P ≥ 1
        Tokens fed first, one row per sequence; the first draw follows the last of them.
    length : int
        Tokens to generate per row.
    h0 : ndarray (num_layers, B, H) or (num_layers, H) for a 1-D prime; None for zeros.
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
    h : ndarray (num_layers, B, H) (or (num_layers, H)): the state after the prime and every
        generated token but the last (the last is not fed back).
    """
    if rnn.bidirectional:
        raise ValueError("generation needs a unidirectional RNN")
    for layer, name in ((embedding, "embedding"), (decoder, "decoder")):
        if layer.dtype != rnn.dtype:
            raise TypeError(f"{name} dtype {layer.dtype} does not match the RNN's {rnn.dtype}")
    if embedding.embedding_dim != rnn.input_size or decoder.in_features != rnn.hidden_size:
        raise ValueError("embedding_dim must equal rnn.input_size and decoder.in_features "
                         "must equal rnn.hidden_size")
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
    Lyr, H = rnn.num_layers, rnn.hidden_size
    if h0 is None:
        h = np.zeros((Lyr, B, H), dtype=dtype)
    else:
        h0 = np.asarray(h0)
        want = (Lyr, H) if single else (Lyr, B, H)
        if h0.dtype != dtype:
            raise TypeError(f"h0 dtype ({h0.dtype}) does not match the RNN's dtype ({dtype})")
        if h0.shape != want:
            raise ValueError(f"h0 must have shape {want}, got {h0.shape}")
        h = h0[:, None] if single else h0
    # the RNN runs on its own forward (the recurrence's kernels, bitwise as in training and
    # evaluation): the prime in one call, then one step per generated token
    params = {name: p.data for name, p in rnn.named_parameters()}
    options = dict(num_layers=Lyr, nonlinearity=rnn.nonlinearity, keep_cache=False)
    table, w_dec = embedding.weight.data, np.ascontiguousarray(decoder.weight.data).T
    b_dec = decoder.bias.data if decoder.has_bias else None
    threads = get_num_threads()
    out, h, _ = functional.rnn_forward(table[prime.T], params, h, **options)
    top = out[-1]
    states = np.empty((B, 4), dtype=np.uint64)
    _ops.seed_generators(_as_rng(seed).integers(0, 2**64, size=B, dtype=np.uint64), states)
    tokens = np.full((B, length), pad, dtype=np.int64)
    lengths = np.full(B, length, dtype=np.int64)
    running = np.ones(B, dtype=bool)
    logits = np.empty((B, decoder.out_features), dtype=dtype)
    drawn = np.empty(B, dtype=np.int64)
    for s in range(length):
        _rnn.gemm(top, w_dec, logits, b_dec, False, threads)  # logits = h_top W_decᵀ + b
        _ops.choose_tokens(logits, temperature, top_k, states, drawn, threads)
        tokens[running, s] = drawn[running]
        if eos >= 0:
            ended = running & (drawn == eos)
            lengths[ended] = s + 1
            running &= ~ended
        if s + 1 == length or not running.any():
            break
        # a row that ended keeps its state: a length of 0 leaves h as it was
        step, h, _ = functional.rnn_forward(table[drawn][None], params, h,
                                            lengths=running.astype(np.int64), **options)
        top = np.where(running[:, None], step[0], top)
    if single:
        return tokens[0], int(lengths[0]), h[:, 0]
    return tokens, lengths, h


def accuracy(logits, targets, ignore_index=-100):
    """Fraction of positions where argmax(logits) equals the target, ignoring ``ignore_index``.

    logits (..., C), targets (...). NaN if every target is ignored.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    ignore_index = _check_int(ignore_index, "ignore_index")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers (class indices), got dtype {targets.dtype}")
    if logits.dtype.kind not in "fiu" or logits.ndim < 1 or logits.shape[:-1] != targets.shape:
        # a mismatch would broadcast into a meaningless fraction
        raise ValueError(f"logits must be numbers of shape targets.shape + (C,) = "
                         f"{targets.shape + ('C',)}, got {logits.dtype} {logits.shape}")
    mask = targets != ignore_index
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    return float(((np.argmax(logits, axis=-1) == targets) & mask).sum() / n)


def _plain(value):
    """A NumPy scalar as the Python bool, int or float of the same value; others unchanged."""
    return value.item() if isinstance(value, np.generic) and value.dtype.kind in "biuf" \
        else value


class _Model(Module):
    """A Module that remembers its constructor arguments (for save/load)."""

    def __init__(self, config):
        super().__init__()
        # as Python values (numpy scalars are not JSON): what save_model stores must load
        config = {k: _plain(v) for k, v in config.items()}
        config["dtype"] = str(_check_dtype(config.get("dtype", np.float32)))
        self._config = config

    def config(self):
        """The constructor arguments, JSON-serialisable (dtype as its name)."""
        return dict(self._config)

    @property
    def _pad(self):
        """The token that fills generated sequences after their end token."""
        pad = self._config.get("padding_idx")
        return 0 if pad is None else pad

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

    def _embedded_rnn(self, num_outputs, seed):
        """``self.embedding`` → ``self.rnn`` → ``self.classifier`` (the RNN's outputs, both
        directions', to ``num_outputs``) from the configuration: the classifier and tagger."""
        c = self._config
        dtype, rng = np.dtype(c["dtype"]), _as_rng(seed)
        self.embedding = Embedding(c["vocab_size"], c["embedding_dim"], c["padding_idx"],
                                   dtype=dtype, seed=rng)
        self.rnn = RNN(c["embedding_dim"], c["hidden_size"], c["num_layers"], c["nonlinearity"],
                       dropout=c["dropout"], bidirectional=c["bidirectional"],
                       batch_first=c["batch_first"], dtype=dtype, seed=rng)
        D = directions(c["bidirectional"])
        self.classifier = Linear(D * c["hidden_size"], num_outputs, dtype=dtype, seed=rng)


class RNNLanguageModel(_Model):
    """Embedding → RNN → Linear: next-token logits at every step (many-to-many).

    Parameters
    ----------
    vocab_size, embedding_dim, hidden_size : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}
    dropout : float, default 0 (between RNN layers)
    batch_first : bool, default False
    dtype : {np.float32, np.float64}
    seed : None, int or numpy.random.Generator (the initial weights)

    Parameter names: ``embedding.weight``, ``rnn.weight_ih_l0``, ..., ``decoder.weight``,
    ``decoder.bias``.
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_layers=1, nonlinearity="tanh",
                 dropout=0.0, batch_first=False, *, dtype=np.float32, seed=None):
        super().__init__(dict(vocab_size=vocab_size, embedding_dim=embedding_dim,
                              hidden_size=hidden_size, num_layers=num_layers,
                              nonlinearity=nonlinearity, dropout=dropout,
                              batch_first=batch_first, dtype=dtype))
        rng = _as_rng(seed)
        self.embedding = Embedding(vocab_size, embedding_dim, dtype=dtype, seed=rng)
        self.rnn = RNN(embedding_dim, hidden_size, num_layers, nonlinearity, dropout=dropout,
                       batch_first=batch_first, dtype=dtype, seed=rng)
        self.decoder = Linear(hidden_size, vocab_size, dtype=dtype, seed=rng)

    def forward(self, x, h0=None, lengths=None):
        """Token ids (L, N) -> logits (L, N, vocab_size) and h_n (num_layers, N, H)."""
        out, h_n = self.rnn(self.embedding(x), h0, lengths=lengths)
        return self.decoder(out), h_n

    def backward(self, grad_logits, grad_h_n=None):
        """Backpropagate d loss / d logits (and optionally d loss / d h_n); returns d h0."""
        d_out = self.decoder.backward(grad_logits)
        d_emb, d_h0 = self.rnn.backward(d_out, grad_h_n)
        self.embedding.backward(d_emb)
        return d_h0

    def generate(self, prime, length, temperature=1.0, top_k=None, seed=None, h0=None):
        """Sample ``length`` tokens after the ``prime`` tokens (one compiled call).

        See :func:`sample_tokens`; returns only the tokens ((length,) for a 1-D prime).
        """
        return sample_tokens(self.embedding, self.rnn, self.decoder, prime, length, h0=h0,
                             temperature=temperature, top_k=top_k, seed=seed)[0]

    def perplexity(self, ids, batch_size=32, seq_len=100):
        """exp(mean cross-entropy) of predicting each next token of the stream ``ids``.

        The stream is cut as by :func:`fastrnn.data.lm_batches`, the hidden state carried
        from batch to batch; runs in eval mode and restores the previous mode.
        """
        was_training = self.training
        self.eval()
        ce = CrossEntropyLoss(reduction="sum")
        total, count, h = 0.0, 0, None
        try:
            for x, y in lm_batches(ids, batch_size, seq_len, self.rnn.batch_first):
                logits, h = self.forward(x, h)
                total += ce(logits, y)
                count += y.size
        finally:
            self.train(was_training)
        return math.exp(total / count)


class ConditionalGenerator(_Model):
    """One-to-many: a class label → the RNN's initial state → a generated sequence.

    A learned vector per class (``label_embedding``) is the initial hidden state of every
    layer; the tokens are then modelled as by :class:`RNNLanguageModel`, starting from a
    begin-of-sequence token. Training uses teacher forcing; :meth:`generate` samples
    (or decodes greedily) from the label alone.

    Parameters
    ----------
    num_classes, vocab_size, embedding_dim, hidden_size : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    dtype, seed : as :class:`RNNLanguageModel`
    """

    def __init__(self, num_classes, vocab_size, embedding_dim, hidden_size, num_layers=1,
                 nonlinearity="tanh", batch_first=False, padding_idx=0, *, dtype=np.float32,
                 seed=None):
        super().__init__(dict(num_classes=num_classes, vocab_size=vocab_size,
                              embedding_dim=embedding_dim, hidden_size=hidden_size,
                              num_layers=num_layers, nonlinearity=nonlinearity,
                              batch_first=batch_first, padding_idx=padding_idx, dtype=dtype))
        rng = _as_rng(seed)
        self.label_embedding = Embedding(num_classes, num_layers * hidden_size, dtype=dtype,
                                         seed=rng)
        self.embedding = Embedding(vocab_size, embedding_dim, padding_idx, dtype=dtype, seed=rng)
        self.rnn = RNN(embedding_dim, hidden_size, num_layers, nonlinearity,
                       batch_first=batch_first, dtype=dtype, seed=rng)
        self.decoder = Linear(hidden_size, vocab_size, dtype=dtype, seed=rng)

    def initial_state(self, labels, *, keep_cache=True):
        """(N,) class labels -> h0 (num_layers, N, H).

        With ``keep_cache=False`` the label embedding keeps no backward cache (generation).
        """
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        e = self.label_embedding(labels) if keep_cache else self.label_embedding.lookup(labels)
        return np.ascontiguousarray(
            e.reshape(len(e), self.rnn.num_layers, self.rnn.hidden_size).transpose(1, 0, 2))

    def forward(self, labels, x, lengths=None):
        """labels (N,), input tokens x (L, N) (begin token first) -> logits (L, N, vocab)."""
        out, _ = self.rnn(self.embedding(x), self.initial_state(labels), lengths=lengths)
        return self.decoder(out)

    def backward(self, grad_logits):
        """Backpropagate d loss / d logits into every parameter, the label vectors included."""
        d_emb, d_h0 = self.rnn.backward(self.decoder.backward(grad_logits))
        self.embedding.backward(d_emb)
        N = d_h0.shape[1]
        self.label_embedding.backward(d_h0.transpose(1, 0, 2).reshape(N, -1))

    def generate(self, labels, length, bos, eos=None, temperature=0.0, top_k=None, seed=None):
        """Sequences for each label: (N, length) tokens and (N,) lengths (greedy by default)."""
        labels = np.atleast_1d(np.asarray(labels))
        h0 = self.initial_state(labels, keep_cache=False)
        # checked before np.full, which would truncate 2.5 to 2
        bos = _check_int(bos, "bos", low=0, high=self.embedding.num_embeddings)
        prime = np.full((len(labels), 1), bos, dtype=np.int64)
        tokens, lengths, _ = sample_tokens(self.embedding, self.rnn, self.decoder, prime, length,
                                           h0=h0, temperature=temperature, top_k=top_k,
                                           seed=seed, eos=eos, pad=self._pad)
        return tokens, lengths


class SequenceClassifier(_Model):
    """Many-to-one: Embedding → RNN → the last layer's final state(s) → Linear → class logits.

    With ``lengths`` each sequence's own final state is used (both directions' for a
    bidirectional RNN), so padding does not change the result.

    Parameters
    ----------
    vocab_size, embedding_dim, hidden_size, num_classes : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}
    bidirectional : bool, default False
    dropout : float, default 0
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    dtype, seed : as :class:`RNNLanguageModel`
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_classes, num_layers=1,
                 nonlinearity="tanh", bidirectional=False, dropout=0.0, batch_first=False,
                 padding_idx=0, *, dtype=np.float32, seed=None):
        super().__init__(dict(vocab_size=vocab_size, embedding_dim=embedding_dim,
                              hidden_size=hidden_size, num_classes=num_classes,
                              num_layers=num_layers, nonlinearity=nonlinearity,
                              bidirectional=bidirectional, dropout=dropout,
                              batch_first=batch_first, padding_idx=padding_idx, dtype=dtype))
        self._embedded_rnn(num_classes, seed)
        self._shapes = None

    def forward(self, x, lengths=None):
        """Token ids (L, N) -> class logits (N, num_classes)."""
        out, h_n = self.rnn(self.embedding(x), lengths=lengths)
        D = directions(self.rnn.bidirectional)
        N = h_n.shape[1]
        # the last layer's states, forward then reverse: (N, D·H)
        features = h_n[-D:].transpose(1, 0, 2).reshape(N, -1)
        self._shapes = (out.shape, h_n.shape)
        return self.classifier(features)

    def backward(self, grad_logits):
        """Backpropagate d loss / d logits into every parameter."""
        d_features = self.classifier.backward(grad_logits)
        out_shape, hn_shape = self._shapes
        D = directions(self.rnn.bidirectional)
        grad_h_n = np.zeros(hn_shape, dtype=d_features.dtype)
        grad_h_n[-D:] = d_features.reshape(hn_shape[1], D, -1).transpose(1, 0, 2)
        d_emb, _ = self.rnn.backward(np.zeros(out_shape, dtype=d_features.dtype), grad_h_n)
        self.embedding.backward(d_emb)

    def predict(self, x, lengths=None):
        """Predicted class per sequence (N,)."""
        return np.argmax(self.forward(x, lengths), axis=-1)


class SequenceTagger(_Model):
    """Many-to-many tagging: Embedding → (bidirectional) RNN → Linear, a label per step.

    Pass ``lengths`` for padded batches and set padded targets to the loss's
    ``ignore_index``: padding then affects neither states, loss, gradients nor accuracy.

    Parameters
    ----------
    vocab_size, embedding_dim, hidden_size, num_tags : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}
    bidirectional : bool, default True
    dropout : float, default 0
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    dtype, seed : as :class:`RNNLanguageModel`
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_tags, num_layers=1,
                 nonlinearity="tanh", bidirectional=True, dropout=0.0, batch_first=False,
                 padding_idx=0, *, dtype=np.float32, seed=None):
        super().__init__(dict(vocab_size=vocab_size, embedding_dim=embedding_dim,
                              hidden_size=hidden_size, num_tags=num_tags, num_layers=num_layers,
                              nonlinearity=nonlinearity, bidirectional=bidirectional,
                              dropout=dropout, batch_first=batch_first, padding_idx=padding_idx,
                              dtype=dtype))
        self._embedded_rnn(num_tags, seed)

    def forward(self, x, lengths=None):
        """Token ids (L, N) -> tag logits (L, N, num_tags)."""
        out, _ = self.rnn(self.embedding(x), lengths=lengths)
        return self.classifier(out)

    def backward(self, grad_logits):
        """Backpropagate d loss / d logits into every parameter."""
        d_emb, _ = self.rnn.backward(self.classifier.backward(grad_logits))
        self.embedding.backward(d_emb)


class Seq2Seq(_Model):
    """Encoder–decoder for unequal lengths: the encoder's h_n is the decoder's h0.

    Training (teacher forcing): ``model(src, src_lengths, tgt_in, tgt_lengths)`` with
    ``tgt_in`` the target prefixed by a begin token, scored against the target followed by
    an end token. Inference: :meth:`greedy_decode`.

    Parameters
    ----------
    src_vocab_size, tgt_vocab_size, embedding_dim, hidden_size : int
    num_layers : int, default 1 (encoder and decoder alike)
    nonlinearity : {'tanh', 'relu'}
    dropout : float, default 0
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    dtype, seed : as :class:`RNNLanguageModel`

    Parameter names: ``src_embedding.*``, ``encoder.*``, ``tgt_embedding.*``, ``decoder.*``
    (RNN names), ``projection.*``.
    """

    def __init__(self, src_vocab_size, tgt_vocab_size, embedding_dim, hidden_size, num_layers=1,
                 nonlinearity="tanh", dropout=0.0, batch_first=False, padding_idx=0, *,
                 dtype=np.float32, seed=None):
        super().__init__(dict(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                              embedding_dim=embedding_dim, hidden_size=hidden_size,
                              num_layers=num_layers, nonlinearity=nonlinearity, dropout=dropout,
                              batch_first=batch_first, padding_idx=padding_idx, dtype=dtype))
        rng = _as_rng(seed)
        kw = dict(dropout=dropout, batch_first=batch_first, dtype=dtype, seed=rng)
        self.src_embedding = Embedding(src_vocab_size, embedding_dim, padding_idx, dtype=dtype,
                                       seed=rng)
        self.encoder = RNN(embedding_dim, hidden_size, num_layers, nonlinearity, **kw)
        self.tgt_embedding = Embedding(tgt_vocab_size, embedding_dim, padding_idx, dtype=dtype,
                                       seed=rng)
        self.decoder = RNN(embedding_dim, hidden_size, num_layers, nonlinearity, **kw)
        self.projection = Linear(hidden_size, tgt_vocab_size, dtype=dtype, seed=rng)
        self._enc_shape = None

    def encode(self, src, src_lengths=None):
        """Source ids (S, N) -> the encoder's h_n (num_layers, N, H)."""
        enc_out, h = self.encoder(self.src_embedding(src), lengths=src_lengths)
        self._enc_shape = enc_out.shape
        return h

    def forward(self, src, src_lengths, tgt_in, tgt_lengths=None):
        """Teacher-forced logits (T, N, tgt_vocab_size) for decoder inputs ``tgt_in`` (T, N)."""
        h = self.encode(src, src_lengths)
        out, _ = self.decoder(self.tgt_embedding(tgt_in), h, lengths=tgt_lengths)
        return self.projection(out)

    def backward(self, grad_logits):
        """Backpropagate d loss / d logits through decoder and encoder."""
        d_dec_emb, d_h = self.decoder.backward(self.projection.backward(grad_logits))
        self.tgt_embedding.backward(d_dec_emb)
        # the encoder's outputs are unused: only its h_n receives a gradient
        d_src_emb, _ = self.encoder.backward(np.zeros(self._enc_shape, dtype=d_h.dtype), d_h)
        self.src_embedding.backward(d_src_emb)

    def greedy_decode(self, src, src_lengths, bos, eos, max_len):
        """Greedy decoding: (N, max_len) target ids (padded after eos) and (N,) lengths.

        Runs in eval mode (dropping any backward cache) and restores the previous mode.
        """
        was_training = self.training
        self.eval()
        try:
            # checked before np.full, which would truncate 2.5 to 2
            bos = _check_int(bos, "bos", low=0, high=self.tgt_embedding.num_embeddings)
            h = self.encode(src, src_lengths)
            prime = np.full((h.shape[1], 1), bos, dtype=np.int64)
            tokens, lengths, _ = sample_tokens(self.tgt_embedding, self.decoder, self.projection,
                                               prime, max_len, h0=h, temperature=0.0, eos=eos,
                                               pad=self._pad)
        finally:
            self.train(was_training)
        return tokens, lengths


MODELS = {cls.__name__: cls for cls in (RNNLanguageModel, ConditionalGenerator,
                                         SequenceClassifier, SequenceTagger, Seq2Seq)}
