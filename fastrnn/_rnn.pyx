# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled loops of fastrnn: the time-step recurrence, the BPTT loop and tiled GEMMs.

Everything here runs without the GIL, OpenMP over the batch (recurrences) or over
output row tiles (GEMMs). Inputs are validated and allocated by ``fastrnn.functional``;
this module only checks what it must to stay memory-safe.

Each row of every result is computed by the same arithmetic however the rows are split
across threads, so results are bitwise identical for any thread count.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

cdef extern from "kernels.h" nogil:
    ctypedef long fr_index
    ctypedef int (*sgemm_fn)(fr_index, fr_index, fr_index, const float *, fr_index, int,
                             const float *, fr_index, float *, fr_index, const float *, int)
    ctypedef int (*dgemm_fn)(fr_index, fr_index, fr_index, const double *, fr_index, int,
                             const double *, fr_index, double *, fr_index, const double *, int)
    ctypedef fr_index (*spacked_size_fn)(fr_index, fr_index)
    ctypedef fr_index (*dpacked_size_fn)(fr_index, fr_index)
    ctypedef void (*spack_fn)(fr_index, fr_index, const float *, fr_index, float *)
    ctypedef void (*dpack_fn)(fr_index, fr_index, const double *, fr_index, double *)
    ctypedef void (*srnn_step_fn)(int, int, const float **, const float **, float **,
                                  const float *, int)
    ctypedef void (*drnn_step_fn)(int, int, const double **, const double **, double **,
                                  const double *, int)
    ctypedef void (*sbptt_step_fn)(int, int, const float **, const float **, float **,
                                   float **, const float *, int)
    ctypedef void (*dbptt_step_fn)(int, int, const double **, const double **, double **,
                                   double **, const double *, int)
    ctypedef struct fastrnn_kernels:
        const char *name
        sgemm_fn sgemm
        dgemm_fn dgemm
        spacked_size_fn spacked_size
        dpacked_size_fn dpacked_size
        spack_fn spack
        dpack_fn dpack
        srnn_step_fn srnn_step
        drnn_step_fn drnn_step
        sbptt_step_fn sbptt_step
        dbptt_step_fn dbptt_step
    const fastrnn_kernels **fastrnn_kernels_available()
    const fastrnn_kernels **fastrnn_kernels_compiled()

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FR_OPENMP_ENABLED 1
    #define FR_OPENMP_VERSION _OPENMP
    #else
    #define FR_OPENMP_ENABLED 0
    #define FR_OPENMP_VERSION 0
    #endif
    #if defined(__clang__)
    #define FR_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define FR_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define FR_COMPILER "msvc"
    #else
    #define FR_COMPILER "unknown"
    #endif
    """
    int FR_OPENMP_ENABLED
    int FR_OPENMP_VERSION
    const char *FR_COMPILER

ctypedef fused floating:
    float
    double

cdef const fastrnn_kernels *_kernels = fastrnn_kernels_available()[0]


def openmp_enabled():
    """True if this build runs its loops in parallel with OpenMP."""
    return bool(FR_OPENMP_ENABLED)


def build_info():
    """How this extension was built: compiler, OpenMP version (0 if none)."""
    return {"compiler": FR_COMPILER.decode(), "openmp_version": FR_OPENMP_VERSION}


cdef list _names(const fastrnn_kernels **table):
    cdef int i = 0
    names = []
    while table[i] != NULL:
        names.append(table[i].name.decode())
        i += 1
    return names


def compiled_kernels():
    """Names of the kernel builds compiled into this extension, fastest first."""
    return _names(fastrnn_kernels_compiled())


def available_kernels():
    """Names of the kernel builds this CPU supports, fastest first."""
    return _names(fastrnn_kernels_available())


def select_kernels(str name):
    """Use the kernel build called ``name`` (one of :func:`available_kernels`)."""
    global _kernels
    cdef const fastrnn_kernels **table = fastrnn_kernels_available()
    cdef int i = 0
    while table[i] != NULL:
        if table[i].name.decode() == name:
            _kernels = table[i]
            return
        i += 1
    raise ValueError(f"kernel {name!r} is not available on this CPU; "
                     f"expected one of {available_kernels()}")


def selected_kernels():
    """Name of the kernel build in use."""
    return _kernels.name.decode()


cdef inline fr_index _row_stride(Py_ssize_t *shape, Py_ssize_t *strides, size_t itemsize,
                                 str name) except -1:
    """Leading dimension, in elements, of a 2-D view whose rows are contiguous."""
    if shape[1] > 1 and strides[1] != <Py_ssize_t> itemsize:
        raise ValueError(f"{name} must have contiguous rows")
    return strides[0] // itemsize


cdef inline int _check_slices(int n_threads) except -1:
    if n_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {n_threads}")
    return 0


cdef enum:
    # Multiply-adds below which a second thread costs more (wake-up, join) than it saves.
    MIN_WORK_PER_THREAD = 1 << 18


cdef inline int _threads_for(double work, int num_threads) noexcept nogil:
    """Threads worth using for `work` multiply-adds, at most num_threads."""
    return <int> max(1.0, min(<double> num_threads, work / MIN_WORK_PER_THREAD))


cdef inline fr_index _slice_rows(fr_index N, int num_threads) noexcept nogil:
    """Rows per slice: one slice per thread. Results do not depend on the split."""
    return max(1, (N + num_threads - 1) // num_threads)


def gemm(const floating[:, :] a, const floating[:, :] b, floating[:, :] c,
         const floating[::1] bias=None, bint accumulate=False, int num_threads=1,
         bint a_trans=False):
    """c = (c if accumulate else 0) + op(a) @ b + bias, op(a) = a.T if a_trans else a.

    Each thread computes a block of c's rows and packs the blocks of a and b it needs
    itself: no shared scratch, no barrier.
    """
    _check_slices(num_threads)
    cdef fr_index M = a.shape[1] if a_trans else a.shape[0]
    cdef fr_index K = a.shape[0] if a_trans else a.shape[1]
    cdef fr_index N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N:
        raise ValueError(f"gemm shapes do not match: op(a) ({M}, {K}), b ({b.shape[0]}, {N}), "
                         f"c ({c.shape[0]}, {c.shape[1]})")
    if bias is not None and bias.shape[0] != N:
        raise ValueError(f"bias must have {N} elements, got {bias.shape[0]}")
    if M == 0 or N == 0:
        return
    cdef fr_index lda = _row_stride(a.shape, a.strides, sizeof(floating), "a")
    cdef fr_index ldb = _row_stride(b.shape, b.strides, sizeof(floating), "b")
    cdef fr_index ldc = _row_stride(c.shape, c.strides, sizeof(floating), "c")
    cdef const floating *pa = &a[0, 0] if K > 0 else NULL
    cdef const floating *pb = &b[0, 0] if K > 0 else NULL
    cdef floating *pc = &c[0, 0]
    cdef const floating *pbias = &bias[0] if bias is not None else NULL
    num_threads = _threads_for(<double> M * N * K, num_threads)
    cdef fr_index tile_rows = _slice_rows(M, num_threads)
    cdef fr_index ntiles = (M + tile_rows - 1) // tile_rows
    cdef fr_index tile, i0, rows, a_step = 1 if a_trans else lda
    cdef int failed[1]
    failed[0] = 0
    cdef const fastrnn_kernels *ks = _kernels
    for tile in prange(ntiles, nogil=True, num_threads=num_threads, schedule="static"):
        i0 = tile * tile_rows
        rows = min(tile_rows, M - i0)
        if floating is float:
            if ks.sgemm(rows, N, K, pa + i0 * a_step, lda, a_trans, pb, ldb, pc + i0 * ldc, ldc,
                        pbias, accumulate) != 0:
                failed[0] = 1
        else:
            if ks.dgemm(rows, N, K, pa + i0 * a_step, lda, a_trans, pb, ldb, pc + i0 * ldc, ldc,
                        pbias, accumulate) != 0:
                failed[0] = 1
    if failed[0]:
        raise MemoryError("could not allocate GEMM scratch")


cdef floating *_packed_copy(const fastrnn_kernels *ks, const floating *w, fr_index H) noexcept nogil:
    """W (H×H) packed for the step kernels, in a buffer the caller frees; NULL if out of memory."""
    cdef floating *packed
    if floating is float:
        packed = <floating *> malloc(ks.spacked_size(H, H) * sizeof(floating))
        if packed != NULL:
            ks.spack(H, H, w, H, packed)
    else:
        packed = <floating *> malloc(ks.dpacked_size(H, H) * sizeof(floating))
        if packed != NULL:
            ks.dpack(H, H, w, H, packed)
    return packed


def recurrence_forward(floating[:, :, :] out, const floating[:, ::1] h0,
                       const floating[:, ::1] w_hh_t, const int64_t[::1] lengths,
                       bint reverse, bint relu, floating[:, ::1] h_n, int num_threads=1):
    """h_t = act(P_t + h_{t-1} W_hhᵀ) for every sequence, in place in ``out``.

    ``out`` (L, N, H) holds the input projection P on entry and the outputs on return,
    zero past each sequence's length; ``h_n`` receives the state at each sequence's last
    step. Each thread owns a slice of the batch for all L steps: no barrier per step.
    """
    _check_slices(num_threads)
    cdef fr_index L = out.shape[0], N = out.shape[1]
    cdef int H = <int> out.shape[2]
    if out.shape[2] > 1 and out.strides[2] != sizeof(floating):
        raise ValueError("out must have contiguous rows")
    if N == 0:
        return
    cdef fr_index ts = out.strides[0] // sizeof(floating), bs = out.strides[1] // sizeof(floating)
    cdef floating *po = &out[0, 0, 0] if L > 0 else NULL
    cdef const floating *ph0 = &h0[0, 0]
    cdef floating *phn = &h_n[0, 0]
    cdef const int64_t *plen = &lengths[0]
    cdef const fastrnn_kernels *ks = _kernels
    # W_hhᵀ packed once per call; it stays in cache across all steps
    cdef floating *pw = _packed_copy(ks, &w_hh_t[0, 0], H)
    if pw == NULL:
        raise MemoryError("could not allocate the packed recurrent weights")
    num_threads = _threads_for(<double> L * N * H * H, num_threads)
    cdef fr_index slice_rows = _slice_rows(N, num_threads)
    cdef fr_index nslices = (N + slice_rows - 1) // slice_rows
    cdef fr_index sl, b, b0, b1, t, s, max_len
    cdef int m
    cdef int failed[1]
    failed[0] = 0
    cdef const floating **hprev
    cdef floating **rows
    with nogil, parallel(num_threads=nslices):
        hprev = <const floating **> malloc(slice_rows * sizeof(floating *))
        rows = <floating **> malloc(slice_rows * sizeof(floating *))
        try:
            if hprev == NULL or rows == NULL:
                failed[0] = 1
            else:
                for sl in prange(nslices, schedule="static"):
                    b0 = sl * slice_rows
                    b1 = min(N, b0 + slice_rows)
                    max_len = 0
                    for b in range(b0, b1):
                        max_len = max(max_len, plen[b])
                    for s in range(max_len):
                        m = 0
                        for b in range(b0, b1):
                            if s < plen[b]:
                                t = plen[b] - 1 - s if reverse else s
                                rows[m] = po + t * ts + b * bs
                                if s == 0:
                                    hprev[m] = ph0 + b * H
                                else:
                                    hprev[m] = rows[m] + (ts if reverse else -ts)
                                m = m + 1
                        # P_t is read and h_t written in place: out rows hold P until visited
                        if floating is float:
                            ks.srnn_step(m, H, hprev, <const float **> rows, rows, pw, relu)
                        else:
                            ks.drnn_step(m, H, hprev, <const double **> rows, rows, pw, relu)
                    for b in range(b0, b1):
                        if plen[b] == 0:
                            memcpy(phn + b * H, ph0 + b * H, H * sizeof(floating))
                        else:
                            t = 0 if reverse else plen[b] - 1
                            memcpy(phn + b * H, po + t * ts + b * bs, H * sizeof(floating))
                        for t in range(plen[b], L):
                            memset(po + t * ts + b * bs, 0, H * sizeof(floating))
        finally:
            free(hprev)
            free(rows)
    free(pw)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for the recurrence")


def recurrence_backward(const floating[:, :, :] out, const floating[:, :, :] grad_out,
                        const floating[:, ::1] grad_h_n, const floating[:, ::1] w_hh,
                        const int64_t[::1] lengths, bint reverse, bint relu,
                        floating[:, :, ::1] grad_a, floating[:, ::1] grad_h0,
                        int num_threads=1):
    """The BPTT recurrence: dA_t = (dY_t + g) ⊙ act'(h_t), g = dA_t W_hh, backwards in time.

    ``grad_a`` (L, N, H) must be zero on entry; it receives dA (zero past each length),
    from which the caller forms the weight gradients as large GEMMs. ``grad_h0`` receives g
    after the first step.
    """
    _check_slices(num_threads)
    cdef fr_index L = out.shape[0], N = out.shape[1]
    cdef int H = <int> out.shape[2]
    if H > 1 and (out.strides[2] != sizeof(floating) or grad_out.strides[2] != sizeof(floating)):
        raise ValueError("out and grad_out must have contiguous rows")
    if N == 0:
        return
    cdef fr_index ts = out.strides[0] // sizeof(floating), bs = out.strides[1] // sizeof(floating)
    cdef fr_index gts = grad_out.strides[0] // sizeof(floating)
    cdef fr_index gbs = grad_out.strides[1] // sizeof(floating)
    cdef const floating *po = &out[0, 0, 0] if L > 0 else NULL
    cdef const floating *pgo = &grad_out[0, 0, 0] if L > 0 else NULL
    cdef floating *pda = &grad_a[0, 0, 0] if L > 0 else NULL
    cdef const floating *pghn = &grad_h_n[0, 0]
    cdef floating *pgh0 = &grad_h0[0, 0]
    cdef const int64_t *plen = &lengths[0]
    cdef const fastrnn_kernels *ks = _kernels
    cdef floating *pw = _packed_copy(ks, &w_hh[0, 0], H)
    if pw == NULL:
        raise MemoryError("could not allocate the packed recurrent weights")
    num_threads = _threads_for(<double> L * N * H * H, num_threads)
    cdef fr_index slice_rows = _slice_rows(N, num_threads)
    cdef fr_index nslices = (N + slice_rows - 1) // slice_rows
    cdef fr_index sl, b, b0, b1, t, s, max_len
    cdef int m
    cdef int failed[1]
    failed[0] = 0
    cdef floating *g
    cdef const floating **dy
    cdef const floating **h
    cdef floating **gr
    cdef floating **da
    with nogil, parallel(num_threads=nslices):
        g = <floating *> malloc(slice_rows * H * sizeof(floating) + 1)
        dy = <const floating **> malloc(slice_rows * sizeof(floating *))
        h = <const floating **> malloc(slice_rows * sizeof(floating *))
        gr = <floating **> malloc(slice_rows * sizeof(floating *))
        da = <floating **> malloc(slice_rows * sizeof(floating *))
        try:
            if g == NULL or dy == NULL or h == NULL or gr == NULL or da == NULL:
                failed[0] = 1
            else:
                for sl in prange(nslices, schedule="static"):
                    b0 = sl * slice_rows
                    b1 = min(N, b0 + slice_rows)
                    max_len = 0
                    for b in range(b0, b1):
                        max_len = max(max_len, plen[b])
                    # g starts as dLoss/dh_n
                    memcpy(g, pghn + b0 * H, (b1 - b0) * H * sizeof(floating))
                    for s in range(max_len - 1, -1, -1):
                        m = 0
                        for b in range(b0, b1):
                            if s < plen[b]:
                                t = plen[b] - 1 - s if reverse else s
                                dy[m] = pgo + t * gts + b * gbs
                                h[m] = po + t * ts + b * bs
                                gr[m] = g + (b - b0) * H
                                da[m] = pda + (t * N + b) * H
                                m = m + 1
                        if floating is float:
                            ks.sbptt_step(m, H, dy, h, gr, da, pw, relu)
                        else:
                            ks.dbptt_step(m, H, dy, h, gr, da, pw, relu)
                    memcpy(pgh0 + b0 * H, g, (b1 - b0) * H * sizeof(floating))
        finally:
            free(g)
            free(dy)
            free(h)
            free(gr)
            free(da)
    free(pw)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for BPTT")
