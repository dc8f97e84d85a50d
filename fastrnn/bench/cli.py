"""``fastrnn bench``: its options (:func:`add_arguments`) and the command (:func:`command`).

The grid of :mod:`.runner` runs unless ``--stream-only``; the streaming latencies of
:mod:`.streaming` after it with ``--stream``, or alone with ``--stream-only``.
"""
import argparse
import json
import os
import time

from ..parallel import get_num_threads, set_num_threads
from ..precision import ENV as PRECISION_ENV, PRECISIONS, set_matmul_precision
from ..train_cli import CommandError
from .report import Table, format_notes, format_preamble, plot_speedups, require_matplotlib
from .runner import run
from .sizes import CELLS, DEFAULT_SIZES, GRID, parse_cells, parse_sizes
from .streaming import (CHUNK_STEPS, STREAM_BATCHES, STREAM_MIN_CALLS, STREAM_ROUND_SECONDS,
                        STREAM_ROUNDS, STREAM_SIZES, StreamTable, format_overhead_note,
                        run_streaming)
from .streaming import format_preamble as format_stream_preamble
from .timing import CELL_SECONDS, MIN_CELL_SECONDS, ROUNDS
from .workloads import BF16_IMPLEMENTATIONS, IMPLEMENTATIONS, import_torch, missing

__all__ = ["add_arguments", "command"]


def _sizes_arg(text):
    try:
        parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _cells_arg(text):
    try:
        return parse_cells(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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


def _int_list_arg(text):
    """Comma-separated positive integers, as a list."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    bad = [v for v in values if v < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {bad[0]}")
    return values


def _seconds_arg(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text}")
    return value


def _plot_arg(path):
    try:
        require_matplotlib()
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
        "--cell", type=_cells_arg, default=list(CELLS), metavar="CELLS",
        help=f"comma-separated cells, each timed on every size: {', '.join(CELLS)} (default: "
             f"{','.join(CELLS)})")
    parser.add_argument(
        "--threads", type=_int_arg(positive=False), default=None,
        help="threads for fastrnn, every peer and the matmul peak (negative: all CPUs but "
             "-N-1; default: fastrnn.get_num_threads())")
    parser.add_argument("--layers", type=_int_arg(positive=True), default=1,
                        help="layers of sizes without their own -<k>L (default: 1)")
    parser.add_argument("--bidirectional", action="store_true",
                        help="make sizes without their own -bi bidirectional")
    parser.add_argument(
        "--repeats", type=_int_arg(positive=True), default=5,
        help=f"timed calls per measurement, in {ROUNDS} rounds that alternate fastrnn and "
             f"each peer, each after a warm-up call; more for fast calls (until "
             f"{MIN_CELL_SECONDS:g} "
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
    stream = parser.add_argument_group(
        "streaming", "latency of one step per call through module.stream(batch_size), x (N, H), "
                     "H = I, against torch's RNNCell / LSTMCell / GRUCell, for each --cell")
    stream.add_argument("--stream", action="store_true",
                        help="after the grid, time the streaming rows")
    stream.add_argument("--stream-only", action="store_true",
                        help="time only the streaming rows (no grid, no training step)")
    stream.add_argument(
        "--stream-sizes", type=_int_list_arg, default=None, metavar="H,...",
        help=f"comma-separated hidden sizes H (= I) (default: "
             f"{','.join(map(str, STREAM_SIZES))})")
    stream.add_argument(
        "--stream-batches", type=_int_list_arg, default=None, metavar="N,...",
        help=f"comma-separated batch sizes (default: {','.join(map(str, STREAM_BATCHES))})")
    stream.add_argument(
        "--stream-rounds", type=_int_arg(positive=True), default=None,
        help=f"rounds per row, alternating fastrnn and torch; the median is reported "
             f"(default: {STREAM_ROUNDS})")
    stream.add_argument(
        "--stream-seconds", type=_seconds_arg, default=None, metavar="S",
        help=f"length of a round: about S seconds of calls, at least {STREAM_MIN_CALLS} "
             f"(a chunk round: at least one chunk of {CHUNK_STEPS} steps) "
             f"(default: {STREAM_ROUND_SECONDS:g})")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="of fastrnn's matrix products (fastrnn.set_matmul_precision): with bfloat16, "
             "fastrnn's own float32 is a peer, torch runs module.to(torch.bfloat16), ONNX "
             "Runtime and JAX are left out (default: float32)")
    parser.add_argument("--json", metavar="FILE", help="write every number and the machine to FILE")
    parser.add_argument("--plot", metavar="FILE.png", type=_plot_arg,
                        help="draw the speedups as grouped bars (needs matplotlib)")


_STREAM_OPTIONS = ("stream_sizes", "stream_batches", "stream_rounds", "stream_seconds")


def _check_combination(args):
    """CommandError for options that would be silently ignored."""
    given = [name for name in _STREAM_OPTIONS if getattr(args, name, None) is not None]
    if given and not (args.stream or args.stream_only):
        raise CommandError(f"fastrnn bench: --{given[0].replace('_', '-')} needs --stream or "
                           "--stream-only")
    if args.precision == "bfloat16":
        for name, on in (("memory", args.memory), ("stream", args.stream or args.stream_only)):
            if on:
                raise CommandError(f"fastrnn bench: --{name} measures float32 only, not with "
                                   "--precision bfloat16")
    if args.stream_only:
        for name, on in (("plot", args.plot), ("memory", args.memory)):
            if on:
                raise CommandError(f"fastrnn bench: --{name} is about the grid, which "
                                   "--stream-only skips")


def command(args):
    """Run ``fastrnn bench`` with parsed ``args``; returns the exit status."""
    start = time.perf_counter()
    _check_combination(args)
    sizes = parse_sizes(args.sizes, args.layers, args.bidirectional)
    if args.threads is not None:
        set_num_threads(args.threads)
    set_matmul_precision(args.precision)
    os.environ[PRECISION_ENV] = args.precision  # the peers' processes: the same default
    threads = get_num_threads()
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    if args.stream_only:
        from .._version import __version__
        from .machine import machine_info

        results = dict(fastrnn=__version__, machine=machine_info(threads))
    else:
        results = _grid(args, sizes, threads, torch)
    if args.stream or args.stream_only:
        results["streaming"] = _streaming(args, threads, torch is not None,
                                          results["machine"], gap=not args.stream_only)
    results["elapsed_s"] = time.perf_counter() - start
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


def _grid(args, sizes, threads, torch):
    """The grid's rows, printed as they complete, the training step and the notes."""
    wanted = BF16_IMPLEMENTATIONS if args.precision == "bfloat16" else IMPLEMENTATIONS
    absent = {impl: "torch" if impl == "torch" else missing(impl) for impl in wanted
              if (torch is None if impl == "torch" else missing(impl) is not None)}
    impls = [impl for impl in wanted if impl not in absent]
    for impl, module in absent.items():
        print(f"{module} is not installed: no {impl} column (pip install \"fastrnn[peers]\" "
              "installs every peer)")
    table = Table([s.label for s in sizes], [s.shape for s in sizes], impls, args.memory)

    def on_row(row, results):
        if row is results["rows"][0]:
            print(format_preamble(results), "", table.head(), sep="\n")
        print(table.row(row), flush=True)

    results = run(sizes, threads, repeats=args.repeats, impls=impls, memory=args.memory,
                  max_reference_seconds=args.max_reference_seconds, on_row=on_row,
                  cells=args.cell)
    if torch is not None and args.train_step and args.precision == "float32":
        from .train_step import bench_torch_training_step

        step = bench_torch_training_step(threads, args.repeats)
        results["train_step"] = step
        print(f"\ntraining step of a torch model (Embedding -> RNN(64, 256, 2 layers) -> Linear, "
              f"T=100, N=32, Adam): fastrnn.torch.RNN {step['fastrnn_ms']:.1f} ms, "
              f"torch.nn.RNN {step['torch_ms']:.1f} ms, {step['speedup']:.2f}x")
    notes = format_notes(results)
    if notes:
        print("", notes, sep="\n")
    return results


def _streaming(args, threads, torch, machine, gap):
    """The streaming rows, printed as they complete, and the note on overhead."""
    if not torch:
        print("torch is not installed: no torch cell columns in the streaming table")
    table = StreamTable(torch)

    def on_row(row, streaming):
        if row is streaming["rows"][0]:
            print(*([""] if gap else []), format_stream_preamble(streaming, machine), "",
                  table.head(), sep="\n")
        print(table.row(row), flush=True)

    def pick(value, default):
        return default if value is None else value

    streaming = run_streaming(
        threads, cells=args.cell, sizes=pick(args.stream_sizes, STREAM_SIZES),
        batches=pick(args.stream_batches, STREAM_BATCHES),
        rounds=pick(args.stream_rounds, STREAM_ROUNDS),
        round_seconds=pick(args.stream_seconds, STREAM_ROUND_SECONDS), torch=torch,
        on_row=on_row)
    print("", format_overhead_note(streaming), sep="\n")
    return streaming
