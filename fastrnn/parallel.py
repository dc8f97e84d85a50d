"""fastrnn's thread count: one rule, one place.

The default follows scikit-learn's rule: ``OMP_NUM_THREADS`` if set, else the number of
CPUs this process may use (affinity mask and cgroup CPU quota respected). No count exceeds
:func:`max_num_threads` (64 per usable CPU): beyond it OpenMP would only start threads that
wait for a core, each with its own stack, and a typo (``10**6``) would exhaust memory.
"""
import functools
import math
import numbers
import os

__all__ = ["get_num_threads", "set_num_threads", "default_num_threads", "max_num_threads"]

_THREADS_PER_CPU = 64

_num_threads = None


@functools.lru_cache(maxsize=1)
def _usable_cpus():
    """CPUs this process may use: affinity mask and cgroup quota (read once)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return min(cpus, limit) if limit else cpus


def _cgroup_cpu_limit():
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota) limit, or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def max_num_threads():
    """The largest thread count fastrnn accepts: 64 per usable CPU."""
    return _THREADS_PER_CPU * _usable_cpus()


def default_num_threads():
    """OMP_NUM_THREADS if set to a positive integer (at most :func:`max_num_threads`), else
    the usable CPU count."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), max_num_threads())
    return _usable_cpus()


def _check_num_threads(n):
    """``n`` as a thread count for :func:`set_num_threads`: a non-zero int of magnitude at
    most :func:`max_num_threads`; TypeError or ValueError otherwise."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_threads must be an int or None, got {type(n).__name__}")
    n, most = int(n), max_num_threads()
    if n == 0 or abs(n) > most:
        raise ValueError(f"num_threads must be a non-zero integer between -{most} and {most} "
                         f"(64 per usable CPU; negative counts back from the CPU count), "
                         f"got {n}")
    return n


def set_num_threads(n=None):
    """Set the number of OpenMP threads fastrnn's kernels use.

    Parameters
    ----------
    n : int or None
        A positive count; a negative one counts back from the CPU count (-1 = all CPUs,
        -2 = all but one, and at least 1); None restores the default
        (:func:`default_num_threads`). Results are bitwise identical for every thread count.

    Raises
    ------
    TypeError
        If ``n`` is not an int (bools and floats included).
    ValueError
        If ``n`` is 0 or its magnitude exceeds :func:`max_num_threads` (64 per usable CPU).
    """
    global _num_threads
    if n is None:
        _num_threads = None
        return
    n = _check_num_threads(n)
    _num_threads = n if n > 0 else max(1, default_num_threads() + 1 + n)


def get_num_threads():
    """The number of threads fastrnn's kernels use."""
    return default_num_threads() if _num_threads is None else _num_threads
