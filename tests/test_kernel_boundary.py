"""The compiled entry points refuse, with a Python exception, every argument their kernels
would index outside of: each entry point of ``fastrnn._rnn`` and ``fastrnn._ops`` called
directly with one bad argument at a time, on top of a set of good ones that is checked to
run. The public API never passes such arguments; these calls stand for any Python caller,
however wrong (issue 14)."""

import functools
import itertools

import numpy as np
import pytest

from fastrnn import _ops, _rnn

L, N, I, H = 5, 6, 7, 8
F = np.float32


def _rng():
    return np.random.default_rng(0)


def _strided(shape, step=2, dtype=F):
    """A view of ``shape`` whose last dimension steps by ``step`` elements."""
    full = np.zeros(shape[:-1] + (shape[-1] * step,), dtype)
    return full[..., ::step]


def _negative(shape, dtype=F):
    """A view of ``shape`` with a negative stride along its first dimension."""
    return np.zeros(shape, dtype)[::-1]


def _unaligned(shape):
    """A float32 view whose row stride is not a whole number of float32 elements."""
    rows = np.zeros(shape[0], dtype=[("v", F, shape[1:]), ("pad", np.uint8)])
    view = rows["v"]
    assert view.strides[0] % 4 != 0
    return view


# lengths every recurrence and the weight gradients index rows by
BAD_LENGTHS = {
    "lengths past L": dict(lengths=np.array([L + 1] + [L] * (N - 1), np.int64)),
    "lengths huge": dict(lengths=np.full(N, 10 ** 6, np.int64)),
    "lengths negative": dict(lengths=np.array([-1] + [L] * (N - 1), np.int64)),
    "lengths too few": dict(lengths=np.full(N - 1, L, np.int64)),
    "lengths too many": dict(lengths=np.full(N + 1, L, np.int64)),
}


# ---------------------------------------------------------------------------------------
# recurrence_forward(out, h0, w_hh, lengths, reverse, relu, h_n, threads, x, w_ih, bias)
# ---------------------------------------------------------------------------------------

def forward_args(**change):
    rng = _rng()
    args = dict(out=rng.standard_normal((L, N, H)).astype(F), h0=np.zeros((N, H), F),
                w_hh=rng.standard_normal((H, H)).astype(F), lengths=np.full(N, L, np.int64),
                reverse=False, relu=False, h_n=np.empty((N, H), F), num_threads=2)
    args.update(change)
    return args


def per_step_args(**change):
    rng = _rng()
    return forward_args(**{"x": rng.standard_normal((L, N, I)).astype(F),
                           "w_ih": rng.standard_normal((H, I)).astype(F),
                           "bias": np.zeros(H, F), **change})


def _call_forward(args):
    names = ("out", "h0", "w_hh", "lengths", "reverse", "relu", "h_n", "num_threads")
    extra = [args[k] for k in ("x", "w_ih", "bias") if k in args]
    _rnn.recurrence_forward(*(args[k] for k in names), *extra)


@pytest.mark.parametrize("build", [forward_args, per_step_args], ids=["P", "per-step"])
def test_recurrence_forward_good_arguments_run(build):
    _call_forward(build())


BAD_FORWARD = {
    "h0 too few rows": dict(h0=np.zeros((N - 1, H), F)),
    "h0 too narrow": dict(h0=np.zeros((N, H - 1), F)),
    "w_hh (1, 1)": dict(w_hh=np.zeros((1, 1), F)),
    "w_hh too short": dict(w_hh=np.zeros((H - 1, H), F)),
    "h_n too few rows": dict(h_n=np.empty((N - 1, H), F)),
    "h_n too narrow": dict(h_n=np.empty((N, 1), F)),
    **BAD_LENGTHS,
    "out strided rows": dict(out=_strided((L, N, H))),
    "out negative stride": dict(out=_negative((L, N, H))),
    "threads 0": dict(num_threads=0),
}
BAD_PER_STEP = {
    "x wrong steps": dict(x=np.zeros((L + 1, N, I), F)),
    "x wrong batch": dict(x=np.zeros((L, N + 1, I), F)),
    "w_ih wrong inputs": dict(w_ih=np.zeros((H, I + 1), F)),
    "w_ih wrong rows": dict(w_ih=np.zeros((H + 1, I), F)),
    "bias too short": dict(bias=np.zeros(H - 1, F)),
}


def test_recurrence_forward_refuses_wrong_dtype():
    with pytest.raises(ValueError, match="dtype mismatch"):
        _call_forward(forward_args(h0=np.zeros((N, H), np.float64)))


# ---------------------------------------------------------------------------------------
# recurrence_backward(out, grad_out, grad_h_n, w_hh, lengths, reverse, relu, grad_a,
#                     grad_h0, threads, w_out)
# ---------------------------------------------------------------------------------------

def backward_args(**change):
    rng = _rng()
    args = dict(out=np.tanh(rng.standard_normal((L, N, H))).astype(F),
                grad_out=rng.standard_normal((L, N, H)).astype(F),
                grad_h_n=rng.standard_normal((N, H)).astype(F),
                w_hh=rng.standard_normal((H, H)).astype(F), lengths=np.full(N, L, np.int64),
                reverse=False, relu=False, grad_a=np.empty((L, N, H), F),
                grad_h0=np.empty((N, H), F), num_threads=2)
    args.update(change)
    return args


def above_args(**change):
    """The layer-above form: grad_out is that layer's dA (L, N, K), w_out its W_ih (K, H)."""
    rng = _rng()
    return backward_args(**{"grad_out": rng.standard_normal((L, N, 2 * H)).astype(F),
                            "w_out": rng.standard_normal((2 * H, H)).astype(F), **change})


def _call_backward(args):
    names = ("out", "grad_out", "grad_h_n", "w_hh", "lengths", "reverse", "relu", "grad_a",
             "grad_h0", "num_threads")
    _rnn.recurrence_backward(*(args[k] for k in names), *([args["w_out"]] if "w_out" in args
                                                            else []))


@pytest.mark.parametrize("build", [backward_args, above_args], ids=["dY", "layer-above"])
def test_recurrence_backward_good_arguments_run(build):
    _call_backward(build())


BAD_BACKWARD = {
    "grad_h_n too few rows": dict(grad_h_n=np.zeros((N - 1, H), F)),
    "grad_h_n too narrow": dict(grad_h_n=np.zeros((N, 1), F)),
    "w_hh (1, 1)": dict(w_hh=np.zeros((1, 1), F)),
    "grad_a too few steps": dict(grad_a=np.empty((L - 1, N, H), F)),
    "grad_a too few rows": dict(grad_a=np.empty((L, N - 1, H), F)),
    "grad_a too narrow": dict(grad_a=np.empty((L, N, H - 1), F)),
    "grad_h0 too few rows": dict(grad_h0=np.empty((N - 1, H), F)),
    "grad_h0 too narrow": dict(grad_h0=np.empty((N, 1), F)),
    **BAD_LENGTHS,
    "out strided rows": dict(out=_strided((L, N, H))),
    "grad_a strided rows": dict(grad_a=_strided((L, N, H))),
    "grad_a negative stride": dict(grad_a=_negative((L, N, H))),
    "threads 0": dict(num_threads=0),
}
BAD_ABOVE = {
    "w_out wrong rows": dict(w_out=np.zeros((2 * H + 1, H), F)),
    "w_out wrong columns": dict(w_out=np.zeros((2 * H, H + 1), F)),
    "w_out strided rows": dict(w_out=_strided((2 * H, H))),
    "grad_out wrong steps": dict(grad_out=np.zeros((L + 1, N, 2 * H), F)),
}


def test_recurrence_backward_refuses_grad_out_of_wrong_width():
    with pytest.raises(ValueError, match="grad_out"):
        _call_backward(backward_args(grad_out=np.zeros((L, N, H + 1), F)))


# ---------------------------------------------------------------------------------------
# weight_grads(da, x, out, h0, lengths, dw_ih, dw_hh, db, threads)
# ---------------------------------------------------------------------------------------

def weight_grad_args(D=2, **change):
    rng = _rng()
    args = dict(da=rng.standard_normal((L * N, D * H)).astype(F),
                x=rng.standard_normal((L * N, I)).astype(F),
                out=rng.standard_normal((L, N, D * H)).astype(F),
                h0=rng.standard_normal((D, N, H)).astype(F), lengths=np.full(N, L, np.int64),
                dw_ih=np.empty((D * H, I), F), dw_hh=np.empty((D * H, H), F),
                db=np.empty(D * H, F), num_threads=2)
    args.update(change)
    return args


def _call_weight_grads(args):
    _rnn.weight_grads(*(args[k] for k in ("da", "x", "out", "h0", "lengths", "dw_ih", "dw_hh",
                                          "db", "num_threads")))


def test_weight_grads_good_arguments_run():
    _call_weight_grads(weight_grad_args())


BAD_WEIGHT_GRADS = {
    **BAD_LENGTHS,
    "h0 three directions": dict(h0=np.zeros((3, N, H), F)),
    "h0 wrong batch": dict(h0=np.zeros((2, N + 1, H), F)),
    "x too few rows": dict(x=np.zeros((L * N - 1, I), F)),
    "x strided rows": dict(x=_strided((L * N, I))),
    "x unaligned rows": dict(x=_unaligned((L * N, I))),
    "out wrong width": dict(out=np.zeros((L, N, H), F)),
    "out strided rows": dict(out=_strided((L, N, 2 * H))),
    "dw_ih wrong shape": dict(dw_ih=np.empty((2 * H, I + 1), F)),
    "dw_hh wrong shape": dict(dw_hh=np.empty((2 * H - 1, H), F)),
    "db wrong shape": dict(db=np.empty(2 * H + 1, F)),
    "threads 0": dict(num_threads=0),
}


# ---------------------------------------------------------------------------------------
# gemm(a, b, c, bias, accumulate, threads, a_trans, a_sums)
# ---------------------------------------------------------------------------------------

M, K, NC = 9, 11, 13


def gemm_args(**change):
    rng = _rng()
    args = dict(a=rng.standard_normal((M, K)).astype(F), b=rng.standard_normal((K, NC)).astype(F),
                c=np.empty((M, NC), F), bias=None, accumulate=False, num_threads=2,
                a_trans=False, a_sums=None)
    args.update(change)
    return args


def _call_gemm(args):
    _rnn.gemm(*(args[k] for k in ("a", "b", "c", "bias", "accumulate", "num_threads",
                                  "a_trans", "a_sums")))


@pytest.mark.parametrize("change", [{}, dict(b=np.zeros((NC, K), F).T),
                                    dict(a=np.zeros((K, M), F), a_trans=True,
                                         a_sums=np.empty(M, F))],
                         ids=["plain", "b transposed", "a transposed"])
def test_gemm_good_arguments_run(change):
    _call_gemm(gemm_args(**change))


BAD_GEMM = {
    "b wrong rows": dict(b=np.zeros((K + 1, NC), F)),
    "c wrong shape": dict(c=np.empty((M, NC + 1), F)),
    "bias wrong length": dict(bias=np.zeros(NC + 1, F)),
    "a_sums without a_trans": dict(a_sums=np.empty(M, F)),
    "a strided both ways": dict(a=np.zeros((2 * M, 2 * K), F)[::2, ::2]),
    "b strided both ways": dict(b=np.zeros((2 * K, 2 * NC), F)[::2, ::2]),
    "b transposed negative": dict(b=np.zeros((NC, K), F)[::-1].T),
    "c negative stride": dict(c=_negative((M, NC))),
    "c unaligned rows": dict(c=_unaligned((M, NC))),
    "threads 0": dict(num_threads=0),
}


def _refusals(call, builds, bad):
    return [pytest.param(call, build, change, id=f"{build.__name__}-{name}")
            for build in builds for name, change in bad.items()]


REFUSALS = (_refusals(_call_forward, [forward_args, per_step_args], BAD_FORWARD)
            + _refusals(_call_forward, [per_step_args], BAD_PER_STEP)
            + _refusals(_call_backward, [backward_args, above_args], BAD_BACKWARD)
            + _refusals(_call_backward, [above_args], BAD_ABOVE)
            + _refusals(_call_weight_grads, [weight_grad_args], BAD_WEIGHT_GRADS)
            + _refusals(_call_gemm, [gemm_args], BAD_GEMM))


@pytest.mark.parametrize("call,build,change", REFUSALS)
def test_entry_point_refuses(call, build, change):
    """One bad argument on top of good ones: a ValueError before any kernel runs."""
    with pytest.raises(ValueError):
        call(build(**change))


# ---------------------------------------------------------------------------------------
# _ops: embedding, cross-entropy, Adam, the choice of generated tokens
# ---------------------------------------------------------------------------------------

def test_embedding_backward_refuses_indices_out_of_range():
    grad, weight_grad = np.ones((3, 4), F), np.zeros((5, 4), F)
    for bad in (5, -1, 2 ** 40):
        with pytest.raises(IndexError):
            _ops.embedding_backward(np.array([0, bad, 1], np.int64), grad, weight_grad)
    with pytest.raises(ValueError):
        _ops.embedding_backward(np.zeros(2, np.int64), grad, weight_grad)
    assert not weight_grad.any()


def test_cross_entropy_refuses_targets_and_shapes():
    logits, losses, probs = np.zeros((3, 4), F), np.empty(3, F), np.empty((3, 4), F)
    for bad in (4, -2, 2 ** 40):
        with pytest.raises(IndexError):
            _ops.cross_entropy_forward(logits, np.array([0, bad, 1], np.int64), -100, losses,
                                       probs)
        with pytest.raises(IndexError):
            _ops.cross_entropy_backward(probs, np.array([0, bad, 1], np.int64), -100,
                                        np.ones(3, F), np.empty((3, 4), F))
    with pytest.raises(ValueError):
        _ops.cross_entropy_forward(logits, np.zeros(2, np.int64), -100, losses, probs)
    with pytest.raises(ValueError):
        _ops.cross_entropy_backward(probs, np.zeros(3, np.int64), -100, np.ones(2, F),
                                    np.empty((3, 4), F))


def test_adam_step_refuses_lengths_that_differ():
    with pytest.raises(ValueError):
        _ops.adam_step(np.zeros(4, F), np.zeros(3, F), np.zeros(4, F), np.zeros(4, F),
                       0.1, 0.9, 0.999, 1.0, 1e-8, 0.0)


def test_choose_tokens_good_arguments_run():
    states = np.empty((3, 4), np.uint64)
    _ops.seed_generators(np.arange(3, dtype=np.uint64), states)
    out = np.full(3, -1, np.int64)
    _ops.choose_tokens(_rng().standard_normal((3, 10)).astype(F), 1.0, 3, states, out, 2)
    assert ((0 <= out) & (out < 10)).all()


BAD_CHOOSE = {
    "states too few rows": dict(states=np.zeros((2, 4), np.uint64)),
    "states too narrow": dict(states=np.zeros((3, 2), np.uint64)),
    "out too short": dict(out=np.empty(2, np.int64)),
    "no classes": dict(logits=np.zeros((3, 0), F)),
    "threads 0": dict(num_threads=0),
}


@pytest.mark.parametrize("change", BAD_CHOOSE.values(), ids=BAD_CHOOSE.keys())
def test_choose_tokens_refuses(change):
    args = dict(logits=np.zeros((3, 10), F), temperature=1.0, top_k=0,
                states=np.zeros((3, 4), np.uint64), out=np.empty(3, np.int64), num_threads=1)
    args.update(change)
    with pytest.raises(ValueError):
        _ops.choose_tokens(**args)


def test_seed_generators_refuses_wrong_states():
    with pytest.raises(ValueError):
        _ops.seed_generators(np.arange(3, dtype=np.uint64), np.zeros((3, 3), np.uint64))


# ---------------------------------------------------------------------------------------
# cell_forward(cell, save, out, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, h_n, c_n, threads)
# cell_backward(cell, save, out, grad_out, h0, c0, grad_h_n, grad_c_n, w_hh, w_hr, lengths,
#               reverse, grad_a, grad_r, grad_h, grad_h0, grad_c0, threads)
# ---------------------------------------------------------------------------------------

P = 3  # the LSTM's projection in the "proj" builds


def cell_forward_args(kind="lstm", proj=False, **change):
    rng = _rng()
    G = 4 if kind == "lstm" else 3
    out_w = P if proj else H
    width = G * H + H + (H if proj else 0)
    args = dict(cell=_rnn.LSTM if kind == "lstm" else _rnn.GRU,
                save=rng.standard_normal((L, N, width)).astype(F),
                out=np.empty((L, N, out_w), F), h0=np.zeros((N, out_w), F),
                c0=np.zeros((N, H), F) if kind == "lstm" else None,
                w_hh=rng.standard_normal((G * H, out_w)).astype(F),
                b_hh=np.zeros(G * H, F) if kind == "gru" else None,
                w_hr=rng.standard_normal((P, H)).astype(F) if proj else None,
                lengths=np.full(N, L, np.int64), reverse=False, h_n=np.empty((N, out_w), F),
                c_n=np.empty((N, H), F) if kind == "lstm" else None, num_threads=2)
    args.update(change)
    return args


def cell_backward_args(kind="lstm", proj=False, **change):
    rng = _rng()
    f = cell_forward_args(kind, proj)
    G = 4 if kind == "lstm" else 3
    out_w = f["out"].shape[2]
    args = dict(cell=f["cell"], save=np.tanh(f["save"]),
                out=rng.standard_normal(f["out"].shape).astype(F),
                grad_out=rng.standard_normal((L, N, out_w)).astype(F), h0=f["h0"], c0=f["c0"],
                grad_h_n=np.ones((N, out_w), F),
                grad_c_n=np.ones((N, H), F) if kind == "lstm" else None, w_hh=f["w_hh"],
                w_hr=f["w_hr"], lengths=f["lengths"], reverse=True,
                grad_a=np.empty((L, N, G * H), F),
                grad_r=np.empty((L, N, G * H), F) if kind == "gru" else None,
                grad_h=np.empty((L, N, out_w), F), grad_h0=np.empty((N, out_w), F),
                grad_c0=np.empty((N, H), F) if kind == "lstm" else None, num_threads=2)
    args.update(change)
    return args


def _call_cell_forward(args):
    _rnn.cell_forward(*args.values())


def _call_cell_backward(args):
    _rnn.cell_backward(*args.values())


CELL_BUILDS = {"lstm": {}, "lstm-proj": dict(proj=True), "gru": dict(kind="gru")}


@pytest.mark.parametrize("build", CELL_BUILDS.values(), ids=CELL_BUILDS.keys())
def test_cell_entry_points_good_arguments_run(build):
    _call_cell_forward(cell_forward_args(**build))
    _call_cell_backward(cell_backward_args(**build))


def _bad_cell(**build):
    """What each cell build's entry points must refuse (changes on top of good arguments)."""
    G = 4 if build.get("kind", "lstm") == "lstm" else 3
    out_w = P if build.get("proj") else H
    width = G * H + H + (H if build.get("proj") else 0)
    common = {
        "unknown cell": dict(cell=7),
        "save too narrow": dict(save=np.zeros((L, N, width - 1), F)),
        "save too few steps": dict(save=np.zeros((L - 1, N, width), F)),
        "save strided rows": dict(save=_strided((L, N, width))),
        "out too few rows": dict(out=np.zeros((L, N - 1, out_w), F)),
        "out too wide": dict(out=np.zeros((L, N, out_w + 1), F)),
        "out negative stride": dict(out=_negative((L, N, out_w))),
        "h0 too few rows": dict(h0=np.zeros((N - 1, out_w), F)),
        "h0 too narrow": dict(h0=np.zeros((N, out_w - 1), F)),
        "w_hh rows not G·H": dict(w_hh=np.zeros((G * H + 1, out_w), F)),
        "w_hh too narrow": dict(w_hh=np.zeros((G * H, out_w - 1), F)),
        "w_hh empty": dict(w_hh=np.zeros((0, out_w), F)),
        "w_hr wrong": dict(w_hr=np.zeros((out_w, H + 1), F)),
        **BAD_LENGTHS,
        "threads 0": dict(num_threads=0),
    }
    if G == 4:
        common.update({"c0 missing": dict(c0=None),
                       "c0 too narrow": dict(c0=np.zeros((N, H - 1), F))})
    return common


BAD_CELL_FORWARD = {"h_n too narrow": dict(h_n=np.empty((N, 1), F)),
                    "c_n too few rows": dict(c_n=np.empty((N - 1, H), F)),
                    "b_hh too short": dict(b_hh=np.zeros(2, F))}
BAD_CELL_BACKWARD = {"grad_out too narrow": dict(grad_out=np.zeros((L, N, 1), F)),
                     "grad_a too narrow": dict(grad_a=np.empty((L, N, 2), F)),
                     "grad_a strided": dict(grad_a=_strided((L, N, 4 * H))),
                     "grad_h too few steps": dict(grad_h=np.empty((L - 1, N, H), F)),
                     "grad_h0 too few rows": dict(grad_h0=np.empty((N - 1, H), F)),
                     "grad_h_n too narrow": dict(grad_h_n=np.empty((N, 1), F))}
CELL_REFUSALS = [
    pytest.param(call, args, change, id=f"{call.__name__[6:]}-{bid}-{name}")
    for bid, build in CELL_BUILDS.items()
    for call, args, extra in ((_call_cell_forward, cell_forward_args, BAD_CELL_FORWARD),
                              (_call_cell_backward, cell_backward_args, BAD_CELL_BACKWARD))
    for name, change in {**_bad_cell(**build), **extra}.items()
    if not (name.startswith(("c_n", "c0")) and build.get("kind") == "gru")
    if not (name == "w_hr wrong" and not build.get("proj"))
    for args in [functools.partial(args, **build)]]


@pytest.mark.parametrize("call,build,change", CELL_REFUSALS)
def test_cell_entry_points_refuse(call, build, change):
    with pytest.raises(ValueError):
        call(build(**change))


def test_cell_entry_points_refuse_projection_on_gru_and_grad_r_on_lstm():
    with pytest.raises(ValueError, match="projection"):
        _call_cell_forward(cell_forward_args("gru", w_hr=np.zeros((P, H), F)))
    with pytest.raises(ValueError, match="no bias of its own"):  # its biases are all P's
        _call_cell_forward(cell_forward_args("lstm", b_hh=np.zeros(4 * H, F)))
    with pytest.raises(ValueError, match="grad_r"):
        _call_cell_backward(cell_backward_args("lstm", grad_r=np.empty((L, N, 4 * H), F)))
    with pytest.raises(ValueError, match="dtype mismatch"):
        _call_cell_forward(cell_forward_args(h0=np.zeros((N, H), np.float64)))


def test_gru_backward_without_grad_r_matches_and_gives_it_from_grad_a():
    """A GRU's grad_r=None keeps dR in scratch: every output is bitwise the same, and the
    caller's dR from grad_a (n gate times the saved r: gru_recurrent_side, 1 or 2 threads)
    is the kernel's grad_r."""
    kept = cell_backward_args("gru")
    scratch = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kept.items()}
    scratch["grad_r"] = None
    for name in ("grad_a", "grad_h", "grad_h0"):
        scratch[name] = np.empty_like(kept[name])
    _call_cell_backward(kept)
    _call_cell_backward(scratch)
    for name in ("grad_a", "grad_h", "grad_h0"):
        assert np.array_equal(scratch[name], kept[name]), name
    for threads in (1, 2):
        dr = scratch["grad_a"].copy()
        _rnn.gru_recurrent_side(dr, kept["save"], threads)
        assert np.array_equal(dr, kept["grad_r"])
        assert not np.array_equal(dr, kept["grad_a"])


@pytest.mark.parametrize("grad_a,save", [
    pytest.param((L, N, 3 * H + 1), (L, N, 4 * H), id="grad_a-not-3H"),
    pytest.param((L, N, 3 * H), (L, N, 3 * H - 1), id="save-too-narrow"),
    pytest.param((L, N, 3 * H), (L - 1, N, 4 * H), id="save-too-few-steps"),
    pytest.param((L, N, 3 * H), (L, N + 1, 4 * H), id="save-too-many-rows"),
])
def test_gru_recurrent_side_refuses_mismatched_arrays(grad_a, save):
    with pytest.raises(ValueError, match="grad_a must be"):
        _rnn.gru_recurrent_side(np.zeros(grad_a, F), np.zeros(save, F))


def _projection(kind, I=5):
    """x, w_ih (gate-interleaved rows: any order serves the test) and bias of a cell_forward
    with its input projection step by step."""
    rng = _rng()
    G = 4 if kind == "lstm" else 3
    return dict(x=rng.standard_normal((L, N, I)).astype(F),
                w_ih=rng.standard_normal((G * H, I)).astype(F),
                bias=rng.standard_normal(G * H).astype(F))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("build", CELL_BUILDS.values(), ids=CELL_BUILDS.keys())
def test_cell_forward_projection_per_step_is_the_gemms(build, bf16):
    """P_t computed step by step (x, w_ih, bias) is bitwise the GEMM over all rows first."""
    kind = build.get("kind", "lstm")
    proj = _projection(kind)
    G = 4 if kind == "lstm" else 3
    W = cell_forward_args(**build)["save"].shape[2]
    for threads in (1, 2):
        step = cell_forward_args(**build, num_threads=threads,
                                 lengths=np.resize(np.array([L, 0, L - 1], np.int64), N))
        gemm_args = cell_forward_args(**build, num_threads=threads,
                                      lengths=step["lengths"])
        _rnn.gemm(proj["x"].reshape(L * N, -1), proj["w_ih"].T,
                  gemm_args["save"].reshape(L * N, W)[:, :G * H], proj["bias"], False, 2,
                  bf16=bf16)
        _rnn.cell_forward(*gemm_args.values(), bf16=bf16)
        step["save"][...] = np.nan  # P is not read from save: written there per step
        _rnn.cell_forward(*step.values(), **proj, bf16=bf16)
        for name in ("save", "out", "h_n"):
            assert np.array_equal(step[name], gemm_args[name]), (name, threads)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("batch,hidden", [(6, 40), (2, 128)], ids=["batch-slices", "columns"])
def test_cell_forward_projects_chunks_of_steps_bitwise(kind, reverse, batch, hidden, bf16):
    """``chunk`` steps projected at once (one product reading W_ih for all of them), into all
    the saved rows or a ring of ``chunk`` rows a sequence: the outputs and final states are
    bitwise those of the call given P (the GEMM first), with ragged lengths (0 included), on
    both splits (batch slices; hidden columns: 2 rows of 128 units on 2 threads) and 1 or 2
    threads; the projected chunk lands in the rows the steps read (the ring starts as NaN)."""
    rng = _rng()
    G, T, I = (4 if kind == "lstm" else 3), 7, 5
    W = G * hidden + hidden
    x = rng.standard_normal((T, batch, I)).astype(F)
    w_ih = rng.standard_normal((G * hidden, I)).astype(F)
    bias = rng.standard_normal(G * hidden).astype(F)
    w_hh = (rng.standard_normal((G * hidden, hidden)) / np.sqrt(hidden)).astype(F)
    b_hh = rng.standard_normal(G * hidden).astype(F) if kind == "gru" else None
    h0 = rng.standard_normal((batch, hidden)).astype(F)
    c0 = rng.standard_normal((batch, hidden)).astype(F) if kind == "lstm" else None
    lengths = np.resize(np.array([T, 0, T - 2, 3], np.int64), batch)

    def run(save, threads, **projection):
        out, h_n = np.empty((T, batch, hidden), F), np.empty((batch, hidden), F)
        c_n = np.empty((batch, hidden), F) if kind == "lstm" else None
        _rnn.cell_forward(_rnn.LSTM if kind == "lstm" else _rnn.GRU, save, out, h0, c0, w_hh,
                          b_hh, None, lengths, reverse, h_n, c_n, threads, bf16=bf16,
                          **projection)
        return [out, h_n] + ([c_n] if kind == "lstm" else [])

    for threads in (1, 2):
        save = np.empty((T, batch, W), F)
        _rnn.gemm(x.reshape(T * batch, I), w_ih.T, save.reshape(T * batch, W)[:, :G * hidden],
                  bias, False, threads, bf16=bf16, gate_layout=(G, hidden, 1))
        expected = run(save, threads)
        for chunk in (1, 2, 3, T, T + 4):
            for ring in ([False, True] if 1 < chunk < T else [False]):
                rows = np.full((chunk if ring else T, batch, W), np.nan, F)
                got = run(rows, threads, x=x, w_ih=w_ih, bias=bias, chunk=chunk)
                for a, b in zip(got, expected):
                    assert np.array_equal(a, b), (chunk, ring, threads)


# (cell, bf16, inputs, hidden): both weights past a core's L2 (G·H columns of I + H values:
# LSTM 1.5 MiB and GRU 1.1 MiB in float32, 1.25 and 1.1 MiB of bf16 pairs), or one block
# whose last units are fewer than a panel's columns (40 = 32 + 8)
@pytest.mark.parametrize("kind,bf16,inputs,hidden", [
    ("lstm", False, 128, 256), ("lstm", True, 384, 256), ("lstm", False, 20, 40),
    ("gru", False, 128, 256), ("gru", True, 512, 256), ("gru", False, 20, 40),
    ("gru", True, 20, 40)],
    ids=["lstm-f32-column-blocks", "lstm-bf16-column-blocks", "lstm-one-block",
         "gru-f32-column-blocks", "gru-bf16-column-blocks", "gru-one-block",
         "gru-bf16-one-block"])
def test_step_products_in_one_tile_are_the_gemm_then_the_recurrence(kind, bf16, inputs,
                                                                     hidden):
    """A gated step's x W_ihᵀ and h W_hhᵀ in one tile per register block (an LSTM's
    rnn_input_step, FR_ACT_NONE; a GRU's gru_step, with bf16 products), over column blocks
    where both weights pass a core's L2 and several row blocks read them: the outputs and
    saved gates are bitwise the GEMM of P first, then the recurrent products (an LSTM's
    accumulated onto P), for 43 rows with ragged lengths and 0 (full register blocks in one
    tile, the rows left over in two passes; 1 and 2 threads), both directions."""
    rng = _rng()
    lstm = kind == "lstm"
    T, batch, G = 3, 43, 4 if lstm else 3
    W = G * hidden + hidden
    x = rng.standard_normal((T, batch, inputs)).astype(F)
    w_ih = (rng.standard_normal((G * hidden, inputs)) / np.sqrt(inputs)).astype(F)
    bias = rng.standard_normal(G * hidden).astype(F)
    w_hh = (rng.standard_normal((G * hidden, hidden)) / np.sqrt(hidden)).astype(F)
    # a GRU's b_hh: b_hn on its n gate, zero on r and z (gate-interleaved as the kernels')
    b_hh = None if lstm else np.where(_rnn.gate_rows(G, hidden) >= 2 * hidden,
                                      rng.standard_normal(G * hidden), 0).astype(F)
    h0 = rng.standard_normal((batch, hidden)).astype(F)
    c0 = rng.standard_normal((batch, hidden)).astype(F) if lstm else None
    lengths = np.resize(np.array([T, 0, T - 1, 1, T], np.int64), batch)

    def run(save, threads, reverse, **projection):
        out, h_n = np.empty((T, batch, hidden), F), np.empty((batch, hidden), F)
        c_n = np.empty((batch, hidden), F) if lstm else None
        _rnn.cell_forward(_rnn.LSTM if lstm else _rnn.GRU, save, out, h0, c0, w_hh, b_hh,
                          None, lengths, reverse, h_n, c_n, threads, bf16=bf16, **projection)
        return [save, out, h_n] + ([c_n] if lstm else [])

    for threads, reverse in itertools.product((1, 2), (False, True)):
        save = np.empty((T, batch, W), F)
        _rnn.gemm(x.reshape(T * batch, inputs), w_ih.T,
                  save.reshape(T * batch, W)[:, :G * hidden], bias, False, threads, bf16=bf16,
                  gate_layout=(G, hidden, 1))
        expected = run(save, threads, reverse)
        got = run(np.full((T, batch, W), np.nan, F), threads, reverse, x=x, w_ih=w_ih,
                  bias=bias)
        for a, b in zip(got, expected):
            assert np.array_equal(a, b), (threads, reverse)


def test_cell_forward_refuses_a_chunk_it_cannot_project():
    """``chunk`` counts steps of x's projection: at least 1, more only with x and saved rows
    to hold them (not one row reused by every step); a ring of saved rows has ``chunk``."""
    with pytest.raises(ValueError, match="chunk must be"):
        _rnn.cell_forward(*cell_forward_args().values(), chunk=2)
    with pytest.raises(ValueError, match="chunk must be"):
        _rnn.cell_forward(*cell_forward_args().values(), **_projection("lstm"), chunk=0)
    ring = cell_forward_args(save=np.zeros((2, N, 5 * H), F))
    with pytest.raises(ValueError, match="save"):
        _rnn.cell_forward(*ring.values(), **_projection("lstm"), chunk=3)
    one_row = np.zeros((1, N, 5 * H), F)  # a row per sequence for every step: one step's P
    reused = cell_forward_args(save=np.ndarray((L, N, 5 * H), F, one_row, 0,
                                               (0,) + one_row.strides[1:]))
    with pytest.raises(ValueError, match="chunk must be 1"):
        _rnn.cell_forward(*reused.values(), **_projection("lstm"), chunk=2)


@pytest.mark.parametrize("change, message", [
    (dict(w_ih=None), "x, w_ih and bias"),
    (dict(w_ih=np.zeros((7, 5), F)), "x, w_ih and bias"),
    (dict(x=np.zeros((L, N + 1, 5), F)), "x, w_ih and bias"),
    (dict(bias=np.zeros(3, F)), "x, w_ih and bias"),
    (dict(x=np.zeros((L, N, 0), F), w_ih=np.zeros((4 * H, 0), F)), "steps and inputs"),
    (dict(x=_strided((L, N, 5))), "contiguous rows"),
])
def test_cell_forward_projection_refusals(change, message):
    args = {**_projection("lstm"), **change}
    with pytest.raises(ValueError, match=message):
        _rnn.cell_forward(*cell_forward_args().values(), **args)


def test_entry_points_refuse_bf16_for_float64():
    a = np.zeros((4, 4))
    with pytest.raises(TypeError, match="float32"):
        _rnn.gemm(a, a, a.copy(), bf16=True)
    args = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == F else v)
            for k, v in cell_forward_args().items()}
    with pytest.raises(TypeError, match="float32"):
        _rnn.cell_forward(*args.values(), bf16=True)
