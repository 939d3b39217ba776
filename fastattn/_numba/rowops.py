"""Vectorisable exp for Numba: ``x[j] = exp(x[j])`` over a contiguous buffer.

PyPI's llvmlite has no SVML, so ``math.exp`` in a loop stays scalar.  This exp is a
range-reduced polynomial that LLVM turns into SIMD code: ``x = n ln2 + t`` with
``|t| <= ln2 / 2``, ``exp(t)`` from its Taylor series (degree 7 for float32, 13 for
float64, both below one ulp of truncation error), and ``2**n`` written straight
into the exponent bits of a scratch buffer (a second, equally simple loop
multiplies them in).  Arguments below about -88 (float32) or -709 (float64),
-inf included, give exactly 0, so masked scores need no special case.  No fast-math
flags: the arithmetic keeps IEEE semantics for inf.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # ln 2 split so that n * LN2_HI is exact
LN2_LO = 1.4286068203094173e-06

JIT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


def exp_inplace(x, bits, n):
    """Set ``x[j] = exp(x[j])`` for ``j < n``; ``bits`` is int64 scratch of ``n`` elements."""
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(exp_inplace, jit_options=JIT)
def _exp_inplace_typed(x, bits, n):
    return _exp_f32 if x.dtype == types.float32 else _exp_f64


def _exp_f32(x, bits, n):
    exponent = bits.view(np.int32)
    for j in range(n):
        y = x[j] if x[j] > np.float32(-88.0) else np.float32(-88.0)
        k = np.int32(y * np.float32(LOG2E) - np.float32(0.5))  # round half down, y <= 0
        kf = np.float32(k)
        t = y - kf * np.float32(LN2_HI) - kf * np.float32(LN2_LO)
        p = np.float32(1.0 / 5040.0)
        p = p * t + np.float32(1.0 / 720.0)
        p = p * t + np.float32(1.0 / 120.0)
        p = p * t + np.float32(1.0 / 24.0)
        p = p * t + np.float32(1.0 / 6.0)
        p = p * t + np.float32(0.5)
        p = p * t + np.float32(1.0)
        p = p * t + np.float32(1.0)
        x[j] = p
        exponent[j] = (k + np.int32(127)) << np.int32(23)
    _multiply(x, exponent.view(np.float32), n)


def _exp_f64(x, bits, n):
    for j in range(n):
        y = x[j] if x[j] > -709.0 else -709.0
        k = np.int64(y * LOG2E - 0.5)
        kf = np.float64(k)
        t = y - kf * LN2_HI - kf * LN2_LO
        p = 1.0 / 6227020800.0
        p = p * t + 1.0 / 479001600.0
        p = p * t + 1.0 / 39916800.0
        p = p * t + 1.0 / 3628800.0
        p = p * t + 1.0 / 362880.0
        p = p * t + 1.0 / 40320.0
        p = p * t + 1.0 / 5040.0
        p = p * t + 1.0 / 720.0
        p = p * t + 1.0 / 120.0
        p = p * t + 1.0 / 24.0
        p = p * t + 1.0 / 6.0
        p = p * t + 0.5
        p = p * t + 1.0
        p = p * t + 1.0
        x[j] = p
        bits[j] = (k + np.int64(1023)) << np.int64(52)
    _multiply(x, bits.view(np.float64), n)


@njit(**JIT)
def _multiply(x, factors, n):
    for j in range(n):
        x[j] *= factors[j]
