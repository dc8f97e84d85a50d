"""Hardening II outside the compiled boundary: files, the command line and the Python API
refuse bad input cleanly (issue #14). Each case names what was wrong before its fix."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from _helpers import LM_TEXT, TINY_LM
import fastrnn
from fastrnn import CrossEntropyLoss, Embedding, Linear, data, load_model, optim, save_model
from fastrnn.layers import clip_grad_norm_
from fastrnn.models import (ConditionalGenerator, RNNLanguageModel, Seq2Seq, accuracy,
                            sample_tokens)
from fastrnn.train_cli import (add_sample_arguments, add_train_lm_arguments, run_command,
                               run_sample, run_train_lm)

TEXT, TINY = LM_TEXT, TINY_LM


@pytest.fixture(autouse=True)
def _restore_threads(restore_threads):
    """--threads sets fastrnn's global thread count: restore it afterwards."""


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "good.npz"
    save_model(path, RNNLanguageModel(5, 2, 3, seed=0), data.Vocab("abc"), meta={"k": 1})
    return path


def _with_header(path, out, **fields):
    with np.load(path) as f:
        arrays = dict(f)
    header = json.loads(arrays["fastrnn_header"].tobytes())
    header.update(fields)
    arrays["fastrnn_header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


# files ------------------------------------------------------------------------------------
def test_a_bare_npy_claiming_a_tebibyte_is_refused_unread(tmp_path):
    """Before: np.load allocated 1 TiB first (MemoryError)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": (2**37,)})
    path = tmp_path / "big.npy"
    path.write_bytes(buf.getvalue().ljust(144, b"\0"))
    assert path.stat().st_size == 144
    with pytest.raises(ValueError, match=r"\.npy"):
        load_model(path)


def test_num_layers_far_beyond_the_file_is_refused_quickly(model_file, tmp_path):
    """Before: seconds building 100000 layers' shapes before the mismatch was seen."""
    with np.load(model_file) as f:
        config = json.loads(f["fastrnn_header"].tobytes())["config"]
    path = _with_header(model_file, tmp_path / "layers.npz",
                        config=dict(config, num_layers=100_000))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="num_layers=100000"):
        load_model(path)
    assert time.perf_counter() - t0 < 0.5


def test_file_system_errors_are_oserror(tmp_path):
    with pytest.raises(OSError):
        load_model(tmp_path / "missing.npz")
    with pytest.raises(OSError):
        load_model(tmp_path)


@pytest.mark.parametrize("field, value", [("meta", [1, 2]), ("meta", "text"), ("vocab", "x"),
                                          ("vocab", ["", "src"]), ("model", ["list"])])
def test_header_fields_of_the_wrong_type(model_file, tmp_path, field, value):
    with pytest.raises(ValueError):
        load_model(_with_header(model_file, tmp_path / "bad.npz", **{field: value}))


def test_vocabulary_and_model_must_agree(model_file, tmp_path):
    """Before: a 7-token vocabulary with a 5-row embedding loaded (encode then IndexError)."""
    with np.load(model_file) as f:
        arrays = dict(f)
    arrays["vocab."] = np.frombuffer(data.Vocab("abcde").to_json().encode(), np.uint8)
    np.savez(tmp_path / "disagree.npz", **arrays)
    with pytest.raises(ValueError, match="vocabulary.*7 tokens.*vocab_size is 5"):
        load_model(tmp_path / "disagree.npz")
    with pytest.raises(ValueError, match="7 tokens"):  # and save_model would not write it
        save_model(tmp_path / "x.npz", RNNLanguageModel(5, 2, 3), data.Vocab("abcde"))


def test_a_vocab_entry_of_floats_is_a_value_error(model_file, tmp_path):
    with np.load(model_file) as f:
        arrays = dict(f)
    arrays["vocab."] = np.zeros(4)
    np.savez(tmp_path / "floats.npz", **arrays)
    with pytest.raises(ValueError, match="vocabulary"):
        load_model(tmp_path / "floats.npz")


def test_entries_compressed_otherwise_than_npz_does_are_refused(model_file, tmp_path):
    path = tmp_path / "lzma.npz"
    with zipfile.ZipFile(model_file) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_LZMA) as z:
        for name in src.namelist():
            z.writestr(name, src.read(name))
    with pytest.raises(ValueError, match="compression"):
        load_model(path)


def test_fuzzed_model_files_raise_only_value_or_os_errors(model_file, tmp_path):
    raw = model_file.read_bytes()
    rng = np.random.default_rng(14)
    cases = [raw[:n] for n in (0, 3, 4, 30, 100, len(raw) // 2, len(raw) - 22, len(raw) - 1)]
    for _ in range(150):
        b = bytearray(raw)
        for i in rng.integers(0, len(b), size=rng.integers(1, 4)):
            b[i] = int(rng.integers(256))
        cases.append(bytes(b))
    path = tmp_path / "fuzz.npz"
    for i, case in enumerate(cases):
        path.write_bytes(case)
        try:
            load_model(path)
        except (ValueError, OSError):
            pass  # any other exception fails the test with the case's index in the traceback


@pytest.mark.parametrize("meta", [[1], "x", {1: "int key"}, {"nested": [[1], {"a": 2}]}])
def test_save_model_refuses_meta_load_would_refuse(tmp_path, meta):
    if isinstance(meta, dict) and all(isinstance(k, str) for k in meta):
        save_model(tmp_path / "ok.npz", RNNLanguageModel(3, 2, 2), None, meta=meta)
        return
    with pytest.raises(TypeError, match="meta"):
        save_model(tmp_path / "m.npz", RNNLanguageModel(3, 2, 2), None, meta=meta)


def test_numpy_sizes_in_a_config_save_and_load(tmp_path):
    """Before: a np.int64 vocab_size made save_model fail (numpy scalars are not JSON)."""
    m = RNNLanguageModel(np.int64(5), np.int32(2), 3, dropout=np.float32(0.0),
                         batch_first=np.bool_(False))
    save_model(tmp_path / "np.npz", m)
    assert load_model(tmp_path / "np.npz").model.config() == m.config()


@pytest.mark.parametrize("tokens, error", [([["a", 1]], TypeError), ([b"ab"], TypeError),
                                           (["\ud800"], ValueError)],
                         ids=["int-token", "bytes", "lone-surrogate"])
def test_vocab_refuses_tokens_it_could_not_save(tokens, error):
    """Before: accepted, then to_json/save or from_json failed."""
    with pytest.raises(error):
        data.Vocab(tokens)


@pytest.mark.parametrize("kwargs", [dict(min_freq=1.5), dict(max_size=2.5),
                                    dict(max_size=True), dict(min_freq=None)])
def test_vocab_sizes_are_integers(kwargs):
    with pytest.raises(TypeError):
        data.Vocab("abc", **kwargs)


def test_vocab_n_specials_and_decode():
    with pytest.raises(ValueError, match="n_specials"):
        data.Vocab.from_tokens(["<pad>", "<unk>", "a"], n_specials=10**9)
    with pytest.raises(TypeError):
        data.Vocab.from_tokens(["<pad>", "<unk>", "a"], n_specials=2.0)
    with pytest.raises(ValueError):
        data.Vocab.from_json('{"format": "fastrnn.Vocab/1", "itos": ["<pad>", "<unk>"], '
                             '"n_specials": true}')
    v = data.Vocab("ab")
    with pytest.raises(TypeError):
        v.decode([1.7])  # before: IndexError-free float indexing TypeError deep inside
    with pytest.raises(IndexError):
        v.decode(np.array([2**64 - 1], dtype=np.uint64))


# the command line -------------------------------------------------------------------------
def _cli(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastrnn", *argv], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [
    ["train-lm", "--lr", "-1"], ["train-lm", "--lr", "nan"], ["train-lm", "--threads", "0"],
    ["train-lm", "--threads", str(10**7)], ["train-lm", "--temperature", "-1"],
    ["train-lm", "--hidden", "0"], ["train-lm", "--batch", "-3"], ["train-lm", "--steps", "2.5"],
    ["train-lm", "--dropout", "1.5"], ["train-lm", "--val-fraction", "1"],
    ["train-lm", "--seed", "-1"], ["train-lm", "--checkpoint", "/no/such/dir/lm.npz"],
    ["sample", "x.npz", "--length", "-1"], ["sample", "x.npz", "--top-k", "0"],
    ["sample", "x.npz", "--temperature", "inf"],
])
def test_bad_options_are_one_line_and_status_2(argv):
    """Before: tracebacks (or, for the checkpoint directory, a failure after training)."""
    r = _cli(*argv)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "error" in r.stderr


def test_checkpoint_directory_checked_before_training(text_file, tmp_path, capsys):
    parser = add_train_lm_arguments(fastrnn.train_cli.ArgumentParser())
    with pytest.raises(SystemExit) as e:
        parser.parse_args([str(text_file), "--checkpoint", str(tmp_path / "no" / "lm.npz")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["npy", "layers", "text", "missing", "tagger", "meta"])
def test_sample_on_a_bad_checkpoint(tmp_path, model_file, content):
    """Before: the 1 TiB .npy gave a MemoryError traceback; bad metadata a ValueError one."""
    path = tmp_path / "ckpt.npz"
    if content == "npy":
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                                   "shape": (2**37,)})
        path.write_bytes(buf.getvalue().ljust(144, b"\0"))
    elif content == "layers":
        with np.load(model_file) as f:
            config = json.loads(f["fastrnn_header"].tobytes())["config"]
        _with_header(model_file, path, config=dict(config, num_layers=100_000))
    elif content == "text":
        path.write_text("hello")
    elif content == "tagger":
        save_model(path, fastrnn.models.SequenceTagger(5, 2, 3, 2))
    elif content == "meta":
        save_model(path, RNNLanguageModel(5, 2, 3), data.Vocab("abc"),
                   meta={"tokenizer": 5, "separator": []})
    args = add_sample_arguments(fastrnn.train_cli.ArgumentParser()).parse_args(
        [str(path), "--prime", "ab"])
    err = io.StringIO()
    assert run_command(run_sample, args, stderr=err) == 2
    assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()


def _train_args(text_file, tmp_path, *extra):
    parser = add_train_lm_arguments(fastrnn.train_cli.ArgumentParser())
    return parser.parse_args([str(text_file), *TINY, "--checkpoint", str(tmp_path / "lm.npz"),
                              *extra])


@pytest.mark.parametrize("how", ["sigint", "keyboard-interrupt"])
def test_ctrl_c_saves_the_last_good_checkpoint(text_file, tmp_path, monkeypatch, how):
    """Before: Ctrl-C lost every step since the last evaluation (here: all of them)."""
    calls = []
    step = optim.Adam.step

    def step_then_interrupt(self):
        calls.append(1)
        if len(calls) == 3 and how == "keyboard-interrupt":
            raise KeyboardInterrupt  # before the update: steps 1-2 are the last good ones
        step(self)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, after step 3's update

    monkeypatch.setattr(optim.Adam, "step", step_then_interrupt)
    err = io.StringIO()
    args = _train_args(text_file, tmp_path, "--steps", "50", "--eval-every", "50")
    assert run_train_lm(args, stdout=io.StringIO(), stderr=err) == 130
    done = 3 if how == "sigint" else 2
    assert len(calls) == 3, "training stopped at the interrupt"
    assert f"interrupted after step {done}" in err.getvalue()
    assert str(tmp_path / "lm.npz") in err.getvalue()
    model, vocab, meta = load_model(tmp_path / "lm.npz")
    assert meta["steps"] == done and meta["interrupted"] is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_of_the_command_in_a_subprocess(text_file, tmp_path):
    ckpt = tmp_path / "lm.npz"
    proc = subprocess.Popen([sys.executable, "-m", "fastrnn", "train-lm", str(text_file), *TINY,
                             "--steps", "100000", "--eval-every", "100000", "--log-every", "1",
                             "--checkpoint", str(ckpt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # a progress line per step: training has started
            if "step 2/" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert "saved the model to" in err
    assert load_model(ckpt).meta["interrupted"] is True


# the API ----------------------------------------------------------------------------------
def test_uint64_targets_cannot_wrap_to_the_ignore_index():
    """Before: 2**64 - 100 became -100 in the int64 cast, and the loss was NaN."""
    ce = CrossEntropyLoss()
    logits = np.zeros((1, 3), np.float32)
    with pytest.raises(IndexError, match="18446744073709551516"):
        ce(logits, np.array([2**64 - 100], dtype=np.uint64))
    with pytest.raises(IndexError):
        ce(logits, np.array([2**63], dtype=np.uint64))
    assert ce(logits, np.array([2], dtype=np.uint64)) == pytest.approx(math.log(3))
    with pytest.raises(ValueError, match="at least one class"):
        ce(np.zeros((1, 0), np.float32), np.array([-100]))


@pytest.mark.parametrize("call", [
    lambda: CrossEntropyLoss(ignore_index=2.5), lambda: CrossEntropyLoss(ignore_index=True),
    lambda: Embedding(5, 2, padding_idx=1.0), lambda: Embedding(5.0, 2), lambda: Linear(2, 2.5),
    lambda: data.pad_sequences([[1, 2]], max_len=2.5),
    lambda: data.batch_iterator([1, 2, 3], batch_size=2.5),
    lambda: data.lm_batches(np.arange(50), 2.5, 4),
    lambda: data.lm_batches(np.arange(50), 2, True),
    lambda: data.train_val_test_split(list(range(10)), val=True),
    lambda: RNNLanguageModel(5, 2, 3).generate(np.array([1]), 2.5),
    lambda: RNNLanguageModel(5, 2, 3).generate(np.array([1]), 2, top_k=1.5),
    lambda: RNNLanguageModel(5, 2, 3).generate(np.array([1.0]), 2),
    lambda: RNNLanguageModel(5, 2, 3).generate(np.array([1]), 2, temperature="1"),
    lambda: ConditionalGenerator(2, 5, 2, 3).generate([0], 3, bos=1.5),
    lambda: Seq2Seq(5, 5, 2, 3).greedy_decode(np.ones((2, 1), np.int64), None, 1.5, 2, 3),
    lambda: fastrnn.set_num_threads(2.0), lambda: fastrnn.set_num_threads(True),
], ids=["ignore-float", "ignore-bool", "padding-float", "emb-float", "linear-float",
        "max_len", "batch_size", "lm-batch", "lm-seq-bool", "split-bool", "length", "top_k",
        "prime-float", "temperature-str", "bos", "s2s-bos", "threads-float", "threads-bool"])
def test_integers_are_integers(call):
    """Before: most were truncated by int() (2.5 -> 2) or failed deep inside."""
    with pytest.raises(TypeError):
        call()


def test_whole_numpy_integers_and_0d_arrays_are_integers():
    assert Embedding(np.int64(5), np.array(2)).weight.shape == (5, 2)
    assert CrossEntropyLoss(ignore_index=np.int8(-1)).ignore_index == -1


def test_generators_validate_when_called():
    """Before: batch_iterator and lm_batches were generator functions: errors at next()."""
    with pytest.raises(ValueError):
        data.batch_iterator([1, 2], [1], batch_size=1)
    with pytest.raises(ValueError):
        data.lm_batches(np.arange(50), 0, 4)
    with pytest.raises(ValueError):
        data.lm_batches(np.arange(3), 2, 4)
    with pytest.raises(IndexError):  # would wrap to negative ids in the int64 cast
        data.lm_batches(np.array([1, 2**63, 3, 4], dtype=np.uint64), 1, 2)
    with pytest.raises(TypeError):
        data.batch_iterator({"a": 1}, batch_size=1)


def test_data_helpers_refuse_what_they_would_mangle():
    with pytest.raises(ValueError, match="pad_value"):
        data.pad_sequences([[1, 2], [3]], pad_value=2.5)  # before: padded with 2
    with pytest.raises(ValueError, match="pad_value"):
        data.pad_sequences([[1, 2], [3]], pad_value=-1, dtype=np.uint8)  # before: 255
    padded, _ = data.pad_sequences([[1.0], []], pad_value=np.nan)
    assert np.isnan(padded[0, 1])
    with pytest.raises(ValueError):
        data.train_val_test_split(np.array(5))
    train, val, test = data.train_val_test_split((1, 2, 3, 4), val=1, test=1, seed=0)
    assert isinstance(train, tuple) and isinstance(val, tuple)


def test_optimizers_refuse_a_gradient_of_another_shape():
    """Before: NumPy broadcast a (1,) or (3,1) gradient into the update of a (3,) parameter."""
    for make in (lambda ps: optim.SGD(ps, lr=0.1), lambda ps: optim.Adam(ps, lr=0.1)):
        p = fastrnn.Parameter(np.ones(3, np.float32))
        q = fastrnn.Parameter(np.ones(2, np.float32))
        opt = make([q, p])
        for bad in (np.ones(1, np.float32), np.ones((3, 1), np.float32),
                    np.ones(3, np.float64), [1.0, 1.0, 1.0]):
            p.grad = bad
            with pytest.raises((ValueError, TypeError), match="gradient"):
                opt.step()
            np.testing.assert_array_equal(q.data, 1)  # nothing updated before the check
        np.testing.assert_array_equal(p.data, 1)


@pytest.mark.parametrize("kwargs", [dict(lr=float("nan")), dict(lr="0.1"), dict(lr=-1),
                                    dict(momentum=float("nan")), dict(weight_decay=-1),
                                    dict(nesterov="yes")])
def test_sgd_hyperparameters(kwargs):
    with pytest.raises((ValueError, TypeError)):
        optim.SGD([fastrnn.Parameter(np.ones(2))], **dict(dict(lr=0.1), **kwargs))


@pytest.mark.parametrize("betas", [(0.9,), "ab", (0.9, float("nan")), (0.9, 1.0), 0.9])
def test_adam_betas(betas):
    with pytest.raises((ValueError, TypeError)):
        optim.Adam([fastrnn.Parameter(np.ones(2))], betas=betas)


def test_an_optimizer_refuses_a_repeated_parameter():
    p = fastrnn.Parameter(np.ones(2))
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)


@pytest.mark.parametrize("norm_type", [2, 1, 0, 0.5, 3.5, -1, -2.5, "inf", "-inf",
                                       math.inf, -math.inf, "2", True, float("nan")])
@pytest.mark.parametrize("max_norm", [1.0, -1.0, 0.0, float("inf"), float("nan"), "1"])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    grads = [np.array([3.0, 0.0, -4.0], np.float32), np.array([1.0, 2.0], np.float32)]
    ps = [fastrnn.Parameter(np.zeros_like(g)) for g in grads]
    ts = [torch.nn.Parameter(torch.zeros(len(g))) for g in grads]
    for p, t, g in zip(ps, ts, grads):
        p.grad[...] = g
        t.grad = torch.from_numpy(g.copy())
    want = float(torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type))
    got = clip_grad_norm_(ps, max_norm, norm_type)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for p, t in zip(ps, ts):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_refuses_what_torch_refuses():
    p = fastrnn.Parameter(np.ones(2, np.float32))
    for bad in ("fro", None, [2]):
        with pytest.raises((ValueError, TypeError)):
            clip_grad_norm_([p], 1.0, bad)
    with pytest.raises(TypeError, match="Parameter"):
        clip_grad_norm_([np.ones(2)], 1.0)


def test_set_num_threads_is_bounded():
    most = fastrnn.parallel.max_num_threads()
    assert most == 64 * fastrnn.parallel._usable_cpus()
    fastrnn.set_num_threads(most)
    for bad in (most + 1, -most - 1, 10**6, 0):
        with pytest.raises(ValueError, match="num_threads"):
            fastrnn.set_num_threads(bad)
    fastrnn.set_num_threads(np.int64(1))
    assert fastrnn.get_num_threads() == 1


def test_layer_gradients_must_match_dtype_and_the_parameter():
    lin = Linear(3, 2, dtype=np.float32)
    y = lin(np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="dtype"):  # before: cast silently
        lin.backward(np.ones(y.shape, np.float64))
    lin.weight.grad = np.zeros((1, 1), np.float32)  # before: a kernel wrote a (2, 3) result
    with pytest.raises(ValueError, match="gradient of weight"):
        lin.backward(np.ones(y.shape, np.float32))
    emb = Embedding(4, 2)
    emb(np.array([1, 2]))
    emb.weight.grad = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="gradient of weight"):
        emb.backward(np.ones((2, 2), np.float32))


def test_caches_own_their_inputs():
    """Before: changing the indices (or a Linear's input) after forward changed backward."""
    emb = Embedding(4, 2)
    idx = np.array([1, 2])
    emb(idx)
    idx[:] = 3
    emb.backward(np.ones((2, 2), np.float32))
    assert emb.weight.grad[3].sum() == 0 and emb.weight.grad[1].sum() == 2
    lin = Linear(2, 1, bias=False)
    x = np.ones((1, 2), np.float32)
    lin(x)
    x[:] = 5
    lin.backward(np.ones((1, 1), np.float32))
    np.testing.assert_array_equal(lin.weight.grad, [[1, 1]])


def test_accuracy_refuses_shapes_that_would_broadcast():
    with pytest.raises(ValueError):
        accuracy(np.zeros((4, 3)), np.zeros(2, np.int64))
    with pytest.raises(TypeError):
        accuracy(np.zeros((2, 3)), np.zeros(2))


def test_sample_tokens_checks_h0_dtype_and_eos():
    m = RNNLanguageModel(5, 2, 3)
    with pytest.raises(TypeError, match="h0 dtype"):
        sample_tokens(m.embedding, m.rnn, m.decoder, np.array([1]), 2,
                      h0=np.zeros((1, 3), np.float64))
    with pytest.raises(ValueError, match="eos"):
        sample_tokens(m.embedding, m.rnn, m.decoder, np.array([1]), 2, eos=5)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(np.array([1]), 2, temperature=float("inf"))


# torch adapter ----------------------------------------------------------------------------
@pytest.mark.parametrize("whole", [False, True], ids=["ragged", "whole"])
@pytest.mark.parametrize("case", ["sorted-repeats", "sorted-out-of-range", "unsorted-inverse",
                                  "increasing", "zero-size", "sum", "float-sizes"])
def test_bad_packed_sequences_are_refused(case, whole):
    """Before: a sorted_indices that is not a permutation left a length uninitialised.
    Sequences all whole (batch sizes all 3) take another path, checked the same."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    from torch.nn.utils.rnn import PackedSequence

    rnn = ft.RNN(2, 3)
    sizes, sorted_idx, unsorted_idx = torch.tensor([3, 2]), torch.tensor([0, 1, 2]), None
    if case == "sorted-repeats":
        sorted_idx = torch.tensor([0, 0, 1])
    elif case == "sorted-out-of-range":  # unsorted given: torch's constructor would invert it
        sorted_idx, unsorted_idx = torch.tensor([0, 1, 5]), torch.tensor([0, 1, 2])
    elif case == "unsorted-inverse":
        sorted_idx, unsorted_idx = torch.tensor([2, 0, 1]), torch.tensor([2, 0, 1])
    elif case == "increasing":
        sizes = torch.tensor([2, 3])
    elif case == "zero-size":
        sizes = torch.tensor([3, 0, 2])
    if whole and case not in ("increasing", "zero-size"):
        sizes = torch.tensor([3, 3])
    rows = int(sizes.sum()) - (case == "sum")  # "sum": one row fewer than the sizes say
    if case == "float-sizes":
        sizes = sizes.double()
    packed = PackedSequence(torch.randn(rows, 2), sizes, sorted_idx, unsorted_idx)
    with pytest.raises(TypeError if case == "float-sizes" else ValueError,
                       match="PackedSequence"):
        rnn(packed)


def test_torch_adapter_refuses_numpy_input():
    pytest.importorskip("torch")
    import fastrnn.torch as ft

    with pytest.raises(TypeError, match="torch.Tensor"):
        ft.RNN(2, 3)(np.zeros((1, 1, 2), np.float32))
