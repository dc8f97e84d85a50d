"""Threads: determinism across OpenMP thread counts, and Python threads calling concurrently.

test_threads.py checks thread-count independence at sizes too small for a second thread
(fastrnn uses one when L·N·H² < 2¹⁹); here the sizes take each parallel path:

* batch slices (N ≥ 4·threads): each thread owns whole sequences for all steps;
* hidden-column slices (N < 4·threads and H ≥ 256, i.e. 8 panels of 32 columns): threads
  split W_hh's columns, one barrier per step; H = 290 leaves a ragged last panel, and
  lengths make sequences stop at different steps.

(The rules are ``_threads_for`` and ``_split_columns`` in fastrnn/_rnn.pyx.)

Then several Python threads share one parameter dict through the stateless functional API,
or each train its own module, and must get exactly the serial results; the compiled loops
release the GIL, so these calls really overlap.
"""

import threading
import time

import numpy as np
import pytest

from _helpers import DTYPES, in_threads, assert_results_close, assert_results_equal, random_params, \
    run_api, run_module
import fastrnn
from fastrnn import functional, reference

# (L, N, H, variable lengths): batch slices; hidden columns; ragged panels with lengths
PARALLEL_SIZES = [
    pytest.param(40, 37, 64, False, id="batch-slices"),
    pytest.param(16, 1, 256, False, id="column-slices"),
    pytest.param(8, 2, 290, True, id="column-slices-ragged"),
]
INPUT = 7


def _problem(rng, seq_len, batch, hidden, ragged, dtype, num_layers=2):
    params = {k: (v / 1.5).astype(dtype) for k, v in
              random_params(rng, INPUT, hidden, num_layers, True, True, np.float64).items()}
    x = rng.standard_normal((seq_len, batch, INPUT)).astype(dtype)
    h0 = rng.standard_normal((2 * num_layers, batch, hidden)).astype(dtype)
    gy = rng.standard_normal((seq_len, batch, 2 * hidden)).astype(dtype)
    ghn = rng.standard_normal((2 * num_layers, batch, hidden)).astype(dtype)
    lengths = rng.integers(0, seq_len + 1, size=batch) if ragged else None
    if ragged:
        lengths[0] = seq_len
    kwargs = dict(num_layers=num_layers, bidirectional=True, lengths=lengths)
    return params, x, h0, gy, ghn, kwargs


def _assert_threshold_reached(seq_len, batch, hidden):
    assert seq_len * batch * hidden * hidden >= 2**19, "too small to use a second thread"


# determinism -------------------------------------------------------------------------------

@pytest.mark.parametrize("seq_len,batch,hidden,ragged", PARALLEL_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_across_thread_counts_and_runs(kernel, restore_threads, seq_len,
                                                         batch, hidden, ragged, dtype):
    _assert_threshold_reached(seq_len, batch, hidden)
    params, x, h0, gy, ghn, kwargs = _problem(np.random.default_rng(seq_len + hidden), seq_len,
                                              batch, hidden, ragged, dtype)
    runs = []
    for threads in (1, 2, 2, 3):
        fastrnn.set_num_threads(threads)
        runs.append(run_api(functional, params, x, h0, gy, ghn, **kwargs))
    for other in runs[1:]:
        assert_results_equal(other, runs[0])
    if dtype == np.float64:  # and correct, at sizes the conformance tests never reach
        assert_results_close(runs[0], run_api(reference, params, x, h0, gy, ghn, **kwargs),
                             dtype)


@pytest.mark.skipif(not functional.openmp_enabled(), reason="a serial build has no team")
def test_fewer_threads_than_asked_for(tmp_path):
    """OpenMP may start fewer threads than asked (OMP_THREAD_LIMIT, nested regions): the
    column slices follow the team actually running, so no column is left uncomputed."""
    script = tmp_path / "limited.py"
    script.write_text(
        "import numpy as np, fastrnn, sys\n"
        "from fastrnn import functional\n"
        "from test_concurrency import _problem\n"
        "from _helpers import run_api\n"
        "fastrnn.set_num_threads(2)\n"
        "problem = _problem(np.random.default_rng(5), 16, 1, 256, False, np.float64)\n"
        "params, x, h0, gy, ghn, kwargs = problem\n"
        "out, hn, gx, gh0, grads = run_api(functional, params, x, h0, gy, ghn, **kwargs)\n"
        "np.savez(sys.argv[1], out=out, hn=hn, gx=gx, gh0=gh0, **grads)\n")
    import os
    import subprocess
    import sys

    paths = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(fastrnn.__file__)),
             os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, OMP_THREAD_LIMIT="1", PYTHONPATH=os.pathsep.join(paths))
    subprocess.run([sys.executable, str(script), str(tmp_path / "got.npz")], env=env,
                   check=True, timeout=120)
    got = np.load(tmp_path / "got.npz")
    params, x, h0, gy, ghn, kwargs = _problem(np.random.default_rng(5), 16, 1, 256, False,
                                              np.float64)
    expected = run_api(reference, params, x, h0, gy, ghn, **kwargs)
    assert_results_close((got["out"], got["hn"], got["gx"], got["gh0"],
                          {k: got[k] for k in expected[4]}), expected, np.float64)


@pytest.mark.parametrize("seq_len,batch,hidden,ragged", PARALLEL_SIZES)
def test_dropout_is_reproducible_from_its_seed(restore_threads, seq_len, batch, hidden, ragged):
    """Same seed → same masks and results, whatever the thread count; another seed differs."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((seq_len, batch, INPUT)).astype(np.float32)
    gy = rng.standard_normal((seq_len, batch, 2 * hidden)).astype(np.float32)
    lengths = rng.integers(1, seq_len + 1, size=batch) if ragged else None

    def run(seed, threads):
        fastrnn.set_num_threads(threads)
        rnn = fastrnn.RNN(INPUT, hidden, 3, dropout=0.4, bidirectional=True, seed=seed)
        first = run_module(rnn, x, None, lengths, gy, None)
        return first, run_module(rnn, x, None, lengths, gy, None)  # a second draw of masks

    a, b, c = run(5, 1), run(5, 2), run(6, 2)
    assert_results_equal(a[0], b[0])
    assert_results_equal(a[1], b[1])
    assert not np.array_equal(a[0][0], a[1][0]), "each forward draws new masks"
    assert not np.array_equal(a[0][0], c[0][0]), "another seed, other weights and masks"


# Python threads ---------------------------------------------------------------------------


@pytest.mark.parametrize("omp_threads", [1, 2])
def test_functional_calls_on_shared_weights(kernel, restore_threads, omp_threads):
    """Four Python threads, one parameter dict, different inputs and sizes (one thread,
    batch slices, column slices): each result equals the serial one, bit for bit."""
    fastrnn.set_num_threads(omp_threads)
    rng = np.random.default_rng(2)
    hidden = 256
    params = {k: (v / 1.5).astype(np.float32) for k, v in
              random_params(rng, INPUT, hidden, 2, True, True, np.float64).items()}
    for p in params.values():
        p.flags.writeable = False  # shared and read-only: nothing may write to it
    problems = []
    for seq_len, batch in ((6, 40), (4, 2), (3, 5), (2, 1)):
        x = rng.standard_normal((seq_len, batch, INPUT)).astype(np.float32)
        gy = rng.standard_normal((seq_len, batch, 2 * hidden)).astype(np.float32)
        lengths = rng.integers(0, seq_len + 1, size=batch)
        problems.append((x, gy, lengths))

    def work(i, repeats=3):
        x, gy, lengths = problems[i]
        results = []
        for _ in range(repeats):
            out, hn, cache = functional.rnn_forward(x, params, num_layers=2, bidirectional=True,
                                                    lengths=lengths)
            results.append((out, hn) + functional.rnn_backward(cache, gy))
        return results

    serial = [work(i, repeats=1)[0] for i in range(len(problems))]
    for i, results in enumerate(in_threads(work, len(problems))):
        for result in results:
            assert_results_equal(result, serial[i])


def test_separate_modules_train_concurrently(restore_threads):
    """Each Python thread trains its own module (dropout, gradient accumulation, an SGD
    update between steps): every thread ends with the serial run's weights, exactly."""
    fastrnn.set_num_threads(2)
    rng = np.random.default_rng(3)
    data = [(rng.standard_normal((24, 9, INPUT)).astype(np.float32),
             rng.integers(1, 25, size=9)) for _ in range(4)]

    def work(i, steps=4):
        rnn = fastrnn.RNN(INPUT, 64, 2, dropout=0.2, bidirectional=True, seed=i)
        x, lengths = data[i]
        for _ in range(steps):
            rnn.zero_grad()
            out, hn = rnn(x, None, lengths)
            rnn.backward(out, hn)  # loss = ½‖output‖² + ½‖h_n‖²
            for p in rnn.parameters():
                p.data -= 0.01 * p.grad
        return rnn.state_dict()

    serial = [work(i) for i in range(len(data))]
    for got, expected in zip(in_threads(work, len(data)), serial):
        for name in expected:
            assert np.array_equal(got[name], expected[name]), name


def test_compiled_loops_release_the_gil(restore_threads):
    """While one thread runs forwards, a pure-Python thread keeps running: its longest pause
    stays far below one call's duration (under the GIL it would span whole calls)."""
    fastrnn.set_num_threads(1)  # leave the other core to the ticking thread
    rng = np.random.default_rng(4)
    params = random_params(rng, INPUT, 256, 1, False, True, np.float64)
    x = rng.standard_normal((1000, 16, INPUT))  # 1 G multiply-adds, a 33 MB output
    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    ticker = threading.Thread(target=tick)
    ticker.start()
    calls = []
    try:
        time.sleep(0.01)
        while sum(calls) < 0.2:
            start = time.perf_counter()
            functional.rnn_forward(x, params)
            calls.append(time.perf_counter() - start)
    finally:
        stop.set()
        ticker.join()
    shortest = min(calls)
    if shortest < 0.01:
        pytest.skip(f"calls took only {shortest * 1e3:.1f} ms, too short to tell")
    gaps = np.diff(ticks)
    assert gaps.max() < shortest / 2, (
        f"the Python thread paused {gaps.max() * 1e3:.0f} ms; one call takes "
        f"{shortest * 1e3:.0f} ms")
