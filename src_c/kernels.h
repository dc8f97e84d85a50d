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
    /* C[M,N] = (accumulate ? C : 0) + op(A)·op(B) + bias[N]  (bias may be NULL), where     \
     * op(A) = A[M,K], or Aᵀ of A stored [K,M] if a_trans; op(B) = B[K,N], or Bᵀ of B        \
     * stored [N,K] if b_trans. If a_trans and a_sums is not NULL, also                      \
     * a_sums[i] = Σ_k op(A)[i,k] in k order (a bias gradient, from the A read anyway).      \
     * Returns 0, or -1 if scratch memory could not be allocated. */                          \
    typedef int (*P##gemm_fn)(fr_index M, fr_index N, fr_index K, const REAL *A,              \
                              fr_index lda, int a_trans, const REAL *B, fr_index ldb,         \
                              int b_trans, REAL *C, fr_index ldc, const REAL *bias,           \
                              int accumulate, REAL *a_sums);                                  \
    /* Elements needed to pack a K×N matrix for the step kernels; pack op(B) (B[K,N], or Bᵀ   \
     * of B stored [N,K] if b_trans; row stride ldb) into that layout. */                     \
    typedef fr_index (*P##packed_size_fn)(fr_index K, fr_index N);                            \
    typedef void (*P##pack_fn)(fr_index K, fr_index N, const REAL *B, fr_index ldb,           \
                               int b_trans, REAL *packed);                                    \
    /* gemm with A transposed (a_trans), called by every thread of a team with its index:  \
     * each computes a slice of C's rows and packs a share of op(B) into `shared`           \
     * (team_size(K, N) elements) for all, meeting at barrier(barrier_arg) once per block.   \
     * Bitwise gemm's result. Returns 0, or -1 if scratch could not be allocated. */          \
    typedef fr_index (*P##gemm_team_size_fn)(fr_index K, fr_index N);                         \
    typedef int (*P##gemm_at_team_fn)(fr_index M, fr_index N, fr_index K, const REAL *A,      \
                                      fr_index lda, const REAL *B, fr_index ldb, int b_trans, \
                                      REAL *C, fr_index ldc, const REAL *bias, int accumulate,\
                                      REAL *a_sums, int thread, int nthreads, REAL *shared,   \
                                      void (*barrier)(void *), void *barrier_arg);            \
    /* A layer's weight gradients, called by every thread of a team as gemm_at_team: from   \
     * dA (K x M, M = D·H, lda), dW_ih = dAᵀ X (M x I), dW_hh = dA_dᵀ Hprev_d for each       \
     * direction d (stacked, M x H; hprev[d·K + k] points to row k of Hprev_d) and, if not   \
     * NULL, a_sums = Σ_k dA (db), reading dA once for them all. shared: gemm_team_size(K, I) \
     * + gemm_team_size(K, H) elements. Returns 0, or -1 if scratch could not be allocated. */\
    typedef int (*P##weight_grads_at_team_fn)(fr_index M, fr_index K, fr_index H,             \
                                              const REAL *A, fr_index lda, const REAL *X,     \
                                              fr_index ldx, fr_index I,                       \
                                              const REAL *const *hprev, REAL *dw_ih,          \
                                              REAL *dw_hh, REAL *a_sums, int thread,          \
                                              int nthreads, REAL *shared,                     \
                                              void (*barrier)(void *), void *barrier_arg);    \
    /* Columns j0 .. j1 of the step kernels below; j0 must be a multiple of                  \
     * FASTRNN_COLUMN_GRANULE (the widest panel of any build), so threads can split H. */    \
    /* out_r = act(p_r + hprev_r · W_hhᵀ) for r < M; wt_packed is W_hhᵀ packed.              \
     * p_r may equal out_r (in-place). */                                                     \
    typedef void (*P##rnn_step_fn)(int M, int H, int j0, int j1, const REAL *const *hprev,    \
                                   const REAL *const *p, REAL *const *out,                    \
                                   const REAL *wt_packed, int relu);                          \
    /* out_r = act(x_r · W_ihᵀ + bias + hprev_r · W_hhᵀ) for r < M (bias may be NULL):       \
     * the step with its input projection; wit_packed is W_ihᵀ packed (I×H). Bitwise the     \
     * gemm's rows x W_ihᵀ + bias followed by rnn_step. */                                     \
    typedef void (*P##rnn_input_step_fn)(int M, int I, int H, int j0, int j1,                 \
                                         const REAL *const *x, const REAL *wit_packed,        \
                                         const REAL *bias, const REAL *const *hprev,          \
                                         REAL *const *out, const REAL *wt_packed, int relu);  \
    /* out_r = x_r · B + bias for r < M (bias may be NULL), columns j0 .. j1; b_packed is a  \
     * K×H matrix packed. Bitwise the rows of the gemm with that bias. */                      \
    typedef void (*P##input_step_fn)(int M, int K, int j0, int j1, const REAL *const *x,      \
                                     const REAL *b_packed, const REAL *bias,                  \
                                     REAL *const *out);                                       \
    /* da_r = (dy_r + g_r) ⊙ act'(h_r) for r < M. */                                          \
    typedef void (*P##bptt_da_fn)(int M, int j0, int j1, const REAL *const *dy,               \
                                  const REAL *const *h, const REAL *const *g,                 \
                                  REAL *const *da, int relu);                                 \
    /* g_r = da_r · W_hh for r < M; w_packed is W_hh packed. */                               \
    typedef void (*P##bptt_g_fn)(int M, int H, int j0, int j1, const REAL *const *da,         \
                                 REAL *const *g, const REAL *w_packed);

#define FASTRNN_COLUMN_GRANULE 32

FASTRNN_DECLARE_TYPED(float, s)
FASTRNN_DECLARE_TYPED(double, d)

typedef struct {
    const char *name;
    sgemm_fn sgemm;
    dgemm_fn dgemm;
    sgemm_team_size_fn sgemm_team_size;
    dgemm_team_size_fn dgemm_team_size;
    sgemm_at_team_fn sgemm_at_team;
    dgemm_at_team_fn dgemm_at_team;
    sweight_grads_at_team_fn sweight_grads_at_team;
    dweight_grads_at_team_fn dweight_grads_at_team;
    spacked_size_fn spacked_size;
    dpacked_size_fn dpacked_size;
    spack_fn spack;
    dpack_fn dpack;
    srnn_step_fn srnn_step;
    drnn_step_fn drnn_step;
    srnn_input_step_fn srnn_input_step;
    drnn_input_step_fn drnn_input_step;
    sinput_step_fn sinput_step;
    dinput_step_fn dinput_step;
    sbptt_da_fn sbptt_da;
    dbptt_da_fn dbptt_da;
    sbptt_g_fn sbptt_g;
    dbptt_g_fn dbptt_g;
} fastrnn_kernels;

/* Kernel tables compiled into this build, best first; NULL-terminated. */
const fastrnn_kernels *const *fastrnn_kernels_compiled(void);
/* The same, but only those the running CPU supports. */
const fastrnn_kernels *const *fastrnn_kernels_available(void);

#ifdef __cplusplus
}
#endif
#endif
