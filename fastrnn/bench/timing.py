"""How a call is timed: warm-up, repeats within a time budget, alternating rounds, medians.

fastrnn is timed in this process and each peer in a process of its own
(:mod:`fastrnn.bench.peer_time`), in alternating rounds; the NumPy reference is timed in a
fresh process (:mod:`fastrnn.bench.reference_time`) with the same functions. After each
round the process that ran it waits for its threads to stop spinning (:func:`settle`).
"""
import contextlib
import gc
import statistics
import time

from .workloads import make_workload

__all__ = ["CELL_SECONDS", "MIN_CELL_SECONDS", "MAX_REPEATS", "ROUNDS", "PROBE_STEPS",
           "SETTLE_SECONDS", "estimate_seconds", "time_calls", "time_round", "settle",
           "measure_rounds", "summary", "blas_threads", "has_threadpoolctl"]

CELL_SECONDS = 1.0  # time after which a (row, implementation) stops repeating: time_calls
# fast calls repeat past `repeats` until this much is timed (at most MAX_REPEATS calls): a
# median of a few sub-millisecond calls still shows warm-up and the neighbours' noise
MIN_CELL_SECONDS = 0.2
MAX_REPEATS = 200
# fastrnn and its peers are timed in alternating rounds (order swapped each round), so that a
# change of the shared machine's load falls on all and the ratios of medians keep steady
ROUNDS = 3
PROBE_STEPS = 8  # time steps of the short run that estimates a long call's time
# the longest wait for a process's idle threads to stop busy-waiting after a round (OpenBLAS,
# OpenMP and the peers' pools spin on after work, on the cores the next round needs)
SETTLE_SECONDS = 1.0
_SETTLE_POLL = 0.01


def _time(call):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    result = call()
    return time.perf_counter() - t, result


def estimate_seconds(impl, pass_, size, steps=PROBE_STEPS, cell="rnn"):
    """Seconds one call would take, from the fastest of 3 runs over the first ``steps`` steps.

    Every implementation's time grows linearly with T; fixed costs make this an overestimate.
    """
    probe = make_workload(impl, pass_, size.with_steps(min(steps, size.T)), cell=cell)
    return min(_time(probe.call)[0] for _ in range(3)) * size.T / min(steps, size.T)


def time_calls(call, repeats, warmup=1, budget=CELL_SECONDS, min_seconds=MIN_CELL_SECONDS):
    """Seconds of at least ``repeats`` calls after ``warmup`` untimed ones, and the last result.

    Fast calls go on until the timed calls add up to ``min_seconds`` (at most MAX_REPEATS
    calls). Slow ones stop early once the timed calls add up to ``budget`` seconds and there
    are 3 of them (or they add up to 3 × ``budget``), so that slow sizes keep the run short.
    """
    for _ in range(warmup):
        _time(call)
    times = []
    while True:
        t, result = _time(call)
        times.append(t)
        total = sum(times)
        if len(times) >= repeats and (total >= min_seconds or len(times) >= MAX_REPEATS):
            break
        if total >= budget and (len(times) >= 3 or total >= 3 * budget):
            break
    return times, result


def time_round(work, per_round):
    """Seconds of one round of ``work`` (a Workload): a warm-up call, then at least
    ``per_round`` calls within a ROUNDS-th of a cell's budget; the last result checked."""
    times, result = time_calls(work.call, per_round, warmup=1, budget=CELL_SECONDS / ROUNDS,
                               min_seconds=MIN_CELL_SECONDS / ROUNDS)
    work.check(result)
    return times


def settle(max_seconds=SETTLE_SECONDS):
    """Sleep until this process's other threads stop using the CPU (at most ``max_seconds``).

    While the calling thread sleeps, the process's CPU time grows only by threads that spin:
    it returns after the first poll interval in which they used under a tenth of it."""
    deadline = time.perf_counter() + max_seconds
    while time.perf_counter() < deadline:
        cpu = time.process_time()
        time.sleep(_SETTLE_POLL)
        if time.process_time() - cpu < _SETTLE_POLL / 10:
            return


def summary(times):
    """The times (seconds) of one (row, implementation) as reported: ms, their median, count."""
    ms = [t * 1e3 for t in times]
    return {"times_ms": ms, "median_ms": statistics.median(ms), "repeats": len(ms)}


def has_threadpoolctl():
    """Whether threadpoolctl is installed (it limits the reference's BLAS threads)."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def blas_threads(threads):
    """Limit NumPy's BLAS (the reference's matmuls) to ``threads`` if threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def measure_rounds(impls, pass_, size, repeats, threads, cell="rnn", peers=None):
    """Times of the implementations ``impls``, in ROUNDS alternating rounds, as dicts.

    Each round times every implementation in turn (:func:`time_round`, at least
    ``repeats / ROUNDS`` calls), the order reversed from one round to the next. Those in
    ``peers`` (implementation -> a :class:`~fastrnn.bench.peer_time.PeerProcess` that has built
    this row) are timed in their process, the others in this one.
    """
    peers = peers or {}
    works = {impl: make_workload(impl, pass_, size, cell=cell) for impl in impls
             if impl not in peers}
    per_round = -(-repeats // ROUNDS)

    def one_round(impl):
        if impl in peers:
            return peers[impl].round(per_round)  # it settles before it answers
        t = time_round(works[impl], per_round)
        settle()
        return t

    times = {impl: [] for impl in impls}
    order = list(impls)
    with blas_threads(threads):
        for _ in range(ROUNDS):
            for impl in order:
                times[impl] += one_round(impl)
            order.reverse()
    works.clear()  # free the workloads' arrays before the next row is built
    gc.collect()
    return {impl: summary(t) for impl, t in times.items()}
