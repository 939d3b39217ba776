"""One measurement, made in a fresh process: ``python -m fastattn.bench._point --json SPEC``.

The sweep starts this module once per point, so the memory a point needs is not
hidden by memory an earlier point left behind, and a point that runs out of memory
cannot take the sweep down.  The child prints one line, ``RESULT_PREFIX`` followed
by a JSON object, on stdout.

An attention point is prepared by :func:`prepare_attention` (also used by the
pytest-benchmark suites in ``bench/``, so that both measure the same way): a call on
a tiny problem of the same kind (JIT compilation, thread pools), one full-size call
under :func:`measure_peak` (the first full-size call, so every page it needs is new),
the correctness check (:func:`~fastattn.bench._workload.check_result`), then warm-up
calls at full size (the first few calls of a process run slower: page faults in fresh
scratch, thread pools settling).  The sweep then times calls: at least ``repeats``
and at least ``min_time_s`` seconds of them (default 1), so that short calls get a
stable median, stopping early once ``time_budget_s`` seconds have been spent timing
(at least one call is timed).

A forward + backward point is prepared by :func:`prepare_training` the same way,
except that the peak memory is that of the first full-size *backward* (after its
forward, whose ``out`` and ``lse`` the backward takes as inputs), the check compares
the gradients (:func:`~fastattn.bench._workload.check_gradients`), and the timed call
is a whole training step: forward, then backward.  A model point
(:func:`measure_model`) times a transformers model with one attention
implementation (:mod:`fastattn.bench._models`), a serving point (:func:`measure_serving`)
one of :mod:`fastattn.bench._serving`'s workloads.  A matmul point times the
reference matmul of one library (:func:`fastattn.bench._reference.matmul_gflops`).
"""

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass

RESULT_PREFIX = "FASTATTN_BENCH_RESULT "


class UnsupportedDtype(TypeError):
    """The backend refuses inputs of this (half) dtype: the point is skipped, not failed."""

WARM_UP = (3, 0.5)
"""Full-size warm-up calls before timing: this many, or fewer once this many seconds pass."""


@dataclass
class PreparedAttention:
    """An attention call ready to be timed, and what was measured on the way.

    Attributes
    ----------
    run : callable
        Computes the attention (no arguments).
    memory : dict
        :func:`~fastattn.bench._memory.measure_peak`'s measurements of the first
        full-size call.
    baseline_rss_bytes : int or None
        The process's RSS before that call (inputs allocated).
    max_abs_err : float or None
        The difference from the reference; None when not checked.
    """

    run: object
    memory: dict
    baseline_rss_bytes: object
    max_abs_err: object


def prepare_attention(backend, shape, threads=None, check=True, seed=0):
    """Set up one attention call of ``backend`` on ``shape``: warm, measured and checked.

    Parameters
    ----------
    backend : str
        A fastattn backend or ``"torch"``.
    shape : fastattn.bench._workload.Shape
    threads : int, optional
    check : bool, default True
        Compare the result with the reference.
    seed : int, default 0
        Of the random inputs.

    Returns
    -------
    PreparedAttention

    Examples
    --------
    >>> from fastattn.bench._workload import Shape
    >>> prepared = prepare_attention("naive", Shape(1, 2, 16, 16, 8), threads=1)
    >>> prepared.max_abs_err < 1e-6, prepared.run().shape
    (True, (1, 2, 16, 8))
    """
    from ._memory import current_rss, measure_peak
    from ._workload import Shape, check_result, make_inputs, make_runner

    tiny = make_inputs(Shape(1, 2, 8, 8, shape.head_dim, causal=shape.causal, dtype=shape.dtype))
    with _dtype_support(backend, shape.dtype):
        make_runner(backend, *tiny, causal=shape.causal, threads=threads)()

    q, k, v = make_inputs(shape, seed=seed)
    run = make_runner(backend, q, k, v, causal=shape.causal, threads=threads)
    baseline = current_rss()
    result, memory = measure_peak(run)
    error = check_result(result, q, k, v, shape.causal, backend) if check else None
    del result
    _warm_up(run)
    return PreparedAttention(run, memory, baseline, error)


@dataclass
class PreparedTraining:
    """A forward + backward step ready to be timed, and what was measured on the way.

    Attributes
    ----------
    run : callable
        Runs the forward, then the backward (no arguments); returns the gradients.
    memory : dict
        :func:`~fastattn.bench._memory.measure_peak`'s measurements of the first
        full-size backward call.
    baseline_rss_bytes : int or None
        The process's RSS before that call (inputs and the forward's results allocated).
    max_grad_err : float or None
        The gradients' difference from the reference; None when not checked.
    checked_heads : int
        How many heads the check compared (0: none).
    """

    run: object
    memory: dict
    baseline_rss_bytes: object
    max_grad_err: object
    checked_heads: int


def prepare_training(backend, shape, threads=None, check=True, seed=0):
    """Set up one forward + backward step of ``backend`` on ``shape``: warm, measured, checked.

    Parameters
    ----------
    backend : str
        A fastattn backend with a backward, or ``"torch"``.
    shape : fastattn.bench._workload.Shape
    threads : int, optional
    check : bool, default True
        Compare the gradients with the naive reference.
    seed : int, default 0
        Of the random inputs and upstream gradient.

    Returns
    -------
    PreparedTraining

    Examples
    --------
    >>> from fastattn.bench._workload import Shape
    >>> prepared = prepare_training("naive", Shape(1, 2, 16, 16, 8), threads=1)
    >>> prepared.max_grad_err < 1e-6, prepared.checked_heads, len(prepared.run())
    (True, 2, 3)
    """
    from ._memory import current_rss, measure_peak
    from ._workload import (Shape, check_gradients, make_inputs, make_training_step,
                            make_upstream_gradient)

    tiny = Shape(1, 2, 8, 8, shape.head_dim, causal=shape.causal, dtype=shape.dtype)
    with _dtype_support(backend, shape.dtype):
        make_training_step(backend, *make_inputs(tiny), make_upstream_gradient(tiny),
                           causal=shape.causal, threads=threads)()

    inputs = make_inputs(shape, seed=seed) + (make_upstream_gradient(shape, seed=seed),)
    step = make_training_step(backend, *inputs, causal=shape.causal, threads=threads)
    state = step.forward()
    baseline = current_rss()
    grads, memory = measure_peak(lambda: step.backward(state))
    del state
    error, heads = (check_gradients(grads, *inputs, shape.causal, backend) if check
                    else (None, 0))
    del grads
    _warm_up(step)
    return PreparedTraining(step, memory, baseline, error, heads)


@contextlib.contextmanager
def _dtype_support(backend, dtype):
    """Turn a TypeError of the first (tiny) call on half inputs into :class:`UnsupportedDtype`."""
    from ._workload import HALF_DTYPES

    try:
        yield
    except TypeError as error:
        if dtype not in HALF_DTYPES or isinstance(error, UnsupportedDtype):
            raise
        raise UnsupportedDtype(f"{backend} does not take {dtype} inputs: {error}") from error


def _warm_up(run):
    calls, started = 0, time.perf_counter()
    while calls < WARM_UP[0] and time.perf_counter() - started < WARM_UP[1]:
        run()
        calls += 1


def _spec_shape(spec):
    from ._workload import Shape

    return Shape(spec["batch"], spec["heads"], spec["n"], spec["n"], spec["head_dim"],
                 causal=spec["causal"], dtype=spec["dtype"])


def _timings(run, spec):
    times = timed_calls(run, spec["repeats"], spec.get("min_time_s", 1.0),
                        spec.get("time_budget_s", float("inf")))
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times)}


def measure_attention(spec):
    """Measure one attention point described by ``spec``; return the measurements.

    Parameters
    ----------
    spec : dict
        ``backend``, ``causal``, ``n`` (query and key length), ``batch``, ``heads``,
        ``head_dim``, ``dtype``, ``threads``, ``repeats``, ``time_budget_s``,
        ``min_time_s`` and ``check`` (compare with the reference).

    Returns
    -------
    dict
        ``times_s``, ``median_s``, ``min_s``, ``max_s``, ``traced_bytes``,
        ``rss_bytes``, ``rss_method``, ``baseline_rss_bytes``, ``max_abs_err`` (None
        when not checked) and ``threads``.

    Examples
    --------
    >>> spec = dict(backend="naive", causal=False, n=16, batch=1, heads=2, head_dim=8,
    ...             dtype="float32", threads=1, repeats=2, min_time_s=0)
    >>> measured = measure_attention(spec)
    >>> len(measured["times_s"]), measured["min_s"] <= measured["median_s"] <= measured["max_s"]
    (2, True)
    """
    prepared = prepare_attention(spec["backend"], _spec_shape(spec), spec["threads"],
                                 check=spec.get("check", True), seed=spec.get("seed", 0))
    return {**_timings(prepared.run, spec), **prepared.memory,
            "baseline_rss_bytes": prepared.baseline_rss_bytes,
            "max_abs_err": prepared.max_abs_err, "threads": spec["threads"]}


def measure_training(spec):
    """Measure one forward + backward point described by ``spec``; return the measurements.

    Parameters
    ----------
    spec : dict
        As for :func:`measure_attention`.

    Returns
    -------
    dict
        ``times_s``, ``median_s``, ``min_s``, ``max_s`` (of whole steps), the backward's
        ``traced_bytes``, ``rss_bytes``, ``rss_method`` and ``baseline_rss_bytes``,
        ``max_grad_err`` (None when not checked), ``checked_heads`` and ``threads``.

    Examples
    --------
    >>> spec = dict(backend="naive", causal=True, n=16, batch=1, heads=2, head_dim=8,
    ...             dtype="float32", threads=1, repeats=2, min_time_s=0)
    >>> measured = measure_training(spec)
    >>> len(measured["times_s"]), measured["checked_heads"], measured["max_grad_err"] < 1e-6
    (2, 2, True)
    """
    prepared = prepare_training(spec["backend"], _spec_shape(spec), spec["threads"],
                                check=spec.get("check", True), seed=spec.get("seed", 0))
    return {**_timings(prepared.run, spec), **prepared.memory,
            "baseline_rss_bytes": prepared.baseline_rss_bytes,
            "max_grad_err": prepared.max_grad_err, "checked_heads": prepared.checked_heads,
            "threads": spec["threads"]}


def measure_model(spec):
    """Measure one model point (:mod:`fastattn.bench._models`) described by ``spec``.

    torch and fastattn both get ``threads`` threads.  A call at 16 tokens first
    (libraries loaded, kernels compiled), then the first
    full-size call under :func:`~fastattn.bench._memory.measure_peak`, warm-up calls,
    and the timed calls.

    Parameters
    ----------
    spec : dict
        ``workload`` (one of :data:`~fastattn.bench._models.MODEL_WORKLOADS`),
        ``backend`` (the ``attn_implementation``), ``n`` (prompt or input tokens),
        ``threads``, ``repeats``, ``time_budget_s``, ``min_time_s``; optionally
        ``model_config`` (fields replacing the tiny Llama's).

    Returns
    -------
    dict
        ``times_s``, ``median_s``, ``min_s``, ``max_s``, ``traced_bytes``,
        ``rss_bytes``, ``rss_method``, ``baseline_rss_bytes``, ``threads`` and ``isa``
        (the instruction-set level of the attention: fastattn's backend, torch's for
        sdpa and eager).
    """
    import torch

    import fastattn

    from ._memory import current_rss, measure_peak
    from ._models import build_model, model_runner

    settings = contextlib.nullcontext()
    if spec.get("threads"):  # the same threads for torch (sdpa, eager) and fastattn
        torch.set_num_threads(spec["threads"])
        settings = fastattn.config_context(num_threads=spec["threads"])
    with settings:
        model = build_model(spec["workload"], spec["backend"], **spec.get("model_config", {}))
        model_runner(spec["workload"], model, min(16, spec["n"]))()
        run = model_runner(spec["workload"], model, spec["n"])
        baseline = current_rss()
        result, memory = measure_peak(run)
        del result
        _warm_up(run)
        timings = _timings(run, spec)
    return {**timings, **memory, "baseline_rss_bytes": baseline, "threads": spec["threads"],
            "isa": _model_isa(spec["backend"])}


def measure_serving(spec):
    """Measure one serving point (:mod:`fastattn.bench._serving`) described by ``spec``.

    Prepared by :func:`fastattn.bench._serving.prepare_serving` (a tiny call, the peak
    memory of the first full-size call, the check), then warm-up calls and the timed
    calls, as for an attention point.

    Parameters
    ----------
    spec : dict
        ``workload`` (one of :data:`~fastattn.bench._serving.SERVING_WORKLOADS`),
        ``backend``, ``options`` (:func:`~fastattn.bench._serving.serving_options`'
        fields), ``threads``, ``repeats``, ``time_budget_s``, ``min_time_s``, ``check``.

    Returns
    -------
    dict
        ``times_s``, ``median_s``, ``min_s``, ``max_s``, the memory fields,
        ``baseline_rss_bytes``, ``max_abs_err``, ``threads``, ``isa`` (None for the
        read probe) and the workload's own fields (the read probe's
        ``read_method``, ``read_gbytes_per_s_by_method`` and ``bytes_read``).

    Examples
    --------
    >>> spec = dict(workload="serving-read", backend="numpy", threads=2, repeats=2,
    ...             min_time_s=0, options={"read_bytes": 2**20})
    >>> measured = measure_serving(spec)
    >>> measured["bytes_read"], measured["read_method"] in ("gemv", "add.reduce", "c-stream")
    (1048576, True)
    """
    from ._levels import backend_isa
    from ._serving import READ, prepare_serving, serving_options

    prepared = prepare_serving(spec["workload"], spec["backend"],
                               serving_options(spec.get("options")), spec["threads"],
                               check=spec.get("check", True))
    try:
        _warm_up(prepared.run)
        timings = _timings(prepared.run, spec)
    finally:
        prepared.release()
    isa = None if spec["workload"] == READ else backend_isa(spec["backend"])
    return {**timings, **prepared.memory,
            "baseline_rss_bytes": prepared.baseline_rss_bytes,
            "max_abs_err": prepared.max_abs_err, "threads": spec["threads"], "isa": isa,
            **prepared.details}


def _model_isa(implementation):
    """The instruction-set level of a model's attention: fastattn's "auto" backend, or torch."""
    from .._backends import auto_choice
    from ._levels import backend_isa

    return backend_isa(auto_choice() if implementation == "fastattn" else "torch")


def timed_calls(run, repeats, min_time_s, budget_s):
    """Time calls of ``run``: at least ``repeats`` and ``min_time_s`` s, at most ``budget_s`` s.

    Examples
    --------
    >>> len(timed_calls(lambda: None, repeats=3, min_time_s=0, budget_s=10))
    3
    """
    times = []
    while True:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        spent = sum(times)
        if spent >= budget_s or (len(times) >= repeats and spent >= min_time_s):
            return times


def measure(spec):
    """Run the measurement ``spec["kind"]`` names: attention, training, model, serving or
    matmul.

    BLAS is limited to ``spec["threads"]`` threads for the whole measurement.  A
    matmul spec has ``library`` (default ``"numpy"``), ``size``, ``dtype``,
    ``threads`` and ``repeats``.  An attention or training spec may name ``isa``, the
    instruction-set level the Cython kernels run at (``fastattn._isa.use_level``;
    None or absent: the one chosen at import); its result has ``isa``, the level the
    backend ran at (:func:`fastattn.bench._levels.backend_isa`), or is ``{"status":
    "skipped", "reason"}`` when the backend does not take the spec's (half) dtype.

    Parameters
    ----------
    spec : dict

    Returns
    -------
    dict
    """
    from ._levels import backend_isa, level_context

    limit = contextlib.nullcontext()
    if spec.get("threads"):
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=spec["threads"], user_api="blas")
    with limit:
        if spec["kind"] == "matmul":
            from ._reference import matmul_gflops

            return matmul_gflops(spec["size"], spec["dtype"], spec.get("threads"),
                                 spec.get("repeats", 3), library=spec.get("library", "numpy"))
        if spec["kind"] == "model":
            return measure_model(spec)
        if spec["kind"] == "serving":
            return measure_serving(spec)
        if spec["kind"] in ("attention", "training"):
            measure_point = measure_attention if spec["kind"] == "attention" \
                else measure_training
            with level_context(spec.get("isa")):
                try:
                    measured = measure_point(spec)
                except UnsupportedDtype as error:
                    return {"status": "skipped", "reason": str(error)}
                return {**measured, "isa": backend_isa(spec["backend"])}
    raise ValueError(f"unknown measurement kind {spec['kind']!r}")


def main(argv=None):
    """Entry point of the child process; prints the result line and returns 0."""
    parser = argparse.ArgumentParser(
        prog="python -m fastattn.bench._point",
        description="Measure one benchmark point (JSON in, JSON out).")
    parser.add_argument("--json", required=True, help="the point's specification, a JSON object")
    args = parser.parse_args(argv)
    result = measure(json.loads(args.json))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
