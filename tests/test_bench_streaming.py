"""``fastrnn bench --stream``: the streaming rows' structure, their table and the options.

Tiny sizes and a handful of calls: what is checked is the shape of the results, never a time.
"""
import json
import math
import os
import subprocess
import sys

import pytest

import fastrnn
from fastrnn.bench.streaming import StreamTable, format_streaming, run_streaming
from fastrnn.bench.workloads import missing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
HAS_TORCH = missing("torch") is None
# a few calls per round: structure, not timing
QUICK = dict(rounds=2, round_seconds=0.0, min_calls=3, chunk_steps=8)
TINY = ["--stream-sizes", "8", "--stream-batches", "1,2", "--stream-rounds", "2",
        "--stream-seconds", "0"]


def _fastrnn_cli(*args, prelude=""):
    """Run the command line in a fresh process (it sets thread counts process-wide)."""
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    code = f"import sys; {prelude}from fastrnn.__main__ import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def _check(streaming, cells, sizes, batches, rounds, torch):
    s = streaming["settings"]
    assert (s["cells"], s["sizes"], s["batches"], s["rounds"]) == (cells, sizes, batches, rounds)
    for key in ("dtype", "threads", "round_seconds", "min_calls", "chunk_steps", "statistic"):
        assert key in s
    assert (s["torch"] is not None) == torch
    rows = streaming["rows"]
    assert [(r["cell"], r["H"], r["N"]) for r in rows] == [
        (c, h, n) for c in cells for h in sizes for n in batches]
    for r in rows:
        assert r["I"] == r["H"]
        assert _positive(r["fastrnn_us"]) and _positive(r["kernel_us_per_step"])
        assert r["overhead_us"] == pytest.approx(r["fastrnn_us"] - r["kernel_us_per_step"])
        impls = ["fastrnn", "kernel_per_step"] + (["torch"] if torch else [])
        assert list(r["rounds_us"]) == impls
        assert all(len(v) == rounds and all(map(_positive, v)) for v in r["rounds_us"].values())
        assert list(r["calls_per_round"]) == ["fastrnn", "chunks"] + (["torch"] if torch else [])
        assert r["calls_per_round"]["fastrnn"] >= s["min_calls"]
        assert all(isinstance(n, int) and n >= 1 for n in r["calls_per_round"].values())
        if torch:
            assert _positive(r["torch_us"])
            assert r["torch_over_fastrnn"] == pytest.approx(r["torch_us"] / r["fastrnn_us"])
        else:
            assert "torch_us" not in r and "torch_over_fastrnn" not in r


def _table_lines(text):
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("cell "))
    end = lines.index("", head)
    return lines[head:end]


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_run_streaming_every_cell_with_torch():
    rows = []
    streaming = run_streaming(1, cells=["rnn", "lstm", "gru"], sizes=[8], batches=[1, 2],
                              on_row=lambda row, s: rows.append(row), **QUICK)
    _check(streaming, ["rnn", "lstm", "gru"], [8], [1, 2], 2, torch=True)
    assert rows == streaming["rows"]
    text = format_streaming(streaming)
    table = _table_lines(text)
    assert len(table) == 2 + 6 and len({len(line) for line in table}) == 1, table
    assert "torch/fastrnn" in table[0] and "overhead:" in text


def test_run_streaming_without_torch():
    streaming = run_streaming(1, cells=["gru"], sizes=[8, 4], batches=[2], torch=False, **QUICK)
    _check(streaming, ["gru"], [8, 4], [2], 2, torch=False)
    table = _table_lines(format_streaming(streaming))
    assert "torch" not in table[0] and len({len(line) for line in table}) == 1
    assert StreamTable(False).row(streaming["rows"][0]) == table[2]


def test_cli_stream_only_json(tmp_path):
    path = tmp_path / "stream.json"
    proc = _fastrnn_cli("bench", "--stream-only", "--cell", "lstm", *TINY, "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(path.read_text())
    assert set(results) == {"fastrnn", "machine", "streaming", "elapsed_s"}
    assert results["streaming"]["settings"]["threads"] == results["machine"]["threads"]
    _check(results["streaming"], ["lstm"], [8], [1, 2], 2, torch=HAS_TORCH)
    table = _table_lines(proc.stdout)
    assert len(table) == 4 and "matmul peak" not in proc.stdout and "overhead:" in proc.stdout


def test_cli_stream_after_the_grid_without_torch(tmp_path):
    # the grid itself is test_bench.py's: replaced here by a stub, to see what --stream adds
    path = tmp_path / "stream.json"
    stub = ("import fastrnn.bench.cli as c, fastrnn.bench.machine as m; "
            "c._grid = lambda args, sizes, threads, torch: "
            "print('GRID') or dict(rows=[], machine=m.machine_info(threads)); ")
    proc = _fastrnn_cli("bench", "--stream", "--cell", "rnn", "--threads", "1", *TINY,
                        "--json", str(path), prelude="sys.modules['torch'] = None; " + stub)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.index("GRID") < proc.stdout.index("streaming:")
    assert "torch is not installed" in proc.stdout and "torch µs" not in proc.stdout
    results = json.loads(path.read_text())
    assert results["rows"] == [] and results["streaming"]["settings"]["threads"] == 1
    _check(results["streaming"], ["rnn"], [8], [1, 2], 2, torch=False)


def test_stream_options_are_parsed():
    from fastrnn.__main__ import build_parser

    args = build_parser().parse_args(["bench", "--stream", "--stream-sizes", "8,16",
                                      "--stream-batches", "1", "--stream-rounds", "3",
                                      "--stream-seconds", "0.05"])
    assert (args.stream, args.stream_only, args.stream_sizes, args.stream_batches,
            args.stream_rounds, args.stream_seconds) == (True, False, [8, 16], [1], 3, 0.05)
    args = build_parser().parse_args(["bench"])
    assert (args.stream, args.stream_only, args.stream_sizes, args.stream_seconds) == (
        False, False, None, None)


@pytest.mark.parametrize("args, message", [
    (["--stream-sizes", "0"], "positive integers, got 0"),
    (["--stream-sizes", "8,x"], "comma-separated integers"),
    (["--stream-sizes", "8,,16"], "comma-separated integers"),
    (["--stream-batches", "-1"], "positive integers, got -1"),
    (["--stream-rounds", "0"], "positive integer"),
    (["--stream-seconds", "-1"], "seconds >= 0"),
    (["--stream-seconds", "nan"], "seconds >= 0"),
    (["--stream-seconds", "soon"], "number of seconds"),
])
def test_bad_stream_values_are_usage_errors(args, message, capsys):
    from fastrnn.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--stream", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--stream-sizes", "8"], "--stream-sizes needs --stream or --stream-only"),
    (["--stream-seconds", "0"], "--stream-seconds needs --stream"),
    (["--stream-only", "--memory"], "--memory is about the grid"),
])
def test_stream_options_that_would_be_ignored_are_refused(args, message, capsys):
    from fastrnn.__main__ import main

    # refused before anything runs (no thread count set, nothing timed)
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err
