/* Vector math for one dtype: loads and stores of whole or partial vectors, lane select,
 * and the activations applied in the kernels' stores (tanh, relu). Part of the per-dtype
 * kernel bodies (kernels_dtype.h: REAL, FR_P(name), FR_IS_FLOAT set; FR_VBYTES by the ISA).
 */

typedef REAL FR_P(vec) __attribute__((vector_size(FR_VBYTES)));
#define VEC FR_P(vec)
#define VL ((int)(FR_VBYTES / sizeof(REAL)))  /* lanes per vector */

static inline VEC FR_P(vload)(const REAL *p) {
    VEC v;
    memcpy(&v, p, sizeof(v));
    return v;
}

#if FR_IS_FLOAT
typedef int32_t FR_P(ivec) __attribute__((vector_size(FR_VBYTES)));
#else
typedef int64_t FR_P(ivec) __attribute__((vector_size(FR_VBYTES)));
#endif
#define IVEC FR_P(ivec)

/* The first n lanes of a vector (n < VL: a gated cell's last units, a ragged panel), the
 * other lanes zero. x86's masked moves touch no lane past n (masked lanes never fault),
 * where a memcpy of n values was a call into libc per vector: an LSTM of 4 hidden units
 * spent half its forward there. */
#if defined(__x86_64__) && FR_VBYTES == 32
static inline __m256i FR_P(lanes_below)(int n) {
    IVEC lane;
    for (int i = 0; i < VL; i++) lane[i] = i;
    return (__m256i)(lane < n);
}
#endif

static inline VEC FR_P(vload_n)(const REAL *p, int n) {
    if (n >= VL) return FR_P(vload)(p);
    VEC v = {0};
    if (n <= 0) return v;
#if defined(__x86_64__) && FR_VBYTES == 64 && FR_IS_FLOAT
    v = (VEC)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#elif defined(__x86_64__) && FR_VBYTES == 64
    v = (VEC)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p);
#elif defined(__x86_64__) && FR_VBYTES == 32 && FR_IS_FLOAT
    v = (VEC)_mm256_maskload_ps(p, FR_P(lanes_below)(n));
#elif defined(__x86_64__) && FR_VBYTES == 32
    v = (VEC)_mm256_maskload_pd(p, FR_P(lanes_below)(n));
#else
    memcpy(&v, p, (size_t)n * sizeof(REAL));
#endif
    return v;
}

static inline void FR_P(vstore_n)(REAL *p, VEC v, int n) {
    if (n >= VL) {
        memcpy(p, &v, sizeof(v));
        return;
    }
    if (n <= 0) return;
#if defined(__x86_64__) && FR_VBYTES == 64 && FR_IS_FLOAT
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#elif defined(__x86_64__) && FR_VBYTES == 64
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), (__m512d)v);
#elif defined(__x86_64__) && FR_VBYTES == 32 && FR_IS_FLOAT
    _mm256_maskstore_ps(p, FR_P(lanes_below)(n), (__m256)v);
#elif defined(__x86_64__) && FR_VBYTES == 32
    _mm256_maskstore_pd(p, FR_P(lanes_below)(n), (__m256d)v);
#else
    memcpy(p, &v, (size_t)n * sizeof(REAL));
#endif
}

static inline VEC FR_P(splat)(REAL s) {
    VEC v = {0};
    return v + s;
}


/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros) */
static inline VEC FR_P(select)(IVEC mask, VEC a, VEC b) {
    return (VEC)(((IVEC)a & mask) | ((IVEC)b & ~mask));
}

/* The activations' lane choices as one compare and a blend (or one min or max) where the
 * ISA has them: the portable select (a compare materialised as a vector, and, or) took
 * three or four operations, a sixth of an activation's. The same lanes either way. */

/* x >= 0 ? a : b, lane by lane (b where x is NaN) */
static inline VEC FR_P(where_nonnegative)(VEC x, VEC a, VEC b) {
#if defined(__x86_64__) && FR_VBYTES == 64 && FR_IS_FLOAT
    return (VEC)_mm512_mask_blend_ps(
        _mm512_cmp_ps_mask((__m512)x, _mm512_setzero_ps(), _CMP_GE_OQ), (__m512)b, (__m512)a);
#elif defined(__x86_64__) && FR_VBYTES == 32 && FR_IS_FLOAT
    return (VEC)_mm256_blendv_ps((__m256)b, (__m256)a,
                                 _mm256_cmp_ps((__m256)x, _mm256_setzero_ps(), _CMP_GE_OQ));
#else
    return FR_P(select)(x >= FR_P(splat)(0), a, b);
#endif
}

/* y > c ? c : y, lane by lane (NaN stays NaN: x86's min and max return their second
 * operand where either is NaN) */
static inline VEC FR_P(at_most)(VEC y, REAL c) {
#if defined(__x86_64__) && FR_VBYTES == 64 && FR_IS_FLOAT
    return (VEC)_mm512_min_ps((__m512)FR_P(splat)(c), (__m512)y);
#elif defined(__x86_64__) && FR_VBYTES == 32 && FR_IS_FLOAT
    return (VEC)_mm256_min_ps((__m256)FR_P(splat)(c), (__m256)y);
#else
    return FR_P(select)(y > FR_P(splat)(c), FR_P(splat)(c), y);
#endif
}

#if FR_IS_FLOAT
/* expm1(y) for 0 <= y <= 88 (or NaN, which passes through): 2^n·expm1(g) + (2^n - 1),
 * y = n·ln2 + g, |g| <= ln2/2, n <= 127 so that 2^n is finite, and expm1(g) = g + g²·p(g),
 * p a degree-4 minimax fit (relative error 3e-9). No cancellation near 0, no branch. */
static inline VEC FR_P(vexpm1)(VEC y) {
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
    return two_n * expm1_g + (two_n - 1.0f);
}

/* tanh(x) = sign(x)·m/(m + 2), m = expm1(2|x|): one formula, accurate near 0 as well, 2.6
 * float ulps at most against the correctly rounded tanh (every float checked). About 20
 * vector operations: cheaper than a two-branch form (exp for large |x|, Taylor near 0). */
static inline VEC FR_P(vtanh)(VEC x) {
    const IVEC sign_mask = (IVEC){0} + INT32_MIN;
    VEC y = (VEC)((IVEC)x & ~sign_mask);
    y = y + y;
    /* from 2|x| = 20 on, m/(m + 2) rounds to 1; NaN passes through */
    y = FR_P(at_most)(y, 20.0f);
    VEC m = FR_P(vexpm1)(y);
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
    /* v < 0 ? 0 : v, so NaN propagates as in torch (and -0 stays -0) */
#if defined(__x86_64__) && FR_VBYTES == 64 && FR_IS_FLOAT
    return (VEC)_mm512_max_ps(_mm512_setzero_ps(), (__m512)v);
#elif defined(__x86_64__) && FR_VBYTES == 32 && FR_IS_FLOAT
    return (VEC)_mm256_max_ps(_mm256_setzero_ps(), (__m256)v);
#else
    return FR_P(select)(v < FR_P(splat)(0), FR_P(splat)(0), v);
#endif
}
