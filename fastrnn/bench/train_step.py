"""Benchmark row: one training step of a small PyTorch model, fastrnn.torch.RNN vs torch.nn.RNN.

The model is a character-level language model, Embedding(65, 64) -> RNN(64, 256, 2 layers)
-> Linear(256, 65), on sequences of 100 steps in batches of 32; a step is forward, cross
entropy, backward and ``torch.optim.Adam``. Both models start from the same weights and see
the same batch; only the RNN layer differs, so the ratio is what swapping it buys a user.
Needs PyTorch (``pip install "fastrnn[torch]"``).
"""

import time

__all__ = ["bench_torch_training_step", "make_training_step"]

VOCAB, EMBED, HIDDEN, LAYERS, SEQ_LEN, BATCH = 65, 64, 256, 2, 100, 32


def make_training_step(rnn):
    """A zero-argument callable running one training step of the benchmark model.

    Parameters
    ----------
    rnn : {'fastrnn', 'torch'}
        The recurrent layer: fastrnn.torch.RNN or torch.nn.RNN. The weights (seed 0) and
        the batch are the same for both.
    """
    import torch

    from ..torch import RNN

    rnn_class = {"fastrnn": RNN, "torch": torch.nn.RNN}[rnn]
    torch.manual_seed(0)
    embed = torch.nn.Embedding(VOCAB, EMBED)
    layer = rnn_class(EMBED, HIDDEN, num_layers=LAYERS)
    head = torch.nn.Linear(HIDDEN, VOCAB)
    params = [*embed.parameters(), *layer.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    tokens = torch.randint(0, VOCAB, (SEQ_LEN + 1, BATCH),
                           generator=torch.Generator().manual_seed(0))
    inputs, targets = tokens[:-1], tokens[1:]  # next-character prediction

    def step():
        optimizer.zero_grad()
        logits = head(layer(embed(inputs))[0])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        optimizer.step()

    return step


def _median_ms(fn, repeats):
    fn()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2]


def bench_torch_training_step(threads=1, repeats=5):
    """Time one training step with fastrnn.torch.RNN and with torch.nn.RNN.

    Parameters
    ----------
    threads : int
        Threads for both fastrnn's kernels and torch's intra-op pool during the run (both
        are restored afterwards).
    repeats : int
        Timed steps per model after one warm-up step; the median is reported.

    Returns
    -------
    dict with ``fastrnn_ms`` and ``torch_ms`` (median milliseconds per step) and
    ``speedup`` (torch_ms / fastrnn_ms).
    """
    import torch

    from .. import parallel

    previous_torch, previous_fastrnn = torch.get_num_threads(), parallel._num_threads
    torch.set_num_threads(threads)
    parallel.set_num_threads(threads)
    try:
        result = {f"{rnn}_ms": _median_ms(make_training_step(rnn), repeats)
                  for rnn in ("fastrnn", "torch")}
    finally:
        torch.set_num_threads(previous_torch)
        parallel.set_num_threads(previous_fastrnn)
    result["speedup"] = result["torch_ms"] / result["fastrnn_ms"]
    return result
