# The GEMM entry points and the weights' packing by a team (included by _rnn.pyx).

def gemm(const floating[:, :] a, const floating[:, :] b, floating[:, :] c,
         const floating[::1] bias=None, bint accumulate=False, int num_threads=1,
         bint a_trans=False, floating[::1] a_sums=None, bint bf16=False, gate_layout=None,
         c_gate_layout=None):
    """c = (c if accumulate else 0) + op(a) @ b + bias, op(a) = a.T if a_trans else a.

    ``b`` may be a transposed view (``w.T`` of a row-major ``w``): it is packed from there,
    with no transposed copy. Each thread computes a block of c's rows and packs the blocks
    of a it needs itself; b's blocks too (no barrier), except with ``a_trans``: in a weight
    gradient (K long, c small) every thread would pack all of b, so the threads share that
    packing, meeting once per block. With ``a_trans``, ``a_sums`` (if given) receives
    op(a).sum(axis=1), each sum in row order of ``a``, from the one reading of ``a`` (a
    bias gradient next to a weight gradient). ``bf16``: the product's operands are rounded
    to bfloat16 (float32 arrays; a_sums, bias and the sums stay float32).

    A gated cell's weights in torch's gate order, without a reordered copy (the kernels lay
    the gates out interleaved, ``gate_rows``): ``gate_layout`` (gates, hidden_size, axis),
    not with ``a_trans``: b's axis ``axis`` (0: its rows, as of ``w``; 1: its columns, as of
    ``w.T``) runs over blocks of gates·hidden_size in torch's order, read gate-interleaved
    within each block. ``c_gate_layout`` (gates, hidden_size): the product's rows, blocks
    of gates·hidden_size gate-interleaved (a weight gradient dAᵀX), are written to c's rows
    in torch's order (a_sums stays in the product's order).
    """
    _check_num_threads(num_threads)
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
    cdef const fastrnn_kernels *ks = _kernels_for(bf16, sizeof(floating))
    if M == 0:
        return
    cdef fr_index lda = _row_stride(a.shape, a.strides, sizeof(floating), "a")
    cdef int gates = 0, hidden = 0, gate_axis = 0
    cdef bint b_trans
    if gate_layout is not None:
        if a_trans:
            raise ValueError("gate_layout is not supported with a_trans")
        gates, hidden, gate_axis = gate_layout
        if gate_axis not in (0, 1):
            raise ValueError(f"gate_layout's axis must be 0 or 1, got {gate_axis}")
        # the gates' axis is the one along b's stored rows, which pack reorders
        b_trans = gate_axis == 1
    else:
        # b's columns contiguous (b_trans) and its rows not: read it as bᵀ stored row-major
        b_trans = (b.shape[1] > 1 and b.strides[1] != sizeof(floating)
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
    num_threads = threads_for(<double> (M if a_trans else max(M, MIN_ROWS_GEMM_WORK)) * N * K,
                              num_threads)
    cdef fr_index tile_rows = _slice_rows(M, num_threads)
    cdef fr_index ntiles = (M + tile_rows - 1) // tile_rows
    cdef fr_index i0, rows, a_step = 1 if a_trans else lda
    cdef int failed[1]
    failed[0] = 0
    cdef fr_spin_barrier team_barrier
    cdef floating *shared
    cdef int team
    cdef fr_index *c_rows = NULL
    cdef fr_index *b_rows = NULL
    if c_gate_layout is not None:
        c_rows = _blocked_gate_rows(c_gate_layout[0], c_gate_layout[1], M)
    if gate_layout is not None:
        try:
            b_rows = _blocked_gate_rows(gates, hidden, N if b_trans else K)
        except BaseException:
            free(c_rows)
            raise
    if a_trans and num_threads > 1:
        team_barrier.count = team_barrier.generation = 0
        shared = <floating *> fr_scratch_alloc(
            kernels.gemm_team_size(ks, K, N, pc) * sizeof(floating))
        if shared == NULL:
            free(c_rows)
            raise MemoryError("could not allocate GEMM scratch")
        with nogil, parallel(num_threads=num_threads):
            team = fr_team_size()
            if kernels.gemm_at_team(ks, M, N, K, pa, lda, pb, ldb, b_trans, pc, ldc, c_rows,
                                    pbias, accumulate, psums, threadid(), team, shared,
                                    fr_team_barrier, &team_barrier) != 0:
                failed[0] = 1
        fr_scratch_free(shared)
        free(c_rows)
        if failed[0]:
            raise MemoryError("could not allocate GEMM scratch")
        return
    # a few rows each of a large b: split c's columns instead, so that each thread packs only
    # its part of b (a column's sums are the same wherever the split falls)
    cdef double b_elements = <double> K * N
    cdef bint by_columns = (
        not a_trans and num_threads > 1 and N >= num_threads * FASTRNN_COLUMN_GRANULE
        and (tile_rows < (MIN_ROWS_GEMM_ROW_SPLIT_TRANSPOSED_B if b_trans
                          else MIN_ROWS_GEMM_ROW_SPLIT)
             and b_elements >= MIN_ELEMENTS_GEMM_COLUMN_SPLIT
             or tile_rows <= MAX_ROWS_GEMM_COLUMN_SPLIT_SMALL_B
             and b_elements >= MIN_ELEMENTS_GEMM_COLUMN_SPLIT_SMALL_B))
    cdef fr_index columns = _column_start(1, num_threads, <int> N) if by_columns else N
    cdef fr_index part, j0, b_offset
    for part in prange(num_threads if by_columns else ntiles, nogil=True,
                       num_threads=num_threads, schedule="static"):
        if by_columns:
            j0 = part * columns
            # column j0 of op(b): b's stored row j0 (or b_rows[j0]) if b_trans, else column j0
            b_offset = 0 if K == 0 or (b_trans and b_rows != NULL) else (
                j0 * ldb if b_trans else j0)
            if j0 < N and kernels.gemm(
                    ks, M, min(columns, N - j0), K, pa, lda, False, pb + b_offset, ldb,
                    b_trans, b_rows + j0 if b_trans and b_rows != NULL else b_rows, pc + j0,
                    ldc, c_rows, pbias + j0 if pbias != NULL else NULL, accumulate,
                    NULL) != 0:
                failed[0] = 1
        else:
            i0 = part * tile_rows
            rows = min(tile_rows, M - i0)
            if kernels.gemm(ks, rows, N, K, pa + i0 * a_step, lda, a_trans, pb, ldb, b_trans,
                            b_rows, pc if c_rows != NULL else pc + i0 * ldc, ldc,
                            c_rows + i0 if c_rows != NULL else NULL, pbias, accumulate,
                            psums + i0 if psums != NULL else NULL) != 0:
                failed[0] = 1
    free(b_rows)
    free(c_rows)
    if failed[0]:
        raise MemoryError("could not allocate GEMM scratch")


def weight_grads(const floating[:, ::1] da, const floating[:, :] x,
                 const floating[:, :, :] out, const floating[:, :, ::1] h0,
                 const int64_t[::1] lengths, floating[:, ::1] dw_ih, floating[:, ::1] dw_hh,
                 floating[::1] db=None, int num_threads=1, bint bf16=False,
                 c_gate_layout=None):
    """A layer's weight gradients from one reading of its dA, (L·N, D·W) (D = 1, or 2 with
    direction 1 run backward in time; W = H, or a gated cell's G·H): ``dw_ih`` = dAᵀ X,
    ``dw_hh`` = each direction's dA_dᵀ H_prev stacked (D·W, H), ``db`` (if given) = dA
    summed over rows.

    ``x`` is the layer's input (L·N, I); ``out`` its output (L, N, D·H), from which, with
    ``h0`` (D, N, H) and ``lengths``, come the states before each step: h_{t-1} forward,
    h_{t+1} in reverse, h0 where a sequence starts. Each thread takes a slice of the D·W
    rows; they share the packing of X, and copy each block of dA once for both products.
    Every element is a sum in row order: the same bits for any thread count. ``bf16``: the
    products' operands rounded to bfloat16 (``db`` stays a float32 sum).
    ``c_gate_layout`` (gates, hidden_size): dA's columns are a gated cell's gates,
    gate-interleaved in each direction's block of W = gates·hidden_size (the kernels'
    order); the gradients' rows are written in torch's order (``db`` stays in dA's).
    """
    _check_num_threads(num_threads)
    cdef const fastrnn_kernels *ks = _kernels_for(bf16, sizeof(floating))
    cdef fr_index K = da.shape[0], M = da.shape[1], I = x.shape[1]
    cdef fr_index L = out.shape[0], N = out.shape[1], D = h0.shape[0], H = h0.shape[2]
    cdef fr_index W = H if c_gate_layout is None else c_gate_layout[0] * c_gate_layout[1]
    if (D not in (1, 2) or M != D * W or out.shape[2] != D * H or K != L * N
            or x.shape[0] != K or h0.shape[1] != N or lengths.shape[0] != N
            or dw_ih.shape[0] != M or dw_ih.shape[1] != I or dw_hh.shape[0] != M
            or dw_hh.shape[1] != H or (db is not None and db.shape[0] != M)):
        raise ValueError(
            f"weight_grads shapes do not match: da ({K}, {M}), x ({x.shape[0]}, {I}), out "
            f"({L}, {N}, {out.shape[2]}), h0 ({D}, {h0.shape[1]}, {H}), lengths "
            f"({lengths.shape[0]},), dw_ih ({dw_ih.shape[0]}, {dw_ih.shape[1]}), dw_hh "
            f"({dw_hh.shape[0]}, {dw_hh.shape[1]}), db "
            f"{None if db is None else (db.shape[0],)}, {W} columns of da per direction")
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
    cdef floating *pdw_ih = &dw_ih[0, 0]
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
    num_threads = threads_for(<double> K * M * (I + H), num_threads)
    cdef floating *shared = <floating *> fr_scratch_alloc(
        (kernels.gemm_team_size(ks, K, I, pdw_ih) + kernels.gemm_team_size(ks, K, H, pdw_ih))
        * sizeof(floating))
    if shared == NULL:
        free(hprev)
        raise MemoryError("could not allocate weight-gradient scratch")
    cdef fr_index *c_rows = NULL
    if c_gate_layout is not None:
        try:
            c_rows = _blocked_gate_rows(c_gate_layout[0], c_gate_layout[1], M)
        except BaseException:
            fr_scratch_free(shared)
            free(hprev)
            raise
    cdef fr_spin_barrier team_barrier
    team_barrier.count = team_barrier.generation = 0
    cdef int team
    cdef int failed[1]
    failed[0] = 0
    with nogil, parallel(num_threads=num_threads):
        team = fr_team_size()
        if kernels.weight_grads_at_team(ks, M, K, W, H, &da[0, 0], M, px, ldx, I, hprev,
                                        pdw_ih, &dw_hh[0, 0], c_rows, pdb, threadid(), team,
                                        shared, fr_team_barrier, &team_barrier) != 0:
            failed[0] = 1
    fr_scratch_free(shared)
    free(hprev)
    free(c_rows)
    if failed[0]:
        raise MemoryError("could not allocate weight-gradient scratch")


cdef floating *_packed_buffer(const fastrnn_kernels *ks, fr_index K, fr_index N,
                             floating *like) noexcept nogil:
    """Room for a K×N matrix packed for the step kernels (fr_scratch_free it); NULL if out of
    memory. ``like`` only selects the type."""
    return <floating *> fr_scratch_alloc(kernels.packed_size(ks, K, N, like) * sizeof(floating))


cdef void _pack_part(const fastrnn_kernels *ks, const floating *w, fr_index ld, fr_index K,
                     fr_index N, bint transpose, const fr_index *rows, floating *packed,
                     int part, int parts) noexcept nogil:
    """Share ``part`` of ``parts`` of packing op(W) (K×N) into ``packed``: a contiguous run
    of its panels, so that the threads of a region pack the weights together, each its own
    share, before a barrier (one thread alone would leave the others idle meanwhile).
    W is row-major with row stride ld: K×N, or N×K read transposed if transpose; ``rows``
    (or NULL) reorders its stored rows as kernels.pack does."""
    cdef fr_index panel = kernels.packed_size(ks, 1, 1, packed)
    cdef fr_index panels = (N + panel - 1) // panel
    cdef fr_index j0 = panels * part // parts * panel
    cdef fr_index j1 = min(N, panels * (part + 1) // parts * panel)
    if j1 <= j0:
        return
    # columns j0 .. start where j0's columns of K take in the layout (bf16 packs pairs of K)
    if transpose:  # columns j0 .. of op(W): W's (stored) rows j0 ..
        if rows != NULL:
            rows = rows + j0
        else:
            w = w + j0 * ld
    else:
        w = w + j0
    kernels.pack(ks, K, j1 - j0, w, ld, transpose, rows,
                 packed + kernels.packed_size(ks, K, j0, packed))
