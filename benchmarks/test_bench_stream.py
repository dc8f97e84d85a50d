"""Streaming latency: one step of ``module.stream(batch_size)`` per call vs torch's
``nn.RNNCell`` / ``LSTMCell`` / ``GRUCell``, per (cell, H = I, N).

The two implementations of one (cell, H, N) share a pytest-benchmark group. The calls are
those of ``fastrnn bench --stream`` (:mod:`fastrnn.bench.streaming`'s builders: an eval
module's stream fed x (N, H) float32; torch's cell with its default init under
``torch.no_grad()``, the state passed back in each call). Unlike ``fastrnn bench``, torch runs
in this process, and pytest-benchmark's own per-call cost is in every time; the chunk's time
per step (the kernels' share) is ``fastrnn bench --stream``'s alone.
"""
import contextlib

import numpy as np
import pytest

import fastrnn
from fastrnn.bench.streaming import build_fastrnn, build_torch

pytest.importorskip("pytest_benchmark")


def test_stream_step(benchmark, stream_case, impl):
    cell, H, N = stream_case
    benchmark.group = f"stream {cell} H={H} N={N}"
    benchmark.extra_info.update(cell=cell, H=H, I=H, N=N, threads=fastrnn.get_num_threads(),
                                kernel=fastrnn.functional.get_kernel())
    if impl == "fastrnn":
        stream, x, _ = build_fastrnn(cell, H, N, chunk_steps=1)
        step, no_grad = (lambda: stream(x)), contextlib.nullcontext()
    else:
        torch = pytest.importorskip("torch")
        torch.set_num_threads(fastrnn.get_num_threads())
        module, x, state = build_torch(cell, H, N)
        no_grad = torch.no_grad()

        def step():
            nonlocal state
            state = module(x, state)
            return state
    with no_grad:
        if benchmark.enabled:
            step()  # warm-up: first-call allocations out of the statistics
        result = benchmark(step)
    h = result[0] if isinstance(result, tuple) else result
    h = np.asarray(h.detach() if hasattr(h, "detach") else h)
    assert h.shape == (N, H) and np.isfinite(h).all()
