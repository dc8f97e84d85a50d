"""The NumPy reference's time, measured in a fresh process.

In the process that times fastrnn and torch next, NumPy's OpenBLAS threads would busy-wait
for 0.1-0.3 s after the reference's last matmul and take a core from whatever is timed then,
so the reference runs in a child of its own: ``python -m fastrnn.bench.reference_time PASS
SIZE MAX_SECONDS THREADS`` prints one call's time, or why it was skipped.
"""
import json
import sys

from .child import print_json, run_child
from .sizes import parse_sizes
from .timing import blas_threads, estimate_seconds, summary, time_calls
from .workloads import make_workload

__all__ = ["measure_reference", "time_reference"]


def measure_reference(pass_, size, max_reference_seconds, threads):
    """The reference's time on ``size`` (see :func:`time_reference`), measured in a
    subprocess; RuntimeError with the child's error output if it fails."""
    proc = run_child("reference_time", [pass_, size.token, repr(float(max_reference_seconds)),
                                        threads], threads)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference on {size.label} {pass_} failed in its subprocess:\n"
                           f"{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def time_reference(pass_, size, max_reference_seconds, threads):
    """In a fresh process: one call of the reference (slow by design), after a short run that
    estimates it and warms up BLAS; skipped where the estimate is over
    ``max_reference_seconds``."""
    with blas_threads(threads):
        est = estimate_seconds("reference", pass_, size)
        if est > max_reference_seconds:
            return {"skipped": f"estimated {est:.1f} s per call > {max_reference_seconds:g} s",
                    "estimated_s": est}
        work = make_workload("reference", pass_, size)
        times, out = time_calls(work.call, 1, warmup=0, min_seconds=0)
        work.check(out)
        return summary(times)


def main(argv=None):
    """The child: ``PASS SIZE MAX_SECONDS THREADS`` -> :func:`time_reference` as JSON."""
    pass_, token, max_seconds, threads = argv if argv is not None else sys.argv[1:]
    print_json(time_reference(pass_, parse_sizes(token)[0], float(max_seconds), int(threads)))


if __name__ == "__main__":
    main()
