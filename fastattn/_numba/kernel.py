"""The tiled attention kernel in Numba: one ``prange`` over workers, tasks from the plan.

See :mod:`fastattn._plan` for the contract.  Each task packs its query rows (all heads
of a kv group, pre-scaled) into a contiguous tile, then for every kv block packs the
keys and values, forms the scores with one BLAS call, applies the band and the mask,
updates the running max and sum, and adds ``P @ V`` to the accumulator, rescaling it
only when a row's max grew.  Rows are normalised once, at the end.
"""

import math

import numpy as np
from numba import njit, prange

from .rowops import JIT, exp_shift_sum, row_max

MASK_NONE, MASK_KEEP, MASK_ADD = 0, 1, 2


@njit(parallel=True, **JIT)
def run_tasks(q, k, v, mask, mask_kind, out, lse, part_out, part_lse, tasks, worker_starts,
              group, block_k, band_lo, band_hi, scale,
              q_tiles, k_tiles, v_tiles, score_tiles, pv_tiles, acc_tiles, row_maxes,
              row_sums, row_alphas, exp_bits):
    for worker in prange(len(worker_starts) - 1):
        for t in range(worker_starts[worker], worker_starts[worker + 1]):
            _run_task(q, k, v, mask, mask_kind, out, lse, part_out, part_lse, tasks[t],
                      group, block_k, band_lo, band_hi, scale,
                      q_tiles[worker], k_tiles[worker], v_tiles[worker],
                      score_tiles[worker], pv_tiles[worker], acc_tiles[worker],
                      row_maxes[worker], row_sums[worker], row_alphas[worker],
                      exp_bits[worker])


@njit(**JIT)
def _run_task(q, k, v, mask, mask_kind, out, lse, part_out, part_lse, task,
              group, block_k, band_lo, band_hi, scale,
              q_flat, k_flat, v_flat, s_flat, pv_flat, acc_flat, m, l, alpha, bits):
    b, kv_head, q0, q1, k0, k1, part = task
    n_q = q1 - q0
    rows = group * n_q
    head_dim, value_dim = q.shape[3], v.shape[3]
    q_tile = q_flat[:rows * head_dim].reshape(rows, head_dim)
    acc = acc_flat[:rows * value_dim].reshape(rows, value_dim)
    _pack_queries(q, b, kv_head * group, group, q0, n_q, scale, q_tile)
    acc[:, :] = 0.0
    m[:rows] = -np.inf
    l[:rows] = 0.0

    for j0 in range(k0, k1, block_k):
        j1 = min(j0 + block_k, k1)
        n_k = j1 - j0
        if mask_kind == MASK_KEEP and not _block_has_keep(mask, b, kv_head * group, group,
                                                         q0, n_q, j0, n_k, band_lo, band_hi):
            continue
        k_tile = k_flat[:n_k * head_dim].reshape(n_k, head_dim)
        v_tile = v_flat[:n_k * value_dim].reshape(n_k, value_dim)
        scores = s_flat[:rows * n_k].reshape(rows, n_k)
        k_tile[:, :] = k[b, kv_head, j0:j1]
        v_tile[:, :] = v[b, kv_head, j0:j1]
        np.dot(q_tile, k_tile.T, scores)
        _apply_limits(scores, mask, mask_kind, b, kv_head * group, group, q0, n_q, j0, n_k,
                      band_lo, band_hi)
        _online_softmax_step(scores, m, l, alpha, bits, rows, n_k)
        pv = pv_flat[:rows * value_dim].reshape(rows, value_dim)
        np.dot(scores, v_tile, pv)
        _accumulate(acc, pv, alpha, rows)

    _write_rows(acc, m, l, out, lse, part_out, part_lse, b, kv_head * group, group, q0, n_q,
                part)


@njit(**JIT)
def _pack_queries(q, b, head0, group, q0, n_q, scale, q_tile):
    for h in range(group):
        for i in range(n_q):
            src = q[b, head0 + h, q0 + i]
            dst = q_tile[h * n_q + i]
            for d in range(src.shape[0]):
                dst[d] = src[d] * scale


@njit(**JIT)
def _block_has_keep(mask, b, head0, group, q0, n_q, j0, n_k, band_lo, band_hi):
    """Whether any (row, key) of this block is kept by the bool mask and the band."""
    for h in range(group):
        for i in range(n_q):
            row = mask[b, head0 + h, q0 + i]
            lo = max(j0, q0 + i + band_lo)
            hi = min(j0 + n_k - 1, q0 + i + band_hi)
            for j in range(lo, hi + 1):
                if row[j]:
                    return True
    return False


@njit(**JIT)
def _apply_limits(scores, mask, mask_kind, b, head0, group, q0, n_q, j0, n_k,
                  band_lo, band_hi):
    """Set scores outside the band or the bool mask to -inf; add an additive mask."""
    inside_band = j0 >= q0 + n_q - 1 + band_lo and j0 + n_k - 1 <= q0 + band_hi
    if inside_band and mask_kind == MASK_NONE:
        return
    for h in range(group):
        for i in range(n_q):
            row = scores[h * n_q + i]
            if mask_kind == MASK_KEEP:
                keep = mask[b, head0 + h, q0 + i, j0:j0 + n_k]
                for j in range(n_k):
                    if not keep[j]:
                        row[j] = -np.inf
            elif mask_kind == MASK_ADD:
                bias = mask[b, head0 + h, q0 + i, j0:j0 + n_k]
                for j in range(n_k):
                    row[j] += bias[j]
            if not inside_band:
                first = q0 + i + band_lo - j0  # keys before this offset are out of the band
                last = q0 + i + band_hi - j0
                for j in range(min(max(first, 0), n_k)):
                    row[j] = -np.inf
                for j in range(max(last + 1, 0), n_k):
                    row[j] = -np.inf


@njit(**JIT)
def _online_softmax_step(scores, m, l, alpha, bits, rows, n_k):
    """Turn score rows into unnormalised probabilities; update running max and sum."""
    for r in range(rows):
        row = scores[r]
        new_max = row_max(row, n_k, m[r])
        if new_max == -np.inf:  # everything so far is masked: contributes nothing
            row[:] = 0.0
            alpha[r] = 1.0
            continue
        alpha[r] = math.exp(m[r] - new_max)  # 0 on the first visible block
        l[r] = l[r] * alpha[r] + exp_shift_sum(row, new_max, bits, n_k)
        m[r] = new_max


@njit(**JIT)
def _accumulate(acc, pv, alpha, rows):
    for r in range(rows):
        a = alpha[r]
        if a == 1.0:
            acc[r] += pv[r]
        else:
            for d in range(acc.shape[1]):
                acc[r, d] = acc[r, d] * a + pv[r, d]


@njit(**JIT)
def _write_rows(acc, m, l, out, lse, part_out, part_lse, b, head0, group, q0, n_q, part):
    for h in range(group):
        for i in range(n_q):
            r = h * n_q + i
            if l[r] > 0.0:
                inv, log_sum = 1.0 / l[r], m[r] + math.log(l[r])
            else:
                inv, log_sum = 0.0, -np.inf
            if part < 0:
                dst = out[b, head0 + h, q0 + i]
                lse[b, head0 + h, q0 + i] = log_sum
            else:
                dst = part_out[part, r]
                part_lse[part, r] = log_sum
            for d in range(dst.shape[0]):
                dst[d] = acc[r, d] * inv
