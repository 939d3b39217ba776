"""dtypes: native float32/float64, float16 via float32, mixed inputs, scale, huge logits."""

import numpy as np
import pytest

import fastattn
from helpers import assert_close, attend, check_backend, heads_qkv
from oracle import attention_oracle

# Masked rows and huge logits must not make NaN or inf, even transiently.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

FLOATS = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", FLOATS)
def test_output_and_lse_dtypes(backend, rng, dtype):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=5, lk=7, dv=3, dtype=dtype)
    out, lse = check_backend(backend, q, k, v, causal=True)
    assert out.dtype == dtype
    assert lse.dtype == (np.float32 if dtype == np.float16 else dtype)


@pytest.mark.parametrize("dtypes", [
    (np.float32, np.float64, np.float32),
    (np.float64, np.float32, np.float32),
    (np.float16, np.float32, np.float16),
    (np.float16, np.float16, np.float64),
])
def test_mixed_dtypes_follow_result_type(backend, rng, dtypes):
    q, k, v = (x.astype(t) for x, t in zip(heads_qkv(rng, hq=2, lq=4, lk=6), dtypes))
    want_dtype = np.result_type(*dtypes)
    out, lse = check_backend(backend, q, k, v)
    assert out.dtype == want_dtype
    assert lse.dtype == (np.float32 if want_dtype == np.float16 else want_dtype)


def test_float16_is_computed_in_float32(backend, rng):
    """float16 inputs give the float32 computation rounded once to float16."""
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=6, lk=40, d=8, dtype=np.float16)
    out16, lse16 = attend(backend, q, k, v)
    out32, lse32 = attend(backend, *(x.astype(np.float32) for x in (q, k, v)))
    np.testing.assert_array_equal(lse16, lse32)
    np.testing.assert_allclose(out16.astype(np.float32), out32, rtol=2 ** -10, atol=1e-4)


def test_float16_accumulation_is_not_float16(backend):
    """Many keys whose float16 running sum would lose precision: result still correct."""
    lk = 3000
    q = np.zeros((1, 4), dtype=np.float16)
    k = np.zeros((lk, 4), dtype=np.float16)
    v = np.ones((lk, 2), dtype=np.float16)
    v[::2] = 3.0  # mean 2.0
    out, lse = attend(backend, q, k, v)
    np.testing.assert_allclose(out.astype(np.float64), [[2.0, 2.0]], rtol=1e-3)
    np.testing.assert_allclose(lse, [np.log(lk)], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_float64_computed_natively(backend, rng, dtype):
    q, k, v = heads_qkv(rng, hq=2, lq=5, lk=9, d=6, dtype=dtype)
    out, lse = attend(backend, q, k, v)
    want_out, want_lse = attention_oracle(q, k, v)
    assert_close(out, want_out)
    assert_close(lse, want_lse)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [0.125, 1.0, 3.0, -0.5, np.float32(0.7)])
def test_custom_scale(backend, rng, dtype, scale):
    q, k, v = heads_qkv(rng, hq=2, lq=4, lk=5, d=4, dtype=dtype)
    check_backend(backend, q, k, v, scale=scale)


def test_default_scale_is_inverse_sqrt_d(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=4, lk=5, d=9)
    default = attend(backend, q, k, v)
    explicit = attend(backend, q, k, v, scale=1 / 3)
    np.testing.assert_allclose(default[0], explicit[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(default[1], explicit[1], rtol=1e-12)


def huge_logit_inputs(dtype):
    """Integer-valued q and k with scores near 1e4 that are exact in float32 and float64."""
    q = np.array([[50.0, 50.0, 0.0, 1.0], [100.0, 0.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    k = np.array([[100.0, 100.0, 0.0, 0.0], [100.0, 100.0, 1.0, 2.0],
                  [99.0, 100.0, 0.0, 3.0], [-100.0, -100.0, 0.0, 0.0]])
    v = np.arange(12.0).reshape(4, 3)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_huge_logits_stay_finite_and_exact(backend, dtype, causal):
    q, k, v = huge_logit_inputs(dtype)
    out, lse = check_backend(backend, q, k, v, scale=1.0, causal=causal)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    if not causal:
        assert abs(lse[0]) > 9000  # really huge


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_additive_mask(backend, rng, dtype):
    q, k, v = heads_qkv(rng, hq=1, lq=3, lk=5, dtype=dtype)
    bias = np.array([-1e30, 0.0, -5e3, 1e4, -np.inf]).astype(dtype)
    out, lse = check_backend(backend, q, k, v, bias)
    # key 3 dominates everything by a margin of ~1e4
    np.testing.assert_allclose(out[0].astype(np.float64), np.broadcast_to(v[0, 3], (3, 4)),
                               rtol=1e-6)


def test_tiny_probabilities_underflow_to_zero_not_nan(backend):
    q = np.array([[1.0, 0.0]])
    k = np.array([[800.0, 0.0], [0.0, 0.0], [-800.0, 0.0]])
    v = np.array([[1.0], [2.0], [3.0]])
    for dtype in (np.float32, np.float64):
        out, lse = check_backend(backend, *(x.astype(dtype) for x in (q, k, v)), scale=1.0)
        np.testing.assert_array_equal(out, [[1.0]])


def test_scale_zero_gives_mean_of_values(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=6)
    out = fastattn.attention(q, k, v, scale=0.0, backend=backend)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=-2, keepdims=True), out.shape),
                               rtol=1e-12)
