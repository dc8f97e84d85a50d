/* The gated cells' pointwise step kernels for one dtype: the LSTM's and the GRU's forward
 * epilogue (gates, c, h from the step's products) and their derivatives. The products
 * themselves are the recurrence's input_step; these kernels are the only cell-specific code.
 * Part of the per-dtype kernel bodies (kernels_dtype.h), after vector_math.h.
 *
 * Gate-interleaved layout: the G·H columns of a row of gates (P = x W_ihᵀ + b, R = h W_hhᵀ,
 * the saved activations, dA) are in blocks of FASTRNN_COLUMN_GRANULE hidden units; block
 * jb .. jb+w (w = min(granule, H - jb)) starts at column G·jb and holds gate q of unit
 * jb + u at G·jb + q·w + u. A slice of hidden units j0 .. j1 (j0 a multiple of the granule)
 * is then the contiguous columns G·j0 .. G·j1, so threads may split the units.
 */

#if FR_IS_FLOAT
/* σ(x) = e^x / (e^x + 1) = (m + 1)/(m + 2) for x >= 0, 1/(m + 2) below, m = expm1(|x|): on
 * the tanh kernel's expm1, a few ulps everywhere, tiny σ(x) of x << 0 included (the form
 * (1 + tanh(x/2))/2 gave 0 there, from x = -17 down); for x >= 88 m stops growing,
 * where σ is 1 and σ(-x) below the smallest normal float. NaN passes through. */
static inline VEC FR_P(vsigmoid)(VEC x) {
    const IVEC sign_mask = (IVEC){0} + INT32_MIN;
    VEC y = (VEC)((IVEC)x & ~sign_mask);
    y = FR_P(at_most)(y, 88.0f);
    VEC m = FR_P(vexpm1)(y);
    return FR_P(where_nonnegative)(x, m + 1.0f, FR_P(splat)(1)) / (m + 2.0f);
}
#else
static inline VEC FR_P(vsigmoid)(VEC x) {
    for (int i = 0; i < VL; i++) x[i] = 1 / (1 + exp(-x[i]));
    return x;
}
#endif

/* The unit vectors of rows 0 .. M, units j0 .. j1, computed FR_SLOTS at a time. A vector's
 * activations are chains of some 25 dependent operations; one vector at a time, the core's
 * scheduler fills with them and stalls, while the chains of several vectors side by side
 * (each step of the arithmetic for every slot before the next) keep its units busy. Every
 * vector gets the same operations wherever it falls, so results do not depend on the
 * grouping, hence not on the threads' split either. */
#define FR_SLOTS 4

/* One vector of units: its row, the column of its first gate (gate q at col + q·w, w the
 * units of its block of the layout), and its first unit j */
typedef struct {
    int row, col, j, w;
} FR_P(slot);

/* body(count, n, slots, H, args...) for every unit vector: whole ones in groups of FR_SLOTS
 * (count and n constants, so that the body's loops over the slots unroll into registers),
 * the rest one at a time */
#define FR_CELL_SLOTS(body, G, M, H, j0, j1, ...)                                            \
    do {                                                                                     \
        FR_P(slot) group_[FR_SLOTS];                                                         \
        int m_ = 0;                                                                          \
        for (int row = 0; row < (M); row++)                                                  \
            for (int jb = (j0); jb < (j1); jb += FASTRNN_COLUMN_GRANULE)                     \
                for (int w = (H) - jb < FASTRNN_COLUMN_GRANULE ? (H) - jb                    \
                                                                : FASTRNN_COLUMN_GRANULE,    \
                         u = 0; u < w; u += VL) {                                            \
                    const FR_P(slot) one_ = {row, (G) * jb + u, jb + u, w};                  \
                    if (w - u < VL) {                                                        \
                        body(1, w - u, &one_, (H), __VA_ARGS__);                             \
                        continue;                                                            \
                    }                                                                        \
                    group_[m_++] = one_;                                                     \
                    if (m_ == FR_SLOTS) {                                                    \
                        body(FR_SLOTS, VL, group_, (H), __VA_ARGS__);                        \
                        m_ = 0;                                                              \
                    }                                                                        \
                }                                                                            \
        for (int q_ = 0; q_ < m_; q_++) body(1, VL, group_ + q_, (H), __VA_ARGS__);          \
    } while (0)

/* for (q < count) stmt: the step `stmt` of the arithmetic for every slot */
#define FR_EACH(q) for (int q = 0; q < count; q++)
#define FR_BODY static inline __attribute__((always_inline)) void
/* slot q's gate k in the saved row (a forward's pre-activation on entry) */
#define FR_SAVED(q, k) FR_P(vload_n)(save[sl[q].row] + sl[q].col + (k) * sl[q].w, n)
/* slot q's pre-activation of a GRU's gate k (r or z): P (saved) + R */
#define FR_GATE(q, k)                                                                        \
    (FR_SAVED(q, k) + FR_P(vload_n)(r[sl[q].row] + sl[q].col + (k) * sl[q].w, n))

/* LSTM forward of the slots' vectors: see lstm_cell */
FR_BODY FR_P(lstm_vectors)(const int count, const int n, const FR_P(slot) *sl, int H,
                           REAL *const *save, const REAL *const *cprev, REAL *const *h) {
    VEC i[FR_SLOTS], f[FR_SLOTS], g[FR_SLOTS], o[FR_SLOTS], c[FR_SLOTS];
    FR_EACH(q) i[q] = FR_P(vsigmoid)(FR_SAVED(q, 0));
    FR_EACH(q) f[q] = FR_P(vsigmoid)(FR_SAVED(q, 1));
    FR_EACH(q) g[q] = FR_P(vtanh)(FR_SAVED(q, 2));
    FR_EACH(q) o[q] = FR_P(vsigmoid)(FR_SAVED(q, 3));
    FR_EACH(q) /* c_t = f⊙c_{t-1} + i⊙g */
        c[q] = f[q] * FR_P(vload_n)(cprev[sl[q].row] + sl[q].j, n) + i[q] * g[q];
    FR_EACH(q) {
        REAL *s = save[sl[q].row] + sl[q].col;
        FR_P(vstore_n)(s, i[q], n);
        FR_P(vstore_n)(s + sl[q].w, f[q], n);
        FR_P(vstore_n)(s + 2 * sl[q].w, g[q], n);
        FR_P(vstore_n)(s + 3 * sl[q].w, o[q], n);
        FR_P(vstore_n)(save[sl[q].row] + 4 * H + sl[q].j, c[q], n);
    }
    FR_EACH(q) c[q] = FR_P(vtanh)(c[q]);
    FR_EACH(q) FR_P(vstore_n)(h[sl[q].row] + sl[q].j, o[q] * c[q], n); /* h_t = o⊙tanh(c_t) */
}

/* LSTM forward, units j0 .. j1 of M rows. save_r: the 4H gate columns (on entry the
 * pre-activations x W_ihᵀ + b + h_{t-1} W_hhᵀ, the recurrent product accumulated onto P by
 * rnn_step; i, f, g, o on return) then c (H). cprev_r: c_{t-1}; h_r receives o⊙tanh(c) (the
 * output, or m before a projection). */
static void FR_P(lstm_cell)(int M, int H, int j0, int j1, REAL *const *save,
                            const REAL *const *cprev, REAL *const *h) {
    FR_CELL_SLOTS(FR_P(lstm_vectors), 4, M, H, j0, j1, save, cprev, h);
}

/* LSTM derivative of the slots' vectors: see lstm_cell_grad */
FR_BODY FR_P(lstm_grad_vectors)(const int count, const int n, const FR_P(slot) *sl, int H,
                                const REAL *const *dm, const REAL *const *save,
                                const REAL *const *cprev, REAL *const *dc, REAL *const *da) {
    const VEC one = FR_P(splat)(1);
    VEC tc[FR_SLOTS];
    FR_EACH(q) /* tanh(c_t) as the forward computed it */
        tc[q] = FR_P(vtanh)(FR_P(vload_n)(save[sl[q].row] + 4 * H + sl[q].j, n));
    FR_EACH(q) {
        const REAL *s = save[sl[q].row] + sl[q].col;
        const int w = sl[q].w, j = sl[q].j;
        REAL *dar = da[sl[q].row] + sl[q].col, *dcr = dc[sl[q].row] + j;
        VEC i = FR_P(vload_n)(s, n), f = FR_P(vload_n)(s + w, n);
        VEC g = FR_P(vload_n)(s + 2 * w, n), o = FR_P(vload_n)(s + 3 * w, n);
        VEC d = FR_P(vload_n)(dm[sl[q].row] + j, n);
        VEC c = FR_P(vload_n)(dcr, n) + d * o * (one - tc[q] * tc[q]);
        VEC cp = FR_P(vload_n)(cprev[sl[q].row] + j, n);
        FR_P(vstore_n)(dar, c * g * i * (one - i), n);             /* di */
        FR_P(vstore_n)(dar + w, c * cp * f * (one - f), n);        /* df */
        FR_P(vstore_n)(dar + 2 * w, c * i * (one - g * g), n);     /* dg */
        FR_P(vstore_n)(dar + 3 * w, d * tc[q] * o * (one - o), n); /* do */
        FR_P(vstore_n)(dcr, c * f, n); /* dc_{t-1} = dc_t ⊙ f */
    }
}

/* LSTM derivative, units j0 .. j1. dm_r: dLoss/d(o⊙tanh c) of the step (dh, or dh·W_hr);
 * save_r, cprev_r as the forward left them; dc_r carries dLoss/dc (of c_t in, of c_{t-1}
 * out); da_r (4H) receives the gradient of the gates' pre-activations. */
static void FR_P(lstm_cell_grad)(int M, int H, int j0, int j1, const REAL *const *dm,
                                 const REAL *const *save, const REAL *const *cprev,
                                 REAL *const *dc, REAL *const *da) {
    FR_CELL_SLOTS(FR_P(lstm_grad_vectors), 4, M, H, j0, j1, dm, save, cprev, dc, da);
}

/* GRU forward of the slots' vectors: see gru_cell */
FR_BODY FR_P(gru_vectors)(const int count, const int n, const FR_P(slot) *sl, int H,
                          REAL *const *save, const REAL *const *r, const REAL *const *hprev,
                          REAL *const *h) {
    VEC rg[FR_SLOTS], z[FR_SLOTS], rn[FR_SLOTS], nn[FR_SLOTS];
    FR_EACH(q) rg[q] = FR_P(vsigmoid)(FR_GATE(q, 0));
    FR_EACH(q) z[q] = FR_P(vsigmoid)(FR_GATE(q, 1));
    FR_EACH(q) rn[q] = FR_P(vload_n)(r[sl[q].row] + sl[q].col + 2 * sl[q].w, n);
    FR_EACH(q) nn[q] = FR_P(vtanh)(FR_SAVED(q, 2) + rg[q] * rn[q]);
    FR_EACH(q) {
        REAL *s = save[sl[q].row] + sl[q].col;
        const int j = sl[q].j;
        FR_P(vstore_n)(s, rg[q], n);
        FR_P(vstore_n)(s + sl[q].w, z[q], n);
        FR_P(vstore_n)(s + 2 * sl[q].w, nn[q], n);
        FR_P(vstore_n)(save[sl[q].row] + 3 * H + j, rn[q], n);
        /* h_t = (1 - z)⊙n + z⊙h_{t-1} */
        FR_P(vstore_n)(h[sl[q].row] + j,
                       (1 - z[q]) * nn[q] + z[q] * FR_P(vload_n)(hprev[sl[q].row] + j, n), n);
    }
}

/* GRU forward, units j0 .. j1. save_r: the 3H gate columns (P = x W_ihᵀ + b_ih, + b_hh for
 * r and z, on entry; r, z, n on return) then W_hn h + b_hn (H). r_r: h_{t-1} W_hhᵀ + (0, 0,
 * b_hn) (3H); hprev_r: h_{t-1}; h_r receives h_t. */
static void FR_P(gru_cell)(int M, int H, int j0, int j1, REAL *const *save,
                           const REAL *const *r, const REAL *const *hprev, REAL *const *h) {
    FR_CELL_SLOTS(FR_P(gru_vectors), 3, M, H, j0, j1, save, r, hprev, h);
}

/* GRU derivative of the slots' vectors: see gru_cell_grad */
FR_BODY FR_P(gru_grad_vectors)(const int count, const int n, const FR_P(slot) *sl, int H,
                               REAL *const *dh, const REAL *const *save,
                               const REAL *const *hprev, REAL *const *da, REAL *const *dr) {
    const VEC one = FR_P(splat)(1);
    FR_EACH(q) {
        const REAL *s = save[sl[q].row] + sl[q].col;
        const int w = sl[q].w, j = sl[q].j;
        REAL *dhr = dh[sl[q].row] + j, *dar = da[sl[q].row] + sl[q].col;
        REAL *drr = dr[sl[q].row] + sl[q].col;
        VEC rg = FR_P(vload_n)(s, n), z = FR_P(vload_n)(s + w, n);
        VEC nn = FR_P(vload_n)(s + 2 * w, n), rn = FR_P(vload_n)(save[sl[q].row] + 3 * H + j, n);
        VEC d = FR_P(vload_n)(dhr, n);
        VEC dan = d * (one - z) * (one - nn * nn);      /* through n = tanh(·) */
        VEC dar_ = dan * rn * rg * (one - rg);           /* through r */
        VEC daz = d * (FR_P(vload_n)(hprev[sl[q].row] + j, n) - nn) * z * (one - z);
        FR_P(vstore_n)(dar, dar_, n);
        FR_P(vstore_n)(dar + w, daz, n);
        FR_P(vstore_n)(dar + 2 * w, dan, n);
        FR_P(vstore_n)(drr, dar_, n);
        FR_P(vstore_n)(drr + w, daz, n);
        FR_P(vstore_n)(drr + 2 * w, dan * rg, n);
        FR_P(vstore_n)(dhr, d * z, n);
    }
}

/* GRU derivative, units j0 .. j1. dh_r: dLoss/dh_t in, dh⊙z out (the part of dLoss/dh_{t-1}
 * that bypasses W_hh); da_r receives the gradient of x W_ihᵀ + b_ih, dr_r that of
 * h W_hhᵀ + b_hh (they differ in the n gate by ⊙ r). */
static void FR_P(gru_cell_grad)(int M, int H, int j0, int j1, REAL *const *dh,
                                const REAL *const *save, const REAL *const *hprev,
                                REAL *const *da, REAL *const *dr) {
    FR_CELL_SLOTS(FR_P(gru_grad_vectors), 3, M, H, j0, j1, dh, save, hprev, da, dr);
}

#undef FR_SLOTS
#undef FR_CELL_SLOTS
#undef FR_EACH
#undef FR_BODY
#undef FR_GATE
#undef FR_SAVED
