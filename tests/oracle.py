"""An independent loop oracle for attention, in float64.

Written from the public contract only (the docstring of ``fastattn.attention`` and the
semantics table of README.md), without any of fastattn's code: plain Python loops over the
batch, the query heads, the query rows and the keys, one score at a time, so that it shares
no vectorised trick (and no bug) with the package.  It is slow; keep the shapes small.

The rules it implements: a key is visible to a query row when the causal/window band, a
bool mask (True = may attend) and an additive mask (an entry of -inf hides the key) all
let it through.  An invisible key contributes nothing, even when its score or value is
NaN; a row with no visible key is zeros with lse -inf.  Everything else is plain IEEE
arithmetic: a NaN that a row sees makes the row NaN, and so does a +inf score.
"""

import math

import numpy as np


def visible(i, j, lq, lk, causal=False, window=None):
    """Whether query row ``i`` may see key ``j`` under ``causal`` and ``window``.

    The diagonal of row ``i`` is key ``i`` (no causal, True, "upper_left") or key
    ``i + lk - lq`` ("lower_right"); the window ``(left, right)`` is measured from it
    and ``causal`` hides every key right of it.
    """
    if causal is True:
        causal = "upper_left"
    diagonal = i + lk - lq if causal == "lower_right" else i
    if causal and j > diagonal:
        return False
    if window is not None:
        left, right = window
        if left is not None and j < diagonal - left:
            return False
        if right is not None and j > diagonal + right:
            return False
    return True


def hidden_by(entry):
    """Whether one mask entry hides its key: a bool False, or an additive -inf."""
    if entry is None:
        return False
    if isinstance(entry, (bool, np.bool_)):
        return not entry
    return float(entry) == -math.inf


def attention_oracle(q, k, v, mask=None, causal=False, window=None, scale=None):
    """Return ``(out, lse)`` in float64 for the public ``attention`` semantics."""
    q, k, v = (np.asarray(x).astype(np.float64) for x in (q, k, v))
    two_d = q.ndim == 2 and k.ndim == 2 and v.ndim == 2
    q, k, v = (x[None] if x.ndim == 2 else x for x in (q, k, v))
    batch = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    hq, lq, d = q.shape[-3:]
    hk, lk, dv = v.shape[-3:]
    group = hq // hk
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    q = np.broadcast_to(q, batch + q.shape[-3:])
    k = np.broadcast_to(k, batch + k.shape[-3:])
    v = np.broadcast_to(v, batch + v.shape[-3:])
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask), batch + (hq, lq, lk))

    out = np.zeros(batch + (hq, lq, dv))
    lse = np.full(batch + (hq, lq), -np.inf)
    for b in np.ndindex(*batch):
        for h in range(hq):
            kv_head = h // group
            for i in range(lq):
                scores, values = [], []
                for j in range(lk):
                    entry = None if mask is None else mask[b + (h, i, j)]
                    if not visible(i, j, lq, lk, causal, window) or hidden_by(entry):
                        continue
                    score = scale * sum(float(x) * float(y)
                                        for x, y in zip(q[b + (h, i)], k[b + (kv_head, j)]))
                    if entry is not None and mask.dtype != bool:
                        score += float(entry)
                    if score == -math.inf:
                        continue  # exp(-inf) = 0: the key adds nothing
                    scores.append(score)
                    values.append(v[b + (kv_head, j)])
                if not scores:
                    continue  # fully masked row: zeros, lse -inf
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                row = np.zeros(dv)
                for w, value in zip(weights, values):
                    row += w * value
                out[b + (h, i)] = row / total
                lse[b + (h, i)] = top + math.log(total)
    if two_d:
        return out[0], lse[0]
    return out, lse


def scores_oracle(q, k, scale):
    """The scaled score matrix of 2-D ``q (Lq, D)`` and ``k (Lk, D)``, by loops."""
    q, k = np.asarray(q, dtype=np.float64), np.asarray(k, dtype=np.float64)
    scale = float(scale)
    scores = np.empty((q.shape[0], k.shape[0]))
    for i in range(q.shape[0]):
        for j in range(k.shape[0]):
            scores[i, j] = scale * sum(float(x) * float(y) for x, y in zip(q[i], k[j]))
    return scores
