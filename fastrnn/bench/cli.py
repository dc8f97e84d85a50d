"""``fastrnn bench``: its options (:func:`add_arguments`) and the command (:func:`command`)."""
import argparse
import json
import time

from ..parallel import get_num_threads, set_num_threads
from .report import Table, format_notes, format_preamble, plot_speedups, require_matplotlib
from .runner import run
from .sizes import CELLS, DEFAULT_SIZES, GRID, parse_cells, parse_sizes
from .timing import CELL_SECONDS, MIN_CELL_SECONDS, ROUNDS
from .workloads import IMPLEMENTATIONS, import_torch, missing

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
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
    absent = {impl: "torch" if impl == "torch" else missing(impl) for impl in IMPLEMENTATIONS
              if (torch is None if impl == "torch" else missing(impl) is not None)}
    impls = [impl for impl in IMPLEMENTATIONS if impl not in absent]
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
    if torch is not None and args.train_step:
        from .train_step import bench_torch_training_step

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
