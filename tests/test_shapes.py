"""Shapes and layouts: 2-D inputs, batch broadcasting, GQA, Dv != D, block edges, views."""

import numpy as np
import pytest

import fastattn
from fastattn import _plan
from fastattn._contract import Band
from fastattn._validation import validate
from helpers import attend, check_backend, heads_qkv, random_qkv


def test_2d_inputs_give_2d_output(backend, rng):
    q, k, v = random_qkv(rng, (5, 4), (7, 4), (7, 3))
    out, lse = check_backend(backend, q, k, v)
    assert out.shape == (5, 3) and lse.shape == (5,)


def test_3d_inputs_are_heads(backend, rng):
    q, k, v = random_qkv(rng, (2, 5, 4), (2, 7, 4), (2, 7, 3))
    out, lse = check_backend(backend, q, k, v)
    assert out.shape == (2, 5, 3) and lse.shape == (2, 5)


@pytest.mark.parametrize("q_batch, k_batch, v_batch, out_batch", [
    ((2, 3), (3,), (3,), (2, 3)),
    ((2, 3), (2, 1), (1, 3), (2, 3)),
    ((3,), (2, 3), (2, 3), (2, 3)),
    ((1,), (4,), (4,), (4,)),
    ((), (2,), (2,), (2,)),
    ((2, 1, 2), (3, 1), (3, 2), (2, 3, 2)),
])
def test_batch_axes_broadcast(backend, rng, q_batch, k_batch, v_batch, out_batch):
    q = rng.standard_normal(q_batch + (2, 3, 4))
    k = rng.standard_normal(k_batch + (1, 5, 4))
    v = rng.standard_normal(v_batch + (1, 5, 2))
    out, lse = check_backend(backend, q, k, v)
    assert out.shape == out_batch + (2, 3, 2) and lse.shape == out_batch + (2, 3)


def test_2d_kv_with_batched_q(backend, rng):
    """A 2-D ``(L, D)`` operand is one head of length L and broadcasts over the batch."""
    q = rng.standard_normal((2, 3, 4, 5))
    k, v = rng.standard_normal((6, 5)), rng.standard_normal((6, 2))
    out, _ = check_backend(backend, q, k, v)
    assert out.shape == (2, 3, 4, 2)


@pytest.mark.parametrize("hq, hk", [(8, 2), (8, 1), (6, 3), (4, 4)])
def test_grouped_query_attention_head_mapping(backend, rng, hq, hk):
    """Query head h uses kv head h // (Hq // Hk): same result as repeating k and v."""
    q, k, v = heads_qkv(rng, batch=(2,), hq=hq, hk=hk, lq=4, lk=6)
    out, lse = check_backend(backend, q, k, v)
    group = hq // hk
    repeated = attend(backend, q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1))
    np.testing.assert_allclose(out, repeated[0], rtol=1e-12, atol=1e-12)
    for h in range(hq):
        alone = attend(backend, q[:, h], k[:, h // group], v[:, h // group])
        np.testing.assert_allclose(out[:, h], alone[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d, dv", [(4, 1), (3, 7), (8, 2), (1, 1), (16, 5)])
def test_value_dim_differs_from_key_dim(backend, rng, d, dv):
    q, k, v = heads_qkv(rng, hq=2, lq=3, lk=5, d=d, dv=dv)
    out, _ = check_backend(backend, q, k, v)
    assert out.shape == (2, 3, dv)


@pytest.mark.parametrize("lq, lk", [(1, 1), (1, 9), (9, 1), (3, 11), (11, 3)])
def test_query_and_key_lengths(backend, rng, lq, lk):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lk)
    for causal in (False, "lower_right"):
        check_backend(backend, q, k, v, causal=causal)


def block_edges(block):
    return sorted({1, max(block - 1, 1), block, block + 1})


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("edge", [0, 1, 2, 3])
def test_default_query_block_edges(backend, rng, group, edge):
    """Query lengths 1, block-1, block, block+1 of the planner's default query block.

    The default block holds TARGET_ROWS rows of all the heads of a GQA group together.
    """
    lq = block_edges(max(_plan.TARGET_ROWS // group, 2))[edge]
    q, k, v = heads_qkv(rng, hq=group, hk=1, lq=lq, lk=20, d=4)
    check_backend(backend, q, k, v, causal="lower_right", oracle=lq <= 2)


def planned_block_k(hq, hk, lq):
    """The key block the planner chooses for these heads and queries (long keys)."""
    return _plan.make_plan(1, hk, hq // hk, lq, 10**6, Band(), 1).block_k


@pytest.mark.parametrize("lk", block_edges(planned_block_k(hq=2, hk=1, lq=3)))
def test_default_key_block_edges(backend, rng, lk):
    """Key lengths 1, block-1, block, block+1 of the planner's default key block."""
    q, k, v = heads_qkv(rng, hq=2, hk=1, lq=3, lk=lk, d=4)
    check_backend(backend, q, k, v, oracle=False)
    check_backend(backend, q, k, v, causal="lower_right", window=(40, None), oracle=False)


@pytest.mark.parametrize("block_q, block_k", [(1, 1), (2, 3), (4, 4), (3, 16)])
@pytest.mark.parametrize("causal", [False, True, "lower_right"])
def test_small_blocks_at_edges(backend, rng, block_q, block_k, causal):
    """Lengths 1, block-1, block, block+1 of small configured blocks, vs naive and oracle."""
    q_lengths = block_edges(block_q)
    k_lengths = block_edges(block_k)
    with fastattn.config_context(block_q=block_q, block_k=block_k):
        for lq, lk in zip(q_lengths, k_lengths[::-1]):
            q, k, v = heads_qkv(rng, hq=2, hk=1, lq=lq, lk=lk, d=3)
            check_backend(backend, q, k, v, causal=causal)
        q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=block_q + 1, lk=block_k + 1)
        check_backend(backend, q, k, v, causal=causal, window=(2, 1))


# ---------------------------------------------------------------- layouts and views


def layouts(rng):
    """(name, q, k, v) with non-contiguous layouts; the values are the same for all."""
    base = rng.standard_normal((2, 6, 3, 4))  # (B, L, H, D)
    yield "transposed-BLHD", *(np.swapaxes(base, 1, 2),) * 3
    big = rng.standard_normal((4, 3, 12, 8))
    yield "strided", big[::2, :, ::2, :4], big[1::2, :, 1::2, 2:6], big[::2, :, ::2, ::2]
    yield "negative-strides", big[::-2, ::-1, ::-2], big[::-2, ::-1, ::-1][:, :, :6], \
        big[::-2, ::-1, 1::2, ::-1]
    fortran = np.asfortranarray(rng.standard_normal((2, 3, 6, 4)))
    yield "fortran", fortran, fortran, fortran
    yield "last-axis-strided", big[:2, :, :6, ::2], big[2:, :, 6:, ::2], big[:2, :, 6:, 1::2]
    yield "zero-stride-heads", *(np.broadcast_to(rng.standard_normal((2, 1, 6, 4)),
                                                 (2, 3, 6, 4)),) * 3


@pytest.mark.parametrize("name", [case[0] for case in layouts(np.random.default_rng(0))])
def test_views_give_same_result_as_contiguous_copies(backend, name):
    _, q, k, v = next(c for c in layouts(np.random.default_rng(7)) if c[0] == name)
    assert not all(x.flags.c_contiguous for x in (q, k, v))
    copies = [np.ascontiguousarray(x) for x in (q, k, v)]
    for causal in (False, True):
        got = check_backend(backend, q, k, v, causal=causal)
        want = attend(backend, *copies, causal=causal)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_non_contiguous_mask(backend, rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=2, lq=5, lk=6)
    mask = (rng.random((2, 2, 10, 6)) < 0.7)[:, ::-1, ::2]
    bias = np.swapaxes(rng.standard_normal((2, 2, 6, 5)), -1, -2)
    for m in (mask, bias):
        got = check_backend(backend, q, k, v, m)
        want = attend(backend, q, k, v, np.ascontiguousarray(m))
        np.testing.assert_array_equal(got[0], want[0])


def test_array_likes(backend):
    q = [[1.0, 0.0], [0.0, 1.0]]
    k = ((1.0, 2.0), (3.0, 4.0), (0.5, 0.5))
    v = [[1.0], [2.0], [3.0]]
    out, _ = check_backend(backend, q, k, v)
    assert out.shape == (2, 1)


def test_inputs_are_not_modified(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=5, lk=6)
    mask = rng.standard_normal((5, 6))
    saved = [x.copy() for x in (q, k, v, mask)]
    attend(backend, q, k, v, mask, causal=True)
    for before, after in zip(saved, (q, k, v, mask)):
        np.testing.assert_array_equal(before, after)


def test_read_only_inputs(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=5, lk=6)
    for x in (q, k, v):
        x.flags.writeable = False
    check_backend(backend, q, k, v)


# ---------------------------------------------------------------- no copies


def test_transposed_blhd_is_not_copied(rng):
    """A (B, L, H, D) array viewed as (B, H, L, D) reaches the kernels without a copy."""
    base = rng.standard_normal((2, 6, 4, 8))
    q = k = v = np.swapaxes(base, 1, 2)
    problem = validate(q, k, v)
    for array in (problem.q, problem.k, problem.v):
        assert np.shares_memory(array, base)


def test_gqa_and_batch_broadcast_do_not_copy_kv(rng):
    q = rng.standard_normal((3, 8, 4, 8))
    k = rng.standard_normal((2, 6, 8))
    v = rng.standard_normal((2, 6, 5))
    problem = validate(q, k, v)
    assert np.shares_memory(problem.k, k) and np.shares_memory(problem.v, v)
    assert problem.k.shape[-3] == 2  # heads are mapped, not repeated


def structured_field(rng, shape, width, dtype="f8"):
    """A float field of a packed record array: strides are not multiples of the itemsize."""
    records = np.zeros(shape, dtype=[("x", dtype, (width,)), ("pad", "i1")])
    records["x"] = rng.standard_normal(shape + (width,))
    return records["x"]


def test_unaligned_and_odd_stride_inputs(backend, rng):
    q = structured_field(rng, (2, 5), 4)
    k = structured_field(rng, (2, 6), 4)
    v = structured_field(rng, (2, 6), 3)
    assert not q.flags.aligned and q.strides[1] % q.itemsize
    keep = np.zeros((5, 6), dtype=[("m", "?"), ("z", "f8")])["m"]
    keep[:] = rng.random((5, 6)) < 0.6
    bias = structured_field(rng, (5,), 6)
    for mask in (None, keep, bias):
        got = check_backend(backend, q, k, v, mask)
        copies = [None if x is None else np.ascontiguousarray(x) for x in (q, k, v, mask)]
        want = attend(backend, *copies)
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("dtype", [">f8", ">f4", "<f8"])
def test_non_native_byte_order(backend, rng, dtype):
    q, k, v = (x.astype(dtype) for x in heads_qkv(rng, hq=2, lq=4, lk=5))
    out, lse = check_backend(backend, q, k, v)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")


@pytest.mark.parametrize("q_shape, k_shape, v_shape", [
    ((0, 2, 3, 4), (0, 2, 5, 4), (0, 2, 5, 3)),   # empty batch
    ((2, 0, 4), (2, 5, 4), (2, 5, 3)),            # no queries
    ((2, 3, 4), (2, 5, 4), (2, 5, 0)),            # no value features
])
def test_empty_dimensions(backend, rng, q_shape, k_shape, v_shape):
    q, k, v = random_qkv(rng, q_shape, k_shape, v_shape)
    out, lse = check_backend(backend, q, k, v)
    assert out.shape == q_shape[:-1] + v_shape[-1:] and lse.shape == q_shape[:-1]


def sparse_rows(n_rows, width, row_gap, rng, dtype=np.float32):
    """``(1, 1, n_rows, width)`` rows ``row_gap`` elements apart in one huge zeroed buffer.

    The buffer is virtual (calloc'd pages are only backed once written), so offsets
    beyond 2**31 elements cost a few pages of memory, not gigabytes.
    """
    itemsize = np.dtype(dtype).itemsize
    buffer = np.zeros((n_rows - 1) * row_gap + width, dtype=dtype)
    rows = np.lib.stride_tricks.as_strided(
        buffer, shape=(1, 1, n_rows, width), strides=(0, 0, row_gap * itemsize, itemsize))
    rows[...] = rng.standard_normal(rows.shape)
    return rows


def test_offsets_beyond_two_to_the_31_elements(compiled_backend, rng):
    """64-bit indexing: key rows, value rows and mask rows more than 2**31 elements apart."""
    gap = 2**31 + 64
    k, v = sparse_rows(2, 8, gap, rng), sparse_rows(2, 8, gap, rng)
    q = rng.standard_normal((1, 1, 2, 8)).astype(np.float32)
    check_backend(compiled_backend, q, k, v, oracle=False)
    mask = sparse_rows(2, 2, gap, rng)[0, 0]  # (Lq, Lk) additive, rows 2**31 apart
    check_backend(compiled_backend, q, k, v, mask, oracle=False)
