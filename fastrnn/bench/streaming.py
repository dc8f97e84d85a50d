"""Streaming latency: one step per call through ``module.stream(batch_size)``, against torch's
``nn.RNNCell`` / ``LSTMCell`` / ``GRUCell`` fed the same way.

A stream's call is what a speech model, a controller or a generator pays per frame, so it is
timed as one: a loop of ``stream(x)``, x (N, H), float32, eval, H = I, a median over rounds.
One call on a chunk of CHUNK_STEPS steps, divided by them, is the kernels' time per step
without the per-call costs; the difference is the call's overhead (the Python call, the
checks of x and of the weights, starting the threads), which is what a step-by-step caller
pays on top of the arithmetic.

torch runs in a process of its own (``python -m fastrnn.bench.streaming THREADS``, the same
JSON-line exchange as :mod:`~fastrnn.bench.peer_time`): its thread pool spins after its work
and would take the cores of fastrnn's next round. The rounds alternate fastrnn (step, then
chunk) and torch, the order reversed each round, as the grid's do. The torch cells have
torch's default init (the weights do not change a step's time) and run under
``torch.no_grad()``, the state passed in and taken back each call as a user's loop does.
"""
import json
import math
import os
import statistics
import sys
import tempfile
import textwrap
import time

import numpy as np

from ..parallel import set_num_threads
from ..rnn import GRU, LSTM, RNN
from .child import start_child
from .peer_time import PeerProcess
from .timing import settle
from .workloads import missing

__all__ = ["STREAM_SIZES", "STREAM_BATCHES", "STREAM_ROUNDS", "STREAM_ROUND_SECONDS",
           "STREAM_MIN_CALLS", "CHUNK_STEPS", "OVERHEAD_NOTE", "TorchCells", "build_fastrnn",
           "build_torch", "run_streaming", "StreamTable", "format_preamble",
           "format_overhead_note", "format_streaming"]

STREAM_SIZES = (64, 128, 256, 512)  # H = I
STREAM_BATCHES = (1, 16)
STREAM_ROUNDS = 5
# a round is this long at least (fast calls: tens of thousands of them, so that neither the
# timer nor one slow call moves the mean) ...
STREAM_ROUND_SECONDS = 0.2
# ... and this many calls at least (slow calls: a round still averages over many)
STREAM_MIN_CALLS = 100
CHUNK_STEPS = 256  # steps of the chunk call whose time per step is the kernels'
SEED = 0

OVERHEAD_NOTE = ("overhead: fastrnn µs/call − kernel µs/step (one call on a chunk of {T} steps "
                 "/ {T}): what a step-by-step call costs beyond its arithmetic (the Python "
                 "call, the checks of x and of the weights, starting the threads)")

_MODULES = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
_TORCH_CELLS = {"rnn": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}


# building ----------------------------------------------------------------------------------
def build_fastrnn(cell, H, N, chunk_steps=CHUNK_STEPS, seed=SEED):
    """(stream, x, chunk) of one row: an eval ``cell`` module (H → H) streamed for ``N`` rows,
    a step's input x (N, H) and a chunk (chunk_steps, N, H), float32."""
    module = _MODULES[cell](H, H, seed=seed).eval()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H), dtype=np.float32)
    chunk = rng.standard_normal((chunk_steps, N, H), dtype=np.float32)
    return module.stream(batch_size=N), x, chunk


def build_torch(cell, H, N, seed=SEED):
    """(torch cell, x, state) of one row: ``torch.nn.<Cell>(H, H)`` with torch's default init,
    x (N, H) and the zero state (h, or (h, c) for an LSTM) as its call takes it."""
    import torch

    torch.manual_seed(seed)
    module = getattr(torch.nn, _TORCH_CELLS[cell])(H, H).eval()
    x = torch.randn(N, H)
    h = torch.zeros(N, H)
    return module, x, ((h, torch.zeros(N, H)) if cell == "lstm" else h)


# timing ------------------------------------------------------------------------------------
def _calls_per_round(loop, seconds, min_calls):
    """Calls that take about ``seconds``, at least ``min_calls``: found by doubling a timed
    loop from one call (which is also the warm-up). ``loop(n)`` times n calls."""
    n = 1
    while True:
        t = loop(n)
        if t >= seconds / 8:
            break
        n *= 2
    return max(min_calls, math.ceil(n * seconds / max(t, 1e-9)))


def _fastrnn_loops(stream, x, chunk):
    def steps(n):
        start = time.perf_counter()
        for _ in range(n):
            stream(x)
        return time.perf_counter() - start

    def chunks(n):
        start = time.perf_counter()
        for _ in range(n):
            stream(chunk)
        return time.perf_counter() - start

    return steps, chunks


def _torch_loop(module, x, state):
    import torch

    def steps(n):
        nonlocal state
        s = state
        with torch.no_grad():
            start = time.perf_counter()
            for _ in range(n):
                s = module(x, s)  # the new state back in, as a user's loop does
            elapsed = time.perf_counter() - start
        state = s
        return elapsed

    return steps


class _Local:
    """A loop timed in this process: :meth:`round` runs the round's calls, then settles."""

    def __init__(self, loop, seconds, min_calls, finite):
        self.loop, self.finite = loop, finite
        self.calls = _calls_per_round(loop, seconds, min_calls)
        settle()

    def round(self):
        seconds = self.loop(self.calls)
        settle()  # fastrnn's OpenMP threads may spin after their work, too
        if not self.finite():
            raise RuntimeError("a stream's output is not finite")
        return seconds / self.calls


class TorchCells(PeerProcess):
    """The torch cells' child process (``python -m fastrnn.bench.streaming THREADS``):
    :meth:`build` a row, then time its :meth:`round` s. (:class:`PeerProcess` with this
    module's child.)"""

    def __init__(self, threads):  # (not super().__init__: it would start peer_time's child)
        self.impl = "torch"
        self._stderr = tempfile.TemporaryFile("w+")  # a pipe could fill up and block the child
        self._proc = start_child("streaming", [threads], threads, stderr=self._stderr)

    def build(self, cell, H, N, seconds, min_calls):
        """Build the row's cell and its state, find its calls per round: returns them."""
        self.calls = self._ask({"build": [cell, H, N, seconds, min_calls]})["calls"]
        return self.calls

    def round(self):
        """Seconds per call of one round (the child settles before it answers)."""
        return self._ask({"round": None})["seconds"] / self.calls


# a run -------------------------------------------------------------------------------------
def run_streaming(threads, cells=tuple(_MODULES), sizes=STREAM_SIZES, batches=STREAM_BATCHES,
                  rounds=STREAM_ROUNDS, round_seconds=STREAM_ROUND_SECONDS,
                  min_calls=STREAM_MIN_CALLS, chunk_steps=CHUNK_STEPS, torch=True, on_row=None):
    """Time a stream's step, its kernels' time per step and torch's cell on every (cell, H, N).

    Parameters
    ----------
    threads : int
        fastrnn's thread count (the caller sets it) and torch's, in its process.
    cells, sizes, batches : sequences
        Cells ('rnn', 'lstm', 'gru'), hidden sizes H (= I) and batch sizes N: one row each,
        cells outermost.
    rounds : int
        Rounds per row, alternating fastrnn's step, its chunk and torch (order reversed each
        round); each number is the median of the rounds' means.
    round_seconds, min_calls : float, int
        A step round's length: about ``round_seconds`` of calls, at least ``min_calls``; a
        chunk round is about ``round_seconds`` too, at least one chunk.
    chunk_steps : int
        Steps of the chunk whose time per step is the kernels'.
    torch : bool
        Time torch's cells (if installed); without them a row has no torch numbers.
    on_row : callable(row dict, streaming dict), optional
        Called as each row completes (to print it).

    Returns
    -------
    dict: ``settings`` and ``rows``, a row per (cell, H, N) with µs per call, per step, the
    overhead, torch's µs per call and the ratio, each round's value and the calls per round.
    """
    torch = torch and missing("torch") is None
    results = dict(
        settings=dict(dtype="float32", threads=threads, cells=list(cells), sizes=list(sizes),
                      batches=list(batches), rounds=rounds, round_seconds=round_seconds,
                      min_calls=min_calls, chunk_steps=chunk_steps, statistic="median",
                      torch=(f"torch.nn.{'/'.join(_TORCH_CELLS.values())}, default init, "
                             "torch.no_grad(), state passed each call, own process"
                             if torch else None)),
        rows=[])
    peer = TorchCells(threads) if torch else None
    settle()  # threads of the caller's own work (the grid's training step ran torch here)
    try:
        for cell in cells:
            for H in sizes:
                for N in batches:
                    row = _measure_row(cell, H, N, peer, rounds, round_seconds, min_calls,
                                       chunk_steps)
                    results["rows"].append(row)
                    if on_row is not None:
                        on_row(row, results)
    finally:
        if peer is not None:
            peer.close()
    return results


def _measure_row(cell, H, N, peer, rounds, round_seconds, min_calls, chunk_steps):
    stream, x, chunk = build_fastrnn(cell, H, N, chunk_steps)
    step_loop, chunk_loop = _fastrnn_loops(stream, x, chunk)
    def finite():
        state = stream.state
        return all(np.isfinite(s).all() for s in (state if isinstance(state, tuple) else (state,)))

    timed = {"fastrnn": _Local(step_loop, round_seconds, min_calls, finite),
             "chunk": _Local(chunk_loop, round_seconds, 1, finite)}
    if peer is not None:
        peer.build(cell, H, N, round_seconds, min_calls)
        timed["torch"] = peer
    seconds = {name: [] for name in timed}
    order = list(timed)
    for _ in range(rounds):
        for name in order:
            seconds[name].append(timed[name].round())
        order.reverse()
    us = {name: [1e6 * s for s in values] for name, values in seconds.items()}
    us["chunk"] = [u / chunk_steps for u in us["chunk"]]
    row = {"cell": cell, "H": H, "I": H, "N": N,
           "fastrnn_us": statistics.median(us["fastrnn"]),
           "kernel_us_per_step": statistics.median(us["chunk"])}
    row["overhead_us"] = row["fastrnn_us"] - row["kernel_us_per_step"]
    if peer is not None:
        row["torch_us"] = statistics.median(us["torch"])
        row["torch_over_fastrnn"] = row["torch_us"] / row["fastrnn_us"]
    row["rounds_us"] = {"fastrnn": us["fastrnn"], "kernel_per_step": us["chunk"],
                        **({"torch": us["torch"]} if peer is not None else {})}
    row["calls_per_round"] = {"fastrnn": timed["fastrnn"].calls, "chunks": timed["chunk"].calls,
                              **({"torch": peer.calls} if peer is not None else {})}
    return row


# the table ---------------------------------------------------------------------------------
def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


class StreamTable:
    """Fixed-width columns, so rows can be printed as they are measured."""

    def __init__(self, torch):
        self.torch = torch
        self.columns = [("cell", 4), ("H", 5), ("N", 4), ("fastrnn µs/call", 15),
                        ("kernel µs/step", 14), ("overhead µs", 11)]
        self.columns += [("torch µs/call", 13), ("torch/fastrnn", 13)] if torch else []

    def _line(self, cells):
        return "  ".join(f"{c:{'<' if k == 0 else '>'}{width}}"
                         for k, (c, (_, width)) in enumerate(zip(cells, self.columns)))

    def head(self):
        """The header line and the dashes under it."""
        return "\n".join([self._line([c[0] for c in self.columns]),
                          "  ".join("-" * width for _, width in self.columns)])

    def row(self, row):
        """The line of one row of :func:`run_streaming`'s results."""
        cells = [row["cell"], str(row["H"]), str(row["N"]), _fmt(row["fastrnn_us"], ".2f"),
                 _fmt(row["kernel_us_per_step"], ".2f"), _fmt(row["overhead_us"], ".2f")]
        if self.torch:
            cells += [_fmt(row.get("torch_us"), ".2f"),
                      _fmt(row.get("torch_over_fastrnn"), ".2f") + "×"
                      if row.get("torch_over_fastrnn") else "—"]
        return self._line(cells)


def format_preamble(streaming, machine=None):
    """The lines above the table: the machine (if given) and what a row measures."""
    s = streaming["settings"]
    lines = []
    if machine is not None:
        lines.append(f"fastrnn {machine['fastrnn']} bench: kernel {machine['kernel']}, "
                     f"{machine['cpu_model']} ({machine['usable_cpus']} of "
                     f"{machine['logical_cpus']} CPUs usable)")
    lines.append(
        f"streaming: one step per call, stream(x) with x (N, H) float32, eval, H = I, "
        f"{s['threads']} threads; µs: median of {s['rounds']} rounds (each ≥ "
        f"{s['round_seconds']:g} s and ≥ {s['min_calls']} calls, after a warm-up) alternating "
        "fastrnn and " + ("torch.nn.<Cell> (no_grad, state passed each call, a process of "
                          "its own); torch/fastrnn: torch's µs / fastrnn's" if s["torch"]
                          else "nothing else (torch is not installed)"))
    return "\n".join(textwrap.fill(line, 100, break_on_hyphens=False) for line in lines)


def format_overhead_note(streaming):
    """The line under the table: what overhead means."""
    return textwrap.fill(OVERHEAD_NOTE.format(T=streaming["settings"]["chunk_steps"]), 100,
                         break_on_hyphens=False)


def format_streaming(streaming, machine=None):
    """The whole printed streaming report: preamble, table, the note on overhead."""
    table = StreamTable(streaming["settings"]["torch"] is not None)
    return "\n".join([format_preamble(streaming, machine), "", table.head(),
                      *map(table.row, streaming["rows"]), "", format_overhead_note(streaming)])


# the torch child ---------------------------------------------------------------------------
def _serve(requests, answer):
    """The child's loop: ``{"build": [CELL, H, N, SECONDS, MIN_CALLS]}`` -> ``{"calls": n}``,
    ``{"round": null}`` -> ``{"seconds": s}`` of n calls (after settling)."""
    loop = calls = None
    for line in requests:
        request = json.loads(line)
        if "build" in request:
            cell, H, N, seconds, min_calls = request["build"]
            loop = _torch_loop(*build_torch(cell, H, N))
            calls = _calls_per_round(loop, seconds, min_calls)
            settle()
            answer({"calls": calls})
        else:
            elapsed = loop(calls)
            settle()
            answer({"seconds": elapsed})


def main(argv=None):
    """The child: ``THREADS``, then requests on stdin (see :func:`_serve`)."""
    (threads,) = argv if argv is not None else sys.argv[1:]
    threads = int(threads)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything printed goes to stderr
    set_num_threads(threads)
    import torch

    torch.set_num_threads(threads)

    def answer(reply):
        replies.write(json.dumps(reply) + "\n")

    _serve(sys.stdin, answer)


if __name__ == "__main__":
    main()
