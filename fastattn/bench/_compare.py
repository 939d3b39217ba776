"""``fastattn bench compare A B``: per-point ratios of two saved reports."""

from ._results import FORWARD, FORWARD_BACKWARD, KEY_FIELDS, load_results, point_key
from ._serving import READ, SERVING_WORKLOADS


def compare_results(a, b):
    """Align the points of two sweeps and compute their ratios.

    Points are matched on :data:`~fastattn.bench._results.KEY_FIELDS` (backend,
    causal, N, dtype, batch, heads, head_dim, the ``--isa`` level asked for, workload:
    a forward point is never compared with a forward + backward one).

    Parameters
    ----------
    a, b : dict or str or Path
        Results, or report directories / ``results.json`` paths to load.

    Returns
    -------
    dict
        ``rows``: one dict per point measured in both, with the key fields,
        ``a_ms``, ``b_ms``, ``time_ratio`` (B time / A time: above 1 means B is
        slower), ``a_gflops``, ``b_gflops``, ``gflops_ratio`` (B / A; None for a
        model point, which has no FLOP count) and the
        thread counts; ``only_a`` and ``only_b``: keys of points that ran in
        just one of them.

    Examples
    --------
    >>> def sweep(ms):
    ...     point = dict(backend="numba", causal=False, n=64, dtype="float32", batch=1,
    ...                  heads=1, head_dim=8, threads=1, status="ok",
    ...                  median_s=ms / 1e3, gflops=1 / ms)
    ...     return {"points": [point]}
    >>> compare_results(sweep(2.0), sweep(3.0))["rows"][0]["time_ratio"]
    1.5
    """
    a = a if isinstance(a, dict) else load_results(a)
    b = b if isinstance(b, dict) else load_results(b)
    ran_a = {point_key(p): p for p in a["points"] if p["status"] == "ok"}
    ran_b = {point_key(p): p for p in b["points"] if p["status"] == "ok"}
    rows = []
    for key in sorted(set(ran_a) & set(ran_b), key=_sort_key):
        pa, pb = ran_a[key], ran_b[key]
        rows.append({**dict(zip(KEY_FIELDS, key)),
                     "a_ms": pa["median_s"] * 1e3, "b_ms": pb["median_s"] * 1e3,
                     "time_ratio": pb["median_s"] / pa["median_s"],
                     "a_gflops": pa["gflops"], "b_gflops": pb["gflops"],
                     "gflops_ratio": (pb["gflops"] / pa["gflops"]
                                      if pa.get("gflops") and pb.get("gflops") else None),
                     "a_threads": pa.get("threads"), "b_threads": pb.get("threads")})
    return {"rows": rows,
            "only_a": sorted(set(ran_a) - set(ran_b), key=_sort_key),
            "only_b": sorted(set(ran_b) - set(ran_a), key=_sort_key)}


def _sort_key(key):
    fields = dict(zip(KEY_FIELDS, key))
    return (fields["workload"], fields["dtype"], fields["batch"], fields["heads"],
            fields["head_dim"], fields["causal"], fields["backend"],
            fields["isa_requested"] or "", fields["n"])


def _backend(fields):
    level = fields.get("isa_requested")
    return fields["backend"] if level is None else f"{fields['backend']} [{level}]"


def _step(workload):
    # A model workload is "llama-prefill" etc.: its phase fits the column.  A serving one
    # keeps its name ("serving-decode"), which no model step can be taken for.
    if workload in SERVING_WORKLOADS:
        return workload
    return {FORWARD: "fwd", FORWARD_BACKWARD: "fwd+bwd"}.get(workload,
                                                            workload.rpartition("-")[2])


def _shape(fields):
    """``B,H,D`` of a point; ``—`` for the fields a point has not (the read probe)."""
    return ",".join("—" if fields[k] is None else str(fields[k])
                    for k in ("batch", "heads", "head_dim"))


def _gflops_cells(row):
    if row["gflops_ratio"] is None:  # a model point: no FLOP count
        return f"{'—':>9} {'—':>9} {'—':>9}"
    return (f"{row['a_gflops']:>9.2f} {row['b_gflops']:>9.2f} "
            f"{row['gflops_ratio']:>8.3f}x")


def _describe_key(key):
    f = dict(zip(KEY_FIELDS, key))
    shape = "" if f["heads"] is None else f" B={f['batch']} H={f['heads']}"
    return (f"{_step(f['workload'])} {_backend(f)} {'causal' if f['causal'] else 'full'} "
            f"N={f['n']} {f['dtype']}{shape}")


def format_comparison(comparison, label_a="A", label_b="B"):
    """A plain-text table of :func:`compare_results`'s rows.

    Parameters
    ----------
    comparison : dict
    label_a, label_b : str
        What A and B are (paths), printed above the table.

    Returns
    -------
    str
    """
    step = max([7] + [len(_step(row["workload"])) for row in comparison["rows"]])
    header = (f"{'step':<{step}} {'backend':<8} {'mask':<6} {'N':>6} {'dtype':<8} "
              f"{'B,H,D':<10} {'A ms':>11} {'B ms':>11} {'time B/A':>9} "
              f"{'A GF/s':>9} {'B GF/s':>9} {'GF/s B/A':>9}")
    lines = [f"A = {label_a}", f"B = {label_b}", "", header, "-" * len(header)]
    for row in comparison["rows"]:
        threads = ("" if row["a_threads"] == row["b_threads"]
                   else f"  (threads {row['a_threads']} vs {row['b_threads']})")
        lines.append(f"{_step(row['workload']):<{step}} {_backend(row):<8} "
                     f"{'causal' if row['causal'] else 'full':<6} "
                     f"{row['n']:>6} {row['dtype']:<8} {_shape(row):<10} {row['a_ms']:>11.3f} "
                     f"{row['b_ms']:>11.3f} {row['time_ratio']:>8.3f}x "
                     f"{_gflops_cells(row)}{threads}")
    if not comparison["rows"]:
        lines.append("(no point was measured in both reports)")
    for name, keys in (("A", comparison["only_a"]), ("B", comparison["only_b"])):
        if keys:
            lines.append(f"\nmeasured only in {name}: "
                         + ", ".join(_describe_key(key) for key in keys))
    return "\n".join(lines)


def regressions(comparison, max_time_ratio):
    """Rows whose time grew by more than ``max_time_ratio`` (e.g. 1.10 for 10 %).

    The serving read probe is not one: it measures the machine, not fastattn (its row
    is shown, to tell a slower machine from slower code).

    Parameters
    ----------
    comparison : dict
    max_time_ratio : float

    Returns
    -------
    list of dict
    """
    return [row for row in comparison["rows"]
            if row["time_ratio"] > max_time_ratio and row["workload"] != READ]
