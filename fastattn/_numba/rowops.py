"""Vectorisable exp for Numba: ``x[j] = exp(x[j])`` over a contiguous buffer.

PyPI's llvmlite has no SVML, so ``math.exp`` in a loop stays scalar.  This is the exp
of the kernel contract, the same algorithm as ``fa_exp_*`` in
``fastattn/_cython/_rowops.h``: ``x = n ln2 + t`` with ``n = round(x / ln2)`` (to
nearest, by adding and subtracting ``1.5 * 2**mantissa_bits``), so ``|t| <= ln2 / 2``;
``exp(t)`` from its Taylor series (degree 7 for float32, 13 for float64, both below
one ulp of truncation error); ``2**n`` written straight into the exponent bits of a
scratch buffer that a second loop multiplies in.  Arguments below -88 (float32) or
-709 (float64), -inf included, give exactly 0; NaN gives NaN.  No fast-math flags:
the arithmetic keeps IEEE semantics for inf and NaN.

The softcap of the score modifiers (:func:`softcap_inplace`) is built on the same exp,
and :func:`like` casts a scalar to a tile's dtype (Numba would promote a float32 tile's
arithmetic with a float64 or integer scalar to float64).
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # ln 2 split so that n * LN2_HI is exact
LN2_LO = 1.4286068203094173e-06
ROUND_F32 = 12582912.0  # 1.5 * 2**23: adding it rounds a float32 to an integer
ROUND_F64 = 6755399441055744.0  # 1.5 * 2**52

JIT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


def exp_inplace(x, bits, n):
    """Set ``x[j] = exp(x[j])`` for ``j < n``; ``bits`` is int64 scratch of ``n`` elements."""
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(exp_inplace, jit_options=JIT)
def _exp_inplace_typed(x, bits, n):
    return _exp_f32 if x.dtype == types.float32 else _exp_f64


def like(tile, value):
    """``value`` as a scalar of ``tile``'s dtype (float32 or float64)."""
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(like, jit_options=JIT)
def _like_typed(tile, value):
    if tile.dtype == types.float32:
        return lambda tile, value: np.float32(value)
    return lambda tile, value: np.float64(value)


@njit(**JIT)
def softcap_inplace(x, softcap, derivative, bits, n):
    """``x[j] = softcap * tanh(x[j] / softcap)`` and ``derivative[j] = 1 - tanh²``, ``j < n``.

    ``tanh(y) = sign(y) (1 - e) / (1 + e)`` with ``e = exp(-2|y|)``: the exp above, vectorised,
    and never of a positive argument (which could overflow).  ``±inf`` gives ``±softcap``
    (derivative 0), NaN stays NaN.  ``derivative`` (``n`` elements) is also the scratch.
    """
    factor, one, cap = like(x, -2.0 / softcap), like(x, 1.0), like(x, softcap)
    for j in range(n):
        derivative[j] = abs(x[j]) * factor
    exp_inplace(derivative, bits, n)
    for j in range(n):
        e = derivative[j]
        t = (one - e) / (one + e)
        x[j] = math.copysign(cap * t, x[j])  # NaN keeps NaN: t is NaN
        derivative[j] = one - t * t


def _exp_f32(x, bits, n):
    shifted = bits.view(np.float32)
    for j in range(n):
        y = np.float32(-88.0) if x[j] < np.float32(-88.0) else x[j]  # NaN passes through
        s = y * np.float32(LOG2E) + np.float32(ROUND_F32)
        kf = s - np.float32(ROUND_F32)
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
        shifted[j] = s
    _times_power_of_two_f32(x, bits.view(np.int32), n)


def _exp_f64(x, bits, n):
    shifted = bits.view(np.float64)
    for j in range(n):
        y = -709.0 if x[j] < -709.0 else x[j]
        s = y * LOG2E + ROUND_F64
        kf = s - ROUND_F64
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
        shifted[j] = s
    _times_power_of_two_f64(x, bits, n)


@njit(**JIT)
def _times_power_of_two_f32(x, bits, n):
    """``x[j] *= 2**n_j``, ``n_j`` in the low mantissa bits of the shifted float ``bits[j]``."""
    powers = bits.view(np.float32)
    for j in range(n):
        bits[j] = (bits[j] - np.int32(0x4B400000) + np.int32(127)) << np.int32(23)
    for j in range(n):
        x[j] *= powers[j]


@njit(**JIT)
def _times_power_of_two_f64(x, bits, n):
    powers = bits.view(np.float64)
    for j in range(n):
        bits[j] = (bits[j] - np.int64(0x4338000000000000) + np.int64(1023)) << np.int64(52)
    for j in range(n):
        x[j] *= powers[j]
