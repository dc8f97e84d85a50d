"""fastrnn.data: tokenizers, Vocab, padding, splits and batch iterators."""

import json

import numpy as np
import pytest

from fastrnn import data
from fastrnn.data import Vocab


def test_tokenizers():
    assert data.char_tokenize("ab c") == ["a", "b", " ", "c"]
    assert data.whitespace_tokenize(" to be\n or  not ") == ["to", "be", "or", "not"]
    assert data.get_tokenizer("char") is data.char_tokenize
    custom = str.split
    assert data.get_tokenizer(custom) is custom
    with pytest.raises(ValueError, match="unknown tokenizer"):
        data.get_tokenizer("bpe")


def test_jieba_hook_is_optional():
    tok = data.get_tokenizer("jieba")
    try:
        import jieba  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install jieba"):
            tok("我爱自然语言处理")
    else:
        assert "".join(tok("我爱自然语言处理")) == "我爱自然语言处理"


def test_vocab_order_specials_and_unknowns():
    v = Vocab("abracadabra")
    # specials, then by decreasing count; ties (c, d: 1 each) in order of appearance
    assert v.itos == ["<pad>", "<unk>", "a", "b", "r", "c", "d"]
    assert v.pad_index == v["<pad>"] == 0 and v.unk_index == v["<unk>"] == 1
    np.testing.assert_array_equal(v.encode("cab?"), [5, 2, 3, 1])
    assert v.encode("cab").dtype == np.int64
    assert v.decode([5, 2, 3], sep="") == "cab"
    assert v.decode([0, 5, 1], skip_specials=True) == ["c"]
    assert v.decode(np.array([[2, 3]])) == ["a", "b"]
    with pytest.raises(IndexError):
        v.decode([7])


def test_vocab_from_sequences_min_freq_and_max_size():
    seqs = [["the", "cat"], ["the", "dog"], ["a", "cat"]]
    v = Vocab(seqs, min_freq=2)
    assert v.itos == ["<pad>", "<unk>", "the", "cat"]
    assert Vocab(seqs, max_size=3).itos == ["<pad>", "<unk>", "the"]
    v = Vocab(seqs, specials=("<pad>", "<unk>", "<bos>", "<eos>"))
    assert v.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"] and v.n_specials == 4
    with pytest.raises(ValueError, match="specials must start"):
        Vocab(seqs, specials=("<unk>", "<pad>"))


def test_vocab_save_load_is_json(tmp_path):
    v = Vocab(data.char_tokenize("héllo, wörld\n\t\"'"), specials=("<pad>", "<unk>", "<s>"))
    path = tmp_path / "vocab.json"
    v.save(path)
    obj = json.loads(path.read_text(encoding="utf-8"))
    assert obj["itos"] == v.itos
    w = Vocab.load(path)
    assert w == v and w.n_specials == 3
    for bad in ["not json", "[]", json.dumps({"format": "other"}),
                json.dumps({"format": "fastrnn.Vocab/1", "itos": ["a"], "n_specials": 2})]:
        with pytest.raises(ValueError):
            Vocab.from_json(bad)


@pytest.mark.parametrize("batch_first", [False, True])
def test_pad_sequences(batch_first):
    seqs = [[1, 2, 3], [4], [], [5, 6]]
    x, lengths = data.pad_sequences(seqs, pad_value=0, batch_first=batch_first)
    expected = np.array([[1, 2, 3], [4, 0, 0], [0, 0, 0], [5, 6, 0]])
    np.testing.assert_array_equal(x, expected if batch_first else expected.T)
    np.testing.assert_array_equal(lengths, [3, 1, 0, 2])
    assert x.dtype == np.int64 and x.flags.c_contiguous


def test_pad_sequences_features_and_truncation():
    seqs = [np.ones((3, 2), dtype=np.float32), np.full((1, 2), 2, dtype=np.float32)]
    x, lengths = data.pad_sequences(seqs, pad_value=-1, batch_first=True, max_len=2)
    assert x.shape == (2, 2, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(lengths, [2, 1])
    np.testing.assert_array_equal(x[1, 1], [-1, -1])
    with pytest.raises(ValueError, match="every sequence"):
        data.pad_sequences([np.ones((2, 2)), np.ones((2, 3))])


def test_train_val_test_split():
    items = list(range(100))
    tr, va, te = data.train_val_test_split(items, val=0.1, test=0.2, seed=0)
    assert (len(tr), len(va), len(te)) == (70, 10, 20)
    assert sorted(tr + va + te) == items
    assert tr != items[:70], "shuffled"
    assert data.train_val_test_split(items, val=0.1, test=0.2, seed=0) == (tr, va, te)
    arr = np.arange(10)
    tr, va, te = data.train_val_test_split(arr, val=2, test=3, shuffle=False)
    np.testing.assert_array_equal(tr, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(te, [7, 8, 9])
    with pytest.raises(ValueError):
        data.train_val_test_split(items, val=0.6, test=0.6)


def test_batch_iterator():
    xs, ys = list(range(10)), np.arange(10) * 10
    batches = list(data.batch_iterator(xs, ys, batch_size=4))
    assert [b[0] for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(batches[2][1], [80, 90])
    shuffled = list(data.batch_iterator(xs, ys, batch_size=3, shuffle=True, seed=1))
    seen = sum((b[0] for b in shuffled), [])
    assert sorted(seen) == xs and seen != xs
    for bx, by in shuffled:
        np.testing.assert_array_equal(np.array(bx) * 10, by)
    again = list(data.batch_iterator(xs, ys, batch_size=3, shuffle=True, seed=1))
    assert [b[0] for b in again] == [b[0] for b in shuffled]
    assert [len(b) for b in data.batch_iterator(xs, batch_size=4, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="equal lengths"):
        list(data.batch_iterator(xs, ys[:5], batch_size=2))


@pytest.mark.parametrize("batch_first", [False, True])
def test_lm_batches_are_contiguous_streams(batch_first):
    ids = np.arange(103)
    batches = list(data.lm_batches(ids, batch_size=4, seq_len=7, batch_first=batch_first))
    n = 103 // 4  # 25 tokens per stream, 24 predictions: 7, 7, 7, 3
    assert [x.shape[1 if batch_first else 0] for x, _ in batches] == [7, 7, 7, 3]
    xs = np.concatenate([x.T if batch_first else x for x, _ in batches])
    ys = np.concatenate([y.T if batch_first else y for _, y in batches])
    for b in range(4):
        stream = ids[b * n:(b + 1) * n]
        np.testing.assert_array_equal(xs[:, b], stream[:-1])
        np.testing.assert_array_equal(ys[:, b], stream[1:])
    with pytest.raises(ValueError, match="too few"):
        list(data.lm_batches(np.arange(5), batch_size=4, seq_len=2))
