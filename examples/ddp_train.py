"""Data-parallel training of a fastrnn.torch.RNN model with DistributedDataParallel (gloo, CPU).

Two processes on this machine::

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py

Two machines with 4 processes each (run on every machine, node_rank 0 and 1)::

    torchrun --nnodes=2 --nproc_per_node=4 --node_rank=0 \\
        --master_addr=HOST0 --master_port=29500 examples/ddp_train.py

``python examples/ddp_train.py`` runs the same code as a single process. ``--rnn torch``
swaps in torch.nn.RNN to compare speed; the results agree to float rounding.

Each process trains on its own shard of every epoch (DistributedSampler); DDP averages the
gradients after backward, so all processes keep identical weights. fastrnn runs
``OMP_NUM_THREADS`` threads per process, which torchrun sets to 1 when it starts several
processes per machine; raise it (or pass ``--threads``) to use cores / processes each.

The task: a variable-length sequence of numbers (5 to 40 steps) is positive if its sum is;
the model reads it packed (PackedSequence) and classifies its last hidden state.
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import fastrnn
import fastrnn.torch


class SumSign(torch.nn.Module):
    """Packed sequences -> RNN -> last hidden state -> 2 logits."""

    def __init__(self, rnn_class, hidden_size=64):
        super().__init__()
        self.rnn = rnn_class(1, hidden_size, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, 2)

    def forward(self, x, lengths):
        _, h_n = self.rnn(pack_padded_sequence(x, lengths, batch_first=True,
                                               enforce_sorted=False))
        return self.head(h_n[-1])


def make_dataset(size, max_len=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, max_len + 1, (size,), generator=g)
    x = torch.randn(size, max_len, 1, generator=g)
    x[torch.arange(max_len)[None, :] >= lengths[:, None]] = 0  # padding
    labels = (x.sum(dim=(1, 2)) > 0).long()
    return TensorDataset(x, lengths, labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rnn", choices=["fastrnn", "torch"], default="fastrnn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per process for fastrnn and torch (default: OMP_NUM_THREADS)")
    args = parser.parse_args()

    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; alone, be a world of one
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.threads:
        torch.set_num_threads(args.threads)
        fastrnn.set_num_threads(args.threads)

    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    rnn_class = fastrnn.torch.RNN if args.rnn == "fastrnn" else torch.nn.RNN
    model = DistributedDataParallel(SumSign(rnn_class))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = make_dataset(args.samples, seed=0)
    test = make_dataset(1024, seed=1)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a different shuffle, and shard, every epoch
        start, total, count = time.perf_counter(), 0.0, 0
        model.train()
        for x, lengths, labels in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x, lengths), labels)
            loss.backward()  # DDP averages the gradients across processes here
            optimizer.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
        seconds = time.perf_counter() - start
        stats = torch.tensor([total, count], dtype=torch.float64)
        dist.all_reduce(stats)  # mean training loss over all processes
        model.eval()
        with torch.no_grad():
            x, lengths, labels = test.tensors
            accuracy = (model(x, lengths).argmax(1) == labels).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch}: loss {stats[0] / stats[1]:.4f}, test accuracy "
                  f"{accuracy:.3f}, {seconds:.2f} s ({world} process{'es' * (world > 1)}, "
                  f"{args.rnn})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
