"""Property-based tests: random small problems, every backend against the naive reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastattn
from helpers import BACKENDS, assert_close, assert_matches, attend
from oracle import attention_oracle

# Masked rows and huge logits must not make NaN or inf, even transiently.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)


@st.composite
def problems(draw):
    """A random attention call: shapes, dtype, causal mode, window, mask, scale, blocks."""
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    hk = draw(st.integers(1, 3))
    hq = hk * draw(st.sampled_from([1, 2, 4]))
    lq = draw(st.integers(1, 12))
    lk = draw(st.integers(1, 12))
    d = draw(st.integers(1, 9))
    dv = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16]))
    causal = draw(st.sampled_from([False, True, "upper_left", "lower_right"]))
    side = st.one_of(st.none(), st.integers(0, 6))
    window = draw(st.one_of(st.none(), st.tuples(side, side)))
    scale = draw(st.one_of(st.none(), st.floats(-2, 2, allow_nan=False)))
    mask_kind = draw(st.sampled_from([None, "bool", "additive"]))
    mask_shape = draw(st.sampled_from(["full", "keys", "rows"]))
    blocks = draw(st.sampled_from([{}, dict(block_q=1, block_k=1), dict(block_q=2, block_k=3),
                                   dict(block_q=5, block_k=4)]))
    seed = draw(st.integers(0, 2 ** 32 - 1))

    rng = np.random.default_rng(seed)
    q = rng.standard_normal(batch + (hq, lq, d)).astype(dtype)
    k = rng.standard_normal(batch + (hk, lk, d)).astype(dtype)
    v = rng.standard_normal(batch + (hk, lk, dv)).astype(dtype)
    shape = {"full": batch + (hq, lq, lk), "keys": (lk,), "rows": (lq, lk)}[mask_shape]
    mask = None
    if mask_kind == "bool":
        mask = rng.random(shape) < 0.6
    elif mask_kind == "additive":
        mask = np.where(rng.random(shape) < 0.7, rng.standard_normal(shape), -np.inf)
    options = dict(causal=causal, window=window, scale=scale)
    return q, k, v, mask, options, blocks


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(problem=problems())
def test_backend_matches_naive(backend, problem):
    q, k, v, mask, options, blocks = problem
    with fastattn.config_context(**blocks):
        out, lse = attend(backend, q, k, v, mask, **options)
    ref_out, ref_lse = attend("naive", q, k, v, mask, **options)
    assert_matches(out, lse, ref_out, ref_lse)
    empty = np.isneginf(ref_lse)
    assert np.all(out[empty] == 0)


@SETTINGS
@given(problem=problems())
def test_naive_matches_oracle(problem):
    q, k, v, mask, options, _ = problem
    out, lse = attend("naive", q, k, v, mask, **options)
    want_out, want_lse = attention_oracle(q, k, v, mask, **options)
    assert_close(out, want_out)
    assert_close(lse, want_lse)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(problem=problems(), cut=st.integers(0, 12))
def test_split_and_merge_equals_whole(backend, problem, cut):
    """Attention over keys [:cut] and [cut:] merged equals attention over all keys."""
    q, k, v, _, options, _ = problem
    options = dict(scale=options["scale"])
    lk = k.shape[-2]
    cut = min(cut, lk)
    if cut in (0, lk):
        return
    a = attend(backend, q, k[..., :cut, :], v[..., :cut, :], **options)
    b = attend(backend, q, k[..., cut:, :], v[..., cut:, :], **options)
    out, lse = fastattn.merge_attention(*a, *b)
    ref_out, ref_lse = attend("naive", q, k, v, **options)
    assert_close(out, ref_out)
    assert_close(lse, ref_lse)


@SETTINGS
@given(problem=problems())
def test_rows_are_convex_combinations_of_values(problem):
    """Every output row lies within the range of the values it may see."""
    q, k, v, mask, options, _ = problem
    out = fastattn.attention(q, k, v, mask, **options).astype(np.float64)
    v64 = np.broadcast_to(v.astype(np.float64), out.shape[:-3] + v.shape[-3:])
    group = q.shape[-3] // k.shape[-3]
    low = np.repeat(v64.min(axis=-2), group, axis=-2)[..., None, :]
    high = np.repeat(v64.max(axis=-2), group, axis=-2)[..., None, :]
    slack = 1e-9 if q.dtype == np.float64 else 1e-2
    assert np.all(out >= np.minimum(low, 0) - slack) and np.all(out <= np.maximum(high, 0) + slack)
