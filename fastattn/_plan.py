"""The tiling plan: block sizes, the task table and the work split across threads.

One plan, made once per call in Python, drives every compiled backend, so the Numba
and Cython kernels walk exactly the same tasks in the same order.  The plan depends
on the shape of the problem only; the thread count decides which worker runs which
task, never what a task computes, so results do not depend on the number of threads.
The task and merge tables' columns, the band and what a kernel does with a plan are
the kernel contract (:mod:`fastattn._contract`).
"""

import functools
from dataclasses import dataclass, replace

import numpy as np

from ._contract import (MERGE_BATCH, MERGE_COLUMNS, MERGE_FIRST_PART, MERGE_KV_HEAD,
                        MERGE_N_PARTS, MERGE_Q_START, MERGE_Q_STOP, TASK_BAND_SHIFT,
                        TASK_BATCH, TASK_COLUMNS, TASK_K_START, TASK_K_STOP, TASK_KV_BATCH,
                        TASK_KV_HEAD, TASK_PART, TASK_Q_START, TASK_Q_STOP, Band)

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

MIN_WORKER_COST = 1 << 12
"""Scores (rows x keys) a worker should have at least: below it, starting and joining
one more thread costs more than it saves.  Measured here (Cython, decoding Lq = 1,
Hq = 32, Hk = 8, Lk = 256, 8192 scores): one worker 81 us, two 67 us; (1, 1, 16, 64),
256 scores, stays on one."""

ROUND_COST = 1 << 25
"""Scores per worker in one round of a long call (about 0.1-0.3 s here): between rounds
Python runs, so Ctrl-C interrupts a call promptly (see :func:`rounds`)."""


@dataclass(frozen=True)
class WorkPlan:
    """What every plan has: block sizes, the kv group, the band, a task table with each
    task's cost, each worker's first task, and the number of partial slots."""

    block_q: int
    block_k: int
    group: int
    band: Band
    tasks: np.ndarray
    task_costs: np.ndarray
    worker_starts: np.ndarray
    n_parts: int

    @property
    def n_workers(self):
        return len(self.worker_starts) - 1

    @functools.cached_property
    def total_cost(self):
        return int(self.task_costs.sum())

    @property
    def max_rows(self):
        return self.group * self.block_q


@dataclass(frozen=True)
class TilingPlan(WorkPlan):
    """The forward's plan: a :class:`WorkPlan` with ``TASK_*`` columns and the split-KV
    merge table (``MERGE_*`` columns); see the module docstring."""

    merges: np.ndarray = None


@functools.lru_cache(maxsize=256)
def make_plan(batch, kv_heads, group, lq, lk, band, n_threads, block_q=None, block_k=None):
    """Plan the tiled pass of a problem with ``batch * kv_heads`` head groups.

    Plans are cached (a decoding loop or a model's layers ask for the same shapes over
    and over); their arrays are read-only, so a cached plan cannot change.
    """
    block_q, block_k = block_sizes(group, lq, lk, block_q, block_k)
    rows = _row_tasks(batch, kv_heads, lq, lk, block_q, band)
    return plan_of_tasks(rows, group, band, block_q, block_k, n_threads)


def block_sizes(group, lq, lk, block_q=None, block_k=None):
    """``(block_q, block_k)`` of a problem whose longest query and key ranges are ``lq``, ``lk``
    (the caller's blocks, or the automatic ones), clipped to the problem."""
    block_q = block_q or max(1, TARGET_ROWS // max(group, 1))
    block_q = max(1, min(block_q, lq))
    if block_k is None:
        block_k = min(max(TILE_SCORES // max(group * block_q, 1), BLOCK_K_RANGE[0]),
                      BLOCK_K_RANGE[1])
    return block_q, max(1, min(block_k, max(lk, 1)))


def plan_of_tasks(rows, group, band, block_q, block_k, n_threads, parts=None):
    """The :class:`TilingPlan` that runs the tasks ``rows`` (``TASK_*`` columns).

    ``parts`` is ``(merges, n_parts)`` for tasks that already write split-KV slots;
    without it, the tasks write their rows and long key ranges of too few tasks are
    split (split-KV).  The tasks are cut into contiguous runs of about equal cost, one
    per worker.  ``block_q`` bounds every task's rows; the plan's arrays are read-only.
    """
    tasks, merges, n_parts = _split_long_rows(rows) if parts is None else (rows, *parts)
    costs = group * (tasks[:, TASK_Q_STOP] - tasks[:, TASK_Q_START]) * (
        tasks[:, TASK_K_STOP] - tasks[:, TASK_K_START]) + block_k
    worker_starts = balanced_starts(costs, n_threads)
    for array in (tasks, costs, worker_starts, merges):
        array.flags.writeable = False
    return TilingPlan(block_q=block_q, block_k=block_k, group=group, band=band, tasks=tasks,
                      task_costs=costs, worker_starts=worker_starts, n_parts=n_parts,
                      merges=merges)


def _row_tasks(batch, kv_heads, lq, lk, block_q, band):
    """One task per (batch, kv head, query block), with its key range clipped to the band.

    An empty key range still makes a task: it writes the rows' zeros and -inf lse.
    """
    q_starts = np.arange(0, lq, block_q, dtype=np.int64)
    q_stops = np.minimum(q_starts + block_q, lq)
    k_starts, k_stops = band.key_range(q_starts, q_stops, lk)
    per_block = np.stack([q_starts, q_stops, k_starts, k_stops], axis=1)

    n_blocks = len(q_starts)
    b, h, blk = np.meshgrid(np.arange(batch), np.arange(kv_heads), np.arange(n_blocks),
                            indexing="ij")
    tasks = np.empty((b.size, TASK_COLUMNS), dtype=np.int64)
    tasks[:, TASK_BATCH] = b.ravel()
    tasks[:, TASK_KV_HEAD] = h.ravel()
    tasks[:, TASK_Q_START:TASK_K_STOP + 1] = per_block[blk.ravel()]
    tasks[:, TASK_PART] = -1
    tasks[:, TASK_KV_BATCH] = tasks[:, TASK_BATCH]
    tasks[:, TASK_BAND_SHIFT] = 0
    return tasks


def _split_long_rows(tasks):
    """Split the key ranges of too few tasks so that every thread has work (split-KV).

    The number of parts depends on the shape only, so the merged result is the same
    for any thread count.  Returns the new task table, the merge table (one row of
    ``MERGE_*`` columns per split task) and the number of partial slots; the parts
    of one split task are consecutive slots.
    """
    n_tasks = len(tasks)
    unsplit = tasks, np.empty((0, MERGE_COLUMNS), dtype=np.int64), 0
    if n_tasks == 0 or n_tasks >= MIN_PARALLEL_TASKS:
        return unsplit
    key_counts = tasks[:, TASK_K_STOP] - tasks[:, TASK_K_START]
    if key_counts.max() < 2 * MIN_SPLIT_KEYS:  # no task has keys for two parts
        return unsplit
    wanted = -(-MIN_PARALLEL_TASKS // n_tasks)
    n_splits = np.minimum(np.maximum(key_counts // MIN_SPLIT_KEYS, 1), wanted)

    # Task t becomes n_splits[t] pieces; piece i of n covers keys start + i * count // n
    # up to start + (i + 1) * count // n (whole keys, the last ending at the task's stop).
    owner = np.repeat(np.arange(n_tasks), n_splits)
    first_piece = np.cumsum(n_splits) - n_splits  # of each task
    piece_index = np.arange(len(owner)) - first_piece[owner]
    pieces = tasks[owner]
    starts, counts, n = tasks[owner, TASK_K_START], key_counts[owner], n_splits[owner]
    pieces[:, TASK_K_START] = starts + piece_index * counts // n
    pieces[:, TASK_K_STOP] = starts + (piece_index + 1) * counts // n
    split_pieces, split_tasks = n > 1, n_splits > 1
    n_parts = int(np.count_nonzero(split_pieces))
    pieces[split_pieces, TASK_PART] = np.arange(n_parts)  # a split task's parts: consecutive
    merges = np.empty((np.count_nonzero(split_tasks), MERGE_COLUMNS), dtype=np.int64)
    merges[:, [MERGE_BATCH, MERGE_KV_HEAD, MERGE_Q_START, MERGE_Q_STOP]] = tasks[split_tasks][
        :, [TASK_BATCH, TASK_KV_HEAD, TASK_Q_START, TASK_Q_STOP]]
    merges[:, MERGE_N_PARTS] = n_splits[split_tasks]
    merges[:, MERGE_FIRST_PART] = pieces[first_piece[split_tasks], TASK_PART]
    # Piece by piece: the same key range of every kv head together, so a worker reads
    # whole pages of a cache whose heads lie side by side (a paged or (B, L, H, D) cache).
    order = np.lexsort((pieces[:, TASK_KV_HEAD], piece_index, pieces[:, TASK_Q_START],
                        pieces[:, TASK_BATCH]))
    return pieces[order], merges, n_parts


def balanced_starts(costs, n_threads):
    """Cut the task list into contiguous runs of about equal cost, one per worker.

    Contiguous runs keep the tasks of one head on one thread (its keys stay in
    cache).  A task goes to the worker whose equal share of the total cost holds the
    task's midpoint, which balances causal work (later query blocks see more keys)
    and a few large tasks alike (cutting at task starts can give one worker 3 of 4
    equal tasks).
    """
    total = int(costs.sum())
    n_workers = max(1, min(n_threads, len(costs), total // MIN_WORKER_COST))
    if n_workers == 1:
        return np.array([0, len(costs)], dtype=np.int64)
    midpoints = 2 * np.cumsum(costs) - costs
    worker = midpoints * n_workers // (2 * total)
    starts = np.searchsorted(worker, np.arange(n_workers), side="left")
    return np.concatenate([starts, [len(costs)]]).astype(np.int64)


def in_one_round(plan):
    """Whether :func:`rounds` runs ``plan`` whole (short calls: the usual case)."""
    return plan.total_cost <= ROUND_COST * plan.n_workers


def rounds(plan):
    """Yield plans that together run ``plan``'s tasks, each worker about ``ROUND_COST`` a round.

    Every worker keeps its own tasks in its own order, so the results are those of
    ``plan``; only the points where Python regains control differ.
    """
    if in_one_round(plan):
        yield plan
        return
    costs, starts = plan.task_costs, plan.worker_starts
    worker = np.repeat(np.arange(plan.n_workers), np.diff(starts))
    done = np.cumsum(costs) - costs
    worker_first = np.append(done, 0)[starts[:-1]]  # cost done before each worker's run
    round_of = (done - worker_first[worker]) // ROUND_COST
    for r in range(int(round_of.max()) + 1):
        chosen = round_of == r
        counts = np.bincount(worker[chosen], minlength=plan.n_workers)
        yield replace(plan, tasks=plan.tasks[chosen], task_costs=costs[chosen],
                      worker_starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
