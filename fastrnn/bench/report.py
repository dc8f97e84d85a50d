"""What a run prints and draws: the table (row by row as rows complete), its notes, the plot.

Everything here reads the dict :func:`fastrnn.bench.runner.run` returns, which is also what
``--json`` writes.
"""
import textwrap

import numpy as np

from .timing import MIN_CELL_SECONDS

__all__ = ["Table", "format_preamble", "format_notes", "format_table", "require_matplotlib",
           "plot_speedups"]


def _fmt(value, spec, suffix=""):
    return "—" if value is None else format(value, spec) + suffix


class Table:
    """Fixed-width columns, so rows can be printed as they are measured."""

    def __init__(self, labels, shapes, impls, memory):
        self.impls = list(impls)
        self.columns = [("cell", 4, "<"), ("size", max(4, *map(len, labels)), "<"),
                        ("T×N×I×H", max(7, *map(len, shapes)), "<"), ("pass", 7, "<"),
                        (f"{self.impls[0]} ms", 10, ">"), ("GFLOP/s", 7, ">"), ("% peak", 6, ">")]
        self.columns += [(f"vs {impl}", max(7, len(impl) + 3), ">") for impl in self.impls[1:]]
        # the fastest peer of the row, and fastrnn's speedup over it
        self.best = len(self.impls) > 1
        width = max(len(impl) for impl in self.impls) + 9
        self.columns += [("vs best", width, ">")] if self.best else []
        # torch's own share of the peak bounds "vs torch": at the whole peak fastrnn would be
        # the inverse of that share times faster
        self.peak_impls = [impl for impl in ("torch",) if impl in self.impls[1:]]
        self.columns += [(f"{impl} % peak", len(impl) + 7, ">") for impl in self.peak_impls]
        self.memory_impls = [impl for impl in ("fastrnn", "torch") if memory and impl in impls]
        self.columns += [(f"MB {impl}", max(7, len(impl) + 3), ">") for impl in self.memory_impls]

    def _line(self, cells):
        return "  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, self.columns))

    def head(self):
        """The header line and the dashes under it."""
        return "\n".join([self._line([c[0] for c in self.columns]),
                          "  ".join("-" * width for _, width, _ in self.columns)])

    def row(self, row):
        """The line of one row of :func:`~fastrnn.bench.runner.run`'s results."""
        ours = row["results"][self.impls[0]]
        shape = f"{row['T']}×{row['N']}×{row['I']}×{row['H']}"
        cells = [row.get("cell", "rnn"), row["size"], shape, row["pass"],
                 _fmt(ours.get("median_ms"), ".2f"), _fmt(ours.get("gflops"), ".1f"),
                 _fmt(row["pct_peak"], ".1f", "%")]
        cells += [_fmt(row["speedup"].get(impl), ".2f", "×") for impl in self.impls[1:]]
        if self.best:
            best = row.get("best_peer")
            cells.append(f"{best['speedup']:.2f}× {best['impl']}" if best else "—")
        cells += [_fmt(row["results"][impl].get("pct_peak"), ".1f", "%")
                  for impl in self.peak_impls]
        mem = row.get("peak_memory_bytes")
        cells += ["" if mem is None else _fmt(mem.get(impl) and mem[impl] / 2 ** 20, ".1f")
                  for impl in self.memory_impls]
        return self._line(cells)


def _products(settings):
    """How a bfloat16 run's products were made, after its dtype ('' in a float32 run)."""
    if settings.get("precision") != "bfloat16":
        return ""
    return (" with bfloat16 products (fastrnn_fp32: fastrnn's float32; torch: "
            "module.to(torch.bfloat16))")


def format_preamble(results):
    """The lines above the table: machine, matmul peak, how the numbers were taken."""
    m, peak, s = results["machine"], results["matmul_peak"], results["settings"]
    generation = f"{m['cpu_generation']}, " if m.get("cpu_generation") else ""
    cpu = f"{m['cpu_model']} ({generation}{m['usable_cpus']} of {m['logical_cpus']} CPUs usable)"
    busy = []
    if m.get("load_average") and m["load_average"][0] >= m["usable_cpus"]:
        busy = [f"warning: load average {m['load_average'][0]:.1f} on {m['usable_cpus']} usable "
                "CPUs at the start: other processes compete for the CPUs, so times are noisy "
                "and the run slower"]
    if peak["gflops"] is None:
        peak_line = f"matmul peak: unavailable ({peak.get('error', 'unknown error')})"
    else:
        readings = peak.get("attempts_gflops") or [peak["gflops"]]
        best = (f", best of {len(readings)} processes: "
                f"{', '.join(f'{g:.0f}' for g in readings)}" if len(readings) > 1 else "")
        peak_line = (f"matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['n']}² float32, "
                     f"NumPy/OpenBLAS, OPENBLAS_CORETYPE unset, {peak['threads']} threads"
                     f"{best})")
    return "\n".join([
        f"fastrnn {results['fastrnn']} bench: float32{_products(s)}, {s['threads']} threads, "
        f"kernel {m['kernel']}, {cpu}",
        peak_line,
        f"ms: median of {s['repeats']} or more timed calls (fast ones: {MIN_CELL_SECONDS:g} s "
        f"of them; slow ones: fewer) in {s.get('rounds', 1)} rounds that alternate fastrnn and "
        f"each peer (a process each), each after a warm-up call (reference: 1 call, — where "
        f"estimated over {s['max_reference_seconds']:g} s); every peer's result checked "
        f"against fastrnn's first (relative tolerance {s.get('check_rtol', 1e-3):g})",
        "vs X: X's time / fastrnn's; vs best: over the fastest peer; fwd: eval mode, fwd+bwd: "
        "training mode + BPTT; % peak: GFLOP/s / matmul peak (fastrnn at 100 % would be "
        "100 / torch's % × faster than torch); GFLOP/s counts 2·T·N·G·H·(I+H) per layer and "
        "direction (G gates: rnn 1, lstm 4, gru 3), ×3 for fwd+bwd",
        *(textwrap.fill(line, 100) for line in busy),
    ])


def format_notes(results):
    """Why each — in the table is there: one note per implementation and reason, naming its
    rows ("every fwd+bwd row" where that is all of them)."""
    skipped = {}  # (impl, reason) -> rows
    for row in results["rows"]:
        for impl, r in row["results"].items():
            if "skipped" in r:
                skipped.setdefault((impl, r["skipped"]), []).append(row)
    notes = []
    for (impl, reason), rows_ in skipped.items():
        passes = {r["pass"] for r in rows_}
        if len(passes) == 1 and len(rows_) == sum(r["pass"] in passes for r in results["rows"]):
            where = f"every {passes.pop()} row"
        else:
            where = ", ".join(f"{r.get('cell', 'rnn')} {r['size']} {r['pass']}" for r in rows_)
        notes.append(f"— {impl} on {where}: {reason}")
    for row in results["rows"]:
        for impl, b in (row.get("peak_memory_bytes") or {}).items():
            if b is None:
                notes.append(f"— {impl} peak memory on {row.get('cell', 'rnn')} {row['size']}: "
                             "measurement failed")
    if "memory_method" in results:
        notes.append("MB: " + results["memory_method"])
    return "\n".join(textwrap.fill(n, 100, subsequent_indent="    ") for n in notes)


def format_table(results):
    """The whole printed report for ``results`` (from :func:`~fastrnn.bench.runner.run`)."""
    rows_ = results["rows"]
    table = Table([r["size"] for r in rows_] or ["size"],
                  [f"{r['T']}×{r['N']}×{r['I']}×{r['H']}" for r in rows_] or ["T×N×I×H"],
                  results["settings"]["implementations"], "memory_method" in results)
    parts = [format_preamble(results), "", table.head(), *map(table.row, rows_)]
    notes = format_notes(results)
    return "\n".join(parts + (["", notes] if notes else []))


def require_matplotlib():
    """ImportError saying how to install matplotlib, unless it imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--plot needs matplotlib, which is not installed: pip install "
                          "matplotlib (or pip install 'fastrnn[plot]')") from None


def plot_speedups(results, path):
    """Save grouped bars of fastrnn's speedup over each other implementation, per row."""
    require_matplotlib()
    from matplotlib.figure import Figure

    rows_ = results["rows"]
    others = [impl for impl in results["settings"]["implementations"][1:]
              if any(r["speedup"].get(impl) for r in rows_)]
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows_) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows_))
    width = 0.8 / max(1, len(others))
    values = []
    for k, impl in enumerate(others):
        v = [r["speedup"].get(impl) for r in rows_]
        values += [s for s in v if s]
        bars = ax.bar(x + (k - (len(others) - 1) / 2) * width, [s or np.nan for s in v], width,
                      label=f"vs {impl}")
        ax.bar_label(bars, labels=[f"{s:.1f}×" if s else "" for s in v], fontsize=7)
    ax.axhline(1, color="black", linewidth=0.8)
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xticks(x, [f"{r.get('cell', 'rnn')} {r['size']}\n{r['pass']}" for r in rows_])
    ax.set_ylabel("fastrnn speedup (other's time / fastrnn's)")
    m = results["machine"]
    ax.set_title(f"fastrnn {results['fastrnn']}, float32"
                 f"{' (bf16 products)' if results['settings'].get('precision') == 'bfloat16' else ''}"
                 f", {m['threads']} threads, "
                 f"kernel {m['kernel']}: {m['cpu_model']}", fontsize=9)
    if others:
        ax.legend()
    fig.savefig(path, dpi=120)
