"""fastrnn's modules against torch's on any sizes, off the bench's grid: the eval forward
(torch under no_grad) and forward + backward (training mode; torch's backward of the output
summed against a random gradient, the input's gradient included as fastrnn's), in one
process, medians of 5 blocks each, and the ratio torch / fastrnn per pass. Rows where torch
is less than --flag times slower are marked.

    python tools/against_torch.py --cells lstm,gru,rnn --sizes 50x32x20x20,20x64x300x150-2L-bi
    python tools/against_torch.py --hidden 1,3,7,17,33,65,127 --batches 1,4,32 --steps 50

A size is TxNxIxH, optionally with -<k>L (layers), -bi (bidirectional) and -p<P>
(proj_size, LSTM only); --hidden with --batches and --steps adds the sizes T x N x H x H.
Needs torch (``pip install "torch==2.13.0"``). Both libraries get --threads threads.
"""
import argparse
import re
import time

import numpy as np
import torch

import fastrnn

SIZE = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)((?:-\d+L|-bi|-p\d+)*)$")


def parse_size(text):
    """(T, N, I, H, layers, bidirectional, proj_size) of ``TxNxIxH[-<k>L][-bi][-p<P>]``."""
    match = SIZE.match(text)
    if not match:
        raise SystemExit(f"bad size {text!r}: TxNxIxH with optional -<k>L, -bi, -p<P>")
    T, N, I, H = (int(v) for v in match.groups()[:4])
    suffix = match.group(5)
    layers = re.search(r"-(\d+)L", suffix)
    proj = re.search(r"-p(\d+)", suffix)
    return (T, N, I, H, int(layers.group(1)) if layers else 1, "-bi" in suffix,
            int(proj.group(1)) if proj else 0)


def block_median_us(call, seconds):
    """Median over 5 blocks of the time per call (us), a block at least 2 calls and about
    seconds / 5 long, after two warm-up calls."""
    call()
    call()
    times = []
    for _ in range(5):
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < seconds / 5:
            call()
            calls += 1
        times.append((time.perf_counter() - start) / calls)
    return float(np.median(times)) * 1e6


def compare(cell, size, seconds, rng):
    """(fastrnn eval us, torch eval us, fastrnn fwd+bwd us, torch fwd+bwd us) for one size."""
    T, N, I, H, layers, bidirectional, proj = size
    options = dict(num_layers=layers, bidirectional=bidirectional)
    if proj:
        if cell != "lstm":
            raise SystemExit(f"proj_size is an LSTM's only, not {cell}'s")
        options["proj_size"] = proj
    ours = getattr(fastrnn, cell.upper())(I, H, **options)
    theirs = getattr(torch.nn, cell.upper())(I, H, **options)
    x = rng.standard_normal((T, N, I), dtype=np.float32)
    grad = rng.standard_normal((T, N, (proj or H) * (2 if bidirectional else 1)),
                               dtype=np.float32)
    x_t, grad_t = torch.from_numpy(x), torch.from_numpy(grad)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        eval_theirs = block_median_us(lambda: theirs(x_t), seconds)
    eval_ours = block_median_us(lambda: ours(x), seconds)
    ours.train()
    theirs.train()
    x_grad = x_t.clone().requires_grad_(True)

    def train_ours():
        ours(x)
        ours.backward(grad)

    def train_theirs():
        theirs(x_grad)[0].backward(grad_t)

    return (eval_ours, eval_theirs, block_median_us(train_ours, seconds),
            block_median_us(train_theirs, seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="lstm,gru,rnn")
    parser.add_argument("--sizes", default="", help="comma-separated TxNxIxH[-<k>L][-bi][-p<P>]")
    parser.add_argument("--hidden", default="", help="hidden sizes H (= I) for --batches")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.15, help="per measurement")
    parser.add_argument("--flag", type=float, default=1.1,
                        help="mark rows where torch / fastrnn is below this")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    hidden = [int(h) for h in args.hidden.split(",") if h]
    sizes += [(args.steps, int(n), h, h, 1, False, 0) for h in hidden
              for n in args.batches.split(",")]
    if not sizes:
        raise SystemExit("no sizes: give --sizes or --hidden")
    torch.set_num_threads(args.threads)
    fastrnn.set_num_threads(args.threads)
    print(f"fastrnn {fastrnn.__version__}, torch {torch.__version__}, {args.threads} threads; "
          "us a call, ratio torch / fastrnn")
    rng = np.random.default_rng(0)
    for cell in args.cells.split(","):
        for size in sizes:
            eval_ours, eval_theirs, train_ours, train_theirs = compare(cell, size, args.seconds,
                                                                       rng)
            T, N, I, H, layers, bidirectional, proj = size
            name = (f"{T}x{N}x{I}x{H}" + (f"-{layers}L" if layers > 1 else "")
                    + ("-bi" if bidirectional else "") + (f"-p{proj}" if proj else ""))
            ratios = eval_theirs / eval_ours, train_theirs / train_ours
            mark = "  <" if min(ratios) < args.flag else ""
            print(f"{cell:4s} {name:22s} fwd {eval_ours:10.1f} ({ratios[0]:5.2f}x)  "
                  f"fwd+bwd {train_ours:10.1f} ({ratios[1]:5.2f}x){mark}", flush=True)


if __name__ == "__main__":
    main()
