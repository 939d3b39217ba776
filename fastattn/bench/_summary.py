"""What the report and the plots both show of a sweep: its groups, ranges and ratios.

:mod:`._report` writes ``report.md`` and asks :mod:`._plots` for the PNGs; both read
the results through these functions, and neither imports the other's internals.
"""


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
        config = {k: point[k] for k in ("dtype", "batch", "heads", "head_dim", "causal",
                                        "threads")}
        groups.setdefault(tuple(config.items()), (config, []))[1].append(point)
    return list(groups.values())


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
    """``{backend: [point, ...]}`` of the points that ran faster than the matmul reference.

    Examples
    --------
    >>> points = [{"backend": "cython", "status": "ok", "n": 512, "gflops": 300.0},
    ...           {"backend": "numba", "status": "ok", "n": 512, "gflops": 150.0}]
    >>> above = above_reference({"reference": {"gflops": 229.0}, "points": points})
    >>> {backend: [p["n"] for p in found] for backend, found in above.items()}
    {'cython': [512]}
    """
    reference = (results.get("reference") or {}).get("gflops")
    found = {}
    if not reference:
        return found
    for point in results["points"]:
        if point["status"] == "ok" and point.get("gflops") and point["gflops"] > reference:
            found.setdefault(point["backend"], []).append(point)
    return found
