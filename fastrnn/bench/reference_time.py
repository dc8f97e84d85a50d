"""The NumPy reference's time, measured in a fresh process.

In the process that times fastrnn next, NumPy's OpenBLAS threads would busy-wait
for 0.1-0.3 s after the reference's last matmul and take a core from whatever is timed then,
so the reference runs in a child of its own: ``python -m fastrnn.bench.reference_time CELL
PASS SIZE MAX_SECONDS THREADS`` prints one call's time and its largest error against
fastrnn's result, or why it was skipped.
"""
import json
import sys

from .child import print_json, run_child
from .sizes import parse_sizes
from .peer_time import build_checked
from .timing import blas_threads, estimate_seconds, summary, time_calls

__all__ = ["measure_reference", "time_reference"]


def measure_reference(pass_, size, max_reference_seconds, threads, cell="rnn"):
    """The reference's time on ``size`` (see :func:`time_reference`), measured in a
    subprocess; RuntimeError with the child's error output if it fails."""
    proc = run_child("reference_time", [cell, pass_, size.token,
                                        repr(float(max_reference_seconds)), threads], threads)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference on {size.label} {pass_} failed in its subprocess:\n"
                           f"{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def time_reference(pass_, size, max_reference_seconds, threads, cell="rnn"):
    """In a fresh process: one call of the reference (slow by design), after a short run that
    estimates it and warms up BLAS; skipped where the estimate is over
    ``max_reference_seconds``. The call is checked against fastrnn's result (``max_error``):
    the check's own call also warms up what the timed one uses."""
    with blas_threads(threads):
        est = estimate_seconds("reference", pass_, size, cell=cell)
        if est > max_reference_seconds:
            return {"skipped": f"estimated {est:.1f} s per call > {max_reference_seconds:g} s",
                    "estimated_s": est}
        try:
            work, max_error = build_checked("reference", cell, pass_, size)
        except AssertionError as e:
            return {"skipped": f"WRONG RESULT, not timed: {e}"}
        times, out = time_calls(work.call, 1, warmup=0, min_seconds=0)
        work.check(out)
        return dict(summary(times), max_error=max_error)


def main(argv=None):
    """The child: ``CELL PASS SIZE MAX_SECONDS THREADS`` -> :func:`time_reference` as JSON."""
    cell, pass_, token, max_seconds, threads = argv if argv is not None else sys.argv[1:]
    print_json(time_reference(pass_, parse_sizes(token)[0], float(max_seconds), int(threads),
                              cell))


if __name__ == "__main__":
    main()
