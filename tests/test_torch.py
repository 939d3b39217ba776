"""Agreement with torch.nn.functional.scaled_dot_product_attention (float64)."""

import numpy as np
import pytest

from helpers import assert_close, heads_qkv

torch = pytest.importorskip("torch")

import fastattn  # noqa: E402


def sdpa(q, k, v, mask=None, **options):
    tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v)]
    if mask is not None:
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    with torch.no_grad():
        result = torch.nn.functional.scaled_dot_product_attention(*tensors, attn_mask=mask,
                                                                  **options)
    return result.numpy()


def ours(backend, q, k, v, mask=None, **options):
    return fastattn.attention(q, k, v, mask, backend=backend, **options)


@pytest.fixture
def inputs(rng):
    return heads_qkv(rng, batch=(2,), hq=4, lq=6, lk=9, d=8, dv=5)


def test_no_mask(backend, inputs):
    assert_close(ours(backend, *inputs), sdpa(*inputs))


@pytest.mark.parametrize("scale", [0.1, 1.0, 2.5])
def test_scale(backend, inputs, scale):
    assert_close(ours(backend, *inputs, scale=scale), sdpa(*inputs, scale=scale))


@pytest.mark.parametrize("shape", [(6, 9), (2, 1, 1, 9), (2, 4, 6, 9)])
def test_bool_mask_same_polarity(backend, rng, inputs, shape):
    mask = rng.random(shape) < 0.6
    mask[..., 0] = True  # torch gives NaN for fully masked rows; keep every row alive
    assert_close(ours(backend, *inputs, mask), sdpa(*inputs, mask))


@pytest.mark.parametrize("kind", ["bias", "padding"])
def test_additive_mask(backend, rng, inputs, kind):
    if kind == "bias":
        mask = rng.standard_normal((2, 4, 6, 9))
    else:
        mask = np.where(np.arange(9) < 6, 0.0, -np.inf)[None, None, None, :]
    assert_close(ours(backend, *inputs, mask), sdpa(*inputs, mask))


@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 9), (9, 9)])
def test_is_causal_is_upper_left(backend, rng, lq, lk):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lk, d=8)
    want = sdpa(q, k, v, is_causal=True)
    assert_close(ours(backend, q, k, v, causal=True), want)
    assert_close(ours(backend, q, k, v, causal="upper_left"), want)


def test_lower_right_matches_explicit_torch_mask(backend, rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=4, lk=9, d=8)
    keep = np.tril(np.ones((4, 9), dtype=bool), k=9 - 4)
    assert_close(ours(backend, q, k, v, causal="lower_right"), sdpa(q, k, v, keep))


@pytest.mark.parametrize("hq, hk", [(8, 2), (8, 1), (4, 4)])
def test_grouped_query_attention(backend, rng, hq, hk):
    q, k, v = heads_qkv(rng, batch=(2,), hq=hq, hk=hk, lq=5, lk=7, d=8)
    want = sdpa(q, k, v, enable_gqa=True)
    assert_close(ours(backend, q, k, v), want)
    want = sdpa(q, k, v, is_causal=True, enable_gqa=True)
    assert_close(ours(backend, q, k, v, causal=True), want)


def test_float32(backend, rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=7, lk=7, d=16, dtype=np.float32)
    out = ours(backend, q, k, v, causal=True)
    assert out.dtype == np.float32
    assert_close(out, sdpa(q, k, v, is_causal=True))
