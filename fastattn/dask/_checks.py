"""Argument checks of :func:`fastattn.dask.attention`, with the messages of the NumPy API.

The checks of :mod:`fastattn._validation` look at dtypes and shapes only, except for
the NaN / +inf test of an additive mask.  Here they run on zero-byte *stand-ins*:
NumPy arrays with the caller's shape and dtype whose strides are all zero, so that a
lazy array is never computed and nothing of its size is allocated on the client.

An additive mask given as a dask array is checked for NaN and +inf block by block, when
the graph runs (by :func:`fastattn.attention` on each block); a NumPy mask is checked
here, in full, exactly as :func:`fastattn.attention` does.
"""

from dataclasses import dataclass

import numpy as np

from .._contract import Band
from .._validation import (HeadShapes, as_float_array, broadcast_batch, check_shapes, describe,
                           normalise_causal, normalise_scale, normalise_window, prepare_mask,
                           with_head_axis)


@dataclass(frozen=True)
class LazyProblem(HeadShapes):
    """A checked call: ``q (*batch, Hq, Lq, D)``, ``k (*batch, Hk, Lk, D)``, ``v (..., Dv)``.

    The arrays are dask arrays with ``len(batch_shape)`` leading axes each (size 1 where
    they broadcast), 2-D inputs given a head axis; ``mask`` is None or a dask array
    with ``len(batch_shape) + 3`` axes, each of the scores' size or 1.
    """

    q: object
    k: object
    v: object
    mask: object
    batch_shape: tuple
    scale: float
    band: tuple
    compute_dtype: np.dtype
    result_dtype: np.dtype
    squeeze_heads: bool


def standin(array):
    """A zero-byte NumPy array with ``array``'s shape and dtype (all strides zero)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype=array.dtype), shape=array.shape,
                                           strides=(0,) * len(array.shape))


def check_arguments(q, k, v, mask, causal, window, scale):
    """Return the :class:`LazyProblem` of the arguments, or raise as ``fastattn.attention`` does."""
    arrays = [_as_lazy(x) for x in (q, k, v)]
    given = [as_float_array(name, standin(x)) for name, x in zip("qkv", arrays)]
    squeeze_heads = all(x.ndim == 2 for x in given)
    shaped = [with_head_axis(x) for x in given]
    check_shapes(*shaped, given)
    batch_shape = broadcast_batch(*shaped, given)

    result_dtype = np.result_type(*(x.dtype for x in given))
    compute_dtype = np.dtype(np.float32) if result_dtype == np.float16 else result_dtype
    causal = normalise_causal(causal)
    window = normalise_window(window)
    scale = normalise_scale(scale, given[0].shape[-1])

    n_batch = len(batch_shape)
    q, k, v = (_leading_axes(x[None] if x.ndim == 2 else x, n_batch + 3) for x in arrays)
    heads, lq, lk = q.shape[-3], q.shape[-2], k.shape[-2]
    scores_shape = batch_shape + (heads, lq, lk)
    if mask is not None:
        mask = _check_mask(mask, scores_shape, compute_dtype)
        mask = _leading_axes(mask, len(scores_shape))
    for name, x in (("q", q), ("k", k), ("v", v), ("mask", mask)):
        if x is not None and any(np.isnan(size) for dim in x.chunks for size in dim):
            raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() "
                             f"first")
    return LazyProblem(q=q, k=k, v=v, mask=mask, batch_shape=batch_shape, scale=scale,
                       band=Band.from_alignment(lq, lk, causal, window),
                       compute_dtype=np.dtype(compute_dtype), result_dtype=np.dtype(result_dtype),
                       squeeze_heads=squeeze_heads)


def _as_lazy(x):
    """A dask array of ``x``: dask arrays as they are, anything else through NumPy."""
    import dask.array as da

    if isinstance(x, da.Array):
        return x
    return da.asarray(np.asarray(x))


def _leading_axes(x, ndim):
    """``x`` with size-1 axes prepended up to ``ndim`` axes."""
    missing = ndim - x.ndim
    return x[(None,) * missing] if missing > 0 else x


def _check_mask(mask, scores_shape, compute_dtype):
    """Check a mask's dtype and shape; a NumPy mask also for NaN/+inf. Returns a dask array."""
    import dask.array as da

    if not isinstance(mask, da.Array):
        array = np.asarray(mask)
        prepare_mask(array, scores_shape, compute_dtype)  # every check, values included
        return da.asarray(array)
    kind = mask.dtype.kind
    if kind != "f":  # bool, int, anything else: the NumPy checks, cheap on a stand-in
        prepare_mask(standin(mask), scores_shape, compute_dtype)
        return mask
    try:
        broadcast = np.broadcast_shapes(mask.shape, scores_shape)
    except ValueError:
        broadcast = None
    if broadcast != scores_shape:
        raise ValueError(f"{describe('mask', mask)} does not broadcast to the scores "
                         f"shape (..., Hq, Lq, Lk) = {scores_shape}")
    return mask
