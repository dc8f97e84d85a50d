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
    y = FR_P(select)(y > FR_P(splat)(88.0f), FR_P(splat)(88.0f), y);
    VEC m = FR_P(vexpm1)(y);
    return FR_P(select)(x >= FR_P(splat)(0), m + 1.0f, FR_P(splat)(1)) / (m + 2.0f);
}
#else
static inline VEC FR_P(vsigmoid)(VEC x) {
    for (int i = 0; i < VL; i++) x[i] = 1 / (1 + exp(-x[i]));
    return x;
}
#endif

#define FR_CELL_BLOCKS(j0, j1, H)                                                            \
    for (int jb = (j0); jb < (j1); jb += FASTRNN_COLUMN_GRANULE)                             \
        for (int w = (H) - jb < FASTRNN_COLUMN_GRANULE ? (H) - jb : FASTRNN_COLUMN_GRANULE,  \
                 u = 0; u < w; u += VL)

/* LSTM forward, units j0 .. j1 of M rows. save_r: the 4H gate columns (P on entry; i, f, g, o
 * on return) then c (H). r_r: h_{t-1} W_hhᵀ (4H); cprev_r: c_{t-1}; h_r receives o⊙tanh(c)
 * (the output, or m before a projection). */
static void FR_P(lstm_cell)(int M, int H, int j0, int j1, REAL *const *save,
                            const REAL *const *r, const REAL *const *cprev, REAL *const *h) {
    for (int row = 0; row < M; row++) {
        REAL *s = save[row], *hr = h[row];
        const REAL *rr = r[row], *cp = cprev[row];
        FR_CELL_BLOCKS(j0, j1, H) {
            const int n = w - u, col = 4 * jb + u, j = jb + u;
            VEC i = FR_P(vsigmoid)(FR_P(vload_n)(s + col, n) + FR_P(vload_n)(rr + col, n));
            VEC f = FR_P(vsigmoid)(FR_P(vload_n)(s + col + w, n) + FR_P(vload_n)(rr + col + w, n));
            VEC g = FR_P(vtanh)(FR_P(vload_n)(s + col + 2 * w, n) +
                                FR_P(vload_n)(rr + col + 2 * w, n));
            VEC o = FR_P(vsigmoid)(FR_P(vload_n)(s + col + 3 * w, n) +
                                   FR_P(vload_n)(rr + col + 3 * w, n));
            VEC c = f * FR_P(vload_n)(cp + j, n) + i * g; /* c_t = f⊙c_{t-1} + i⊙g */
            FR_P(vstore_n)(s + col, i, n);
            FR_P(vstore_n)(s + col + w, f, n);
            FR_P(vstore_n)(s + col + 2 * w, g, n);
            FR_P(vstore_n)(s + col + 3 * w, o, n);
            FR_P(vstore_n)(s + 4 * H + j, c, n);
            FR_P(vstore_n)(hr + j, o * FR_P(vtanh)(c), n); /* h_t = o⊙tanh(c_t) */
        }
    }
}

/* LSTM derivative, units j0 .. j1. dm_r: dLoss/d(o⊙tanh c) of the step (dh, or dh·W_hr);
 * save_r, cprev_r as the forward left them; dc_r carries dLoss/dc (of c_t in, of c_{t-1}
 * out); da_r (4H) receives the gradient of the gates' pre-activations. */
static void FR_P(lstm_cell_grad)(int M, int H, int j0, int j1, const REAL *const *dm,
                                 const REAL *const *save, const REAL *const *cprev,
                                 REAL *const *dc, REAL *const *da) {
    const VEC one = FR_P(splat)(1);
    for (int row = 0; row < M; row++) {
        const REAL *s = save[row], *cp = cprev[row], *dmr = dm[row];
        REAL *dcr = dc[row], *dar = da[row];
        FR_CELL_BLOCKS(j0, j1, H) {
            const int n = w - u, col = 4 * jb + u, j = jb + u;
            VEC i = FR_P(vload_n)(s + col, n), f = FR_P(vload_n)(s + col + w, n);
            VEC g = FR_P(vload_n)(s + col + 2 * w, n), o = FR_P(vload_n)(s + col + 3 * w, n);
            VEC tc = FR_P(vtanh)(FR_P(vload_n)(s + 4 * H + j, n)); /* as the forward's */
            VEC d = FR_P(vload_n)(dmr + j, n);
            VEC c = FR_P(vload_n)(dcr + j, n) + d * o * (one - tc * tc);
            FR_P(vstore_n)(dar + col, c * g * i * (one - i), n);                      /* di */
            FR_P(vstore_n)(dar + col + w, c * FR_P(vload_n)(cp + j, n) * f * (one - f), n); /* df */
            FR_P(vstore_n)(dar + col + 2 * w, c * i * (one - g * g), n);              /* dg */
            FR_P(vstore_n)(dar + col + 3 * w, d * tc * o * (one - o), n);             /* do */
            FR_P(vstore_n)(dcr + j, c * f, n); /* dc_{t-1} = dc_t ⊙ f */
        }
    }
}

/* GRU forward, units j0 .. j1. save_r: the 3H gate columns (P = x W_ihᵀ + b_ih, + b_hh for
 * r and z, on entry; r, z, n on return) then W_hn h + b_hn (H). r_r: h_{t-1} W_hhᵀ + (0, 0,
 * b_hn) (3H); hprev_r: h_{t-1}; h_r receives h_t. */
static void FR_P(gru_cell)(int M, int H, int j0, int j1, REAL *const *save,
                           const REAL *const *r, const REAL *const *hprev, REAL *const *h) {
    for (int row = 0; row < M; row++) {
        REAL *s = save[row], *hr = h[row];
        const REAL *rr = r[row], *hp = hprev[row];
        FR_CELL_BLOCKS(j0, j1, H) {
            const int n = w - u, col = 3 * jb + u, j = jb + u;
            VEC rg = FR_P(vsigmoid)(FR_P(vload_n)(s + col, n) + FR_P(vload_n)(rr + col, n));
            VEC z = FR_P(vsigmoid)(FR_P(vload_n)(s + col + w, n) + FR_P(vload_n)(rr + col + w, n));
            VEC rn = FR_P(vload_n)(rr + col + 2 * w, n);
            VEC nn = FR_P(vtanh)(FR_P(vload_n)(s + col + 2 * w, n) + rg * rn);
            FR_P(vstore_n)(s + col, rg, n);
            FR_P(vstore_n)(s + col + w, z, n);
            FR_P(vstore_n)(s + col + 2 * w, nn, n);
            FR_P(vstore_n)(s + 3 * H + j, rn, n);
            /* h_t = (1 - z)⊙n + z⊙h_{t-1} */
            FR_P(vstore_n)(hr + j, (1 - z) * nn + z * FR_P(vload_n)(hp + j, n), n);
        }
    }
}

/* GRU derivative, units j0 .. j1. dh_r: dLoss/dh_t in, dh⊙z out (the part of dLoss/dh_{t-1}
 * that bypasses W_hh); da_r receives the gradient of x W_ihᵀ + b_ih, dr_r that of
 * h W_hhᵀ + b_hh (they differ in the n gate by ⊙ r). */
static void FR_P(gru_cell_grad)(int M, int H, int j0, int j1, REAL *const *dh,
                                const REAL *const *save, const REAL *const *hprev,
                                REAL *const *da, REAL *const *dr) {
    const VEC one = FR_P(splat)(1);
    for (int row = 0; row < M; row++) {
        const REAL *s = save[row], *hp = hprev[row];
        REAL *dhr = dh[row], *dar = da[row], *drr = dr[row];
        FR_CELL_BLOCKS(j0, j1, H) {
            const int n = w - u, col = 3 * jb + u, j = jb + u;
            VEC rg = FR_P(vload_n)(s + col, n), z = FR_P(vload_n)(s + col + w, n);
            VEC nn = FR_P(vload_n)(s + col + 2 * w, n), rn = FR_P(vload_n)(s + 3 * H + j, n);
            VEC d = FR_P(vload_n)(dhr + j, n);
            VEC dan = d * (one - z) * (one - nn * nn);      /* through n = tanh(·) */
            VEC dar_ = dan * rn * rg * (one - rg);           /* through r */
            VEC daz = d * (FR_P(vload_n)(hp + j, n) - nn) * z * (one - z);
            FR_P(vstore_n)(dar + col, dar_, n);
            FR_P(vstore_n)(dar + col + w, daz, n);
            FR_P(vstore_n)(dar + col + 2 * w, dan, n);
            FR_P(vstore_n)(drr + col, dar_, n);
            FR_P(vstore_n)(drr + col + w, daz, n);
            FR_P(vstore_n)(drr + col + 2 * w, dan * rg, n);
            FR_P(vstore_n)(dhr + j, d * z, n);
        }
    }
}

#undef FR_CELL_BLOCKS
