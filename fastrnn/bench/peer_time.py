"""A peer's times, measured in a process of its own that lives for the whole run.

torch's, ONNX Runtime's and XLA's thread pools busy-wait after their work and would take
cores from fastrnn's next round, and importing them (and compiling for JAX) is slow: so each
peer runs in one child, ``python -m fastrnn.bench.peer_time IMPL THREADS``, which the run
(:class:`PeerProcess`) asks for one thing at a time, a JSON object per line each way:

- ``{"build": [CELL, PASS, SIZE]}``: build the row's workload, run it once and compare its
  result with fastrnn's (:meth:`~fastrnn.bench.workloads.Workload.compare`); answers
  ``{"max_error": e}``, or ``{"skipped": why}`` (not installed, failed, or a wrong result);
- ``{"round": N}``: time one round of at least N calls
  (:func:`~fastrnn.bench.timing.time_round`), wait for its threads to stop spinning
  (:func:`~fastrnn.bench.timing.settle`), answer ``{"times_s": [...]}``.

The child ends when its stdin closes.
"""
import gc
import json
import os
import sys
import tempfile

from ..parallel import set_num_threads
from .child import start_child
from .sizes import parse_sizes
from .timing import settle, time_round
from .workloads import make_workload

__all__ = ["PeerProcess", "build_checked"]


class PeerProcess:
    """The run's side of a peer's child process: :meth:`build` a row, time :meth:`round` s."""

    def __init__(self, impl, threads):
        self.impl = impl
        self._stderr = tempfile.TemporaryFile("w+")  # a pipe could fill up and block the child
        self._proc = start_child("peer_time", [impl, threads], threads, stderr=self._stderr)

    def _ask(self, request):
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            self._proc.wait()
            self._stderr.seek(0)
            error = self._stderr.read().strip().splitlines()
            raise RuntimeError(f"{self.impl}'s process ended (status {self._proc.returncode}): "
                               f"{error[-1] if error else 'no error output'}")
        return json.loads(line)

    def build(self, cell, pass_, size):
        """Build ``cell``'s workload of (``size``, ``pass_``) in the child and check it
        against fastrnn's: ``{"max_error": e}`` or ``{"skipped": why}``."""
        try:
            return self._ask({"build": [cell, pass_, size.token]})
        except RuntimeError as e:
            return {"skipped": str(e)}

    def round(self, per_round):
        """Seconds of the calls of one round (see :func:`~fastrnn.bench.timing.time_round`)."""
        return self._ask({"round": per_round})["times_s"]

    def close(self):
        """End the child (it exits when its stdin closes)."""
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except OSError:
            pass
        self._stderr.close()


def build_checked(impl, cell, pass_, size):
    """``impl``'s workload of the row and its largest error against fastrnn's result on the
    same weights and data (AssertionError past CHECK_RTOL)."""
    expected = make_workload("fastrnn", pass_, size, cell=cell).call()
    work = make_workload(impl, pass_, size, cell=cell)
    return work, work.compare(work.call(), expected)


def _serve(impl, requests, answer):
    """The child's loop: one answer per request (see the module's docstring)."""
    work = None
    for line in requests:
        request = json.loads(line)
        if "build" in request:
            work = None
            gc.collect()  # free the previous row's arrays first
            cell, pass_, token = request["build"]
            try:
                work, max_error = build_checked(impl, cell, pass_, parse_sizes(token)[0])
                answer({"max_error": max_error})
            except ImportError as e:
                answer({"skipped": f"not installed ({e})"})
            except AssertionError as e:
                answer({"skipped": f"WRONG RESULT, not timed: {e}"})
        else:
            times = time_round(work, request["round"])
            settle()
            answer({"times_s": times})


def main(argv=None):
    """The child: ``IMPL THREADS``, then requests on stdin (see the module's docstring)."""
    impl, threads = argv if argv is not None else sys.argv[1:]
    threads = int(threads)
    # the answers go to the original stdout; anything a library prints goes to stderr
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    set_num_threads(threads)  # fastrnn's, for the result the peer is checked against
    if impl == "torch":
        import torch

        torch.set_num_threads(threads)
    elif impl == "jax":
        from .jax_peer import limit_cpus

        limit_cpus(threads)  # before jax is imported: XLA sizes its pool by the usable CPUs

    def answer(reply):
        replies.write(json.dumps(reply) + "\n")

    _serve(impl, sys.stdin, answer)


if __name__ == "__main__":
    main()
