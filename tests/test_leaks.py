"""Memory stays flat over thousands of forward/backward calls (and of refused calls).

The resident set size is read from /proc/self/statm after a warm-up (which lets the
allocator and OpenMP's thread pool reach their steady state) and again after the
workload. Every workload allocates per call something a leak would keep: the packed
W_hh (the recurrence), per-thread scratch (batch slices and column slices), GEMM scratch,
and the arrays returned to Python, so a leak of any of them grows the RSS by megabytes.
"""

import os
import sys

import numpy as np
import pytest

from _helpers import random_params
import fastrnn
from fastrnn import _rnn, functional

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/statm")

WARMUP = 200
SLACK = 4 << 20  # bytes; allocator noise is well under 1 MiB (see docs/hardening.md)


def rss():
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth(step, calls):
    """RSS growth over ``calls`` calls of ``step`` after a warm-up, in bytes."""
    for _ in range(WARMUP):
        step()
    before = rss()
    for _ in range(calls):
        step()
    return rss() - before


@pytest.fixture
def two_threads():
    previous = fastrnn.get_num_threads()
    fastrnn.set_num_threads(2)
    yield
    fastrnn.set_num_threads(previous)


def test_module_training_steps(two_threads):
    """Small module calls: dropout masks, the BPTT cache, accumulated gradients."""
    rng = np.random.default_rng(0)
    rnn = fastrnn.RNN(3, 8, 2, dropout=0.3, bidirectional=True, seed=0)
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    lengths = np.array([5, 0, 3, 1])
    gy = np.ones((5, 4, 16), dtype=np.float32)

    def step():
        rnn(x, None, lengths)
        rnn.backward(gy)

    assert growth(step, 2000) < SLACK


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("seq_len,batch,hidden", [(8, 16, 64), (8, 2, 256)],
                         ids=["batch-slices", "column-slices"])
def test_parallel_paths(two_threads, seq_len, batch, hidden, dtype):
    """Two threads (L·N·H² ≥ 2¹⁹): per-thread scratch for batch slices, the shared g and
    barriers for column slices; a leaked packed W_hh alone would be ≥ 16 KiB per call."""
    rng = np.random.default_rng(1)
    params = random_params(rng, 4, hidden, 1, True, True, dtype)
    x = rng.standard_normal((seq_len, batch, 4)).astype(dtype)
    lengths = rng.integers(0, seq_len + 1, size=batch)
    gy = rng.standard_normal((seq_len, batch, 2 * hidden)).astype(dtype)

    def step():
        _, _, cache = functional.rnn_forward(x, params, bidirectional=True, lengths=lengths)
        functional.rnn_backward(cache, gy)

    assert growth(step, 1000) < SLACK


def test_refused_calls():
    """Errors raised in Python (validation) and in the compiled code (a GEMM refusing rows
    beyond INT_MAX) release whatever they had taken."""
    params = random_params(np.random.default_rng(2), 3, 8, 1, False, True, np.float32)
    x = np.zeros((5, 4, 3), dtype=np.float32)
    as_strided = np.lib.stride_tricks.as_strided
    rows = 2**31 + 1
    a = as_strided(np.zeros(1, np.float32), shape=(rows, 1), strides=(0, 4))
    b = np.zeros((1, 1), np.float32)

    def step():
        for bad in (dict(lengths=[9, 9, 9, 9]), dict(h0=np.zeros((2, 4, 8), np.float32))):
            with pytest.raises(ValueError):
                functional.rnn_forward(x, params, **bad)
        with pytest.raises(TypeError):
            functional.rnn_forward(x.astype(np.float64), params)
        with pytest.raises(MemoryError):
            _rnn.gemm(a, b, as_strided(np.zeros(1, np.float32), shape=(rows, 1), strides=(0, 4)),
                      None, False, 1)

    assert growth(step, 2000) < SLACK
