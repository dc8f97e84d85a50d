"""Benchmarks: fastrnn's RNN, LSTM and GRU against their peers on a grid of sizes.

The peers: the NumPy reference, torch (nn.RNN / nn.LSTM / nn.GRU), ONNX Runtime (forward) and
JAX (a jitted ``lax.scan``); those not installed are left out (``pip install
"fastrnn[peers]"`` installs ONNX Runtime and JAX).

``fastrnn bench`` (:func:`command`) prints the comparison as a table; the pytest-benchmark
suite in ``benchmarks/`` times the same workloads. Both build them with :func:`make_workload`,
so a row of the table and a benchmark of the suite run the same code on the same weights.
``fastrnn bench --stream`` (or ``--stream-only``) adds the streaming latency of
:mod:`.streaming`: a stream's step per call, its overhead over the kernels, torch's cells.

One module per job, data flowing down the list:

- :mod:`.sizes`: the grid, the size grammar (``M2-2L-bi``, ``64x8x32x64``), cells, passes and
  FLOPs;
- :mod:`.workloads`: the timed call of each (implementation, pass) for each cell, on shared
  weights, and the check of a peer's result against fastrnn's; :mod:`.onnx_peer` and
  :mod:`.jax_peer` build the ONNX Runtime and JAX calls;
- :mod:`.timing`: warm-up, repeats within a budget, alternating rounds, medians;
- :mod:`.machine`, :mod:`.memory`, :mod:`.reference_time`, :mod:`.peer_time`: what is
  measured in a process of its own (``python -m fastrnn.bench.<module>``, see :mod:`.child`):
  the machine and its matmul peak, peak memory, the reference's time, each other peer's;
- :mod:`.runner`: a whole run, as one dict (the ``--json`` file);
- :mod:`.report`: the table, its notes and the plot;
- :mod:`.train_step`: the training step of a small torch model, fastrnn.torch.RNN vs
  torch.nn.RNN;
- :mod:`.streaming`: streaming latency (``--stream``, ``--stream-only``): one step per call
  through ``module.stream(batch_size)``, the kernels' time per step of a chunk, the call's
  overhead, and torch's RNNCell / LSTMCell / GRUCell per call (in a process of its own, as
  :mod:`.peer_time` runs the grid's peers), its table;
- :mod:`.cli`: the options and the command.

The names below are imported from their modules on first use, so that running a module as a
child process does not import it twice.
"""
import importlib

# module -> the names this package exposes from it
_EXPORTS = {
    "sizes": ("Size", "GRID", "DEFAULT_SIZES", "PASSES", "CELLS", "parse_sizes", "parse_cells",
              "rows", "forward_flops", "flops"),
    "workloads": ("IMPLEMENTATIONS", "PEERS", "DTYPE", "CHECK_RTOL", "Workload", "available",
                  "missing", "make_workload"),
    "timing": ("CELL_SECONDS", "MIN_CELL_SECONDS", "MAX_REPEATS", "ROUNDS", "PROBE_STEPS",
               "estimate_seconds", "time_calls"),
    "machine": ("PEAK_N", "PEAK_ENV_UNSET", "machine_info", "matmul_peak"),
    "memory": ("MEMORY_METHOD", "peak_memory"),
    "runner": ("run",),
    "report": ("format_preamble", "format_notes", "format_table", "plot_speedups"),
    "train_step": ("bench_torch_training_step", "make_training_step"),
    "streaming": ("STREAM_SIZES", "STREAM_BATCHES", "STREAM_ROUNDS", "STREAM_ROUND_SECONDS",
                  "STREAM_MIN_CALLS", "CHUNK_STEPS", "run_streaming", "format_streaming"),
    "cli": ("add_arguments", "command"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["Size", "GRID", "DEFAULT_SIZES", "PASSES", "CELLS", "IMPLEMENTATIONS", "PEERS",
           "parse_sizes", "parse_cells", "rows", "forward_flops", "flops", "make_workload",
           "estimate_seconds", "matmul_peak",
           "peak_memory", "run", "format_table", "plot_speedups", "run_streaming",
           "format_streaming", "add_arguments", "command"]


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))
