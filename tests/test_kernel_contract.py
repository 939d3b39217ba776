"""Conformance of the compiled kernels at the kernel contract (fastattn/_contract.py).

Each test builds a :class:`KernelCall` by hand and calls a backend's ``run_kernel``
directly -- no public API in between -- in every mode the contract has: split-KV
partials, lse-only, the mask kinds, band edges, strided views, rounds.  The naive
full-matrix reference (float64) is the expected value.
"""

import dataclasses
import importlib

import numpy as np
import pytest

from fastattn import _contract
from fastattn._contract import MASK_ADD, MASK_KEEP, MASK_NONE, Band, KernelCall
from fastattn._merge import merge_split_parts
from fastattn._naive import naive_attention
from fastattn._plan import make_plan, rounds
from fastattn._validation import validate
from helpers import COMPILED_BACKENDS

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(params=COMPILED_BACKENDS)
def run_kernel(request):
    return importlib.import_module(f"fastattn._{request.param}").run_kernel


def problem_of(q, k, v, mask=None, band=Band(), scale=None):
    """A validated 4-D problem with the given band (the kernels see only the band)."""
    problem = validate(q, k, v, mask, scale=scale)
    return dataclasses.replace(problem, band=band)


def run(run_kernel, problem, *, lse_only=False, out=None, n_threads=2, block_q=None,
        block_k=None, in_rounds=False):
    """Plan, call the kernel directly, merge split-KV parts; returns ``(out, lse)``."""
    q, k, v = problem.q, problem.k, problem.v
    plan = make_plan(q.shape[0], k.shape[1], problem.group, q.shape[2], k.shape[2],
                     problem.band, n_threads, block_q, block_k)
    dtype = q.dtype
    if out is None and not lse_only:
        out = np.full(problem.out_shape, 7.0, dtype)  # every element must be written
    lse = np.full(problem.out_shape[:-1], 7.0, dtype)
    value_dim = 0 if lse_only else v.shape[3]
    call = KernelCall(q=q, k=k, v=None if lse_only else v, mask=problem.mask,
                      mask_kind=problem.mask_kind, scale=problem.scale, plan=plan,
                      out=None if lse_only else out, lse=lse,
                      part_out=np.full((plan.n_parts, plan.max_rows, value_dim), 7.0, dtype),
                      part_lse=np.full((plan.n_parts, plan.max_rows), 7.0, dtype))
    for part in (rounds(plan) if in_rounds else [plan]):
        call.plan = part
        run_kernel(call)
    merge_split_parts(plan, call.part_out, call.part_lse, call.out, lse)
    return call.out, lse, plan


def expect_naive(problem, out, lse, dtype, lse_only=False):
    ref_out, ref_lse = naive_attention(problem, lse_only=lse_only)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(lse, ref_lse, rtol=tol, atol=tol)
    if not lse_only:
        np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)


def qkv(rng, b=1, hq=4, hk=2, lq=37, lk=53, d=16, dv=8, dtype=np.float32):
    return (rng.standard_normal((b, hq, lq, d)).astype(dtype),
            rng.standard_normal((b, hk, lk, d)).astype(dtype),
            rng.standard_normal((b, hk, lk, dv)).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lse_only", [False, True])
def test_plain_and_lse_only(run_kernel, rng, dtype, lse_only):
    problem = problem_of(*qkv(rng, dtype=dtype))
    out, lse, _ = run(run_kernel, problem, lse_only=lse_only, block_q=5, block_k=7)
    expect_naive(problem, out, lse, dtype, lse_only)


@pytest.mark.parametrize("lse_only", [False, True])
def test_split_kv_partials(run_kernel, rng, lse_only):
    """Few rows, many keys: the plan splits key ranges into partial slots."""
    problem = problem_of(*qkv(rng, hq=2, hk=1, lq=2, lk=5000))
    out, lse, plan = run(run_kernel, problem, lse_only=lse_only)
    assert plan.n_parts > 1 and len(plan.merges) > 0
    expect_naive(problem, out, lse, np.float32, lse_only)


@pytest.mark.parametrize("band", [Band(0, 0), Band(-3, 2), Band(5, 9), Band(-9, -5),
                                  Band(hi=0), Band(lo=-4), Band(40, 60), Band(-80, -60)],
                         ids=str)
@pytest.mark.parametrize("lse_only", [False, True])
def test_band_edges(run_kernel, rng, band, lse_only):
    """Bands off the diagonal, one-sided, and leaving some (or all) rows without a key."""
    problem = problem_of(*qkv(rng), band=band)
    out, lse, _ = run(run_kernel, problem, lse_only=lse_only, block_q=4, block_k=6)
    expect_naive(problem, out, lse, np.float32, lse_only)


@pytest.mark.parametrize("kind", ["keep", "add"])
def test_mask_kinds_with_empty_rows(run_kernel, rng, kind):
    q, k, v = qkv(rng)
    keep = rng.random((1, 4, 37, 53)) < 0.3
    keep[:, :, 3] = False  # rows with no visible key
    keep[:, 1] = False     # a whole head
    mask = keep if kind == "keep" else np.where(keep, rng.standard_normal(keep.shape), -np.inf)
    problem = problem_of(q, k, v, mask, band=Band(-20, 10))
    assert problem.mask_kind == (MASK_KEEP if kind == "keep" else MASK_ADD)
    for lse_only in (False, True):
        out, lse, _ = run(run_kernel, problem, lse_only=lse_only, block_q=3, block_k=8)
        expect_naive(problem, out, lse, np.float32, lse_only)
        assert np.all(np.isneginf(lse[:, 1])) and np.all(np.isneginf(lse[:, :, 3]))
        if not lse_only:
            assert np.all(out[:, 1] == 0) and np.all(out[:, :, 3] == 0)


@pytest.mark.parametrize("kind", ["none", "keep", "add"])
def test_decoding_a_cache_whose_heads_lie_side_by_side(run_kernel, rng, kind):
    """One query row per head over a (B, L, Hk, D) cache viewed head-major: a decoding
    task serves consecutive kv heads together, with split-KV parts, a band and masks
    (a head that sees no key gives zeros and lse -inf, the next heads theirs)."""
    b, hq, hk, lk = 2, 6, 3, 2500
    q = rng.standard_normal((b, hq, 1, 16)).astype(np.float32)
    k, v = (rng.standard_normal((b, lk, hk, width)).astype(np.float32).transpose(0, 2, 1, 3)
            for width in (16, 8))
    assert _contract.decode_heads(k, v, hq // hk) == hk
    keep = rng.random((b, hq, 1, lk)) < 0.5
    keep[0, :2] = False  # the first kv head's query heads see nothing, the others do
    keep[1, 3] = False
    mask = {"none": None, "keep": keep,
            "add": np.where(keep, rng.standard_normal(keep.shape), -np.inf)}[kind]
    problem = problem_of(q, k, v, mask, band=Band(10, 2400))
    out, lse, plan = run(run_kernel, problem)
    assert plan.n_parts > 0 and plan.max_rows == plan.group
    expect_naive(problem, out, lse, np.float32)
    if kind != "none":
        for row in (out[0, :2], out[1, 3], lse[0, :2], lse[1, 3]):
            assert np.all((row == 0) | np.isneginf(row))


def test_decode_heads_serves_kv_heads_side_by_side_together():
    vllm = np.zeros((4, 16, 8, 32), np.float32).transpose(0, 2, 1, 3)  # (blocks, Hk, page, D)
    head_major = np.zeros((4, 8, 16, 32), np.float32)
    assert _contract.decode_heads(vllm, vllm, 4) == 8
    assert _contract.decode_heads(vllm, vllm, 16) == 4  # at most 64 query rows per task
    assert _contract.decode_heads(vllm, vllm, 100) == 1
    assert _contract.decode_heads(vllm, None, 4) == 8  # lse-only
    assert _contract.decode_heads(head_major, head_major, 4) == 1
    assert _contract.decode_heads(vllm, head_major, 4) == 1
    assert _contract.decode_heads(vllm[:, ::-1], vllm[:, ::-1], 4) == 1  # heads in reverse


def test_strided_views_and_strided_out(run_kernel, rng):
    """Transposed q, reversed keys, a broadcast mask, and an ``out`` that is a strided view."""
    q = rng.standard_normal((2, 37, 4, 16)).astype(np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((2, 2, 53, 16)).astype(np.float32)[:, :, ::-1]
    v = rng.standard_normal((1, 2, 53, 8)).astype(np.float32)  # broadcast over batch
    mask = rng.random((53,)) < 0.8
    problem = problem_of(q, k, v, mask, band=Band(-30, 5))
    assert problem.mask.strides[:3] == (0, 0, 0) and problem.k.strides[2] < 0
    storage = np.full((2, 4, 37, 20), 7.0, np.float32)
    out = storage[..., 3:19:2]  # (2, 4, 37, 8), last axis stride 2
    result, lse, _ = run(run_kernel, problem, out=out, block_q=6, block_k=9)
    assert result is out
    expect_naive(problem, out, lse, np.float32)
    untouched = np.ones(20, bool)
    untouched[3:19:2] = False
    assert np.all(storage[..., untouched] == 7.0)


def test_rounds_give_the_same_bits(run_kernel, rng, monkeypatch):
    problem = problem_of(*qkv(rng, lq=300, lk=300), band=Band(hi=0))
    whole = run(run_kernel, problem, block_q=8, block_k=16)
    monkeypatch.setattr("fastattn._plan.ROUND_COST", 500)
    split = run(run_kernel, problem, block_q=8, block_k=16, in_rounds=True)
    assert len(list(rounds(split[2]))) > 3
    np.testing.assert_array_equal(whole[0], split[0])
    np.testing.assert_array_equal(whole[1], split[1])


@pytest.mark.parametrize("n_threads", [1, 3])
def test_worker_count_gives_the_same_bits(run_kernel, rng, n_threads):
    problem = problem_of(*qkv(rng, lq=200, lk=300), band=Band(-150, 0))
    reference = run(run_kernel, problem, n_threads=2)
    other = run(run_kernel, problem, n_threads=n_threads)
    np.testing.assert_array_equal(reference[0], other[0])
    np.testing.assert_array_equal(reference[1], other[1])


def test_non_finite_inputs(run_kernel, rng):
    """NaN reaches exactly the rows that see it; masked keys contribute nothing."""
    q, k, v = qkv(rng, hq=2, hk=2)
    q[0, 0, 4] = np.nan            # a NaN query row
    k[0, 1, 10] = np.nan           # a NaN key, visible to some rows only
    v[0, 0, 20:] = np.nan          # a NaN value tail (an uninitialised cache), masked below
    keep = np.ones((1, 2, 37, 53), bool)
    keep[0, 0, :, 20:] = False
    problem = problem_of(q, k, v, keep, band=Band(-15, 0))
    out, lse, _ = run(run_kernel, problem, block_q=4, block_k=8)
    expect_naive(problem, out, lse, np.float32)  # NaN where naive has NaN (equal_nan)
    nan_rows = np.isnan(lse[0])
    sees_key_10 = (np.arange(37) >= 10) & (np.arange(37) <= 25)
    assert nan_rows[0].tolist() == [i == 4 for i in range(37)]
    assert nan_rows[1].tolist() == sees_key_10.tolist()
    assert not np.isnan(out[0, 0, np.arange(37) != 4]).any()


def test_infinite_scores_are_not_empty_rows(run_kernel):
    """A float32 score overflow (+inf) must not read as "no visible key"."""
    x = np.array([[[[1e20, 0.0]]]], np.float32)
    problem = problem_of(x, x, x)
    out, lse, _ = run(run_kernel, problem)
    assert not np.isneginf(lse).any() and not np.all(out == 0)


def test_compiled_constants_agree_and_stale_builds_are_refused(monkeypatch):
    cython = pytest.importorskip("fastattn._cython")
    backward = pytest.importorskip("fastattn._cython._backward")
    for compiled in (cython.COMPILED_CONSTANTS, backward.COMPILED_CONSTANTS):
        for name, value in compiled.items():
            assert getattr(_contract, name) == value
    monkeypatch.setattr(_contract, "MASK_ADD", 9)
    with pytest.raises(ImportError, match="MASK_ADD.*rebuild"):
        cython.check_contract(backward.COMPILED_CONSTANTS, "fastattn._cython._backward")


def test_mask_kind_none_ignores_the_mask_argument(run_kernel, rng):
    problem = problem_of(*qkv(rng))
    assert problem.mask_kind == MASK_NONE and problem.mask is None
    out, lse, _ = run(run_kernel, problem)
    expect_naive(problem, out, lse, np.float32)
