"""The tiled attention kernel in Numba: a loop over workers, tasks from the plan.

The kernel contract (:mod:`fastattn._contract`, "The kernel contract" in
docs/design.md) says what it computes.  Every strided array arrives as a flat 1-D
buffer plus its geometry ``at = (offset, stride_b, stride_h, stride_row[,
stride_key])`` in elements, so one compiled specialisation per dtype serves every
layout (contiguous, transposed, broadcast, negative strides).  Half inputs arrive as
their 16-bit words (:mod:`fastattn._numba.halves`): the queries, keys and values are
converted to float32 a tile at a time as they are packed (decoding: as they are
read), and ``out`` is rounded
element by element; everything else is float32.

Each task packs its query rows (all heads of a kv group, pre-scaled) into a
contiguous tile, then for every kv block takes the keys and values (a view when
their rows are contiguous, a packed copy otherwise) and forms the scores with one
BLAS call, key-major: ``st = K Qᵀ`` of shape ``(keys, rows)``.  In that layout the
per-row max, rescale and sum of the online softmax are element-wise operations along
contiguous rows of ``st``, which LLVM vectorises without fast-math (a reduction along
a row would need reassociation).  ``acc += stᵀ V`` is the second BLAS call; rows are
normalised once, at the end.  A task with fewer than ``DECODE_ROWS`` rows per kv head
(decoding) skips BLAS and the tiles: it reads each key and value row once, where it
lies (:func:`_scores_in_place`, :func:`_accumulate_in_place`), and where a key's kv
heads lie side by side (``fastattn._contract.decode_heads``) the worker runs the same
task of consecutive kv heads as one, reading every key with all its heads in memory
order.  One worker's run is :func:`run_worker`; with several workers
:func:`run_tasks_parallel` runs them in a ``prange`` (a single worker, as in a forked
child, needs no thread team at all).

The score modifiers arrive as ``softcap`` (a scalar of the compute dtype, 0 for none),
``alibi`` (the slopes, empty for none) and ``diagonal``, always of the same types, so a
call without modifiers runs the same compiled code as before they existed; they bend
each score tile (:func:`modify_scores`) before the band and the mask set -inf.

A paged KV cache (``KernelCall.pages``) arrives as its block table ``pages`` and
``page_size``; without one, a ``(1, 1)`` table and ``page_size`` 0, so again one compiled
signature serves both.  Only the finding of a block's key and value rows changes
(:func:`_kv_rows`, :func:`_row_starts`): the band, ALiBi and the blocks themselves use
the logical positions.
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
                       decode_heads, q_tiles, k_tiles, v_tiles, score_tiles, pv_tiles,
                       acc_tiles, row_stats, row_maxes, exp_bits, softcap_tiles, row_starts):
    """Run every worker's tasks (:func:`run_worker`), workers in parallel."""
    for worker in prange(len(worker_starts) - 1):
        run_worker(worker, q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at,
                   mask_kind, out, out_at, lse, part_out, part_lse, tasks, worker_starts,
                   group, block_k, band_lo, band_hi, scale, lse_only, softcap, alibi,
                   diagonal, decode_heads, q_tiles, k_tiles, v_tiles, score_tiles, pv_tiles,
                   acc_tiles, row_stats, row_maxes, exp_bits, softcap_tiles, row_starts)


@njit(**JIT)
def run_worker(worker, q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at, mask_kind,
               out, out_at, lse, part_out, part_lse, tasks, worker_starts, group, block_k,
               band_lo, band_hi, scale, lse_only, softcap, alibi, diagonal, decode_heads,
               q_tiles, k_tiles, v_tiles, score_tiles, pv_tiles, acc_tiles, row_stats,
               row_maxes, exp_bits, softcap_tiles, row_starts):
    """Run the tasks of one worker, with that worker's scratch: up to ``decode_heads``
    consecutive tasks that are one task for consecutive kv heads run together."""
    t, stop = worker_starts[worker], worker_starts[worker + 1]
    while t < stop:
        heads = _same_task_next_heads(tasks, t, stop, decode_heads)
        _run_task(q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at, mask_kind, out,
                  out_at, lse, part_out, part_lse, tasks[t:t + heads], group, block_k,
                  band_lo, band_hi, scale, lse_only, softcap, alibi, diagonal,
                  q_tiles[worker], k_tiles[worker], v_tiles[worker], score_tiles[worker],
                  pv_tiles[worker], acc_tiles[worker], row_stats[worker], row_maxes[worker],
                  exp_bits[worker], softcap_tiles[worker], row_starts[worker])
        t += heads


@njit(**JIT)
def _same_task_next_heads(tasks, t, stop, most):
    """How many tasks from ``t`` on (at most ``most``, before ``stop``) are task ``t`` for
    the next kv heads: the same rows, keys and band shift of kv head + 1, + 2, ..."""
    first = tasks[t]
    heads = 1
    while heads < most and t + heads < stop:
        other = tasks[t + heads]
        if other[TASK_KV_HEAD] != first[TASK_KV_HEAD] + heads:
            break
        for column in (TASK_BATCH, TASK_KV_BATCH, TASK_Q_START, TASK_Q_STOP, TASK_K_START,
                       TASK_K_STOP, TASK_BAND_SHIFT):
            if other[column] != first[column]:
                return heads
        heads += 1
    return heads


@njit(**JIT)
def _run_task(q, q_at, k, k_at, v, v_at, pages, page_size, mask, mask_at, mask_kind, out,
              out_at, lse, part_out, part_lse, tasks, group, block_k, band_lo, band_hi, scale,
              lse_only, softcap, alibi, diagonal, q_scratch, k_scratch, v_scratch, s_scratch,
              pv_scratch, acc_scratch, stats, max_scratch, bits, softcap_scratch, starts):
    """Task ``tasks[0]`` and, if there are more, the same task of the next kv heads
    (decoding, where a key's heads lie side by side): the rows of all of them form one
    tile, head after head, and each key is read with all its heads, memory in order."""
    task, heads = tasks[0], len(tasks)
    b, kv_head = task[TASK_BATCH], task[TASK_KV_HEAD]
    kv_b = task[TASK_KV_BATCH]  # of k, v and the mask (paged: the row of the block table)
    q0, q1, k0, k1 = task[TASK_Q_START], task[TASK_Q_STOP], task[TASK_K_START], task[TASK_K_STOP]
    # this task's band: the plan's, moved (a packed sequence keeps its own alignment)
    band_lo, band_hi = band_lo + task[TASK_BAND_SHIFT], band_hi + task[TASK_BAND_SHIFT]
    modified = softcap != 0.0 or alibi.shape[0] > 0  # tested once per task, not per score
    alibi_diagonal = diagonal + task[TASK_BAND_SHIFT]  # ALiBi's diagonal moves with the band
    n_q = q1 - q0
    head_rows = group * n_q  # the rows of one kv head
    rows = heads * head_rows
    few = head_rows < DECODE_ROWS  # each key and value row read once, in place
    block = max(block_k // heads, 1)  # a block's scores keep the size of one head's
    head0 = kv_head * group
    head_dim, value_dim = q_scratch.shape[1], acc_scratch.shape[1]
    q_tile, acc = q_scratch[:rows], acc_scratch[:rows]
    running_max, running_sum, alpha = stats[0, :rows], stats[1, :rows], stats[2, :rows]
    block_max = max_scratch[:rows]
    _pack_queries(q, q_at, b, head0, heads * group, q0, n_q, scale, q_tile)
    acc[:, :] = 0.0
    running_max[:] = -np.inf
    running_sum[:] = 0.0

    for j0 in range(k0, k1, block):
        n_k = min(block, k1 - j0)
        if mask_kind == MASK_KEEP and not _block_has_keep(
                mask, mask_at, kv_b, head0, heads * group, q0, n_q, j0, n_k, band_lo, band_hi):
            continue
        st = s_scratch[:n_k * rows].reshape(n_k, rows)
        if few:
            _scores_in_place(k, _row_starts(k_at, pages, page_size, kv_b, kv_head, j0, n_k,
                                            starts), k_at[2], q_tile, st, head_rows)
        else:
            np.dot(_kv_rows(k, k_at, pages, page_size, kv_b, kv_head, j0, n_k, head_dim,
                            k_scratch), q_tile.T, st)
        if modified:
            modify_scores(st, softcap, alibi, head0, q0, n_q, j0, alibi_diagonal,
                          softcap_scratch, bits)
        limited = _apply_limits(st, mask, mask_at, mask_kind, kv_b, head0, heads * group, q0,
                                n_q, j0, band_lo, band_hi)
        _softmax_block(st, running_max, running_sum, block_max, alpha, bits)
        if lse_only:
            continue
        v_tile = None if few else _kv_rows(v, v_at, pages, page_size, kv_b, kv_head, j0, n_k,
                                           value_dim, v_scratch)
        if few or (limited and not _all_finite(v_tile)):
            # a masked key (weight 0) adds nothing, even a NaN or infinite value
            _accumulate_in_place(st, v, _row_starts(v_at, pages, page_size, kv_b, kv_head, j0,
                                                    n_k, starts), v_at[2], acc, alpha,
                                 head_rows, limited)
        else:
            np.dot(st.T, v_tile, pv_scratch[:rows])
            _accumulate(acc, pv_scratch[:rows], alpha)

    for h in range(heads):
        r = slice(h * head_rows, (h + 1) * head_rows)
        _write_rows(acc[r], running_max[r], running_sum[r], out, out_at, lse, part_out,
                    part_lse, b, head0 + h * group, group, q0, n_q, tasks[h, TASK_PART],
                    lse_only)


@njit(**JIT)
def _row_starts(at, pages, page_size, b, head, j0, n_k, starts):
    """Flat indices of rows ``j0:j0 + n_k`` of ``x[b, head]`` (``page_size`` 0), or of the
    logical positions ``j0:j0 + n_k`` of sequence ``b`` through the block table."""
    starts = starts[:n_k]
    if page_size == 0:
        first = _row_start(at, b, head, j0)
        for jj in range(n_k):
            starts[jj] = first + jj * at[3]
    else:
        for jj in range(n_k):
            j = j0 + jj
            starts[jj] = _row_start(at, pages[b, j // page_size], head, j % page_size)
    return starts


@njit(fastmath={"reassoc", "contract"}, **JIT)  # reassociation vectorises the dot; inf stays inf
def _scores_in_place(k, starts, head_stride, q_tile, st, head_rows):
    """``st[j, r] = key j · q_tile[r]``, key j of the kv head of row r (head h: rows
    ``h * head_rows ...``) at flat index ``starts[j] + h * head_stride``, read once.

    Each dot product is summed in the tile's dtype, as BLAS and the Cython kernel sum
    theirs: a float64 sum of float32 products widened every product and took 1.9x as
    long (D = 64)."""
    width = q_tile.shape[1]
    for j in range(starts.shape[0]):
        for h in range(q_tile.shape[0] // head_rows):
            start = starts[j] + h * head_stride
            key = k[start:start + width]  # a view: its indices need no wraparound
            for r in range(h * head_rows, (h + 1) * head_rows):
                query = q_tile[r]
                total = like(q_tile, 0.0)
                for d in range(width):
                    total += load(key[d]) * query[d]
                st[j, r] = total


@njit(**JIT)
def _accumulate_in_place(st, v, starts, head_stride, acc, alpha, head_rows, skip_zero):
    """``acc[r] = acc[r] * alpha[r] + Σ_j st[j, r] value j``, value j of the kv head of row
    r at flat index ``starts[j] + h * head_stride`` (as in :func:`_scores_in_place`), read
    once; with ``skip_zero`` a zero weight adds nothing (``0 * NaN`` is NaN).

    Without ``skip_zero``, four keys at a time: an accumulator element is loaded and
    stored once for the four, its products still added key by key (the same bits as one
    key at a time; 1.35-1.9x faster, D = 64)."""
    _rescale(acc, alpha)
    width = acc.shape[1]
    by_four = 0 if skip_zero else starts.shape[0] - starts.shape[0] % 4
    for j in range(0, by_four, 4):
        for h in range(acc.shape[0] // head_rows):
            s0, s1 = starts[j] + h * head_stride, starts[j + 1] + h * head_stride
            s2, s3 = starts[j + 2] + h * head_stride, starts[j + 3] + h * head_stride
            v0, v1 = v[s0:s0 + width], v[s1:s1 + width]
            v2, v3 = v[s2:s2 + width], v[s3:s3 + width]
            for r in range(h * head_rows, (h + 1) * head_rows):
                w0, w1, w2, w3 = st[j, r], st[j + 1, r], st[j + 2, r], st[j + 3, r]
                row = acc[r]
                for d in range(width):
                    x = row[d]
                    x += w0 * load(v0[d])
                    x += w1 * load(v1[d])
                    x += w2 * load(v2[d])
                    x += w3 * load(v3[d])
                    row[d] = x
    for j in range(by_four, starts.shape[0]):
        for h in range(acc.shape[0] // head_rows):
            start = starts[j] + h * head_stride
            value = v[start:start + width]
            for r in range(h * head_rows, (h + 1) * head_rows):
                weight = st[j, r]
                if skip_zero and weight == 0.0:
                    continue
                row = acc[r]
                for d in range(width):
                    row[d] += weight * load(value[d])


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
