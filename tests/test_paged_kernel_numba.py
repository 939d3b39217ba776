"""The Numba kernel over a paged KV cache (``KernelCall.pages``), at the kernel boundary.

Each test builds the call by hand: a cache viewed as ``(num_blocks, Hk, page_size, D)``
(as :func:`fastattn.paged_attention` passes it), a block table with a block shared by two
sequences, tasks over logical key ranges that start past 0, split into split-KV parts
whose cuts fall anywhere in a page, and blocks of keys that cross pages.  The expected
values come from a float64 loop over each sequence's gathered keys.  Every cache slot
that no sequence uses is NaN, and the table's entries past a sequence's length are -1
or a NaN block: a key read from the wrong place, or through an entry the task must not
read, turns its row NaN.
"""

import importlib

import numpy as np
import pytest

from fastattn._contract import (MERGE_COLUMNS, TASK_BAND_SHIFT, TASK_BATCH, TASK_COLUMNS,
                                TASK_K_START, TASK_K_STOP, TASK_KV_BATCH, TASK_KV_HEAD,
                                TASK_PART, TASK_Q_STOP, Band, KernelCall, ScoreModifiers)
from fastattn._merge import merge_split_parts
from fastattn._plan import plan_of_tasks
from fastattn._tiled import part_buffers
from helpers import COMPILED_BACKENDS

pytestmark = pytest.mark.skipif("numba" not in COMPILED_BACKENDS,
                                reason="the numba backend is not available here")

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}


def paged_cache(rng, lengths, page_size, hk, widths, dtype):
    """``(k, v, pages)``: kernel views of a NaN-filled ``(num_blocks, page_size, Hk, D)``
    cache whose used slots are random, and the block table (sequences 0 and 1 share their
    first block; past each length, -1 and the never used NaN block alternate)."""
    used = [-(-n // page_size) for n in lengths]
    num_blocks = sum(used) + 1  # the last block is never used: it stays NaN
    order = rng.permutation(num_blocks - 1)
    pages = np.full((len(lengths), max(used) + 2), -1, np.int64)
    pages[:, 1::2] = num_blocks - 1
    first = 0
    for b, n in enumerate(used):
        pages[b, :n] = order[first:first + n]
        first += n
    pages[1, 0] = pages[0, 0]  # shared (both sequences are longer than a page)
    caches = [np.full((num_blocks, page_size, hk, width), np.nan, dtype) for width in widths]
    for cache in caches:
        for b, length in enumerate(lengths):
            for j in range(length):
                cache[pages[b, j // page_size], j % page_size] = rng.standard_normal(
                    cache.shape[2:])
    return (*(cache.transpose(0, 2, 1, 3) for cache in caches), pages)


def split_tasks(rng, lengths, k_starts, hk, lq):
    """One task per (sequence, kv head), rows ``0:lq`` at the sequence's end (band shift
    ``length - lq``), keys ``k_start:length``, cut into up to 3 parts at random keys.
    Returns the tasks, the merge table and the number of slots."""
    pieces, merges, n_parts = [], [], 0
    for b, (length, k_start) in enumerate(zip(lengths, k_starts)):
        for head in range(hk):
            inner = np.arange(k_start + 1, length)
            cuts = np.sort(rng.choice(inner, min(2, len(inner)), replace=False))
            edges = [k_start, *cuts, length]
            task = np.zeros((len(edges) - 1, TASK_COLUMNS), np.int64)
            task[:, TASK_BATCH] = task[:, TASK_KV_BATCH] = b
            task[:, TASK_KV_HEAD], task[:, TASK_Q_STOP] = head, lq
            task[:, TASK_K_START], task[:, TASK_K_STOP] = edges[:-1], edges[1:]
            task[:, TASK_BAND_SHIFT] = length - lq
            task[:, TASK_PART] = -1
            if len(task) > 1:
                task[:, TASK_PART] = np.arange(n_parts, n_parts + len(task))
                merges.append([b, head, 0, lq, n_parts, len(task)])
                n_parts += len(task)
            pieces.append(task)
    merges = np.array(merges, np.int64).reshape(-1, MERGE_COLUMNS)
    return np.concatenate(pieces), merges, n_parts


def reference(q, k, v, pages, lengths, k_starts, band, scale, modifiers):
    """float64 ``(out, lse)``: query row ``i`` of sequence ``b`` is at position
    ``length - lq + i`` and sees the keys ``j`` of ``k_start:length`` within the band."""
    batch, heads, lq, _ = q.shape
    group, page_size = heads // k.shape[1], k.shape[2]
    out = np.zeros((batch, heads, lq, v.shape[3]))
    lse = np.full((batch, heads, lq), -np.inf)
    slopes = (np.zeros(heads) if modifiers.alibi_slopes is None
              else modifiers.alibi_slopes.astype(np.float64))
    for b, (length, k_start) in enumerate(zip(lengths, k_starts)):
        keys = np.arange(k_start, length)
        blocks, slots = pages[b, keys // page_size], keys % page_size
        for h in range(heads):
            kb = k[blocks, h // group, slots].astype(np.float64)
            vb = v[blocks, h // group, slots].astype(np.float64)
            for i in range(lq):
                distance = keys - i - (length - lq)
                seen = (distance >= band.lo) & (distance <= band.hi)
                if not seen.any():
                    continue
                scores = kb[seen] @ q[b, h, i].astype(np.float64) * scale
                if modifiers.softcap:
                    scores = modifiers.softcap * np.tanh(scores / modifiers.softcap)
                scores -= slopes[h] * np.abs(distance[seen])
                top = scores.max()
                weights = np.exp(scores - top)
                out[b, h, i] = weights @ vb[seen] / weights.sum()
                lse[b, h, i] = top + np.log(weights.sum())
    return out, lse


CASES = {
    # page_size, hk, group, lq, block_k, band, modifiers, dtype, lse_only
    "pages of 1, alibi": (1, 2, 2, 1, 4, Band(-9, 0), "alibi", np.float64, False),
    "pages of 3, BLAS rows": (3, 1, 2, 5, 5, Band(-7, 0), "alibi", np.float32, False),
    "pages of 3, lse only": (3, 2, 1, 1, 4, Band(hi=0), None, np.float64, True),
    "pages of 16, softcap": (16, 2, 2, 1, 5, Band(hi=0), "softcap", np.float32, False),
    "pages of 16, view": (16, 1, 4, 1, 7, Band(-30, 0), "alibi", np.float64, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_paged_call_is_attention_over_the_gathered_cache(rng, case):
    page_size, hk, group, lq, block_k, band, modifier, dtype, lse_only = case
    lengths = [page_size * 3 + 2, page_size + 1, 2 * page_size, 7, 0, 40]
    k_starts = [3, 0, page_size - 1 if page_size > 1 else 1, 5, 0, 17]
    k, v, pages = paged_cache(rng, lengths, page_size, hk, (8, 6), dtype)
    heads = hk * group
    q = rng.standard_normal((len(lengths), heads, lq, 8)).astype(dtype)
    modifiers = {"alibi": ScoreModifiers(alibi_slopes=np.linspace(0.05, 0.4, heads)
                                         .astype(dtype)),
                 "softcap": ScoreModifiers(softcap=1.5), None: ScoreModifiers()}[modifier]
    tasks, merges, n_parts = split_tasks(rng, lengths, k_starts, hk, lq)
    assert n_parts > 0
    plan = plan_of_tasks(tasks, group, band, lq, block_k, 2, parts=(merges, n_parts))
    out = None if lse_only else np.full((len(lengths), heads, lq, 6), 7.0, dtype)
    call = KernelCall(q=q, k=k, v=None if lse_only else v, mask=None, mask_kind=0,
                      scale=0.3, plan=plan, out=out,
                      lse=np.full((len(lengths), heads, lq), 7.0, dtype),
                      part_out=np.zeros((n_parts, plan.max_rows, 0 if lse_only else 6), dtype),
                      part_lse=np.zeros((n_parts, plan.max_rows), dtype),
                      modifiers=modifiers, pages=pages)
    importlib.import_module("fastattn._numba").run_kernel(call)
    merge_split_parts(plan, call.part_out, call.part_lse, call.out, call.lse)

    ref_out, ref_lse = reference(q, k, v, pages, lengths, k_starts, band, 0.3, modifiers)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(call.lse, ref_lse, rtol=tol, atol=tol)
    if not lse_only:
        np.testing.assert_allclose(call.out, ref_out, rtol=tol, atol=tol)
        assert np.all(call.out[4] == 0)  # length 0: zeros and lse -inf
    assert np.all(np.isneginf(call.lse[4]))


def test_a_paged_call_compiles_nothing_new(rng):
    """Pages are arguments of the same types with or without a table: a paged call runs
    the signature a plain call of its dtype compiled (Numba takes tens of seconds each)."""
    from fastattn._numba.kernel import run_worker
    run_kernel = importlib.import_module("fastattn._numba").run_kernel
    k, v = rng.standard_normal((3, 1, 4, 8)), rng.standard_normal((3, 1, 4, 6))
    q = rng.standard_normal((1, 1, 1, 8))
    compiled = []
    for pages, n_keys in ((None, 4), (np.array([[2, 0]]), 8)):
        task = np.array([[0, 0, 0, 1, 0, n_keys, -1, 0, n_keys - 1]], np.int64)
        plan = plan_of_tasks(task, 1, Band(), 1, 4, 1,
                             parts=(np.zeros((0, MERGE_COLUMNS), np.int64), 0))
        call = KernelCall(q=q, k=k, v=v, mask=None, mask_kind=0, scale=0.5, plan=plan,
                          out=np.empty((1, 1, 1, 6)), lse=np.empty((1, 1, 1)), pages=pages,
                          **part_buffers(plan, 6, np.float64))
        run_kernel(call)
        compiled.append(len(run_worker.signatures))
    assert compiled[0] == compiled[1]
