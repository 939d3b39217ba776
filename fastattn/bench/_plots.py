"""PNG plots of a sweep (matplotlib, Agg): time, peak memory, GFLOP/s and speedup vs N.

Each figure has one panel per mask (no mask, causal) and one line per backend.
"""

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the benchmark plots need matplotlib: pip install 'fastattn[bench]' "
                      "(or pass --no-plots)") from error

from ._report import configurations, naive_times

STYLES = {"naive": ("#555555", "s"), "numba": ("#1f77b4", "o"),
          "cython": ("#d62728", "^"), "torch": ("#2ca02c", "D")}
_OTHER = [("#9467bd", "v"), ("#8c564b", "P"), ("#e377c2", "X")]
PLOTS = (("time", "Time per call vs N"), ("memory", "Peak memory vs N"),
         ("gflops", "Throughput vs N"), ("speedup", "Speedup over naive vs N"))


def _style(backend, order):
    if backend in STYLES:
        return STYLES[backend]
    return _OTHER[order.index(backend) % len(_OTHER)]


def _series(points, backend, value):
    """``(N list, value list)`` of the points of ``backend`` that ran."""
    chosen = sorted((p for p in points if p["backend"] == backend and p["status"] == "ok"
                     and value(p) is not None and value(p) > 0), key=lambda p: p["n"])
    return [p["n"] for p in chosen], [value(p) for p in chosen]


def _skipped(points, backend):
    return sorted((p for p in points if p["backend"] == backend and p["status"] != "ok"),
                  key=lambda p: p["n"])


def _subtitle(config):
    return (f"{config['dtype']}, B={config['batch']}, H={config['heads']}, "
            f"D={config['head_dim']}, {config['threads']} threads")


def _figure(results, title):
    groups = configurations(results)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 5.0), squeeze=False,
                             layout="constrained")
    fig.suptitle(f"{title} — {_subtitle(groups[0][0])}", fontsize=13)
    return fig, list(zip(axes[0], groups))


def _n_axis(ax, sizes):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x)}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("sequence length N (queries = keys)")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def _mark_skipped_top(ax, points, backend, color):
    """An ``x`` at the top edge of the panel for each point that did not run, annotated."""
    skipped = _skipped(points, backend)
    if not skipped:
        return
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    xs = [p["n"] for p in skipped]
    ax.scatter(xs, [0.95] * len(xs), marker="x", s=80, linewidths=2, color=color,
               transform=transform, zorder=5, label=f"{backend}: not run (x at top)")
    ax.annotate(f"{backend} not run: {_short_reason(skipped[0])}", (xs[-1], 0.95),
                xycoords=transform, xytext=(0, -14), textcoords="offset points",
                ha="right" if len(xs) > 1 or xs[-1] > min(p["n"] for p in points) else "left",
                va="top", fontsize=8, color=color)


def _short_reason(point):
    reason = point["reason"] or point["status"]
    return reason.split(" (")[0]


def _backends(results):
    seen = []
    for point in results["points"]:
        if point["backend"] not in seen:
            seen.append(point["backend"])
    return seen


def _panel_title(ax, config):
    ax.set_title("causal mask" if config["causal"] else "no mask", fontsize=11)


def plot_time(results, path):
    """Median time per call vs N, log-log; points that did not run marked with x."""
    order = _backends(results)
    fig, panels = _figure(results, "Attention time per call")
    for ax, (config, points) in panels:
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys = _series(points, backend, lambda p: p["median_s"] * 1e3)
            if xs:
                ax.plot(xs, ys, marker=marker, color=color, label=backend)
        ax.set_yscale("log")
        if any(p["status"] != "ok" for p in points):  # room at the top for the x marks
            bottom, top = ax.get_ylim()
            ax.set_ylim(bottom, top * (top / bottom) ** 0.25)
        for backend in order:
            _mark_skipped_top(ax, points, backend, _style(backend, order)[0])
        ax.set_ylabel("median time per call (ms, log scale)")
        _n_axis(ax, results["settings"]["sizes"])
        _panel_title(ax, config)
        ax.legend(loc="best", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(results, path):
    """Peak memory of one call vs N, log-log, with N and N² guides and the naive budget."""
    order = _backends(results)
    budget_mib = results["settings"]["memory_budget_gib"] * 1024
    fig, panels = _figure(results, "Peak memory of one call")
    for ax, (config, points) in panels:
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys = _series(points, backend, lambda p: (p.get("peak_bytes") or 0) / 2**20)
            if xs:
                ax.plot(xs, ys, marker=marker, color=color, label=backend)
            skipped = [p for p in _skipped(points, backend) if backend == "naive"
                       and "would need" in (p["reason"] or "")]
            if skipped:
                sx = [p["n"] for p in skipped]
                sy = [p["naive_bytes_needed"] / 2**20 for p in skipped]
                ax.plot(sx, sy, linestyle="none", marker="x", markersize=9, color=color,
                        label="naive: skipped (estimated need)")
                ax.annotate("not run: over budget", (sx[0], sy[0]), xytext=(-8, -6),
                            textcoords="offset points", ha="right", va="top", fontsize=8,
                            color=color)
        ax.axhline(budget_mib, color="#aa3333", linestyle=":", linewidth=1.2,
                   label=f"naive memory budget ({budget_mib / 1024:.3g} GiB)")
        _guides(ax, results["settings"]["sizes"], points)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.set_ylabel("peak memory above baseline (MiB, log scale)")
        _n_axis(ax, results["settings"]["sizes"])
        _panel_title(ax, config)
        ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _guides(ax, sizes, points):
    """Faint ``∝ N`` and ``∝ N²`` slopes from the smallest and largest value at the least N."""
    lo, hi = min(sizes), max(sizes)
    measured = [p["peak_bytes"] / 2**20 for p in points
                if p["status"] == "ok" and p.get("peak_bytes") and p["n"] == lo]
    if not measured or hi == lo:
        return
    for power, base, label in ((1, min(measured), "∝ N"), (2, max(measured), "∝ N²")):
        end = base * (hi / lo) ** power
        ax.plot([lo, hi], [base, end], color="#999999", linestyle="--", linewidth=0.8,
                zorder=0)
        ax.annotate(f"slope {label}", (hi, end), xytext=(-4, 4), textcoords="offset points",
                    fontsize=8, color="#777777", ha="right", va="bottom")


def plot_gflops(results, path):
    """GFLOP/s vs N, with the measured NumPy matmul GFLOP/s as a ceiling line."""
    order = _backends(results)
    ceiling = results.get("ceiling") or {}
    fig, panels = _figure(results, "Attention throughput")
    for ax, (config, points) in panels:
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys = _series(points, backend, lambda p: p["gflops"])
            if xs:
                ax.plot(xs, ys, marker=marker, color=color, label=backend)
        if ceiling.get("gflops"):
            ax.axhline(ceiling["gflops"], color="black", linestyle="--", linewidth=1.2,
                       label=f"ceiling: NumPy {ceiling['dtype']} matmul {ceiling['size']}³ "
                             f"({ceiling['gflops']:.0f} GFLOP/s)")
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.25)
        for backend in order:
            _mark_skipped_top(ax, points, backend, _style(backend, order)[0])
        ax.set_ylabel("GFLOP/s (4·B·H·N²·D per call, halved if causal)")
        _n_axis(ax, results["settings"]["sizes"])
        _panel_title(ax, config)
    _shared_legend(fig, [ax for ax, _ in panels])  # below the panels: lines fill them
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shared_legend(fig, axes):
    """One legend for all panels, under them (each label once)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(entries.values(), entries.keys(), loc="outside lower center",
               ncol=min(len(entries), 6), fontsize=9)


def plot_speedup(results, path):
    """Speedup of each backend over naive (naive time / backend time) vs N."""
    order = [b for b in _backends(results) if b != "naive"]
    fig, panels = _figure(results, "Speedup over the naive reference")
    for ax, (config, points) in panels:
        naive = naive_times(points)
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys = _series(points, backend, lambda p: naive[p["n"]] / p["median_s"]
                             if p["n"] in naive else None)
            if xs:
                ax.plot(xs, ys, marker=marker, color=color, label=backend)
        ax.axhline(1.0, color="black", linewidth=1, linestyle=":", label="naive (= 1×)")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}×"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("speedup: naive time / backend time (log scale)")
        _n_axis(ax, results["settings"]["sizes"])
        _panel_title(ax, config)
        missing = sorted(p["n"] for p in points if p["backend"] == "naive" and p["status"] != "ok")
        if missing:
            ax.text(0.99, 0.02, f"naive not run for N ≥ {missing[0]}: no speedup there",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="#555555")
        ax.legend(loc="upper left", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


_DRAW = {"time": plot_time, "memory": plot_memory, "gflops": plot_gflops,
         "speedup": plot_speedup}


def draw_plots(results, directory):
    """Draw every plot of ``results`` into ``directory``.

    Parameters
    ----------
    results : dict
    directory : pathlib.Path

    Returns
    -------
    list of (str, str)
        ``(title, file name)`` of each PNG written.
    """
    drawn = []
    if not any(p["status"] == "ok" for p in results["points"]):
        return drawn
    for name, title in PLOTS:
        file_name = f"{name}.png"
        _DRAW[name](results, directory / file_name)
        drawn.append((title, file_name))
    return drawn
