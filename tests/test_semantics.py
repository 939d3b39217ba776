"""What attention computes: the worked example, masks, causal modes, windows, empty rows."""

import numpy as np
import pytest

import fastattn
from helpers import attend, check_backend, heads_qkv
from oracle import attention_oracle, scores_oracle, visible

# Masked rows and huge logits must not make NaN or inf, even transiently.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

# A worked example: one query, three keys (scores 0.84, 1.68, 0.42; checked by hand).
SEED_Q = np.array([[0.3, 0.6]])
SEED_K = np.array([[0.8, 1.0], [1.6, 2.0], [0.4, 0.5]])
SEED_V = np.array([[1.2, 1.4], [2.4, 2.8], [0.6, 0.7]])


def test_seed_example_scores_are_design_numbers():
    np.testing.assert_allclose(scores_oracle(SEED_Q, SEED_K, 1.0)[0], [0.84, 1.68, 0.42],
                               rtol=1e-12)


def test_seed_example(backend):
    """Scores 0.84, 1.68, 0.42 -> weights 0.2814, 0.5096, 0.2091 -> output (1.6861, 1.9671).

    The weights are the softmax of the scores scaled by the default 1/sqrt(D), D = 2.
    """
    out, lse = attend(backend, SEED_Q, SEED_K, SEED_V)
    assert out.shape == (1, 2)
    np.testing.assert_array_equal(out.round(4), [[1.6861, 1.9671]])
    scaled_scores = np.array([0.84, 1.68, 0.42]) / np.sqrt(2.0)
    weights = np.exp(scaled_scores - lse[0])
    np.testing.assert_array_equal(weights.round(4), [0.2814, 0.5096, 0.2091])
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hq, hk", [(1, 1), (4, 4), (4, 2), (4, 1)])
def test_matches_naive_and_oracle(backend, rng, dtype, hq, hk):
    q, k, v = heads_qkv(rng, batch=(2,), hq=hq, hk=hk, lq=6, lk=9, d=5, dv=3, dtype=dtype)
    check_backend(backend, q, k, v)


# ---------------------------------------------------------------- masks


def bool_mask(rng, shape, p=0.6):
    return rng.random(shape) < p


@pytest.mark.parametrize("mask_shape", [(9,), (1, 9), (6, 9), (2, 1, 1, 9), (2, 4, 6, 9),
                                        (4, 1, 9)])
def test_bool_mask_broadcasts(backend, rng, mask_shape):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=6, lk=9)
    check_backend(backend, q, k, v, bool_mask(rng, mask_shape))


def test_bool_mask_true_means_attend(backend, rng):
    """Keys whose mask is False do not change the result; True keys do."""
    q, k, v = heads_qkv(rng, hq=1, lq=3, lk=6)
    keep = np.array([True, False, True, True, False, True])
    out = attend(backend, q, k, v, keep)[0]
    only_kept = attend(backend, q, k[:, keep], v[:, keep])[0]
    np.testing.assert_allclose(out, only_kept, rtol=1e-12, atol=1e-12)
    v_changed = v.copy()
    v_changed[:, ~keep] = 1e6
    np.testing.assert_allclose(attend(backend, q, k, v_changed, keep)[0], out,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mask_shape", [(9,), (6, 9), (2, 1, 1, 9), (2, 4, 6, 9)])
def test_additive_mask_with_neg_inf(backend, rng, mask_shape):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=6, lk=9)
    mask = np.where(bool_mask(rng, mask_shape), 0.0, -np.inf)
    check_backend(backend, q, k, v, mask)


def test_additive_mask_equals_bool_mask(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=6, lk=9)
    keep = bool_mask(rng, (6, 9))
    keep[:, 0] = True
    with_bool = attend(backend, q, k, v, keep)
    with_float = attend(backend, q, k, v, np.where(keep, 0.0, -np.inf))
    for a, b in zip(with_bool, with_float):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def alibi_bias(heads, lq, lk):
    slopes = 2.0 ** -np.arange(1, heads + 1)
    distance = np.arange(lk)[None, :] - np.arange(lq)[:, None]
    return slopes[:, None, None] * -np.abs(distance)


def test_alibi_bias(backend, rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=6, lk=9)
    check_backend(backend, q, k, v, alibi_bias(4, 6, 9))
    check_backend(backend, q, k, v, alibi_bias(4, 6, 9), causal=True)


def test_additive_mask_is_added_after_scaling(backend, rng):
    """softmax(scale * q kᵀ + mask): a bias constant along a row only shifts the lse."""
    q, k, v = heads_qkv(rng, hq=1, lq=3, lk=5)
    base = attend(backend, q, k, v, scale=0.5)
    row_bias = np.array([[5.0], [-3.0], [100.0]])
    shifted = attend(backend, q, k, v, np.broadcast_to(row_bias, (3, 5)), scale=0.5)
    np.testing.assert_allclose(shifted[0], base[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(shifted[1], base[1] + row_bias[:, 0], rtol=1e-10)
    key_bias = np.array([0.0, 1.0, 0.0, -2.0, 0.5])
    check_backend(backend, q, k, v, key_bias, scale=0.5)


def test_float16_and_float32_masks(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=4, lk=6)
    bias = rng.standard_normal((4, 6))
    for dtype in (np.float16, np.float32):
        small = bias.astype(dtype)
        out, lse = attend(backend, q, k, v, small)
        want_out, want_lse = attention_oracle(q, k, v, small.astype(np.float64))
        np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(lse, want_lse, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- causal and window


@pytest.mark.parametrize("lq, lk", [(5, 5), (3, 8), (8, 3), (1, 6), (6, 1)])
@pytest.mark.parametrize("causal", [True, "upper_left", "lower_right"])
def test_causal(backend, rng, lq, lk, causal):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, hk=1, lq=lq, lk=lk)
    check_backend(backend, q, k, v, causal=causal)


def test_causal_true_is_upper_left(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=4, lk=7)
    for a, b in zip(attend(backend, q, k, v, causal=True),
                    attend(backend, q, k, v, causal="upper_left")):
        np.testing.assert_array_equal(a, b)
    keep = np.tril(np.ones((4, 7), dtype=bool))
    for a, b in zip(attend(backend, q, k, v, causal=True), attend(backend, q, k, v, keep)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_causal_false_and_numpy_bools(backend, rng):
    q, k, v = heads_qkv(rng, hq=1, lq=4, lk=4)
    plain = attend(backend, q, k, v)
    np.testing.assert_array_equal(attend(backend, q, k, v, causal=False)[0], plain[0])
    np.testing.assert_array_equal(attend(backend, q, k, v, causal=np.False_)[0], plain[0])
    np.testing.assert_array_equal(attend(backend, q, k, v, causal=np.True_)[0],
                                  attend(backend, q, k, v, causal=True)[0])


def test_lower_right_decode_sees_every_key(backend, rng):
    """KV-cache decoding: a single query (the newest token) attends every cached key."""
    q, k, v = heads_qkv(rng, hq=4, hk=1, lq=1, lk=11)
    full = attend(backend, q, k, v)
    decode = attend(backend, q, k, v, causal="lower_right")
    for a, b in zip(decode, full):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # upper_left, by contrast, lets the single query see key 0 only
    first = attend(backend, q, k, v, causal="upper_left")[0]
    np.testing.assert_allclose(first, np.broadcast_to(v[:, :1], first.shape), rtol=1e-12)


def test_lower_right_equals_suffix_of_longer_upper_left(backend, rng):
    """lower_right queries are the last Lq rows of a square causal problem."""
    q, k, v = heads_qkv(rng, hq=2, lq=7, lk=7)
    square = attend(backend, q, k, v, causal=True)
    suffix = attend(backend, q[:, 4:], k, v, causal="lower_right")
    np.testing.assert_allclose(suffix[0], square[0][:, 4:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(suffix[1], square[1][:, 4:], rtol=1e-12, atol=1e-12)


WINDOWS = [(0, 0), (2, 0), (0, 2), (1, 3), (2, None), (None, 1), (None, None), (100, 100)]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("causal", [False, "upper_left", "lower_right"])
@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 9), (9, 4)])
def test_window(backend, rng, window, causal, lq, lk):
    q, k, v = heads_qkv(rng, hq=2, hk=1, lq=lq, lk=lk)
    check_backend(backend, q, k, v, causal=causal, window=window)


def test_window_alignment_is_documented_one(backend, rng):
    """window=(left, right) keeps keys diagonal-left .. diagonal+right (explicit bool mask)."""
    q, k, v = heads_qkv(rng, hq=1, lq=5, lk=8)
    for causal in (False, "lower_right"):
        keep = np.array([[visible(i, j, 5, 8, causal, (1, 2)) for j in range(8)]
                         for i in range(5)])
        assert keep.any(axis=1).all()
        got = attend(backend, q, k, v, causal=causal, window=(1, 2))
        want = attend("naive", q, k, v, keep)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)


def test_window_with_bool_mask(backend, rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=7, lk=7)
    check_backend(backend, q, k, v, bool_mask(rng, (2, 1, 7, 7)), causal=True, window=(3, 0))


def test_window_none_sides_is_no_window(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=4, lk=6)
    for causal in (False, True):
        a = attend(backend, q, k, v, causal=causal)
        b = attend(backend, q, k, v, causal=causal, window=(None, None))
        np.testing.assert_array_equal(a[0], b[0])


# ---------------------------------------------------------------- fully masked rows


def fully_masked_cases():
    """(name, q_len, k_len, options, rows that must be empty) -- rows are query indices."""
    lq, lk = 6, 5
    keep = np.ones((lq, lk), dtype=bool)
    keep[[1, 4]] = False
    additive = np.where(keep, 0.0, -np.inf)
    return [
        ("bool", lq, lk, dict(mask=keep), [1, 4]),
        ("additive", lq, lk, dict(mask=additive), [1, 4]),
        ("all-bool", lq, lk, dict(mask=np.zeros(lk, dtype=bool)), list(range(lq))),
        ("all-additive", lq, lk, dict(mask=np.full(lk, -np.inf)), list(range(lq))),
        ("lower-right-longer-q", 8, 5, dict(causal="lower_right"), [0, 1, 2]),
        ("window-off-the-end", 6, 4, dict(window=(0, 0)), [4, 5]),
        ("window-before-start", 6, 4, dict(causal="lower_right", window=(1, None)), [0, 1]),
        ("window-and-mask", 4, 4, dict(window=(0, 0), mask=~np.eye(4, dtype=bool)[2]), [2]),
        ("causal-plus-mask", 4, 4, dict(causal=True, mask=np.array([0, 1, 1, 1]) > 0), [0]),
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("name, lq, lk, options, empty",
                         fully_masked_cases(), ids=[c[0] for c in fully_masked_cases()])
def test_fully_masked_rows_are_zero_with_neg_inf_lse(backend, rng, dtype, name, lq, lk,
                                                      options, empty):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, hk=1, lq=lq, lk=lk, dtype=dtype)
    options = dict(options)
    mask = options.pop("mask", None)
    out, lse = check_backend(backend, q, k, v, mask, **options)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert np.all(out[..., empty, :] == 0)
    assert np.all(np.isneginf(lse[..., empty]))
    others = [i for i in range(lq) if i not in empty]
    assert np.all(np.isfinite(lse[..., others]))


def test_empty_key_set_is_zero_rows(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=0, d=4, dv=5)
    out, lse = attend(backend, q, k, v)
    assert out.shape == (2, 3, 5) and lse.shape == (2, 3)
    assert np.all(out == 0) and np.all(np.isneginf(lse))


def test_masked_keys_with_huge_values_do_not_leak(backend, rng):
    """A masked key contributes exactly nothing, even when its value or score is huge."""
    q, k, v = heads_qkv(rng, hq=1, lq=4, lk=6)
    k[:, 2] = 1e3
    v[:, 2] = 1e300
    keep = np.ones(6, dtype=bool)
    keep[2] = False
    out, lse = check_backend(backend, q, k, v, keep)
    assert np.all(np.abs(out) < 100)


# ---------------------------------------------------------------- return_lse and out=


@pytest.mark.parametrize("scale", [None, 0.3, 2.0, -1.0, 0.0])
def test_lse_is_log_sum_exp_of_scores(backend, rng, scale):
    q, k, v = heads_qkv(rng, hq=1, lq=4, lk=6, d=3)
    out, lse = attend(backend, q[0], k[0], v[0], scale=scale)
    used = 1 / np.sqrt(3) if scale is None else scale
    scores = scores_oracle(q[0], k[0], used)
    want = np.log(np.exp(scores).sum(axis=1))
    np.testing.assert_allclose(lse, want, rtol=1e-10, atol=1e-12)
    # exact probabilities of any block can be recomputed from lse
    probabilities = np.exp(scores - lse[:, None])
    np.testing.assert_allclose(probabilities @ v[0], out, rtol=1e-10, atol=1e-12)


def test_return_lse_false_gives_only_out(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=4)
    out = fastattn.attention(q, k, v, backend=backend)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, attend(backend, q, k, v)[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_out_is_written_in_place(backend, rng, dtype):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=3, lk=4, dv=5, dtype=dtype)
    buffer = np.full((2, 2, 3, 5), np.nan, dtype=dtype)
    result = fastattn.attention(q, k, v, backend=backend, out=buffer)
    assert result is buffer
    np.testing.assert_array_equal(buffer, fastattn.attention(q, k, v, backend=backend))
    result, lse = fastattn.attention(q, k, v, backend=backend, out=buffer, return_lse=True)
    assert result is buffer and lse.shape == (2, 2, 3)


def test_out_may_be_a_strided_view(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=4)
    big = np.zeros((3, 2, 6, 4))
    view = big[1, :, ::2]
    assert fastattn.attention(q, k, v, backend=backend, out=view) is view
    np.testing.assert_array_equal(big[1, :, ::2], fastattn.attention(q, k, v, backend=backend))
    assert np.all(big[0] == 0) and np.all(big[1, :, 1::2] == 0)


def test_out_for_2d_inputs(backend, rng):
    q, k, v = (rng.standard_normal((4, 3)) for _ in range(3))
    buffer = np.empty((4, 3))
    assert fastattn.attention(q, k, v, backend=backend, out=buffer) is buffer
    np.testing.assert_allclose(buffer, attention_oracle(q, k, v)[0], rtol=1e-10)


# ---------------------------------------------------------------- backend selection


@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_backend_gives_a_correct_result(rng, name):
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=4)
    out = fastattn.attention(q, k, v, backend=name)
    np.testing.assert_allclose(out, attention_oracle(q, k, v)[0], rtol=1e-10, atol=1e-12)


# Non-finite inputs are not masks (issue 9's red-team findings), in every backend alike.

def test_nan_query_row_is_nan_and_only_that_row(backend, rng):
    q, k, v = heads_qkv(rng, (1,), 2, 2, 40, 50, 16)
    q[0, 1, 7, 3] = np.nan
    out, lse = fastattn.attention(q, k, v, backend=backend, return_lse=True)
    nan_rows = np.isnan(lse)
    assert nan_rows.sum() == 1 and nan_rows[0, 1, 7]
    assert np.isnan(out[0, 1, 7]).all() and not np.isnan(np.delete(out[0, 1], 7, 0)).any()


def test_nan_key_reaches_exactly_the_rows_that_see_it(backend, rng):
    q, k, v = heads_qkv(rng, (1,), 1, 1, 30, 30, 8)
    k[0, 0, 12, 0] = np.nan
    out, lse = fastattn.attention(q, k, v, causal=True, backend=backend, return_lse=True)
    assert np.isnan(lse[0, 0]).tolist() == [i >= 12 for i in range(30)]


def test_masked_nan_values_contribute_nothing(backend, rng):
    """An uninitialised KV-cache tail (NaN values) behind a padding mask."""
    q, k, v = heads_qkv(rng, (2,), 2, 2, 20, 64, 16)
    v[:, :, 40:] = np.nan
    k[:, :, 40:] = np.nan
    padding = np.arange(64) < 40
    for mask in (padding, np.where(padding, 0.0, -np.inf)):
        out = fastattn.attention(q, k, v, mask, backend=backend)
        expected = fastattn.attention(q, k[:, :, :40], v[:, :, :40], backend="naive")
        assert not np.isnan(out).any()
        np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5)


def test_overflowing_scores_are_not_empty_rows(backend):
    x = np.array([[1e20, 0.0]], np.float32)  # the float32 score overflows to +inf
    out, lse = fastattn.attention(x, x, x, backend=backend, return_lse=True)
    assert not np.isneginf(lse).any() and not np.all(out == 0)
