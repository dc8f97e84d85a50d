"""What ``fastrnn bench`` measures: the grid of sizes, the size grammar, the passes and FLOPs.

The grid (seq_len T × batch N × input I × hidden H, float32):

====  ===================  ==========================================
S     512 × 1 × 64 × 128   batch 1, a long sequence: latency-bound
M1    50 × 32 × 64 × 128
M2    100 × 64 × 128 × 256
L     200 × 16 × 256 × 512
XL    100 × 128 × 512 × 1024
====  ===================  ==========================================

A size is written ``NAME`` or ``TxNxIxH``, optionally followed by ``-<k>L`` (layers) and
``-bi`` (bidirectional): ``M2-2L-bi``, ``64x8x32x64-bi``.

Every size runs for each cell of ``--cell``: ``rnn`` (Elman, G = 1 gate), ``lstm`` (G = 4),
``gru`` (G = 3). FLOPs of one layer and direction: 2·T·N·G·H·(I_layer + H), where I_layer is
I for the first layer and D·H above it (the gates' matrix products; the element-wise work is
left out); forward + backward counts 3× the forward.
"""
import dataclasses
import re

from .._layout import directions

__all__ = ["Size", "GRID", "DEFAULT_SIZES", "PASSES", "CELLS", "parse_sizes", "parse_cells",
           "rows", "forward_flops", "flops"]

# name -> (T, N, I, H, passes)
GRID = {
    "S": (512, 1, 64, 128, ("fwd", "fwd+bwd")),  # batch 1, a long sequence: latency-bound
    "M1": (50, 32, 64, 128, ("fwd", "fwd+bwd")),
    "M2": (100, 64, 128, 256, ("fwd", "fwd+bwd")),
    "L": (200, 16, 256, 512, ("fwd", "fwd+bwd")),
    "XL": (100, 128, 512, 1024, ("fwd", "fwd+bwd")),
}
DEFAULT_SIZES = ("S", "M1", "M2", "L", "XL", "M2-2L-bi")

# pass -> (FLOPs as a multiple of one forward, what is timed). Issue 5 adds "train-step"
# (forward + backward + Adam of a small torch model, fastrnn.torch.RNN vs torch.nn.RNN):
# one entry here and its builders in workloads.BUILDERS.
PASSES = {
    "fwd": (1, "forward only, eval mode (torch: inference_mode)"),
    "fwd+bwd": (3, "forward in training mode + BPTT: gradients of the input and every parameter"),
}


# cell -> gates G (the rows of W_ih are G·H), in the order the table lists them
CELLS = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclasses.dataclass(frozen=True)
class Size:
    """One workload: its name (a GRID key or 'TxNxIxH'), T, N, I, H, layers, directions and
    the passes timed on it."""

    name: str
    T: int
    N: int
    I: int  # noqa: E741 (the input size, as in the issue's notation)
    H: int
    layers: int = 1
    bidirectional: bool = False
    passes: tuple = ("fwd", "fwd+bwd")

    @property
    def shape(self):
        """'T×N×I×H'."""
        return f"{self.T}×{self.N}×{self.I}×{self.H}"

    @property
    def suffix(self):
        """'-2L-bi', '-bi', '-3L' or ''."""
        layers = f"-{self.layers}L" if self.layers != 1 else ""
        return layers + ("-bi" if self.bidirectional else "")

    @property
    def label(self):
        """The name (or TxNxIxH) with its layer and direction suffixes: 'M2-2L-bi'."""
        return self.name + self.suffix

    @property
    def token(self):
        """A string :func:`parse_sizes` reads back to this size (passes aside)."""
        return f"{self.T}x{self.N}x{self.I}x{self.H}{self.suffix}"

    def with_steps(self, T):
        """The same size over T time steps."""
        return dataclasses.replace(self, T=T)


_TOKEN = re.compile(r"^(?P<base>[A-Za-z]\w*|\d+x\d+x\d+x\d+)(?:-(?P<layers>\d+)L)?(?P<bi>-bi)?$")


def parse_sizes(text, layers=1, bidirectional=False):
    """Sizes from a comma-separated list of names and TxNxIxH tuples.

    ``layers`` and ``bidirectional`` apply where a token has no ``-<k>L`` or ``-bi`` suffix of
    its own. Duplicates are dropped. Raises ValueError naming the bad token.
    """
    sizes = []
    for token in (t.strip() for t in text.split(",")):
        m = _TOKEN.match(token)
        if m is None or (m["base"][0].isalpha() and m["base"].upper() not in GRID):
            raise ValueError(f"unknown size {token!r}: expected one of {', '.join(GRID)} or "
                             "TxNxIxH (e.g. 64x8x32x64), optionally followed by -<k>L and -bi")
        base = m["base"]
        if base[0].isalpha():
            name = base.upper()
            T, N, I, H, passes = GRID[name]
        else:
            name = base
            T, N, I, H = (int(v) for v in base.split("x"))
            passes = ("fwd", "fwd+bwd")
        size = Size(name, T, N, I, H, int(m["layers"]) if m["layers"] else layers,
                    bool(m["bi"]) or bidirectional, passes)
        if min(size.T, size.N, size.I, size.H, size.layers) < 1:
            raise ValueError(f"size {token!r}: T, N, I, H and layers must be positive")
        if size not in sizes:
            sizes.append(size)
    return sizes


def parse_cells(text):
    """Cells from a comma-separated list of CELLS keys (any case), in CELLS' order, duplicates
    dropped. Raises ValueError naming the bad token."""
    tokens = [t.strip().lower() for t in text.split(",")]
    for token in tokens:
        if token not in CELLS:
            raise ValueError(f"unknown cell {token!r}: expected a comma-separated list of "
                             f"{', '.join(CELLS)}")
    return [cell for cell in CELLS if cell in tokens]


def rows(sizes):
    """The (size, pass) rows of a table over ``sizes``, in order."""
    return [(size, p) for size in sizes for p in size.passes]


def forward_flops(size, cell="rnn"):
    """FLOPs of one forward pass of ``cell``: Σ over layers and directions of
    2·T·N·G·H·(I_layer + H), G the cell's gates."""
    D = directions(size.bidirectional)
    total = 0
    for layer in range(size.layers):
        i_layer = size.I if layer == 0 else D * size.H
        total += D * 2 * size.T * size.N * CELLS[cell] * size.H * (i_layer + size.H)
    return total


def flops(size, pass_, cell="rnn"):
    """FLOPs of one call of ``pass_`` on ``size`` for ``cell``."""
    return PASSES[pass_][0] * forward_flops(size, cell)
