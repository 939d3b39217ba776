"""Checks and normalises the arguments of :func:`fastattn.attention`.

Everything that can be wrong with a call is caught here, with a message that names
the argument, its shape and its dtype.  What comes out is an :class:`AttentionProblem`
that the backends can trust: arrays in the compute dtype, last axes contiguous,
leading axes broadcast to one batch shape, and the causal/window limits as a band.
"""

import math
import operator
from dataclasses import dataclass

import numpy as np

from ._contract import MASK_ADD, MASK_KEEP, MASK_NONE, Band

CAUSAL_MODES = ("upper_left", "lower_right")


class HeadShapes:
    """Head counts and output shape of a problem with ``q``, ``k``, ``v`` and ``batch_shape``."""

    @property
    def heads(self):
        return self.q.shape[-3]

    @property
    def kv_heads(self):
        return self.k.shape[-3]

    @property
    def group(self):
        return self.heads // self.kv_heads

    @property
    def out_shape(self):
        return self.batch_shape + (self.heads, self.q.shape[-2], self.v.shape[-1])


@dataclass(frozen=True)
class AttentionProblem(HeadShapes):
    """A validated call: ``q (*batch, Hq, Lq, D)``, ``k (*batch, Hk, Lk, D)``, ``v (..., Dv)``.

    ``mask`` is None (``mask_kind`` MASK_NONE), a uint8 keep-mask (MASK_KEEP) or an
    additive mask in the compute dtype (MASK_ADD), broadcast (as a view) to
    ``(*batch, Hq, Lq, Lk)``; ``band`` holds the causal and window limits.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: object
    mask_kind: int
    batch_shape: tuple
    scale: float
    band: Band
    compute_dtype: np.dtype
    result_dtype: np.dtype
    squeeze_heads: bool

    @property
    def public_out_shape(self):
        """The shape returned to the caller (2-D in, 2-D out)."""
        shape = self.out_shape
        return shape[-2:] if self.squeeze_heads else shape


def describe(name, array):
    return f"{name} (shape {tuple(array.shape)}, dtype {array.dtype})"


def validate(q, k, v, mask=None, causal=False, window=None, scale=None):
    """Return the :class:`AttentionProblem` for these arguments, or raise."""
    given = [as_float_array(name, x) for name, x in (("q", q), ("k", k), ("v", v))]
    squeeze_heads = all(x.ndim == 2 for x in given)
    q, k, v = (with_head_axis(x) for x in given)
    check_shapes(q, k, v, given)
    batch_shape = broadcast_batch(q, k, v, given)

    result_dtype = np.result_type(q.dtype, k.dtype, v.dtype)
    compute_dtype = np.dtype(np.float32) if result_dtype == np.float16 else result_dtype
    q, k, v = (_prepared(x, batch_shape, compute_dtype) for x in (q, k, v))

    heads, lq, lk = q.shape[-3], q.shape[-2], k.shape[-2]
    causal = normalise_causal(causal)
    window = normalise_window(window)
    mask, mask_kind = prepare_mask(mask, batch_shape + (heads, lq, lk), compute_dtype)
    return AttentionProblem(
        q=q, k=k, v=v, mask=mask, mask_kind=mask_kind, batch_shape=batch_shape,
        scale=normalise_scale(scale, q.shape[-1]),
        band=Band.from_alignment(lq, lk, causal, window), compute_dtype=compute_dtype,
        result_dtype=result_dtype, squeeze_heads=squeeze_heads)


def as_float_array(name, x):
    array = np.asarray(x)
    kind = array.dtype.kind
    if kind in "biu":
        what = "bool" if kind == "b" else "integer"
        raise TypeError(f"{describe(name, array)}: {what} inputs are not attention "
                        f"values; cast them first, e.g. {name}.astype(np.float32)")
    if kind == "c":
        raise TypeError(f"{describe(name, array)}: complex attention is not supported; "
                        f"pass the real part or a float array")
    if kind != "f" or array.dtype.itemsize > 8:
        raise TypeError(f"{describe(name, array)}: expected float16, float32 or float64; "
                        f"cast with {name}.astype(np.float64)")
    if array.ndim < 2:
        raise ValueError(f"{describe(name, array)}: expected at least 2 dimensions "
                         f"(L, D); got {array.ndim}")
    return array


def with_head_axis(array):
    return array[None] if array.ndim == 2 else array


def check_shapes(q, k, v, given):
    """Check the (head-axis) arrays ``q, k, v``; messages show the caller's ``given`` arrays."""
    shown_q, shown_k, shown_v = (describe(n, x) for n, x in zip("qkv", given))
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size D: {shown_q}, {shown_k}")
    if k.shape[-3:-1] != v.shape[-3:-1]:
        raise ValueError(f"k and v must have the same heads and length (Hk, Lk): "
                         f"{shown_k}, {shown_v}")
    if q.shape[-1] == 0:
        raise ValueError(f"{shown_q}: the feature size D must be at least 1")
    heads, kv_heads = q.shape[-3], k.shape[-3]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"the kv heads Hk={kv_heads} must divide the query heads "
                         f"Hq={heads} (grouped-query attention): {shown_q}, {shown_k}")


def broadcast_batch(q, k, v, given):
    try:
        return np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    except ValueError:
        shown = ", ".join(describe(n, x) for n, x in zip("qkv", given))
        raise ValueError(f"the leading (batch) axes of q, k and v do not broadcast: {shown}"
                         ) from None


def _prepared(array, batch_shape, dtype):
    """Cast, make the last axis contiguous, broadcast the batch axes (views where possible)."""
    array = array.astype(dtype, copy=False)
    if array.strides[-1] != array.itemsize and array.shape[-1] > 1:
        array = np.ascontiguousarray(array)
    return np.broadcast_to(array, batch_shape + array.shape[-3:])


def normalise_causal(causal):
    if causal is None or causal is False or (isinstance(causal, np.bool_) and not causal):
        return None
    if causal is True or isinstance(causal, np.bool_):
        return "upper_left"
    if isinstance(causal, str) and causal in CAUSAL_MODES:
        return causal
    raise ValueError(f"causal must be False, True, 'upper_left' or 'lower_right'; "
                     f"got {causal!r}")


def normalise_window(window):
    if window is None:
        return None
    try:
        left, right = window
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (left, right) of non-negative ints "
                         f"or None; got {window!r}") from None
    return _window_side("left", left, window), _window_side("right", right, window)


def _window_side(side, value, window):
    if value is None:
        return None
    try:
        number = operator.index(value)
    except TypeError:
        number = -1
    if isinstance(value, (bool, np.bool_)) or number < 0:
        raise ValueError(f"window {side} must be a non-negative int or None; "
                         f"got {value!r} in window={window!r}")
    return number


def normalise_scale(scale, head_dim):
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a real number, got {scale!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return value


def prepare_mask(mask, scores_shape, compute_dtype):
    """The mask as a view broadcast to ``scores_shape`` and its kind (see _contract)."""
    if mask is None:
        return None, MASK_NONE
    mask = np.asarray(mask)
    kind = mask.dtype.kind
    if kind in "iu":
        raise TypeError(f"{describe('mask', mask)}: integer masks are ambiguous; pass "
                        f"mask.astype(bool) (True = may attend) or an additive float "
                        f"mask (0 or -inf)")
    if kind not in "bf":
        raise TypeError(f"{describe('mask', mask)}: expected a bool or float mask")
    try:
        np.broadcast_shapes(mask.shape, scores_shape)
        if np.broadcast_shapes(mask.shape, scores_shape) != scores_shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"{describe('mask', mask)} does not broadcast to the scores "
                         f"shape (..., Hq, Lq, Lk) = {scores_shape}") from None
    if kind == "b":
        return np.broadcast_to(mask.view(np.uint8), scores_shape), MASK_KEEP
    if np.isnan(mask).any() or np.isposinf(mask).any():
        raise ValueError(f"{describe('mask', mask)}: an additive mask may hold finite "
                         f"values and -inf, not NaN or +inf")
    with np.errstate(over="ignore"):  # large negative values may become -inf: still masked
        cast = mask.astype(compute_dtype, copy=False)
    if np.isposinf(cast).any():
        raise ValueError(f"{describe('mask', mask)}: values exceed the range of the compute "
                         f"dtype {compute_dtype}")
    return np.broadcast_to(cast, scores_shape), MASK_ADD


def check_out(out, problem):
    """Check a caller's ``out=`` array against the result of ``problem``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    expected = problem.public_out_shape
    if out.shape != expected or out.dtype != problem.result_dtype:
        raise ValueError(f"{describe('out', out)} must have shape {expected} and dtype "
                         f"{problem.result_dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{describe('out', out)} is read-only")
    for name in ("q", "k", "v"):
        if np.may_share_memory(out, getattr(problem, name)):
            raise ValueError(f"out overlaps {name}; attention cannot write over its input")
