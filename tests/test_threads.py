"""Threading: OpenMP is compiled in, and results are bitwise identical for any thread count."""

import os

import numpy as np
import pytest

from _helpers import DTYPES, assert_results_close, assert_results_equal, forward_kwargs, \
    make_dropout_masks, random_params, run_api, run_module
import fastrnn
from fastrnn import functional, reference

# A batch large enough to be split across threads, with uneven slices.
L, N, I, H = 7, 37, 5, 6


def test_openmp_enabled():
    if os.environ.get("FASTRNN_ALLOW_SERIAL") == "1":
        pytest.skip("FASTRNN_ALLOW_SERIAL=1: a serial build is allowed")
    assert functional.openmp_enabled(), "the extension was built without OpenMP"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_num_threads(restore_threads, n):
    fastrnn.set_num_threads(n)
    assert fastrnn.get_num_threads() == n


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_does_not_change_results(kernel, restore_threads, nonlinearity, dtype):
    rng = np.random.default_rng(37)
    num_layers, bidirectional = 2, True
    params = random_params(rng, I, H, num_layers, bidirectional, True, dtype)
    x = rng.standard_normal((L, N, I)).astype(dtype)
    h0 = rng.standard_normal((4, N, H)).astype(dtype)
    lengths = rng.integers(0, L + 1, size=N)
    gy = rng.standard_normal((L, N, 2 * H)).astype(dtype)
    ghn = rng.standard_normal((4, N, H)).astype(dtype)
    masks = make_dropout_masks(rng, num_layers, L, N, H, bidirectional, 0.3, dtype)
    kwargs = forward_kwargs(num_layers, nonlinearity, bidirectional, "time", lengths, masks)

    results = {}
    for n in (1, 2, 3):
        fastrnn.set_num_threads(n)
        results[n] = run_api(functional, params, x, h0, gy, ghn, **kwargs)
    assert_results_close(results[1], run_api(reference, params, x, h0, gy, ghn, **kwargs), dtype)
    assert_results_equal(results[2], results[1])
    assert_results_equal(results[3], results[1])


def test_module_thread_count_does_not_change_results(kernel, restore_threads):
    rng = np.random.default_rng(38)
    x = rng.standard_normal((N, L, I)).astype(np.float32)
    lengths = rng.integers(1, L + 1, size=N)
    gy = rng.standard_normal((N, L, 2 * H)).astype(np.float32)
    ghn = rng.standard_normal((4, N, H)).astype(np.float32)
    results = []
    for n in (1, 2):
        fastrnn.set_num_threads(n)
        rnn = fastrnn.RNN(I, H, 2, batch_first=True, dropout=0.2, bidirectional=True, seed=3)
        results.append(run_module(rnn, x, None, lengths, gy, ghn))
    assert_results_equal(results[1], results[0])
