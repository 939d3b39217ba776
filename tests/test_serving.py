"""Serving layouts: packed variable-length batches and a paged KV cache, in every backend.

``varlen_attention`` is checked against ``attention`` (naive, float64) of each sequence on
its own, and against the independent loop oracle; ``paged_attention`` against attention
over each sequence's gathered cache.  Both run as one plan of tasks with the contract's
``TASK_KV_BATCH`` and ``TASK_BAND_SHIFT`` columns, so the plan's shapes are checked too.
"""

import dataclasses
import importlib

import ml_dtypes
import numpy as np
import pytest

import fastattn
from fastattn import _paged, _varlen
from fastattn._contract import (MASK_KEEP, TASK_BAND_SHIFT, TASK_BATCH, TASK_COLUMNS,
                                TASK_K_START, TASK_K_STOP, TASK_KV_BATCH, TASK_KV_HEAD,
                                TASK_PART, TASK_Q_START, TASK_Q_STOP, Band, KernelCall)
from fastattn._merge import merge_split_parts
from fastattn._naive import naive_attention
from fastattn._plan import plan_of_tasks
from fastattn._validation import validate
from helpers import BACKENDS, COMPILED_BACKENDS
from oracle import attention_oracle

BF16 = np.dtype(ml_dtypes.bfloat16)
ALL_DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]
FULL = [np.dtype(np.float32), np.dtype(np.float64)]


def tolerance(dtype):
    """Against the float64 result of the same (rounded) inputs."""
    if dtype == np.float64:
        return 1e-10
    if dtype == np.float32:
        return 2e-5
    return 4 * float(ml_dtypes.finfo(dtype).eps)  # one rounding of the output, and some


def cumulative(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def packed(rng, lengths_q, lengths_k, hq=4, hk=2, d=8, dv=6, dtype=np.float64):
    total_q, total_k = sum(lengths_q), sum(lengths_k)
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape in
               ((total_q, hq, d), (total_k, hk, d), (total_k, hk, dv)))
    return q, k, v, cumulative(lengths_q), cumulative(lengths_k)


def per_sequence(q, k, v, cu_q, cu_k, **options):
    """``(out, lse)`` in float64: naive ``attention`` of every sequence on its own."""
    out = np.zeros(q.shape[:2] + v.shape[2:])
    lse = np.full(q.shape[:2], -np.inf)
    for s in range(len(cu_q) - 1):
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        if rows.stop == rows.start:
            continue
        o, l = fastattn.attention(*(x[sl].astype(np.float64).transpose(1, 0, 2) for x, sl in
                                    ((q, rows), (k, keys), (v, keys))),
                                  return_lse=True, backend="naive", **options)
        out[rows], lse[rows] = o.transpose(1, 0, 2), l.T
    return out, lse


def assert_matches(out, lse, ref_out, ref_lse, dtype):
    tol = tolerance(dtype)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[finite].astype(np.float64), ref_lse[finite],
                               rtol=max(tol, 1e-6), atol=max(tol, 1e-6))
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_kernels_read_the_kv_batch_and_shift_the_band(rng, backend):
    """A hand-made task table: query batch b reads k, v and the mask of batch ``KV[b]`` and
    sees the band moved by ``SHIFT[b]``; the expected value is the naive reference of each
    pair on its own."""
    kv_of, shift_of, band = [2, 0], [5, -7], Band(-4, 3)
    q = rng.standard_normal((2, 4, 23, 8)).astype(np.float32)
    k = rng.standard_normal((3, 2, 31, 8)).astype(np.float32)
    v = rng.standard_normal((3, 2, 31, 6)).astype(np.float32)
    keep = rng.random((3, 4, 23, 31)) < 0.7
    tasks = []
    for b in range(2):
        for h in range(2):
            for q0 in range(0, 23, 5):
                task = np.zeros(TASK_COLUMNS, np.int64)
                task[[TASK_BATCH, TASK_KV_HEAD, TASK_Q_START, TASK_Q_STOP, TASK_K_START,
                      TASK_K_STOP, TASK_PART, TASK_KV_BATCH, TASK_BAND_SHIFT]] = \
                    b, h, q0, min(q0 + 5, 23), 0, 31, -1, kv_of[b], shift_of[b]
                tasks.append(task)
    plan = plan_of_tasks(np.array(tasks), 2, band, 5, 8, 2)
    out, lse = np.full((2, 4, 23, 6), 7.0, np.float32), np.full((2, 4, 23), 7.0, np.float32)
    call = KernelCall(q, k, v, keep.view(np.uint8), MASK_KEEP, 0.3, plan, out, lse,
                      np.zeros((0, 10, 6), np.float32), np.zeros((0, 10), np.float32))
    importlib.import_module(f"fastattn._{backend}").run_kernel(call)
    merge_split_parts(plan, call.part_out, call.part_lse, out, lse)
    for b in range(2):
        kvb = kv_of[b]
        problem = dataclasses.replace(validate(q[b], k[kvb], v[kvb], keep[kvb], scale=0.3),
                                      band=Band(band.lo + shift_of[b], band.hi + shift_of[b]))
        ref_out, ref_lse = naive_attention(problem)
        assert_matches(out[b], lse[b], ref_out, ref_lse, np.dtype(np.float32))


# lengths: empty sequences, one query, more queries than keys, no keys, a long one
LENGTHS_Q = [5, 0, 130, 1, 9, 40, 3]
LENGTHS_K = [7, 3, 300, 0, 3, 40, 0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FULL, ids=str)
@pytest.mark.parametrize("causal", [False, "upper_left", "lower_right"])
@pytest.mark.parametrize("window", [None, (3, 2)], ids=str)
def test_varlen_is_attention_per_sequence(rng, backend, dtype, causal, window):
    q, k, v, cu_q, cu_k = packed(rng, LENGTHS_Q, LENGTHS_K, dtype=dtype)
    out, lse = fastattn.varlen_attention(q, k, v, cu_q, cu_k, causal=causal, window=window,
                                         return_lse=True, backend=backend)
    assert out.shape == (sum(LENGTHS_Q), 4, 6) and lse.shape == (sum(LENGTHS_Q), 4)
    assert out.dtype == dtype and lse.dtype == dtype
    ref_out, ref_lse = per_sequence(q, k, v, cu_q, cu_k, causal=causal, window=window)
    assert_matches(out, lse, ref_out, ref_lse, dtype)
    no_keys = slice(cu_q[3], cu_q[4])  # queries without keys: zeros, lse -inf
    assert np.all(out[no_keys] == 0) and np.all(np.isneginf(lse[no_keys]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_against_the_loop_oracle(rng, backend):
    lengths_q, lengths_k = [3, 6, 1], [5, 4, 2]
    q, k, v, cu_q, cu_k = packed(rng, lengths_q, lengths_k, hq=2, hk=1, d=3, dv=2)
    out, lse = fastattn.varlen_attention(q, k, v, cu_q, cu_k, causal="lower_right",
                                         window=(2, None), scale=0.7, return_lse=True,
                                         backend=backend)
    for s in range(3):
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        ref_out, ref_lse = attention_oracle(*(x[sl].transpose(1, 0, 2) for x, sl in
                                              ((q, rows), (k, keys), (v, keys))),
                                            causal="lower_right", window=(2, None), scale=0.7)
        assert_matches(out[rows], lse[rows], ref_out.transpose(1, 0, 2), ref_lse.T,
                       np.dtype(np.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.dtype(np.float16), BF16], ids=str)
def test_varlen_half_precision(rng, backend, dtype):
    q, k, v, cu_q, cu_k = packed(rng, LENGTHS_Q, LENGTHS_K, dtype=dtype)
    out, lse = fastattn.varlen_attention(q, k, v, cu_q, cu_k, causal="lower_right",
                                         window=(20, 0), return_lse=True, backend=backend)
    assert out.dtype == dtype and lse.dtype == np.float32
    ref_out, ref_lse = per_sequence(q, k, v, cu_q, cu_k, causal="lower_right", window=(20, 0))
    assert_matches(out, lse, ref_out, ref_lse, dtype)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_varlen_long_and_short_sequences_balance_and_split(rng, backend):
    """One long sequence among short ones: split-KV of its few rows, costs balanced, and
    the same bits on one or two threads."""
    lengths_q, lengths_k = [2, 1, 3, 1], [3000, 5, 2, 7]
    q, k, v, cu_q, cu_k = packed(rng, lengths_q, lengths_k, hq=2, hk=1, dtype=np.float32)
    call = _varlen.check_varlen_call(q, k, v, cu_q, cu_k, "lower_right", None, None)
    plan = _varlen.varlen_plan(call, dict(block_q=None, block_k=None, num_threads=2))
    assert plan.n_parts > 1 and plan.n_workers == 2
    worker_costs = np.add.reduceat(plan.task_costs, plan.worker_starts[:-1])
    assert worker_costs.max() < 0.7 * plan.total_cost
    results = []
    for threads in (1, 2):
        with fastattn.config_context(num_threads=threads):
            results.append(fastattn.varlen_attention(q, k, v, cu_q, cu_k, causal="lower_right",
                                                     return_lse=True, backend=backend))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    ref_out, ref_lse = per_sequence(q, k, v, cu_q, cu_k, causal="lower_right")
    assert_matches(*results[0], ref_out, ref_lse, np.dtype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_views_and_empty_batches(rng, backend):
    """q, k, v sliced out of one packed qkv array (no copy needed); no tokens at all."""
    qkv = rng.standard_normal((12, 3, 2, 4))
    cu = np.array([0, 5, 5, 12], np.int64)
    out = fastattn.varlen_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, causal=True,
                                    backend=backend)
    q, k, v = (np.ascontiguousarray(qkv[:, i]) for i in range(3))
    np.testing.assert_allclose(out, per_sequence(q, k, v, cu, cu, causal=True)[0],
                               rtol=1e-10, atol=1e-10)
    empty = np.zeros((0, 2, 4))
    for cu in ([0], [0, 0, 0]):
        out, lse = fastattn.varlen_attention(empty, empty, empty, np.array(cu, np.int32),
                                             np.array(cu, np.int32), return_lse=True,
                                             backend=backend)
        assert out.shape == (0, 2, 4) and lse.shape == (0, 2)


@pytest.mark.parametrize("change, error, message", [
    (dict(cu_seqlens_q=np.array([0.0, 2.0, 5.0])), TypeError,
     r"cu_seqlens_q \(shape \(3,\), dtype float64\): expected int32 or int64"),
    (dict(cu_seqlens_k=np.array([[0, 2, 5]], np.int32)), ValueError,
     r"cu_seqlens_k .*expected 1 dimension"),
    (dict(cu_seqlens_q=np.array([1, 2, 5], np.int32)), ValueError,
     r"cu_seqlens_q must start at 0, got cu_seqlens_q\[0\] = 1"),
    (dict(cu_seqlens_k=np.array([0, 4, 3, 5], np.int32)), ValueError,
     r"cu_seqlens_k must not decrease: cu_seqlens_k\[1\] = 4 > cu_seqlens_k\[2\] = 3"),
    (dict(cu_seqlens_q=np.array([0, 2, 4], np.int32)), ValueError,
     r"cu_seqlens_q must end at the number of tokens of q, 5 \(q.shape\[0\]\); "
     r"got cu_seqlens_q\[-1\] = 4"),
    (dict(cu_seqlens_k=np.array([0, 1, 2, 5], np.int32)), ValueError,
     r"the same number of sequences: 2 and 3"),
    (dict(cu_seqlens_q=np.array([], np.int32)), ValueError, r"at least one entry"),
    (dict(q=np.ones((5, 8))), ValueError, r"q \(shape \(5, 8\).*expected 3 dimensions"),
    (dict(k=np.ones((5, 2, 7))), ValueError, r"same feature size D"),
    (dict(v=np.ones((4, 2, 6))), ValueError, r"k and v must have the same total_k and heads"),
    (dict(k=np.ones((5, 3, 8)), v=np.ones((5, 3, 6))), ValueError, r"Hk=3 must divide"),
    (dict(q=np.ones((5, 4, 8), int)), TypeError, r"q .*integer inputs"),
    (dict(causal="upper"), ValueError, r"causal must be"),
    (dict(window=(-1, 2)), ValueError, r"window left"),
])
def test_varlen_errors_name_the_argument(change, error, message):
    arguments = dict(q=np.ones((5, 4, 8)), k=np.ones((5, 2, 8)), v=np.ones((5, 2, 6)),
                     cu_seqlens_q=np.array([0, 2, 5], np.int32),
                     cu_seqlens_k=np.array([0, 3, 5], np.int32))
    arguments.update(change)
    with pytest.raises(error, match=message):
        fastattn.varlen_attention(**arguments)


# ---------------------------------------------------------------- paged


def cache_and_table(rng, lengths, block_size=4, num_blocks=12, hk=2, d=8, dv=6,
                    dtype=np.float64):
    """A random cache and a table with scattered, shared (sequences 0 and 1 share their
    first block) and padding (-1) entries."""
    k_cache, v_cache = (rng.standard_normal((num_blocks, block_size, hk, width)).astype(dtype)
                        for width in (d, dv))
    max_blocks = max(-(-max(lengths) // block_size), 1) + 1
    table = np.full((len(lengths), max_blocks), -1, np.int32)
    for b, length in enumerate(lengths):
        used = -(-length // block_size)
        table[b, :used] = rng.choice(num_blocks, used, replace=False)
    if lengths[0] and lengths[1]:
        table[1, 0] = table[0, 0]
    return k_cache, v_cache, table, np.array(lengths, np.int32)


def gathered(q, k_cache, v_cache, table, lengths, window=None):
    """``(out, lse)`` in float64: naive attention of each query over its gathered cache."""
    batch, heads = q.shape[:2]
    out, lse = np.zeros((batch, heads, v_cache.shape[3])), np.full((batch, heads), -np.inf)
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        pages = table[b, :-(-length // k_cache.shape[1])]
        tokens = (len(pages) * k_cache.shape[1],)
        k, v = (cache[pages].astype(np.float64).reshape(tokens + cache.shape[2:])[:length]
                .transpose(1, 0, 2) for cache in (k_cache, v_cache))
        o, l = fastattn.attention(q[b].astype(np.float64)[:, None], k, v, causal="lower_right",
                                  window=window, return_lse=True, backend="naive")
        out[b], lse[b] = o[:, 0], l[:, 0]
    return out, lse


# lengths 0, 1, block-1, block, block+1, several blocks
LENGTHS = [0, 1, 3, 4, 5, 13, 9]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("window", [None, (0, None), (6, 2)], ids=str)
def test_paged_is_attention_over_the_gathered_cache(rng, backend, dtype, window):
    k_cache, v_cache, table, lengths = cache_and_table(rng, LENGTHS, dtype=dtype)
    q = rng.standard_normal((len(LENGTHS), 4, 8)).astype(dtype)
    out, lse = fastattn.paged_attention(q, k_cache, v_cache, table, lengths, window=window,
                                        return_lse=True, backend=backend)
    assert out.shape == (len(LENGTHS), 4, 6) and out.dtype == dtype
    assert lse.shape == (len(LENGTHS), 4)
    assert lse.dtype == (np.float32 if dtype.itemsize == 2 else dtype)
    assert_matches(out, lse, *gathered(q, k_cache, v_cache, table, lengths, window), dtype)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))  # length 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_paged_one_token_per_sequence_and_several_kv_heads(rng, backend, softcap):
    """Every length 1, so the plan's block is one key, fewer than the kv heads a decoding
    task serves together (Numba once sized its scores for one head and failed here)."""
    k_cache, v_cache, table, lengths = cache_and_table(rng, [1, 1, 1], hk=4)
    q = rng.standard_normal((3, 8, 8))
    out, lse = fastattn.paged_attention(q, k_cache, v_cache, table, lengths, softcap=softcap,
                                        return_lse=True, backend=backend)
    ref = fastattn.paged_attention(q, k_cache, v_cache, table, lengths, softcap=softcap,
                                   return_lse=True, backend="naive")
    if softcap is None:  # the naive path against the float64 gather, without modifiers
        assert_matches(*ref, *gathered(q, k_cache, v_cache, table, lengths), q.dtype)
    assert_matches(out, lse, *ref, q.dtype)


def test_paged_tasks_cover_only_the_window(rng):
    k_cache, v_cache, table, lengths = cache_and_table(rng, [13, 0, 4], hk=1)
    q = np.ones((3, 2, 8))
    call = _paged._validate(q, k_cache, v_cache, table, lengths, (4, None), None)
    band = fastattn._contract.Band.from_alignment(1, 1, "upper_left", call.window)
    tasks = _paged.sequence_tasks(call, band)
    # sequence 0 sees positions 8..12 of its 13, sequence 1 nothing, sequence 2 all 4;
    # each is its own kv batch (a row of the block table), the query at its last position
    assert tasks[:, TASK_KV_BATCH].tolist() == [0, 1, 2]
    assert tasks[:, 4:7].tolist() == [[8, 13, -1], [0, 0, -1], [0, 4, -1]]
    assert tasks[:, TASK_BAND_SHIFT].tolist() == [12, -1, 3]


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_paged_threads_give_the_same_bits(rng, backend):
    k_cache, v_cache, table, lengths = cache_and_table(rng, [300, 1, 170, 64], block_size=16,
                                                       num_blocks=60, dtype=np.float32)
    q = rng.standard_normal((4, 4, 8)).astype(np.float32)
    results = []
    for threads in (1, 2):
        with fastattn.config_context(num_threads=threads):
            results.append(fastattn.paged_attention(q, k_cache, v_cache, table, lengths,
                                                    return_lse=True, backend=backend))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert_matches(*results[0], *gathered(q, k_cache, v_cache, table, lengths),
                   np.dtype(np.float32))


@pytest.mark.parametrize("change, error, message", [
    (dict(block_table=np.array([[0, 12], [1, 2]], np.int32)), ValueError,
     r"block_table\[0, 1\] = 12 is not a block of the cache \(num_blocks = 12"),
    (dict(block_table=np.array([[0, 1], [-1, 2]], np.int32)), ValueError,
     r"block_table\[1, 0\] = -1 is not a block"),
    (dict(seq_lens=np.array([9, 1], np.int32)), ValueError,
     r"seq_lens\[0\] = 9 is outside \[0, 8\]"),
    (dict(seq_lens=np.array([3, -1], np.int64)), ValueError, r"seq_lens\[1\] = -1 is outside"),
    (dict(block_table=np.array([[0, 1], [1, 2]], np.float32)), TypeError,
     r"block_table \(shape \(2, 2\), dtype float32\): expected int32 or int64"),
    (dict(seq_lens=np.array([5, 3], np.uint8)), TypeError, r"seq_lens .*int32 or int64"),
    (dict(block_table=np.array([0, 1], np.int32)), ValueError, r"block_table .*2 dimensions"),
    (dict(seq_lens=np.array([5, 3, 1], np.int32)), ValueError, r"one batch size B"),
    (dict(q=np.ones((2, 4, 7))), ValueError, r"q and k_cache must have the same feature size"),
    (dict(k_cache=np.ones((12, 4, 8))), ValueError, r"k_cache .*expected 4 dimensions"),
    (dict(v_cache=np.ones((12, 2, 2, 6))), ValueError, r"k_cache and v_cache must have"),
    (dict(q=np.ones((2, 3, 8))), ValueError, r"Hk=2 must divide the query heads Hq=3"),
    (dict(k_cache=np.ones((12, 4, 2, 8), complex)), TypeError, r"k_cache .*complex"),
    (dict(k_cache=np.ones((12, 0, 2, 8)), v_cache=np.ones((12, 0, 2, 6))), ValueError,
     r"block size must be at least 1"),
])
def test_paged_errors_name_the_argument(change, error, message):
    arguments = dict(q=np.ones((2, 4, 8)), k_cache=np.ones((12, 4, 2, 8)),
                     v_cache=np.ones((12, 4, 2, 6)),
                     block_table=np.array([[0, 1], [5, -1]], np.int32),
                     seq_lens=np.array([5, 3], np.int32))
    arguments.update(change)
    with pytest.raises(error, match=message):
        fastattn.paged_attention(**arguments)


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_of_width_zero_still_give_the_lse(rng, backend):
    q, k, _, cu_q, cu_k = packed(rng, [3, 4], [4, 5], hq=2, hk=2, d=4)
    v = np.zeros((9, 2, 0))
    out, lse = fastattn.varlen_attention(q, k, v, cu_q, cu_k, causal=True, return_lse=True,
                                         backend=backend)
    assert out.shape == (7, 2, 0)
    assert_matches(out, lse, *per_sequence(q, k, v, cu_q, cu_k, causal=True), np.float64)
    k_cache, _, table, lengths = cache_and_table(rng, [6, 3], hk=2, d=4)
    v_cache = np.zeros(k_cache.shape[:3] + (0,))
    out, lse = fastattn.paged_attention(q[:2], k_cache, v_cache, table, lengths,
                                        return_lse=True, backend=backend)
    assert out.shape == (2, 2, 0)
    assert_matches(out, lse, *gathered(q[:2], k_cache, v_cache, table, lengths), np.float64)
