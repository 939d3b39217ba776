"""The tiled attention kernel in Numba: one ``prange`` over workers, tasks from the plan.

See :mod:`fastattn._plan` for the contract.  Each task packs its query rows (all heads
of a kv group, pre-scaled) into a contiguous tile, then for every kv block packs the
keys and values and forms the scores with one BLAS call, key-major: ``st = K Qᵀ`` of
shape ``(keys, rows)``.  In that layout the per-row max, rescale and sum of the
online softmax are element-wise operations along contiguous rows of ``st``, which
LLVM vectorises without fast-math (a reduction along a row would need reassociation).
``acc += stᵀ V`` is the second BLAS call; rows are normalised once, at the end.
"""

import math

import numpy as np
from numba import njit, prange
from numba.extending import overload

from .rowops import JIT, exp_shifted_rows

MASK_NONE, MASK_KEEP, MASK_ADD = 0, 1, 2


@njit(parallel=True, **JIT)
def run_tasks(q, k, v, mask, mask_kind, out, lse, part_out, part_lse, tasks, worker_starts,
              group, block_k, band_lo, band_hi, scale,
              q_tiles, k_tiles, v_tiles, score_tiles, pv_tiles, acc_tiles, row_stats,
              row_maxes, exp_bits):
    for worker in prange(len(worker_starts) - 1):
        for t in range(worker_starts[worker], worker_starts[worker + 1]):
            _run_task(q, k, v, mask, mask_kind, out, lse, part_out, part_lse, tasks[t],
                      group, block_k, band_lo, band_hi, scale,
                      q_tiles[worker], k_tiles[worker], v_tiles[worker],
                      score_tiles[worker], pv_tiles[worker], acc_tiles[worker],
                      row_stats[worker], row_maxes[worker], exp_bits[worker])


@njit(**JIT)
def _run_task(q, k, v, mask, mask_kind, out, lse, part_out, part_lse, task,
              group, block_k, band_lo, band_hi, scale,
              q_flat, k_flat, v_flat, s_flat, pv_flat, acc_flat, stats, max_flat, bits):
    b, kv_head, q0, q1, k0, k1, part = task
    n_q = q1 - q0
    rows = group * n_q
    head0 = kv_head * group
    head_dim, value_dim = q.shape[3], v.shape[3]
    q_tile = q_flat[:rows * head_dim].reshape(rows, head_dim)
    acc = acc_flat[:rows * value_dim].reshape(rows, value_dim)
    running_max, running_sum, alpha = stats[0, :rows], stats[1, :rows], stats[2, :rows]
    block_max = max_flat[:rows]
    _pack_queries(q, b, head0, group, q0, n_q, scale, q_tile)
    acc[:, :] = 0.0
    running_max[:] = -np.inf
    running_sum[:] = 0.0

    for j0 in range(k0, k1, block_k):
        n_k = min(block_k, k1 - j0)
        if mask_kind == MASK_KEEP and not _block_has_keep(mask, b, head0, group, q0, n_q,
                                                         j0, n_k, band_lo, band_hi):
            continue
        k_tile = key_rows(k, b, kv_head, j0, n_k, k_flat)
        v_tile = key_rows(v, b, kv_head, j0, n_k, v_flat)
        st = s_flat[:n_k * rows].reshape(n_k, rows)
        np.dot(k_tile, q_tile.T, st)
        _apply_limits(st, mask, mask_kind, b, head0, group, q0, n_q, j0, band_lo, band_hi)
        _softmax_block(st, running_max, running_sum, block_max, alpha, bits)
        pv = pv_flat[:rows * value_dim].reshape(rows, value_dim)
        np.dot(st.T, v_tile, pv)
        _accumulate(acc, pv, alpha)

    _write_rows(acc, running_max, running_sum, out, lse, part_out, part_lse, b, head0, group,
                q0, n_q, part)


def key_rows(x, b, head, j0, n_k, tile_flat):
    """Rows ``j0:j0 + n_k`` of ``x[b, head]`` as a C-contiguous 2-D array for BLAS."""
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(key_rows, jit_options=JIT)
def _key_rows_typed(x, b, head, j0, n_k, tile_flat):
    if x.layout == "C":  # already contiguous: hand BLAS a view, copy nothing
        return lambda x, b, head, j0, n_k, tile_flat: x[b, head, j0:j0 + n_k]

    def packed(x, b, head, j0, n_k, tile_flat):
        tile = tile_flat[:n_k * x.shape[3]].reshape(n_k, x.shape[3])
        tile[:, :] = x[b, head, j0:j0 + n_k]
        return tile
    return packed


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
    """Whether any (query, key) of this block is kept by both the bool mask and the band."""
    for h in range(group):
        for i in range(q0, q0 + n_q):
            row = mask[b, head0 + h, i]
            for j in range(max(j0, i + band_lo), min(j0 + n_k - 1, i + band_hi) + 1):
                if row[j]:
                    return True
    return False


@njit(**JIT)
def _apply_limits(st, mask, mask_kind, b, head0, group, q0, n_q, j0, band_lo, band_hi):
    """Scores outside the band or the bool mask become -inf; an additive mask is added."""
    n_k = st.shape[0]
    inside_band = j0 >= q0 + n_q - 1 + band_lo and j0 + n_k - 1 <= q0 + band_hi
    if inside_band and mask_kind == MASK_NONE:
        return
    for jj in range(n_k):
        j = j0 + jj
        scores = st[jj]
        # rows i with band_lo <= j - i <= band_hi, as offsets from q0
        first = min(max(j - band_hi - q0, 0), n_q)
        last = min(max(j - band_lo - q0 + 1, first), n_q)
        for h in range(group):
            r0 = h * n_q
            if mask_kind == MASK_KEEP:
                for i in range(n_q):
                    if not mask[b, head0 + h, q0 + i, j]:
                        scores[r0 + i] = -np.inf
            elif mask_kind == MASK_ADD:
                for i in range(n_q):
                    scores[r0 + i] += mask[b, head0 + h, q0 + i, j]
            scores[r0:r0 + first] = -np.inf
            scores[r0 + last:r0 + n_q] = -np.inf


@njit(**JIT)
def _softmax_block(st, running_max, running_sum, block_max, alpha, bits):
    """Scores of one kv block -> unnormalised probabilities; update the row statistics.

    Every loop runs along a row of ``st`` (one key, all query rows): element-wise, so
    it vectorises.  Rows that have seen only masked keys keep max -inf, alpha 1.
    """
    n_k, rows = st.shape
    for r in range(rows):
        block_max[r] = running_max[r]
    for jj in range(n_k):
        scores = st[jj]
        for r in range(rows):
            block_max[r] = scores[r] if scores[r] > block_max[r] else block_max[r]
    for r in range(rows):
        seen = block_max[r] > -np.inf
        alpha[r] = math.exp(running_max[r] - block_max[r]) if seen else 1.0
        running_max[r] = block_max[r]
        block_max[r] = block_max[r] if seen else 0.0  # shift; any finite value for empty rows
    for r in range(rows):
        running_sum[r] *= alpha[r]
    exp_shifted_rows(st, block_max, running_sum, bits)


@njit(**JIT)
def _accumulate(acc, pv, alpha):
    for r in range(acc.shape[0]):
        a = alpha[r]
        if a == 1.0:
            acc[r] += pv[r]
        else:
            for d in range(acc.shape[1]):
                acc[r, d] = acc[r, d] * a + pv[r, d]


@njit(**JIT)
def _write_rows(acc, running_max, running_sum, out, lse, part_out, part_lse, b, head0, group,
                q0, n_q, part):
    for h in range(group):
        for i in range(n_q):
            r = h * n_q + i
            if running_sum[r] > 0.0:
                inv, log_sum = 1.0 / running_sum[r], running_max[r] + math.log(running_sum[r])
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
