"""The NumPy reference (fastrnn.reference) against torch.nn.RNN and finite differences.

The reference is the specification the compiled paths are tested against, so it is
itself checked against two independent sources: torch, and numerical derivatives.
"""

import numpy as np
import pytest

from _helpers import (I, L, LAYOUT_LENGTHS, N, H, assert_close_rel, assert_grads_close,
                      assert_results_close, expected_param_shapes, forward_kwargs,
                      make_dropout_masks, make_inputs, numerical_gradients, over_all_options,
                      random_params, relu_kink_risk, run_api, run_torch)
from fastrnn import reference

# Finite differences are O(size²) forward passes: keep these tiny.
FD_L, FD_N, FD_I, FD_H = 4, 3, 2, 4
FD_TOL = 1e-6


@over_all_options
def test_reference_matches_torch(rng, num_layers, bidirectional, nonlinearity, bias, layout,
                                 lengths_kind, with_h0, dtype):
    params = random_params(rng, I, H, num_layers, bidirectional, bias, dtype)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=with_h0, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype, allow_zero_length=False)
    got = run_api(reference, params, x, h0, gy, ghn,
                  **forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths))
    expected = run_torch(params, x, h0, lengths, gy, ghn, num_layers=num_layers,
                         nonlinearity=nonlinearity, bidirectional=bidirectional,
                         batch_first=layout == "batch")
    assert_results_close(got, expected, dtype)


@pytest.mark.parametrize("layers_dropout", [(1, False), (2, False), (2, True)],
                         ids=["layers1", "layers2", "layers2-dropout"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout,lengths_kind", [
    p for p in LAYOUT_LENGTHS if p.id in ("time", "time-ragged", "batchfirst-short", "unbatched")])
@pytest.mark.parametrize("with_h0", [False, True], ids=["noh0", "h0"])
def test_reference_gradients_match_finite_differences(rng, layers_dropout, bidirectional,
                                                      nonlinearity, bias, layout, lengths_kind,
                                                      with_h0):
    num_layers, dropout = layers_dropout
    batch = 1 if layout == "unbatched" else FD_N
    for _ in range(100):  # relu without bias: resample away from its kink at exactly 0
        params = random_params(rng, FD_I, FD_H, num_layers, bidirectional, bias, np.float64)
        x, h0, lengths, gy, ghn = make_inputs(
            rng, layout=layout, lengths_kind=lengths_kind, with_h0=with_h0, num_layers=num_layers,
            bidirectional=bidirectional, dtype=np.float64, seq_len=FD_L, batch=FD_N,
            input_size=FD_I, hidden_size=FD_H)
        masks = (make_dropout_masks(rng, num_layers, FD_L, batch, FD_H, bidirectional, 0.3,
                                    np.float64) if dropout else None)
        if nonlinearity == "tanh" or bias or not relu_kink_risk(
                params, x, h0, num_layers=num_layers, bidirectional=bidirectional, layout=layout,
                lengths=lengths, masks=masks):
            break
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths, masks)

    def loss(x_, h0_, params_):
        out, hn, _ = reference.rnn_forward(x_, params_, h0_, **kwargs)
        return np.sum(out * gy) + np.sum(hn * ghn)

    _, _, grad_x, grad_h0, grads = run_api(reference, params, x, h0, gy, ghn, **kwargs)
    h0_point = np.zeros_like(ghn) if h0 is None else h0  # grad w.r.t. the implicit zero state
    num_x, num_h0, num_grads = numerical_gradients(loss, x, h0_point, params)
    assert_close_rel(grad_x, num_x, np.float64, FD_TOL, name="grad_x")
    assert_close_rel(grad_h0, num_h0, np.float64, FD_TOL, name="grad_h0")
    assert_grads_close(grads, num_grads, np.float64, FD_TOL)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("lengths_kind", ["ragged", "short"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time", "batchfirst"])
def test_reference_lengths_equal_separate_sequences(rng, num_layers, bidirectional, nonlinearity,
                                                    lengths_kind, batch_first):
    """A padded batch with lengths equals running each sequence alone on its valid prefix."""
    layout = "batch" if batch_first else "time"
    params = random_params(rng, I, H, num_layers, bidirectional, True, np.float64)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=True, num_layers=num_layers,
        bidirectional=bidirectional, dtype=np.float64)
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths)
    out, hn, grad_x, grad_h0, grads = run_api(reference, params, x, h0, gy, ghn, **kwargs)
    if batch_first:  # compare in time-major layout
        x, gy, out, grad_x = (a.transpose(1, 0, 2) for a in (x, gy, out, grad_x))

    single = forward_kwargs(num_layers, nonlinearity, bidirectional, "unbatched")
    summed = {name: np.zeros_like(p) for name, p in params.items()}
    for b, n in enumerate(lengths):
        out_b, hn_b, gx_b, gh0_b, grads_b = run_api(reference, params, x[:n, b], h0[:, b],
                                                    gy[:n, b], ghn[:, b], **single)
        assert_close_rel(out[:n, b], out_b, np.float64, name=f"output[{b}]")
        assert np.all(out[n:, b] == 0), "outputs past a sequence's length must be 0"
        assert_close_rel(hn[:, b], hn_b, np.float64, name=f"h_n[{b}]")
        assert_close_rel(grad_x[:n, b], gx_b, np.float64, name=f"grad_x[{b}]")
        assert np.all(grad_x[n:, b] == 0), "grad_x past a sequence's length must be 0"
        assert_close_rel(grad_h0[:, b], gh0_b, np.float64, name=f"grad_h0[{b}]")
        for name in summed:
            summed[name] += grads_b[name]
    assert_grads_close(grads, summed, np.float64)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths_kind", [None, "ragged"])
def test_reference_dropout_masks_feed_next_layer(rng, bidirectional, lengths_kind):
    """Three layers with masks equal three single layers with the masks multiplied in between."""
    num_layers, D = 3, 2 if bidirectional else 1
    params = random_params(rng, I, H, num_layers, bidirectional, True, np.float64)
    x, h0, lengths, _, _ = make_inputs(
        rng, layout="time", lengths_kind=lengths_kind, with_h0=True, num_layers=num_layers,
        bidirectional=bidirectional, dtype=np.float64)
    masks = make_dropout_masks(rng, num_layers, L, N, H, bidirectional, 0.3, np.float64)
    out, hn, _ = reference.rnn_forward(
        x, params, h0, **forward_kwargs(num_layers, "tanh", bidirectional, "time", lengths, masks))

    inp, hn_parts = x, []
    for layer in range(num_layers):
        layer_params = {k.replace(f"_l{layer}", "_l0"): v for k, v in params.items()
                        if f"_l{layer}" in k}
        o, h, _ = reference.rnn_forward(
            inp, layer_params, h0[layer * D:(layer + 1) * D],
            **forward_kwargs(1, "tanh", bidirectional, "time", lengths))
        inp = o * masks[layer] if layer < num_layers - 1 else o
        hn_parts.append(h)
    assert_close_rel(out, inp, np.float64, name="output")
    assert_close_rel(hn, np.concatenate(hn_parts), np.float64, name="h_n")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layout", ["time", "batch", "unbatched"])
def test_reference_empty_sequence_returns_h0(rng, bidirectional, layout):
    """L = 0 (a documented deviation from torch, which refuses it): output is empty, h_n = h0."""
    num_layers, D = 2, 2 if bidirectional else 1
    params = random_params(rng, I, H, num_layers, bidirectional, True, np.float64)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=num_layers, bidirectional=bidirectional,
                                    dtype=np.float64, seq_len=0)
    out, hn, grad_x, grad_h0, grads = run_api(
        reference, params, x, h0, gy, ghn,
        **forward_kwargs(num_layers, "tanh", bidirectional, layout))
    assert out.shape == gy.shape and out.shape[-1] == D * H
    assert np.array_equal(hn, h0)
    assert grad_x.shape == x.shape
    assert np.array_equal(grad_h0, ghn)
    assert all(np.all(g == 0) for g in grads.values())


def test_reference_param_names_follow_torch():
    for num_layers in (1, 2, 3):
        for bidirectional in (False, True):
            for bias in (False, True):
                expected = list(expected_param_shapes(I, H, num_layers, bidirectional, bias))
                assert reference.param_names(num_layers, bidirectional, bias) == expected
