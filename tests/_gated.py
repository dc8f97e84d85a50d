"""Builders and the torch runner for the gated cells (LSTM, GRU), independent of fastrnn:
parameter shapes are written out from torch's conventions and the runner drives
``torch.nn.LSTM`` / ``torch.nn.GRU`` themselves, packing variable lengths as torch users do."""

import numpy as np
import pytest

from _helpers import run_torch_module

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
