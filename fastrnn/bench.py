"""Benchmarks: fastrnn against its NumPy reference and torch.nn.RNN on a grid of sizes.

``fastrnn bench`` (:func:`command`) prints the comparison as a table; the pytest-benchmark
suite in ``benchmarks/`` times the same workloads. Both build them with :func:`make_workload`,
so a row of the table and a benchmark of the suite run the same code on the same weights.

The grid (seq_len T × batch N × input I × hidden H, float32):

====  ===================  ==========================================
S     512 × 1 × 64 × 128   inference latency: forward only, eval mode
M1    50 × 32 × 64 × 128
M2    100 × 64 × 128 × 256
L     200 × 16 × 256 × 512
XL    100 × 128 × 512 × 1024
====  ===================  ==========================================

A size is written ``NAME`` or ``TxNxIxH``, optionally followed by ``-<k>L`` (layers) and
``-bi`` (bidirectional): ``M2-2L-bi``, ``64x8x32x64-bi``.

FLOPs of one layer and direction: 2·T·N·(I_layer·H + H·H), where I_layer is I for the first
layer and D·H above it; forward + backward counts 3× the forward.
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np

from . import __version__, functional, reference
from .parallel import get_num_threads, set_num_threads
from .rnn import RNN

__all__ = ["Size", "GRID", "DEFAULT_SIZES", "PASSES", "IMPLEMENTATIONS", "parse_sizes", "rows",
           "forward_flops", "flops", "make_workload", "estimate_seconds", "matmul_peak",
           "peak_memory", "run", "format_table", "plot_speedups", "add_arguments", "command"]

# name -> (T, N, I, H, passes)
GRID = {
    "S": (512, 1, 64, 128, ("fwd",)),  # inference latency: batch 1, long sequence
    "M1": (50, 32, 64, 128, ("fwd", "fwd+bwd")),
    "M2": (100, 64, 128, 256, ("fwd", "fwd+bwd")),
    "L": (200, 16, 256, 512, ("fwd", "fwd+bwd")),
    "XL": (100, 128, 512, 1024, ("fwd", "fwd+bwd")),
}
DEFAULT_SIZES = ("S", "M1", "M2", "L", "XL", "M2-2L-bi")

# pass -> (FLOPs as a multiple of one forward, what is timed). Issue 5 adds "train-step"
# (forward + backward + Adam of a small torch model, fastrnn.torch.RNN vs torch.nn.RNN):
# one entry here and its builders in _BUILDERS.
PASSES = {
    "fwd": (1, "forward only, eval mode (torch: inference_mode)"),
    "fwd+bwd": (3, "forward in training mode + BPTT: gradients of the input and every parameter"),
}
# the first is the one the others are compared to
IMPLEMENTATIONS = ("fastrnn", "reference", "torch")

DTYPE = np.float32
CELL_SECONDS = 1.0  # time after which a (row, implementation) stops repeating: time_calls
# fast calls repeat past `repeats` until this much is timed (at most MAX_REPEATS calls): a
# median of a few sub-millisecond calls still shows warm-up and the neighbours' noise
MIN_CELL_SECONDS = 0.2
MAX_REPEATS = 200
# fastrnn and torch are timed in alternating rounds (order swapped each round), so that a
# change of the shared machine's load falls on both and the ratio of medians keeps steady
ROUNDS = 3
PROBE_STEPS = 8  # time steps of the short run that estimates a long call's time
PEAK_N = 2048  # matrix size of the matmul peak
PEAK_ENV_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MEMORY_METHOD = (
    "peak RSS growth over one fwd+bwd call in a fresh process, after building the model and "
    "inputs and a warm-up call on a tiny size: VmHWM after the call minus VmRSS before it, "
    "with the high-water mark reset through /proc/self/clear_refs; parameter gradients exist "
    "before the call for both implementations, so the number is the activations, caches, "
    "temporaries, outputs and input gradient of the pass")


# sizes -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Size:
    """One workload: its name (a GRID key or 'TxNxIxH'), T, N, I, H, layers, directions and
    the passes timed on it."""

    name: str
    T: int
    N: int
    I: int  # noqa: E741 (the input size, as in the issue's notation)
    H: int
    layers: int = 1
    bidirectional: bool = False
    passes: tuple = ("fwd", "fwd+bwd")

    @property
    def shape(self):
        """'T×N×I×H'."""
        return f"{self.T}×{self.N}×{self.I}×{self.H}"

    @property
    def suffix(self):
        """'-2L-bi', '-bi', '-3L' or ''."""
        layers = f"-{self.layers}L" if self.layers != 1 else ""
        return layers + ("-bi" if self.bidirectional else "")

    @property
    def label(self):
        """The name (or TxNxIxH) with its layer and direction suffixes: 'M2-2L-bi'."""
        return self.name + self.suffix

    @property
    def token(self):
        """A string :func:`parse_sizes` reads back to this size (passes aside)."""
        return f"{self.T}x{self.N}x{self.I}x{self.H}{self.suffix}"

    def with_steps(self, T):
        """The same size over T time steps."""
        return dataclasses.replace(self, T=T)


_TOKEN = re.compile(r"^(?P<base>[A-Za-z]\w*|\d+x\d+x\d+x\d+)(?:-(?P<layers>\d+)L)?(?P<bi>-bi)?$")


def parse_sizes(text, layers=1, bidirectional=False):
    """Sizes from a comma-separated list of names and TxNxIxH tuples.

    ``layers`` and ``bidirectional`` apply where a token has no ``-<k>L`` or ``-bi`` suffix of
    its own. Duplicates are dropped. Raises ValueError naming the bad token.
    """
    sizes = []
    for token in (t.strip() for t in text.split(",")):
        m = _TOKEN.match(token)
        if m is None or (m["base"][0].isalpha() and m["base"].upper() not in GRID):
            raise ValueError(f"unknown size {token!r}: expected one of {', '.join(GRID)} or "
                             "TxNxIxH (e.g. 64x8x32x64), optionally followed by -<k>L and -bi")
        base = m["base"]
        if base[0].isalpha():
            name = base.upper()
            T, N, I, H, passes = GRID[name]
        else:
            name = base
            T, N, I, H = (int(v) for v in base.split("x"))
            passes = ("fwd", "fwd+bwd")
        size = Size(name, T, N, I, H, int(m["layers"]) if m["layers"] else layers,
                    bool(m["bi"]) or bidirectional, passes)
        if min(size.T, size.N, size.I, size.H, size.layers) < 1:
            raise ValueError(f"size {token!r}: T, N, I, H and layers must be positive")
        if size not in sizes:
            sizes.append(size)
    return sizes


def rows(sizes):
    """The (size, pass) rows of a table over ``sizes``, in order."""
    return [(size, p) for size in sizes for p in size.passes]


def forward_flops(size):
    """FLOPs of one forward pass: Σ over layers and directions of 2·T·N·(I_layer·H + H·H)."""
    D = 2 if size.bidirectional else 1
    total = 0
    for layer in range(size.layers):
        i_layer = size.I if layer == 0 else D * size.H
        total += D * 2 * size.T * size.N * (i_layer * size.H + size.H * size.H)
    return total


def flops(size, pass_):
    """FLOPs of one call of ``pass_`` on ``size``."""
    return PASSES[pass_][0] * forward_flops(size)


# workloads ---------------------------------------------------------------------------------
def _import_torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@dataclasses.dataclass
class Workload:
    """``call()`` runs one pass; :meth:`check` verifies what it returned (cheaply)."""

    call: object
    shapes: tuple

    def check(self, result):
        """Assert the arrays ``result`` holds have the expected shapes and are finite."""
        arrays = [np.asarray(r.detach() if hasattr(r, "detach") else r) for r in result]
        shapes = tuple(a.shape for a in arrays)
        assert shapes == self.shapes, f"result shapes {shapes}, expected {self.shapes}"
        for a, shape in zip(arrays, shapes):
            assert np.isfinite(a).all(), f"non-finite values in a result of shape {shape}"


def _fastrnn_fwd(model, x, grad_out):
    model.eval()
    return lambda: model(x)


def _fastrnn_fwd_bwd(model, x, grad_out):
    model.train()

    def call():
        out, _ = model(x)
        grad_x, _ = model.backward(grad_out)
        return out, grad_x
    return call


def _reference_fwd(model, x, grad_out):
    params = model.state_dict()
    kw = dict(num_layers=model.num_layers, bidirectional=model.bidirectional)
    return lambda: reference.rnn_forward(x, params, **kw)[:2]


def _reference_fwd_bwd(model, x, grad_out):
    params = model.state_dict()
    kw = dict(num_layers=model.num_layers, bidirectional=model.bidirectional)

    def call():
        out, _, cache = reference.rnn_forward(x, params, **kw)
        grad_x, _, _ = reference.rnn_backward(cache, grad_out)
        return out, grad_x
    return call


def _torch_module(model):
    torch = _import_torch()
    m = torch.nn.RNN(model.input_size, model.hidden_size, model.num_layers,
                     bidirectional=model.bidirectional)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return torch, m


def _torch_fwd(model, x, grad_out):
    torch, m = _torch_module(model)
    m.eval()
    xt = torch.from_numpy(x)

    def call():
        with torch.inference_mode():
            return m(xt)
    return call


def _torch_fwd_bwd(model, x, grad_out):
    torch, m = _torch_module(model)
    m.train()
    for p in m.parameters():  # as fastrnn's, the parameter gradients exist before the first call
        p.grad = torch.zeros_like(p)
    xt = torch.from_numpy(x).requires_grad_()  # fastrnn always computes the input's gradient
    gt = torch.from_numpy(grad_out)

    def call():
        xt.grad = None  # a fresh input gradient per call, as fastrnn returns
        out, _ = m(xt)
        out.backward(gt)
        return out, xt.grad
    return call


# (implementation, pass) -> builder(model, x, grad_out) -> call
_BUILDERS = {
    ("fastrnn", "fwd"): _fastrnn_fwd,
    ("fastrnn", "fwd+bwd"): _fastrnn_fwd_bwd,
    ("reference", "fwd"): _reference_fwd,
    ("reference", "fwd+bwd"): _reference_fwd_bwd,
    ("torch", "fwd"): _torch_fwd,
    ("torch", "fwd+bwd"): _torch_fwd_bwd,
}


def available(impl, pass_):
    """Whether ``impl`` can run ``pass_`` here (torch must be importable)."""
    return (impl, pass_) in _BUILDERS and (impl != "torch" or _import_torch() is not None)


def make_workload(impl, pass_, size, seed=0):
    """Build the model, input and output gradient of ``size`` and one call of ``pass_``.

    Every implementation gets the same weights (fastrnn's initialisation from ``seed``, copied
    into the others) and the same input and output gradient.
    """
    model = RNN(size.I, size.H, size.layers, bidirectional=size.bidirectional, dtype=DTYPE,
                seed=seed)
    rng = np.random.default_rng(seed)
    D = 2 if size.bidirectional else 1
    x = rng.standard_normal((size.T, size.N, size.I), dtype=DTYPE)
    grad_out = rng.standard_normal((size.T, size.N, D * size.H), dtype=DTYPE)
    call = _BUILDERS[impl, pass_](model, x, grad_out)
    second = (D * size.layers, size.N, size.H) if pass_ == "fwd" else x.shape  # h_n or grad_x
    return Workload(call, ((size.T, size.N, D * size.H), second))


def _time(call):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    result = call()
    return time.perf_counter() - t, result


def estimate_seconds(impl, pass_, size, steps=PROBE_STEPS):
    """Seconds one call would take, from the fastest of 3 runs over the first ``steps`` steps.

    Every implementation's time grows linearly with T; fixed costs make this an overestimate.
    """
    probe = make_workload(impl, pass_, size.with_steps(min(steps, size.T)))
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


# machine -----------------------------------------------------------------------------------
def _child_env(threads, unset=()):
    """The environment of a measuring subprocess: this fastrnn importable, ``threads`` threads."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


_PEAK_CODE = """
import json, sys, time
import numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
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
print(json.dumps({"times_s": times, "blas": blas}))
"""


def matmul_peak(threads, n=PEAK_N, repeats=5):
    """GFLOP/s of an n×n float32 NumPy matmul: the machine's floating-point peak, measured.

    Runs in a subprocess without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which OpenBLAS reads
    when it loads (this environment sets them to force its AVX2 kernels), with ``threads``
    BLAS threads. Returns a dict; ``gflops`` is None (and ``error`` says why) on failure.
    """
    info = dict(n=n, dtype="float32", threads=threads, unset=list(PEAK_ENV_UNSET),
                library="NumPy/OpenBLAS", gflops=None)
    try:
        proc = subprocess.run([sys.executable, "-c", _PEAK_CODE, str(n), str(repeats)],
                              env=_child_env(threads, unset=PEAK_ENV_UNSET), capture_output=True,
                              text=True, timeout=300, check=True)
        info.update(json.loads(proc.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        info["error"] = detail.strip().splitlines()[-1] if detail.strip() else repr(e)
        return info
    info["gflops"] = 2 * n ** 3 / statistics.median(info["times_s"]) / 1e9
    return info


def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _memory_child(impl, token, threads):
    """In a fresh process: print the peak RSS growth (bytes) of one fwd+bwd (MEMORY_METHOD)."""
    threads = int(threads)
    set_num_threads(threads)
    if impl == "torch":
        _import_torch().set_num_threads(threads)
    size = parse_sizes(token)[0]
    tiny = Size("tiny", 4, 2, 3, 5, size.layers, size.bidirectional)
    make_workload(impl, "fwd+bwd", tiny).call()  # loads what a first call loads
    work = make_workload(impl, "fwd+bwd", size)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _proc_status_kb("VmRSS")
    result = work.call()
    peak = _proc_status_kb("VmHWM")
    work.check(result)
    print(json.dumps({"bytes": (peak - before) * 1024}))


def peak_memory(impl, size, threads):
    """Peak memory (bytes) of one fwd+bwd call of ``impl`` on ``size``, or None if unmeasurable.

    Measured in a subprocess, as described by :data:`MEMORY_METHOD` (Linux only).
    """
    code = "import sys; from fastrnn.bench import _memory_child; _memory_child(*sys.argv[1:])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, impl, size.token, str(threads)],
                              env=_child_env(threads), capture_output=True, text=True,
                              timeout=600, check=True)
        return json.loads(proc.stdout)["bytes"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None


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
    torch = _import_torch()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return dict(
        cpu_model=_cpu_model(), cpu_generation=_cpu_generation(),
        physical_cores=_physical_cores(), logical_cpus=os.cpu_count(), usable_cpus=usable,
        threads=threads, kernel=functional.get_kernel(),
        available_kernels=list(functional.available_kernels()),
        openmp=bool(functional.openmp_enabled()), platform=platform.platform(),
        python=platform.python_version(), fastrnn=__version__, numpy=np.__version__,
        torch=torch.__version__ if torch else None,
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        blas_env={k: os.environ.get(k) for k in PEAK_ENV_UNSET + ("OPENBLAS_NUM_THREADS",
                                                                  "OMP_NUM_THREADS")},
    )


# the run -----------------------------------------------------------------------------------
def _has_threadpoolctl():
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def _blas_threads(threads):
    """Limit NumPy's BLAS (the reference's matmuls) to ``threads`` if threadpoolctl is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def _reference_child(pass_, token, max_reference_seconds, threads):
    """In a fresh process: print, as JSON, one call of the reference (slow by design), after
    a short run that estimates it and warms up BLAS; skipped where the estimate is over
    ``max_reference_seconds``."""
    size, threads = parse_sizes(token)[0], int(threads)
    max_reference_seconds = float(max_reference_seconds)
    with _blas_threads(threads):
        est = estimate_seconds("reference", pass_, size)
        if est > max_reference_seconds:
            result = {"skipped": f"estimated {est:.1f} s per call > {max_reference_seconds:g} s",
                      "estimated_s": est}
        else:
            work = make_workload("reference", pass_, size)
            times, out = time_calls(work.call, 1, warmup=0, min_seconds=0)
            work.check(out)
            result = _summary(times)
    print(json.dumps(result))


def _measure_reference(pass_, size, max_reference_seconds, threads):
    """The reference's time (see :func:`_reference_child`), measured in a subprocess.

    In this process, NumPy's OpenBLAS threads would busy-wait for 0.1-0.3 s after the
    reference's last matmul and take a core from whatever is timed next: fastrnn's L
    forward measured 23-26 ms in that window against 12.5-14 ms (2 cores, Zen 4).
    """
    code = ("import sys; from fastrnn.bench import _reference_child; "
            "_reference_child(*sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", code, pass_, size.token,
                           repr(float(max_reference_seconds)), str(threads)],
                          env=_child_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the reference on {size.label} {pass_} failed in its subprocess:\n"
                           f"{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def _measure_rounds(impls, pass_, size, repeats, threads):
    """Times of the implementations ``impls``, in ROUNDS alternating rounds, as dicts.

    Each round times every implementation in turn (a warm-up call, then at least
    ``repeats / ROUNDS`` calls within a third of the cell's budget), the order reversed
    from one round to the next.
    """
    works = {impl: make_workload(impl, pass_, size) for impl in impls}
    per_round = -(-repeats // ROUNDS)

    def one_round(impl):
        t, result = time_calls(works[impl].call, per_round, warmup=1,
                               budget=CELL_SECONDS / ROUNDS, min_seconds=MIN_CELL_SECONDS / ROUNDS)
        works[impl].check(result)
        return t

    times = {impl: [] for impl in impls}
    order = list(impls)
    with _blas_threads(threads):
        for _ in range(ROUNDS):
            for impl in order:
                times[impl] += one_round(impl)
            order.reverse()
    works.clear()  # free the workloads' arrays before the next row is built
    gc.collect()
    return {impl: _summary(t) for impl, t in times.items()}


def _summary(times):
    ms = [t * 1e3 for t in times]
    return {"times_ms": ms, "median_ms": statistics.median(ms), "repeats": len(ms)}


def run(sizes, threads, repeats=5, impls=IMPLEMENTATIONS, memory=False, max_reference_seconds=3.0,
        on_row=None):
    """Time every (size, pass) row for every implementation; return everything as a dict.

    Parameters
    ----------
    sizes : list of Size
    threads : int
        fastrnn's and torch's thread count (the caller sets them), and the matmul peak's.
    repeats : int
        Timed calls per (row, implementation), in ROUNDS alternating rounds of fastrnn and
        torch, each after a warm-up call; fewer for slow calls (see :func:`time_calls`).
        The reference gets one call.
    memory : bool
        Also measure the peak memory of fwd+bwd for fastrnn and torch (a subprocess each).
    max_reference_seconds : float
        Skip the reference where one call is estimated to take longer.
    on_row : callable(row dict, results dict), optional
        Called as each row completes (to print it).
    """
    results = dict(
        fastrnn=__version__, machine=machine_info(threads), matmul_peak=matmul_peak(threads),
        settings=dict(dtype="float32", threads=threads, repeats=repeats, rounds=ROUNDS, warmup=1,
                      cell_seconds=CELL_SECONDS, reference_repeats=1,
                      reference_blas_threads=(threads if _has_threadpoolctl()
                                              else "library default (no threadpoolctl)"),
                      max_reference_seconds=max_reference_seconds, implementations=list(impls),
                      sizes=[s.label for s in sizes], statistic="median",
                      passes={p: d for p, (_, d) in PASSES.items()}),
        rows=[],
    )
    if memory:
        results["memory_method"] = MEMORY_METHOD
    peak = results["matmul_peak"]["gflops"]
    for size, pass_ in rows(sizes):
        row = {"size": size.label, "name": size.name, "T": size.T, "N": size.N, "I": size.I,
               "H": size.H, "layers": size.layers, "bidirectional": size.bidirectional,
               "pass": pass_, "flops": flops(size, pass_), "results": {}}
        measured = {}
        for impl in impls:
            if not available(impl, pass_):
                measured[impl] = {"skipped": "torch is not installed" if impl == "torch"
                                  else "not implemented"}
        if "reference" in impls and "reference" not in measured:
            measured["reference"] = _measure_reference(pass_, size, max_reference_seconds,
                                                       threads)
        measured.update(_measure_rounds([impl for impl in impls if impl not in measured],
                                        pass_, size, repeats, threads))
        row["results"] = {impl: measured[impl] for impl in impls}
        for r in row["results"].values():
            if "median_ms" in r:
                r["gflops"] = row["flops"] / (r["median_ms"] * 1e6)
                r["pct_peak"] = 100 * r["gflops"] / peak if peak else None
        ours = row["results"][impls[0]].get("median_ms")
        row["pct_peak"] = row["results"][impls[0]].get("pct_peak")
        row["speedup"] = {impl: (r["median_ms"] / ours if ours and "median_ms" in r else None)
                          for impl, r in row["results"].items() if impl != impls[0]}
        if memory and pass_ == "fwd+bwd":
            row["peak_memory_bytes"] = {impl: peak_memory(impl, size, threads)
                                        for impl in ("fastrnn", "torch") if impl in impls}
        results["rows"].append(row)
        if on_row is not None:
            on_row(row, results)
    return results


# output ------------------------------------------------------------------------------------
def _fmt(value, spec, suffix=""):
    return "—" if value is None else format(value, spec) + suffix


class _Table:
    """Fixed-width columns, so rows can be printed as they are measured."""

    def __init__(self, labels, shapes, impls, memory):
        self.impls = list(impls)
        self.columns = [("size", max(4, *map(len, labels)), "<"),
                        ("T×N×I×H", max(7, *map(len, shapes)), "<"), ("pass", 7, "<"),
                        (f"{self.impls[0]} ms", 10, ">"), ("GFLOP/s", 7, ">"), ("% peak", 6, ">")]
        self.columns += [(f"vs {impl}", max(7, len(impl) + 3), ">") for impl in self.impls[1:]]
        # torch's own share of the peak bounds "vs torch": at 100 % fastrnn would be
        # 100 / that many times faster
        self.peak_impls = [impl for impl in ("torch",) if impl in self.impls[1:]]
        self.columns += [(f"{impl} % peak", len(impl) + 7, ">") for impl in self.peak_impls]
        self.memory_impls = [impl for impl in ("fastrnn", "torch") if memory and impl in impls]
        self.columns += [(f"MB {impl}", max(7, len(impl) + 3), ">") for impl in self.memory_impls]

    def _line(self, cells):
        return "  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, self.columns))

    def head(self):
        return "\n".join([self._line([c[0] for c in self.columns]),
                          "  ".join("-" * width for _, width, _ in self.columns)])

    def row(self, row):
        ours = row["results"][self.impls[0]]
        cells = [row["size"], f"{row['T']}×{row['N']}×{row['I']}×{row['H']}", row["pass"],
                 _fmt(ours.get("median_ms"), ".2f"), _fmt(ours.get("gflops"), ".1f"),
                 _fmt(row["pct_peak"], ".1f", "%")]
        cells += [_fmt(row["speedup"].get(impl), ".2f", "×") for impl in self.impls[1:]]
        cells += [_fmt(row["results"][impl].get("pct_peak"), ".1f", "%")
                  for impl in self.peak_impls]
        mem = row.get("peak_memory_bytes")
        cells += ["" if mem is None else _fmt(mem.get(impl) and mem[impl] / 2 ** 20, ".1f")
                  for impl in self.memory_impls]
        return self._line(cells)


def format_preamble(results):
    """The lines above the table: machine, matmul peak, how the numbers were taken."""
    m, peak, s = results["machine"], results["matmul_peak"], results["settings"]
    generation = f"{m['cpu_generation']}, " if m.get("cpu_generation") else ""
    cpu = f"{m['cpu_model']} ({generation}{m['usable_cpus']} of {m['logical_cpus']} CPUs usable)"
    busy = []
    if m.get("load_average") and m["load_average"][0] >= m["usable_cpus"]:
        busy = [f"warning: load average {m['load_average'][0]:.1f} on {m['usable_cpus']} usable "
                "CPUs at the start: other processes compete for the CPUs, so times are noisy "
                "and the run slower"]
    if peak["gflops"] is None:
        peak_line = f"matmul peak: unavailable ({peak.get('error', 'unknown error')})"
    else:
        peak_line = (f"matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['n']}² float32, "
                     f"NumPy/OpenBLAS, OPENBLAS_CORETYPE unset, {peak['threads']} threads)")
    return "\n".join([
        f"fastrnn {results['fastrnn']} bench: float32, {s['threads']} threads, kernel "
        f"{m['kernel']}, {cpu}",
        peak_line,
        f"ms: median of {s['repeats']} or more timed calls (fast ones: {MIN_CELL_SECONDS:g} s of them; "
        f"slow ones: fewer) in {s.get('rounds', 1)} rounds that alternate fastrnn and torch, each "
        f"after a warm-up call (reference: 1 call, — where estimated over "
        f"{s['max_reference_seconds']:g} s)",
        "vs X: X's time / fastrnn's; fwd: eval mode, fwd+bwd: training mode + BPTT; "
        "% peak: GFLOP/s / matmul peak (fastrnn at 100 % would be 100 / torch's % × faster "
        "than torch)",
        *(textwrap.fill(line, 100) for line in busy),
    ])


def format_notes(results):
    """Why each — in the table is there."""
    notes = []
    for row in results["rows"]:
        for impl, r in row["results"].items():
            if "skipped" in r:
                notes.append(f"— {impl} on {row['size']} {row['pass']}: {r['skipped']}")
        for impl, b in (row.get("peak_memory_bytes") or {}).items():
            if b is None:
                notes.append(f"— {impl} peak memory on {row['size']}: measurement failed")
    if "memory_method" in results:
        notes.append("MB: " + results["memory_method"])
    return "\n".join(textwrap.fill(n, 100, subsequent_indent="    ") for n in notes)


def format_table(results):
    """The whole printed report for ``results`` (from :func:`run`)."""
    rows_ = results["rows"]
    table = _Table([r["size"] for r in rows_] or ["size"],
                   [f"{r['T']}×{r['N']}×{r['I']}×{r['H']}" for r in rows_] or ["T×N×I×H"],
                   results["settings"]["implementations"], "memory_method" in results)
    parts = [format_preamble(results), "", table.head(), *map(table.row, rows_)]
    notes = format_notes(results)
    return "\n".join(parts + (["", notes] if notes else []))


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib, which is not installed: pip install "
                          "matplotlib (or pip install 'fastrnn[plot]')") from None


def plot_speedups(results, path):
    """Save grouped bars of fastrnn's speedup over each other implementation, per row."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    rows_ = results["rows"]
    others = [impl for impl in results["settings"]["implementations"][1:]
              if any(r["speedup"].get(impl) for r in rows_)]
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows_) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows_))
    width = 0.8 / max(1, len(others))
    values = []
    for k, impl in enumerate(others):
        v = [r["speedup"].get(impl) for r in rows_]
        values += [s for s in v if s]
        bars = ax.bar(x + (k - (len(others) - 1) / 2) * width, [s or np.nan for s in v], width,
                      label=f"vs {impl}")
        ax.bar_label(bars, labels=[f"{s:.1f}×" if s else "" for s in v], fontsize=7)
    ax.axhline(1, color="black", linewidth=0.8)
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xticks(x, [f"{r['size']}\n{r['pass']}" for r in rows_])
    ax.set_ylabel("fastrnn speedup (other's time / fastrnn's)")
    m = results["machine"]
    ax.set_title(f"fastrnn {results['fastrnn']}, float32, {m['threads']} threads, "
                 f"kernel {m['kernel']}: {m['cpu_model']}", fontsize=9)
    if others:
        ax.legend()
    fig.savefig(path, dpi=120)


# command line ------------------------------------------------------------------------------
def _sizes_arg(text):
    try:
        parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _int_arg(positive):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value == 0 or (positive and value < 0):
            raise argparse.ArgumentTypeError(
                f"expected a {'positive' if positive else 'non-zero'} integer, got {value}")
        return value
    return parse


def _plot_arg(path):
    try:
        _require_matplotlib()
    except ImportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


def add_arguments(parser):
    """The options of ``fastrnn bench``."""
    parser.add_argument(
        "--sizes", type=_sizes_arg, default=",".join(DEFAULT_SIZES),
        help=f"comma-separated sizes: {', '.join(GRID)} or TxNxIxH, each optionally with -<k>L "
             f"and -bi (default: {','.join(DEFAULT_SIZES)})")
    parser.add_argument(
        "--threads", type=_int_arg(positive=False), default=None,
        help="threads for fastrnn, torch and the matmul peak (negative: all CPUs but -N-1; "
             "default: fastrnn.get_num_threads())")
    parser.add_argument("--layers", type=_int_arg(positive=True), default=1,
                        help="layers of sizes without their own -<k>L (default: 1)")
    parser.add_argument("--bidirectional", action="store_true",
                        help="make sizes without their own -bi bidirectional")
    parser.add_argument(
        "--repeats", type=_int_arg(positive=True), default=5,
        help=f"timed calls per measurement, in {ROUNDS} rounds that alternate fastrnn and "
             f"torch, each after a warm-up call; more for fast calls (until {MIN_CELL_SECONDS:g} "
             f"s of them), fewer for slow calls (a round stops after "
             f"{CELL_SECONDS / ROUNDS:.2g} s of them once there are 3, or after "
             f"{CELL_SECONDS:g} s); one for the reference (default: 5)")
    parser.add_argument(
        "--max-reference-seconds", type=float, default=3.0, metavar="S",
        help="skip the reference where one call is estimated to take longer (default: 3)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the peak memory of fwd+bwd, fastrnn vs torch (a "
                             "subprocess per size and implementation)")
    parser.add_argument("--no-train-step", dest="train_step", action="store_false",
                        help="skip the torch training-step row (fastrnn.torch.RNN vs "
                             "torch.nn.RNN in a small model with Adam)")
    parser.add_argument("--json", metavar="FILE", help="write every number and the machine to FILE")
    parser.add_argument("--plot", metavar="FILE.png", type=_plot_arg,
                        help="draw the speedups as grouped bars (needs matplotlib)")


def command(args):
    """Run ``fastrnn bench`` with parsed ``args``; returns the exit status."""
    start = time.perf_counter()
    sizes = parse_sizes(args.sizes, args.layers, args.bidirectional)
    if args.threads is not None:
        set_num_threads(args.threads)
    threads = get_num_threads()
    torch = _import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    impls = [impl for impl in IMPLEMENTATIONS if impl != "torch" or torch is not None]
    if torch is None:
        print("torch is not installed: no torch column")
    table = _Table([s.label for s in sizes], [s.shape for s in sizes], impls, args.memory)

    def on_row(row, results):
        if row is results["rows"][0]:
            print(format_preamble(results), "", table.head(), sep="\n")
        print(table.row(row), flush=True)

    results = run(sizes, threads, repeats=args.repeats, impls=impls, memory=args.memory,
                  max_reference_seconds=args.max_reference_seconds, on_row=on_row)
    if torch is not None and args.train_step:
        from .bench_torch import bench_torch_training_step

        step = bench_torch_training_step(threads, args.repeats)
        results["train_step"] = step
        print(f"\ntraining step of a torch model (Embedding -> RNN(64, 256, 2 layers) -> Linear, "
              f"T=100, N=32, Adam): fastrnn.torch.RNN {step['fastrnn_ms']:.1f} ms, "
              f"torch.nn.RNN {step['torch_ms']:.1f} ms, {step['speedup']:.2f}x")
    results["elapsed_s"] = time.perf_counter() - start
    notes = format_notes(results)
    if notes:
        print("", notes, sep="\n")
    print(f"\n({results['elapsed_s']:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_speedups(results, args.plot)
        print(f"wrote {args.plot}")
    return 0
