"""fastrnn's thread count: one rule, one place.

The default follows scikit-learn's rule: ``OMP_NUM_THREADS`` if set, else the number of
CPUs this process may use (affinity mask and cgroup CPU quota respected).
"""
import functools
import math
import numbers
import os

__all__ = ["get_num_threads", "set_num_threads", "default_num_threads"]

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


def default_num_threads():
    """OMP_NUM_THREADS if set to a positive integer, else the usable CPU count."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return _usable_cpus()


def set_num_threads(n=None):
    """Set the number of OpenMP threads fastrnn's kernels use.

    Parameters
    ----------
    n : int or None
        A positive count; a negative one counts back from the CPU count (-1 = all CPUs,
        -2 = all but one); None restores the default (:func:`default_num_threads`).
        Results are bitwise identical for every thread count.
    """
    global _num_threads
    if n is None:
        _num_threads = None
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_threads must be an int or None, got {type(n).__name__}")
    if n == 0:
        raise ValueError("num_threads must be a positive or negative integer, got 0")
    _num_threads = int(n) if n > 0 else max(1, default_num_threads() + 1 + int(n))


def get_num_threads():
    """The number of threads fastrnn's kernels use."""
    return default_num_threads() if _num_threads is None else _num_threads
