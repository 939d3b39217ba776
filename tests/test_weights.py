"""fastattn.attention_weights: exact probabilities of any block, in linear memory.

The reference is written here, from the public contract, with NumPy: the full score
matrix, the causal/window rules spelled out per alignment, a plain softmax.
"""

import math
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

import fastattn  # noqa: E402
from fastattn import _weights  # noqa: E402
from helpers import BACKENDS, tolerance  # noqa: E402


def reference_weights(q, k, mask=None, causal=False, window=None, scale=None):
    """softmax(q kᵀ · scale + mask) in float64, shape (*batch, Hq, Lq, Lk)."""
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if q.ndim == 2 and k.ndim == 2:
        return reference_weights(q[None], k[None], mask, causal, window, scale)[0]
    if q.ndim == 2:
        q = q[None]
    if k.ndim == 2:
        k = k[None]
    hq, lq, d = q.shape[-3:]
    hk, lk = k.shape[-3:-1]
    k = np.repeat(k, hq // hk, axis=-3)  # query head h uses kv head h // (hq // hk)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = np.einsum("...id,...jd->...ij", q, k) * scale

    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    if causal is True:
        causal = "upper_left"
    diagonal = i + (lk - lq) if causal == "lower_right" else i
    keep = np.ones((lq, lk), dtype=bool)
    if causal:
        keep &= j <= diagonal
    if window is not None:
        left, right = window
        if left is not None:
            keep &= j >= diagonal - left
        if right is not None:
            keep &= j <= diagonal + right
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            keep = keep & mask
        else:
            scores = scores + mask
    scores = np.where(keep, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    exp = np.where(np.isneginf(scores), 0.0, np.exp(scores - top))
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def check(weights, expected, dtype=np.float64):
    assert weights.shape == expected.shape
    assert not np.isnan(weights).any()
    np.testing.assert_allclose(weights, expected, **tolerance(dtype))


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def test_worked_example():
    q = np.array([[0.3, 0.6]])
    k = np.array([[0.8, 1.0], [1.6, 2.0], [0.4, 0.5]])
    weights = fastattn.attention_weights(q, k)
    np.testing.assert_allclose(weights, [[0.2814, 0.5096, 0.2091]], atol=5e-5)
    assert weights.shape == (1, 3) and weights.dtype == np.float64


def test_exported():
    assert "attention_weights" in fastattn.__all__
    assert fastattn.attention_weights is _weights.attention_weights


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_batched_matches_reference_on_every_backend(backend, rng):
    q = rng.standard_normal((2, 3, 9, 5))
    k = rng.standard_normal((2, 3, 11, 5))
    with fastattn.config_context(backend=backend):
        weights = fastattn.attention_weights(q, k)
    check(weights, reference_weights(q, k))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype, out_dtype", [(np.float16, np.float32),
                                              (np.float32, np.float32),
                                              (np.float64, np.float64)])
def test_dtypes(dtype, out_dtype, rng):
    q = rng.standard_normal((2, 6, 8)).astype(dtype)
    k = rng.standard_normal((2, 7, 8)).astype(dtype)
    weights = fastattn.attention_weights(q, k, causal=True)
    assert weights.dtype == out_dtype
    check(weights, reference_weights(q, k, causal=True), dtype=out_dtype)


def test_bool_mask_and_padding(rng):
    q = rng.standard_normal((2, 6, 4))
    k = rng.standard_normal((2, 8, 4))
    mask = rng.random((2, 6, 8)) < 0.6
    check(fastattn.attention_weights(q, k, mask), reference_weights(q, k, mask))
    padding = np.arange(8) < 5  # broadcast over heads and rows
    weights = fastattn.attention_weights(q, k, padding)
    check(weights, reference_weights(q, k, padding))
    assert np.all(weights[..., 5:] == 0.0)


def test_additive_mask(rng):
    q = rng.standard_normal((3, 6, 4))
    k = rng.standard_normal((3, 6, 4))
    bias = rng.standard_normal((3, 1, 6))  # ALiBi-like bias, broadcast over rows
    bias[0, 0, 2] = -np.inf
    weights = fastattn.attention_weights(q, k, bias)
    check(weights, reference_weights(q, k, bias))
    assert np.all(weights[0, :, 2] == 0.0)


@pytest.mark.parametrize("causal", [True, "upper_left", "lower_right"])
@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 9), (9, 4)])
def test_causal_alignments(causal, lq, lk, rng):
    q = rng.standard_normal((2, lq, 3))
    k = rng.standard_normal((2, lk, 3))
    weights = fastattn.attention_weights(q, k, causal=causal)
    check(weights, reference_weights(q, k, causal=causal))


@pytest.mark.parametrize("window, causal", [((2, 1), False), ((None, 0), False),
                                            ((3, None), False), ((2, 0), True),
                                            ((1, 2), "lower_right"), ((0, 0), False)])
@pytest.mark.parametrize("lq, lk", [(7, 7), (5, 10), (10, 5)])
def test_windows(window, causal, lq, lk, rng):
    q = rng.standard_normal((lq, 4))
    k = rng.standard_normal((lk, 4))
    weights = fastattn.attention_weights(q, k, causal=causal, window=window)
    check(weights, reference_weights(q, k, causal=causal, window=window))


def test_grouped_query_attention(rng):
    q = rng.standard_normal((2, 6, 5, 4))
    k = rng.standard_normal((2, 2, 7, 4))
    weights = fastattn.attention_weights(q, k, causal="lower_right")
    check(weights, reference_weights(q, k, causal="lower_right"))
    selected = fastattn.attention_weights(q, k, heads=[5, 0, 3])
    check(selected, reference_weights(q, k)[:, [5, 0, 3]])


def test_scale(rng):
    q = rng.standard_normal((5, 4))
    k = rng.standard_normal((6, 4))
    check(fastattn.attention_weights(q, k, scale=0.3), reference_weights(q, k, scale=0.3))


@pytest.mark.parametrize("heads, rows, cols", [
    (None, slice(2, 7), slice(None, None, 2)),
    ([1], [0, 9, 3], None),
    ([2, 0], np.array([-1, 4]), np.array([10, 0, 5])),
    ([-1], slice(None, None, -1), [3]),
    (1, 4, 7),                                  # single ints keep their axis
    (None, np.arange(12) % 3 == 0, slice(3, 3)),  # bool rows, empty cols
])
def test_selections(heads, rows, cols, rng):
    q = rng.standard_normal((2, 3, 12, 4))
    k = rng.standard_normal((2, 3, 11, 4))
    mask = rng.random((3, 12, 11)) < 0.8
    full = reference_weights(q, k, mask, causal="lower_right", window=(4, None))
    weights = fastattn.attention_weights(q, k, mask, causal="lower_right", window=(4, None),
                                         heads=heads, rows=rows, cols=cols)

    def pick(selection, size):
        if selection is None:
            return np.arange(size)
        if isinstance(selection, int):
            return np.array([selection])
        return np.arange(size)[selection]

    expected = full[:, pick(heads, 3)][:, :, pick(rows, 12)][..., pick(cols, 11)]
    check(weights, expected)


def test_small_tiles(monkeypatch, rng):
    monkeypatch.setattr(_weights, "BLOCK_ROWS", 3)
    monkeypatch.setattr(_weights, "BLOCK_COLS", 4)
    q = rng.standard_normal((2, 10, 4))
    k = rng.standard_normal((2, 13, 4))
    check(fastattn.attention_weights(q, k, causal=True, rows=[9, 1, 5, 2]),
          reference_weights(q, k, causal=True)[:, [9, 1, 5, 2]])


def test_fully_masked_rows_are_zero(rng):
    q = rng.standard_normal((2, 5, 4))
    k = rng.standard_normal((2, 6, 4))
    mask = np.ones((2, 5, 6), dtype=bool)
    mask[0, 1] = False
    additive = np.zeros((5, 6))
    additive[3] = -np.inf
    for m in (mask, additive):
        weights = fastattn.attention_weights(q, k, m)
        check(weights, reference_weights(q, k, m))
        assert not np.isnan(weights).any()
    assert np.all(fastattn.attention_weights(q, k, mask)[0, 1] == 0.0)
    assert np.all(fastattn.attention_weights(q, k, additive)[:, 3] == 0.0)
    # lower_right with more queries than keys: the first rows see no key at all
    weights = fastattn.attention_weights(q, k[:, :3], causal="lower_right")
    assert np.all(weights[:, :2] == 0.0)
    np.testing.assert_allclose(weights[:, 2:].sum(-1), 1.0)


def test_empty_shapes(rng):
    q = rng.standard_normal((0, 4))
    k = rng.standard_normal((5, 4))
    assert fastattn.attention_weights(q, k).shape == (0, 5)
    assert fastattn.attention_weights(k, q).shape == (5, 0)


@settings(max_examples=40, deadline=None)
@given(lq=st.integers(1, 14), lk=st.integers(1, 14),
       causal=st.sampled_from([False, "upper_left", "lower_right"]),
       left=st.one_of(st.none(), st.integers(0, 6)), right=st.one_of(st.none(), st.integers(0, 6)),
       use_window=st.booleans(), seed=st.integers(0, 2**16))
def test_row_spans_match_reference(lq, lk, causal, left, right, use_window, seed):
    """Random row subsets exercise the sub-problem window that re-expresses the band."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((lq, 3))
    k = rng.standard_normal((lk, 3))
    window = (left, right) if use_window else None
    rows = rng.choice(lq, size=rng.integers(1, lq + 1), replace=False)
    cols = rng.permutation(lk)[: rng.integers(0, lk + 1)]
    expected = reference_weights(q, k, causal=causal, window=window)[rows][:, cols]
    weights = fastattn.attention_weights(q, k, causal=causal, window=window, rows=rows,
                                         cols=cols)
    check(weights, expected)


@pytest.mark.parametrize("causal", [False, True])
def test_window_of_a_long_sequence_uses_linear_memory(causal, rng):
    n, d = 20_000, 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    rows = slice(n - 300, n - 100)
    fastattn.attention_weights(x[:8], x[:8], causal=causal)  # first-call set-up, not counted
    tracemalloc.start()
    try:
        weights = fastattn.attention_weights(x, x, causal=causal, rows=rows, cols=rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert weights.shape == (200, 200) and weights.dtype == np.float32
    full = n * n * 8 / 2**30
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB (N² float64 would be {full:.1f} GiB)"
    # spot-check two rows against a direct softmax over every key
    for row in (n - 300, n - 101):
        scores = (x[row].astype(np.float64) @ x.astype(np.float64).T) / math.sqrt(d)
        if causal:
            scores[row + 1:] = -np.inf
        p = np.exp(scores - scores.max())
        p /= p.sum()
        np.testing.assert_allclose(weights[row - (n - 300)], p[n - 300:n - 100],
                                   rtol=2e-4, atol=1e-7)


def test_errors(rng):
    q = rng.standard_normal((2, 5, 4))
    k = rng.standard_normal((2, 6, 4))
    with pytest.raises(TypeError, match="integer inputs"):
        fastattn.attention_weights(q.astype(int), k)
    with pytest.raises(ValueError, match="same feature size"):
        fastattn.attention_weights(q, k[..., :3])
    with pytest.raises(ValueError, match="must divide"):
        fastattn.attention_weights(q, rng.standard_normal((3, 6, 4)))
    with pytest.raises(TypeError, match="integer masks"):
        fastattn.attention_weights(q, k, np.ones((5, 6), dtype=int))
    with pytest.raises(ValueError, match="causal"):
        fastattn.attention_weights(q, k, causal="both")
    with pytest.raises(IndexError, match="heads .* out of range"):
        fastattn.attention_weights(q, k, heads=[2])
    with pytest.raises(IndexError, match="rows .* out of range"):
        fastattn.attention_weights(q, k, rows=[-6])
    with pytest.raises(TypeError, match="cols must be"):
        fastattn.attention_weights(q, k, cols=[0.5])
    with pytest.raises(ValueError, match="bool selection"):
        fastattn.attention_weights(q, k, rows=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="one-dimensional"):
        fastattn.attention_weights(q, k, cols=[[0, 1]])
