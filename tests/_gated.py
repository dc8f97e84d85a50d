"""Builders and the torch runner for the gated cells (LSTM, GRU), independent of fastrnn:
parameter shapes are written out from torch's conventions and the runner drives
``torch.nn.LSTM`` / ``torch.nn.GRU`` themselves, packing variable lengths as torch users do."""

import numpy as np
import pytest

from _helpers import H, I, L, N, assert_close_rel, make_lengths, run_torch_module

GATES = {"lstm": 4, "gru": 3}


def gated_param_shapes(cell, input_size, hidden_size, num_layers, bidirectional, bias,
                       proj_size=0):
    """torch's parameter names and shapes, in torch's order."""
    G, out = GATES[cell], proj_size or hidden_size
    D = 2 if bidirectional else 1
    shapes = {}
    for layer in range(num_layers):
        for suffix in ("", "_reverse")[:D]:
            k = f"l{layer}{suffix}"
            shapes[f"weight_ih_{k}"] = (G * hidden_size, input_size if layer == 0 else D * out)
            shapes[f"weight_hh_{k}"] = (G * hidden_size, out)
            if bias:
                shapes[f"bias_ih_{k}"] = (G * hidden_size,)
                shapes[f"bias_hh_{k}"] = (G * hidden_size,)
            if proj_size:
                shapes[f"weight_hr_{k}"] = (proj_size, hidden_size)
    return shapes


def random_gated_params(rng, cell, input_size, hidden_size, num_layers, bidirectional, bias,
                        dtype, proj_size=0):
    """Random weights in torch's init range U(-1/√H, 1/√H), scaled up a little."""
    k = 1.5 / np.sqrt(hidden_size)
    return {name: rng.uniform(-k, k, size=shape).astype(dtype)
            for name, shape in gated_param_shapes(cell, input_size, hidden_size, num_layers,
                                                  bidirectional, bias, proj_size).items()}


def state_shapes(cell, x_shape, hidden_size, num_layers, bidirectional, batch_first,
                 proj_size=0):
    """Shapes of h0 (and c0 for an LSTM) for an input of ``x_shape``."""
    D = 2 if bidirectional else 1
    batch = () if len(x_shape) == 2 else (x_shape[0 if batch_first else 1],)
    h = (D * num_layers,) + batch + (proj_size or hidden_size,)
    if cell == "gru":
        return [h]
    return [h, (D * num_layers,) + batch + (hidden_size,)]


def run_torch_gated(cell, params, x, states, lengths, grad_output, grad_states, *, num_layers,
                    bidirectional, batch_first):
    """Forward and backward through torch.nn.LSTM / GRU with these weights.

    ``states``: [h0] or [h0, c0] (entries None for zeros); ``grad_states`` likewise the
    gradients of the final states. Returns output, [final states], grad_x,
    [initial states' gradients], {name: grad} as NumPy arrays.
    """
    torch = pytest.importorskip("torch")
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[x.dtype]
    G = GATES[cell]
    hidden_size = params["weight_hh_l0"].shape[0] // G
    proj_size = params["weight_hr_l0"].shape[0] if "weight_hr_l0" in params else 0
    kwargs = dict(num_layers=num_layers, bias="bias_ih_l0" in params, batch_first=batch_first,
                  bidirectional=bidirectional, dtype=dtype)
    if cell == "lstm":
        module = torch.nn.LSTM(x.shape[-1], hidden_size, proj_size=proj_size, **kwargs)
    else:
        module = torch.nn.GRU(x.shape[-1], hidden_size, **kwargs)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
    shapes = state_shapes(cell, x.shape, hidden_size, num_layers, bidirectional, batch_first,
                          proj_size)
    st = [torch.tensor(np.zeros(shape, x.dtype) if s is None else s, requires_grad=True)
          for s, shape in zip(states, shapes)]
    xt = torch.tensor(x, requires_grad=True)
    out, final = run_torch_module(module, xt, tuple(st) if cell == "lstm" else st[0], lengths,
                                  batch_first)
    final = list(final) if cell == "lstm" else [final]
    loss = (out * torch.from_numpy(grad_output)).sum()
    for f, g in zip(final, grad_states):
        if g is not None:
            loss = loss + (f * torch.from_numpy(g)).sum()
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    return (out.detach().numpy(), [f.detach().numpy() for f in final], xt.grad.numpy(),
            [s.grad.numpy() for s in st], grads)


def gated_inputs(rng, cell, layout, lengths_kind, with_states, num_layers, bidirectional, dtype,
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


def run_gated(module, cell, params, x, states, grad_output, grad_states, **kwargs):
    """output, [final states], grad_x, [initial states' gradients], grads through ``module``
    (fastrnn.functional or fastrnn.reference)."""
    if cell == "lstm":
        out, (h_n, c_n), cache = module.lstm_forward(x, params, tuple(states), **kwargs)
        grad_x, (g_h0, g_c0), grads = module.lstm_backward(cache, grad_output,
                                                           tuple(grad_states))
        return out, [h_n, c_n], grad_x, [g_h0, g_c0], grads
    out, h_n, cache = module.gru_forward(x, params, states[0], **kwargs)
    grad_x, g_h0, grads = module.gru_backward(cache, grad_output, grad_states[0])
    return out, [h_n], grad_x, [g_h0], grads


def assert_gated_close(got, expected, dtype):
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


def gated_case(rng, cell_proj, num_layers, bidirectional, bias, layout, lengths_kind,
               with_states, dtype, allow_zero=False):
    """One case of the option matrix: cell, params, x, [states], lengths, grad_output,
    [grad_states] and the forward's keyword arguments."""
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, num_layers, bidirectional, bias, dtype, proj)
    x, states, lengths, gy, gs = gated_inputs(rng, cell, layout, lengths_kind, with_states,
                                              num_layers, bidirectional, dtype, proj,
                                              allow_zero=allow_zero)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional,
                  batch_first=layout == "batch", lengths=lengths)
    return cell, params, x, states, lengths, gy, gs, kwargs


def assert_length_zero_rule(api, rng, cell_proj, bidirectional):
    """Through ``api`` (fastrnn.functional or fastrnn.reference), sequences of length 0 give
    zero outputs, final states equal to the initial ones and their gradients straight
    through, and outputs past a length are 0. Returns the case (cell, params, x, [states],
    grad_output, [grad_states]) for further checks."""
    cell, proj = cell_proj
    params = random_gated_params(rng, cell, I, H, 2, bidirectional, True, np.float64, proj)
    x, states, _, gy, gs = gated_inputs(rng, cell, "time", None, True, 2, bidirectional,
                                        np.float64, proj)
    lengths = np.array([L, 0, 2, 0])
    out, finals, grad_x, grad_states, _ = run_gated(
        api, cell, params, x, states, gy, gs, num_layers=2, bidirectional=bidirectional,
        lengths=lengths)
    zero = lengths == 0
    assert not out[:, zero].any() and not grad_x[:, zero].any()
    for s, f, g, gs_i in zip(states, finals, grad_states, gs):
        assert np.array_equal(f[:, zero], s[:, zero])
        assert np.array_equal(g[:, zero], gs_i[:, zero])
    assert not out[2:, 2].any()  # past a length, outputs are 0
    return cell, params, x, states, gy, gs
