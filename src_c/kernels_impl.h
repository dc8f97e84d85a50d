/* Generic kernel bodies, compiled once per instruction set by kernels_<isa>.c.
 *
 * Plain C written so the compiler vectorises the column loop: an MR x NB block of
 * accumulators, broadcast-multiply-add over K, the activation applied in the store.
 * Each output element is a sum over k in increasing order, whatever the block shape,
 * so a row's result never depends on which rows share its call.
 *
 * The including file defines FR_SUFFIX before including this file.
 */
#include <math.h>
#include "kernels.h"

#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)
#define FR_NAME(name) FR_CAT(name, FR_SUFFIX)

#define FR_MR 4
#define FR_NB 64

#define FR_DEFINE_TYPED(REAL, P, TANH)                                                        \
    /* acc[r][j] = Σ_k a_r[k]·b[k, j0+j] for r < mr, j < nb */                                \
    static inline void FR_NAME(P##block)(int mr, int nb, fr_index K, const REAL *const *a,   \
                                         const REAL *b, fr_index ldb,                        \
                                         REAL acc[FR_MR][FR_NB]) {                           \
        for (int r = 0; r < mr; r++)                                                          \
            for (int j = 0; j < nb; j++) acc[r][j] = 0;                                       \
        for (fr_index k = 0; k < K; k++) {                                                    \
            const REAL *bk = b + k * ldb;                                                     \
            for (int r = 0; r < mr; r++) {                                                    \
                const REAL ar = a[r][k];                                                      \
                for (int j = 0; j < nb; j++) acc[r][j] += ar * bk[j];                         \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    static void FR_NAME(P##gemm)(fr_index M, fr_index N, fr_index K, const REAL *A,           \
                                 fr_index lda, const REAL *B, fr_index ldb, REAL *C,          \
                                 fr_index ldc, const REAL *bias, int accumulate) {            \
        REAL acc[FR_MR][FR_NB];                                                               \
        const REAL *a[FR_MR];                                                                 \
        for (fr_index i0 = 0; i0 < M; i0 += FR_MR) {                                          \
            int mr = (int)(M - i0 < FR_MR ? M - i0 : FR_MR);                                  \
            for (int r = 0; r < mr; r++) a[r] = A + (i0 + r) * lda;                           \
            for (fr_index j0 = 0; j0 < N; j0 += FR_NB) {                                      \
                int nb = (int)(N - j0 < FR_NB ? N - j0 : FR_NB);                              \
                FR_NAME(P##block)(mr, nb, K, a, B + j0, ldb, acc);                            \
                for (int r = 0; r < mr; r++) {                                                \
                    REAL *c = C + (i0 + r) * ldc + j0;                                        \
                    for (int j = 0; j < nb; j++) {                                            \
                        REAL v = acc[r][j];                                                   \
                        if (bias) v += bias[j0 + j];                                          \
                        c[j] = accumulate ? c[j] + v : v;                                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    static void FR_NAME(P##rnn_step)(int M, int H, const REAL *const *hprev,                  \
                                     const REAL *const *p, REAL *const *out, const REAL *wt,  \
                                     int relu) {                                              \
        REAL acc[FR_MR][FR_NB];                                                               \
        for (int i0 = 0; i0 < M; i0 += FR_MR) {                                               \
            int mr = M - i0 < FR_MR ? M - i0 : FR_MR;                                         \
            for (int j0 = 0; j0 < H; j0 += FR_NB) {                                           \
                int nb = H - j0 < FR_NB ? H - j0 : FR_NB;                                     \
                FR_NAME(P##block)(mr, nb, H, hprev + i0, wt + j0, H, acc);                    \
                for (int r = 0; r < mr; r++) {                                                \
                    const REAL *pr = p[i0 + r] + j0;                                          \
                    REAL *o = out[i0 + r] + j0;                                               \
                    /* h_t = act(P_t + h_{t-1} W_hhᵀ) */                                      \
                    if (relu)                                                                 \
                        for (int j = 0; j < nb; j++) {                                        \
                            REAL v = acc[r][j] + pr[j];                                       \
                            o[j] = v > 0 ? v : 0;                                             \
                        }                                                                     \
                    else                                                                      \
                        for (int j = 0; j < nb; j++) o[j] = TANH(acc[r][j] + pr[j]);          \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    static void FR_NAME(P##bptt_step)(int M, int H, const REAL *const *dy,                    \
                                      const REAL *const *h, REAL *const *g, REAL *const *da,  \
                                      const REAL *w, int relu) {                              \
        REAL acc[FR_MR][FR_NB];                                                               \
        for (int i0 = 0; i0 < M; i0 += FR_MR) {                                              \
            int mr = M - i0 < FR_MR ? M - i0 : FR_MR;                                         \
            /* dA_t = (dY_t + g) ⊙ act'(h_t),  tanh' = 1 - h², relu' = [h > 0] */            \
            for (int r = 0; r < mr; r++) {                                                    \
                const REAL *dyr = dy[i0 + r], *hr = h[i0 + r], *gr = g[i0 + r];               \
                REAL *dar = da[i0 + r];                                                       \
                if (relu)                                                                     \
                    for (int j = 0; j < H; j++) dar[j] = hr[j] > 0 ? dyr[j] + gr[j] : 0;      \
                else                                                                          \
                    for (int j = 0; j < H; j++)                                               \
                        dar[j] = (dyr[j] + gr[j]) * (1 - hr[j] * hr[j]);                      \
            }                                                                                 \
            /* g = dA_t W_hh */                                                               \
            for (int j0 = 0; j0 < H; j0 += FR_NB) {                                           \
                int nb = H - j0 < FR_NB ? H - j0 : FR_NB;                                     \
                FR_NAME(P##block)(mr, nb, H, (const REAL *const *)(da + i0), w + j0, H, acc); \
                for (int r = 0; r < mr; r++)                                                  \
                    for (int j = 0; j < nb; j++) g[i0 + r][j0 + j] = acc[r][j];               \
            }                                                                                 \
        }                                                                                     \
    }

FR_DEFINE_TYPED(float, s, tanhf)
FR_DEFINE_TYPED(double, d, tanh)

const fastrnn_kernels FR_NAME(fastrnn_kernels) = {
    .name = FR_NAME_STR,
    .sgemm = FR_NAME(sgemm),
    .dgemm = FR_NAME(dgemm),
    .srnn_step = FR_NAME(srnn_step),
    .drnn_step = FR_NAME(drnn_step),
    .sbptt_step = FR_NAME(sbptt_step),
    .dbptt_step = FR_NAME(dbptt_step),
};
