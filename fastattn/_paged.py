"""Decoding over a paged KV cache (vLLM / flash-attn's block tables) in one kernel call.

The cache ``(num_blocks, block_size, Hk, D)`` is viewed as ``(num_blocks, Hk, block_size,
D)`` (no copy) and handed to the kernel with the block table (``KernelCall.pages``): a
task is one (sequence, kv head), the sequence's query row against the logical positions
of its keys, which the kernel finds page by page through the table, never crossing a
page within one block of keys.  ``TASK_BAND_SHIFT`` puts the query at the sequence's
last position, so a window and ALiBi are measured from it.  A long sequence in a small
batch is split over the workers (split-KV) and merged exactly (:mod:`fastattn._merge`).
"""

import numpy as np

from ._backends import resolve
from ._config import get_config, thread_budget
from ._contract import (TASK_BAND_SHIFT, TASK_BATCH, TASK_COLUMNS, TASK_K_START,
                        TASK_K_STOP, TASK_KV_BATCH, TASK_KV_HEAD, TASK_PART, TASK_Q_STOP,
                        NO_MODIFIERS, Band)
from ._plan import block_sizes, plan_of_tasks
from ._validation import (as_array, check_flag, check_float_array, check_modifiers,
                          describe, normalise_scale, normalise_window)
from ._varlen import (check_index_array, empty_rows_lse, modifier_options, run_plan,
                      storage_and_compute)


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, window=None,
                    softcap=None, alibi_slopes=None, sinks=None, return_lse=False,
                    backend=None):
    """Decoding attention of one query token per sequence over a paged KV cache.

    Query ``b`` attends the first ``seq_lens[b]`` tokens of its sequence, whose token
    ``t`` is slot ``t % block_size`` of cache block ``block_table[b, t // block_size]``.
    The query is the sequence's last position (as in KV-cache decoding: causal,
    lower-right aligned).

    Parameters
    ----------
    q : array_like, shape (B, Hq, D)
        One query per sequence; dtypes as in :func:`fastattn.attention` (float16 and
        bfloat16 included).
    k_cache : array_like, shape (num_blocks, block_size, Hk, D)
        Cached keys (flash-attn's paged layout); ``Hk`` divides ``Hq``.
    v_cache : array_like, shape (num_blocks, block_size, Hk, Dv)
    block_table : array_like of int32 or int64, shape (B, max_blocks)
        The cache blocks of each sequence, in order.  The entries a sequence uses (its
        first ``ceil(seq_lens[b] / block_size)``) must lie in ``[0, num_blocks)``;
        the others are never read (padding such as -1 is fine).  Blocks may be shared.
    seq_lens : array_like of int32 or int64, shape (B,)
        Cached tokens per sequence, ``0 <= seq_lens[b] <= max_blocks * block_size``;
        a sequence of length 0 gives zeros (lse -inf).
    scale : float, optional
        Default ``1 / sqrt(D)``.
    window : tuple (left, right), optional
        Sliding window measured from the query: it sees the tokens
        ``seq_lens[b] - 1 - left .. seq_lens[b] - 1`` (``right`` reaches no token).
    softcap : float, optional
        ``s -> softcap * tanh(s / softcap)`` on the scaled scores, as in
        :func:`fastattn.attention`.
    alibi_slopes : array_like, shape (Hq,), optional
        ALiBi, as in :func:`fastattn.attention`: ``-alibi_slopes[h] * |j - c|``,
        ``j`` a token's position and ``c = seq_lens[b] - 1`` the query's.
    sinks : array_like, shape (Hq,), optional
        One logit per query head in every row's denominator, with no value (gpt-oss);
        the lse includes it.
    return_lse : bool, default False
        Also return the natural log-sum-exp of each row.
    backend : {"naive", "numba", "cython", "auto"}, optional
        Default: the ``backend`` setting (see :func:`fastattn.config_context`).

    Returns
    -------
    out : ndarray, shape (B, Hq, Dv), in ``np.result_type(q, k_cache, v_cache)``
    lse : ndarray, shape (B, Hq)
        Only with ``return_lse=True``; float32 for half inputs, else the result dtype.

    Raises
    ------
    TypeError, ValueError
        For a wrong dtype, shape or value (a block id outside the cache, a length beyond
        the table); the message names the argument.  Nothing outside the cache is read.

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> rng = np.random.default_rng(0)
    >>> k_cache, v_cache = rng.normal(size=(2, 6, 4, 1, 8))  # 6 blocks of 4 tokens
    >>> q = rng.normal(size=(2, 2, 8))                      # 2 sequences, 2 heads
    >>> table = np.array([[5, 1, 0], [2, 3, 0]], dtype=np.int32)
    >>> lens = np.array([7, 4], dtype=np.int32)
    >>> out = fastattn.paged_attention(q, k_cache, v_cache, table, lens)
    >>> k0 = k_cache[[5, 1]].reshape(8, 1, 8)[:7].transpose(1, 0, 2)  # sequence 0's keys
    >>> v0 = v_cache[[5, 1]].reshape(8, 1, 8)[:7].transpose(1, 0, 2)
    >>> out.shape, bool(np.allclose(out[0], fastattn.attention(q[0][:, None], k0, v0)[:, 0]))
    ((2, 2, 8), True)
    """
    call = _validate(q, k_cache, v_cache, block_table, seq_lens, window, scale)
    call.modifiers = check_modifiers(softcap, alibi_slopes, sinks, call.q.shape[1],
                                     call.compute_dtype)
    return_lse = check_flag("return_lse", return_lse)
    settings = get_config()
    chosen = resolve(backend if backend is not None else settings["backend"])
    if chosen.run_kernel is None:
        out, lse = _naive_paged(call)
    else:
        out, lse = _tiled_paged(chosen.run_kernel, call, settings)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------- validation


class _PagedCall:
    """A checked call: arrays in the storage dtype, the table, the lengths, options."""

    def __init__(self, q, k_cache, v_cache, table, lengths, window, scale, dtypes):
        self.q, self.k_cache, self.v_cache = q, k_cache, v_cache
        self.table, self.lengths = table, lengths
        self.window, self.scale = window, scale
        self.modifiers = NO_MODIFIERS  # the task's band shift carries the diagonal
        self.storage_dtype, self.compute_dtype = dtypes

    @property
    def block_size(self):
        return self.k_cache.shape[1]

    @property
    def group(self):
        return self.q.shape[1] // self.k_cache.shape[2]

    @property
    def used_pages(self):
        """Pages of each sequence: ``ceil(seq_lens / block_size)``."""
        return _pages_used(self.lengths, self.block_size)


def _validate(q, k_cache, v_cache, block_table, seq_lens, window, scale):
    q, k_cache, v_cache = (as_array(name, x) for name, x in
                           (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)))
    _check_shapes(q, k_cache, v_cache)
    table = check_index_array("block_table", block_table, 2, "block ids, shape (B, max_blocks)")
    lengths = check_index_array("seq_lens", seq_lens, 1, "lengths, shape (B,)")
    if table.shape[0] != q.shape[0] or lengths.shape[0] != q.shape[0]:
        raise ValueError(f"q, block_table and seq_lens must have one batch size B: "
                         f"{describe('q', q)}, {describe('block_table', table)}, "
                         f"{describe('seq_lens', lengths)}")
    lengths, table = lengths.astype(np.int64, copy=False), table.astype(np.int64, copy=False)
    _check_lengths(lengths, table.shape[1], k_cache.shape[1])
    _check_block_ids(table, lengths, k_cache.shape[:2])
    dtypes = storage_and_compute(*(("q", q), ("k_cache", k_cache), ("v_cache", v_cache)))
    return _PagedCall(*(x.astype(dtypes[0], copy=False) for x in (q, k_cache, v_cache)),
                      table, lengths, normalise_window(window),
                      normalise_scale(scale, q.shape[2], dtypes[1]), dtypes)


def _check_shapes(q, k_cache, v_cache):
    for name, x, ndim, axes in (("q", q, 3, "(B, Hq, D)"),
                                ("k_cache", k_cache, 4, "(num_blocks, block_size, Hk, D)"),
                                ("v_cache", v_cache, 4, "(num_blocks, block_size, Hk, Dv)")):
        check_float_array(name, x)
        if x.ndim != ndim:
            raise ValueError(f"{describe(name, x)}: expected {ndim} dimensions {axes}")
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"k_cache and v_cache must have the same (num_blocks, block_size, "
                         f"Hk): {describe('k_cache', k_cache)}, {describe('v_cache', v_cache)}")
    if q.shape[2] != k_cache.shape[3]:
        raise ValueError(f"q and k_cache must have the same feature size D: "
                         f"{describe('q', q)}, {describe('k_cache', k_cache)}")
    if q.shape[2] == 0:
        raise ValueError(f"{describe('q', q)}: the feature size D must be at least 1")
    if k_cache.shape[1] == 0:
        raise ValueError(f"{describe('k_cache', k_cache)}: the block size must be at least 1")
    heads, kv_heads = q.shape[1], k_cache.shape[2]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"the kv heads Hk={kv_heads} must divide the query heads "
                         f"Hq={heads} (grouped-query attention): {describe('q', q)}, "
                         f"{describe('k_cache', k_cache)}")


def _check_lengths(lengths, max_blocks, block_size):
    # int64 seen as uint64: one comparison catches negative lengths too (a call's
    # validation is most of a small decoding step's time)
    outside = lengths.view(np.uint64) > max_blocks * block_size
    if outside.any():
        b = int(np.flatnonzero(outside)[0])
        raise ValueError(f"seq_lens[{b}] = {lengths[b]} is outside [0, {max_blocks * block_size}]"
                         f" (block_table has {max_blocks} blocks of {block_size} tokens per "
                         f"sequence)")


def _pages_used(lengths, block_size):
    """Pages (block table entries) each sequence uses: ``ceil(lengths / block_size)``."""
    return -(-lengths // block_size)


def _check_block_ids(table, lengths, cache_shape):
    """Every block id a sequence uses lies in the cache: nothing outside it is ever read."""
    num_blocks, block_size = cache_shape
    outside = table.view(np.uint64) >= num_blocks  # int64 as uint64: negatives too
    if not outside.any():  # the usual table: one test, no used-entry mask
        return
    pages = _pages_used(lengths, block_size)
    bad = outside & (np.arange(table.shape[1]) < pages[:, None])
    if bad.any():
        b, p = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"block_table[{b}, {p}] = {table[b, p]} is not a block of the cache "
                         f"(num_blocks = {num_blocks}, from k_cache.shape[0]); sequence {b} "
                         f"uses its first {pages[b]} entries")


# ---------------------------------------------------------------- running


def _tiled_paged(run_kernel, call, settings):
    batch, heads = call.q.shape[:2]
    out = np.empty((batch, heads, call.v_cache.shape[3]), call.storage_dtype)
    if batch * heads == 0:
        return out, np.empty((batch, heads), call.compute_dtype)
    band = Band.from_alignment(1, 1, "upper_left", call.window)  # the query: position 0
    _, block_k = block_sizes(call.group, 1, int(call.lengths.max(initial=1)),
                             settings["block_q"], settings["block_k"])
    plan = plan_of_tasks(sequence_tasks(call, band), call.group, band, 1, block_k,
                         thread_budget(settings["num_threads"]))
    lse = run_plan(run_kernel, plan, call.q[:, :, None], call.k_cache.transpose(0, 2, 1, 3),
                   call.v_cache.transpose(0, 2, 1, 3), call, out[:, :, None],
                   pages=np.ascontiguousarray(call.table))
    return out, lse[..., 0]


def sequence_tasks(call, band):
    """One task per (sequence, kv head): the query against the logical positions its
    window lets it see, through the block table (``KernelCall.pages``; the kv batch is the
    sequence).  The band shift ``seq_len - 1`` puts the query at its own position, so
    ``j - i - shift`` is a key's position relative to it.  Long sequences of a small
    batch are split over the workers (split-KV) by the plan.
    """
    lengths = call.lengths[:, None]
    tasks = np.zeros((len(lengths), call.k_cache.shape[2], TASK_COLUMNS), np.int64)
    tasks[:, :, TASK_BATCH] = tasks[:, :, TASK_KV_BATCH] = np.arange(len(lengths))[:, None]
    tasks[:, :, TASK_KV_HEAD] = np.arange(tasks.shape[1])
    tasks[:, :, TASK_Q_STOP] = 1
    if band.has_lo:  # the window's first key (else 0)
        tasks[:, :, TASK_K_START] = np.minimum(np.maximum(lengths - 1 + band.lo, 0), lengths)
    tasks[:, :, TASK_K_STOP] = lengths
    tasks[:, :, TASK_BAND_SHIFT] = lengths - 1
    tasks[:, :, TASK_PART] = -1
    return tasks.reshape(-1, TASK_COLUMNS)  # (sequence, head) order


# ---------------------------------------------------------------- naive


def _naive_paged(call):
    """Each sequence's gathered cache through the naive reference of :func:`attention`."""
    from ._api import attention

    batch, heads = call.q.shape[:2]
    out = np.zeros((batch, heads, call.v_cache.shape[3]), call.storage_dtype)
    lse = empty_rows_lse((batch, heads), call)
    for b in range(batch):
        length = int(call.lengths[b])
        if length == 0:
            continue
        pages = call.table[b, :call.used_pages[b]]
        tokens = (len(pages) * call.block_size,)
        k, v = (cache[pages].reshape(tokens + cache.shape[2:])[:length].transpose(1, 0, 2)
                for cache in (call.k_cache, call.v_cache))
        rows, row_lse = attention(call.q[b][:, None], k, v, causal="lower_right",
                                  window=call.window, scale=call.scale, return_lse=True,
                                  backend="naive", **modifier_options(call.modifiers))
        out[b], lse[b] = rows[:, 0], row_lse[:, 0]
    return out, lse
