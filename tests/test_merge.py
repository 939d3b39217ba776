"""merge_attention: partial results over disjoint key sets merge into the full attention."""

import numpy as np
import pytest

import fastattn
from helpers import assert_close, attend, heads_qkv
from oracle import attention_oracle


def split_keys(k, v, index):
    return (k[..., index, :], v[..., index, :])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("split", ["halves", "interleaved", "one-key"])
def test_two_disjoint_key_sets_merge_to_full(backend, rng, dtype, split):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=5, lk=9, dv=3, dtype=dtype)
    index = {"halves": np.arange(9) < 4, "interleaved": np.arange(9) % 2 == 0,
             "one-key": np.arange(9) == 8}[split]
    a = attend(backend, q, *split_keys(k, v, index))
    b = attend(backend, q, *split_keys(k, v, ~index))
    out, lse = fastattn.merge_attention(*a, *b)
    want_out, want_lse = attention_oracle(q, k, v)
    assert out.dtype == dtype and lse.dtype == dtype
    assert_close(out, want_out)
    assert_close(lse, want_lse)


def test_merge_with_masks_in_each_part(backend, rng):
    """Masked parts with some rows empty on one side, the other, or both."""
    q, k, v = heads_qkv(rng, hq=2, lq=6, lk=8)
    keep = rng.random((6, 8)) < 0.5
    keep[0] = False                      # empty in both parts
    keep[1, :4], keep[1, 4:] = False, True  # empty in part a only
    keep[2, :4], keep[2, 4:] = True, False  # empty in part b only
    a = attend(backend, q, k[:, :4], v[:, :4], keep[:, :4])
    b = attend(backend, q, k[:, 4:], v[:, 4:], keep[:, 4:])
    assert np.isneginf(a[1][:, [0, 1]]).all() and np.isneginf(b[1][:, [0, 2]]).all()
    out, lse = fastattn.merge_attention(*a, *b)
    want_out, want_lse = attention_oracle(q, k, v, keep)
    assert_close(out, want_out)
    assert_close(lse, want_lse)
    assert np.all(out[:, 0] == 0) and np.isneginf(lse[:, 0]).all()
    assert not np.isnan(out).any()


def test_neg_inf_rows_on_either_side():
    out_a, out_b = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]), np.array(
        [[5.0, 6.0], [0.0, 0.0], [0.0, 0.0]])
    lse_a = np.array([-np.inf, 0.5, -np.inf])
    lse_b = np.array([0.25, -np.inf, -np.inf])
    out, lse = fastattn.merge_attention(out_a, lse_a, out_b, lse_b)
    np.testing.assert_array_equal(out, [[5.0, 6.0], [3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(lse, [0.25, 0.5, -np.inf])


def test_merge_is_symmetric_and_huge_lse_does_not_overflow():
    out_a, out_b = np.array([[1.0], [2.0]]), np.array([[3.0], [4.0]])
    lse_a, lse_b = np.array([1000.0, -1000.0]), np.array([1000.0 + np.log(3), -1000.0])
    out, lse = fastattn.merge_attention(out_a, lse_a, out_b, lse_b)
    np.testing.assert_allclose(out, [[2.5], [3.0]], rtol=1e-12)
    np.testing.assert_allclose(lse, [1000 + np.log(4), -1000 + np.log(2)], rtol=1e-12)
    swapped = fastattn.merge_attention(out_b, lse_b, out_a, lse_a)
    np.testing.assert_allclose(swapped[0], out, rtol=1e-15)
    np.testing.assert_allclose(swapped[1], lse, rtol=1e-15)


def test_merge_is_associative_over_three_parts(backend, rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=4, lk=12)
    parts = [attend(backend, q, k[..., s, :], v[..., s, :])
             for s in (slice(0, 3), slice(3, 8), slice(8, 12))]
    left = fastattn.merge_attention(*fastattn.merge_attention(*parts[0], *parts[1]), *parts[2])
    right = fastattn.merge_attention(*parts[0], *fastattn.merge_attention(*parts[1], *parts[2]))
    want_out, want_lse = attention_oracle(q, k, v)
    for out, lse in (left, right):
        assert_close(out, want_out)
        assert_close(lse, want_lse)
    np.testing.assert_allclose(left[0], right[0], rtol=1e-13, atol=1e-15)


def test_merge_with_causal_parts(backend, rng):
    """Causal attention over a KV cache split into an old and a new part."""
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=10)
    old = attend(backend, q, k[:, :7], v[:, :7])
    new = attend(backend, q, k[:, 7:], v[:, 7:], causal="upper_left")
    out, lse = fastattn.merge_attention(*old, *new)
    want = attend("naive", q, k, v, causal="lower_right")
    np.testing.assert_allclose(out, want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, want[1], rtol=1e-12)


def test_merge_dtypes(rng):
    out32 = rng.standard_normal((3, 2)).astype(np.float32)
    lse32 = rng.standard_normal(3).astype(np.float32)
    out16 = out32.astype(np.float16)
    out, lse = fastattn.merge_attention(out16, lse32, out16, lse32)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    np.testing.assert_allclose(lse, lse32 + np.log(2), rtol=1e-6)
    out, lse = fastattn.merge_attention(out32, lse32, out32.astype(np.float64), lse32)
    assert out.dtype == np.float64


@pytest.mark.parametrize("shapes, match", [
    (((3, 2), (3,), (4, 2), (4,)), "out_a and out_b"),
    (((3, 2), (3,), (3, 5), (3,)), "out_a and out_b"),
    (((3, 2), (2,), (3, 2), (3,)), r"lse_a \(shape \(2,\)"),
    (((3, 2), (3,), (3, 2), (3, 1)), r"lse_b \(shape \(3, 1\)"),
    (((3, 2), (3, 2), (3, 2), (3, 2)), "lse_a"),
    (((), (), (), ()), "out_a"),
])
def test_bad_shapes_raise_value_error(shapes, match):
    arrays = [np.zeros(shape) for shape in shapes]
    with pytest.raises(ValueError, match=match):
        fastattn.merge_attention(*arrays)


def test_non_float_inputs_raise_type_error():
    with pytest.raises(TypeError, match="out_a"):
        fastattn.merge_attention(np.zeros((2, 2), dtype=int), np.zeros(2),
                                 np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(TypeError, match="lse_b"):
        fastattn.merge_attention(np.zeros((2, 2)), np.zeros(2),
                                 np.zeros((2, 2)), np.zeros(2, dtype=bool))


@pytest.mark.parametrize("position", ["lse_a", "lse_b"])
def test_pos_inf_lse_is_rejected(position):
    out, lse = np.zeros((3, 2)), np.zeros(3)
    bad = np.array([0.0, np.inf, 0.0])
    arrays = dict(out_a=out, lse_a=lse, out_b=out, lse_b=lse)
    arrays[position] = bad
    with pytest.raises(ValueError, match=rf"{position} \(shape \(3,\).*\+inf"):
        fastattn.merge_attention(**arrays)


def test_nan_lse_makes_exactly_its_row_nan():
    out_a, out_b = np.ones((4, 2)), np.full((4, 2), 3.0)
    lse_a = np.array([np.nan, 0.0, np.nan, -np.inf])
    lse_b = np.array([0.0, np.nan, -np.inf, -np.inf])
    out, lse = fastattn.merge_attention(out_a, lse_a, out_b, lse_b)
    assert np.isnan(out[:3]).all() and np.isnan(lse[:3]).all()
    np.testing.assert_array_equal(out[3], [0.0, 0.0])
    assert np.isneginf(lse[3])


def test_a_nan_query_row_stays_nan_through_the_merge(backend, rng):
    """A NaN in a query row gives that row NaN in each part, and the merge keeps it NaN."""
    q, k, v = heads_qkv(rng, hq=2, lq=5, lk=8)
    q[1, 3, 0] = np.nan
    a = attend(backend, q, k[:, :3], v[:, :3])
    b = attend(backend, q, k[:, 3:], v[:, 3:])
    out, lse = fastattn.merge_attention(*a, *b)
    nan_rows = np.zeros((2, 5), dtype=bool)
    nan_rows[1, 3] = True
    np.testing.assert_array_equal(np.isnan(lse), nan_rows)
    np.testing.assert_array_equal(np.isnan(out).all(axis=-1), nan_rows)
    assert not np.isnan(out[~nan_rows]).any()
    want_out, want_lse = attend("naive", q, k, v)
    assert_close(out[~nan_rows], want_out[~nan_rows])
    assert_close(lse[~nan_rows], want_lse[~nan_rows])
