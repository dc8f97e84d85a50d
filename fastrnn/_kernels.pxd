# cython: language_level=3
"""The C kernels' ABI for Cython (src_c/kernels.h, team.h, build_info.h), declared once.

A build's table (``fastrnn_kernels``) holds one table per element type, ``f32`` and
``f64``, with the same fields. Cython cannot declare extern functions over a fused type,
so each kernel has a thin inline wrapper here, fused over ``floating``: ``gemm(ks, ...)``
calls ``ks.f32.gemm`` or ``ks.f64.gemm``, chosen when Cython compiles each specialisation
(no branch at run time), and the loops in ``_rnn.pyx`` name no dtype. Kernels that take no
array (the size queries) take a ``dtype`` pointer, NULL, to select the table.
"""

cdef extern from "kernels.h" nogil:
    ctypedef long fr_index
    ctypedef void (*fr_barrier_fn)(void *) noexcept nogil

    ctypedef struct fr_kernels_float:
        int (*gemm)(fr_index, fr_index, fr_index, const float *, fr_index, int, const float *,
                    fr_index, int, const fr_index *, float *, fr_index, const fr_index *,
                    const float *, int, float *) noexcept nogil
        fr_index (*gemm_team_size)(fr_index, fr_index) noexcept nogil
        int (*gemm_at_team)(fr_index, fr_index, fr_index, const float *, fr_index,
                            const float *, fr_index, int, float *, fr_index, const fr_index *,
                            const float *, int, float *, int, int, float *, fr_barrier_fn,
                            void *) noexcept nogil
        int (*weight_grads_at_team)(fr_index, fr_index, fr_index, fr_index, const float *,
                                    fr_index, const float *, fr_index, fr_index, const float **,
                                    float *, float *, const fr_index *, float *, int, int,
                                    float *, fr_barrier_fn, void *) noexcept nogil
        fr_index (*packed_size)(fr_index, fr_index) noexcept nogil
        void (*pack)(fr_index, fr_index, const float *, fr_index, int, const fr_index *,
                     float *) noexcept nogil
        void (*rnn_step)(int, int, int, int, const float **, const float **, float **,
                         const float *, int) noexcept nogil
        void (*rnn_input_step)(int, int, int, int, int, const float **, const float *,
                               const float *, const float **, float **, const float *,
                               int) noexcept nogil
        void (*gru_step)(int, int, int, int, int, const float **, const float *, const float *,
                         float **, const float **, const float *, const float *,
                         float **) noexcept nogil
        void (*input_step)(int, int, int, int, const float **, const float *, const float *,
                           float **) noexcept nogil
        void (*bptt_da)(int, int, int, const float **, const float **, const float **,
                        float **, int) noexcept nogil
        void (*bptt_g)(int, int, int, int, const float **, float **,
                       const float *) noexcept nogil
        void (*lstm_cell)(int, int, int, int, float **, const float **, float **) noexcept nogil
        void (*lstm_cell_grad)(int, int, int, int, const float **, const float **,
                               const float **, float **, float **) noexcept nogil
        void (*gru_cell)(int, int, int, int, float **, const float **, const float **,
                         float **) noexcept nogil
        void (*gru_cell_grad)(int, int, int, int, float **, const float **, const float **,
                              float **, float **) noexcept nogil

    ctypedef struct fr_kernels_double:
        int (*gemm)(fr_index, fr_index, fr_index, const double *, fr_index, int,
                    const double *, fr_index, int, const fr_index *, double *, fr_index,
                    const fr_index *, const double *, int, double *) noexcept nogil
        fr_index (*gemm_team_size)(fr_index, fr_index) noexcept nogil
        int (*gemm_at_team)(fr_index, fr_index, fr_index, const double *, fr_index,
                            const double *, fr_index, int, double *, fr_index,
                            const fr_index *, const double *, int, double *, int, int,
                            double *, fr_barrier_fn, void *) noexcept nogil
        int (*weight_grads_at_team)(fr_index, fr_index, fr_index, fr_index, const double *,
                                    fr_index, const double *, fr_index, fr_index, const double **,
                                    double *, double *, const fr_index *, double *, int, int,
                                    double *, fr_barrier_fn, void *) noexcept nogil
        fr_index (*packed_size)(fr_index, fr_index) noexcept nogil
        void (*pack)(fr_index, fr_index, const double *, fr_index, int, const fr_index *,
                     double *) noexcept nogil
        void (*rnn_step)(int, int, int, int, const double **, const double **, double **,
                         const double *, int) noexcept nogil
        void (*rnn_input_step)(int, int, int, int, int, const double **, const double *,
                               const double *, const double **, double **, const double *,
                               int) noexcept nogil
        void (*gru_step)(int, int, int, int, int, const double **, const double *, const double *,
                         double **, const double **, const double *, const double *,
                         double **) noexcept nogil
        void (*input_step)(int, int, int, int, const double **, const double *,
                           const double *, double **) noexcept nogil
        void (*bptt_da)(int, int, int, const double **, const double **, const double **,
                        double **, int) noexcept nogil
        void (*bptt_g)(int, int, int, int, const double **, double **,
                       const double *) noexcept nogil
        void (*lstm_cell)(int, int, int, int, double **, const double **, double **) noexcept nogil
        void (*lstm_cell_grad)(int, int, int, int, const double **, const double **,
                               const double **, double **, double **) noexcept nogil
        void (*gru_cell)(int, int, int, int, double **, const double **, const double **,
                         double **) noexcept nogil
        void (*gru_cell_grad)(int, int, int, int, double **, const double **, const double **,
                              double **, double **) noexcept nogil

    ctypedef struct fastrnn_kernels:
        const char *name
        fr_kernels_float f32
        fr_kernels_double f64
        fr_kernels_float bf16

    int FASTRNN_COLUMN_GRANULE
    enum fr_activation:
        FR_ACT_TANH
        FR_ACT_RELU
        FR_ACT_NONE
    void fr_gate_rows(int G, int H, fr_index *rows) noexcept nogil
    const fastrnn_kernels **fastrnn_kernels_available()
    const fastrnn_kernels **fastrnn_kernels_compiled()

cdef extern from "aligned_memory.h" nogil:
    void *fr_aligned_alloc(size_t bytes) noexcept nogil
    void fr_aligned_free(void *p) noexcept nogil
    void *fr_scratch_alloc(size_t bytes) noexcept nogil
    void fr_scratch_free(void *p) noexcept nogil
    ctypedef struct fr_scratch_functions:
        void *(*alloc)(size_t) noexcept nogil
        void (*release)(void *) noexcept nogil
        size_t min_bytes
    void fr_set_scratch(const fr_scratch_functions *functions) noexcept nogil

cdef extern from "team.h" nogil:
    ctypedef struct fr_spin_barrier:
        int count
        int generation
    int fr_team_size() noexcept nogil
    void fr_prefetch(const void *p, long bytes) noexcept nogil
    void fr_spin_wait(fr_spin_barrier *b, int nthreads) noexcept nogil
    void fr_team_barrier(void *barrier) noexcept nogil

cdef extern from "build_info.h":
    int FR_OPENMP_ENABLED
    int FR_OPENMP_VERSION
    const char *FR_COMPILER

ctypedef fused floating:
    float
    double


# One wrapper per kernel: the arguments of kernels.h's field of the same name, after ks.

cdef inline int gemm(const fastrnn_kernels *ks, fr_index M, fr_index N, fr_index K,
                     const floating *A, fr_index lda, int a_trans, const floating *B,
                     fr_index ldb, int b_trans, const fr_index *b_rows, floating *C,
                     fr_index ldc, const fr_index *c_rows, const floating *bias,
                     int accumulate, floating *a_sums) noexcept nogil:
    if floating is float:
        return ks.f32.gemm(M, N, K, A, lda, a_trans, B, ldb, b_trans, b_rows, C, ldc, c_rows,
                           bias, accumulate, a_sums)
    else:
        return ks.f64.gemm(M, N, K, A, lda, a_trans, B, ldb, b_trans, b_rows, C, ldc, c_rows,
                           bias, accumulate, a_sums)


cdef inline fr_index gemm_team_size(const fastrnn_kernels *ks, fr_index K, fr_index N,
                                    const floating *dtype) noexcept nogil:
    if floating is float:
        return ks.f32.gemm_team_size(K, N)
    else:
        return ks.f64.gemm_team_size(K, N)


cdef inline int gemm_at_team(const fastrnn_kernels *ks, fr_index M, fr_index N, fr_index K,
                             const floating *A, fr_index lda, const floating *B, fr_index ldb,
                             int b_trans, floating *C, fr_index ldc, const fr_index *c_rows,
                             const floating *bias, int accumulate, floating *a_sums,
                             int thread, int nthreads, floating *shared,
                             fr_barrier_fn barrier, void *barrier_arg) noexcept nogil:
    if floating is float:
        return ks.f32.gemm_at_team(M, N, K, A, lda, B, ldb, b_trans, C, ldc, c_rows, bias,
                                   accumulate, a_sums, thread, nthreads, shared, barrier,
                                   barrier_arg)
    else:
        return ks.f64.gemm_at_team(M, N, K, A, lda, B, ldb, b_trans, C, ldc, c_rows, bias,
                                   accumulate, a_sums, thread, nthreads, shared, barrier,
                                   barrier_arg)


cdef inline int weight_grads_at_team(const fastrnn_kernels *ks, fr_index M, fr_index K,
                                     fr_index W, fr_index H, const floating *A, fr_index lda,
                                     const floating *X, fr_index ldx, fr_index I,
                                     const floating **hprev, floating *dw_ih,
                                     floating *dw_hh, const fr_index *c_rows,
                                     floating *a_sums, int thread, int nthreads,
                                     floating *shared, fr_barrier_fn barrier,
                                     void *barrier_arg) noexcept nogil:
    if floating is float:
        return ks.f32.weight_grads_at_team(M, K, W, H, A, lda, X, ldx, I, hprev, dw_ih, dw_hh,
                                           c_rows, a_sums, thread, nthreads, shared, barrier,
                                           barrier_arg)
    else:
        return ks.f64.weight_grads_at_team(M, K, W, H, A, lda, X, ldx, I, hprev, dw_ih, dw_hh,
                                           c_rows, a_sums, thread, nthreads, shared, barrier,
                                           barrier_arg)


cdef inline fr_index packed_size(const fastrnn_kernels *ks, fr_index K, fr_index N,
                                 const floating *dtype) noexcept nogil:
    if floating is float:
        return ks.f32.packed_size(K, N)
    else:
        return ks.f64.packed_size(K, N)


cdef inline void pack(const fastrnn_kernels *ks, fr_index K, fr_index N, const floating *B,
                      fr_index ldb, int b_trans, const fr_index *rows,
                      floating *packed) noexcept nogil:
    if floating is float:
        ks.f32.pack(K, N, B, ldb, b_trans, rows, packed)
    else:
        ks.f64.pack(K, N, B, ldb, b_trans, rows, packed)


cdef inline void rnn_step(const fastrnn_kernels *ks, int M, int H, int j0, int j1,
                          const floating **hprev, const floating **p, floating **out,
                          const floating *wt_packed, int act) noexcept nogil:
    if floating is float:
        ks.f32.rnn_step(M, H, j0, j1, hprev, p, out, wt_packed, act)
    else:
        ks.f64.rnn_step(M, H, j0, j1, hprev, p, out, wt_packed, act)


cdef inline void rnn_input_step(const fastrnn_kernels *ks, int M, int I, int H, int j0, int j1,
                                const floating **x, const floating *wit_packed,
                                const floating *bias, const floating **hprev, floating **out,
                                const floating *wt_packed, int act) noexcept nogil:
    if floating is float:
        ks.f32.rnn_input_step(M, I, H, j0, j1, x, wit_packed, bias, hprev, out, wt_packed, act)
    else:
        ks.f64.rnn_input_step(M, I, H, j0, j1, x, wit_packed, bias, hprev, out, wt_packed, act)


cdef inline void gru_step(const fastrnn_kernels *ks, int M, int I, int H, int j0, int j1,
                          const floating **x, const floating *wit_packed, const floating *bias,
                          floating **p, const floating **hprev, const floating *wt_packed,
                          const floating *b_hh, floating **r) noexcept nogil:
    if floating is float:
        ks.f32.gru_step(M, I, H, j0, j1, x, wit_packed, bias, p, hprev, wt_packed, b_hh, r)
    else:
        ks.f64.gru_step(M, I, H, j0, j1, x, wit_packed, bias, p, hprev, wt_packed, b_hh, r)


cdef inline void input_step(const fastrnn_kernels *ks, int M, int K, int j0, int j1,
                            const floating **x, const floating *b_packed, const floating *bias,
                            floating **out) noexcept nogil:
    if floating is float:
        ks.f32.input_step(M, K, j0, j1, x, b_packed, bias, out)
    else:
        ks.f64.input_step(M, K, j0, j1, x, b_packed, bias, out)


cdef inline void bptt_da(const fastrnn_kernels *ks, int M, int j0, int j1, const floating **dy,
                         const floating **h, const floating **g, floating **da,
                         int relu) noexcept nogil:
    if floating is float:
        ks.f32.bptt_da(M, j0, j1, dy, h, g, da, relu)
    else:
        ks.f64.bptt_da(M, j0, j1, dy, h, g, da, relu)


cdef inline void bptt_g(const fastrnn_kernels *ks, int M, int H, int j0, int j1,
                        const floating **da, floating **g, const floating *w_packed) noexcept nogil:
    if floating is float:
        ks.f32.bptt_g(M, H, j0, j1, da, g, w_packed)
    else:
        ks.f64.bptt_g(M, H, j0, j1, da, g, w_packed)


cdef inline void lstm_cell(const fastrnn_kernels *ks, int M, int H, int j0, int j1,
                           floating **save, const floating **cprev,
                           floating **h) noexcept nogil:
    if floating is float:
        ks.f32.lstm_cell(M, H, j0, j1, save, cprev, h)
    else:
        ks.f64.lstm_cell(M, H, j0, j1, save, cprev, h)


cdef inline void lstm_cell_grad(const fastrnn_kernels *ks, int M, int H, int j0, int j1,
                                const floating **dm, const floating **save,
                                const floating **cprev, floating **dc,
                                floating **da) noexcept nogil:
    if floating is float:
        ks.f32.lstm_cell_grad(M, H, j0, j1, dm, save, cprev, dc, da)
    else:
        ks.f64.lstm_cell_grad(M, H, j0, j1, dm, save, cprev, dc, da)


cdef inline void gru_cell(const fastrnn_kernels *ks, int M, int H, int j0, int j1,
                          floating **save, const floating **r, const floating **hprev,
                          floating **h) noexcept nogil:
    if floating is float:
        ks.f32.gru_cell(M, H, j0, j1, save, r, hprev, h)
    else:
        ks.f64.gru_cell(M, H, j0, j1, save, r, hprev, h)


cdef inline void gru_cell_grad(const fastrnn_kernels *ks, int M, int H, int j0, int j1,
                               floating **dh, const floating **save, const floating **hprev,
                               floating **da, floating **dr) noexcept nogil:
    if floating is float:
        ks.f32.gru_cell_grad(M, H, j0, j1, dh, save, hprev, da, dr)
    else:
        ks.f64.gru_cell_grad(M, H, j0, j1, dh, save, hprev, da, dr)
