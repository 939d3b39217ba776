"""The backward plan: key chunks as tasks, their query rows, and the work split across threads.

A backward task owns the keys ``k_start:k_stop`` of one (batch, kv head): it writes
their ``dk``/``dv`` rows and no other task touches them.  Its ``dq`` contributions
go straight into ``dq`` when the task is its head's only one (``part`` -1), else into
a partial slot of its own that the driver sums in slot order (see
:mod:`fastattn._contract`, ``BWD_*``).  Like the forward plan, everything here
depends on the shape only; the thread count decides which worker runs a task,
never what it computes, so gradients are bit-identical for any number of threads.
"""

import numpy as np

from ._contract import (BWD_BAND_SHIFT, BWD_BATCH, BWD_COLUMNS, BWD_K_START, BWD_K_STOP,
                        BWD_KV_HEAD, BWD_PART, BWD_Q_START, BWD_Q_STOP, Band)
from ._plan import MIN_PARALLEL_TASKS, WorkPlan, balanced_starts

TARGET_ROWS = 256
"""Query rows per block (all heads of a group together) when the caller sets no block_q."""

BLOCK_K = 256
"""Keys per block when the caller sets no block_k: the ``dk``/``dv`` tile a task holds
while it walks the query blocks.  With 256 rows the two key-major tiles (``Pᵀ``, ``dSᵀ``)
take 512 KB in float32, within a 1 MB L2.  Measured here (N=2048, H=8, D=64, float32,
one thread's CPU time): 128 x 128 blocks 244 ms, 256 x 256 223 ms, 512 x 512 219 ms,
causal 133 / 128 / 136 ms."""

MIN_CHUNK_KEYS = 512
"""Keys a chunk covers at least, on average: a chunk costs only one more partial ``dq``
sum, so half the forward's split-KV minimum.  Measured here (Cython, B x H = 1,
N = 1024, float32): one 1024-key task 3.8 ms, two 512-key chunks 2.2 ms."""

MAX_CHUNKS = 8
"""At most this many key chunks per (batch, kv head): each one's partial ``dq`` slot is
the size of that head group's ``dq``, so the partial slots never exceed 8 x ``dq``."""


def make_backward_plan(batch, kv_heads, group, lq, lk, band, n_threads, block_q=None,
                       block_k=None):
    """Plan the backward pass of ``batch * kv_heads`` head groups of ``group`` query heads.

    Examples
    --------
    One head group and 2048 keys: four key chunks of about equal work (causal: the
    early keys are seen by more queries), each with its own partial ``dq`` slot.

    >>> from fastattn._contract import Band
    >>> plan = make_backward_plan(1, 1, 1, 2048, 2048, Band(hi=0), n_threads=2)
    >>> plan.tasks[:, 2:4].tolist()  # k_start, k_stop
    [[0, 256], [256, 512], [512, 1024], [1024, 2048]]
    >>> plan.tasks[:, 4:7].tolist()  # q_start, q_stop (the rows that see the keys), part
    [[0, 2048, 0], [256, 2048, 1], [512, 2048, 2], [1024, 2048, 3]]
    >>> plan.worker_starts.tolist()  # two tasks each
    [0, 2, 4]
    """
    block_q = max(1, min(block_q or max(1, TARGET_ROWS // group), max(lq, 1)))
    block_k = max(1, min(block_k or BLOCK_K, max(lk, 1)))
    seen = rows_per_key(band, lq, lk)  # queries per key
    edges = chunk_edges(seen, chunk_count(batch * kv_heads, lk), block_k)
    chunk_rows = np.stack(band.row_range(edges[:-1], edges[1:], lq), axis=1)
    chunk_costs = group * chunk_work(seen, edges) + block_k

    n_chunks, n_heads = len(edges) - 1, batch * kv_heads
    tasks = np.empty((n_heads * n_chunks, BWD_COLUMNS), dtype=np.int64)
    head = np.repeat(np.arange(n_heads), n_chunks)
    tasks[:, BWD_BATCH], tasks[:, BWD_KV_HEAD] = head // max(kv_heads, 1), head % max(kv_heads, 1)
    tasks[:, BWD_K_START] = np.tile(edges[:-1], n_heads)
    tasks[:, BWD_K_STOP] = np.tile(edges[1:], n_heads)
    tasks[:, [BWD_Q_START, BWD_Q_STOP]] = np.tile(chunk_rows, (n_heads, 1))
    split = n_chunks > 1
    tasks[:, BWD_PART] = np.arange(len(tasks)) if split else -1
    tasks[:, BWD_BAND_SHIFT] = 0
    costs = np.tile(chunk_costs, n_heads).astype(np.int64)
    return WorkPlan(block_q, block_k, group, band, tasks, costs,
                    balanced_starts(costs, n_threads), len(tasks) if split else 0)


def chunk_count(n_heads, lk):
    """Key chunks per head group: enough tasks for ``MIN_PARALLEL_TASKS`` in all, from the shape.

    Few head groups (``batch * kv_heads`` below 16) split their keys, but never into
    chunks of fewer than ``MIN_CHUNK_KEYS`` keys on average, nor into more than
    ``MAX_CHUNKS``.
    """
    if n_heads == 0 or n_heads >= MIN_PARALLEL_TASKS:
        return 1
    wanted = -(-MIN_PARALLEL_TASKS // n_heads)
    return int(max(1, min(wanted, lk // MIN_CHUNK_KEYS, MAX_CHUNKS)))


def rows_per_key(band, lq, lk):
    """How many queries the band lets see each key (the work of a key, per query head)."""
    keys = np.arange(lk, dtype=np.int64)
    first, stop = band.row_range(keys, keys + 1, lq)
    return (stop - first).astype(np.int64)


def chunk_work(rows_per_key, edges):
    """The (query, key) pairs of each chunk of keys ``edges[c]:edges[c + 1]``."""
    done = np.concatenate([[0], np.cumsum(rows_per_key)])
    return done[edges[1:]] - done[edges[:-1]]


def chunk_edges(rows_per_key, n_chunks, block_k):
    """Edges ``0 = e0 < e1 < ... = lk`` of chunks of about equal work, on block boundaries.

    Equal work, not equal keys: under a causal band the first keys are seen by the most
    queries, and equal shares keep the workers balanced with only a few chunks.
    """
    lk = len(rows_per_key)
    if n_chunks <= 1 or lk == 0:
        return np.array([0, lk], dtype=np.int64)
    done = np.cumsum(rows_per_key)
    total = int(done[-1])
    if total == 0:
        cuts = np.arange(1, n_chunks) * lk // n_chunks
    else:
        cuts = np.searchsorted(done, np.arange(1, n_chunks) * total // n_chunks, side="left")
    cuts = (cuts + block_k // 2) // block_k * block_k
    return np.unique(np.concatenate([[0], np.clip(cuts, 0, lk), [lk]])).astype(np.int64)
