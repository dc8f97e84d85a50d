/* fastrnn C kernels: the interface shared by every instruction-set build.
 *
 * Each build (portable, AVX2+FMA, AVX-512) fills a table of function pointers; the
 * Cython loops call through the table chosen at run time (fastrnn_kernels_select).
 *
 * Matrices are row-major with explicit leading dimensions. "Rows" arguments are arrays
 * of row pointers, so one call can serve batch elements that sit at different time
 * steps (variable lengths, reverse direction) without copying.
 *
 * Every kernel computes each output row with the same arithmetic whatever other rows
 * share the call, so results do not depend on how the batch is split across threads.
 */
#ifndef FASTRNN_KERNELS_H
#define FASTRNN_KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef long fr_index;

#define FASTRNN_DECLARE_TYPED(REAL, P)                                                        \
    /* C[M,N] = (accumulate ? C : 0) + A[M,K]·B[K,N] + bias[N]  (bias may be NULL) */        \
    typedef void (*P##gemm_fn)(fr_index M, fr_index N, fr_index K, const REAL *A,             \
                               fr_index lda, const REAL *B, fr_index ldb, REAL *C,            \
                               fr_index ldc, const REAL *bias, int accumulate);               \
    /* out_r = act(p_r + hprev_r · wt) for r < M; wt is W_hhᵀ (H×H, row-major).               \
     * p_r may equal out_r (in-place). */                                                     \
    typedef void (*P##rnn_step_fn)(int M, int H, const REAL *const *hprev,                    \
                                   const REAL *const *p, REAL *const *out, const REAL *wt,    \
                                   int relu);                                                 \
    /* da_r = (dy_r + g_r) ⊙ act'(h_r);  g_r = da_r · w   for r < M; w is W_hh (H×H). */      \
    typedef void (*P##bptt_step_fn)(int M, int H, const REAL *const *dy,                      \
                                    const REAL *const *h, REAL *const *g, REAL *const *da,    \
                                    const REAL *w, int relu);

FASTRNN_DECLARE_TYPED(float, s)
FASTRNN_DECLARE_TYPED(double, d)

typedef struct {
    const char *name;
    sgemm_fn sgemm;
    dgemm_fn dgemm;
    srnn_step_fn srnn_step;
    drnn_step_fn drnn_step;
    sbptt_step_fn sbptt_step;
    dbptt_step_fn dbptt_step;
} fastrnn_kernels;

/* Kernel tables compiled into this build, best first; NULL-terminated. Only those the
 * running CPU supports are listed. */
const fastrnn_kernels *const *fastrnn_kernels_available(void);

#ifdef __cplusplus
}
#endif
#endif
