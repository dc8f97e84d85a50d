"""Many-to-many tagging: a label per step with a bidirectional LSTM.

Toy task: each digit is tagged 1 if it is larger than both neighbours (a local
maximum), which needs the left and the right context. Padding is masked out of the loss
(ignore_index) and of the accuracy, and ``lengths`` keeps it out of the states. A
bidirectional LSTM is the classic tagger; ``--cell rnn`` or ``gru`` trains the others.

    python examples/tag_sequences.py [--cell lstm|gru|rnn] [--epochs 6]
"""

import argparse
import time

import numpy as np

import fastrnn
from fastrnn.data import batch_iterator, pad_sequences, train_val_test_split
from fastrnn.models import CELLS, SequenceTagger, accuracy

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--cell", choices=CELLS, default="lstm")
p.add_argument("--epochs", type=int, default=6)
args = p.parse_args()

# a model this small gains nothing from a second thread (and loses on a busy machine)
fastrnn.set_num_threads(1)
rng = np.random.default_rng(0)
seqs = [rng.integers(2, 12, size=rng.integers(3, 25)) for _ in range(6000)]  # ids 2..11


def tags_of(s):
    padded = np.r_[0, s, 0]
    return ((s > padded[:-2]) & (s > padded[2:])).astype(np.int64)


train, val, test = train_val_test_split(seqs, val=0.1, test=0.1, seed=0)
model = SequenceTagger(vocab_size=12, embedding_dim=16, hidden_size=64, num_tags=2,
                       bidirectional=True, cell=args.cell, seed=0)
opt = fastrnn.optim.Adam(model.parameters(), lr=3e-3)
ce = fastrnn.CrossEntropyLoss(ignore_index=-100)


def batch(xs):
    x, lengths = pad_sequences(xs)
    y, _ = pad_sequences([tags_of(s) for s in xs], pad_value=-100)
    return x, lengths, y


def evaluate(xs):
    model.eval()
    x, lengths, y = batch(xs)
    acc = accuracy(model(x, lengths), y)  # padded positions (-100) not counted
    model.train()
    return acc


start = time.perf_counter()
for epoch in range(1, args.epochs + 1):
    for bx in batch_iterator(train, batch_size=64, shuffle=True, seed=epoch):
        x, lengths, y = batch(bx)
        model.zero_grad()
        loss = ce(model(x, lengths), y)
        model.backward(ce.backward())
        fastrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(f"epoch {epoch}  loss {loss:.4f}  validation accuracy {evaluate(val):.2%}")
majority = 1 - np.mean(np.concatenate([tags_of(s) for s in test]))
print(f"trained in {time.perf_counter() - start:.1f}s; test accuracy {evaluate(test):.2%} "
      f"(always tagging 0: {majority:.2%})")
