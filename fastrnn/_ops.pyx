# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled loops of fastrnn's training layers and of sequence generation.

* ``embedding_backward``: the scatter-add ``dW[idx[i]] += dY[i]``, parallel over blocks of
  embedding columns; each thread owns whole columns and visits the indices in order, so
  there are no races and the result does not depend on the thread count.
* ``cross_entropy_forward`` / ``cross_entropy_backward``: a fused, numerically stable
  log-softmax + negative log-likelihood, one independent row per logit vector.
* ``adam_step``: torch's Adam update of one parameter in a single pass over its arrays.
* ``generate``: a whole generated sequence per call (batch rows in parallel): per step an
  embedding lookup, the RNN cell of every layer, the output projection, softmax with
  temperature and top-k, and a draw from a seeded xoshiro256** generator.

Inputs are validated and allocated by the Python layers (``fastrnn.layers``,
``fastrnn.models``); this module checks only what it must to stay memory-safe.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport exp, log, sqrt, tanh, tanhf, INFINITY
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
# Generation: the whole sampling loop of a sequence
# ---------------------------------------------------------------------------------------

cdef inline floating _dot(const floating *a, const floating *b, Py_ssize_t n) noexcept nogil:
    """Σ a_i b_i with four partial sums (independent chains the compiler can overlap)."""
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        s0 = s0 + a[i] * b[i]
        s1 = s1 + a[i + 1] * b[i + 1]
        s2 = s2 + a[i + 2] * b[i + 2]
        s3 = s3 + a[i + 3] * b[i + 3]
        i = i + 4
    while i < n:
        s0 = s0 + a[i] * b[i]
        i = i + 1
    return (s0 + s1) + (s2 + s3)


cdef void _feed(const floating *emb, Py_ssize_t E, int n_layers, int H,
                const floating **w_ih, const floating **w_hh, const floating **bias,
                floating *h, Py_ssize_t layer_stride, bint relu, int64_t token,
                floating *hbuf) noexcept nogil:
    """Advance the state h (n_layers rows of H, layer_stride apart) by one input token."""
    cdef const floating *x = emb + token * E
    cdef Py_ssize_t in_dim = E
    cdef int l, i
    cdef floating a
    cdef floating *hl
    for l in range(n_layers):
        hl = h + l * layer_stride
        for i in range(H):
            # a_i = W_ih[i]·x + W_hh[i]·h_{t-1} + b_i
            a = _dot(w_ih[l] + i * in_dim, x, in_dim) + _dot(w_hh[l] + i * H, hl, H)
            if bias[l] != NULL:
                a = a + bias[l][i]
            if relu:
                hbuf[i] = a if a > 0 else 0
            elif floating is float:
                hbuf[i] = tanhf(a)
            else:
                hbuf[i] = tanh(a)
        memcpy(hl, hbuf, H * sizeof(floating))
        x = hl
        in_dim = H


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


cdef Py_ssize_t _generate_row(
        const floating *emb, Py_ssize_t E, int n_layers, int H,
        const floating **w_ih, const floating **w_hh, const floating **bias,
        const floating *dec_w, const floating *dec_b, Py_ssize_t V,
        floating *h, Py_ssize_t layer_stride, bint relu,
        const int64_t *prime, Py_ssize_t P, int64_t *out, Py_ssize_t length,
        double temperature, Py_ssize_t top_k, uint64_t seed, int64_t eos, int64_t pad,
        floating *hbuf, double *logits, double *scratch) noexcept nogil:
    """One sequence: feed the prime tokens, then sample ``length`` tokens, feeding each back
    (all but the last). Returns how many tokens were generated (up to and including eos)."""
    cdef uint64_t rng[4]
    cdef Py_ssize_t p, s, v
    cdef int64_t tok
    cdef const floating *top = h + (n_layers - 1) * layer_stride
    fr_rng_seed(rng, seed)
    for p in range(P):
        _feed(emb, E, n_layers, H, w_ih, w_hh, bias, h, layer_stride, relu, prime[p], hbuf)
    for s in range(length):
        for v in range(V):
            # logits_v = W_dec[v]·h_top + b_v
            logits[v] = _dot(dec_w + v * H, top, H)
            if dec_b != NULL:
                logits[v] = logits[v] + dec_b[v]
        tok = _choose(logits, scratch, V, temperature, top_k, rng)
        out[s] = tok
        if tok == eos:
            for p in range(s + 1, length):
                out[p] = pad
            return s + 1
        if s + 1 < length:
            _feed(emb, E, n_layers, H, w_ih, w_hh, bias, h, layer_stride, relu, tok, hbuf)
    return length


def generate(const floating[:, ::1] embedding, list weight_ih, list weight_hh, list biases,
             const floating[:, ::1] dec_weight, const floating[::1] dec_bias,
             floating[:, :, ::1] h, const int64_t[:, ::1] prime, int64_t[:, ::1] out,
             int64_t[::1] out_lengths, double temperature, Py_ssize_t top_k, bint relu,
             const uint64_t[::1] seeds, int64_t eos=-1, int64_t pad=0, int num_threads=1):
    """Generate ``out.shape[1]`` tokens for each of the B rows, rows in parallel.

    Parameters
    ----------
    embedding : (V_in, E) lookup table.
    weight_ih, weight_hh : lists of one (H, in) and one (H, H) array per layer.
    biases : list of one (H,) array (b_ih + b_hh) or None per layer.
    dec_weight, dec_bias : the output projection (V, H) and (V,) or None.
    h : (n_layers, B, H) initial state, updated in place to the state after the prime and
        all generated tokens but the last.
    prime : (B, P) tokens fed before the first draw (P ≥ 1).
    out : (B, length) receives the tokens; out_lengths (B,) how many were generated.
    temperature : 0 for greedy (argmax) decoding.
    top_k : keep only the top_k largest logits (0 = all).
    seeds : (B,) uint64 seeds, one generator per row.
    eos : stop a row after this token (-1 = never); the rest of its row is ``pad``.
    """
    cdef int n_layers = len(weight_ih)
    cdef Py_ssize_t B = h.shape[1], H = h.shape[2], E = embedding.shape[1]
    cdef Py_ssize_t V_in = embedding.shape[0], V = dec_weight.shape[0]
    cdef Py_ssize_t P = prime.shape[1], length = out.shape[1]
    if n_layers < 1 or len(weight_hh) != n_layers or len(biases) != n_layers:
        raise ValueError("weight_ih, weight_hh and biases must hold one entry per layer")
    if h.shape[0] != n_layers:
        raise ValueError(f"h must have {n_layers} layers, got {h.shape[0]}")
    if prime.shape[0] != B or out.shape[0] != B or out_lengths.shape[0] != B or seeds.shape[0] != B:
        raise ValueError(f"prime, out, out_lengths and seeds must have {B} rows")
    if P < 1:
        raise ValueError("prime must hold at least one token per row")
    if dec_weight.shape[1] != H or (dec_bias is not None and dec_bias.shape[0] != V) or V < 1:
        raise ValueError(f"decoder must map {H} features to V ≥ 1 classes")
    if length > 1 and V > V_in:
        raise ValueError(f"generated tokens are fed back: the decoder's {V} classes must "
                         f"all be rows of the {V_in}-row embedding")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    cdef Py_ssize_t i, l
    for i in range(B):
        for l in range(P):
            if prime[i, l] < 0 or prime[i, l] >= V_in:
                raise IndexError(f"prime token {prime[i, l]} is out of range for {V_in} embeddings")
    cdef const floating **p_ih = <const floating **> malloc(3 * n_layers * sizeof(floating *))
    if p_ih == NULL:
        raise MemoryError()
    cdef const floating **p_hh = p_ih + n_layers
    cdef const floating **p_b = p_ih + 2 * n_layers
    cdef const floating[:, ::1] w2
    cdef const floating[::1] w1
    cdef Py_ssize_t in_dim = E
    try:
        for l in range(n_layers):
            w2 = weight_ih[l]
            if w2.shape[0] != H or w2.shape[1] != in_dim:
                raise ValueError(f"weight_ih[{l}] must have shape ({H}, {in_dim}), "
                                 f"got ({w2.shape[0]}, {w2.shape[1]})")
            p_ih[l] = &w2[0, 0]
            w2 = weight_hh[l]
            if w2.shape[0] != H or w2.shape[1] != H:
                raise ValueError(f"weight_hh[{l}] must have shape ({H}, {H})")
            p_hh[l] = &w2[0, 0]
            p_b[l] = NULL
            if biases[l] is not None:
                w1 = biases[l]
                if w1.shape[0] != H:
                    raise ValueError(f"biases[{l}] must have shape ({H},)")
                p_b[l] = &w1[0]
            in_dim = H
        _generate_all(embedding, p_ih, p_hh, p_b, n_layers, dec_weight, dec_bias, h, prime,
                      out, out_lengths, temperature, top_k, relu, seeds, eos, pad, num_threads)
    finally:
        free(p_ih)


cdef int _generate_all(const floating[:, ::1] embedding, const floating **p_ih,
                       const floating **p_hh, const floating **p_b, int n_layers,
                       const floating[:, ::1] dec_weight, const floating[::1] dec_bias,
                       floating[:, :, ::1] h, const int64_t[:, ::1] prime, int64_t[:, ::1] out,
                       int64_t[::1] out_lengths, double temperature, Py_ssize_t top_k,
                       bint relu, const uint64_t[::1] seeds, int64_t eos, int64_t pad,
                       int num_threads) except -1:
    cdef Py_ssize_t B = h.shape[1], H = h.shape[2], E = embedding.shape[1]
    cdef Py_ssize_t V = dec_weight.shape[0], P = prime.shape[1], length = out.shape[1]
    if B == 0:
        return 0
    cdef const floating *pemb = &embedding[0, 0] if E > 0 else NULL
    cdef const floating *pdw = &dec_weight[0, 0] if H > 0 else NULL
    cdef const floating *pdb = &dec_bias[0] if dec_bias is not None else NULL
    cdef floating *ph = &h[0, 0, 0] if H > 0 else NULL
    cdef const int64_t *pprime = &prime[0, 0]
    cdef int64_t *pout = &out[0, 0] if length > 0 else NULL
    cdef Py_ssize_t b
    cdef int failed[1]
    failed[0] = 0
    cdef floating *hbuf
    cdef double *logits
    with nogil, parallel(num_threads=min(num_threads, B)):
        # per-thread scratch: the new state of one layer, the logits, the probabilities
        hbuf = <floating *> malloc((H + 1) * sizeof(floating))
        logits = <double *> malloc(2 * V * sizeof(double))
        try:
            if hbuf == NULL or logits == NULL:
                failed[0] = 1
            else:
                for b in prange(B, schedule="static"):
                    out_lengths[b] = _generate_row(
                        pemb, E, n_layers, <int> H, p_ih, p_hh, p_b, pdw, pdb, V,
                        ph + b * H, B * H, relu, pprime + b * P, P,
                        pout + b * length if pout != NULL else NULL, length,
                        temperature, top_k, seeds[b], eos, pad, hbuf, logits, logits + V)
        finally:
            free(hbuf)
            free(logits)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for generation")
    return 0
