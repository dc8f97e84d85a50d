"""Refused inputs raise TypeError / ValueError / RuntimeError whose message names the
expected and the actual value, as torch's do."""

import warnings

import numpy as np
import pytest

from _helpers import match_all, match_patterns, match_shape, random_params
import fastrnn
from fastrnn import functional

# Sizes chosen so that every number in a message identifies one quantity.
L, N, I, H, LAYERS, D = 6, 3, 2, 5, 2, 2


# constructor -------------------------------------------------------------------------------

CONSTRUCTOR_ERRORS = [
    ("input_size-float", dict(input_size=3.0), TypeError,
     "input_size should be of type int, got: float"),
    ("hidden_size-float", dict(hidden_size=4.0), TypeError,
     "hidden_size should be of type int, got: float"),
    ("hidden_size-str", dict(hidden_size="4"), TypeError, match_all("hidden_size", "str")),
    ("num_layers-float", dict(num_layers=1.5), TypeError, match_all("num_layers", "float")),
    ("input_size-zero", dict(input_size=0), ValueError, match_all("input_size", "0")),
    ("hidden_size-negative", dict(hidden_size=-2), ValueError, match_all("hidden_size", "-2")),
    ("num_layers-zero", dict(num_layers=0), ValueError, match_all("num_layers", "0")),
    ("dropout-negative", dict(dropout=-0.1), ValueError, match_all("dropout", "-0.1")),
    ("dropout-above-one", dict(dropout=1.5), ValueError, match_all("dropout", "1.5")),
    ("nonlinearity", dict(nonlinearity="sigmoid"), ValueError, "sigmoid"),
    ("dtype-int", dict(dtype=np.int32), TypeError, "int32"),
    ("dtype-half", dict(dtype=np.float16), TypeError, "float16"),
    ("dtype-complex", dict(dtype=np.complex128), TypeError, "complex128"),
]


@pytest.mark.parametrize("kwargs,error,match",
                         [pytest.param(*case[1:], id=case[0]) for case in CONSTRUCTOR_ERRORS])
def test_constructor_refuses(kwargs, error, match):
    args = dict(input_size=I, hidden_size=H, num_layers=LAYERS) | kwargs
    with pytest.raises(error, match=match):
        fastrnn.RNN(**args)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout"):
        fastrnn.RNN(I, H, num_layers=1, dropout=0.5)


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_dropout_bounds_are_accepted(dropout):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning with more than one layer
        assert fastrnn.RNN(I, H, num_layers=2, dropout=dropout).dropout == dropout


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.dtype("float64"), "float32"])
def test_dtype_spellings_are_accepted(dtype):
    assert fastrnn.RNN(I, H, dtype=dtype).dtype == np.dtype(dtype)


# forward inputs (module and functional) ----------------------------------------------------

def _x(shape=(L, N, I), dtype=np.float32):
    return (np.arange(np.prod(shape)).reshape(shape) % 3).astype(dtype)


def _h0(shape=(D * LAYERS, N, H), dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


FORWARD_ERRORS = [
    ("x-float64", dict(x=_x(dtype=np.float64)), TypeError, match_all("float64", "float32")),
    ("x-int", dict(x=_x(dtype=np.int64)), TypeError, "int64"),
    ("x-bool", dict(x=_x(dtype=bool)), TypeError, "bool"),
    ("x-object", dict(x=_x(dtype=object)), TypeError, "object"),
    ("x-complex", dict(x=_x(dtype=np.complex64)), TypeError, "complex64"),
    ("x-1d", dict(x=_x((L,))), ValueError, match_patterns(r"\b1(-?D|\b)")),
    ("x-4d", dict(x=_x((2, L, 2, I))), ValueError, match_patterns(r"\b4(-?D|\b)")),
    ("x-input-size", dict(x=_x((L, N, 7))), ValueError, match_all("7", str(I))),
    ("x-input-size-unbatched", dict(x=_x((L, 7)), h0=None), ValueError, match_all("7", str(I))),
    ("h0-hidden", dict(h0=_h0((D * LAYERS, N, H + 1))), ValueError,
     match_patterns(match_shape((D * LAYERS, N, H)), match_shape((D * LAYERS, N, H + 1)))),
    ("h0-batch", dict(h0=_h0((D * LAYERS, N + 4, H))), ValueError,
     match_patterns(match_shape((D * LAYERS, N, H)), match_shape((D * LAYERS, N + 4, H)))),
    ("h0-layers", dict(h0=_h0((D * LAYERS - 1, N, H))), ValueError,
     match_patterns(match_shape((D * LAYERS, N, H)), match_shape((D * LAYERS - 1, N, H)))),
    ("h0-2d-for-batched", dict(h0=_h0((D * LAYERS, H))), ValueError,
     match_patterns(match_shape((D * LAYERS, N, H)), match_shape((D * LAYERS, H)))),
    ("h0-3d-for-unbatched", dict(x=_x((L, I)), h0=_h0((D * LAYERS, 1, H))), ValueError,
     match_patterns(match_shape((D * LAYERS, H)), match_shape((D * LAYERS, 1, H)))),
    ("h0-float64", dict(h0=_h0(dtype=np.float64)), TypeError, match_all("float64", "float32")),
    ("h0-int", dict(h0=_h0(dtype=np.int32)), TypeError, "int32"),
    ("lengths-too-many", dict(lengths=[1, 2, 3, 4]), ValueError,
     match_patterns(match_shape((N,)), match_shape((N + 1,)))),
    ("lengths-2d", dict(lengths=[[1], [2], [3]]), ValueError,
     match_patterns(match_shape((N,)), match_shape((N, 1)))),
    ("lengths-fraction", dict(lengths=[1.5, 2.0, 3.0]), (TypeError, ValueError), "float"),
    ("lengths-bool", dict(lengths=[True, False, True]), (TypeError, ValueError), "bool"),
    ("lengths-too-long", dict(lengths=[2, L + 1, 3]), ValueError, match_all(str(L), str(L + 1))),
    ("lengths-negative", dict(lengths=[2, -1, 3]), ValueError, "-1"),
]


@pytest.mark.parametrize("api", ["module", "functional"])
@pytest.mark.parametrize("inputs,error,match",
                         [pytest.param(*case[1:], id=case[0]) for case in FORWARD_ERRORS])
def test_forward_refuses(api, inputs, error, match):
    args = dict(x=_x(), h0=_h0(), lengths=None) | inputs
    if api == "module":
        rnn = fastrnn.RNN(I, H, num_layers=LAYERS, bidirectional=True, seed=0)
        with pytest.raises(error, match=match):
            rnn(args["x"], args["h0"], args["lengths"])
    else:
        params = random_params(np.random.default_rng(0), I, H, LAYERS, True, True, np.float32)
        with pytest.raises(error, match=match):
            functional.rnn_forward(args["x"], params, args["h0"], num_layers=LAYERS,
                                   bidirectional=True, lengths=args["lengths"])


# backward ----------------------------------------------------------------------------------

BACKWARD_ERRORS = [
    ("grad_output-hidden", dict(grad_output=_x((L, N, D * H + 1))), ValueError,
     match_patterns(match_shape((L, N, D * H)), match_shape((L, N, D * H + 1)))),
    ("grad_output-like-x", dict(grad_output=_x((L, N, I))), ValueError,
     match_patterns(match_shape((L, N, D * H)), match_shape((L, N, I)))),
    ("grad_h_n", dict(grad_h_n=_h0((D * LAYERS, N, H + 2))), ValueError,
     match_patterns(match_shape((D * LAYERS, N, H)), match_shape((D * LAYERS, N, H + 2)))),
]


@pytest.mark.parametrize("grads,error,match",
                         [pytest.param(*case[1:], id=case[0]) for case in BACKWARD_ERRORS])
def test_backward_refuses(grads, error, match):
    rnn = fastrnn.RNN(I, H, num_layers=LAYERS, bidirectional=True, seed=0)
    out, hn = rnn(_x())
    args = dict(grad_output=np.ones_like(out), grad_h_n=np.ones_like(hn)) | grads
    with pytest.raises(error, match=match):
        rnn.backward(args["grad_output"], args["grad_h_n"])


def test_backward_before_any_forward():
    rnn = fastrnn.RNN(I, H, seed=0)
    with pytest.raises(RuntimeError, match="(?i)forward"):
        rnn.backward(np.ones((L, N, H), dtype=np.float32))


def test_backward_after_eval_forward():
    rnn = fastrnn.RNN(I, H, seed=0).eval()
    out, _ = rnn(_x())
    with pytest.raises(RuntimeError, match="(?i)(train|forward)"):
        rnn.backward(np.ones_like(out))


# load_state_dict ---------------------------------------------------------------------------

def _state_dict_missing(sd):
    del sd["bias_hh_l1_reverse"]
    return sd, ["bias_hh_l1_reverse"]


def _state_dict_unexpected(sd):
    sd["weight_ih_l2"] = np.zeros((H, D * H), dtype=np.float32)
    return sd, ["weight_ih_l2"]


def _state_dict_wrong_shape(sd):
    sd["weight_hh_l0"] = np.zeros((H, H + 1), dtype=np.float32)
    return sd, ["weight_hh_l0", (H, H + 1), (H, H)]


@pytest.mark.parametrize("corrupt", [_state_dict_missing, _state_dict_unexpected,
                                     _state_dict_wrong_shape],
                         ids=["missing", "unexpected", "shape"])
def test_load_state_dict_refuses_mismatch(corrupt):
    rnn = fastrnn.RNN(I, H, num_layers=LAYERS, bidirectional=True, seed=0)
    sd, named = corrupt(rnn.state_dict())
    patterns = [match_shape(n) if isinstance(n, tuple) else n for n in named]
    with pytest.raises(ValueError, match=match_patterns(*patterns)):
        rnn.load_state_dict(sd)
