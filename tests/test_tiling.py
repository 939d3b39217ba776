"""Results do not depend on the thread count (bit for bit) nor, beyond rounding, on blocks."""

import numpy as np
import pytest

import fastattn
from fastattn import _plan
from fastattn._contract import Band
from fastattn._validation import validate
from helpers import assert_close, attend, check_backend, heads_qkv

# Masked rows and huge logits must not make NaN or inf, even transiently.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def attend_with(backend, q, k, v, mask=None, settings=None, **options):
    with fastattn.config_context(**(settings or {})):
        return attend(backend, q, k, v, mask, **options)


def assert_identical(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


CASES = [
    dict(),
    dict(causal=True),
    dict(causal="lower_right", window=(5, 2)),
    dict(mask="bool"),
    dict(mask="additive", causal=True),
]


def case_inputs(rng, case, dtype, lq=70, lk=90):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=lq, lk=lk, d=8, dv=6, dtype=dtype)
    options = dict(case)
    mask = options.pop("mask", None)
    if mask == "bool":
        mask = rng.random((2, 1, lq, lk)) < 0.5
    elif mask == "additive":
        mask = rng.standard_normal((lq, lk))
    return q, k, v, mask, options


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
                         or "plain")
def test_thread_count_does_not_change_bits(compiled_backend, rng, dtype, case):
    q, k, v, mask, options = case_inputs(rng, case, dtype)
    for blocks in (dict(), dict(block_q=8, block_k=16)):
        one = attend_with(compiled_backend, q, k, v, mask, dict(num_threads=1, **blocks),
                          **options)
        for threads in (2, 3, 7):
            assert_identical(attend_with(compiled_backend, q, k, v, mask,
                                         dict(num_threads=threads, **blocks), **options), one)


BLOCKS = [(1, 1), (1, 7), (3, 5), (8, 16), (16, 32), (64, 256), (128, 1024)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
                         or "plain")
def test_block_sizes_agree_to_rounding(compiled_backend, rng, dtype, case):
    q, k, v, mask, options = case_inputs(rng, case, dtype, lq=23, lk=41)
    ref_out, ref_lse = attend("naive", q, k, v, mask, **options)
    for block_q, block_k in BLOCKS:
        out, lse = attend_with(compiled_backend, q, k, v, mask,
                               dict(block_q=block_q, block_k=block_k), **options)
        assert_close(out, ref_out)
        assert_close(lse, ref_lse)


def test_naive_ignores_threads_and_blocks(rng):
    q, k, v = heads_qkv(rng, hq=2, lq=9, lk=9)
    one = attend_with("naive", q, k, v, settings=dict(num_threads=1, block_q=2, block_k=3))
    assert_identical(attend_with("naive", q, k, v, settings=dict(num_threads=2)), one)


# ---------------------------------------------------------------- split-KV (decoding)

DECODE = dict(batch=1, hq=4, hk=1, lq=1, lk=8192 + 37, d=16)


def decode_plan(n_threads, lk=DECODE["lk"]):
    return _plan.make_plan(DECODE["batch"], DECODE["hk"], DECODE["hq"] // DECODE["hk"],
                           DECODE["lq"], lk, Band(), n_threads)


@pytest.mark.parametrize("lk", [_plan.MIN_SPLIT_KEYS * n + delta for n in (1, 2)
                                for delta in (-1, 0, 1)])
def test_split_kv_edges(backend, rng, lk):
    """Key lengths around the split-KV thresholds: same result, 1 or 2 threads."""
    q, k, v = heads_qkv(rng, batch=(1,), hq=2, hk=1, lq=1, lk=lk, d=4)
    one = attend_with(backend, q, k, v, settings=dict(num_threads=1))
    assert_identical(attend_with(backend, q, k, v, settings=dict(num_threads=2)), one)
    check_backend(backend, q, k, v, oracle=False)


def test_decode_shape_is_planned_as_split_kv():
    for n_threads in (1, 2, 8):
        plan = decode_plan(n_threads)
        assert plan.n_parts > 0
        assert len(plan.merges) > 0
    assert decode_plan(1).n_parts == decode_plan(8).n_parts  # shape decides, not threads


def decode_inputs(rng, dtype):
    spec = DECODE
    return heads_qkv(rng, batch=(spec["batch"],), hq=spec["hq"], hk=spec["hk"], lq=spec["lq"],
                     lk=spec["lk"], d=spec["d"], dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [dict(), dict(causal="lower_right"), dict(mask="bool"),
                                  dict(mask="additive"), dict(window=(3000, None),
                                                              causal="lower_right")],
                         ids=["plain", "lower_right", "bool", "additive", "window"])
def test_decode_split_kv_matches_naive_for_any_thread_count(backend, rng, dtype, case):
    q, k, v = decode_inputs(rng, dtype)
    options = dict(case)
    mask = options.pop("mask", None)
    lk = DECODE["lk"]
    if mask == "bool":
        mask = rng.random(lk) < 0.3
        mask[:3000] = False  # whole split parts see no key
    elif mask == "additive":
        mask = np.where(rng.random(lk) < 0.5, rng.standard_normal(lk), -np.inf)
    one = attend_with(backend, q, k, v, mask, dict(num_threads=1), **options)
    two = attend_with(backend, q, k, v, mask, dict(num_threads=2), **options)
    assert_identical(one, two)
    check_backend(backend, q, k, v, mask, oracle=False, **options)


def test_decode_split_kv_fully_masked_rows(backend, rng):
    q, k, v = decode_inputs(rng, np.float64)
    keep = np.zeros((4, 1, DECODE["lk"]), dtype=bool)  # per head
    keep[1, 0, -5:] = True
    keep[3, 0, 100] = True
    out, lse = check_backend(backend, q, k, v, keep, oracle=False)
    assert np.all(out[0, [0, 2]] == 0) and np.all(np.isneginf(lse[0, [0, 2]]))
    assert np.all(np.isfinite(lse[0, [1, 3]]))
    np.testing.assert_allclose(out[0, 3, 0], v[0, 0, 100], rtol=1e-12)


@pytest.mark.parametrize("batch, hq, hk, lq", [(2, 2, 2, 2), (1, 8, 2, 3), (1, 4, 1, 5)])
def test_split_kv_with_several_rows(backend, rng, batch, hq, hk, lq):
    """A few long rows (several queries, batches, GQA groups) get split; same result."""
    q, k, v = heads_qkv(rng, batch=(batch,), hq=hq, hk=hk, lq=lq, lk=5000, d=8)
    problem = validate(q, k, v)
    plan = _plan.make_plan(batch, hk, hq // hk, lq, 5000, problem.band, 2)
    assert plan.n_parts > 0
    one = attend_with(backend, q, k, v, settings=dict(num_threads=1))
    assert_identical(attend_with(backend, q, k, v, settings=dict(num_threads=2)), one)
    check_backend(backend, q, k, v, oracle=False, causal="lower_right")


# ---------------------------------------------------------------- online softmax across blocks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["rising", "falling", "zigzag"])
def test_running_max_across_blocks(backend, dtype, order):
    """Scores that jump by thousands between kv blocks (the rescale, and its underflow)."""
    lk = 24
    levels = {"rising": np.repeat([-3000.0, 0.0, 3000.0], 8),
              "falling": np.repeat([3000.0, 0.0, -3000.0], 8),
              "zigzag": np.tile([5.0, -2000.0, 2000.0, 1.0], 6)}[order]
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=dtype)
    k = np.stack([levels, np.arange(lk) % 3 - 1.0], axis=1).astype(dtype)
    v = np.stack([np.arange(lk), np.ones(lk)], axis=1).astype(dtype)
    for blocks in (dict(block_q=1, block_k=1), dict(block_q=2, block_k=5), dict()):
        with fastattn.config_context(**blocks):
            out, lse = check_backend(backend, q, k, v, scale=1.0)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))


@pytest.mark.parametrize("block_k", [1, 4, 16])
def test_block_sparse_bool_mask(backend, rng, block_k):
    """Whole kv blocks masked out (skipped by the kernels), per row and per head."""
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=9, lk=64, d=4)
    keep = np.zeros((2, 4, 9, 64), dtype=bool)
    keep[0, :, :, 16:32] = True          # one block band
    keep[1, 0, :, -3:] = True            # only the last keys
    keep[1, 1, 4] = True                 # a single row sees everything
    keep[1, 2, :, ::17] = True           # sparse columns
    with fastattn.config_context(block_q=2, block_k=block_k):
        out, lse = check_backend(backend, q, k, v, keep, oracle=False)
        check_backend(backend, q, k, v, keep, causal="lower_right", oracle=False)
    assert np.isneginf(lse[1, 1, [0, 1, 2, 3, 5, 6, 7, 8]]).all()
    assert np.all(out[1, 3] == 0) and np.isneginf(lse[1, 3]).all()


@pytest.mark.parametrize("block_k", [1, 3, 8])
def test_leading_neg_inf_blocks_in_additive_mask(backend, rng, block_k):
    """Rows whose first kv blocks are all -inf, then finite: no NaN from -inf - -inf."""
    q, k, v = heads_qkv(rng, hq=2, lq=6, lk=20, d=4)
    bias = rng.standard_normal((2, 6, 20))
    bias[:, :, :12] = -np.inf
    bias[0, 3] = -np.inf  # one row fully masked
    with fastattn.config_context(block_q=2, block_k=block_k):
        out, lse = check_backend(backend, q, k, v, bias)
    assert np.all(out[0, 3] == 0) and np.isneginf(lse[0, 3])


def test_concurrent_calls_from_python_threads(compiled_backend, rng):
    """Calls from a thread pool (as Dask's threaded scheduler makes) stay correct."""
    from concurrent.futures import ThreadPoolExecutor

    inputs = [heads_qkv(rng, hq=4, hk=2, lq=150, lk=170, d=16) for _ in range(8)]
    expected = [attend_with("naive", *qkv, causal=True) for qkv in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda qkv: attend_with(compiled_backend, *qkv, causal=True),
                                inputs))
    for (out, lse), (want_out, want_lse) in zip(results, expected):
        assert_close(out, want_out, np.float64)
        assert_close(lse, want_lse, np.float64)
