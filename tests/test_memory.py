"""The block cache (fastrnn._memory): reuse, zeroing, bounds, isolation, threads."""

import threading

import numpy as np
import pytest

from _helpers import assert_close_rel, random_params
import fastrnn
from fastrnn import _memory, functional, reference

BIG = 1 << 20  # float64 elements: 8 MiB, well above the cache's smallest block


@pytest.fixture(autouse=True)
def empty():
    fastrnn.empty_cache()
    yield
    fastrnn.empty_cache()


def test_freed_block_is_reused_for_sizes_it_holds_down_to_half():
    with _memory.cached_allocation():
        a = np.empty(BIG)
    address = a.ctypes.data
    del a
    assert fastrnn.cache_info()["cached_blocks"] == 1
    with _memory.cached_allocation():
        larger = np.empty(BIG + 1)
        assert larger.ctypes.data != address
        too_small = np.empty(BIG // 2 - 1)
        assert too_small.ctypes.data != address
        half = np.empty(BIG // 2)
        assert half.ctypes.data == address
        assert fastrnn.cache_info()["cached_blocks"] == 0
        # counted by what the block holds, in use and once cached again
        assert fastrnn.cache_info()["live_bytes"] >= larger.nbytes + too_small.nbytes + BIG * 8
        del larger, too_small
        before = fastrnn.cache_info()["cached_bytes"]
        del half
        assert fastrnn.cache_info()["cached_bytes"] == before + BIG * 8
        again = np.empty(BIG)  # the whole block, as first asked for
        assert again.ctypes.data == address
        again.fill(1.0)  # (all of it writable)


def test_the_smallest_block_that_holds_a_request_is_taken():
    with _memory.cached_allocation():
        blocks = [np.empty(n) for n in (2 * BIG, BIG + BIG // 2, BIG + BIG // 4)]
        addresses = [b.ctypes.data for b in blocks]
        del blocks
        got = [np.empty(BIG + 1) for _ in range(3)]
        assert [g.ctypes.data for g in got] == addresses[::-1]


def test_blocks_from_128_kib_are_cached_smaller_ones_are_not():
    # A GRU's weights at H = 128 (192 KiB each) went to malloc, whose heap returned them to
    # the system after every call in some processes: 80 page faults a training step
    with _memory.cached_allocation():
        a = np.empty((1 << 17) // 8)
        b = np.empty((1 << 17) // 8 - 1)
    del a
    assert fastrnn.cache_info()["cached_blocks"] == 1
    del b
    assert fastrnn.cache_info()["cached_blocks"] == 1


def test_of_equal_blocks_the_last_cached_is_taken():
    # (its lines are the likeliest still in cache, as with malloc's own reuse)
    with _memory.cached_allocation():
        first, second, third = np.empty(BIG), np.empty(BIG), np.empty(BIG)
        last = second.ctypes.data
        del first, third, second  # cached in that order
        assert np.empty(BIG).ctypes.data == last


def test_outside_the_context_numpy_allocates_as_usual():
    with _memory.cached_allocation():
        a = np.empty(BIG)
    del a
    b = np.empty(BIG)
    assert fastrnn.cache_info()["cached_blocks"] == 1  # b did not take it
    del b
    assert fastrnn.cache_info()["cached_blocks"] == 1  # nor was b's block cached


def test_zeros_from_a_reused_block_are_zero():
    with _memory.cached_allocation():
        a = np.empty(BIG)
        a.fill(7.0)
        address = a.ctypes.data
        del a
        z = np.zeros(BIG)
        assert z.ctypes.data == address
        assert not z.any()


@pytest.mark.parametrize("n", [1, 3, 1000, BIG - 1, BIG])
def test_blocks_are_cache_line_aligned_and_zeros_zero(n):
    # every block starts a cache line (fresh, cached or small), calloc's as well, and a
    # resized array keeps its values
    with _memory.cached_allocation():
        for reuse in range(2):
            e, z = np.empty(n), np.zeros(n)
            assert e.ctypes.data % 64 == 0 and z.ctypes.data % 64 == 0, reuse
            assert not z.any()
            e.fill(5.0)
            del e, z
        grown = np.arange(n, dtype=np.float64)
        grown.resize(n + 7, refcheck=False)  # the handler's realloc
        np.testing.assert_array_equal(grown[:n], np.arange(n))


def test_small_arrays_are_not_cached():
    with _memory.cached_allocation():
        a = np.empty(1000)
    del a
    assert fastrnn.cache_info()["cached_blocks"] == 0


def test_empty_cache_releases_everything():
    with _memory.cached_allocation():
        arrays = [np.empty(BIG + i) for i in range(3)]
    total = sum(a.nbytes for a in arrays)
    del arrays
    assert fastrnn.cache_info()["cached_bytes"] == total
    assert fastrnn.empty_cache() == total
    assert fastrnn.cache_info()["cached_bytes"] == 0
    assert fastrnn.empty_cache() == 0


def test_cache_holds_no_more_than_the_peak_in_use():
    with _memory.cached_allocation():
        for i in range(20):  # one at a time: the peak in use is one block
            a = np.empty(BIG + i)
            del a
    info = fastrnn.cache_info()
    assert info["cached_bytes"] <= info["limit_bytes"]
    assert info["cached_blocks"] <= 2


def test_blocks_of_sizes_no_longer_asked_for_are_released():
    with _memory.cached_allocation():
        stale, reused = np.empty(BIG), np.empty(BIG + 1)
        del stale  # cached, and never asked for again
        for _ in range(300):  # every free of `reused` caches it anew
            del reused
            reused = np.empty(BIG + 1)
        assert fastrnn.cache_info()["cached_blocks"] == 0  # stale was released
        for _ in range(100):  # while blocks that keep being reused stay
            del reused
            reused = np.empty(BIG + 1)
            assert fastrnn.cache_info()["live_bytes"] >= reused.nbytes
    del reused
    assert fastrnn.cache_info()["cached_bytes"] == (BIG + 1) * 8


def test_kernel_scratch_goes_through_the_cache():
    """The kernels' per-call scratch (a GEMM's packed block of B, 512 KiB here) comes from
    the cache whatever the context, so that the next call takes the block back instead of
    faulting fresh pages in."""
    from fastrnn import _rnn

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 512)), rng.standard_normal((512, 512))
    c = np.empty((64, 512))
    _rnn.gemm(a, b, c, num_threads=1)
    first = fastrnn.cache_info()
    assert first["cached_blocks"] == 1 and first["cached_bytes"] >= 1 << 19
    assert first["live_bytes"] == 0  # (given back when the call returned)
    _rnn.gemm(a, b, c, num_threads=1)  # takes the block back and returns it
    assert fastrnn.cache_info() == first
    np.testing.assert_allclose(c, a @ b, rtol=1e-10, atol=1e-10)
    assert fastrnn.empty_cache() == first["cached_bytes"]


def test_arrays_freed_in_other_threads_and_concurrent_use():
    params = random_params(np.random.default_rng(0), 16, 64, 2, True, True, np.float32)
    x = np.random.default_rng(0).standard_normal((50, 32, 16), dtype=np.float32)
    want, _, _ = functional.rnn_forward(x, params, num_layers=2, bidirectional=True)
    assert_close_rel(want, reference.rnn_forward(x, params, num_layers=2, bidirectional=True)[0],
                     np.float32)
    errors = []

    def work():
        try:
            for _ in range(30):
                out, h_n, cache = functional.rnn_forward(x, params, num_layers=2,
                                                         bidirectional=True)
                # a call alone gives these bits: a shared buffer would show here
                np.testing.assert_array_equal(out, want)
                grad_x, _, grads = functional.rnn_backward(cache, np.ones_like(out))
                assert np.isfinite(grad_x).all()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = fastrnn.cache_info()
    assert info["cached_bytes"] <= info["limit_bytes"]


def test_results_do_not_share_memory_across_calls():
    params = random_params(np.random.default_rng(1), 32, 256, 1, False, True, np.float64)
    x = np.random.default_rng(1).standard_normal((64, 16, 32))
    out1, _, _ = functional.rnn_forward(x, params)
    snapshot = out1.copy()
    out2, _, _ = functional.rnn_forward(2 * x, params)
    assert out1.nbytes >= (1 << 18)  # large enough to go through the cache
    assert not np.shares_memory(out1, out2)
    np.testing.assert_array_equal(out1, snapshot)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_allocates_through_the_cache():
    import os
    with _memory.cached_allocation():
        a = np.empty(BIG)
    del a  # the child inherits a cached block
    pid = os.fork()
    if pid == 0:  # child: must not deadlock or crash; exit status tells the parent
        ok = False
        try:
            with _memory.cached_allocation():
                b = np.ones(BIG)
            ok = b.sum() == BIG and fastrnn.cache_info()["cached_blocks"] == 0
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
