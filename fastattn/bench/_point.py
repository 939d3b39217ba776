"""One measurement, made in a fresh process: ``python -m fastattn.bench._point --json SPEC``.

The sweep starts this module once per point, so the memory a point needs is not
hidden by memory an earlier point left behind, and a point that runs out of memory
cannot take the sweep down.  The child prints one line, ``RESULT_PREFIX`` followed
by a JSON object, on stdout.

An attention point runs, in order: a call on a tiny problem of the same kind (JIT
compilation, thread pools), one full-size call under :func:`measure_peak` (the first
full-size call, so every page it needs is new), the correctness check against the
naive reference, warm-up calls at full size (the first few calls of a process run
slower: page faults in fresh scratch, thread pools settling), then the timed calls:
at least ``repeats`` and at least ``min_time_s`` seconds of them (default 1), so
that short calls get a stable median, stopping early once ``time_budget_s`` seconds have been
spent timing (at least one call is timed).
"""

import argparse
import contextlib
import json
import statistics
import sys
import time

RESULT_PREFIX = "FASTATTN_BENCH_RESULT "
FULL_CHECK_BYTES = 256 * 2**20
"""Check every row against the naive reference while its scores take at most this much."""

WARM_UP = (3, 0.5)
"""Full-size warm-up calls before timing: this many, or fewer once this many seconds pass."""


def measure_attention(spec):
    """Measure one attention point described by ``spec``; return the measurements.

    Parameters
    ----------
    spec : dict
        ``backend``, ``causal``, ``n`` (query and key length), ``batch``, ``heads``,
        ``head_dim``, ``dtype``, ``threads``, ``repeats``, ``time_budget_s`` and
        ``check`` (compare with the naive reference).

    Returns
    -------
    dict
        ``times_s``, ``median_s``, ``min_s``, ``traced_bytes``, ``rss_bytes``,
        ``rss_method``, ``baseline_rss_bytes``, ``max_abs_err`` (None when not
        checked) and ``threads``.
    """
    from ._memory import current_rss, measure_peak
    from ._workload import Shape, check_against_naive, make_inputs, make_runner, naive_bytes_needed

    shape = Shape(spec["batch"], spec["heads"], spec["n"], spec["n"], spec["head_dim"],
                  causal=spec["causal"], dtype=spec["dtype"])
    threads = spec["threads"]
    backend = spec["backend"]

    tiny = make_inputs(Shape(1, 2, 8, 8, shape.head_dim, causal=shape.causal, dtype=shape.dtype))
    make_runner(backend, *tiny, causal=shape.causal, threads=threads)()

    q, k, v = make_inputs(shape, seed=spec.get("seed", 0))
    run = make_runner(backend, q, k, v, causal=shape.causal, threads=threads)
    baseline = current_rss()
    result, memory = measure_peak(run)

    error = None
    if spec.get("check", True) and backend != "naive":
        full = naive_bytes_needed(shape) <= FULL_CHECK_BYTES
        error = check_against_naive(result, q, k, v, shape.causal, full=full)
    del result

    times = _timed_calls(run, spec["repeats"], spec.get("min_time_s", 1.0),
                         spec.get("time_budget_s", float("inf")))
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
            **memory, "baseline_rss_bytes": baseline, "max_abs_err": error,
            "threads": threads}


def _timed_calls(run, repeats, min_time_s, budget_s):
    """Warm up, then time calls of ``run``: see the module docstring for how many."""
    calls, started = 0, time.perf_counter()
    while calls < WARM_UP[0] and time.perf_counter() - started < WARM_UP[1]:
        run()
        calls += 1
    times = []
    while True:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        spent = sum(times)
        if spent >= budget_s or (len(times) >= repeats and spent >= min_time_s):
            return times


def measure(spec):
    """Run the measurement ``spec["kind"]`` names (``"attention"`` or ``"matmul"``).

    BLAS is limited to ``spec["threads"]`` threads for the whole measurement.

    Parameters
    ----------
    spec : dict

    Returns
    -------
    dict
    """
    limit = contextlib.nullcontext()
    if spec.get("threads"):
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=spec["threads"], user_api="blas")
    with limit:
        if spec["kind"] == "matmul":
            from ._machine import matmul_gflops

            return matmul_gflops(spec["size"], spec["dtype"], spec.get("threads"),
                                 spec.get("repeats", 3))
        if spec["kind"] == "attention":
            return measure_attention(spec)
    raise ValueError(f"unknown measurement kind {spec['kind']!r}")


def main(argv=None):
    """Entry point of the child process; prints the result line and returns 0."""
    parser = argparse.ArgumentParser(prog="python -m fastattn.bench._point",
                                     description="Measure one benchmark point (JSON in, JSON out).")
    parser.add_argument("--json", required=True, help="the point's specification, a JSON object")
    args = parser.parse_args(argv)
    result = measure(json.loads(args.json))
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
