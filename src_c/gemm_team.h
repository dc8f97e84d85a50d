/* GEMMs shared by a team of threads, for one dtype: each thread computes a slice of C's
 * rows and packs a share of B for all, meeting at a barrier once per block. gemm_at_team
 * (A transposed: weight gradients) and weight_grads_at_team (a layer's dW_ih, dW_hh and db
 * in one pass over dA). Part of the per-dtype kernel bodies (kernels_dtype.h), after gemm.h.
 */

/* A thread's share of a block of nc columns that a team packs together: a contiguous run
 * of panels, columns *j .. *j + return value (0: none) from the block's first. */
static fr_index FR_P(panel_share)(fr_index nc, int thread, int nthreads, fr_index *j) {
    const fr_index npanels = (nc + NR - 1) / NR;
    const fr_index p0 = npanels * thread / nthreads, p1 = npanels * (thread + 1) / nthreads;
    *j = p0 * NR;
    return p1 > p0 ? (p1 * NR < nc ? p1 * NR : nc) - p0 * NR : 0;
}

/* A thread's share of packing the K block kb .. kb+kc of op(B)'s columns jc .. jc+nc into
 * bp, the block's packing for the team. */
static void FR_P(pack_share)(fr_index kb, fr_index kc, fr_index jc, fr_index nc, const REAL *B,
                             fr_index ldb, int b_trans, REAL *bp, int thread, int nthreads) {
    fr_index j;
    const fr_index n = FR_P(panel_share)(nc, thread, nthreads, &j);
    if (n > 0)
        FR_P(pack)(kc, n, b_trans ? B + (jc + j) * ldb + kb : B + kb * ldb + jc + j, ldb,
                   b_trans, NULL, bp + j * KSTEP(kc));
}

/* Elements of the buffer a team shares in gemm_at_team: two packed KC x NC blocks of B. */
static fr_index FR_P(gemm_team_size)(fr_index K, fr_index N) {
    fr_index kc = K < KC ? (K > 0 ? K : 1) : KC, nc = N < NC ? (N > 0 ? N : 1) : NC;
    return 2 * FR_P(packed_size)(kc, nc);
}

/* gemm with A transposed, called by each thread of a team (thread of nthreads): each
 * computes a slice of C's rows, and they share the packing of B. A weight gradient
 * (C = dAᵀX: K = all time steps, C small) split by rows alone has every thread pack all of
 * B, block after block; here each packs 1/nthreads of a block into `shared`
 * (gemm_team_size elements), `barrier` waits for all, and each reads the whole block.
 * Two blocks alternate: a thread packs block s + 2 only after the barrier of block s + 1,
 * which every thread reaches after its work on block s. Bitwise the result of gemm. */
static int FR_P(gemm_at_team)(fr_index M, fr_index N, fr_index K, const REAL *A, fr_index lda,
                              const REAL *B, fr_index ldb, int b_trans, REAL *C, fr_index ldc,
                              const fr_index *c_rows, const REAL *bias, int accumulate,
                              REAL *a_sums, int thread, int nthreads, REAL *shared,
                              void (*barrier)(void *), void *barrier_arg) {
    const fr_index i0 = M * thread / nthreads, rows = M * (thread + 1) / nthreads - i0;
    if (a_sums) memset(a_sums + i0, 0, (size_t)rows * sizeof(REAL));
    if (N <= 0) { /* no product to read A with: every thread returns here, none waits */
        for (fr_index k = 0; a_sums && k < K; k++)
            for (fr_index i = i0; i < i0 + rows; i++) a_sums[i] += A[k * lda + i];
        return 0;
    }
    const fr_index kc_max = K < KC ? (K > 0 ? K : 1) : KC;
    const fr_index half = FR_P(gemm_team_size)(K, N) / 2;
    REAL **crows = malloc((size_t)(rows > 0 ? rows : 1) * sizeof(REAL *));
    REAL *apack = fr_scratch_alloc(
        (size_t)(FR_P(apack_stride)(kc_max) * ((rows + FR_MR - 1) / FR_MR) + 1) * sizeof(REAL));
    /* out of memory: still pack and meet the others at every barrier, compute nothing */
    const int ok = crows && apack;
    for (fr_index i = 0; ok && i < rows; i++)
        crows[i] = C + (c_rows ? c_rows[i0 + i] : i0 + i) * ldc;
    const FR_P(asrc) a = {NULL, A + i0, lda};
    const fr_index nkb = K > 0 ? (K + KC - 1) / KC : 1, ncb = (N + NC - 1) / NC;
    for (fr_index s = 0; s < nkb * ncb; s++) {
        /* K blocks outside, as in drive: one copy of A's block serves every column block */
        const fr_index kb = s / ncb * KC, jc = s % ncb * NC;
        const fr_index kc = K - kb < KC ? K - kb : KC;
        const int nc = (int)(N - jc < NC ? N - jc : NC), last = kb + kc >= K;
        REAL *bp = shared + (s % 2) * half;
        FR_P(pack_share)(kb, kc, jc, nc, B, ldb, b_trans, bp, thread, nthreads);
        barrier(barrier_arg);
        if (ok && rows > 0)
            FR_P(block)((int)rows, nc, kb, kc, a, apack, bp, KSTEP(kc) * NR,
                        (const REAL *const *)crows, crows, jc,
                        kb > 0 ? FR_P(INIT_OUT) : accumulate ? FR_P(INIT_IN) : FR_P(INIT_ZERO),
                        last && bias ? FR_P(FIN_BIAS) : FR_P(FIN_NONE),
                        last && bias ? bias + jc : NULL, jc == 0,
                        jc == 0 && a_sums ? a_sums + i0 : NULL, 0);
    }
    free(crows);
    fr_scratch_free(apack);
    return ok ? 0 : -1;
}

/* Rows k < kc of a K block of op(B) given by row pointers (rows[k] + j0, n values), in
 * pack's layout (kc deep). */
static void FR_P(pack_from_rows)(const REAL *const *rows, fr_index j0, fr_index n,
                                 fr_index kc, REAL *packed) {
    for (fr_index k = 0; k < kc; k += KUNIT) {
        if (k + 8 + KUNIT <= kc) /* rows ahead, as in pack */
            for (fr_index j = 0; j < n; j += 64 / (fr_index)sizeof(REAL))
                for (int u = 0; u < KUNIT; u++) __builtin_prefetch(rows[k + 8 + u] + j0 + j);
        FR_P(pack_rows)(rows[k] + j0, KUNIT == 2 && k + 1 < kc ? rows[k + 1] + j0 : NULL, n, kc, k,
                        packed);
    }
}

/* A layer's weight gradients in one pass over dA, by each thread of a team (as
 * gemm_at_team): dW_ih = dAᵀ X (M x I, shared packing of X), dW_hh of direction d =
 * dA_dᵀ Hprev_d (rows d·W .. of dw_hh, H columns), db = Σ_k dA (a_sums, may be NULL).
 * dA is K x M (lda), M = D·W: W columns per direction (H for an Elman RNN, G·H for a gated
 * cell's gates); hprev[d·K + k] is row k of Hprev_d (H values: the state before step k's,
 * h0 where a sequence starts). Row i of the products is row c_rows[i] of dw_ih and dw_hh
 * (c_rows NULL: row i; a_sums stays in the products' order). Each K block of a thread's
 * dA columns is copied once for both products, where separate GEMMs copied it for each.
 * Every element is a sum in k order, whatever the team. Returns 0, or -1 without scratch
 * memory. */
static int FR_P(weight_grads_at_team)(fr_index M, fr_index K, fr_index W, fr_index H,
                                      const REAL *A, fr_index lda, const REAL *X,
                                      fr_index ldx, fr_index I, const REAL *const *hprev,
                                      REAL *dw_ih, REAL *dw_hh, const fr_index *c_rows,
                                      REAL *a_sums, int thread, int nthreads, REAL *shared,
                                      void (*barrier)(void *), void *barrier_arg) {
    const fr_index i0 = M * thread / nthreads, rows = M * (thread + 1) / nthreads - i0;
    if (a_sums) memset(a_sums + i0, 0, (size_t)rows * sizeof(REAL));
    const fr_index kc_max = K < KC ? (K > 0 ? K : 1) : KC;
    const fr_index half = FR_P(gemm_team_size)(K, I) / 2;
    /* this thread's rows, cut where the direction changes (run r: rows seg[r] ..
     * seg[r + 1]); a slice spans at most D <= 2 directions: room for three runs, a slice
     * needing more is refused (ok = 0) */
    fr_index seg[4] = {i0, i0, i0, i0};
    int nseg = 0;
    if (rows > 0) {
        fr_index r = i0;
        while (r < i0 + rows && nseg < 3) {
            fr_index end = (r / W + 1) * W < i0 + rows ? (r / W + 1) * W : i0 + rows;
            seg[++nseg] = end;
            r = end;
        }
    }
    const fr_index astride_rows = FR_P(apack_stride)(kc_max);
    fr_index ablocks = 0;
    for (int g = 0; g < nseg; g++) ablocks += (seg[g + 1] - seg[g] + FR_MR - 1) / FR_MR;
    REAL **crows = malloc((size_t)(2 * rows + 1) * sizeof(REAL *));
    REAL *apack = fr_scratch_alloc((size_t)(astride_rows * ablocks + 1) * sizeof(REAL));
    REAL *hpack =
        fr_scratch_alloc((size_t)FR_P(packed_size)(kc_max, H < NC ? H : NC) * sizeof(REAL));
    /* out of memory: still pack and meet the others at every barrier, compute nothing */
    const int ok = crows && apack && hpack && seg[nseg] == i0 + rows;
    for (fr_index i = 0; ok && i < rows; i++) {
        const fr_index row = c_rows ? c_rows[i0 + i] : i0 + i;
        crows[i] = dw_ih + row * I;
        crows[rows + i] = dw_hh + row * H;
    }
    const fr_index nkb = K > 0 ? (K + KC - 1) / KC : 1;
    const fr_index ncb = I > 0 ? (I + NC - 1) / NC : 0;
    /* shared blocks so far, of X and of Hprev: each alternates between its buffer's halves */
    fr_index s = 0, sh = 0;
    REAL *shared_h = shared + 2 * half;
    const fr_index half_h = FR_P(gemm_team_size)(K, H) / 2;
    for (fr_index kb = 0; kb < nkb * KC; kb += KC) {
        const fr_index kc = K - kb < KC ? K - kb : KC;
        const int init = kb > 0 ? FR_P(INIT_OUT) : FR_P(INIT_ZERO);
        for (fr_index jc = 0; jc < ncb * NC; jc += NC, s++) { /* dW_ih: X shared */
            const int nc = (int)(I - jc < NC ? I - jc : NC);
            REAL *bp = shared + (s % 2) * half;
            FR_P(pack_share)(kb, kc, jc, nc, X, ldx, 0, bp, thread, nthreads);
            barrier(barrier_arg);
            fr_index ab = 0;
            for (int g = 0; ok && g < nseg; g++) {
                const fr_index r0 = seg[g], r1 = seg[g + 1];
                const FR_P(asrc) a = {NULL, A + r0, lda};
                FR_P(block)((int)(r1 - r0), nc, kb, kc, a, apack + ab * astride_rows, bp,
                            KSTEP(kc) * NR, (const REAL *const *)crows + (r0 - i0), crows + (r0 - i0),
                            jc, init, FR_P(FIN_NONE), NULL, jc == 0,
                            jc == 0 && a_sums ? a_sums + r0 : NULL, 0);
                ab += (r1 - r0 + FR_MR - 1) / FR_MR;
            }
        }
        /* dW_hh. One direction: every thread reads the same Hprev, so they share its
         * packing as X's. Two: each run packs its own direction's. */
        for (fr_index jc = 0; jc < H; jc += NC) {
            const int nc = (int)(H - jc < NC ? H - jc : NC);
            REAL *hp = hpack;
            if (M == W) {
                hp = shared_h + (sh++ % 2) * half_h;
                fr_index j;
                const fr_index n = FR_P(panel_share)(nc, thread, nthreads, &j);
                if (n > 0) FR_P(pack_from_rows)(hprev + kb, jc + j, n, kc, hp + j * KSTEP(kc));
                barrier(barrier_arg);
            }
            fr_index ab = 0;
            for (int g = 0; ok && g < nseg; g++) {
                const fr_index r0 = seg[g], r1 = seg[g + 1];
                const FR_P(asrc) a = {NULL, A + r0, lda};
                if (M != W)
                    FR_P(pack_from_rows)(hprev + r0 / W * K + kb, jc, nc, kc, hp);
                /* A's block was copied by the dW_ih pass, unless there was none (I = 0) */
                const int copy_a = ncb == 0 && jc == 0;
                FR_P(block)((int)(r1 - r0), nc, kb, kc, a, apack + ab * astride_rows, hp,
                            KSTEP(kc) * NR, (const REAL *const *)crows + rows + (r0 - i0),
                            crows + rows + (r0 - i0), jc, init, FR_P(FIN_NONE), NULL, copy_a,
                            copy_a && a_sums ? a_sums + r0 : NULL, 0);
                ab += (r1 - r0 + FR_MR - 1) / FR_MR;
            }
        }
    }
    free(crows);
    fr_scratch_free(apack);
    fr_scratch_free(hpack);
    return ok ? 0 : -1;
}
