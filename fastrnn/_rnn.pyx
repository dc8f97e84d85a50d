# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled loops of fastrnn: the time-step recurrence, the BPTT loop and tiled GEMMs.

Everything here runs without the GIL, OpenMP over the batch (recurrences) or over
output row tiles (GEMMs). Inputs are validated and allocated by ``fastrnn.functional``;
this module only checks what it must to stay memory-safe.

Each row of every result is computed by the same arithmetic however the rows are split
across threads, so results are bitwise identical for any thread count.

One extension module (the C kernels are linked once), by topic in include files:
_checks.pxi (argument checks), _policy.pxi (thread counts, the recurrences' split, the
projection's placement), _gemm.pxi (GEMM and weight-gradient entry points, packing by a
team), _recurrence.pxi (the forward and BPTT recurrences of the Elman cell), _cells.pxi
(the gated cells' recurrences on the same parts), _stream.pxi (a network run step by step,
its state kept between calls). The kernels' ABI and their
dtype-generic wrappers are in _kernels.pxd.
"""

from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport calloc, free, malloc
from libc.limits cimport INT_MAX
from libc.stdint cimport int64_t
from libc.string cimport memcmp, memcpy, memset

from cpython.pycapsule cimport PyCapsule_GetPointer

from fastrnn._kernels cimport (FASTRNN_COLUMN_GRANULE, FR_ACT_NONE, FR_ACT_RELU, FR_ACT_TANH,
                               FR_COMPILER, FR_OPENMP_ENABLED, FR_OPENMP_VERSION,
                               fastrnn_kernels, fastrnn_kernels_available,
                               fastrnn_kernels_compiled, floating, fr_aligned_alloc,
                               fr_aligned_free, fr_gate_rows, fr_index, fr_prefetch,
                               fr_scratch_alloc, fr_scratch_free, fr_scratch_functions,
                               fr_set_scratch, fr_spin_barrier, fr_spin_wait, fr_team_barrier,
                               fr_team_size)
from fastrnn cimport _kernels as kernels
from ._memory import scratch_capsule

# the kernels' per-call scratch from the block cache (src_c/aligned_memory.h says why)
fr_set_scratch(<const fr_scratch_functions *> PyCapsule_GetPointer(
    scratch_capsule, b"fastrnn._memory.scratch"))

cdef const fastrnn_kernels *_selected
# The selected build with its bf16 table as f32: the loops' kernels for bfloat16 products
cdef fastrnn_kernels _selected_bf16


cdef void _select(const fastrnn_kernels *build) noexcept:
    global _selected, _selected_bf16
    _selected = build
    _selected_bf16 = build[0]
    _selected_bf16.f32 = build.bf16


_select(fastrnn_kernels_available()[0])


cdef const fastrnn_kernels *_kernels_for(bint bf16, size_t itemsize) except NULL:
    """The kernels of a call: the selected build's, with bfloat16 products if ``bf16``
    (float32 arrays only)."""
    if not bf16:
        return _selected
    if itemsize != 4:
        raise TypeError("bfloat16 matrix products need float32 arrays, got float64")
    return &_selected_bf16


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
    cdef const fastrnn_kernels **table = fastrnn_kernels_available()
    cdef int i = 0
    while table[i] != NULL:
        if table[i].name.decode() == name:
            _select(table[i])
            return
        i += 1
    raise ValueError(f"kernel {name!r} is not available on this CPU; "
                     f"expected one of {available_kernels()}")


def selected_kernels():
    """Name of the kernel build in use."""
    return _selected.name.decode()


include "_checks.pxi"
include "_policy.pxi"
include "_gemm.pxi"
include "_recurrence.pxi"
include "_cells.pxi"
include "_stream.pxi"
