"""What the report and the plots both show of a sweep: its groups, ranges and ratios.

:mod:`._report` writes ``report.md`` and asks :mod:`._plots` for the PNGs; both read
the results through these functions, and neither imports the other's internals.
"""

from ._results import FORWARD, FORWARD_BACKWARD, workload as point_workload
from ._serving import ALIBI, DECODE, PADDED, PAGED, READ, SERVING_WORKLOADS, VARLEN


def configurations(results, workload=FORWARD):
    """Group the points of one workload by configuration (everything but backend and ``N``).

    Parameters
    ----------
    results : dict
    workload : {"forward", "forward+backward"}, default "forward"

    Returns
    -------
    list of (dict, list of dict)
        ``(configuration, points)``, the configuration having ``dtype``,
        ``batch``, ``heads``, ``head_dim``, ``causal`` and ``threads``.

    Examples
    --------
    >>> point = dict(dtype="float32", batch=1, heads=8, head_dim=64, threads=2, n=128)
    >>> groups = configurations({"points": [dict(point, causal=False),
    ...                                     dict(point, causal=True, n=256)]})
    >>> [(config["causal"], len(points)) for config, points in groups]
    [(False, 1), (True, 1)]
    """
    groups = {}
    for point in results["points"]:
        if point_workload(point) != workload:
            continue
        config = {k: point[k] for k in ("dtype", "batch", "heads", "head_dim", "causal",
                                        "threads")}
        groups.setdefault(tuple(config.items()), (config, []))[1].append(point)
    return list(groups.values())


def series_label(point):
    """The backend of ``point``, and the ISA level ``--isa`` asked for, if it did.

    Examples
    --------
    >>> series_label({"backend": "cython"}), series_label({"backend": "cython",
    ...                                                   "isa_requested": "avx2"})
    ('cython', 'cython [avx2]')
    """
    level = point.get("isa_requested")
    return point["backend"] if level is None else f"{point['backend']} [{level}]"


def isa_cell(point):
    """The instruction-set level a point ran at (or, not run, was to run at), or ``—``.

    Examples
    --------
    >>> isa_cell({"isa": "avx512bf16"}), isa_cell({"isa_requested": "avx2"}), isa_cell({})
    ('avx512bf16', 'avx2', '—')
    """
    return point.get("isa") or point.get("isa_requested") or "—"


def isa_summary(points):
    """``backend level, ...`` of the default series (no ``--isa`` level) that ran, or None.

    Examples
    --------
    >>> isa_summary([{"backend": "cython", "isa": "avx512bf16", "status": "ok"},
    ...              {"backend": "torch", "isa": "AVX2", "status": "ok"},
    ...              {"backend": "naive", "isa": None, "status": "ok"}])
    'cython avx512bf16, torch AVX2'
    """
    found = {}
    for point in points:
        if point["status"] == "ok" and point.get("isa") and not point.get("isa_requested"):
            found.setdefault(point["backend"], point["isa"])
    return ", ".join(f"{backend} {level}" for backend, level in found.items()) or None


def dtype_configurations(results, workload=FORWARD):
    """Group the points of one workload by configuration *but* dtype, where several ran.

    Parameters
    ----------
    results : dict
    workload : {"forward", "forward+backward"}, default "forward"

    Returns
    -------
    list of (dict, list of dict)
        ``(configuration, points)``, the configuration having ``batch``, ``heads``,
        ``head_dim``, ``causal`` and ``threads``; empty when the workload's points
        have a single dtype.

    Examples
    --------
    >>> point = dict(batch=1, heads=8, head_dim=64, threads=2, n=128, causal=False)
    >>> groups = dtype_configurations({"points": [dict(point, dtype="float32"),
    ...                                           dict(point, dtype="bfloat16")]})
    >>> [(config["causal"], len(points)) for config, points in groups]
    [(False, 2)]
    """
    chosen = [p for p in results["points"] if point_workload(p) == workload]
    if len({p["dtype"] for p in chosen}) < 2:
        return []
    groups = {}
    for point in chosen:
        config = {k: point[k] for k in ("batch", "heads", "head_dim", "causal", "threads")}
        groups.setdefault(tuple(config.items()), (config, []))[1].append(point)
    return list(groups.values())


def dtype_baselines(points):
    """What each point of a dtype comparison is compared with.

    Parameters
    ----------
    points : list of dict
        One configuration's points in several dtypes (:func:`dtype_configurations`).

    Returns
    -------
    dict
        ``{id(point): (float32 point or None, torch point or None)}``: the same series'
        float32 point at the same ``N`` (fastattn's own float32 throughput), and torch's
        point of the same dtype and ``N``, each only where it ran.

    Examples
    --------
    >>> f32 = dict(backend="cython", dtype="float32", n=64, status="ok")
    >>> bf16 = dict(f32, dtype="bfloat16")
    >>> torch = dict(bf16, backend="torch")
    >>> found = dtype_baselines([f32, bf16, torch])
    >>> found[id(bf16)] == (f32, torch), found[id(f32)] == (f32, None)
    (True, True)
    """
    ran = [p for p in points if p["status"] == "ok"]
    float32 = {(series_label(p), p["n"]): p for p in ran if p["dtype"] == "float32"}
    torch = {(p["dtype"], p["n"]): p for p in ran if p["backend"] == "torch"}
    return {id(p): (float32.get((series_label(p), p["n"])), torch.get((p["dtype"], p["n"])))
            for p in points}


def describe_configuration(config):
    """A one-line title such as ``float32, B=1, H=8, D=64, causal, 2 threads``.

    Examples
    --------
    >>> describe_configuration(dict(dtype="float32", batch=1, heads=8, head_dim=64,
    ...                             causal=True, threads=2))
    'float32, B=1, H=8, D=64, causal, 2 threads'
    """
    mask = "causal" if config["causal"] else "no mask"
    return (f"{config['dtype']}, B={config['batch']}, H={config['heads']}, "
            f"D={config['head_dim']}, {mask}, {config['threads']} threads")


def naive_times(points):
    """``{N: median seconds}`` of the naive points that ran."""
    return {p["n"]: p["median_s"] for p in points
            if p["backend"] == "naive" and p["status"] == "ok"}


def torch_points(points):
    """``{N: point}`` of the torch points that ran (the forward + backward baseline)."""
    return ran_by_n(points, "torch")


def model_groups(results):
    """``[(workload, points)]`` of the model workloads in ``results``, in their usual order.

    Examples
    --------
    >>> points = [{"workload": "minilm-encode", "n": 128}, {"workload": "llama-prefill", "n": 512},
    ...           {"workload": "forward", "n": 64}]
    >>> [(name, len(found)) for name, found in model_groups({"points": points})]
    [('llama-prefill', 1), ('minilm-encode', 1)]
    """
    from ._models import MODEL_WORKLOADS

    groups = {name: [] for name in MODEL_WORKLOADS}
    for point in results["points"]:
        if point_workload(point) in groups:
            groups[point_workload(point)].append(point)
    return [(name, found) for name, found in groups.items() if found]


def ran_by_n(points, backend):
    """``{N: point}`` of ``backend``'s points that ran (a baseline to compare with)."""
    return {p["n"]: p for p in points if p["backend"] == backend and p["status"] == "ok"}


def speedup_over(baseline, point):
    """``(median, low, high)`` of ``baseline``'s time over ``point``'s, or None.

    ``median`` is the ratio of the medians; ``low`` and ``high`` the least and most
    that a pair of timed calls gives (baseline's fastest over the point's slowest, and
    the other way round): where that range includes 1, the difference may be noise.

    Examples
    --------
    >>> speedup_over({"median_s": 2.0, "times_s": [1.5, 2.0, 3.0]},
    ...              {"median_s": 1.0, "times_s": [0.75, 1.0, 1.5]})
    (2.0, 1.0, 4.0)
    >>> speedup_over(None, {"median_s": 1.0}) is None
    True
    """
    if not baseline or point.get("status", "ok") != "ok":
        return None
    median = baseline["median_s"] / point["median_s"]
    base, own = timing_range(baseline), timing_range(point)
    if base is None or own is None:
        return median, median, median
    return median, base[0] / own[1], base[1] / own[0]


def backward_peaks(results):
    """The backward's peak memory at the largest ``N`` of each forward + backward configuration.

    Returns
    -------
    list of (dict, int, dict)
        ``(configuration, N, {backend: peak bytes})``, for the points that ran at the
        largest ``N`` where any did.

    Examples
    --------
    >>> point = dict(workload="forward+backward", dtype="float32", batch=1, heads=8,
    ...              head_dim=64, causal=False, threads=2, status="ok")
    >>> results = {"points": [dict(point, backend="cython", n=512, peak_bytes=2**20),
    ...                       dict(point, backend="cython", n=1024, peak_bytes=2**21)]}
    >>> [(n, peaks) for _, n, peaks in backward_peaks(results)]
    [(1024, {'cython': 2097152})]
    """
    found = []
    for config, points in configurations(results, FORWARD_BACKWARD):
        ran = [p for p in points if p["status"] == "ok" and p.get("peak_bytes") is not None]
        if ran:
            largest = max(p["n"] for p in ran)
            found.append((config, largest, {series_label(p): p["peak_bytes"] for p in ran
                                            if p["n"] == largest}))
    return found


def timing_range(point):
    """``(fastest, slowest)`` timed call of a point in seconds, or None when unknown.

    Taken from ``times_s`` (every timed call is kept), else ``min_s`` / ``max_s``.

    Examples
    --------
    >>> timing_range({"times_s": [0.3, 0.1, 0.2]})
    (0.1, 0.3)
    >>> timing_range({"median_s": 0.2}) is None
    True
    """
    times = point.get("times_s")
    if times:
        return min(times), max(times)
    if point.get("min_s") is not None and point.get("max_s") is not None:
        return point["min_s"], point["max_s"]
    return None


def above_reference(results):
    """``{backend: [point, ...]}`` of the forward points that ran faster than the matmul reference.

    Only points of the reference's dtype count (a half-precision point is not compared
    with a float32 matmul).

    Examples
    --------
    >>> points = [{"backend": "cython", "status": "ok", "n": 512, "gflops": 300.0},
    ...           {"backend": "numba", "status": "ok", "n": 512, "gflops": 150.0}]
    >>> above = above_reference({"reference": {"gflops": 229.0}, "points": points})
    >>> {backend: [p["n"] for p in found] for backend, found in above.items()}
    {'cython': [512]}
    """
    reference = (results.get("reference") or {}).get("gflops")
    dtype = (results.get("reference") or {}).get("dtype")
    found = {}
    if not reference:
        return found
    for point in results["points"]:
        if point_workload(point) != FORWARD or (dtype and point.get("dtype", dtype) != dtype):
            continue
        if point["status"] == "ok" and point.get("gflops") and point["gflops"] > reference:
            found.setdefault(point["backend"], []).append(point)
    return found


def serving_groups(results):
    """``{workload: points}`` of the serving workloads in ``results`` (those present).

    Examples
    --------
    >>> points = [{"workload": "serving-decode", "n": 64}, {"workload": "forward", "n": 64}]
    >>> {name: len(found) for name, found in serving_groups({"points": points}).items()}
    {'serving-decode': 1}
    """
    groups = {name: [] for name in SERVING_WORKLOADS}
    for point in results["points"]:
        if point_workload(point) in groups:
            groups[point_workload(point)].append(point)
    return {name: found for name, found in groups.items() if found}


def read_bandwidth(results):
    """The serving read probe's point when it ran, else None.

    Examples
    --------
    >>> probe = {"workload": "serving-read", "status": "ok", "gbytes_per_s": 20.0}
    >>> read_bandwidth({"points": [probe]})["gbytes_per_s"]
    20.0
    """
    return next((p for p in results["points"] if point_workload(p) == READ
                 and p["status"] == "ok" and p.get("gbytes_per_s")), None)


SERVING_ROW_ORDER = ("cython", "numba")
"""The fastattn backends of the serving tables and plot, in the order of their rows
(torch, and any other, last)."""


def serving_call(point):
    """What a serving point calls, as its table and plot name it.

    Examples
    --------
    >>> serving_call({"workload": "serving-paged", "backend": "cython"})
    'paged_attention'
    >>> serving_call({"workload": "serving-padded", "backend": "torch"})
    'SDPA, padded'
    """
    torch = point["backend"] == "torch"
    return {DECODE: "SDPA" if torch else "attention", PAGED: "paged_attention",
            VARLEN: "varlen_attention", PADDED: "SDPA, padded" if torch else "attention, padded",
            ALIBI: "attention"}.get(point_workload(point), point_workload(point))


def serving_order(point):
    """Sort key of the serving rows: each fastattn backend's calls together, in
    :data:`SERVING_ROW_ORDER`, then torch's; one backend's calls in workload order.

    Examples
    --------
    >>> points = [{"workload": "serving-decode", "backend": b} for b in ("torch", "numba")]
    >>> [p["backend"] for p in sorted(points, key=serving_order)]
    ['numba', 'torch']
    """
    backend = point["backend"]
    rank = SERVING_ROW_ORDER.index(backend) if backend in SERVING_ROW_ORDER \
        else len(SERVING_ROW_ORDER)
    return rank, SERVING_WORKLOADS.index(point_workload(point))
