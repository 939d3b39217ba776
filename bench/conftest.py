"""pytest-benchmark suites of fastattn: run with ``pytest bench`` (never part of ``pytest``).

Options (each also an environment variable):

``--attn-sizes=256,512,...``   (``FASTATTN_BENCH_SIZES``) sequence lengths, default 256 ... 2048;
                               the full sweep is ``256,512,1024,2048,4096,8192``.
``--attn-backends=naive,...``  (``FASTATTN_BENCH_BACKENDS``) default: every available
                               fastattn backend and ``torch`` when installed.
``--naive-budget-gib=X``       (``FASTATTN_BENCH_NAIVE_GIB``) naive is skipped where its
                               score matrices would need more; default 25 % of RAM.
``--attn-threads=T``           (``FASTATTN_BENCH_THREADS``) default: every available core.
"""

import os

import pytest

try:
    # torch's OpenMP runtime has to start before numba's: the other way round, torch
    # runs several times slower in this process (two OpenMP runtimes fight for cores).
    import torch  # noqa: F401
except ImportError:
    pass

from fastattn._config import available_cores
from fastattn.bench._machine import default_memory_budget_gib
from fastattn.bench._workload import benchmark_backends

DEFAULT_SIZES = "256,512,1024,2048"


def pytest_addoption(parser):
    group = parser.getgroup("fastattn benchmarks")
    group.addoption("--attn-sizes", default=os.environ.get("FASTATTN_BENCH_SIZES", DEFAULT_SIZES),
                    help="comma-separated sequence lengths (default %(default)s)")
    group.addoption("--attn-backends", default=os.environ.get("FASTATTN_BENCH_BACKENDS"),
                    help="comma-separated backends (default: all available, and torch)")
    group.addoption("--naive-budget-gib", type=float,
                    default=float(os.environ.get("FASTATTN_BENCH_NAIVE_GIB",
                                                 default_memory_budget_gib())),
                    help="skip naive above this much score memory (default %(default)s GiB)")
    group.addoption("--attn-threads", type=int,
                    default=int(os.environ.get("FASTATTN_BENCH_THREADS", available_cores())),
                    help="threads for every backend (default %(default)s)")


def _split(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "backend" in metafunc.fixturenames:
        requested = config.getoption("--attn-backends")
        backends = benchmark_backends(_split(requested) if requested else None)
        metafunc.parametrize("backend", backends)
    if "seq_len" in metafunc.fixturenames:
        sizes = sorted(int(n) for n in _split(config.getoption("--attn-sizes")))
        metafunc.parametrize("seq_len", sizes, ids=[f"N{n}" for n in sizes])
    if "causal" in metafunc.fixturenames:
        metafunc.parametrize("causal", [False, True], ids=["full", "causal"])


@pytest.fixture(scope="session")
def threads(request):
    """Threads every backend (and BLAS, torch) may use."""
    return request.config.getoption("--attn-threads")


@pytest.fixture(scope="session")
def naive_budget_bytes(request):
    """Bytes of score matrices above which the naive backend is skipped."""
    return request.config.getoption("--naive-budget-gib") * 2**30


@pytest.fixture(autouse=True)
def _limit_blas(threads):
    """BLAS (used by naive and the NumPy matmul reference) gets the same threads as the kernels."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield


@pytest.fixture
def measure_attention(threads, naive_budget_bytes):
    """Benchmark one attention shape with one backend and record its extra_info.

    Returns a function ``(benchmark, backend, shape, group) -> None`` that skips
    naive over the memory budget, prepares the call exactly as ``fastattn bench``
    does (:func:`fastattn.bench._point.prepare_attention`: JIT warm-up, peak memory of
    the first full-size call, the correctness check, warm-up calls), then times it
    with ``benchmark``.
    """
    import numpy as np

    from fastattn.bench._point import prepare_attention
    from fastattn.bench._workload import attention_flops, naive_over_budget

    def run_benchmark(benchmark, backend, shape, group):
        benchmark.group = group
        reason = naive_over_budget(shape, naive_budget_bytes)
        if backend == "naive" and reason:
            pytest.skip(reason)
        prepared = prepare_attention(backend, shape, threads)

        benchmark(prepared.run)

        flops = attention_flops(shape)
        memory = prepared.memory
        info = {"backend": backend, "seq_len": shape.k_len, "q_len": shape.q_len,
                "causal": shape.causal, "dtype": shape.dtype, "heads": shape.heads,
                "kv_heads": shape.n_kv_heads, "head_dim": shape.head_dim,
                "batch": shape.batch, "threads": threads, "flops": flops,
                "peak_traced_bytes": memory["traced_bytes"],
                "peak_rss_bytes": memory["rss_bytes"], "rss_method": memory["rss_method"],
                "max_abs_err": prepared.max_abs_err}
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            median = stats.stats.median
            info["gflops"] = flops / median / 1e9
            info["tokens_per_s"] = shape.batch * shape.q_len / median
            kv_bytes = 2 * shape.batch * shape.n_kv_heads * shape.k_len * shape.head_dim \
                * np.dtype(shape.dtype).itemsize
            info["kv_gbytes_per_s"] = kv_bytes / median / 1e9
        benchmark.extra_info.update(info)

    return run_benchmark
