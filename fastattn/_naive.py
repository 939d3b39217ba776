"""The naive reference: the full score matrix, in float64, with every masking rule.

This is the definition of correct that every tiled backend is tested against.  It
materialises ``(*batch, Hq, Lq, Lk)`` scores, so its memory grows as ``Lq * Lk``.

The semantics, in full-matrix form (the tiled kernels keep the same invariant, see
"The kernel contract" in docs/design.md):

* a key is *visible* to a query when the band, a bool mask and an additive mask
  (``-inf`` entries) all let it through; an invisible key has weight exactly 0 and
  contributes nothing, even if its score or value is NaN;
* a row with no visible key is zeros with lse ``-inf``;
* otherwise IEEE arithmetic: a NaN score or value that a row sees makes it NaN, and
  a ``+inf`` score gives NaN (``inf - inf``), never an empty row;
* score modifiers (:class:`fastattn._contract.ScoreModifiers`): the softcap bends the
  scaled scores first, then ALiBi and an additive mask add to them; a sink joins each
  row's denominator as one more logit with no value (an empty row: zeros, lse = sink).
"""

import numpy as np

from ._contract import MASK_ADD, MASK_KEEP, NO_MODIFIERS

ROW_CHUNK = 64
"""Query rows per step of the weighted sum when some value is not finite."""


def naive_attention(problem, lse_only=False):
    """``(out, lse)`` of ``problem`` in float64, shaped ``out_shape`` and ``out_shape[:-1]``.

    With ``lse_only`` the values are not read and ``out`` is None.
    """
    weights, lse = _weights_and_lse(problem)
    if lse_only:
        return None, lse
    v = np.repeat(problem.v.astype(np.float64), problem.group, axis=-3)
    return _weighted_sum(weights, v), lse


def _weights_and_lse(problem):
    """Normalised weights (zeros where invisible or the row is empty) and the lse."""
    scores, _ = _modified_scores(problem)
    lq, lk = scores.shape[-2:]
    visible = problem.band.visible(np.arange(lq), np.arange(lk))
    if problem.mask_kind == MASK_KEEP:
        visible = visible & problem.mask.astype(bool)
    elif problem.mask_kind == MASK_ADD:
        visible = visible & ~np.isneginf(problem.mask)
        scores = scores + np.where(np.isneginf(problem.mask), 0.0, problem.mask)
    scores = np.where(visible, scores, -np.inf)

    sinks = _per_head(problem, "sinks", lq)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        row_max = scores.max(axis=-1, keepdims=True, initial=-np.inf)  # NaN if a NaN is seen
        empty = ~visible.any(axis=-1, keepdims=True)
        if sinks is not None:  # a finite sink: no row is empty
            row_max, empty = np.maximum(row_max, sinks), np.zeros_like(empty)
        top = np.where(empty, 0.0, row_max)
        weights = np.exp(scores - top)
        total = weights.sum(axis=-1, keepdims=True)
        if sinks is not None:
            total = total + np.exp(sinks - top)
        lse = np.where(empty, -np.inf, top + np.log(total))[..., 0]
        weights = np.where(visible, weights / np.where(empty, 1.0, total), 0.0)
    return weights, lse


def _modified_scores(problem):
    """The scaled scores with the softcap and ALiBi applied, in float64, and the
    softcap's derivative ``1 - tanh²`` (None without a softcap)."""
    modifiers = getattr(problem, "modifiers", NO_MODIFIERS)
    q = problem.q.astype(np.float64)
    k = np.repeat(problem.k.astype(np.float64), problem.group, axis=-3)
    scores = (q @ np.swapaxes(k, -1, -2)) * problem.scale
    lq, lk = scores.shape[-2:]
    slope = None
    if modifiers.softcap:
        bent = np.tanh(scores / modifiers.softcap)
        scores, slope = modifiers.softcap * bent, 1.0 - bent * bent
    slopes = _per_head(problem, "alibi_slopes", lq)
    if slopes is not None:
        distance = np.abs(np.arange(lk)[None, :] - np.arange(lq)[:, None] - modifiers.diagonal)
        scores = scores - slopes * distance
    return scores, slope


def _per_head(problem, name, lq):
    """A per-head modifier as float64 ``(Hq, 1, 1)`` (None when absent)."""
    values = getattr(getattr(problem, "modifiers", NO_MODIFIERS), name)
    return None if values is None else np.asarray(values, np.float64)[:, None, None]


def _weighted_sum(weights, v):
    """``weights @ v`` where a zero weight contributes nothing even to a non-finite value."""
    if np.isfinite(v).all():
        return weights @ v
    out = np.empty(weights.shape[:-1] + v.shape[-1:])
    for r in range(0, weights.shape[-2], ROW_CHUNK):
        w = weights[..., r:r + ROW_CHUNK, :, None]
        terms = np.where(w != 0, w * v[..., None, :, :], 0.0)
        out[..., r:r + ROW_CHUNK, :] = terms.sum(axis=-2)
    return out


def naive_backward(problem, dout):
    """``(dq, dk, dv)`` in float64: the gradient of ``sum(dout * out)`` with full matrices.

    ``dout`` has the problem's ``out_shape``; the gradients have the shapes of
    ``problem.q``, ``problem.k``, ``problem.v`` (batch axes broadcast; each kv head's
    gradient summed over its query group).  With ``W`` the weights above and
    ``delta = rowsum(dout * out)``: ``dV = Wᵀ dO``, ``dS = W (dO Vᵀ - delta)`` (0 where
    ``W`` is 0), ``dQ = dS K scale``, ``dK = dSᵀ Q scale``.  A zero weight contributes
    nothing to any product, even against a NaN, so masked keys and fully masked rows
    (zero ``dq``) stay out of every gradient; the mask itself is a constant.  A softcap
    multiplies ``dS`` by its derivative; ALiBi slopes and sinks get no gradient here
    (see :func:`fastattn._sinks.sink_gradient`).
    """
    weights, _ = _weights_and_lse(problem)
    _, softcap_slope = _modified_scores(problem)
    group = problem.group
    q = problem.q.astype(np.float64)
    k, v = (np.repeat(x.astype(np.float64), group, axis=-3) for x in (problem.k, problem.v))
    dout = np.asarray(dout, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        delta = np.sum(dout * _weighted_sum(weights, v), axis=-1, keepdims=True)
        d_scores = dout @ np.swapaxes(v, -1, -2) - delta
        d_scores = np.where(weights != 0, weights * d_scores, 0.0)
        if softcap_slope is not None:  # a masked key's slope may be NaN: keep its 0
            d_scores = np.where(weights != 0, d_scores * softcap_slope, 0.0)
    dq = _weighted_sum(d_scores, k) * problem.scale
    dk = _weighted_sum(np.swapaxes(d_scores, -1, -2), q) * problem.scale
    dv = _weighted_sum(np.swapaxes(weights, -1, -2), dout)
    return dq, _sum_query_groups(dk, group), _sum_query_groups(dv, group)


def _sum_query_groups(grad, group):
    """``(..., Hk * group, L, D)`` -> ``(..., Hk, L, D)``: each kv head sums its query heads."""
    shape = grad.shape
    return grad.reshape(shape[:-3] + (shape[-3] // group, group) + shape[-2:]).sum(axis=-3)
