"""``fastrnn bench``'s cells and peers: the --cell option, FLOPs per cell, the ONNX Runtime and
JAX networks against torch, and peers that are missing, failing or wrong."""
import json

import numpy as np
import pytest

import fastrnn
from fastrnn.bench import CELLS, Size, flops, forward_flops, make_workload, parse_cells, parse_sizes
from fastrnn.bench import peer_time
from fastrnn.bench.workloads import cell_of, flat_arrays

from test_bench import _fastrnn_cli

TORCH_CLASS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# one layer, bidirectional, two layers, both
NETWORKS = ["5x3x4x6", "5x3x4x6-bi", "5x3x4x6-2L", "5x3x4x6-2L-bi"]


@pytest.mark.parametrize("text, cells", [
    ("rnn", ["rnn"]), ("GRU,lstm", ["lstm", "gru"]), ("gru, rnn,gru", ["rnn", "gru"]),
    ("rnn,lstm,gru", ["rnn", "lstm", "gru"]),
])
def test_parse_cells(text, cells):
    assert parse_cells(text) == cells


@pytest.mark.parametrize("text", ["lstmx", "rnn,", "", "tanh"])
def test_bad_cells_are_rejected(text, capsys):
    with pytest.raises(ValueError, match="unknown cell"):
        parse_cells(text)
    from fastrnn.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--cell", text])
    assert e.value.code == 2 and "unknown cell" in capsys.readouterr().err


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("token", ["7x3x5x4", "7x3x5x4-bi", "7x3x5x4-3L-bi"])
def test_flops_count_every_weight_matrix_product(cell, token):
    # each weight matrix of shape (rows, cols) is one (T·N × cols) @ (cols × rows) product per
    # forward: 2·T·N·rows·cols
    size = parse_sizes(token)[0]
    model = getattr(fastrnn, TORCH_CLASS[cell])(size.I, size.H, size.layers,
                                                bidirectional=size.bidirectional)
    expected = sum(2 * size.T * size.N * w.shape[0] * w.shape[1]
                   for name, w in model.state_dict().items() if name.startswith("weight"))
    assert forward_flops(size, cell) == expected
    assert flops(size, "fwd", cell) == expected and flops(size, "fwd+bwd", cell) == 3 * expected


def test_flops_default_to_the_elman_cell():
    size = Size("x", 2, 3, 4, 5)
    assert forward_flops(size) == forward_flops(size, "rnn") == 2 * 2 * 3 * 5 * (4 + 5)


def _torch_result(pass_, size, cell):
    """torch's result on the workloads' weights (fastrnn's initialisation, seed 0) and data
    (seed 0): an independent reference."""
    torch = pytest.importorskip("torch")
    m = getattr(torch.nn, TORCH_CLASS[cell])(size.I, size.H, size.layers,
                                             bidirectional=size.bidirectional)
    ref = getattr(fastrnn, TORCH_CLASS[cell])(size.I, size.H, size.layers,
                                              bidirectional=size.bidirectional,
                                              dtype=np.float32, seed=0)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in ref.state_dict().items()})
    rng = np.random.default_rng(0)
    D = 2 if size.bidirectional else 1
    x = torch.from_numpy(rng.standard_normal((size.T, size.N, size.I), dtype=np.float32))
    grad_out = rng.standard_normal((size.T, size.N, D * size.H), dtype=np.float32)
    if pass_ == "fwd":
        with torch.no_grad():
            out, state = m(x)
        states = state if cell == "lstm" else (state,)
        return [out.numpy(), *(s.numpy() for s in states)]
    x.requires_grad_()
    out, _ = m(x)
    out.backward(torch.from_numpy(grad_out))
    return [out.detach().numpy(), x.grad.numpy()]


def _assert_matches_torch(impl, pass_, token, cell):
    size = parse_sizes(token)[0]
    work = make_workload(impl, pass_, size, cell=cell)
    result = work.call()
    work.check(result)
    expected = _torch_result(pass_, size, cell)
    arrays = flat_arrays(result)[:len(expected)]
    assert len(arrays) == len(expected)
    for a, b in zip(arrays, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # and the check the bench runs once per row, against fastrnn's result
    assert work.compare(result, make_workload("fastrnn", pass_, size, cell=cell).call()) < 1e-4


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("token", NETWORKS)
def test_onnxruntime_matches_torch(cell, token):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _assert_matches_torch("onnxruntime", "fwd", token, cell)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_wrong_gate_order_is_caught(cell, monkeypatch):
    # the bench's one-time check must notice a wrong weight conversion
    pytest.importorskip("onnxruntime")
    from fastrnn.bench import onnx_peer

    size = parse_sizes("5x3x4x6")[0]
    monkeypatch.setitem(onnx_peer.ONNX_GATE_ORDER, cell, tuple(range(CELLS[cell])))
    work = make_workload("onnxruntime", "fwd", size, cell=cell)
    with pytest.raises(AssertionError, match="differs from fastrnn's"):
        work.compare(work.call(), make_workload("fastrnn", "fwd", size, cell=cell).call())


def test_onnx_weights_layout():
    pytest.importorskip("onnx")
    from fastrnn.bench.onnx_peer import onnx_weights

    H, I = 2, 3
    lstm = fastrnn.LSTM(I, H, bidirectional=True, seed=0)
    params = lstm.state_dict()
    W, R, B = onnx_weights(params, "lstm", 0, True)
    assert W.shape == (2, 4 * H, I) and R.shape == (2, 4 * H, H) and B.shape == (2, 8 * H)
    i, f, g, o = np.split(params["weight_ih_l0_reverse"], 4)
    np.testing.assert_array_equal(W[1], np.concatenate([i, o, f, g]))  # ONNX: i, o, f, c
    r, z, n = np.split(fastrnn.GRU(I, H, seed=0).state_dict()["bias_hh_l0"], 3)
    _, _, B = onnx_weights(fastrnn.GRU(I, H, seed=0).state_dict(), "gru", 0, False)
    np.testing.assert_array_equal(B[0, 3 * H:], np.concatenate([z, r, n]))  # ONNX: z, r, h


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("token", NETWORKS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_jax_matches_torch(cell, token, pass_):
    pytest.importorskip("jax")
    _assert_matches_torch("jax", pass_, token, cell)


def test_cell_of():
    assert [cell_of(getattr(fastrnn, c)(2, 3)) for c in ("RNN", "LSTM", "GRU")] == list(CELLS)


def test_missing_peers_are_missing_columns(tmp_path):
    # sys.modules[name] = None makes ``import name`` fail, installed or not
    path = tmp_path / "bench.json"
    proc = _fastrnn_cli("bench", "--sizes", "4x2x3x5", "--repeats", "1", "--cell", "gru",
                        "--no-train-step", "--json", str(path),
                        prelude="sys.modules['jax'] = sys.modules['onnxruntime'] = None; ")
    assert proc.returncode == 0, proc.stderr
    assert "jax is not installed: no jax column" in proc.stdout
    assert "onnxruntime is not installed: no onnxruntime column" in proc.stdout
    assert "vs jax" not in proc.stdout and "vs onnxruntime" not in proc.stdout
    results = json.loads(path.read_text())
    assert "jax" not in results["settings"]["implementations"]
    for row in results["rows"]:
        assert row["cell"] == "gru" and not {"jax", "onnxruntime"} & set(row["results"])
        assert row["best_peer"]["impl"] in row["results"]


@pytest.mark.parametrize("error, reason", [
    (ImportError("No module named 'jax'"), "not installed (No module named 'jax')"),
    (AssertionError("result 0 differs"), "WRONG RESULT, not timed: result 0 differs"),
])
def test_a_peer_that_cannot_build_is_skipped(error, reason, monkeypatch):
    def build_checked(*args):
        raise error

    monkeypatch.setattr(peer_time, "build_checked", build_checked)
    answers = []
    peer_time._serve("jax", [json.dumps({"build": ["rnn", "fwd", "4x2x3x5"]})], answers.append)
    assert answers == [{"skipped": reason}]


def test_a_peer_process_that_fails_is_skipped_with_its_error():
    # an implementation the child does not know: it fails, the row records why
    proc = peer_time.PeerProcess("nonesuch", 1)
    try:
        result = proc.build("rnn", "fwd", parse_sizes("4x2x3x5")[0])
    finally:
        proc.close()
    assert "nonesuch's process ended" in result["skipped"] and "KeyError" in result["skipped"]


def test_a_peer_process_builds_checks_and_times_rounds():
    pytest.importorskip("torch")
    proc = peer_time.PeerProcess("torch", 1)
    try:
        check = proc.build("lstm", "fwd+bwd", parse_sizes("4x2x3x5-bi")[0])
        times = proc.round(2)
    finally:
        proc.close()
    assert 0 <= check["max_error"] < 1e-4
    assert len(times) >= 2 and all(t > 0 for t in times)
