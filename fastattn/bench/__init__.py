"""Benchmarks of fastattn: sweeps over the sequence length, reports, comparisons.

Run ``fastattn bench`` (or ``python -m fastattn.bench``); see ``docs/benchmarks.md``.
The pieces, one responsibility each:

- :mod:`._workload` — inputs, runners (fastattn backends and torch) of the forward
  and of a forward + backward step, FLOP and memory counts, the correctness checks
  and their tolerances;
- :mod:`._models` — whole models in transformers (a tiny Llama's prefill and decode,
  MiniLM's encode) with each attention implementation (``--models``; also used by
  ``bench/test_hf_speed.py``);
- :mod:`._serving` — the serving workloads (``--serving``): the read bandwidth probe,
  decoding (contiguous and paged), a packed variable-length batch against padding,
  ALiBi at long N (also used by ``bench/test_serving_speed.py``);
- :mod:`._memory` — peak memory of one call (tracemalloc and RSS);
- :mod:`._point` — one measurement, in a fresh child process (its preparation is
  shared with the pytest-benchmark suites in ``bench/``);
- :mod:`._sweep` — plan the points, run the children, report progress;
- :mod:`._machine` — CPU, vector instructions, cores, memory and versions;
- :mod:`._levels` — the instruction-set level each point ran at, and ``--isa``'s levels;
- :mod:`._reference` — the matmul reference (the faster of NumPy's and torch's
  matmul) and why a backend can pass it;
- :mod:`._results` — the versioned ``results.json``;
- :mod:`._summary` — groups, timing ranges and ratios (over naive, over torch) that
  the report and plots show;
- :mod:`._report` — ``report.md``; :mod:`._plots` — the PNGs (matplotlib, no pyplot);
- :mod:`._compare` — ratios between two saved reports;
- :mod:`._command` — the ``fastattn bench`` command line.

Nothing heavy is imported here: matplotlib only when plots are drawn, torch only
in the child processes that measure it.
"""

import importlib

_EXPORTS = {
    "SweepConfig": "_sweep", "plan_points": "_sweep", "run_sweep": "_sweep",
    "write_report": "_report", "load_results": "_results", "save_results": "_results",
    "SCHEMA_VERSION": "_results", "compare_results": "_compare",
    "format_comparison": "_compare",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    # Lazy, so that ``python -m fastattn.bench._point`` (the child) imports only itself.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
