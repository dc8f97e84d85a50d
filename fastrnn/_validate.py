"""Argument checks shared by fastrnn's modules, layers, data helpers and optimizers: one rule
per kind of argument, with torch's wording, so that every entry point refuses the same
things the same way (and never truncates, wraps around or broadcasts silently)."""

import math
import numbers
import operator

import numpy as np

def _check_int(value, name, low=None, high=None):
    """``value`` as a Python int, refusing what is not an integer (torch's rules).

    Python and NumPy integers (and 0-d integer arrays) are accepted; bools, floats (even
    whole ones: ``2.0``), strings and None raise TypeError, since ``int()`` would truncate
    them silently. ``low <= value < high`` (either bound optional) or ValueError.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} should be of type int, got: bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}") from None
    if (low is not None and value < low) or (high is not None and value >= high):
        want = (f"in [{low}, {high})" if low is not None and high is not None
                else f">= {low}" if low is not None else f"< {high}")
        raise ValueError(f"{name} must be {want}, got {value}")
    return value


def _check_size(value, name, allow_zero=False):
    """A size: a positive (or, with ``allow_zero``, non-negative) int; see :func:`_check_int`."""
    value = _check_int(value, name)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'greater than zero'}"
                         f", got {value}")
    return value


def _check_real(value, name, low=None, allow_inf=False):
    """``value`` as a float: a real number (not a bool or a string), not NaN, ``>= low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} should be a real number, got: {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf) or (
            low is not None and value < low):
        want = "a finite number" if not allow_inf else "a number"
        raise ValueError(f"{name} must be {want}{'' if low is None else f' >= {low}'}, "
                         f"got {value}")
    return value


def _check_indices(values, name, high, ignore=None, is_out=None):
    """``values`` as a contiguous int64 array of indices in ``[0, high)`` (or ``== ignore``).

    ``is_out`` ends the error message ("{name} {value} is {is_out}").

    Only integer dtypes are accepted (TypeError otherwise). The range is checked on the
    original values, before the cast to int64, so that a uint64 value of 2**64 - 100 cannot
    wrap around to -100 (an ``ignore_index``, say); out of range raises IndexError, as
    torch's indexing does.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {values.dtype}")
    if values.size:
        valid = (values >= 0) & (values < high)
        if ignore is not None:
            valid |= values == ignore
        if not valid.all():
            raise IndexError(f"{name} {values[~valid].flat[0]} is "
                             f"{is_out or f'out of range [0, {high})'}")
    return np.ascontiguousarray(values, dtype=np.int64)


def _check_dtype(dtype):
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype!r}") from e
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype}")
    return dtype


def _check_grad_output(grad, shape, dtype, name="grad_output"):
    """``grad`` as an array of exactly ``shape`` and ``dtype`` (nothing cast, nothing
    broadcast: torch refuses a gradient whose dtype or shape differs from its tensor's)."""
    grad = np.asarray(grad)
    if grad.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (that of the output), got {grad.dtype}")
    if grad.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {grad.shape}")
    return grad


def _checked_grad(p, name="parameter", kernel=False):
    """``p.grad`` once checked to be an array of ``p.data``'s shape and dtype (``p.grad`` is
    a plain attribute: anything may have been assigned to it), and with ``kernel`` also
    writeable and C-contiguous, as the compiled kernels that accumulate into it need."""
    g = p.grad
    if not isinstance(g, np.ndarray):
        raise TypeError(f"the gradient of {name} must be a NumPy array, got "
                        f"{type(g).__name__}")
    if g.shape != p.data.shape or g.dtype != p.data.dtype:
        raise ValueError(f"the gradient of {name} must have the parameter's shape {p.data.shape}"
                         f" and dtype {p.data.dtype}, got {g.shape} {g.dtype}")
    if kernel and not (g.flags.c_contiguous and g.flags.writeable):
        raise ValueError(f"the gradient of {name} must be a writeable C-contiguous array")
    return g


def _as_rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
