"""Exact merges of attention states computed over disjoint key sets.

A state is ``(out, lse)``: normalised rows and their natural log-sum-exp.  Two states
over disjoint keys combine with weights ``exp(lse - top)``, ``top`` the larger lse, so
nothing overflows.  A row that is ``-inf`` in every state (no visible key) stays zeros
with lse ``-inf``; a state whose weight is exactly 0 contributes nothing, even where
its ``out`` is NaN; a NaN lse makes the row NaN.
"""

import numpy as np

from ._contract import (MERGE_BATCH, MERGE_FIRST_PART, MERGE_KV_HEAD, MERGE_N_PARTS,
                        MERGE_Q_START, MERGE_Q_STOP)


def merge_states(out_a, lse_a, out_b, lse_b):
    """Combine two ``(out, lse)`` states row by row, in float64."""
    lse = np.stack(np.broadcast_arrays(np.asarray(lse_a, np.float64),
                                       np.asarray(lse_b, np.float64)))
    out = np.stack(np.broadcast_arrays(np.asarray(out_a), np.asarray(out_b)))
    merged_out, merged_lse = _merge_groups(out, lse, np.array([0]))
    return merged_out[0], merged_lse[0]


def merge_split_parts(plan, part_out, part_lse, out, lse):
    """Fold the split-KV partial results of ``plan`` into ``out`` and ``lse`` (in place).

    ``out`` is None in lse-only mode.  The parts of one split task are consecutive
    slots, so every split task is merged at once, whatever its number of parts.
    """
    merges = plan.merges
    if len(merges) == 0:
        return
    firsts = merges[:, MERGE_FIRST_PART]
    parts = np.concatenate([np.arange(f, f + n) for f, n in
                            zip(firsts, merges[:, MERGE_N_PARTS])])
    starts = np.searchsorted(parts, firsts)
    values = None if out is None else part_out[parts]
    merged_out, merged_lse = _merge_groups(values, part_lse[parts].astype(np.float64), starts)
    for m, row in enumerate(merges):
        b, kv_head = row[MERGE_BATCH], row[MERGE_KV_HEAD]
        q0, q1 = row[MERGE_Q_START], row[MERGE_Q_STOP]
        heads = slice(kv_head * plan.group, (kv_head + 1) * plan.group)
        n_rows = plan.group * (q1 - q0)
        lse[b, heads, q0:q1] = merged_lse[m, :n_rows].reshape(plan.group, q1 - q0)
        if out is not None:
            out[b, heads, q0:q1] = merged_out[m, :n_rows].reshape(plan.group, q1 - q0, -1)


def _merge_groups(out, lse, starts):
    """Merge the states ``out[s:e]``, ``lse[s:e]`` of each group of consecutive states.

    ``starts`` are the first index of each group (the last group ends at the end).
    ``out`` may be None (lse only).  Returns float64 ``(out, lse)`` with one state per group.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        top = np.maximum.reduceat(lse, starts, axis=0)
        empty = np.isneginf(top)
        top = np.where(empty, 0.0, top)
        owner = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(lse))))
        weights = np.exp(lse - top[owner])
        total = np.add.reduceat(weights, starts, axis=0)
        merged_lse = np.where(empty, -np.inf, top + np.log(total))
        if out is None:
            return None, merged_lse
        shares = (weights / np.where(empty, 1.0, total)[owner])[..., None]
        weighted = np.where(shares != 0, shares * out, 0.0)  # weight 0: contributes nothing
        return np.add.reduceat(weighted, starts, axis=0), merged_lse
