"""Measurements that need a process of their own: ``python -m fastrnn.bench.<module> ARGS...``.

Four modules measure in a child process, each holding both halves side by side: the
function the run calls and the function the child runs. Three run once (:func:`run_child`;
their ``main`` prints one JSON object):

- :mod:`~fastrnn.bench.machine`: the matmul peak (OpenBLAS reads its environment at load);
- :mod:`~fastrnn.bench.memory`: peak memory of one call (the process's high-water mark);
- :mod:`~fastrnn.bench.reference_time`: the NumPy reference (its BLAS threads would spin on).

One lives for the whole run (:func:`start_child`; it answers a JSON line per JSON line):

- :mod:`~fastrnn.bench.peer_time`: torch, ONNX Runtime, JAX, a process each (their thread
  pools would spin on, and each loads its own libraries once).

``fastrnn.bench`` imports its modules lazily, so that running one of them with ``-m`` does
not import it twice.
"""
import json
import os
import subprocess
import sys

__all__ = ["child_env", "run_child", "start_child", "print_json"]

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


def start_child(module, args, threads, stderr=None):
    """The running ``python -m fastrnn.bench.<module> args...`` (:func:`child_env`), its stdin
    and stdout text pipes, line-buffered; ``stderr`` a file or None (inherited)."""
    return subprocess.Popen([sys.executable, "-m", f"fastrnn.bench.{module}", *map(str, args)],
                            env=child_env(threads), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)


def print_json(result):
    """A child's answer: one JSON object on stdout."""
    print(json.dumps(result))
