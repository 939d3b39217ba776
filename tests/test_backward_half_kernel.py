"""The Cython backward kernel on half-precision inputs, called directly at the contract.

Each test builds a :class:`BackwardCall` by hand with ``q``, ``k``, ``v``, ``dout`` in
float16 or bfloat16 and everything else in float32 (the compute dtype), and checks the
gradients twice, at every instruction-set level this machine runs: against the naive
float64 gradient of the same values, and against the float32 kernel on the exactly
upcast inputs -- the kernel converts each block's rows to float32 exactly and then runs
the float32 tiles, so the two must agree bit for bit.
"""

import dataclasses

import numpy as np
import pytest

from fastattn import _isa
from fastattn._backward import sum_partial_dq
from fastattn._backward_plan import make_backward_plan
from fastattn._contract import MASK_ADD, Band, BackwardCall
from fastattn._naive import naive_attention, naive_backward
from fastattn._validation import validate

kernel = pytest.importorskip("fastattn._cython._backward")
ml_dtypes = pytest.importorskip("ml_dtypes")

HALF = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
TOLERANCE = 2e-4
"""Error allowed against the float64 gradient of the same half values, relative to the
largest reference entry: float32 arithmetic and a float32 lse."""


@pytest.fixture(params=HALF, ids=lambda dtype: dtype.name)
def half(request):
    return request.param


def random_inputs(rng, dtype, b=1, hq=4, hk=2, lq=37, lk=53, d=16, dv=8):
    """q, k, v, dout of ``dtype`` (values drawn in float32, then rounded)."""
    shapes = [(b, hq, lq, d), (b, hk, lk, d), (b, hk, lk, dv), (b, hq, lq, dv)]
    return [rng.standard_normal(shape, dtype=np.float32).astype(dtype) for shape in shapes]


def upcast_problem(q, k, v, mask, band):
    """The float64 problem of the upcast inputs, with ``band``."""
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    problem = dataclasses.replace(validate(q64, k64, v64, mask), band=band)
    return problem


def reference(problem, dout):
    """``(lse, delta)`` in float32 and the float64 gradients of ``problem``."""
    dout = dout.astype(np.float64)
    out, lse = naive_attention(problem)
    with np.errstate(invalid="ignore"):
        delta = np.einsum("...d,...d->...", dout, out)
    return lse.astype(np.float32), delta.astype(np.float32), naive_backward(problem, dout)


def kernel_grads(problem, q, k, v, dout, lse, delta, n_threads=2, block_q=8, block_k=16):
    """dq, dk, dv of one direct kernel call on q, k, v, dout (any dtype) at ``problem``'s
    mask, band and scale; the partial dq slots summed as the driver sums them."""
    plan = make_backward_plan(q.shape[0], k.shape[1], problem.group, q.shape[2], k.shape[2],
                              problem.band, n_threads, block_q, block_k)
    mask = problem.mask
    if problem.mask_kind == MASK_ADD:
        mask = mask.astype(np.float32)  # exact: the test's additive masks are float32 values
    call = BackwardCall(q=q, k=k, v=v, dout=dout, lse=lse, delta=delta, mask=mask,
                        mask_kind=problem.mask_kind, scale=problem.scale, plan=plan,
                        dq=np.zeros(q.shape, np.float32),
                        dk=np.full(k.shape, np.nan, np.float32),  # every row is written
                        dv=np.full(v.shape, np.nan, np.float32),
                        part_dq=np.zeros((plan.n_parts, plan.group) + q.shape[2:], np.float32))
    kernel.run_backward_kernel(call)
    sum_partial_dq(plan, call.part_dq, call.dq)
    return call.dq, call.dk, call.dv


def check(q, k, v, dout, mask=None, band=Band(), **blocks):
    """The half kernel's gradients at every level: equal to the float32 kernel's on the
    upcast inputs, close to the float64 reference; returns the last level's."""
    problem = upcast_problem(q, k, v, mask, band)
    lse, delta, expected = reference(problem, dout)
    upcast = [np.asarray(x, np.float32) for x in (q, k, v, dout)]
    for level in _isa.supported_levels():
        with _isa.use_level(level):
            grads = kernel_grads(problem, q, k, v, dout, lse, delta, **blocks)
            single = kernel_grads(problem, *upcast, lse, delta, **blocks)
        for got, same, want in zip(grads, single, expected):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, same, err_msg=level)
            size = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE * size,
                                       err_msg=level)
    return grads


@pytest.mark.parametrize("d, dv", [(16, 8), (12, 20)], ids=["whole vectors", "padded"])
def test_grouped_query_heads(rng, half, d, dv):
    """GQA (two query heads per kv head), Dv != D, D a whole number of vectors or not."""
    check(*random_inputs(rng, half, d=d, dv=dv))


@pytest.mark.parametrize("band", [Band(hi=0), Band(-5, 3), Band(lo=-9, hi=0)],
                         ids=["causal", "window", "causal window"])
def test_bands(rng, half, band):
    check(*random_inputs(rng, half), band=band)


def test_bool_mask_with_empty_rows(rng, half):
    q, k, v, dout = random_inputs(rng, half)
    keep = rng.random((1, 4, 37, 53)) < 0.6
    keep[0, 1, 5] = False  # a row that sees no key: zero dq, nothing to dk, dv
    dq, _, _ = check(q, k, v, dout, keep, Band(hi=10))
    assert not dq[0, 1, 5].any()


def test_additive_mask(rng, half):
    q, k, v, dout = random_inputs(rng, half)
    add = rng.standard_normal((1, 1, 37, 53), dtype=np.float32)
    add[..., ::3] = -np.inf
    check(q, k, v, dout, add.astype(np.float64))  # float32 values, broadcast over heads


def test_strided_rows(rng, half):
    """Rows read through (batch, length, heads, dim) views, as torch lays them out."""
    q, k, v, dout = (np.ascontiguousarray(x.transpose(0, 2, 1, 3))
                     for x in random_inputs(rng, half, b=2))
    check(*(x.transpose(0, 2, 1, 3) for x in (q, k, v, dout)), band=Band(hi=0))


def test_nan_value_under_a_masked_key(rng, half):
    """A masked key's NaN value (an uninitialised cache tail) reaches no gradient."""
    q, k, v, dout = random_inputs(rng, half)
    v[:, :, 40:] = np.nan
    k[:, 1, 45] = np.inf
    keep = np.ones((1, 4, 37, 53), bool)
    keep[..., 40:] = False
    with np.errstate(invalid="ignore"):  # the reference's full matrices meet the NaN
        dq, dk, dv = check(q, k, v, dout, keep)
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    assert not dv[:, :, 40:].any() and not dk[:, :, 40:].any()


def test_nan_query_reaches_its_own_gradients_only(rng, half):
    q, k, v, dout = random_inputs(rng, half, hq=2, hk=2)
    q[0, 0, 4] = np.nan
    dq, dk, dv = check(q, k, v, dout, band=Band(hi=0))
    nan_rows = np.isnan(dq).any(axis=-1)
    assert nan_rows[0, 0].tolist() == [i == 4 for i in range(37)]
    assert not nan_rows[0, 1].any()
    assert np.isnan(dk[0, 0, :5]).all() and np.isfinite(dk[0, 0, 5:]).all()


@pytest.mark.parametrize("n_threads", [1, 3])
def test_thread_count_gives_the_same_bits(rng, half, n_threads):
    """Key chunks with partial dq slots (one head group, 2100 keys): 1-3 workers agree."""
    q, k, v, dout = random_inputs(rng, half, hq=2, hk=1, lq=24, lk=2100, d=8, dv=8)
    band = Band.from_alignment(24, 2100, causal="lower_right")
    problem = upcast_problem(q, k, v, None, band)
    lse, delta, _ = reference(problem, dout)
    plan = make_backward_plan(1, 1, 2, 24, 2100, problem.band, 2, 8, 64)
    assert plan.n_parts > 1
    two = kernel_grads(problem, q, k, v, dout, lse, delta, 2, 8, 64)
    other = kernel_grads(problem, q, k, v, dout, lse, delta, n_threads, 8, 64)
    for got, want in zip(other, two):
        np.testing.assert_array_equal(got, want)


def test_wrong_dtypes_are_named(rng, half):
    q, k, v, dout = random_inputs(rng, half)
    problem = upcast_problem(q, k, v, None, Band())
    lse, delta, _ = reference(problem, dout)
    with pytest.raises(ValueError, match="BackwardCall.k must be a 4-D"):
        kernel_grads(problem, q, k.astype(np.float32), v, dout, lse, delta)
    with pytest.raises(ValueError, match="BackwardCall.lse must be in the compute dtype "
                                         "float32"):
        kernel_grads(problem, q, k, v, dout, lse.astype(half), delta)
    with pytest.raises(TypeError, match="reads float32, float64, float16 or bfloat16"):
        kernel_grads(problem, *(x.astype(np.int16) for x in (q, k, v, dout)), lse, delta)
