"""Exact merge of two attention states computed over disjoint key sets."""

import numpy as np


def merge_states(out_a, lse_a, out_b, lse_b):
    """Combine ``(out, lse)`` pairs row by row, in float64; -inf rows carry no weight.

    With ``m = max(lse_a, lse_b)`` the weights are ``exp(lse_a - m)`` and
    ``exp(lse_b - m)``, at most 1, so nothing overflows; a row that is -inf in
    both stays zero with lse -inf.
    """
    lse_a = np.asarray(lse_a, dtype=np.float64)
    lse_b = np.asarray(lse_b, dtype=np.float64)
    top = np.maximum(lse_a, lse_b)
    empty = np.isneginf(top)
    top = np.where(empty, 0.0, top)
    weight_a = np.exp(lse_a - top)
    weight_b = np.exp(lse_b - top)
    total = weight_a + weight_b
    safe_total = np.where(empty, 1.0, total)
    share_a = (weight_a / safe_total)[..., None]
    share_b = (weight_b / safe_total)[..., None]
    out = (np.where(share_a > 0, share_a * out_a, 0.0)
           + np.where(share_b > 0, share_b * out_b, 0.0))
    with np.errstate(divide="ignore"):
        lse = np.where(empty, -np.inf, top + np.log(total))
    return out, lse
