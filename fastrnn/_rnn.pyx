# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled loops of fastrnn: the time-step recurrence, the BPTT loop and tiled GEMMs.

Everything here runs without the GIL, OpenMP over the batch (recurrences) or over
output row tiles (GEMMs). Inputs are validated and allocated by ``fastrnn.functional``;
this module only checks what it must to stay memory-safe.

Each row of every result is computed by the same arithmetic however the rows are split
across threads, so results are bitwise identical for any thread count.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.limits cimport INT_MAX
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

cdef extern from "kernels.h" nogil:
    ctypedef long fr_index
    ctypedef int (*sgemm_fn)(fr_index, fr_index, fr_index, const float *, fr_index, int,
                             const float *, fr_index, int, float *, fr_index, const float *, int,
                             float *)
    ctypedef int (*dgemm_fn)(fr_index, fr_index, fr_index, const double *, fr_index, int,
                             const double *, fr_index, int, double *, fr_index, const double *,
                             int, double *)
    ctypedef void (*fr_barrier_fn)(void *) noexcept nogil
    ctypedef fr_index (*sgemm_team_size_fn)(fr_index, fr_index)
    ctypedef fr_index (*dgemm_team_size_fn)(fr_index, fr_index)
    ctypedef int (*sgemm_at_team_fn)(fr_index, fr_index, fr_index, const float *, fr_index,
                                     const float *, fr_index, int, float *, fr_index,
                                     const float *, int, float *, int, int, float *,
                                     fr_barrier_fn, void *)
    ctypedef int (*dgemm_at_team_fn)(fr_index, fr_index, fr_index, const double *, fr_index,
                                     const double *, fr_index, int, double *, fr_index,
                                     const double *, int, double *, int, int, double *,
                                     fr_barrier_fn, void *)
    ctypedef int (*sweight_grads_at_team_fn)(fr_index, fr_index, fr_index, const float *,
                                             fr_index, const float *, fr_index, fr_index,
                                             const float **, float *, float *, float *, int,
                                             int, float *, fr_barrier_fn, void *)
    ctypedef int (*dweight_grads_at_team_fn)(fr_index, fr_index, fr_index, const double *,
                                             fr_index, const double *, fr_index, fr_index,
                                             const double **, double *, double *, double *,
                                             int, int, double *, fr_barrier_fn, void *)
    ctypedef fr_index (*spacked_size_fn)(fr_index, fr_index)
    ctypedef fr_index (*dpacked_size_fn)(fr_index, fr_index)
    ctypedef void (*spack_fn)(fr_index, fr_index, const float *, fr_index, int, float *)
    ctypedef void (*dpack_fn)(fr_index, fr_index, const double *, fr_index, int, double *)
    ctypedef void (*srnn_step_fn)(int, int, int, int, const float **, const float **,
                                  float **, const float *, int)
    ctypedef void (*drnn_step_fn)(int, int, int, int, const double **, const double **,
                                  double **, const double *, int)
    ctypedef void (*srnn_input_step_fn)(int, int, int, int, int, const float **, const float *,
                                        const float *, const float **, float **, const float *,
                                        int)
    ctypedef void (*drnn_input_step_fn)(int, int, int, int, int, const double **,
                                        const double *, const double *, const double **,
                                        double **, const double *, int)
    ctypedef void (*sinput_step_fn)(int, int, int, int, const float **, const float *,
                                    const float *, float **)
    ctypedef void (*dinput_step_fn)(int, int, int, int, const double **, const double *,
                                    const double *, double **)
    ctypedef void (*sbptt_da_fn)(int, int, int, const float **, const float **,
                                 const float **, float **, int)
    ctypedef void (*dbptt_da_fn)(int, int, int, const double **, const double **,
                                 const double **, double **, int)
    ctypedef void (*sbptt_g_fn)(int, int, int, int, const float **, float **, const float *)
    ctypedef void (*dbptt_g_fn)(int, int, int, int, const double **, double **, const double *)
    ctypedef struct fastrnn_kernels:
        const char *name
        sgemm_fn sgemm
        dgemm_fn dgemm
        sgemm_team_size_fn sgemm_team_size
        dgemm_team_size_fn dgemm_team_size
        sgemm_at_team_fn sgemm_at_team
        dgemm_at_team_fn dgemm_at_team
        sweight_grads_at_team_fn sweight_grads_at_team
        dweight_grads_at_team_fn dweight_grads_at_team
        spacked_size_fn spacked_size
        dpacked_size_fn dpacked_size
        spack_fn spack
        dpack_fn dpack
        srnn_step_fn srnn_step
        drnn_step_fn drnn_step
        srnn_input_step_fn srnn_input_step
        drnn_input_step_fn drnn_input_step
        sinput_step_fn sinput_step
        dinput_step_fn dinput_step
        sbptt_da_fn sbptt_da
        dbptt_da_fn dbptt_da
        sbptt_g_fn sbptt_g
        dbptt_g_fn dbptt_g
    int FASTRNN_COLUMN_GRANULE
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
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    #if defined(__unix__) || defined(__APPLE__)
    #include <sched.h>
    #define FR_YIELD() sched_yield()
    #else
    #define FR_YIELD() ((void)0)
    #endif
    #if defined(__x86_64__) || defined(__i386__)
    #define FR_PAUSE() __builtin_ia32_pause()
    #elif defined(__aarch64__)
    #define FR_PAUSE() __asm__ __volatile__("yield")
    #else
    #define FR_PAUSE() ((void)0)
    #endif

    /* Ask for `bytes` from p to be brought into cache (a hint: never faults). */
    static inline void fr_prefetch(const void *p, long bytes) {
    #if defined(__GNUC__) || defined(__clang__)
        for (long i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i);
    #else
        (void)p; (void)bytes;
    #endif
    }

    /* Threads in the enclosing parallel region: OpenMP may give fewer than asked for. */
    static inline int fr_team_size(void) {
    #ifdef _OPENMP
        return omp_get_num_threads();
    #else
        return 1;
    #endif
    }

    /* A barrier for the threads of one parallel region. The column-split recurrence meets
     * once per time step, a few hundred ns apart; libgomp's barrier costs about as much as
     * such a step, this one (an atomic count and a generation to spin on) a cache-line
     * transfer. After a while it yields, so an oversubscribed machine still progresses. */
    typedef struct { int count; int generation; } fr_spin_barrier;

    static inline void fr_spin_wait(fr_spin_barrier *b, int nthreads) {
        int generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
        if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nthreads) {
            __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
            return;
        }
        for (unsigned spins = 0; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation;
             spins++) {
            if (spins < 20000) FR_PAUSE(); else FR_YIELD();
        }
    }

    /* fr_spin_wait for the whole team of the enclosing parallel region, as a callback */
    static void fr_team_barrier(void *barrier) {
        fr_spin_wait((fr_spin_barrier *)barrier, fr_team_size());
    }
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
    ctypedef struct fr_spin_barrier:
        int count
        int generation
    int fr_team_size() noexcept nogil
    void fr_prefetch(const void *p, long bytes) noexcept nogil
    void fr_spin_wait(fr_spin_barrier *b, int nthreads) noexcept nogil
    void fr_team_barrier(void *barrier) noexcept nogil

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


# Every entry point checks, before any pointer is formed, what its kernels will index: each
# array's shape against the others' and strides the kernels can step by (whole, non-negative
# elements, unit along rows). These checks cost O(sizes); lengths cost O(batch).

cdef int _check_strides(str name, Py_ssize_t *shape, Py_ssize_t *strides, int ndim,
                        size_t itemsize, int unit_dim) except -1:
    """Refuse strides the kernels cannot step by: negative or not whole elements in any
    dimension of more than one element, or (``unit_dim`` >= 0) not one element in that one."""
    cdef int i
    for i in range(ndim):
        if shape[i] > 1 and (strides[i] < 0 or strides[i] % <Py_ssize_t> itemsize != 0):
            raise ValueError(f"{name} must have non-negative strides of whole elements, got "
                             f"strides {tuple(strides[j] for j in range(ndim))}")
    if unit_dim >= 0 and shape[unit_dim] > 1 and strides[unit_dim] != <Py_ssize_t> itemsize:
        raise ValueError(f"{name} must have contiguous rows")
    return 0


cdef int _check_shape(str name, Py_ssize_t *shape, int ndim, tuple want) except -1:
    """Refuse a view whose shape is not ``want``."""
    cdef tuple got = tuple(shape[i] for i in range(ndim))
    if got != want:
        raise ValueError(f"{name} must have shape {want}, got {got}")
    return 0


cdef int _check_lengths(const int64_t[::1] lengths, fr_index N, fr_index L) except -1:
    """Refuse lengths that are not one per batch row, each in [0, L]: the kernels index rows
    by them without further checks."""
    _check_shape("lengths", lengths.shape, 1, (N,))
    cdef fr_index b
    for b in range(N):
        if lengths[b] < 0 or lengths[b] > L:
            raise ValueError(f"lengths must be in [0, {L}] (the sequence length), got "
                             f"{lengths[b]} at position {b}")
    return 0


cdef inline fr_index _row_stride(Py_ssize_t *shape, Py_ssize_t *strides, size_t itemsize,
                                 str name) except -1:
    """Leading dimension, in elements, of a 2-D view whose rows are contiguous."""
    _check_strides(name, shape, strides, 2, itemsize, 1)
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
         bint a_trans=False, floating[::1] a_sums=None):
    """c = (c if accumulate else 0) + op(a) @ b + bias, op(a) = a.T if a_trans else a.

    ``b`` may be a transposed view (``w.T`` of a row-major ``w``): it is packed from there,
    with no transposed copy. Each thread computes a block of c's rows and packs the blocks
    of a it needs itself; b's blocks too (no barrier), except with ``a_trans``: in a weight
    gradient (K long, c small) every thread would pack all of b, so the threads share that
    packing, meeting once per block. With ``a_trans``, ``a_sums`` (if given) receives
    op(a).sum(axis=1), each sum in row order of ``a``, from the one reading of ``a`` (a
    bias gradient next to a weight gradient).
    """
    _check_slices(num_threads)
    cdef fr_index M = a.shape[1] if a_trans else a.shape[0]
    cdef fr_index K = a.shape[0] if a_trans else a.shape[1]
    cdef fr_index N = b.shape[1]
    if b.shape[0] != K or c.shape[0] != M or c.shape[1] != N:
        raise ValueError(f"gemm shapes do not match: op(a) ({M}, {K}), b ({b.shape[0]}, {N}), "
                         f"c ({c.shape[0]}, {c.shape[1]})")
    if M > INT_MAX or N > INT_MAX:
        raise MemoryError(f"gemm of {M} x {N} outputs exceeds the kernels' {INT_MAX} rows/columns")
    if bias is not None and bias.shape[0] != N:
        raise ValueError(f"bias must have {N} elements, got {bias.shape[0]}")
    if a_sums is not None and (not a_trans or a_sums.shape[0] != M):
        raise ValueError(f"a_sums needs a_trans and {M} elements, got a_trans={a_trans} "
                         f"and {a_sums.shape[0]} elements")
    if M == 0:
        return
    cdef fr_index lda = _row_stride(a.shape, a.strides, sizeof(floating), "a")
    # b's columns contiguous (b_trans) and its rows not: read it as bᵀ stored row-major
    cdef bint b_trans = (b.shape[1] > 1 and b.strides[1] != sizeof(floating)
                         and (b.shape[0] <= 1 or b.strides[0] == sizeof(floating)))
    if b_trans:
        _check_strides("b", b.shape, b.strides, 2, sizeof(floating), 0)
    cdef fr_index ldb = (b.strides[1] // sizeof(floating) if b_trans
                         else _row_stride(b.shape, b.strides, sizeof(floating), "b"))
    cdef fr_index ldc = _row_stride(c.shape, c.strides, sizeof(floating), "c")
    cdef const floating *pa = &a[0, 0] if K > 0 else NULL
    cdef const floating *pb = &b[0, 0] if K > 0 else NULL
    cdef floating *pc = &c[0, 0]
    cdef const floating *pbias = &bias[0] if bias is not None else NULL
    cdef floating *psums = &a_sums[0] if a_sums is not None else NULL
    num_threads = _threads_for(<double> M * N * K, num_threads)
    cdef fr_index tile_rows = _slice_rows(M, num_threads)
    cdef fr_index ntiles = (M + tile_rows - 1) // tile_rows
    cdef fr_index tile, i0, rows, a_step = 1 if a_trans else lda
    cdef int failed[1]
    failed[0] = 0
    cdef const fastrnn_kernels *ks = _kernels
    cdef fr_spin_barrier team_barrier
    cdef floating *shared
    cdef int team
    if a_trans and num_threads > 1:
        team_barrier.count = team_barrier.generation = 0
        if floating is float:
            shared = <floating *> malloc(ks.sgemm_team_size(K, N) * sizeof(floating))
        else:
            shared = <floating *> malloc(ks.dgemm_team_size(K, N) * sizeof(floating))
        if shared == NULL:
            raise MemoryError("could not allocate GEMM scratch")
        with nogil, parallel(num_threads=num_threads):
            team = fr_team_size()
            if floating is float:
                if ks.sgemm_at_team(M, N, K, pa, lda, pb, ldb, b_trans, pc, ldc, pbias,
                                    accumulate, psums, threadid(), team, shared,
                                    fr_team_barrier, &team_barrier) != 0:
                    failed[0] = 1
            else:
                if ks.dgemm_at_team(M, N, K, pa, lda, pb, ldb, b_trans, pc, ldc, pbias,
                                    accumulate, psums, threadid(), team, shared,
                                    fr_team_barrier, &team_barrier) != 0:
                    failed[0] = 1
        free(shared)
        if failed[0]:
            raise MemoryError("could not allocate GEMM scratch")
        return
    for tile in prange(ntiles, nogil=True, num_threads=num_threads, schedule="static"):
        i0 = tile * tile_rows
        rows = min(tile_rows, M - i0)
        if floating is float:
            if ks.sgemm(rows, N, K, pa + i0 * a_step, lda, a_trans, pb, ldb, b_trans,
                        pc + i0 * ldc, ldc, pbias, accumulate,
                        psums + i0 if psums != NULL else NULL) != 0:
                failed[0] = 1
        else:
            if ks.dgemm(rows, N, K, pa + i0 * a_step, lda, a_trans, pb, ldb, b_trans,
                        pc + i0 * ldc, ldc, pbias, accumulate,
                        psums + i0 if psums != NULL else NULL) != 0:
                failed[0] = 1
    if failed[0]:
        raise MemoryError("could not allocate GEMM scratch")


def weight_grads(const floating[:, ::1] da, const floating[:, :] x,
                 const floating[:, :, :] out, const floating[:, :, ::1] h0,
                 const int64_t[::1] lengths, floating[:, ::1] dw_ih, floating[:, ::1] dw_hh,
                 floating[::1] db=None, int num_threads=1):
    """A layer's weight gradients from one reading of its dA, (L·N, D·H) (D = 1, or 2 with
    direction 1 run backward in time): ``dw_ih`` = dAᵀ X, ``dw_hh`` = each direction's
    dA_dᵀ H_prev stacked (D·H, H), ``db`` (if given) = dA summed over rows.

    ``x`` is the layer's input (L·N, I); ``out`` its output (L, N, D·H), from which, with
    ``h0`` (D, N, H) and ``lengths``, come the states before each step: h_{t-1} forward,
    h_{t+1} in reverse, h0 where a sequence starts. Each thread takes a slice of the D·H
    rows; they share the packing of X, and copy each block of dA once for both products.
    Every element is a sum in row order: the same bits for any thread count.
    """
    _check_slices(num_threads)
    cdef fr_index K = da.shape[0], M = da.shape[1], I = x.shape[1]
    cdef fr_index L = out.shape[0], N = out.shape[1], D = h0.shape[0], H = h0.shape[2]
    if (D not in (1, 2) or M != D * H or out.shape[2] != M or K != L * N or x.shape[0] != K
            or h0.shape[1] != N or lengths.shape[0] != N or dw_ih.shape[0] != M
            or dw_ih.shape[1] != I or dw_hh.shape[0] != M or dw_hh.shape[1] != H
            or (db is not None and db.shape[0] != M)):
        raise ValueError(
            f"weight_grads shapes do not match: da ({K}, {M}), x ({x.shape[0]}, {I}), out "
            f"({L}, {N}, {out.shape[2]}), h0 ({D}, {h0.shape[1]}, {H}), lengths "
            f"({lengths.shape[0]},), dw_ih ({dw_ih.shape[0]}, {dw_ih.shape[1]}), dw_hh "
            f"({dw_hh.shape[0]}, {dw_hh.shape[1]}), db "
            f"{None if db is None else (db.shape[0],)}")
    if M > INT_MAX:
        raise MemoryError(f"{M} rows exceed the kernels' {INT_MAX}")
    _check_lengths(lengths, N, L)
    _check_strides("out", out.shape, out.strides, 3, sizeof(floating), 2)
    if M == 0:
        return
    if K == 0:
        dw_ih[:, :] = 0
        dw_hh[:, :] = 0
        if db is not None:
            db[:] = 0
        return
    cdef fr_index ldx = _row_stride(x.shape, x.strides, sizeof(floating), "x")
    cdef fr_index ts = out.strides[0] // sizeof(floating), bs = out.strides[1] // sizeof(floating)
    cdef const floating *po = &out[0, 0, 0]
    cdef const floating *ph0 = &h0[0, 0, 0]
    cdef const floating *px = &x[0, 0] if I > 0 else NULL
    cdef floating *pdb = &db[0] if db is not None else NULL
    cdef const int64_t *plen = &lengths[0]
    cdef fr_index d, t, n, ln
    # the state before each step, row by row: forward h_{t-1} (h0 at t = 0), reverse h_{t+1}
    # (h0 at t = length - 1; past the length dA is 0 and any row serves)
    cdef const floating **hprev = <const floating **> malloc(D * K * sizeof(floating *))
    if hprev == NULL:
        raise MemoryError("could not allocate weight-gradient scratch")
    for d in range(D):
        for t in range(L):
            for n in range(N):
                ln = plen[n]
                if d == 0:
                    hprev[t * N + n] = (ph0 + n * H if t == 0 else po + (t - 1) * ts + n * bs)
                elif t == ln - 1:
                    hprev[K + t * N + n] = ph0 + (N + n) * H
                else:
                    hprev[K + t * N + n] = po + (t + 1 if t + 1 < ln else t) * ts + n * bs + H
    cdef const fastrnn_kernels *ks = _kernels
    num_threads = _threads_for(<double> K * M * (I + H), num_threads)
    cdef floating *shared
    if floating is float:
        shared = <floating *> malloc((ks.sgemm_team_size(K, I) + ks.sgemm_team_size(K, H))
                                     * sizeof(floating))
    else:
        shared = <floating *> malloc((ks.dgemm_team_size(K, I) + ks.dgemm_team_size(K, H))
                                     * sizeof(floating))
    if shared == NULL:
        free(hprev)
        raise MemoryError("could not allocate weight-gradient scratch")
    cdef fr_spin_barrier team_barrier
    team_barrier.count = team_barrier.generation = 0
    cdef int team
    cdef int failed[1]
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        team = fr_team_size()
        if floating is float:
            if ks.sweight_grads_at_team(M, K, H, &da[0, 0], M, px, ldx, I, hprev, &dw_ih[0, 0],
                                        &dw_hh[0, 0], pdb, threadid(), team, shared,
                                        fr_team_barrier, &team_barrier) != 0:
                failed[0] = 1
        else:
            if ks.dweight_grads_at_team(M, K, H, &da[0, 0], M, px, ldx, I, hprev, &dw_ih[0, 0],
                                        &dw_hh[0, 0], pdb, threadid(), team, shared,
                                        fr_team_barrier, &team_barrier) != 0:
                failed[0] = 1
    free(shared)
    free(hprev)
    if failed[0]:
        raise MemoryError("could not allocate weight-gradient scratch")


cdef floating *_packed_buffer(const fastrnn_kernels *ks, fr_index K, fr_index N,
                             floating *like) noexcept nogil:
    """Room for a K×N matrix packed for the step kernels (free it); NULL if out of memory.
    ``like`` only selects the type."""
    if floating is float:
        return <floating *> malloc(ks.spacked_size(K, N) * sizeof(floating))
    else:
        return <floating *> malloc(ks.dpacked_size(K, N) * sizeof(floating))


cdef void _pack_part(const fastrnn_kernels *ks, const floating *w, fr_index ld, fr_index K,
                     fr_index N, bint transpose, floating *packed, int part,
                     int parts) noexcept nogil:
    """Share ``part`` of ``parts`` of packing op(W) (K×N) into ``packed``: a contiguous run
    of its panels, so that the threads of a region pack the weights together, each its own
    share, before a barrier (one thread alone was ~1 % of a layer's time, the others idle).
    W is row-major with row stride ld: K×N, or N×K read transposed if transpose."""
    cdef fr_index panel = ks.spacked_size(1, 1) if floating is float else ks.dpacked_size(1, 1)
    cdef fr_index panels = (N + panel - 1) // panel
    cdef fr_index j0 = panels * part // parts * panel
    cdef fr_index j1 = min(N, panels * (part + 1) // parts * panel)
    if j1 <= j0:
        return
    if floating is float:
        ks.spack(K, j1 - j0, w + (j0 * ld if transpose else j0), ld, transpose, packed + j0 * K)
    else:
        ks.dpack(K, j1 - j0, w + (j0 * ld if transpose else j0), ld, transpose, packed + j0 * K)


cdef inline bint _split_columns(fr_index N, int H, int num_threads) noexcept nogil:
    """Split hidden columns across threads (a barrier per step) rather than the batch?

    With fewer than 4 rows per thread a batch slice is a thin matrix-vector product that
    streams all of W_hh each step; a column slice keeps its part of W_hh in its own core's
    cache instead. Below 4 column panels (H < 128) a step is shorter than the barrier.
    Measured on 2 cores (AVX-512), 512 steps, batch 1, one thread vs two column slices:
    H = 64: 69 vs 124 us; H = 128: 235 vs 184 us; H = 256: 761 vs 466 us.
    """
    return num_threads > 1 and N < 4 * num_threads and H >= 4 * FASTRNN_COLUMN_GRANULE


cdef inline int _column_start(int thread, int nthreads, int H) noexcept nogil:
    """First hidden column of a thread's slice, a multiple of FASTRNN_COLUMN_GRANULE."""
    cdef int panels = (H + FASTRNN_COLUMN_GRANULE - 1) // FASTRNN_COLUMN_GRANULE
    cdef int per = (panels + nthreads - 1) // nthreads
    return min(H, thread * per * FASTRNN_COLUMN_GRANULE)


cdef inline int _gather_forward(fr_index s, fr_index b0, fr_index b1, const int64_t *plen,
                                bint reverse, floating *po, fr_index ts, fr_index bs,
                                const floating *ph0, int H, const floating **hprev,
                                floating **rows, const floating *px, fr_index xts,
                                fr_index xbs, const floating **xrows) noexcept nogil:
    """Row pointers of the sequences still running at step s: their h_{t-1} and P_t/h_t,
    and, if px is not NULL, their x_t."""
    cdef int m = 0
    cdef fr_index b, t
    for b in range(b0, b1):
        if s < plen[b]:
            t = plen[b] - 1 - s if reverse else s
            rows[m] = po + t * ts + b * bs
            hprev[m] = ph0 + b * H if s == 0 else rows[m] + (ts if reverse else -ts)
            if px != NULL:
                xrows[m] = px + t * xts + b * xbs
            m += 1
    return m


def recurrence_forward(floating[:, :, :] out, const floating[:, ::1] h0,
                       const floating[:, ::1] w_hh, const int64_t[::1] lengths,
                       bint reverse, bint relu, floating[:, ::1] h_n, int num_threads=1,
                       const floating[:, :, ::1] x=None, const floating[:, ::1] w_ih=None,
                       const floating[::1] bias=None):
    """h_t = act(P_t + h_{t-1} W_hhᵀ) for every sequence, in place in ``out``.

    ``out`` (L, N, H) holds the input projection P on entry and the outputs on return,
    zero past each sequence's length; ``h_n`` receives the state at each sequence's last
    step. Given ``x`` (L, N, I) and ``w_ih`` (H, I) (and ``bias`` (H,) or None), P_t is
    instead computed step by step, bitwise as ``gemm`` would, while the step's rows are in
    cache (``out`` need not be initialised). Each thread owns a slice of the batch for all
    L steps (no barrier per step), or, for a small batch, a slice of the hidden columns (one
    barrier per step).
    """
    _check_slices(num_threads)
    cdef fr_index L = out.shape[0], N = out.shape[1]
    if out.shape[2] > INT_MAX:
        raise MemoryError(f"{out.shape[2]} hidden units exceed the kernels' {INT_MAX}")
    cdef int H = <int> out.shape[2]
    _check_strides("out", out.shape, out.strides, 3, sizeof(floating), 2)
    _check_shape("h0", h0.shape, 2, (N, H))
    _check_shape("w_hh", w_hh.shape, 2, (H, H))
    _check_shape("h_n", h_n.shape, 2, (N, H))
    _check_lengths(lengths, N, L)
    if N == 0:
        return
    cdef fr_index ts = out.strides[0] // sizeof(floating), bs = out.strides[1] // sizeof(floating)
    cdef floating *po = &out[0, 0, 0] if L > 0 else NULL
    cdef const floating *ph0 = &h0[0, 0]
    cdef floating *phn = &h_n[0, 0]
    cdef int I = 0
    cdef fr_index xts = 0, xbs = 0
    cdef const floating *px = NULL
    cdef const floating *pbias = NULL
    cdef floating *pwi = NULL
    if x is not None:
        if (x.shape[0] != L or x.shape[1] != N or w_ih is None or w_ih.shape[0] != H
                or w_ih.shape[1] != x.shape[2] or (bias is not None and bias.shape[0] != H)):
            raise ValueError(
                f"x, w_ih and bias must be ({L}, {N}, I), ({H}, I) and ({H},), got "
                f"{(x.shape[0], x.shape[1], x.shape[2])}, "
                f"{None if w_ih is None else (w_ih.shape[0], w_ih.shape[1])} and "
                f"{None if bias is None else (bias.shape[0],)}")
        if x.shape[2] > INT_MAX:
            raise MemoryError(f"{x.shape[2]} inputs exceed the kernels' {INT_MAX}")
        I = <int> x.shape[2]
        xts = x.strides[0] // sizeof(floating)
        xbs = x.strides[1] // sizeof(floating)
        if L == 0 or I == 0:
            raise ValueError("x must have steps and inputs (else pass the projection in out)")
        px = &x[0, 0, 0]
        pbias = &bias[0] if bias is not None else NULL
    cdef const int64_t *plen = &lengths[0]
    cdef const fastrnn_kernels *ks = _kernels
    num_threads = _threads_for(<double> L * N * H * H, num_threads)
    cdef bint by_columns = _split_columns(N, H, num_threads)
    cdef fr_index slice_rows = N if by_columns else _slice_rows(N, num_threads)
    cdef fr_index nslices = (N + slice_rows - 1) // slice_rows
    cdef int nthreads = num_threads if by_columns else <int> nslices
    cdef fr_index sl, b, b0, b1, t, s, sc, max_len = 0
    cdef int m, mc, j0, j1, team
    cdef int failed[1]
    failed[0] = 0
    cdef fr_spin_barrier step_barrier, pack_barrier
    step_barrier.count = step_barrier.generation = 0
    pack_barrier.count = pack_barrier.generation = 0
    cdef const floating **hprev
    cdef floating **rows
    cdef const floating **xrows
    for b in range(N):
        max_len = max(max_len, plen[b])
    # W_hhᵀ (and W_ihᵀ) packed once per call, by all threads; it stays in cache across steps
    cdef const floating *pw_hh = &w_hh[0, 0]
    cdef const floating *pw_ih = &w_ih[0, 0] if px != NULL else NULL
    cdef floating *pw = _packed_buffer(ks, H, H, po)
    if pw == NULL:
        raise MemoryError("could not allocate the packed recurrent weights")
    if px != NULL:
        pwi = _packed_buffer(ks, I, H, po)
        if pwi == NULL:
            free(pw)
            raise MemoryError("could not allocate the packed input weights")
    with nogil, parallel(num_threads=nthreads):
        team = fr_team_size()
        _pack_part(ks, pw_hh, H, H, H, True, pw, threadid(), team)
        if pwi != NULL:
            _pack_part(ks, pw_ih, I, I, H, True, pwi, threadid(), team)
        fr_spin_wait(&pack_barrier, team)
        hprev = <const floating **> malloc(slice_rows * sizeof(floating *))
        rows = <floating **> malloc(slice_rows * sizeof(floating *))
        xrows = <const floating **> malloc(slice_rows * sizeof(floating *))
        try:
            if hprev == NULL or rows == NULL or xrows == NULL:
                failed[0] = 1
            if by_columns:
                team = fr_team_size()
                j0 = _column_start(threadid(), team, H)
                j1 = _column_start(threadid() + 1, team, H)
                for sc in range(max_len):
                    if hprev != NULL and rows != NULL and xrows != NULL:
                        mc = _gather_forward(sc, 0, N, plen, reverse, po, ts, bs, ph0, H, hprev,
                                             rows, px, xts, xbs, xrows)
                        # half of h_{t-1} was just written on the other core: fetch all its
                        # lines at once, not one by one as the product reaches them (S forward
                        # -14 %, Zen 4)
                        for b in range(mc):
                            fr_prefetch(hprev[b], H * sizeof(floating))
                        if j1 > j0 and pwi != NULL:
                            if floating is float:
                                ks.srnn_input_step(mc, I, H, j0, j1, <const float **> xrows, pwi,
                                                   pbias, hprev, rows, pw, relu)
                            else:
                                ks.drnn_input_step(mc, I, H, j0, j1, <const double **> xrows, pwi,
                                                   pbias, hprev, rows, pw, relu)
                        elif j1 > j0:
                            if floating is float:
                                ks.srnn_step(mc, H, j0, j1, hprev, <const float **> rows, rows, pw, relu)
                            else:
                                ks.drnn_step(mc, H, j0, j1, hprev, <const double **> rows, rows, pw, relu)
                    # step s+1 reads all columns of h_s
                    fr_spin_wait(&step_barrier, team)
            elif hprev != NULL and rows != NULL and xrows != NULL:
                for sl in prange(nslices, schedule="static"):
                    b0 = sl * slice_rows
                    b1 = min(N, b0 + slice_rows)
                    for s in range(max_len):
                        m = _gather_forward(s, b0, b1, plen, reverse, po, ts, bs, ph0, H, hprev,
                                            rows, px, xts, xbs, xrows)
                        if m == 0:
                            break
                        if pwi != NULL:
                            if floating is float:
                                ks.srnn_input_step(m, I, H, 0, H, <const float **> xrows, pwi,
                                                   pbias, hprev, rows, pw, relu)
                            else:
                                ks.drnn_input_step(m, I, H, 0, H, <const double **> xrows, pwi,
                                                   pbias, hprev, rows, pw, relu)
                            continue
                        _prefetch_step(s + 1, b0, b1, plen, reverse, H, po, ts, bs, NULL, 0, 0)
                        # P_t is read and h_t written in place: out rows hold P until visited
                        if floating is float:
                            ks.srnn_step(m, H, 0, H, hprev, <const float **> rows, rows, pw, relu)
                        else:
                            ks.drnn_step(m, H, 0, H, hprev, <const double **> rows, rows, pw, relu)
        finally:
            free(hprev)
            free(rows)
            free(xrows)
    free(pw)
    free(pwi)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for the recurrence")
    for b in range(N):
        if plen[b] == 0:
            memcpy(phn + b * H, ph0 + b * H, H * sizeof(floating))
        else:
            t = 0 if reverse else plen[b] - 1
            memcpy(phn + b * H, po + t * ts + b * bs, H * sizeof(floating))
        for t in range(plen[b], L):
            memset(po + t * ts + b * bs, 0, H * sizeof(floating))


cdef inline void _prefetch_step(fr_index s, fr_index b0, fr_index b1, const int64_t *plen,
                                bint reverse, int H, const floating *p1, fr_index ts1,
                                fr_index bs1, const floating *p2, fr_index ts2,
                                fr_index bs2) noexcept nogil:
    """Prefetch the rows step s reads of one or two (L, N, H) arrays (p2 may be NULL).

    Issued a step ahead, their loads overlap that step's products; read when needed, they
    came from memory (a fifth of the BPTT recurrence's time went to such loads, measured).
    """
    cdef fr_index b, t
    if s < 0:
        return
    for b in range(b0, b1):
        if s < plen[b]:
            t = plen[b] - 1 - s if reverse else s
            fr_prefetch(p1 + t * ts1 + b * bs1, H * sizeof(floating))
            if p2 != NULL:
                fr_prefetch(p2 + t * ts2 + b * bs2, H * sizeof(floating))


cdef inline int _gather_backward(fr_index s, fr_index b0, fr_index b1, const int64_t *plen,
                                 bint reverse, int H, const floating *po, fr_index ts,
                                 fr_index bs, const floating *pgo, fr_index gts, fr_index gbs,
                                 floating *pda, fr_index dts, fr_index dbs, floating *g,
                                 const floating **dy, const floating **h, floating **gr,
                                 floating **da) noexcept nogil:
    """Row pointers of the sequences running at step s: dY_t, h_t, their g and dA_t rows."""
    cdef int m = 0
    cdef fr_index b, t
    for b in range(b0, b1):
        if s < plen[b]:
            t = plen[b] - 1 - s if reverse else s
            dy[m] = pgo + t * gts + b * gbs
            h[m] = po + t * ts + b * bs
            gr[m] = g + (b - b0) * H
            da[m] = pda + t * dts + b * dbs
            m += 1
    return m


cdef inline const floating **_step_dy(const fastrnn_kernels *ks, int m, int K, int j0, int j1,
                                     const floating **dy, floating **gr, floating *g,
                                     floating *dy_rows, const floating *pwo,
                                     const floating **dyp) noexcept nogil:
    """The step's dY rows: ``dy`` itself, or, given the packed w_out, dy · w_out (columns
    j0 .. j1) written to ``dy_rows`` at the offsets of the rows' g."""
    cdef int i
    if pwo == NULL:
        return dy
    for i in range(m):
        dyp[i] = dy_rows + (gr[i] - g)
    if floating is float:
        ks.sinput_step(m, K, j0, j1, dy, pwo, NULL, <float **> dyp)
    else:
        ks.dinput_step(m, K, j0, j1, dy, pwo, NULL, <double **> dyp)
    return dyp


def recurrence_backward(const floating[:, :, :] out, const floating[:, :, :] grad_out,
                        const floating[:, ::1] grad_h_n, const floating[:, ::1] w_hh,
                        const int64_t[::1] lengths, bint reverse, bint relu,
                        floating[:, :, :] grad_a, floating[:, ::1] grad_h0,
                        int num_threads=1, const floating[:, :] w_out=None):
    """The BPTT recurrence: dA_t = (dY_t + g) ⊙ act'(h_t), g = dA_t W_hh, backwards in time.

    ``grad_a`` (L, N, H), contiguous rows (e.g. one direction's columns of an (L, N, 2H)
    array), need not be initialised; it receives dA (zero past each length),
    from which the caller forms the weight gradients as large GEMMs. ``grad_h0`` receives g
    after the first step. Threads split the batch, or the hidden columns for a small batch,
    as in :func:`recurrence_forward`. ``grad_out`` is dY (L, N, H); or, given ``w_out``
    (K, H), the layer above's dA (L, N, K), and dY_t = grad_out_t · w_out is computed step by
    step, bitwise as ``gemm`` would, while the rows are in cache (dY is never stored).
    """
    _check_slices(num_threads)
    cdef fr_index L = out.shape[0], N = out.shape[1]
    if out.shape[2] > INT_MAX:
        raise MemoryError(f"{out.shape[2]} hidden units exceed the kernels' {INT_MAX}")
    cdef int H = <int> out.shape[2]
    _check_strides("out", out.shape, out.strides, 3, sizeof(floating), 2)
    _check_strides("grad_out", grad_out.shape, grad_out.strides, 3, sizeof(floating), 2)
    _check_strides("grad_a", grad_a.shape, grad_a.strides, 3, sizeof(floating), 2)
    _check_shape("grad_a", grad_a.shape, 3, (L, N, H))
    _check_shape("grad_h_n", grad_h_n.shape, 2, (N, H))
    _check_shape("w_hh", w_hh.shape, 2, (H, H))
    _check_shape("grad_h0", grad_h0.shape, 2, (N, H))
    _check_lengths(lengths, N, L)
    cdef fr_index K = grad_out.shape[2]
    if (grad_out.shape[0] != out.shape[0] or grad_out.shape[1] != out.shape[1]
            or (K != H if w_out is None else (w_out.shape[0] != K or w_out.shape[1] != H))):
        raise ValueError(f"grad_out must be ({out.shape[0]}, {out.shape[1]}, {H}), or "
                         f"(..., K) with w_out (K, {H}); got "
                         f"{(grad_out.shape[0], grad_out.shape[1], grad_out.shape[2])} and "
                         f"{None if w_out is None else (w_out.shape[0], w_out.shape[1])}")
    if K > INT_MAX:
        raise MemoryError(f"{K} columns of grad_out exceed the kernels' {INT_MAX}")
    if w_out is not None:
        _check_strides("w_out", w_out.shape, w_out.strides, 2, sizeof(floating), 1)
    if N == 0:
        return
    cdef fr_index ts = out.strides[0] // sizeof(floating), bs = out.strides[1] // sizeof(floating)
    cdef fr_index gts = grad_out.strides[0] // sizeof(floating)
    cdef fr_index gbs = grad_out.strides[1] // sizeof(floating)
    cdef const floating *po = &out[0, 0, 0] if L > 0 else NULL
    cdef const floating *pgo = &grad_out[0, 0, 0] if L > 0 else NULL
    cdef floating *pda = &grad_a[0, 0, 0] if L > 0 else NULL
    cdef fr_index dts = grad_a.strides[0] // sizeof(floating)
    cdef fr_index dbs = grad_a.strides[1] // sizeof(floating)
    cdef const floating *pghn = &grad_h_n[0, 0]
    cdef floating *pgh0 = &grad_h0[0, 0]
    cdef const int64_t *plen = &lengths[0]
    cdef const fastrnn_kernels *ks = _kernels
    num_threads = _threads_for(<double> L * N * H * H, num_threads)
    cdef bint by_columns = _split_columns(N, H, num_threads)
    cdef fr_index slice_rows = N if by_columns else _slice_rows(N, num_threads)
    cdef fr_index nslices = (N + slice_rows - 1) // slice_rows
    cdef int nthreads = num_threads if by_columns else <int> nslices
    cdef fr_index sl, b, b0, b1, s, sc, t, max_len = 0
    cdef int m, mc, j0, j1, team
    cdef int failed[1]
    failed[0] = 0
    cdef fr_spin_barrier step_barrier, pack_barrier
    step_barrier.count = step_barrier.generation = 0
    pack_barrier.count = pack_barrier.generation = 0
    cdef floating *g
    cdef floating *g_shared = NULL
    cdef floating *dy_rows = NULL
    cdef floating *dy_shared = NULL
    cdef const floating **dy
    cdef const floating **dyp
    cdef const floating **dys
    cdef const floating **dy_step
    cdef const floating **h
    cdef floating **gr
    cdef floating **da
    for b in range(N):
        max_len = max(max_len, plen[b])
    # W_hh (and w_out) packed once per call, by all threads
    cdef const floating *pw_hh = &w_hh[0, 0]
    cdef const floating *pw_out_src = &w_out[0, 0] if w_out is not None and K > 0 else NULL
    cdef fr_index ld_out = w_out.strides[0] // sizeof(floating) if pw_out_src != NULL else 0
    cdef floating *pw = _packed_buffer(ks, H, H, pda)
    cdef floating *pwo = NULL
    if pw == NULL:
        raise MemoryError("could not allocate the packed recurrent weights")
    if w_out is not None:
        pwo = _packed_buffer(ks, K, H, pda)
        if pwo == NULL:
            free(pw)
            raise MemoryError("could not allocate the packed output weights")
    if by_columns:
        # one g (and dY) for the whole batch, each thread updating its own columns
        g_shared = <floating *> malloc(N * H * sizeof(floating))
        if w_out is not None:
            dy_shared = <floating *> malloc(N * H * sizeof(floating))
        if g_shared == NULL or (w_out is not None and dy_shared == NULL):
            free(pw)
            free(pwo)
            free(g_shared)
            raise MemoryError("could not allocate BPTT scratch")
        memcpy(g_shared, pghn, N * H * sizeof(floating))
    with nogil, parallel(num_threads=nthreads):
        team = fr_team_size()
        _pack_part(ks, pw_hh, H, H, H, False, pw, threadid(), team)
        if pwo != NULL:
            _pack_part(ks, pw_out_src, ld_out, K, H, False, pwo, threadid(), team)
        fr_spin_wait(&pack_barrier, team)
        g = NULL if by_columns else <floating *> malloc(slice_rows * H * sizeof(floating) + 1)
        dy_rows = dy_shared if by_columns or pwo == NULL else <floating *> malloc(
            slice_rows * H * sizeof(floating) + 1)
        dy = <const floating **> malloc(slice_rows * sizeof(floating *))
        dyp = <const floating **> malloc(slice_rows * sizeof(floating *))
        h = <const floating **> malloc(slice_rows * sizeof(floating *))
        gr = <floating **> malloc(slice_rows * sizeof(floating *))
        da = <floating **> malloc(slice_rows * sizeof(floating *))
        try:
            if ((g == NULL and not by_columns) or (pwo != NULL and dy_rows == NULL) or dy == NULL
                    or dyp == NULL or h == NULL or gr == NULL or da == NULL):
                failed[0] = 1
            if by_columns:
                team = fr_team_size()
                j0 = _column_start(threadid(), team, H)
                j1 = _column_start(threadid() + 1, team, H)
                for sc in range(max_len - 1, -1, -1):
                    if dy != NULL and h != NULL and gr != NULL and da != NULL:
                        mc = _gather_backward(sc, 0, N, plen, reverse, H, po, ts, bs, pgo, gts,
                                              gbs, pda, dts, dbs, g_shared, dy, h, gr, da)
                        dys = _step_dy(ks, mc, <int> K, j0, j1, dy, gr, g_shared, dy_rows, pwo,
                                       dyp)
                        if floating is float:
                            ks.sbptt_da(mc, j0, j1, dys, h, <const float **> gr, da, relu)
                        else:
                            ks.dbptt_da(mc, j0, j1, dys, h, <const double **> gr, da, relu)
                    # g = dA_t W_hh reads all columns of dA_t
                    fr_spin_wait(&step_barrier, team)
                    if dy != NULL and h != NULL and gr != NULL and da != NULL and j1 > j0:
                        if floating is float:
                            ks.sbptt_g(mc, H, j0, j1, <const float **> da, gr, pw)
                        else:
                            ks.dbptt_g(mc, H, j0, j1, <const double **> da, gr, pw)
            elif not failed[0]:
                for sl in prange(nslices, schedule="static"):
                    b0 = sl * slice_rows
                    b1 = min(N, b0 + slice_rows)
                    # g starts as dLoss/dh_n
                    memcpy(g, pghn + b0 * H, (b1 - b0) * H * sizeof(floating))
                    for s in range(max_len - 1, -1, -1):
                        m = _gather_backward(s, b0, b1, plen, reverse, H, po, ts, bs, pgo,
                                             gts, gbs, pda, dts, dbs, g, dy, h, gr, da)
                        if m == 0:
                            continue
                        if pwo == NULL:
                            _prefetch_step(s - 1, b0, b1, plen, reverse, H, pgo, gts, gbs, po,
                                           ts, bs)
                        else:  # the layer above's dA rows are K wide
                            _prefetch_step(s - 1, b0, b1, plen, reverse, <int> K, pgo, gts, gbs,
                                           NULL, 0, 0)
                            _prefetch_step(s - 1, b0, b1, plen, reverse, H, po, ts, bs, NULL, 0,
                                           0)
                        dy_step = _step_dy(ks, m, <int> K, 0, H, dy, gr, g, dy_rows, pwo, dyp)
                        if floating is float:
                            ks.sbptt_da(m, 0, H, dy_step, h, <const float **> gr, da, relu)
                            ks.sbptt_g(m, H, 0, H, <const float **> da, gr, pw)
                        else:
                            ks.dbptt_da(m, 0, H, dy_step, h, <const double **> gr, da, relu)
                            ks.dbptt_g(m, H, 0, H, <const double **> da, gr, pw)
                    memcpy(pgh0 + b0 * H, g, (b1 - b0) * H * sizeof(floating))
        finally:
            free(g)
            if dy_rows != dy_shared:
                free(dy_rows)
            free(dy)
            free(dyp)
            free(h)
            free(gr)
            free(da)
    free(pw)
    free(pwo)
    free(dy_shared)
    if by_columns:
        memcpy(pgh0, g_shared, N * H * sizeof(floating))
        free(g_shared)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for BPTT")
    for b in range(N):  # the steps each sequence ran are written; the rest are 0
        for t in range(plen[b], L):
            memset(pda + t * dts + b * dbs, 0, H * sizeof(floating))
