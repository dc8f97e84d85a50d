"""The train-lm and sample commands (fastrnn.train_cli), on tiny models and texts."""

import argparse
import io
import math

import numpy as np
import pytest

import fastrnn
from _helpers import LM_TEXT, TINY_LM
from fastrnn import load_model
from fastrnn.models import RNNLanguageModel, SequenceTagger
from fastrnn.serialize import save_model
from fastrnn.train_cli import (add_sample_arguments, add_train_lm_arguments, default_corpus,
                               run_sample, run_train_lm)

TEXT, TINY = LM_TEXT, TINY_LM
MODULE = {"rnn": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}


@pytest.fixture(autouse=True)
def _restore_threads(restore_threads):
    """--threads sets fastrnn's global thread count: restore it afterwards."""


def parse(add, argv):
    return add(argparse.ArgumentParser()).parse_args(argv)


def train(argv):
    out, err = io.StringIO(), io.StringIO()
    assert run_train_lm(parse(add_train_lm_arguments, argv), stdout=out, stderr=err) == 0
    return out.getvalue(), err.getvalue()


def sample(argv):
    out = io.StringIO()
    assert run_sample(parse(add_sample_arguments, argv), stdout=out) == 0
    return out.getvalue()


def test_defaults_match_the_documented_command():
    args = parse(add_train_lm_arguments, [])
    assert (args.file, args.hidden, args.layers, args.seq_len, args.batch) == \
        (None, 256, 2, 100, 32)
    args = parse(add_sample_arguments, ["model.npz"])
    assert (args.length, args.temperature, args.prime) == (500, 0.8, "")


def test_train_lm_learns_and_writes_a_checkpoint(text_file, tmp_path):
    ckpt = tmp_path / "lm.npz"
    out, err = train([str(text_file), *TINY, "--steps", "40", "--eval-every", "20",
                      "--checkpoint", str(ckpt), "--log-every", "10"])
    assert out.count("validation perplexity") == 2 and "--- sample ---" in out
    assert err.count("tok/s") == 4, "a progress line every 10 steps off a terminal"
    model, vocab, meta = load_model(ckpt)
    assert isinstance(model, RNNLanguageModel) and meta["steps"] == 40
    assert meta["tokenizer"] == "char" and set(vocab.itos[2:]) == set(TEXT)
    # far better than guessing uniformly among the characters
    assert math.isfinite(meta["val_perplexity"]) and meta["val_perplexity"] < len(vocab) / 2
    ppls = [float(line.split("perplexity ")[1].split(",")[0]) for line in out.splitlines()
            if "validation perplexity" in line]
    assert ppls[1] < ppls[0]


def test_sample_prints_prime_and_continuation(text_file, tmp_path):
    ckpt = tmp_path / "lm.npz"
    train([str(text_file), *TINY, "--steps", "30", "--eval-every", "30",
           "--checkpoint", str(ckpt)])
    a = sample([str(ckpt), "--length", "50", "--prime", "to be", "--seed", "3"])
    assert a.startswith("to be") and len(a) == len("to be") + 50 + 1
    assert sample([str(ckpt), "--length", "50", "--prime", "to be", "--seed", "3"]) == a
    assert sample([str(ckpt), "--length", "50", "--prime", "to be", "--seed", "4"]) != a
    greedy = sample([str(ckpt), "--length", "10", "--temperature", "0", "--top-k", "1"])
    assert len(greedy) == 11
    assert len(sample([str(ckpt), "--length", "0", "--prime", "é"])) == 2  # unknown char ok


def test_train_lm_whitespace_tokens(text_file, tmp_path):
    ckpt = tmp_path / "w.npz"
    train([str(text_file), *TINY, "--tokenizer", "whitespace", "--steps", "2",
           "--eval-every", "2", "--checkpoint", str(ckpt), "--val-fraction", "0.2"])
    out = sample([str(ckpt), "--length", "5", "--prime", "to be", "--seed", "0"])
    words = out.split()
    assert words[:2] == ["to", "be"] and len(words) == 7


def test_train_lm_defaults_to_the_standard_library_sources(tmp_path):
    text = default_corpus(5000)
    assert len(text) == 5000 and ("import" in text or "def " in text)
    out, _ = train([*TINY, "--max-bytes", "30000", "--steps", "1", "--checkpoint",
                    str(tmp_path / "s.npz")])
    assert "Python standard library" in out


def test_errors_are_reported(tmp_path, text_file):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00abc" * 100)
    with pytest.raises(SystemExit, match="not UTF-8"):
        train([str(bad), *TINY, "--steps", "1"])
    with pytest.raises(SystemExit, match="cannot read"):
        train([str(tmp_path / "missing.txt"), *TINY, "--steps", "1"])
    with pytest.raises(SystemExit):  # refused by its argparse type, before any work
        train([str(text_file), *TINY, "--steps", "0"])
    tagger = tmp_path / "tagger.npz"
    save_model(tagger, SequenceTagger(5, 2, 3, 2), None)
    with pytest.raises(SystemExit, match="not a language model"):
        sample([str(tagger)])
    with pytest.raises(SystemExit, match="cannot load"):
        sample([str(text_file)])


def test_checkpoint_reproduces_the_trained_model(text_file, tmp_path):
    """The saved weights are the trained ones: equal logits before and after loading."""
    ckpt = tmp_path / "lm.npz"
    train([str(text_file), *TINY, "--steps", "3", "--eval-every", "3", "--checkpoint", str(ckpt)])
    model, vocab, _ = load_model(ckpt)
    x = vocab.encode("to be or")[:, None]
    again, _, _ = load_model(ckpt)
    np.testing.assert_array_equal(model.eval()(x)[0], again.eval()(x)[0])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_train_lm_and_sample_for_every_cell(text_file, tmp_path, cell):
    """--cell picks the network, the checkpoint records it and sample rebuilds it."""
    ckpt = tmp_path / f"{cell}.npz"
    out, _ = train([str(text_file), *TINY, "--cell", cell, "--layers", "2", "--steps", "20",
                    "--eval-every", "10", "--checkpoint", str(ckpt)])
    assert f"2-layer {cell.upper()}" in out
    model, vocab, meta = load_model(ckpt)
    assert model.config()["cell"] == cell and type(model.rnn) is MODULE[cell]
    ppls = [float(line.split("perplexity ")[1].split(",")[0]) for line in out.splitlines()
            if "validation perplexity" in line]
    assert ppls[1] < ppls[0] < len(vocab)
    a = sample([str(ckpt), "--length", "30", "--prime", "to be", "--seed", "3"])
    assert sample([str(ckpt), "--length", "30", "--prime", "to be", "--seed", "3"]) == a
    assert sample([str(ckpt), "--length", "30", "--prime", "to be", "--seed", "4"]) != a
    # what sample prints is the model's own generation from the prime's state
    model.eval()
    ids = model.generate(vocab.encode("to be"), 30, temperature=0.8, seed=3)
    assert a == "to be" + vocab.decode(ids, sep="") + "\n"


def test_train_lm_cell_options_are_checked(text_file, tmp_path):
    assert parse(add_train_lm_arguments, []).cell == "rnn"
    with pytest.raises(SystemExit, match="applies only to --cell rnn"):
        train([str(text_file), *TINY, "--cell", "gru", "--nonlinearity", "relu",
               "--steps", "1", "--checkpoint", str(tmp_path / "x.npz")])
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(SystemExit):  # argparse: invalid choice
        parse(add_train_lm_arguments, ["--cell", "transformer"])


def test_train_lm_bfloat16_products(text_file, tmp_path):
    ckpt = tmp_path / "lm.npz"
    out, _ = train([str(text_file), *TINY, "--steps", "20", "--eval-every", "20",
                    "--checkpoint", str(ckpt), "--cell", "gru", "--precision", "bfloat16"])
    assert "(bfloat16 products)" in out
    model, _, meta = load_model(ckpt)
    assert meta["precision"] == "bfloat16" and math.isfinite(meta["val_perplexity"])
    assert fastrnn.get_matmul_precision() == "float32"  # the run's own, not the process's
    with pytest.raises(fastrnn.train_cli.CommandError, match="needs --dtype float32"):
        train([str(text_file), *TINY, "--steps", "1", "--dtype", "float64",
               "--precision", "bfloat16", "--checkpoint", str(tmp_path / "x.npz")])
