"""The five architectures: gradients, padding, generation, training, save/load.

Gradients are checked against finite differences in float64; generation against the
models' own step-by-step forward in Python (and the sampling distribution against the
softmax); padding by comparing a padded batch with its sequences run one at a time.
"""

import numpy as np
import pytest

import fastrnn
from fastrnn import CrossEntropyLoss, data, load_model, optim, save_model
from fastrnn.models import (ConditionalGenerator, RNNLanguageModel, Seq2Seq, SequenceClassifier,
                            SequenceTagger, accuracy, sample_tokens)

EPS = 1e-6


def check_gradients(model, objective, rng, per_param=12):
    """Compare every parameter's analytic gradient with central differences (up to
    ``per_param`` random entries of each).

    ``objective()`` runs forward, returns (loss, backward) where backward() runs the
    model's backward for that loss.
    """
    model.zero_grad()
    _, backward = objective()
    backward()
    for name, p in model.named_parameters():
        flat, gflat = p.data.reshape(-1), p.grad.reshape(-1)
        for i in rng.choice(flat.size, size=min(per_param, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + EPS
            up = objective()[0]
            flat[i] = old - EPS
            down = objective()[0]
            flat[i] = old
            numeric = (up - down) / (2 * EPS)
            assert gflat[i] == pytest.approx(numeric, rel=1e-5, abs=1e-8), f"{name}[{i}]"


def ce_objective(ce, forward, targets, model):
    def objective():
        loss = ce(forward(), targets)
        return loss, lambda: model.backward(ce.backward())
    return objective


def padded_batch(rng, lengths, vocab, batch_first=False, garbage=False):
    seqs = [rng.integers(2, vocab, size=n) for n in lengths]
    x, lens = data.pad_sequences(seqs, batch_first=batch_first)
    if garbage:  # anything in the padding must not matter
        mask = (np.arange(x.shape[1 if batch_first else 0])[:, None] >= lens)
        mask = mask.T if batch_first else mask
        x = np.where(mask, rng.integers(2, vocab, size=x.shape), x)
    return seqs, x, lens


# gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 2])
def test_language_model_gradients(rng, num_layers):
    m = RNNLanguageModel(7, 3, 5, num_layers, dtype=np.float64, seed=rng)
    x, y = rng.integers(0, 7, size=(6, 2)), rng.integers(0, 7, size=(6, 2))
    h0 = rng.standard_normal((num_layers, 2, 5)) * 0.5
    check_gradients(m, ce_objective(CrossEntropyLoss(), lambda: m(x, h0)[0], y, m), rng)


def test_tagger_gradients(rng):
    _, x, lens = padded_batch(rng, [5, 2, 4], 6, batch_first=True)
    m = SequenceTagger(6, 3, 4, 3, batch_first=True, dtype=np.float64, seed=rng)
    y = np.where(np.arange(5) < lens[:, None], rng.integers(0, 3, size=x.shape), -100)
    check_gradients(m, ce_objective(CrossEntropyLoss(), lambda: m(x, lens), y, m), rng)


# padding never leaks ------------------------------------------------------------------------
def _grads(model):
    return {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_classifier_padding_does_not_leak(rng, bidirectional):
    m = SequenceClassifier(8, 3, 5, 4, bidirectional=bidirectional, dtype=np.float64, seed=rng)
    lengths = [5, 2, 4]
    seqs, x, lens = padded_batch(rng, lengths, 8, garbage=True)
    y = np.array([3, 0, 1])
    ce = CrossEntropyLoss(reduction="sum")
    m.zero_grad()
    logits = m(x, lens)
    ce(logits, y)
    m.backward(ce.backward())
    batch_grads = _grads(m)
    m.zero_grad()
    for i, s in enumerate(seqs):
        single = m(s[:, None])
        np.testing.assert_allclose(logits[i], single[0], rtol=1e-12, atol=1e-12)
        ce(single, y[i:i + 1])
        m.backward(ce.backward())
    for name, g in _grads(m).items():
        np.testing.assert_allclose(batch_grads[name], g, rtol=1e-10, atol=1e-12, err_msg=name)


def test_tagger_padding_masked_from_loss_gradients_and_accuracy(rng):
    m = SequenceTagger(8, 3, 5, 3, dtype=np.float64, seed=rng)
    seqs, x, lens = padded_batch(rng, [5, 2, 4], 8)
    _, x2, _ = padded_batch(rng, [5, 2, 4], 8, garbage=True)
    x2 = np.where(np.arange(5)[:, None] < lens, x, x2)  # same tokens, garbage padding
    tags = np.where(np.arange(5)[:, None] < lens, rng.integers(0, 3, size=x.shape), -100)
    ce = CrossEntropyLoss()
    results = []
    for inp in (x, x2):
        m.zero_grad()
        logits = m(inp, lens)
        loss = ce(logits, tags)
        m.backward(ce.backward())
        results.append((loss, accuracy(logits, tags), _grads(m), logits))
    (l1, a1, g1, lg1), (l2, a2, g2, lg2) = results
    assert l1 == pytest.approx(l2, rel=1e-13) and a1 == a2
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-12, atol=1e-14, err_msg=name)
    # and each sequence alone gives the same logits
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(lg1[:len(s), i], m(s[:, None])[:, 0], rtol=1e-12, atol=1e-12)
    mask = tags != -100
    assert a1 == pytest.approx((np.argmax(lg1, -1) == tags)[mask].mean())


def test_accuracy_ignores_index():
    logits = np.array([[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    assert accuracy(logits, np.array([[1], [1], [-100]])) == 0.5
    assert np.isnan(accuracy(logits, np.full((3, 1), -100)))


# generation --------------------------------------------------------------------------------
def _python_logits(m, tokens):
    """The LM's next-token logits after feeding ``tokens`` (1-D), by the module forward."""
    logits, _ = m(np.asarray(tokens)[:, None])
    return logits[-1, 0]


def test_sampling_is_seeded_and_thread_independent(rng):
    m = RNNLanguageModel(9, 4, 6, 2, seed=rng).eval()
    prime = rng.integers(0, 9, size=(5, 3))
    a = m.generate(prime, 40, temperature=1.0, seed=123)
    runs = []
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        try:
            runs.append(m.generate(prime, 40, temperature=1.0, seed=123))
        finally:
            fastrnn.set_num_threads(None)
    for r in runs:
        np.testing.assert_array_equal(r, a)
    assert not np.array_equal(m.generate(prime, 40, temperature=1.0, seed=124), a)
    assert not np.array_equal(a[0], a[1]), "rows draw from different streams"
    one = m.generate(prime[0], 40, temperature=1.0, seed=123)
    assert one.shape == (40,)


def test_sampling_stops_at_eos_and_validates(rng):
    m = RNNLanguageModel(5, 3, 4, seed=rng).eval()
    m.decoder.bias.data[...] = [0, 0, 0, 50, 0]  # token 3 always wins
    tokens, lengths, _ = sample_tokens(m.embedding, m.rnn, m.decoder, np.array([[1], [2]]), 6,
                                       temperature=0, eos=3, pad=0)
    np.testing.assert_array_equal(tokens, [[3, 0, 0, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(lengths, [1, 1])
    with pytest.raises(IndexError, match="out of range"):
        m.generate(np.array([5]), 3)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(np.array([1]), 3, temperature=-1)
    with pytest.raises(ValueError, match="P ≥ 1"):
        m.generate(np.zeros((1, 0), dtype=np.int64), 3)
    bi = fastrnn.RNN(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        sample_tokens(m.embedding, bi, m.decoder, np.array([1]), 3)


# training lowers the loss -------------------------------------------------------------------
def _train(model, batch_fn, steps, lr=1e-2, clip=1.0):
    opt = optim.Adam(model.parameters(), lr=lr)
    ce = CrossEntropyLoss()
    losses = []
    for step in range(steps):
        inputs, targets = batch_fn(step)
        model.zero_grad()
        logits = model(*inputs)
        logits = logits[0] if isinstance(logits, tuple) else logits
        losses.append(ce(logits, targets))
        model.backward(ce.backward())
        fastrnn.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return losses


def test_training_lowers_language_model_loss_and_perplexity():
    text = "the quick brown fox jumps over the lazy dog. " * 40
    vocab = data.Vocab(text)
    ids = vocab.encode(text)
    m = RNNLanguageModel(len(vocab), 8, 32, seed=0)
    before = m.perplexity(ids, batch_size=4, seq_len=20)
    batches = list(data.lm_batches(ids, 8, 20))
    losses = _train(m, lambda s: ((batches[s % len(batches)][0],), batches[s % len(batches)][1]),
                    60)
    after = m.perplexity(ids, batch_size=4, seq_len=20)
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    assert after < 0.3 * before
    sample = vocab.decode(m.generate(vocab.encode("the "), 40, temperature=0), sep="")
    assert "the" in sample or "fox" in sample or "dog" in sample


def test_training_lowers_classifier_loss():
    rng = np.random.default_rng(0)

    def batch(step):  # which of tokens 2 and 3 is more frequent
        seqs = [rng.integers(2, 4, size=rng.integers(3, 9)) for _ in range(32)]
        y = np.array([int(np.sum(s == 3) > np.sum(s == 2)) for s in seqs])
        x, lens = data.pad_sequences(seqs)
        return (x, lens), y

    m = SequenceClassifier(4, 4, 16, 2, seed=0)
    losses = _train(m, batch, 80)
    assert np.mean(losses[-5:]) < 0.6 * losses[0]


def test_training_lowers_tagger_loss():
    rng = np.random.default_rng(0)

    def batch(step):  # tag = token is a local maximum: needs both directions
        seqs = [rng.integers(2, 8, size=rng.integers(3, 9)) for _ in range(32)]
        x, lens = data.pad_sequences(seqs)
        pad = np.pad(x, ((1, 1), (0, 0)))
        tags = ((x > pad[:-2]) & (x > pad[2:])).astype(np.int64)
        tags[np.arange(x.shape[0])[:, None] >= lens] = -100
        return (x, lens), tags

    m = SequenceTagger(8, 4, 16, 2, seed=0)
    losses = _train(m, batch, 60)
    assert np.mean(losses[-5:]) < 0.6 * losses[0]


def test_training_lowers_seq2seq_and_conditional_generator_loss():
    rng = np.random.default_rng(0)
    BOS, EOS = 2, 3

    def batch(step):  # reverse a sequence of tokens 4..7
        seqs = [rng.integers(4, 8, size=rng.integers(1, 5)) for _ in range(32)]
        src, src_lens = data.pad_sequences(seqs)
        tin, tin_lens = data.pad_sequences([np.r_[BOS, s[::-1]] for s in seqs])
        tout, _ = data.pad_sequences([np.r_[s[::-1], EOS] for s in seqs], pad_value=-100)
        return (src, src_lens, tin, tin_lens), tout

    m = Seq2Seq(8, 8, 4, 24, seed=0)
    losses = _train(m, batch, 60)
    assert np.mean(losses[-5:]) < 0.6 * losses[0]

    words = ["one", "two", "six"]
    wv = data.Vocab("".join(words), specials=("<pad>", "<unk>", "<s>", "</s>"))

    def cbatch(step):
        labels = rng.integers(0, 3, size=16)
        x, lens = data.pad_sequences([np.r_[2, wv.encode(words[k])] for k in labels])
        y, _ = data.pad_sequences([np.r_[wv.encode(words[k]), 3] for k in labels], pad_value=-100)
        return (labels, x, lens), y

    g = ConditionalGenerator(3, len(wv), 4, 16, seed=0)
    losses = _train(g, cbatch, 80, lr=3e-2)
    assert np.mean(losses[-5:]) < 0.3 * losses[0]
    tokens, lengths = g.generate(np.arange(3), 6, bos=2, eos=3)
    assert [wv.decode(t[:n - 1], sep="") for t, n in zip(tokens, lengths)] == words


# save and load -----------------------------------------------------------------------------
MODEL_CASES = [
    (RNNLanguageModel, dict(vocab_size=7, embedding_dim=3, hidden_size=4, num_layers=2)),
    (ConditionalGenerator, dict(num_classes=3, vocab_size=7, embedding_dim=3, hidden_size=4)),
    (SequenceClassifier, dict(vocab_size=7, embedding_dim=3, hidden_size=4, num_classes=2,
                              bidirectional=True)),
    (SequenceTagger, dict(vocab_size=7, embedding_dim=3, hidden_size=4, num_tags=3,
                          batch_first=True, dtype="float64")),
    (Seq2Seq, dict(src_vocab_size=7, tgt_vocab_size=6, embedding_dim=3, hidden_size=4)),
]


@pytest.mark.parametrize("cls,kwargs", MODEL_CASES, ids=[c[0].__name__ for c in MODEL_CASES])
def test_save_load_round_trip(tmp_path, cls, kwargs):
    m = cls(**kwargs, seed=3)
    vocab = data.Vocab("abcde")
    vocabs = {"src": vocab, "tgt": data.Vocab("xyzw")} if cls is Seq2Seq else vocab
    path = tmp_path / "model.npz"
    save_model(path, m, vocabs, meta={"step": 5, "note": "ünïcode"})
    with np.load(path, allow_pickle=False) as f:  # a plain npz, no pickles
        assert "fastrnn_header" in f.files
    m2, v2, meta = load_model(path)
    assert type(m2) is cls and m2.config() == m.config()
    assert meta == {"step": 5, "note": "ünïcode"}
    if cls is Seq2Seq:
        assert v2 == vocabs
    else:
        assert v2 == vocab
    for (n, p), (n2, q) in zip(m.named_parameters(), m2.named_parameters()):
        assert n == n2 and q.data.dtype == p.data.dtype
        np.testing.assert_array_equal(p.data, q.data)


def test_load_rejects_bad_files(tmp_path):
    m = RNNLanguageModel(5, 2, 3, seed=0)
    good = tmp_path / "good.npz"
    save_model(good, m, None)
    assert load_model(good).vocab is None
    with np.load(good) as f:
        arrays = dict(f)

    def write(name, **changes):
        path = tmp_path / name
        d = dict(arrays, **changes)
        d = {k: v for k, v in d.items() if v is not None}
        np.savez(path, **d)
        return path

    def header(**fields):
        import json
        h = json.loads(arrays["fastrnn_header"].tobytes())
        h.update(fields)
        return np.frombuffer(json.dumps(h).encode(), dtype=np.uint8)

    cases = {
        "no header": write("a.npz", fastrnn_header=None),
        "format": write("b.npz", fastrnn_header=header(format="other/9")),
        "model class": write("c.npz", fastrnn_header=header(model="os.system")),
        "config": write("d.npz", fastrnn_header=header(config={"vocab_size": 5})),
        "missing": write("e.npz", **{"param.decoder.bias": None}),
        "size mismatch": write("f.npz", **{"param.decoder.bias": np.zeros(9, np.float32)}),
        "not json": write("g.npz", fastrnn_header=np.frombuffer(b"\xff{", dtype=np.uint8)),
        "vocab": write("h.npz", fastrnn_header=header(vocab=[""])),
    }
    (tmp_path / "text.npz").write_text("hello")
    cases["not npz"] = tmp_path / "text.npz"
    for what, path in cases.items():
        with pytest.raises(ValueError):
            load_model(path)
    with pytest.raises(TypeError, match="JSON"):
        save_model(tmp_path / "x.npz", m, meta={"a": object()})
    with pytest.raises(TypeError, match="fastrnn.models"):
        save_model(tmp_path / "x.npz", fastrnn.Linear(2, 2), None)
