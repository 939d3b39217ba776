"""The report directory: ``report.md`` (for people), ``results.json`` and the plots."""

import warnings
from pathlib import Path

from ._results import save_results

REPORT_FILE = "report.md"


def configurations(results):
    """Group the points by configuration (everything but backend and ``N``).

    Parameters
    ----------
    results : dict

    Returns
    -------
    list of (dict, list of dict)
        ``(configuration, points)``, the configuration having ``dtype``,
        ``batch``, ``heads``, ``head_dim``, ``causal`` and ``threads``.
    """
    groups = {}
    for point in results["points"]:
        config = {k: point[k] for k in ("dtype", "batch", "heads", "head_dim", "causal",
                                        "threads")}
        groups.setdefault(tuple(config.items()), (config, []))[1].append(point)
    return list(groups.values())


def describe_configuration(config):
    """A one-line title such as ``float32, B=1, H=8, D=64, causal, 2 threads``."""
    mask = "causal" if config["causal"] else "no mask"
    return (f"{config['dtype']}, B={config['batch']}, H={config['heads']}, "
            f"D={config['head_dim']}, {mask}, {config['threads']} threads")


def naive_times(points):
    """``{N: median seconds}`` of the naive points that ran."""
    return {p["n"]: p["median_s"] for p in points
            if p["backend"] == "naive" and p["status"] == "ok"}


def _mib(value):
    if value is None:
        return "—"
    mib = value / 2**20
    return "<0.1" if mib < 0.1 else f"{mib:,.1f}"


def _number(value):
    """Three significant digits below 100, thousands separators above."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _table(points, ceiling_gflops):
    naive = naive_times(points)
    rows = ["| N | backend | median ms | GFLOP/s | % of ceiling | tokens/s | peak MiB "
            "| RSS MiB | traced MiB | speedup vs naive | max abs err |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(points, key=lambda p: (p["n"], p["backend"] != "naive", p["backend"])):
        if p["status"] != "ok":
            rows.append(f"| {p['n']} | {p['backend']} | {p['status']}: {p['reason']} "
                        "| | | | | | | | |")
            continue
        share = (f"{100 * p['gflops'] / ceiling_gflops:.0f}%" if ceiling_gflops else "—")
        speedup = (f"{naive[p['n']] / p['median_s']:.3g}×"
                   if p["n"] in naive and p["backend"] != "naive" else "—")
        error = "ref" if p["backend"] == "naive" else (
            "—" if p.get("max_abs_err") is None else f"{p['max_abs_err']:.1e}")
        rows.append(f"| {p['n']} | {p['backend']} | {_number(p['median_s'] * 1e3)} "
                    f"| {_number(p['gflops'])} | {share} | {p['tokens_per_s']:,.0f} "
                    f"| {_mib(p['peak_bytes'])} | {_mib(p.get('rss_bytes'))} "
                    f"| {_mib(p.get('traced_bytes'))} | {speedup} | {error} |")
    return rows


def render_markdown(results, plots=()):
    """The text of ``report.md`` for ``results``.

    Parameters
    ----------
    results : dict
        As returned by :func:`fastattn.bench.run_sweep` or loaded from results.json.
    plots : sequence of (str, str)
        ``(title, file name)`` of the plots to show.

    Returns
    -------
    str
    """
    machine, settings = results["machine"], results["settings"]
    ceiling = results.get("ceiling") or {}
    gflops = ceiling.get("gflops")
    lines = ["# fastattn benchmark report", "",
             f"Created {results['created']}"
             + (f" by `{' '.join(results['command'])}`" if results.get("command") else "")
             + ".", "", "## Machine", "", "| | |", "|---|---|",
             f"| CPU | {machine['cpu']} |",
             f"| cores | {machine['available_cores']} available "
             f"({machine['logical_cpus']} logical) |",
             f"| threads used | {settings['threads']} |",
             f"| memory | {machine['memory_gib']} GiB; naive budget "
             f"{settings['memory_budget_gib']:g} GiB |",
             f"| platform | {machine['platform']}, Python {machine['python']} |",
             "| versions | " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()
                                         if v) + " |",
             "| BLAS | " + ("; ".join(machine["blas"]) or "unknown") + " |",
             "| backends | " + "; ".join(f"{k}: {v}" for k, v in machine["backends"].items())
             + " |", ""]
    if gflops:
        lines += [f"**Ceiling**: NumPy {ceiling['dtype']} matmul {ceiling['size']}³ runs at "
                  f"**{gflops:.1f} GFLOP/s** with {ceiling.get('threads')} threads; "
                  "\"% of ceiling\" below is relative to it.", ""]
    lines += [f"Times are medians of at least {settings['repeats']} timed calls and at least "
              f"{settings.get('min_time_s', 0):g} s of them, after full-size warm-up calls "
              f"(timing stops after {settings['time_budget_s']:g} s per point). GFLOP/s counts "
              "4·B·H·N²·D (halved when causal). Peak MiB is the larger of the RSS rise "
              "and the tracemalloc peak of one call, measured in a fresh process; the "
              "inputs are not counted, the output is.", ""]
    for config, points in configurations(results):
        lines += [f"## {describe_configuration(config)}", ""]
        lines += _table(points, gflops)
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({name})\n" for title, name in plots]
    return "\n".join(lines).rstrip() + "\n"


def write_report(results, directory, plots=True):
    """Write ``results.json``, the plots and ``report.md`` into ``directory``.

    Parameters
    ----------
    results : dict
    directory : str or Path
    plots : bool, default True
        Draw the PNG plots (needs matplotlib; without it a warning is given and
        the report is written without plots).

    Returns
    -------
    list of Path
        The files written.
    """
    directory = Path(directory)
    written = [save_results(results, directory)]
    drawn = []
    if plots:
        try:
            from ._plots import draw_plots
        except ImportError as error:
            warnings.warn(f"no plots: {error}", stacklevel=2)
        else:
            drawn = draw_plots(results, directory)
            written += [directory / name for _, name in drawn]
    path = directory / REPORT_FILE
    path.write_text(render_markdown(results, drawn))
    written.append(path)
    return written
