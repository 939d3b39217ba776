"""The public functions of fastattn."""

import numpy as np

from ._backends import resolve
from ._config import get_config
from ._merge import merge_states
from ._validation import (as_array, check_flag, check_out, describe, explain_torch_keywords,
                          validate)


@explain_torch_keywords
def attention(q, k, v, mask=None, *, causal=False, window=None, scale=None,
              return_lse=False, backend=None, out=None):
    """Exact scaled dot-product attention, ``softmax(q kᵀ · scale + mask) v``.

    Parameters
    ----------
    q : array_like, shape (..., Hq, Lq, D) or (Lq, D)
        Queries.  Any strides; a transposed ``(B, L, H, D)`` array is not copied
        when its last axis is contiguous.
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
    return_lse : bool, default False
        Also return the natural log-sum-exp of each row's scaled scores.
    backend : {"naive", "numba", "cython", "auto"}, optional
        Default: the ``backend`` setting (see :func:`config_context`), "auto".
    out : ndarray, optional
        Written in place and returned; its shape and dtype must be the result's.
        Any strides; when its dtype is the compute dtype the kernel writes it
        directly, without an output-sized temporary.

    Returns
    -------
    out : ndarray, shape (..., Hq, Lq, Dv)
        In ``np.result_type(q, k, v)``; float16 inputs are computed in float32.
        A row whose keys are all masked is zeros.
    lse : ndarray, shape (..., Hq, Lq)
        Only with ``return_lse=True``; in the compute dtype; -inf for fully
        masked rows.

    Raises
    ------
    TypeError
        For a wrong type of argument, with what to do; also for torch's keyword
        names: ``is_causal=`` (use ``causal=``), ``attn_mask=`` (use ``mask=``),
        ``dropout_p=`` (not supported) and ``enable_gqa=`` (automatic), and for
        torch tensors NumPy cannot read (requiring grad: ``.detach()``;
        bfloat16: ``.float()``).
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
    """
    problem = validate(q, k, v, mask, causal, window, scale)
    return_lse = check_flag("return_lse", return_lse)
    if out is not None:
        check_out(out, problem)
    settings = get_config()
    chosen = resolve(backend if backend is not None else settings["backend"], problem)
    direct = out is not None and _kernel_writable(out, problem.compute_dtype)
    kernel_out = (out[None] if problem.squeeze_heads else out) if direct else None  # a view
    result, lse = chosen.run(problem, settings, out=kernel_out)
    if problem.squeeze_heads:
        result, lse = result[0], lse[0]
    if out is None:
        out = result.astype(problem.result_dtype, copy=False)
    elif not direct:  # float16 (computed in float32), or a layout the kernels cannot write
        np.copyto(out, result, casting="same_kind")
    return (out, lse) if return_lse else out


def _kernel_writable(out, compute_dtype):
    """Whether a kernel can write ``out`` itself: the compute dtype, whole-element strides."""
    return (out.dtype == compute_dtype and out.flags.aligned
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
        if array.dtype.kind != "f":
            raise TypeError(f"{describe(name, array)}: expected a float array")
    out_a, lse_a, out_b, lse_b = arrays
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
    return (out.astype(np.result_type(out_a, out_b), copy=False),
            lse.astype(np.result_type(lse_a, lse_b), copy=False))
