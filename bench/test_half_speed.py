"""Half precision: the forward in float32, bfloat16 and float16, fastattn against torch.

B=1, H=8, D=64, N queries over N keys, no mask and causal; N from
``FASTATTN_BENCH_HALF_SIZES`` (default ``4096``, the speed goal's point). fastattn's
Cython backend and torch's ``scaled_dot_product_attention`` on tensors of the same dtype
(bfloat16: ml_dtypes arrays, seen by torch as torch.bfloat16 without a copy);
``--attn-backends`` narrows them. Every dtype and backend of one N and mask is in one
group, so ``pytest bench/test_half_speed.py`` prints them side by side. The goal, read
off that table (or ``--benchmark-json``'s ``extra_info.gflops``): bfloat16 at least 1.6x
Cython's float32 throughput and 3x torch's bfloat16, float16 at least 1.3x Cython's
float32.

``FASTATTN_BENCH_ISA=baseline,avx512bf16`` (or ``all``) also times the Cython backend
at those instruction-set levels (``fastattn._isa.use_level``), beside the one chosen at
import. ``extra_info`` records ``dtype``, ``isa`` (the level the backend ran at: fastattn's
level, torch's ATen CPU capability) and ``isa_requested``, with the usual ``gflops``,
``peak_*_bytes`` and ``max_abs_err``. Each call is prepared as a ``fastattn bench`` point
(``fastattn.bench._point.prepare_attention``, checked against the naive float64
reference); a backend that refuses a dtype is skipped with its reason.
"""

import os

import pytest

from fastattn.bench._levels import backend_isa, level_context, level_unavailable, parse_levels
from fastattn.bench._point import UnsupportedDtype
from fastattn.bench._workload import Shape, benchmark_backends

DEFAULT_SIZES = "4096"
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("cython", "torch")


def _variants(config):
    """``(backend, level or None)`` to time: Cython at the import's level (and at
    ``FASTATTN_BENCH_ISA``'s), torch once; only what ``--attn-backends`` keeps."""
    requested = config.getoption("--attn-backends")
    names = [part.strip() for part in requested.split(",")] if requested else None
    available = benchmark_backends()
    chosen = [b for b in BACKENDS if b in available and (names is None or b in names)]
    levels = os.environ.get("FASTATTN_BENCH_ISA")
    variants = []
    for backend in chosen:
        variants.append((backend, None))
        if backend == "cython" and levels:
            variants += [(backend, level) for level in parse_levels(levels)]
    return variants


def pytest_generate_tests(metafunc):
    if "variant" in metafunc.fixturenames:
        variants = _variants(metafunc.config)
        metafunc.parametrize("variant", variants,
                             ids=[b if level is None else f"{b}-{level}" for b, level in variants])
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", DTYPES)
    if "half_len" in metafunc.fixturenames:
        text = os.environ.get("FASTATTN_BENCH_HALF_SIZES", DEFAULT_SIZES)
        sizes = sorted(int(n) for n in text.split(",") if n.strip())
        metafunc.parametrize("half_len", sizes, ids=[f"N{n}" for n in sizes])


def test_half_forward(benchmark, measure_attention, variant, dtype, half_len, causal):
    pytest.importorskip("ml_dtypes")
    backend, level = variant
    if level is not None and level_unavailable(level):
        pytest.skip(level_unavailable(level))
    shape = Shape(batch=1, heads=8, q_len=half_len, k_len=half_len, head_dim=64,
                  causal=causal, dtype=dtype)
    group = f"half N={half_len:05d} {'causal' if causal else 'full'}"
    with level_context(level):
        try:
            measure_attention(benchmark, backend, shape, group)
        except UnsupportedDtype as error:
            pytest.skip(str(error))
        benchmark.extra_info.update(isa=backend_isa(backend), isa_requested=level)
