"""``fastrnn bench``: runs end to end on a tiny size and writes complete JSON and a plot."""
import json
import os
import subprocess
import sys

import pytest

import fastrnn
from fastrnn.bench import ROUNDS, format_table
from fastrnn.bench.workloads import missing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
TINY = ["--sizes", "8x2x4x6", "--repeats", "1", "--cell", "rnn"]


def _env():
    return dict(os.environ,
                PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def _fastrnn_cli(*args, prelude=""):
    """Run the command line in a fresh process (it sets thread counts process-wide)."""
    code = f"import sys; {prelude}from fastrnn.__main__ import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=_env(), capture_output=True,
                          text=True, timeout=300)


def _positive(x):
    return isinstance(x, (int, float)) and x > 0


def test_bench_json(tmp_path):
    path = tmp_path / "bench.json"
    # the default cells: every one
    proc = subprocess.run([sys.executable, "-m", "fastrnn", "bench", *TINY[:4], "--json",
                           str(path)], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "matmul peak:" in proc.stdout and "8x2x4x6" in proc.stdout
    results = json.loads(path.read_text())

    machine = results["machine"]
    for key in ("cpu_model", "cpu_generation", "logical_cpus", "usable_cpus", "threads", "kernel",
                "python", "numpy", "fastrnn", "torch"):
        assert key in machine
    assert machine["kernel"] == fastrnn.functional.get_kernel()
    assert _positive(machine["threads"]) and _positive(machine["logical_cpus"])
    peak = results["matmul_peak"]
    assert peak["n"] == 2048 and "OPENBLAS_CORETYPE" in peak["unset"]
    assert _positive(peak["gflops"]), peak.get("error")
    assert len(peak["attempts_gflops"]) == 3 and peak["gflops"] == max(peak["attempts_gflops"])

    assert [(r["cell"], r["size"], r["pass"]) for r in results["rows"]] == [
        (cell, "8x2x4x6", p) for cell in ("rnn", "lstm", "gru") for p in ("fwd", "fwd+bwd")]
    installed = [impl for impl in ("torch", "onnxruntime", "jax") if missing(impl) is None]
    for row in results["rows"]:
        assert (row["T"], row["N"], row["I"], row["H"], row["layers"]) == (8, 2, 4, 6, 1)
        gates = {"rnn": 1, "lstm": 4, "gru": 3}[row["cell"]]
        one_forward = 2 * 8 * 2 * gates * 6 * (4 + 6)
        assert row["flops"] == one_forward * (1 if row["pass"] == "fwd" else 3)
        assert _positive(row["pct_peak"])
        timed = ["reference"] + [i for i in installed
                                 if not (i == "onnxruntime" and row["pass"] == "fwd+bwd")]
        for impl in ["fastrnn"] + timed:
            r = row["results"][impl]
            assert r["repeats"] == len(r["times_ms"]) >= 1
            if impl == "reference":
                assert r["repeats"] == 1
            else:  # at least one timed call in each of the alternating rounds
                assert r["repeats"] >= results["settings"]["rounds"] == ROUNDS
            assert _positive(r["median_ms"]) and _positive(r["gflops"])
            assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / peak["gflops"])
            if impl != "fastrnn":
                assert _positive(row["speedup"][impl])
                assert 0 <= r["max_error"] <= results["settings"]["check_rtol"]
        best = min(timed, key=row["speedup"].get)
        assert row["best_peer"] == {"impl": best, "speedup": row["speedup"][best]}
        if "onnxruntime" in installed and row["pass"] == "fwd+bwd":
            assert "no backward" in row["results"]["onnxruntime"]["skipped"]

    # the table printed row by row is format_table's, with aligned columns
    lines = format_table(results).splitlines()
    table = lines[lines.index(next(l for l in lines if l.startswith("cell "))):][:8]
    assert len({len(line) for line in table}) == 1, table
    assert all(line in proc.stdout.splitlines() for line in table)
    # torch's share of the peak is printed next to the speedup it bounds
    assert ("torch % peak" in table[0]) == bool(machine["torch"])


def test_bench_layers_bidirectional_sizes_and_memory(tmp_path):
    path = tmp_path / "bench.json"
    proc = _fastrnn_cli("bench", "--sizes", "8x2x4x6,4x1x3x5-3L", "--layers", "2",
                        "--bidirectional", "--repeats", "1", "--memory", "--cell", "rnn", "--json",
                        str(path))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(path.read_text())
    rows = results["rows"]
    assert "memory_method" in results and "MB fastrnn" in proc.stdout
    for row in rows[1::2]:  # fwd+bwd
        memory = row["peak_memory_bytes"]
        assert isinstance(memory["fastrnn"], int) and memory["fastrnn"] >= 0
    assert [(r["size"], r["layers"], r["bidirectional"]) for r in rows[::2]] == [
        ("8x2x4x6-2L-bi", 2, True), ("4x1x3x5-3L-bi", 3, True)]
    # layer 0 sees I inputs, layer 1 the 2·H of both directions below it
    assert rows[0]["flops"] == 2 * (2 * 8 * 2 * (4 * 6 + 36)) + 2 * (2 * 8 * 2 * (12 * 6 + 36))


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    proc = _fastrnn_cli("bench", *TINY, "--plot", str(path))
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib_is_a_usage_error(tmp_path):
    # sys.modules[name] = None makes ``import matplotlib`` fail, installed or not
    proc = _fastrnn_cli("bench", *TINY, "--plot", str(tmp_path / "x.png"),
                        prelude="sys.modules['matplotlib'] = None; ")
    assert proc.returncode == 2
    assert "needs matplotlib" in proc.stderr and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--sizes", "Q"], "unknown size 'Q'"),
    (["--sizes", "8x2x4"], "unknown size '8x2x4'"),
    (["--threads", "0"], "non-zero integer"),
    (["--repeats", "0"], "positive integer"),
])
def test_bench_rejects_bad_arguments(args, message, capsys):
    from fastrnn.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["bench", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_without_torch(tmp_path):
    path = tmp_path / "bench.json"
    proc = _fastrnn_cli("bench", *TINY, "--json", str(path),
                        prelude="sys.modules['torch'] = None; ")
    assert proc.returncode == 0, proc.stderr
    assert "torch is not installed" in proc.stdout and "vs torch" not in proc.stdout
    results = json.loads(path.read_text())
    assert results["machine"]["torch"] is None
    peers = {impl for impl in ("onnxruntime", "jax") if missing(impl) is None}
    assert all(set(row["results"]) == {"fastrnn", "reference"} | peers
               for row in results["rows"])


def test_reference_failure_in_its_subprocess_is_reported():
    # the reference runs in a child process; a failure there surfaces with the child's error
    from fastrnn.bench import Size
    from fastrnn.bench.reference_time import measure_reference as _measure_reference

    with pytest.raises(RuntimeError, match="must be positive"):
        _measure_reference("fwd", Size("bad", 0, 1, 1, 1), 3.0, 1)


def test_bench_bfloat16_compares_fastrnn_float32_and_torch_bf16(tmp_path):
    path = tmp_path / "bench.json"
    proc = _fastrnn_cli("bench", *TINY[:4], "--cell", "lstm", "--precision", "bfloat16",
                        "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "with bfloat16 products" in proc.stdout
    results = json.loads(path.read_text())
    settings = results["settings"]
    assert settings["precision"] == "bfloat16" and settings["check_rtol"] == 5e-2
    torch = missing("torch") is None
    want = ["fastrnn", "fastrnn_fp32", "reference"] + (["torch"] if torch else [])
    assert settings["implementations"] == want
    assert "train_step" not in results  # float32 only
    for row in results["rows"]:
        assert set(row["results"]) == set(want)  # ONNX Runtime and JAX: float32 only
        for impl in want[1:]:
            r = row["results"][impl]
            assert _positive(r["median_ms"]) and _positive(row["speedup"][impl])
            assert 0 <= r["max_error"] <= 5e-2
        # fastrnn's own float32 differs from its bf16 products by bf16 rounding, not zero
        assert row["results"]["fastrnn_fp32"]["max_error"] > 1e-5


@pytest.mark.parametrize("extra", [["--memory"], ["--stream"], ["--stream-only"]])
def test_bench_bfloat16_refuses_float32_only_measurements(extra):
    proc = _fastrnn_cli("bench", *TINY, "--precision", "bfloat16", *extra)
    assert proc.returncode == 2 and "float32 only" in proc.stderr, proc.stderr
