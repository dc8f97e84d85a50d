"""Data-parallel training of fastrnn.torch.RNN, LSTM and GRU models under
DistributedDataParallel.

Two processes (gloo, 127.0.0.1), each with half of a batch, must produce the averaged
gradients and, after a few SGD steps, the weights of one process training on the whole batch.
Run as a script, this file is one of those processes:
``python test_ddp.py RANK WORLD_SIZE PORT OUTPUT.npz``.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

WORLD_SIZE, STEPS = 2, 3
PROCESS_SECONDS, STACKS_SECONDS = 120, 100  # a hung process shows where before it is killed
L, N, I, H = 7, 8, 3, 6   # N splits evenly across the processes


class Model(torch.nn.Module):
    """Variable-length sequences -> 2-layer bidirectional ``cell`` -> last states -> linear."""

    def __init__(self, cell):
        super().__init__()
        self.rnn = getattr(fastrnn.torch, cell)(I, H, num_layers=2, bidirectional=True,
                                                dtype=torch.float64)
        self.head = torch.nn.Linear(2 * H, 2, dtype=torch.float64)

    def forward(self, x, lengths):
        _, state = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        h_n = state[0] if isinstance(state, tuple) else state  # an LSTM's is (h_n, c_n)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))


def make_model(cell):
    torch.manual_seed(0)
    return Model(cell)


def make_batch():
    """The union batch: inputs (L, N, I), lengths (N,), targets (N, 2)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(L, N, I, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    target = torch.randn(N, 2, generator=g, dtype=torch.float64)
    return x, lengths, target


def loss_of(model, x, lengths, target):
    # a mean over the batch: DDP's average of per-process means is the union batch's mean
    return torch.nn.functional.mse_loss(model(x, lengths), target)


def train(model, x, lengths, target, names):
    """STEPS steps of SGD; returns {grad at step 0, weights after} by parameter name."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    result = {}
    for step in range(STEPS):
        optimizer.zero_grad()
        loss_of(model, x, lengths, target).backward()
        if step == 0:
            result.update({f"grad/{n}": p.grad.numpy().copy()
                           for n, p in zip(names, model.parameters())})
        optimizer.step()
    result.update({f"weight/{n}": p.detach().numpy().copy()
                   for n, p in zip(names, model.parameters())})
    return result


def worker(cell, rank, world_size, port, output):
    """One DDP process: its share of the batch, gradients averaged over gloo."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    fastrnn.set_num_threads(1)  # 2 processes on a 2-core machine: no oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        module = make_model(cell)
        names = [n for n, _ in module.named_parameters()]
        model = torch.nn.parallel.DistributedDataParallel(module)
        x, lengths, target = make_batch()
        part = slice(rank * N // world_size, (rank + 1) * N // world_size)
        x, lengths, target = x[:, part], lengths[part], target[part]
        with model.no_sync():  # this process's own gradient, before averaging
            loss_of(model, x, lengths, target).backward()
        result = {f"local/{n}": p.grad.numpy().copy() for n, p in zip(names, module.parameters())}
        result.update(train(model, x, lengths, target, names))
        np.savez(output, **result)
        dist.barrier()  # neither process tears down its connections while the other uses them
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_ddp_two_processes_match_single_process(tmp_path, cell):
    from _helpers import assert_close_rel

    port = _free_port()
    repo = os.path.dirname(os.path.dirname(fastrnn.__file__))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    outputs = [tmp_path / f"rank{r}.npz" for r in range(WORLD_SIZE)]
    procs = [subprocess.Popen([sys.executable, __file__, cell, str(r), str(WORLD_SIZE),
                               str(port), str(outputs[r])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD_SIZE)]
    try:
        logs = [p.communicate(timeout=PROCESS_SECONDS)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [p.communicate()[0] for p in procs]
        pytest.fail(f"the processes did not finish in {PROCESS_SECONDS} s; their output (each "
                    f"prints its threads' stacks after {STACKS_SECONDS} s):\n"
                    + "\n".join(f"--- rank {r}:\n{log}" for r, log in enumerate(logs)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"

    model = make_model(cell)
    names = [n for n, _ in model.named_parameters()]
    expected = train(model, *make_batch(), names)
    ranks = [dict(np.load(o)) for o in outputs]
    for n in names:
        union = expected[f"grad/{n}"]
        local = [r[f"local/{n}"] for r in ranks]
        assert not np.allclose(local[0], union), f"{n}: the halves should differ from the union"
        for r, result in enumerate(ranks):
            assert_close_rel(result[f"grad/{n}"], union, np.float64,
                             name=f"rank {r} averaged grad {n}")
            assert_close_rel(result[f"weight/{n}"], expected[f"weight/{n}"], np.float64,
                             name=f"rank {r} weight {n} after {STEPS} steps")
        # every process holds the same weights
        assert np.array_equal(ranks[0][f"weight/{n}"], ranks[1][f"weight/{n}"]), n


if __name__ == "__main__":
    import faulthandler
    faulthandler.dump_traceback_later(STACKS_SECONDS)
    worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    # gloo's threads can abort ("terminate called without an active exception") while the
    # interpreter finalizes (pytorch/pytorch#179291); the results are written, so skip that
    sys.stdout.flush()
    os._exit(0)
