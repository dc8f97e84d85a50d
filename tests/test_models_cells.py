"""The five architectures with each cell (``cell="rnn" | "lstm" | "gru"``): gradients, the
state (an LSTM's (h, c) pair) wherever it flows, generation, save/load, refusals.

Gradients are checked against finite differences in float64, generation against the
models' own forward step by step, as in test_models.py (whose helpers these tests share).
"""

import json

import numpy as np
import pytest

import fastrnn
from fastrnn import CrossEntropyLoss, data, load_model, save_model
from fastrnn.models import (CELLS, ConditionalGenerator, RNNLanguageModel, Seq2Seq,
                            SequenceClassifier, SequenceTagger, sample_tokens)
from test_models import EPS, _python_logits, _train, ce_objective, check_gradients, padded_batch

GATED = ["lstm", "gru"]
MODULE = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


def as_list(state):
    return list(state) if isinstance(state, tuple) else [state]


def test_cells_are_the_three_modules():
    assert CELLS == ("rnn", "lstm", "gru")
    for cell in CELLS:
        m = RNNLanguageModel(5, 2, 3, cell=cell)
        assert type(m.rnn) is MODULE[cell] and m.config()["cell"] == cell
    assert RNNLanguageModel(5, 2, 3).config()["cell"] == "rnn"


# gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_language_model_gradients_through_logits_and_states(rng, cell):
    """The loss reads the logits and the final state (both of an LSTM's), and the returned
    d h0 is checked too: the state flows both ways."""
    m = RNNLanguageModel(7, 3, 5, 2, cell=cell, dtype=np.float64, seed=rng)
    x, y = rng.integers(0, 7, size=(6, 2)), rng.integers(0, 7, size=(6, 2))
    S = 2 if cell == "lstm" else 1
    h0 = [rng.standard_normal((2, 2, 5)) * 0.5 for _ in range(S)]
    weights = [rng.standard_normal((2, 2, 5)) for _ in range(S)]
    ce = CrossEntropyLoss()
    pack = tuple if cell == "lstm" else (lambda arrays: arrays[0])

    def objective():
        logits, state = m(x, pack(h0))
        loss = ce(logits, y) + sum(float(np.sum(w * s)) for w, s in zip(weights, as_list(state)))
        return loss, lambda: m.backward(ce.backward(), pack(weights))

    check_gradients(m, objective, rng)
    m.zero_grad()
    d_h0 = as_list(objective()[1]())
    for s, d in zip(h0, d_h0):
        for i in rng.choice(s.size, size=6, replace=False):
            old = s.flat[i]
            s.flat[i] = old + EPS
            up = objective()[0]
            s.flat[i] = old - EPS
            down = objective()[0]
            s.flat[i] = old
            assert d.flat[i] == pytest.approx((up - down) / (2 * EPS), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("cell", CELLS)
def test_conditional_generator_gradients(rng, cell):
    m = ConditionalGenerator(3, 6, 3, 4, num_layers=2, cell=cell, dtype=np.float64, seed=rng)
    labels = np.array([0, 2, 2])
    _, x, lens = padded_batch(rng, [4, 2, 3], 6)
    y = np.where(np.arange(4)[:, None] < lens, rng.integers(0, 6, size=x.shape), -100)
    # every entry of the label vectors (h0's and, for an LSTM, c0's)
    check_gradients(m, ce_objective(CrossEntropyLoss(), lambda: m(labels, x, lens), y, m), rng,
                    per_param=48)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_classifier_gradients(rng, cell, bidirectional):
    m = SequenceClassifier(6, 3, 4, 3, num_layers=2, bidirectional=bidirectional, cell=cell,
                           dtype=np.float64, seed=rng)
    _, x, lens = padded_batch(rng, [5, 2, 4], 6)
    y = np.array([0, 2, 1])
    check_gradients(m, ce_objective(CrossEntropyLoss(), lambda: m(x, lens), y, m), rng)


@pytest.mark.parametrize("cell", CELLS)
def test_tagger_gradients(rng, cell):
    _, x, lens = padded_batch(rng, [5, 2, 4], 6, batch_first=True)
    m = SequenceTagger(6, 3, 4, 3, num_layers=2, batch_first=True, cell=cell,
                       dtype=np.float64, seed=rng)
    y = np.where(np.arange(5) < lens[:, None], rng.integers(0, 3, size=x.shape), -100)
    check_gradients(m, ce_objective(CrossEntropyLoss(), lambda: m(x, lens), y, m), rng)


@pytest.mark.parametrize("cell", CELLS)
def test_seq2seq_gradients(rng, cell):
    """The encoder's weights are reached only through its final state (h and c)."""
    m = Seq2Seq(6, 5, 3, 4, num_layers=2, cell=cell, dtype=np.float64, seed=rng)
    _, src, src_lens = padded_batch(rng, [4, 1, 3], 6)
    _, tgt, tgt_lens = padded_batch(rng, [2, 3, 1], 5)
    y = np.where(np.arange(3)[:, None] < tgt_lens, rng.integers(0, 5, size=tgt.shape), -100)
    obj = ce_objective(CrossEntropyLoss(), lambda: m(src, src_lens, tgt, tgt_lens), y, m)
    check_gradients(m, obj, rng)


def test_lstm_cell_state_reaches_the_decoder_and_the_label_vectors(rng):
    """c is carried, not dropped: changing the encoder's c_n (the second half of a label
    vector) changes what follows."""
    m = Seq2Seq(6, 5, 3, 4, cell="lstm", dtype=np.float64, seed=rng).eval()
    src, tgt = rng.integers(2, 6, size=(4, 2)), rng.integers(2, 5, size=(3, 2))
    h, c = m.encode(src)
    out, _ = m.decoder(m.tgt_embedding(tgt), (h, c))
    np.testing.assert_array_equal(m.projection(out), m(src, None, tgt))
    out_zero_c, _ = m.decoder(m.tgt_embedding(tgt), (h, np.zeros_like(c)))
    assert not np.allclose(out, out_zero_c)
    g = ConditionalGenerator(2, 6, 3, 4, num_layers=2, cell="lstm", dtype=np.float64, seed=rng)
    assert g.label_embedding.embedding_dim == 2 * 2 * 4
    h0, c0 = g.initial_state(np.array([1, 0]), keep_cache=False)
    vec = g.label_embedding.weight.data
    np.testing.assert_array_equal(h0[:, 0].ravel(), vec[1, :8])
    np.testing.assert_array_equal(c0[:, 1].ravel(), vec[0, 8:])


# generation --------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,num_layers,nonlinearity", [
    ("rnn", 1, "tanh"), ("rnn", 2, "tanh"), ("rnn", 2, "relu"), ("lstm", 1, "tanh"),
    ("lstm", 2, "tanh"), ("gru", 1, "tanh"), ("gru", 2, "tanh")])
def test_greedy_generation_matches_python_forward(rng, cell, num_layers, nonlinearity):
    m = RNNLanguageModel(11, 4, 8, num_layers, nonlinearity, cell=cell, dtype=np.float64,
                         seed=rng).eval()
    for p in m.parameters():
        p.data *= 2  # sharper logits: a clear argmax at every step
    prime = np.array([3, 1, 4])
    tokens, n, state = sample_tokens(m.embedding, m.rnn, m.decoder, prime, 12, temperature=0)
    assert n == 12
    fed = list(prime)
    for t in tokens:
        assert t == np.argmax(_python_logits(m, fed))
        fed.append(t)
    _, want = m(np.array(fed[:-1])[:, None])
    assert len(as_list(state)) == len(as_list(want))
    for got, w in zip(as_list(state), as_list(want)):
        assert got.shape == (num_layers, 8)
        np.testing.assert_allclose(got, w[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(m.generate(prime, 12, top_k=1, seed=5), tokens)


@pytest.mark.parametrize("cell", GATED)
def test_generation_streams_the_state(rng, cell):
    """Generating after a prefix's state (h0 = that forward's final state) is generating
    after the whole prime."""
    m = RNNLanguageModel(9, 4, 6, 2, cell=cell, dtype=np.float64, seed=rng).eval()
    for p in m.parameters():
        p.data *= 2
    prefix, prime = rng.integers(0, 9, size=(3, 5)), rng.integers(0, 9, size=(3, 2))
    _, state = m(prefix.T)
    whole = sample_tokens(m.embedding, m.rnn, m.decoder, np.hstack([prefix, prime]), 10,
                          temperature=0)
    streamed = sample_tokens(m.embedding, m.rnn, m.decoder, prime, 10, h0=state,
                             temperature=0)
    np.testing.assert_array_equal(streamed[0], whole[0])
    for a, b in zip(as_list(streamed[2]), as_list(whole[2])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # the model's own generate takes the state the same way
    np.testing.assert_array_equal(m.generate(prime, 10, temperature=0, h0=state), whole[0])


@pytest.mark.parametrize("cell", CELLS)
def test_sampling_distribution_temperature_and_top_k(rng, cell):
    m = RNNLanguageModel(6, 3, 5, cell=cell, dtype=np.float64, seed=rng).eval()
    for p in m.parameters():
        p.data *= 3  # a distribution far from uniform
    prime = np.array([[2, 5]] * 20000)
    logits = _python_logits(m, prime[0])
    for temperature, top_k in [(1.0, None), (0.5, 3), (2.0, 2)]:
        out = m.generate(prime, 1, temperature=temperature, top_k=top_k, seed=7)[:, 0]
        z = logits / temperature
        if top_k:
            z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
        p = np.exp(z - z.max())
        p /= p.sum()
        freq = np.bincount(out, minlength=6) / len(out)
        assert np.all(freq[p == 0] == 0), "a token outside the top k was drawn"
        bound = 5 * np.sqrt(p * (1 - p) / len(out)) + 1e-3
        assert np.all(np.abs(freq - p) <= bound), (temperature, top_k, freq, p)


@pytest.mark.parametrize("cell", GATED)
def test_sampling_is_seeded_thread_independent_and_stops_at_eos(rng, cell, restore_threads):
    m = RNNLanguageModel(9, 4, 6, 2, cell=cell, seed=rng).eval()
    prime = rng.integers(0, 9, size=(5, 3))
    a = m.generate(prime, 40, temperature=1.0, seed=123)
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        np.testing.assert_array_equal(m.generate(prime, 40, temperature=1.0, seed=123), a)
    assert not np.array_equal(m.generate(prime, 40, temperature=1.0, seed=124), a)
    m.decoder.bias.data[...] = 0
    m.decoder.bias.data[3] = 50  # token 3 always wins
    tokens, lengths, state = sample_tokens(m.embedding, m.rnn, m.decoder, prime, 6,
                                           temperature=0, eos=3, pad=-1)
    np.testing.assert_array_equal(tokens, [[3, -1, -1, -1, -1, -1]] * 5)
    np.testing.assert_array_equal(lengths, [1] * 5)
    # the state is the prime's: the ended rows fed nothing more
    _, want = m(prime.T)
    for got, w in zip(as_list(state), as_list(want)):
        np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("cell", GATED)
def test_a_row_that_ended_keeps_its_state(rng, cell):
    """Each row's final state (h and c) is that of its own prime and tokens fed, however
    long the other rows ran."""
    m = RNNLanguageModel(9, 4, 6, 2, cell=cell, dtype=np.float64, seed=rng).eval()
    prime = rng.integers(0, 9, size=(6, 2))
    # a row's draws come from its own stream: the same with or without an end token
    args = (m.embedding, m.rnn, m.decoder, prime, 8)
    free, _, _ = sample_tokens(*args, temperature=1.0, seed=5)
    # an end token some rows draw early and others late or never
    ends = {int(t): np.where((free == t).any(1), (free == t).argmax(1) + 1, 8)
            for t in np.unique(free)}
    eos = next(t for t, n in ends.items() if n.max() - n.min() >= 3)
    tokens, lengths, state = sample_tokens(*args, temperature=1.0, seed=5, eos=eos, pad=-1)
    np.testing.assert_array_equal(lengths, ends[eos])
    for i in range(len(prime)):
        fed = np.r_[prime[i], tokens[i, :lengths[i] - 1]]
        _, want = m(fed[:, None])
        for got, w in zip(as_list(state), as_list(want)):
            np.testing.assert_allclose(got[:, i], w[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_conditional_generator_generate_matches_python(rng, cell):
    m = ConditionalGenerator(3, 7, 4, 6, num_layers=2, cell=cell, dtype=np.float64, seed=rng)
    for p in m.parameters():
        p.data *= 2
    labels = np.array([0, 1, 2, 1])
    tokens, lengths = m.generate(labels, 8, bos=2, eos=3)
    m.eval()
    for i, label in enumerate(labels):
        fed = [2]
        for step in range(lengths[i]):
            logits = m(np.array([label]), np.array(fed)[:, None])[-1, 0]
            assert tokens[i, step] == np.argmax(logits)
            fed.append(tokens[i, step])
        assert np.all(tokens[i, lengths[i]:] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_seq2seq_greedy_decode_matches_python(rng, cell):
    m = Seq2Seq(6, 7, 3, 5, num_layers=2, cell=cell, dtype=np.float64, seed=rng)
    for p in m.parameters():
        p.data *= 2
    seqs, src, lens = padded_batch(rng, [4, 2, 3], 6)
    tokens, lengths = m.greedy_decode(src, lens, bos=2, eos=3, max_len=6)
    assert m.training, "mode restored"
    m.eval()
    for i, s in enumerate(seqs):
        fed = [2]
        for step in range(lengths[i]):
            logits = m(s[:, None], None, np.array(fed)[:, None])[-1, 0]
            assert tokens[i, step] == np.argmax(logits)
            fed.append(tokens[i, step])


def test_sample_tokens_checks_an_lstm_state():
    m = RNNLanguageModel(5, 2, 3, 2, cell="lstm")
    args = (m.embedding, m.rnn, m.decoder, np.array([[1], [2]]), 2)
    h, c = np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32)
    with pytest.raises(TypeError, match=r"pair \(h0, c0\)"):
        sample_tokens(*args, h0=h)
    with pytest.raises(ValueError, match=r"c0 must have shape \(2, 2, 3\)"):
        sample_tokens(*args, h0=(h, c[:1]))
    with pytest.raises(TypeError, match="c0 dtype"):
        sample_tokens(*args, h0=(h, c.astype(np.float64)))
    tokens, _, (h_n, c_n) = sample_tokens(*args, h0=(None, c + 1))  # either may be None
    assert tokens.shape == (2, 2) and h_n.shape == c_n.shape == (2, 2, 3)
    with pytest.raises(TypeError, match="RNN, LSTM or GRU"):
        sample_tokens(m.embedding, m.decoder, m.decoder, np.array([1]), 2)
    with pytest.raises(ValueError, match="unidirectional"):
        sample_tokens(m.embedding, fastrnn.GRU(2, 3, bidirectional=True), m.decoder,
                      np.array([1]), 2)


@pytest.mark.parametrize("cell", CELLS)
def test_perplexity_carries_the_state(cell):
    m = RNNLanguageModel(6, 3, 5, cell=cell, dtype=np.float64, seed=1)
    ids = np.random.default_rng(2).integers(0, 6, size=200)
    ce, total, count, state = CrossEntropyLoss(reduction="sum"), 0.0, 0, None
    m.eval()
    for x, y in data.lm_batches(ids, 3, 10):
        logits, state = m(x, state)
        total, count = total + ce(logits, y), count + y.size
    m.train()
    assert m.perplexity(ids, 3, 10) == pytest.approx(np.exp(total / count), rel=1e-12)
    assert m.training


@pytest.mark.parametrize("cell", GATED)
def test_training_lowers_language_model_loss(cell):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    vocab = data.Vocab(text)
    ids = vocab.encode(text)
    m = RNNLanguageModel(len(vocab), 8, 32, cell=cell, seed=0)
    batches = list(data.lm_batches(ids, 8, 20))
    losses = _train(m, lambda s: ((batches[s % len(batches)][0],), batches[s % len(batches)][1]),
                    60)
    assert np.mean(losses[-5:]) < 0.5 * losses[0]


# refusals ----------------------------------------------------------------------------------
MODEL_CASES = [
    (RNNLanguageModel, dict(vocab_size=7, embedding_dim=3, hidden_size=4, num_layers=2)),
    (ConditionalGenerator, dict(num_classes=3, vocab_size=7, embedding_dim=3, hidden_size=4,
                                num_layers=2)),
    (SequenceClassifier, dict(vocab_size=7, embedding_dim=3, hidden_size=4, num_classes=2,
                              bidirectional=True)),
    (SequenceTagger, dict(vocab_size=7, embedding_dim=3, hidden_size=4, num_tags=3,
                          batch_first=True, dtype="float64")),
    (Seq2Seq, dict(src_vocab_size=7, tgt_vocab_size=6, embedding_dim=3, hidden_size=4)),
]
MODEL_IDS = [c[0].__name__ for c in MODEL_CASES]


@pytest.mark.parametrize("cls,kwargs", MODEL_CASES, ids=MODEL_IDS)
def test_every_architecture_refuses_a_bad_cell_or_a_nonlinearity_it_ignores(cls, kwargs):
    for cell in GATED:
        with pytest.raises(ValueError, match="applies only to cell='rnn'"):
            cls(**kwargs, nonlinearity="relu", cell=cell)
        cls(**kwargs, nonlinearity="tanh", cell=cell)  # the default, stated, is fine
    cls(**kwargs, nonlinearity="relu")
    with pytest.raises(ValueError, match=r"cell must be one of \('rnn', 'lstm', 'gru'\)"):
        cls(**kwargs, cell="LSTM")
    with pytest.raises(TypeError, match="cell must be"):
        cls(**kwargs, cell=None)


# save and load -----------------------------------------------------------------------------
def _inputs(cls, rng):
    """A forward's arguments for each architecture (MODEL_CASES' sizes)."""
    x = rng.integers(2, 6, size=(4, 3))
    if cls is ConditionalGenerator:
        return (np.array([0, 2, 1]), x)
    if cls is Seq2Seq:
        return (x, np.array([4, 2, 3]), rng.integers(2, 6, size=(3, 3)))
    if cls is SequenceTagger:
        return (x.T,)
    return (x,)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("cls,kwargs", MODEL_CASES, ids=MODEL_IDS)
def test_save_load_round_trip(tmp_path, rng, cls, kwargs, cell):
    m = cls(**kwargs, cell=cell, seed=3).eval()
    path = tmp_path / "model.npz"
    save_model(path, m, None)
    m2, _, _ = load_model(path)
    assert type(m2) is cls and m2.config() == m.config() and m2.config()["cell"] == cell
    assert [n for n, _ in m2.named_parameters()] == [n for n, _ in m.named_parameters()]
    args = _inputs(cls, rng)
    for a, b in zip(as_list(m(*args)), as_list(m2.eval()(*args))):
        for u, v in zip(as_list(a), as_list(b)):
            np.testing.assert_array_equal(u, v)


def _rewrite_config(path, out, change):
    with np.load(path) as f:
        arrays = dict(f)
    header = json.loads(arrays["fastrnn_header"].tobytes())
    change(header["config"])
    arrays["fastrnn_header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize("cls,kwargs", MODEL_CASES, ids=MODEL_IDS)
def test_a_checkpoint_without_a_cell_loads_as_rnn(tmp_path, rng, cls, kwargs):
    """What fastrnn wrote before cell= existed: the same configuration without the entry."""
    m = cls(**kwargs, nonlinearity="relu", seed=4).eval()
    save_model(tmp_path / "new.npz", m)
    old = _rewrite_config(tmp_path / "new.npz", tmp_path / "old.npz",
                          lambda config: config.pop("cell"))
    loaded = load_model(old).model.eval()
    assert loaded.config() == m.config() and loaded.config()["cell"] == "rnn"
    assert isinstance(getattr(loaded, "encoder" if cls is Seq2Seq else "rnn"), fastrnn.RNN)
    args = _inputs(cls, rng)
    np.testing.assert_array_equal(as_list(loaded(*args))[0], as_list(m(*args))[0])


@pytest.mark.parametrize("value, error", [
    ("transformer", "cell must be one of"), ("LSTM", "cell must be one of"),
    (["lstm"], "cell must be one of"), (None, "cell must be one of"), (3, "cell must be one of"),
    ("x" * 10_000, "cell must be one of"), ("gru", "does not match its configuration"),
    ("lstm", "does not match its configuration")])
def test_a_tampered_cell_is_a_clear_error(tmp_path, value, error):
    save_model(tmp_path / "rnn.npz", RNNLanguageModel(5, 2, 3, 2, seed=0))
    path = _rewrite_config(tmp_path / "rnn.npz", tmp_path / "bad.npz",
                           lambda config: config.update(cell=value))
    with pytest.raises(ValueError, match=error) as info:
        load_model(path)
    assert len(str(info.value)) < 600, "the message quotes a bounded part of the value"


def test_a_gated_checkpoint_with_a_nonlinearity_is_refused(tmp_path):
    save_model(tmp_path / "lstm.npz", Seq2Seq(5, 5, 2, 3, cell="lstm", seed=0))
    path = _rewrite_config(tmp_path / "lstm.npz", tmp_path / "bad.npz",
                           lambda config: config.update(nonlinearity="relu"))
    with pytest.raises(ValueError, match="applies only to cell='rnn'"):
        load_model(path)
