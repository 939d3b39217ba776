"""Exact attention probabilities for any block of rows and columns, in linear memory.

The probabilities of query ``i`` are ``p_ij = exp(s_ij - lse_i)``, where ``s_ij`` is the
scaled (and masked) score and ``lse_i`` the log-sum-exp of row ``i``.  The tiled pass
of :func:`fastattn.attention` returns ``lse`` in ``O(N)`` memory; with it any block of
``p`` is recomputed exactly, one small tile at a time.  So a 200 × 200 window of a
100 000-token sequence costs the memory of the window plus ``O(N)``, never ``N²``.

The lse comes from the tiled kernels in their lse-only mode, run only over the span
of the requested rows and the keys that the band lets those rows see
(:meth:`fastattn._contract.Band.restrict`).
"""

import dataclasses

import numpy as np

from ._backends import resolve
from ._config import get_config
from ._contract import MASK_ADD, MASK_KEEP, NO_MODIFIERS
from ._validation import validate

BLOCK_ROWS = 256
"""Query rows per recomputed tile."""

BLOCK_COLS = 1024
"""Keys per recomputed tile."""


def attention_weights(q, k, mask=None, *, causal=False, window=None, scale=None,
                      softcap=None, alibi_slopes=None, sinks=None, heads=None, rows=None,
                      cols=None):
    """Exact attention probabilities ``softmax(q kᵀ · scale + mask)`` of a block.

    The arguments mean what they mean in :func:`fastattn.attention` (values are
    not needed).  The per-row log-sum-exp comes from the tiled pass of
    :func:`fastattn.attention` (linear memory, the fastest available backend);
    the requested block is then recomputed tile by tile, so the memory used is
    that of the result plus ``O(N)``, never ``Lq × Lk``.

    Parameters
    ----------
    q : array_like, shape (..., Hq, Lq, D) or (Lq, D)
        Queries.
    k : array_like, shape (..., Hk, Lk, D) or (Lk, D)
        Keys; ``Hk`` divides ``Hq`` and query head ``h`` uses kv head
        ``h // (Hq // Hk)`` (grouped-query attention).
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., Hq, Lq, Lk)``.  Bool: True means the query may
        attend the key.  Float: added to the scaled scores.
    causal : bool or {"upper_left", "lower_right"}, default False
        As in :func:`fastattn.attention`.
    window : tuple (left, right), optional
        As in :func:`fastattn.attention`: measured from the causal diagonal.
    scale : float, optional
        Default ``1 / sqrt(D)``.
    softcap, alibi_slopes, sinks : optional
        Score modifiers, as in :func:`fastattn.attention`.  With sinks, a full
        row sums to less than 1: the sink takes the rest.
    heads : sequence of int, optional
        Query heads to return, in this order (negative indices count from the
        end); default all.  A single int is taken as ``[int]``: the head axis is
        always kept.
    rows : slice or sequence of int or bool array, optional
        Query rows to return; default all.  A single int keeps the axis.
    cols : slice or sequence of int or bool array, optional
        Keys (columns) to return; default all.  A single int keeps the axis.

    Returns
    -------
    weights : ndarray, shape (..., len(heads), len(rows), len(cols))
        In the compute dtype: float32 for float16, bfloat16 (and float32)
        inputs, float64 for float64.  Each full row sums to 1; masked entries
        are exactly 0 and a row whose keys are all masked is all 0.  With 2-D
        ``q`` and ``k`` and ``heads=None`` the head axis is dropped:
        ``(len(rows), len(cols))``.

    Examples
    --------
    One query against three keys (scores 0.84, 1.68, 0.42 before the 1/sqrt(2) scale):

    >>> import numpy as np, fastattn
    >>> q = np.array([[0.3, 0.6]])
    >>> k = np.array([[0.8, 1.0], [1.6, 2.0], [0.4, 0.5]])
    >>> fastattn.attention_weights(q, k).round(4)
    array([[0.2814, 0.5096, 0.2091]])

    A window of a long causal sequence, in linear memory:

    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5000, 16))          # (heads, L, D)
    >>> w = fastattn.attention_weights(x, x, causal=True, rows=slice(100, 104),
    ...                                cols=slice(100, 104))
    >>> w.shape
    (2, 4, 4)
    >>> bool(np.all(np.triu(w, 1) == 0))               # keys after the query: 0
    True
    """
    problem = validate(q, k, k, mask, causal, window, scale, softcap, alibi_slopes, sinks)
    n_heads, lq, lk = problem.heads, problem.q.shape[-2], problem.k.shape[-2]
    head_idx = _indices("heads", heads, n_heads)
    row_idx = _indices("rows", rows, lq)
    col_idx = _indices("cols", cols, lk)

    lse = _row_lse(problem, head_idx, row_idx)
    weights = np.zeros(problem.batch_shape + (len(head_idx), len(row_idx), len(col_idx)),
                       dtype=problem.compute_dtype)
    if weights.size:
        _fill_weights(problem, head_idx, row_idx, col_idx, lse, weights)
    if problem.squeeze_heads and heads is None:
        weights = weights[0]
    return weights


def _indices(name, value, size):
    """Normalise a ``heads``/``rows``/``cols`` selection to a 1-D intp array in range."""
    if value is None:
        return np.arange(size, dtype=np.intp)
    if isinstance(value, slice):
        return np.arange(size, dtype=np.intp)[value]
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = [value]
    array = np.asarray(value)
    if array.dtype == bool:
        if array.shape != (size,):
            raise ValueError(f"{name}: a bool selection must have shape ({size},), "
                             f"got {array.shape}")
        return np.flatnonzero(array).astype(np.intp)
    if array.size == 0:
        return np.zeros(0, dtype=np.intp)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must be None, a slice, or a sequence of ints (or bools); "
                        f"got {value!r} (dtype {array.dtype})")
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if array.min() < -size or array.max() >= size:
        raise IndexError(f"{name} {array.tolist()} out of range for size {size} "
                         f"(valid: {-size} .. {size - 1})")
    return np.where(array < 0, array + size, array).astype(np.intp)


def _row_lse(problem, head_idx, row_idx):
    """The log-sum-exp ``(*batch, len(head_idx), len(row_idx))`` of the selected rows."""
    lse = np.full(problem.batch_shape + (len(head_idx), len(row_idx)), -np.inf,
                  dtype=problem.compute_dtype)
    lk = problem.k.shape[-2]
    span = None if lse.size == 0 else problem.band.restrict(
        int(row_idx.min()), int(row_idx.max()) + 1, 0, lk)
    if span is None:
        return lse
    r0, r1, c0, c1, band = span
    q_sub, k_sub = problem.q[..., r0:r1, :], problem.k[..., c0:c1, :]
    if not np.array_equal(head_idx, np.arange(problem.heads)):
        q_sub = q_sub[..., head_idx, :, :]  # one kv head per selected query head
        k_sub = k_sub[..., head_idx // problem.group, :, :]
    sub = dataclasses.replace(problem, q=q_sub, k=k_sub, v=k_sub, band=band,
                              mask=_sub_mask(problem, head_idx, r0, r1, c0, c1),
                              modifiers=_sub_modifiers(problem.modifiers, head_idx, c0 - r0))
    settings = get_config()
    _, sub_lse = resolve(settings["backend"], sub).run(sub, settings, lse_only=True)

    inside = (row_idx >= r0) & (row_idx < r1)
    lse[..., inside] = sub_lse[..., row_idx[inside] - r0]
    return lse


def _sub_modifiers(modifiers, head_idx, offset):
    """The modifiers of the selected heads, in coordinates whose keys start ``offset`` later
    than their rows (the ALiBi diagonal moves by ``-offset``)."""
    if modifiers == NO_MODIFIERS:
        return modifiers
    pick = (lambda values: None if values is None else np.ascontiguousarray(values[head_idx]))
    return dataclasses.replace(modifiers, alibi_slopes=pick(modifiers.alibi_slopes),
                               sinks=pick(modifiers.sinks),
                               diagonal=modifiers.diagonal - offset)


def _sub_mask(problem, head_idx, r0, r1, c0, c1):
    """The mask of rows ``r0:r1``, keys ``c0:c1`` and the selected heads, as a broadcast view."""
    mask = problem.mask
    if mask is None:
        return None
    # Collapse broadcast (zero-stride) axes to length 1 so no selection copies them.
    mask = mask[tuple(slice(0, 1) if stride == 0 and length > 1 else slice(None)
                      for stride, length in zip(mask.strides, mask.shape))]
    rows = slice(r0, r1) if mask.shape[-2] > 1 else slice(None)
    keys = slice(c0, c1) if mask.shape[-1] > 1 else slice(None)
    mask = mask[..., rows, keys]
    if mask.shape[-3] > 1:
        mask = mask[..., head_idx, :, :]
    return np.broadcast_to(mask, problem.batch_shape + (len(head_idx), r1 - r0, c1 - c0))


def _fill_weights(problem, head_idx, row_idx, col_idx, lse, weights):
    """Write ``exp(score - lse)`` of the selected block into ``weights``, tile by tile."""
    for batch in np.ndindex(*problem.batch_shape):
        for position, head in enumerate(head_idx):
            q = problem.q[batch + (head,)]
            k = problem.k[batch + (head // problem.group,)]
            mask = None if problem.mask is None else problem.mask[batch + (head,)]
            for r in range(0, len(row_idx), BLOCK_ROWS):
                rows = row_idx[r:r + BLOCK_ROWS]
                q_block = q[rows].astype(np.float64) * problem.scale
                row_lse = lse[batch + (position, slice(r, r + BLOCK_ROWS))].astype(np.float64)
                alive = ~np.isneginf(row_lse)[:, None]
                for c in range(0, len(col_idx), BLOCK_COLS):
                    cols = col_idx[c:c + BLOCK_COLS]
                    scores = _modified(problem.modifiers, q_block @ k[cols].astype(np.float64).T,
                                       head, rows, cols)
                    keep = problem.band.visible(rows, cols) & alive
                    if problem.mask_kind == MASK_KEEP:
                        keep &= mask[np.ix_(rows, cols)].astype(bool)
                    elif problem.mask_kind == MASK_ADD:
                        tile = mask[np.ix_(rows, cols)]
                        keep &= ~np.isneginf(tile)
                        scores += np.where(keep, tile, 0.0)
                    with np.errstate(invalid="ignore", over="ignore"):
                        tile_weights = np.exp(scores - row_lse[:, None])
                    weights[batch + (position, slice(r, r + BLOCK_ROWS),
                                     slice(c, c + BLOCK_COLS))] = np.where(
                        keep, tile_weights, 0.0)


def _modified(modifiers, scores, head, rows, cols):
    """A tile of scaled scores with the softcap and ALiBi of query head ``head`` applied."""
    if modifiers.softcap:
        scores = modifiers.softcap * np.tanh(scores / modifiers.softcap)
    if modifiers.alibi_slopes is not None:
        distance = np.abs(cols[None, :] - rows[:, None] - modifiers.diagonal)
        scores = scores - float(modifiers.alibi_slopes[head]) * distance
    return scores
