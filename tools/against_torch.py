"""fastrnn's modules against torch's on any sizes, off the bench's grid: the eval forward
(torch under no_grad) and forward + backward (training mode; torch's backward of the output
against a random gradient, the input's gradient included as fastrnn's), in one process, the
median time of each (tools/ab.py's block_median), and the ratio torch / fastrnn per pass.
Rows where torch is less than --flag times slower are marked.

    python tools/against_torch.py --cells lstm,gru,rnn --sizes 50x32x20x20,20x64x300x150-2L-bi
    python tools/against_torch.py --hidden 1,3,7,17,33,65,127 --batches 1,4,32 --steps 50

Sizes as ``fastrnn bench --sizes`` takes them (a grid name or TxNxIxH, optionally with
-<k>L and -bi); --hidden with --batches and --steps adds the sizes T x N x H x H;
--proj-size gives the LSTM rows a projection; --precision bfloat16 compares fastrnn's bf16
products with torch's module in bfloat16 (``module.to(torch.bfloat16)``, bf16 input and
gradient), as ``fastrnn bench --precision bfloat16`` does. Needs torch
(``pip install "torch==2.13.0"``). Both libraries get --threads threads.
"""
import argparse

import numpy as np
import torch

import fastrnn
from ab import block_median
from fastrnn.bench.sizes import parse_cells, parse_sizes


def compare(cell, size, proj_size, precision, seconds, rng):
    """(fastrnn eval us, torch eval us, fastrnn fwd+bwd us, torch fwd+bwd us) for one size."""
    options = dict(num_layers=size.layers, bidirectional=size.bidirectional)
    if proj_size and cell == "lstm":
        options["proj_size"] = proj_size
    ours = getattr(fastrnn, cell.upper())(size.I, size.H, precision=precision, **options)
    theirs = getattr(torch.nn, cell.upper())(size.I, size.H, **options)
    width = options.get("proj_size", size.H) * (2 if size.bidirectional else 1)
    x = rng.standard_normal((size.T, size.N, size.I), dtype=np.float32)
    grad = rng.standard_normal((size.T, size.N, width), dtype=np.float32)
    x_t, grad_t = torch.from_numpy(x), torch.from_numpy(grad)
    if precision == "bfloat16":
        theirs = theirs.to(torch.bfloat16)
        x_t, grad_t = x_t.to(torch.bfloat16), grad_t.to(torch.bfloat16)
    x_grad = x_t.clone().requires_grad_(True)

    def train_ours():
        ours(x)
        ours.backward(grad)

    def train_theirs():
        theirs(x_grad)[0].backward(grad_t)

    def median_us(call):
        call()  # warm-up: packing, the allocator's cache
        return block_median(call, seconds) * 1e6

    ours.eval()
    theirs.eval()
    with torch.no_grad():
        eval_theirs = median_us(lambda: theirs(x_t))
    eval_ours = median_us(lambda: ours(x))
    ours.train()
    theirs.train()
    return eval_ours, eval_theirs, median_us(train_ours), median_us(train_theirs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="lstm,gru,rnn")
    parser.add_argument("--sizes", default="", help="as fastrnn bench --sizes")
    parser.add_argument("--hidden", default="", help="hidden sizes H (= I) for --batches")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--proj-size", type=int, default=0, help="of the LSTM rows")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="of fastrnn's products; bfloat16 runs torch's module in bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.15, help="per measurement")
    parser.add_argument("--flag", type=float, default=1.1,
                        help="mark rows where torch / fastrnn is below this")
    args = parser.parse_args()
    tokens = [s for s in args.sizes.split(",") if s]
    tokens += [f"{args.steps}x{n}x{h}x{h}" for h in args.hidden.split(",") if h
               for n in args.batches.split(",")]
    if not tokens:
        raise SystemExit("no sizes: give --sizes or --hidden")
    try:
        sizes, cells = parse_sizes(",".join(tokens)), parse_cells(args.cells)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    torch.set_num_threads(args.threads)
    fastrnn.set_num_threads(args.threads)
    print(f"fastrnn {fastrnn.__version__}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.precision}; us a call, ratio torch / fastrnn")
    rng = np.random.default_rng(0)
    for cell in cells:
        for size in sizes:
            eval_ours, eval_theirs, train_ours, train_theirs = compare(
                cell, size, args.proj_size, args.precision, args.seconds, rng)
            ratios = eval_theirs / eval_ours, train_theirs / train_ours
            mark = "  <" if min(ratios) < args.flag else ""
            proj = f" proj {args.proj_size}" if args.proj_size and cell == "lstm" else ""
            print(f"{cell:4s} {size.label + proj:26s} fwd {eval_ours:10.1f} ({ratios[0]:5.2f}x)  "
                  f"fwd+bwd {train_ours:10.1f} ({ratios[1]:5.2f}x){mark}", flush=True)


if __name__ == "__main__":
    main()
