"""Checks and normalises the arguments of :func:`fastattn.attention`.

Everything that can be wrong with a call is caught here, with a message that names
the argument, its shape and its dtype.  The checks come in two steps:

* :func:`check_call` decides everything a call needs from the *shapes and dtypes*
  of its arguments alone (batch shape, compute dtype, scale, band, mask kind), so
  it also runs on zero-byte stand-ins and on lazy arrays (:mod:`fastattn.dask`);
* :func:`validate` converts the arguments to NumPy, runs :func:`check_call`, checks
  the values of an additive mask and prepares the arrays: an
  :class:`AttentionProblem` that the backends can trust (``q``, ``k``, ``v`` in the
  storage dtype, last axes contiguous, leading axes broadcast to one batch shape).

The dtypes of a call: the *result* dtype is ``np.result_type(q, k, v)``; the kernels
read ``q``, ``k``, ``v`` and write ``out`` in the *storage* dtype, which is the result
dtype; they compute in the *compute* dtype: float32 for float16 and bfloat16 (see
:mod:`fastattn._half`), else the result dtype itself.
"""

import functools
import math
import numbers
import operator
from dataclasses import dataclass

import numpy as np

from ._contract import (MASK_ADD, MASK_KEEP, MASK_NONE, NO_MODIFIERS, Band,
                        ScoreModifiers)
from ._half import INSTALL_HINT, bfloat16, compute_dtype_of, is_float, result_type

CAUSAL_MODES = ("upper_left", "lower_right")

TORCH_KEYWORDS = {
    "is_causal": "pass causal=True (torch's is_causal; causal='lower_right' aligns the "
                 "last query with the last key)",
    "attn_mask": "pass mask= (bool: True = may attend, as in torch; float: added to the "
                 "scaled scores)",
    "dropout_p": "dropout is not supported: fastattn computes exact attention (apply "
                 "dropout to the inputs or outputs yourself)",
    "enable_gqa": "grouped-query attention is automatic: when Hk divides Hq, query head h "
                  "uses kv head h // (Hq // Hk); drop the argument",
}
"""Keywords of ``torch.nn.functional.scaled_dot_product_attention`` that fastattn spells
differently or does not take, and what to do instead."""


def explain_torch_keywords(function):
    """Wrap an attention function so torch's keyword names get fastattn's own TypeError."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if TORCH_KEYWORDS.keys().isdisjoint(kwargs):  # the common case, checked in C
            return function(*args, **kwargs)
        foreign = [name for name in kwargs if name in TORCH_KEYWORDS]
        if foreign:
            advice = "; ".join(f"{name}: {TORCH_KEYWORDS[name]}" for name in foreign)
            raise TypeError(f"{function.__name__}() got torch's keyword argument"
                            f"{'s' if len(foreign) > 1 else ''} {', '.join(foreign)}; "
                            f"{advice}")
        return function(*args, **kwargs)
    return wrapper


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
class CallSpec:
    """What a call decides from the shapes and dtypes of its arguments alone.

    ``scores_shape`` is ``(*batch, Hq, Lq, Lk)``; the other fields are those of
    :class:`AttentionProblem` that are not arrays.
    """

    batch_shape: tuple
    scores_shape: tuple
    mask_kind: int
    scale: float
    band: Band
    compute_dtype: np.dtype
    result_dtype: np.dtype
    squeeze_heads: bool

    @property
    def storage_dtype(self):
        """The dtype the kernels read ``q``, ``k``, ``v`` and write ``out`` in: the result's."""
        return self.result_dtype

    def problem_fields(self):
        """The fields of :class:`AttentionProblem` (and of the Dask problem) decided here."""
        return dict(batch_shape=self.batch_shape, mask_kind=self.mask_kind, scale=self.scale,
                    band=self.band, compute_dtype=self.compute_dtype,
                    result_dtype=self.result_dtype, squeeze_heads=self.squeeze_heads)


@dataclass(frozen=True)
class AttentionProblem(HeadShapes):
    """A validated call: ``q (*batch, Hq, Lq, D)``, ``k (*batch, Hk, Lk, D)``, ``v (..., Dv)``.

    ``q``, ``k`` and ``v`` are in the storage dtype (the result dtype: float16 and
    bfloat16 stay half precision); ``mask`` is None (``mask_kind`` MASK_NONE), a uint8
    keep-mask (MASK_KEEP) or an additive mask in the compute dtype (MASK_ADD), broadcast
    (as a view) to ``(*batch, Hq, Lq, Lk)``; ``band`` holds the causal and window limits;
    ``modifiers`` the softcap, ALiBi slopes and sinks.
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
    modifiers: ScoreModifiers = NO_MODIFIERS

    @property
    def storage_dtype(self):
        """The dtype of ``q``, ``k``, ``v`` and of the kernels' ``out``: the result dtype."""
        return self.result_dtype

    @property
    def public_out_shape(self):
        """The shape returned to the caller (2-D in, 2-D out)."""
        shape = self.out_shape
        return shape[-2:] if self.squeeze_heads else shape


def describe(name, array):
    return f"{name} (shape {tuple(array.shape)}, dtype {array.dtype})"


def validate(q, k, v, mask=None, causal=False, window=None, scale=None, softcap=None,
             alibi_slopes=None, sinks=None):
    """Return the :class:`AttentionProblem` for these arguments, or raise."""
    q, k, v = (as_array(name, x) for name, x in zip("qkv", (q, k, v)))
    mask = None if mask is None else as_array("mask", mask)
    spec = check_call(q, k, v, mask, causal, window, scale)
    heads, lq, lk = spec.scores_shape[-3:]
    diagonal = lk - lq if normalise_causal(causal) == "lower_right" else 0
    modifiers = check_modifiers(softcap, alibi_slopes, sinks, heads, spec.compute_dtype,
                                diagonal)
    q, k, v = (_prepared(x, spec) for x in (q, k, v))
    return AttentionProblem(q=q, k=k, v=v, mask=prepare_mask(mask, spec),
                            modifiers=modifiers, **spec.problem_fields())


def check_call(q, k, v, mask=None, causal=False, window=None, scale=None):
    """Check a call from its arguments' ``.shape`` and ``.dtype`` only: its :class:`CallSpec`.

    ``q``, ``k``, ``v`` and ``mask`` may be NumPy arrays, zero-byte stand-ins or lazy
    arrays of known shape: no value is read.  The values of an additive mask are
    checked by :func:`prepare_mask`.
    """
    given = (q, k, v)
    for name, x in zip("qkv", given):
        check_float_array(name, x)
    q_shape, k_shape, v_shape = (_with_head_axis(x.shape) for x in given)
    check_shapes(q_shape, k_shape, v_shape, given)
    batch_shape = broadcast_batch((q_shape, k_shape, v_shape), given)
    result_dtype = result_type(*zip("qkv", given))
    compute_dtype = compute_dtype_of(result_dtype)
    heads, lq, head_dim = q_shape[-3:]
    lk = k_shape[-2]
    scores_shape = batch_shape + (heads, lq, lk)
    return CallSpec(
        batch_shape=batch_shape, scores_shape=scores_shape,
        mask_kind=check_mask(mask, scores_shape),
        scale=normalise_scale(scale, head_dim, compute_dtype),
        band=Band.from_alignment(lq, lk, normalise_causal(causal), normalise_window(window)),
        compute_dtype=compute_dtype, result_dtype=result_dtype,
        squeeze_heads=all(len(x.shape) == 2 for x in given))


# ---------------------------------------------------------------- arrays


def as_array(name, x):
    """``np.asarray(x)``, with fastattn's own message where a torch tensor cannot convert.

    torch is never imported: a tensor is recognised by its type's module.  A torch
    bfloat16 tensor, which NumPy cannot read, becomes a bfloat16 view of its memory
    (ml_dtypes' dtype; no copy).
    """
    if _is_torch_bfloat16(x):
        return _torch_bfloat16_view(name, x)
    try:
        return np.asarray(x)
    except (RuntimeError, TypeError, ValueError) as error:
        hint = _torch_hint(name, x)
        if hint is None:
            what = TypeError if isinstance(error, TypeError) else ValueError
            raise what(f"{name} ({type(x).__name__}) cannot be converted to a NumPy "
                       f"array: {error}") from error
        raise TypeError(hint) from error


def _torch_hint(name, x):
    """Why the torch tensor ``x`` does not convert to NumPy and what to do, or None."""
    if type(x).__module__.split(".")[0] != "torch":
        return None
    if getattr(x, "requires_grad", False):
        return (f"{name} is a torch tensor that requires grad: fastattn's NumPy API does "
                f"not track gradients; pass {name}.detach() (a torch backend with autograd "
                f"is planned as fastattn.torch)")
    device = getattr(x, "device", None)
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        return f"{name} is a torch tensor on {device}: fastattn runs on the CPU; pass {name}.cpu()"
    return None


def _is_torch_bfloat16(x):
    return type(x).__module__.split(".")[0] == "torch" and \
        str(getattr(x, "dtype", "")) == "torch.bfloat16"


def _torch_bfloat16_view(name, tensor):
    """A bfloat16 NumPy view of a CPU torch bfloat16 tensor (its 16-bit words, reinterpreted)."""
    hint = _torch_hint(name, tensor)
    if hint is not None:
        raise TypeError(hint)
    try:
        dtype = bfloat16()
    except ModuleNotFoundError as error:
        raise TypeError(f"{name} is a torch bfloat16 tensor: NumPy needs the package "
                        f"ml_dtypes for bfloat16: {INSTALL_HINT}; or pass {name}.float()"
                        ) from error
    import torch  # the tensor's own module: already imported

    return tensor.view(torch.int16).numpy().view(dtype)


def check_float_array(name, array):
    """A float16/bfloat16/float32/float64 dtype and at least 2 dimensions, from ``.dtype``
    and ``.shape``."""
    kind = array.dtype.kind
    if kind in "biu":
        what = "bool" if kind == "b" else "integer"
        raise TypeError(f"{describe(name, array)}: {what} inputs are not attention "
                        f"values; cast them first, e.g. {name}.astype(np.float32)")
    if kind == "c":
        raise TypeError(f"{describe(name, array)}: complex attention is not supported; "
                        f"pass the real part or a float array")
    if not is_float(array.dtype):
        raise TypeError(f"{describe(name, array)}: expected float16, bfloat16, float32 or "
                        f"float64; cast with {name}.astype(np.float64)")
    if len(array.shape) < 2:
        raise ValueError(f"{describe(name, array)}: expected at least 2 dimensions "
                         f"(L, D); got {len(array.shape)}")


def _with_head_axis(shape):
    return (1,) + tuple(shape) if len(shape) == 2 else tuple(shape)


def check_shapes(q_shape, k_shape, v_shape, given):
    """Check the (head-axis) shapes; messages show the caller's ``given`` arrays."""
    def shown(*names):
        return ", ".join(describe(n, x) for n, x in zip("qkv", given) if n in names)

    if q_shape[-1] != k_shape[-1]:
        raise ValueError(f"q and k must have the same feature size D: {shown('q', 'k')}")
    if k_shape[-3:-1] != v_shape[-3:-1]:
        raise ValueError(f"k and v must have the same heads and length (Hk, Lk): "
                         f"{shown('k', 'v')}")
    if q_shape[-1] == 0:
        raise ValueError(f"{shown('q')}: the feature size D must be at least 1")
    heads, kv_heads = q_shape[-3], k_shape[-3]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"the kv heads Hk={kv_heads} must divide the query heads "
                         f"Hq={heads} (grouped-query attention): {shown('q', 'k')}")


def broadcast_batch(shapes, given):
    try:
        return np.broadcast_shapes(*(shape[:-3] for shape in shapes))
    except ValueError:
        shown = ", ".join(describe(n, x) for n, x in zip("qkv", given))
        raise ValueError(f"the leading (batch) axes of q, k and v do not broadcast: {shown}"
                         ) from None


def _prepared(array, spec):
    """Cast to the storage dtype, make the last axis contiguous, broadcast the batch axes
    (views where possible): half inputs stay half, only an input of another dtype is cast."""
    array = array.astype(spec.storage_dtype, copy=False)
    if array.strides[-1] != array.itemsize and array.shape[-1] > 1:
        array = np.ascontiguousarray(array)
    if array.ndim == 2:
        array = array[None]
    return np.broadcast_to(array, spec.batch_shape + array.shape[-3:])


# ---------------------------------------------------------------- options


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
    """``None`` or ``(left, right)`` of non-negative Python ints or None (any size)."""
    if window is None:
        return None
    if not (isinstance(window, (tuple, list))
            or (isinstance(window, np.ndarray) and window.ndim == 1)):
        raise TypeError(f"window must be a pair (left, right) (a tuple, list or 1-D array) "
                        f"of non-negative ints or None; got {window!r}")
    if len(window) != 2:
        raise ValueError(f"window must be a pair (left, right); got {len(window)} "
                         f"values in window={window!r}")
    return tuple(_window_side(side, value, window)
                 for side, value in zip(("left", "right"), window))


def _window_side(side, value, window):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        number = None
    else:
        try:
            number = operator.index(value)
        except TypeError:
            number = None
    if number is None:
        raise TypeError(f"window {side} must be a non-negative int or None; "
                        f"got {value!r} in window={window!r}")
    if number < 0:
        raise ValueError(f"window {side} must be a non-negative int or None; "
                         f"got {value!r} in window={window!r}")
    return number


def normalise_scale(scale, head_dim, compute_dtype):
    """The scale as a float: default ``1/sqrt(D)``; finite in the compute dtype."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, np.ndarray) and scale.ndim == 0:
        scale = scale[()]  # a 0-d array: its NumPy scalar
    if not isinstance(scale, numbers.Real) or isinstance(scale, (bool, np.bool_)):
        raise TypeError(f"scale must be a real number (int or float), got "
                        f"{type(scale).__name__} {scale!r}")
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"scale must be finite, got {scale!r}")
    largest = float(np.finfo(compute_dtype).max)
    if abs(value) > largest:
        raise ValueError(f"scale={scale!r} overflows the compute dtype {compute_dtype} "
                         f"(largest finite value {largest:g})")
    return value


# ---------------------------------------------------------------- score modifiers
def check_modifiers(softcap, alibi_slopes, sinks, heads, compute_dtype, diagonal=0):
    """The :class:`ScoreModifiers` of a call with ``heads`` query heads.

    ``diagonal`` is the key index minus the query index on the diagonal that ALiBi
    distances are measured from (``Lk - Lq`` for "lower_right", else 0).
    """
    if softcap is None and alibi_slopes is None and sinks is None:
        return NO_MODIFIERS
    return ScoreModifiers(softcap=_check_softcap(softcap, compute_dtype),
                          alibi_slopes=_per_head("alibi_slopes", alibi_slopes, heads,
                                                 compute_dtype),
                          diagonal=int(diagonal),
                          sinks=_per_head("sinks", sinks, heads, compute_dtype))


def _check_softcap(softcap, compute_dtype):
    """``softcap`` as a positive float (0.0 for None)."""
    if softcap is None:
        return 0.0
    if isinstance(softcap, np.ndarray) and softcap.ndim == 0:
        softcap = softcap[()]
    if not isinstance(softcap, numbers.Real) or isinstance(softcap, (bool, np.bool_)):
        raise TypeError(f"softcap must be a positive real number or None, got "
                        f"{type(softcap).__name__} {softcap!r}")
    value = float(softcap)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softcap must be positive and finite (scores become "
                         f"softcap * tanh(score / softcap)); got {softcap!r}")
    if value > float(np.finfo(compute_dtype).max):
        raise ValueError(f"softcap={softcap!r} overflows the compute dtype {compute_dtype}")
    return value


def _per_head(name, values, heads, compute_dtype):
    """A per-query-head array ``(heads,)`` of finite values, contiguous, in the compute dtype."""
    if values is None:
        return None
    array = as_array(name, values)
    if not is_float(array.dtype) and array.dtype.kind not in "iu":
        raise TypeError(f"{describe(name, array)}: expected real numbers, one per query head")
    if array.shape != (heads,):
        raise ValueError(f"{describe(name, array)} must have shape ({heads},): one value "
                         f"per query head (Hq = {heads})")
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(array, dtype=compute_dtype)
    if not np.isfinite(cast).all():
        raise ValueError(f"{describe(name, array)} must be finite in the compute dtype "
                         f"{compute_dtype}")
    return cast


def check_flag(name, value):
    """A Python or NumPy bool, as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


# ---------------------------------------------------------------- masks


def check_mask(mask, scores_shape):
    """The mask kind of ``mask`` (None or anything with ``.shape``/``.dtype``), or raise."""
    if mask is None:
        return MASK_NONE
    kind = mask.dtype.kind
    if kind in "iu":
        raise TypeError(f"{describe('mask', mask)}: integer masks are ambiguous; pass "
                        f"mask.astype(bool) (True = may attend) or an additive float "
                        f"mask (0 or -inf)")
    if kind != "b" and not is_float(mask.dtype):
        raise TypeError(f"{describe('mask', mask)}: expected a bool or float mask")
    try:
        broadcast = np.broadcast_shapes(tuple(mask.shape), scores_shape)
    except ValueError:
        broadcast = None
    if broadcast != scores_shape:
        raise ValueError(f"{describe('mask', mask)} does not broadcast to the scores "
                         f"shape (..., Hq, Lq, Lk) = {scores_shape}"
                         f"{_padding_hint(mask.shape, scores_shape)}")
    return MASK_KEEP if kind == "b" else MASK_ADD


def _padding_hint(mask_shape, scores_shape):
    """A hint for a ``(B, Lk)`` padding mask, which needs its head and query axes."""
    if len(mask_shape) == 2 and len(scores_shape) >= 4 and \
            tuple(mask_shape) == (scores_shape[0], scores_shape[-1]):
        return ("; a padding mask of shape (B, Lk) needs axes for the heads and queries: "
                "pass mask[:, None, None, :]")
    return ""


def prepare_mask(mask, spec):
    """A NumPy ``mask`` as the kernels take it (see _contract), broadcast to the scores.

    A bool mask becomes a uint8 keep-mask view; an additive mask is checked for NaN,
    ``+inf`` and overflow in the compute dtype, and cast to it.
    """
    if mask is None:
        return None
    if spec.mask_kind == MASK_KEEP:
        return np.broadcast_to(mask.view(np.uint8), spec.scores_shape)
    if np.isnan(mask).any() or np.isposinf(mask).any():
        raise ValueError(f"{describe('mask', mask)}: an additive mask may hold finite "
                         f"values and -inf, not NaN or +inf")
    with np.errstate(over="ignore"):  # large negative values may become -inf: still masked
        cast = mask.astype(spec.compute_dtype, copy=False)
    if np.isposinf(cast).any():
        raise ValueError(f"{describe('mask', mask)}: values exceed the range of the compute "
                         f"dtype {spec.compute_dtype}")
    return np.broadcast_to(cast, spec.scores_shape)


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
