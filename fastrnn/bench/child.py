"""Measurements that need a fresh process: ``python -m fastrnn.bench.<module> ARGS...``.

Three modules measure in a child process, each holding both halves side by side: the
function the run calls and the function the child runs (its ``main`` prints one JSON object):

- :mod:`~fastrnn.bench.machine`: the matmul peak (OpenBLAS reads its environment at load);
- :mod:`~fastrnn.bench.memory`: peak memory of one call (the process's high-water mark);
- :mod:`~fastrnn.bench.reference_time`: the NumPy reference (its BLAS threads would spin on).

``fastrnn.bench`` imports its modules lazily, so that running one of them with ``-m`` does
not import it twice.
"""
import json
import os
import subprocess
import sys

__all__ = ["child_env", "run_child", "print_json"]

# the directory that holds this fastrnn package, so that a child imports the same one
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(threads, unset=()):
    """The environment of a measuring subprocess: this fastrnn importable, ``threads`` threads,
    the variables ``unset`` removed."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_child(module, args, threads, unset=(), timeout=None, check=False):
    """The finished ``python -m fastrnn.bench.<module> args...`` (stdout and stderr as text),
    run with :func:`child_env`; ``timeout`` and ``check`` as for :func:`subprocess.run`."""
    return subprocess.run([sys.executable, "-m", f"fastrnn.bench.{module}", *map(str, args)],
                          env=child_env(threads, unset), capture_output=True, text=True,
                          timeout=timeout, check=check)


def print_json(result):
    """A child's answer: one JSON object on stdout."""
    print(json.dumps(result))
