"""Many-to-one: classify a sequence from the RNN's final hidden state.

Toy task: sequences of 'a' and 'b' of length 5–30; the label says which letter occurs
more often. Padded batches pass ``lengths`` so each sequence's own last state is used.

    python examples/classify_sequences.py
"""

import time

import numpy as np

import fastrnn
from fastrnn.data import Vocab, batch_iterator, char_tokenize, pad_sequences, train_val_test_split
from fastrnn.models import SequenceClassifier

# a model this small gains nothing from a second thread (and loses on a busy machine)
fastrnn.set_num_threads(1)
rng = np.random.default_rng(0)
texts = []
while len(texts) < 6000:
    s = "".join(rng.choice(["a", "b"], size=rng.integers(5, 31), p=[0.5, 0.5]))
    if s.count("a") != s.count("b"):
        texts.append(s)
labels = np.array([int(s.count("b") > s.count("a")) for s in texts])
vocab = Vocab(char_tokenize(s) for s in texts)  # a list of token lists
seqs = [vocab.encode(char_tokenize(s)) for s in texts]
(train_x, val_x, test_x) = train_val_test_split(seqs, val=0.1, test=0.1, seed=0)
(train_y, val_y, test_y) = train_val_test_split(labels, val=0.1, test=0.1, seed=0)

model = SequenceClassifier(len(vocab), embedding_dim=8, hidden_size=64, num_classes=2, seed=0)
opt = fastrnn.optim.Adam(model.parameters(), lr=3e-3)
ce = fastrnn.CrossEntropyLoss()


def evaluate(xs, ys):
    model.eval()
    x, lengths = pad_sequences(xs)
    acc = float(np.mean(model.predict(x, lengths) == ys))
    model.train()
    return acc


start = time.perf_counter()
for epoch in range(1, 9):
    for bx, by in batch_iterator(train_x, train_y, batch_size=64, shuffle=True, seed=epoch):
        x, lengths = pad_sequences(bx)
        model.zero_grad()
        loss = ce(model(x, lengths), by)
        model.backward(ce.backward())
        fastrnn.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    print(f"epoch {epoch}  loss {loss:.3f}  validation accuracy {evaluate(val_x, val_y):.1%}")
print(f"trained in {time.perf_counter() - start:.1f}s; "
      f"test accuracy {evaluate(test_x, test_y):.1%} (chance ~50%)")
