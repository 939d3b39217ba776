"""The matmul reference: one float32 matmul, 4096³, with NumPy and with torch (if installed).

Attention's counted work is two matrix products, so these GFLOP/s are the yardstick the
attention benchmarks are read against: what the installed BLAS libraries reach here, not
a bound on the CPU (see ``docs/benchmarks.md``, "What the matmul reference means").  The
products are made by :func:`fastattn.bench._reference.make_matmul`, as in the sweep, so that
``fastattn bench`` and this suite time the same thing.
"""

import os

import pytest

from fastattn.bench._reference import make_matmul, reference_libraries

SIZE = 4096


@pytest.mark.parametrize("library", reference_libraries())
def test_matmul_reference(benchmark, threads, library):
    benchmark.group = f"matmul reference: float32 {SIZE}³"
    matmul = make_matmul(library, SIZE, "float32", threads)
    with matmul.limit():
        matmul.run()  # warm-up
        benchmark.pedantic(matmul.run, rounds=5, iterations=1)

    flops = 2.0 * SIZE**3
    benchmark.extra_info.update({"library": library, "blas": matmul.blas, "size": SIZE,
                                 "dtype": "float32", "threads": threads, "flops": flops,
                                 "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")})
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["gflops"] = flops / stats.stats.median / 1e9

