"""The Cython forward kernel over a paged KV cache (``KernelCall.pages``), at the kernel
boundary.

Hand-made task tables over a block table (random blocks, one shared by two sequences,
-1 past each sequence's pages), key ranges that start past 0 and stop before the
sequence's end, split into parts whose edges fall inside pages, ALiBi (and softcap)
measured from each query's logical position, page sizes 1, 3 and 16, key blocks that
start inside pages.  Both paths of the kernel: the decode kernel (one query row per
head, float32 / float64, softmax blocks spanning many pages, one longer than its
256-key block) and the tiles (several query rows, half precision, lse-only).  Caches
with a key's kv heads side by side (vLLM's layout: the decode kernel serves several
heads per call) or head-major.  The reference is a float64 loop over the gathered
(contiguous) cache, or naive attention on it for the public functions.
"""

import ml_dtypes
import numpy as np
import pytest

from fastattn._contract import (MASK_NONE, MERGE_COLUMNS, TASK_BAND_SHIFT, TASK_BATCH,
                                TASK_COLUMNS, TASK_K_START, TASK_K_STOP, TASK_KV_BATCH,
                                TASK_KV_HEAD, TASK_PART, TASK_Q_START, TASK_Q_STOP, Band,
                                KernelCall, ScoreModifiers)
import fastattn
from fastattn._merge import merge_split_parts
from fastattn._plan import plan_of_tasks
from fastattn._tiled import part_buffers
from helpers import BACKENDS

pytestmark = pytest.mark.skipif("cython" not in BACKENDS, reason="the Cython backend is not built")

BF16 = np.dtype(ml_dtypes.bfloat16)
HK, GROUP, D, DV = 2, 3, 20, 12  # D, DV not whole vectors: the kernels' tails too
LENGTHS = [37, 0, 1, 300, 16, 50]  # 300: more than one 256-key decode block
BAND = Band(-250, 0)  # the query's window: 250 keys back, none ahead (causal)
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-5,
             np.dtype(np.float16): 2e-3, BF16: 1e-2}


def cython_kernel():
    from fastattn._cython import run_kernel

    return run_kernel


def paged_cache(rng, page_size, dtype, filler=-1, side_by_side=True):
    """k and v ``(num_blocks, Hk, page_size, width)`` as the kernel sees them: views of a
    vLLM cache ``(num_blocks, page_size, Hk, width)`` (a key's heads side by side), or
    head-major arrays; and the int64 block table, with distinct random blocks per
    sequence, sequence 3 sharing sequence 0's first block, and ``filler`` past each
    sequence's pages."""
    used = [-(-n // page_size) for n in LENGTHS]
    num_blocks = sum(used) + 3
    shape = (num_blocks, page_size, HK) if side_by_side else (num_blocks, HK, page_size)
    k_cache, v_cache = (rng.standard_normal(shape + (width,)).astype(dtype)
                        for width in (D, DV))
    if not side_by_side:  # the views below undo this swap
        k_cache, v_cache = k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3)
    table = np.full((len(LENGTHS), max(used) + 1), filler, np.int64)
    blocks = iter(rng.permutation(num_blocks))
    for s, n_pages in enumerate(used):
        table[s, :n_pages] = [next(blocks) for _ in range(n_pages)]
    table[3, 0] = table[0, 0]
    return k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3), table


def gathered(cache, table):
    """The keys (or values) of every sequence at their logical positions, float64
    ``(n_seqs, Hk, max length, width)`` (zeros past a sequence's length)."""
    page_size = cache.shape[2]
    out = np.zeros((len(LENGTHS), HK, max(LENGTHS), cache.shape[3]))
    for s, n in enumerate(LENGTHS):
        j = np.arange(n)
        out[s, :, :n] = cache[table[s, j // page_size], :, j % page_size].transpose(1, 0, 2)
    return out


def sequence_tasks(n_q):
    """One task per (sequence, kv head): its last ``n_q`` positions as queries (the band
    shift puts query ``i`` at position ``n - n_q + i``), keys from a fifth of the way in
    to a ninth before the end."""
    tasks = np.zeros((len(LENGTHS) * HK, TASK_COLUMNS), np.int64)
    for t, (s, h) in enumerate(np.ndindex(len(LENGTHS), HK)):
        n = LENGTHS[s]
        tasks[t, [TASK_BATCH, TASK_KV_HEAD, TASK_KV_BATCH]] = s, h, s
        tasks[t, [TASK_Q_START, TASK_Q_STOP]] = 0, n_q
        tasks[t, [TASK_K_START, TASK_K_STOP]] = n // 5, n - n // 9
        tasks[t, TASK_BAND_SHIFT] = n - n_q
    tasks[:, TASK_PART] = -1
    return tasks


def split_into_parts(rng, tasks):
    """Cut each task of 3 keys or more into 1 to 3 parts at random keys (split-KV slots,
    consecutive per task); returns the tasks, the merge table and the number of slots."""
    pieces, merges, n_parts = [], [], 0
    for task in tasks:
        k0, k1 = task[TASK_K_START], task[TASK_K_STOP]
        n_cuts = rng.integers(0, 3) if k1 - k0 >= 3 else 0
        edges = [k0, *sorted(rng.choice(np.arange(k0 + 1, k1), n_cuts, replace=False)), k1]
        if n_cuts == 0:
            pieces.append(task)
            continue
        merges.append([task[TASK_BATCH], task[TASK_KV_HEAD], task[TASK_Q_START],
                       task[TASK_Q_STOP], n_parts, n_cuts + 1])
        for a, b in zip(edges[:-1], edges[1:]):
            piece = task.copy()
            piece[[TASK_K_START, TASK_K_STOP, TASK_PART]] = a, b, n_parts
            pieces.append(piece)
            n_parts += 1
    return np.array(pieces), np.array(merges, np.int64).reshape(-1, MERGE_COLUMNS), n_parts


def run_paged(rng, page_size, dtype, n_q, block_k, softcap=0.0, lse_only=False, filler=-1,
              side_by_side=True):
    """Run the kernel on a random paged problem; returns ``(out, lse)`` and the float64
    reference ``(out, lse)``."""
    compute = np.float32 if dtype.itemsize == 2 else dtype
    k, v, table = paged_cache(rng, page_size, dtype, filler, side_by_side)
    q = rng.standard_normal((len(LENGTHS), HK * GROUP, n_q, D)).astype(dtype)
    slopes = rng.uniform(0.005, 0.1, HK * GROUP).astype(compute)
    modifiers = ScoreModifiers(softcap=softcap, alibi_slopes=slopes)
    whole = sequence_tasks(n_q)
    tasks, merges, n_parts = split_into_parts(rng, whole)
    plan = plan_of_tasks(tasks, GROUP, BAND, n_q, block_k, 2, parts=(merges, n_parts))
    out = None if lse_only else np.full(q.shape[:3] + (DV,), 7, dtype)
    lse = np.full(q.shape[:3], 7, compute)
    call = KernelCall(q=q, k=k, v=None if lse_only else v, mask=None, mask_kind=MASK_NONE,
                      scale=D ** -0.5, plan=plan, out=out, lse=lse, modifiers=modifiers,
                      pages=table, **part_buffers(plan, DV, compute))
    cython_kernel()(call)
    merge_split_parts(plan, call.part_out, call.part_lse, out, lse)
    reference = reference_attention(q, gathered(k, table), gathered(v, table), whole,
                                    D ** -0.5, slopes, softcap)
    return (out, lse), reference


def reference_attention(q, k, v, tasks, scale, slopes, softcap):
    """float64 ``(out, lse)`` of every task's query rows over its keys (logical
    positions of the gathered cache), band and ALiBi taken from each query's position."""
    out = np.zeros(q.shape[:3] + (v.shape[3],))
    lse = np.full(q.shape[:3], -np.inf)
    for task in tasks:
        s, h, shift = task[TASK_BATCH], task[TASK_KV_HEAD], task[TASK_BAND_SHIFT]
        j = np.arange(task[TASK_K_START], task[TASK_K_STOP])
        for head in range(h * GROUP, (h + 1) * GROUP):
            for i in range(task[TASK_Q_START], task[TASK_Q_STOP]):
                seen = j[(BAND.lo + shift <= j - i) & (j - i <= BAND.hi + shift)]
                if len(seen) == 0:
                    continue
                scores = k[s, h, seen] @ q[s, head, i].astype(np.float64) * scale
                if softcap:
                    scores = softcap * np.tanh(scores / softcap)
                scores -= slopes[head] * np.abs(seen - i - shift)
                top = scores.max()
                weights = np.exp(scores - top)
                lse[s, head, i] = top + np.log(weights.sum())
                out[s, head, i] = weights @ v[s, h, seen] / weights.sum()
    return out, lse


def assert_matches(result, reference, dtype, lse_only=False):
    (out, lse), (ref_out, ref_lse) = result, reference
    tol = TOLERANCE[np.dtype(dtype)]
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    np.testing.assert_allclose(lse, ref_lse, rtol=min(tol, 1e-4), atol=min(tol, 1e-4))
    if not lse_only:
        np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("block_k", [48, 512])
@pytest.mark.parametrize("softcap", [0.0, 1.5])
@pytest.mark.parametrize("side_by_side", [True, False], ids=["vllm", "head_major"])
def test_decode_kernel_reads_keys_through_the_pages(rng, dtype, page_size, block_k, softcap,
                                                    side_by_side):
    result, reference = run_paged(rng, page_size, np.dtype(dtype), 1, block_k, softcap,
                                  side_by_side=side_by_side)
    assert_matches(result, reference, dtype)
    assert np.all(result[0][1] == 0) and np.all(np.isneginf(result[1][1]))  # length 0


@pytest.mark.parametrize("dtype, n_q", [(np.float32, 3), (np.float64, 4), (np.float16, 1),
                                        (BF16, 1), (BF16, 3)], ids=str)
@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_tiles_read_keys_through_the_pages(rng, dtype, n_q, page_size):
    result, reference = run_paged(rng, page_size, np.dtype(dtype), n_q, 48, softcap=2.0)
    assert_matches(result, reference, dtype)


@pytest.mark.parametrize("page_size", [3, 16])
def test_lse_only_reads_keys_through_the_pages(rng, page_size):
    result, reference = run_paged(rng, page_size, np.dtype(np.float32), 1, 48, lse_only=True)
    assert_matches(result, reference, np.float32, lse_only=True)


@pytest.mark.parametrize("n_q", [1, 3])
def test_entries_past_a_task_s_keys_are_never_used(rng, n_q):
    """Blocks past each sequence's pages that would fault if read (2^40 blocks away)."""
    result, reference = run_paged(rng, 3, np.dtype(np.float32), n_q, 48, filler=1 << 40)
    assert_matches(result, reference, np.float32)


def naive_over_gathered(q, k_cache, v_cache, table, lengths, alibi_slopes):
    """float64 ``(out, lse)`` of naive attention of each sequence's query over its
    gathered cache (the last query sees every key), with ALiBi."""
    out = np.zeros(q.shape[:2] + (v_cache.shape[3],))
    lse = np.full(q.shape[:2], -np.inf)
    page_size = k_cache.shape[1]
    for s, n in enumerate(lengths):
        j = np.arange(n)
        k, v = (cache[table[s, j // page_size], j % page_size].astype(np.float64)
                .transpose(1, 0, 2) for cache in (k_cache, v_cache))
        out[s], lse[s] = (x[:, 0] for x in fastattn.attention(
            q[s, :, None].astype(np.float64), k, v, causal="lower_right",
            alibi_slopes=alibi_slopes, return_lse=True, backend="naive"))
    return out, lse


@pytest.mark.parametrize("group", [2, 16])
def test_paged_decoding_of_many_heads_split_by_the_planner(rng, group):
    """Eight kv heads side by side, one long sequence that the planner splits into
    parts (each head's parts in a row, so a call's heads are not neighbours in the
    table), GQA groups up to the limit of rows per call."""
    hk, page_size, lengths = 8, 16, np.array([2100], np.int32)
    k_cache, v_cache = (rng.standard_normal((140, page_size, hk, 16)).astype(np.float32)
                        for _ in range(2))
    table = np.r_[rng.permutation(140)[:132], [-1]][None]
    q = rng.standard_normal((1, hk * group, 16)).astype(np.float32)
    slopes = np.linspace(0.001, 0.05, hk * group)
    out, lse = fastattn.paged_attention(q, k_cache, v_cache, table, lengths,
                                        alibi_slopes=slopes, return_lse=True, backend="cython")
    ref_out, ref_lse = naive_over_gathered(q, k_cache, v_cache, table, lengths, slopes)
    np.testing.assert_allclose(lse, ref_lse, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(out, ref_out, rtol=2e-5, atol=2e-5)


def test_contiguous_decoding_of_heads_side_by_side(rng):
    """A (B, L, H, D) array viewed as (B, H, L, D): one decode call serves its heads."""
    k, v = (rng.standard_normal((2, 2100, 8, 16)).transpose(0, 2, 1, 3) for _ in range(2))
    q = rng.standard_normal((2, 16, 1, 16))
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend="cython")
    ref_out, ref_lse = fastattn.attention(q, k, v, return_lse=True, backend="naive")
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-10)
