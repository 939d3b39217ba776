"""The tiled attention kernel in Numba: a loop over workers, tasks from the plan.

The kernel contract (:mod:`fastattn._contract`, "The kernel contract" in
docs/design.md) says what it computes.  Every strided array arrives as a flat 1-D
buffer plus its geometry ``at = (offset, stride_b, stride_h, stride_row[,
stride_key])`` in elements, so one compiled specialisation per dtype serves every
layout (contiguous, transposed, broadcast, negative strides).  Half inputs arrive as
their 16-bit words (:mod:`fastattn._numba.halves`): the queries, keys and values are
converted to float32 a tile at a time, as they are packed, and ``out`` is rounded
element by element; everything else is float32.

Each task packs its query rows (all heads of a kv group, pre-scaled) into a
contiguous tile, then for every kv block takes the keys and values (a view when
their rows are contiguous, a packed copy otherwise) and forms the scores with one
BLAS call, key-major: ``st = K Qᵀ`` of shape ``(keys, rows)``.  In that layout the
per-row max, rescale and sum of the online softmax are element-wise operations along
contiguous rows of ``st``, which LLVM vectorises without fast-math (a reduction along
a row would need reassociation).  ``acc += stᵀ V`` is the second BLAS call; rows are
normalised once, at the end.  One worker's run is :func:`run_worker`; with several
workers :func:`run_tasks_parallel` runs them in a ``prange`` (a single worker, as in a
forked child, needs no thread team at all).

The score modifiers arrive as ``softcap`` (a scalar of the compute dtype, 0 for none),
``alibi`` (the slopes, empty for none) and ``diagonal``, always of the same types, so a
call without modifiers runs the same compiled code as before they existed; they bend
each score tile (:func:`modify_scores`) before the band and the mask set -inf.

A paged KV cache (``KernelCall.pages``) arrives as its block table ``pages`` and
``page_size``; without one, a ``(1, 1)`` table and ``page_size`` 0, so again one compiled
signature serves both.  Only the reading of a block's keys and values changes
(:func:`_kv_rows`): the band, ALiBi and the blocks themselves use the logical positions.
"""

import math

import numpy as np
from numba import njit, prange
from numba.extending import overload

from .._contract import (DECODE_ROWS, MASK_ADD, MASK_KEEP, MASK_NONE, TASK_BAND_SHIFT,
                         TASK_BATCH, TASK_K_START, TASK_K_STOP, TASK_KV_BATCH, TASK_KV_HEAD,
                         TASK_PART, TASK_Q_START, TASK_Q_STOP)
from .halves import load, read_row, store
from .rowops import JIT, exp_inplace, like, softcap_inplace


@njit(parallel=True, **JIT)
def run_tasks_parallel(q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at, mask_kind,
                       out, out_at, lse, part_out, part_lse, tasks, worker_starts, group,
                       block_k, band_lo, band_hi, scale, lse_only, softcap, alibi, diagonal,
                       q_tiles, k_tiles, v_tiles, score_tiles, pv_tiles, acc_tiles, row_stats,
                       row_maxes, exp_bits, softcap_tiles):
    """Run every worker's tasks (:func:`run_worker`), workers in parallel."""
    for worker in prange(len(worker_starts) - 1):
        run_worker(worker, q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at,
                   mask_kind, out, out_at, lse, part_out, part_lse, tasks, worker_starts,
                   group, block_k, band_lo, band_hi, scale, lse_only, softcap, alibi,
                   diagonal, q_tiles, k_tiles, v_tiles, score_tiles, pv_tiles, acc_tiles,
                   row_stats, row_maxes, exp_bits, softcap_tiles)


@njit(**JIT)
def run_worker(worker, q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at, mask_kind,
               out, out_at, lse, part_out, part_lse, tasks, worker_starts, group, block_k,
               band_lo, band_hi, scale, lse_only, softcap, alibi, diagonal, q_tiles, k_tiles,
               v_tiles, score_tiles, pv_tiles, acc_tiles, row_stats, row_maxes, exp_bits,
               softcap_tiles):
    """Run the tasks of one worker, with that worker's scratch."""
    for t in range(worker_starts[worker], worker_starts[worker + 1]):
        _run_task(q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at, mask_kind, out,
                  out_at, lse, part_out, part_lse, tasks[t], group, block_k, band_lo, band_hi,
                  scale, lse_only, softcap, alibi, diagonal, q_tiles[worker], k_tiles[worker],
                  v_tiles[worker], score_tiles[worker], pv_tiles[worker], acc_tiles[worker],
                  row_stats[worker], row_maxes[worker], exp_bits[worker],
                  softcap_tiles[worker])


@njit(**JIT)
def _run_task(q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at, mask_kind, out,
              out_at, lse, part_out, part_lse, task, group, block_k, band_lo, band_hi, scale,
              lse_only, softcap, alibi, diagonal, q_scratch, k_scratch, v_scratch, s_scratch,
              pv_scratch, acc_scratch, stats, max_scratch, bits, softcap_scratch):
    b, kv_head, part = task[TASK_BATCH], task[TASK_KV_HEAD], task[TASK_PART]
    kv_b = task[TASK_KV_BATCH]  # of k, v and the mask (paged: the row of the block table)
    q0, q1, k0, k1 = task[TASK_Q_START], task[TASK_Q_STOP], task[TASK_K_START], task[TASK_K_STOP]
    # this task's band: the plan's, moved (a packed sequence keeps its own alignment)
    band_lo, band_hi = band_lo + task[TASK_BAND_SHIFT], band_hi + task[TASK_BAND_SHIFT]
    modified = softcap != 0.0 or alibi.shape[0] > 0  # tested once per task, not per score
    alibi_diagonal = diagonal + task[TASK_BAND_SHIFT]  # ALiBi's diagonal moves with the band
    n_q = q1 - q0
    rows = group * n_q
    head0 = kv_head * group
    head_dim, value_dim = q_scratch.shape[1], acc_scratch.shape[1]
    q_tile, acc = q_scratch[:rows], acc_scratch[:rows]
    running_max, running_sum, alpha = stats[0, :rows], stats[1, :rows], stats[2, :rows]
    block_max = max_scratch[:rows]
    _pack_queries(q, q_at, b, head0, group, q0, n_q, scale, q_tile)
    acc[:, :] = 0.0
    running_max[:] = -np.inf
    running_sum[:] = 0.0

    for j0 in range(k0, k1, block_k):
        n_k = min(block_k, k1 - j0)
        if mask_kind == MASK_KEEP and not _block_has_keep(
                mask, mask_at, kv_b, head0, group, q0, n_q, j0, n_k, band_lo, band_hi):
            continue
        k_tile = _kv_rows(k, k_at, pages, page_size, kv_b, kv_head, j0, n_k, head_dim,
                          k_scratch)
        st = s_scratch[:n_k * rows].reshape(n_k, rows)
        _block_scores(k_tile, q_tile, st)
        if modified:
            modify_scores(st, softcap, alibi, head0, q0, n_q, j0, alibi_diagonal,
                          softcap_scratch, bits)
        limited = _apply_limits(st, mask, mask_at, mask_kind, kv_b, head0, group, q0, n_q, j0,
                                band_lo, band_hi)
        _softmax_block(st, running_max, running_sum, block_max, alpha, bits)
        if not lse_only:
            v_tile = _kv_rows(v, v_at, pages, page_size, kv_b, kv_head, j0, n_k, value_dim,
                              v_scratch)
            if limited and not _all_finite(v_tile):
                _accumulate_few_rows(st, v_tile, acc, alpha, skip_zero=True)
            else:
                _block_accumulate(st, v_tile, acc, alpha, pv_scratch[:rows])

    _write_rows(acc, running_max, running_sum, out, out_at, lse, part_out, part_lse, b, head0,
                group, q0, n_q, part, lse_only)


@njit(**JIT)
def _block_scores(k_tile, q_tile, st):
    """Key-major scores ``st = k_tile @ q_tileᵀ`` of one block."""
    if q_tile.shape[0] < DECODE_ROWS:
        _scores_few_rows(k_tile, q_tile, st)
    else:
        np.dot(k_tile, q_tile.T, st)


@njit(**JIT)
def _block_accumulate(st, v_tile, acc, alpha, pv):
    """``acc = acc * alpha + stᵀ @ v_tile`` (rows rescaled only where alpha < 1)."""
    if acc.shape[0] < DECODE_ROWS:
        _accumulate_few_rows(st, v_tile, acc, alpha)
    else:
        np.dot(st.T, v_tile, pv)
        _accumulate(acc, pv, alpha)


@njit(fastmath={"reassoc", "contract"}, **JIT)  # reassociation vectorises the dot; inf stays inf
def _scores_few_rows(k_tile, q_tile, st):
    """``st[j, r] = k_tile[j] · q_tile[r]``, reading each key once."""
    for j in range(k_tile.shape[0]):
        key = k_tile[j]
        for r in range(q_tile.shape[0]):
            query = q_tile[r]
            total = 0.0
            for d in range(key.shape[0]):
                total += key[d] * query[d]
            st[j, r] = total


@njit(**JIT)
def _accumulate_few_rows(st, v_tile, acc, alpha, skip_zero=False):
    """``acc[r] = acc[r] * alpha[r] + Σ_j st[j, r] v_tile[j]``, reading each value once.

    With ``skip_zero`` a zero weight adds nothing even to a NaN or infinite value
    (``0 * NaN`` is NaN): the masked keys of a block contribute exactly nothing.
    """
    _rescale(acc, alpha)
    for j in range(v_tile.shape[0]):
        value = v_tile[j]
        for r in range(acc.shape[0]):
            weight = st[j, r]
            if skip_zero and weight == 0.0:
                continue
            row = acc[r]
            for d in range(value.shape[0]):
                row[d] += weight * value[d]


@njit(fastmath={"reassoc"}, **JIT)  # vectorises the sum; NaN and inf keep their meaning
def _all_finite(tile):
    """Whether a C-contiguous tile holds no NaN or infinity."""
    total = 0.0
    for x in tile.reshape(tile.size):
        total += x * 0.0  # NaN for NaN and ±inf, else 0
    return total == 0.0


@njit(**JIT)
def _rescale(acc, alpha):
    for r in range(acc.shape[0]):
        if alpha[r] != 1.0:
            acc[r] *= alpha[r]


@njit(**JIT)
def _row_start(at, b, h, i):
    """Flat index of element ``[b, h, i, 0]`` of the array described by ``at``."""
    return at[0] + b * at[1] + h * at[2] + i * at[3]


@njit(**JIT)
def _kv_rows(x, at, pages, page_size, b, head, j0, n_k, width, scratch):
    """Keys (or values) ``j0:j0 + n_k`` of kv batch ``b`` as :func:`_key_rows` gives them.

    ``page_size`` 0: rows of ``x[b, head]``.  Otherwise logical positions of sequence
    ``b``, found through the block table ``pages``: a block within one page is read as
    one run of rows (a view where it can be), one that crosses pages is gathered page by
    page into ``scratch``, so a block is ``block_k`` keys whatever the page size.
    """
    if page_size == 0:
        return _key_rows(x, at, b, head, j0, n_k, width, scratch)
    slot = j0 % page_size
    if slot + n_k <= page_size:
        return _key_rows(x, at, pages[b, j0 // page_size], head, slot, n_k, width, scratch)
    tile = scratch[:n_k]
    jj = 0
    while jj < n_k:
        j = j0 + jj
        slot = j % page_size
        count = min(page_size - slot, n_k - jj)
        _packed_rows(x, at, _row_start(at, pages[b, j // page_size], head, slot), count,
                     tile[jj:])
        jj += count
    return tile


def _key_rows(x, at, b, head, j0, n_k, width, scratch):
    """Rows ``j0:j0 + n_k`` of ``x[b, head]`` as a C-contiguous ``(n_k, width)`` array.

    A view when the rows are contiguous in memory and of the compute dtype (BLAS reads
    them in place); otherwise a copy into ``scratch`` (half rows converted).
    """
    raise NotImplementedError  # only callable from jitted code, through the overload


@overload(_key_rows, jit_options=JIT)
def _key_rows_typed(x, at, b, head, j0, n_k, width, scratch):
    return _rows_in_place if x.dtype == scratch.dtype else _rows_converted


def _rows_in_place(x, at, b, head, j0, n_k, width, scratch):
    start = _row_start(at, b, head, j0)
    if at[3] == width:
        return x[start:start + n_k * width].reshape(n_k, width)
    return _packed_rows(x, at, start, n_k, scratch)


def _rows_converted(x, at, b, head, j0, n_k, width, scratch):
    return _packed_rows(x, at, _row_start(at, b, head, j0), n_k, scratch)


@njit(**JIT)
def _packed_rows(x, at, start, n_k, scratch):
    """``n_k`` rows from flat index ``start`` on (row stride ``at[3]``), packed in ``scratch``."""
    tile = scratch[:n_k]
    for j in range(n_k):
        read_row(x, start + j * at[3], tile[j])
    return tile


@njit(**JIT)
def _pack_queries(q, q_at, b, head0, group, q0, n_q, scale, q_tile):
    width = q_tile.shape[1]
    for h in range(group):
        for i in range(n_q):
            start = _row_start(q_at, b, head0 + h, q0 + i)
            dst = q_tile[h * n_q + i]
            for d in range(width):
                dst[d] = load(q[start + d]) * scale


@njit(**JIT)
def modify_scores(st, softcap, alibi, head0, q0, n_q, j0, diagonal, derivative, bits):
    """Apply the softcap, then ALiBi, to a key-major score tile of rows ``q0 .. q0 + n_q``
    of heads ``head0 ...`` (``st[jj, h * n_q + i]``) and keys ``j0 ...``.

    ``softcap`` 0 and an empty ``alibi`` skip theirs; with a softcap, ``derivative``
    receives ``1 - tanh²`` of each score (the backward's chain-rule factor).
    """
    n_k, rows = st.shape
    if softcap != 0.0:
        softcap_inplace(st.reshape(n_k * rows), softcap, derivative, bits, n_k * rows)
    if alibi.shape[0] > 0:
        _alibi_tile(st, alibi, head0, q0, n_q, j0, diagonal)


@njit(**JIT)
def _alibi_tile(st, alibi, head0, q0, n_q, j0, diagonal):
    """``st[jj, h * n_q + i] -= alibi[head0 + h] * |j0 + jj - (q0 + i) - diagonal|``."""
    n_k, rows = st.shape
    for jj in range(n_k):
        scores = st[jj]
        offset = j0 + jj - q0 - diagonal
        for h in range(rows // n_q):
            slope, r0 = alibi[head0 + h], h * n_q
            for i in range(n_q):
                # int32 -> float converts in vectors on AVX2; distances are far below 2**31
                scores[r0 + i] -= slope * like(st, np.int32(abs(offset - i)))


@njit(**JIT)
def _block_has_keep(mask, mask_at, b, head0, group, q0, n_q, j0, n_k, band_lo, band_hi):
    """Whether any (query, key) of this block is kept by both the bool mask and the band."""
    for h in range(group):
        for i in range(q0, q0 + n_q):
            start = _row_start(mask_at, b, head0 + h, i)
            for j in range(max(j0, i + band_lo), min(j0 + n_k - 1, i + band_hi) + 1):
                if mask[start + j * mask_at[4]]:
                    return True
    return False


@njit(**JIT)
def _apply_limits(st, mask, mask_at, mask_kind, b, head0, group, q0, n_q, j0,
                  band_lo, band_hi):
    """Scores outside the band or the mask become -inf; an additive mask is added.

    Returns whether anything may have been masked (False: the block lies inside the
    band and there is no mask).
    """
    n_k = st.shape[0]
    inside_band = j0 >= q0 + n_q - 1 + band_lo and j0 + n_k - 1 <= q0 + band_hi
    if inside_band and mask_kind == MASK_NONE:
        return False
    for jj in range(n_k):
        j = j0 + jj
        scores = st[jj]
        # rows i with band_lo <= j - i <= band_hi, as offsets from q0
        first = min(max(j - band_hi - q0, 0), n_q)
        last = min(max(j - band_lo - q0 + 1, first), n_q)
        for h in range(group):
            r0 = h * n_q
            if mask_kind != MASK_NONE:
                at = _row_start(mask_at, b, head0 + h, q0) + j * mask_at[4]
                for i in range(n_q):
                    value = mask[at + i * mask_at[3]]
                    if mask_kind == MASK_ADD and value != -np.inf:
                        scores[r0 + i] += value
                    elif mask_kind == MASK_ADD or not value:  # -inf wins over a NaN score
                        scores[r0 + i] = -np.inf
            scores[r0:r0 + first] = -np.inf
            scores[r0 + last:r0 + n_q] = -np.inf
    return True


@njit(**JIT)
def _softmax_block(st, running_max, running_sum, block_max, alpha, bits):
    """Scores of one kv block -> unnormalised probabilities; update the row statistics.

    The invariant of docs/design.md: the running max ignores NaN and stays -inf until
    a row sees a finite or +inf score; the accumulator is rescaled by
    ``alpha = exp(old max - new max)`` only when the new max is above -inf (else 1).
    Every loop runs along a row of ``st`` (one key, all query rows): element-wise, so
    it vectorises.
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
        running_sum[r] *= alpha[r]
    for jj in range(n_k):
        scores = st[jj]
        for r in range(rows):
            scores[r] -= block_max[r]
    exp_inplace(st.reshape(n_k * rows), bits, n_k * rows)  # flat: vectorises for any rows
    for jj in range(n_k):
        scores = st[jj]
        for r in range(rows):
            running_sum[r] += scores[r]


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
def _write_rows(acc, running_max, running_sum, out, out_at, lse, part_out, part_lse, b, head0,
                group, q0, n_q, part, lse_only):
    """Normalise the rows; a row with sum 0 saw no key: zeros and lse -inf (NaN stays NaN)."""
    value_dim = acc.shape[1]
    for h in range(group):
        for i in range(n_q):
            r = h * n_q + i
            if running_sum[r] != 0.0:
                inv, log_sum = 1.0 / running_sum[r], running_max[r] + math.log(running_sum[r])
            else:
                inv, log_sum = 0.0, -np.inf
            if part < 0:
                lse[b, head0 + h, q0 + i] = log_sum
                if not lse_only:
                    start = _row_start(out_at, b, head0 + h, q0 + i)
                    for d in range(value_dim):
                        store(out, start + d * out_at[4], acc[r, d] * inv)
            else:
                part_lse[part, r] = log_sum
                if not lse_only:
                    for d in range(value_dim):
                        part_out[part, r, d] = acc[r, d] * inv
