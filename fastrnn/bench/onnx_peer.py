"""ONNX Runtime as a peer: fastrnn's network as an ONNX graph, its forward timed.

One ONNX ``RNN`` / ``LSTM`` / ``GRU`` node per layer (``direction="bidirectional"`` for both
directions), built with ``onnx.helper`` and run by an ``onnxruntime.InferenceSession``. Each
layer's output Y [T, D, N, H] is transposed and reshaped to torch's [T, N, D·H], which feeds
the next layer and is the network's output; the layers' Y_h (and Y_c) [D, N, H] are
concatenated into torch's h_n (and c_n) [layers·D, N, H].

Weights: ONNX stacks the gates of a direction in another order than torch (LSTM i, o, f, c
against torch's i, f, g, o; GRU z, r, h against r, z, n), as W [D, G·H, I], R [D, G·H, H] and
B [D, 2·G·H] (input biases, then recurrent ones). torch's GRU is ONNX's with
``linear_before_reset=1`` (the reset gate multiplies h W_hn + b_hn). ONNX Runtime has no
backward: forward only.

Needs ``pip install "fastrnn[peers]"`` (onnx, onnxruntime).
"""
import numpy as np

from .._layout import directions, layer_keys
from ..parallel import get_num_threads
from .workloads import DTYPE, cell_of

__all__ = ["ONNX_GATE_ORDER", "onnx_weights", "onnx_model", "onnx_session", "onnx_forward_call"]

OPSET = 17
IR_VERSION = 8  # the oldest IR of opset 17: loads in every onnxruntime that runs the opset
_OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# cell -> torch's gate blocks in ONNX's order (torch: i f g o, r z n; ONNX: i o f c, z r h)
ONNX_GATE_ORDER = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}


def _reorder(w, cell):
    """torch's gate blocks of ``w`` (rows G·H first) in ONNX's order."""
    blocks = np.split(w, len(ONNX_GATE_ORDER[cell]))
    return np.concatenate([blocks[i] for i in ONNX_GATE_ORDER[cell]])


def onnx_weights(params, cell, layer, bidirectional):
    """(W, R, B) of one layer in ONNX's layout from torch-named ``params`` (a fastrnn or torch
    state dict as NumPy arrays): W [D, G·H, I], R [D, G·H, H], B [D, 2·G·H]."""
    keys = layer_keys(layer, bidirectional)
    W = np.stack([_reorder(params[f"weight_ih_{k}"], cell) for k in keys])
    R = np.stack([_reorder(params[f"weight_hh_{k}"], cell) for k in keys])
    B = np.stack([np.concatenate([_reorder(params[f"bias_ih_{k}"], cell),
                                  _reorder(params[f"bias_hh_{k}"], cell)]) for k in keys])
    return W.astype(DTYPE), R.astype(DTYPE), B.astype(DTYPE)


def onnx_model(params, cell, input_size, hidden_size, num_layers, bidirectional):
    """The ONNX model of the network: input ``x`` [T, N, I], outputs ``output`` [T, N, D·H],
    ``h_n`` and for the LSTM ``c_n`` [layers·D, N, H]."""
    from onnx import TensorProto, helper, numpy_helper

    D = directions(bidirectional)
    nodes, inits, h_parts, c_parts = [], [], [], []
    shape = numpy_helper.from_array(np.array([0, 0, D * hidden_size], dtype=np.int64), "shape")
    inits.append(shape)  # Reshape: 0 keeps T and N
    layer_in = "x"
    for layer in range(num_layers):
        names = [f"{n}{layer}" for n in ("W", "R", "B")]
        inits += [numpy_helper.from_array(a, n)
                  for a, n in zip(onnx_weights(params, cell, layer, bidirectional), names)]
        outputs = [f"Y{layer}", f"Y_h{layer}"] + ([f"Y_c{layer}"] if cell == "lstm" else [])
        attrs = dict(hidden_size=hidden_size,
                     direction="bidirectional" if bidirectional else "forward")
        if cell == "gru":
            attrs["linear_before_reset"] = 1  # torch's GRU
        nodes.append(helper.make_node(_OP[cell], [layer_in, *names], outputs, **attrs))
        layer_out = "output" if layer == num_layers - 1 else f"x{layer + 1}"
        nodes += [helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"Yt{layer}", "shape"], [layer_out])]
        h_parts.append(f"Y_h{layer}")
        c_parts += outputs[2:]
        layer_in = layer_out
    states = [("h_n", h_parts)] + ([("c_n", c_parts)] if cell == "lstm" else [])
    nodes += [helper.make_node("Concat", parts, [name], axis=0) for name, parts in states]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, f"fastrnn_{cell}", [helper.make_tensor_value_info("x", f32, ["T", "N", input_size])],
        [helper.make_tensor_value_info("output", f32, ["T", "N", D * hidden_size])]
        + [helper.make_tensor_value_info(name, f32, [num_layers * D, "N", hidden_size])
           for name, _ in states],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def onnx_session(model, threads=None):
    """An ``onnxruntime.InferenceSession`` of ``model`` on the CPU with ``threads`` intra-op
    threads (default: fastrnn's count) and one inter-op thread (the graph is a chain)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def onnx_forward_call(model, x):
    """A zero-argument callable: the forward of fastrnn ``model``'s network in ONNX Runtime on
    ``x`` (time-major), returning ``output, h_n`` (and ``c_n`` for the LSTM), as torch does."""
    cell = cell_of(model)
    session = onnx_session(onnx_model(model.state_dict(), cell, model.input_size,
                                      model.hidden_size, model.num_layers, model.bidirectional))
    feed = {"x": np.ascontiguousarray(x, dtype=DTYPE)}
    return lambda: session.run(None, feed)
