"""fastrnn's RNN, LSTM and GRU vs its NumPy reference, torch, ONNX Runtime and JAX, forward
and forward + backward.

The implementations of one (cell, size, pass) share a pytest-benchmark group, so the report
compares them side by side. The workloads are fastrnn.bench's (same weights, inputs and output
gradients as ``fastrnn bench``); see conftest.py for how sizes and cells are chosen. Unlike
``fastrnn bench``, every implementation runs in this one process (the peers' thread pools may
spin on into the next benchmark), and JAX uses the usable CPUs whatever fastrnn's thread count.
"""
import time

import pytest

import fastrnn
from fastrnn import bench

pytest.importorskip("pytest_benchmark")

REFERENCE_SKIP_SECONDS = 10  # the reference is skipped where one call would take longer
ONE_ROUND_SECONDS = 1  # ... and timed with a single round where one call takes longer than this
# NumPy's OpenBLAS threads busy-wait 0.1-0.3 s after the reference's last matmul (measured on
# 2 cores), taking a core from the benchmark after it: wait for them to sleep
BLAS_SPIN_SECONDS = 0.5


def test_rnn(benchmark, case, impl):
    cell, size, pass_ = case
    if not bench.available(impl, pass_):
        pytest.skip(f"{impl} {pass_}: " + (f"{bench.missing(impl)} is not installed"
                                          if bench.missing(impl) else "not implemented"))
    if impl == "torch":
        pytest.importorskip("torch").set_num_threads(fastrnn.get_num_threads())
    benchmark.group = f"{cell} {size.label} ({size.shape}) {pass_}"
    benchmark.extra_info.update(cell=cell, size=size.label, T=size.T, N=size.N, I=size.I,
                                H=size.H, layers=size.layers, bidirectional=size.bidirectional,
                                flops=bench.flops(size, pass_, cell),
                                threads=fastrnn.get_num_threads(),
                                kernel=fastrnn.functional.get_kernel())
    one_round = False
    if impl == "reference" and benchmark.enabled:
        seconds = bench.estimate_seconds(impl, pass_, size, cell=cell)
        if seconds > REFERENCE_SKIP_SECONDS:
            pytest.skip(f"reference {pass_} on {size.label}: estimated {seconds:.0f} s per call "
                        f"(> {REFERENCE_SKIP_SECONDS} s)")
        one_round = seconds > ONE_ROUND_SECONDS
    work = bench.make_workload(impl, pass_, size, cell=cell)
    if benchmark.enabled and not one_round:
        work.call()  # warm-up: keeps first-call costs (torch's lazy set-up) out of the statistics

    result = (benchmark.pedantic(work.call, rounds=1, iterations=1) if one_round
              else benchmark(work.call))

    work.check(result)  # shapes and finiteness; the tests check the values
    if impl == "reference" and benchmark.enabled:
        time.sleep(BLAS_SPIN_SECONDS)
    if benchmark.enabled and benchmark.stats is not None:
        benchmark.extra_info["gflops"] = (benchmark.extra_info["flops"]
                                          / benchmark.stats.stats.median / 1e9)
