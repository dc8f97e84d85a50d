/* The GEMM framework for one dtype: the register tile (microkernel), B's packing, the
 * blocking over K and columns, and gemm itself. Part of the per-dtype kernel bodies
 * (kernels_dtype.h), after vector_math.h.
 *
 * One register-blocked tile does all the arithmetic: an mr x (np·NR) block of vector
 * accumulators, broadcast-multiply-add over k in increasing order, then an epilogue
 * (bias, tanh or relu) applied in the store. B is packed into panels of NR columns
 * (zero-padded), k-major inside a panel. Every output element is
 *     init (0, or a value loaded from memory) + Σ_k a[k]·b[k]   (k = 0, 1, ..., in order)
 * or, where the caller asks for halves (the Elman recurrence on a small W_hh: see
 * recurrence_steps.h), K block by K block (KC deep; a later block's init is the previous
 * block's result), with h = the block's steps / 2 (a step is one k, a pair in mode 2 below),
 *     (init + Σ_{k < h} a[k]·b[k]) + (0 + Σ_{k >= h} a[k]·b[k])   (each Σ in k order)
 * whatever mr and np (and, for the first, the K blocking), so a row's result never depends
 * on which rows share its call: that is what makes results independent of the thread count.
 */

#define NV 2          /* vectors per panel */
#define NR (NV * VL)  /* columns per panel */
/* k per block (an mr x KC slice of A stays in L1) and columns per block (KC x NC of B in
 * L2). Each K block past the first re-reads and re-writes C's block: with float32 a
 * 512-deep block halves that traffic, and lets the fused step take H = 512 (AVX2's 6 rows
 * of A are then 12 KiB of a 32 KiB L1). NC stays 256 with AVX2, whose CPUs have L2s from
 * 256 KiB (a Zen 3's: 512). drive's blocks of B are at most L2_BLOCK_BYTES, half of a Zen 4
 * or Zen 5 core's L2, so that a block is still there when the next row block reads it: a
 * whole L2's worth (512 x 512 floats) came back from L3 for every row block. (The teams'
 * weight-gradient blocks measured no faster at that size: they keep NC.) */
#define KC (FR_IS_FLOAT && FR_VBYTES >= 32 ? 512 : 256)
#define NC (FR_VBYTES == 64 && FR_IS_FLOAT ? 512 : 256)
#define L2_BLOCK_BYTES (512 << 10)

/* bfloat16 products (FR_BF16, kernels_build.h's third table): 1, the operands rounded to
 * bf16 values, multiplied by the float32 tile (products exact, sums in float32 in k order);
 * 2, vdpbf16ps, which multiplies pairs of k: packed B and converted A hold a pair in a 32-bit
 * word (k even in the low half), so every K-indexed offset counts words, KSTEP(k) of them.
 * A is converted (rounded) block by block into scratch as the tile reads it; B when packed. */
#if FR_BF16 == 2
#define KSTEP(k) (((k) + 1) / 2)
#else
#define KSTEP(k) (k)
#endif

#if FR_BF16 == 2
/* vcvtneps2bf16 rounds as bf16_round below does (to nearest, ties to even; NaN made quiet)
 * in one instruction, except that a subnormal float becomes a zero of its sign: an operand
 * vdpbf16ps counts as zero anyway. */

/* n values of k0 as the tile reads an operand: 32-bit words pairing k0[i] (low half) with
 * k1[i] (zero if k1 is NULL). */
static inline void FR_P(bf16_convert)(const REAL *k0, const REAL *k1, int n, REAL *dst) {
    /* words 0..15 of the conversion hold k0's lanes, 16..31 k1's: this interleaves them */
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                           9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                           17, 1, 16, 0);
    for (int i = 0; i < n; i += VL) {
        const VEC hi = k1 ? FR_P(vload_n)(k1 + i, n - i) : FR_P(splat)(0);
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh((__m512)hi,
                                                           (__m512)FR_P(vload_n)(k0 + i, n - i));
        FR_P(vstore_n)(dst + i, (VEC)_mm512_permutexvar_epi16(pairs, both), n - i);
    }
}

/* n consecutive values of one row (k = 0 .. n) as the tile reads them: pairs of consecutive
 * k in KSTEP(n) words (an odd n padded with 0). */
static inline void FR_P(bf16_row)(const REAL *src, int n, REAL *dst) {
    const int npad = 2 * KSTEP(n);
    for (int k = 0; k < npad; k += VL) {
        const __m256bh h = _mm512_cvtneps_pbh((__m512)FR_P(vload_n)(src + k, n - k));
        if (npad - k >= VL) /* a constant size: one store */
            memcpy((uint16_t *)dst + k, &h, sizeof h);
        else /* the first npad - k halves, as vstore_n */
            _mm256_mask_storeu_epi16((uint16_t *)dst + k, (__mmask16)((1u << (npad - k)) - 1),
                                     (__m256i)h);
    }
}
#elif FR_BF16
typedef uint32_t FR_P(uvec) __attribute__((vector_size(FR_VBYTES)));

/* The lanes of x rounded to the nearest bfloat16, ties to even (NaN stays NaN, made quiet):
 * the bf16 bits in each lane's upper half (the lower half is not cleared). */
static inline FR_P(uvec) FR_P(bf16_round)(VEC x) {
    const FR_P(uvec) u = (FR_P(uvec))x;
    const FR_P(uvec) nan = (FR_P(uvec))((u & 0x7fffffffu) > 0x7f800000u);
    return ((u + 0x7fffu + ((u >> 16) & 1u)) & ~nan) | ((u | 0x400000u) & nan);
}

/* n values of k0 as the tile reads an operand: floats rounded to bf16 (k1 unused: mode 1
 * multiplies one k at a time). */
static inline void FR_P(bf16_convert)(const REAL *k0, const REAL *k1, int n, REAL *dst) {
    (void)k1;
    for (int i = 0; i < n; i += VL)
        FR_P(vstore_n)(dst + i, (VEC)(FR_P(bf16_round)(FR_P(vload_n)(k0 + i, n - i))
                                      & 0xffff0000u), n - i);
}

/* n consecutive values of one row as the tile reads them: rounded floats */
static inline void FR_P(bf16_row)(const REAL *src, int n, REAL *dst) {
    FR_P(bf16_convert)(src, NULL, n, dst);
}
#endif

/* Rows of op(B) (or A) copied per k in these layouts: 1, or a pair in mode 2 */
#define KUNIT (FR_BF16 == 2 ? 2 : 1)
/* Values converted per chunk where a layout is written from a long row */
#define CHUNK (64 * FR_MR)

enum { FR_P(INIT_ZERO), FR_P(INIT_IN), FR_P(INIT_OUT) };
enum { FR_P(FIN_NONE), FR_P(FIN_BIAS), FR_P(FIN_TANH), FR_P(FIN_RELU) };

/* Where A comes from: row pointers (element (i, k) at rows[i][k]), or, when rows is NULL,
 * a matrix stored transposed (element (i, k) at at[k·ldat + i]). */
typedef struct {
    const REAL *const *rows;
    const REAL *at;
    fr_index ldat;
} FR_P(asrc);

/* Accumulators (mr x np·NV vectors) up to which a tile runs the two halves of its sum side
 * by side: a few accumulators are a few chains of dependent multiply-adds, each waiting on
 * the last (at batch 1 a step's whole time, where W_hh is in L1). More keep the units busy
 * as they are, and run the halves one after the other. The same sums either way. */
#define FR_SIDE_BY_SIDE 8

/* One step of k (a pair of k in mode 2) of the tile: acc[r][·] += op(A)[r][k]·panels[k] */
static inline __attribute__((always_inline)) void FR_P(tile_k)(
    const int mr, const int np, const int kmajor, VEC acc[8][4 * NV], const REAL *const *ar,
    const REAL *at, fr_index ldat, fr_index k, const REAL *bp, fr_index panel_stride) {
#if FR_BF16 == 2
    __m512bh b[4 * NV];
    for (int q = 0; q < np; q++)
        for (int v = 0; v < NV; v++)
            b[q * NV + v] = (__m512bh)_mm512_loadu_ps(bp + q * panel_stride + k * NR + v * VL);
    for (int r = 0; r < mr; r++) {
        int pair;
        memcpy(&pair, kmajor ? at + k * ldat + r : ar[r] + k, sizeof pair);
        const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
        for (int i = 0; i < np * NV; i++)
            acc[r][i] = (VEC)_mm512_dpbf16_ps((__m512)acc[r][i], x, b[i]);
    }
#else
    VEC b[4 * NV];
    for (int q = 0; q < np; q++)
        for (int v = 0; v < NV; v++) b[q * NV + v] = FR_P(vload)(bp + q * panel_stride + k * NR + v * VL);
    for (int r = 0; r < mr; r++) {
        const REAL x = kmajor ? at[k * ldat + r] : ar[r][k];
        for (int i = 0; i < np * NV; i++) acc[r][i] += x * b[i];
    }
#endif
}

/* acc += Σ over `steps` steps of k in order; or, with halves, acc = (acc + Σ over the first
 * half of the steps) + (0 + Σ over the rest), as the header says: only on request, since
 * with the weights in L2 rather than L1 a tile waits on L2, not on its chains. */
static inline __attribute__((always_inline)) void FR_P(tile_sum)(
    const int mr, const int np, const int kmajor, VEC acc[8][4 * NV], const REAL *const *ar,
    const REAL *at, fr_index ldat, fr_index steps, const REAL *bp, fr_index panel_stride,
    int halves) {
    if (!halves) {
        for (fr_index k = 0; k < steps; k++)
            FR_P(tile_k)(mr, np, kmajor, acc, ar, at, ldat, k, bp, panel_stride);
        return;
    }
    const fr_index half = steps / 2;
    VEC rest[8][4 * NV];
    for (int r = 0; r < mr; r++)
        for (int i = 0; i < np * NV; i++) rest[r][i] = FR_P(splat)(0);
    if (mr * np * NV <= FR_SIDE_BY_SIDE) {
        for (fr_index k = 0; k < half; k++) {
            FR_P(tile_k)(mr, np, kmajor, acc, ar, at, ldat, k, bp, panel_stride);
            FR_P(tile_k)(mr, np, kmajor, rest, ar, at, ldat, half + k, bp, panel_stride);
        }
        if (steps % 2)
            FR_P(tile_k)(mr, np, kmajor, rest, ar, at, ldat, steps - 1, bp, panel_stride);
    } else {
        for (fr_index k = 0; k < half; k++)
            FR_P(tile_k)(mr, np, kmajor, acc, ar, at, ldat, k, bp, panel_stride);
        for (fr_index k = half; k < steps; k++)
            FR_P(tile_k)(mr, np, kmajor, rest, ar, at, ldat, k, bp, panel_stride);
    }
    for (int r = 0; r < mr; r++)
        for (int i = 0; i < np * NV; i++) acc[r][i] += rest[r][i];
}

/* The register tile: rows i0 .. i0+mr of A over k = kb .. kb+kc, times packed B panels
 * bp + q·panel_stride (q < np, each kc x NR), into cout[r] + c_off (ncols valid columns).
 * `kmajor` (a constant at every call) selects how A is read: row-major A through its row
 * pointers, transposed A as MR consecutive values per k (ldat apart). */
static inline __attribute__((always_inline)) void FR_P(tile)(
    const int mr, const int np, const int kmajor, FR_P(asrc) a, int i0, fr_index kb,
    fr_index kc, const REAL *bp, fr_index panel_stride, const REAL *const *cin,
    REAL *const *cout, fr_index c_off, int ncols, int init, int fin, const REAL *bias,
    int halves) {
    VEC acc[8][4 * NV];
    for (int r = 0; r < mr; r++)
        for (int i = 0; i < np * NV; i++) {
            if (init == FR_P(INIT_ZERO)) {
                acc[r][i] = FR_P(splat)(0);
                /* the output lines arrive while the k loop runs: the stores at the end
                 * would otherwise miss and stall */
                __builtin_prefetch(cout[r] + c_off + i * VL, 1);
            } else
                acc[r][i] = FR_P(vload_n)((init == FR_P(INIT_IN) ? cin[r] : cout[r]) + c_off + i * VL,
                                          ncols - i * VL);
        }
    const REAL *ar[8];
    const REAL *at = kmajor ? a.at + kb * a.ldat + i0 : NULL;
    if (!kmajor)
        for (int r = 0; r < mr; r++) ar[r] = a.rows[i0 + r] + kb;
    FR_P(tile_sum)(mr, np, kmajor, acc, ar, at, a.ldat, KSTEP(kc), bp, panel_stride, halves);
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
                                const REAL *bias, int halves) {
    /* (halves only with row-major A: the recurrence's) */
#define FR_TILE_CASE(m, n)                                                                    \
    case (m) * 8 + (n):                                                                       \
        if (a.rows)                                                                           \
            FR_P(tile)(m, n, 0, a, i0, kb, kc, bp, panel_stride, cin, cout, c_off, ncols, init, \
                       fin, bias, halves);                                                    \
        else                                                                                  \
            FR_P(tile)(m, n, 1, a, i0, kb, kc, bp, panel_stride, cin, cout, c_off, ncols, init, \
                       fin, bias, 0);                                                         \
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
    return KSTEP(kc) * FR_MR + 64 / (fr_index)sizeof(REAL);
}

/* Rows g0 .. g1 of A transposed's K block (kb, kc) copied into apack (kc x FR_MR per row
 * block, apack_stride apart): read in place, a row block's values sit one per row of the
 * stored matrix (often a power of two apart), each k a cache and TLB miss; copied, they
 * are read row by row, contiguously. While copying, the rows of op(A) are summed into
 * a_sums (if not NULL), each sum in k order. */
static void FR_P(copy_at)(int g0, int g1, fr_index kb, fr_index kc, FR_P(asrc) a,
                          REAL *apack, REAL *a_sums) {
    const fr_index astride = FR_P(apack_stride)(kc);
    for (fr_index k = 0; k < kc; k += KUNIT) {
        const REAL *src = a.at + (kb + k) * a.ldat;
        if (k + 16 < kc) /* rows ahead: the hardware prefetchers miss this pattern */
            for (int i = g0; i < g1; i += 64 / (int)sizeof(REAL))
                for (int u = 0; u < KUNIT; u++) __builtin_prefetch(src + (16 + u) * a.ldat + i);
#if FR_BF16
        /* row k (and k + 1: a pair) converted a chunk at a time, then as below */
        const REAL *next = KUNIT == 2 && k + 1 < kc ? src + a.ldat : NULL;
        REAL chunk[CHUNK];
        for (int c0 = g0; c0 < g1; c0 += CHUNK) {
            const int n = g1 - c0 < CHUNK ? g1 - c0 : CHUNK;
            FR_P(bf16_convert)(src + c0, next ? next + c0 : NULL, n, chunk);
            REAL *dst = apack + c0 / FR_MR * astride + KSTEP(k) * FR_MR;
            int i = 0;
            for (; i + FR_MR <= n; i += FR_MR, dst += astride) /* constant: a register move */
                memcpy(dst, chunk + i, FR_MR * sizeof(REAL));
            if (i < n) memcpy(dst, chunk + i, (size_t)(n - i) * sizeof(REAL));
        }
        for (int u = 0; a_sums && u < KUNIT && k + u < kc; u++) /* k order, as below */
            for (int i = g0; i < g1; i++) a_sums[i] += src[u * a.ldat + i];
#else
        int i0 = g0;
        for (; i0 + FR_MR <= g1; i0 += FR_MR) /* a constant size: a register move */
            memcpy(apack + i0 / FR_MR * astride + k * FR_MR, src + i0, FR_MR * sizeof(REAL));
        if (i0 < g1)
            memcpy(apack + i0 / FR_MR * astride + k * FR_MR, src + i0,
                   (size_t)(g1 - i0) * sizeof(REAL));
        if (a_sums) /* the row just read, in k order: each sum's order is fixed */
            for (int i = g0; i < g1; i++) a_sums[i] += src[i];
#endif
    }
}

/* Rows of A transposed copied at a time: a group's copy (about 128 KiB) is read by its
 * tiles while it is still in L2, where a whole K block's (1 MiB at M = 512) was not */
static inline int FR_P(copy_group)(fr_index kc) {
    const int rows = kc > 0 ? (int)((128 << 10) / ((size_t)KSTEP(kc) * KUNIT * sizeof(REAL)))
                            : FR_MR; /* (kc <= KC: rows fits; kc = 0 copies nothing) */
    return rows > FR_MR ? rows / FR_MR * FR_MR : FR_MR;
}

#if FR_BF16
/* Parts q0 .. q1 of `parts` of the cache lines of rows[0 .. m][kb .. kb+kc], prefetched:
 * spread over the parts, the requests never fill the core's queue of misses at once */
static inline void FR_P(prefetch_part)(const REAL *const *rows, int m, fr_index kb,
                                       fr_index kc, int q0, int q1, int parts) {
    const fr_index per_row = (kc * (fr_index)sizeof(REAL) + 63) / 64, lines = m * per_row;
    const fr_index l0 = q0 * lines / parts, l1 = q1 * lines / parts;
    /* line l is line `col` of row `row`: stepped along, not divided out per line */
    fr_index row = l0 / per_row, col = l0 % per_row;
    for (fr_index l = l0; l < l1; l++) {
        __builtin_prefetch(rows[row] + kb + col * (64 / (fr_index)sizeof(REAL)));
        if (++col == per_row) {
            col = 0;
            row++;
        }
    }
}
#endif

/* One K block (kb, kc) of one column block (ncols, packed panels at bp) for all M rows,
 * row block by row block, each swept across the panels. A transposed is read from apack;
 * copy_a says whether to copy it there first (group by group, see copy_group) or apack
 * holds this K block already; while copying, the rows of op(A) are summed into a_sums if
 * not NULL. halves: the tiles' sums in two halves (see the header). */
static void FR_P(block)(int M, int ncols, fr_index kb, fr_index kc, FR_P(asrc) a,
                        REAL *apack, const REAL *bp, fr_index panel_stride,
                        const REAL *const *cin, REAL *const *cout, fr_index c_off, int init,
                        int fin, const REAL *bias, int copy_a, REAL *a_sums, int halves) {
    const int npanels = (ncols + NR - 1) / NR;
    const fr_index astride = FR_P(apack_stride)(kc);
    const int group = copy_a ? FR_P(copy_group)(kc) : M;
    for (int i0 = 0; i0 < M; i0 += FR_MR) {
        if (copy_a && i0 % group == 0)
            FR_P(copy_at)(i0, M - i0 < group ? M : i0 + group, kb, kc, a, apack, a_sums);
        const int mr = M - i0 < FR_MR ? M - i0 : FR_MR;
        const int np = mr == FR_MR ? 1 : FR_P(panels_for_rows)(mr);
        FR_P(asrc) at = {NULL, apack + i0 / FR_MR * astride, FR_MR};
        /* row-major A as the tile reads it: in place, or (bf16) this row block's K block
         * converted, once for all the panels */
        FR_P(asrc) ar = a;
        int ai0 = i0;
        fr_index akb = kb;
#if FR_BF16
        REAL converted[FR_MR][KSTEP(KC) + 64 / sizeof(REAL)];
        const REAL *crows[FR_MR];
        if (a.rows) {
            for (int r = 0; r < mr; r++) {
                FR_P(bf16_row)(a.rows[i0 + r] + kb, (int)kc, converted[r]);
                crows[r] = converted[r];
            }
            ar = (FR_P(asrc)){crows, converted[0], 0}; /* (at unread: GCC's bounds check) */
            ai0 = 0;
            akb = 0;
        }
#endif
        for (int q = 0; q < npanels;) {
            /* the widest tile left (np, or a power of two below it: the tiles that exist) */
            int n = np;
            while (n > npanels - q) n /= 2;
#if FR_BF16
            /* the next row block's K block of A, fetched while these tiles run: converting
             * it (a tight loop of loads) would otherwise wait on every line */
            if (a.rows && i0 + FR_MR < M)
                FR_P(prefetch_part)(a.rows + i0 + FR_MR, M - i0 - FR_MR < FR_MR ? M - i0 - FR_MR
                                    : FR_MR, kb, kc, q, q + n, npanels);
#endif
            int cols = ncols - q * NR < n * NR ? ncols - q * NR : n * NR;
            if (a.rows)
                FR_P(tile_dispatch)(mr, n, ar, ai0, akb, kc, bp + q * panel_stride, panel_stride,
                                    cin ? cin + i0 : NULL, cout + i0, c_off + q * NR, cols,
                                    init, fin, bias ? bias + q * NR : NULL, halves);
            else
                FR_P(tile_dispatch)(mr, n, at, 0, 0, kc, bp + q * panel_stride, panel_stride,
                                    cin ? cin + i0 : NULL, cout + i0, c_off + q * NR, cols,
                                    init, fin, bias ? bias + q * NR : NULL, 0);
            q += n;
        }
    }
}

static fr_index FR_P(packed_size)(fr_index K, fr_index N) {
    return ((N + NR - 1) / NR) * NR * (K > 0 ? KSTEP(K) : 1);
}

/* Row k of op(B) (N values; in mode 2, k even, rows k and k + 1, `next`, NULL past K) into
 * a K-deep packing (pack's layout), one panel's part at a time: for whole float32 panels a
 * constant-size copy, that is a few vector moves. */
static inline void FR_P(pack_rows)(const REAL *row, const REAL *next, fr_index N, fr_index K,
                                   fr_index k, REAL *packed) {
    for (fr_index j0 = 0; j0 < N; j0 += NR) {
        REAL *dst = packed + j0 * KSTEP(K) + KSTEP(k) * NR;
        const int n = N - j0 < NR ? (int)(N - j0) : NR;
#if FR_BF16
        FR_P(bf16_convert)(row + j0, next ? next + j0 : NULL, n, dst);
#else
        (void)next;
        if (n == NR) {
            memcpy(dst, row + j0, NR * sizeof(REAL));
            continue;
        }
        memcpy(dst, row + j0, (size_t)n * sizeof(REAL));
#endif
        if (n < NR) memset(dst + n, 0, (size_t)(NR - n) * sizeof(REAL));
    }
}

#if !FR_BF16 && defined(__GNUC__) && !defined(__clang__)
#define FR_TRANSPOSE_TILES 1
/* VL of B's stored rows (pointers), each VL values from k0, into VL rows of a panel
 * (dst[q·NR + 0 .. VL-1] = column q of the tile): a register transpose, log2(VL) stages
 * each exchanging the off-diagonal s x s blocks of row pairs s apart. A copy: the values
 * are the same as the scalar loop's, at a few times its speed (one strided store per value
 * there). (__builtin_shuffle: GCC's two-vector permute with a mask vector.) */
static inline void FR_P(transpose_tile)(const REAL *const *src, fr_index k0, REAL *dst) {
    VEC r[VL];
    for (int j = 0; j < VL; j++) r[j] = FR_P(vload)(src[j] + k0);
#pragma GCC unroll 8
    for (int s = VL / 2; s >= 1; s /= 2) {
        IVEC keep, swap;  /* lanes l of row i (l & s: from row i + s), of row i + s */
        for (int l = 0; l < VL; l++) {
            keep[l] = (l & s) ? VL + l - s : l;
            swap[l] = (l & s) ? VL + l : l + s;
        }
#pragma GCC unroll 32
        for (int i = 0; i < VL; i++) {
            if (i & s) continue;
            const VEC a = r[i], b = r[i + s];
            r[i] = __builtin_shuffle(a, b, keep);
            r[i + s] = __builtin_shuffle(a, b, swap);
        }
    }
    for (int q = 0; q < VL; q++) memcpy(dst + q * NR, &r[q], sizeof(VEC));
}
#endif

/* op(B) into panels of NR columns, k-major within a panel, zero-padded: op(B) = B[K, N]
 * (element (k, j) at B[k·ldb + j]) or, if b_trans, Bᵀ of B stored [N, K] (at B[j·ldb + k]);
 * B's stored row r is B + rows[r]·ldb if rows is not NULL (kernels.h). */
static void FR_P(pack)(fr_index K, fr_index N, const REAL *B, fr_index ldb, int b_trans,
                       const fr_index *rows, REAL *packed) {
#define FR_BROW(r) (B + (rows ? rows[r] : (r)) * ldb)
    if (b_trans) {
        for (fr_index j0 = 0; j0 < N; j0 += NR) {
            fr_index n = N - j0 < NR ? N - j0 : NR;
            REAL *dst = packed + j0 * KSTEP(K);
#ifdef FR_TRANSPOSE_TILES
            if (n == NR) {
                const REAL *src[NR];
                for (int j = 0; j < NR; j++) src[j] = FR_BROW(j0 + j);
                fr_index k0 = 0;
                for (; k0 + VL <= K; k0 += VL)
                    for (int half = 0; half < NR; half += VL)
                        FR_P(transpose_tile)(src + half, k0, dst + k0 * NR + half);
                for (; k0 < K; k0++)
                    for (int j = 0; j < NR; j++) dst[k0 * NR + j] = src[j][k0];
                continue;
            }
#endif
            /* read each of B's rows (a column of op(B)) once, contiguously */
            for (fr_index j = 0; j < n; j++) {
                const REAL *col = FR_BROW(j0 + j);
#if FR_BF16 /* converted a chunk at a time (in mode 2 the pairs are consecutive k) */
                REAL chunk[CHUNK];
                for (fr_index k0 = 0; k0 < K; k0 += CHUNK) {
                    const int m = K - k0 < CHUNK ? (int)(K - k0) : CHUNK;
                    FR_P(bf16_row)(col + k0, m, chunk);
                    for (fr_index q = 0; q < KSTEP(m); q++) dst[(KSTEP(k0) + q) * NR + j] = chunk[q];
                }
#else
                for (fr_index k = 0; k < K; k++) dst[k * NR + j] = col[k];
#endif
            }
            for (fr_index k = 0; k < KSTEP(K); k++)
                for (fr_index j = n; j < NR; j++) dst[k * NR + j] = 0;
        }
        return;
    }
    /* row by row (B read contiguously) */
    for (fr_index k = 0; k < K; k += KUNIT) {
        if (k + 8 + KUNIT <= K) /* rows ahead, as the prefetchers miss rows far apart */
            for (fr_index j = 0; j < N; j += 64 / (fr_index)sizeof(REAL))
                for (int u = 0; u < KUNIT; u++) __builtin_prefetch(FR_BROW(k + 8 + u) + j);
        FR_P(pack_rows)(FR_BROW(k), KUNIT == 2 && k + 1 < K ? FR_BROW(k + 1) : NULL, N, K, k,
                        packed);
    }
#undef FR_BROW
}

/* C[:, c0 .. c0+N] from A and B, over K blocks and column blocks. B is either pre-packed
 * whole (packed: all columns, panel stride K·NR; c0 selects where to start) or packed here
 * block by block from B/ldb/b_trans (B's stored rows reordered by b_rows if not NULL, as
 * pack's rows) into scratch (c0 = 0). a_sums, halves: see block. */
static void FR_P(drive)(int M, fr_index c0, fr_index N, fr_index K, FR_P(asrc) a,
                        const REAL *packed, const REAL *B, fr_index ldb, int b_trans,
                        const fr_index *b_rows, REAL *scratch, REAL *apack,
                        const REAL *const *cin, REAL *const *cout, int load_first, int fin,
                        const REAL *bias, REAL *a_sums, int halves) {
    /* A transposed is copied once per K block: then the column blocks go inside the K
     * blocks, so that one copy serves them all (row-major A is read in place) */
    const int k_outer = !a.rows;
    /* Columns per block. B packed beforehand and at most half a Zen 4 core's L2 (a
     * recurrence's weights) stays there whatever the blocks: then one block of all the
     * columns, so that bf16 A is converted once per row block rather than once per block */
    fr_index nc_max = FR_BF16 && packed && a.rows && N > NC &&
                              KSTEP(K) * N * (fr_index)sizeof(REAL) <= L2_BLOCK_BYTES ? N : NC;
    /* at most L2_BLOCK_BYTES of B per block: 256 columns of a 512-deep float block */
    while (nc_max > NR &&
           KSTEP(K < KC ? K : KC) * nc_max * (fr_index)sizeof(REAL) > L2_BLOCK_BYTES)
        nc_max /= 2;
    const fr_index ncb = (N + nc_max - 1) / nc_max, nkb = K > 0 ? (K + KC - 1) / KC : 1;
    for (fr_index outer = 0; outer < (k_outer ? nkb : ncb); outer++)
        for (fr_index inner = 0; inner < (k_outer ? ncb : nkb); inner++) {
            const fr_index jc = (k_outer ? inner : outer) * nc_max,
                           kb = (k_outer ? outer : inner) * KC;
            int nc = (int)(N - jc < nc_max ? N - jc : nc_max);
            fr_index kc = K - kb < KC ? K - kb : KC;
            int last = kb + kc >= K;
            int init = kb > 0 ? FR_P(INIT_OUT) : load_first ? FR_P(INIT_IN) : FR_P(INIT_ZERO);
            const REAL *bp;
            fr_index stride;
            if (packed) {
                bp = packed + (c0 + jc) * KSTEP(K) + KSTEP(kb) * NR;
                stride = KSTEP(K) * NR;
            } else {
                /* the block's first stored row of B, or through b_rows its first column */
                const fr_index first = b_trans ? jc : kb;
                FR_P(pack)(kc, nc, (b_rows ? B : B + first * ldb) + (b_trans ? kb : jc), ldb,
                           b_trans, b_rows ? b_rows + first : NULL, scratch);
                bp = scratch;
                stride = KSTEP(kc) * NR;
            }
            FR_P(block)(M, nc, kb, kc, a, apack, bp, stride, cin, cout, c0 + jc, init,
                        last ? fin : FR_P(FIN_NONE), bias && last ? bias + jc : NULL,
                        k_outer && jc == 0, jc == 0 ? a_sums : NULL, halves);
        }
}

static int FR_P(gemm)(fr_index M, fr_index N, fr_index K, const REAL *A, fr_index lda,
                      int a_trans, const REAL *B, fr_index ldb, int b_trans,
                      const fr_index *b_rows, REAL *C, fr_index ldc, const fr_index *c_rows,
                      const REAL *bias, int accumulate, REAL *a_sums) {
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
    size_t bsize = (size_t)FR_P(packed_size)(kc, nc);
    /* and, for A transposed, one KC-deep block of all M rows (see block) */
    size_t asize = a_trans ? (size_t)(FR_P(apack_stride)(kc) * ((M + FR_MR - 1) / FR_MR)) : 0;
    REAL *scratch = fr_scratch_alloc((bsize + asize) * sizeof(REAL));
    if (!rows || !scratch) {
        free(rows);
        fr_scratch_free(scratch);
        return -1;
    }
    REAL **crows = (REAL **)(rows + M);
    for (fr_index i = 0; i < M; i++) {
        rows[i] = A + i * lda;
        crows[i] = C + (c_rows ? c_rows[i] : i) * ldc;
    }
    FR_P(asrc) a = {a_trans ? NULL : rows, A, lda};
    FR_P(drive)((int)M, 0, N, K, a, NULL, B, ldb, b_trans, b_rows, scratch, scratch + bsize,
                (const REAL *const *)crows, crows, accumulate,
                bias ? FR_P(FIN_BIAS) : FR_P(FIN_NONE), bias, a_trans ? a_sums : NULL, 0);
    free(rows);
    fr_scratch_free(scratch);
    return 0;
}
