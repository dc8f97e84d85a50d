/* Typed kernel bodies; included by kernels_impl.h with REAL, FR_P(name), FR_IS_FLOAT set.
 *
 * One register-blocked tile does all the arithmetic: an mr x (np·NR) block of vector
 * accumulators, broadcast-multiply-add over k in increasing order, then an epilogue
 * (bias, tanh or relu) applied in the store. B is packed into panels of NR columns
 * (zero-padded), k-major inside a panel. Every output element is
 *     init (0, or a value loaded from memory) + Σ_k a[k]·b[k]   (k = 0, 1, ..., in order)
 * whatever mr, np and the K blocking, so a row's result never depends on which rows
 * share its call: that is what makes results independent of the thread count.
 */

typedef REAL FR_P(vec) __attribute__((vector_size(FR_VBYTES)));
#define VEC FR_P(vec)
#define VL ((int)(FR_VBYTES / sizeof(REAL)))
#define NV 2          /* vectors per panel */
#define NR (NV * VL)  /* columns per panel */
/* k per block (an mr x KC slice of A stays in L1) and columns per block (KC x NC of B in
 * L2). Each K block past the first re-reads and re-writes C's block: with float AVX-512 a
 * 512-deep block (1 MiB of B) halves that traffic, K >= 512 GEMMs 395 -> 418 GF/s measured */
#define KC (FR_VBYTES == 64 && FR_IS_FLOAT ? 512 : 256)
#define NC (FR_VBYTES == 64 && FR_IS_FLOAT ? 512 : 256)

enum { FR_P(INIT_ZERO), FR_P(INIT_IN), FR_P(INIT_OUT) };
enum { FR_P(FIN_NONE), FR_P(FIN_BIAS), FR_P(FIN_TANH), FR_P(FIN_RELU) };

static inline VEC FR_P(vload)(const REAL *p) {
    VEC v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline VEC FR_P(vload_n)(const REAL *p, int n) {
    if (n >= VL) return FR_P(vload)(p);
    VEC v = {0};
    if (n > 0) memcpy(&v, p, (size_t)n * sizeof(REAL));
    return v;
}

static inline void FR_P(vstore_n)(REAL *p, VEC v, int n) {
    if (n >= VL)
        memcpy(p, &v, sizeof(v));
    else if (n > 0)
        memcpy(p, &v, (size_t)n * sizeof(REAL));
}

static inline VEC FR_P(splat)(REAL s) {
    VEC v = {0};
    return v + s;
}

#if FR_IS_FLOAT
typedef int32_t FR_P(ivec) __attribute__((vector_size(FR_VBYTES)));
#else
typedef int64_t FR_P(ivec) __attribute__((vector_size(FR_VBYTES)));
#endif
#define IVEC FR_P(ivec)

/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros) */
static inline VEC FR_P(select)(IVEC mask, VEC a, VEC b) {
    return (VEC)(((IVEC)a & mask) | ((IVEC)b & ~mask));
}

#if FR_IS_FLOAT
/* tanh(x) = sign(x)·m/(m + 2), m = expm1(2|x|): one formula, accurate near 0 as well (no
 * cancellation), 2.6 float ulps at most against the correctly rounded tanh (every float
 * checked). expm1(y) = 2^n·expm1(g) + (2^n - 1), y = n·ln2 + g, |g| <= ln2/2, and
 * expm1(g) = g + g²·p(g), p a degree-4 minimax fit (relative error 3e-9). About 20 vector
 * operations: 40 % less time than a two-branch form (exp for large |x|, Taylor near 0). */
static inline VEC FR_P(vtanh)(VEC x) {
    const IVEC sign_mask = (IVEC){0} + INT32_MIN;
    VEC y = (VEC)((IVEC)x & ~sign_mask);
    y = y + y;
    /* from 2|x| = 20 on, m/(m + 2) rounds to 1; NaN compares false and passes through */
    y = FR_P(select)(y > FR_P(splat)(20.0f), FR_P(splat)(20.0f), y);
    /* adding 1.5·2^23 rounds y·log2(e) to the integer n, which the low bits then hold */
    const float round_shift = 12582912.0f;
    VEC shifted = y * 1.44269504088896341f + round_shift;
    VEC n = shifted - round_shift;
    VEC g = y - n * 0.693145751953125f; /* ln2 in two parts: n·ln2_hi is exact */
    g = g - n * 1.428606765330187045e-06f;
    VEC p = FR_P(splat)(1.388199744e-03f);
    p = 8.368832991e-03f + g * p;
    p = 4.166730493e-02f + g * p;
    p = 1.666651964e-01f + g * p;
    p = 4.999999702e-01f + g * p;
    VEC expm1_g = g + (g * g) * p;
    VEC two_n = (VEC)(((IVEC)shifted - (IVEC)FR_P(splat)(round_shift) + 127) << 23);
    VEC m = two_n * expm1_g + (two_n - 1.0f);
    VEC t = m / (m + 2.0f);
    return (VEC)((IVEC)t | ((IVEC)x & sign_mask));
}
#else
static inline VEC FR_P(vtanh)(VEC x) {
    for (int i = 0; i < VL; i++) x[i] = tanh(x[i]);
    return x;
}
#endif

static inline VEC FR_P(vrelu)(VEC v) {
    /* v < 0 ? 0 : v, so NaN propagates as in torch */
    return FR_P(select)(v < FR_P(splat)(0), FR_P(splat)(0), v);
}

/* Where A comes from: row pointers (element (i, k) at rows[i][k]), or, when rows is NULL,
 * a matrix stored transposed (element (i, k) at at[k·ldat + i]). */
typedef struct {
    const REAL *const *rows;
    const REAL *at;
    fr_index ldat;
} FR_P(asrc);

/* The register tile: rows i0 .. i0+mr of A over k = kb .. kb+kc, times packed B panels
 * bp + q·panel_stride (q < np, each kc x NR), into cout[r] + c_off (ncols valid columns).
 * `kmajor` (a constant at every call) selects how A is read: row-major A through its row
 * pointers, transposed A as MR consecutive values per k (ldat apart). */
static inline __attribute__((always_inline)) void FR_P(tile)(
    const int mr, const int np, const int kmajor, FR_P(asrc) a, int i0, fr_index kb,
    fr_index kc, const REAL *bp, fr_index panel_stride, const REAL *const *cin,
    REAL *const *cout, fr_index c_off, int ncols, int init, int fin, const REAL *bias) {
    VEC acc[8][4 * NV];
    for (int r = 0; r < mr; r++)
        for (int i = 0; i < np * NV; i++) {
            if (init == FR_P(INIT_ZERO)) {
                acc[r][i] = FR_P(splat)(0);
                /* the output lines arrive while the k loop runs: the stores at the end
                 * would otherwise miss and stall (10 % of a K = 128 GEMM, measured) */
                __builtin_prefetch(cout[r] + c_off + i * VL, 1);
            } else
                acc[r][i] = FR_P(vload_n)((init == FR_P(INIT_IN) ? cin[r] : cout[r]) + c_off + i * VL,
                                          ncols - i * VL);
        }
    const REAL *ar[8];
    const REAL *at = kmajor ? a.at + kb * a.ldat + i0 : NULL;
    if (!kmajor)
        for (int r = 0; r < mr; r++) ar[r] = a.rows[i0 + r] + kb;
    for (fr_index k = 0; k < kc; k++) {
        VEC b[4 * NV];
        for (int q = 0; q < np; q++)
            for (int v = 0; v < NV; v++) b[q * NV + v] = FR_P(vload)(bp + q * panel_stride + k * NR + v * VL);
        for (int r = 0; r < mr; r++) {
            const REAL x = kmajor ? at[k * a.ldat + r] : ar[r][k];
            for (int i = 0; i < np * NV; i++) acc[r][i] += x * b[i];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int i = 0; i < np * NV; i++) {
            VEC v = acc[r][i];
            int n = ncols - i * VL;
            if (n <= 0) break;
            if (fin == FR_P(FIN_BIAS)) v += FR_P(vload_n)(bias + i * VL, n);
            else if (fin == FR_P(FIN_TANH)) v = FR_P(vtanh)(v);
            else if (fin == FR_P(FIN_RELU)) v = FR_P(vrelu)(v);
            FR_P(vstore_n)(cout[r] + c_off + i * VL, v, n);
        }
}

/* Panels processed together so that a few rows still keep enough accumulators in flight
 * (without spilling: 32 vector registers with AVX-512, 16 otherwise). */
static inline int FR_P(panels_for_rows)(int mr) {
    if (FR_VBYTES == 64) return mr <= 2 ? 4 : mr <= 4 ? 2 : 1;
    return mr == 1 ? 4 : mr <= 3 ? 2 : 1;
}

static void FR_P(tile_dispatch)(int mr, int np, FR_P(asrc) a, int i0, fr_index kb, fr_index kc,
                                const REAL *bp, fr_index panel_stride, const REAL *const *cin,
                                REAL *const *cout, fr_index c_off, int ncols, int init, int fin,
                                const REAL *bias) {
#define FR_TILE_CASE(m, n)                                                                    \
    case (m) * 8 + (n):                                                                       \
        if (a.rows)                                                                           \
            FR_P(tile)(m, n, 0, a, i0, kb, kc, bp, panel_stride, cin, cout, c_off, ncols, init, \
                       fin, bias);                                                            \
        else                                                                                  \
            FR_P(tile)(m, n, 1, a, i0, kb, kc, bp, panel_stride, cin, cout, c_off, ncols, init, \
                       fin, bias);                                                            \
        break;
    switch (mr * 8 + np) {
        FR_TILE_CASE(1, 1) FR_TILE_CASE(1, 2) FR_TILE_CASE(1, 4)
        FR_TILE_CASE(2, 1) FR_TILE_CASE(2, 2) FR_TILE_CASE(2, 4)
        FR_TILE_CASE(3, 1) FR_TILE_CASE(3, 2)
        FR_TILE_CASE(4, 1) FR_TILE_CASE(4, 2)
#if FR_MR >= 6
        FR_TILE_CASE(5, 1) FR_TILE_CASE(6, 1)
#endif
#if FR_MR >= 8
        FR_TILE_CASE(7, 1) FR_TILE_CASE(8, 1)
#endif
    }
#undef FR_TILE_CASE
}

/* Distance between row blocks of packed A: one cache line more than a block needs, so
 * that the row blocks (a power of two in size) do not all map to the same cache sets */
static inline fr_index FR_P(apack_stride)(fr_index kc) {
    return kc * FR_MR + 64 / (fr_index)sizeof(REAL);
}

/* One K block (kb, kc) of one column block (ncols, packed panels at bp) for all M rows,
 * row block by row block, each swept across the panels. A transposed is first copied
 * into apack (kc x FR_MR per row block, apack_stride apart): read in place, a row block's
 * values sit one per row of the stored matrix (often a power of two apart), each k a
 * cache and TLB miss; copied, they are read row by row, contiguously. copy_a says whether
 * to copy (or apack holds this K block already); while copying, the rows of op(A) are
 * summed into a_sums if not NULL. */
static void FR_P(block)(int M, int ncols, fr_index kb, fr_index kc, FR_P(asrc) a,
                        REAL *apack, const REAL *bp, fr_index panel_stride,
                        const REAL *const *cin, REAL *const *cout, fr_index c_off, int init,
                        int fin, const REAL *bias, int copy_a, REAL *a_sums) {
    const int npanels = (ncols + NR - 1) / NR;
    const fr_index astride = FR_P(apack_stride)(kc);
    if (copy_a)
        for (fr_index k = 0; k < kc; k++) {
            const REAL *src = a.at + (kb + k) * a.ldat;
            if (k + 16 < kc) /* rows ahead: the hardware prefetchers miss this pattern */
                for (int i = 0; i < M; i += 64 / (int)sizeof(REAL))
                    __builtin_prefetch(src + 16 * a.ldat + i);
            int i0 = 0;
            for (; i0 + FR_MR <= M; i0 += FR_MR) /* a constant size: a register move */
                memcpy(apack + i0 / FR_MR * astride + k * FR_MR, src + i0, FR_MR * sizeof(REAL));
            if (i0 < M)
                memcpy(apack + i0 / FR_MR * astride + k * FR_MR, src + i0,
                       (size_t)(M - i0) * sizeof(REAL));
            if (a_sums) /* the row just read, in k order: each sum's order is fixed */
                for (int i = 0; i < M; i++) a_sums[i] += src[i];
        }
    for (int i0 = 0; i0 < M; i0 += FR_MR) {
        const int mr = M - i0 < FR_MR ? M - i0 : FR_MR;
        const int np = mr == FR_MR ? 1 : FR_P(panels_for_rows)(mr);
        FR_P(asrc) at = {NULL, apack + i0 / FR_MR * astride, FR_MR};
        for (int q = 0; q < npanels;) {
            /* the widest tile left (np, or a power of two below it: the tiles that exist) */
            int n = np;
            while (n > npanels - q) n /= 2;
            int cols = ncols - q * NR < n * NR ? ncols - q * NR : n * NR;
            if (a.rows)
                FR_P(tile_dispatch)(mr, n, a, i0, kb, kc, bp + q * panel_stride, panel_stride,
                                    cin ? cin + i0 : NULL, cout + i0, c_off + q * NR, cols,
                                    init, fin, bias ? bias + q * NR : NULL);
            else
                FR_P(tile_dispatch)(mr, n, at, 0, 0, kc, bp + q * panel_stride, panel_stride,
                                    cin ? cin + i0 : NULL, cout + i0, c_off + q * NR, cols,
                                    init, fin, bias ? bias + q * NR : NULL);
            q += n;
        }
    }
}

static fr_index FR_P(packed_size)(fr_index K, fr_index N) {
    return ((N + NR - 1) / NR) * NR * (K > 0 ? K : 1);
}

/* Row k of op(B) (N values) into a K-deep packing (pack's layout), one panel's part at a
 * time: for whole panels a constant-size copy, that is a few vector moves. */
static inline void FR_P(pack_row)(const REAL *row, fr_index N, fr_index K, fr_index k,
                                  REAL *packed) {
    fr_index j0 = 0;
    for (; j0 + NR <= N; j0 += NR) memcpy(packed + j0 * K + k * NR, row + j0, NR * sizeof(REAL));
    if (j0 < N) {
        REAL *dst = packed + j0 * K + k * NR;
        memcpy(dst, row + j0, (size_t)(N - j0) * sizeof(REAL));
        memset(dst + (N - j0), 0, (size_t)(NR - (N - j0)) * sizeof(REAL));
    }
}

/* op(B) into panels of NR columns, k-major within a panel, zero-padded: op(B) = B[K, N]
 * (element (k, j) at B[k·ldb + j]) or, if b_trans, Bᵀ of B stored [N, K] (at B[j·ldb + k]). */
static void FR_P(pack)(fr_index K, fr_index N, const REAL *B, fr_index ldb, int b_trans,
                       REAL *packed) {
    if (b_trans) {
        for (fr_index j0 = 0; j0 < N; j0 += NR) {
            fr_index n = N - j0 < NR ? N - j0 : NR;
            REAL *dst = packed + j0 * K;
            /* read each of B's rows (a column of op(B)) once, contiguously */
            for (fr_index j = 0; j < n; j++) {
                const REAL *col = B + (j0 + j) * ldb;
                for (fr_index k = 0; k < K; k++) dst[k * NR + j] = col[k];
            }
            for (fr_index k = 0; k < K; k++)
                for (fr_index j = n; j < NR; j++) dst[k * NR + j] = 0;
        }
        return;
    }
    /* row by row (B read contiguously) */
    for (fr_index k = 0; k < K; k++) {
        const REAL *row = B + k * ldb;
        if (k + 8 < K) /* rows ahead, as the prefetchers miss rows far apart: dW_hh 3 % faster */
            for (fr_index j = 0; j < N; j += 64 / (fr_index)sizeof(REAL))
                __builtin_prefetch(row + 8 * ldb + j);
        FR_P(pack_row)(row, N, K, k, packed);
    }
}

/* C[:, c0 .. c0+N] from A and B, over K blocks and column blocks. B is either pre-packed
 * whole (packed: all columns, panel stride K·NR; c0 selects where to start) or packed here
 * block by block from B/ldb/b_trans into scratch (c0 = 0). a_sums: see block. */
static void FR_P(drive)(int M, fr_index c0, fr_index N, fr_index K, FR_P(asrc) a,
                        const REAL *packed, const REAL *B, fr_index ldb, int b_trans,
                        REAL *scratch, REAL *apack,
                        const REAL *const *cin, REAL *const *cout, int load_first, int fin,
                        const REAL *bias, REAL *a_sums) {
    /* A transposed is copied once per K block: then the column blocks go inside the K
     * blocks, so that one copy serves them all (row-major A is read in place) */
    const fr_index ncb = (N + NC - 1) / NC, nkb = K > 0 ? (K + KC - 1) / KC : 1;
    const int k_outer = !a.rows;
    for (fr_index outer = 0; outer < (k_outer ? nkb : ncb); outer++)
        for (fr_index inner = 0; inner < (k_outer ? ncb : nkb); inner++) {
            const fr_index jc = (k_outer ? inner : outer) * NC, kb = (k_outer ? outer : inner) * KC;
            int nc = (int)(N - jc < NC ? N - jc : NC);
            fr_index kc = K - kb < KC ? K - kb : KC;
            int last = kb + kc >= K;
            int init = kb > 0 ? FR_P(INIT_OUT) : load_first ? FR_P(INIT_IN) : FR_P(INIT_ZERO);
            const REAL *bp;
            fr_index stride;
            if (packed) {
                bp = packed + (c0 + jc) * K + kb * NR;
                stride = K * NR;
            } else {
                FR_P(pack)(kc, nc, b_trans ? B + jc * ldb + kb : B + kb * ldb + jc, ldb,
                           b_trans, scratch);
                bp = scratch;
                stride = kc * NR;
            }
            FR_P(block)(M, nc, kb, kc, a, apack, bp, stride, cin, cout, c0 + jc, init,
                        last ? fin : FR_P(FIN_NONE), bias && last ? bias + jc : NULL,
                        k_outer && jc == 0, jc == 0 ? a_sums : NULL);
        }
}

static int FR_P(gemm)(fr_index M, fr_index N, fr_index K, const REAL *A, fr_index lda,
                      int a_trans, const REAL *B, fr_index ldb, int b_trans, REAL *C,
                      fr_index ldc, const REAL *bias, int accumulate, REAL *a_sums) {
    if (M <= 0) return 0;
    if (a_sums && a_trans) {
        memset(a_sums, 0, (size_t)M * sizeof(REAL));
        if (N <= 0) /* no product to read A with */
            for (fr_index k = 0; k < K; k++)
                for (fr_index i = 0; i < M; i++) a_sums[i] += A[k * lda + i];
    }
    if (N <= 0) return 0;
    const REAL **rows = malloc((size_t)M * 2 * sizeof(REAL *));
    /* scratch for one packed KC x NC block of B, no larger than B needs */
    fr_index kc = K < KC ? (K > 0 ? K : 1) : KC, nc = N < NC ? N : NC;
    size_t bsize = (size_t)(kc * ((nc + NR - 1) / NR) * NR);
    /* and, for A transposed, one KC-deep block of all M rows (see block) */
    size_t asize = a_trans ? (size_t)(FR_P(apack_stride)(kc) * ((M + FR_MR - 1) / FR_MR)) : 0;
    REAL *scratch = malloc((bsize + asize) * sizeof(REAL));
    if (!rows || !scratch) {
        free(rows);
        free(scratch);
        return -1;
    }
    REAL **crows = (REAL **)(rows + M);
    for (fr_index i = 0; i < M; i++) {
        rows[i] = A + i * lda;
        crows[i] = C + i * ldc;
    }
    FR_P(asrc) a = {a_trans ? NULL : rows, A, lda};
    FR_P(drive)((int)M, 0, N, K, a, NULL, B, ldb, b_trans, scratch, scratch + bsize,
                (const REAL *const *)crows, crows, accumulate,
                bias ? FR_P(FIN_BIAS) : FR_P(FIN_NONE), bias, a_trans ? a_sums : NULL);
    free(rows);
    free(scratch);
    return 0;
}

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
                   b_trans, bp + j * kc);
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
                              const REAL *bias, int accumulate, REAL *a_sums, int thread,
                              int nthreads, REAL *shared, void (*barrier)(void *),
                              void *barrier_arg) {
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
    REAL *apack = malloc((size_t)(FR_P(apack_stride)(kc_max) * ((rows + FR_MR - 1) / FR_MR) + 1) *
                         sizeof(REAL));
    /* out of memory: still pack and meet the others at every barrier, compute nothing */
    const int ok = crows && apack;
    for (fr_index i = 0; ok && i < rows; i++) crows[i] = C + (i0 + i) * ldc;
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
            FR_P(block)((int)rows, nc, kb, kc, a, apack, bp, kc * NR,
                        (const REAL *const *)crows, crows, jc,
                        kb > 0 ? FR_P(INIT_OUT) : accumulate ? FR_P(INIT_IN) : FR_P(INIT_ZERO),
                        last && bias ? FR_P(FIN_BIAS) : FR_P(FIN_NONE),
                        last && bias ? bias + jc : NULL, jc == 0,
                        jc == 0 && a_sums ? a_sums + i0 : NULL);
    }
    free(crows);
    free(apack);
    return ok ? 0 : -1;
}

/* Rows k < kc of a K block of op(B) given by row pointers (rows[k] + j0, n values), in
 * pack's layout (kc deep). */
static void FR_P(pack_from_rows)(const REAL *const *rows, fr_index j0, fr_index n,
                                 fr_index kc, REAL *packed) {
    for (fr_index k = 0; k < kc; k++) {
        if (k + 8 < kc) /* rows ahead, as in pack */
            for (fr_index j = 0; j < n; j += 64 / (fr_index)sizeof(REAL))
                __builtin_prefetch(rows[k + 8] + j0 + j);
        FR_P(pack_row)(rows[k] + j0, n, kc, k, packed);
    }
}

/* A layer's weight gradients in one pass over dA, by each thread of a team (as
 * gemm_at_team): dW_ih = dAᵀ X (M x I, shared packing of X), dW_hh of direction d =
 * dA_dᵀ Hprev_d (rows d·H .. of dw_hh, H columns), db = Σ_k dA (a_sums, may be NULL).
 * dA is K x M (lda), M = D·H; hprev[d·K + k] is row k of Hprev_d (H values: the state
 * before step k's, h0 where a sequence starts). Each K block of a thread's dA columns is
 * copied once for both products, where separate GEMMs copied it for each. Every element
 * is a sum in k order, whatever the team. Returns 0, or -1 without scratch memory. */
static int FR_P(weight_grads_at_team)(fr_index M, fr_index K, fr_index H, const REAL *A,
                                      fr_index lda, const REAL *X, fr_index ldx, fr_index I,
                                      const REAL *const *hprev, REAL *dw_ih, REAL *dw_hh,
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
            fr_index end = (r / H + 1) * H < i0 + rows ? (r / H + 1) * H : i0 + rows;
            seg[++nseg] = end;
            r = end;
        }
    }
    const fr_index astride_rows = FR_P(apack_stride)(kc_max);
    fr_index ablocks = 0;
    for (int g = 0; g < nseg; g++) ablocks += (seg[g + 1] - seg[g] + FR_MR - 1) / FR_MR;
    REAL **crows = malloc((size_t)(2 * rows + 1) * sizeof(REAL *));
    REAL *apack = malloc((size_t)(astride_rows * ablocks + 1) * sizeof(REAL));
    REAL *hpack = malloc((size_t)FR_P(packed_size)(kc_max, H < NC ? H : NC) * sizeof(REAL));
    /* out of memory: still pack and meet the others at every barrier, compute nothing */
    const int ok = crows && apack && hpack && seg[nseg] == i0 + rows;
    for (fr_index i = 0; ok && i < rows; i++) {
        crows[i] = dw_ih + (i0 + i) * I;
        crows[rows + i] = dw_hh + (i0 + i) * H;
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
                            kc * NR, (const REAL *const *)crows + (r0 - i0), crows + (r0 - i0),
                            jc, init, FR_P(FIN_NONE), NULL, jc == 0,
                            jc == 0 && a_sums ? a_sums + r0 : NULL);
                ab += (r1 - r0 + FR_MR - 1) / FR_MR;
            }
        }
        /* dW_hh. One direction: every thread reads the same Hprev, so they share its
         * packing as X's. Two: each run packs its own direction's. */
        for (fr_index jc = 0; jc < H; jc += NC) {
            const int nc = (int)(H - jc < NC ? H - jc : NC);
            REAL *hp = hpack;
            if (M == H) {
                hp = shared_h + (sh++ % 2) * half_h;
                fr_index j;
                const fr_index n = FR_P(panel_share)(nc, thread, nthreads, &j);
                if (n > 0) FR_P(pack_from_rows)(hprev + kb, jc + j, n, kc, hp + j * kc);
                barrier(barrier_arg);
            }
            fr_index ab = 0;
            for (int g = 0; ok && g < nseg; g++) {
                const fr_index r0 = seg[g], r1 = seg[g + 1];
                const FR_P(asrc) a = {NULL, A + r0, lda};
                if (M != H)
                    FR_P(pack_from_rows)(hprev + r0 / H * K + kb, jc, nc, kc, hp);
                /* A's block was copied by the dW_ih pass, unless there was none (I = 0) */
                const int copy_a = ncb == 0 && jc == 0;
                FR_P(block)((int)(r1 - r0), nc, kb, kc, a, apack + ab * astride_rows, hp,
                            kc * NR, (const REAL *const *)crows + rows + (r0 - i0),
                            crows + rows + (r0 - i0), jc, init, FR_P(FIN_NONE), NULL, copy_a,
                            copy_a && a_sums ? a_sums + r0 : NULL);
                ab += (r1 - r0 + FR_MR - 1) / FR_MR;
            }
        }
    }
    free(crows);
    free(apack);
    free(hpack);
    return ok ? 0 : -1;
}

static void FR_P(rnn_step)(int M, int H, int j0, int j1, const REAL *const *hprev,
                           const REAL *const *p, REAL *const *out, const REAL *wt_packed,
                           int relu) {
    /* h_t = act(P_t + h_{t-1} W_hhᵀ) for columns j0 .. j1: P is the accumulator's start */
    FR_P(asrc) a = {hprev, NULL, 0};
    FR_P(drive)(M, j0, j1 - j0, H, a, wt_packed, NULL, 0, 0, NULL, NULL, p, out, 1,
                relu ? FR_P(FIN_RELU) : FR_P(FIN_TANH), NULL, NULL);
}

static void FR_P(input_step)(int M, int I, int j0, int j1, const REAL *const *x,
                             const REAL *wit_packed, const REAL *bias, REAL *const *out) {
    /* the input projection of one step's rows, as the GEMM computes it (zero start, bias last) */
    FR_P(asrc) a = {x, NULL, 0};
    FR_P(drive)(M, j0, j1 - j0, I, a, wit_packed, NULL, 0, 0, NULL, NULL, NULL, out, 0,
                bias ? FR_P(FIN_BIAS) : FR_P(FIN_NONE), bias ? bias + j0 : NULL, NULL);
}

static inline __attribute__((always_inline)) void FR_P(accumulate_rows)(
    VEC acc[FR_MR][NV], const REAL *const *a, int K, const REAL *bp) {
    /* acc[r] += Σ_k a[r][k]·bp[k] over one packed panel, k in order */
    for (int k = 0; k < K; k++) {
        VEC b[NV];
        for (int v = 0; v < NV; v++) b[v] = FR_P(vload)(bp + k * NR + v * VL);
        for (int r = 0; r < FR_MR; r++) {
            const REAL s = a[r][k];
            for (int v = 0; v < NV; v++) acc[r][v] += s * b[v];
        }
    }
}

/* One register block of rows (FR_MR) x one panel of columns (c .. c+ncols) of a step with
 * its input projection: acc = Σ_k x·W_ihᵀ, + bias, + Σ_k hprev·W_hhᵀ, act, store. The
 * operations of input_step and then rnn_step in the same order (the P they store between
 * them is the accumulator, exactly), without that store and reload or a second tile. */
static inline void FR_P(tile_step)(const REAL *const *x, int I, const REAL *bx,
                                   const REAL *bias, const REAL *const *h, int H,
                                   const REAL *bh, REAL *const *out, int c, int ncols, int relu) {
    VEC acc[FR_MR][NV];
    for (int r = 0; r < FR_MR; r++)
        for (int i = 0; i < NV; i++) {
            acc[r][i] = FR_P(splat)(0);
            __builtin_prefetch(out[r] + c + i * VL, 1);
        }
    FR_P(accumulate_rows)(acc, x, I, bx);
    if (bias)
        for (int r = 0; r < FR_MR; r++)
            for (int i = 0; i < NV && ncols - i * VL > 0; i++)
                acc[r][i] += FR_P(vload_n)(bias + i * VL, ncols - i * VL);
    FR_P(accumulate_rows)(acc, h, H, bh);
    for (int r = 0; r < FR_MR; r++)
        for (int i = 0; i < NV && ncols - i * VL > 0; i++)
            FR_P(vstore_n)(out[r] + c + i * VL,
                           relu ? FR_P(vrelu)(acc[r][i]) : FR_P(vtanh)(acc[r][i]),
                           ncols - i * VL);
}

static void FR_P(rnn_input_step)(int M, int I, int H, int j0, int j1, const REAL *const *x,
                                 const REAL *wit_packed, const REAL *bias,
                                 const REAL *const *hprev, REAL *const *out,
                                 const REAL *wt_packed, int relu) {
    /* full register blocks in one tile each (panel by panel, as drive's row blocks), if
     * the weights of a panel are one K block; other rows in two passes, the same sums */
    const int fused = I <= KC && H <= KC && j1 - j0 <= NC ? M / FR_MR * FR_MR : 0;
    for (int i0 = 0; i0 < fused; i0 += FR_MR)
        for (int c = j0; c < j1; c += NR)
            FR_P(tile_step)(x + i0, I, wit_packed + (fr_index)c * I, bias ? bias + c : NULL,
                            hprev + i0, H, wt_packed + (fr_index)c * H, out + i0, c,
                            j1 - c < NR ? j1 - c : NR, relu);
    if (fused < M) {
        FR_P(input_step)(M - fused, I, j0, j1, x + fused, wit_packed, bias, out + fused);
        FR_P(rnn_step)(M - fused, H, j0, j1, hprev + fused, (const REAL *const *)out + fused,
                       out + fused, wt_packed, relu);
    }
}

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

static void FR_P(bptt_g)(int M, int H, int j0, int j1, const REAL *const *da, REAL *const *g,
                         const REAL *w_packed) {
    /* g = dA_t W_hh for columns j0 .. j1 */
    FR_P(asrc) a = {da, NULL, 0};
    FR_P(drive)(M, j0, j1 - j0, H, a, w_packed, NULL, 0, 0, NULL, NULL, NULL, g, 0, FR_P(FIN_NONE),
                NULL, NULL);
}

#undef VEC
#undef VL
#undef NV
#undef NR
#undef KC
#undef NC
#undef IVEC
