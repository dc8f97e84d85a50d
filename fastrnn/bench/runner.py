"""A whole run: every (size, pass) row for every implementation, and the record of how.

:func:`run` returns everything as one dict (the ``--json`` file); :mod:`fastrnn.bench.report`
turns it into the table.
"""
from .._version import __version__
from .machine import machine_info, matmul_peak
from .memory import MEMORY_METHOD, peak_memory
from .reference_time import measure_reference
from .sizes import PASSES, flops, rows
from .timing import CELL_SECONDS, ROUNDS, has_threadpoolctl, measure_rounds
from .workloads import IMPLEMENTATIONS, available

__all__ = ["run"]


def run(sizes, threads, repeats=5, impls=IMPLEMENTATIONS, memory=False, max_reference_seconds=3.0,
        on_row=None):
    """Time every (size, pass) row for every implementation; return everything as a dict.

    Parameters
    ----------
    sizes : list of Size
    threads : int
        fastrnn's and torch's thread count (the caller sets them), and the matmul peak's.
    repeats : int
        Timed calls per (row, implementation), in ROUNDS alternating rounds of fastrnn and
        torch, each after a warm-up call; fewer for slow calls (see
        :func:`~fastrnn.bench.timing.time_calls`). The reference gets one call.
    memory : bool
        Also measure the peak memory of fwd+bwd for fastrnn and torch (a subprocess each).
    max_reference_seconds : float
        Skip the reference where one call is estimated to take longer.
    on_row : callable(row dict, results dict), optional
        Called as each row completes (to print it).
    """
    results = dict(
        fastrnn=__version__, machine=machine_info(threads), matmul_peak=matmul_peak(threads),
        settings=dict(dtype="float32", threads=threads, repeats=repeats, rounds=ROUNDS, warmup=1,
                      cell_seconds=CELL_SECONDS, reference_repeats=1,
                      reference_blas_threads=(threads if has_threadpoolctl()
                                              else "library default (no threadpoolctl)"),
                      max_reference_seconds=max_reference_seconds, implementations=list(impls),
                      sizes=[s.label for s in sizes], statistic="median",
                      passes={p: d for p, (_, d) in PASSES.items()}),
        rows=[],
    )
    if memory:
        results["memory_method"] = MEMORY_METHOD
    peak = results["matmul_peak"]["gflops"]
    for size, pass_ in rows(sizes):
        row = {"size": size.label, "name": size.name, "T": size.T, "N": size.N, "I": size.I,
               "H": size.H, "layers": size.layers, "bidirectional": size.bidirectional,
               "pass": pass_, "flops": flops(size, pass_), "results": {}}
        measured = {}
        for impl in impls:
            if not available(impl, pass_):
                measured[impl] = {"skipped": "torch is not installed" if impl == "torch"
                                  else "not implemented"}
        if "reference" in impls and "reference" not in measured:
            measured["reference"] = measure_reference(pass_, size, max_reference_seconds,
                                                      threads)
        measured.update(measure_rounds([impl for impl in impls if impl not in measured],
                                       pass_, size, repeats, threads))
        row["results"] = {impl: measured[impl] for impl in impls}
        for r in row["results"].values():
            if "median_ms" in r:
                r["gflops"] = row["flops"] / (r["median_ms"] * 1e6)
                r["pct_peak"] = 100 * r["gflops"] / peak if peak else None
        ours = row["results"][impls[0]].get("median_ms")
        row["pct_peak"] = row["results"][impls[0]].get("pct_peak")
        row["speedup"] = {impl: (r["median_ms"] / ours if ours and "median_ms" in r else None)
                          for impl, r in row["results"].items() if impl != impls[0]}
        if memory and pass_ == "fwd+bwd":
            row["peak_memory_bytes"] = {impl: peak_memory(impl, size, threads)
                                        for impl in ("fastrnn", "torch") if impl in impls}
        results["rows"].append(row)
        if on_row is not None:
            on_row(row, results)
    return results
