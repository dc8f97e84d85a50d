# Streaming (included by _rnn.pyx): a unidirectional network run a step (or a chunk of
# steps) per call, its state kept between calls, its weights packed once. Per step and layer
# it calls the same kernels as the whole-sequence recurrences, which compute every row and
# column with the same arithmetic whatever the split (src_c/kernels.h), so a stream's
# outputs are bitwise those of the whole sequence at once, however it is cut into calls.
#
# The split: with a few rows per thread a step is a matrix-vector product that streams all
# of the weights, so the threads take hidden units (each keeps its share of the weights in
# its own core's cache) and meet at a barrier after each layer; with more rows, batch slices
# that never wait for each other (_policy.pxi's rule).

cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef enum:
    # Multiply-adds of a call from which a second thread pays: a quarter of a whole
    # sequence's threshold (MIN_WORK_PER_THREAD), as a stream's threads are woken call after
    # call, still spinning (docs/performance.md)
    MIN_STREAM_WORK_PER_THREAD = 1 << 16

cdef enum:
    STREAM_LSTM = CELL_LSTM
    STREAM_GRU = CELL_GRU
    STREAM_ELMAN = 2

ELMAN = STREAM_ELMAN  # (LSTM, GRU: _cells.pxi's)

# Counts changes of any parameter's values (fastrnn.Parameter reports them): a stream whose
# count differs from it checks its own parameters before the step.
cdef unsigned long long _weights_generation = 0

_get_num_threads = None  # fastrnn.parallel.get_num_threads, imported on first use


def note_weights_changed():
    """Record that some parameter's values changed (streams check theirs before a step)."""
    global _weights_generation
    _weights_generation += 1


cdef enum:
    # Bytes of parameters from which a second thread compares half of them: the comparison
    # reads the parameters and their copies at about 80 GB/s per core (docs/performance.md)
    MIN_COMPARE_BYTES_PER_THREAD = 1 << 17


cdef bint _same_layout(cnp.ndarray x, cnp.ndarray y):
    """Both C-contiguous, of one dtype and shape (NumPy's C API: this runs on every short
    call, for every parameter)."""
    cdef int d, ndim = cnp.PyArray_NDIM(x)
    if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and cnp.PyArray_IS_C_CONTIGUOUS(y)
            and ndim == cnp.PyArray_NDIM(y)
            and cnp.PyArray_EquivTypes(x.descr, y.descr)):
        return False
    for d in range(ndim):
        if cnp.PyArray_DIMS(x)[d] != cnp.PyArray_DIMS(y)[d]:
            return False
    return True


def same_contents(arrays, copies):
    """Whether every array of ``arrays`` holds the bytes of the C-contiguous array at the same
    place in ``copies`` (False for one not C-contiguous or of another shape or dtype)."""
    # tuples: the arrays stay alive while compared without the GIL, whatever another thread
    # does to the lists
    cdef tuple held = tuple(arrays), held_copies = tuple(copies)
    cdef Py_ssize_t count = len(held), i
    if len(held_copies) != count:
        return False
    for x, y in zip(held, held_copies):
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                and _same_layout(<cnp.ndarray> x, <cnp.ndarray> y)):
            return False
    cdef size_t total = 0
    for x in held:
        total += cnp.PyArray_NBYTES(<cnp.ndarray> x)
    global _get_num_threads
    cdef int threads = 1
    if total >= 2 * MIN_COMPARE_BYTES_PER_THREAD:
        if _get_num_threads is None:
            from fastrnn.parallel import get_num_threads
            _get_num_threads = get_num_threads
        threads = <int> min(<size_t> _get_num_threads(), total // MIN_COMPARE_BYTES_PER_THREAD)
    cdef const char **a = <const char **> malloc(2 * count * sizeof(char *) + 1)
    cdef size_t *sizes = <size_t *> malloc(count * sizeof(size_t) + 1)
    cdef int *differs = <int *> calloc(threads, sizeof(int))
    if a == NULL or sizes == NULL or differs == NULL:
        free(a)
        free(sizes)
        free(differs)
        raise MemoryError("could not compare the parameters")
    for i in range(count):
        a[2 * i] = <const char *> cnp.PyArray_DATA(<cnp.ndarray> held[i])
        a[2 * i + 1] = <const char *> cnp.PyArray_DATA(<cnp.ndarray> held_copies[i])
        sizes[i] = cnp.PyArray_NBYTES(<cnp.ndarray> held[i])
    cdef int tid, team
    cdef size_t lo, hi
    with nogil:
        if threads == 1:
            for i in range(count):
                if memcmp(a[2 * i], a[2 * i + 1], sizes[i]) != 0:
                    differs[0] = 1
                    break
        else:
            with parallel(num_threads=threads):
                # each thread its share of every array: in its core's cache for the next call
                tid = threadid()
                team = fr_team_size()
                for i in range(count):
                    lo = sizes[i] * tid // team
                    hi = sizes[i] * (tid + 1) // team
                    if memcmp(a[2 * i] + lo, a[2 * i + 1] + lo, hi - lo) != 0:
                        differs[tid] = 1
    cdef bint same = True
    for i in range(threads):
        same = same and not differs[i]
    free(a)
    free(sizes)
    free(differs)
    return same


cdef struct _StreamPlan:
    const fastrnn_kernels *ks
    int cell, layers, N, input_size, H, H_out, G, width
    bint relu, proj
    # per layer: W_ihᵀ, W_hhᵀ, W_hrᵀ packed for the step kernels; P's bias, R's bias (the
    # GRU's b_hn), each NULL where absent
    void **w_ih
    void **w_hh
    void **w_hr
    void **bias
    void **b_hh
    char *h     # (2, layers, N, H_out): the state and the step's output, by step parity
    char *save  # gated: (2, layers, N, width) the step's gates, c (LSTM) and m, by parity
    char *r     # GRU: (N, G·H) the recurrent product's rows
    void **rows  # 7·N row pointers; a part uses entries b0 .. b1 of each run of N


cdef void _stream_part(floating *tag, const _StreamPlan *p, int parity, fr_index T,
                       const char *x, fr_index xts, fr_index xbs, char *y, fr_index yts,
                       fr_index ybs, fr_index b0, fr_index b1, int j0, int j1, int p0, int p1,
                       fr_spin_barrier *barrier, int team) noexcept nogil:
    """Steps 0 .. T of rows b0 .. b1, hidden units j0 .. j1 (projected columns p0 .. p1) of
    every layer; x and y are addressed in bytes (strides xts, xbs, yts, ybs), y may be NULL.
    With ``barrier`` the parts split the units and meet after each layer (and before an
    LSTM's projection, which reads every unit's m)."""
    cdef fr_index N = p.N, t, b
    cdef int H = p.H, H_out = p.H_out, G = p.G, W = p.width, m = <int> (b1 - b0)
    cdef int l, i, cur, prev, K
    cdef floating *h = <floating *> p.h
    cdef floating *sv = <floating *> p.save
    cdef floating *rr = <floating *> p.r
    cdef fr_index hlay = N * H_out, hpar = p.layers * N * H_out
    cdef fr_index slay = N * W, spar = p.layers * N * W
    cdef const floating **xin = <const floating **> p.rows + b0
    cdef const floating **hp = <const floating **> p.rows + N + b0
    cdef floating **hc = <floating **> p.rows + 2 * N + b0
    cdef floating **srow = <floating **> p.rows + 3 * N + b0
    cdef floating **rrow = <floating **> p.rows + 4 * N + b0
    cdef const floating **cprev = <const floating **> p.rows + 5 * N + b0
    cdef floating **hrow = <floating **> p.rows + 6 * N + b0
    cdef int c0 = p0 if p.proj else j0, c1 = p1 if p.proj else j1  # output columns
    if m <= 0:
        return
    for t in range(T):
        cur = (parity + <int> t + 1) & 1
        prev = cur ^ 1
        for l in range(p.layers):
            K = p.input_size if l == 0 else H_out
            for i in range(m):
                b = b0 + i
                if l == 0:
                    xin[i] = <const floating *> (x + t * xts + b * xbs)
                else:
                    xin[i] = h + cur * hpar + (l - 1) * hlay + b * H_out
                hp[i] = h + prev * hpar + l * hlay + b * H_out
                hc[i] = h + cur * hpar + l * hlay + b * H_out
            if p.cell == STREAM_ELMAN:
                if j1 > j0:
                    kernels.rnn_input_step(p.ks, m, K, H, j0, j1, xin,
                                           <const floating *> p.w_ih[l],
                                           <const floating *> p.bias[l], hp, hc,
                                           <const floating *> p.w_hh[l],
                                           FR_ACT_RELU if p.relu else FR_ACT_TANH)
            else:
                for i in range(m):
                    b = b0 + i
                    srow[i] = sv + cur * spar + l * slay + b * W
                    rrow[i] = rr + b * G * H
                    cprev[i] = sv + prev * spar + l * slay + b * W + G * H
                    hrow[i] = srow[i] + G * H + H if p.proj else hc[i]
                if j1 > j0 and p.cell == STREAM_LSTM:
                    # the pre-activations and the epilogue as the whole sequence's
                    # recurrence forms them (P + h W_hhᵀ, one sum)
                    kernels.rnn_input_step(p.ks, m, K, H_out, G * j0, G * j1, xin,
                                           <const floating *> p.w_ih[l],
                                           <const floating *> p.bias[l], hp, srow,
                                           <const floating *> p.w_hh[l], FR_ACT_NONE)
                    kernels.lstm_cell(p.ks, m, H, j0, j1, srow, cprev, hrow)
                elif j1 > j0:
                    # P and R as the whole sequence's GEMM and recurrence form them, then
                    # the cell's epilogue
                    kernels.gru_step(p.ks, m, K, H, G * j0, G * j1, xin,
                                     <const floating *> p.w_ih[l], <const floating *> p.bias[l],
                                     srow, hp, <const floating *> p.w_hh[l],
                                     <const floating *> p.b_hh[l], rrow)
                    kernels.gru_cell(p.ks, m, H, j0, j1, srow, <const floating **> rrow,
                                     hp, hrow)
                if p.proj:
                    if barrier != NULL:
                        fr_spin_wait(barrier, team)
                    if p1 > p0:
                        kernels.input_step(p.ks, m, H, p0, p1, <const floating **> hrow,
                                           <const floating *> p.w_hr[l], NULL, hc)
            if barrier != NULL:
                fr_spin_wait(barrier, team)  # the next layer (or step) reads all of h
        if y != NULL and c1 > c0:
            for i in range(m):
                b = b0 + i
                memcpy(y + t * yts + b * ybs + c0 * sizeof(floating),
                       h + cur * hpar + (p.layers - 1) * hlay + b * H_out + c0,
                       (c1 - c0) * sizeof(floating))


cdef void _stream_columns(const _StreamPlan *p, bint wide, int parity, fr_index T,
                          const char *x, fr_index xts, fr_index xbs, char *y, fr_index yts,
                          fr_index ybs, int tid, int team, fr_spin_barrier *barrier) noexcept nogil:
    """Thread ``tid``'s share of the hidden units (and projected columns) of every row."""
    cdef int j0 = _column_start(tid, team, p.H), j1 = _column_start(tid + 1, team, p.H)
    cdef int p0 = _column_start(tid, team, p.H_out), p1 = _column_start(tid + 1, team, p.H_out)
    if wide:
        _stream_part(<double *> NULL, p, parity, T, x, xts, xbs, y, yts, ybs, 0, p.N, j0, j1,
                     p0, p1, barrier, team)
    else:
        _stream_part(<float *> NULL, p, parity, T, x, xts, xbs, y, yts, ybs, 0, p.N, j0, j1,
                     p0, p1, barrier, team)


cdef inline char *_extent(cnp.ndarray a, char **end) noexcept:
    """First and one-past-last byte an array's elements occupy."""
    cdef char *lo = <char *> cnp.PyArray_DATA(a)
    cdef char *hi = lo
    cdef int d
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *strides = cnp.PyArray_STRIDES(a)
    for d in range(cnp.PyArray_NDIM(a)):
        if shape[d] == 0:
            end[0] = lo
            return lo
        if strides[d] < 0:
            lo += (shape[d] - 1) * strides[d]
        else:
            hi += (shape[d] - 1) * strides[d]
    end[0] = hi + cnp.PyArray_ITEMSIZE(a)
    return lo


cdef inline bint _overlaps(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether the byte ranges of two arrays' elements intersect (a bound, as NumPy's
    may_share_memory)."""
    cdef char *a_end
    cdef char *b_end
    cdef char *a0 = _extent(a, &a_end)
    cdef char *b0 = _extent(b, &b_end)
    return a0 < a_end and b0 < b_end and a0 < b_end and b0 < a_end


cdef class StreamCore:
    """The compiled half of :class:`fastrnn.Stream`: packed weights, state buffers and the
    step. Built by ``_setup``; the weights loaded per layer by ``_load``."""

    cdef _StreamPlan plan
    cdef int itemsize
    cdef int parity  # which half of the buffers holds the state
    cdef bint busy  # a call is in progress (one thread at a time)
    cdef bint running  # its steps are running (the weights and state are in use)
    cdef bint batch_first
    cdef readonly bint bf16  # the products on bfloat16 operands
    cdef unsigned long long generation  # _weights_generation when the weights were checked
    cdef object dtype
    cdef cnp.ndarray _h, _save, _r, _chunk, _xstage
    cdef list _biases  # the arrays plan.bias, plan.b_hh point into
    cdef tuple _outputs  # per parity: the read-only (N, H_out) view of the last layer's h

    def __cinit__(self, *args, **kwargs):
        self.plan.ks = NULL
        self.plan.layers = 0
        self.plan.w_ih = self.plan.w_hh = self.plan.w_hr = NULL
        self.plan.bias = self.plan.b_hh = NULL
        self.plan.rows = NULL

    def __dealloc__(self):
        self._free_weights()
        free(self.plan.w_ih)
        free(self.plan.w_hh)
        free(self.plan.w_hr)
        free(self.plan.bias)
        free(self.plan.b_hh)
        free(self.plan.rows)

    cdef void _free_weights(self) noexcept:
        cdef int l
        for l in range(self.plan.layers):
            if self.plan.w_ih != NULL:
                fr_aligned_free(self.plan.w_ih[l])
                self.plan.w_ih[l] = NULL
            if self.plan.w_hh != NULL:
                fr_aligned_free(self.plan.w_hh[l])
                self.plan.w_hh[l] = NULL
            if self.plan.w_hr != NULL:
                fr_aligned_free(self.plan.w_hr[l])
                self.plan.w_hr[l] = NULL

    def _setup(self, int cell, int num_layers, int batch_size, int input_size,
               int hidden_size, int proj_size, dtype, bint relu, bint batch_first,
               bint bf16=False):
        """Allocate the buffers of a stream of ``batch_size`` rows (the state zero);
        ``bf16``: its products on bfloat16 operands (float32 only)."""
        if self.plan.rows != NULL:
            raise RuntimeError("a stream is set up once")
        if cell not in (STREAM_LSTM, STREAM_GRU, STREAM_ELMAN):
            raise ValueError(f"unknown cell {cell}")
        if num_layers < 1 or batch_size < 1 or input_size < 1 or hidden_size < 1:
            raise ValueError("a stream needs positive sizes")
        if proj_size and cell != STREAM_LSTM:
            raise ValueError("only an LSTM has a projection")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"a stream computes in float32 or float64, got {self.dtype}")
        self.itemsize = self.dtype.itemsize
        G = 1 if cell == STREAM_ELMAN else cell_gates(cell)
        H_out = proj_size or hidden_size
        self.plan.ks = _kernels_for(bf16, self.itemsize)
        self.bf16 = bf16
        self.plan.cell, self.plan.G, self.plan.relu = cell, G, relu
        self.plan.N, self.plan.input_size, self.plan.H, self.plan.H_out = (batch_size, input_size,
                                                                  hidden_size, H_out)
        self.plan.proj = proj_size > 0
        self.plan.width = (0 if cell == STREAM_ELMAN else
                           G * hidden_size + hidden_size + (hidden_size if proj_size else 0))
        self.batch_first = batch_first
        self._biases = [None] * (2 * num_layers)
        self.plan.layers = num_layers  # (the weight tables below may be NULL until allocated)
        self._size_batch(batch_size)
        cdef size_t n = num_layers * sizeof(void *)
        self.plan.w_ih = <void **> calloc(1, n)
        self.plan.w_hh = <void **> calloc(1, n)
        self.plan.w_hr = <void **> calloc(1, n)
        self.plan.bias = <void **> calloc(1, n)
        self.plan.b_hh = <void **> calloc(1, n)
        if (self.plan.w_ih == NULL or self.plan.w_hh == NULL or self.plan.w_hr == NULL
                or self.plan.bias == NULL or self.plan.b_hh == NULL):
            raise MemoryError("could not allocate a stream")

    cdef void _size_batch(self, int batch_size) except *:
        """(Re)allocate what depends on the batch: the state (zero), the step's scratch and
        the row pointers, for ``batch_size`` rows; the packed weights stay."""
        cdef void **rows = <void **> malloc(7 * batch_size * sizeof(void *))
        if rows == NULL:
            raise MemoryError("could not allocate a stream")
        cdef int G = self.plan.G, H = self.plan.H, H_out = self.plan.H_out
        cdef int num_layers = self.plan.layers
        try:
            h = np.zeros((2, num_layers, batch_size, H_out), dtype=self.dtype)
            save = np.zeros((2, num_layers, batch_size, self.plan.width), dtype=self.dtype)
            r = np.zeros((batch_size, G * H if self.plan.cell == STREAM_GRU else 0),
                         dtype=self.dtype)
            xstage = np.empty((batch_size, self.plan.input_size), dtype=self.dtype)
        except BaseException:
            free(rows)
            raise
        free(self.plan.rows)
        self.plan.rows = rows
        self._h, self._save, self._r, self._xstage = h, save, r, xstage
        self._chunk = np.empty((0, batch_size, H_out), dtype=self.dtype)
        views = []
        for half in range(2):
            v = self._h[half, num_layers - 1]
            v.flags.writeable = False  # the caller's view of the state: not to be written
            views.append(v)
        self._outputs = tuple(views)
        self.plan.h = <char *> cnp.PyArray_DATA(self._h)
        self.plan.save = <char *> cnp.PyArray_DATA(self._save)
        self.plan.r = <char *> cnp.PyArray_DATA(self._r)
        self.plan.N = batch_size
        self.parity = 0

    def _resize_batch(self, int batch_size):
        """Run ``batch_size`` rows from now on, on the weights packed already: the state is
        zero again and the views returned so far no longer follow it."""
        if self.running or self.busy:
            raise RuntimeError("this stream is in use by another thread")
        if self.plan.w_ih == NULL:
            raise RuntimeError("the stream is not set up")
        if batch_size < 1:
            raise ValueError("a stream needs positive sizes")
        self._size_batch(batch_size)

    cdef void *_packed(self, w, fr_index K, fr_index N, bint gated) except NULL:
        """op(W)ᵀ of a row-major (N, K) ``w`` packed for the step kernels (fr_aligned_free
        it); ``gated``: a gated cell's weight, its rows in torch's gate order."""
        cdef cnp.ndarray a = np.ascontiguousarray(w, dtype=self.dtype)
        if a.ndim != 2 or a.shape[0] != N or a.shape[1] != K:
            raise ValueError(f"a stream's weight must have shape {(N, K)}, got "
                             f"{np.shape(w)}")
        cdef fr_index *rows = _gate_rows(self.plan.G, self.plan.H) if gated else NULL
        # (the layouts differ by dtype: panels of as many values as two vectors hold)
        cdef fr_index size = (kernels.packed_size(self.plan.ks, K, N, <float *> NULL) * 4
                              if self.itemsize == 4 else
                              kernels.packed_size(self.plan.ks, K, N, <double *> NULL) * 8)
        cdef void *out = fr_aligned_alloc(size) if rows != NULL or not gated else NULL
        if out != NULL and self.itemsize == 4:
            kernels.pack(self.plan.ks, K, N, <const float *> cnp.PyArray_DATA(a), K, True, rows,
                         <float *> out)
        elif out != NULL:
            kernels.pack(self.plan.ks, K, N, <const double *> cnp.PyArray_DATA(a), K, True, rows,
                         <double *> out)
        free(rows)
        if out == NULL:
            raise MemoryError("could not allocate a stream's packed weights")
        return out

    cdef void *_vector(self, v, fr_index n, int slot) except? NULL:
        """A bias of ``n`` elements kept by the stream (NULL for None)."""
        if v is None:
            self._biases[slot] = None
            return NULL
        cdef cnp.ndarray a = np.array(v, dtype=self.dtype, copy=True)
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"a stream's bias must have shape {(n,)}, got {np.shape(v)}")
        self._biases[slot] = a
        return cnp.PyArray_DATA(a)

    def _load(self, int layer, w_ih, bias, w_hh, b_hh, w_hr):
        """Pack one layer's weights: W_ih (G·H, K) and W_hh (G·H, H_out) in torch's gate
        order, P's bias (G·H,) or None and R's bias or None gate-interleaved (as
        ``cell_forward``'s), W_hr (H_out, H) or None."""
        if self.running:
            raise RuntimeError("this stream is running a step in another thread")
        if not 0 <= layer < self.plan.layers:
            raise IndexError(f"layer {layer} out of range")
        cdef int GH = self.plan.G * self.plan.H
        cdef fr_index K = self.plan.input_size if layer == 0 else self.plan.H_out
        if (w_hr is not None) != self.plan.proj:
            raise ValueError("w_hr must be given exactly for a projected LSTM")
        if b_hh is not None and self.plan.cell != STREAM_GRU:
            raise ValueError("only a GRU's recurrent product has a bias of its own (b_hn); "
                             "an LSTM's is part of P's (b_ih + b_hh)")
        # every array checked and packed before the layer's old weights are replaced
        cdef bint gated = self.plan.cell != STREAM_ELMAN
        cdef void *wi = self._packed(w_ih, K, GH, gated)
        cdef void *wh = NULL
        cdef void *wr = NULL
        try:
            wh = self._packed(w_hh, self.plan.H_out, GH, gated)
            if w_hr is not None:
                wr = self._packed(w_hr, self.plan.H, self.plan.H_out, False)
            self.plan.bias[layer] = self._vector(bias, GH, 2 * layer)
            self.plan.b_hh[layer] = self._vector(b_hh, GH, 2 * layer + 1)
        except BaseException:
            fr_aligned_free(wi)
            fr_aligned_free(wh)
            fr_aligned_free(wr)
            raise
        fr_aligned_free(self.plan.w_ih[layer])
        fr_aligned_free(self.plan.w_hh[layer])
        fr_aligned_free(self.plan.w_hr[layer])
        self.plan.w_ih[layer] = wi
        self.plan.w_hh[layer] = wh
        self.plan.w_hr[layer] = wr

    def _acquire(self):
        """Take the stream for a call that reads or writes its weights or state (the Python
        half's state, reset and refresh): one at a time, as the steps."""
        if self.busy:
            raise RuntimeError("this stream is in use by another thread; give each thread its "
                               "own stream")
        self.busy = True

    def _release(self):
        self.busy = False

    def _checked(self):
        """Mark the weights as matching every parameter change recorded so far."""
        self.generation = _weights_generation

    def _state_buffers(self):
        """The buffers holding the state: h (layers, N, H_out) and, for an LSTM, c
        (layers, N, H) (views, writable: the Python half resets them)."""
        if self.running:
            raise RuntimeError("this stream is running a step in another thread")
        h = self._h[self.parity]
        if self.plan.cell != STREAM_LSTM:
            return h, None
        GH = self.plan.G * self.plan.H
        return h, self._save[self.parity, :, :, GH:GH + self.plan.H]

    @property
    def batch_size(self):
        return self.plan.N

    def _refresh_if_stale(self):
        raise NotImplementedError

    def __call__(self, x, out=None):
        """Run the steps of ``x``: (N, I) for one step or a chunk of T steps, (T, N, I) or,
        batch-first, (N, T, I). Returns the last layer's h: (N, H_out), or (T, N, H_out)
        ((N, T, H_out) batch-first): read-only, valid until the next call; or ``out``."""
        if self.busy:  # (no Python code runs between this test and the next line)
            raise RuntimeError("this stream is already running a step in another thread; "
                               "give each thread its own stream")
        self.busy = True
        try:
            return self._call(x, out)
        finally:
            self.busy = False

    cdef object _call(self, x, out):
        if self.generation != _weights_generation:
            self._refresh_if_stale()
        cdef cnp.ndarray xa
        if (cnp.PyArray_CheckExact(x) and cnp.PyArray_ISALIGNED(<cnp.ndarray> x)
                and (<object> cnp.PyArray_DESCR(<cnp.ndarray> x)) is self.dtype):
            xa = <cnp.ndarray> x
        else:
            xa = self._as_input(x)
        cdef int nd = cnp.PyArray_NDIM(xa)
        cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(xa)
        cdef fr_index N = self.plan.N, T
        cdef int batch_axis = 0 if nd == 2 or self.batch_first else 1
        if nd != 2 and nd != 3:
            raise ValueError(f"{self._name()}: expected x of shape (N, I) for a step or "
                             f"{self._chunk_shape('I')} for a chunk, got "
                             f"{nd}-D shape {np.shape(xa)}")
        T = 1 if nd == 2 else shape[1 - batch_axis]
        if shape[batch_axis] != N or shape[nd - 1] != self.plan.input_size:
            raise ValueError(f"{self._name()}: expected x of shape "
                             f"{(N, self.plan.input_size) if nd == 2 else self._chunk_shape('I')} "
                             f"(batch_size={N}, input_size={self.plan.input_size}), got "
                             f"{np.shape(xa)}")
        if shape[nd - 1] > 1 and cnp.PyArray_STRIDES(xa)[nd - 1] != self.itemsize:
            xa = np.ascontiguousarray(xa)  # the kernels read contiguous rows
        cdef cnp.ndarray ya
        if out is None:
            if nd == 2:
                ya = None  # the state's own row: no copy
            else:
                if self._chunk.shape[0] < T:
                    self._chunk = np.empty((T, N, self.plan.H_out), dtype=self.dtype)
                ya = self._chunk[:T]
        else:
            ya = self._as_output(out, nd, T)
            if _overlaps(ya, xa) or self._overlaps_state(ya):
                raise ValueError("out must not share memory with x or the stream's state")
        if self._overlaps_state(xa) or (ya is not None and _overlaps(ya, xa)):
            # x is (a view of) an earlier output: the steps would overwrite it while reading it
            if nd == 2:
                self._xstage[...] = xa
                xa = self._xstage
            else:
                xa = xa.copy()
        cdef cnp.npy_intp *xs = cnp.PyArray_STRIDES(xa)
        cdef fr_index xts = xs[1 - batch_axis] if nd == 3 else 0, xbs = xs[batch_axis]
        cdef fr_index yts = 0, ybs = 0
        cdef char *yp = NULL
        cdef cnp.npy_intp *ys
        if ya is not None:
            yp = <char *> cnp.PyArray_DATA(ya)
            ys = cnp.PyArray_STRIDES(ya)
            if nd == 2:
                ybs = ys[0]
            elif out is None or not self.batch_first:
                yts, ybs = ys[0], ys[1]
            else:
                yts, ybs = ys[1], ys[0]
        self.running = True
        try:
            self._run(<const char *> cnp.PyArray_DATA(xa), xts, xbs, T, yp, yts, ybs)
        finally:
            self.running = False
        if out is not None:
            return out
        if nd == 2:
            return self._outputs[self.parity]
        ya.flags.writeable = False
        return ya.transpose(1, 0, 2) if self.batch_first else ya

    cdef int _run(self, const char *x, fr_index xts, fr_index xbs, fr_index T, char *y,
                  fr_index yts, fr_index ybs) except -1:
        cdef _StreamPlan *p = &self.plan
        if T == 0:
            return 0
        cdef int l
        for l in range(p.layers):
            if p.w_ih[l] == NULL:
                raise RuntimeError("the stream's weights are not loaded")
        cdef double work = <double> T * p.N * p.G * p.H * (p.input_size + (p.layers - 1) * p.H_out
                                                          + p.layers * p.H_out)
        cdef int threads = 1
        global _get_num_threads
        if work >= 2 * MIN_STREAM_WORK_PER_THREAD:
            if _get_num_threads is None:
                from fastrnn.parallel import get_num_threads
                _get_num_threads = get_num_threads
            threads = <int> max(1.0, min(<double> _get_num_threads(),
                                         work / MIN_STREAM_WORK_PER_THREAD))
        cdef bint by_columns = _split_columns(p.N, p.H, threads)
        cdef fr_index slice_rows = p.N if by_columns else _slice_rows(p.N, threads)
        cdef int nparts = threads if by_columns else <int> ((p.N + slice_rows - 1) // slice_rows)
        cdef int parity = self.parity, tid, team
        cdef fr_index b0, b1
        cdef fr_spin_barrier barrier
        barrier.count = barrier.generation = 0
        cdef bint wide = self.itemsize == 8
        cdef fr_index part
        if nparts <= 1:
            with nogil:
                if wide:
                    _stream_part(<double *> NULL, p, parity, T, x, xts, xbs, y, yts, ybs, 0,
                                 p.N, 0, p.H, 0, p.H_out, NULL, 1)
                else:
                    _stream_part(<float *> NULL, p, parity, T, x, xts, xbs, y, yts, ybs, 0,
                                 p.N, 0, p.H, 0, p.H_out, NULL, 1)
        else:
            with nogil, parallel(num_threads=nparts):
                team = fr_team_size()
                tid = threadid()
                if by_columns:
                    _stream_columns(p, wide, parity, T, x, xts, xbs, y, yts, ybs, tid, team,
                                    &barrier)
                else:
                    part = tid
                    while part < nparts:
                        b0 = part * slice_rows
                        b1 = min(p.N, b0 + slice_rows)
                        if wide:
                            _stream_part(<double *> NULL, p, parity, T, x, xts, xbs, y, yts,
                                         ybs, b0, b1, 0, p.H, 0, p.H_out, NULL, 1)
                        else:
                            _stream_part(<float *> NULL, p, parity, T, x, xts, xbs, y, yts,
                                         ybs, b0, b1, 0, p.H, 0, p.H_out, NULL, 1)
                        part = part + team  # (not +=: Cython would make it a reduction)
        self.parity = (parity + <int> (T & 1)) & 1
        return 0

    cdef bint _overlaps_state(self, cnp.ndarray a):
        return _overlaps(a, self._h) or _overlaps(a, self._save) or _overlaps(a, self._r)

    cdef cnp.ndarray _as_input(self, x):
        """x as an aligned ndarray of the stream's dtype, or a clear error."""
        a = np.asarray(x)
        if a.dtype.kind != "f" or a.dtype not in (np.float32, np.float64):
            raise TypeError(f"{self._name()}: x must be a float32 or float64 array, got dtype "
                            f"{a.dtype}")
        if a.dtype != self.dtype:
            raise TypeError(f"{self._name()}: x dtype ({a.dtype}) does not match the "
                            f"stream's ({self.dtype}); convert it with "
                            f"x.astype(np.{self.dtype})")
        if not a.flags.aligned or type(a) is not np.ndarray:
            a = np.array(a, dtype=self.dtype, copy=True)
        return a

    cdef cnp.ndarray _as_output(self, out, int nd, fr_index T):
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
        N, H_out, steps = int(self.plan.N), int(self.plan.H_out), int(T)
        if nd == 2:
            want = (N, H_out)
        else:
            want = (N, steps, H_out) if self.batch_first else (steps, N, H_out)
        if out.dtype != self.dtype:
            raise TypeError(f"out must be a {self.dtype} array, got dtype {out.dtype}")
        if out.shape != want:
            raise ValueError(f"out must have shape {want}, got {out.shape}")
        if not out.flags.writeable or not out.flags.aligned:
            raise ValueError("out must be writable and aligned")
        if out.size and H_out > 1 and out.strides[nd - 1] != self.itemsize:
            raise ValueError("out must have contiguous rows (unit stride in its last axis)")
        return <cnp.ndarray> out

    def _name(self):
        return type(self).__name__

    def _chunk_shape(self, what):
        return f"(N, T, {what})" if self.batch_first else f"(T, N, {what})"
