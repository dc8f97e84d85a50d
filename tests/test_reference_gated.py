"""The NumPy reference of the gated cells (fastrnn.reference.lstm_* and gru_*) against
torch.nn.LSTM / torch.nn.GRU and against finite differences: the specification the compiled
LSTM and GRU are tested against is itself checked against two independent sources."""

import numpy as np
import pytest

from _gated import (assert_gated_close, assert_length_zero_rule, gated_case, gated_inputs,
                    random_gated_params, run_gated, run_torch_gated)
from _helpers import DTYPES, LAYOUT_LENGTHS, assert_close_rel, numerical_gradient
from fastrnn import reference

PROJ = 3  # < H, != I: a projection that a transpose would not survive
CELLS = [pytest.param(("lstm", 0), id="lstm"), pytest.param(("lstm", PROJ), id="lstm-proj"),
         pytest.param(("gru", 0), id="gru")]
FD_L, FD_N, FD_I, FD_H = 4, 3, 2, 3


@pytest.mark.parametrize("cell_proj", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=lambda v: f"layers{v}")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout,lengths_kind", LAYOUT_LENGTHS)
@pytest.mark.parametrize("with_states", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_gated_matches_torch(rng, cell_proj, num_layers, bidirectional, bias,
                                       layout, lengths_kind, with_states, dtype):
    cell, params, x, states, lengths, gy, gs, kwargs = gated_case(
        rng, cell_proj, num_layers, bidirectional, bias, layout, lengths_kind, with_states,
        dtype)
    got = run_gated(reference, cell, params, x, states, gy, gs, **kwargs)
    expected = run_torch_gated(cell, params, x, states, lengths, gy, gs,
                               num_layers=num_layers, bidirectional=bidirectional,
                               batch_first=layout == "batch")
    assert_gated_close(got, expected, dtype)


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
    x, states, lengths, gy, gs = gated_inputs(
        rng, cell, layout, lengths_kind, True, num_layers, bidirectional, np.float64, proj,
        seq_len=FD_L, batch=FD_N, input_size=FD_I, hidden_size=FD_H, allow_zero=True)
    masks = ([((rng.random((FD_L, batch, D * (proj or FD_H))) >= 0.3) / 0.7)
              for _ in range(num_layers - 1)] if dropout else None)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional,
                  batch_first=layout == "batch", lengths=lengths, dropout_masks=masks)
    _, _, grad_x, grad_states, grads = run_gated(
        reference, cell, params, x, states, gy, gs, **kwargs)

    def loss():
        out, finals, *_ = run_gated(reference, cell, params, x, states, gy, gs, **kwargs)
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
    assert_length_zero_rule(reference, rng, cell_proj, bidirectional)
