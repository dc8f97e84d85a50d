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

``cell="rnn" | "lstm" | "gru"`` (every architecture; default "rnn") picks the recurrent
network, :class:`fastrnn.RNN`, :class:`fastrnn.LSTM` or :class:`fastrnn.GRU` (``nonlinearity``
is the RNN's alone). An LSTM's state is the pair (h, c) wherever a state is taken or
returned: a language model's h0 and h_n, a conditional generator's initial state, the
encoder's final state that starts a Seq2Seq decoder, generation's state.
"""

import math

import numpy as np

from ._generation import as_state, sample_tokens, state_arrays
from ._layout import directions
from .data import lm_batches
from ._validate import _as_rng, _check_dtype, _check_int
from .layers import CrossEntropyLoss, Embedding, Linear
from .module import Module
from .rnn import GRU, LSTM, RNN

__all__ = ["RNNLanguageModel", "ConditionalGenerator", "SequenceClassifier", "SequenceTagger",
           "Seq2Seq", "sample_tokens", "accuracy", "MODELS", "CELLS"]

# the recurrent module of each ``cell=``
_MODULES = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
CELLS = tuple(_MODULES)


def _check_cell(cell, nonlinearity):
    """``cell`` is one of CELLS; ``nonlinearity`` is left at its default unless it is 'rnn'."""
    if not isinstance(cell, str):
        raise TypeError(f"cell must be one of {CELLS} (a str), got {type(cell).__name__}")
    if cell not in _MODULES:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r:.40}")
    if cell != "rnn" and nonlinearity != "tanh":
        # an LSTM's and a GRU's activations are part of the cell: silently ignoring the
        # option would train a different model than the one asked for
        raise ValueError(f"nonlinearity={nonlinearity!r:.40} applies only to cell='rnn'; the "
                         f"{cell.upper()}'s gate activations are fixed (leave nonlinearity "
                         f"at 'tanh')")


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
        _check_cell(config["cell"], config["nonlinearity"])
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

    @property
    def _num_states(self):
        """Arrays in a state: 2 for an LSTM's (h, c), else 1."""
        return 2 if self._config["cell"] == "lstm" else 1

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

    def _recurrent(self, input_size, rng, **options):
        """The configuration's recurrent network (its cell, hidden_size, num_layers, dtype)
        over ``input_size`` inputs, with the module's other ``options``."""
        c = self._config
        if c["cell"] == "rnn":
            options["nonlinearity"] = c["nonlinearity"]
        return _MODULES[c["cell"]](input_size, c["hidden_size"], c["num_layers"],
                                   dtype=np.dtype(c["dtype"]), seed=rng, **options)

    def _embedded_rnn(self, num_outputs, seed):
        """``self.embedding`` → ``self.rnn`` → ``self.classifier`` (the RNN's outputs, both
        directions', to ``num_outputs``) from the configuration: the classifier and tagger."""
        c = self._config
        dtype, rng = np.dtype(c["dtype"]), _as_rng(seed)
        self.embedding = Embedding(c["vocab_size"], c["embedding_dim"], c["padding_idx"],
                                   dtype=dtype, seed=rng)
        self.rnn = self._recurrent(c["embedding_dim"], rng, dropout=c["dropout"],
                                   bidirectional=c["bidirectional"],
                                   batch_first=c["batch_first"])
        D = directions(c["bidirectional"])
        self.classifier = Linear(D * c["hidden_size"], num_outputs, dtype=dtype, seed=rng)


class RNNLanguageModel(_Model):
    """Embedding → RNN (or LSTM, GRU) → Linear: next-token logits at every step.

    Parameters
    ----------
    vocab_size, embedding_dim, hidden_size : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}, cell 'rnn' only
    dropout : float, default 0 (between recurrent layers)
    batch_first : bool, default False
    cell : {'rnn', 'lstm', 'gru'}, default 'rnn'
        The recurrent network: :class:`fastrnn.RNN`, :class:`fastrnn.LSTM` or
        :class:`fastrnn.GRU`. An LSTM's state is the pair (h, c) wherever a state is taken
        or returned.
    dtype : {np.float32, np.float64}
    seed : None, int or numpy.random.Generator (the initial weights)

    Parameter names: ``embedding.weight``, ``rnn.weight_ih_l0``, ..., ``decoder.weight``,
    ``decoder.bias``.
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_layers=1, nonlinearity="tanh",
                 dropout=0.0, batch_first=False, *, cell="rnn", dtype=np.float32, seed=None):
        super().__init__(dict(vocab_size=vocab_size, embedding_dim=embedding_dim,
                              hidden_size=hidden_size, num_layers=num_layers, cell=cell,
                              nonlinearity=nonlinearity, dropout=dropout,
                              batch_first=batch_first, dtype=dtype))
        rng = _as_rng(seed)
        self.embedding = Embedding(vocab_size, embedding_dim, dtype=dtype, seed=rng)
        self.rnn = self._recurrent(embedding_dim, rng, dropout=dropout, batch_first=batch_first)
        self.decoder = Linear(hidden_size, vocab_size, dtype=dtype, seed=rng)

    def forward(self, x, h0=None, lengths=None):
        """Token ids (L, N) -> logits (L, N, vocab_size) and the final state: h_n
        (num_layers, N, H), for an LSTM (h_n, c_n). ``h0`` likewise (None for zeros)."""
        out, state = self.rnn(self.embedding(x), h0, lengths=lengths)
        return self.decoder(out), state

    def backward(self, grad_logits, grad_h_n=None):
        """Backpropagate d loss / d logits (and optionally d loss / d of the final state,
        a pair for an LSTM); returns d loss / d h0 (a pair for an LSTM)."""
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

        The stream is cut as by :func:`fastrnn.data.lm_batches`, the state carried from
        batch to batch; runs in eval mode and restores the previous mode.
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

    A learned vector per class (``label_embedding``) is the initial state of every layer
    (an LSTM's h and c both: the vector is twice as long); the tokens are then modelled as
    by :class:`RNNLanguageModel`, starting from a begin-of-sequence token. Training uses
    teacher forcing; :meth:`generate` samples (or decodes greedily) from the label alone.

    Parameters
    ----------
    num_classes, vocab_size, embedding_dim, hidden_size : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}, cell 'rnn' only
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    cell, dtype, seed : as :class:`RNNLanguageModel`
    """

    def __init__(self, num_classes, vocab_size, embedding_dim, hidden_size, num_layers=1,
                 nonlinearity="tanh", batch_first=False, padding_idx=0, *, cell="rnn",
                 dtype=np.float32, seed=None):
        super().__init__(dict(num_classes=num_classes, vocab_size=vocab_size,
                              embedding_dim=embedding_dim, hidden_size=hidden_size,
                              num_layers=num_layers, cell=cell, nonlinearity=nonlinearity,
                              batch_first=batch_first, padding_idx=padding_idx, dtype=dtype))
        rng = _as_rng(seed)
        self.label_embedding = Embedding(num_classes, self._num_states * num_layers * hidden_size,
                                         dtype=dtype, seed=rng)
        self.embedding = Embedding(vocab_size, embedding_dim, padding_idx, dtype=dtype, seed=rng)
        self.rnn = self._recurrent(embedding_dim, rng, batch_first=batch_first)
        self.decoder = Linear(hidden_size, vocab_size, dtype=dtype, seed=rng)

    def initial_state(self, labels, *, keep_cache=True):
        """(N,) class labels -> h0 (num_layers, N, H), for an LSTM the pair (h0, c0).

        With ``keep_cache=False`` the label embedding keeps no backward cache (generation).
        """
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        e = self.label_embedding(labels) if keep_cache else self.label_embedding.lookup(labels)
        # a label's vector holds h0's layers, then c0's: (state, layer, N, H)
        per_state = e.reshape(len(e), self._num_states, self.rnn.num_layers,
                              self.rnn.hidden_size).transpose(1, 2, 0, 3)
        return as_state([np.ascontiguousarray(s) for s in per_state])

    def forward(self, labels, x, lengths=None):
        """labels (N,), input tokens x (L, N) (begin token first) -> logits (L, N, vocab)."""
        out, _ = self.rnn(self.embedding(x), self.initial_state(labels), lengths=lengths)
        return self.decoder(out)

    def backward(self, grad_logits):
        """Backpropagate d loss / d logits into every parameter, the label vectors included."""
        d_emb, d_state = self.rnn.backward(self.decoder.backward(grad_logits))
        self.embedding.backward(d_emb)
        d = np.stack(state_arrays(d_state))  # (state, layer, N, H), as initial_state's
        self.label_embedding.backward(d.transpose(2, 0, 1, 3).reshape(d.shape[2], -1))

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
    """Many-to-one: Embedding → RNN → the last layer's final h(s) → Linear → class logits.

    With ``lengths`` each sequence's own final state is used (both directions' for a
    bidirectional RNN), so padding does not change the result. An LSTM's c is not used.

    Parameters
    ----------
    vocab_size, embedding_dim, hidden_size, num_classes : int
    num_layers : int, default 1
    nonlinearity : {'tanh', 'relu'}, cell 'rnn' only
    bidirectional : bool, default False
    dropout : float, default 0
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    cell, dtype, seed : as :class:`RNNLanguageModel`
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_classes, num_layers=1,
                 nonlinearity="tanh", bidirectional=False, dropout=0.0, batch_first=False,
                 padding_idx=0, *, cell="rnn", dtype=np.float32, seed=None):
        super().__init__(dict(vocab_size=vocab_size, embedding_dim=embedding_dim,
                              hidden_size=hidden_size, num_classes=num_classes,
                              num_layers=num_layers, cell=cell, nonlinearity=nonlinearity,
                              bidirectional=bidirectional, dropout=dropout,
                              batch_first=batch_first, padding_idx=padding_idx, dtype=dtype))
        self._embedded_rnn(num_classes, seed)
        self._shapes = None

    def forward(self, x, lengths=None):
        """Token ids (L, N) -> class logits (N, num_classes)."""
        out, state = self.rnn(self.embedding(x), lengths=lengths)
        h_n = state_arrays(state)[0]
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
        grad_state = as_state([grad_h_n] + [None] * (self._num_states - 1))  # none into c_n
        d_emb, _ = self.rnn.backward(np.zeros(out_shape, dtype=d_features.dtype), grad_state)
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
    nonlinearity : {'tanh', 'relu'}, cell 'rnn' only
    bidirectional : bool, default True
    dropout : float, default 0
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    cell, dtype, seed : as :class:`RNNLanguageModel`
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_tags, num_layers=1,
                 nonlinearity="tanh", bidirectional=True, dropout=0.0, batch_first=False,
                 padding_idx=0, *, cell="rnn", dtype=np.float32, seed=None):
        super().__init__(dict(vocab_size=vocab_size, embedding_dim=embedding_dim,
                              hidden_size=hidden_size, num_tags=num_tags, num_layers=num_layers,
                              cell=cell, nonlinearity=nonlinearity, bidirectional=bidirectional,
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
    """Encoder–decoder for unequal lengths: the encoder's final state is the decoder's
    initial state (an LSTM's (h_n, c_n) both).

    Training (teacher forcing): ``model(src, src_lengths, tgt_in, tgt_lengths)`` with
    ``tgt_in`` the target prefixed by a begin token, scored against the target followed by
    an end token. Inference: :meth:`greedy_decode`.

    Parameters
    ----------
    src_vocab_size, tgt_vocab_size, embedding_dim, hidden_size : int
    num_layers : int, default 1 (encoder and decoder alike)
    nonlinearity : {'tanh', 'relu'}, cell 'rnn' only
    dropout : float, default 0
    batch_first : bool, default False
    padding_idx : int, default 0 (``<pad>``)
    cell, dtype, seed : as :class:`RNNLanguageModel` (encoder and decoder alike)

    Parameter names: ``src_embedding.*``, ``encoder.*``, ``tgt_embedding.*``, ``decoder.*``
    (RNN names), ``projection.*``.
    """

    def __init__(self, src_vocab_size, tgt_vocab_size, embedding_dim, hidden_size, num_layers=1,
                 nonlinearity="tanh", dropout=0.0, batch_first=False, padding_idx=0, *,
                 cell="rnn", dtype=np.float32, seed=None):
        super().__init__(dict(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                              embedding_dim=embedding_dim, hidden_size=hidden_size,
                              num_layers=num_layers, cell=cell, nonlinearity=nonlinearity,
                              dropout=dropout, batch_first=batch_first, padding_idx=padding_idx,
                              dtype=dtype))
        rng = _as_rng(seed)
        kw = dict(dropout=dropout, batch_first=batch_first)
        self.src_embedding = Embedding(src_vocab_size, embedding_dim, padding_idx, dtype=dtype,
                                       seed=rng)
        self.encoder = self._recurrent(embedding_dim, rng, **kw)
        self.tgt_embedding = Embedding(tgt_vocab_size, embedding_dim, padding_idx, dtype=dtype,
                                       seed=rng)
        self.decoder = self._recurrent(embedding_dim, rng, **kw)
        self.projection = Linear(hidden_size, tgt_vocab_size, dtype=dtype, seed=rng)
        self._enc_shape = None

    def encode(self, src, src_lengths=None):
        """Source ids (S, N) -> the encoder's final state: h_n (num_layers, N, H), for an
        LSTM (h_n, c_n)."""
        enc_out, state = self.encoder(self.src_embedding(src), lengths=src_lengths)
        self._enc_shape = enc_out.shape
        return state

    def forward(self, src, src_lengths, tgt_in, tgt_lengths=None):
        """Teacher-forced logits (T, N, tgt_vocab_size) for decoder inputs ``tgt_in`` (T, N)."""
        state = self.encode(src, src_lengths)
        out, _ = self.decoder(self.tgt_embedding(tgt_in), state, lengths=tgt_lengths)
        return self.projection(out)

    def backward(self, grad_logits):
        """Backpropagate d loss / d logits through decoder and encoder."""
        d_dec_emb, d_state = self.decoder.backward(self.projection.backward(grad_logits))
        self.tgt_embedding.backward(d_dec_emb)
        # the encoder's outputs are unused: only its final state receives a gradient
        d_src_emb, _ = self.encoder.backward(np.zeros(self._enc_shape, dtype=self.encoder.dtype),
                                             d_state)
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
            state = self.encode(src, src_lengths)
            prime = np.full((state_arrays(state)[0].shape[1], 1), bos, dtype=np.int64)
            tokens, lengths, _ = sample_tokens(self.tgt_embedding, self.decoder, self.projection,
                                               prime, max_len, h0=state, temperature=0.0,
                                               eos=eos, pad=self._pad)
        finally:
            self.train(was_training)
        return tokens, lengths


MODELS = {cls.__name__: cls for cls in (RNNLanguageModel, ConditionalGenerator,
                                         SequenceClassifier, SequenceTagger, Seq2Seq)}
