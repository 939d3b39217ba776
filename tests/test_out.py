"""``attention(..., out=buf)``: the kernel writes ``buf`` itself, in any layout."""

import tracemalloc

import numpy as np
import pytest

import fastattn
from helpers import assert_close, heads_qkv

Q_SHAPE, KV_SHAPE = (1, 8, 4096, 64), (1, 8, 128, 64)
"""An 8 MiB float32 output from few keys: the kernels' fixed per-thread scratch (about
1 MiB) is small beside it, and the call is quick."""


def traced_peak(function):
    """Peak bytes that NumPy and Python allocate while ``function()`` runs."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_out_allocates_less_than_half_an_output(compiled_backend):
    """Before the kernels wrote ``out``, an 8 MiB output cost 8.8 MiB of new allocations."""
    backend = compiled_backend
    rng = np.random.default_rng(0)
    q = rng.standard_normal(Q_SHAPE, dtype=np.float32)
    k, v = (rng.standard_normal(KV_SHAPE, dtype=np.float32) for _ in range(2))
    buf = np.empty(Q_SHAPE, dtype=np.float32)
    with fastattn.config_context(num_threads=1):
        fastattn.attention(q, k, v, backend=backend, out=buf)  # warm: compiles, loads
        peak = traced_peak(lambda: fastattn.attention(q, k, v, backend=backend, out=buf))
        fresh = traced_peak(lambda: fastattn.attention(q, k, v, backend=backend))
    assert peak < buf.nbytes / 2, f"{peak} bytes allocated for a {buf.nbytes}-byte output"
    assert fresh >= buf.nbytes  # the measurement sees an output-sized allocation
    np.testing.assert_array_equal(buf, fastattn.attention(q, k, v, backend=backend))


def strided_outs(shape, dtype):
    """Outputs of ``shape`` in layouts a kernel must write through strides."""
    b, h, lq, dv = shape
    return {
        "heads last": np.zeros((b, lq, h, dv), dtype).transpose(0, 2, 1, 3),
        "every other column": np.zeros((b, h, lq, 2 * dv), dtype)[..., ::2],
        "reversed rows": np.zeros(shape, dtype)[:, :, ::-1],
        "reversed columns": np.zeros(shape, dtype)[..., ::-1],
        "byte-offset rows": np.zeros(b * h * lq * dv * dtype().itemsize + 1, np.uint8)[1:]
                            .view(dtype).reshape(shape),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("layout", ["heads last", "every other column", "reversed rows",
                                    "reversed columns", "byte-offset rows"])
def test_out_with_any_strides(backend, rng, dtype, layout):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=70, lk=90, d=8, dv=6, dtype=dtype)
    out = strided_outs((2, 4, 70, 6), dtype)[layout]
    result = fastattn.attention(q, k, v, causal=True, backend=backend, out=out)
    assert result is out
    assert_close(out, fastattn.attention(q, k, v, causal=True, backend="naive"))


def test_two_dimensional_out(backend, rng):
    q, k, v = (rng.standard_normal((n, 8)) for n in (40, 50, 50))
    out = np.zeros((50, 16))[5:45, ::2]
    out_lse = fastattn.attention(q, k, v, backend=backend, out=out, return_lse=True)
    assert out_lse[0] is out and out_lse[1].shape == (40,)
    want_out, want_lse = fastattn.attention(q, k, v, backend="naive", return_lse=True)
    assert_close(out, want_out)
    assert_close(out_lse[1], want_lse)


def test_out_of_an_empty_problem(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=0, d=4)
    out = np.full((2, 3, 4), np.nan)
    assert fastattn.attention(q, k, v, backend=backend, out=out) is out
    np.testing.assert_array_equal(out, 0.0)
