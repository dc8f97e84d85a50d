"""The machine a run measured: CPU, thread counts, build, versions, and its matmul peak.

The build and versions come from :func:`fastrnn.config.config` and the usable CPUs from
:mod:`fastrnn.parallel`, the numbers ``fastrnn info`` and the default thread count use.

``python -m fastrnn.bench.machine N REPEATS`` is the matmul peak's child process: it prints
the seconds of REPEATS N×N float32 matmuls and the BLAS libraries in use.
"""
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

from ..config import config
from ..parallel import _usable_cpus
from .child import print_json, run_child
from .workloads import import_torch

__all__ = ["PEAK_N", "PEAK_ENV_UNSET", "machine_info", "matmul_peak", "matmul_times"]

PEAK_N = 2048  # matrix size of the matmul peak
PEAK_ENV_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _cpuinfo_field(name):
    """The first ``name : value`` of /proc/cpuinfo, or None (no such file or field)."""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(rf"^{name}\s*:\s*(.+)$", f.read(), re.M)
    except OSError:
        return None
    return m.group(1).strip() if m else None


def _cpu_model():
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _cpu_generation():
    """The CPU's family and model from /proc/cpuinfo ('family 25 model 17'), or None.

    A model name such as "AMD EPYC" covers generations whose vector units differ (Zen 4
    runs a 512-bit FMA at half Zen 5's rate), and the speedups with them."""
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model")
    return f"family {family} model {model}" if family and model else None


def _physical_cores():
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            blocks = f.read().strip().split("\n\n")
    except OSError:
        return None
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores) or None


def machine_info(threads):
    """CPU, thread counts, kernel build and versions, for the record."""
    build, torch = config(), import_torch()
    return dict(
        cpu_model=_cpu_model(), cpu_generation=_cpu_generation(),
        physical_cores=_physical_cores(), logical_cpus=os.cpu_count(), usable_cpus=_usable_cpus(),
        threads=threads, kernel=build["kernel_selected"],
        available_kernels=list(build["kernels_supported"]), openmp=build["openmp"],
        platform=build["platform"], python=build["python"], fastrnn=build["fastrnn"],
        numpy=build["numpy"], torch=torch.__version__ if torch else None,
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        blas_env={k: os.environ.get(k) for k in PEAK_ENV_UNSET + ("OPENBLAS_NUM_THREADS",
                                                                  "OMP_NUM_THREADS")},
    )


def matmul_peak(threads, n=PEAK_N, repeats=5, attempts=3):
    """GFLOP/s of an n×n float32 NumPy matmul: the machine's floating-point peak, measured.

    Runs in a subprocess (:func:`matmul_times`) without OPENBLAS_CORETYPE and
    OPENBLAS_L2_SIZE, which OpenBLAS reads when it loads (this environment sets them to force
    its AVX2 kernels), with ``threads`` BLAS threads: ``attempts`` fresh processes, the best
    of their medians (a shared host's slow spell of a second or two halves a single reading,
    and the peak is what the machine can do). Returns a dict; ``gflops`` is None (and
    ``error`` says why) on failure; ``attempts_gflops`` holds every reading.
    """
    info = dict(n=n, dtype="float32", threads=threads, unset=list(PEAK_ENV_UNSET),
                library="NumPy/OpenBLAS", gflops=None, attempts_gflops=[])
    for _ in range(attempts):
        try:
            proc = run_child("machine", [n, repeats], threads, unset=PEAK_ENV_UNSET,
                             timeout=300, check=True)
            reading = json.loads(proc.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            detail = getattr(e, "stderr", None) or str(e)
            info["error"] = detail.strip().splitlines()[-1] if detail.strip() else repr(e)
            continue
        gflops = 2 * n ** 3 / statistics.median(reading["times_s"]) / 1e9
        info["attempts_gflops"].append(gflops)
        if info["gflops"] is None or gflops > info["gflops"]:
            info.update(reading, gflops=gflops)
    if info["gflops"] is not None:
        info.pop("error", None)
    return info


def matmul_times(n, repeats):
    """In the peak's fresh process: seconds of ``repeats`` n×n float32 matmuls after a
    warm-up one, and the BLAS libraries threadpoolctl sees (None without it)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up: starts the BLAS threads
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t)
    try:
        from threadpoolctl import threadpool_info
        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        blas = None
    return {"times_s": times, "blas": blas}


def main(argv=None):
    """The peak's child: ``N REPEATS`` -> :func:`matmul_times` as JSON."""
    n, repeats = argv if argv is not None else sys.argv[1:]
    print_json(matmul_times(int(n), int(repeats)))


if __name__ == "__main__":
    main()
