"""Helpers shared by the tests: backends, the dtype tolerance table, random inputs."""

import numpy as np

from fastattn._backends import available_backends

BACKENDS = available_backends()
"""Every backend that can run here (always includes "naive")."""

COMPILED_BACKENDS = [name for name in BACKENDS if name != "naive"]

TOLERANCE = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-5),
    np.dtype(np.float16): dict(rtol=2e-3, atol=2e-3),  # computed in float32, rounded to float16
}
"""How close a result in a given (result) dtype must be to the float64 reference."""


def tolerance(dtype):
    return TOLERANCE[np.dtype(dtype)]


def assert_close(actual, expected, dtype=None):
    """Compare with the tolerance of ``dtype`` (default: that of ``actual``); inf must match."""
    actual = np.asarray(actual)
    dtype = actual.dtype if dtype is None else dtype
    np.testing.assert_allclose(actual.astype(np.float64), np.asarray(expected, np.float64),
                               **tolerance(dtype))


def random_qkv(rng, q_shape, k_shape, v_shape, dtype=np.float64):
    """Standard-normal q, k, v of the given shapes and dtype."""
    return tuple(rng.standard_normal(shape).astype(dtype)
                 for shape in (q_shape, k_shape, v_shape))


def heads_qkv(rng, batch=(), hq=2, hk=None, lq=5, lk=7, d=4, dv=None, dtype=np.float64):
    """q ``(*batch, hq, lq, d)``, k ``(*batch, hk, lk, d)``, v ``(*batch, hk, lk, dv)``."""
    hk, dv = hk or hq, dv or d
    batch = tuple(batch)
    return random_qkv(rng, batch + (hq, lq, d), batch + (hk, lk, d), batch + (hk, lk, dv),
                      dtype)


def attend(backend, q, k, v, mask=None, **options):
    """``fastattn.attention(..., return_lse=True)`` on ``backend``."""
    import fastattn

    return fastattn.attention(q, k, v, mask, backend=backend, return_lse=True, **options)


def assert_matches(out, lse, ref_out, ref_lse):
    """Same shapes and dtypes as the reference, no NaN, equal within the dtype's tolerance."""
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert out.dtype == ref_out.dtype and lse.dtype == ref_lse.dtype
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert_close(out, ref_out)
    assert_close(lse, ref_lse)


def check_backend(backend, q, k, v, mask=None, oracle=True, **options):
    """Assert that ``backend`` agrees with the naive backend and (optionally) the oracle.

    Returns the backend's ``(out, lse)``.  Output and lse must have the contract's
    shapes and dtypes and must never hold NaN.
    """
    from oracle import attention_oracle

    out, lse = attend(backend, q, k, v, mask, **options)
    assert_matches(out, lse, *attend("naive", q, k, v, mask, **options))
    if oracle:
        want_out, want_lse = attention_oracle(q, k, v, mask, **options)
        assert out.shape == want_out.shape and lse.shape == want_lse.shape
        assert_close(out, want_out)
        assert_close(lse, want_lse)
    return out, lse
