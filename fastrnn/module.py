"""The module machinery every fastrnn layer, model and recurrent network is built on:
:class:`Parameter` (an array and its gradient), :func:`new_parameter` (how a module creates
one, so that :func:`parameter_shapes` can build a module without allocating), and
:class:`Module` (parameters and sub-modules by attribute, modes, state dicts)."""

import contextvars
import math
import sys

import numpy as np

from . import _rnn

__all__ = ["Parameter", "Module", "new_parameter", "parameter_shapes"]


class Parameter:
    """A parameter array and its accumulated gradient (both NumPy arrays of one shape).

    ``version`` counts the changes fastrnn knows of: assigning ``data``, an optimizer's step,
    ``load_state_dict``, and :meth:`mark_changed`. What keeps packed copies of the weights (a
    :class:`fastrnn.Stream`) compares it before each step. Writing into the array by hand
    (``p.data[...] = w``) is invisible to it: call ``p.mark_changed()`` afterwards.
    """

    __slots__ = ("_data", "grad", "_version")

    def __init__(self, data):
        self._data = data
        self._version = 0
        self.grad = np.zeros_like(data)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = value
        self.mark_changed()

    @property
    def version(self):
        """How many changes of ``data`` fastrnn has been told of."""
        return self._version

    def mark_changed(self):
        """Record that ``data`` changed in place (streams repack their weights)."""
        self._version += 1
        _rnn.note_weights_changed()

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


# set while parameter_shapes() builds a module: parameters are placeholders then
_MEASURING_SHAPES = contextvars.ContextVar("fastrnn_measuring_shapes", default=False)


def new_parameter(shape, dtype, fill):
    """A Parameter of ``shape`` and ``dtype`` holding ``fill(shape)`` (any float array).

    Every layer creates its parameters here, so that :func:`parameter_shapes` can build a
    module without allocating them.
    """
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
    if _MEASURING_SHAPES.get():
        placeholder = np.broadcast_to(np.zeros((), dtype), shape)  # no memory of that size
        p = Parameter.__new__(Parameter)
        p._data = p.grad = placeholder
        p._version = 0
        return p
    if math.prod(shape) * dtype.itemsize > sys.maxsize:
        raise MemoryError(f"a parameter of shape {shape} needs more memory than this machine "
                          "can address")
    return Parameter(np.asarray(fill(shape), dtype=dtype))


def parameter_shapes(build):
    """``{name: shape}`` of the parameters of the module ``build()`` returns, allocating none.

    Lets a loader compare what a file's configuration implies with what the file holds before
    it allocates anything the configuration asks for.
    """
    token = _MEASURING_SHAPES.set(True)
    try:
        module = build()
    finally:
        _MEASURING_SHAPES.reset(token)
    return {name: p.shape for name, p in module.named_parameters()}


def _is_module(value):
    return callable(getattr(value, "named_parameters", None)) and callable(
        getattr(value, "train", None))


class Module:
    """Base of fastrnn's layers and models: parameters, sub-modules, modes, state dicts.

    Assigning a :class:`~fastrnn.Parameter` to an attribute registers it as a parameter;
    assigning anything with ``named_parameters()`` and ``train()`` (a layer, a model,
    :class:`fastrnn.RNN`) registers it as a sub-module. Names are dotted as in torch:
    ``embedding.weight``, ``rnn.weight_ih_l0``, ``decoder.bias``.
    """

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        params, modules = self.__dict__.get("_params"), self.__dict__.get("_modules")
        if params is None:
            raise AttributeError("Module.__init__() must be called before assigning attributes")
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
            _rnn.note_weights_changed()  # a stream of this module checks its parameters
        elif _is_module(value):
            modules[name] = value
            _rnn.note_weights_changed()
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        if name in d.get("_params", ()):
            return d["_params"][name]
        if name in d.get("_modules", ()):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # parameters --------------------------------------------------------------------------
    def named_parameters(self):
        """Yield (dotted name, Parameter): own parameters first, then each sub-module's."""
        yield from self._params.items()
        for prefix, module in self._modules.items():
            for name, p in module.named_parameters():
                yield f"{prefix}.{name}", p

    def parameters(self):
        """Yield every Parameter, in the order of :meth:`named_parameters`."""
        for _, p in self.named_parameters():
            yield p

    def zero_grad(self):
        """Set every parameter's accumulated gradient to zero."""
        for p in self.parameters():
            p.grad[...] = 0

    def state_dict(self):
        """A dict of copies of the parameters, keyed by dotted name."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict):
        """Copy parameters from ``state_dict`` (dotted names, same shapes, any float dtype).

        Raises ValueError naming missing or unexpected keys and mismatched shapes; nothing
        is changed unless everything matches.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if missing or unexpected:
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        values = {}
        for name, p in own.items():
            value = np.asarray(state_dict[name])
            if value.dtype.kind != "f":
                raise TypeError(f"{name} must be a float array, got dtype {value.dtype}")
            if value.shape != p.data.shape:
                raise ValueError(f"size mismatch for {name}: copying a param with shape "
                                 f"{value.shape}, the shape in the current model is "
                                 f"{p.data.shape}")
            values[name] = value
        for name in self._params:
            self._params[name].data[...] = values[name]
            self._params[name].mark_changed()
        for prefix, module in self._modules.items():
            module.load_state_dict({name[len(prefix) + 1:]: v for name, v in values.items()
                                    if name.startswith(prefix + ".")})
        self._clear_cache()  # a cache kept for backward belongs to the old parameters

    # modes -------------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode for this module and all sub-modules. Returns self."""
        object.__setattr__(self, "training", bool(mode))
        for module in self._modules.values():
            module.train(mode)
        if not mode:
            self._clear_cache()
        return self

    def eval(self):
        """Evaluation mode (no dropout, no cache for backward). Returns self."""
        return self.train(False)

    def _clear_cache(self):
        """Drop whatever forward kept for backward (overridden by layers that keep any)."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def _no_cache_error(self):
        return RuntimeError(f"{type(self).__name__}.backward needs a forward pass in training "
                            "mode first (call .train() and then the forward)")
