"""fastattn on PyTorch tensors: a drop-in ``scaled_dot_product_attention``, autograd, compile.

Importing this module imports torch and registers the custom operator
``torch.ops.fastattn.attention`` (``(out, lse)``, with a fake implementation for
``torch.compile`` and autograd through :func:`fastattn.attention_backward`).  ``import
fastattn`` alone never imports torch.  Tensors reach NumPy as views (``.numpy()``, no
copy) and results come back with ``torch.from_numpy``.  float16 and bfloat16 tensors
go to the kernels as they are (bfloat16 as a view with ml_dtypes' NumPy dtype, an
optional dependency) and are computed in float32.  See docs/torch.md.
"""

import contextlib
import math

import numpy as np

try:
    import torch
except ModuleNotFoundError as error:  # pragma: no cover - the message is what matters
    raise ModuleNotFoundError(
        "fastattn.torch needs PyTorch, which is not installed: pip install 'fastattn[torch]' "
        "(or pip install torch); fastattn.attention works on NumPy arrays without it",
        name="torch") from error

from fastattn._api import attention as _numpy_attention

_attention_arrays = _numpy_attention.__wrapped__
"""fastattn.attention without its check for torch's keyword names (these are fastattn's)."""
from fastattn._backward import attention_backward as _numpy_backward
from fastattn._half import INSTALL_HINT, bfloat16, is_bfloat16

__all__ = ["scaled_dot_product_attention", "attention", "sdpa_override"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
"""Tensor dtypes fastattn takes; float16 and bfloat16 are read as they are and computed in
float32 (bfloat16 needs ml_dtypes)."""

_CAUSAL_CODES = {False: "none", True: "upper_left", "upper_left": "upper_left",
                 "lower_right": "lower_right"}
_CAUSAL_OPTIONS = {"none": False, "upper_left": "upper_left", "lower_right": "lower_right"}
NO_LIMIT = -1
"""The operator's encoding of ``None`` (no limit) for one side of ``window``."""


# --------------------------------------------------------------------------- conversions

def _as_numpy(tensor):
    """A NumPy view of a CPU tensor (bfloat16: its 16-bit words viewed as ml_dtypes' bfloat16)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.dtype is torch.bfloat16:  # dtypes are singletons
        return tensor.view(torch.int16).numpy().view(_bfloat16())
    return tensor.numpy()


def _as_tensor(array):
    """A tensor viewing a NumPy array (bfloat16 through its 16-bit words)."""
    if is_bfloat16(array.dtype):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _bfloat16():
    """ml_dtypes' bfloat16 NumPy dtype, or a clear error where ml_dtypes is missing."""
    try:
        return bfloat16()
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"fastattn.torch reads bfloat16 tensors through the package "
                                  f"ml_dtypes, which is not installed: {INSTALL_HINT}; or "
                                  f"convert the tensors with .float()", name="ml_dtypes"
                                  ) from error


def _options(causal, window_left, window_right):
    """The operator's encoded ``causal`` and ``window`` as :func:`fastattn.attention` takes them."""
    if window_left == NO_LIMIT and window_right == NO_LIMIT:
        window = None
    else:
        window = tuple(None if side == NO_LIMIT else side for side in (window_left, window_right))
    return _CAUSAL_OPTIONS[causal], window


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _forward(query, key, value, mask, causal, window_left, window_right, scale, want_lse,
             softcap=None, alibi_slopes=None, sinks=None):
    """``(out, lse)`` (``lse`` None unless ``want_lse``) as tensors: the operator's body."""
    causal, window = _options(causal, window_left, window_right)
    result = _attention_arrays(
        _as_numpy(query), _as_numpy(key), _as_numpy(value),
        None if mask is None else _as_numpy(mask), causal=causal, window=window, scale=scale,
        return_lse=want_lse, **_modifier_arrays(softcap, alibi_slopes, sinks))
    out, lse = result if want_lse else (result, None)
    out = _as_tensor(out)
    if out.dtype is not query.dtype:  # mixed dtypes: the operator returns the query's dtype
        out = out.to(query.dtype)
    return out, None if lse is None else torch.from_numpy(lse)


def _modifier_arrays(softcap, alibi_slopes, sinks):
    """The score modifiers as :func:`fastattn.attention` takes them (tensors as arrays)."""
    return dict(softcap=softcap,
                alibi_slopes=None if alibi_slopes is None else _as_numpy(alibi_slopes),
                sinks=None if sinks is None else _as_numpy(sinks))


# --------------------------------------------------------------------------- the operator

@torch.library.custom_op("fastattn::attention", mutates_args=())
def _attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  mask: torch.Tensor | None, causal: str, window_left: int, window_right: int,
                  scale: float | None, softcap: float | None = None,
                  alibi_slopes: torch.Tensor | None = None, sinks: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(query, key, value, mask, causal, window_left, window_right, scale, True,
                    softcap, alibi_slopes, sinks)


@_attention_op.register_fake
def _attention_fake(query, key, value, mask, causal, window_left, window_right, scale,
                    softcap=None, alibi_slopes=None, sinks=None):
    if query.dim() == 2:
        out_shape = (query.shape[0], value.shape[-1])
    else:
        batch = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
        out_shape = (*batch, query.shape[-3], query.shape[-2], value.shape[-1])
    out = query.new_empty(out_shape)
    return out, query.new_empty(out_shape[:-1], dtype=_compute_dtype(query.dtype))


def _setup_context(ctx, inputs, output):
    query, key, value, mask, causal, window_left, window_right, scale, *modifiers = inputs
    softcap, alibi_slopes, sinks = modifiers + [None] * (3 - len(modifiers))
    out, lse = output
    ctx.save_for_backward(query, key, value, mask, out, lse, alibi_slopes, sinks)
    ctx.options = (causal, window_left, window_right, scale, softcap)
    ctx.mark_non_differentiable(lse)


@torch.library.custom_op("fastattn::attention_backward", mutates_args=())
def _attention_backward_op(dout: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                           mask: torch.Tensor | None, causal: str, window_left: int,
                           window_right: int, scale: float | None, softcap: float | None,
                           alibi_slopes: torch.Tensor | None, sinks: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    causal, window = _options(causal, window_left, window_right)
    if dout.dim() and dout.stride(-1) != 1:  # e.g. the zero strides of sum()'s gradient
        dout = dout.contiguous()
    grads = _numpy_backward(
        _as_numpy(dout), _as_numpy(query), _as_numpy(key), _as_numpy(value), _as_numpy(out),
        _as_numpy(lse), None if mask is None else _as_numpy(mask), causal=causal,
        window=window, scale=scale, **_modifier_arrays(softcap, alibi_slopes, sinks))
    tensors = [_as_tensor(g).to(x.dtype) for g, x in zip(grads, (query, key, value))]
    dsinks = (torch.from_numpy(grads[3]).to(sinks.dtype) if sinks is not None
              else query.new_empty(0))  # the schema's fourth tensor: empty without sinks
    return (*tensors, dsinks)


@_attention_backward_op.register_fake
def _attention_backward_fake(dout, query, key, value, out, lse, mask, causal, window_left,
                             window_right, scale, softcap, alibi_slopes, sinks):
    grads = tuple(torch.empty_like(x, memory_format=torch.contiguous_format)
                  for x in (query, key, value))
    return (*grads, torch.empty_like(sinks) if sinks is not None else query.new_empty(0))


def _backward(ctx, dout, _dlse):
    query, key, value, mask, out, lse, alibi_slopes, sinks = ctx.saved_tensors
    causal, left, right, scale, softcap = ctx.options
    dq, dk, dv, dsinks = torch.ops.fastattn.attention_backward(
        dout, query, key, value, out, lse, mask, causal, left, right, scale, softcap,
        alibi_slopes, sinks)
    return dq, dk, dv, None, None, None, None, None, None, None, \
        dsinks if sinks is not None else None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _use_operator(tensors):
    """Whether a call must go through the dispatcher: autograd or tracing needs it."""
    if torch.compiler.is_compiling():
        return True
    for tensor in tensors:  # loops, not any(): this runs on every call
        if type(tensor) is not torch.Tensor:  # fake or subclass tensors
            return True
    if torch.is_grad_enabled():
        for tensor in tensors:
            if tensor.requires_grad:
                return True
    return False


def _run(query, key, value, mask, causal, window, scale, want_lse, softcap=None,
         alibi_slopes=None, sinks=None):
    """Check the tensors, then compute directly or through the operator."""
    tensors = (query, key, value) if mask is None else (query, key, value, mask)
    _check_tensors(tensors)
    for name, tensor in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor of shape (Hq,), got "
                            f"{type(tensor).__name__}")
    if sinks is not None:
        tensors += (sinks,)  # a learned sink needs the operator's autograd
    left, right = (NO_LIMIT, NO_LIMIT) if window is None else (
        NO_LIMIT if side is None else int(side) for side in window)
    code = _CAUSAL_CODES.get(causal) if isinstance(causal, (bool, str)) else None
    if code is None:
        raise ValueError(f"causal={causal!r}: expected False, True, 'upper_left' or "
                         f"'lower_right'")
    modifiers = (softcap, alibi_slopes, sinks)
    if _use_operator(tensors):
        out, lse = torch.ops.fastattn.attention(query, key, value, mask, code, left, right, scale,
                                                *modifiers)
        return (out, lse) if want_lse else out
    out, lse = _forward(query, key, value, mask, code, left, right, scale, want_lse, *modifiers)
    return (out, lse) if want_lse else out


# --------------------------------------------------------------------------- checks

_is_compiling = torch.compiler.is_compiling


def _plain(query, key, value, dropout_p, enable_gqa):
    """Whether an unmasked call is the common case that goes straight to NumPy: dense CPU
    float32/float64 tensors of one dtype that need no autograd, outside any tracing, and
    nothing that the full checks would refuse.  Cheap tests only; anything else takes the
    full path (same result, or the error it deserves)."""
    return (type(query) is torch.Tensor and type(key) is torch.Tensor
            and type(value) is torch.Tensor and dropout_p == 0.0
            and query.dtype is key.dtype and key.dtype is value.dtype
            and (query.dtype is torch.float32 or query.dtype is torch.float64)
            and query.is_cpu and key.is_cpu and value.is_cpu
            and query.layout is torch.strided and key.layout is torch.strided
            and value.layout is torch.strided
            and not (query.is_nested or key.is_nested or value.is_nested)
            and not (query.requires_grad or key.requires_grad or value.requires_grad)
            and (enable_gqa or query.dim() < 3 or key.dim() < 3
                 or query.shape[-3] == key.shape[-3])
            and not _is_compiling())


def _check_tensors(tensors):
    for position, tensor in enumerate(tensors):  # the common case, in one test per tensor
        if not (type(tensor) is torch.Tensor and tensor.is_cpu and not tensor.is_nested
                and tensor.layout is torch.strided
                and (position == 3 or tensor.dtype in SUPPORTED_DTYPES)):
            _explain_tensors(tensors)


def _explain_tensors(tensors):
    """Raise the error that the first unsupported tensor deserves (subclasses may pass)."""
    for name, tensor in zip(("query", "key", "value", "attn_mask"), tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}; "
                            f"for NumPy arrays use fastattn.attention")
        if not tensor.is_cpu:
            raise ValueError(f"{name} is on {tensor.device}: fastattn runs on the CPU; use "
                             f"torch.nn.functional.scaled_dot_product_attention for "
                             f"{tensor.device.type} tensors, or move them with .cpu()")
        if tensor.layout is not torch.strided or tensor.is_nested:
            raise TypeError(f"{name}: a {tensor.layout} tensor; fastattn takes dense tensors "
                            f"(use .to_dense() or torch's scaled_dot_product_attention)")
        if name != "attn_mask" and tensor.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {tensor.dtype}: expected float32, float64, "
                            f"float16 or bfloat16 (convert with .float())")


def _check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
    """torch's own rules for ``scaled_dot_product_attention`` arguments, raised with its advice."""
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p!r}: fastattn has no attention dropout; use "
                         f"torch.nn.functional.scaled_dot_product_attention (or sdpa_override(),"
                         f" which falls through to it) when training with dropout")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value have dtypes {query.dtype}, {key.dtype}, "
                        f"{value.dtype}: torch requires one dtype; convert them with .to()")
    if attn_mask is not None and attn_mask.dtype not in (torch.bool, query.dtype):
        raise TypeError(f"attn_mask has dtype {attn_mask.dtype}: expected torch.bool or the "
                        f"query's dtype {query.dtype}")
    if is_causal and attn_mask is not None:
        raise ValueError("is_causal=True with an attn_mask: torch refuses both; pass one, or "
                         "use fastattn.torch.attention(..., mask=..., causal=True)")
    if query.dim() >= 3 and key.dim() >= 3 and query.shape[-3] != key.shape[-3] and not enable_gqa:
        raise ValueError(f"query has {query.shape[-3]} heads and key {key.shape[-3]}: pass "
                         f"enable_gqa=True for grouped-query attention, as torch requires")


# --------------------------------------------------------------------------- public API

def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` computed by fastattn, on CPU tensors.

    Parameters
    ----------
    query : torch.Tensor, shape (..., Hq, L, D)
    key : torch.Tensor, shape (..., Hk, S, D)
    value : torch.Tensor, shape (..., Hk, S, Dv)
        CPU tensors of one dtype: float32 or float64 (computed natively), float16 or
        bfloat16 (read in their dtype, computed in float32, returned in their dtype;
        bfloat16 needs the package ml_dtypes).  Tensors whose last axis is contiguous
        reach the kernels without a copy.
    attn_mask : torch.Tensor, optional
        Broadcastable to ``(..., Hq, L, S)``.  Bool: True means "may attend".
        Floating (the query's dtype): added to the scaled scores.
    dropout_p : float, default 0.0
        Must be 0: fastattn has no dropout (``ValueError`` otherwise).
    is_causal : bool, default False
        Upper-left causal mask (query ``i`` sees keys ``j <= i``), as torch.
    scale : float, optional
        Default ``1 / sqrt(D)``.
    enable_gqa : bool, default False
        Required, as in torch, when ``Hq != Hk`` (``Hk`` must divide ``Hq``); no copy of
        key and value is made.

    Returns
    -------
    torch.Tensor, shape (..., Hq, L, Dv)
        On the CPU, in the input dtype.  Differentiable with respect to query, key and
        value; ``torch.compile`` traces it (it is the operator
        ``torch.ops.fastattn.attention``).

    Raises
    ------
    ValueError
        For tensors not on the CPU, ``dropout_p > 0``, ``is_causal`` with a mask, or
        ``Hq != Hk`` without ``enable_gqa``; the message says what to use instead.
    TypeError
        For dtypes fastattn does not take, or mixed dtypes.

    Notes
    -----
    A row whose keys are all masked gives zeros (and no gradient); torch's math path
    gives NaN there.

    Examples
    --------
    >>> import torch, fastattn.torch
    >>> q, k, v = torch.randn(3, 2, 4, 5, 8, dtype=torch.float64).unbind(0)
    >>> out = fastattn.torch.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> bool(torch.allclose(out, expected))
    True
    """
    if attn_mask is None and _plain(query, key, value, dropout_p, enable_gqa):
        return torch.from_numpy(_attention_arrays(
            query.numpy(), key.numpy(), value.numpy(),
            causal="upper_left" if is_causal else False, scale=scale))
    tensors = (query, key, value) if attn_mask is None else (query, key, value, attn_mask)
    _check_tensors(tensors)
    _check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
    code = _CAUSAL_CODES[bool(is_causal)]
    if _use_operator(tensors):
        return torch.ops.fastattn.attention(query, key, value, attn_mask, code, NO_LIMIT,
                                            NO_LIMIT, scale)[0]
    return _forward(query, key, value, attn_mask, code, NO_LIMIT, NO_LIMIT, scale, False)[0]


def attention(query, key, value, mask=None, *, causal=False, window=None, scale=None,
              softcap=None, alibi_slopes=None, sinks=None, return_lse=False):
    """:func:`fastattn.attention` on CPU tensors, differentiable and traceable.

    Parameters
    ----------
    query, key, value : torch.Tensor
        Shapes as in :func:`fastattn.attention` (``Hk`` divides ``Hq``; ``Dv`` may
        differ from ``D``; batch axes broadcast); dtypes as in
        :func:`scaled_dot_product_attention`, mixed dtypes allowed.
    mask : torch.Tensor, optional
        Bool (True = attend) or floating (added), broadcastable to ``(..., Hq, Lq, Lk)``.
    causal : bool or {"upper_left", "lower_right"}, default False
    window : tuple (left, right), optional
    scale : float, optional
        As in :func:`fastattn.attention`.
    softcap : float, optional
    alibi_slopes : torch.Tensor, shape (Hq,), optional
    sinks : torch.Tensor, shape (Hq,), optional
        Score modifiers, as in :func:`fastattn.attention`.  The sinks are
        differentiable (gpt-oss learns them); the slopes are constants.
    return_lse : bool, default False
        Also return the log-sum-exp of each row (float32, or float64 for float64
        inputs).  It carries no gradient.

    Returns
    -------
    out : torch.Tensor, shape (..., Hq, Lq, Dv)
    lse : torch.Tensor, shape (..., Hq, Lq)
        Only with ``return_lse=True``.

    Examples
    --------
    One decoding step against a KV cache of 6 keys, two query heads sharing one kv head:

    >>> import torch, fastattn.torch
    >>> q = torch.randn(1, 2, 1, 8)
    >>> k, v = torch.randn(2, 1, 1, 6, 8).unbind(0)
    >>> out, lse = fastattn.torch.attention(q, k, v, causal="lower_right", return_lse=True)
    >>> out.shape, lse.shape
    (torch.Size([1, 2, 1, 8]), torch.Size([1, 2, 1]))
    """
    return _run(query, key, value, mask, causal, window, scale, return_lse, softcap,
                alibi_slopes, sinks)


# --------------------------------------------------------------------------- override

def _sdpa_supported(args, kwargs):
    """Whether a ``scaled_dot_product_attention`` call is one fastattn computes."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
             "enable_gqa")
    if len(args) > len(names) or set(kwargs) - set(names):
        return False
    call = dict(zip(names, args), **kwargs)
    tensors = [call.get(name) for name in ("query", "key", "value")]
    mask = call.get("attn_mask")
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype not in (torch.bool, tensors[0].dtype):
            return False
        tensors.append(mask)
    query, key = tensors[0], tensors[1]
    return (all(t.device.type == "cpu" and t.layout == torch.strided and not t.is_nested
                for t in tensors)
            and query.dtype in SUPPORTED_DTYPES and query.dtype == key.dtype == tensors[2].dtype
            and call.get("dropout_p", 0.0) == 0.0
            and not (call.get("is_causal", False) and mask is not None)
            and query.dim() >= 3 and key.dim() >= 3
            and (query.shape[-3] == key.shape[-3] or bool(call.get("enable_gqa", False)))
            and query.shape[-3] % key.shape[-3] == 0)


@contextlib.contextmanager
def sdpa_override():
    """Run ``torch.nn.functional.scaled_dot_product_attention`` on fastattn inside a block.

    Patches the attribute ``torch.nn.functional.scaled_dot_product_attention`` (and
    nothing else): code that looks it up at call time (``F.scaled_dot_product_attention``,
    ``torch.nn.MultiheadAttention``, transformers' "sdpa" attention) is redirected.
    Calls that fastattn supports (CPU strided tensors of one supported dtype, bool or
    same-dtype mask, no dropout, 3-D or more) run on :func:`scaled_dot_product_attention`;
    every other call (CUDA tensors, dropout, other dtypes or arguments) goes to the
    original function.  The original is restored on exit, also after an exception.
    References taken before entering (``from torch.nn.functional import
    scaled_dot_product_attention``) and ``torch._C._nn.scaled_dot_product_attention``
    are not patched.

    Examples
    --------
    >>> import torch, fastattn.torch
    >>> q = k = v = torch.randn(1, 2, 4, 8)
    >>> with fastattn.torch.sdpa_override():
    ...     out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ...     with_dropout = torch.nn.functional.scaled_dot_product_attention(
    ...         q, k, v, dropout_p=0.5)  # falls through to torch
    >>> out.shape
    torch.Size([1, 2, 4, 8])
    """
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention

    def patched(*args, **kwargs):
        if _sdpa_supported(args, kwargs):
            return scaled_dot_product_attention(*args, **kwargs)
        return original(*args, **kwargs)

    functional.scaled_dot_product_attention = patched
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original
