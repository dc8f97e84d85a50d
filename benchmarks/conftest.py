"""Which sizes and cells the benchmarks run on.

pyproject's pytest options include ``--benchmark-disable``: then every benchmark runs once, as
a smoke test, on tiny sizes. With ``--benchmark-enable`` they are timed on the full grid of
``fastrnn bench``. ``--bench-sizes`` (or the environment variable FASTRNN_BENCH_SIZES) picks
sizes explicitly, in ``fastrnn bench --sizes`` syntax: ``M1,M2-2L-bi,64x8x32x64``;
``--bench-cells`` (or FASTRNN_BENCH_CELLS) the cells, as ``fastrnn bench --cell``: ``lstm,gru``.
FASTRNN_MATMUL_PRECISION=bfloat16 benchmarks bfloat16 products, as ``fastrnn bench
--precision bfloat16``.

The streaming benchmarks (test_bench_stream.py) run on ``fastrnn bench --stream``'s hidden
sizes and batches when timed, on TINY_STREAM's when not; the cells as above.
"""
import os

import pytest

from fastrnn import bench

TINY_SIZES = "4x2x3x5,4x2x3x5-2L-bi"
TINY_STREAM = ((8,), (1, 2))  # hidden sizes, batches


def pytest_addoption(parser):
    parser.addoption("--bench-sizes", default=None, metavar="SIZES",
                     help="sizes to benchmark, as fastrnn bench --sizes (default: "
                          f"{','.join(bench.DEFAULT_SIZES)} with --benchmark-enable, else "
                          f"{TINY_SIZES}); also FASTRNN_BENCH_SIZES")
    parser.addoption("--bench-cells", default=None, metavar="CELLS",
                     help="cells to benchmark, as fastrnn bench --cell (default: "
                          f"{','.join(bench.CELLS)}); also FASTRNN_BENCH_CELLS")


def benchmarks_enabled(config):
    """pytest-benchmark's rule: timed unless --benchmark-disable without --benchmark-enable."""
    return not (config.getoption("benchmark_disable", False)
                and not config.getoption("benchmark_enable", False))


def _cells(config):
    text = (config.getoption("bench_cells") or os.environ.get("FASTRNN_BENCH_CELLS")
            or ",".join(bench.CELLS))
    try:
        return bench.parse_cells(text)
    except ValueError as e:
        raise pytest.UsageError(f"--bench-cells / FASTRNN_BENCH_CELLS: {e}") from None


def pytest_generate_tests(metafunc):
    if "stream_case" in metafunc.fixturenames:
        # one benchmark per (cell, H, N) and implementation, as fastrnn bench --stream's rows
        sizes, batches = ((bench.STREAM_SIZES, bench.STREAM_BATCHES)
                          if benchmarks_enabled(metafunc.config) else TINY_STREAM)
        cases = [(cell, H, N) for cell in _cells(metafunc.config) for H in sizes
                 for N in batches]
        metafunc.parametrize("stream_case", cases,
                             ids=[f"{cell}-H{H}-N{N}" for cell, H, N in cases])
        metafunc.parametrize("impl", ("fastrnn", "torch"))
    # One benchmark per (cell, size, pass) row and implementation, rows outermost so that the
    # implementations of a row sit together.
    if "case" not in metafunc.fixturenames:
        return
    text = (metafunc.config.getoption("bench_sizes") or os.environ.get("FASTRNN_BENCH_SIZES")
            or (",".join(bench.DEFAULT_SIZES) if benchmarks_enabled(metafunc.config)
                else TINY_SIZES))
    try:
        sizes = bench.parse_sizes(text)
    except ValueError as e:
        raise pytest.UsageError(f"--bench-sizes / FASTRNN_BENCH_SIZES: {e}") from None
    cells = _cells(metafunc.config)
    cases = [(cell, size, p) for cell in cells for size, p in bench.rows(sizes)]
    metafunc.parametrize("case", cases,
                         ids=[f"{cell}-{size.label}-{p}" for cell, size, p in cases])
    # with bfloat16 products: against fastrnn's float32 and torch's bf16
    from fastrnn.bench.workloads import BF16_IMPLEMENTATIONS, bf16

    metafunc.parametrize("impl", BF16_IMPLEMENTATIONS if bf16() else bench.IMPLEMENTATIONS)
