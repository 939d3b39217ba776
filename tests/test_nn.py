"""fastattn.nn: every block against a direct NumPy formula written here."""

import math

import numpy as np
import pytest

from fastattn.nn import (MultiHeadAttention, additive_attention, local_attention,
                         sinusoidal_positional_encoding)


def softmax(scores):
    """Row softmax; a row of -inf gives zeros."""
    top = np.max(scores, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    exp = np.exp(scores - top)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def mha_reference(m, x, context=None, keep=None):
    """Per head, by hand: softmax(Q_h K_hᵀ / sqrt(d)) V_h, concatenated, then Wo."""
    x = np.asarray(x, np.float64)
    context = x if context is None else np.asarray(context, np.float64)
    w = {name: getattr(m, name).astype(np.float64) for name in ("Wq", "Wk", "Wv", "Wo")}
    b = {name: (0.0 if getattr(m, name) is None else getattr(m, name).astype(np.float64))
         for name in ("bq", "bk", "bv", "bo")}
    d = m.head_dim
    group = m.num_heads // m.num_kv_heads
    Q = x @ w["Wq"] + b["bq"]
    K = context @ w["Wk"] + b["bk"]
    V = context @ w["Wv"] + b["bv"]
    heads, probabilities = [], []
    for h in range(m.num_heads):
        g = h // group
        q_h = Q[..., h * d:(h + 1) * d]
        k_h = K[..., g * d:(g + 1) * d]
        v_h = V[..., g * d:(g + 1) * d]
        scores = q_h @ np.swapaxes(k_h, -1, -2) / math.sqrt(d)
        if keep is not None:
            scores = np.where(keep, scores, -np.inf)
        p = softmax(scores)
        probabilities.append(p)
        heads.append(p @ v_h)
    out = np.concatenate(heads, axis=-1) @ w["Wo"] + b["bo"]
    return out, np.stack(probabilities, axis=-3)


# --- positional encoding ---------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 6, 7])
def test_positional_encoding_values(dim):
    pe = sinusoidal_positional_encoding(11, dim)
    assert pe.shape == (11, dim) and pe.dtype == np.float64
    for pos in range(11):
        for col in range(dim):
            i = col // 2
            angle = pos / 10000.0 ** (2 * i / dim)
            expected = math.sin(angle) if col % 2 == 0 else math.cos(angle)
            assert pe[pos, col] == pytest.approx(expected, abs=1e-12)


def test_positional_encoding_base_and_empty():
    pe = sinusoidal_positional_encoding(4, 2, base=100.0)
    np.testing.assert_allclose(pe[:, 0], np.sin(np.arange(4)))
    assert sinusoidal_positional_encoding(0, 3).shape == (0, 3)


@pytest.mark.parametrize("args, error, match", [
    ((5, 0), ValueError, "dim must be >= 1"),
    ((-1, 4), ValueError, "length must be >= 0"),
    ((5, 4.0), TypeError, "dim must be an int"),
    ((5, 4, -2.0), ValueError, "base must be a positive"),
])
def test_positional_encoding_errors(args, error, match):
    with pytest.raises(error, match=match):
        sinusoidal_positional_encoding(*args)


# --- multi-head attention --------------------------------------------------------------

def test_mha_init():
    m = MultiHeadAttention(12, 3, seed=0)
    assert m.Wq.shape == m.Wo.shape == (12, 12) and m.Wk.shape == m.Wv.shape == (12, 12)
    assert m.Wq.dtype == np.float32 and m.bq.shape == (12,) and np.all(m.bq == 0)
    limit = math.sqrt(6 / 24)
    assert np.abs(m.Wq).max() <= limit and np.abs(m.Wq).max() > 0.8 * limit
    again = MultiHeadAttention(12, 3, seed=0)
    np.testing.assert_array_equal(m.Wv, again.Wv)
    assert not np.array_equal(m.Wv, MultiHeadAttention(12, 3, seed=1).Wv)
    gqa = MultiHeadAttention(12, 4, 2, kv_dim=5, bias=False, dtype=np.float64)
    assert gqa.Wk.shape == (5, 6) and gqa.Wq.shape == (12, 12) and gqa.bk is None
    assert gqa.Wq.dtype == np.float64 and "num_kv_heads=2" in repr(gqa)


def test_mha_self_attention_matches_per_head_formula():
    rng = np.random.default_rng(0)
    m = MultiHeadAttention(16, 4, seed=3, dtype=np.float64)
    m.bq, m.bk, m.bv, m.bo = (rng.standard_normal(16) for _ in range(4))  # loaded weights
    x = rng.standard_normal((2, 7, 16))
    out, weights = m(x, return_weights=True)
    expected_out, expected_weights = mha_reference(m, x)
    assert out.shape == (2, 7, 16) and weights.shape == (2, 4, 7, 7)
    np.testing.assert_allclose(out, expected_out, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-10, atol=1e-12)


def test_mha_causal_and_padding_float32():
    rng = np.random.default_rng(1)
    m = MultiHeadAttention(8, 2, seed=0)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    out, weights = m(x, causal=True, return_weights=True)
    keep = np.tril(np.ones((6, 6), dtype=bool))
    expected_out, expected_weights = mha_reference(m, x, keep=keep)
    assert out.dtype == np.float32 and weights.dtype == np.float32
    np.testing.assert_allclose(out, expected_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-4, atol=1e-6)
    padding = np.array([True] * 4 + [False] * 2)  # key-padding mask (S,)
    out = m(x, mask=padding)
    np.testing.assert_allclose(out, mha_reference(m, x, keep=padding)[0], rtol=1e-4, atol=1e-5)


def test_mha_cross_attention():
    rng = np.random.default_rng(2)
    m = MultiHeadAttention(8, 2, kv_dim=6, seed=5, dtype=np.float64)
    decoder = rng.standard_normal((3, 8))
    encoder = rng.standard_normal((9, 6))
    out, weights = m(decoder, context=encoder, return_weights=True)
    expected_out, expected_weights = mha_reference(m, decoder, encoder)
    assert out.shape == (3, 8) and weights.shape == (2, 3, 9)
    np.testing.assert_allclose(out, expected_out, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-10, atol=1e-12)


def test_mha_grouped_query_attention():
    rng = np.random.default_rng(3)
    m = MultiHeadAttention(24, 6, num_kv_heads=2, seed=1, dtype=np.float64)
    x = rng.standard_normal((2, 5, 24))
    out, weights = m(x, return_weights=True)
    expected_out, expected_weights = mha_reference(m, x)
    np.testing.assert_allclose(out, expected_out, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-10, atol=1e-12)


def test_mha_window():
    rng = np.random.default_rng(4)
    m = MultiHeadAttention(8, 2, seed=2, dtype=np.float64)
    x = rng.standard_normal((7, 8))
    i, j = np.indices((7, 7))
    keep = (j >= i - 2) & (j <= i)
    out = m(x, causal=True, window=(2, 0))
    np.testing.assert_allclose(out, mha_reference(m, x, keep=keep)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(embed_dim=10, num_heads=3), ValueError, "must divide embed_dim"),
    (dict(embed_dim=12, num_heads=4, num_kv_heads=3), ValueError, "must divide num_heads"),
    (dict(embed_dim=12, num_heads=0), ValueError, "num_heads must be >= 1"),
    (dict(embed_dim=12.0, num_heads=2), TypeError, "embed_dim must be an int"),
    (dict(embed_dim=12, num_heads=2, dtype=np.int32), TypeError, "float dtype"),
])
def test_mha_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiHeadAttention(**kwargs)


def test_mha_bad_calls():
    m = MultiHeadAttention(8, 2, seed=0)
    with pytest.raises(ValueError, match="must end with 8 features"):
        m(np.zeros((4, 6), np.float32))
    with pytest.raises(TypeError, match="must be a float array"):
        m(np.zeros((4, 8), dtype=int))
    with pytest.raises(ValueError, match="must end with 8 features"):
        m(np.zeros((4, 8), np.float32), context=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="pass the context"):
        MultiHeadAttention(8, 2, kv_dim=4)(np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="does not broadcast"):
        m(np.zeros((4, 8), np.float32), mask=np.ones((3, 3), dtype=bool))


# --- additive attention ----------------------------------------------------------------

def additive_reference(query, keys, values, W_q, W_k, w_v, keep=None):
    lq, lk = len(query), len(keys)
    scores = np.empty((lq, lk))
    for i in range(lq):
        for j in range(lk):
            scores[i, j] = w_v @ np.tanh(W_q.T @ query[i] + W_k.T @ keys[j])
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    weights = softmax(scores)
    return weights @ values, weights


def test_additive_attention_matches_formula():
    rng = np.random.default_rng(5)
    query, keys, values = (rng.standard_normal(s) for s in ((4, 3), (6, 5), (6, 2)))
    W_q, W_k, w_v = (rng.standard_normal(s) for s in ((3, 7), (5, 7), (7,)))
    context, weights = additive_attention(query, keys, values, W_q, W_k, w_v)
    expected_context, expected_weights = additive_reference(query, keys, values, W_q, W_k, w_v)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-12)
    np.testing.assert_allclose(context, expected_context, rtol=1e-12)

    keep = rng.random((4, 6)) < 0.6
    keep[2] = False  # a fully masked row
    context, weights = additive_attention(query, keys, values, W_q, W_k, w_v, mask=keep)
    expected_context, expected_weights = additive_reference(query, keys, values, W_q, W_k,
                                                            w_v, keep)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(context, expected_context, rtol=1e-12, atol=1e-15)
    assert np.all(weights[2] == 0) and np.all(context[2] == 0)


def test_additive_attention_single_query_batch_and_float_mask():
    rng = np.random.default_rng(6)
    keys, values = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 4))
    W_q, W_k, w_v = rng.standard_normal((3, 6)), rng.standard_normal((3, 6)), rng.standard_normal(6)
    query = rng.standard_normal(3)
    bias = np.array([0.0, 0.0, -np.inf, 0.5, 0.0])
    context, weights = additive_attention(query, keys, values, W_q, W_k, w_v, mask=bias)
    assert context.shape == (2, 4) and weights.shape == (2, 5)
    for b in range(2):
        scores = np.array([w_v @ np.tanh(W_q.T @ query + W_k.T @ key) for key in keys[b]])
        expected = softmax(scores + bias)
        np.testing.assert_allclose(weights[b], expected, rtol=1e-12)
        np.testing.assert_allclose(context[b], expected @ values[b], rtol=1e-12)


def test_additive_attention_errors():
    q, k, v = np.zeros((2, 3)), np.zeros((4, 3)), np.zeros((4, 2))
    W, w = np.zeros((3, 5)), np.zeros(5)
    with pytest.raises(ValueError, match="expected W_q"):
        additive_attention(q, k, v, np.zeros((2, 5)), W, w)
    with pytest.raises(ValueError, match="same length"):
        additive_attention(q, k, v[:3], W, W, w)
    with pytest.raises(TypeError, match="mask"):
        additive_attention(q, k, v, W, W, w, mask=np.ones((2, 4), dtype=int))
    with pytest.raises(ValueError, match="does not broadcast"):
        additive_attention(q, k, v, W, W, w, mask=np.ones((3, 4), dtype=bool))
    with pytest.raises(TypeError, match="float array"):
        additive_attention(q.astype(int), k, v, W, W, w)


# --- local attention -------------------------------------------------------------------

@pytest.mark.parametrize("window, causal", [(1, False), (2, True), ((1, 3), False),
                                            (0, False)])
def test_local_attention_matches_formula(window, causal):
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((9, 4)), rng.standard_normal((9, 4)), rng.standard_normal((9, 3))
    left, right = (window, window) if isinstance(window, int) else window
    i, j = np.indices((9, 9))
    keep = (j >= i - left) & (j <= i + right)
    if causal:
        keep &= j <= i
    scores = np.where(keep, q @ k.T / 2.0, -np.inf)
    expected = softmax(scores) @ v
    np.testing.assert_allclose(local_attention(q, k, v, window, causal=causal), expected,
                               rtol=1e-10, atol=1e-12)


def test_local_attention_lower_right_alignment():
    rng = np.random.default_rng(8)
    q, k, v = rng.standard_normal((2, 4)), rng.standard_normal((6, 4)), rng.standard_normal((6, 1))
    out = local_attention(q, k, v, 1, causal="lower_right")
    # query 1 sits on key 5 and sees keys 4..5; query 0 on key 4 sees 3..4
    for row, keys in ((0, [3, 4]), (1, [4, 5])):
        p = softmax(q[row] @ k[keys].T / 2.0)
        np.testing.assert_allclose(out[row], p @ v[keys], rtol=1e-10)


@pytest.mark.parametrize("window", [-1, None, True])
def test_local_attention_bad_window(window):
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="window"):
        local_attention(x, x, x, window)
