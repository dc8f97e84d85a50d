"""The NumPy reference of the gated cells (fastrnn.reference.lstm_* and gru_*) against
torch.nn.LSTM / torch.nn.GRU and against finite differences: the specification the compiled
LSTM and GRU are tested against is itself checked against two independent sources."""

import numpy as np
import pytest

from _gated import random_gated_params, run_torch_gated, state_shapes
from _helpers import (DTYPES, H, I, L, LAYOUT_LENGTHS, N, assert_close_rel, make_lengths,
                      numerical_gradient)
from fastrnn import reference

PROJ = 3  # < H, != I: a projection that a transpose would not survive
CELLS = [pytest.param(("lstm", 0), id="lstm"), pytest.param(("lstm", PROJ), id="lstm-proj"),
         pytest.param(("gru", 0), id="gru")]
FD_L, FD_N, FD_I, FD_H = 4, 3, 2, 3


def _inputs(rng, cell, layout, lengths_kind, with_states, num_layers, bidirectional, dtype,
            proj_size, seq_len=L, batch=N, input_size=I, hidden_size=H, allow_zero=False):
    """x, [states], lengths, grad_output, [grad_states] in the user-facing layout."""
    D = 2 if bidirectional else 1
    out = proj_size or hidden_size
    if layout == "unbatched":
        x_shape = (seq_len, input_size)
    elif layout == "batch":
        x_shape = (batch, seq_len, input_size)
    else:
        x_shape = (seq_len, batch, input_size)
    x = rng.standard_normal(x_shape).astype(dtype)
    shapes = state_shapes(cell, x_shape, hidden_size, num_layers, bidirectional,
                          layout == "batch", proj_size)
    states = [(rng.standard_normal(s) * 0.5).astype(dtype) if with_states else None
              for s in shapes]
    lengths = make_lengths(lengths_kind, seq_len, batch, allow_zero)
    grad_output = rng.standard_normal(x_shape[:-1] + (D * out,)).astype(dtype)
    grad_states = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return x, states, lengths, grad_output, grad_states


def run_reference(cell, params, x, states, grad_output, grad_states, **kwargs):
    """output, [final states], grad_x, [initial states' gradients], grads."""
    if cell == "lstm":
        out, (h_n, c_n), cache = reference.lstm_forward(x, params, tuple(states), **kwargs)
        grad_x, (g_h0, g_c0), grads = reference.lstm_backward(cache, grad_output,
                                                              tuple(grad_states))
        return out, [h_n, c_n], grad_x, [g_h0, g_c0], grads
    out, h_n, cache = reference.gru_forward(x, params, states[0], **kwargs)
    grad_x, g_h0, grads = reference.gru_backward(cache, grad_output, grad_states[0])
    return out, [h_n], grad_x, [g_h0], grads


def assert_all_close(got, expected, dtype):
    names = ["output", "final states", "grad_x", "initial states' gradients"]
    for name, a, b in zip(names, got[:4], expected[:4]):
        if isinstance(b, list):
            assert len(a) == len(b), name
            for i, (ai, bi) in enumerate(zip(a, b)):
                assert_close_rel(ai, bi, dtype, name=f"{name}[{i}]")
        else:
            assert_close_rel(a, b, dtype, name=name)
    assert list(got[4]) == list(expected[4])
    for k in expected[4]:
        assert_close_rel(got[4][k], expected[4][k], dtype, name=f"grad {k}")


@pytest.mark.parametrize("cell_proj", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda v: f"layers{v}")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout,lengths_kind", LAYOUT_LENGTHS)
@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_gated_matches_torch(rng, cell_proj, num_layers, bidirectional, bias,
                                       layout, lengths_kind, with_states, dtype):
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, num_layers, bidirectional, bias, dtype, proj)
    x, states, lengths, gy, gs = _inputs(rng, cell, layout, lengths_kind, with_states,
                                         num_layers, bidirectional, dtype, proj)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional,
                  batch_first=layout == "batch", lengths=lengths)
    got = run_reference(cell, params, x, states, gy, gs, **kwargs)
    expected = run_torch_gated(cell, params, x, states, lengths, gy, gs,
                               num_layers=num_layers, bidirectional=bidirectional,
                               batch_first=layout == "batch")
    assert_all_close(got, expected, dtype)


@pytest.mark.parametrize("cell_proj", CELLS)
@pytest.mark.parametrize("layers_dropout", [(1, False), (2, False), (2, True)],
                         ids=["layers1", "layers2", "layers2-dropout"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout,lengths_kind", [
    p for p in LAYOUT_LENGTHS if p.id in ("time", "time-ragged", "batchfirst-short", "unbatched")])
def test_reference_gated_gradients_match_finite_differences(rng, cell_proj, layers_dropout,
                                                            bidirectional, bias, layout,
                                                            lengths_kind):
    cell, proj = cell_proj
    proj = min(proj, FD_H - 1)
    num_layers, dropout = layers_dropout
    D = 2 if bidirectional else 1
    batch = 1 if layout == "unbatched" else FD_N
    params = random_gated_params(rng, cell, FD_I, FD_H, num_layers, bidirectional, bias,
                                 np.float64, proj)
    x, states, lengths, gy, gs = _inputs(
        rng, cell, layout, lengths_kind, True, num_layers, bidirectional, np.float64, proj,
        seq_len=FD_L, batch=FD_N, input_size=FD_I, hidden_size=FD_H, allow_zero=True)
    masks = ([((rng.random((FD_L, batch, D * (proj or FD_H))) >= 0.3) / 0.7)
              for _ in range(num_layers - 1)] if dropout else None)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional,
                  batch_first=layout == "batch", lengths=lengths, dropout_masks=masks)
    _, _, grad_x, grad_states, grads = run_reference(cell, params, x, states, gy, gs, **kwargs)

    def loss():
        out, finals, *_ = run_reference(cell, params, x, states, gy, gs, **kwargs)
        return float((out * gy).sum() + sum((f * g).sum() for f, g in zip(finals, gs)))

    names = list(params)
    numeric = [numerical_gradient(loss, a) for a in [x, *states, *(params[k] for k in names)]]
    assert_close_rel(grad_x, numeric[0], np.float64, tol=1e-6, name="grad_x")
    for i, g in enumerate(grad_states):
        assert_close_rel(g, numeric[1 + i], np.float64, tol=1e-6, name=f"grad_state[{i}]")
    for k, g in zip(names, numeric[1 + len(states):]):
        assert_close_rel(grads[k], g, np.float64, tol=1e-6, name=f"grad {k}")


@pytest.mark.parametrize("cell_proj", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_reference_gated_length_zero_keeps_the_initial_state(rng, cell_proj, bidirectional):
    """A sequence of length 0: zero outputs, final states = initial states, and their
    gradients pass straight through (torch refuses such sequences; fastrnn defines them)."""
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, 2, bidirectional, True, np.float64, proj)
    x, states, _, gy, gs = _inputs(rng, cell, "time", None, True, 2, bidirectional,
                                   np.float64, proj)
    lengths = np.array([L, 0, 2, 0])
    out, finals, grad_x, grad_states, _ = run_reference(
        cell, params, x, states, gy, gs, num_layers=2, bidirectional=bidirectional,
        lengths=lengths)
    zero = lengths == 0
    assert not out[:, zero].any() and not grad_x[:, zero].any()
    for s, f, g, gs_i in zip(states, finals, grad_states, gs):
        assert np.array_equal(f[:, zero], s[:, zero])
        assert np.array_equal(g[:, zero], gs_i[:, zero])
    assert not out[2:, 2].any()  # past a length, outputs are 0
