"""The tiling plan: block sizes, the task table and the work split across threads.

One plan, made once per call in Python, drives every compiled backend, so the Numba
and Cython kernels walk exactly the same tasks in the same order.  The plan depends
on the shape of the problem only; the thread count decides which worker runs which
task, never what a task computes, so results do not depend on the number of threads.

The kernel contract
-------------------
A kernel receives 4-D arrays ``q (B, Hq, Lq, D)``, ``k (B, Hk, Lk, D)``,
``v (B, Hk, Lk, Dv)``, ``out (B, Hq, Lq, Dv)``, ``lse (B, Hq, Lq)``, all in the
compute dtype with any strides (their last axis has unit stride), and a mask view
``(B, Hq, Lq, Lk)`` of any strides (zero strides included) that is uint8 (1 = keep)
or additive in the compute dtype.  It runs::

    for worker in prange(n_workers):
        for t in range(worker_starts[worker], worker_starts[worker + 1]):
            b, kv_head, q_start, q_stop, k_start, k_stop, part = tasks[t]

A task covers the query rows ``q_start:q_stop`` of every query head of one kv head
(heads ``kv_head * group ... kv_head * group + group - 1``), scans the keys
``k_start:k_stop`` in blocks of ``block_k`` and keeps the online-softmax state of
``group * (q_stop - q_start) <= max_rows`` rows.  Query ``i`` may attend key ``j``
only where ``band_lo <= j - i <= band_hi`` (causal and window limits).  With
``part == -1`` the task writes its normalised rows into ``out`` and ``lse``;
otherwise into ``part_out[part]`` and ``part_lse[part]`` (row ``h * n + i`` for head
offset ``h`` and row offset ``i``), and :func:`merge_split_parts` combines them.
"""

from dataclasses import dataclass

import numpy as np

# Columns of the task table.
TASK_BATCH, TASK_KV_HEAD, TASK_Q_START, TASK_Q_STOP, TASK_K_START, TASK_K_STOP, TASK_PART = range(7)

UNBOUNDED = 1 << 62
"""Band limit meaning "no limit on this side"; far beyond any sequence length."""

TARGET_ROWS = 128
"""Query rows per task (all heads of a group together) when the caller sets no block."""

TILE_SCORES = 65536
"""Scores per tile (rows x keys) when the caller sets no block_k: 512 keys for 128 rows."""

BLOCK_K_RANGE = (512, 1024)
"""Bounds of the automatic block_k; few rows (decoding) take longer blocks."""

MIN_PARALLEL_TASKS = 16
"""Below this many row tasks, long key ranges are split (split-KV, for decoding)."""

MIN_SPLIT_KEYS = 1024
"""A split-KV part never covers fewer keys than this."""


@dataclass(frozen=True)
class TilingPlan:
    """Everything a kernel needs besides the arrays; see the module docstring."""

    block_q: int
    block_k: int
    group: int
    band_lo: int
    band_hi: int
    tasks: np.ndarray
    worker_starts: np.ndarray
    merges: np.ndarray
    n_parts: int

    @property
    def n_workers(self):
        return len(self.worker_starts) - 1

    @property
    def max_rows(self):
        return self.group * self.block_q


def diagonal_band(lq, lk, causal, window):
    """``(band_lo, band_hi)``: query ``i`` sees key ``j`` iff ``band_lo <= j - i <= band_hi``.

    The diagonal is key ``i`` for ``causal`` in (None, "upper_left") and key
    ``i + lk - lq`` for "lower_right"; the window ``(left, right)`` is measured
    from that same diagonal, and ``causal`` cuts everything right of it.
    """
    offset = lk - lq if causal == "lower_right" else 0
    lo, hi = -UNBOUNDED, UNBOUNDED
    if window is not None:
        left, right = window
        if left is not None:
            lo = offset - left
        if right is not None:
            hi = offset + right
    if causal is not None:
        hi = min(hi, offset)
    return lo, hi


def make_plan(batch, kv_heads, group, lq, lk, band, n_threads, block_q=None, block_k=None):
    """Plan the tiled pass of a problem with ``batch * kv_heads`` head groups."""
    block_q = block_q or max(1, TARGET_ROWS // group)
    block_q = max(1, min(block_q, lq))
    if block_k is None:
        block_k = min(max(TILE_SCORES // (group * block_q), BLOCK_K_RANGE[0]), BLOCK_K_RANGE[1])
    block_k = max(1, min(block_k, max(lk, 1)))
    band_lo, band_hi = band

    rows = _row_tasks(batch, kv_heads, lq, lk, block_q, band_lo, band_hi)
    tasks, merges, n_parts = _split_long_rows(rows)
    costs = group * (tasks[:, TASK_Q_STOP] - tasks[:, TASK_Q_START]) * (
        tasks[:, TASK_K_STOP] - tasks[:, TASK_K_START]) + block_k
    worker_starts = _balanced_starts(costs, n_threads)
    return TilingPlan(block_q, block_k, group, band_lo, band_hi, tasks, worker_starts,
                      merges, n_parts)


def _row_tasks(batch, kv_heads, lq, lk, block_q, band_lo, band_hi):
    """One task per (batch, kv head, query block), with its key range clipped to the band."""
    q_starts = np.arange(0, lq, block_q, dtype=np.int64)
    q_stops = np.minimum(q_starts + block_q, lq)
    k_starts = np.clip(q_starts + band_lo, 0, lk)
    k_stops = np.clip(q_stops - 1 + band_hi + 1, 0, lk)
    k_stops = np.maximum(k_stops, k_starts)  # an empty range still writes zeros
    per_block = np.stack([q_starts, q_stops, k_starts, k_stops], axis=1)

    n_blocks = len(q_starts)
    b, h, blk = np.meshgrid(np.arange(batch), np.arange(kv_heads), np.arange(n_blocks),
                            indexing="ij")
    tasks = np.empty((b.size, 7), dtype=np.int64)
    tasks[:, TASK_BATCH] = b.ravel()
    tasks[:, TASK_KV_HEAD] = h.ravel()
    tasks[:, TASK_Q_START:TASK_K_STOP + 1] = per_block[blk.ravel()]
    tasks[:, TASK_PART] = -1
    return tasks


def _split_long_rows(tasks):
    """Split the key ranges of too few tasks so that every thread has work (split-KV).

    The number of parts depends on the shape only, so the merged result is the same
    for any thread count.  Returns the new task table, the merge table (one row
    ``b, kv_head, q_start, q_stop, first_part, n_parts`` per split task) and the
    number of partial slots.
    """
    n_tasks = len(tasks)
    if n_tasks == 0 or n_tasks >= MIN_PARALLEL_TASKS:
        return tasks, np.empty((0, 6), dtype=np.int64), 0
    wanted = -(-MIN_PARALLEL_TASKS // n_tasks)
    key_counts = tasks[:, TASK_K_STOP] - tasks[:, TASK_K_START]
    n_splits = np.clip(key_counts // MIN_SPLIT_KEYS, 1, wanted)
    if np.all(n_splits == 1):
        return tasks, np.empty((0, 6), dtype=np.int64), 0

    pieces, merges, next_part = [], [], 0
    for task, n in zip(tasks, n_splits):
        if n == 1:
            pieces.append(task[None, :])
            continue
        edges = np.linspace(task[TASK_K_START], task[TASK_K_STOP], n + 1).astype(np.int64)
        split = np.repeat(task[None, :], n, axis=0)
        split[:, TASK_K_START], split[:, TASK_K_STOP] = edges[:-1], edges[1:]
        split[:, TASK_PART] = np.arange(next_part, next_part + n)
        pieces.append(split)
        merges.append([task[TASK_BATCH], task[TASK_KV_HEAD], task[TASK_Q_START],
                       task[TASK_Q_STOP], next_part, n])
        next_part += n
    return np.concatenate(pieces), np.array(merges, dtype=np.int64), next_part


def _balanced_starts(costs, n_threads):
    """Cut the task list into contiguous runs of about equal cost, one per worker.

    Contiguous runs keep the tasks of one head on one thread (its keys stay in
    cache); cutting at equal shares of the cumulative cost balances causal work,
    where later query blocks see more keys.
    """
    n_workers = max(1, min(n_threads, len(costs)))
    if len(costs) == 0:
        return np.zeros(2, dtype=np.int64)
    done_before = np.cumsum(costs) - costs
    share = done_before * n_workers // max(int(costs.sum()), 1)
    starts = np.searchsorted(share, np.arange(n_workers), side="left")
    return np.append(starts, len(costs)).astype(np.int64)


def merge_split_parts(plan, part_out, part_lse, out, lse):
    """Fold the split-KV partial results of ``plan`` into ``out`` and ``lse`` (in place)."""
    from ._merge import merge_states

    for b, kv_head, q_start, q_stop, first, n in plan.merges:
        n_rows = q_stop - q_start
        heads = slice(kv_head * plan.group, (kv_head + 1) * plan.group)
        acc_out = part_out[first, :plan.group * n_rows].astype(np.float64)
        acc_lse = part_lse[first, :plan.group * n_rows].astype(np.float64)
        for part in range(first + 1, first + n):
            acc_out, acc_lse = merge_states(
                acc_out, acc_lse, part_out[part, :plan.group * n_rows],
                part_lse[part, :plan.group * n_rows])
        out[b, heads, q_start:q_stop] = acc_out.reshape(plan.group, n_rows, -1)
        lse[b, heads, q_start:q_stop] = acc_lse.reshape(plan.group, n_rows)
