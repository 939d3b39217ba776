"""The naive reference: the full score matrix, in float64, with every masking rule.

This is the definition of correct that every tiled backend is tested against.  It
materialises ``(*batch, Hq, Lq, Lk)`` scores, so its memory grows as ``Lq * Lk``.
"""

import numpy as np


def band_keep(lq, lk, band):
    """Bool ``(lq, lk)``: where query ``i`` may see key ``j`` under the causal/window band."""
    offsets = np.arange(lk)[None, :] - np.arange(lq)[:, None]
    return (offsets >= band[0]) & (offsets <= band[1])


def naive_attention(problem):
    """``(out, lse)`` of ``problem`` in float64, shaped ``out_shape`` and ``out_shape[:-1]``."""
    q = problem.q.astype(np.float64)
    k = np.repeat(problem.k.astype(np.float64), problem.group, axis=-3)
    v = np.repeat(problem.v.astype(np.float64), problem.group, axis=-3)

    scores = (q @ np.swapaxes(k, -1, -2)) * problem.scale
    keep = band_keep(q.shape[-2], k.shape[-2], problem.band)
    if problem.mask is not None and problem.mask_is_bool:
        keep = keep & problem.mask.astype(bool)
    elif problem.mask is not None:
        scores = scores + problem.mask
    scores = np.where(keep, scores, -np.inf)

    row_max = scores.max(axis=-1, keepdims=True, initial=-np.inf)
    empty = np.isneginf(row_max)
    weights = np.exp(scores - np.where(empty, 0.0, row_max))
    total = weights.sum(axis=-1, keepdims=True)
    out = (weights @ v) / np.where(empty, 1.0, total)
    with np.errstate(divide="ignore"):
        lse = np.where(empty, -np.inf, row_max + np.log(total))[..., 0]
    return out, lse
