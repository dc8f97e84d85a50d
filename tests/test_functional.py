"""The compiled functional API (fastrnn.functional) against the NumPy reference.

Each conformance test runs once per compiled kernel path this CPU supports (``kernel``).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import (LAYOUT_LENGTHS, DTYPES, H, I, L, N, assert_close_rel, assert_grads_close,
                      assert_results_close, assert_results_equal, forward_kwargs,
                      make_dropout_masks, make_inputs, numerical_gradients, over_all_options,
                      random_params, relu_kink_risk, run_api)
import fastrnn
from fastrnn import functional, reference


@over_all_options
def test_functional_matches_reference(kernel, rng, num_layers, bidirectional, nonlinearity, bias,
                                      layout, lengths_kind, with_h0, dtype):
    params = random_params(rng, I, H, num_layers, bidirectional, bias, dtype)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=with_h0, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype)
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths)
    assert_results_close(run_api(functional, params, x, h0, gy, ghn, **kwargs),
                         run_api(reference, params, x, h0, gy, ghn, **kwargs), dtype)


@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("layout,lengths_kind", LAYOUT_LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_dropout_masks_match_reference(kernel, rng, num_layers, bidirectional,
                                                  nonlinearity, layout, lengths_kind, dtype):
    params = random_params(rng, I, H, num_layers, bidirectional, True, dtype)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=True, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype)
    batch = 1 if layout == "unbatched" else N
    masks = make_dropout_masks(rng, num_layers, L, batch, H, bidirectional, 0.4, dtype)
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths, masks)
    got = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    assert_results_close(got, run_api(reference, params, x, h0, gy, ghn, **kwargs), dtype)
    if nonlinearity == "tanh":  # the masks matter (a relu layer may be dead and hide them)
        undropped = functional.rnn_forward(x, params, h0, **forward_kwargs(
            num_layers, nonlinearity, bidirectional, layout, lengths))[0]
        assert not np.allclose(got[0], undropped)


@pytest.mark.parametrize("layers_dropout", [(1, False), (2, False), (2, True)],
                         ids=["layers1", "layers2", "layers2-dropout"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout,lengths_kind", [
    p for p in LAYOUT_LENGTHS if p.id in ("time-ragged", "batchfirst-short", "unbatched")])
def test_functional_gradients_match_finite_differences(kernel, rng, layers_dropout, bidirectional,
                                                       nonlinearity, bias, layout, lengths_kind):
    seq_len, batch, input_size, hidden_size = 4, 3, 2, 4
    num_layers, dropout = layers_dropout
    mask_batch = 1 if layout == "unbatched" else batch
    for _ in range(100):  # relu without bias: resample away from its kink at exactly 0
        params = random_params(rng, input_size, hidden_size, num_layers, bidirectional, bias,
                               np.float64)
        x, h0, lengths, gy, ghn = make_inputs(
            rng, layout=layout, lengths_kind=lengths_kind, with_h0=True, num_layers=num_layers,
            bidirectional=bidirectional, dtype=np.float64, seq_len=seq_len, batch=batch,
            input_size=input_size, hidden_size=hidden_size)
        masks = (make_dropout_masks(rng, num_layers, seq_len, mask_batch, hidden_size,
                                    bidirectional, 0.3, np.float64) if dropout else None)
        if nonlinearity == "tanh" or bias or not relu_kink_risk(
                params, x, h0, num_layers=num_layers, bidirectional=bidirectional, layout=layout,
                lengths=lengths, masks=masks):
            break
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths, masks)

    def loss(x_, h0_, params_):
        out, hn, _ = functional.rnn_forward(x_, params_, h0_, **kwargs)
        return np.sum(out * gy) + np.sum(hn * ghn)

    _, _, grad_x, grad_h0, grads = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    num_x, num_h0, num_grads = numerical_gradients(loss, x, h0, params)
    assert_close_rel(grad_x, num_x, np.float64, 1e-6, name="grad_x")
    assert_close_rel(grad_h0, num_h0, np.float64, 1e-6, name="grad_h0")
    assert_grads_close(grads, num_grads, np.float64, 1e-6)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layout", ["time", "batch", "unbatched"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_empty_sequence_returns_h0(kernel, rng, bidirectional, layout, dtype):
    """L = 0 is allowed (torch refuses it): empty output, h_n = h0, gradients pass straight."""
    num_layers, D = 2, 2 if bidirectional else 1
    params = random_params(rng, I, H, num_layers, bidirectional, True, dtype)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    dtype=dtype, seq_len=0)
    out, hn, grad_x, grad_h0, grads = run_api(
        functional, params, x, h0, gy, ghn,
        **forward_kwargs(num_layers, "tanh", bidirectional, layout))
    assert out.shape == gy.shape and out.shape[-1] == D * H
    assert np.array_equal(hn, h0)
    assert grad_x.shape == x.shape
    assert np.array_equal(grad_h0, ghn)
    assert list(grads) == list(params)
    assert all(np.all(g == 0) for g in grads.values())


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time", "batchfirst"])
def test_functional_empty_batch(kernel, rng, bidirectional, batch_first):
    num_layers, D = 2, 2 if bidirectional else 1
    layout = "batch" if batch_first else "time"
    params = random_params(rng, I, H, num_layers, bidirectional, True, np.float32)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    dtype=np.float32, batch=0)
    out, hn, grad_x, grad_h0, grads = run_api(
        functional, params, x, h0, gy, ghn,
        **forward_kwargs(num_layers, "tanh", bidirectional, layout, np.zeros(0, np.int64)))
    assert out.shape == ((0, L, D * H) if batch_first else (L, 0, D * H))
    assert hn.shape == (D * num_layers, 0, H)
    assert grad_x.shape == x.shape and grad_h0.shape == h0.shape
    assert all(np.all(g == 0) for g in grads.values())


@pytest.mark.parametrize("variant", ["fortran", "strided", "readonly"])
def test_functional_accepts_any_memory_layout(kernel, rng, variant):
    """Non-contiguous, Fortran-ordered and read-only arrays (inputs, params, gradients) work."""
    num_layers, bidirectional = 2, True
    params = random_params(rng, I, H, num_layers, bidirectional, True, np.float64)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout="time", lengths_kind="ragged", with_h0=True, num_layers=num_layers,
        bidirectional=bidirectional, dtype=np.float64)
    kwargs = forward_kwargs(num_layers, "tanh", bidirectional, "time", lengths)
    expected = run_api(reference, params, x, h0, gy, ghn, **kwargs)
    contiguous = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    assert_results_close(contiguous, expected, np.float64)

    def relayout(a):
        if variant == "fortran":
            return np.asfortranarray(a)
        if variant == "strided":
            big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
            big[..., ::2] = a
            return big[..., ::2]
        a = a.copy()
        a.flags.writeable = False
        return a

    got = run_api(functional, {k: relayout(v) for k, v in params.items()}, relayout(x),
                  relayout(h0), relayout(gy), relayout(ghn), **kwargs)
    assert_results_equal(got, contiguous)


def test_kernel_selection():
    kernels = functional.available_kernels()
    assert "portable" in kernels
    assert len(set(kernels)) == len(kernels)
    previous = functional.get_kernel()
    assert previous in kernels
    try:
        for name in kernels:
            functional.set_kernel(name)
            assert functional.get_kernel() == name
    finally:
        functional.set_kernel(previous)
    assert functional.get_kernel() == previous


def test_set_kernel_refuses_unknown_name():
    previous = functional.get_kernel()
    with pytest.raises(ValueError, match="no_such_kernel"):
        functional.set_kernel("no_such_kernel")
    assert functional.get_kernel() == previous


def test_kernel_from_environment():
    """FASTRNN_KERNEL selects the kernel at import time."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    env = dict(os.environ, FASTRNN_KERNEL="portable",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", "import fastrnn.functional as f; print(f.get_kernel())"],
        env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "portable"


@pytest.mark.parametrize("cell", ["rnn", "rnn-relu", "lstm", "lstm-proj", "gru"])
@pytest.mark.parametrize("num_layers,dropout", [(1, False), (2, False), (2, True)],
                         ids=["layers1", "layers2", "layers2-dropout"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layout,lengths_kind", [("time", None), ("batch", "ragged"),
                                                 ("unbatched", None)])
@pytest.mark.parametrize("input_grad,param_grads", [
    (False, True), (True, False), (False, False), (True, "top layer"), (False, "one name")],
    ids=["no-input-grad", "no-param-grads", "states-only", "top-layer", "one-name"])
def test_backward_of_some_gradients(kernel, rng, cell, num_layers, dropout, bidirectional,
                                    layout, lengths_kind, input_grad, param_grads):
    """input_grad=False: grad_x is None; param_grads=False: grads is None. Every other
    result is bitwise the full backward's (what is skipped is skipped, nothing else)."""
    from _gated import gated_inputs, random_gated_params

    name = cell.split("-")[0]
    proj = 2 if cell == "lstm-proj" else 0
    if name == "rnn":
        params = random_params(rng, I, H, num_layers, bidirectional, True, np.float32)
    else:
        params = random_gated_params(rng, name, I, H, num_layers, bidirectional, True,
                                     np.float32, proj)
    x, states, lengths, grad_output, grad_states = gated_inputs(
        rng, "gru" if name == "rnn" else name, layout, lengths_kind, True, num_layers,
        bidirectional, np.float32, proj)
    batch = 1 if layout == "unbatched" else N
    masks = (make_dropout_masks(rng, num_layers, L, batch, proj or H, bidirectional, 0.4,
                                np.float32) if dropout else None)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional,
                  batch_first=layout == "batch", lengths=lengths, dropout_masks=masks)
    if name == "rnn":
        kwargs["nonlinearity"] = "relu" if cell == "rnn-relu" else "tanh"
    forward = getattr(functional, f"{name}_forward")
    backward = getattr(functional, f"{name}_backward")
    state = tuple(states) if name == "lstm" else states[0]
    grad_state = tuple(grad_states) if name == "lstm" else grad_states[0]
    _, _, cache = forward(x, params, state, **kwargs)
    full = backward(cache, grad_output, grad_state)
    if param_grads == "top layer":
        param_grads = [n for n in params if f"_l{num_layers - 1}" in n]
    elif param_grads == "one name":
        param_grads = {sorted(params)[-1]}
    partial = backward(cache, grad_output, grad_state, input_grad=input_grad,
                       param_grads=param_grads)
    assert full[0] is not None and full[0].shape == x.shape
    if input_grad:
        assert np.array_equal(partial[0], full[0])
    else:
        assert partial[0] is None
    as_tuple = (lambda g: g) if name == "lstm" else (lambda g: (g,))
    for a, b in zip(as_tuple(partial[1]), as_tuple(full[1])):
        assert np.array_equal(a, b), "initial state gradient differs"
    if param_grads is False:
        assert partial[2] is None
        return
    assert list(partial[2]) == [k for k in full[2] if param_grads is True or k in param_grads]
    for k in partial[2]:
        assert np.array_equal(partial[2][k], full[2][k]), f"grad {k} differs"


@pytest.mark.parametrize("param_grads,error", [
    ("weight_ih_l0", TypeError), (1, TypeError), (["weight_ih_l9"], ValueError),
    ([3], ValueError)])
def test_backward_refuses_unknown_param_grads(rng, param_grads, error):
    params = random_params(rng, I, H, 1, False, True, np.float32)
    x = rng.standard_normal((L, N, I)).astype(np.float32)
    out, _, cache = functional.rnn_forward(x, params)
    with pytest.raises(error, match="param_grads") as info:
        functional.rnn_backward(cache, np.ones_like(out), param_grads=param_grads)
    if error is ValueError:  # the unknown name, and what the network has
        assert str(param_grads[0]) in str(info.value) and "weight_hh_l0" in str(info.value)
