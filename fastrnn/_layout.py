"""Where things are: torch's parameter names and shapes, the order of layers and directions,
and the time-major layout every computation runs in.

One module for what ``fastrnn.reference``, ``fastrnn.functional``, the modules and the torch
adapter would otherwise each decode: a parameter is ``weight_ih_l{layer}{suffix}`` (and
``weight_hh``, ``bias_ih``, ``bias_hh``), suffix ``""`` or ``"_reverse"``, in torch's order;
states are stacked ``(num_layers · D, N, H)`` with the directions of a layer adjacent.
"""

__all__ = ["directions", "direction_param_names", "layer_keys", "param_names", "param_shapes",
           "state_index", "to_time_major", "from_time_major"]


def directions(bidirectional):
    """D: 2 for a bidirectional network, else 1."""
    return 2 if bidirectional else 1


def layer_keys(layer, bidirectional):
    """Name suffixes of a layer's directions: ['l0'], or ['l0', 'l0_reverse']."""
    return [f"l{layer}{suffix}" for suffix in ("", "_reverse")[:directions(bidirectional)]]


def state_index(layer, direction, bidirectional):
    """Row of h0 / h_n (and grad_h0, grad_h_n) holding this layer and direction's state."""
    return layer * directions(bidirectional) + direction


#: What a parameter's name says before its direction's suffix (``weight_ih`` of ``weight_ih_l0``)
PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def direction_param_names(keys):
    """Every name a parameter of the directions ``keys`` (:func:`layer_keys`) may have."""
    return {f"{kind}_{k}" for kind in PARAM_KINDS for k in keys}


def param_names(num_layers, bidirectional, bias, proj=False):
    """torch's parameter names (nn.RNN, nn.GRU, nn.LSTM; ``weight_hr`` with a projection),
    in torch's order."""
    names = []
    for layer in range(num_layers):
        for k in layer_keys(layer, bidirectional):
            names += [f"weight_ih_{k}", f"weight_hh_{k}"]
            if bias:
                names += [f"bias_ih_{k}", f"bias_hh_{k}"]
            if proj:
                names.append(f"weight_hr_{k}")
    return names


def param_shapes(input_size, hidden_size, num_layers, bidirectional, bias, gates=1,
                 proj_size=0):
    """``{name: shape}`` in torch's order, for G ``gates`` per hidden unit and outputs
    h of width H_out (``proj_size`` if > 0, else H): W_ih (G·H, I) for layer 0 and
    (G·H, D·H_out) above it, W_hh (G·H, H_out), biases (G·H,), W_hr (H_out, H)."""
    rows = gates * hidden_size
    out = proj_size or hidden_size
    D = directions(bidirectional)
    shapes = {}
    for name in param_names(num_layers, bidirectional, bias, proj_size > 0):
        what, kind, layer = name.split("_")[:3]
        if what == "bias":
            shapes[name] = (rows,)
        elif kind == "ih":
            shapes[name] = (rows, input_size if layer == "l0" else D * out)
        elif kind == "hh":
            shapes[name] = (rows, out)
        else:
            shapes[name] = (out, hidden_size)
    return shapes


def to_time_major(x, batch_first):
    """(L, N, ·) view of an input: unbatched (L, ·) gets a batch of one, batch-first (N, L, ·)
    is transposed. Returns the view and whether the input was unbatched."""
    if x.ndim == 2:
        return x[:, None, :], True
    return (x.transpose(1, 0, 2) if batch_first else x), False


def from_time_major(y, unbatched, batch_first):
    """Undo :func:`to_time_major` on a time-major (L, N, ·) result."""
    if unbatched:
        return y[:, 0]
    return y.transpose(1, 0, 2) if batch_first else y
