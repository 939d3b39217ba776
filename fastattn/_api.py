"""The public functions of fastattn."""

import numpy as np

from . import _backends
from ._backends import resolve
from ._config import get_config, thread_budget
from ._half import is_float, result_type
from ._merge import merge_states
from ._tiled import RepeatedRun
from ._validation import (as_array, check_flag, check_out, describe, explain_torch_keywords,
                          validate)


@explain_torch_keywords
def attention(q, k, v, mask=None, *, causal=False, window=None, scale=None,
              softcap=None, alibi_slopes=None, sinks=None, return_lse=False, backend=None,
              out=None):
    """Exact scaled dot-product attention, ``softmax(q kᵀ · scale + mask) v``.

    Parameters
    ----------
    q : array_like, shape (..., Hq, Lq, D) or (Lq, D)
        Queries.  Any strides; a transposed ``(B, L, H, D)`` array is not copied
        when its last axis is contiguous.  dtypes of q, k and v: float32, float64,
        float16 or ``ml_dtypes.bfloat16`` (half precision is read as it is and
        computed in float32); mixed dtypes follow ``np.result_type`` (bfloat16 with
        float16 is a ``TypeError``: cast one of them).
    k : array_like, shape (..., Hk, Lk, D) or (Lk, D)
        Keys.  ``Hk`` must divide ``Hq``: query head ``h`` uses kv head
        ``h // (Hq // Hk)`` (grouped-query attention, no copy of k or v).
    v : array_like, shape (..., Hk, Lk, Dv) or (Lk, Dv)
        Values; ``Dv`` may differ from ``D``.
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., Hq, Lq, Lk)``.  Bool: True means the query may
        attend the key.  Float: added to the scaled scores (0 or -inf for padding,
        a bias for ALiBi); NaN and +inf are rejected.  A ``(B, Lk)`` padding
        mask needs its head and query axes: ``mask[:, None, None, :]``.
    causal : bool or {"upper_left", "lower_right"}, default False
        True is "upper_left": query ``i`` sees keys ``j <= i``.  "lower_right"
        aligns the last query with the last key (``j <= i + Lk - Lq``), as in
        KV-cache decoding.
    window : tuple (left, right), optional
        Sliding-window attention: query ``i`` sees keys ``j`` with
        ``c - left <= j <= c + right``, where ``c`` is the causal diagonal
        (``c = i``, or ``i + Lk - Lq`` for "lower_right").  ``None`` for a side
        means no limit on that side; any non-negative int is allowed
        (``sys.maxsize`` is no limit too).
    scale : float, optional
        Multiplies ``q kᵀ``; default ``1 / sqrt(D)``.  A real number (not a
        bool or a string), finite in the compute dtype.
    softcap : float, optional
        Caps the scaled scores smoothly: ``s -> softcap * tanh(s / softcap)``
        (Gemma 2, Grok), before the mask and ALiBi.  Positive and finite.
    alibi_slopes : array_like, shape (Hq,), optional
        ALiBi: adds ``-alibi_slopes[h] * |j - c|`` to the scores of query head
        ``h``, where ``c`` is the causal diagonal of query ``i`` (as for
        ``window``).  Computed inside the kernels: no ``Lq x Lk`` bias.
    sinks : array_like, shape (Hq,), optional
        Attention sinks (gpt-oss): one logit per query head that joins every
        row's softmax denominator and adds no value.  The lse includes it; a row
        with no visible key gives zeros and ``lse = sink``.
    return_lse : bool, default False
        Also return the natural log-sum-exp of each row's scaled scores.
    backend : {"naive", "numba", "cython", "auto"}, optional
        Default: the ``backend`` setting (see :func:`config_context`), "auto".
    out : ndarray, optional
        Written in place and returned; its shape and dtype must be the result's.
        Any strides (whole elements): the kernel writes it directly, without an
        output-sized temporary.

    Returns
    -------
    out : ndarray, shape (..., Hq, Lq, Dv)
        In ``np.result_type(q, k, v)``; float16 and bfloat16 results are
        computed in float32 and rounded once (to nearest even).  A row whose keys
        are all masked is zeros.
    lse : ndarray, shape (..., Hq, Lq)
        Only with ``return_lse=True``; in the compute dtype (float32 for float16
        and bfloat16, else the result dtype); -inf for fully masked rows.

    Raises
    ------
    TypeError
        For a wrong type of argument, with what to do; also for torch's keyword
        names: ``is_causal=`` (use ``causal=``), ``attn_mask=`` (use ``mask=``),
        ``dropout_p=`` (not supported) and ``enable_gqa=`` (automatic), and for
        torch tensors NumPy cannot read (requiring grad: ``.detach()``; a
        bfloat16 tensor is read as a view when ml_dtypes is installed).
    ValueError
        For a wrong shape or value; the message names the argument, its shape
        and its dtype.

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> q = np.array([[1.0, 0.0]])
    >>> k = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> v = np.array([[10.0, 0.0], [0.0, 10.0]])
    >>> fastattn.attention(q, k, v, scale=np.log(3.0)).round(6)
    array([[7.5, 2.5]])

    Half precision stays half precision; the log-sum-exp is float32:

    >>> out, lse = fastattn.attention(q.astype(np.float16), k.astype(np.float16),
    ...                               v.astype(np.float16), scale=np.log(3.0),
    ...                               return_lse=True)
    >>> out, lse.dtype
    (array([[7.5, 2.5]], dtype=float16), dtype('float32'))
    """
    settings = get_config()
    key = None
    plain = softcap is None and alibi_slopes is None and sinks is None
    if mask is None and out is None and plain:
        key = _call_key(q, k, v, causal, window, scale, return_lse, backend, settings)
        repeated = _repeated.get(key) if key is not None else None
        if repeated is not None and repeated[0] is _backends._load:  # the same registry
            result, lse = repeated[1](q, k, v)
            return (result, lse) if return_lse else result
    problem = validate(q, k, v, mask, causal, window, scale, softcap, alibi_slopes, sinks)
    return_lse = check_flag("return_lse", return_lse)
    if out is not None:
        check_out(out, problem)
    chosen = resolve(backend if backend is not None else settings["backend"], problem)
    if key is not None and key not in _repeated:
        _remember(key, chosen, problem, settings, (q, k, v))
    direct = out is not None and _kernel_writable(out, problem.storage_dtype)
    kernel_out = (out[None] if problem.squeeze_heads else out) if direct else None  # a view
    result, lse = chosen.run(problem, settings, out=kernel_out)
    if problem.squeeze_heads:
        result, lse = result[0], lse[0]
    if out is None:
        out = result.astype(problem.result_dtype, copy=False)
    elif not direct:  # a layout the kernels cannot write
        np.copyto(out, result, casting="same_kind")
    return (out, lse) if return_lse else out


_repeated = {}
"""Calls seen before: ``_call_key(...)`` -> ``(loader, RepeatedRun)``, or None where such a
call cannot skip validation.  ``loader`` is the backend registry's ``_load`` that chose the
backend (the key holds the backend's name and setting): a replaced registry chooses anew.
Entries are immutable; dict reads and writes are atomic, so threads share it safely."""

_MAX_REPEATED = 256

_KEY_TYPES = frozenset((bool, int, float, str, type(None), np.bool_, np.float32, np.float64))
"""Types of the options a key may hold: hashable, and told apart by type in the key (1 ==
True, yet ``causal=1`` is an error)."""


def _call_key(q, k, v, causal, window, scale, return_lse, backend, settings):
    """What decides a call without a mask or ``out``: layouts, options and settings (or None).

    Two calls with one key validate alike and run the same plan on the same kernel.
    """
    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return None
    if window is not None:
        if type(window) is not tuple or not all(type(side) in _KEY_TYPES for side in window):
            return None
        window = (window, tuple(map(type, window)))
    if not (type(causal) in _KEY_TYPES and type(scale) in _KEY_TYPES
            and type(return_lse) in _KEY_TYPES and type(backend) in _KEY_TYPES):
        return None
    return (q.shape, q.strides, q.dtype, k.shape, k.strides, k.dtype, v.shape, v.strides,
            v.dtype, causal, type(causal), window, scale, type(scale), return_lse,
            type(return_lse), backend, type(backend), settings["backend"],
            thread_budget(settings["num_threads"]), settings["block_q"], settings["block_k"])


def _remember(key, chosen, problem, settings, given):
    """Store how calls with ``key`` run: a :class:`RepeatedRun` where the kernel gets ``given``.

    That is when the arrays need no cast, copy or broadcast (then the problem's arrays
    are views of exactly the given ones) and the backend is a compiled one.
    """
    dtype = problem.storage_dtype
    direct = (chosen.run_kernel is not None and RepeatedRun.applies(problem)
              and all(x.dtype == dtype and (x.strides[-1] == x.itemsize or x.shape[-1] <= 1)
                      for x in given)
              and given[0].shape[0] == given[1].shape[0] == given[2].shape[0])
    if len(_repeated) >= _MAX_REPEATED:
        _repeated.clear()
    _repeated[key] = (_backends._load, RepeatedRun(chosen.run_kernel, problem, settings)) \
        if direct else None


def _kernel_writable(out, storage_dtype):
    """Whether a kernel can write ``out`` itself: the storage dtype, whole-element strides."""
    return (out.dtype == storage_dtype and out.flags.aligned
            and all(stride % out.itemsize == 0 for stride in out.strides))


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Merge two attention results computed over disjoint sets of keys.

    If ``(out_a, lse_a)`` is attention over keys ``A`` and ``(out_b, lse_b)`` over
    keys ``B`` (both from ``attention(..., return_lse=True)``), the result equals
    attention over ``A ∪ B``.  Computed in float64 with the larger lse factored
    out, so nothing overflows; a row that is -inf in both stays zeros with lse -inf.
    A NaN lse (the lse of a row that saw a NaN) makes that row NaN, output and lse.

    Parameters
    ----------
    out_a, out_b : array_like, shape (..., Dv)
    lse_a, lse_b : array_like, shape (...)
        Natural log-sum-exps: finite, -inf (no key in that part) or NaN; +inf is
        rejected (no attention result has it).

    Returns
    -------
    out : ndarray, shape (..., Dv), dtype ``np.result_type(out_a, out_b)``
        (float16 and bfloat16 are merged in float64 and rounded once).
    lse : ndarray, shape (...), dtype ``np.result_type(lse_a, lse_b)``

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 4, 8))
    >>> a = fastattn.attention(q, k[:2], v[:2], return_lse=True)
    >>> b = fastattn.attention(q, k[2:], v[2:], return_lse=True)
    >>> out, lse = fastattn.merge_attention(*a, *b)
    >>> bool(np.allclose(out, fastattn.attention(q, k, v)))
    True
    """
    names = ("out_a", "lse_a", "out_b", "lse_b")
    arrays = [as_array(name, x) for name, x in zip(names, (out_a, lse_a, out_b, lse_b))]
    for name, array in zip(names, arrays):
        if not is_float(array.dtype):
            raise TypeError(f"{describe(name, array)}: expected a float array (float16, "
                            f"bfloat16, float32 or float64)")
    out_a, lse_a, out_b, lse_b = arrays
    out_dtype = result_type(("out_a", out_a), ("out_b", out_b))
    lse_dtype = result_type(("lse_a", lse_a), ("lse_b", lse_b))
    if out_a.shape != out_b.shape or out_a.ndim == 0:
        raise ValueError(f"out_a and out_b must have one shape (..., Dv): "
                         f"{describe('out_a', out_a)}, {describe('out_b', out_b)}")
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.shape != out_a.shape[:-1]:
            raise ValueError(f"{describe(name, lse)} must have shape {out_a.shape[:-1]} "
                             f"(out without its last axis)")
        if np.isposinf(lse).any():
            raise ValueError(f"{describe(name, lse)} holds +inf, which no attention result "
                             f"has; a log-sum-exp is finite, -inf (no visible key) or NaN")
    out, lse = merge_states(out_a, lse_a, out_b, lse_b)
    return out.astype(out_dtype, copy=False), lse.astype(lse_dtype, copy=False)
