# Thread-count and fusion policy (included by _rnn.pyx): how many threads a call is worth,
# how a recurrence shares its work among them, and where the input projection is computed.
# The `cpdef` functions are also what the Python layers ask (fastrnn.functional,
# fastrnn.layers); measurements behind the thresholds are in docs/performance.md.

cdef enum:
    # Multiply-adds below which a second thread costs more (wake-up, join) than it saves.
    MIN_WORK_PER_THREAD = 1 << 18
    # Elements of a pointwise pass below which a parallel region costs more than it saves.
    MIN_ELEMENTS_PARALLEL = 1 << 15
    # Batch rows per thread from which the input projection goes inside the recurrence:
    # the rows of the widest register tile (FR_MR of the AVX-512 build).
    MIN_ROWS_PROJECTION_PER_STEP = 8
    # Rows per thread below which a recurrence splits hidden columns instead of the batch.
    MIN_ROWS_PER_SLICE = 4
    # Rows over all of a call's steps (L·N) up to which it splits hidden columns, whatever N.
    MAX_ROWS_SHORT_COLUMN_SPLIT = 32
    # Column panels from which a column split pays for its barrier per step.
    MIN_PANELS_COLUMN_SPLIT = 4
    # Rows per thread below which a GEMM (op(a) = a) of a large b splits the columns of c
    # across the threads rather than its rows: with a slice of rows each thread would pack
    # all of b, and from this many elements (2 MiB of float32, past a Zen 4 core's L2) it
    # streams from L3. A transposed b (x Wᵀ) is packed through a transpose, so halving its
    # packing pays up to more rows.
    MIN_ROWS_GEMM_ROW_SPLIT = 64
    MIN_ROWS_GEMM_ROW_SPLIT_TRANSPOSED_B = 512
    MIN_ELEMENTS_GEMM_COLUMN_SPLIT = 1 << 19
    # A smaller b (from 256 KiB of float32) is split by columns too for up to 12 rows per
    # thread, where packing it is most of the work; at 16 rows and more not consistently
    # faster (docs/performance.md).
    MAX_ROWS_GEMM_COLUMN_SPLIT_SMALL_B = 12
    MIN_ELEMENTS_GEMM_COLUMN_SPLIT_SMALL_B = 1 << 16
    # Rows a GEMM's work counts at least when choosing its threads: packing b costs about as
    # much as the products of a few rows (one row of x Wᵀ takes as long as 8 would)
    MIN_ROWS_GEMM_WORK = 8


cpdef int threads_for(double work, int num_threads) noexcept nogil:
    """Threads worth using for ``work`` multiply-adds, at most ``num_threads``."""
    return <int> max(1.0, min(<double> num_threads, work / MIN_WORK_PER_THREAD))


cpdef int elementwise_threads(fr_index n_elements, int threads) noexcept nogil:
    """Threads for a pointwise pass over ``n_elements`` (the layers' loss, embedding
    gradient, gradient clipping): ``threads``, or 1 for a pass too short to share."""
    return threads if n_elements >= MIN_ELEMENTS_PARALLEL else 1


cpdef bint projection_per_step(fr_index L, fr_index N, fr_index input_size,
                               int threads) noexcept nogil:
    """Compute the input projection inside the recurrence, step by step, rather than as one
    GEMM over all L·N rows first?

    Per step, each thread projects its own batch rows just before the recurrent product
    reads them, so P never makes a round trip through memory; the results are bitwise the
    same. It pays once each thread has a whole register tile of rows (8); with fewer, a
    step's projection is a thin product that the single large GEMM does far better. The
    backward pass asks the same for the layer above's dX (dY_t = dA_above_t · W_ih).
    """
    return L > 0 and input_size > 0 and N >= MIN_ROWS_PROJECTION_PER_STEP * threads


cdef inline fr_index _slice_rows(fr_index N, int num_threads) noexcept nogil:
    """Rows per slice: one slice per thread. Results do not depend on the split."""
    return max(1, (N + num_threads - 1) // num_threads)


cdef inline bint _column_split_pays(int H, int num_threads) noexcept nogil:
    """Below 4 column panels (H < 128) a step is shorter than a column split's barrier."""
    return num_threads > 1 and H >= MIN_PANELS_COLUMN_SPLIT * FASTRNN_COLUMN_GRANULE


cdef inline bint _split_columns(fr_index N, int H, int num_threads) noexcept nogil:
    """Split hidden columns across threads (a barrier per step) rather than the batch?

    With fewer than 4 rows per thread a batch slice is a thin matrix-vector product that
    streams all of W_hh each step; a column slice keeps its part of W_hh in its own core's
    cache instead.
    """
    return N < MIN_ROWS_PER_SLICE * num_threads and _column_split_pays(H, num_threads)


cdef inline bint _split_columns_of_call(fr_index L, fr_index N, int H,
                                        int num_threads) noexcept nogil:
    """:func:`_split_columns` for a call of L steps, which packs W_hh for itself: a short call
    (up to 32 rows over all its steps, a step-by-step decoder's) splits the columns too.
    Each thread then packs its columns' part of W_hh and reads it back from its own cache,
    where batch slices would each read all of it, half packed by the other core. (A
    stream's weights are packed once: it keeps :func:`_split_columns`.)"""
    return (_split_columns(N, H, num_threads)
            or L * N <= MAX_ROWS_SHORT_COLUMN_SPLIT and _column_split_pays(H, num_threads))


cdef inline int _column_start(int thread, int nthreads, int H) noexcept nogil:
    """First hidden column of a thread's slice, a multiple of FASTRNN_COLUMN_GRANULE."""
    cdef int panels = (H + FASTRNN_COLUMN_GRANULE - 1) // FASTRNN_COLUMN_GRANULE
    cdef int per = (panels + nthreads - 1) // nthreads
    return min(H, thread * per * FASTRNN_COLUMN_GRANULE)


cdef struct _Split:
    # How a recurrence shares its work: batch slices, one per thread for all steps with no
    # barrier; or, for a small batch, hidden columns, one slice per thread of the team and
    # a barrier per step.
    bint by_columns
    fr_index slice_rows  # batch rows of a part: a slice, or the whole batch
    fr_index nslices
    int nthreads  # threads to ask OpenMP for


cdef struct _Part:
    # One part of a recurrence's work: batch rows b0 .. b1, hidden columns j0 .. j1.
    fr_index b0, b1
    int j0, j1


cdef _Split _split_recurrence(fr_index L, fr_index N, int H, double row_step_work,
                              int num_threads) noexcept nogil:
    """The split of an (L, N, H) recurrence of ``row_step_work`` multiply-adds a row and step
    (the Elman cell's H·H) for at most ``num_threads`` threads."""
    cdef _Split sp
    num_threads = threads_for(<double> L * N * row_step_work, num_threads)
    sp.by_columns = _split_columns_of_call(L, N, H, num_threads)
    sp.slice_rows = N if sp.by_columns else _slice_rows(N, num_threads)
    sp.nslices = (N + sp.slice_rows - 1) // sp.slice_rows
    sp.nthreads = num_threads if sp.by_columns else <int> sp.nslices
    return sp


cdef inline fr_index _num_parts(_Split sp, int team) noexcept nogil:
    """Parts of the work for a team: a column slice per thread, or the batch slices."""
    return team if sp.by_columns else sp.nslices


cdef inline _Part _part(_Split sp, fr_index part, int team, fr_index N, int H) noexcept nogil:
    """Rows and columns of part ``part`` (< _num_parts) of the work."""
    cdef _Part p
    if sp.by_columns:
        p.b0, p.b1 = 0, N
        p.j0 = _column_start(<int> part, team, H)
        p.j1 = _column_start(<int> part + 1, team, H)
    else:
        p.b0 = part * sp.slice_rows
        p.b1 = min(N, p.b0 + sp.slice_rows)
        p.j0, p.j1 = 0, H
    return p
