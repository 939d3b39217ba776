"""The machine's ceiling: one NumPy float32 matmul, 4096³, with the benchmark threads.

Attention is made of matrix products, so its GFLOP/s cannot beat this one's.
"""

import numpy as np

SIZE = 4096


def test_matmul_ceiling(benchmark, threads):
    benchmark.group = "ceiling: numpy float32 matmul"
    rng = np.random.default_rng(0)
    a = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    b = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm-up
    assert np.allclose(out[:4], a[:4].astype(np.float64) @ b, rtol=1e-3, atol=1e-2)

    benchmark.pedantic(np.matmul, args=(a, b), kwargs={"out": out}, rounds=5, iterations=1)

    flops = 2.0 * SIZE**3
    benchmark.extra_info.update({"size": SIZE, "dtype": "float32", "threads": threads,
                                 "flops": flops})
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["gflops"] = flops / stats.stats.median / 1e9
