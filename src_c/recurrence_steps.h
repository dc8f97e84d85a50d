/* The recurrence's step kernels for one dtype, on the GEMM framework's tile: a step of the
 * Elman cell (rnn_step; rnn_input_step with its input projection fused), a GRU's products
 * (gru_step), a step's input projection (input_step), and BPTT's pointwise dA (bptt_da)
 * and recurrent product (bptt_g).
 * Part of the per-dtype kernel bodies (kernels_dtype.h), after gemm.h.
 */

/* The tile's epilogue for an fr_activation */
static inline int FR_P(fin_of)(int act) {
    return act == FR_ACT_RELU ? FR_P(FIN_RELU) : act == FR_ACT_NONE ? FR_P(FIN_NONE)
                                                                    : FR_P(FIN_TANH);
}

/* Whether a step's product h_{t-1} W_hhᵀ sums in two halves (gemm.h): the Elman cell's
 * (act tanh or relu; a gated cell's products come with FR_ACT_NONE) where W_hh (K x K) is at
 * most 64 KiB. At batch 1 a thread's columns are then a few accumulators whose chains of K
 * dependent multiply-adds are the step's time, and two chains halve it; a larger W_hh is
 * read from L2, which the loop then waits on instead (two chains measured slower there:
 * docs/performance.md). A function of K and the cell alone, so the same for every thread
 * count, batch and path (steps, streams). */
static inline int FR_P(step_halves)(int K, int act) {
    return act != FR_ACT_NONE && (size_t)KSTEP(K) * (size_t)K * sizeof(REAL) <= (64 << 10);
}

static void FR_P(rnn_step)(int M, int H, int j0, int j1, const REAL *const *hprev,
                           const REAL *const *p, REAL *const *out, const REAL *wt_packed,
                           int act) {
    /* h_t = act(P_t + h_{t-1} W_hhᵀ) for columns j0 .. j1: P is the accumulator's start */
    FR_P(asrc) a = {hprev, NULL, 0};
    FR_P(drive)(M, j0, j1 - j0, H, a, wt_packed, NULL, 0, 0, NULL, NULL, NULL, p, out, 1,
                FR_P(fin_of)(act), NULL, NULL, FR_P(step_halves)(H, act));
}

static void FR_P(input_step)(int M, int I, int j0, int j1, const REAL *const *x,
                             const REAL *wit_packed, const REAL *bias, REAL *const *out) {
    /* the input projection of one step's rows, as the GEMM computes it (zero start, bias last) */
    FR_P(asrc) a = {x, NULL, 0};
    FR_P(drive)(M, j0, j1 - j0, I, a, wit_packed, NULL, 0, 0, NULL, NULL, NULL, NULL, out, 0,
                bias ? FR_P(FIN_BIAS) : FR_P(FIN_NONE), bias ? bias + j0 : NULL, NULL, 0);
}

/* One register block of rows (FR_MR) x one panel of columns (c .. c+ncols) of a step with
 * its input projection: acc = Σ_k x·W_ihᵀ, + bias, + Σ_k hprev·W_hhᵀ, act, store. The
 * operations of input_step and then rnn_step in the same order (the P they store between
 * them is the accumulator, exactly), without that store and reload or a second tile.
 * With p (a GRU's), P = Σ_k x·W_ihᵀ + bias is stored into p instead, and the recurrent
 * product starts from zero and ends with + b_hh: gru_step's two products. */
static inline void FR_P(tile_step)(const REAL *const *x, int I, const REAL *bx,
                                   const REAL *bias, REAL *const *p, const REAL *const *h,
                                   int H, const REAL *bh, const REAL *b_hh, REAL *const *out,
                                   int c, int ncols, int act) {
    VEC acc[8][4 * NV];
    for (int r = 0; r < FR_MR; r++)
        for (int i = 0; i < NV; i++) {
            acc[r][i] = FR_P(splat)(0);
            __builtin_prefetch(out[r] + c + i * VL, 1);
            if (p) __builtin_prefetch(p[r] + c + i * VL, 1);
        }
    FR_P(tile_sum)(FR_MR, 1, 0, acc, x, NULL, 0, KSTEP(I), bx, 0, 0);
    if (bias)
        for (int r = 0; r < FR_MR; r++)
            for (int i = 0; i < NV && ncols - i * VL > 0; i++)
                acc[r][i] += FR_P(vload_n)(bias + i * VL, ncols - i * VL);
    if (p)
        for (int r = 0; r < FR_MR; r++)
            for (int i = 0; i < NV; i++) {
                FR_P(vstore_n)(p[r] + c + i * VL, acc[r][i], ncols - i * VL);
                acc[r][i] = FR_P(splat)(0);
            }
    FR_P(tile_sum)(FR_MR, 1, 0, acc, h, NULL, 0, KSTEP(H), bh, 0, FR_P(step_halves)(H, act));
    for (int r = 0; r < FR_MR; r++)
        for (int i = 0; i < NV && ncols - i * VL > 0; i++) {
            VEC v = acc[r][i];
            if (b_hh) v += FR_P(vload_n)(b_hh + i * VL, ncols - i * VL);
            FR_P(vstore_n)(out[r] + c + i * VL,
                           act == FR_ACT_RELU ? FR_P(vrelu)(v)
                           : act == FR_ACT_NONE ? v : FR_P(vtanh)(v),
                           ncols - i * VL);
        }
}

/* The fused steps (rnn_input_step, gru_step; p, b_hh as tile_step's) of rows 0 .. M: full
 * register blocks in one tile per panel, if the weights of a panel are one K block (bf16:
 * a block's rows converted once for all its panels of a column block, as drive's blocks
 * do). Returns the rows done; the caller computes the others in two passes, the same sums. */
static inline __attribute__((always_inline)) int FR_P(fused_steps)(
    int M, int I, int H, int j0, int j1, const REAL *const *x, const REAL *wit_packed,
    const REAL *bias, REAL *const *p, const REAL *const *hprev, const REAL *wt_packed,
    const REAL *b_hh, REAL *const *out, int act) {
    const int fused = I <= KC && H <= KC ? M / FR_MR * FR_MR : 0;
    /* Where several row blocks read weights larger than a core's L2 (a gated cell's, G·H
     * columns), columns in blocks of at most L2_BLOCK_BYTES of both, each swept by every
     * row block in turn, so that the next row block finds its panels in L2 */
    const size_t column_bytes = (size_t)(KSTEP(I) + KSTEP(H)) * sizeof(REAL);
    int cb = j1 - j0;
    if (fused > FR_MR && column_bytes * (size_t)(j1 - j0) > 2 * (size_t)L2_BLOCK_BYTES) {
        const int blocks = (int)((column_bytes * (size_t)(j1 - j0) + L2_BLOCK_BYTES - 1) /
                                 L2_BLOCK_BYTES);
        cb = ((j1 - j0 + blocks - 1) / blocks + NR - 1) / NR * NR;
    }
    for (int jb = j0; jb < j1; jb += cb) {
        const int je = j1 - jb < cb ? j1 : jb + cb;
        for (int i0 = 0; i0 < fused; i0 += FR_MR) {
            const REAL *const *xr = x + i0, *const *hr = hprev + i0;
#if FR_BF16
            REAL cx[FR_MR][KSTEP(KC) + 64 / sizeof(REAL)];
            REAL ch[FR_MR][KSTEP(KC) + 64 / sizeof(REAL)];
            const REAL *cxr[FR_MR], *chr[FR_MR];
            for (int r = 0; r < FR_MR; r++) {
                FR_P(bf16_row)(x[i0 + r], I, cx[r]);
                FR_P(bf16_row)(hprev[i0 + r], H, ch[r]);
                cxr[r] = cx[r];
                chr[r] = ch[r];
            }
            xr = cxr;
            hr = chr;
#endif
            for (int c = jb; c < je; c += NR)
                FR_P(tile_step)(xr, I, wit_packed + (fr_index)c * KSTEP(I),
                                bias ? bias + c : NULL, p ? p + i0 : NULL, hr, H,
                                wt_packed + (fr_index)c * KSTEP(H), b_hh ? b_hh + c : NULL,
                                out + i0, c, j1 - c < NR ? j1 - c : NR, act);
        }
    }
    return fused;
}

static void FR_P(rnn_input_step)(int M, int I, int H, int j0, int j1, const REAL *const *x,
                                 const REAL *wit_packed, const REAL *bias,
                                 const REAL *const *hprev, REAL *const *out,
                                 const REAL *wt_packed, int act) {
    const int fused = FR_P(fused_steps)(M, I, H, j0, j1, x, wit_packed, bias, NULL, hprev,
                                        wt_packed, NULL, out, act);
    if (fused < M) {
        FR_P(input_step)(M - fused, I, j0, j1, x + fused, wit_packed, bias, out + fused);
        FR_P(rnn_step)(M - fused, H, j0, j1, hprev + fused, (const REAL *const *)out + fused,
                       out + fused, wt_packed, act);
    }
}

static void FR_P(gru_step)(int M, int I, int H, int j0, int j1, const REAL *const *x,
                           const REAL *wit_packed, const REAL *bias, REAL *const *p,
                           const REAL *const *hprev, const REAL *wt_packed, const REAL *b_hh,
                           REAL *const *r) {
    /* bf16: full register blocks in one tile, whose rows of x and h are converted once (in
     * float32 the one tile measured no faster than the two passes) */
    const int fused = FR_BF16 ? FR_P(fused_steps)(M, I, H, j0, j1, x, wit_packed, bias, p,
                                                  hprev, wt_packed, b_hh, r, FR_ACT_NONE)
                              : 0;
    if (fused < M) {
        FR_P(input_step)(M - fused, I, j0, j1, x + fused, wit_packed, bias, p + fused);
        FR_P(input_step)(M - fused, H, j0, j1, hprev + fused, wt_packed, b_hh, r + fused);
    }
}

#if !FR_BF16 /* pointwise: the bf16 table uses float32's */
static void FR_P(bptt_da)(int M, int j0, int j1, const REAL *const *dy, const REAL *const *h,
                          const REAL *const *g, REAL *const *da, int relu) {
    /* dA_t = (dY_t + g) ⊙ act'(h_t),  tanh' = 1 - h², relu' = [h > 0]; as torch, a NaN
     * output passes the gradient (h <= 0 is false for NaN) */
    for (int r = 0; r < M; r++) {
        const REAL *dyr = dy[r], *hr = h[r], *gr = g[r];
        REAL *dar = da[r];
        if (relu)
            for (int j = j0; j < j1; j++) dar[j] = hr[j] <= 0 ? 0 : dyr[j] + gr[j];
        else
            for (int j = j0; j < j1; j++) dar[j] = (dyr[j] + gr[j]) * (1 - hr[j] * hr[j]);
    }
}

#endif

static void FR_P(bptt_g)(int M, int H, int j0, int j1, const REAL *const *da, REAL *const *g,
                         const REAL *w_packed) {
    /* g = dA_t W_hh for columns j0 .. j1 */
    FR_P(asrc) a = {da, NULL, 0};
    FR_P(drive)(M, j0, j1 - j0, H, a, w_packed, NULL, 0, 0, NULL, NULL, NULL, NULL, g, 0,
                FR_P(FIN_NONE), NULL, NULL, 0);
}
