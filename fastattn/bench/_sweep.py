"""The sweep: plan the points, measure each in a fresh subprocess, collect the results."""

import datetime
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._models import (DECODE_PROMPT, ENCODE_SIZES, LLAMA_DECODE, LLAMA_PREFILL,
                      MINILM_ENCODE, MODEL_WORKLOADS, PREFILL_SIZES, model_shape,
                      models_unavailable, tokens_per_call)
from ._point import RESULT_PREFIX
from ._progress import Progress
from ._results import FORWARD, FORWARD_BACKWARD, SCHEMA, SCHEMA_VERSION
from ._serving import READ, SERVING_WORKLOADS, serving_options, serving_points
from ._summary import series_label
from ._workload import (HALF_DTYPES, Shape, attention_flops, backward_unavailable,
                        naive_bytes_needed, naive_over_budget, training_flops)

FULL_SIZES = tuple(2**p for p in range(7, 15))   # 128 ... 16384
QUICK_SIZES = tuple(2**p for p in range(7, 12))  # 128 ... 2048
FULL_BACKWARD_SIZES = tuple(2**p for p in range(9, 15))  # 512 ... 16384
QUICK_BACKWARD_SIZES = (512, 1024)


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
        Sequence lengths ``N`` (queries = keys = ``N``) of the forward points; empty:
        none.
    backends : sequence of str
        fastattn backends and/or ``"torch"``.
    causal : sequence of bool, default (False, True)
    dtype : str, default "float32"
        The dtype of the matmul reference, and of the points when ``dtypes`` is None.
    dtypes : sequence of str, optional
        The dtypes of the forward and forward + backward points (float32, float64,
        float16, bfloat16), each point of one ``N`` and mask timed in every dtype, one
        after the other, torch's among them; default ``(dtype,)``.  A backend that
        does not take a half dtype is recorded as skipped, with its reason.
    isa_levels : sequence of str, optional
        Instruction-set levels (``fastattn._isa.LEVELS``) to run the Cython points at,
        each point once per level (``fastattn._isa.use_level``), so that a portable
        level and the best one are timed in the same run; a level this build or CPU
        cannot run is planned as skipped.  Default: once, at the level chosen at
        import.
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
    backward_sizes : sequence of int, default ()
        Sequence lengths of the forward + backward points; empty: none.
    backward_backends : sequence of str, optional
        Backends of those points; default: ``backends`` but naive (whose backward is
        the check's reference).  One without a backward is planned as skipped.
    backward_shapes : sequence of (int, int), optional
        ``(batch, heads)`` of those points; default ``(batch, heads)`` and ``(1, 1)``
        (B x H = 1: how a backward parallelises over the keys of a single head).
    models : sequence of str, default ()
        Model workloads to time (:data:`~fastattn.bench._models.MODEL_WORKLOADS`),
        each with every implementation of :data:`~fastattn.bench._models.IMPLEMENTATIONS`.
    model_sizes : dict, optional
        ``{workload: lengths}``; default: prefill 512 ... 4096, decode after a 512-token
        prompt, encode 128, 256, 512.
    model_config : dict, optional
        Fields replacing the tiny Llama's configuration (tests make it smaller).
    serving : bool, default False
        Also time the serving workloads (:mod:`fastattn.bench._serving`): the read
        bandwidth probe, decoding (contiguous and paged), a packed variable-length batch
        against the same batch padded, ALiBi at long N; numba, cython and torch of
        ``backends``.
    serving_options : dict, optional
        Fields replacing :data:`~fastattn.bench._serving.SERVING_DEFAULTS` (the sizes;
        tests make them tiny).
    """

    sizes: tuple
    backends: tuple
    threads: int
    memory_budget_gib: float
    causal: tuple = (False, True)
    dtype: str = "float32"
    dtypes: tuple = None
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    repeats: int = 5
    time_budget_s: float = 20.0
    min_time_s: float = 1.0
    reference_size: int = 4096
    check: bool = True
    point_timeout_s: float = 1800.0
    backward_sizes: tuple = ()
    backward_backends: tuple = None
    backward_shapes: tuple = None
    models: tuple = ()
    model_sizes: dict = None
    model_config: dict = None
    serving: bool = False
    serving_options: dict = None
    isa_levels: tuple = None
    extra: dict = field(default_factory=dict)

    def point_dtypes(self):
        """The dtypes of the forward and forward + backward points (see ``dtypes``)."""
        return tuple(self.dtypes) if self.dtypes else (self.dtype,)

    def reference_dtype(self):
        """The dtype of the matmul reference: ``dtype``, float32 for a half one (NumPy
        has no fast half-precision matmul)."""
        return "float32" if self.dtype in HALF_DTYPES else self.dtype

    def variants(self, backend):
        """``(backend, level or None)`` of each series ``backend`` gets (see ``isa_levels``)."""
        if backend == "cython" and self.isa_levels:
            return [(backend, level) for level in self.isa_levels]
        return [(backend, None)]

    def training_backends(self):
        """The backends of the forward + backward points (see ``backward_backends``)."""
        if self.backward_backends is not None:
            return tuple(self.backward_backends)
        return tuple(b for b in self.backends if b != "naive")

    def training_shapes(self):
        """The ``(batch, heads)`` of the forward + backward points (see ``backward_shapes``)."""
        if self.backward_shapes is not None:
            return tuple(tuple(s) for s in self.backward_shapes)
        return tuple(dict.fromkeys([(self.batch, self.heads), (1, 1)]))

    def serving_setup(self):
        """The serving sizes (:func:`~fastattn.bench._serving.serving_options`), or None
        when ``serving`` is off."""
        return serving_options(self.serving_options) if self.serving else None

    def sizes_of(self, workload):
        """The lengths of the model ``workload`` (see ``model_sizes``)."""
        default = {LLAMA_PREFILL: PREFILL_SIZES, LLAMA_DECODE: (DECODE_PROMPT,),
                   MINILM_ENCODE: ENCODE_SIZES}[workload]
        return tuple(sorted((self.model_sizes or {}).get(workload, default)))


def plan_points(config):
    """The points of ``config``, in the order they run; budget skips are decided here.

    Parameters
    ----------
    config : SweepConfig

    Returns
    -------
    list of dict
        Each has the key fields (``workload`` among them), ``threads``, ``flops``,
        and ``status`` ``"planned"`` or ``"skipped"`` (with ``reason``); the forward
        points (first) also ``naive_bytes_needed``.  The forward + backward points
        of one shape, mask and ``N`` follow each other, torch's among them, so that
        the fastattn backends and torch are measured in the same stretch of the run;
        so do the dtypes of one ``N`` and mask (each dtype's backends, torch among
        them, then the next dtype's), and the ISA levels of the Cython points
        (``isa_requested``: the level asked for, None for the one chosen at import).
        The serving points come last, each next to what it is compared with
        (:func:`~fastattn.bench._serving.serving_points`).
    """
    serving = serving_points(config.serving_setup(), config.backends, config.threads) \
        if config.serving else []
    return (_forward_points(config) + _training_points(config) + _model_points(config)
            + serving)


def _point(config, backend, workload, shape, flops, level=None):
    return {"workload": workload, "backend": backend, "causal": bool(shape.causal),
            "n": int(shape.q_len), "dtype": shape.dtype, "batch": shape.batch,
            "heads": shape.heads, "head_dim": config.head_dim, "threads": config.threads,
            "isa_requested": level, "flops": flops, "status": "planned", "reason": None}


def _level_reasons(config):
    """``{level: why it cannot run here}`` of the ``isa_levels`` this machine cannot run."""
    from ._levels import level_unavailable

    reasons = {level: level_unavailable(level) for level in config.isa_levels or ()}
    return {level: reason for level, reason in reasons.items() if reason}


def _forward_points(config):
    budget_bytes = config.memory_budget_gib * 2**30
    cannot = _level_reasons(config) if config.sizes else {}
    points = []
    for causal in config.causal:
        for n in sorted(config.sizes):
            for dtype in config.point_dtypes():
                shape = Shape(config.batch, config.heads, n, n, config.head_dim,
                              causal=causal, dtype=dtype)
                for name in config.backends:
                    for backend, level in config.variants(name):
                        point = _point(config, backend, FORWARD, shape,
                                       attention_flops(shape), level)
                        point["naive_bytes_needed"] = naive_bytes_needed(shape)
                        reason = naive_over_budget(shape, budget_bytes)
                        if backend == "naive" and reason:
                            point.update(status="skipped", reason=reason)
                        elif level in cannot:
                            point.update(status="skipped", reason=cannot[level])
                        points.append(point)
    return points


def _training_points(config):
    backends = config.training_backends()
    unavailable = {b: backward_unavailable(b) for b in backends} if config.backward_sizes \
        else {}
    cannot = _level_reasons(config) if config.backward_sizes else {}
    points = []
    for batch, heads in config.training_shapes():
        for causal in config.causal:
            for n in sorted(config.backward_sizes):
                for dtype in config.point_dtypes():
                    shape = Shape(batch, heads, n, n, config.head_dim, causal=causal,
                                  dtype=dtype)
                    for name in backends:
                        for backend, level in config.variants(name):
                            point = _point(config, backend, FORWARD_BACKWARD, shape,
                                           training_flops(shape), level)
                            reason = unavailable[backend] or cannot.get(level)
                            if reason:
                                point.update(status="skipped", reason=reason)
                            points.append(point)
    return points


def _model_points(config):
    from ._models import IMPLEMENTATIONS

    points = []
    for workload in config.models:
        if workload not in MODEL_WORKLOADS:
            raise ValueError(f"models must be among {MODEL_WORKLOADS}, got {workload!r}")
        heads, head_dim, causal = model_shape(workload)
        reason = models_unavailable(workload)
        for n in config.sizes_of(workload):
            for implementation in IMPLEMENTATIONS:
                points.append({
                    "workload": workload, "backend": implementation, "causal": causal,
                    "n": int(n), "dtype": "float32", "batch": 1, "heads": heads,
                    "head_dim": head_dim, "threads": config.threads, "flops": None,
                    "tokens": tokens_per_call(workload, n),
                    "status": "skipped" if reason else "planned", "reason": reason})
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
    point["gflops"] = point["flops"] / median / 1e9 if point.get("flops") else None
    tokens = point.get("tokens", point["batch"] * point["n"])
    point["tokens_per_s"] = None if tokens is None else tokens / median
    if point.get("bytes_read"):
        point["gbytes_per_s"] = point["bytes_read"] / median / 1e9
    sizes = [point.get("rss_bytes"), point.get("traced_bytes")]
    point["peak_bytes"] = max((s for s in sizes if s is not None), default=None)
    return point


def _describe_serving(point):
    head = f"{point['workload']} {point['backend']:<6}"
    if point["status"] != "ok":
        return f"{head} {point['status']}: {point['reason']}"
    rates = [f"{point['median_s'] * 1e3:10.2f} ms"]
    if point.get("gbytes_per_s"):
        rates.append(f"{point['gbytes_per_s']:8.2f} GB/s")
    if point["workload"] != READ and point.get("tokens_per_s"):
        rates.append(f"{point['tokens_per_s']:12,.0f} tokens/s")
    peak = point.get("peak_bytes")
    if peak is not None:
        rates.append(f"peak {peak / 2**20:.1f} MiB")
    return f"{head} " + " ".join(rates)


def _describe(point):
    if point["workload"] in SERVING_WORKLOADS:
        return _describe_serving(point)
    mask = "causal" if point["causal"] else "full"
    head = f"{series_label(point):<6} {mask:<6} N={point['n']:<6}"
    if point.get("dtype") not in (None, "float32"):
        head += f" {point['dtype']}"
    if point["workload"] in MODEL_WORKLOADS:
        head = f"{point['workload']} {point['backend']:<8} N={point['n']:<6}"
        if point["status"] == "ok":
            peak = point["peak_bytes"]
            return (f"{head} {point['median_s'] * 1e3:10.2f} ms "
                    f"{point['tokens_per_s']:10,.0f} tokens/s peak "
                    + ("?" if peak is None else f"{peak / 2**20:.1f} MiB"))
    if point["workload"] == FORWARD_BACKWARD:
        head = f"fwd+bwd B={point['batch']} H={point['heads']:<3} {head}"
    if point["status"] != "ok":
        return f"{head} {point['status']}: {point['reason']}"
    peak = point["peak_bytes"]
    memory = "?" if peak is None else f"{peak / 2**20:.1f} MiB"
    what = "backward peak" if point["workload"] == FORWARD_BACKWARD else "peak"
    return (f"{head} {point['median_s'] * 1e3:10.2f} ms {point['gflops']:8.2f} GFLOP/s "
            f"{what} {memory}")


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
            "dtype": config.reference_dtype(), "threads": config.threads, "repeats": 3}
    measured = run_child(spec, config.point_timeout_s)
    if measured.pop("status") != "ok":
        return {"library": library, "gflops": None, "reason": measured.get("reason")}
    return measured


def run_sweep(config, progress=True, stream=None, command=None):
    """Measure every point of ``config``; return the results (see :mod:`._results`).

    Each point runs in its own subprocess (:mod:`fastattn.bench._point`); the
    naive backend is skipped where it would exceed the memory budget, and a
    backend that times out or is killed is skipped for larger ``N`` of that
    workload, shape and mask.

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
            bar.finish(f"{library} {config.reference_dtype()} matmul "
                       f"{config.reference_size}³: "
                       + (f"{gflops:.1f} GFLOP/s" if gflops
                          else f"failed: {measured[-1].get('reason')}"))
        if libraries:
            results["reference"] = combine(measured, config.reference_size,
                                           config.reference_dtype(), config.threads)
        for point in points:
            series = tuple(point.get(k) for k in ("workload", "backend", "isa_requested",
                                                  "dtype", "causal", "batch", "heads"))
            if point["status"] == "planned" and series in broken:
                point.update(status="skipped", reason=f"failed at N={broken[series]}")
            if point["status"] == "planned":
                spec = _child_spec(config, point)
                bar.start({"training": "fwd+bwd ", "model": f"{point['workload']} ",
                           "serving": f"{point['workload']} "}.get(
                    spec["kind"], "") + f"{series_label(point)} N={point['n']}")
                _finish_point(point, run_child(spec, config.point_timeout_s))
                if point["status"] == "failed" and not point["reason"].startswith("exit"):
                    broken[series] = point["n"]  # timed out or killed: larger N would be too
            bar.finish(_describe(point))
    return results


def _child_spec(config, point):
    """What the child process of ``point`` is told to measure."""
    timing = {"repeats": config.repeats, "time_budget_s": config.time_budget_s,
              "min_time_s": config.min_time_s}
    if point["workload"] in SERVING_WORKLOADS:
        return {"kind": "serving", "workload": point["workload"], "check": config.check,
                "options": config.serving_setup(), **timing,
                **{k: point[k] for k in ("backend", "threads")}}
    if point["workload"] in MODEL_WORKLOADS:
        return {"kind": "model", "workload": point["workload"], **timing,
                "model_config": dict(config.model_config or {}),
                **{k: point[k] for k in ("backend", "n", "threads")}}
    kind = "training" if point["workload"] == FORWARD_BACKWARD else "attention"
    return {"kind": kind, "check": config.check, "isa": point["isa_requested"], **timing,
            **{k: point[k] for k in ("backend", "causal", "n", "dtype", "batch", "heads",
                                     "head_dim", "threads")}}


def _settings(config):
    settings = asdict(config)
    settings.pop("extra")
    settings.update(config.extra)
    settings["dtypes"] = list(config.point_dtypes())
    settings["isa_levels"] = list(config.isa_levels) if config.isa_levels else None
    settings["sizes"] = sorted(settings["sizes"])
    settings["causal"] = [bool(c) for c in settings["causal"]]
    settings["backends"] = list(settings["backends"])
    settings["backward_sizes"] = sorted(settings["backward_sizes"])
    settings["backward_backends"] = list(config.training_backends())
    settings["backward_shapes"] = [list(shape) for shape in config.training_shapes()]
    settings["models"] = list(config.models)
    settings["model_sizes"] = {w: list(config.sizes_of(w)) for w in config.models}
    settings["serving_options"] = config.serving_setup()
    return settings
