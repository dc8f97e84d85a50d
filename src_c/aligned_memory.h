/* Cache-line-aligned memory for the buffers the kernels read and write with vector loads:
 * packed weights, GEMM scratch, per-step rows, and (through fastrnn/_memory.pyx) the arrays
 * a call allocates. malloc's 16-byte alignment makes every 64-byte load of such a buffer
 * straddle two cache lines, and makes the threads of a column-split step, each writing its
 * own hidden units of one row, share the cache line at the boundary between their units.
 * Free with fr_aligned_free (on Windows, _aligned_malloc's memory needs _aligned_free). */
#ifndef FASTRNN_ALIGNED_MEMORY_H
#define FASTRNN_ALIGNED_MEMORY_H

#include <stdlib.h>
#ifdef _WIN32
#include <malloc.h>
#endif

#define FR_CACHE_LINE 64

/* `bytes` (at least 1) aligned to a cache line; NULL if out of memory */
static inline void *fr_aligned_alloc(size_t bytes) {
    if (bytes == 0) bytes = 1; /* a NULL result means out of memory, never "nothing" */
#ifdef _WIN32
    return _aligned_malloc(bytes, FR_CACHE_LINE);
#else
    void *p;
    return posix_memalign(&p, FR_CACHE_LINE, bytes) == 0 ? p : NULL;
#endif
}

/* p's block resized to `bytes` (contents kept up to the smaller size; the alignment may be
 * lost off Windows, where realloc serves: only a speed matter for the caller) */
static inline void *fr_aligned_realloc(void *p, size_t bytes) {
    if (bytes == 0) bytes = 1;
#ifdef _WIN32
    return _aligned_realloc(p, bytes, FR_CACHE_LINE);
#else
    return realloc(p, bytes);
#endif
}

static inline void fr_aligned_free(void *p) {
#ifdef _WIN32
    _aligned_free(p);
#else
    free(p);
#endif
}

#endif
