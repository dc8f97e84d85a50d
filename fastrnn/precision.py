"""The precision of matrix products: float32, or bfloat16 operands with float32 sums.

With ``"bfloat16"`` every matrix product of a float32 forward and backward (x W_ihᵀ,
h W_hhᵀ, m W_hrᵀ, and backward dA W_ih, dAᵀ X, dRᵀ H_prev, dR W_hh, dh W_hr, dhᵀ M) rounds
both operands to bfloat16 (to nearest, ties to even) and sums the products in float32.
Biases, the gates' activations, the LSTM's c, h as kept between steps, the gradients and
the parameters stay float32. On CPUs with AVX512_BF16 the products run on ``vdpbf16ps`` (two
multiply-adds per float32 lane); elsewhere the operands are rounded for the float32 kernels
(the same rounding, no speed-up). Only float32 computations are affected: a float64 module
ignores the process default and refuses an explicit ``precision="bfloat16"``.
"""

import os

import numpy as np

__all__ = ["set_matmul_precision", "get_matmul_precision"]

PRECISIONS = ("float32", "bfloat16")
_default = "float32"
# the environment variable sets the default at import (as FASTRNN_KERNEL the kernel build)
ENV = "FASTRNN_MATMUL_PRECISION"


def _check(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"matmul precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def set_matmul_precision(precision):
    """Set the process default for float32 matrix products: ``"float32"`` (the default) or
    ``"bfloat16"``. Modules and functional calls made with ``precision=None`` follow it when
    they run (a stream keeps the precision it was made with), as torch's
    ``set_float32_matmul_precision``. The environment variable ``FASTRNN_MATMUL_PRECISION``
    sets it at import."""
    global _default
    _default = _check(precision)


def get_matmul_precision():
    """The process default for float32 matrix products: ``"float32"`` or ``"bfloat16"``."""
    return _default


def check_precision(precision):
    """``precision`` if None or a valid name; else ValueError naming the valid ones."""
    return precision if precision is None else _check(precision)


def resolve(precision, dtype):
    """Whether a computation in ``dtype`` with ``precision`` (None: the process default)
    takes bfloat16 products. float64 follows no default, and an explicit bfloat16 is an
    error for it."""
    if precision is None:
        return _default == "bfloat16" and np.dtype(dtype) == np.float32
    if _check(precision) == "bfloat16" and np.dtype(dtype) != np.float32:
        raise ValueError(f"precision='bfloat16' computes float32 arrays, got {np.dtype(dtype)}"
                         " (use float32 parameters and inputs, or precision='float32')")
    return precision == "bfloat16"


if os.environ.get(ENV):
    set_matmul_precision(os.environ[ENV])
