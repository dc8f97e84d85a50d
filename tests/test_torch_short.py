"""fastrnn.torch's forwards of a few steps without autograd, on a stream the module keeps.

Under torch.no_grad (inference_mode, frozen weights and input) a forward of a few steps
(stream.KeptStream.fits) runs on streams the module keeps (one per layer and direction for
a bidirectional module) instead of packing the weights per call. Its results must be bitwise those of the forward autograd records,
and no change of the weights, however made, may leave it computing with stale ones.
"""

import copy
import io
import threading

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402
from fastrnn.stream import KeptStream  # noqa: E402

I, H = 6, 7
# (module name, options)
CELLS = [pytest.param(("RNN", {}), id="rnn"), pytest.param(("LSTM", {}), id="lstm"),
         pytest.param(("LSTM", dict(proj_size=3)), id="lstm-proj"),
         pytest.param(("GRU", {}), id="gru")]
# (steps, batch) on both sides of the rule: up to 8 steps, up to 24 steps of up to 32
# sequences, or up to 48 steps of 2 to 16 sequences
SHORT_CALLS = [(1, 1), (8, 40), (9, 33), (24, 32), (24, 1), (25, 1), (48, 2), (49, 2), (48, 16),
               (25, 17)]


def build(cell, **kwargs):
    name, options = cell
    torch.manual_seed(11)
    return getattr(ft, name)(I, H, num_layers=2, **options, **kwargs)


def random_hx(module, batch, dtype=torch.float32):
    """(h0, c0) for an LSTM, h0 otherwise, random; batch None for unbatched."""
    layers = (2 if module.bidirectional else 1) * module.num_layers
    lead = (layers,) if batch is None else (layers, batch)
    h0 = torch.randn(*lead, getattr(module, "proj_size", 0) or H, dtype=dtype)
    return (h0, torch.randn(*lead, H, dtype=dtype)) if module.mode == "LSTM" else h0


def flat(result):
    output, state = result
    return (output, *state) if isinstance(state, tuple) else (output, state)


def recorded(module, x, hx=None):
    """The results of the forward autograd records (x requiring a gradient), detached."""
    return [t.detach() for t in flat(module(x.detach().requires_grad_(), hx))]


def without_grad(module, x, hx=None, context="no_grad"):
    with getattr(torch, context)():
        results = flat(module(x, hx))
    assert all(t.grad_fn is None for t in results)
    return results


def assert_bitwise(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b)


def on_stream(module):
    kept = module.__dict__.get("_kept_stream")
    return kept is not None and kept._kept is not None


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("steps, batch", SHORT_CALLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_short_forward_is_bitwise_the_recorded_one(cell, steps, batch, bidirectional):
    module = build(cell, bidirectional=bidirectional)
    x, hx = torch.randn(steps, batch, I), random_hx(module, batch)
    got = without_grad(module, x, hx)
    assert on_stream(module) == KeptStream.fits(steps, batch)  # the case covers its path
    assert_bitwise(got, recorded(module, x, hx))


# layouts, states, options, dtypes and the ways of running without autograd
CASES = ["batch_first", "unbatched", "unbatched-hx", "no-hx", "float64", "bfloat16",
         "inference_mode", "frozen", "train-mode", "bidirectional-batch_first",
         "bidirectional-unbatched-hx"]


@pytest.mark.parametrize("cell, case", [
    pytest.param(cell.values[0], case, id=f"{cell.id}-{case}")
    for cell in CELLS for case in CASES
] + [pytest.param(CELLS[0].values[0], "relu", id="rnn-relu")])  # (the Elman RNN's option)
def test_short_forward_in_every_layout_and_option(cell, case):
    kwargs = dict(batch_first=case.endswith("batch_first"),
                  bidirectional=case.startswith("bidirectional"),
                  dtype=torch.float64 if case == "float64" else torch.float32)
    if case == "relu":
        kwargs["nonlinearity"] = "relu"
    module = build(cell, **kwargs)
    module.train(case == "train-mode")  # (no dropout: a training forward is the eval one)
    if case == "bfloat16":
        module.precision = "bfloat16"
    dtype = kwargs["dtype"]
    unbatched = "unbatched" in case
    x = torch.randn(*((5,) if unbatched else (3, 5) if kwargs["batch_first"] else (5, 3)), I,
                    dtype=dtype)
    hx = None if case in ("no-hx", "unbatched") else random_hx(module, None if unbatched
                                                              else 3, dtype)
    if case == "frozen":
        for p in module.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            got = flat(module(x, hx))
        for p in module.parameters():
            p.requires_grad_(True)
    else:
        got = without_grad(module, x, hx,
                           "inference_mode" if case == "inference_mode" else "no_grad")
    assert on_stream(module)
    assert_bitwise(got, recorded(module, x, hx))


def test_bfloat16_products_on_the_stream():
    """precision='bfloat16' on the kept stream: its results differ from float32 products
    (the case above checks they are the recorded bf16 forward's)."""
    module = build(CELLS[1].values[0])
    x = torch.randn(4, 2, I)
    float32 = without_grad(module, x)
    module.precision = "bfloat16"
    bf16 = without_grad(module, x)
    assert on_stream(module)
    assert not torch.equal(bf16[0], float32[0])
    assert torch.allclose(bf16[0], float32[0], atol=0.05)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_packed_sequences_of_equal_lengths_on_the_stream(cell, bidirectional):
    """A PackedSequence whose sequences are all whole (one sequence, say) runs as a tensor
    does: on the kept stream, bitwise the forward autograd records; ragged ones do not."""
    module = build(cell, bidirectional=bidirectional)
    pack = torch.nn.utils.rnn.pack_padded_sequence
    for lengths, whole in (([5], True), ([5, 5, 5], True), ([5, 3, 5], False)):
        module.__dict__.pop("_kept_stream", None)
        x = torch.randn(5, len(lengths), I)
        with torch.no_grad():
            out, state = module(pack(x, torch.tensor(lengths), enforce_sorted=False))
        assert on_stream(module) == whole
        want, want_state = module(pack(x.requires_grad_(), torch.tensor(lengths),
                                       enforce_sorted=False))
        assert_bitwise(flat((out.data, state)),
                       [t.detach() for t in flat((want.data, want_state))])


def test_not_on_the_stream():
    """Dropout masks (training), packed sequences and calls autograd records pack the
    weights per call."""
    x = torch.randn(4, 2, I)
    module = build(CELLS[3].values[0], dropout=0.5)
    without_grad(module, x)
    assert not on_stream(module)
    module = build(CELLS[0].values[0]).eval()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 2]))
    with torch.no_grad():
        module(packed)
    module(x.requires_grad_())
    assert not on_stream(module)


def changes():
    """Ways of changing a module's weights in place: (name, function of the module)."""

    def optimizer_step(module):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
        for p in module.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()

    def hand_write(module):
        module.weight_hh_l1.data[...] *= -1

    def numpy_write(module):
        module.weight_ih_l0.detach().numpy()[...] *= -1

    def load_state_dict(module):
        module.load_state_dict({k: -v for k, v in module.state_dict().items()})

    def assign(module):
        module.weight_hh_l0 = torch.nn.Parameter(-module.weight_hh_l0.detach())

    return [pytest.param(f, id=f.__name__)
            for f in (optimizer_step, hand_write, numpy_write, load_state_dict, assign)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("change", changes())
def test_short_forward_sees_every_change_of_the_weights(cell, change):
    module = build(cell).eval()
    x = torch.randn(3, 2, I)
    before = without_grad(module, x)
    assert on_stream(module)
    change(module)
    after = without_grad(module, x)
    assert not torch.equal(after[0], before[0])
    assert_bitwise(after, recorded(module, x))


@pytest.mark.parametrize("cell", CELLS)
def test_functional_call_parameters_are_used(cell):
    module = build(cell).eval()
    x = torch.randn(3, 2, I)
    without_grad(module, x)
    other = {k: torch.randn_like(v) for k, v in module.named_parameters()}
    with torch.no_grad():
        got = flat(torch.func.functional_call(module, other, (x,)))
    want = [t.detach() for t in flat(torch.func.functional_call(module, other,
                                                                (x.requires_grad_(),)))]
    assert_bitwise(got, want)
    assert_bitwise(without_grad(module, x.detach()), recorded(module, x))  # its own again


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("convert", ["double", "float"])
def test_dtype_conversion_after_short_forwards(cell, convert):
    module = build(cell).eval()
    without_grad(module, torch.randn(3, 2, I))
    getattr(module, convert)()
    x = torch.randn(3, 2, I, dtype=module.weight_ih_l0.dtype)
    assert_bitwise(without_grad(module, x), recorded(module, x))


@pytest.mark.parametrize("cell", CELLS)
def test_a_module_with_a_kept_stream_copies_and_saves(cell):
    """deepcopy, pickling through torch.save: the kept stream is not part of the state."""
    module = build(cell).eval()
    x = torch.randn(3, 2, I)
    expected = without_grad(module, x)
    assert on_stream(module)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(module), torch.load(buffer, weights_only=False)):
        assert type(clone) is type(module) and not on_stream(clone)
        assert_bitwise(without_grad(clone, x), expected)
        assert on_stream(clone)


def test_from_torch_modules_keep_a_stream():
    module = ft.from_torch(torch.nn.LSTM(I, H).eval())
    x = torch.randn(2, 1, I)
    got = without_grad(module, x)
    assert on_stream(module)
    assert_bitwise(got, recorded(module, x))


@pytest.mark.parametrize("cell", CELLS)
def test_two_threads_on_one_module(cell):
    """Concurrent short forwards of one module: one runs on the kept stream, the other packs
    its own weights (the stream is never shared), every result bitwise the recorded one."""
    module = build(cell).eval()
    inputs = [torch.randn(4, batch, I) for batch in (1, 2, 3)]
    expected = [recorded(module, x) for x in inputs]
    failures = []
    start = threading.Barrier(2)

    def work(offset):
        start.wait()
        for i in range(60):
            k = (i + offset) % len(inputs)
            got = without_grad(module, inputs[k])
            if not all(torch.equal(a, b) for a, b in zip(got, expected[k])):
                failures.append(k)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert on_stream(module)


def test_kept_stream_memory_follows_the_batch():
    """A new batch size replaces the kept stream rather than adding one."""
    module = build(CELLS[2].values[0]).eval()
    for batch in (1, 2, 1):
        x = torch.randn(2, batch, I)
        assert_bitwise(without_grad(module, x), recorded(module, x))
        assert [s.batch_size for s in module._kept_stream._kept[1]] == [batch]


def test_training_mode_frees_the_kept_stream():
    """model.train() frees the stream (its packed weights and the parameters' copy) of every
    adapter module inside; the next short call without autograd builds it again."""
    model = torch.nn.Sequential(build(CELLS[1].values[0]), torch.nn.Identity()).eval()
    x = torch.randn(3, 2, I)
    with torch.no_grad():
        model[0](x)
    assert on_stream(model[0])
    assert model.train() is model and not on_stream(model[0])
    model.eval()
    assert_bitwise(without_grad(model[0], x), recorded(model[0], x))
    assert on_stream(model[0])
