"""Peak memory of one fwd+bwd call, measured in a fresh process (Linux only).

``python -m fastrnn.bench.memory IMPL CELL SIZE THREADS`` is the child: it prints the peak RSS
growth of one call, as :data:`MEMORY_METHOD` describes.
"""
import gc
import json
import re
import subprocess
import sys

from ..parallel import set_num_threads
from .child import print_json, run_child
from .sizes import Size, parse_sizes
from .workloads import import_torch, make_workload

__all__ = ["MEMORY_METHOD", "peak_memory", "fwd_bwd_memory"]

MEMORY_METHOD = (
    "peak RSS growth over one fwd+bwd call in a fresh process, after building the model and "
    "inputs and a warm-up call on a tiny size: VmHWM after the call minus VmRSS before it, "
    "with the high-water mark reset through /proc/self/clear_refs; parameter gradients exist "
    "before the call for both implementations, so the number is the activations, caches, "
    "temporaries, outputs and input gradient of the pass")


def peak_memory(impl, size, threads, cell="rnn"):
    """Peak memory (bytes) of one fwd+bwd call of ``impl`` on ``size`` for ``cell``, or None
    if unmeasurable.

    Measured in a subprocess (:func:`fwd_bwd_memory`), as described by :data:`MEMORY_METHOD`.
    """
    try:
        proc = run_child("memory", [impl, cell, size.token, threads], threads, timeout=600,
                         check=True)
        return json.loads(proc.stdout)["bytes"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def fwd_bwd_memory(impl, size, threads, cell="rnn"):
    """In a fresh process: the peak RSS growth (bytes) of one fwd+bwd (MEMORY_METHOD)."""
    set_num_threads(threads)
    if impl == "torch":
        import_torch().set_num_threads(threads)
    tiny = Size("tiny", 4, 2, 3, 5, size.layers, size.bidirectional)
    make_workload(impl, "fwd+bwd", tiny, cell=cell).call()  # loads what a first call loads
    work = make_workload(impl, "fwd+bwd", size, cell=cell)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _proc_status_kb("VmRSS")
    result = work.call()
    peak = _proc_status_kb("VmHWM")
    work.check(result)
    return (peak - before) * 1024


def main(argv=None):
    """The child: ``IMPL CELL SIZE THREADS`` -> {"bytes": :func:`fwd_bwd_memory`} as JSON."""
    impl, cell, token, threads = argv if argv is not None else sys.argv[1:]
    print_json({"bytes": fwd_bwd_memory(impl, parse_sizes(token)[0], int(threads), cell)})


if __name__ == "__main__":
    main()
