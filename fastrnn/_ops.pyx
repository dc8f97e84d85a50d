# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled loops of fastrnn's training layers and of sequence generation.

* ``embedding_backward``: the scatter-add ``dW[idx[i]] += dY[i]``, parallel over blocks of
  embedding columns; each thread owns whole columns and visits the indices in order, so
  there are no races and the result does not depend on the thread count.
* ``cross_entropy_forward`` / ``cross_entropy_backward``: a fused, numerically stable
  log-softmax + negative log-likelihood, one independent row per logit vector.
* ``adam_step``: torch's Adam update of one parameter in a single pass over its arrays.
* ``seed_generators`` / ``choose_tokens``: the next token of each row of a batch of logits,
  argmax or a draw from softmax with temperature and top-k, one seeded xoshiro256**
  generator per row (generation runs the RNN itself on the recurrence's own kernels).

Inputs are validated and allocated by the Python layers (``fastrnn.layers``,
``fastrnn.models``); this module checks only what it must to stay memory-safe.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport exp, log, sqrt, INFINITY
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cdef extern from *:
    """
    /* xoshiro256** (Blackman & Vigna), seeded by splitmix64: small, fast, well tested. */
    static inline uint64_t fr_splitmix64(uint64_t *x) {
        uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    static inline uint64_t fr_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    static inline void fr_rng_seed(uint64_t *s, uint64_t seed) {
        s[0] = fr_splitmix64(&seed); s[1] = fr_splitmix64(&seed);
        s[2] = fr_splitmix64(&seed); s[3] = fr_splitmix64(&seed);
    }
    static inline uint64_t fr_rng_next(uint64_t *s) {
        uint64_t result = fr_rotl(s[1] * 5, 7) * 9;
        uint64_t t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
        s[2] ^= t; s[3] = fr_rotl(s[3], 45);
        return result;
    }
    /* uniform double in [0, 1) from the top 53 bits */
    static inline double fr_rng_uniform(uint64_t *s) {
        return (double)(fr_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
    }
    """
    void fr_rng_seed(uint64_t *s, uint64_t seed) noexcept nogil
    double fr_rng_uniform(uint64_t *s) noexcept nogil

cdef extern from *:
    """
    #include <string.h>
    /* exp(x) in float32 by Cephes expf's range reduction and polynomial (relative error
       < 2e-7 on [-87, 88]; below -87.3 it returns ~1e-38 rather than 0; NaN stays NaN),
       four at a time with SSE2 where available: libm's expf is a scalar call, and at 1000
       classes it cost as much as the decoder GEMM. Constants shared by both versions. */
    #define FR_EXP_LO -87.33654f
    #define FR_EXP_HI 88.72283f
    #define FR_LOG2E 1.44269504088896341f
    #define FR_ROUND 12582912.0f /* 1.5·2^23: (y + R) - R rounds y to an integer */
    #define FR_LN2_HI 0.693359375f
    #define FR_LN2_LO -2.12194440e-4f
    static const float fr_exp_poly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

    static inline float fr_expf(float x) {
        float xc = x < FR_EXP_LO ? FR_EXP_LO : (x > FR_EXP_HI ? FR_EXP_HI : x);
        float n = (xc * FR_LOG2E + FR_ROUND) - FR_ROUND;    /* n = round(x / ln 2) */
        float r = (xc - n * FR_LN2_HI) - n * FR_LN2_LO;      /* r = x - n ln 2 */
        float p = fr_exp_poly[0];
        int k;
        for (k = 1; k < 6; k++) p = p * r + fr_exp_poly[k];
        p = p * r * r + r + 1.0f;                             /* exp(r) */
        int32_t bits = ((int32_t) n + 127) << 23;             /* 2^n */
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return x != x ? x : p * scale;
    }

    #if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
    #include <emmintrin.h>
    #define FR_HAVE_SSE2 1
    static inline __m128 fr_exp_ps(__m128 x) {
        __m128 nan = _mm_cmpunord_ps(x, x);
        __m128 xc = _mm_min_ps(_mm_max_ps(x, _mm_set1_ps(FR_EXP_LO)), _mm_set1_ps(FR_EXP_HI));
        __m128 n = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(xc, _mm_set1_ps(FR_LOG2E)),
                                         _mm_set1_ps(FR_ROUND)), _mm_set1_ps(FR_ROUND));
        __m128 r = _mm_sub_ps(_mm_sub_ps(xc, _mm_mul_ps(n, _mm_set1_ps(FR_LN2_HI))),
                              _mm_mul_ps(n, _mm_set1_ps(FR_LN2_LO)));
        __m128 p = _mm_set1_ps(fr_exp_poly[0]);
        int k;
        for (k = 1; k < 6; k++) p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(fr_exp_poly[k]));
        p = _mm_add_ps(_mm_add_ps(_mm_mul_ps(_mm_mul_ps(p, r), r), r), _mm_set1_ps(1.0f));
        __m128i bits = _mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23);
        __m128 y = _mm_mul_ps(p, _mm_castsi128_ps(bits));
        return _mm_or_ps(_mm_and_ps(nan, x), _mm_andnot_ps(nan, y));
    }
    #endif

    /* p = softmax(x) over one row of C float32 logits; returns log Σ exp(x) in double. */
    static double fr_softmax_row_f(const float *x, float *p, Py_ssize_t C) {
        Py_ssize_t j = 0, k;
        float m = x[0];
        double s = 0.0;
    #ifdef FR_HAVE_SSE2
        float lanes[4];
        double sums[2];
        __m128 vm = _mm_set1_ps(m);
        for (; j + 4 <= C; j += 4) vm = _mm_max_ps(_mm_loadu_ps(x + j), vm);
        _mm_storeu_ps(lanes, vm);
        for (k = 0; k < 4; k++) m = lanes[k] > m ? lanes[k] : m;
    #endif
        for (; j < C; j++) m = x[j] > m ? x[j] : m;            /* m = max x */
        j = 0;
    #ifdef FR_HAVE_SSE2
        /* e = exp(x - m), summed in two double2 lanes (no serial dependency chain) */
        __m128d s0 = _mm_setzero_pd(), s1 = _mm_setzero_pd();
        vm = _mm_set1_ps(m);
        for (; j + 4 <= C; j += 4) {
            __m128 e = fr_exp_ps(_mm_sub_ps(_mm_loadu_ps(x + j), vm));
            _mm_storeu_ps(p + j, e);
            s0 = _mm_add_pd(s0, _mm_cvtps_pd(e));
            s1 = _mm_add_pd(s1, _mm_cvtps_pd(_mm_movehl_ps(e, e)));
        }
        _mm_storeu_pd(sums, _mm_add_pd(s0, s1));
        s = sums[0] + sums[1];
    #endif
        for (; j < C; j++) {
            p[j] = fr_expf(x[j] - m);                           /* e_j = exp(x_j - m) */
            s += p[j];
        }
        float inv = (float) (1.0 / s);
        for (j = 0; j < C; j++) p[j] *= inv;
        return (double) m + log(s);
    }
    """
    float fr_expf(float x) noexcept nogil
    double fr_softmax_row_f(const float *x, float *p, Py_ssize_t C) noexcept nogil

ctypedef fused floating:
    float
    double

cdef enum:
    # Embedding columns per task: one cache line of float32, enough tasks for 2+ threads.
    EMB_COL_BLOCK = 16


# ---------------------------------------------------------------------------------------
# Adam
# ---------------------------------------------------------------------------------------

def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
              floating[::1] exp_avg_sq, double step_size, double beta1, double beta2,
              double bias_correction2_sqrt, double eps, double weight_decay):
    """One Adam update, in place, element by element in torch's order of operations:
    ``g = grad + wd·p; m += (1-β1)(g - m); v = β2·v + (1-β2)·g·g;
    p += (-step_size·m) / (√v / bias_correction2_sqrt + eps)`` (scalars in the arrays' dtype).
    One pass instead of NumPy's dozen, which dominate the optimizer's time."""
    cdef Py_ssize_t i, n = param.shape[0]
    if grad.shape[0] != n or exp_avg.shape[0] != n or exp_avg_sq.shape[0] != n:
        raise ValueError("adam_step: the arrays must have the same length")
    cdef floating one_minus_b1 = 1 - beta1, b2 = beta2, one_minus_b2 = 1 - beta2
    cdef floating neg_step = -step_size, bc2 = bias_correction2_sqrt, e = eps
    cdef floating wd = weight_decay
    cdef floating g, m, v
    with nogil:
        for i in range(n):
            g = grad[i]
            if wd != 0:
                g = g + wd * param[i]
            m = exp_avg[i]
            m = m + one_minus_b1 * (g - m)
            exp_avg[i] = m
            v = exp_avg_sq[i] * b2
            v = v + one_minus_b2 * g * g
            exp_avg_sq[i] = v
            param[i] = param[i] + (neg_step * m) / (<floating> sqrt(v) / bc2 + e)


# ---------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------

def embedding_backward(const int64_t[::1] indices, const floating[:, ::1] grad,
                       floating[:, ::1] weight_grad, int64_t padding_idx=-1,
                       int num_threads=1):
    """weight_grad[indices[i]] += grad[i] for i = 0, 1, ... in order; padding_idx rows skipped.

    Parallel over blocks of columns: a thread owns whole columns, so no two threads write
    the same element and every element sums its contributions in index order.
    """
    cdef Py_ssize_t n = indices.shape[0], D = grad.shape[1], V = weight_grad.shape[0]
    if grad.shape[0] != n or weight_grad.shape[1] != D:
        raise ValueError(f"shapes do not match: indices ({n},), grad ({grad.shape[0]}, {D}), "
                         f"weight_grad ({V}, {weight_grad.shape[1]})")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    cdef Py_ssize_t i, c, c0, c1, blk
    cdef int64_t r
    for i in range(n):
        if indices[i] < 0 or indices[i] >= V:
            raise IndexError(f"index {indices[i]} is out of range for {V} embeddings")
    if n == 0 or D == 0:
        return
    cdef Py_ssize_t nblocks = (D + EMB_COL_BLOCK - 1) // EMB_COL_BLOCK
    for blk in prange(nblocks, nogil=True, num_threads=num_threads, schedule="static"):
        c0 = blk * EMB_COL_BLOCK
        c1 = min(c0 + EMB_COL_BLOCK, D)
        for i in range(n):
            r = indices[i]
            if r != padding_idx:
                for c in range(c0, c1):
                    # dW[idx_i, c] += dY[i, c]
                    weight_grad[r, c] = weight_grad[r, c] + grad[i, c]


# ---------------------------------------------------------------------------------------
# Cross-entropy: log-softmax + negative log-likelihood, fused
# ---------------------------------------------------------------------------------------

cdef inline int _check_targets(const int64_t[::1] targets, int64_t ignore_index,
                               Py_ssize_t C) except -1:
    cdef Py_ssize_t i
    for i in range(targets.shape[0]):
        if targets[i] != ignore_index and (targets[i] < 0 or targets[i] >= C):
            raise IndexError(f"Target {targets[i]} is out of bounds for {C} classes")
    return 0


def cross_entropy_forward(const floating[:, ::1] logits, const int64_t[::1] targets,
                          int64_t ignore_index, floating[::1] losses, floating[:, ::1] probs,
                          int num_threads=1):
    """Per row i: losses[i] = logsumexp(x_i) - x_i[t_i] (0 where t_i == ignore_index) and
    probs[i] = softmax(x_i), which is all the backward pass needs.

    The max is subtracted before exponentiating and sums are accumulated in double.
    """
    cdef Py_ssize_t N = logits.shape[0], C = logits.shape[1]
    if targets.shape[0] != N or losses.shape[0] != N or probs.shape[0] != N or probs.shape[1] != C:
        raise ValueError("cross_entropy_forward: shapes do not match")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    _check_targets(targets, ignore_index, C)
    if C == 0:
        if N > 0:
            raise ValueError("logits must have at least one class")
        return
    cdef Py_ssize_t i, j
    cdef double m, s, inv, lse
    for i in prange(N, nogil=True, num_threads=num_threads, schedule="static"):
        if floating is float:
            lse = fr_softmax_row_f(&logits[i, 0], &probs[i, 0], C)
        else:
            m = logits[i, 0]
            for j in range(1, C):
                if logits[i, j] > m:
                    m = logits[i, j]
            s = 0
            for j in range(C):
                # e_j = exp(x_j - max x): no overflow
                probs[i, j] = exp(logits[i, j] - m)
                s = s + probs[i, j]
            inv = 1.0 / s
            for j in range(C):
                probs[i, j] = probs[i, j] * inv
            lse = m + log(s)
        if targets[i] == ignore_index:
            losses[i] = 0
        else:
            # -log p_t = log Σ exp(x) - x_t
            losses[i] = <floating> (lse - logits[i, targets[i]])


def cross_entropy_backward(const floating[:, ::1] probs, const int64_t[::1] targets,
                           int64_t ignore_index, const floating[::1] row_scale,
                           floating[:, ::1] grad, int num_threads=1):
    """grad[i] = row_scale[i] · (softmax(x_i) - onehot(t_i)); 0 where t_i == ignore_index."""
    cdef Py_ssize_t N = probs.shape[0], C = probs.shape[1]
    if (targets.shape[0] != N or row_scale.shape[0] != N or grad.shape[0] != N
            or grad.shape[1] != C):
        raise ValueError("cross_entropy_backward: shapes do not match")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    _check_targets(targets, ignore_index, C)
    cdef Py_ssize_t i, j
    cdef floating s
    for i in prange(N, nogil=True, num_threads=num_threads, schedule="static"):
        if targets[i] == ignore_index:
            for j in range(C):
                grad[i, j] = 0
        else:
            s = row_scale[i]
            for j in range(C):
                # d(-log p_t)/dx_j = p_j - [j = t]
                grad[i, j] = s * probs[i, j]
            grad[i, targets[i]] = s * (probs[i, targets[i]] - 1)


# ---------------------------------------------------------------------------------------
# Generation: the choice of the next token
# ---------------------------------------------------------------------------------------

cdef double _kth_largest(double *a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The k-th largest of a[0:n] (1 ≤ k ≤ n), by quickselect; reorders a."""
    cdef Py_ssize_t lo = 0, hi = n - 1, target = k - 1, i, j
    cdef double pivot, tmp
    while lo < hi:
        pivot = a[lo + (hi - lo) // 2]
        i = lo
        j = hi
        # Hoare partition, descending: a[lo..j] ≥ pivot ≥ a[i..hi]
        while i <= j:
            while a[i] > pivot:
                i = i + 1
            while a[j] < pivot:
                j = j - 1
            if i <= j:
                tmp = a[i]
                a[i] = a[j]
                a[j] = tmp
                i = i + 1
                j = j - 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return a[target]
    return a[target]


cdef int64_t _choose(double *logits, double *scratch, Py_ssize_t V, double temperature,
                     Py_ssize_t top_k, uint64_t *rng) noexcept nogil:
    """Argmax if temperature is 0, else a draw from softmax(logits / T) restricted to the
    top_k largest logits (ties at the k-th value are kept, as torch.topk-based filtering)."""
    cdef Py_ssize_t v, best = 0
    cdef double m, total, u, acc, threshold = -INFINITY
    if temperature <= 0:
        for v in range(1, V):
            if logits[v] > logits[best]:
                best = v
        return best
    for v in range(V):
        logits[v] = logits[v] / temperature
    if 0 < top_k < V:
        memcpy(scratch, logits, V * sizeof(double))
        threshold = _kth_largest(scratch, V, top_k)
    m = -INFINITY
    for v in range(V):
        if logits[v] >= threshold and logits[v] > m:
            m = logits[v]
    total = 0
    for v in range(V):
        # unnormalised p_v = exp(x_v / T - max), 0 outside the top k
        scratch[v] = exp(logits[v] - m) if logits[v] >= threshold else 0
        total = total + scratch[v]
    u = fr_rng_uniform(rng) * total
    acc = 0
    best = -1
    for v in range(V):
        if scratch[v] > 0:
            best = v
            acc = acc + scratch[v]
            if u < acc:
                return v
    return best if best >= 0 else 0


def seed_generators(const uint64_t[::1] seeds, uint64_t[:, ::1] states):
    """states[b] = the xoshiro256** state seeded (by splitmix64) with seeds[b]; states (B, 4)."""
    cdef Py_ssize_t b, B = seeds.shape[0]
    if states.shape[0] != B or states.shape[1] != 4:
        raise ValueError(f"states must have shape ({B}, 4), got ({states.shape[0]}, "
                         f"{states.shape[1]})")
    for b in range(B):
        fr_rng_seed(&states[b, 0], seeds[b])


def choose_tokens(const floating[:, ::1] logits, double temperature, Py_ssize_t top_k,
                  uint64_t[:, ::1] states, int64_t[::1] out, int num_threads=1):
    """out[b] = the next token of row b from its logits (B, V): argmax if temperature is 0,
    else a draw from softmax(logits / temperature) over the top_k largest (0 = all), with
    row b's own generator ``states[b]`` (advanced in place), rows in parallel."""
    cdef Py_ssize_t B = logits.shape[0], V = logits.shape[1], b, v
    if states.shape[0] != B or states.shape[1] != 4 or out.shape[0] != B:
        raise ValueError(f"states and out must have {B} rows (states 4 wide), got "
                         f"({states.shape[0]}, {states.shape[1]}) and ({out.shape[0]},)")
    if V < 1:
        raise ValueError("logits must have at least one class")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if B == 0:
        return
    cdef int failed[1]
    failed[0] = 0
    cdef double *scratch
    with nogil, parallel(num_threads=min(<Py_ssize_t> num_threads, B)):
        # per-thread scratch: the row's logits in double, and the probabilities
        scratch = <double *> malloc(2 * V * sizeof(double))
        try:
            if scratch == NULL:
                failed[0] = 1
            else:
                for b in prange(B, schedule="static"):
                    for v in range(V):
                        scratch[v] = logits[b, v]
                    out[b] = _choose(scratch, scratch + V, V, temperature, top_k,
                                     &states[b, 0])
        finally:
            free(scratch)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for sampling")
