"""``fastrnn.torch``: fastrnn's kernels inside PyTorch models (CPU, float32/float64).

:class:`RNN`, :class:`LSTM` and :class:`GRU` are ``torch.nn.RNN``, ``torch.nn.LSTM`` and
``torch.nn.GRU`` with a different ``forward``: they subclass them, so the constructor,
parameters (names, shapes, init, ``state_dict``), ``repr``, ``.to()``,
``flatten_parameters`` and pickling are torch's own; forward and backward run
:mod:`fastrnn.functional`'s forward and backward of the cell through a
``torch.autograd.Function`` on zero-copy NumPy views of contiguous CPU tensors. Parameter
gradients are returned to autograd, which accumulates them into ``p.grad`` and fires the
hooks ``DistributedDataParallel`` averages gradients with.

>>> import torch, fastrnn.torch
>>> rnn = fastrnn.torch.RNN(8, 16, num_layers=2, batch_first=True)
>>> output, h_n = rnn(torch.randn(3, 5, 8))
>>> output.shape, h_n.shape
(torch.Size([3, 5, 16]), torch.Size([2, 3, 16]))
>>> lstm = fastrnn.torch.LSTM(8, 16, proj_size=4)
>>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 8))
>>> output.shape, h_n.shape, c_n.shape
(torch.Size([5, 3, 4]), torch.Size([1, 3, 4]), torch.Size([1, 3, 16]))

Calls autograd does not record (``torch.no_grad``, ``inference_mode``, frozen weights and
input) without dropout masks and of a few steps (up to 8; up to 24 of up to 32 sequences;
up to 48 of 2 to 16; a step-by-step decoder's calls) run on a stream the module keeps (a
bidirectional module: one per layer and direction): its weights packed once and compared
byte for byte with the parameters on every call, so any change to them (an optimizer's
step, ``load_state_dict``, a write into ``p.data``, ``torch.func.functional_call``) is used
at once. Results are bitwise those of any other path.

``torch.compile`` does not trace into a module's forward (a graph break): compiled models
run it as it is. ``torch.jit.trace`` and ``torch.export`` cannot record it and raise an error
that says so (a trace would hold the traced call's results as constants).

PyTorch stays optional: ``pip install "fastrnn[torch]"``; ``import fastrnn`` never imports
this module.
"""

import weakref

try:
    # Absolute import: this is PyTorch itself, not this module (fastrnn/torch.py).
    import torch
    from torch.nn.utils.rnn import PackedSequence
except ImportError as e:  # pragma: no cover - exercised in a subprocess without torch
    raise ImportError("fastrnn.torch needs PyTorch: pip install \"fastrnn[torch]\"") from e

import numpy as np

from . import functional
from ._layout import directions
from .precision import check_precision, resolve
from .stream import KeptStream, StreamOptions

__all__ = ["RNN", "LSTM", "GRU", "from_torch"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _check_supported(tensors, names, mode, prefix=""):
    """Refuse, with a message naming what is supported, what the kernels cannot run.

    ``tensors`` (None skipped) are called ``prefix + name`` in the message, by their
    ``names``. All dense float CPU tensors (the common case) cost one cheap test each.
    """
    for tensor, name in zip(tensors, names):
        if tensor is None or (tensor.is_cpu and tensor.layout == torch.strided
                              and tensor.dtype in SUPPORTED_DTYPES):
            continue
        what = prefix + name
        if tensor.device.type != "cpu":
            raise RuntimeError(f"fastrnn.torch.{mode} runs on CPU tensors only, but {what} is "
                               f"on device '{tensor.device}'; move it with .cpu(), or use "
                               f"torch.nn.{mode} on {tensor.device.type}")
        if tensor.layout != torch.strided:
            raise TypeError(f"fastrnn.torch.{mode} supports dense (strided) tensors only, but "
                            f"{what} has layout {tensor.layout}; convert it with .to_dense()")
        raise TypeError(f"fastrnn.torch.{mode} supports torch.float32 and torch.float64 only, "
                        f"but {what} has dtype {tensor.dtype}; convert the model with .float() "
                        f"or .double() and the input to match")


def _numpy(tensor):
    """A NumPy view of ``tensor`` (a copy only if it is not contiguous)."""
    array = tensor.numpy(force=True)  # (force: of a tensor that requires grad too; detached)
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


class _CacheAnchor(np.ndarray):
    """A one-byte array holding a forward's BPTT cache in its ``cache`` attribute."""


# torch's saved-tensor hooks now (activation checkpointing, save_on_cpu, a user's), or None;
# if torch no longer tells, as if some were
_saved_tensors_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks",
                               lambda ignore_is_tracing: True)


def _save_cache(ctx, tensors, cache):
    """Save ``tensors`` for backward, and ``cache`` for as long as torch keeps them.

    Torch frees saved tensors after backward (unless ``retain_graph``), not when the graph
    dies (often during the next forward), and a second backward through a freed graph is its
    error. So the cache hangs on an anchor array saved as a zero-copy tensor, ctx keeping only
    a weak reference to it. The cache's own arrays need no version counters: the
    user-visible ones (x, the states, the weights, the output) are among ``tensors``, the
    rest is fastrnn's. Under saved-tensor hooks, which may drop what is saved and give back
    a recomputation (activation checkpointing) or a copy, every array of the cache is saved
    as a tensor instead, and rebuilt from what the hooks give back; the parameters (views of
    the weights, ``tensors[4:]``, named ``ctx.names``) from the saved weights, not twice.
    """
    if _saved_tensors_hooks(False) is None:
        anchor = np.empty(1, dtype=np.uint8).view(_CacheAnchor)
        anchor.cache = cache
        ctx.cache_anchor = weakref.ref(anchor)
        ctx.save_for_backward(*tensors, torch.from_numpy(anchor))
        return
    arrays = []
    ctx.cache_anchor = None
    ctx.cache_skeleton = _strip({k: v for k, v in cache.items() if k != "params"}, arrays)
    ctx.num_tensors = len(tensors)
    ctx.save_for_backward(*tensors, *arrays)


def _saved_cache(ctx):
    """The saved tensors of :func:`_save_cache` (torch's error if backward freed them) and
    its cache."""
    saved = ctx.saved_tensors  # (first: raises for a graph already freed)
    if ctx.cache_anchor is not None:
        return saved[:-1], ctx.cache_anchor().cache
    tensors = saved[:ctx.num_tensors]
    cache = _fill(ctx.cache_skeleton, saved[ctx.num_tensors:])
    cache["params"] = {name: _numpy(w) for name, w in zip(ctx.names, tensors[4:])}
    return tensors, cache


# Module-level recursion, not nested closures: a recursive closure is a reference cycle,
# which would keep the arrays alive until the garbage collector runs. Exact types (the
# cache holds plain dicts, lists, tuples and arrays).
def _strip(value, arrays):
    """``value`` with each ndarray appended to ``arrays`` as a tensor and replaced by a _Slot."""
    kind = type(value)
    if kind is np.ndarray:
        arrays.append(torch.from_numpy(value))
        return _Slot(len(arrays) - 1)
    if kind is list or kind is tuple:
        return kind([_strip(v, arrays) for v in value])
    if kind is dict:
        return {k: _strip(v, arrays) for k, v in value.items()}
    return value


def _fill(value, tensors):
    """Inverse of :func:`_strip`: each _Slot replaced by a NumPy view of its tensor."""
    kind = type(value)
    if kind is _Slot:
        return _numpy(tensors[value.index])
    if kind is list or kind is tuple:
        return kind([_fill(v, tensors) for v in value])
    if kind is dict:
        return {k: _fill(v, tensors) for k, v in value.items()}
    return value


class _Slot:
    """Placeholder for the ``index``-th saved array in a stripped cache."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


class _Box:
    """A value passed between the steps of an autograd.Function as it is: an object, not a
    container, so that torch.func does not take it apart."""

    __slots__ = ("value",)

    def __init__(self, value=None):
        self.value = value


class _RecurrentFunction(torch.autograd.Function):
    """Time-major or batch-first 3-D input through fastrnn's forward and BPTT of a cell.

    ``apply(options, lengths, masks, box, x, h0, c0, *weights)``: ``options`` is (mode,
    parameter names, num_layers, nonlinearity, bidirectional, batch_first, precision), mode
    torch's "RNN_TANH", "RNN_RELU", "LSTM" or "GRU"; ``lengths`` an int64 array or None;
    ``masks`` a list of dropout-mask arrays or None; ``box`` an empty :class:`_Box`, which
    hands the forward's cache to ``setup_context``; ``h0`` and (LSTM only) ``c0`` may be None
    (zeros). Returns the output and the final states (h_n; h_n and c_n for an LSTM).

    Written as forward and setup_context, with the backward's work a Function of its own
    (:class:`_RecurrentBackward`), so that torch.func.grad and vjp can run it: they hand
    those Functions' forwards plain tensors, which NumPy can read.
    """

    @staticmethod
    def forward(options, lengths, masks, box, x, h0, c0, *weights):
        output, states, box.value = _recurrent_forward(options, lengths, masks, x, h0, c0,
                                                       weights, keep_cache=True)
        return (output, *(torch.from_numpy(s) for s in states))

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        # (torch.func may call this more than once for one forward: the box is not emptied)
        options, _, _, box, x, h0, c0, *weights = inputs
        ctx.mode, ctx.names = options[:2]
        ctx.has_state = (h0 is not None, c0 is not None)
        ctx.set_materialize_grads(False)  # a None gradient (h_n unused, say) is not zeros to build
        # output is saved too: BPTT reads it, so modifying it in place must be an error
        _save_cache(ctx, (outputs[0], x, h0, c0, *weights), box.value)

    @staticmethod
    def vmap(info, in_dims, options, *args):
        name = _module_name(options[0])
        raise RuntimeError(f"fastrnn.torch.{name} does not support torch.func.vmap: its "
                           f"kernels take one batch of sequences (the batch dimension is "
                           f"already vectorised); use torch.nn.{name} under vmap")

    @staticmethod
    def backward(ctx, grad_output, *grad_states):
        # as a Function where the gradients may be differentiated (create_graph, torch.func),
        # so that doing so is refused; an ordinary backward needs no more autograd work, and
        # skips the gradients nobody asked for: the input's (the first layer's dX product),
        # frozen weights' (a saliency map, a fine-tuned top layer)
        transformed = torch.is_grad_enabled() or _functorch_active()
        needs = ctx.needs_input_grad
        input_grad = transformed or needs[4]
        param_grads = transformed or [n for n, need in zip(ctx.names, needs[7:]) if need]
        saved, cache = _saved_cache(ctx)
        info = _Box((ctx.mode, ctx.names, len(grad_states), cache, input_grad, param_grads))
        args = (info, grad_output, *grad_states, *saved)
        if transformed:
            grads = _apply(_RecurrentBackward, *args)
        else:
            grads = _RecurrentBackward.forward(*args)
        grad_x, grad_h0, grad_c0, *grad_weights = grads
        has_h0, has_c0 = ctx.has_state
        return (None, None, None, None, grad_x, grad_h0 if has_h0 else None,
                grad_c0 if has_c0 else None, *grad_weights)


class _RecurrentBackward(torch.autograd.Function):
    """BPTT of :class:`_RecurrentFunction`: ``apply(info, grad_output, *grad_states,
    *saved)`` gives the gradients of x, h0, c0 (None but for an LSTM) and each weight.
    Differentiating it (a double backward) is refused: NumPy computed its results."""

    @staticmethod
    def forward(info, grad_output, *rest):
        mode, names, num_states, cache, input_grad, param_grads = info.value
        # rest: the gradients of the final states, then the forward's saved tensors (inputs
        # here so that differentiating this Function's results is refused): output first
        return _recurrent_backward(mode, names, rest[num_states].shape, cache, grad_output,
                                   rest[:num_states], input_grad, param_grads)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        ctx.mode = inputs[0].value[0]

    @staticmethod
    def backward(ctx, *grads):
        name = _module_name(ctx.mode)
        raise RuntimeError(f"fastrnn.torch.{name} does not support double backward "
                           f"(gradients of its gradients); use torch.nn.{name} for that")


def _eager(function):
    """``function`` (an autograd.Function written with setup_context) with a forward that
    takes ctx: torch.autograd.Function.apply binds the arguments of a setup_context form with
    inspect.signature on every call (about 50 µs), but torch.func only runs that form."""

    class Eager(function):
        @staticmethod
        def forward(ctx, *args):
            outputs = function.forward(*args)
            function.setup_context(ctx, args, outputs)
            return outputs

        # torch's own placeholder: as if not defined, so that apply passes ctx to forward
        setup_context = staticmethod(torch.autograd.Function.setup_context)

    Eager.__name__ = Eager.__qualname__ = f"{function.__name__}Eager"
    return Eager


_EAGER = {f: _eager(f) for f in (_RecurrentFunction, _RecurrentBackward)}
# what torch.autograd.Function.apply asks; if torch no longer has it, the setup_context form
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def _apply(function, *args):
    """``function.apply(*args)``, in its eager form unless torch.func transforms are active."""
    return (function if _functorch_active() else _EAGER[function]).apply(*args)


def _recurrent_forward(options, lengths, masks, x, h0, c0, weights, keep_cache):
    """The functional forward of ``_RecurrentFunction.apply``'s arguments: the output (a
    tensor), the final states (arrays) and the cache (None without ``keep_cache``)."""
    mode, names, num_layers, nonlinearity, bidirectional, batch_first, precision = options
    params = {name: _numpy(w) for name, w in zip(names, weights)}
    h0n, c0n = (None if s is None else _numpy(s) for s in (h0, c0))
    # no copies for the cache: x, the states and the weights are saved tensors (their
    # version counters refuse a backward after an in-place change), the masks are our own
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              lengths=lengths, dropout_masks=masks, keep_cache=keep_cache, precision=precision,
              copy=False)
    if mode == "LSTM":
        output, states, cache = functional.lstm_forward(_numpy(x), params, (h0n, c0n), **kw)
    elif mode == "GRU":
        output, h_n, cache = functional.gru_forward(_numpy(x), params, h0n, **kw)
        states = (h_n,)
    else:
        output, h_n, cache = functional.rnn_forward(_numpy(x), params, h0n,
                                                    nonlinearity=nonlinearity, **kw)
        states = (h_n,)
    # functional returns the output read-only; torch's version counter guards it instead
    output.flags.writeable = True
    return torch.from_numpy(output), states, cache


def _module_name(mode):
    """torch's module name for an RNNBase mode ("RNN_TANH" -> "RNN")."""
    return "RNN" if mode.startswith("RNN") else mode


def _recurrent_backward(mode, names, output_shape, cache, grad_output, grad_states, input_grad,
                        param_grads):
    """BPTT from the forward's ``cache`` (its output of ``output_shape``): the gradients of x
    (None without ``input_grad``), h0, c0 (None but for an LSTM) and each weight (None unless
    ``param_grads`` asks for it), as tensors, the weights in the order of ``names``."""
    grad_output = (np.zeros(output_shape, dtype=cache["dtype"]) if grad_output is None
                   else _numpy(grad_output))
    grad_states = [None if g is None else _numpy(g) for g in grad_states]
    wanted = dict(input_grad=input_grad, param_grads=param_grads)
    if mode == "LSTM":
        grad_x, (grad_h0, grad_c0), grads = functional.lstm_backward(
            cache, grad_output, tuple(grad_states), **wanted)
        grad_c0 = torch.from_numpy(grad_c0)
    else:
        backward = functional.gru_backward if mode == "GRU" else functional.rnn_backward
        grad_x, grad_h0, grads = backward(cache, grad_output, grad_states[0], **wanted)
        grad_c0 = None
    grads = grads or {}
    return (None if grad_x is None else torch.from_numpy(grad_x), torch.from_numpy(grad_h0),
            grad_c0, *(torch.from_numpy(grads[name]) if name in grads else None
                       for name in names))


def _index_array(tensor, name):
    """A 1-D integer tensor as an int64 NumPy array (TypeError/ValueError otherwise)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"PackedSequence.{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"PackedSequence.{name} must hold integers, got {tensor.dtype}")
    if tensor.dim() != 1:
        raise ValueError(f"PackedSequence.{name} must be 1-D, got shape {tuple(tensor.shape)}")
    # (read only: no copy of an int64 CPU tensor)
    return tensor.numpy(force=True).astype(np.int64, copy=False)


def _check_permutation(order, batch, name):
    """Every sequence's length is written through ``order``: it must hit each of
    range(batch) once, or some length would be left as uninitialised memory."""
    if order.shape != (batch,) or not np.array_equal(np.sort(order), np.arange(batch)):
        raise ValueError(f"PackedSequence.{name} must be a permutation of range({batch}) "
                         f"(batch_sizes[0] = {batch}), got {order.tolist()[:20]}")


def _packed_order(batch_sizes, sorted_indices, unsorted_indices, rows):
    """The batch sizes of a PackedSequence and its sorted order (None: the batch's own), both
    validated, as int64 arrays.

    Row p of the data is time step t for the j-th longest sequence, j < batch_sizes[t];
    that sequence is ``sorted_indices[j]`` in the caller's batch order. torch's own RNN
    checks little of it, so: ``batch_sizes`` positive, non-increasing and summing to the
    ``rows`` of data; the indices permutations of the batch and inverses of each other.
    """
    sizes = _index_array(batch_sizes, "batch_sizes")
    if not sizes.size or sizes[-1] < 1 or (sizes[1:] > sizes[:-1]).any():
        raise ValueError("PackedSequence.batch_sizes must be positive and non-increasing, got "
                         f"{sizes.tolist()[:20]}")
    # the sum as Python ints: int64 would overflow silently for absurd sizes
    if sum(sizes.tolist()) != rows:
        raise ValueError(f"PackedSequence.batch_sizes sum to {sum(sizes.tolist())}, but its "
                         f"data has {rows} rows")
    batch = int(sizes[0])
    order = None
    if sorted_indices is not None:
        order = _index_array(sorted_indices, "sorted_indices")
        _check_permutation(order, batch, "sorted_indices")
    if unsorted_indices is not None:
        inverse = _index_array(unsorted_indices, "unsorted_indices")
        _check_permutation(inverse, batch, "unsorted_indices")
        if not np.array_equal(inverse if order is None else order[inverse], np.arange(batch)):
            raise ValueError("PackedSequence.unsorted_indices must be the inverse permutation "
                             "of sorted_indices")
    if order is not None and np.array_equal(order, np.arange(batch)):
        order = None
    return sizes, order


def _packed_indices(sizes, order, rows):
    """(time, batch) index of every row of a PackedSequence's data (batch in the caller's
    order), and the batch's lengths, from :func:`_packed_order`'s results."""
    batch = int(sizes[0])
    order = np.arange(batch) if order is None else order
    t_index = np.repeat(np.arange(len(sizes)), sizes)
    rank = np.arange(rows) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    lengths = np.empty(batch, dtype=np.int64)
    lengths[order] = (sizes[:, None] > np.arange(batch)[None, :]).sum(axis=0)
    return torch.from_numpy(t_index), torch.from_numpy(order[rank]), lengths


def _cast(value, source, target):
    """``value`` (None, a tensor, a PackedSequence, or a tuple or list of tensors) with what is of
    dtype ``source`` converted to ``target`` (differentiably)."""
    if isinstance(value, (torch.Tensor, PackedSequence)):
        data = value.data if isinstance(value, PackedSequence) else value
        return value.to(target) if data.dtype == source else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, source, target) for v in value)
    return value


class _Recurrent:
    """What :class:`RNN`, :class:`LSTM` and :class:`GRU` add to their torch module: a
    ``forward`` on fastrnn's kernels. Mixed in before the torch class, so everything else
    (constructor, parameters, checks, ``repr``) is torch's."""

    #: Of the matrix products (:mod:`fastrnn.precision`): None follows
    #: :func:`fastrnn.set_matmul_precision`; set 'bfloat16' or 'float32' on a module to fix it
    precision = None

    # torch.compile: a graph break here, the call run as it is. Dynamo would otherwise trace
    # into the NumPy code around the kernels, rewriting it into torch operations: seconds to
    # compile, and some of it fails (np.nditer)
    @torch.compiler.disable
    def forward(self, input, hx=None):
        """Run the module; arguments and results as its torch class's ``forward``."""
        name = type(self).__name__
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            # a trace records torch's operators only: fastrnn's results would be constants
            how = "torch.jit.trace" if torch.jit.is_tracing() else "torch.export"
            raise RuntimeError(f"{how} cannot record fastrnn.torch.{name}: its kernels run "
                               f"outside torch's operators, which a recorded graph cannot "
                               f"hold (it would return this call's results for any input, or "
                               f"call back into Python). Trace or export a torch.nn.{name} "
                               f"with the same weights instead "
                               f"(load_state_dict(module.state_dict()))")
        # by name, not the cached self._flat_weights: parameters swapped in by
        # torch.func.functional_call or reassigned by the user are seen. From _parameters
        # (getattr goes through Module.__getattr__, in Python) unless a parametrization
        # (torch.nn.utils.parametrize) made the name a property
        params = self._parameters
        weights = [params[n] if n in params else getattr(self, n)
                   for n in self._flat_weights_names]
        lower = self._autocast_dtype(input, weights)
        if lower is None:
            return self._forward(input, hx, weights, self.precision)
        # torch.autocast: inputs and states of the autocast dtype computed in float32, with
        # bfloat16 products under a bfloat16 autocast (unless the module's precision says
        # otherwise), the results in the autocast dtype
        precision = self.precision
        if precision is None and lower == torch.bfloat16:
            precision = "bfloat16"
        output, state = self._forward(_cast(input, lower, torch.float32),
                                      _cast(hx, lower, torch.float32), weights, precision)
        return _cast(output, torch.float32, lower), _cast(state, torch.float32, lower)

    def _autocast_dtype(self, input, weights):
        """The lower-precision dtype of an enabled CPU torch.autocast that applies to this
        call, else None. As torch's modules: a float32 module's RNN and LSTM always, its GRU
        (which autocast leaves alone) when the input already is of that dtype."""
        if not torch.is_autocast_enabled("cpu") or weights[0].dtype != torch.float32:
            return None
        lower = torch.get_autocast_dtype("cpu")
        if lower not in (torch.bfloat16, torch.float16):
            return None
        data = input.data if isinstance(input, PackedSequence) else input
        if self.mode == "GRU" and not (isinstance(data, torch.Tensor) and data.dtype == lower):
            return None
        return lower

    def _forward(self, input, hx, weights, precision):
        """forward with the matrix products' ``precision`` given."""
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"fastrnn.torch.{name}: the input must be a torch.Tensor or a "
                            f"PackedSequence, got {type(data).__name__}")
        states = self._states(hx)
        _check_supported(weights, self._flat_weights_names, name, "parameter ")
        _check_supported((data, *states), ("the input", "hx", "cx"), name)
        if packed:
            return self._forward_packed(input, hx, states, weights, precision)

        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D "
                             "tensor instead")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        want = 3 if batched else 2
        if hx is not None and any(s.dim() != want for s in states):
            # torch's messages
            kind = "batched 3-D" if batched else "unbatched 2-D"
            if self.mode == "LSTM":
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but "
                                   f"got ({states[0].dim()}-D, {states[1].dim()}-D) tensors")
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                               f"{states[0].dim()}-D tensor")
        if not batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                states = tuple(s.unsqueeze(1) for s in states)
        self._check_args(input, states, None, weights)
        seq_len, batch = ((input.size(1), input.size(0)) if self.batch_first
                          else (input.size(0), input.size(1)))
        output, *finals = self._run(self.batch_first, None, seq_len, batch, input, states,
                                    weights, precision)
        if not batched:
            output, finals = output.squeeze(batch_dim), [f.squeeze(1) for f in finals]
        return output, self._state_result(finals)

    def _states(self, hx):
        """The initial states in hx as a tuple (h0,) or (h0, c0); Nones if hx is None."""
        if self.mode != "LSTM":
            if hx is not None and not isinstance(hx, torch.Tensor):
                raise TypeError(f"fastrnn.torch.{type(self).__name__}: hx must be a "
                                f"torch.Tensor, got {type(hx).__name__}")
            return (hx,)
        if hx is None:
            return (None, None)
        if (not isinstance(hx, (tuple, list)) or len(hx) != 2
                or not all(isinstance(s, torch.Tensor) for s in hx)):
            raise TypeError("fastrnn.torch.LSTM: hx must be a pair (h_0, c_0) of tensors, got "
                            f"{type(hx).__name__}")
        return tuple(hx)

    def _state_result(self, finals):
        """h_n, or (h_n, c_n) for an LSTM, as torch returns them."""
        return tuple(finals) if self.mode == "LSTM" else finals[0]

    def _run(self, batch_first, lengths, seq_len, batch, x, states, weights, precision):
        h0, c0 = (tuple(states) + (None,))[:2]
        options = (self.mode, tuple(self._flat_weights_names), self.num_layers,
                   self.nonlinearity if self.mode.startswith("RNN") else "tanh",
                   self.bidirectional, batch_first,
                   check_precision(precision))
        masks = self._dropout_masks(seq_len, batch, weights[0])
        tensors = (x, h0, c0, *weights)
        if not (torch.is_grad_enabled()
                and any(t is not None and t.requires_grad for t in tensors)):
            # nothing to differentiate (no_grad, inference_mode, frozen weights and input):
            # no cache for BPTT, so no copies of the arguments and no saved gates
            if lengths is None and masks is None and KeptStream.fits(seq_len, batch):
                result = self._short_forward(options, x, states, weights)
                if result is not None:
                    return result
            output, states, _ = _recurrent_forward(options, lengths, masks, x, h0, c0, weights,
                                                   keep_cache=False)
            return (output, *(torch.from_numpy(s) for s in states))
        return _apply(_RecurrentFunction, options, lengths, masks, _Box(), *tensors)

    def _short_forward(self, options, x, states, weights):
        """A forward of a few steps without autograd on a stream the module keeps, as
        :class:`fastrnn.RNN` does in eval mode: bitwise the functional forward, its weights
        compared with the parameters on every call instead of packed. None if another
        thread's call holds the stream."""
        mode, names, num_layers, nonlinearity, bidirectional, batch_first, precision = options
        params = {name: _numpy(w) for name, w in zip(names, weights)}
        dtype = params[names[0]].dtype
        stream_options = StreamOptions(
            _module_name(mode).lower(), num_layers, self.input_size, self.hidden_size,
            self.proj_size, dtype, nonlinearity == "relu", batch_first,
            resolve(precision, dtype), bidirectional)
        # created on first use: from_torch gives existing modules this class
        kept = self.__dict__.get("_kept_stream") or self.__dict__.setdefault("_kept_stream",
                                                                              KeptStream())
        result = kept.run(stream_options, params, _numpy(x),
                          tuple(None if s is None else _numpy(s) for s in states))
        if result is None:
            return None
        output, finals = result
        return (torch.from_numpy(output), *(torch.from_numpy(f) for f in finals))

    def train(self, mode=True):
        """torch's ``train``; entering training mode also frees the short calls' stream (its
        packed weights and copy of the parameters), as fastrnn's own modules do."""
        if mode:
            self.__dict__.pop("_kept_stream", None)
        return super().train(mode)

    def __getstate__(self):
        # pickling and deepcopy: the kept stream (packed weights, a lock) is not state
        state = super().__getstate__()  # (torch's RNNBase drops its weak references)
        state.pop("_kept_stream", None)
        return state

    def _forward_packed(self, input, hx, states, weights, precision):
        """PackedSequence in and out, through padded time-major tensors and lengths."""
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if data.dim() != 2:
            raise ValueError(f"PackedSequence.data must be 2-D (rows, input_size), got "
                             f"{data.dim()}-D")
        sizes, order = _packed_order(batch_sizes, sorted_indices, unsorted_indices,
                                     data.size(0))
        self._check_args(data, states, batch_sizes, weights)
        seq_len, batch = len(sizes), int(sizes[0])
        if sizes[-1] == batch:
            # every sequence whole (one sequence packed, say): the data is (L, N, I) with the
            # batch in sorted order, and lengths would change nothing. So views, no lengths,
            # and a short call without autograd runs on the kept stream
            padded = data.reshape(seq_len, batch, data.size(1))
            if order is not None:  # to the caller's batch order, where hx and h_n live
                padded = padded[:, torch.from_numpy(np.argsort(order))]
            output, *finals = self._run(False, None, seq_len, batch, padded, states, weights,
                                        precision)
            if order is not None:
                output = output[:, torch.from_numpy(order)]
            elif output.requires_grad:
                # a copy, as the gathers make: BPTT reads the output, so modifying a view of
                # it in place would make backward an error (torch's RNN and GRU allow it)
                output = output.clone()
            rows = output.reshape(seq_len * batch, output.size(2))
        else:
            t_index, b_index, lengths = _packed_indices(sizes, order, data.size(0))
            # unpack into (L, N, I) in the caller's batch order, where hx and h_n also live
            padded = data.new_zeros((seq_len, batch, data.size(1))).index_put((t_index, b_index),
                                                                               data)
            output, *finals = self._run(False, lengths, seq_len, batch, padded, states,
                                        weights, precision)
            rows = output[t_index, b_index]
        return (PackedSequence(rows, batch_sizes, sorted_indices, unsorted_indices),
                self._state_result(finals))

    def _check_args(self, input, states, batch_sizes, weights):
        """torch's own checks (messages included), plus the states' dtype."""
        if states[0] is None:
            self.check_input(input, batch_sizes)
            return
        self.check_forward_args(input, self._state_result(list(states)), batch_sizes)
        for s in states:
            if s.dtype != weights[0].dtype:
                raise ValueError(f"{type(self).__name__} hx dtype ({s.dtype}) does not match "
                                 f"weight dtype ({weights[0].dtype}). Convert hx: "
                                 f"hx.to({weights[0].dtype})")

    def _dropout_masks(self, seq_len, batch, weight):
        """Inverted-dropout masks for the outputs of all layers but the last (training only).

        Drawn with torch.bernoulli from torch's default generator, time-major (L, N, D·H_out).
        """
        if not (self.training and self.dropout > 0 and self.num_layers > 1):
            return None
        width = self.proj_size or self.hidden_size
        shape = (seq_len, batch, directions(self.bidirectional) * width)
        keep = 1.0 - self.dropout
        masks = []
        for _ in range(self.num_layers - 1):
            mask = torch.empty(shape, dtype=weight.dtype)
            if keep > 0:
                mask.bernoulli_(keep).div_(keep)  # 0 or 1/(1-p): E[mask] = 1
            else:
                mask.zero_()
            masks.append(mask.numpy())
        return masks


_DOC = r"""``torch.nn.{name}`` whose forward and backward run fastrnn's compiled CPU kernels.

    Constructor, parameters, inputs and outputs are exactly ``torch.nn.{name}``'s (see its
    documentation): ``{name}({signature})``, called as ``{call}`` with ``input`` a 3-D or
    unbatched 2-D tensor or a ``PackedSequence``. ``state_dict``\ s load both ways.

    Supported: CPU tensors, float32 and float64; anything else (a CUDA tensor, float16,
    bfloat16 tensors outside ``torch.autocast``) raises an error naming this, never a wrong
    result. For bfloat16 products on float32 tensors set ``module.precision = "bfloat16"``
    (or :func:`fastrnn.set_matmul_precision`): see :mod:`fastrnn.precision`. Under a CPU
    ``torch.autocast`` to bfloat16 or float16 a float32 module takes inputs and states of
    that dtype too and gives its results in it, where torch's module does (RNN and LSTM
    always, GRU when its input is of that dtype); it computes in float32, with bfloat16
    products under a bfloat16 autocast unless ``module.precision`` is set. Results match
    ``torch.nn.{name}`` to float rounding. Dropout between layers (training mode) draws its
    masks from torch's generator, so ``torch.manual_seed`` governs it; the masks differ from
    the ones torch.nn.{name} would draw. ``torch.func.grad`` and ``vjp`` work; not supported
    (refused with an error): double backward, ``torch.func.vmap``.{extra}
    """


class RNN(_Recurrent, torch.nn.RNN):
    __doc__ = _DOC.format(
        name="RNN", signature="input_size, hidden_size, num_layers=1, nonlinearity='tanh', "
        "bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, "
        "dtype=None", call="output, h_n = rnn(input, hx=None)", extra="")


class LSTM(_Recurrent, torch.nn.LSTM):
    __doc__ = _DOC.format(
        name="LSTM", signature="input_size, hidden_size, num_layers=1, bias=True, "
        "batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, "
        "dtype=None", call="output, (h_n, c_n) = lstm(input, (h_0, c_0))",
        extra="\n\n    With ``proj_size`` > 0 the projection runs on fastrnn's kernels too "
              "(torch's own CPU path\n    leaves oneDNN for it).")


class GRU(_Recurrent, torch.nn.GRU):
    __doc__ = _DOC.format(
        name="GRU", signature="input_size, hidden_size, num_layers=1, bias=True, "
        "batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None",
        call="output, h_n = gru(input, hx=None)", extra="")


_FAST = {torch.nn.RNN: RNN, torch.nn.LSTM: LSTM, torch.nn.GRU: GRU}


def from_torch(module):
    """Make every ``torch.nn.RNN``, ``torch.nn.LSTM`` and ``torch.nn.GRU`` in ``module``
    (itself included) fastrnn's :class:`RNN`, :class:`LSTM` or :class:`GRU`, in place.

    Only the class changes: parameters (the same tensor objects, so an optimizer built
    before keeps working), buffers, hooks, device and mode are kept. Subclasses of the torch
    modules are left alone, since their ``forward`` may differ.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    module : the same object.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    for sub in module.modules():
        if type(sub) in _FAST:
            sub.__class__ = _FAST[type(sub)]
    return module
