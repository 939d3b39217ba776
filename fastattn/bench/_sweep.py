"""The sweep: plan the points, measure each in a fresh subprocess, collect the results."""

import datetime
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._point import RESULT_PREFIX
from ._progress import Progress
from ._results import SCHEMA, SCHEMA_VERSION
from ._workload import Shape, attention_flops, naive_bytes_needed, naive_over_budget

FULL_SIZES = tuple(2**p for p in range(7, 15))   # 128 ... 16384
QUICK_SIZES = tuple(2**p for p in range(7, 12))  # 128 ... 2048


def geometric_sizes(smallest, largest):
    """Powers-of-two spaced sequence lengths ``smallest, 2*smallest, ... <= largest``.

    Examples
    --------
    >>> geometric_sizes(128, 1024)
    [128, 256, 512, 1024]
    """
    sizes, n = [], smallest
    while n <= largest:
        sizes.append(n)
        n *= 2
    return sizes


@dataclass
class SweepConfig:
    """What a sweep measures and how.

    Parameters
    ----------
    sizes : sequence of int
        Sequence lengths ``N`` (queries = keys = ``N``).
    backends : sequence of str
        fastattn backends and/or ``"torch"``.
    causal : sequence of bool, default (False, True)
    dtype : str, default "float32"
    batch, heads, head_dim : int, default 1, 8, 64
    threads : int
        Threads for every backend (and BLAS, torch).
    repeats : int, default 5
        Timed calls per point (after the warm-up); the median is reported.
    time_budget_s : float, default 20
        Stop timing a point once this much time was spent timing it.
    min_time_s : float, default 1
        Keep timing a point (beyond ``repeats``) until this much time was spent, so
        that short calls get a stable median.
    memory_budget_gib : float
        The naive backend is skipped where its score matrices would need more.
    reference_size : int, default 4096
        Size of the square matmul timed with NumPy and torch as the GFLOP/s
        reference (0: do not measure); see :mod:`fastattn.bench._reference`.
    check : bool, default True
        Compare every result with the naive reference.
    point_timeout_s : float, default 1800
        A point's subprocess is stopped after this long; when a point times out or
        is killed, larger ``N`` of the same backend and mask are skipped.
    """

    sizes: tuple
    backends: tuple
    threads: int
    memory_budget_gib: float
    causal: tuple = (False, True)
    dtype: str = "float32"
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    repeats: int = 5
    time_budget_s: float = 20.0
    min_time_s: float = 1.0
    reference_size: int = 4096
    check: bool = True
    point_timeout_s: float = 1800.0
    extra: dict = field(default_factory=dict)


def plan_points(config):
    """The points of ``config``, in the order they run; budget skips are decided here.

    Parameters
    ----------
    config : SweepConfig

    Returns
    -------
    list of dict
        Each has the key fields, ``threads``, ``flops``, ``naive_bytes_needed``,
        and ``status`` ``"planned"`` or ``"skipped"`` (with ``reason``).
    """
    budget_bytes = config.memory_budget_gib * 2**30
    points = []
    for causal in config.causal:
        for n in sorted(config.sizes):
            shape = Shape(config.batch, config.heads, n, n, config.head_dim, causal=causal,
                          dtype=config.dtype)
            needed = naive_bytes_needed(shape)
            for backend in config.backends:
                point = {"backend": backend, "causal": bool(causal), "n": int(n),
                         "dtype": config.dtype, "batch": config.batch, "heads": config.heads,
                         "head_dim": config.head_dim, "threads": config.threads,
                         "flops": attention_flops(shape), "naive_bytes_needed": needed,
                         "status": "planned", "reason": None}
                reason = naive_over_budget(shape, budget_bytes)
                if backend == "naive" and reason:
                    point.update(status="skipped", reason=reason)
                points.append(point)
    return points


PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
"""The directory holding this fastattn package (site-packages, or a source checkout)."""


def _child_environment():
    """The environment of a child: this fastattn first on its path, no inherited thread caps."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_child(spec, timeout):
    """Run ``python -m fastattn.bench._point`` on ``spec``; return its result dict.

    Parameters
    ----------
    spec : dict
    timeout : float
        Seconds.

    Returns
    -------
    dict
        The child's measurements, or ``{"status": "failed", "reason": ...}``.
    """
    command = [sys.executable, "-m", "fastattn.bench._point", "--json", json.dumps(spec)]
    try:
        # cwd: ``python -m`` puts the working directory first on sys.path, so a source
        # checkout there (without the built extension) would shadow the installed package.
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=_child_environment(), cwd=PACKAGE_ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode == 0 and lines:
        return {"status": "ok", **json.loads(lines[-1][len(RESULT_PREFIX):])}
    if done.returncode < 0:
        reason = f"killed by signal {-done.returncode}"
        if done.returncode == -9:
            reason += " (out of memory?)"
    else:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        reason = f"exit status {done.returncode}: {tail}"
    return {"status": "failed", "reason": reason}


def _finish_point(point, measured):
    point.update(measured)
    if point["status"] != "ok":
        return point
    median = point["median_s"]
    point["gflops"] = point["flops"] / median / 1e9
    point["tokens_per_s"] = point["batch"] * point["n"] / median
    sizes = [point.get("rss_bytes"), point.get("traced_bytes")]
    point["peak_bytes"] = max((s for s in sizes if s is not None), default=None)
    return point


def _describe(point):
    mask = "causal" if point["causal"] else "full"
    head = f"{point['backend']:<6} {mask:<6} N={point['n']:<6}"
    if point["status"] != "ok":
        return f"{head} {point['status']}: {point['reason']}"
    peak = point["peak_bytes"]
    memory = "?" if peak is None else f"{peak / 2**20:.1f} MiB"
    return (f"{head} {point['median_s'] * 1e3:10.2f} ms {point['gflops']:8.2f} GFLOP/s "
            f"peak {memory}")


def measure_reference(config, library):
    """Time ``library``'s reference matmul in a subprocess; return the measurement.

    Parameters
    ----------
    config : SweepConfig
    library : {"numpy", "torch"}

    Returns
    -------
    dict
        :func:`fastattn.bench._reference.matmul_gflops`'s result, or ``{"library",
        "gflops": None, "reason"}`` when the child failed.
    """
    spec = {"kind": "matmul", "library": library, "size": config.reference_size,
            "dtype": config.dtype, "threads": config.threads, "repeats": 3}
    measured = run_child(spec, config.point_timeout_s)
    if measured.pop("status") != "ok":
        return {"library": library, "gflops": None, "reason": measured.get("reason")}
    return measured


def run_sweep(config, progress=True, stream=None, command=None):
    """Measure every point of ``config``; return the results (see :mod:`._results`).

    Each point runs in its own subprocess (:mod:`fastattn.bench._point`); the
    naive backend is skipped where it would exceed the memory budget, and a
    backend that times out or is killed is skipped for larger ``N`` of that mask.

    Parameters
    ----------
    config : SweepConfig
    progress : bool, default True
        Print a line per point (and a bar on a terminal).
    stream : file-like, optional
        Where progress goes; default ``sys.stdout``.
    command : list of str, optional
        The command line, recorded in the results.

    Returns
    -------
    dict
    """
    from ._machine import machine_info
    from ._reference import combine, reference_libraries

    points = plan_points(config)
    results = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec="seconds"),
               "command": command, "machine": machine_info(), "settings": _settings(config),
               "reference": None, "points": points}
    broken = {}
    libraries = reference_libraries() if config.reference_size else []
    with Progress(len(points) + len(libraries), stream, progress) as bar:
        measured = []
        for library in libraries:
            bar.start(f"{library} matmul reference")
            measured.append(measure_reference(config, library))
            gflops = measured[-1].get("gflops")
            bar.finish(f"{library} {config.dtype} matmul {config.reference_size}³: "
                       + (f"{gflops:.1f} GFLOP/s" if gflops
                          else f"failed: {measured[-1].get('reason')}"))
        if libraries:
            results["reference"] = combine(measured, config.reference_size, config.dtype,
                                           config.threads)
        for point in points:
            series = (point["backend"], point["causal"])
            if point["status"] == "planned" and series in broken:
                point.update(status="skipped", reason=f"failed at N={broken[series]}")
            if point["status"] == "planned":
                bar.start(f"{point['backend']} N={point['n']}")
                spec = {"kind": "attention", "repeats": config.repeats,
                        "time_budget_s": config.time_budget_s,
                        "min_time_s": config.min_time_s, "check": config.check,
                        **{k: point[k] for k in ("backend", "causal", "n", "dtype", "batch",
                                                 "heads", "head_dim", "threads")}}
                _finish_point(point, run_child(spec, config.point_timeout_s))
                if point["status"] == "failed" and not point["reason"].startswith("exit"):
                    broken[series] = point["n"]  # timed out or killed: larger N would be too
            bar.finish(_describe(point))
    return results


def _settings(config):
    settings = asdict(config)
    settings.pop("extra")
    settings.update(config.extra)
    settings["sizes"] = sorted(settings["sizes"])
    settings["causal"] = [bool(c) for c in settings["causal"]]
    settings["backends"] = list(settings["backends"])
    return settings
