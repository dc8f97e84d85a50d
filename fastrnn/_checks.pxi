# Argument checks of the compiled entry points (included by _rnn.pyx).
#
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


def check_lengths(const int64_t[::1] lengths, fr_index N, fr_index L):
    """Refuse (ValueError) lengths that are not N values in [0, L]: a cache's, in one pass
    rather than NumPy's min and max."""
    _check_lengths(lengths, N, L)


cdef inline fr_index _row_stride(Py_ssize_t *shape, Py_ssize_t *strides, size_t itemsize,
                                 str name) except -1:
    """Leading dimension, in elements, of a 2-D view whose rows are contiguous."""
    _check_strides(name, shape, strides, 2, itemsize, 1)
    return strides[0] // itemsize


cdef inline int _check_num_threads(int n_threads) except -1:
    """Refuse a thread count below 1 (the Python layer resolves None and negatives)."""
    if n_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {n_threads}")
    return 0
