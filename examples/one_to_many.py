"""One-to-many: generate a sequence from a single input, a class label.

The label's learned vector is the RNN's initial state; the decoder then writes the
English name of the digit, character by character, from a begin token (teacher forcing
in training; greedy decoding and sampling at inference).

    python examples/one_to_many.py
"""

import time

import numpy as np

import fastrnn
from fastrnn.data import Vocab, pad_sequences
from fastrnn.models import ConditionalGenerator

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BOS, EOS = "<s>", "</s>"
vocab = Vocab("".join(NAMES), specials=("<pad>", "<unk>", BOS, EOS))
bos, eos = vocab[BOS], vocab[EOS]

# a model this small gains nothing from a second thread (and loses on a busy machine)
fastrnn.set_num_threads(1)
rng = np.random.default_rng(0)
model = ConditionalGenerator(num_classes=10, vocab_size=len(vocab), embedding_dim=16,
                             hidden_size=64, seed=0)
opt = fastrnn.optim.Adam(model.parameters(), lr=1e-2)
ce = fastrnn.CrossEntropyLoss()  # ignore_index=-100 masks the padding

start = time.perf_counter()
for step in range(1, 301):
    labels = rng.integers(0, 10, size=32)
    words = [vocab.encode(NAMES[k]) for k in labels]
    x, lengths = pad_sequences([np.r_[bos, w] for w in words])           # input: <s> w
    y, _ = pad_sequences([np.r_[w, eos] for w in words], pad_value=-100)  # target: w </s>
    model.zero_grad()
    loss = ce(model(labels, x, lengths), y)
    model.backward(ce.backward())
    fastrnn.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 50 == 0:
        print(f"step {step}  loss {loss:.4f}")

tokens, lengths = model.generate(np.arange(10), 8, bos=bos, eos=eos)   # greedy
generated = [vocab.decode(t[:n - 1] if t[n - 1] == eos else t[:n], sep="")
             for t, n in zip(tokens, lengths)]
exact = np.mean([g == w for g, w in zip(generated, NAMES)])
print(f"trained in {time.perf_counter() - start:.1f}s; greedy: {generated}")
print(f"exact match: {exact:.0%}")
tokens, lengths = model.generate(np.full(5, 7), 8, bos=bos, eos=eos, temperature=1.0, seed=0)
print("samples for label 7:", [vocab.decode(t[:n], sep="", skip_specials=True)
                               for t, n in zip(tokens, lengths)])
