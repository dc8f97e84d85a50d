"""Streaming inference (``module.stream()``, fastrnn.Stream): a unidirectional RNN, LSTM or GRU
fed a step or a chunk of steps per call, its state kept between calls.

A stream must compute bitwise what the module computes on the whole sequence in eval mode,
however the sequence is cut into calls and whatever the thread count; its outputs are
read-only views (or ``out``); it copies inputs that alias its own buffers; it resets single
rows; it repacks its weights after every change fastrnn is told of (and, as documented, not
after a hand write into ``p.data``); it refuses what it cannot run with clear messages; and
one stream called from two threads either serializes the calls or refuses one with a
RuntimeError, never mixing them."""

import itertools
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from _gated import random_gated_params
from _helpers import DTYPES, in_threads, match_all, match_shape, random_params
from fastrnn import functional, optim

CELLS = ["rnn-tanh", "rnn-relu", "lstm", "lstm-proj", "gru"]
I, H, P = 5, 7, 3  # input, hidden, projection (P < H, all different: transposes show)


# builders --------------------------------------------------------------------------------
def build(cell, input_size=I, hidden_size=H, num_layers=1, *, rng, dtype=np.float32,
          bias=True, batch_first=False, proj_size=P, **options):
    """An eval-mode module of ``cell`` with the tests' random weights (loaded through
    load_state_dict, scaled up so that relu stays active)."""
    kind = cell.split("-")[0]
    bidirectional = options.get("bidirectional", False)
    common = dict(bias=bias, batch_first=batch_first, dtype=dtype, seed=0, **options)
    if kind == "rnn":
        module = fastrnn.RNN(input_size, hidden_size, num_layers,
                             nonlinearity=cell.split("-")[1], **common)
        params = random_params(rng, input_size, hidden_size, num_layers, bidirectional, bias,
                               dtype)
    else:
        proj = proj_size if cell == "lstm-proj" else 0
        if kind == "lstm":
            module = fastrnn.LSTM(input_size, hidden_size, num_layers, proj_size=proj, **common)
        else:
            module = fastrnn.GRU(input_size, hidden_size, num_layers, **common)
        params = random_gated_params(rng, kind, input_size, hidden_size, num_layers,
                                     bidirectional, bias, dtype, proj)
    module.load_state_dict(params)
    return module.eval()


def width(module):
    """H_out: the width of h and of the outputs."""
    return module.proj_size or module.hidden_size


def is_lstm(module):
    return isinstance(module, fastrnn.LSTM)


def random_state(rng, module, n, which="both"):
    """A random initial state of ``n`` rows as the module and a stream take it: h0, or for an
    LSTM the pair (h0, c0) with ``which`` ("both", "h", "c") saying which are given."""
    layers = (2 if module.bidirectional else 1) * module.num_layers
    h = (0.5 * rng.standard_normal((layers, n, width(module)))).astype(module.dtype)
    if not is_lstm(module):
        return h
    c = rng.standard_normal((layers, n, module.hidden_size)).astype(module.dtype)
    return (h if which != "c" else None, c if which != "h" else None)


def as_tuple(state):
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def assert_state_equal(got, expected, what="state"):
    got, expected = as_tuple(got), as_tuple(expected)
    assert len(got) == len(expected), what
    for name, a, b in zip(("h", "c"), got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what} {name}"
        assert np.array_equal(a, b), f"{what} {name} differs"


def whole(module, x, state=None):
    """The whole sequence at once, output and (h_n[, c_n]): the compiled functional forward,
    and the module's eval forward, which must agree bitwise (the module runs a forward of a
    few steps on a stream of its own, so the functional one is the independent reference)."""
    params = {name: p.data for name, p in module.named_parameters()}
    options = dict(num_layers=module.num_layers, batch_first=module.batch_first,
                   bidirectional=module.bidirectional, keep_cache=False)
    if isinstance(module, fastrnn.RNN):
        options["nonlinearity"] = module.nonlinearity
    y, final, _ = getattr(functional, f"{module._cell}_forward")(x, params, state, **options)
    assert not module.training
    y_module, final_module = module(x, state)
    assert np.array_equal(y_module, y), "the module's forward differs from the functional one"
    assert_state_equal(final_module, final, "the module's final state")
    return y, as_tuple(final)


def inputs(rng, module, seq_len, batch):
    shape = (batch, seq_len, module.input_size) if module.batch_first else (
        seq_len, batch, module.input_size)
    return rng.standard_normal(shape).astype(module.dtype)


def feed(stream, x, cuts, batch_first=False):
    """``x`` (the module's layout) through ``stream`` cut into ``cuts`` (None: one step, x 2-D;
    k: a chunk of k steps, x 3-D), the outputs (copied at once) joined in x's layout."""
    t_axis = 1 if batch_first else 0
    pieces, t = [], 0
    for cut in cuts:
        if cut is None:
            y = stream(x[:, t] if batch_first else x[t])
            assert y.ndim == 2 and not y.flags.writeable
            pieces.append(np.expand_dims(y, t_axis).copy())
            t += 1
        else:
            y = stream(x[:, t:t + cut] if batch_first else x[t:t + cut])
            assert y.shape[t_axis] == cut and not y.flags.writeable
            pieces.append(y.copy())
            t += cut
    assert t == x.shape[t_axis]
    return np.concatenate(pieces, axis=t_axis)


def fresh_output(module, state, x):
    """What a new stream, started from ``state``, outputs for ``x`` (a copy)."""
    batch = x.shape[0] if x.ndim == 2 or module.batch_first else x.shape[1]
    return np.array(module.stream(batch, h0=state)(x))


# 1. bitwise the whole sequence -------------------------------------------------------------
# Batch sizes for each of the stream's splits with 2 threads: one sequence (one thread); two
# with H = 128 (a chunk, or a 3-layer gated step, is enough work for 2 threads, which then
# split the 4 column panels of hidden units); 17 rows (batch slices of 9 and 8).
SIZES = [pytest.param(dict(batch=1, hidden=12, input_size=7, proj=5, max_len=10), id="N1"),
         pytest.param(dict(batch=2, hidden=128, input_size=48, proj=40, max_len=24),
                      id="N2-H128"),
         pytest.param(dict(batch=17, hidden=20, input_size=6, proj=9, max_len=10), id="N17")]
H0_MODES = ["zeros", "stream(h0=)", "reset(h0)", "reset()"]
# (num_layers, h0 mode, bias, batch_first): each case starts at its own place in the product
# (hypothesis's derandomized draws are the same for every parametrized case)
OPTIONS = list(itertools.product((1, 2, 3), H0_MODES, (True, False), (False, True)))


def draw_cuts(data, seq_len):
    """Random cuts of ``seq_len`` steps: None for a one-step call (2-D x), k for a chunk of k
    (3-D x, k may be 0 or 1)."""
    cuts, left = [], seq_len
    for _ in range(8):
        if not left:
            break
        if data.draw(st.booleans(), label="step"):
            cuts.append(None)
            left -= 1
        else:
            k = data.draw(st.integers(0, left), label="chunk")
            cuts.append(k)
            left -= k
    return cuts + ([left] if left else [])


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=5, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_stream_is_bitwise_the_whole_sequence(restore_threads, cell, dtype, sizes, data):
    salt = 11 * CELLS.index(cell) + 5 * (np.dtype(dtype) == np.float64) + 17 * sizes["batch"]
    k = data.draw(st.integers(0, len(OPTIONS) - 1), label="options")
    num_layers, h0_mode, bias, batch_first = OPTIONS[(k + salt) % len(OPTIONS)]
    seq_len = data.draw(st.integers(1, sizes["max_len"]), label="seq_len")
    cuts = draw_cuts(data, seq_len)
    which = data.draw(st.sampled_from(["both", "h", "c"]), label="lstm state given")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    N = sizes["batch"]
    module = build(cell, sizes["input_size"], sizes["hidden"], num_layers, rng=rng,
                   dtype=dtype, bias=bias, batch_first=batch_first, proj_size=sizes["proj"])
    x = inputs(rng, module, seq_len, N)
    state = random_state(rng, module, N, which) if h0_mode in ("stream(h0=)",
                                                              "reset(h0)") else None
    before = rng.standard_normal((N, module.input_size)).astype(dtype)  # a step to reset
    outputs = []
    for threads in (1, 2):
        fastrnn.set_num_threads(threads)
        y, final = whole(module, x, state)
        if h0_mode == "stream(h0=)":
            stream = module.stream(N, h0=state)
        else:
            stream = module.stream(batch_size=N)
            if h0_mode.startswith("reset"):
                stream(before)
                stream.reset(state)
        got = feed(stream, x, cuts, batch_first)
        assert got.dtype == np.dtype(dtype) and got.shape == y.shape
        assert np.array_equal(got, y), f"{threads} thread(s), cuts {cuts}: output differs"
        assert_state_equal(stream.state, final, f"{threads} thread(s): final state")
        outputs.append(got)
    assert np.array_equal(outputs[0], outputs[1]), "1 and 2 threads differ"


@pytest.mark.parametrize("cell", CELLS)
def test_stream_on_each_kernel_path(kernel, cell, rng):
    """On every compiled kernel path: the stream is the whole sequence, bitwise."""
    module = build(cell, num_layers=2, rng=rng, dtype=np.float64)
    x = inputs(rng, module, 6, 3)
    y, final = whole(module, x)
    stream = fastrnn.Stream(module, 3)
    assert np.array_equal(feed(stream, x, [None, 3, None, 0, 1]), y)
    assert_state_equal(stream.state, final)


@pytest.mark.parametrize("cell", ["rnn-tanh", "lstm", "gru"])
def test_stream_has_eval_semantics_in_training_mode(cell, rng):
    """A training-mode module with dropout streams as in eval mode (no dropout)."""
    module = build(cell, num_layers=3, rng=rng, dropout=0.5).train()
    x = inputs(rng, module, 5, 2)
    stream = module.stream(2)
    assert module.training
    got = feed(stream, x, [2, None, None, 1])
    y, final = whole(module.eval(), x)
    assert np.array_equal(got, y)
    assert_state_equal(stream.state, final)


# 2. outputs: read-only views, out= ----------------------------------------------------------
def test_outputs_are_read_only(rng):
    module = build("lstm", num_layers=2, rng=rng)
    stream = module.stream(3)
    y = stream(rng.standard_normal((3, I)).astype(np.float32))
    assert y.shape == (3, H) and y.dtype == np.float32
    assert not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        y[...] = 0
    chunk = stream(rng.standard_normal((4, 3, I)).astype(np.float32))
    assert chunk.shape == (4, 3, H) and not chunk.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        chunk[0, 0, 0] = 1
    bf = build("gru", rng=rng, batch_first=True).stream(3)
    chunk = bf(rng.standard_normal((3, 4, I)).astype(np.float32))
    assert chunk.shape == (3, 4, H) and not chunk.flags.writeable


@pytest.mark.parametrize("batch_first", [False, True], ids=["time", "batchfirst"])
def test_out_is_written_and_returned(rng, batch_first):
    module = build("lstm-proj", num_layers=2, rng=rng, batch_first=batch_first)
    x = inputs(rng, module, 6, 3)
    expected, _ = whole(module, x)
    stream = module.stream(3)
    out = np.full((3, P), np.nan, dtype=np.float32)
    assert stream(x[:, 0] if batch_first else x[0], out=out) is out
    assert np.array_equal(out, expected[:, 0] if batch_first else expected[0])
    shape = (3, 5, P) if batch_first else (5, 3, P)
    out = np.full(shape, np.nan, dtype=np.float32)
    assert stream(x[:, 1:] if batch_first else x[1:], out=out) is out
    assert np.array_equal(out, expected[:, 1:] if batch_first else expected[1:])
    # a strided out (unit stride in its last axis) is written in place too
    big = np.full((2 * shape[0],) + shape[1:], np.nan, dtype=np.float32)
    again = module.stream(3)
    again(x[:, 0] if batch_first else x[0])
    view = big[::2]
    assert again(x[:, 1:] if batch_first else x[1:], out=view) is view
    assert np.array_equal(view, out) and np.isnan(big[1::2]).all()


def test_bad_out_is_refused(rng):
    module = build("gru", rng=rng)
    stream = module.stream(3)
    x = rng.standard_normal((3, I)).astype(np.float32)
    chunk = rng.standard_normal((4, 3, I)).astype(np.float32)
    with pytest.raises(ValueError, match=match_all("out must have shape", "(3, 7)", "(3, 6)")):
        stream(x, out=np.empty((3, 6), np.float32))
    with pytest.raises(ValueError, match=match_all("shape", "(4, 3, 7)", "(3, 4, 7)")):
        stream(chunk, out=np.empty((3, 4, 7), np.float32))
    with pytest.raises(ValueError, match=match_all("shape", "(4, 3, 7)", "(3, 7)")):
        stream(chunk, out=np.empty((3, 7), np.float32))
    with pytest.raises(TypeError, match=match_all("float32", "float64")):
        stream(x, out=np.empty((3, 7), np.float64))
    readonly = np.empty((3, 7), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        stream(x, out=readonly)
    with pytest.raises(TypeError, match="out must be a NumPy array, got list"):
        stream(x, out=[[0.0] * 7] * 3)
    with pytest.raises(ValueError, match="unit stride"):
        stream(x, out=np.empty((3, 14), np.float32)[:, ::2])
    # nothing above ran a step: the state is still zero
    assert_state_equal(stream.state, np.zeros((1, 3, H), np.float32))
    y = stream(x)
    after = stream.state
    with pytest.raises(ValueError, match="writable"):  # the stream's own (read-only) view
        stream(x, out=y)
    assert_state_equal(stream.state, after)


def test_out_sharing_memory_with_x_is_refused(rng):
    module = build("rnn-tanh", H, H, rng=rng)  # I == H: out and x may be one array
    stream = module.stream(2)
    x = rng.standard_normal((2, H)).astype(np.float32)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        stream(x, out=x)
    buf = rng.standard_normal((4, 2, H)).astype(np.float32)
    with pytest.raises(ValueError, match="share memory"):
        stream(buf[:2], out=buf[1:3])  # overlapping chunks of one buffer
    with pytest.raises(ValueError, match="share memory"):
        stream(buf[0], out=buf[0])
    assert_state_equal(stream.state, np.zeros((1, 2, H), np.float32))
    # disjoint parts of one buffer are fine
    expected = fresh_output(module, None, buf[:2])
    view = buf[2:]
    assert stream(buf[:2], out=view) is view
    assert np.array_equal(view, expected)


# 3. an output fed back as the next input -------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_output_fed_back_as_input(cell, rng):
    """y (the stream's own state) fed back as x, by step and by chunk, is the same as a copy
    of it fed back: the stream copies an input that aliases its buffers."""
    out_width = P if cell == "lstm-proj" else H
    module = build(cell, out_width, H, 2, rng=rng, dtype=np.float64)
    N = 3
    looped, copied = module.stream(N), module.stream(N)
    x = rng.standard_normal((N, out_width))
    y, z = looped(x), copied(x)
    for _ in range(5):  # one-step views fed back
        y, z = looped(y), copied(np.array(z))
        assert np.array_equal(y, z)
    y, z = looped(y[None]), copied(np.array(z)[None])  # the step's view as a 1-step chunk
    assert y.shape == (1, N, out_width) and np.array_equal(y, z)
    # the state's view repeated (time stride 0) as a 4-step chunk
    y = looped(np.broadcast_to(looped(y[0]), (4, N, out_width)))
    z = copied(np.broadcast_to(np.array(copied(np.array(z)[0])), (4, N, out_width)))
    assert np.array_equal(y, z)
    for _ in range(3):  # chunk outputs fed back
        y, z = looped(y), copied(np.array(z))
        assert np.array_equal(y, z)
    y, z = looped(y[1:]), copied(np.array(z)[1:])  # a shorter part of the chunk buffer
    assert y.shape == (3, N, out_width) and np.array_equal(y, z)
    y, z = looped(y[-1]), copied(np.array(z)[-1])  # a chunk's row as a step
    assert np.array_equal(y, z)
    out = np.empty((1, N, out_width))
    assert looped(y[None], out=out) is out  # the step's view, its output into out
    z = copied(np.array(z)[None])
    assert np.array_equal(out, z)
    assert_state_equal(looped.state, copied.state)


def test_batch_first_chunk_fed_back(rng):
    module = build("lstm", H, H, 2, rng=rng, batch_first=True)
    looped, copied = module.stream(2), module.stream(2)
    x = rng.standard_normal((2, 3, H)).astype(np.float32)
    y, z = looped(x), copied(x)
    for _ in range(3):
        y, z = looped(y), copied(np.array(z))
        assert y.shape == (2, 3, H) and np.array_equal(y, z)
    assert_state_equal(looped.state, copied.state)


# 4. reset, per row ------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("how", ["indices", "mask", "negative", "array"])
def test_reset_rows(cell, how, rng):
    """reset(rows=...) zeros only those rows; they then run as from a zero state, the others
    as if nothing happened."""
    module = build(cell, num_layers=2, rng=rng)
    N, T1, T2 = 5, 3, 4
    x = inputs(rng, module, T1 + T2, N)
    rows, keep = [1, 3], [0, 2, 4]
    given = {"indices": [1, 3], "mask": np.array([False, True, False, True, False]),
             "negative": [-4, -2], "array": np.array([3, 1])}[how]
    stream = module.stream(N)
    feed(stream, x[:T1], [None, 2])
    before = as_tuple(stream.state)
    stream.reset(rows=given)
    for b, a in zip(before, as_tuple(stream.state)):
        assert np.all(a[:, rows] == 0)
        assert np.array_equal(a[:, keep], b[:, keep])
    got = feed(stream, x[T1:], [2, None, 1])
    y_all, final_all = whole(module, x)
    y_rows, final_rows = whole(module, x[T1:, rows])
    assert np.array_equal(got[:, keep], y_all[T1:, keep])
    assert np.array_equal(got[:, rows], y_rows)
    for s, a, r in zip(as_tuple(stream.state), final_all, final_rows):
        assert np.array_equal(s[:, keep], a[:, keep])
        assert np.array_equal(s[:, rows], r)


@pytest.mark.parametrize("cell", CELLS)
def test_reset_rows_with_a_state(cell, rng):
    module = build(cell, num_layers=2, rng=rng)
    N, T1, T2 = 4, 2, 3
    x = inputs(rng, module, T1 + T2, N)
    rows, keep = [2, 0], [1, 3]
    stream = module.stream(N)
    feed(stream, x[:T1], [T1])
    states = [random_state(rng, module, 2)] + (
        [random_state(rng, module, 2, "h"), random_state(rng, module, 2, "c")]
        if cell.startswith("lstm") else [])
    for state in states:
        stream.reset(state, rows=rows)
        expect = as_tuple(state)
        for s, e in zip(as_tuple(stream.state), expect):
            assert np.array_equal(s[:, rows], np.zeros_like(s[:, rows]) if e is None else e)
    got = feed(stream, x[T1:], [None, 2])
    y_rows, _ = whole(module, x[T1:, rows], states[-1])
    y_all, _ = whole(module, x)
    assert np.array_equal(got[:, rows], y_rows)
    assert np.array_equal(got[:, keep], y_all[T1:, keep])


def test_reset_no_rows_is_a_no_op(rng):
    """An empty list of rows (say, none of the sequences ended at this step) resets
    nothing, as an empty index array does."""
    module = build("gru", rng=rng)
    stream = module.stream(3)
    stream(rng.standard_normal((3, I)).astype(np.float32))
    before = stream.state
    stream.reset(rows=np.array([], dtype=np.int64))
    assert_state_equal(stream.state, before)
    stream.reset(rows=np.zeros(3, dtype=bool))
    assert_state_equal(stream.state, before)
    stream.reset(rows=[])
    assert_state_equal(stream.state, before)


def test_reset_refusals(rng):
    lstm = build("lstm-proj", num_layers=2, rng=rng).stream(4)
    lstm(rng.standard_normal((4, I)).astype(np.float32))
    before = lstm.state
    with pytest.raises(IndexError, match="rows must index the stream's batch of 4"):
        lstm.reset(rows=[1, 4])
    with pytest.raises(IndexError, match="batch of 4"):
        lstm.reset(rows=[-5])
    with pytest.raises(IndexError, match="batch of 4"):
        lstm.reset(rows=[True, False, True])  # a mask of the wrong length
    with pytest.raises(IndexError, match="batch of 4"):
        lstm.reset(rows=[0.0, 1.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        lstm.reset(rows=[[0, 1]])
    h, c = (np.zeros((2, 2, P), np.float32), np.zeros((2, 2, H), np.float32))
    with pytest.raises(ValueError, match=match_all("Expected h0 of shape", "(2, 4, 3)",
                                                   "(2, 2, 3)")):
        lstm.reset((h, None))  # rows for two, the whole batch is four
    with pytest.raises(ValueError, match=match_all("Expected c0 of shape", "(2, 2, 7)",
                                                   "(2, 2, 3)")):
        lstm.reset((h, np.zeros((2, 2, P), np.float32)), rows=[0, 1])
    with pytest.raises(ValueError, match=match_all("Expected h0 of shape", "(2, 3, 3)")):
        lstm.reset((h, c), rows=[0, 1, 2])
    with pytest.raises(TypeError, match=r"h0 is None or a pair \(h0, c0\)"):
        lstm.reset(h, rows=[0, 1])
    with pytest.raises(TypeError, match="a pair"):
        lstm.reset((h, c, c), rows=[0, 1])
    with pytest.raises(TypeError, match="astype"):
        lstm.reset((h.astype(np.float64), None), rows=[0, 1])
    with pytest.raises(TypeError, match="float32 or float64"):
        lstm.reset((h.astype(np.int32), None), rows=[0, 1])
    assert_state_equal(lstm.state, before, "after the refused resets")  # nothing changed
    gru = build("gru", num_layers=2, rng=rng).stream(3)
    with pytest.raises(ValueError, match=match_all("Expected h0 of shape", "(2, 3, 7)",
                                                   "(1, 3, 7)")):
        gru.reset(np.zeros((1, 3, H), np.float32))
    with pytest.raises(ValueError, match=match_shape((2, 3, 7))):
        build("gru", num_layers=2, rng=rng).stream(3, h0=np.zeros((2, 3, 3), np.float32))


# 5. stale weights ---------------------------------------------------------------------------
def _set_grads(module, rng):
    for p in module.parameters():
        p.grad[...] = rng.standard_normal(p.grad.shape)


def _change(change, module, stream, rng):
    """Change the module's weights as ``change`` says."""
    last = f"weight_hh_l{module.num_layers - 1}"  # a later layer's: every layer repacked
    if change == "SGD":
        _set_grads(module, rng)
        optim.SGD(module.parameters(), lr=0.1, momentum=0.9).step()
    elif change == "Adam":
        _set_grads(module, rng)
        optim.Adam(module.parameters(), lr=0.05).step()
    elif change == "load_state_dict":
        module.load_state_dict({k: v * 1.25 for k, v in module.state_dict().items()})
    elif change == "p.data =":
        p = getattr(module, last)
        p.data = p.data * 1.5
    elif change == "mark_changed":
        p = getattr(module, last)
        p.data[...] *= 1.5
        p.mark_changed()
    elif change == "refresh":
        getattr(module, last).data[...] *= 1.5
        stream.refresh()
    else:
        raise AssertionError(change)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("change", ["SGD", "Adam", "load_state_dict", "p.data =",
                                    "mark_changed", "refresh"])
def test_stream_uses_changed_weights(cell, change, rng):
    module = build(cell, num_layers=2, rng=rng)
    x = inputs(rng, module, 3, 2)
    stream = module.stream(2)
    stream(x[0])
    state = stream.state
    old = fresh_output(module, state, x[1:])
    _change(change, module, stream, rng)
    new = fresh_output(module, state, x[1:])
    assert not np.array_equal(new, old)  # the change matters
    assert np.array_equal(stream(x[1:]), new)
    assert_state_equal(stream.state, whole(module, x[1:], state)[1])


@pytest.mark.parametrize("cell", CELLS)
def test_hand_write_without_mark_changed_is_not_seen(cell, rng):
    """Documented: writing into p.data by hand is invisible until p.mark_changed() or
    stream.refresh(): the stream keeps the weights it packed."""
    module = build(cell, num_layers=2, rng=rng)
    x = inputs(rng, module, 4, 2)
    stream = module.stream(2)
    stream(x[0])
    state = stream.state
    old = fresh_output(module, state, x[1])
    module.weight_ih_l0.data[...] *= -1
    new = fresh_output(module, state, x[1])  # a new stream packs the written weights
    assert not np.array_equal(new, old)
    assert np.array_equal(stream(x[1]), old)
    stream.refresh()
    state = stream.state
    assert np.array_equal(stream(x[2]), fresh_output(module, state, x[2]))


def test_replacing_a_parameter_is_seen(rng):
    """Assigning a new Parameter to the module's attribute (as in torch) is a change of the
    module's weights: the stream's next step uses it."""
    module = build("rnn-tanh", num_layers=2, rng=rng)
    x = inputs(rng, module, 2, 2)
    stream = module.stream(2)
    stream(x[0])
    state = stream.state
    old = fresh_output(module, state, x[1])
    module.weight_hh_l1 = fastrnn.Parameter(module.weight_hh_l1.data * 2)
    new = fresh_output(module, state, x[1])
    assert not np.array_equal(new, old)
    assert np.array_equal(stream(x[1]), new)


def test_another_modules_changes_leave_the_stream_alone(rng):
    module, other = build("lstm", num_layers=2, rng=rng), build("lstm", num_layers=2, rng=rng)
    x = inputs(rng, module, 4, 2)
    stream, other_stream = module.stream(2), other.stream(2)
    stream(x[0])
    other_stream(x[0])
    state, other_state = stream.state, other_stream.state
    expected = fresh_output(module, state, x[1])
    _set_grads(other, rng)
    optim.SGD(other.parameters(), lr=0.5).step()
    other.weight_hh_l0.data = other.weight_hh_l0.data * 3
    assert np.array_equal(stream(x[1]), expected)
    assert np.array_equal(other_stream(x[1]), fresh_output(other, other_state, x[1]))
    # a hand write into this module's weights stays unseen though other modules change
    # (the stream compares its own module's parameters only)
    state = stream.state
    expected = fresh_output(module, state, x[2])
    module.weight_hh_l1.data[...] *= 2
    other.weight_ih_l0.mark_changed()
    assert np.array_equal(stream(x[2]), expected)


# 6. refusals ----------------------------------------------------------------------------------
def test_module_refusals(rng):
    for cls in (fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU):
        bi = cls(I, H, bidirectional=True)
        with pytest.raises(ValueError, match=match_all(f"a bidirectional {cls.__name__} "
                                                       "cannot be streamed")):
            bi.stream()
        with pytest.raises(ValueError, match="bidirectional"):
            fastrnn.Stream(bi, 2)
    for thing in (fastrnn.Linear(3, 4), "lstm", None, np.zeros((2, 3))):
        with pytest.raises(TypeError, match=match_all("a Stream runs a fastrnn RNN, LSTM or "
                                                      "GRU, got", type(thing).__name__)):
            fastrnn.Stream(thing)


@pytest.mark.parametrize("value,error,message", [
    (0, ValueError, "batch_size must be greater than zero, got 0"),
    (-2, ValueError, "batch_size must be greater than zero, got -2"),
    (2.0, TypeError, "batch_size should be of type int, got: float"),
    (True, TypeError, "batch_size should be of type int, got: bool"),
    ("2", TypeError, "batch_size should be of type int, got: str"),
    (None, TypeError, "batch_size should be of type int, got: NoneType"),
])
def test_batch_size_refusals(rng, value, error, message):
    module = build("gru", rng=rng)
    with pytest.raises(error, match=match_all(message)):
        module.stream(batch_size=value)


def test_numpy_int_batch_size(rng):
    module = build("gru", rng=rng)
    stream = module.stream(np.int64(3))
    assert stream.batch_size == 3 and isinstance(stream.batch_size, int)
    assert stream(np.zeros((3, I), np.float32)).shape == (3, H)


def test_input_refusals(rng):
    stream = build("lstm", num_layers=2, rng=rng).stream(3)
    with pytest.raises(ValueError, match=match_all("expected x of shape (N, I) for a step or "
                                                   "(T, N, I) for a chunk", "1-D")):
        stream(np.zeros(I, np.float32))
    with pytest.raises(ValueError, match=match_all("(T, N, I)", "4-D")):
        stream(np.zeros((2, 2, 3, I), np.float32))
    with pytest.raises(ValueError, match=match_all("0-D")):
        stream(np.float32(1))
    with pytest.raises(ValueError, match=match_all("batch_size=3", "input_size=5", "(2, 5)")):
        stream(np.zeros((2, I), np.float32))
    with pytest.raises(ValueError, match=match_all("batch_size=3", "(4, 2, 5)")):
        stream(np.zeros((4, 2, I), np.float32))
    with pytest.raises(ValueError, match=match_all("input_size=5", "(3, 4)")):
        stream(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=match_all("input_size=5", "(4, 3, 6)")):
        stream(np.zeros((4, 3, 6), np.float32))
    with pytest.raises(TypeError, match=match_all("float64", "float32",
                                                  "x.astype(np.float32)")):
        stream(np.zeros((3, I), np.float64))
    for dtype in (np.int64, np.int32, np.float16, np.complex64, bool):
        with pytest.raises(TypeError, match=match_all("x must be a float32 or float64 array, "
                                                      "got dtype", np.dtype(dtype).name)):
            stream(np.zeros((3, I), dtype))
    with pytest.raises(TypeError, match="float32 or float64"):
        stream(None)
    with pytest.raises(TypeError, match="astype"):  # Python floats are float64
        stream([[0.5] * I] * 3)
    assert_state_equal(stream.state, (np.zeros((2, 3, H), np.float32),) * 2)
    bf = build("gru", rng=rng, batch_first=True).stream(3)
    with pytest.raises(ValueError, match=match_all("(N, T, I)", "batch_size=3", "(4, 3, 5)")):
        bf(np.zeros((4, 3, I), np.float32))  # time-major into a batch-first stream
    f64 = build("rnn-tanh", rng=rng, dtype=np.float64).stream(2)
    with pytest.raises(TypeError, match=match_all("float32", "float64", "astype(np.float64)")):
        f64(np.zeros((2, I), np.float32))


def test_lists_into_a_float64_stream(rng):
    """Nested lists of Python floats are float64: a float64 stream takes them (as the float64
    module does); a float32 one refuses them (as above, and as the float32 module does)."""
    module = build("gru", num_layers=2, rng=rng, dtype=np.float64)
    x = inputs(rng, module, 3, 2)
    expected = fresh_output(module, None, x)
    stream = module.stream(2)
    assert np.array_equal(stream(x[0].tolist()), expected[0])
    assert np.array_equal(stream(x[1:].tolist()), expected[1:])


# 7. memory layouts -----------------------------------------------------------------------------
def _layouts(a):
    """The same values as ``a`` in other memory layouts (a view, where NumPy allows)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    reversed_ = np.ascontiguousarray(a[::-1])[::-1]
    raw = np.zeros(a.nbytes + a.itemsize, np.uint8)  # an unaligned copy
    unaligned = np.frombuffer(raw[1:1 + a.nbytes].data, dtype=a.dtype).reshape(a.shape)
    unaligned[...] = a
    transposed = np.ascontiguousarray(np.moveaxis(a, -1, 0))
    return {"x[..., ::2]": wide[..., ::2], "fortran": np.asfortranarray(a),
            "reversed": reversed_, "unaligned": unaligned,
            "transposed": np.moveaxis(transposed, 0, -1)}


@pytest.mark.parametrize("cell", ["rnn-relu", "lstm-proj", "gru"])
def test_non_contiguous_inputs(cell, rng):
    module = build(cell, num_layers=2, rng=rng, dtype=np.float64)
    x = inputs(rng, module, 6, 3)
    expected = fresh_output(module, None, x)
    for name, layout in _layouts(x[0]).items():  # one-step inputs
        stream = module.stream(3)
        assert (not layout.flags.aligned) if name == "unaligned" else (
            not layout.flags.c_contiguous)
        assert np.array_equal(stream(layout), expected[0]), name
    for name, layout in _layouts(x).items():  # chunks
        stream = module.stream(3)
        assert np.array_equal(stream(layout), expected), name
    strided = np.zeros((12, 3, I))
    strided[::2] = x  # every other time step of a longer array
    assert np.array_equal(module.stream(3)(strided[::2]), expected)
    rows = np.zeros((6, 6, I))
    rows[:, ::2] = x  # every other row
    stream = module.stream(3)
    assert np.array_equal(stream(rows[0, ::2]), expected[0])
    assert np.array_equal(stream(rows[1:, ::2]), expected[1:])


def test_batch_first_views_of_time_major_arrays(rng):
    module = build("lstm", num_layers=2, rng=rng, batch_first=True)
    x = inputs(rng, module, 5, 3)  # (N, T, I)
    expected = fresh_output(module, None, x)
    time_major = np.ascontiguousarray(x.transpose(1, 0, 2))
    stream = module.stream(3)
    assert np.array_equal(stream(time_major[0]), expected[:, 0])
    assert np.array_equal(stream(time_major[1:].transpose(1, 0, 2)), expected[:, 1:])


# 8. threads ----------------------------------------------------------------------------------
def _run_threads(*targets):
    """Run each target in a thread of its own, started together; re-raise the first error."""
    in_threads(lambda i: targets[i](), len(targets))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_two_streams_of_one_module_on_two_threads(cell, rng, restore_threads):
    fastrnn.set_num_threads(1)
    module = build(cell, 16, 64, 2, rng=rng)
    data = [inputs(rng, module, 40, 4) for _ in range(2)]
    expected = [whole(module, x) for x in data]
    results = [None, None]
    start = threading.Barrier(2)

    def run(k):
        stream = module.stream(4)
        start.wait()
        y = feed(stream, data[k], [None, 5, None, None, 8, 1] + [None] * 12 + [11])
        results[k] = y, stream.state

    _run_threads(lambda: run(0), lambda: run(1))
    for (y, state), (y_ref, final) in zip(results, expected):
        assert np.array_equal(y, y_ref)
        assert_state_equal(state, final)


def test_one_stream_on_two_threads_serializes_or_refuses(rng, restore_threads):
    """The same chunk fed from two threads at once: every call that returns ran alone (its
    output is one of the chunks of the sequence of all the calls that returned, each chunk
    once) and every refused call raised RuntimeError naming the other thread."""
    fastrnn.set_num_threads(1)
    module = build("lstm", 16, 64, 1, rng=rng)
    T, N, calls = 6, 4, 25
    x = inputs(rng, module, T, N)
    stream = module.stream(N)
    outputs, refusals = [[], []], []
    start = threading.Barrier(2)

    def run(k):
        start.wait()
        for _ in range(calls):
            out = np.empty((T, N, 64), np.float32)
            try:
                outputs[k].append(stream(x, out=out))
            except RuntimeError as e:
                refusals.append(str(e))

    _run_threads(lambda: run(0), lambda: run(1))
    assert all("another thread" in message for message in refusals)
    done = outputs[0] + outputs[1]
    assert len(done) + len(refusals) == 2 * calls and done
    y, final = whole(module, np.concatenate([x] * len(done)))
    chunks = sorted(y[i * T:(i + 1) * T].tobytes() for i in range(len(done)))
    assert sorted(o.tobytes() for o in done) == chunks
    assert_state_equal(stream.state, final)


def test_a_refused_call_has_no_effect(rng, restore_threads):
    """One thread steps the stream on its latest output (a view of the state, which the
    stream copies before stepping); another calls it at the same time, again and again, on
    the output of the step before. Whatever the timing, the calls that returned must be
    those of some serial order (each writes into its own ``out``) and the refused ones
    (RuntimeError) must have changed nothing: neither the state nor the input of the call
    they collided with."""
    fastrnn.set_num_threads(1)
    module = build("lstm", 256, 256, 1, rng=rng)
    N = 32
    x0, x1 = (rng.standard_normal((N, 256)).astype(np.float32) for _ in range(2))

    def replay(order):
        """The calls in ``order`` ('A' on the latest view, 'B' on the one before), serially."""
        s = module.stream(N)
        before, latest = s(x0), s(x1)
        outs = [np.array(s(latest if who == "A" else before)) for who in order]
        return outs, s.state

    for trial in range(10):
        stream = module.stream(N)
        before, latest = stream(x0), stream(x1)
        go, done, b_outs, refusals = [], [], [], []

        def hammer():
            while not go:
                time.sleep(0)
            while not done and len(b_outs) < 3:
                out = np.empty((N, 256), np.float32)  # (a returned view is valid
                try:  # only until the next call: the other thread's, maybe)
                    b_outs.append(stream(before, out=out))
                except RuntimeError as e:
                    refusals.append(str(e))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            time.sleep(0.0005)
            go.append(True)
            try:
                a_out = stream(latest, out=np.empty((N, 256), np.float32))
            except RuntimeError as e:
                a_out = None
                refusals.append(str(e))
        finally:
            done.append(True)
            thread.join(timeout=60)
        assert all("another thread" in message for message in refusals)
        S = len(b_outs)
        orders = ([["B"] * S] if a_out is None else
                  [["B"] * k + ["A"] + ["B"] * (S - k) for k in range(S + 1)])
        final = as_tuple(stream.state)
        matched = []
        for order in orders:
            outs, state = replay(order)
            got = list(b_outs)
            if a_out is not None:
                got.insert(order.index("A"), a_out)
            if all(np.array_equal(g, o) for g, o in zip(got, outs)) and all(
                    np.array_equal(f, s) for f, s in zip(final, as_tuple(state))):
                matched.append(order)
        assert matched, (f"trial {trial}: {S} call(s) of thread B returned, "
                         f"{'none' if a_out is None else 'one'} of thread A, "
                         f"{len(refusals)} refused: no serial order of them gives these "
                         "results")


def test_state_and_refresh_from_another_thread(rng, restore_threads):
    """While one thread runs chunks, another reads ``state`` and calls ``refresh()`` (the
    weights unchanged): each returns (``state`` then the state between two chunks, not one
    from the middle of a chunk) or raises RuntimeError naming the other thread, and the
    chunks' results are unchanged. (A few rounds: how the calls interleave is up to the
    scheduler.)"""
    fastrnn.set_num_threads(1)
    W, T, N, chunks = 192, 8, 8, 16
    module = build("gru", 16, W, 1, rng=rng)
    x = inputs(rng, module, T * chunks, N)
    y, final = whole(module, x)
    boundaries = {np.zeros((N, W), np.float32).tobytes()} | {
        y[k * T - 1].tobytes() for k in range(1, chunks + 1)}
    for _ in range(12):
        stream = module.stream(N)
        got = np.empty_like(y)
        start, done, seen, refusals = threading.Barrier(2), [], [], []

        def steps():
            start.wait()
            try:
                k = 0
                while k < chunks:
                    try:
                        stream(x[k * T:(k + 1) * T], out=got[k * T:(k + 1) * T])
                        k += 1
                    except RuntimeError as e:  # (refused: try again)
                        refusals.append(str(e))
            finally:
                done.append(True)

        def meddle():
            start.wait()
            while True:
                finished = bool(done)  # (one more round after the steps: a state at least)
                for action in (lambda: seen.append(stream.state), stream.refresh):
                    try:
                        action()
                    except RuntimeError as e:
                        refusals.append(str(e))
                if finished:
                    break
                time.sleep(0)  # (lets a refused call be retried)

        _run_threads(steps, meddle)
        assert all("another thread" in message for message in refusals)
        assert np.array_equal(got, y)
        assert_state_equal(stream.state, final)
        assert seen and all(s.shape == (1, N, W) for s in seen)
        torn = [i for i, s in enumerate(seen) if s[0].tobytes() not in boundaries]
        assert not torn, (f"{len(torn)} of {len(seen)} states read are not the state between "
                          "two chunks (read while a chunk ran)")


# 9. zero-length chunks ---------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True], ids=["time", "batchfirst"])
@pytest.mark.parametrize("cell", ["rnn-tanh", "lstm-proj", "gru"])
@pytest.mark.parametrize("source", ["slice", "new array"])
def test_zero_length_chunk(cell, batch_first, source, rng):
    """T = 0: an empty (0, N, H_out) ((N, 0, H_out)) output, the state unchanged; for a
    slice x[:0] of a longer array and for a new empty array (whose strides NumPy 2 sets to
    0)."""
    module = build(cell, num_layers=2, rng=rng, batch_first=batch_first)
    W = width(module)
    x = inputs(rng, module, 3, 2)
    empty_shape = (2, 0, I) if batch_first else (0, 2, I)
    out_shape = (2, 0, W) if batch_first else (0, 2, W)
    if source == "slice":
        empty, out = (x[:, :0] if batch_first else x[:0]), np.empty((4, 2, W), np.float32)[:0]
        out = out.transpose(1, 0, 2) if batch_first else out
    else:
        empty, out = np.empty(empty_shape, np.float32), np.empty(out_shape, np.float32)
    stream = module.stream(2)
    y = stream(empty)  # before any step
    assert y.shape == out_shape and y.dtype == np.float32
    assert_state_equal(stream.state, whole(module, x[:, :0] if batch_first else x[:0])[1])
    stream(x[:, 0] if batch_first else x[0])
    before = stream.state
    y = stream(empty)
    assert y.shape == out_shape
    assert_state_equal(stream.state, before)
    assert stream(empty, out=out) is out
    assert_state_equal(stream.state, before)
    rest = stream(x[:, 1:] if batch_first else x[1:])
    y_ref, final = whole(module, x)
    assert np.array_equal(rest, y_ref[:, 1:] if batch_first else y_ref[1:])
    assert_state_equal(stream.state, final)


# 10. the state is a copy ------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "lstm-proj", "gru", "rnn-relu"])
def test_state_is_a_copy(cell, rng):
    module = build(cell, num_layers=2, rng=rng)
    x = inputs(rng, module, 3, 2)
    stream = module.stream(2)
    stream(x[0])
    state = stream.state
    if is_lstm(module):
        assert isinstance(state, tuple) and len(state) == 2
        h, c = state
        assert h.shape == (2, 2, width(module)) and c.shape == (2, 2, H)
    else:
        assert isinstance(state, np.ndarray) and state.shape == (2, 2, H)
    kept = [a.copy() for a in as_tuple(state)]
    for a in as_tuple(state):
        assert a.flags.writeable and a.flags.owndata
        a[...] = 123.0
    assert_state_equal(stream.state, tuple(kept) if is_lstm(module) else kept[0])
    y, final = whole(module, x)
    assert np.array_equal(stream(x[1:]), y[1:])
    assert_state_equal(stream.state, final)


def test_repr_and_reset_all(rng):
    module = build("gru", rng=rng)
    stream = module.stream(2)
    assert repr(stream) == f"Stream({module!r}, batch_size=2)"
    x = inputs(rng, module, 4, 2)
    stream(x[:2])
    stream.reset()
    assert_state_equal(stream.state, np.zeros((1, 2, H), np.float32))
    assert np.array_equal(stream(x[2:]), whole(module, x[2:])[0])


# 11. the module's eval forward on a stream of its own -------------------------------------
# (steps, batch, on the module's stream) on both sides of the rule: a call of up to 8 steps,
# of up to 24 steps of up to 32 sequences, or of up to 48 steps of 2 to 16 sequences runs on
# the module's stream; any other packs the weights itself
SHORT_CALLS = [(8, 40, True), (9, 33, False), (24, 32, True), (24, 1, True), (25, 1, False),
               (48, 2, True), (49, 2, False), (48, 16, True), (25, 17, False)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("steps, batch, on_stream", SHORT_CALLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_module_eval_forward_sees_a_hand_write(cell, steps, batch, on_stream, bidirectional,
                                               rng):
    """The module's eval forward is bitwise the functional one on either path, and sees a
    write into ``p.data`` by hand at once (a user's stream does not): its streams compare
    the weights they packed with the parameters on every call. A bidirectional module runs
    a one-layer stream per layer and direction (the reverse one's weights written here)."""
    module = build(cell, num_layers=2, rng=rng, bidirectional=bidirectional)
    x = inputs(rng, module, steps, batch)
    state = random_state(rng, module, batch)
    before = whole(module, x, state)
    assert (module._inference._kept is not None) == on_stream  # the case covers the path it names
    getattr(module, "weight_hh_l1_reverse" if bidirectional else "weight_hh_l1").data[...] *= -1
    after = whole(module, x, state)
    assert not np.array_equal(after[0], before[0])


@pytest.mark.parametrize("cell", ["rnn-tanh", "lstm-proj", "gru"])
@pytest.mark.parametrize("layout", ["batch_first", "unbatched"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_module_eval_forward_on_its_stream_in_every_layout(cell, layout, bidirectional, rng):
    module = build(cell, num_layers=2, rng=rng, batch_first=layout == "batch_first",
                   bidirectional=bidirectional)
    batch = 2 if layout == "batch_first" else 1
    x = inputs(rng, module, 16, batch)
    state = random_state(rng, module, batch)
    if layout == "unbatched":
        x = x[:, 0]
        state = tuple(s[:, 0] for s in state) if is_lstm(module) else state[:, 0]
    whole(module, x, state)
    assert module._inference._kept is not None


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_module_eval_forward_packs_once_for_any_batch(cell, bidirectional, batch_first, rng,
                                                      monkeypatch):
    """Short eval forwards of batches that change size from call to call (a server's dynamic
    batches) run on the kept streams with the weights they packed at the first call, resized
    to each batch: bitwise the functional forward every time, the state never carried from
    the call before."""
    from fastrnn import stream as stream_module
    packs = []
    real_pack = stream_module._pack_streams
    monkeypatch.setattr(stream_module, "_pack_streams",
                        lambda streams, params: (packs.append(len(streams)),
                                                 real_pack(streams, params)))
    module = build(cell, num_layers=2, rng=rng, bidirectional=bidirectional,
                   batch_first=batch_first)
    for steps, batch in [(3, 4), (5, 1), (2, 9), (3, 4), (24, 16), (1, 2)]:
        x = inputs(rng, module, steps, batch)
        state = random_state(rng, module, batch) if batch % 2 else None
        whole(module, x, state)
        assert module._inference._kept[1][0].batch_size == batch
    assert packs == [2 * module.num_layers if bidirectional else 1]
    module.weight_hh_l0.data[...] *= -1  # a change is still repacked, at the size of the batch
    x = inputs(rng, module, 2, 3)
    whole(module, x)
    assert len(packs) == 2


def test_module_eval_forward_from_two_threads_with_their_own_batch_sizes(rng):
    """Two threads call one module's eval forward, each with batches of its own sizes: the
    kept streams serve one call at a time (resized to its batch), the other call packs its
    own weights, and every result is bitwise the functional forward's."""
    module = build("gru", 32, 64, num_layers=2, rng=rng)  # (steps long enough to overlap)
    params = {name: p.data for name, p in module.named_parameters()}
    cases = {batch: inputs(rng, module, 4, batch) for batch in (1, 2, 3, 5)}
    expected = {batch: functional.gru_forward(x, params, num_layers=2, keep_cache=False)[0]
                for batch, x in cases.items()}
    wrong = []

    def run(batches):
        for _ in range(200):
            for batch in batches:
                if not np.array_equal(module(cases[batch])[0], expected[batch]):
                    wrong.append(batch)

    threads = [threading.Thread(target=run, args=(b,)) for b in ((1, 3), (2, 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not wrong


def test_stream_core_resize_refusals(rng):
    module = build("lstm", rng=rng)
    stream = module.stream(2)
    with pytest.raises(ValueError, match="positive"):
        stream._resize(0)
    stream._acquire()
    try:
        with pytest.raises(RuntimeError, match="in use"):
            stream._resize(3)
    finally:
        stream._release()
    stream._resize(3)
    x = inputs(rng, module, 4, 3)
    assert np.array_equal(stream(x), whole(module, x)[0])  # the state zero, three rows


def test_stream_core_refuses_a_recurrent_bias_for_an_lstm(rng):
    """An LSTM's biases are all P's (b_ih + b_hh; its h W_hhᵀ goes onto P in the product):
    a separate b_hh is refused, the weights left as they were."""
    module = build("lstm", rng=rng)
    stream = module.stream(1)
    p = {k: v.data for k, v in module._params.items()}
    with pytest.raises(ValueError, match="only a GRU"):
        stream._load(0, p["weight_ih_l0"], p["bias_ih_l0"], p["weight_hh_l0"],
                     np.zeros(4 * module.hidden_size, np.float32), None)
    x = inputs(rng, module, 3, 1)
    assert np.array_equal(stream(x), whole(module, x)[0])


@pytest.mark.parametrize("bad", [[7, 1, 1], [-1, 1, 1], [1.5, 1, 1], [1, 1]],
                         ids=["too-long", "negative", "fraction", "too-few"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_module_eval_forward_refuses_bad_lengths_as_the_functional_one(bad, bidirectional,
                                                                       rng):
    """Eval forwards with lengths (none of them on a kept stream) report bad lengths with
    the functional forward's own message."""
    module = build("lstm", rng=rng, bidirectional=bidirectional)
    x = inputs(rng, module, 6, 3)
    params = {name: p.data for name, p in module.named_parameters()}
    with pytest.raises((ValueError, TypeError)) as expected:
        functional.lstm_forward(x, params, bidirectional=bidirectional, lengths=np.array(bad))
    with pytest.raises(expected.type) as got:
        module(x, lengths=np.array(bad))
    assert str(got.value) == str(expected.value)


# sizes in float32 elements: under and over the bytes from which two threads compare, odd
# ones so that the threads' halves split a float
COMPARED_SIZES = [[5], [40000, 3], [70001, 65537, 7], [300000]]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("sizes", COMPARED_SIZES, ids=lambda s: f"{sum(s)}")
def test_same_contents_sees_any_changed_byte(sizes, threads, restore_threads, rng):
    """The kept streams' comparison of the parameters with their copies, on one thread or
    split between several: one byte changed anywhere (each array's first, middle and last
    byte) is a difference."""
    from fastrnn import _rnn
    fastrnn.set_num_threads(threads)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    copies = [a.copy() for a in arrays]
    assert _rnn.same_contents(arrays, copies)
    for a in arrays:
        raw = a.view(np.uint8)
        for at in (0, raw.size // 2, raw.size // 2 - 1, raw.size - 1):
            raw[at] ^= 1
            assert not _rnn.same_contents(arrays, copies), (a.size, at)
            raw[at] ^= 1
    assert _rnn.same_contents(arrays, copies)


def test_same_contents_refuses_other_layouts(rng):
    from fastrnn import _rnn
    a = rng.standard_normal((4, 6)).astype(np.float32)
    assert _rnn.same_contents([a], [a.copy()])
    assert not _rnn.same_contents([a, a], [a.copy()])  # another count
    assert not _rnn.same_contents([a.T], [a.T.copy()])  # not C-contiguous
    assert not _rnn.same_contents([a], [a.reshape(6, 4).copy()])  # another shape
    assert not _rnn.same_contents([a], [a.astype(np.float64)])  # another dtype
    # the same bytes, read in another byte order
    assert not _rnn.same_contents([a.view(a.dtype.newbyteorder())], [a.copy()])
    assert not _rnn.same_contents([a], [a.reshape(4, 6, 1).copy()])  # another dimension count
    assert not _rnn.same_contents([a[:, :0]], [a.copy()[:0, :]])  # empty, another shape
    assert not _rnn.same_contents([a.tolist()], [a.copy()])  # not an array
    assert _rnn.same_contents([], [])
    assert _rnn.same_contents((a,), (a.copy(),))  # any sequences
