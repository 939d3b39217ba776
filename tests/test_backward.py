"""attention_backward: every backend against the float64 naive gradient, torch autograd and
finite differences, over masks, alignments, GQA, broadcasting, dtypes, layouts and blocks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastattn
from fastattn._backward import auto_backward_choice, backward_runners
from fastattn._backward_plan import make_backward_plan
from fastattn._contract import Band
from fastattn._validation import validate
from oracle import visible

BACKWARD_BACKENDS = [name for name, (runner, _) in backward_runners().items()
                     if runner is not None]
TILED = [name for name in BACKWARD_BACKENDS if name != "naive"]

GRAD_TOLERANCE = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 5e-5,
                  np.dtype(np.float16): 5e-3}
"""Gradient error allowed, relative to the largest reference entry (and to each entry)."""


@pytest.fixture(params=BACKWARD_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=TILED or [pytest.param(None, marks=pytest.mark.skip("no tiled backward"))])
def tiled(request):
    return request.param


def assert_grads_close(actual, expected, dtype=np.float64):
    tol = GRAD_TOLERANCE[np.dtype(dtype)]
    for a, e in zip(actual, expected):
        e = np.asarray(e, dtype=np.float64)
        assert a.shape == e.shape
        size = max(1.0, float(np.abs(e).max(initial=0.0)))
        np.testing.assert_allclose(a.astype(np.float64), e, rtol=tol, atol=tol * size)


def forward_backward(backend, q, k, v, mask=None, dout=None, seed=0, **options):
    """``(dout, grads)``: the backend's forward, a random upstream gradient, its backward."""
    out, lse = fastattn.attention(q, k, v, mask, return_lse=True, backend=backend, **options)
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, mask, backend=backend,
                                        **options)
    return dout, grads


def naive_grads(q, k, v, mask, dout, **options):
    """The naive backend's gradient of the float64 problem (the definition of correct)."""
    q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
    return forward_backward("naive", q64, k64, v64, mask, np.asarray(dout, np.float64),
                            **options)[1]


def keep_mask(q, k, mask=None, causal=False, window=None):
    """The bool "may attend" mask of the call, from the oracle's rules, shaped for torch."""
    lq, lk = q.shape[-2], k.shape[-2]
    keep = np.array([[visible(i, j, lq, lk, causal, window) for j in range(lk)]
                     for i in range(lq)], dtype=bool)
    if mask is not None and np.asarray(mask).dtype == bool:
        keep = keep & mask
    elif mask is not None:
        keep = keep & ~np.isneginf(mask)
    return keep


def torch_grads(q, k, v, dout, mask=None, causal=False, window=None, scale=None):
    """Gradients by torch autograd through SDPA's math path, in float64."""
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    arrays = [np.array(x, np.float64) for x in (q, k, v)]  # copies: torch refuses negative strides
    squeeze = all(x.ndim == 2 for x in arrays)
    leaves = [torch.tensor(x, requires_grad=True) for x in arrays]
    tensors = [t[None] if t.ndim == 2 else t for t in leaves]
    batch = np.broadcast_shapes(*(t.shape[:-3] for t in tensors))
    tensors = [t.expand(batch + tuple(t.shape[-3:])) for t in tensors]
    keep = keep_mask(q, k, mask, causal, window)
    if mask is not None and np.asarray(mask).dtype != bool:
        keep = np.where(keep, np.where(np.isneginf(mask), 0.0, mask), -np.inf)
    hq, hk = tensors[0].shape[-3], tensors[1].shape[-3]
    with sdpa_kernel(SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(
            *tensors, attn_mask=torch.tensor(keep), scale=scale, enable_gqa=hq != hk)
    grad = torch.tensor(np.asarray(dout, np.float64))
    out.backward(grad[None] if squeeze else grad)
    return [t.grad.numpy() for t in leaves]


def live_rows(q, k, mask=None, causal=False, window=None):
    """Bool array over ``dq`` without its last axis: the query rows that see some key."""
    keep = keep_mask(q, k, mask, causal, window)
    return np.broadcast_to(keep.any(axis=-1), np.shape(q)[:-1])


def check_everything(backend, q, k, v, mask=None, **options):
    """The backend's gradient against naive and torch; no NaN; zero dq on rows with no key."""
    dout, grads = forward_backward(backend, q, k, v, mask, **options)
    for grad, x in zip(grads, (q, k, v)):
        assert grad.shape == x.shape and grad.dtype == x.dtype
        assert np.isfinite(grad).all()
    assert_grads_close(grads, naive_grads(q, k, v, mask, dout, **options))
    alive = live_rows(q, k, mask, options.get("causal", False), options.get("window"))
    assert (grads[0][~alive] == 0).all()
    want = torch_grads(q, k, v, dout, mask, **options)
    assert_grads_close([grads[0][alive]], [want[0][alive]])
    assert_grads_close(grads[1:], want[1:])
    return grads


def qkv(rng, q_shape, k_shape, v_shape, dtype=np.float64):
    return tuple(rng.standard_normal(s).astype(dtype) for s in (q_shape, k_shape, v_shape))


# --------------------------------------------------------------------------- shapes, GQA, batch

SHAPES = {
    "2-D": ((5, 4), (7, 4), (7, 3)),
    "4-D, Dv != D": ((2, 3, 6, 8), (2, 3, 9, 8), (2, 3, 9, 5)),
    "GQA": ((2, 6, 5, 4), (2, 2, 7, 4), (2, 2, 7, 3)),
    "MQA": ((1, 4, 6, 4), (1, 1, 9, 4), (1, 1, 9, 4)),
    "k, v broadcast over batch": ((2, 3, 2, 5, 4), (3, 2, 7, 4), (1, 1, 2, 7, 4)),
    "q broadcast over batch": ((1, 2, 5, 4), (3, 2, 7, 4), (3, 2, 7, 4)),
}


@pytest.mark.parametrize("shapes", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("causal", [False, "upper_left", "lower_right"])
def test_shapes_and_alignments(backend, rng, shapes, causal):
    check_everything(backend, *qkv(rng, *shapes), causal=causal)


@pytest.mark.parametrize("lq, lk", [(3, 9), (9, 3), (6, 6)])
@pytest.mark.parametrize("causal", ["upper_left", "lower_right"])
@pytest.mark.parametrize("window", [None, (2, 1), (None, 0), (3, None)])
def test_causal_and_windows(backend, rng, lq, lk, causal, window):
    q, k, v = qkv(rng, (2, 2, lq, 4), (2, 1, lk, 4), (2, 1, lk, 3))
    check_everything(backend, q, k, v, causal=causal, window=window)


def test_bool_mask_with_fully_masked_rows(backend, rng):
    q, k, v = qkv(rng, (2, 2, 6, 4), (2, 2, 8, 4), (2, 2, 8, 5))
    mask = rng.random((2, 2, 6, 8)) < 0.5
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    grads = check_everything(backend, q, k, v, mask)
    assert (grads[0][0, 1, 2] == 0).all() and (grads[0][1, :, 4] == 0).all()


@pytest.mark.parametrize("causal", [False, "lower_right"])
def test_additive_mask_with_minus_inf(backend, rng, causal):
    q, k, v = qkv(rng, (2, 2, 6, 4), (2, 2, 8, 4), (2, 2, 8, 4))
    mask = rng.standard_normal((2, 1, 6, 8))
    mask[rng.random(mask.shape) < 0.3] = -np.inf
    mask[1, 0, 3] = -np.inf  # a fully masked row in both heads
    check_everything(backend, q, k, v, mask, causal=causal)


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_custom_scale(backend, rng, scale):
    check_everything(backend, *qkv(rng, (1, 2, 5, 4), (1, 2, 6, 4), (1, 2, 6, 4)), scale=scale,
                     causal="lower_right")


def test_mask_and_window_with_gqa(backend, rng):
    q, k, v = qkv(rng, (2, 4, 7, 4), (2, 2, 9, 4), (2, 2, 9, 3))
    mask = rng.random((7, 9)) < 0.7
    check_everything(backend, q, k, v, mask, causal="lower_right", window=(3, None))


# --------------------------------------------------------------------------- dtypes and layouts

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes(backend, rng, dtype):
    q, k, v = qkv(rng, (2, 4, 37, 16), (2, 2, 45, 16), (2, 2, 45, 8), dtype)
    mask = rng.random((37, 45)) < 0.8
    dout, grads = forward_backward(backend, q, k, v, mask, causal="lower_right")
    for grad, x in zip(grads, (q, k, v)):
        assert grad.dtype == dtype and np.isfinite(grad).all()
    assert_grads_close(grads, naive_grads(q, k, v, mask, dout, causal="lower_right"), dtype)


def test_gradients_take_each_inputs_dtype(backend, rng):
    q, k, v = qkv(rng, (3, 5, 4), (3, 6, 4), (3, 6, 4))
    q = q.astype(np.float16)
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    dq, dk, dv = fastattn.attention_backward(out, q, k, v, out, lse, backend=backend)
    assert (dq.dtype, dk.dtype, dv.dtype) == (np.float16, np.float64, np.float64)


def test_transposed_and_negative_stride_views(backend, rng):
    q = rng.standard_normal((2, 9, 3, 8)).transpose(0, 2, 1, 3)  # (B, L, H, D) -> (B, H, L, D)
    k = rng.standard_normal((2, 11, 3, 8)).transpose(0, 2, 1, 3)[:, :, ::-1]
    v = rng.standard_normal((2, 3, 6, 11)).transpose(0, 1, 3, 2)  # last axis not contiguous
    mask = (rng.random((9, 11)) < 0.7).T.copy().T
    dout, grads = forward_backward(backend, q, k, v, mask, causal=True)
    copies = [np.ascontiguousarray(x) for x in (q, k, v)]
    _, want = forward_backward(backend, *copies, mask, dout, causal=True)
    assert_grads_close(grads, want)
    assert_grads_close(grads, torch_grads(q, k, v, dout, mask, causal=True))


# --------------------------------------------------------------------------- blocks

BLOCK_Q, BLOCK_K = 4, 8


@pytest.mark.parametrize("lq", [1, BLOCK_Q - 1, BLOCK_Q, BLOCK_Q + 1, 2 * BLOCK_Q + 1])
@pytest.mark.parametrize("lk", [1, BLOCK_K - 1, BLOCK_K, BLOCK_K + 1, 3 * BLOCK_K + 1])
def test_sizes_at_block_edges(tiled, rng, lq, lk):
    q, k, v = qkv(rng, (1, 4, lq, 4), (1, 2, lk, 4), (1, 2, lk, 3))
    mask = rng.random((lq, lk)) < 0.8
    for options in ({}, {"causal": "lower_right", "window": (5, 1)}):
        with fastattn.config_context(block_q=BLOCK_Q, block_k=BLOCK_K):
            dout, grads = forward_backward(tiled, q, k, v, mask, **options)
        assert_grads_close(grads, naive_grads(q, k, v, mask, dout, **options))


@pytest.mark.parametrize("blocks", [(1, 1), (3, 5), (16, 64)])
def test_block_sizes_do_not_change_the_result(tiled, rng, blocks):
    q, k, v = qkv(rng, (2, 2, 40, 8), (2, 1, 70, 8), (2, 1, 70, 8), np.float32)
    with fastattn.config_context(block_q=blocks[0], block_k=blocks[1]):
        dout, grads = forward_backward(tiled, q, k, v, causal=True)
    assert_grads_close(grads, naive_grads(q, k, v, None, dout, causal=True), np.float32)


# --------------------------------------------------------------------------- threads

def test_split_plan_for_one_head_group():
    plan = make_backward_plan(1, 1, 2, 300, 2100, Band(), n_threads=2)
    assert plan.n_parts == len(plan.tasks) == 2100 // 512 and plan.n_workers == 2
    assert make_backward_plan(16, 1, 2, 300, 2100, Band(), n_threads=2).n_parts == 0


@pytest.mark.parametrize("shape", [(1, 1, 2100), (2, 3, 2100), (4, 4, 200)],
                         ids=["B*H=1, split keys", "B*H=6, split", "B*H=16, whole heads"])
def test_thread_count_does_not_change_a_bit(tiled, rng, shape):
    batch, kv_heads, lk = shape
    q, k, v = qkv(rng, (batch, 2 * kv_heads, 150, 8), (batch, kv_heads, lk, 8),
                  (batch, kv_heads, lk, 8), np.float32)
    results = []
    for threads in (1, 2, 3):
        with fastattn.config_context(num_threads=threads):
            results.append(forward_backward(tiled, q, k, v, causal="lower_right")[1])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- finite differences

FD_CASES = {
    "plain": ((2, 3, 2), (2, 4, 2), (2, 4, 3), None, {}),
    "gqa causal": ((2, 3, 2), (1, 4, 2), (1, 4, 2), None, {"causal": "lower_right"}),
    "window, scale": ((1, 4, 2), (1, 4, 2), (1, 4, 2), None, {"window": (1, 1), "scale": 0.7}),
    "bool mask": ((1, 3, 2), (1, 4, 2), (1, 4, 2), np.array([[1, 0, 1, 1], [0, 0, 0, 0],
                                                             [1, 1, 0, 1]], bool), {}),
    "additive mask": ((1, 3, 2), (1, 4, 2), (1, 4, 2), np.array([[0.3, -np.inf, 1.0, 0.0]]), {}),
}


@pytest.mark.parametrize("case", FD_CASES.values(), ids=FD_CASES.keys())
def test_finite_differences(backend, case):
    """Central differences of ``sum(dout * attention(...))``, one input entry at a time."""
    q_shape, k_shape, v_shape, mask, options = case
    rng = np.random.default_rng(7)
    q, k, v = qkv(rng, q_shape, k_shape, v_shape)
    dout, grads = forward_backward(backend, q, k, v, mask, **options)

    def loss(*inputs):
        return np.sum(dout * fastattn.attention(*inputs, mask, backend="naive", **options))

    step = 1e-6
    for which, grad in enumerate(grads):
        numeric = np.empty_like(grad)
        for index in np.ndindex(grad.shape):
            plus, minus = [list((q, k, v)) for _ in range(2)]
            plus[which], minus[which] = plus[which].copy(), minus[which].copy()
            plus[which][index] += step
            minus[which][index] -= step
            numeric[index] = (loss(*plus) - loss(*minus)) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- properties

@st.composite
def problems(draw):
    kv_heads = draw(st.integers(1, 2))
    heads = kv_heads * draw(st.integers(1, 3))
    lq, lk, d, dv = (draw(st.integers(1, n)) for n in (13, 17, 5, 5))
    batch = draw(st.sampled_from([(), (2,)]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q, k, v = qkv(rng, batch + (heads, lq, d), batch + (kv_heads, lk, d),
                  batch + (kv_heads, lk, dv))
    mask = draw(st.sampled_from([None, "bool", "add"]))
    if mask == "bool":
        mask = rng.random((heads, lq, lk)) < 0.7
    elif mask == "add":
        mask = np.where(rng.random((lq, lk)) < 0.2, -np.inf, rng.standard_normal((lq, lk)))
    causal = draw(st.sampled_from([False, "upper_left", "lower_right"]))
    window = draw(st.sampled_from([None, (0, 0), (2, None), (None, 3), (4, 1)]))
    blocks = draw(st.sampled_from([(None, None), (1, 1), (2, 3), (5, 4)]))
    return q, k, v, mask, dict(causal=causal, window=window), blocks


@settings(max_examples=40, deadline=None, derandomize=True)
@given(problem=problems())
def test_property_tiled_matches_naive(problem):
    q, k, v, mask, options, (block_q, block_k) = problem
    for name in TILED:
        with fastattn.config_context(block_q=block_q, block_k=block_k):
            dout, grads = forward_backward(name, q, k, v, mask, **options)
        assert all(np.isfinite(g).all() for g in grads)
        assert_grads_close(grads, naive_grads(q, k, v, mask, dout, **options))


# --------------------------------------------------------------------------- masks and non-finite

def test_huge_logits_stay_finite(backend, rng):
    q, k, v = qkv(rng, (2, 8, 4), (2, 9, 4), (2, 9, 4))
    dout, grads = forward_backward(backend, 300 * q, 300 * k, v, causal=True)
    assert all(np.isfinite(g).all() for g in grads)
    assert_grads_close(grads, naive_grads(300 * q, 300 * k, v, None, dout, causal=True))


def test_every_row_masked(backend, rng):
    q, k, v = qkv(rng, (2, 5, 4), (2, 6, 4), (2, 6, 3))
    _, grads = forward_backward(backend, q, k, v, np.zeros((5, 6), bool))
    assert all((g == 0).all() for g in grads)


def test_masked_keys_may_hold_nan(backend, rng):
    """A key no visible query sees contributes nothing, even when it (or its value) is NaN;
    nor does an empty row's NaN upstream gradient."""
    q, k, v = qkv(rng, (2, 6, 4), (2, 9, 4), (2, 9, 3))
    mask = np.ones((6, 9), bool)
    mask[:, 7:] = False  # padding keys: garbage
    mask[3] = False  # an empty row
    k[:, 7:], v[:, 8] = np.nan, np.nan
    out, lse = fastattn.attention(q, k, v, mask, return_lse=True, backend=backend)
    dout = rng.standard_normal(out.shape)
    dout[:, 3] = np.nan
    dq, dk, dv = fastattn.attention_backward(dout, q, k, v, out, lse, mask, backend=backend)
    clean = [x.copy() for x in (q, k, v)]
    clean[1][:, 7:], clean[2][:, 8] = 0.0, 0.0
    clean_dout = np.where(np.isnan(dout), 0.0, dout)
    want = naive_grads(*clean, mask, clean_dout)
    assert_grads_close((dq, dk, dv), want)


def test_nan_query_row_stays_in_its_own_keys(backend, rng):
    """A NaN query row (NaN output and lse) makes NaN only what it touches."""
    q, k, v = qkv(rng, (1, 5, 4), (1, 6, 4), (1, 6, 3))
    q[0, 1, 0] = np.nan
    mask = np.ones((5, 6), bool)
    mask[1, 3:] = False  # row 1 sees keys 0..2 only
    _, (dq, dk, dv) = forward_backward(backend, q, k, v, mask)
    assert np.isnan(dq[0, 1]).all() and np.isfinite(np.delete(dq, 1, axis=1)).all()
    assert np.isfinite(dk[0, 3:]).all() and np.isfinite(dv[0, 3:]).all()
    assert np.isnan(dv[0, :3]).all()


# --------------------------------------------------------------------------- empty problems

@pytest.mark.parametrize("shapes", [((0, 4), (3, 4), (3, 2)), ((4, 4), (0, 4), (0, 2)),
                                    ((0, 2, 3, 4), (0, 2, 5, 4), (0, 2, 5, 4)),
                                    ((2, 0, 3, 4), (2, 1, 5, 4), (2, 1, 5, 4))])
def test_empty_problems(backend, shapes):
    q, k, v = (np.ones(s) for s in shapes)
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend="naive")
    dq, dk, dv = fastattn.attention_backward(out, q, k, v, out, lse, backend=backend)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert not dk.any() and not dv.any()


# --------------------------------------------------------------------------- bad input

@pytest.fixture
def call(rng):
    q, k, v = qkv(rng, (2, 3, 4), (2, 5, 4), (2, 5, 6))
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    return dict(dout=np.ones_like(out), q=q, k=k, v=v, out=out, lse=lse)


@pytest.mark.parametrize("name, value, error, words", [
    ("dout", np.ones((2, 3, 5)), ValueError, ["dout (shape (2, 3, 5)", "(2, 3, 6)"]),
    ("out", np.ones((3, 6)), ValueError, ["out (shape (3, 6)", "(2, 3, 6)"]),
    ("lse", np.ones((2, 3, 1)), ValueError, ["lse (shape (2, 3, 1)", "(2, 3)"]),
    ("dout", np.ones((2, 3, 6), int), TypeError, ["dout", "int64", "float"]),
    ("lse", np.ones((2, 3), complex), TypeError, ["lse", "complex128"]),
    ("q", np.ones((2, 3, 5)), ValueError, ["q (shape (2, 3, 5)", "k (shape (2, 5, 4)"]),
    ("causal", "left", ValueError, ["causal"]),
])
def test_bad_input_names_the_argument(call, name, value, error, words):
    call[name] = value
    with pytest.raises(error) as info:
        fastattn.attention_backward(**call)
    for word in words:
        assert word in str(info.value)


def test_lower_precision_gradient_is_refused(call):
    q, k, v = (call[n].astype(np.float32) for n in "qkv")
    with pytest.raises(TypeError, match=r"dout \(shape \(2, 3, 6\), dtype float64\).*float32"):
        fastattn.attention_backward(call["dout"], q, k, v, call["out"].astype(np.float32),
                                    call["lse"].astype(np.float32))


def test_unknown_backend(call):
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        fastattn.attention_backward(**call, backend="fast")


# --------------------------------------------------------------------------- auto and docs

def test_auto_prefers_cython_then_naive_for_small_and_numba_above(rng):
    small = validate(*qkv(rng, (4, 8), (4, 8), (4, 8)))
    large = validate(*qkv(rng, (2, 300, 8), (2, 300, 8), (2, 300, 8)))
    has_cython = "cython" in BACKWARD_BACKENDS
    assert auto_backward_choice(small) == ("cython" if has_cython else "naive")
    assert auto_backward_choice(large) == (TILED[-1] if TILED else "naive")


def test_api_reference_lists_attention_backward():
    from pathlib import Path

    api = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    assert "fastattn.attention_backward(dout, q, k, v, out, lse" in api


def test_broadcast_dout_with_zero_strides(backend, rng):
    """The upstream gradient of ``out.sum()`` is a broadcast array of ones (all strides 0)."""
    q, k, v = (rng.standard_normal((1, 2, 33, 8)) for _ in range(3))
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True)
    dout = np.broadcast_to(np.ones(1), out.shape)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, causal=True, backend=backend)
    expected = fastattn.attention_backward(np.ones(out.shape), q, k, v, out, lse, causal=True,
                                           backend="naive")
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
