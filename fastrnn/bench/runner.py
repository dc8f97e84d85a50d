"""A whole run: every (cell, size, pass) row for every implementation, and the record of how.

:func:`run` returns everything as one dict (the ``--json`` file); :mod:`fastrnn.bench.report`
turns it into the table. fastrnn is timed in this process; each peer but the reference in a
process of its own for the whole run (:class:`~fastrnn.bench.peer_time.PeerProcess`), the
reference in a fresh one per row (:mod:`~fastrnn.bench.reference_time`). Every peer's result
is compared with fastrnn's once per row before it is timed.
"""
from .._version import __version__
from .machine import machine_info, matmul_peak
from .memory import MEMORY_METHOD, peak_memory
from .reference_time import measure_reference
from .peer_time import PeerProcess
from .sizes import CELLS, PASSES, flops, rows
from .timing import CELL_SECONDS, ROUNDS, SETTLE_SECONDS, has_threadpoolctl, measure_rounds
from .workloads import BF16_IMPLEMENTATIONS, IMPLEMENTATIONS, available, bf16, check_rtol, missing

__all__ = ["run"]


def _unavailable(impl, pass_):
    """Why ``impl`` cannot run ``pass_`` here, or None."""
    if available(impl, pass_):
        return None
    if bf16() and impl not in BF16_IMPLEMENTATIONS:
        return "float32 only"
    if impl == "torch" or missing(impl):
        return f"{missing(impl) or 'torch'} is not installed"
    return "inference only: no backward" if impl == "onnxruntime" else "not implemented"


def _measure_row(cell, size, pass_, impls, repeats, threads, max_reference_seconds, peers):
    """{impl: result dict} of one row; ``peers`` holds (and gets) the peers' processes."""
    measured = {impl: {"skipped": why} for impl in impls
                if (why := _unavailable(impl, pass_)) is not None}
    if "reference" in impls and "reference" not in measured:
        measured["reference"] = measure_reference(pass_, size, max_reference_seconds, threads,
                                                  cell)
    timed = {}
    for impl in impls[1:]:
        if impl not in measured:
            if impl not in peers:
                peers[impl] = PeerProcess(impl, threads)
            measured[impl] = peers[impl].build(cell, pass_, size)
            if "skipped" not in measured[impl]:
                timed[impl] = peers[impl]
    for impl, times in measure_rounds([impls[0], *timed], pass_, size, repeats, threads, cell,
                                      timed).items():
        measured.setdefault(impl, {}).update(times)
    return {impl: measured[impl] for impl in impls}


def run(sizes, threads, repeats=5, impls=IMPLEMENTATIONS, memory=False, max_reference_seconds=3.0,
        on_row=None, cells=("rnn",)):
    """Time every (cell, size, pass) row for every implementation; return everything as a dict.

    Parameters
    ----------
    sizes : list of Size
    threads : int
        fastrnn's and every peer's thread count (the caller sets fastrnn's), and the matmul
        peak's.
    repeats : int
        Timed calls per (row, implementation), in ROUNDS alternating rounds of fastrnn and
        the peers, each after a warm-up call; fewer for slow calls (see
        :func:`~fastrnn.bench.timing.time_calls`). The reference gets one call.
    impls : sequence of str
        fastrnn first, then the peers (IMPLEMENTATIONS' names); one that cannot run a row
        gets ``{"skipped": why}`` there.
    memory : bool
        Also measure the peak memory of fwd+bwd for fastrnn and torch (a subprocess each, per
        cell).
    max_reference_seconds : float
        Skip the reference where one call is estimated to take longer.
    on_row : callable(row dict, results dict), optional
        Called as each row completes (to print it).
    cells : sequence of str
        CELLS' names, the outer loop of the rows.
    """
    results = dict(
        fastrnn=__version__, machine=machine_info(threads), matmul_peak=matmul_peak(threads),
        settings=dict(dtype="float32", precision="bfloat16" if bf16() else "float32",
                      threads=threads, repeats=repeats, rounds=ROUNDS, warmup=1,
                      cell_seconds=CELL_SECONDS, settle_seconds=SETTLE_SECONDS,
                      reference_repeats=1,
                      reference_blas_threads=(threads if has_threadpoolctl()
                                              else "library default (no threadpoolctl)"),
                      max_reference_seconds=max_reference_seconds, implementations=list(impls),
                      cells=list(cells), check_rtol=check_rtol(),
                      sizes=[s.label for s in sizes], statistic="median",
                      passes={p: d for p, (_, d) in PASSES.items()}),
        rows=[],
    )
    if memory:
        results["memory_method"] = MEMORY_METHOD
    peak = results["matmul_peak"]["gflops"]
    peers = {}
    try:
        for cell in cells:
            for size, pass_ in rows(sizes):
                row = _row(cell, size, pass_)
                row["results"] = _measure_row(cell, size, pass_, list(impls), repeats, threads,
                                              max_reference_seconds, peers)
                _rates(row, impls[0], peak)
                if memory and pass_ == "fwd+bwd":
                    row["peak_memory_bytes"] = {impl: peak_memory(impl, size, threads, cell)
                                                for impl in ("fastrnn", "torch") if impl in impls}
                results["rows"].append(row)
                if on_row is not None:
                    on_row(row, results)
    finally:
        for proc in peers.values():
            proc.close()
    return results


def _row(cell, size, pass_):
    return {"cell": cell, "gates": CELLS[cell], "size": size.label, "name": size.name,
            "T": size.T, "N": size.N, "I": size.I, "H": size.H, "layers": size.layers,
            "bidirectional": size.bidirectional, "pass": pass_,
            "flops": flops(size, pass_, cell), "results": {}}


def _rates(row, ours_name, peak):
    """GFLOP/s and % of the peak of each result, fastrnn's speedup over each peer and the
    fastest peer's."""
    for r in row["results"].values():
        if "median_ms" in r:
            r["gflops"] = row["flops"] / (r["median_ms"] * 1e6)
            r["pct_peak"] = 100 * r["gflops"] / peak if peak else None
    ours = row["results"][ours_name].get("median_ms")
    row["pct_peak"] = row["results"][ours_name].get("pct_peak")
    row["speedup"] = {impl: (r["median_ms"] / ours if ours and "median_ms" in r else None)
                      for impl, r in row["results"].items() if impl != ours_name}
    timed = {impl: s for impl, s in row["speedup"].items() if s is not None}
    best = min(timed, key=timed.get) if timed else None
    row["best_peer"] = {"impl": best, "speedup": timed[best]} if best else None
