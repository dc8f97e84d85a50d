"""The fastrnn.RNN module against the NumPy reference and torch.nn.RNN, and its API."""

import numpy as np
import pytest

from _helpers import (DTYPES, H, I, L, N, assert_close_rel, assert_grads_close,
                      assert_results_close, assert_results_equal, expected_param_shapes,
                      forward_kwargs, make_inputs, over_all_options, random_params, run_api,
                      run_module, run_torch)
import fastrnn
from fastrnn import reference


def make_rnn(rng, num_layers=2, nonlinearity="tanh", bias=True, layout="time", dropout=0.0,
             bidirectional=True, dtype=np.float32, input_size=I, hidden_size=H):
    return fastrnn.RNN(input_size, hidden_size, num_layers=num_layers, nonlinearity=nonlinearity,
                       bias=bias, batch_first=layout == "batch", dropout=dropout,
                       bidirectional=bidirectional, dtype=dtype,
                       seed=int(rng.integers(2**31)))


# conformance -------------------------------------------------------------------------------

@over_all_options
def test_module_matches_reference(rng, num_layers, bidirectional, nonlinearity, bias, layout,
                                  lengths_kind, with_h0, dtype):
    rnn = make_rnn(rng, num_layers, nonlinearity, bias, layout, 0.0, bidirectional, dtype)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=with_h0, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype)
    expected = run_api(reference, rnn.state_dict(), x, h0, gy, ghn,
                       **forward_kwargs(num_layers, nonlinearity, bidirectional, layout, lengths))
    assert_results_close(run_module(rnn, x, h0, lengths, gy, ghn), expected, dtype)


@over_all_options
def test_module_matches_torch(rng, num_layers, bidirectional, nonlinearity, bias, layout,
                              lengths_kind, with_h0, dtype):
    rnn = make_rnn(rng, num_layers, nonlinearity, bias, layout, 0.0, bidirectional, dtype)
    x, h0, lengths, gy, ghn = make_inputs(
        rng, layout=layout, lengths_kind=lengths_kind, with_h0=with_h0, num_layers=num_layers,
        bidirectional=bidirectional, dtype=dtype, allow_zero_length=False)
    expected = run_torch(rnn.state_dict(), x, h0, lengths, gy, ghn, num_layers=num_layers,
                         nonlinearity=nonlinearity, bidirectional=bidirectional,
                         batch_first=layout == "batch")
    assert_results_close(run_module(rnn, x, h0, lengths, gy, ghn), expected, dtype)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_module_loads_torch_weights(torch, rng, nonlinearity, bias, dtype):
    torch.manual_seed(int(rng.integers(2**31)))
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    torch_rnn = torch.nn.RNN(I, H, num_layers=2, nonlinearity=nonlinearity, bias=bias,
                             batch_first=True, bidirectional=True, dtype=tdtype)
    rnn = make_rnn(rng, 2, nonlinearity, bias, "batch", 0.0, True, dtype)
    rnn.load_state_dict({k: v.detach().numpy() for k, v in torch_rnn.state_dict().items()})
    x = rng.standard_normal((N, L, I)).astype(dtype)
    h0 = rng.standard_normal((4, N, H)).astype(dtype)
    out, hn = rnn(x, h0)
    t_out, t_hn = torch_rnn(torch.from_numpy(x), torch.from_numpy(h0))
    assert_close_rel(out, t_out.detach().numpy(), dtype, name="output")
    assert_close_rel(hn, t_hn.detach().numpy(), dtype, name="h_n")


# parameters, init, state_dict ---------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_named_parameters_follow_torch(rng, num_layers, bidirectional, bias, dtype):
    rnn = make_rnn(rng, num_layers, bias=bias, bidirectional=bidirectional, dtype=dtype)
    expected = expected_param_shapes(I, H, num_layers, bidirectional, bias)
    named = list(rnn.named_parameters())
    assert [name for name, _ in named] == list(expected)
    for name, p in named:
        assert p.data.shape == expected[name], name
        assert p.data.dtype == np.dtype(dtype), name
    assert all(p is q for p, (_, q) in zip(rnn.parameters(), named, strict=True))
    assert list(rnn.state_dict()) == list(expected)


def test_named_parameters_match_torch_module(torch):
    for num_layers in (1, 2, 3):
        for bidirectional in (False, True):
            for bias in (False, True):
                t = torch.nn.RNN(I, H, num_layers=num_layers, bias=bias,
                                 bidirectional=bidirectional)
                rnn = fastrnn.RNN(I, H, num_layers=num_layers, bias=bias,
                                  bidirectional=bidirectional)
                assert ([(k, tuple(v.shape)) for k, v in t.named_parameters()]
                        == [(k, p.data.shape) for k, p in rnn.named_parameters()])


def test_attributes_record_constructor_arguments():
    rnn = fastrnn.RNN(3, 7, 2, "relu", False, True, 0.25, True, dtype=np.float64, seed=0)
    assert (rnn.input_size, rnn.hidden_size, rnn.num_layers) == (3, 7, 2)
    assert (rnn.nonlinearity, rnn.bias, rnn.batch_first) == ("relu", False, True)
    assert (rnn.dropout, rnn.bidirectional, rnn.dtype) == (0.25, True, np.float64)
    defaults = fastrnn.RNN(3, 7)
    assert (defaults.num_layers, defaults.nonlinearity, defaults.bias) == (1, "tanh", True)
    assert (defaults.batch_first, defaults.dropout, defaults.bidirectional) == (False, 0.0, False)
    assert defaults.dtype == np.float32 and defaults.training


@pytest.mark.parametrize("hidden_size", [4, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_init_is_uniform_in_torch_range(hidden_size, dtype):
    rnn = fastrnn.RNN(I, hidden_size, num_layers=2, bidirectional=True, dtype=dtype, seed=0)
    bound = 1 / np.sqrt(hidden_size)
    values = []
    for name, p in rnn.named_parameters():
        assert np.all(np.abs(p.data) <= bound * (1 + 1e-6)), name
        assert np.unique(p.data).size > p.data.size // 2, f"{name} is not random"
        values.append(p.data.ravel())
    values = np.concatenate(values)
    # fills the range symmetrically, not a narrower distribution
    assert values.max() > 0.9 * bound and values.min() < -0.9 * bound
    assert abs(values.mean()) < 0.1 * bound
    # no two parameters share their values
    datas = [p.data for p in rnn.parameters()]
    assert all(not np.array_equal(a[:2], b[:2]) for i, a in enumerate(datas) for b in datas[i + 1:]
               if a.shape[:1] == b.shape[:1])


def test_seed_reproducibility():
    def params(seed):
        return fastrnn.RNN(I, H, num_layers=2, bidirectional=True, seed=seed).state_dict()

    def same(a, b):
        return all(np.array_equal(a[k], b[k]) for k in a)

    assert same(params(3), params(3))
    assert not same(params(3), params(4))
    assert same(params(np.random.default_rng(5)), params(np.random.default_rng(5)))
    assert not same(params(None), params(None))


def test_state_dict_holds_copies(rng):
    rnn = make_rnn(rng)
    sd = rnn.state_dict()
    saved = {k: v.copy() for k, v in sd.items()}
    for v in sd.values():
        v[...] = 0
    assert all(np.array_equal(rnn.state_dict()[k], saved[k]) for k in saved)


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_roundtrip(rng, dtype):
    source, target = make_rnn(rng, dtype=dtype), make_rnn(rng, dtype=dtype)
    sd = source.state_dict()
    target.load_state_dict(sd)
    loaded = target.state_dict()
    assert list(loaded) == list(sd)
    assert all(np.array_equal(loaded[k], sd[k]) and loaded[k].dtype == np.dtype(dtype) for k in sd)
    for v in sd.values():  # loading copies: later changes to the source dict don't leak in
        v += 1
    assert all(np.array_equal(target.state_dict()[k], loaded[k]) for k in loaded)
    x = rng.standard_normal((L, N, I)).astype(dtype)
    out, hn = target(x)
    ref_out, ref_hn, _ = reference.rnn_forward(x, loaded, num_layers=2, bidirectional=True)
    assert_close_rel(out, ref_out, dtype, name="output")
    assert_close_rel(hn, ref_hn, dtype, name="h_n")


def test_in_place_parameter_update_takes_effect(rng):
    """An optimiser step ``p.data -= lr * p.grad`` changes what the next forward computes."""
    rnn = make_rnn(rng, dtype=np.float64)
    x, h0, lengths, gy, ghn = make_inputs(rng, layout="time", lengths_kind="ragged", with_h0=True,
                                          num_layers=2, bidirectional=True, dtype=np.float64)
    run_module(rnn, x, h0, lengths, gy, ghn)
    before = rnn.state_dict()
    for _, p in rnn.named_parameters():
        p.data -= 0.1 * p.grad
    after = rnn.state_dict()
    assert not all(np.array_equal(before[k], after[k]) for k in before)
    expected = run_api(reference, after, x, h0, gy, ghn,
                       **forward_kwargs(2, "tanh", True, "time", lengths))
    assert_results_close(run_module(rnn, x, h0, lengths, gy, ghn), expected, np.float64)


# gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_accumulate_until_zero_grad(rng, dtype):
    rnn = make_rnn(rng, dtype=dtype)
    x, h0, lengths, gy, ghn = make_inputs(rng, layout="time", lengths_kind="ragged", with_h0=True,
                                          num_layers=2, bidirectional=True, dtype=dtype)
    _, _, _, _, single = run_api(reference, rnn.state_dict(), x, h0, gy, ghn,
                                 **forward_kwargs(2, "tanh", True, "time", lengths))
    rnn.zero_grad()
    for _ in range(2):
        rnn(x, h0, lengths)
        rnn.backward(gy, ghn)
    assert_grads_close({k: p.grad for k, p in rnn.named_parameters()},
                       {k: 2 * g for k, g in single.items()}, dtype)
    rnn.zero_grad()
    for name, p in rnn.named_parameters():
        assert p.grad is None or np.all(p.grad == 0), name
    rnn(x, h0, lengths)
    rnn.backward(gy, ghn)
    assert_grads_close({k: p.grad for k, p in rnn.named_parameters()}, single, dtype)


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU],
                         ids=["rnn", "lstm", "gru"])
def test_backward_of_some_gradients(rng, cls):
    """backward(..., input_grad=False): grad_x None; param_grads=False (or naming only the
    top layer's): the others' p.grad untouched; the other gradients as the full backward's."""
    x = rng.standard_normal((L, N, I)).astype(np.float32)
    as_tuple = (lambda g: g) if cls is fastrnn.LSTM else (lambda g: (g,))
    results = {}
    top = frozenset(n for n, _ in cls(I, H, num_layers=2, bidirectional=True).named_parameters()
                    if "_l1" in n)
    for wanted in ((True, True), (False, True), (True, False), (True, top)):
        module = cls(I, H, num_layers=2, bidirectional=True, seed=3)
        out, _ = module(x)
        grad_x, grad_state = module.backward(np.ones_like(out), input_grad=wanted[0],
                                             param_grads=wanted[1])
        results[wanted] = (grad_x, as_tuple(grad_state),
                           {k: p.grad.copy() for k, p in module.named_parameters()})
    full = results[True, True]
    for wanted, (grad_x, states, grads) in results.items():
        assert (grad_x is None) == (not wanted[0])
        if grad_x is not None:
            assert np.array_equal(grad_x, full[0])
        for a, b in zip(states, full[1]):
            assert np.array_equal(a, b)
        for k, g in grads.items():
            computed = wanted[1] is True or wanted[1] is not False and k in wanted[1]
            assert np.array_equal(g, full[2][k] if computed else np.zeros_like(g)), k


@pytest.mark.parametrize("layout", ["time", "unbatched"])
def test_backward_without_grad_h_n_means_zeros(rng, layout):
    rnn = make_rnn(rng, layout=layout, dtype=np.float64)
    x, h0, _, gy, _ = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=False,
                                  num_layers=2, bidirectional=True, dtype=np.float64)
    expected = run_api(reference, rnn.state_dict(), x, h0, gy, None,
                       **forward_kwargs(2, "tanh", True, layout))
    got = run_module(rnn, x, h0, None, gy, None)
    assert_results_close(got, expected, np.float64)
    assert got[3].shape == expected[1].shape  # grad_h0 shaped like h_n, even with h0=None


@pytest.mark.parametrize("layout", ["time", "batch", "unbatched"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["noh0", "h0"])
def test_empty_sequence(rng, layout, with_h0):
    """L = 0 is accepted (torch refuses it): empty output, h_n = h0, gradients pass straight."""
    rnn = make_rnn(rng, layout=layout, dtype=np.float64)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=with_h0,
                                    num_layers=2, bidirectional=True, dtype=np.float64,
                                    seq_len=0)
    out, hn, grad_x, grad_h0, grads = run_module(rnn, x, h0, None, gy, ghn)
    assert out.shape == gy.shape
    assert np.array_equal(hn, np.zeros_like(ghn) if h0 is None else h0)
    assert grad_x.shape == x.shape
    assert np.array_equal(grad_h0, ghn)
    assert all(np.all(g == 0) for g in grads.values())


def test_empty_batch(rng):
    rnn = make_rnn(rng)
    x = np.zeros((L, 0, I), dtype=np.float32)
    out, hn = rnn(x)
    assert out.shape == (L, 0, 2 * H) and hn.shape == (4, 0, H)
    grad_x, grad_h0 = rnn.backward(np.zeros_like(out), np.zeros_like(hn))
    assert grad_x.shape == x.shape and grad_h0.shape == hn.shape


@pytest.mark.parametrize("lengths_as", [list, tuple, np.int32, np.int64, np.uint8])
def test_lengths_accept_any_integer_sequence(rng, lengths_as):
    rnn = make_rnn(rng, dtype=np.float64)
    x, h0, lengths, gy, ghn = make_inputs(rng, layout="time", lengths_kind="ragged", with_h0=True,
                                          num_layers=2, bidirectional=True, dtype=np.float64)
    converted = (lengths_as(int(n) for n in lengths) if lengths_as in (list, tuple)
                 else lengths.astype(lengths_as))
    expected = run_api(reference, rnn.state_dict(), x, h0, gy, ghn,
                       **forward_kwargs(2, "tanh", True, "time", lengths))
    assert_results_close(run_module(rnn, x, h0, converted, gy, ghn), expected, np.float64)


@pytest.mark.parametrize("variant", ["fortran", "transposed", "strided", "readonly"])
def test_any_memory_layout_gives_identical_results(rng, variant):
    rnn = make_rnn(rng, layout="batch", dtype=np.float64)
    x, h0, lengths, gy, ghn = make_inputs(rng, layout="batch", lengths_kind="short", with_h0=True,
                                          num_layers=2, bidirectional=True, dtype=np.float64)
    contiguous = run_module(rnn, x, h0, lengths, gy, ghn)
    assert_results_close(contiguous, run_api(reference, rnn.state_dict(), x, h0, gy, ghn,
                                             **forward_kwargs(2, "tanh", True, "batch", lengths)),
                         np.float64)

    def relayout(a):
        if variant == "fortran":
            return np.asfortranarray(a)
        if variant == "transposed":  # same values, axes stored in another order
            return np.ascontiguousarray(a.transpose(2, 0, 1)).transpose(1, 2, 0)
        if variant == "strided":
            big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
            big[..., 1::2] = a
            return big[..., 1::2]
        a = a.copy()
        a.flags.writeable = False
        return a

    variant_inputs = [relayout(a) for a in (x, h0, gy, ghn)]
    assert all(not a.flags.c_contiguous or not a.flags.writeable for a in variant_inputs)
    vx, vh0, vgy, vghn = variant_inputs
    assert_results_equal(run_module(rnn, vx, vh0, lengths, vgy, vghn), contiguous)


def test_calls_neither_modify_inputs_nor_reuse_returned_arrays(rng):
    rnn = make_rnn(rng)
    first = make_inputs(rng, layout="time", lengths_kind="ragged", with_h0=True, num_layers=2,
                        bidirectional=True, dtype=np.float32)
    saved_inputs = [a.copy() for a in first]
    x, h0, lengths, gy, ghn = first
    results = rnn(x, h0, lengths) + rnn.backward(gy, ghn)
    saved_results = [a.copy() for a in results]
    x2, h02, lengths2, gy2, ghn2 = make_inputs(rng, layout="time", lengths_kind="short",
                                               with_h0=True, num_layers=2, bidirectional=True,
                                               dtype=np.float32)
    rnn(x2, h02, lengths2)
    rnn.backward(gy2, ghn2)
    assert all(np.array_equal(a, b) for a, b in zip(first, saved_inputs, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(results, saved_results, strict=True))


def test_forward_and_call_agree(rng):
    rnn = make_rnn(rng)
    x = rng.standard_normal((L, N, I)).astype(np.float32)
    a, b = rnn(x), rnn.forward(x)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# training / eval modes and dropout ----------------------------------------------------------

def test_train_eval_flags(rng):
    rnn = make_rnn(rng)
    assert rnn.training
    rnn.eval()
    assert not rnn.training
    rnn.train()
    assert rnn.training
    rnn.train(False)
    assert not rnn.training


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_mode_ignores_dropout(rng, dtype):
    rnn = make_rnn(rng, num_layers=3, dropout=0.5, dtype=dtype)
    x, h0, lengths, _, _ = make_inputs(rng, layout="time", lengths_kind="ragged", with_h0=True,
                                       num_layers=3, bidirectional=True, dtype=dtype)
    ref_out, ref_hn, _ = reference.rnn_forward(x, rnn.state_dict(), h0,
                                               **forward_kwargs(3, "tanh", True, "time", lengths))
    train_out, _ = rnn(x, h0, lengths)
    assert not np.allclose(train_out, ref_out)  # dropout is on in training mode
    rnn.eval()
    out, hn = rnn(x, h0, lengths)
    assert_close_rel(out, ref_out, dtype, name="output")
    assert_close_rel(hn, ref_hn, dtype, name="h_n")


def test_dropout_with_same_seed_is_reproducible(rng):
    x, h0, lengths, gy, ghn = make_inputs(rng, layout="time", lengths_kind="ragged", with_h0=True,
                                          num_layers=3, bidirectional=True, dtype=np.float32)
    runs = [run_module(fastrnn.RNN(I, H, 3, dropout=0.3, bidirectional=True, seed=11),
                       x, h0, lengths, gy, ghn) for _ in range(2)]
    assert_results_equal(runs[0], runs[1])


def mask_revealing_state_dict(rnn):
    """Weights that make a 2-layer relu RNN output exactly its dropout mask.

    Layer 0 outputs relu(bias 1) = 1 everywhere; layer 1 copies its (dropped-out) input
    through an identity with no recurrence, so output = mask · 1, a value 0 or 1/(1−p).
    """
    H_, D = rnn.hidden_size, 2 if rnn.bidirectional else 1
    sd = {k: np.zeros_like(v) for k, v in rnn.state_dict().items()}
    for d, suffix in enumerate(["", "_reverse"][:D]):
        sd[f"bias_ih_l0{suffix}"][:] = 1
        sd[f"weight_ih_l1{suffix}"][:, d * H_:(d + 1) * H_] = np.eye(H_)
    return sd


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_zeroes_fraction_p_and_scales_the_rest(p, bidirectional, dtype):
    rnn = fastrnn.RNN(3, 10, 2, "relu", dropout=p, bidirectional=bidirectional, dtype=dtype,
                      seed=1)
    rnn.load_state_dict(mask_revealing_state_dict(rnn))
    x = np.ones((20, 50, 3), dtype=dtype)  # ≥ 10 000 output elements
    out, _ = rnn(x)
    assert out.size >= 10_000
    zeroed = np.mean(out == 0)
    assert p - 0.05 < zeroed < p + 0.05
    assert_close_rel(out[out != 0], np.full(np.count_nonzero(out), 1 / (1 - p)), dtype)
    again, _ = rnn(x)
    assert not np.array_equal(again, out), "each forward draws a new mask"


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layout", ["time", "batch", "unbatched"])
def test_dropout_training_gradients_match_reference(rng, bidirectional, layout):
    """Module dropout in training mode: values and gradients equal the reference's with the
    same mask. The mask is read off a twin module (same seed, so the same mask stream)
    whose weights make its output the mask itself.
    """
    dtype, p = np.float64, 0.4
    seed = int(rng.integers(2**31))
    twin = fastrnn.RNN(I, H, 2, "relu", dropout=p, bidirectional=bidirectional,
                       batch_first=layout == "batch", dtype=dtype, seed=seed)
    rnn = fastrnn.RNN(I, H, 2, "relu", dropout=p, bidirectional=bidirectional,
                      batch_first=layout == "batch", dtype=dtype, seed=seed)
    twin.load_state_dict(mask_revealing_state_dict(twin))
    params = random_params(rng, I, H, 2, bidirectional, True, dtype)
    rnn.load_state_dict(params)
    x, h0, _, gy, ghn = make_inputs(rng, layout=layout, lengths_kind=None, with_h0=True,
                                    num_layers=2, bidirectional=bidirectional, dtype=dtype)
    mask, _ = twin(x)
    mask = mask[:, None] if layout == "unbatched" else (
        mask.transpose(1, 0, 2) if layout == "batch" else mask)
    assert set(np.unique(mask)) == {0, 1 / (1 - p)}
    expected = run_api(reference, params, x, h0, gy, ghn, **forward_kwargs(
        2, "relu", bidirectional, layout, dropout_masks=[mask]))
    assert_results_close(run_module(rnn, x, h0, None, gy, ghn), expected, dtype)
