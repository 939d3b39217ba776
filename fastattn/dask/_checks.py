"""Argument checks of :func:`fastattn.dask.attention`, with the messages of the NumPy API.

The decisions are those of :func:`fastattn._validation.check_call`, which reads only
the shapes and dtypes of its arguments: it runs here on the dask arrays themselves, so
a lazy array is never computed and nothing of its size is allocated on the client.

An additive mask given as a dask array is checked for NaN and +inf block by block, when
the graph runs (by :func:`fastattn._validation.validate` in each task); a NumPy mask is
checked here, in full, exactly as :func:`fastattn.attention` does.
"""

import math
from dataclasses import dataclass

import numpy as np

from .._contract import Band
from .._validation import HeadShapes, as_array, check_call, prepare_mask


@dataclass(frozen=True)
class LazyProblem(HeadShapes):
    """A checked call: ``q (*batch, Hq, Lq, D)``, ``k (*batch, Hk, Lk, D)``, ``v (..., Dv)``.

    The arrays are dask arrays with ``len(batch_shape)`` leading axes each (size 1 where
    they broadcast), 2-D inputs given a head axis; ``mask`` is None or a dask array
    with ``len(batch_shape) + 3`` axes, each of the scores' size or 1.  The other fields
    are those of :class:`fastattn._validation.CallSpec`.
    """

    q: object
    k: object
    v: object
    mask: object
    mask_kind: int
    batch_shape: tuple
    scale: float
    band: Band
    compute_dtype: np.dtype
    result_dtype: np.dtype
    squeeze_heads: bool


def check_arguments(q, k, v, mask, causal, window, scale):
    """The :class:`LazyProblem` of the arguments, or the error ``fastattn.attention`` raises."""
    import dask.array as da

    q, k, v = (_as_lazy(name, x) for name, x in zip("qkv", (q, k, v)))
    if mask is not None and not isinstance(mask, da.Array):
        mask = as_array("mask", mask)
    for name, x in (("q", q), ("k", k), ("v", v), ("mask", mask)):
        _check_known_chunks(name, x)
    spec = check_call(q, k, v, mask, causal, window, scale)
    if isinstance(mask, np.ndarray):
        prepare_mask(mask, spec)  # the values of an additive mask, at once
        mask = da.asarray(mask)
    n_axes = len(spec.batch_shape) + 3
    q, k, v = (_leading_axes(x[None] if x.ndim == 2 else x, n_axes) for x in (q, k, v))
    if mask is not None:
        mask = _leading_axes(mask, n_axes)
    return LazyProblem(q=q, k=k, v=v, mask=mask, **spec.problem_fields())


def _as_lazy(name, x):
    """A dask array of ``x``: dask arrays as they are, anything else through NumPy."""
    import dask.array as da

    if isinstance(x, da.Array):
        return x
    return da.asarray(as_array(name, x))


def _check_known_chunks(name, x):
    """A dask array whose chunk sizes are unknown (after boolean indexing) cannot be planned."""
    if x is not None and any(math.isnan(size) for size in x.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {x.shape}); call "
                         f"{name}.compute_chunk_sizes() first")


def _leading_axes(x, ndim):
    """``x`` with size-1 axes prepended up to ``ndim`` axes."""
    missing = ndim - x.ndim
    return x[(None,) * missing] if missing > 0 else x
