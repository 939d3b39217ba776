"""PNG plots of a sweep: time, peak memory, GFLOP/s and speedup vs N; dtypes; forward +
backward; models.

Each figure has one panel per mask (no mask, causal), one line per backend through
the medians, with bars from the fastest to the slowest timed call (so that noise can
be told from behaviour), and one legend under the panels, where it covers no data.
Its title names the instruction-set level each backend ran at.  A sweep in several
dtypes gets a row of panels per dtype, and the dtype figure (GFLOP/s, a line per
backend and dtype); the forward + backward figures have a row of panels per shape
(B × H as swept, and B × H = 1); the models figure a panel per model workload (tokens/s
per implementation).  Cython points that ``--isa`` ran at a given level are series of
their own, ``cython [avx2]``.
The figures are ``matplotlib.figure.Figure`` objects written with ``savefig``: no
pyplot, so the caller's matplotlib backend is neither used nor changed.  Each
``plot_*(results, path)`` writes its PNG and returns the Figure.
"""

try:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, NullFormatter
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("the benchmark plots need matplotlib: pip install 'fastattn[bench]' "
                      "(or pass --no-plots)") from error

from ._levels import LEVEL_NAMES
from ._results import FORWARD, FORWARD_BACKWARD, workload
from ._serving import DECODE, DECODE_GOAL, PADDED, PAGED, VARLEN
from ._summary import (configurations, dtype_configurations, isa_summary, model_groups,
                       naive_times, read_bandwidth, series_label, serving_call,
                       serving_groups, serving_order, speedup_over, timing_range,
                       torch_points)

STYLES = {"naive": ("#555555", "s"), "numba": ("#1f77b4", "o"),
          "cython": ("#d62728", "^"), "torch": ("#2ca02c", "D"),
          "fastattn": ("#d62728", "o"), "sdpa": ("#2ca02c", "D"), "eager": ("#555555", "s")}
_OTHER = [("#9467bd", "v"), ("#8c564b", "P"), ("#e377c2", "X"), ("#17becf", "*")]
PLOTS = (("time", "Time per call vs N"), ("memory", "Peak memory vs N"),
         ("gflops", "Throughput vs N"), ("speedup", "Speedup over naive vs N"))
BACKWARD_PLOTS = (("backward_time", "Forward + backward: time per step vs N"),
                  ("backward_speedup", "Forward + backward: speedup over torch vs N"))
MODEL_PLOT = ("models", "Models in transformers: tokens/s vs N")
DTYPE_PLOT = ("dtypes", "Throughput vs N per dtype")
SERVING_PLOT = ("serving", "Serving: decoding against the read bandwidth, varlen against padding")
SERVING_HATCH = {PAGED: "//", PADDED: "//"}
"""The second call of a backend (paged, padded) is hatched; its colour is the backend's."""
DTYPE_STYLES = {"float32": ("-", "o"), "bfloat16": ("--", "s"), "float16": (":", "^"),
                "float64": ("-.", "D")}
"""Line style and marker of each dtype in the dtype plot (the colour is the backend's)."""
MODEL_PANELS = {"llama-prefill": ("Tiny Llama prefill", "prompt tokens N"),
                "llama-decode": ("Tiny Llama decode", "prompt tokens N (then the decoded ones)"),
                "minilm-encode": ("MiniLM encode", "input tokens N")}
BARS = "markers: median; bars: fastest to slowest timed call"
DPI = 110
DODGE = 0.05
"""Octaves between the bars of neighbouring backends at one N, so that none hides another."""


def _style(backend, order):
    """The colour and marker of a series: a backend's own, or for ``cython [avx2]`` (from
    ``--isa``) one of :data:`_OTHER` by level, the same in every figure."""
    if backend in STYLES:
        return STYLES[backend]
    level = backend.partition(" [")[2].rstrip("]")
    index = LEVEL_NAMES.index(level) if level in LEVEL_NAMES else order.index(backend)
    return _OTHER[index % len(_OTHER)]


def _series(points, backend, value, spread=None):
    """``(N list, value list, (low list, high list) or None)`` of the series ``backend``
    (:func:`~fastattn.bench._summary.series_label`: a backend, or ``cython [avx2]``).

    ``spread(point, fastest_s, slowest_s) -> (low, high)`` turns the point's timing
    range into the plotted quantity's range; points without one get a zero-length bar.
    """
    chosen = sorted((p for p in points if series_label(p) == backend and p["status"] == "ok"
                     and value(p) is not None and value(p) > 0), key=lambda p: p["n"])
    xs, ys = [p["n"] for p in chosen], [value(p) for p in chosen]
    if spread is None:
        return xs, ys, None
    lows, highs = [], []
    for point, y in zip(chosen, ys):
        times = timing_range(point)
        low, high = (y, y) if times is None else sorted(spread(point, *times))
        lows.append(max(0.0, y - low))
        highs.append(max(0.0, high - y))
    return xs, ys, (lows, highs)


def _line(ax, xs, ys, bars, color, marker, label, slot=(0, 1)):
    """One backend's medians, with its min–max bars when there are any.

    ``slot = (index, count)`` shifts the backend's points sideways by a fraction of an
    octave around each N (the N axis is log 2), so that bars at one N do not overlap.
    """
    if not xs:
        return
    if bars is None:
        ax.plot(xs, ys, marker=marker, color=color, label=label)
    else:
        shift = 2 ** (DODGE * (slot[0] - (slot[1] - 1) / 2))
        ax.errorbar([x * shift for x in xs], ys, yerr=bars, marker=marker, color=color,
                    label=label, capsize=3, elinewidth=1.2, capthick=1.2)


def _skipped(points, backend):
    return sorted((p for p in points if series_label(p) == backend and p["status"] != "ok"),
                  key=lambda p: p["n"])


def _subtitle(config, shape=True, dtype=True):
    head = f"B={config['batch']}, H={config['heads']}, " if shape else ""
    return (f"{config['dtype']}, " if dtype else "") + \
        f"{head}D={config['head_dim']}, {config['threads']} threads"


def _isa_line(points):
    """``ISA: cython avx512bf16, torch AVX2``: the levels the figure's points ran at."""
    levels = isa_summary(points)
    return f"ISA: {levels}" if levels else None


def _suptitle(figure, title, subtitle, points, note):
    isa = _isa_line(points)
    figure.suptitle("\n".join(line for line in (f"{title} — {subtitle}", isa, note) if line),
                    fontsize=12)


def _figure(results, title, note=None, kind=FORWARD, shape_titles=None):
    """A figure with a panel per mask and a row per shape (B, H) and dtype of the ``kind``
    points; the panels get their titles (B and H when ``shape_titles``, default for
    forward + backward, or when shapes differ; the dtype when dtypes differ).

    Returns ``(figure, [(axes, (config, points))])``.
    """
    groups = configurations(results, kind)
    rows = list(dict.fromkeys((c["batch"], c["heads"], c["dtype"]) for c, _ in groups))
    masks = sorted({c["causal"] for c, _ in groups})
    one_shape = len({row[:2] for row in rows}) == 1
    one_dtype = len({row[2] for row in rows}) == 1
    height = 5.6 if len(rows) == 1 else 4.4 * len(rows) + 1.2
    # At least 9 inches: one panel (one mask) still fits the title and a legend row.
    figure = Figure(figsize=(max(6.4 * len(masks), 9.0), height), layout="constrained")
    axes = figure.subplots(len(rows), len(masks), squeeze=False)
    _suptitle(figure, title, _subtitle(groups[0][0], shape=one_shape, dtype=one_dtype),
              [p for _, points in groups for p in points], note)
    panels = [(axes[rows.index((c["batch"], c["heads"], c["dtype"]))][masks.index(c["causal"])],
               (c, points)) for c, points in groups]
    for ax in set(axes.flat) - {ax for ax, _ in panels}:
        ax.set_visible(False)
    shape = (kind == FORWARD_BACKWARD if shape_titles is None else shape_titles) or not one_shape
    for ax, (config, _) in panels:
        _panel_title(ax, config, shape, dtype=not one_dtype)
    return figure, panels


def _n_axis(ax, sizes):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x)}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("sequence length N (queries = keys)")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def _mark_skipped_top(ax, points, backend, color, name=None):
    """An ``x`` at the top edge of the panel for each point that did not run, annotated
    (``name``: what the legend calls the series, default ``backend``)."""
    skipped = _skipped(points, backend)
    if not skipped:
        return
    name = name or backend
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    xs = [p["n"] for p in skipped]
    ax.scatter(xs, [0.95] * len(xs), marker="x", s=80, linewidths=2, color=color,
               transform=transform, zorder=5, label=f"{name}: not run (x at top)")
    ax.annotate(f"{name} not run: {_short_reason(skipped[0])}", (xs[-1], 0.95),
                xycoords=transform, xytext=(0, -14), textcoords="offset points",
                ha="right" if len(xs) > 1 or xs[-1] > min(p["n"] for p in points) else "left",
                va="top", fontsize=8, color=color)


def _short_reason(point):
    reason = point["reason"] or point["status"]
    return reason.split(" (")[0]


def _backends(results, kind=FORWARD):
    """The series of the ``kind`` points (backends, ``cython [avx2]``), in order of appearance."""
    seen = []
    for point in results["points"]:
        if workload(point) == kind and series_label(point) not in seen:
            seen.append(series_label(point))
    return seen


def _panel_title(ax, config, shape=False, dtype=False):
    mask = "causal mask" if config["causal"] else "no mask"
    ax.set_title((f"{config['dtype']}, " if dtype else "")
                 + (f"B={config['batch']}, H={config['heads']}, " if shape else "") + mask,
                 fontsize=11)


def _sizes(results, kind):
    key = "backward_sizes" if kind == FORWARD_BACKWARD else "sizes"
    sizes = results["settings"].get(key)
    return sizes or sorted({p["n"] for p in results["points"] if workload(p) == kind})


def _shared_legend(figure, axes, order, columns=4):
    """One legend for all panels, under them (each label once, backends first; at most
    ``columns`` entries a row)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    labels = sorted(entries, key=lambda label: (label not in order,
                                                order.index(label) if label in order else 0))
    if labels:
        figure.legend([entries[label] for label in labels], labels,
                      loc="outside lower center", ncol=min(len(labels), columns),
                      fontsize=9)


def plot_time(results, path):
    """Median time per call vs N, log-log, min–max bars; points that did not run marked x."""
    return _plot_times(results, path, FORWARD, "Attention time per call",
                       "time per call (ms, log scale)")


def plot_backward_time(results, path):
    """Median time of a forward + backward step vs N, log-log, min–max bars, x: not run."""
    return _plot_times(results, path, FORWARD_BACKWARD, "Forward + backward time per step",
                       "time per forward + backward (ms, log scale)")


def _plot_times(results, path, kind, title, ylabel):
    order = _backends(results, kind)
    figure, panels = _figure(results, title, BARS, kind)
    for ax, (config, points) in panels:
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys, bars = _series(points, backend, lambda p: p["median_s"] * 1e3,
                                   lambda p, fast, slow: (fast * 1e3, slow * 1e3))
            _line(ax, xs, ys, bars, color, marker, backend, (order.index(backend), len(order)))
        ax.set_yscale("log")
        # Plain numbers (30, 200), not 3×10¹; the minor ticks labelled on a narrow range.
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        if any(p["status"] != "ok" for p in points):  # room at the top for the x marks
            bottom, top = ax.get_ylim()
            ax.set_ylim(bottom, top * (top / bottom) ** 0.25)
        for backend in order:
            _mark_skipped_top(ax, points, backend, _style(backend, order)[0])
        ax.set_ylabel(ylabel)
        _n_axis(ax, _sizes(results, kind))
    _shared_legend(figure, [ax for ax, _ in panels], order)
    figure.savefig(path, dpi=DPI)
    return figure


def _ratio_axis(ax):
    """A log axis of ratios that shows 1× and labels enough ticks on a narrow range."""
    ax.set_yscale("log")
    bottom, top = ax.get_ylim()
    bottom, top = min(bottom, 0.8), max(top, 1.25)
    ax.set_ylim(bottom, top)
    subs = (1, 2, 5) if top / bottom > 10 else (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}×"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_backward_speedup(results, path):
    """Speedup of each fastattn backend's forward + backward over torch's vs N, with bars.

    Markers: torch median / backend median.  Bars: from torch's fastest call over the
    backend's slowest to torch's slowest over the backend's fastest, so that noise in
    either shows.
    """
    kind = FORWARD_BACKWARD
    everyone = _backends(results, kind)
    order = [b for b in everyone if b != "torch"]
    figure, panels = _figure(results, "Forward + backward speedup over torch",
                             "markers: torch median / backend median; bars: torch fastest / "
                             "backend slowest to torch slowest / backend fastest", kind)
    for ax, (config, points) in panels:
        torch = torch_points(points)

        def ratio(point, index):
            found = speedup_over(torch.get(point["n"]), point)
            return None if found is None else found[index]

        for backend in order:
            color, marker = _style(backend, everyone)
            xs, ys, bars = _series(points, backend, lambda p: ratio(p, 0),
                                   lambda p, fast, slow: (ratio(p, 1), ratio(p, 2)))
            _line(ax, xs, ys, bars, color, marker, backend, (order.index(backend), len(order)))
        ax.axhline(1.0, color=STYLES["torch"][0], linewidth=1.2, linestyle=":",
                   label="torch (= 1×)")
        _ratio_axis(ax)
        ax.set_ylabel("speedup: torch time / backend time (log scale)")
        _n_axis(ax, _sizes(results, kind))
        missing = sorted(p["n"] for p in points if p["backend"] == "torch" and p["status"] != "ok")
        if missing:
            ax.text(0.99, 0.02, f"torch not run at N = {', '.join(map(str, missing))}",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                    color="#555555")
    _shared_legend(figure, [ax for ax, _ in panels], order)
    figure.savefig(path, dpi=DPI)
    return figure


def plot_memory(results, path):
    """Peak memory of one call vs N, log-log, with N and N² guides and the naive budget."""
    order = _backends(results)
    budget_mib = results["settings"]["memory_budget_gib"] * 1024
    figure, panels = _figure(results, "Peak memory of one call",
                             "one call per point, in a fresh process")
    for ax, (config, points) in panels:
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys, _ = _series(points, backend, lambda p: (p.get("peak_bytes") or 0) / 2**20)
            _line(ax, xs, ys, None, color, marker, backend)
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
    _shared_legend(figure, [ax for ax, _ in panels], order)
    figure.savefig(path, dpi=DPI)
    return figure


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


def reference_label(reference):
    """The legend entry of the matmul reference line, naming the library that gave it.

    Examples
    --------
    >>> reference_label({"best": "numpy", "dtype": "float32", "size": 4096, "gflops": 229.04,
    ...                  "libraries": [{"library": "numpy", "openblas_coretype": "Haswell"}]})
    'matmul reference: numpy float32 4096³, OPENBLAS_CORETYPE=Haswell (229 GFLOP/s)'
    """
    best = next((m for m in reference.get("libraries", ())
                 if m["library"] == reference["best"]), {})
    coretype = best.get("openblas_coretype")
    return (f"matmul reference: {reference['best']} {reference['dtype']} "
            f"{reference['size']}³" + (f", OPENBLAS_CORETYPE={coretype}" if coretype else "")
            + f" ({reference['gflops']:.0f} GFLOP/s)")


def plot_gflops(results, path):
    """GFLOP/s vs N with min–max bars, and the matmul reference as a dashed line."""
    order = _backends(results)
    reference = results.get("reference") or {}
    figure, panels = _figure(results, "Attention throughput", BARS)
    for ax, (config, points) in panels:
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys, bars = _series(points, backend, lambda p: p["gflops"],
                                   lambda p, fast, slow: (p["flops"] / slow / 1e9,
                                                          p["flops"] / fast / 1e9))
            _line(ax, xs, ys, bars, color, marker, backend, (order.index(backend), len(order)))
        if reference.get("gflops") and config["dtype"] == reference.get("dtype",
                                                                         config["dtype"]):
            ax.axhline(reference["gflops"], color="black", linestyle="--", linewidth=1.2,
                       label=reference_label(reference))
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
        for backend in order:
            _mark_skipped_top(ax, points, backend, _style(backend, order)[0])
        ax.set_ylabel("GFLOP/s (4·B·H·N²·D per call, halved if causal)")
        _n_axis(ax, results["settings"]["sizes"])
    _shared_legend(figure, [ax for ax, _ in panels], order)
    figure.savefig(path, dpi=DPI)
    return figure


def plot_speedup(results, path):
    """Speedup of each backend over naive (naive median / backend time) vs N, min–max bars."""
    order = [b for b in _backends(results) if b != "naive"]
    figure, panels = _figure(results, "Speedup over the naive reference",
                             "markers: naive median / backend median; bars: over the "
                             "backend's fastest to slowest call")
    for ax, (config, points) in panels:
        naive = naive_times(points)
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys, bars = _series(points, backend, lambda p: naive[p["n"]] / p["median_s"]
                                   if p["n"] in naive else None,
                                   lambda p, fast, slow: (naive[p["n"]] / slow,
                                                          naive[p["n"]] / fast))
            _line(ax, xs, ys, bars, color, marker, backend, (order.index(backend), len(order)))
        ax.axhline(1.0, color="black", linewidth=1, linestyle=":", label="naive (= 1×)")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}×"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("speedup: naive time / backend time (log scale)")
        _n_axis(ax, results["settings"]["sizes"])
        missing = sorted(p["n"] for p in points
                         if p["backend"] == "naive" and p["status"] != "ok")
        if missing:
            ax.text(0.99, 0.02, f"naive not run for N ≥ {missing[0]}: no speedup there",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="#555555")
    _shared_legend(figure, [ax for ax, _ in panels], order)
    figure.savefig(path, dpi=DPI)
    return figure


def plot_models(results, path):
    """Tokens/s vs N of each model workload (a panel each), per implementation, min–max bars."""
    from ._models import IMPLEMENTATIONS

    groups = model_groups(results)
    figure = Figure(figsize=(5.2 * len(groups), 5.4), layout="constrained")
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    threads = results["settings"].get("threads")
    plural = "" if threads == 1 else "s"
    _suptitle(figure, "Models in transformers", f"float32, {threads} thread{plural}",
              [p for _, points in groups for p in points], BARS)
    order = list(IMPLEMENTATIONS)
    for ax, (workload, points) in zip(axes, groups):
        order += [p["backend"] for p in points if p["backend"] not in order]
        for backend in order:
            color, marker = _style(backend, order)
            xs, ys, bars = _series(points, backend, lambda p: p["tokens_per_s"],
                                   lambda p, fast, slow: (p["tokens"] / slow,
                                                          p["tokens"] / fast))
            _line(ax, xs, ys, bars, color, marker, backend, (order.index(backend), len(order)))
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
        for backend in order:
            _mark_skipped_top(ax, points, backend, _style(backend, order)[0])
        title, xlabel = MODEL_PANELS[workload]
        _n_axis(ax, sorted({p["n"] for p in points}))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tokens/s (generated)" if workload == "llama-decode" else "tokens/s")
        ax.set_title(title, fontsize=11)
    _shared_legend(figure, list(axes), order)
    figure.savefig(path, dpi=DPI)
    return figure


def plot_dtypes(results, path):
    """GFLOP/s vs N of each backend in each dtype, min–max bars: a panel per shape and mask.

    The colour is the backend's (torch included, naive left out: it computes in float64
    whatever the dtype), the line style and marker the dtype's; points that did not run
    are an ``x`` at the top.  The title names the ISA level of each backend.
    """
    groups = dtype_configurations(results, FORWARD)
    shapes = list(dict.fromkeys((c["batch"], c["heads"]) for c, _ in groups))
    masks = sorted({c["causal"] for c, _ in groups})
    points = [p for _, found in groups for p in found]
    dtypes = list(dict.fromkeys(results["settings"].get("dtypes")
                                or [p["dtype"] for p in points]))
    order = [label for label in _backends(results) if label != "naive"]
    lines = [(label, dtype) for label in order for dtype in dtypes]
    height = (5.6 if len(shapes) == 1 else 4.4 * len(shapes) + 1.2) + 0.25 * len(order)
    figure = Figure(figsize=(max(6.4 * len(masks), 10.0), height), layout="constrained")
    axes = figure.subplots(len(shapes), len(masks), squeeze=False)
    config = groups[0][0]
    subtitle = (f"B={config['batch']}, H={config['heads']}, " if len(shapes) == 1 else "") \
        + f"D={config['head_dim']}, {config['threads']} threads"
    _suptitle(figure, "Attention throughput per dtype", subtitle, points,
              f"colour: backend; line and marker: dtype; {BARS}")
    for config, found in groups:
        ax = axes[shapes.index((config["batch"], config["heads"]))][masks.index(config["causal"])]
        for index, (label, dtype) in enumerate(lines):
            chosen = [p for p in found if p["dtype"] == dtype]
            color = _style(label, order)[0]
            style, marker = DTYPE_STYLES.get(dtype, ("-", "o"))
            xs, ys, bars = _series(chosen, label, lambda p: p["gflops"],
                                   lambda p, fast, slow: (p["flops"] / slow / 1e9,
                                                          p["flops"] / fast / 1e9))
            if xs:
                shift = 2 ** (DODGE / 2 * (index - (len(lines) - 1) / 2))
                ax.errorbar([x * shift for x in xs], ys, yerr=bars, marker=marker,
                            linestyle=style, color=color, label=f"{label} {dtype}",
                            capsize=3, elinewidth=1.2, capthick=1.2)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
        for label, dtype in lines:
            _mark_skipped_top(ax, [p for p in found if p["dtype"] == dtype], label,
                              _style(label, order)[0], name=f"{label} {dtype}")
        ax.set_ylabel("GFLOP/s (4·B·H·N²·D per call, halved if causal)")
        _n_axis(ax, sorted({p["n"] for p in found}))
        _panel_title(ax, config, shape=len(shapes) > 1)
    used = {ax for ax in axes.flat if ax.has_data()}
    for ax in set(axes.flat) - used:
        ax.set_visible(False)
    _shared_legend(figure, list(used), [f"{label} {dtype}" for label, dtype in lines],
                   columns=len(dtypes))
    figure.savefig(path, dpi=DPI)
    return figure


def _serving_panels(results):
    """``[(title, rate(point, seconds), y label, points)]`` of the serving panels (decoding,
    varlen) with a point that ran."""
    groups = serving_groups(results)
    panels = [("Decoding: K and V read", lambda p, s: p["bytes_read"] / s / 1e9,
               "GB/s of K and V", groups.get(DECODE, []) + groups.get(PAGED, [])),
              ("Varlen batch: real tokens", lambda p, s: p["tokens"] / s,
               "tokens/s (real tokens)", groups.get(VARLEN, []) + groups.get(PADDED, []))]
    return [panel for panel in panels if any(p["status"] == "ok" for p in panel[-1])]


def _serving_bars(ax, points, rate):
    """One bar per point that ran, ``rate(point, seconds)`` of its median, whiskers from
    its slowest to its fastest call."""
    ran = sorted((p for p in points if p["status"] == "ok"), key=serving_order)
    heights, low, high = [], [], []
    for p in ran:
        fastest, slowest = timing_range(p) or (p["median_s"], p["median_s"])
        heights.append(rate(p, p["median_s"]))
        low.append(max(0.0, heights[-1] - rate(p, slowest)))
        high.append(max(0.0, rate(p, fastest) - heights[-1]))
    bars = ax.bar(range(len(ran)), heights, yerr=[low, high], capsize=4,
                  color=[_style(p["backend"], [])[0] for p in ran], edgecolor="white",
                  linewidth=0)  # the edge colour is the hatch's
    for bar, p in zip(bars, ran):
        bar.set_hatch(SERVING_HATCH.get(p["workload"]) if p["backend"] != "torch" else None)
    labels = ax.bar_label(bars, labels=[f"{h:,.0f}" if h >= 100 else f"{h:.3g}"
                                        for h in heights], label_type="center", fontsize=9,
                          color="white", fontweight="bold")
    for label, bar in zip(labels, bars):  # readable over the hatching, clear of the whiskers
        label.set_bbox({"boxstyle": "round,pad=0.2", "facecolor": bar.get_facecolor(),
                        "edgecolor": "none"})
    ax.set_xticks(range(len(ran)), [f"{serving_call(p)}\n{p['backend']}" for p in ran],
                  fontsize=8)
    missing = [f"{p['backend']} {serving_call(p)}" for p in points if p["status"] != "ok"]
    if missing:
        ax.text(0.99, 0.98, "not run: " + ", ".join(missing), transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="#555555")


def plot_serving(results, path):
    """Decoding's GB/s per call against the read bandwidth (a line) and its goal, and the
    varlen batch's tokens/s, packed and padded: bars (medians) with min–max whiskers."""
    panels = _serving_panels(results)
    read = read_bandwidth(results)
    figure = Figure(figsize=(max(6.0 * len(panels), 9.0), 5.6), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    points = [p for panel in panels for p in panel[-1]]
    threads = points[0]["threads"]
    _suptitle(figure, "Serving", f"float32, {threads} thread{'s' if threads != 1 else ''}",
              points, "bars: median; whiskers: slowest to fastest timed call; "
                      "hatched: paged / padded")
    for ax, (title, rate, ylabel, found) in zip(axes, panels):
        _serving_bars(ax, found, rate)
        if found[0]["workload"] in (DECODE, PAGED) and read is not None:
            bandwidth = read["gbytes_per_s"]
            ax.axhline(bandwidth, color="black", linestyle="--", linewidth=1.2,
                       label=f"read bandwidth: {bandwidth:.3g} GB/s "
                             f"({read.get('read_method')}, {read['threads']} threads)")
            ax.axhline(DECODE_GOAL * bandwidth, color="#777777", linestyle=":",
                       linewidth=1.2, label=f"decoding goal: {100 * DECODE_GOAL:.0f} % of it")
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
        ax.yaxis.set_major_formatter(FuncFormatter(
            lambda y, _: f"{y:,.0f}" if y >= 100 else f"{y:g}"))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
        ax.grid(True, axis="y", alpha=0.35)
    _shared_legend(figure, list(axes), [], columns=2)
    figure.savefig(path, dpi=DPI)
    return figure


_DRAW = {"time": plot_time, "memory": plot_memory, "gflops": plot_gflops,
         "speedup": plot_speedup, "dtypes": plot_dtypes, "backward_time": plot_backward_time,
         "backward_speedup": plot_backward_speedup, "models": plot_models,
         "serving": plot_serving}


def _ran(results, kind, torch=None):
    """Whether a ``kind`` point ran; with ``torch`` True or False, one of torch's or not."""
    return any(p["status"] == "ok" and workload(p) == kind
               and (torch is None or (p["backend"] == "torch") == torch)
               for p in results["points"])


def draw_plots(results, directory):
    """Draw every plot of ``results`` into ``directory``.

    The forward plots when a forward point ran, the dtype plot when forward points
    ran in several dtypes, the forward + backward time plot when one of those ran,
    its speedup plot when torch and a fastattn backend did, the models plot when
    there are model points, and the serving plot when a decode or varlen point ran.

    Parameters
    ----------
    results : dict
    directory : pathlib.Path

    Returns
    -------
    list of (str, str)
        ``(title, file name)`` of each PNG written.
    """
    chosen = list(PLOTS) if _ran(results, FORWARD) else []
    if chosen and any(p["status"] == "ok" and p["backend"] != "naive"
                      for _, points in dtype_configurations(results) for p in points):
        chosen.append(DTYPE_PLOT)
    if _ran(results, FORWARD_BACKWARD):
        chosen.append(BACKWARD_PLOTS[0])
    if all(_ran(results, FORWARD_BACKWARD, torch=torch) for torch in (True, False)):
        chosen.append(BACKWARD_PLOTS[1])
    if model_groups(results):
        chosen.append(MODEL_PLOT)
    if _serving_panels(results):
        chosen.append(SERVING_PLOT)
    drawn = []
    for name, title in chosen:
        file_name = f"{name}.png"
        _DRAW[name](results, directory / file_name)
        drawn.append((title, file_name))
    return drawn
