"""Vectorisable row operations of the online softmax, for Numba.

PyPI's llvmlite has no SVML, so ``math.exp`` in a loop stays scalar.  ``exp`` here
is a range-reduced polynomial that LLVM turns into SIMD code: ``x = n ln2 + t`` with
``|t| <= ln2 / 2``, ``exp(t)`` from its Taylor series (degree 7 for float32, 13 for
float64, both below one ulp of error), and ``2**n`` written straight into the
exponent bits.  Arguments below the smallest normal number give exactly 0, and -inf
gives 0, so masked scores need no special case.

No ``fastmath=True`` anywhere (it would assume no inf); the two reductions allow
reassociation (and, for the max, no NaN) so that LLVM vectorises them.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

LOG2E = 1.4426950408889634
LN2_HI = 0.693145751953125  # ln 2 split so that n * LN2_HI is exact
LN2_LO = 1.4286068203094173e-06

JIT = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


@njit(fastmath={"reassoc", "nsz", "nnan"}, **JIT)
def row_max(row, n, start):
    """Max of ``row[:n]`` and ``start``."""
    best = start
    for j in range(n):
        if row[j] > best:
            best = row[j]
    return best


def exp_shift_sum(row, shift, bits, n):
    """Set ``row[j] = exp(row[j] - shift)`` for ``j < n``; return the sum (float64)."""
    raise NotImplementedError  # replaced by the overload below inside jitted code


@overload(exp_shift_sum, jit_options=JIT)
def _exp_shift_sum_typed(row, shift, bits, n):
    if row.dtype == types.float32:
        return _exp_shift_sum_f32
    return _exp_shift_sum_f64


def _exp_shift_sum_f32(row, shift, bits, n):
    # bits: int64 scratch of at least n // 2 + 1 elements, viewed as int32 / float32
    ibits = bits.view(np.int32)
    scale = ibits.view(np.float32)
    s = np.float32(shift)
    for j in range(n):
        x = row[j] - s
        x = x if x > np.float32(-88.0) else np.float32(-88.0)
        k = np.int32(x * np.float32(LOG2E) - np.float32(0.5))
        kf = np.float32(k)
        t = x - kf * np.float32(LN2_HI) - kf * np.float32(LN2_LO)
        p = np.float32(1.0 / 5040.0)
        p = p * t + np.float32(1.0 / 720.0)
        p = p * t + np.float32(1.0 / 120.0)
        p = p * t + np.float32(1.0 / 24.0)
        p = p * t + np.float32(1.0 / 6.0)
        p = p * t + np.float32(0.5)
        p = p * t + np.float32(1.0)
        p = p * t + np.float32(1.0)
        row[j] = p
        ibits[j] = (k + np.int32(127)) << np.int32(23)
    return _scale_and_sum(row, scale, n)


def _exp_shift_sum_f64(row, shift, bits, n):
    scale = bits.view(np.float64)
    for j in range(n):
        x = row[j] - shift
        x = x if x > -709.0 else -709.0
        k = np.int64(x * LOG2E - 0.5)
        kf = np.float64(k)
        t = x - kf * LN2_HI - kf * LN2_LO
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
        row[j] = p
        bits[j] = (k + np.int64(1023)) << np.int64(52)
    return _scale_and_sum(row, scale, n)


@njit(fastmath={"reassoc", "nsz"}, **JIT)
def _scale_and_sum(row, scale, n):
    total = 0.0
    for j in range(n):
        value = row[j] * scale[j]
        row[j] = value
        total += value
    return total
