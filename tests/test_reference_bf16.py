"""The reference's bfloat16 model (fastrnn.reference, precision="bfloat16") checked on its own:
its rounding against torch's, and its products' error against float32 of bfloat16 size."""

import numpy as np
import pytest

from _gated import random_gated_params, gated_inputs, run_gated
from _helpers import random_params, make_inputs, run_api
import fastrnn
from fastrnn import reference
from fastrnn.reference import round_to_bfloat16

CELLS = ["tanh", "relu", "lstm", "lstm-proj", "gru"]


@pytest.fixture
def default_precision():
    """Restore the process default after the test."""
    previous = fastrnn.get_matmul_precision()
    yield
    fastrnn.set_matmul_precision(previous)


def _special_values():
    f = np.float32
    bf16_max = f(np.frombuffer(np.uint32(0x7F7F0000).tobytes(), np.float32)[0])
    ties = [1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8), -(1 + 3 * 2.0**-8),
            2.0**-126 * (1 + 2.0**-8)]
    return np.array([0.0, -0.0, 1.0, -1.0, 1 / 3, -1 / 3, 3.14159, 1e-3, 65504.0, 1e30, -1e30,
                     bf16_max, np.nextafter(bf16_max, f(np.inf)), f(3.3961e38), f(3.4e38),
                     np.finfo(f).max, -np.finfo(f).max, np.inf, -np.inf, np.nan, -np.nan,
                     np.finfo(f).tiny, 1e-39, -1e-39, 1e-41, 1e-45, -1e-45, 9.2e-41,
                     *ties], dtype=f)


def _all_kinds_of_bits(rng):
    """Random bit patterns (every exponent, NaN payloads, subnormals) and every pattern whose
    low 16 bits are a tie (0x8000) or one either side, for some high halves."""
    random_bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    high = rng.integers(0, 2**16, size=4000, dtype=np.uint64).astype(np.uint32) << 16
    near_ties = (high[:, None] + np.array([0x7FFF, 0x8000, 0x8001, 0, 0xFFFF], np.uint32))
    return np.concatenate([random_bits, near_ties.ravel()]).view(np.float32)


def test_round_to_bfloat16_matches_torch(rng, torch):
    x = np.concatenate([_special_values(), _all_kinds_of_bits(rng)])
    got = round_to_bfloat16(x)
    expected = torch.tensor(x).to(torch.bfloat16).float().numpy()
    assert got.dtype == np.float32 and got.shape == x.shape
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    # bitwise where not NaN (signs of zeros included); torch's NaN is its canonical one
    assert np.array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    # subnormals: torch rounds them like any other value (9.2e-41 -> 9.18355e-41, 1e-45 ->
    # 0 by ties to even), it does not flush them to zero; the reference does the same. (The
    # AVX512_BF16 instructions treat subnormal inputs as zero: a difference of < 1e-38.)
    tiny = (np.abs(x) < np.finfo(np.float32).tiny) & (x != 0)
    assert np.any(got[tiny] != 0)


def test_round_to_bfloat16_known_values():
    x = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-8 + 2.0**-20, -(1 + 3 * 2.0**-8),
                  3.4e38, -3.4e38, np.inf, np.nan, 1.0], np.float32)
    got = round_to_bfloat16(x)
    # ties to even: 1 + 2^-8 down to 1, 1 + 3·2^-8 up to 1 + 2^-6; past a tie rounds up;
    # beyond bf16's largest (3.3895e38) to inf
    assert np.array_equal(got[:7], np.array([1, 1 + 2.0**-6, 1 + 2.0**-7, -(1 + 2.0**-6),
                                             np.inf, -np.inf, np.inf], np.float32))
    assert np.isnan(got[7]) and got[8] == 1
    # 2-D, strided and 0-d inputs keep their shape; the result is idempotent
    m = np.linspace(-3, 3, 35, dtype=np.float32).reshape(5, 7)[:, ::2]
    assert round_to_bfloat16(m).shape == (5, 4)
    assert np.array_equal(round_to_bfloat16(round_to_bfloat16(m)), round_to_bfloat16(m))
    assert round_to_bfloat16(np.float32(1 + 2.0**-7 + 2.0**-9)).shape == ()
    assert not np.array_equal(round_to_bfloat16(m), m)


def test_round_to_bfloat16_refuses_other_dtypes():
    with pytest.raises(TypeError, match="float32"):
        round_to_bfloat16(np.ones(3))


def _case(rng, cell, dtype=np.float32, L=10, N=6, I=16, H=32, layers=2, bidirectional=True):
    """(run(**precision) -> flat dict of results) for one case of ``cell``."""
    kwargs = dict(num_layers=layers, bidirectional=bidirectional)
    if cell in ("tanh", "relu"):
        params = random_params(rng, I, H, layers, bidirectional, True, dtype)
        x, h0, _, gy, ghn = make_inputs(rng, layout="time", lengths_kind=None, with_h0=True,
                                        num_layers=layers, bidirectional=bidirectional,
                                        dtype=dtype, seq_len=L, batch=N, input_size=I,
                                        hidden_size=H)

        def run(**precision):
            out, hn, gx, gh0, grads = run_api(reference, params, x, h0, gy, ghn,
                                              nonlinearity=cell, **kwargs, **precision)
            return dict(output=out, h_n=hn, grad_x=gx, grad_h0=gh0, **grads)
        return run
    name, proj = ("lstm", 5) if cell == "lstm-proj" else (cell, 0)
    params = random_gated_params(rng, name, I, H, layers, bidirectional, True, dtype, proj)
    x, states, _, gy, gs = gated_inputs(rng, name, "time", None, True, layers, bidirectional,
                                        dtype, proj, seq_len=L, batch=N, input_size=I,
                                        hidden_size=H)

    def run(**precision):
        out, finals, gx, g_states, grads = run_gated(reference, name, params, x, states, gy, gs,
                                                     **kwargs, **precision)
        return dict(output=out, grad_x=gx, **{f"final{i}": f for i, f in enumerate(finals)},
                    **{f"grad_state{i}": g for i, g in enumerate(g_states)}, **grads)
    return run


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_model_error_is_bfloat16_sized(rng, cell):
    run = _case(rng, cell)
    bf16, fp32 = run(precision="bfloat16"), run(precision="float32")
    for name in fp32:
        assert bf16[name].dtype == np.float32, name
        # bf16's unit roundoff is 2^-9 ≈ 2e-3: errors of a few 1e-4..1e-3 over a whole
        # result (far above float32's 6e-8, and not 0: the products were rounded). relu's
        # gradients are discontinuous (a unit the rounding turns off has no gradient):
        # measured up to 8e-2 there
        err = _rel(bf16[name], fp32[name])
        high = 2e-1 if cell == "relu" and name != "output" and name != "h_n" else 2e-2
        assert 1e-4 <= err <= high, f"{name}: ‖bf16 − fp32‖/‖fp32‖ = {err:.3g}"


@pytest.mark.parametrize("cell", CELLS)
def test_float32_precision_is_the_plain_forward(rng, cell, default_precision):
    run = _case(rng, cell, L=5, N=3, I=4, H=6)
    plain = run()
    fastrnn.set_matmul_precision("bfloat16")
    explicit = run(precision="float32")
    for name in plain:
        assert np.array_equal(explicit[name], plain[name]), name
    # and the default is honoured: None follows it, read when the forward runs
    followed = run()
    fastrnn.set_matmul_precision("float32")
    assert all(np.array_equal(followed[k], v) for k, v in run(precision="bfloat16").items())
    assert not np.array_equal(followed["output"], plain["output"])


@pytest.mark.parametrize("cell", CELLS)
def test_float64_refuses_bfloat16_and_ignores_the_default(rng, cell, default_precision):
    run = _case(rng, cell, dtype=np.float64, L=4, N=2, I=3, H=4, layers=1)
    with pytest.raises(ValueError, match="float32"):
        run(precision="bfloat16")
    plain = run()
    fastrnn.set_matmul_precision("bfloat16")
    under_default = run()
    for name in plain:
        assert under_default[name].dtype == np.float64
        assert np.array_equal(under_default[name], plain[name]), name


def test_unknown_precision_is_refused(rng):
    run = _case(rng, "gru", L=3, N=2, I=3, H=4, layers=1)
    with pytest.raises(ValueError, match="bfloat16"):
        run(precision="tf32")
