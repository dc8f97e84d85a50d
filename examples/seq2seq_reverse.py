"""Many-to-many, unequal lengths: an encoder–decoder that reverses a sequence.

The encoder reads the source (padded, with ``lengths``); its final state h_n starts the
decoder, which is trained with teacher forcing (input: <s> + target, output: target +
</s>) and decodes greedily at inference until </s>. Reports exact-match accuracy.

Encoder and decoder are GRUs by default: the GRU was introduced for encoder–decoders, its
gates deciding what of the source the one state vector handed to the decoder keeps
(``--cell lstm`` hands over (h_n, c_n); ``--cell rnn`` for comparison).

    python examples/seq2seq_reverse.py [--cell gru|lstm|rnn] [--epochs 5]
"""

import argparse
import time

import numpy as np

import fastrnn
from fastrnn.data import Vocab, batch_iterator, pad_sequences
from fastrnn.models import CELLS, Seq2Seq

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--cell", choices=CELLS, default="gru")
p.add_argument("--epochs", type=int, default=5)
args = p.parse_args()

# a model this small gains nothing from a second thread (and loses on a busy machine)
fastrnn.set_num_threads(1)
rng = np.random.default_rng(0)
vocab = Vocab("0123456789", specials=("<pad>", "<unk>", "<s>", "</s>"))
BOS, EOS = vocab["<s>"], vocab["</s>"]


def make(n):
    return [rng.integers(4, 14, size=rng.integers(1, 7)) for _ in range(n)]  # digit ids


train, test = make(20000), make(500)
model = Seq2Seq(len(vocab), len(vocab), embedding_dim=16, hidden_size=128, cell=args.cell,
                seed=0)
opt = fastrnn.optim.Adam(model.parameters(), lr=3e-3)
ce = fastrnn.CrossEntropyLoss()


def exact_match(seqs):
    src, src_lengths = pad_sequences(seqs)
    out, lengths = model.greedy_decode(src, src_lengths, bos=BOS, eos=EOS, max_len=8)
    return np.mean([n == len(s) + 1 and np.array_equal(o[:n - 1], s[::-1])
                    for s, o, n in zip(seqs, out, lengths)])


start = time.perf_counter()
for epoch in range(1, args.epochs + 1):
    for seqs in batch_iterator(train, batch_size=64, shuffle=True, seed=epoch):
        src, src_lengths = pad_sequences(seqs)
        tgt_in, tgt_lengths = pad_sequences([np.r_[BOS, s[::-1]] for s in seqs])
        tgt_out, _ = pad_sequences([np.r_[s[::-1], EOS] for s in seqs], pad_value=-100)
        model.zero_grad()
        loss = ce(model(src, src_lengths, tgt_in, tgt_lengths), tgt_out)
        model.backward(ce.backward())
        fastrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(f"epoch {epoch}  loss {loss:.4f}  test exact match {exact_match(test):.1%}",
          flush=True)
print(f"{args.cell.upper()} encoder and decoder trained in {time.perf_counter() - start:.1f}s")
s = test[0]
out, n = model.greedy_decode(pad_sequences([s])[0], [len(s)], BOS, EOS, 8)
print(vocab.decode(s, sep=""), "->", vocab.decode(out[0, :n[0]], sep="", skip_specials=True))
