"""Half precision: float16 and ml_dtypes.bfloat16 in every backend, forward and backward.

The reference is the float64 naive computation on the same half inputs.  The accuracy
rule: fastattn's largest error is at most twice that of torch's own half-precision
``scaled_dot_product_attention`` (forward, and autograd for the gradients) on the same
inputs, plus one unit in the last place where torch happens to be exact.  Also: the dtype
rules (mixed inputs, ``out=``, float32 lse), empty and NaN rows, no float32 copies of the
inputs, the Numba kernels' bit conversions, and fastattn.torch on half tensors.
"""

import sys
import tracemalloc

import numpy as np
import pytest

import fastattn
from fastattn._backward import backward_runners, row_dots
from fastattn._contract import Band
from helpers import BACKENDS, COMPILED_BACKENDS

ml_dtypes = pytest.importorskip("ml_dtypes")
torch = pytest.importorskip("torch")

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALVES = [pytest.param(F16, id="float16"), pytest.param(BF16, id="bfloat16")]
TORCH_DTYPE = {F16: torch.float16, BF16: torch.bfloat16}
BACKWARD_BACKENDS = [name for name, (runner, _) in backward_runners().items() if runner]

CASES = {
    "plain": ((2, 4, 37, 16), (2, 4, 45, 16), (2, 4, 45, 16), {}, None),
    "gqa, Dv != D, lower_right": ((1, 8, 19, 32), (1, 2, 70, 32), (1, 2, 70, 24),
                                  dict(causal="lower_right"), None),
    "decode, split-KV": ((1, 8, 1, 32), (1, 2, 2500, 32), (1, 2, 2500, 32),
                         dict(causal="lower_right"), None),
    "upper_left window": ((1, 2, 40, 16), (1, 2, 40, 16), (1, 2, 40, 16),
                          dict(causal=True, window=(5, 3)), None),
    "bool mask": ((2, 2, 23, 8), (2, 2, 29, 8), (2, 2, 29, 8), {}, "bool"),
    "additive mask": ((1, 4, 17, 8), (1, 4, 33, 8), (1, 4, 33, 8), dict(scale=0.5), "additive"),
}
BACKWARD_CASES = ["plain", "gqa, Dv != D, lower_right", "decode, split-KV", "bool mask",
                  "additive mask"]


# --------------------------------------------------------------------------- references

def make_case(name, dtype, seed=0):
    """``(q, k, v, mask, options)`` of a case, q/k/v in ``dtype``."""
    q_shape, k_shape, v_shape, options, mask_kind = CASES[name]
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape in (q_shape, k_shape, v_shape))
    lq, lk = q_shape[-2], k_shape[-2]
    mask = None
    if mask_kind == "bool":
        mask = rng.random((lq, lk)) < 0.7
    elif mask_kind == "additive":  # values exact in float16 and bfloat16
        mask = rng.choice(np.float32([0.0, 0.25, -1.5, -np.inf]), size=(1, 1, lq, lk))
    return q, k, v, mask, options


def reference(q, k, v, mask, **options):
    """The float64 naive ``(out, lse)`` of the same (half) values."""
    return fastattn.attention(*(x.astype(np.float64) for x in (q, k, v)), mask,
                              backend="naive", return_lse=True, **options)


def reference_grads(q, k, v, mask, dout, **options):
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    out, lse = reference(q, k, v, mask, **options)
    return fastattn.attention_backward(dout.astype(np.float64), q64, k64, v64, out, lse, mask,
                                       backend="naive", **options)


def torch_mask(q, k, mask, dtype, causal=False, window=None, scale=None):
    """The mask of the call in torch's terms: bool (True = attend) or additive in ``dtype``."""
    lq, lk = q.shape[-2], k.shape[-2]
    causal = {True: "upper_left", False: None}.get(causal, causal)
    keep = Band.from_alignment(lq, lk, causal, window).visible(np.arange(lq), np.arange(lk))
    if mask is None or mask.dtype == bool:
        return torch.from_numpy(keep if mask is None else keep & mask)
    return torch.from_numpy(np.where(keep, mask, -np.inf)).to(TORCH_DTYPE[dtype])


def torch_leaves(dtype, *arrays):
    return [torch.from_numpy(x.astype(np.float32)).to(TORCH_DTYPE[dtype]).requires_grad_()
            for x in arrays]


def torch_forward(q, k, v, mask, dtype, **options):
    """torch's half-precision SDPA: ``(out as float64 array, leaves, out tensor)``."""
    leaves = torch_leaves(dtype, q, k, v)
    out = torch.nn.functional.scaled_dot_product_attention(
        *leaves, attn_mask=torch_mask(q, k, mask, dtype, **options),
        scale=options.get("scale"), enable_gqa=True)
    return out.detach().double().numpy(), leaves, out


def error(actual, expected):
    """The largest absolute error over the entries where the reference is finite."""
    finite = np.isfinite(expected)
    return float(np.abs(np.asarray(actual, np.float64)[finite] - expected[finite]).max(initial=0))


def assert_within_torch(actual, torch_result, expected, dtype):
    """``error(actual) <= 2 * error(torch) + 1 ulp of the largest reference entry``."""
    ulp = float(ml_dtypes.finfo(dtype).eps) * max(1.0, float(np.nanmax(np.abs(expected))))
    ours, theirs = error(actual, expected), error(torch_result, expected)
    assert ours <= 2 * theirs + ulp, f"fastattn's error {ours:.3g}, torch's {theirs:.3g}"


def assert_lse_close(lse, expected):
    assert lse.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(lse[finite], expected[finite], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- forward

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_within_twice_torchs_error(backend, dtype, case):
    q, k, v, mask, options = make_case(case, dtype)
    out, lse = fastattn.attention(q, k, v, mask, backend=backend, return_lse=True, **options)
    assert out.dtype == dtype and lse.dtype == np.float32
    expected, expected_lse = reference(q, k, v, mask, **options)
    theirs = torch_forward(q, k, v, mask, dtype, **options)[0]
    assert_within_torch(out, theirs, expected, dtype)
    assert_lse_close(lse, expected_lse)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_without_keys_are_zeros_with_lse_minus_inf(backend, dtype):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape in
               ((2, 12, 8), (2, 7, 8), (2, 7, 8)))
    mask = rng.random((12, 7)) < 0.8
    mask[:, 0] = True  # every row from 5 on sees key 0 ...
    mask[9] = False  # ... but row 9; rows 0-4 see no key of the lower-right band
    out, lse = fastattn.attention(q, k, v, mask, causal="lower_right", backend=backend,
                                  return_lse=True)
    empty = np.zeros(12, bool)
    empty[[0, 1, 2, 3, 4, 9]] = True
    assert np.all(out[:, empty].view(np.uint16) == 0)  # +0.0, exactly
    assert np.all(np.isneginf(lse[:, empty])) and np.all(np.isfinite(lse[:, ~empty]))
    expected, expected_lse = reference(q, k, v, mask, causal="lower_right")
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=0,
                               atol=float(ml_dtypes.finfo(dtype).eps) * 4)
    assert_lse_close(lse, expected_lse)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_rows_stay_their_own(backend, dtype):
    """A NaN query makes its row NaN; a NaN value behind the mask changes nothing."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape in
               ((3, 9, 8), (3, 11, 8), (3, 11, 8)))
    q[1, 4, 2] = np.nan
    v[2, 10, 0] = np.nan
    mask = np.ones((9, 11), bool)
    mask[:, 10] = False
    out, lse = fastattn.attention(q, k, v, mask, backend=backend, return_lse=True)
    expected, expected_lse = reference(q, k, v, mask)
    nan_rows = np.zeros((3, 9), bool)
    nan_rows[1, 4] = True
    assert np.all(np.isnan(out.astype(np.float32)[nan_rows])) and np.all(np.isnan(lse[nan_rows]))
    assert not np.isnan(out.astype(np.float32)[~nan_rows]).any()
    np.testing.assert_allclose(out.astype(np.float64)[~nan_rows], expected[~nan_rows], rtol=0,
                               atol=float(ml_dtypes.finfo(dtype).eps) * 4)
    assert_lse_close(lse[~nan_rows], expected_lse[~nan_rows])


@pytest.mark.parametrize("dtype", HALVES)
def test_numba_half_is_its_float32_path_rounded_once(dtype):
    """The Numba kernel converts the inputs exactly and rounds the float32 result once."""
    if "numba" not in BACKENDS:
        pytest.skip("the Numba backend is not available")
    q, k, v, mask, options = make_case("gqa, Dv != D, lower_right", dtype)
    out, lse = fastattn.attention(q, k, v, backend="numba", return_lse=True, **options)
    out32, lse32 = fastattn.attention(*(x.astype(np.float32) for x in (q, k, v)),
                                      backend="numba", return_lse=True, **options)
    np.testing.assert_array_equal(lse, lse32)
    np.testing.assert_array_equal(out.view(np.uint16), out32.astype(dtype).view(np.uint16))


# --------------------------------------------------------------------------- dtype rules

@pytest.mark.parametrize("dtypes, result", [
    ((BF16, BF16, BF16), BF16),
    ((F16, F16, F16), F16),
    ((BF16, np.float32, BF16), np.float32),
    ((np.float64, BF16, BF16), np.float64),
    ((F16, F16, np.float32), np.float32),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_follow_result_type(backend, dtypes, result):
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape, dtype in
               zip(((2, 5, 8), (2, 6, 8), (2, 6, 4)), dtypes))
    out, lse = fastattn.attention(q, k, v, backend=backend, return_lse=True)
    compute = np.float64 if result == np.float64 else np.float32
    assert out.dtype == result and lse.dtype == compute
    expected, expected_lse = reference(q, k, v, None)
    eps = float(ml_dtypes.finfo(result).eps) if result in (F16, BF16) else 1e-6
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=eps, atol=eps)
    assert_lse_close(lse.astype(np.float32), expected_lse)


def test_bfloat16_with_float16_is_a_type_error_naming_both():
    q = np.ones((3, 4), F16)
    k = np.ones((5, 4), BF16)
    for call in (lambda: fastattn.attention(q, k, np.ones((5, 4))),
                 lambda: fastattn.attention_backward(np.ones((3, 4)), q, k, np.ones((5, 4)),
                                                     np.ones((3, 4)), np.zeros(3))):
        with pytest.raises(TypeError, match=r"k is bfloat16 and q is float16.*cast"):
            call()
    with pytest.raises(TypeError, match=r"out_a is bfloat16 and out_b is float16"):
        fastattn.merge_attention(np.ones((3, 4), BF16), np.zeros(3, np.float32),
                                 np.ones((3, 4), F16), np.zeros(3, np.float32))


def test_other_ml_dtypes_are_refused():
    q = np.ones((3, 4), ml_dtypes.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"q \(shape \(3, 4\), dtype float8_e4m3fn\).*bfloat16"):
        fastattn.attention(q, q, q)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_in_half_is_written_in_place(backend, dtype):
    q, k, v, mask, options = make_case("gqa, Dv != D, lower_right", dtype)
    expected = fastattn.attention(q, k, v, backend=backend, **options)
    holder = np.full((1, 19, 8, 48), 7.0, dtype)  # (B, L, H, 2 Dv): heads last, every other
    out = holder.transpose(0, 2, 1, 3)[..., ::2]  # column: strided in every axis
    result = fastattn.attention(q, k, v, backend=backend, out=out, **options)
    assert result is out
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))
    assert np.all(holder[..., 1::2] == 7.0)  # the columns in between are untouched
    with pytest.raises(ValueError, match="dtype"):
        fastattn.attention(q, k, v, backend=backend, out=np.empty(out.shape, np.float32),
                           **options)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_kernels_read_half_inputs_without_float32_copies(backend, dtype):
    """A float32 copy of k alone would take 2 MB; the whole call stays below a quarter of it."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 8, 4, 64)).astype(dtype)
    k, v = (rng.standard_normal((1, 8, 8192, 64)).astype(dtype) for _ in range(2))
    fastattn.attention(q, k[..., :64, :], v[..., :64, :], backend=backend)  # compile first
    tracemalloc.start()
    try:
        fastattn.attention(q, k, v, backend=backend)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < k.size * 4 / 4, f"peak {peak} bytes"


# --------------------------------------------------------------------------- backward

@pytest.mark.parametrize("case", BACKWARD_CASES)
@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
def test_gradients_within_twice_torchs_error(backend, dtype, case):
    q, k, v, mask, options = make_case(case, dtype)
    out, lse = fastattn.attention(q, k, v, mask, backend=backend, return_lse=True, **options)
    dout = np.random.default_rng(5).standard_normal(out.shape).astype(dtype)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, mask, backend=backend,
                                        **options)
    expected = reference_grads(q, k, v, mask, dout, **options)
    _, leaves, torch_out = torch_forward(q, k, v, mask, dtype, **options)
    torch_out.backward(torch.from_numpy(dout.astype(np.float32)).to(TORCH_DTYPE[dtype]))
    for grad, leaf, want in zip(grads, leaves, expected):
        assert grad.dtype == dtype and grad.shape == want.shape
        assert_within_torch(grad, leaf.grad.double().numpy(), want, dtype)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("backend", BACKWARD_BACKENDS)
def test_gradients_of_rows_without_keys_are_zero(backend, dtype):
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal(shape).astype(dtype) for shape in
               ((2, 10, 8), (2, 6, 8), (2, 6, 8)))
    mask = np.ones((10, 6), bool)
    mask[7] = False
    out, lse = fastattn.attention(q, k, v, mask, causal="lower_right", backend=backend,
                                  return_lse=True)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dq, dk, dv = fastattn.attention_backward(dout, q, k, v, out, lse, mask,
                                             causal="lower_right", backend=backend)
    assert np.all(dq[:, [0, 1, 2, 3, 7]].astype(np.float32) == 0)
    assert all(np.isfinite(g.astype(np.float32)).all() for g in (dq, dk, dv))
    expected = reference_grads(q, k, v, mask, dout, causal="lower_right")
    for grad, want in zip((dq, dk, dv), expected):
        np.testing.assert_allclose(grad.astype(np.float64), want, rtol=0,
                                   atol=float(ml_dtypes.finfo(dtype).eps) * 8)


def test_backward_refuses_a_dout_that_would_round():
    q = np.ones((3, 4), F16)
    out, lse = fastattn.attention(q, q, q, return_lse=True, backend="naive")
    for dout, spelling in ((np.ones((3, 4), np.float32), "np.float16"),
                           (np.ones((3, 4), BF16), "np.float16")):
        with pytest.raises(TypeError, match=rf"dout .*attention's output is float16.*"
                                            rf"dout.astype\({spelling}\)"):
            fastattn.attention_backward(dout, q, q, q, out, lse, backend="naive")
    b = q.astype(BF16)
    with pytest.raises(TypeError, match=r"dout.astype\(ml_dtypes.bfloat16\)"):
        fastattn.attention_backward(np.ones((3, 4), np.float32), b, b, b, out, lse)
    grads = fastattn.attention_backward(out, q.astype(np.float32), q, q, out, lse,
                                        backend="naive")  # float16 dout, float32 result: exact
    assert [g.dtype for g in grads] == [np.float32, F16, F16]


@pytest.mark.parametrize("dtype", HALVES)
def test_delta_is_computed_without_a_float32_copy(dtype):
    a, b = (np.random.default_rng(7).standard_normal((2, 4096, 256)).astype(dtype)
            for _ in range(2))
    tracemalloc.start()
    try:
        delta = row_dots(a, b, np.dtype(np.float32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert delta.dtype == np.float32
    assert peak < a.size * 4 / 8, f"peak {peak} bytes"  # a float32 copy of a: 8 MB
    want = np.sum(a.astype(np.float64) * b.astype(np.float64), axis=-1)
    np.testing.assert_allclose(delta, want, rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------------- weights, merge

@pytest.mark.parametrize("dtype", HALVES)
def test_attention_weights_of_half_inputs_are_float32(dtype):
    q, k, v, mask, options = make_case("bool mask", dtype)
    weights = fastattn.attention_weights(q, k, mask, rows=slice(3, 9))
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    expected = fastattn.attention_weights(q64, k64, mask, rows=slice(3, 9))
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", HALVES)
def test_merge_attention_of_half_parts(dtype):
    q, k, v, _, _ = make_case("plain", dtype)
    parts = [fastattn.attention(q, k[..., s, :], v[..., s, :], return_lse=True, backend="naive")
             for s in (slice(0, 20), slice(20, None))]
    out, lse = fastattn.merge_attention(*parts[0], *parts[1])
    assert out.dtype == dtype and lse.dtype == np.float32
    expected, expected_lse = reference(q, k, v, None)
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=0,
                               atol=2 * float(ml_dtypes.finfo(dtype).eps) * np.abs(expected).max())
    assert_lse_close(lse, expected_lse)


# --------------------------------------------------------------------------- conversions

def test_numba_conversions_are_bit_exact_with_numpy_and_ml_dtypes():
    pytest.importorskip("numba")
    from numba import njit

    from fastattn._numba.halves import as_kernel_array, load, store

    @njit
    def widen(bits, out):
        for i in range(bits.size):
            out[i] = load(bits[i])

    @njit
    def narrow(values, out):
        for i in range(values.size):
            store(out, i, values[i])

    every = np.arange(1 << 16, dtype=np.uint16)
    rng = np.random.default_rng(8)
    words = np.concatenate([rng.integers(0, 1 << 32, 200_000, dtype=np.uint64),
                            np.arange(0, 1 << 32, 65537, dtype=np.uint64)]).astype(np.uint32)
    values = np.concatenate([words.view(np.float32), np.float32(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 2 ** -24, 2 ** -25,
         3 * 2 ** -26, 3.4e38, -3.3961e38])])
    for dtype in (F16, BF16):
        widened = np.empty(every.size, np.float32)
        widen(as_kernel_array(every.view(dtype)), widened)
        np.testing.assert_array_equal(widened.view(np.uint32),
                                      every.view(dtype).astype(np.float32).view(np.uint32))
        narrowed = as_kernel_array(np.empty(values.size, dtype))
        narrow(values, narrowed)
        with np.errstate(invalid="ignore", over="ignore"):
            want = values.astype(dtype)
        np.testing.assert_array_equal(narrowed.view(np.uint16), want.view(np.uint16))


# --------------------------------------------------------------------------- torch

@pytest.mark.parametrize("dtype", HALVES)
def test_torch_half_tensors_reach_numpy_as_views(dtype):
    from fastattn.torch import _as_numpy, _as_tensor

    tensor = torch.randn(2, 3, 5, 8).to(TORCH_DTYPE[dtype]).transpose(1, 2)
    array = _as_numpy(tensor)
    assert array.dtype == dtype and array.shape == tuple(tensor.shape)
    assert array.__array_interface__["data"][0] == tensor.data_ptr()
    back = _as_tensor(array)
    assert back.dtype == tensor.dtype and back.data_ptr() == tensor.data_ptr()
    assert torch.equal(back, tensor)


@pytest.mark.parametrize("dtype", HALVES)
def test_torch_sdpa_and_autograd_in_half(dtype):
    import fastattn.torch

    q, k, v, mask, options = make_case("gqa, Dv != D, lower_right", dtype)
    keep = torch_mask(q, k, None, dtype, **options)
    dout = np.random.default_rng(9).standard_normal((1, 8, 19, 24)).astype(dtype)
    leaves = torch_leaves(dtype, q, k, v)
    out = fastattn.torch.scaled_dot_product_attention(*leaves, attn_mask=keep, enable_gqa=True)
    assert out.dtype == TORCH_DTYPE[dtype]
    out.backward(torch.from_numpy(dout.astype(np.float32)).to(TORCH_DTYPE[dtype]))
    theirs, torch_leaves_, torch_out = torch_forward(q, k, v, mask, dtype, **options)
    torch_out.backward(torch.from_numpy(dout.astype(np.float32)).to(TORCH_DTYPE[dtype]))
    expected = reference(q, k, v, None, **options)[0]
    assert_within_torch(out.detach().double().numpy(), theirs, expected, dtype)
    for ours, their_leaf, want in zip(leaves, torch_leaves_,
                                      reference_grads(q, k, v, None, dout, **options)):
        assert ours.grad.dtype == TORCH_DTYPE[dtype]
        assert_within_torch(ours.grad.double().numpy(), their_leaf.grad.double().numpy(), want,
                            dtype)


def test_numpy_api_reads_torch_bfloat16_tensors():
    q, k, v = (torch.randn(2, 6, 8).bfloat16() for _ in range(3))
    bias = torch.zeros(6, 6).bfloat16()
    bias[:, 0] = float("-inf")
    out = fastattn.attention(q, k, v, bias, backend="naive")
    assert out.dtype == BF16
    arrays = [x.view(torch.int16).numpy().view(BF16) for x in (q, k, v)]
    mask = np.zeros((6, 6), np.float32)
    mask[:, 0] = -np.inf
    expected = fastattn.attention(*arrays, mask, backend="naive")
    np.testing.assert_array_equal(out.view(np.uint16), expected.view(np.uint16))


def test_fastattn_torch_bfloat16_without_ml_dtypes(monkeypatch):
    import fastattn.torch

    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now fails
    q = torch.randn(1, 2, 4, 8).bfloat16()
    with pytest.raises(ModuleNotFoundError, match=r"ml_dtypes.*pip install.*\.float\(\)"):
        fastattn.torch.scaled_dot_product_attention(q, q, q)


@pytest.mark.parametrize("dtype", HALVES)
def test_hf_llama_in_half_precision_as_close_as_sdpa(dtype):
    """A tiny Llama in half precision: fastattn's logits are as close to the float32 model's
    as those of transformers' "sdpa" in the same dtype (padding on the left)."""
    transformers = pytest.importorskip("transformers")
    import fastattn.hf

    name = fastattn.hf.register()
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    padding = torch.ones_like(ids)
    padding[1, :4] = 0

    def logits(implementation):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            return model(ids, attention_mask=padding).logits.double()[padding.bool()]

    model.to(TORCH_DTYPE[dtype])
    ours, theirs = logits(name), logits("sdpa")
    model.float()  # the same (half) weights, exactly
    expected = logits("sdpa")
    ours_error, their_error = ((x - expected).abs().max().item() for x in (ours, theirs))
    assert ours_error <= 2 * their_error + 1e-3, (ours_error, their_error)
