/* fastrnn C kernels: the interface shared by every instruction-set build.
 *
 * Each build (portable, AVX2+FMA, AVX-512: kernels_build.h compiled by kernels_<isa>.c)
 * fills a table of function pointers per element type; the Cython loops call through the
 * table chosen at run time (fastrnn_kernels_available, dispatch.c), declared for Cython in
 * fastrnn/_kernels.pxd.
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

/* What a team's kernels call to wait for every thread of the team (see team.h). */
typedef void (*fr_barrier_fn)(void *barrier_arg);

/* The kernels for one element type REAL: a struct fr_kernels_REAL of function pointers, the
 * same fields for float and double. */
#define FASTRNN_DECLARE_KERNELS(REAL)                                                         \
    typedef struct {                                                                          \
        /* C[M,N] = (accumulate ? C : 0) + op(A)·op(B) + bias[N]  (bias may be NULL), where  \
         * op(A) = A[M,K], or Aᵀ of A stored [K,M] if a_trans; op(B) = B[K,N], or Bᵀ of B     \
         * stored [N,K] if b_trans; b_rows, if not NULL, reorders B's stored rows as pack's   \
         * rows do, and c_rows C's: row i of the product is C's row c_rows[i]. If a_trans and \
         * a_sums is not NULL, also a_sums[i] = Σ_k op(A)[i,k] in k order (a bias gradient,   \
         * from the A read anyway). Returns 0, or -1 if scratch could not be allocated. */    \
        int (*gemm)(fr_index M, fr_index N, fr_index K, const REAL *A, fr_index lda,          \
                    int a_trans, const REAL *B, fr_index ldb, int b_trans,                    \
                    const fr_index *b_rows, REAL *C, fr_index ldc, const fr_index *c_rows,    \
                    const REAL *bias, int accumulate, REAL *a_sums);                          \
        /* gemm with A transposed (a_trans), called by every thread of a team with its       \
         * index: each computes a slice of C's rows (c_rows as gemm's) and packs a share of   \
         * op(B) into `shared` (gemm_team_size(K, N) elements) for all, meeting at            \
         * barrier(barrier_arg) once per block. Bitwise gemm's result. Returns 0, or -1 if    \
         * scratch could not be allocated. */                                                 \
        fr_index (*gemm_team_size)(fr_index K, fr_index N);                                   \
        int (*gemm_at_team)(fr_index M, fr_index N, fr_index K, const REAL *A, fr_index lda,  \
                            const REAL *B, fr_index ldb, int b_trans, REAL *C, fr_index ldc,  \
                            const fr_index *c_rows, const REAL *bias, int accumulate,         \
                            REAL *a_sums, int thread, int nthreads, REAL *shared,             \
                            fr_barrier_fn barrier, void *barrier_arg);                        \
        /* A layer's weight gradients, called by every thread of a team as gemm_at_team:     \
         * from dA (K x M, M = D·W: W columns per direction, lda), dW_ih = dAᵀ X (M x I),    \
         * dW_hh = dA_dᵀ Hprev_d for each direction d (stacked, M x H; hprev[d·K + k] points  \
         * to row k of Hprev_d) and, if not NULL, a_sums = Σ_k dA (db), reading dA once for   \
         * them all; the products' row i written to row c_rows[i] (c_rows NULL: i). shared:  \
         * gemm_team_size(K, I) + gemm_team_size(K, H) elements. Returns 0, or -1 if scratch  \
         * could not be allocated. */                                                         \
        int (*weight_grads_at_team)(fr_index M, fr_index K, fr_index W, fr_index H,           \
                                    const REAL *A, fr_index lda, const REAL *X, fr_index ldx, \
                                    fr_index I, const REAL *const *hprev, REAL *dw_ih,        \
                                    REAL *dw_hh, const fr_index *c_rows, REAL *a_sums,        \
                                    int thread, int nthreads, REAL *shared,                   \
                                    fr_barrier_fn barrier, void *barrier_arg);                \
        /* Elements needed to pack a K×N matrix for the step kernels; pack op(B) (B[K,N], or  \
         * Bᵀ of B stored [N,K] if b_trans; row stride ldb) into that layout. rows, if not    \
         * NULL, reorders B's stored rows: op(B)'s column j (b_trans) or row k is B's row     \
         * rows[j] or rows[k] (fr_gate_rows: a gated cell's weights in torch's order). */     \
        fr_index (*packed_size)(fr_index K, fr_index N);                                      \
        void (*pack)(fr_index K, fr_index N, const REAL *B, fr_index ldb, int b_trans,        \
                     const fr_index *rows, REAL *packed);                                     \
        /* Columns j0 .. j1 of the step kernels below; j0 must be a multiple of               \
         * FASTRNN_COLUMN_GRANULE (the widest panel of any build), so threads can split H.    \
         * out_r = act(p_r + hprev_r · W_hhᵀ) for r < M (the product accumulated onto p_r, k  \
         * in order; with tanh or relu, an Elman step, on a W_hh of at most 64 KiB in two     \
         * halves: recurrence_steps.h); wt_packed is W_hhᵀ packed; act an fr_activation. p_r  \
         * may equal out_r (in-place). */                                                     \
        void (*rnn_step)(int M, int H, int j0, int j1, const REAL *const *hprev,              \
                         const REAL *const *p, REAL *const *out, const REAL *wt_packed,       \
                         int act);                                                            \
        /* out_r = act(x_r · W_ihᵀ + bias + hprev_r · W_hhᵀ) for r < M (bias may be NULL):    \
         * the step with its input projection; wit_packed is W_ihᵀ packed (I×H). Bitwise the  \
         * gemm's rows x W_ihᵀ + bias followed by rnn_step. */                                \
        void (*rnn_input_step)(int M, int I, int H, int j0, int j1, const REAL *const *x,     \
                               const REAL *wit_packed, const REAL *bias,                      \
                               const REAL *const *hprev, REAL *const *out,                    \
                               const REAL *wt_packed, int act);                               \
        /* A GRU step's two products, columns j0 .. j1: p_r = x_r · W_ihᵀ + bias (bias may be \
         * NULL; wit_packed as rnn_input_step's) and r_r = hprev_r · W_hhᵀ + b_hh (b_hh may   \
         * be NULL) for r < M, bitwise input_step's (its n gate needs W_hn h + b_hn alone).   \
         * With bf16 products, full register blocks in one tile each. */                      \
        void (*gru_step)(int M, int I, int H, int j0, int j1, const REAL *const *x,           \
                         const REAL *wit_packed, const REAL *bias, REAL *const *p,            \
                         const REAL *const *hprev, const REAL *wt_packed, const REAL *b_hh,   \
                         REAL *const *r);                                                     \
        /* out_r = x_r · B + bias for r < M (bias may be NULL), columns j0 .. j1; b_packed    \
         * is a K×H matrix packed. Bitwise the rows of the gemm with that bias. */            \
        void (*input_step)(int M, int K, int j0, int j1, const REAL *const *x,                \
                           const REAL *b_packed, const REAL *bias, REAL *const *out);         \
        /* da_r = (dy_r + g_r) ⊙ act'(h_r) for r < M. */                                      \
        void (*bptt_da)(int M, int j0, int j1, const REAL *const *dy, const REAL *const *h,   \
                        const REAL *const *g, REAL *const *da, int relu);                     \
        /* g_r = da_r · W_hh for r < M; w_packed is W_hh packed. */                           \
        void (*bptt_g)(int M, int H, int j0, int j1, const REAL *const *da, REAL *const *g,   \
                       const REAL *w_packed);                                                 \
        /* The gated cells' pointwise steps for units j0 .. j1 (cell_steps.h: layout, rows). \
         * LSTM: gates, c and h from save (on entry the pre-activations, P + h_{t-1} W_hhᵀ as \
         * rnn_step forms them with FR_ACT_NONE); its derivative from dm, carrying dc. GRU:   \
         * from save (P) and r (h_{t-1} W_hhᵀ + b_hh: its n gate needs that product alone);  \
         * its derivative giving da and dr. */                                                \
        void (*lstm_cell)(int M, int H, int j0, int j1, REAL *const *save,                    \
                          const REAL *const *cprev, REAL *const *h);                          \
        void (*lstm_cell_grad)(int M, int H, int j0, int j1, const REAL *const *dm,           \
                               const REAL *const *save, const REAL *const *cprev,             \
                               REAL *const *dc, REAL *const *da);                             \
        void (*gru_cell)(int M, int H, int j0, int j1, REAL *const *save,                     \
                         const REAL *const *r, const REAL *const *hprev, REAL *const *h);     \
        void (*gru_cell_grad)(int M, int H, int j0, int j1, REAL *const *dh,                  \
                              const REAL *const *save, const REAL *const *hprev,              \
                              REAL *const *da, REAL *const *dr);                              \
    } fr_kernels_##REAL;

#define FASTRNN_COLUMN_GRANULE 32

/* The activation a step kernel applies as it stores (rnn_step, rnn_input_step): the Elman
 * cell's, or none (a gated cell's pre-activations, for its own epilogue). */
enum fr_activation { FR_ACT_TANH = 0, FR_ACT_RELU = 1, FR_ACT_NONE = 2 };

/* The gated cells' gate-interleaved order (cell_steps.h) of a weight's or bias's G·H rows
 * stored in torch's order (gate q's H rows at q·H): rows[c] is the torch row at position c
 * (c < G·H). */
static inline void fr_gate_rows(int G, int H, fr_index *rows) {
    fr_index c = 0;
    for (int jb = 0; jb < H; jb += FASTRNN_COLUMN_GRANULE) {
        const int w = H - jb < FASTRNN_COLUMN_GRANULE ? H - jb : FASTRNN_COLUMN_GRANULE;
        for (int q = 0; q < G; q++)
            for (int u = 0; u < w; u++) rows[c++] = (fr_index)q * H + jb + u;
    }
}

FASTRNN_DECLARE_KERNELS(float)
FASTRNN_DECLARE_KERNELS(double)

/* One build's kernels (one instruction set): its name and a table per element type, and
 * bf16: float32 arrays whose matrix products take bfloat16 operands (each operand rounded
 * to nearest even, products accumulated in float32). Its packed layout is its own (pack,
 * packed_size); its pointwise kernels are f32's. With AVX512_BF16 (the avx512_bf16 build)
 * vdpbf16ps multiplies pairs of k; elsewhere the operands are rounded and the float32 tile
 * multiplies them (the same rounding, no speed-up). */
typedef struct {
    const char *name;
    fr_kernels_float f32;
    fr_kernels_double f64;
    fr_kernels_float bf16;
} fastrnn_kernels;

/* Kernel tables compiled into this build, best first; NULL-terminated. */
const fastrnn_kernels *const *fastrnn_kernels_compiled(void);
/* The same, but only those the running CPU supports. */
const fastrnn_kernels *const *fastrnn_kernels_available(void);

#ifdef __cplusplus
}
#endif
#endif
