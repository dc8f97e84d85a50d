/* The kernels' per-call scratch (aligned_memory.h): fastrnn._memory's block cache once
 * fastrnn._rnn has connected it, fr_aligned_alloc before that (and in the C tools). */
#include "aligned_memory.h"

static fr_scratch_functions scratch;

void fr_set_scratch(const fr_scratch_functions *functions) { scratch = *functions; }

void *fr_scratch_alloc(size_t bytes) {
    return scratch.alloc && bytes >= scratch.min_bytes ? scratch.alloc(bytes)
                                                      : fr_aligned_alloc(bytes);
}

void fr_scratch_free(void *p) {
    if (p && scratch.release && fr_aligned_header_of(p).bytes >= scratch.min_bytes)
        scratch.release(p);
    else
        fr_aligned_free(p);
}
