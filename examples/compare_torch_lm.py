"""Train the same character-level language model with fastrnn and with PyTorch; compare.

Same architecture (Embedding → 2-layer tanh RNN, LSTM or GRU (``--cell``) → Linear; on the
torch side torch.nn.RNN / LSTM / GRU themselves), same initial weights (fastrnn's, copied
into torch through its state_dict), same Adam, same gradient clipping, same batches in the
same order, same number of steps, same thread count. Prints each one's validation
perplexity after training, its training wall time and its median time per step.

The two trainings are interleaved step by step and timed separately, so that load from
other processes on the machine falls on both alike.

    python examples/compare_torch_lm.py                       # tinyshakespeare if present
    python examples/compare_torch_lm.py --data some.txt --steps 300 --threads 2
    python examples/compare_torch_lm.py --cell lstm          # or gru; default rnn
    python examples/compare_torch_lm.py --precision bfloat16  # bf16 products on both sides

With ``--precision bfloat16`` fastrnn's recurrent network multiplies bfloat16 operands
(``model.rnn.precision``) and torch trains under ``torch.autocast("cpu", torch.bfloat16)``;
both keep float32 parameters and Adam states.

Needs torch (an optional dependency of fastrnn).
"""

import argparse
import os
import sys
import time

# the project's shared data folder sits beside the checkout (CI has it; users may not)
DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                            "data", "tinyshakespeare.txt")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help=f"UTF-8 text (default: {DEFAULT_DATA} if present, else the Python "
                        "standard library's sources)")
    p.add_argument("--max-bytes", type=int, default=1_200_000, help="use at most this much text")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="rnn")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="threads for both (fastrnn's OpenMP, torch, and NumPy's BLAS)")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                   help="of the matrix products (see the module's docstring)")
    return p.parse_args()


def main():
    args = parse_args()
    # thread counts must be fixed before NumPy's BLAS and torch start their pools
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch

    import fastrnn
    from fastrnn.data import Vocab, char_tokenize, lm_batches
    from fastrnn.models import RNNLanguageModel
    from fastrnn.train_cli import default_corpus, read_text

    torch.set_num_threads(args.threads)
    fastrnn.set_num_threads(args.threads)

    path = args.data or (DEFAULT_DATA if os.path.exists(DEFAULT_DATA) else None)
    text = read_text(path)[:args.max_bytes] if path else default_corpus(args.max_bytes)
    tokens = char_tokenize(text)
    n_val = int(len(tokens) * args.val_fraction)
    vocab = Vocab(tokens[:-n_val])
    train_ids, val_ids = vocab.encode(tokens[:-n_val]), vocab.encode(tokens[-n_val:])
    print(f"{path or 'stdlib sources'}: {len(train_ids):,} training and {len(val_ids):,} "
          f"validation characters, vocabulary {len(vocab)}; {args.steps} steps of "
          f"batch {args.batch} × seq_len {args.seq_len}, {args.layers}-layer "
          f"{args.cell.upper()} of {args.hidden}, {args.threads} thread(s), {args.precision} "
          f"products")

    model = RNNLanguageModel(len(vocab), args.embedding, args.hidden, args.layers,
                             cell=args.cell, seed=args.seed)
    model.rnn.precision = args.precision
    bf16 = args.precision == "bfloat16"
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    torch_cell = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[args.cell]

    class TorchLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(len(vocab), args.embedding)
            self.rnn = torch_cell(args.embedding, args.hidden, args.layers)
            self.decoder = torch.nn.Linear(args.hidden, len(vocab))

        def forward(self, x, h=None):
            out, h = self.rnn(self.embedding(x), h)
            return self.decoder(out), h

    tmodel = TorchLM()
    tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})

    opt = fastrnn.optim.Adam(model.parameters(), lr=args.lr)
    topt = torch.optim.Adam(tmodel.parameters(), lr=args.lr)
    ce = fastrnn.CrossEntropyLoss()
    tce = torch.nn.CrossEntropyLoss()
    V = len(vocab)

    def batches():
        while True:
            yield from lm_batches(train_ids, args.batch, args.seq_len)

    def detach(state):  # truncated BPTT: an LSTM's state is the pair (h, c)
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    h = th = None
    t_fast = t_torch = 0.0
    steps_fast, steps_torch = [], []
    for step, (x, y) in zip(range(1, args.steps + 1), batches()):
        t0 = time.perf_counter()
        model.zero_grad()
        logits, h = model(x, h)
        loss = ce(logits, y)
        model.backward(ce.backward())
        fastrnn.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        t1 = time.perf_counter()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        topt.zero_grad()
        with autocast():
            tlogits, th = tmodel(xt, th)
            th = detach(th)
            tloss = tce(tlogits.float().reshape(-1, V), yt.reshape(-1))
        tloss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), args.clip)
        topt.step()
        t2 = time.perf_counter()
        t_fast += t1 - t0
        t_torch += t2 - t1
        steps_fast.append(t1 - t0)
        steps_torch.append(t2 - t1)
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:4d}  loss fastrnn {loss:.4f}  torch {tloss.item():.4f}   "
                  f"time fastrnn {t_fast:6.1f}s  torch {t_torch:6.1f}s", flush=True)

    ppl = model.perplexity(val_ids, args.batch, args.seq_len)
    tmodel.eval()
    with torch.no_grad():
        total, count, th = 0.0, 0, None
        for x, y in lm_batches(val_ids, args.batch, args.seq_len):
            with autocast():
                tlogits, th = tmodel(torch.from_numpy(x), th)
            total += torch.nn.functional.cross_entropy(
                tlogits.float().reshape(-1, V), torch.from_numpy(y).reshape(-1),
                reduction="sum").item()
            count += y.size
    tppl = float(np.exp(total / count))
    print(f"\nvalidation perplexity  fastrnn {ppl:.4f}   torch {tppl:.4f}   "
          f"(fastrnn/torch - 1 = {ppl / tppl - 1:+.2%})")
    print(f"training wall time     fastrnn {t_fast:.1f} s   torch {t_torch:.1f} s   "
          f"(fastrnn/torch = {t_fast / t_torch:.3f})")
    med_fast, med_torch = np.median(steps_fast) * 1e3, np.median(steps_torch) * 1e3
    print(f"median time per step   fastrnn {med_fast:.2f} ms   torch {med_torch:.2f} ms   "
          f"(fastrnn/torch = {med_fast / med_torch:.3f})")
    print(f"fastrnn kernel: {fastrnn.functional.get_kernel()}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
