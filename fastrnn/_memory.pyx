# cython: language_level=3, boundscheck=False, wraparound=False
"""A cache of large freed NumPy data blocks, reused by later allocations of the same size or
somewhat smaller, and every block aligned to a cache line (src_c/aligned_memory.h says why).

A training step allocates the same large arrays every time (layer outputs, dA, gradients).
Memory fresh from the operating system costs a page fault per page and the kernel's zeroing
of it, a noticeable share of a training step (docs/performance.md), since glibc returns
such blocks to the system after every call.

Arrays allocated while ``cached_allocation()`` is active (NumPy's per-context allocator
hook, NEP 49; other threads and contexts are unaffected), and the compiled kernels' per-call
scratch in any context (``scratch_capsule``), give their block to the cache when they are
freed, wherever that happens; an allocation takes back the smallest cached block
that holds it and is at most twice its size (a training loop over batches of varying
sequence lengths asks for varying sizes every step). Blocks are counted by what they hold,
not by what the array in them uses.
The cache never holds more than the most bytes its blocks ever had in use at once (so it at
most doubles what fastrnn itself held at its peak), releases a block that was not taken back
while 256 others were cached, and ``empty_cache()`` frees it all.
"""

import os

from cpython.pycapsule cimport PyCapsule_New
from cpython.pythread cimport (PyThread_acquire_lock, PyThread_allocate_lock,
                               PyThread_release_lock, PyThread_type_lock, WAIT_LOCK)
from libc.string cimport memset, strncpy

cimport numpy as cnp

cnp.import_array()

cdef extern from "aligned_memory.h" nogil:
    ctypedef struct fr_aligned_header:
        size_t bytes
    ctypedef struct fr_scratch_functions:
        void *(*alloc)(size_t) noexcept nogil
        void (*release)(void *) noexcept nogil
        size_t min_bytes
    fr_aligned_header fr_aligned_header_of(const void *p)
    void *fr_aligned_alloc(size_t bytes)
    void *fr_aligned_realloc(void *p, size_t bytes)
    void fr_aligned_free(void *p)

cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/mman.h>
    /* as NumPy's default allocator: large blocks in transparent huge pages where allowed */
    static void fr_advise_huge(void *p, size_t size) {
        size_t page = 4096, start = ((size_t)p + page - 1) & ~(page - 1);
        if (size >= ((size_t)1 << 22) && start < (size_t)p + size)
            madvise((void *)start, (size_t)p + size - start, MADV_HUGEPAGE);
    }
    #else
    static void fr_advise_huge(void *p, size_t size) { (void)p; (void)size; }
    #endif
    """
    void fr_advise_huge(void *p, size_t size) noexcept nogil

cdef enum:
    # blocks below this are not cached: glibc keeps them in its heap. From its first mmap
    # threshold (128 KiB) it maps blocks afresh, or gives the top of its heap back to the
    # system once that much is freed there: a GRU's 192 KiB weights, copied every training
    # step, faulted 80 pages a step when 256 KiB was the limit (docs/performance.md)
    MIN_BLOCK = 1 << 17
    MAX_BLOCKS = 64
    # a block not taken back while this many others were cached is released: a training
    # loop reuses its blocks every step, a size no longer asked for should not stay
    MAX_AGE = 256

cdef struct Block:
    void *ptr
    size_t size
    unsigned long long stamp  # when it was cached: the oldest go first

cdef Block blocks[MAX_BLOCKS]
cdef int nblocks = 0
cdef size_t cached_bytes = 0, live_bytes = 0, peak_live_bytes = 0
cdef unsigned long long clock = 0
cdef PyThread_type_lock lock = PyThread_allocate_lock()


cdef void _drop(int i) noexcept nogil:
    """Remove entry i (the caller holds the lock and owns or frees its block)."""
    global nblocks, cached_bytes
    cached_bytes -= blocks[i].size
    nblocks -= 1
    blocks[i] = blocks[nblocks]


cdef int _oldest() noexcept nogil:
    cdef int i, best = 0
    for i in range(1, nblocks):
        if blocks[i].stamp < blocks[best].stamp:
            best = i
    return best


cdef void *_take(size_t size) noexcept nogil:
    """The smallest cached block of ``size`` to ``2 * size`` bytes (of those, the last
    cached: its lines are the likeliest still in cache, as with malloc's own reuse), or
    NULL."""
    cdef void *p = NULL
    cdef int i, best = -1
    PyThread_acquire_lock(lock, WAIT_LOCK)
    for i in range(nblocks):
        if (size <= blocks[i].size and blocks[i].size // 2 <= size
                and (best < 0 or blocks[i].size < blocks[best].size
                     or blocks[i].size == blocks[best].size
                     and blocks[i].stamp > blocks[best].stamp)):
            best = i
    if best >= 0:
        p = blocks[best].ptr
        _drop(best)
    PyThread_release_lock(lock)
    return p


cdef inline size_t _capacity(const void *p) noexcept nogil:
    """The bytes a block holds (at least what its array uses)."""
    return fr_aligned_header_of(p).bytes


cdef void *_count_live(void *p, size_t size) noexcept nogil:
    global live_bytes, peak_live_bytes
    if p != NULL:
        PyThread_acquire_lock(lock, WAIT_LOCK)
        live_bytes += size
        peak_live_bytes = max(peak_live_bytes, live_bytes)
        PyThread_release_lock(lock)
    return p


cdef void *_malloc(void *ctx, size_t size) noexcept nogil:
    if size < MIN_BLOCK:
        return fr_aligned_alloc(size)
    cdef void *p = _take(size)
    if p == NULL:
        p = fr_aligned_alloc(size)
        if p != NULL:
            fr_advise_huge(p, size)
    return _count_live(p, _capacity(p)) if p != NULL else NULL


cdef void *_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    if elsize != 0 and nelem > (<size_t> -1) // elsize:
        return NULL
    cdef size_t size = nelem * elsize
    cdef void *p = _take(size) if size >= MIN_BLOCK else NULL
    if p == NULL:
        p = fr_aligned_alloc(size)
        if p != NULL and size >= MIN_BLOCK:
            fr_advise_huge(p, size)
    if p != NULL:
        memset(p, 0, size)  # (no aligned calloc: as a cached block is cleared)
    return _count_live(p, _capacity(p)) if p != NULL and size >= MIN_BLOCK else p


cdef void *_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    return fr_aligned_realloc(ptr, new_size)


cdef void _free(void *ctx, void *ptr, size_t size) noexcept nogil:
    global live_bytes, cached_bytes, nblocks, clock
    if ptr == NULL:
        return
    if size < MIN_BLOCK:
        fr_aligned_free(ptr)
        return
    cdef void *evicted[MAX_BLOCKS + 1]
    cdef int nevicted = 0, i
    size = _capacity(ptr)  # (the array's bytes may be fewer)
    PyThread_acquire_lock(lock, WAIT_LOCK)
    # a realloc'd block was never counted as live: keep the count at least 0
    live_bytes = live_bytes - size if live_bytes > size else 0
    if size > peak_live_bytes:
        evicted[nevicted] = ptr
        nevicted += 1
    else:
        clock += 1
        while nblocks > 0:
            i = _oldest()
            if not (nblocks == MAX_BLOCKS or cached_bytes + size > peak_live_bytes
                    or clock - blocks[i].stamp > MAX_AGE):
                break
            evicted[nevicted] = blocks[i].ptr
            nevicted += 1
            _drop(i)
        blocks[nblocks].ptr = ptr
        blocks[nblocks].size = size
        blocks[nblocks].stamp = clock
        nblocks += 1
        cached_bytes += size
    PyThread_release_lock(lock)
    for i in range(nevicted):  # outside the lock: returning memory to the system is slow
        fr_aligned_free(evicted[i])


cdef cnp.PyDataMem_Handler handler
strncpy(handler.name, b"fastrnn_block_cache", sizeof(handler.name))
handler.version = 1
handler.allocator.ctx = NULL
handler.allocator.malloc = _malloc
handler.allocator.calloc = _calloc
handler.allocator.realloc = _realloc
handler.allocator.free = _free
# NumPy keeps a reference to the capsule in every array it allocates through it
cdef object handler_capsule = PyCapsule_New(&handler, b"mem_handler", NULL)


cdef void *_scratch_alloc(size_t size) noexcept nogil:
    return _malloc(NULL, size)


cdef void _scratch_free(void *p) noexcept nogil:
    if p != NULL:
        _free(NULL, p, _capacity(p))


cdef fr_scratch_functions scratch_functions
scratch_functions.alloc = _scratch_alloc
scratch_functions.release = _scratch_free
scratch_functions.min_bytes = MIN_BLOCK
# the compiled kernels' per-call scratch through the cache, whatever the context (fastrnn._rnn
# hands these to src_c/scratch.c): each call takes back the blocks the previous one freed
scratch_capsule = PyCapsule_New(&scratch_functions, b"fastrnn._memory.scratch", NULL)


cdef class cached_allocation:
    """Context manager: NumPy allocations in this context go through the block cache."""
    cdef object previous

    def __enter__(self):
        self.previous = cnp.PyDataMem_SetHandler(handler_capsule)
        return self

    def __exit__(self, *exc):
        cnp.PyDataMem_SetHandler(self.previous)
        self.previous = None
        return False


def empty_cache():
    """Free every cached block; return the number of bytes released to the system.

    The cache's limit starts again from the bytes in use now (it grows with later use).
    """
    global nblocks, cached_bytes, peak_live_bytes
    cdef void *ptrs[MAX_BLOCKS]
    cdef int i, n
    cdef size_t released
    with nogil:
        PyThread_acquire_lock(lock, WAIT_LOCK)
        n = nblocks
        released = cached_bytes
        for i in range(n):
            ptrs[i] = blocks[i].ptr
        nblocks = 0
        cached_bytes = 0
        peak_live_bytes = live_bytes
        PyThread_release_lock(lock)
        for i in range(n):
            fr_aligned_free(ptrs[i])
    return released


def _after_fork_in_child():
    """A fresh lock for a forked child: the parent's may have been held by another thread."""
    global lock
    lock = PyThread_allocate_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cache_info():
    """dict: cached_bytes and cached_blocks (held for reuse), live_bytes (in arrays and the
    kernels' scratch now), limit_bytes (the most the cache may hold: the peak of live_bytes)."""
    PyThread_acquire_lock(lock, WAIT_LOCK)
    info = dict(cached_bytes=cached_bytes, cached_blocks=nblocks, live_bytes=live_bytes,
                limit_bytes=peak_live_bytes)
    PyThread_release_lock(lock)
    return info
