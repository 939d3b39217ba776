"""The Cython backend's decode kernel (fastattn/_cython/_decode.pxi, _decode_tiles.inc).

Tasks with one query row per head (Lq = 1, and the one-token sequences of varlen and
paged attention), without a mask, in float32 / float64, run a key-major kernel instead
of the tiles.  Checked against the naive float64 reference: GQA groups, head widths
around the vector widths, Dv != D, key counts around the kernel's and the plan's block
edges, split-KV on one and two threads, non-finite inputs, the band clipped per task
(hand-made task tables with band shifts), strided views, softcap and ALiBi, paged and
varlen calls; and that the decode kernel really is what runs.
"""

import dataclasses

import numpy as np
import pytest

import fastattn
from fastattn import _isa
from fastattn._contract import (MASK_KEEP, MASK_NONE, TASK_BAND_SHIFT, TASK_K_START,
                                TASK_K_STOP, Band, KernelCall)
from fastattn._merge import merge_split_parts
from fastattn._naive import naive_attention
from fastattn._plan import make_plan, plan_of_tasks
from fastattn._validation import validate
from helpers import BACKENDS

pytestmark = pytest.mark.skipif("cython" not in BACKENDS, reason="the Cython backend is not built")

TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}
DECODE_BLOCK = 256  # _decode.pxi: keys per softmax block of the decode kernel, at most


def cython_kernel():
    from fastattn._cython import run_kernel

    return run_kernel


def decode_problem(rng, hq=8, hk=2, lk=300, d=64, dv=None, dtype=np.float32, batch=1,
                   **options):
    """A validated decoding problem: one query per head, ``lk`` keys."""
    q = rng.standard_normal((batch, hq, 1, d)).astype(dtype)
    k = rng.standard_normal((batch, hk, lk, d)).astype(dtype)
    v = rng.standard_normal((batch, hk, lk, dv or d)).astype(dtype)
    return validate(q, k, v, **options)


def run(problem, n_threads=2, block_k=None, plan=None):
    """Call the Cython kernel directly on a 4-D problem; merge its split-KV parts."""
    q, k, v = problem.q, problem.k, problem.v
    if plan is None:
        plan = make_plan(q.shape[0], k.shape[1], problem.group, q.shape[2], k.shape[2],
                         problem.band, n_threads, None, block_k)
    out = np.full(problem.out_shape, 7.0, q.dtype)  # every element must be written
    lse = np.full(problem.out_shape[:-1], 7.0, q.dtype)
    call = KernelCall(q=q, k=k, v=v, mask=problem.mask, mask_kind=problem.mask_kind,
                      scale=problem.scale, plan=plan, out=out, lse=lse,
                      part_out=np.full((plan.n_parts, plan.max_rows, v.shape[3]), 7.0, q.dtype),
                      part_lse=np.full((plan.n_parts, plan.max_rows), 7.0, q.dtype),
                      modifiers=problem.modifiers)
    cython_kernel()(call)
    merge_split_parts(plan, call.part_out, call.part_lse, out, lse)
    return out, lse


def assert_naive(problem, out, lse):
    ref_out, ref_lse = naive_attention(problem)
    tol = TOLERANCE[np.dtype(out.dtype)]
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    np.testing.assert_allclose(lse, ref_lse, rtol=tol, atol=tol)
    np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("group, hk", [(1, 3), (4, 2), (8, 1), (3, 2)])
@pytest.mark.parametrize("d, dv", [(1, 1), (63, 63), (64, 64), (80, 80), (64, 24), (16, 63),
                                   (8, 200), (128, 128), (128, 40)])
def test_groups_and_widths(rng, dtype, group, hk, d, dv):
    problem = decode_problem(rng, hq=group * hk, hk=hk, lk=333, d=d, dv=dv, dtype=dtype,
                             batch=2)
    assert_naive(problem, *run(problem))


@pytest.mark.parametrize("level", _isa.supported_levels() if "cython" in BACKENDS else [])
def test_every_level(rng, level):
    """Row groups and value widths that use every register block of the level's vectors
    (up to 16 lanes), both dtypes."""
    for dtype in (np.float32, np.float64):
        for group, d, dv in [(1, 100, 260), (16, 64, 64), (5, 17, 130), (2, 3, 9), (4, 128, 128)]:
            problem = decode_problem(rng, hq=group * 2, hk=2, lk=300, d=d, dv=dv,
                                     dtype=dtype)
            with _isa.use_level(level):
                out, lse = run(problem, block_k=200)
            assert_naive(problem, out, lse)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lk", [0, 1, DECODE_BLOCK - 1, DECODE_BLOCK, DECODE_BLOCK + 1, 1000])
def test_key_counts_around_the_kernel_block(rng, dtype, lk):
    problem = decode_problem(rng, hq=8, hk=2, lk=lk, d=40, dv=24, dtype=dtype)
    out, lse = run(problem, block_k=1024)
    assert_naive(problem, out, lse)
    if lk == 0:  # no key: zeros, lse -inf
        assert np.all(out == 0) and np.all(np.isneginf(lse))


@pytest.mark.parametrize("block_k, lk", [(1, 5), (16, 15), (16, 16), (16, 17), (100, 301),
                                         (300, 1000)])
def test_key_counts_around_the_plan_block(rng, block_k, lk):
    problem = decode_problem(rng, hq=4, hk=1, lk=lk, d=32)
    assert_naive(problem, *run(problem, block_k=block_k))


@pytest.mark.parametrize("block_k", [None, 64, 300])
def test_split_kv_is_the_same_on_any_thread_count(rng, block_k):
    problem = decode_problem(rng, hq=4, hk=1, lk=5000, d=64)
    plan = make_plan(1, 1, 4, 1, 5000, problem.band, 2, None, block_k)
    assert plan.n_parts > 1  # the keys are split into parts, merged afterwards
    one, two = run(problem, 1, block_k), run(problem, 2, block_k)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    assert_naive(problem, *one)


def test_band_limits_and_lower_right_window(rng):
    q = rng.standard_normal((1, 4, 1, 16)).astype(np.float32)
    k = rng.standard_normal((1, 2, 700, 16)).astype(np.float32)
    v = rng.standard_normal((1, 2, 700, 8)).astype(np.float32)
    for window in [(0, 0), (1, 0), (299, 0), (300, None)]:
        problem = validate(q, k, v, causal="lower_right", window=window)
        assert_naive(problem, *run(problem, block_k=128))
    problem = validate(q, k, v, causal="upper_left")  # the query sees key 0 only
    assert_naive(problem, *run(problem))


def test_non_finite_inputs_make_rows_nan(rng):
    problem = decode_problem(rng, hq=4, hk=2, lk=600, d=16, dv=8)
    q, k, v = (x.copy() for x in (problem.q, problem.k, problem.v))
    k[0, 0, 300, 5] = np.nan  # kv head 0: query heads 0 and 1
    v[0, 1, 599, 2] = np.nan  # kv head 1: query heads 2 and 3, last key
    problem = validate(q, k, v)
    out, lse = run(problem)
    assert np.isnan(out[0, :2]).all() and np.isnan(lse[0, :2]).all()  # the NaN key's rows
    assert np.isnan(out[0, 2:, :, 2]).all() and np.isfinite(lse[0, 2:]).all()  # its column
    assert_naive(problem, out, lse)  # NaN where naive has NaN, the rest close
    # a band that hides both keys: every row is finite, and right
    hidden = dataclasses.replace(validate(q, k, v), band=Band(301, 598))
    out, lse = run(hidden)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert_naive(hidden, out, lse)
    q[0, 1, 0, 3] = np.nan  # a NaN query: its row only
    out, lse = run(validate(q, np.nan_to_num(k), np.nan_to_num(v)))
    assert np.isnan(lse[0, 1, 0]) and np.isnan(out[0, 1, 0]).all()
    assert np.isfinite(np.delete(lse[0, :, 0], 1)).all()


def test_an_overflowing_score_is_nan_not_an_empty_row(rng):
    q = np.full((1, 2, 1, 4), 1e20, np.float32)
    k = np.full((1, 1, 10, 4), 1e20, np.float32)
    v = np.ones((1, 1, 10, 3), np.float32)
    out, lse = run(validate(q, k, v))
    assert np.isnan(out).all() and np.isnan(lse).all()


def test_hand_made_tasks_are_clipped_to_the_shifted_band(rng):
    """One-row tasks whose key ranges are wider than their band (the planner would have
    clipped them), with band shifts: the kernel sees only the band's keys."""
    problem = decode_problem(rng, hq=4, hk=2, lk=90, d=8)
    q = np.repeat(problem.q, 20, axis=2)  # 20 query rows, one task each
    problem = dataclasses.replace(validate(q, problem.k, problem.v), band=Band(-30, 2))
    shift = 7
    plan = make_plan(1, 2, 2, 20, 90, problem.band, 2, 1, 16)
    tasks = plan.tasks.copy()
    tasks[:, TASK_K_START], tasks[:, TASK_K_STOP] = 0, 90
    tasks[:, TASK_BAND_SHIFT] = shift
    plan = plan_of_tasks(tasks, 2, problem.band, 1, 16, 2)
    out, lse = run(problem, plan=plan)
    shifted = dataclasses.replace(problem, band=Band(-30 + shift, 2 + shift))
    assert_naive(shifted, out, lse)


def test_strided_and_reversed_views(rng):
    k = rng.standard_normal((1, 400, 2, 32)).astype(np.float32).transpose(0, 2, 1, 3)
    v = rng.standard_normal((1, 2, 400, 24)).astype(np.float32)[:, :, ::-1]
    q = rng.standard_normal((1, 1, 6, 32)).astype(np.float32).transpose(0, 2, 1, 3)
    problem = validate(q, k, v)
    assert_naive(problem, *run(problem))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("modifiers", [dict(softcap=0.7), dict(alibi_slopes="ramp"),
                                       dict(softcap=2.0, alibi_slopes="ramp")], ids=str)
@pytest.mark.parametrize("causal, window", [(False, None), ("lower_right", (150, 0))])
def test_softcap_and_alibi(rng, dtype, modifiers, causal, window):
    modifiers = dict(modifiers)
    if modifiers.get("alibi_slopes") == "ramp":
        modifiers["alibi_slopes"] = np.linspace(-0.02, 0.05, 8)
    problem = decode_problem(rng, hq=8, hk=2, lk=700, d=32, dv=16, dtype=dtype,
                             causal=causal, window=window, **modifiers)
    q = problem.q * 3  # large scores: the softcap bends them
    problem = dataclasses.replace(problem, q=q)
    assert_naive(problem, *run(problem, block_k=128))


def test_the_decode_kernel_is_what_runs(rng):
    """An all-True keep mask sends the same problem through the tiles: both match the
    reference, but their sums are ordered differently, so their bits differ."""
    from fastattn._cython._kernel import _decode_eligible

    problem = decode_problem(rng, hq=8, hk=2, lk=1000, d=64)
    decoded = run(problem)
    keep = np.ones((1, 8, 1, 1000), bool)
    tiled = run(validate(problem.q, problem.k, problem.v, keep))
    assert_naive(problem, *decoded)
    assert_naive(problem, *tiled)
    assert not np.array_equal(decoded[0], tiled[0])
    assert _decode_eligible(MASK_NONE, np.float32, 64)
    assert _decode_eligible(MASK_NONE, np.float64, 1)
    assert not _decode_eligible(MASK_KEEP, np.float32, 64)  # masks: the tiles
    assert not _decode_eligible(MASK_NONE, np.float16, 64)  # half storage: the tiles
    assert not _decode_eligible(MASK_NONE, np.float32, 0)  # lse-only: the tiles


def test_paged_attention_decodes(rng):
    block_size, hk, hq, d = 16, 2, 8, 24
    lengths = np.array([0, 1, 15, 16, 17, 300], np.int32)
    n_blocks = -(-lengths // block_size)
    table = np.full((len(lengths), n_blocks.max()), -1, np.int32)
    table_ids = rng.permutation(int(n_blocks.sum()))
    start = 0
    for b, n in enumerate(n_blocks):
        table[b, :n] = table_ids[start:start + n]
        start += n
    k_cache = rng.standard_normal((len(table_ids), block_size, hk, d)).astype(np.float32)
    v_cache = rng.standard_normal((len(table_ids), block_size, hk, d + 2)).astype(np.float32)
    q = rng.standard_normal((len(lengths), hq, d)).astype(np.float32)
    slopes = np.linspace(0.01, 0.1, hq)
    for options in (dict(), dict(window=(40, 0), alibi_slopes=slopes)):
        out, lse = fastattn.paged_attention(q, k_cache, v_cache, table, lengths,
                                            return_lse=True, backend="cython", **options)
        for b, length in enumerate(lengths):
            pages = table[b, :n_blocks[b]]
            k = k_cache[pages].reshape(-1, hk, d)[:length].transpose(1, 0, 2)
            v = v_cache[pages].reshape(-1, hk, d + 2)[:length].transpose(1, 0, 2)
            ref = validate(q[b][:, None], k, v, causal="lower_right", **options)
            ref_out, ref_lse = naive_attention(ref)
            np.testing.assert_allclose(out[b], ref_out[:, 0], rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(lse[b], ref_lse[:, 0], rtol=2e-5, atol=2e-5)


def test_varlen_one_token_sequences(rng):
    lengths_q, lengths_k = [1, 1, 1, 1], [5, 300, 1, 0]
    hq, hk, d = 4, 2, 16
    cu_q, cu_k = (np.concatenate([[0], np.cumsum(x)]).astype(np.int32)
                  for x in (lengths_q, lengths_k))
    q = rng.standard_normal((sum(lengths_q), hq, d)).astype(np.float32)
    k = rng.standard_normal((sum(lengths_k), hk, d)).astype(np.float32)
    v = rng.standard_normal((sum(lengths_k), hk, 8)).astype(np.float32)
    out, lse = fastattn.varlen_attention(q, k, v, cu_q, cu_k, causal="lower_right",
                                         return_lse=True, backend="cython")
    for s in range(len(lengths_q)):
        rows, keys = slice(cu_q[s], cu_q[s + 1]), slice(cu_k[s], cu_k[s + 1])
        if keys.stop == keys.start:
            assert np.all(out[rows] == 0) and np.all(np.isneginf(lse[rows]))
            continue
        ref = validate(*(x[sl].transpose(1, 0, 2) for x, sl in
                         ((q, rows), (k, keys), (v, keys))), causal="lower_right")
        ref_out, ref_lse = naive_attention(ref)
        np.testing.assert_allclose(out[rows], ref_out.transpose(1, 0, 2), rtol=2e-5,
                                   atol=2e-5)
        np.testing.assert_allclose(lse[rows], ref_lse.T, rtol=2e-5, atol=2e-5)


def test_alibi_and_softcap_across_split_kv_parts(rng):
    """Each part of a split task measures ALiBi distances from its own first key."""
    problem = decode_problem(rng, hq=4, hk=1, lk=3000, d=16, dv=8, causal="lower_right",
                             softcap=1.5, alibi_slopes=[0.001, 0.003, -0.0005, 0.0])
    plan = make_plan(1, 1, 4, 1, 3000, problem.band, 2, None, 200)
    assert plan.n_parts > 1
    assert_naive(problem, *run(problem, block_k=200))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_decoding_with_modifiers(rng, dtype):
    """Half storage keeps the tiles (computed in float32), modifiers included."""
    import ml_dtypes

    half = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float16)
    q, k, v = (rng.standard_normal(shape).astype(half) for shape in
               ((1, 8, 1, 32), (1, 2, 500, 32), (1, 2, 500, 16)))
    options = dict(softcap=2.0, alibi_slopes=np.linspace(0.0, 0.02, 8), causal="lower_right",
                   window=(300, 0))
    out, lse = fastattn.attention(q, k, v, backend="cython", return_lse=True, **options)
    ref_out, ref_lse = fastattn.attention(*(x.astype(np.float64) for x in (q, k, v)),
                                          backend="naive", return_lse=True, **options)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(lse, ref_lse, rtol=2e-5, atol=2e-5)
