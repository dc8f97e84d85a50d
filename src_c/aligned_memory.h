/* Cache-line-aligned memory for the buffers the kernels read and write with vector loads:
 * packed weights, GEMM scratch, per-step rows, and (through fastrnn/_memory.pyx) the arrays
 * a call allocates. malloc's 16-byte alignment makes every 64-byte load of such a buffer
 * straddle two cache lines, and makes the threads of a column-split step, each writing its
 * own hidden units of one row, share the cache line at the boundary between their units.
 *
 * A block is malloc's, a cache line larger, with the aligned start inside it and, just below
 * that start, the block's own address and the size asked for. posix_memalign would do
 * without the header, but glibc then maps every large block afresh (its larger request
 * defeats the adaptive threshold that lets malloc reuse a freed block of the same size), and
 * each call's scratch would fault its pages in again. Free with fr_aligned_free. */
#ifndef FASTRNN_ALIGNED_MEMORY_H
#define FASTRNN_ALIGNED_MEMORY_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FR_CACHE_LINE 64

typedef struct {
    void *block; /* what malloc returned */
    size_t bytes; /* what was asked for */
} fr_aligned_header;

/* `bytes` aligned to a cache line (at least 1 byte); NULL if out of memory */
static inline void *fr_aligned_alloc(size_t bytes) {
    if (bytes > SIZE_MAX - FR_CACHE_LINE - sizeof(fr_aligned_header)) return NULL;
    /* room for the header, then the next cache line: at most a cache line further on */
    char *block = malloc(bytes + FR_CACHE_LINE + sizeof(fr_aligned_header));
    if (!block) return NULL;
    uintptr_t start = ((uintptr_t)block + sizeof(fr_aligned_header) + FR_CACHE_LINE - 1) &
                      ~(uintptr_t)(FR_CACHE_LINE - 1);
    fr_aligned_header header = {block, bytes};
    memcpy((char *)start - sizeof header, &header, sizeof header);
    return (void *)start;
}

static inline fr_aligned_header fr_aligned_header_of(const void *p) {
    fr_aligned_header header;
    memcpy(&header, (const char *)p - sizeof header, sizeof header);
    return header;
}

static inline void fr_aligned_free(void *p) {
    if (p) free(fr_aligned_header_of(p).block);
}

/* p's contents (up to the smaller size) in a new aligned block of `bytes`, p freed; on
 * failure NULL, p untouched (realloc's contract) */
static inline void *fr_aligned_realloc(void *p, size_t bytes) {
    void *q = fr_aligned_alloc(bytes);
    if (q && p) {
        const size_t old = fr_aligned_header_of(p).bytes;
        memcpy(q, p, old < bytes ? old : bytes);
        fr_aligned_free(p);
    }
    return q;
}

/* Scratch a call allocates and frees again (packed blocks, copies of A, step rows), from
 * src_c/scratch.c: fastrnn._memory's block cache once fastrnn._rnn connects it with
 * fr_set_scratch, so that a call takes back the blocks the previous one freed. Plain
 * fr_aligned_alloc blocks came fresh from the system on some calls (glibc returns freed
 * space at the top of a heap), every page faulted in again: 257 faults, 0.3 ms, in an LSTM
 * M1 backward. Blocks are fr_aligned_alloc's either way: either free takes either. */
typedef struct {
    void *(*alloc)(size_t bytes);
    void (*release)(void *p);
    size_t min_bytes; /* smaller blocks: fr_aligned_alloc's, as the cache would do */
} fr_scratch_functions;
void *fr_scratch_alloc(size_t bytes);
void fr_scratch_free(void *p);
void fr_set_scratch(const fr_scratch_functions *functions);

#endif
