"""A/B timing of fastrnn's RNN, LSTM and GRU between two builds, in one process, alternating
short blocks.

    git worktree add /tmp/before <rev> && (cd /tmp/before && python setup.py build_ext --inplace)
    python tools/ab.py /tmp/before [--cells rnn,lstm,gru] [--rounds 21] [--sizes M1,M2,L,M2-2L-bi]
                       [--passes fwd,fwd+bwd,train-fwd] [--precision float32|bfloat16]
                       [--threads 2]

A size is a bench size's name or T×N×I×H with optional layers and direction, written
``TxNxIxH[xLAYERS][-bi]`` (``32x1x256x256-bi``: 32 steps of one sequence, bidirectional).

Times the eval-mode forward and the training-mode forward + backward (or forward alone,
``train-fwd``: the forward that keeps BPTT's cache) of the bench sizes
(--threads, 2 by default; float32 arrays, the products in --precision) with the other
build's package and this checkout's, alternating blocks of about 0.08 s (their order swapped
every round), and prints per row both medians and the median of the per-round ratios. One
process, because the machine's speed differs between processes (the same build's M1
forward + backward measured 0.8 or 1.15 ms depending on the process) and over minutes:
pairs of adjacent blocks cancel both.

The other build is imported as the package ``fastrnn_before`` (a copy of its ``fastrnn/``
in a temporary directory); its compiled modules register themselves in sys.modules under
their build names (``fastrnn._rnn``), which are removed before this checkout is imported.
"""
import argparse
import atexit
import itertools
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

SIZES = {"S": (512, 1, 64, 128, 1, False), "M1": (50, 32, 64, 128, 1, False),
         "M2": (100, 64, 128, 256, 1, False), "L": (200, 16, 256, 512, 1, False),
         "XL": (100, 128, 512, 1024, 1, False), "M2-2L-bi": (100, 64, 128, 256, 2, True)}
CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
CHECKOUT = pathlib.Path(__file__).resolve().parent.parent


def import_both(before):
    """(the other build's fastrnn, this checkout's fastrnn), both in this process."""
    staging = pathlib.Path(tempfile.mkdtemp(prefix="fastrnn_ab_"))
    atexit.register(shutil.rmtree, staging, True)
    shutil.copytree(pathlib.Path(before) / "fastrnn", staging / "fastrnn_before")
    sys.path.insert(0, str(staging))
    import fastrnn_before
    for name in [n for n in sys.modules if n == "fastrnn" or n.startswith("fastrnn.")]:
        del sys.modules[name]
    sys.path.insert(0, str(CHECKOUT))
    import fastrnn
    if pathlib.Path(fastrnn.__file__).parent != CHECKOUT / "fastrnn":
        raise SystemExit(f"imported {fastrnn.__file__}, not this checkout's fastrnn")
    return fastrnn_before, fastrnn


def block_median(call, seconds):
    """Median time of calls repeated for about ``seconds`` (at least 3)."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def parse_size(size):
    """(T, N, I, H, layers, bidirectional) of a bench size's name or ``TxNxIxH[xLAYERS][-bi]``."""
    if size in SIZES:
        return SIZES[size]
    dims, bidirectional = (size[:-3], True) if size.endswith("-bi") else (size, False)
    try:
        values = [int(v) for v in dims.split("x")]
    except ValueError:
        values = []
    if len(values) not in (4, 5):
        raise SystemExit(f"unknown size {size!r}: one of {sorted(SIZES)} or TxNxIxH[xLAYERS][-bi]")
    return (*values[:4], values[4] if len(values) == 5 else 1, bidirectional)


def passes(package, cell, size, precision):
    """{'fwd': call, 'fwd+bwd': call, 'train-fwd': call (the forward that keeps BPTT's cache)}
    of ``package``'s ``cell`` at ``size``, warmed up."""
    T, N, I, H, layers, bidirectional = parse_size(size)
    x = np.random.default_rng(0).standard_normal((T, N, I)).astype(np.float32)
    grad = np.ones((T, N, (2 if bidirectional else 1) * H), np.float32)
    module = getattr(package, CELLS[cell])
    evaluating = module(I, H, layers, bidirectional=bidirectional, seed=0).eval()
    training = module(I, H, layers, bidirectional=bidirectional, seed=0)
    if precision != "float32":  # (builds from before the precision= argument: float32 only)
        evaluating.precision = training.precision = precision

    def fwd_bwd():
        training(x)
        training.backward(grad)

    calls = {"fwd": lambda: evaluating(x), "fwd+bwd": fwd_bwd, "train-fwd": lambda: training(x)}
    for call in calls.values():
        call()  # packing buffers and the block cache
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="a source tree with its extensions built in place")
    parser.add_argument("--cells", default="rnn")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--sizes", default="M1,M2,L,M2-2L-bi")
    parser.add_argument("--passes", default="fwd,fwd+bwd")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="of the matrix products")
    parser.add_argument("--seconds", type=float, default=0.08, help="per block")
    parser.add_argument("--threads", type=int, default=2,
                        help="fastrnn's threads (1: a kernel's own change, without the other "
                             "core's interference on a shared host)")
    args = parser.parse_args(argv)
    builds = dict(zip(("before", "after"), import_both(args.before)))
    for package in builds.values():
        package.set_num_threads(args.threads)
    print(f"before: {builds['before'].__file__}\nafter:  {builds['after'].__file__}")
    for cell, size in itertools.product(args.cells.split(","), args.sizes.split(",")):
        calls = {tag: passes(package, cell, size, args.precision)
                 for tag, package in builds.items()}
        for name in args.passes.split(","):
            medians = {"before": [], "after": []}
            for r in range(args.rounds):
                for tag in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    medians[tag].append(block_median(calls[tag][name], args.seconds))
            before, after = (np.median(medians[t]) * 1e3 for t in ("before", "after"))
            ratio = np.median(np.array(medians["after"]) / np.array(medians["before"]))
            print(f"{cell:4s} {size:9s} {name:9s} before {before:8.3f} ms  after {after:8.3f} ms  "
                  f"{100 * (after / before - 1):+5.1f} %  (median ratio {100 * (ratio - 1):+5.1f} %)",
                  flush=True)


if __name__ == "__main__":
    main()
