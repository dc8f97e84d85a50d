# The gated cells' recurrences (included by _rnn.pyx): LSTM and GRU on the engine's parts.
# Per step, for the rows still running: h_{t-1} W_hhᵀ (W_hh packed from torch's gate order
# into gate-interleaved columns, see src_c/cell_steps.h; an LSTM's onto P, a GRU's apart),
# the cell's epilogue (gates, c, h), and with a projection h = m W_hrᵀ; backward the
# epilogue's derivative and g = dR · W_hh. The split (batch slices, or hidden units with a
# barrier per step) and the gathering by lengths and direction are _policy.pxi's; what a
# cell adds is its gates and its two kernels.

cdef enum:
    CELL_LSTM = 0
    CELL_GRU = 1


def cell_gates(int cell):
    """Gates per hidden unit of a gated cell (CELL_LSTM: 4, CELL_GRU: 3)."""
    if cell not in (CELL_LSTM, CELL_GRU):
        raise ValueError(f"unknown cell {cell}")
    return 4 if cell == CELL_LSTM else 3


LSTM, GRU = CELL_LSTM, CELL_GRU


def gate_rows(int gates, int hidden_size):
    """The kernels' gate-interleaved order of a gated cell's G·H weight rows or bias entries
    (src_c/cell_steps.h): an index array ``rows``, torch's row ``rows[c]`` at position c."""
    if gates < 1 or hidden_size < 0 or <fr_index> gates * hidden_size > INT_MAX:
        raise ValueError(f"gates must be positive, hidden_size not negative and their "
                         f"product at most {INT_MAX}, got {gates} and {hidden_size}")
    cdef fr_index *order = _gate_rows(gates, hidden_size)
    if order == NULL:
        raise MemoryError("could not allocate the gate order")
    rows = np.empty(gates * hidden_size, dtype=np.intp)
    cdef Py_ssize_t c
    for c in range(gates * hidden_size):
        rows[c] = order[c]
    free(order)
    return rows


cdef fr_index *_gate_rows(int G, int H) noexcept nogil:
    """fr_gate_rows' order of G·H rows (free it), NULL if out of memory: the kernels read a
    cell's weights in torch's row order through it."""
    cdef fr_index *rows = <fr_index *> malloc(max(1, <fr_index> G * H) * sizeof(fr_index))
    if rows != NULL:
        fr_gate_rows(G, H, rows)
    return rows


cdef fr_index *_blocked_gate_rows(int G, int H, fr_index count) except NULL:
    """_gate_rows' order within each block of G·H of ``count`` rows (free it): a gated
    cell's weights for one direction or several, stacked."""
    if G < 1 or H < 1 or <fr_index> G * H > INT_MAX or count % (<fr_index> G * H) != 0:
        raise ValueError(f"a gate layout of {G} gates and {H} hidden units needs a multiple "
                         f"of {G}·{H} rows, got {count}")
    cdef fr_index *rows = <fr_index *> malloc(max(1, count) * sizeof(fr_index))
    if rows == NULL:
        raise MemoryError("could not allocate the gate order")
    cdef fr_index block = <fr_index> G * H, start, i
    if count:
        fr_gate_rows(G, H, rows)
    for start in range(block, count, block):
        for i in range(block):
            rows[start + i] = rows[i] + start
    return rows


cdef _Split _split_cell(fr_index L, fr_index N, int H, int G, int H_out,
                        int num_threads) noexcept nogil:
    """The split of a gated recurrence: as the Elman one's, for G·H·H_out multiply-adds a
    row and step. Not by hidden units for large batches even where W_hh outgrows a core's
    L2: faster on a quiet machine, but its barrier per step stalls whenever another process
    holds a core, and batch slices never wait for each other (docs/performance.md)."""
    return _split_recurrence(L, N, H, <double> G * H * H_out, num_threads)


cdef inline int _gather_cell(fr_index s, fr_index b0, fr_index b1, const int64_t *plen,
                             bint reverse, floating *po, fr_index ts, fr_index bs,
                             floating *psv, fr_index sts, fr_index sbs, fr_index ring,
                             const floating *ph0, int H_out, const floating *pc0, int H, int G,
                             int cslot, const floating **hprev, floating **orow,
                             floating **srow, const floating **cprev, floating *pr,
                             floating **rrow) noexcept nogil:
    """Row pointers of the sequences running at step s: h_{t-1}, h_t (output), the step's
    saved row (by step t, or with ``ring`` > 0 in slot s % ring of a ring of saved rows),
    (cslot > 0) c_{t-1}, the c slot of the step before or c0, and the row's own scratch row
    of pr (G·H wide: the same row whatever the split)."""
    cdef int m = 0
    cdef fr_index b, t
    for b in range(b0, b1):
        if s < plen[b]:
            t = plen[b] - 1 - s if reverse else s
            orow[m] = po + t * ts + b * bs
            srow[m] = psv + (s % ring if ring else t) * sts + b * sbs
            if pr != NULL:
                rrow[m] = pr + b * G * H
            if s == 0:
                hprev[m] = ph0 + b * H_out
                if cslot:
                    cprev[m] = pc0 + b * H
            else:
                hprev[m] = orow[m] + (ts if reverse else -ts)
                if cslot:
                    cprev[m] = (psv + (s - 1) % ring * sts + b * sbs + cslot if ring
                                else srow[m] + (sts if reverse else -sts) + cslot)
            m += 1
    return m


cdef inline int _gather_projection(fr_index s0, fr_index s1, fr_index b0, fr_index b1,
                                   const int64_t *plen, bint reverse, const floating *px,
                                   fr_index xts, fr_index xbs, floating *psv, fr_index sts,
                                   fr_index sbs, fr_index ring, const floating **xrows,
                                   floating **srow) noexcept nogil:
    """Row pointers of steps s0 .. s1 of the sequences running at each: x_t and the step's
    saved row (as _gather_cell's), for one projection of all of them."""
    cdef int m = 0
    cdef fr_index b, s, t
    for s in range(s0, s1):
        for b in range(b0, b1):
            if s < plen[b]:
                t = plen[b] - 1 - s if reverse else s
                xrows[m] = px + t * xts + b * xbs
                srow[m] = psv + (s % ring if ring else t) * sts + b * sbs
                m += 1
    return m


cdef int _check_cell(int cell, Py_ssize_t *save_shape, Py_ssize_t *save_strides,
                     Py_ssize_t *out_shape, Py_ssize_t *out_strides, Py_ssize_t *w_hh_shape,
                     bint proj, Py_ssize_t *w_hr_shape, size_t itemsize,
                     fr_index save_steps) except -1:
    """Check a gated recurrence's save (save_steps, N, ·), out (L, N, H_out), w_hh (G·H, H_out)
    and w_hr (H_out, H) against one another."""
    cdef int G = cell_gates(cell)
    cdef fr_index H = w_hh_shape[0] // G, H_out = out_shape[2]
    if w_hh_shape[0] != G * H or H < 1 or H > INT_MAX // 8 or H_out > INT_MAX // 8:
        raise ValueError(f"w_hh must have {G}·H rows, H >= 1, got {w_hh_shape[0]}")
    _check_strides("out", out_shape, out_strides, 3, itemsize, 2)
    _check_strides("save", save_shape, save_strides, 3, itemsize, 2)
    _check_shape("w_hh", w_hh_shape, 2, (G * H, H_out))
    if proj:
        _check_shape("w_hr", w_hr_shape, 2, (H_out, H))
    elif H_out != H:
        raise ValueError(f"out must be H = {H} wide without w_hr, got {H_out}")
    cdef fr_index width = G * H + H + (H if proj else 0)
    _check_shape("save", save_shape, 3, (save_steps, out_shape[1], width))
    return 0


def cell_forward(int cell, floating[:, :, :] save not None, floating[:, :, :] out not None,
                 const floating[:, ::1] h0 not None, const floating[:, ::1] c0,
                 const floating[:, ::1] w_hh not None, const floating[::1] b_hh,
                 const floating[:, ::1] w_hr, const int64_t[::1] lengths not None,
                 bint reverse, floating[:, ::1] h_n not None, floating[:, ::1] c_n,
                 int num_threads=1, const floating[:, :, :] x=None,
                 const floating[:, ::1] w_ih=None, const floating[::1] bias=None,
                 bint bf16=False, fr_index chunk=1):
    """A gated cell's recurrence over one direction, in place.

    ``save`` (L, N, G·H + H [+ H]) holds P = x W_ihᵀ + b (gate-interleaved, see
    src_c/cell_steps.h) in its first G·H columns on entry; on return the gate activations,
    then c (LSTM) or W_hn h + b_hn (GRU), then (with ``w_hr``) m = o⊙tanh(c): what BPTT
    reads. ``out`` (L, N, H_out) receives h (zero past each length), ``h_n`` (N, H_out) and,
    for an LSTM, ``c_n`` (N, H) the states at each sequence's last step (h0, c0 for a length
    of 0); past each length ``save``'s rows are zeroed. ``w_hh`` (G·H, H_out) is in
    torch's gate order (packed gate-interleaved: ``gate_rows``); ``b_hh`` (G·H,) or None,
    gate-interleaved, is added to h W_hhᵀ (the GRU's b_hn; zero elsewhere; an LSTM has
    none: its biases are P's); an LSTM's h W_hhᵀ is accumulated onto P, k in order, by the
    product itself, a GRU's is added in its epilogue (its n gate needs it alone); ``w_hr``
    (H_out, H) is the LSTM's projection or None. ``c0``, ``c_n`` are None for a GRU. Given
    ``x`` (L, N, I) and ``w_ih`` (G·H, I) in torch's gate order (and ``bias`` (G·H,),
    gate-interleaved, or None), P_t is computed step by step into ``save`` instead, bitwise
    as ``gemm`` would, just before the step reads it (``save`` need not hold it). Then
    ``save`` may also have a time stride of 0 (one row per sequence, every step's in place:
    nothing is kept for BPTT, and the rows stay in cache). With x, ``chunk`` steps are
    projected at a time, by one product that reads W_ih once for all of them, and ``save``
    may instead be a ring of ``chunk`` rows per sequence (a time dimension of ``chunk`` <
    L: step s in slot s % chunk; nothing kept for BPTT either). The results are the same
    bits whatever ``chunk``. The split is recurrence_forward's; ``bf16`` as there.
    """
    _check_num_threads(num_threads)
    cdef const fastrnn_kernels *ks = _kernels_for(bf16, sizeof(floating))
    cdef bint lstm = cell == CELL_LSTM, proj = w_hr is not None
    if proj and not lstm:
        raise ValueError("only an LSTM has a projection (w_hr)")
    if chunk < 1 or (chunk > 1 and x is None):
        raise ValueError(f"chunk must be 1, or with x any number of steps >= 1, got {chunk}")
    # a ring of saved rows: fewer than L of them, which only a projection of x can fill
    cdef fr_index ring = chunk if (x is not None and chunk < out.shape[0]
                                   and save.shape[0] == chunk) else 0
    _check_cell(cell, save.shape, save.strides, out.shape, out.strides, w_hh.shape, proj,
                w_hr.shape if proj else NULL, sizeof(floating),
                ring if ring else out.shape[0])
    cdef int G = cell_gates(cell)
    cdef fr_index L = out.shape[0], N = out.shape[1]
    cdef int H = <int> (w_hh.shape[0] // G), H_out = <int> out.shape[2]
    _check_shape("h0", h0.shape, 2, (N, H_out))
    _check_shape("h_n", h_n.shape, 2, (N, H_out))
    if lstm:
        if c0 is None or c_n is None:
            raise ValueError("an LSTM needs c0 and c_n")
        _check_shape("c0", c0.shape, 2, (N, H))
        _check_shape("c_n", c_n.shape, 2, (N, H))
    if b_hh is not None:
        if lstm:
            raise ValueError("an LSTM's recurrent product has no bias of its own: pass "
                             "b_ih + b_hh as P's")
        _check_shape("b_hh", b_hh.shape, 1, (G * H,))
    _check_lengths(lengths, N, L)
    cdef int I = 0
    cdef fr_index xts = 0, xbs = 0
    cdef const floating *px = NULL
    cdef const floating *pbias = NULL
    if x is not None:
        if (x.shape[0] != L or x.shape[1] != N or w_ih is None or w_ih.shape[0] != G * H
                or w_ih.shape[1] != x.shape[2] or x.shape[2] > INT_MAX
                or (bias is not None and bias.shape[0] != G * H)):
            raise ValueError(
                f"x, w_ih and bias must be ({L}, {N}, I), ({G * H}, I) and ({G * H},), got "
                f"{(x.shape[0], x.shape[1], x.shape[2])}, "
                f"{None if w_ih is None else (w_ih.shape[0], w_ih.shape[1])} and "
                f"{None if bias is None else (bias.shape[0],)}")
        _check_strides("x", x.shape, x.strides, 3, sizeof(floating), 2)
        I = <int> x.shape[2]
        if L == 0 or I == 0:
            raise ValueError("x must have steps and inputs (else pass the projection in save)")
        xts = x.strides[0] // sizeof(floating)
        xbs = x.strides[1] // sizeof(floating)
        px = &x[0, 0, 0]
        pbias = &bias[0] if bias is not None else NULL
    cdef fr_index sts = save.strides[0] // sizeof(floating)
    cdef fr_index sbs = save.strides[1] // sizeof(floating)
    if N == 0:
        return
    if sts == 0 and L > 1 and px == NULL:
        raise ValueError("save with a time stride of 0 (a row per sequence, reused every step) "
                         "needs x, w_ih: P would have nowhere to wait for its step")
    if sts == 0 and L > 1 and chunk > 1:
        raise ValueError(f"save with a time stride of 0 holds one step's P at a time: chunk "
                         f"must be 1, got {chunk}")
    cdef fr_index ts = out.strides[0] // sizeof(floating), bs = out.strides[1] // sizeof(floating)
    cdef floating *po = &out[0, 0, 0] if L > 0 else NULL
    cdef floating *psv = &save[0, 0, 0] if L > 0 else NULL
    cdef const floating *ph0 = &h0[0, 0]
    cdef const floating *pc0 = &c0[0, 0] if lstm else NULL
    cdef const floating *pb = &b_hh[0] if b_hh is not None else NULL
    cdef const int64_t *plen = &lengths[0]
    cdef int cslot = G * H if lstm else 0, mslot = G * H + H
    cdef _Split sp = _split_cell(L, N, H, G, H_out, num_threads)
    cdef fr_index max_len = _max_length(plen, N)
    cdef _Part pt
    cdef fr_index part, b, t, s
    cdef int m, mc, i, team, tid, p0, p1
    cdef bint ok
    cdef int failed[1]
    failed[0] = 0
    cdef fr_spin_barrier step_barrier, pack_barrier
    step_barrier.count = step_barrier.generation = 0
    pack_barrier.count = pack_barrier.generation = 0
    cdef const floating **hprev
    cdef const floating **cprev
    cdef floating **orow
    cdef floating **srow
    cdef floating **rrow
    cdef floating **hrow
    cdef const floating **xrows
    cdef floating **xsrow
    cdef fr_index steps = min(chunk, L) if L > 0 else 1
    # W_hhᵀ (G·H columns) and W_hrᵀ (and W_ihᵀ) packed once per call by all threads; R for
    # every row
    cdef const floating *pw_hh = &w_hh[0, 0]
    cdef const floating *pw_hr = &w_hr[0, 0] if proj else NULL
    cdef floating *pw = _packed_buffer(ks, H_out, G * H, po)
    cdef floating *pwr = _packed_buffer(ks, H, H_out, po) if proj else NULL
    # the GRU's recurrent products, a row each (an LSTM's go onto P, in save)
    cdef floating *r_rows = (NULL if lstm else
                             <floating *> fr_scratch_alloc(N * G * H * sizeof(floating)))
    cdef const floating *pw_ih = &w_ih[0, 0] if px != NULL else NULL
    cdef floating *pwi = _packed_buffer(ks, I, G * H, po) if px != NULL else NULL
    cdef fr_index *gate_rows = _gate_rows(G, H)
    if (pw == NULL or (proj and pwr == NULL) or (r_rows == NULL and not lstm)
            or (px != NULL and pwi == NULL) or gate_rows == NULL):
        fr_scratch_free(pw)
        fr_scratch_free(pwr)
        fr_scratch_free(pwi)
        fr_scratch_free(r_rows)
        free(gate_rows)
        raise MemoryError("could not allocate the packed weights of the recurrence")
    # projecting one step at a time: x W_ihᵀ + b and h W_hhᵀ by one kernel, in the same tiles
    # where that pays (an LSTM's; a GRU's with bf16 products)
    cdef bint fused = px != NULL and steps == 1
    with nogil, parallel(num_threads=sp.nthreads):
        team = fr_team_size()
        tid = threadid()
        _pack_part(ks, pw_hh, H_out, H_out, G * H, True, gate_rows, pw, tid, team)
        if proj:
            _pack_part(ks, pw_hr, H, H, H_out, True, NULL, pwr, tid, team)
        if px != NULL:
            _pack_part(ks, pw_ih, I, I, G * H, True, gate_rows, pwi, tid, team)
        fr_spin_wait(&pack_barrier, team)
        hprev = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        cprev = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        # a projection's rows: x_t and the saved row of each row of `steps` steps
        xrows = <const floating **> malloc(steps * sp.slice_rows * sizeof(floating *))
        xsrow = <floating **> malloc(steps * sp.slice_rows * sizeof(floating *))
        orow = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        srow = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        rrow = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        hrow = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        try:
            ok = (hprev != NULL and cprev != NULL and orow != NULL and srow != NULL
                  and rrow != NULL and hrow != NULL and xrows != NULL and xsrow != NULL)
            if not ok:
                failed[0] = 1
            part = tid
            while part < _num_parts(sp, team):
                pt = _part(sp, part, team, N, H)
                # the projection's output columns of this part (all, for a batch slice)
                p0 = _column_start(<int> part, team, H_out) if sp.by_columns else 0
                p1 = _column_start(<int> part + 1, team, H_out) if sp.by_columns else H_out
                for s in range(max_len):
                    m = _gather_cell(s, pt.b0, pt.b1, plen, reverse, po, ts, bs, psv, sts, sbs,
                                     ring, ph0, H_out, pc0, H, G, cslot, hprev, orow, srow,
                                     cprev, r_rows, rrow) if ok else 0
                    if m == 0 and not sp.by_columns:
                        break  # the slice's sequences have all ended
                    for i in range(m):
                        hrow[i] = srow[i] + mslot if proj else orow[i]
                    if sp.by_columns:
                        _prefetch_shared_rows(hprev, m, H_out)
                    if px != NULL and not fused:
                        if s % steps == 0 and m > 0 and pt.j1 > pt.j0:
                            # P of this part's gates for this step and the chunk's next ones
                            mc = _gather_projection(s, min(s + steps, max_len), pt.b0, pt.b1,
                                                    plen, reverse, px, xts, xbs, psv, sts, sbs,
                                                    ring, xrows, xsrow)
                            kernels.input_step(ks, mc, I, G * pt.j0, G * pt.j1, xrows, pwi,
                                               pbias, xsrow)
                    elif px == NULL:  # this step's P arrives while the product runs
                        _prefetch_step(s, pt.b0, pt.b1, plen, reverse, G * (pt.j1 - pt.j0),
                                       psv + G * pt.j0, sts, sbs, NULL, 0, 0)
                    if m > 0 and pt.j1 > pt.j0:
                        # the products of this part's units' gates (an LSTM's P + h_{t-1}
                        # W_hhᵀ; a GRU's h_{t-1} W_hhᵀ + b_hh apart), then the cell
                        if fused:
                            _gather_projection(s, s + 1, pt.b0, pt.b1, plen, reverse, px, xts,
                                               xbs, psv, sts, sbs, ring, xrows, xsrow)
                        if lstm and fused:
                            kernels.rnn_input_step(ks, m, I, H_out, G * pt.j0, G * pt.j1,
                                                   xrows, pwi, pbias, hprev, srow, pw,
                                                   FR_ACT_NONE)
                        elif lstm:
                            kernels.rnn_step(ks, m, H_out, G * pt.j0, G * pt.j1, hprev,
                                             <const floating **> srow, srow, pw, FR_ACT_NONE)
                        elif fused:
                            kernels.gru_step(ks, m, I, H, G * pt.j0, G * pt.j1, xrows, pwi,
                                             pbias, srow, hprev, pw, pb, rrow)
                        else:
                            kernels.input_step(ks, m, H_out, G * pt.j0, G * pt.j1, hprev, pw,
                                               pb, rrow)
                        if lstm:
                            kernels.lstm_cell(ks, m, H, pt.j0, pt.j1, srow, cprev, hrow)
                        else:
                            kernels.gru_cell(ks, m, H, pt.j0, pt.j1, srow,
                                             <const floating **> rrow, hprev, hrow)
                    if proj:
                        if sp.by_columns:
                            fr_spin_wait(&step_barrier, team)  # h_t = m W_hrᵀ reads all of m
                        if m > 0 and p1 > p0:
                            kernels.input_step(ks, m, H, p0, p1, <const floating **> hrow, pwr,
                                               NULL, orow)
                    if sp.by_columns:
                        fr_spin_wait(&step_barrier, team)  # step s+1 reads all of h_s
                part = part + team  # (not +=: Cython would make it a reduction)
        finally:
            free(hprev)
            free(cprev)
            free(orow)
            free(srow)
            free(rrow)
            free(hrow)
            free(xrows)
            free(xsrow)
    fr_scratch_free(pw)
    fr_scratch_free(pwr)
    fr_scratch_free(pwi)
    fr_scratch_free(r_rows)
    free(gate_rows)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for the recurrence")
    for b in range(N):
        t = -1 if plen[b] == 0 else (0 if reverse else plen[b] - 1)
        memcpy(&h_n[b, 0], ph0 + b * H_out if t < 0 else po + t * ts + b * bs,
               H_out * sizeof(floating))
        if lstm:  # (in a ring, the last step's slot)
            memcpy(&c_n[b, 0], pc0 + b * H if t < 0 else
                   psv + ((plen[b] - 1) % ring if ring else t) * sts + b * sbs + cslot,
                   H * sizeof(floating))
        for t in range(plen[b], L):  # past the length: zero outputs, finite saved rows
            memset(po + t * ts + b * bs, 0, H_out * sizeof(floating))
            if not ring:
                memset(psv + t * sts + b * sbs, 0, save.shape[2] * sizeof(floating))


def cell_backward(int cell, const floating[:, :, :] save not None,
                  const floating[:, :, :] out not None,
                  const floating[:, :, :] grad_out not None,
                  const floating[:, ::1] h0 not None, const floating[:, ::1] c0,
                  const floating[:, ::1] grad_h_n not None, const floating[:, ::1] grad_c_n,
                  const floating[:, ::1] w_hh not None, const floating[:, ::1] w_hr,
                  const int64_t[::1] lengths not None, bint reverse,
                  floating[:, :, :] grad_a not None, floating[:, :, :] grad_r,
                  floating[:, :, :] grad_h not None, floating[:, ::1] grad_h0 not None,
                  floating[:, ::1] grad_c0, int num_threads=1, bint bf16=False):
    """BPTT of :func:`cell_forward` over one direction, backwards in time.

    Reads what the forward saved (``save``, ``out``) and its ``h0``, ``c0``; ``grad_out``
    (L, N, H_out) is dLoss/dh_t, ``grad_h_n``, ``grad_c_n`` those of the final states;
    ``w_hh``, ``w_hr`` are cell_forward's (W_hh in torch's gate order). Receives, zero past
    each length: ``grad_a`` (L, N, G·H), the gradient of the gates' input pre-activations
    x W_ihᵀ + b_ih (gate-interleaved); for a GRU ``grad_r``, that of h W_hhᵀ + b_hh (None for
    an LSTM: it equals grad_a; None for a GRU too keeps it in two rows of scratch, one per
    step parity: it differs from grad_a only in the n gate, by the factor r, which the
    caller may apply to grad_a later); ``grad_h`` (L, N, H_out), dLoss/dh_t (for the
    projection's gradient; without one it may have a time stride of 0, a row per sequence
    that every step reuses, as nothing reads it after its step); ``grad_h0``, ``grad_c0``
    the initial states'. The split is cell_forward's; each row's arithmetic is
    the same for any split. ``bf16`` as there.
    """
    _check_num_threads(num_threads)
    cdef const fastrnn_kernels *ks = _kernels_for(bf16, sizeof(floating))
    cdef bint lstm = cell == CELL_LSTM, proj = w_hr is not None
    if proj and not lstm:
        raise ValueError("only an LSTM has a projection (w_hr)")
    _check_cell(cell, save.shape, save.strides, out.shape, out.strides, w_hh.shape, proj,
                w_hr.shape if proj else NULL, sizeof(floating), out.shape[0])
    cdef int G = cell_gates(cell)
    cdef fr_index L = out.shape[0], N = out.shape[1]
    cdef int H = <int> (w_hh.shape[0] // G), H_out = <int> out.shape[2]
    _check_strides("grad_out", grad_out.shape, grad_out.strides, 3, sizeof(floating), 2)
    _check_shape("grad_out", grad_out.shape, 3, (L, N, H_out))
    _check_strides("grad_a", grad_a.shape, grad_a.strides, 3, sizeof(floating), 2)
    _check_shape("grad_a", grad_a.shape, 3, (L, N, G * H))
    _check_strides("grad_h", grad_h.shape, grad_h.strides, 3, sizeof(floating), 2)
    _check_shape("grad_h", grad_h.shape, 3, (L, N, H_out))
    _check_shape("h0", h0.shape, 2, (N, H_out))
    _check_shape("grad_h_n", grad_h_n.shape, 2, (N, H_out))
    _check_shape("grad_h0", grad_h0.shape, 2, (N, H_out))
    if lstm:
        if c0 is None or grad_c_n is None or grad_c0 is None:
            raise ValueError("an LSTM needs c0, grad_c_n and grad_c0")
        _check_shape("c0", c0.shape, 2, (N, H))
        _check_shape("grad_c_n", grad_c_n.shape, 2, (N, H))
        _check_shape("grad_c0", grad_c0.shape, 2, (N, H))
    if grad_r is not None:
        if lstm:
            raise ValueError("an LSTM's grad_r is its grad_a: pass None")
        _check_strides("grad_r", grad_r.shape, grad_r.strides, 3, sizeof(floating), 2)
        _check_shape("grad_r", grad_r.shape, 3, (L, N, G * H))
    _check_lengths(lengths, N, L)
    if N == 0:
        return
    cdef fr_index ts = out.strides[0] // sizeof(floating), bs = out.strides[1] // sizeof(floating)
    cdef fr_index sts = save.strides[0] // sizeof(floating)
    cdef fr_index sbs = save.strides[1] // sizeof(floating)
    cdef fr_index gts = grad_out.strides[0] // sizeof(floating)
    cdef fr_index gbs = grad_out.strides[1] // sizeof(floating)
    cdef fr_index dts = grad_a.strides[0] // sizeof(floating)
    cdef fr_index dbs = grad_a.strides[1] // sizeof(floating)
    cdef fr_index rts = grad_r.strides[0] // sizeof(floating) if grad_r is not None else 0
    cdef fr_index rbs = grad_r.strides[1] // sizeof(floating) if grad_r is not None else 0
    cdef fr_index hts = grad_h.strides[0] // sizeof(floating)
    cdef fr_index hbs = grad_h.strides[1] // sizeof(floating)
    cdef floating *po = <floating *> &out[0, 0, 0] if L > 0 else NULL
    cdef floating *psv = <floating *> &save[0, 0, 0] if L > 0 else NULL
    cdef const floating *pgo = &grad_out[0, 0, 0] if L > 0 else NULL
    cdef floating *pda = &grad_a[0, 0, 0] if L > 0 else NULL
    cdef floating *pdr = &grad_r[0, 0, 0] if L > 0 and grad_r is not None else NULL
    cdef floating *pdh = &grad_h[0, 0, 0] if L > 0 else NULL
    cdef const floating *ph0 = &h0[0, 0]
    cdef const floating *pc0 = &c0[0, 0] if lstm else NULL
    cdef const int64_t *plen = &lengths[0]
    cdef int cslot = G * H if lstm else 0, mslot = G * H + H
    cdef _Split sp = _split_cell(L, N, H, G, H_out, num_threads)
    cdef fr_index max_len = _max_length(plen, N)
    cdef _Part pt
    cdef fr_index part, b, t, s
    cdef int m, i, j, team, tid, p0, p1
    cdef bint ok
    cdef int failed[1]
    failed[0] = 0
    cdef fr_spin_barrier step_barrier, pack_barrier
    step_barrier.count = step_barrier.generation = 0
    pack_barrier.count = pack_barrier.generation = 0
    cdef const floating **hprev
    cdef const floating **cprev
    cdef floating **orow
    cdef floating **srow
    cdef floating **unused
    cdef const floating **dy
    cdef floating **dh
    cdef floating **gr
    cdef floating **da
    cdef floating **dr
    cdef floating **dc
    cdef floating **dm
    cdef const floating *dyr
    cdef floating *dhr
    cdef floating *grr
    # W_hh (G·H rows) and W_hr packed once per call by all threads, not transposed: the
    # products are dR · W_hh and dh · W_hr. g (N, H_out), dc and dm (N, H): a row each.
    cdef const floating *pw_hh = &w_hh[0, 0]
    cdef const floating *pw_hr = &w_hr[0, 0] if proj else NULL
    cdef floating *pw = _packed_buffer(ks, G * H, H_out, pda)
    cdef floating *pwr = _packed_buffer(ks, H_out, H, pda) if proj else NULL
    cdef floating *g = <floating *> fr_scratch_alloc(N * H_out * sizeof(floating))
    cdef floating *dcs = <floating *> fr_scratch_alloc(N * H * sizeof(floating) + 1)
    cdef floating *dms = <floating *> fr_scratch_alloc(N * H * sizeof(floating) + 1)
    # a GRU's dR without grad_r: read only within its step, so two rows per sequence do (a
    # column split's threads may still read step s's while writing step s + 1's)
    cdef bint dr_scratch = not lstm and grad_r is None
    cdef floating *drs = (<floating *> fr_scratch_alloc(2 * N * G * H * sizeof(floating))
                          if dr_scratch else NULL)
    cdef fr_index *gate_rows = _gate_rows(G, H)
    if (pw == NULL or (proj and pwr == NULL) or g == NULL or dcs == NULL or dms == NULL
            or (dr_scratch and drs == NULL) or gate_rows == NULL):
        fr_scratch_free(pw)
        fr_scratch_free(pwr)
        fr_scratch_free(g)
        fr_scratch_free(dcs)
        fr_scratch_free(dms)
        fr_scratch_free(drs)
        free(gate_rows)
        raise MemoryError("could not allocate BPTT scratch")
    memcpy(g, &grad_h_n[0, 0], N * H_out * sizeof(floating))
    if lstm:
        memcpy(dcs, &grad_c_n[0, 0], N * H * sizeof(floating))
    with nogil, parallel(num_threads=sp.nthreads):
        team = fr_team_size()
        tid = threadid()
        _pack_part(ks, pw_hh, H_out, G * H, H_out, False, gate_rows, pw, tid, team)
        if proj:
            _pack_part(ks, pw_hr, H, H_out, H, False, NULL, pwr, tid, team)
        fr_spin_wait(&pack_barrier, team)
        hprev = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        cprev = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        orow = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        srow = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        unused = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        dy = <const floating **> malloc(sp.slice_rows * sizeof(floating *))
        dh = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        gr = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        da = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        dr = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        dc = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        dm = <floating **> malloc(sp.slice_rows * sizeof(floating *))
        try:
            ok = (hprev != NULL and cprev != NULL and orow != NULL and srow != NULL
                  and unused != NULL and dy != NULL and dh != NULL and gr != NULL
                  and da != NULL and dr != NULL and dc != NULL and dm != NULL)
            if not ok:
                failed[0] = 1
            part = tid
            while part < _num_parts(sp, team):
                pt = _part(sp, part, team, N, H)
                p0 = _column_start(<int> part, team, H_out) if sp.by_columns else 0
                p1 = _column_start(<int> part + 1, team, H_out) if sp.by_columns else H_out
                for s in range(max_len - 1, -1, -1):
                    m = _gather_cell(s, pt.b0, pt.b1, plen, reverse, po, ts, bs, psv, sts, sbs,
                                     0, ph0, H_out, pc0, H, G, cslot, hprev, orow, srow,
                                     cprev, NULL, unused) if ok else 0
                    if m == 0 and not sp.by_columns:
                        continue  # no sequence of the slice has reached step s yet
                    b = 0
                    for i in range(m):  # the rows' gradients, by time step and batch row
                        while plen[pt.b0 + b] <= s:
                            b = b + 1
                        t = plen[pt.b0 + b] - 1 - s if reverse else s
                        dy[i] = pgo + t * gts + (pt.b0 + b) * gbs
                        dh[i] = pdh + t * hts + (pt.b0 + b) * hbs
                        da[i] = pda + t * dts + (pt.b0 + b) * dbs
                        if lstm:
                            dr[i] = da[i]
                        elif dr_scratch:
                            dr[i] = drs + ((s & 1) * N + pt.b0 + b) * G * H
                        else:
                            dr[i] = pdr + t * rts + (pt.b0 + b) * rbs
                        gr[i] = g + (pt.b0 + b) * H_out
                        dc[i] = dcs + (pt.b0 + b) * H
                        dm[i] = dms + (pt.b0 + b) * H if proj else dh[i]
                        dyr, dhr, grr = dy[i], dh[i], gr[i]
                        for j in range(p0, p1):
                            dhr[j] = dyr[j] + grr[j]  # dLoss/dh_t
                        b = b + 1
                    if proj:
                        if sp.by_columns:
                            fr_spin_wait(&step_barrier, team)  # dm = dh W_hr reads all of dh
                        if m > 0 and pt.j1 > pt.j0:
                            kernels.input_step(ks, m, H_out, pt.j0, pt.j1,
                                               <const floating **> dh, pwr, NULL, dm)
                    if m > 0 and pt.j1 > pt.j0:
                        if lstm:
                            kernels.lstm_cell_grad(ks, m, H, pt.j0, pt.j1,
                                                   <const floating **> dm,
                                                   <const floating **> srow, cprev, dc, da)
                        else:
                            kernels.gru_cell_grad(ks, m, H, pt.j0, pt.j1, dh,
                                                  <const floating **> srow, hprev, da, dr)
                    if sp.by_columns:
                        fr_spin_wait(&step_barrier, team)  # g = dR W_hh reads all of dR
                        _prefetch_shared_rows(<const floating **> dr, m, G * H)
                    if m > 0 and p1 > p0:
                        kernels.input_step(ks, m, G * H, p0, p1, <const floating **> dr, pw,
                                           NULL, gr)
                        if not lstm:  # + dh ⊙ z, the path around W_hh
                            for i in range(m):
                                dhr, grr = dh[i], gr[i]
                                for j in range(p0, p1):
                                    grr[j] = grr[j] + dhr[j]
                part = part + team  # (not +=: Cython would make it a reduction)
        finally:
            free(hprev)
            free(cprev)
            free(orow)
            free(srow)
            free(unused)
            free(dy)
            free(dh)
            free(gr)
            free(da)
            free(dr)
            free(dc)
            free(dm)
    fr_scratch_free(pw)
    fr_scratch_free(pwr)
    free(gate_rows)
    if not failed[0]:
        memcpy(&grad_h0[0, 0], g, N * H_out * sizeof(floating))
        if lstm:
            memcpy(&grad_c0[0, 0], dcs, N * H * sizeof(floating))
    fr_scratch_free(g)
    fr_scratch_free(dcs)
    fr_scratch_free(dms)
    fr_scratch_free(drs)
    if failed[0]:
        raise MemoryError("could not allocate per-thread scratch for BPTT")
    for b in range(N):  # the steps each sequence ran are written; the rest are 0
        for t in range(plen[b], L):
            memset(pda + t * dts + b * dbs, 0, G * H * sizeof(floating))
            memset(pdh + t * hts + b * hbs, 0, H_out * sizeof(floating))
            if pdr != NULL:
                memset(pdr + t * rts + b * rbs, 0, G * H * sizeof(floating))


def gru_recurrent_side(floating[:, :, :] grad_a not None, const floating[:, :, :] save not None,
                       int num_threads=1):
    """A GRU's dR (the gradient of h W_hhᵀ + b_hh) from its dA, in place in ``grad_a``
    (L, N, 3H, gate-interleaved): they differ only in the n gate, where dR_n = dA_n ⊙ r, r
    from ``save`` (L, N, ≥ 3H) as cell_forward left it; the product cell_backward forms for
    ``grad_r``. For BPTT without an (L, N, 3H) array of dR: after dX has read dA."""
    _check_num_threads(num_threads)
    cdef fr_index L = grad_a.shape[0], N = grad_a.shape[1]
    cdef int H = <int> (grad_a.shape[2] // 3)
    if (grad_a.shape[2] != 3 * H or save.shape[0] != L or save.shape[1] != N
            or save.shape[2] < 3 * H):
        raise ValueError(f"grad_a must be (L, N, 3H) and save (L, N, >= 3H), got "
                         f"{tuple(grad_a.shape[i] for i in range(3))} and "
                         f"{tuple(save.shape[i] for i in range(3))}")
    _check_strides("grad_a", grad_a.shape, grad_a.strides, 3, sizeof(floating), 2)
    _check_strides("save", save.shape, save.strides, 3, sizeof(floating), 2)
    if L == 0 or N == 0 or H == 0:
        return
    cdef fr_index row
    cdef int jb, w, u
    cdef floating *dn
    cdef const floating *r
    num_threads = threads_for(<double> L * N * H, num_threads)
    for row in prange(L * N, nogil=True, num_threads=num_threads, schedule="static"):
        dn = &grad_a[row // N, row % N, 0]
        r = &save[row // N, row % N, 0]
        jb = 0
        while jb < H:  # each block of units: r at 3·jb, n at 3·jb + 2w
            w = min(FASTRNN_COLUMN_GRANULE, H - jb)
            for u in range(w):
                dn[2 * w + u] = dn[2 * w + u] * r[u]
            dn = dn + 3 * w
            r = r + 3 * w
            jb = jb + FASTRNN_COLUMN_GRANULE
