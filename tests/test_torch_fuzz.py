"""Property-based differential tests (hypothesis) of ``fastrnn.torch`` against ``torch.nn``.

Random modules (every cell, a projected LSTM, 1-2 layers, bidirectional, bias, batch_first)
and calls (time-major, batch-first, unbatched and packed input, ragged or whole sequences in
any sorted order, with or without initial states, the input and the weights (all, none or
the first layer's frozen) requiring grad or not, recorded by autograd or not, train or eval
mode), each run through torch's module and the adapter with the same weights: every output,
state and gradient agrees. Calls autograd does not record may run on the kept stream, so
each such case is called twice with a weight changed in place in between (through ``p.data``,
a NumPy view or an optimizer-like ``add_``): the second call must see the change.

Derandomized by default; ``FASTRNN_FUZZ_EXAMPLES=500`` searches longer with fresh examples.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402
from _helpers import assert_close_rel  # noqa: E402

_EXAMPLES = int(os.environ.get("FASTRNN_FUZZ_EXAMPLES", "0"))
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
# Two float32 implementations summing in other orders differ by more than 1e-5 (the fixed
# cases' bound) where a gradient is a sum of cancelling terms (hidden_size 1, say); a wrong
# result differs at O(1)
TOL = {torch.float32: 1e-4, torch.float64: None}


@st.composite
def cases(draw):
    """A module's constructor arguments and one call's inputs and mode."""
    cell = draw(st.sampled_from(["RNN_TANH", "RNN_RELU", "LSTM", "LSTM_PROJ", "GRU"]))
    hidden_size = draw(st.integers(1, 9))
    kwargs = dict(input_size=draw(st.integers(1, 6)), hidden_size=hidden_size,
                  num_layers=draw(st.integers(1, 2)), bias=draw(st.booleans()),
                  batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()))
    if cell.startswith("RNN"):
        kwargs["nonlinearity"] = cell[4:].lower()
    if cell == "LSTM_PROJ":
        kwargs["proj_size"] = draw(st.integers(1, hidden_size - 1)) if hidden_size > 1 else 0
    # relu's kink: a pre-activation within float32 rounding of 0 may fall on either side
    # in the two implementations, so relu runs in float64
    dtype = torch.float64 if cell == "RNN_RELU" else draw(st.sampled_from([torch.float32,
                                                                            torch.float64]))
    layout = draw(st.sampled_from(["tensor", "unbatched", "packed"]))
    seq_len = draw(st.integers(1, 12))
    batch = 1 if layout == "unbatched" else draw(st.integers(1, 5))
    lengths = order = None
    if layout == "packed":
        whole = draw(st.booleans())
        lengths = ([seq_len] * batch if whole else
                   draw(st.lists(st.integers(1, seq_len), min_size=batch, max_size=batch)))
        lengths[0] = seq_len  # the padded input's length is the longest sequence's
        order = draw(st.sampled_from(["sorted", "unsorted", "permuted"]))
    return dict(cell=cell, kwargs=kwargs, dtype=dtype, layout=layout, seq_len=seq_len,
                batch=batch, lengths=lengths, order=order, with_h0=draw(st.booleans()),
                grad=draw(st.booleans()), x_grad=draw(st.booleans()),
                frozen=draw(st.sampled_from(["none", "all", "first layer"])),
                training=draw(st.booleans()),
                change=draw(st.sampled_from(["data", "numpy", "add_"])),
                seed=draw(st.integers(0, 2**31 - 1)))


def build(case):
    """(torch's module, the adapter's module) with the same weights, in the case's mode."""
    torch.manual_seed(case["seed"])
    name = "RNN" if case["cell"].startswith("RNN") else case["cell"][:4].rstrip("_")
    reference = getattr(torch.nn, name)(**case["kwargs"], dtype=case["dtype"])
    module = getattr(ft, name)(**case["kwargs"], dtype=case["dtype"])
    module.load_state_dict(reference.state_dict())
    for m in (reference, module):
        m.train(case["training"])
        for name, p in m.named_parameters():
            p.requires_grad_(case["frozen"] == "none" or
                             case["frozen"] == "first layer" and "_l0" not in name)
    return reference, module


def inputs(case, module):
    """(make_input(x), x, hx): the call's input built from a leaf x, and hx (or None)."""
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    kw, dtype = case["kwargs"], case["dtype"]
    T, N = case["seq_len"], case["batch"]
    shape = ((T,) if case["layout"] == "unbatched" else
             (N, T) if kw["batch_first"] and case["layout"] == "tensor" else (T, N))
    x = torch.randn(*shape, kw["input_size"], generator=gen, dtype=dtype)
    hx = None
    if case["with_h0"]:
        D = 2 if kw["bidirectional"] else 1
        lead = (D * kw["num_layers"],) + (() if case["layout"] == "unbatched" else (N,))
        width = kw.get("proj_size") or kw["hidden_size"]
        h0 = torch.randn(*lead, width, generator=gen, dtype=dtype)
        hx = ((h0, torch.randn(*lead, kw["hidden_size"], generator=gen, dtype=dtype))
              if isinstance(module, torch.nn.LSTM) else h0)

    def make_input(x):
        if case["layout"] != "packed":
            return x
        lengths = torch.tensor(case["lengths"])
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        if case["order"] == "sorted" and torch.equal(lengths, lengths.sort(descending=True)[0]):
            return pack_padded_sequence(x, lengths, enforce_sorted=True)
        if case["order"] == "permuted" and len(set(case["lengths"])) == 1:
            # equal lengths: any order is a valid sort; a reversed one, given explicitly
            perm = torch.arange(N - 1, -1, -1)
            return PackedSequence(packed.data.view(T, N, -1)[:, perm].reshape(T * N, -1),
                                  packed.batch_sizes, perm, torch.argsort(perm))
        return packed

    return make_input, x, hx


def call(module, make_input, x, hx, grad, x_grad):
    """The call's results (output data, states) and, with ``grad``, the gradients of
    Σ results·weights for x (if ``x_grad``), hx and every parameter."""
    x = x.detach().requires_grad_(grad and x_grad)
    states = () if hx is None else hx if isinstance(hx, tuple) else (hx,)
    states = tuple(s.detach().requires_grad_(grad) for s in states)
    given = None if hx is None else states if isinstance(hx, tuple) else states[0]
    module.zero_grad()
    with torch.set_grad_enabled(grad):
        output, state = module(make_input(x), given)
    if isinstance(output, PackedSequence):
        output = output.data
    results = [output, *(state if isinstance(state, tuple) else (state,))]
    grads = []
    if any(r.requires_grad for r in results):  # (not if nothing required grad)
        gen = torch.Generator().manual_seed(7)
        sum((r * torch.randn(r.shape, generator=gen, dtype=r.dtype)).sum()
            for r in results).backward()
        grads = [*([x.grad] if x_grad else []), *(s.grad for s in states),
                 *(p.grad for p in module.parameters() if p.requires_grad)]
    return [r.detach() for r in results], grads


def change_weight(module, how):
    """Change one weight in place, in a way autograd may not see."""
    p = module.weight_hh_l0
    if how == "data":
        p.data[0] += 0.25
    elif how == "numpy":
        p.detach().numpy()[0] -= 0.25
    else:
        with torch.no_grad():
            p.add_(0.125)


@settings(max_examples=_EXAMPLES or 200, derandomize=not _EXAMPLES, deadline=None,
          database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_adapter_matches_torch(case):
    reference, module = build(case)
    make_input, x, hx = inputs(case, module)
    np_dtype, tol = NP_DTYPE[case["dtype"]], TOL[case["dtype"]]
    # a call autograd does not record may run on the kept stream: a second one, after a
    # weight changed in place, must see the change
    calls = 1 if case["grad"] else 2
    for i in range(calls):
        if i:
            for m in (reference, module):
                change_weight(m, case["change"])
        want, want_grads = call(reference, make_input, x, hx, case["grad"], case["x_grad"])
        got, got_grads = call(module, make_input, x, hx, case["grad"], case["x_grad"])
        for k, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype
            assert_close_rel(g.numpy(), w.numpy(), np_dtype, tol, name=f"call {i} result {k}")
        for k, (g, w) in enumerate(zip(got_grads, want_grads)):
            assert_close_rel(g.numpy(), w.numpy(), np_dtype, tol, name=f"gradient {k}")
