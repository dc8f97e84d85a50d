# The time-step recurrences (included by _rnn.pyx): the forward one, h_t = act(P_t +
# h_{t-1} W_hhᵀ), and BPTT's, dA_t = (dY_t + g) ⊙ act'(h_t), g = dA_t W_hh. Each runs one loop
# for both splits of _policy.pxi: a thread takes parts of the work (a batch slice for all
# steps; or its hidden columns of the whole batch, meeting the team at a barrier each step)
# and at each step gathers the rows of the sequences still running (lengths, reverse).


cdef inline fr_index _max_length(const int64_t *plen, fr_index N) noexcept nogil:
    """The longest of N lengths: the steps a recurrence runs."""
    cdef fr_index b, longest = 0
    for b in range(N):
        longest = max(longest, plen[b])
    return longest


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


cdef inline void _prefetch_step(fr_index s, fr_index b0, fr_index b1, const int64_t *plen,
                                bint reverse, int H, const floating *p1, fr_index ts1,
                                fr_index bs1, const floating *p2, fr_index ts2,
                                fr_index bs2) noexcept nogil:
    """Prefetch the rows step s reads of one or two (L, N, H) arrays (p2 may be NULL).

    Issued a step ahead, their loads overlap that step's products; read when needed, they
    come from memory and the products wait for them.
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


cdef inline void _prefetch_shared_rows(const floating **rows, int m,
                                       fr_index width) noexcept nogil:
    """Prefetch rows[0 .. m] (``width`` values each), which the other threads of a column
    split have just written in part: after the step barrier, all their lines at once, not
    one by one as the product reaches them."""
    cdef int i
    for i in range(m):
        fr_prefetch(rows[i], width * sizeof(floating))


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
    kernels.input_step(ks, m, K, j0, j1, dy, pwo, NULL, <floating **> dyp)
    return dyp


def recurrence_forward(floating[:, :, :] out, const floating[:, ::1] h0,
                       const floating[:, ::1] w_hh, const int64_t[::1] lengths,
                       bint reverse, bint relu, floating[:, ::1] h_n, int num_threads=1,
                       const floating[:, :, ::1] x=None, const floating[:, ::1] w_ih=None,
                       const floating[::1] bias=None, bint bf16=False):
    """h_t = act(P_t + h_{t-1} W_hhᵀ) for every sequence, in place in ``out``.

    ``out`` (L, N, H) holds the input projection P on entry and the outputs on return,
    zero past each sequence's length; ``h_n`` receives the state at each sequence's last
    step. Given ``x`` (L, N, I) and ``w_ih`` (H, I) (and ``bias`` (H,) or None), P_t is
    instead computed step by step, bitwise as ``gemm`` would, while the step's rows are in
    cache (``out`` need not be initialised). Each thread owns a slice of the batch for all
    L steps (no barrier per step), or, for a small batch, a slice of the hidden columns (one
    barrier per step). ``bf16``: every product on bfloat16 operands (see ``gemm``).
    """
    _check_num_threads(num_threads)
    cdef const fastrnn_kernels *ks = _kernels_for(bf16, sizeof(floating))
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
    cdef int act = FR_ACT_RELU if relu else FR_ACT_TANH
    cdef _Split sp = _split_recurrence(L, N, H, <double> H * H, num_threads)
    cdef fr_index max_len = _max_length(plen, N)
    cdef _Part pt
    cdef fr_index part, b, t, s
    cdef int m, team, tid
    cdef bint ok
    cdef int failed[1]
    failed[0] = 0
    cdef fr_spin_barrier step_barrier, pack_barrier
    step_barrier.count = step_barrier.generation = 0
    pack_barrier.count = pack_barrier.generation = 0
    cdef const floating **hprev
    cdef floating **rows
    cdef const floating **xrows
    # W_hhᵀ (and W_ihᵀ) packed once per call, by all threads; it stays in cache across steps
    cdef const floating *pw_hh = &w_hh[0, 0]
    cdef const floating *pw_ih = &w_ih[0, 0] if px != NULL else NULL
    cdef floating *pw = _packed_buffer(ks, H, H, po)
    if pw == NULL:
        raise MemoryError("could not allocate the packed recurrent weights")
    if px != NULL:
        pwi = _packed_buffer(ks, I, H, po)
        if pwi == NULL:
            fr_scratch_free(pw)
            raise MemoryError("could not allocate the packed input weights")
    with nogil, parallel(num_threads=sp.nthreads):
        team = fr_team_size()
        tid = threadid()
        _pack_part(ks, pw_hh, H, H, H, True, NULL, pw, tid, team)
        if pwi != NULL:
            _pack_part(ks, pw_ih, I, I, H, True, NULL, pwi, tid, team)
        fr_spin_wait(&pack_barrier, team)
        hprev = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        rows = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        xrows = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        try:
            ok = hprev != NULL and rows != NULL and xrows != NULL
            if not ok:
                failed[0] = 1
            part = tid
            while part < _num_parts(sp, team):
                pt = _part(sp, part, team, N, H)
                for s in range(max_len):
                    # (without scratch, a column slice still meets the team at every step)
                    m = _gather_forward(s, pt.b0, pt.b1, plen, reverse, po, ts, bs, ph0, H,
                                        hprev, rows, px, xts, xbs, xrows) if ok else 0
                    if m == 0 and not sp.by_columns:
                        break  # the slice's sequences have all ended
                    if sp.by_columns:
                        _prefetch_shared_rows(hprev, m, H)
                    elif pwi == NULL:
                        _prefetch_step(s + 1, pt.b0, pt.b1, plen, reverse, H, po, ts, bs, NULL,
                                       0, 0)
                    # P_t is read and h_t written in place: out rows hold P until visited
                    if pt.j1 > pt.j0 and pwi != NULL:
                        kernels.rnn_input_step(ks, m, I, H, pt.j0, pt.j1, xrows, pwi, pbias,
                                               hprev, rows, pw, act)
                    elif pt.j1 > pt.j0:
                        kernels.rnn_step(ks, m, H, pt.j0, pt.j1, hprev,
                                         <const floating **> rows, rows, pw, act)
                    if sp.by_columns:
                        fr_spin_wait(&step_barrier, team)  # step s+1 reads all columns of h_s
                part = part + team  # (not +=: Cython would make it a reduction)
        finally:
            free(hprev)
            free(rows)
            free(xrows)
    fr_scratch_free(pw)
    fr_scratch_free(pwi)
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


def recurrence_backward(const floating[:, :, :] out, const floating[:, :, :] grad_out,
                        const floating[:, ::1] grad_h_n, const floating[:, ::1] w_hh,
                        const int64_t[::1] lengths, bint reverse, bint relu,
                        floating[:, :, :] grad_a, floating[:, ::1] grad_h0,
                        int num_threads=1, const floating[:, :] w_out=None,
                        bint bf16=False):
    """The BPTT recurrence: dA_t = (dY_t + g) ⊙ act'(h_t), g = dA_t W_hh, backwards in time.

    ``grad_a`` (L, N, H), contiguous rows (e.g. one direction's columns of an (L, N, 2H)
    array), need not be initialised; it receives dA (zero past each length),
    from which the caller forms the weight gradients as large GEMMs. ``grad_h0`` receives g
    after the first step. Threads split the batch, or the hidden columns for a small batch,
    as in :func:`recurrence_forward`. ``grad_out`` is dY (L, N, H); or, given ``w_out``
    (K, H), the layer above's dA (L, N, K), and dY_t = grad_out_t · w_out is computed step by
    step, bitwise as ``gemm`` would, while the rows are in cache (dY is never stored).
    ``bf16``: every product on bfloat16 operands (see ``gemm``).
    """
    _check_num_threads(num_threads)
    cdef const fastrnn_kernels *ks = _kernels_for(bf16, sizeof(floating))
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
    cdef _Split sp = _split_recurrence(L, N, H, <double> H * H, num_threads)
    cdef fr_index max_len = _max_length(plen, N)
    cdef _Part pt
    cdef fr_index part, b, s, t
    cdef int m, team, tid
    cdef bint ok
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
    cdef const floating **dy_step
    cdef const floating **h
    cdef floating **gr
    cdef floating **da
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
            fr_scratch_free(pw)
            raise MemoryError("could not allocate the packed output weights")
    if sp.by_columns:
        # one g (and dY) for the whole batch, each thread updating its own columns
        g_shared = <floating *> fr_scratch_alloc(N * H * sizeof(floating))
        if w_out is not None:
            dy_shared = <floating *> fr_scratch_alloc(N * H * sizeof(floating))
        if g_shared == NULL or (w_out is not None and dy_shared == NULL):
            fr_scratch_free(pw)
            fr_scratch_free(pwo)
            fr_scratch_free(g_shared)
            fr_scratch_free(dy_shared)
            raise MemoryError("could not allocate BPTT scratch")
        memcpy(g_shared, pghn, N * H * sizeof(floating))
    with nogil, parallel(num_threads=sp.nthreads):
        team = fr_team_size()
        tid = threadid()
        _pack_part(ks, pw_hh, H, H, H, False, NULL, pw, tid, team)
        if pwo != NULL:
            _pack_part(ks, pw_out_src, ld_out, K, H, False, NULL, pwo, tid, team)
        fr_spin_wait(&pack_barrier, team)
        g = g_shared if sp.by_columns else <floating *> fr_scratch_alloc(
            sp.slice_rows * H * sizeof(floating) + 1)
        dy_rows = dy_shared if sp.by_columns or pwo == NULL else <floating *> fr_scratch_alloc(
            sp.slice_rows * H * sizeof(floating) + 1)
        dy = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        dyp = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        h = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        gr = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        da = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        try:
            ok = (g != NULL and (pwo == NULL or dy_rows != NULL) and dy != NULL and dyp != NULL
                  and h != NULL and gr != NULL and da != NULL)
            if not ok:
                failed[0] = 1
            part = tid
            while part < _num_parts(sp, team):
                pt = _part(sp, part, team, N, H)
                if ok and not sp.by_columns:  # g starts as dLoss/dh_n
                    memcpy(g, pghn + pt.b0 * H, (pt.b1 - pt.b0) * H * sizeof(floating))
                for s in range(max_len - 1, -1, -1):
                    # (without scratch, a column slice still meets the team at every step)
                    m = _gather_backward(s, pt.b0, pt.b1, plen, reverse, H, po, ts, bs, pgo, gts,
                                         gbs, pda, dts, dbs, g, dy, h, gr, da) if ok else 0
                    if m == 0 and not sp.by_columns:
                        continue  # no sequence of the slice has reached step s yet
                    if not sp.by_columns and pwo == NULL:
                        _prefetch_step(s - 1, pt.b0, pt.b1, plen, reverse, H, pgo, gts, gbs, po,
                                       ts, bs)
                    elif not sp.by_columns:  # the layer above's dA rows are K wide
                        _prefetch_step(s - 1, pt.b0, pt.b1, plen, reverse, <int> K, pgo, gts,
                                       gbs, NULL, 0, 0)
                        _prefetch_step(s - 1, pt.b0, pt.b1, plen, reverse, H, po, ts, bs, NULL,
                                       0, 0)
                    if m > 0:
                        dy_step = _step_dy(ks, m, <int> K, pt.j0, pt.j1, dy, gr, g, dy_rows,
                                           pwo, dyp)
                        kernels.bptt_da(ks, m, pt.j0, pt.j1, dy_step, h, <const floating **> gr,
                                        da, relu)
                    if sp.by_columns:
                        fr_spin_wait(&step_barrier, team)  # g = dA_t W_hh reads all of dA_t
                        _prefetch_shared_rows(<const floating **> da, m, H)
                    if m > 0 and pt.j1 > pt.j0:
                        kernels.bptt_g(ks, m, H, pt.j0, pt.j1, <const floating **> da, gr, pw)
                if ok and not sp.by_columns:
                    memcpy(pgh0 + pt.b0 * H, g, (pt.b1 - pt.b0) * H * sizeof(floating))
                part = part + team  # (not +=: Cython would make it a reduction)
        finally:
            if g != g_shared:
                fr_scratch_free(g)
            if dy_rows != dy_shared:
                fr_scratch_free(dy_rows)
            free(dy)
            free(dyp)
            free(h)
            free(gr)
            free(da)
    fr_scratch_free(pw)
    fr_scratch_free(pwo)
    fr_scratch_free(dy_shared)
    if sp.by_columns:
        memcpy(pgh0, g_shared, N * H * sizeof(floating))
        fr_scratch_free(g_shared)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for BPTT")
    for b in range(N):  # the steps each sequence ran are written; the rest are 0
        for t in range(plen[b], L):
            memset(pda + t * dts + b * dbs, 0, H * sizeof(floating))
