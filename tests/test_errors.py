"""Bad inputs raise, and the message names the argument, its shape and its dtype."""

import re

import numpy as np
import pytest

import fastattn
from fastattn._backends import all_backends, available_backends


def qkv(q_shape=(2, 3, 4), k_shape=(2, 5, 4), v_shape=(2, 5, 4), dtype=np.float64):
    return tuple(np.ones(shape, dtype=dtype) for shape in (q_shape, k_shape, v_shape))


def raises(error, *fragments, **call):
    """Call attention with ``call`` and check that every fragment is in the message."""
    options = dict(call)
    q, k, v = options.pop("q"), options.pop("k"), options.pop("v")
    with pytest.raises(error) as info:
        fastattn.attention(q, k, v, **options)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def shape_of(array):
    return str(tuple(np.shape(array)))


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("bad_dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128,
                                       np.complex64])
@pytest.mark.parametrize("position", ["q", "k", "v"])
def test_non_float_inputs_raise_type_error(bad_dtype, position):
    arrays = dict(zip("qkv", qkv()))
    arrays[position] = arrays[position].astype(bad_dtype)
    message = raises(TypeError, position, shape_of(arrays[position]),
                     str(np.dtype(bad_dtype)), **arrays)
    assert re.search(r"astype|cast|real part|float", message)  # says what to do


def test_object_and_string_inputs_raise_type_error():
    q, k, v = qkv()
    raises(TypeError, "q", **dict(q=np.array([["a", "b"]]), k=k, v=v))
    raises(TypeError, "k", **dict(q=q, k=np.full((2, 5, 4), None, dtype=object), v=v))


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="longdouble is float64 here")
def test_long_double_is_not_silently_truncated():
    q, k, v = qkv()
    raises(TypeError, "q", "float128" if np.dtype(np.longdouble).itemsize == 16 else "",
           q=q.astype(np.longdouble), k=k, v=v)


@pytest.mark.parametrize("mask_dtype", [np.int64, np.int8, np.uint8])
def test_integer_mask_is_ambiguous(backend, mask_dtype):
    q, k, v = qkv()
    mask = np.ones((3, 5), dtype=mask_dtype)
    message = raises(TypeError, "mask", shape_of(mask), str(np.dtype(mask_dtype)),
                     q=q, k=k, v=v, mask=mask, backend=backend)
    assert "bool" in message


def test_complex_mask_raises_type_error():
    q, k, v = qkv()
    raises(TypeError, "mask", q=q, k=k, v=v, mask=np.zeros((3, 5), dtype=complex))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_additive_mask_with_nan_or_pos_inf(backend, bad, dtype):
    q, k, v = qkv()
    mask = np.zeros((3, 5), dtype=dtype)
    mask[1, 2] = bad
    raises(ValueError, "mask", shape_of(mask), q=q, k=k, v=v, mask=mask, backend=backend)


# ---------------------------------------------------------------- shapes


def test_fewer_than_two_dimensions():
    raises(ValueError, "q", "(4,)", q=np.ones(4), k=np.ones((5, 4)), v=np.ones((5, 4)))
    raises(ValueError, "v", q=np.ones((3, 4)), k=np.ones((5, 4)), v=np.float64(1.0))


def test_mismatched_feature_size():
    q, k, v = qkv(k_shape=(2, 5, 3), v_shape=(2, 5, 3))
    raises(ValueError, "q", "k", shape_of(q), shape_of(k), q=q, k=k, v=v)


def test_zero_feature_size():
    q, k, v = qkv((2, 3, 0), (2, 5, 0), (2, 5, 4))
    raises(ValueError, "D", q=q, k=k, v=v)


@pytest.mark.parametrize("hq, hk", [(3, 2), (4, 3), (2, 4), (1, 2)])
def test_kv_heads_must_divide_query_heads(hq, hk):
    q, k, v = qkv((hq, 3, 4), (hk, 5, 4), (hk, 5, 4))
    raises(ValueError, "Hk", "Hq", shape_of(q), shape_of(k), q=q, k=k, v=v)


@pytest.mark.parametrize("k_shape, v_shape", [((2, 5, 4), (2, 6, 4)), ((2, 5, 4), (1, 5, 4))])
def test_k_and_v_must_agree(k_shape, v_shape):
    q, k, v = qkv((2, 3, 4), k_shape, v_shape)
    raises(ValueError, "k", "v", shape_of(k), shape_of(v), q=q, k=k, v=v)


def test_batch_axes_must_broadcast():
    q, k, v = qkv((3, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4))
    raises(ValueError, "batch", shape_of(q), shape_of(k), q=q, k=k, v=v)


@pytest.mark.parametrize("mask_shape", [(4,), (3, 4), (2, 3, 3, 5), (3, 2, 3, 5), (1, 1, 2, 3, 5),
                                        (5, 3)])
def test_mask_must_broadcast_to_scores(backend, mask_shape):
    q, k, v = qkv()
    mask = np.ones(mask_shape, dtype=bool)
    raises(ValueError, "mask", shape_of(mask), "(2, 3, 5)", q=q, k=k, v=v, mask=mask,
           backend=backend)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("causal", ["yes", "lower-right", "upper", "", "True", "causal"])
def test_bad_causal(causal):
    q, k, v = qkv()
    raises(ValueError, "causal", repr(causal), q=q, k=k, v=v, causal=causal)


@pytest.mark.parametrize("window", [(1,), (1, 2, 3), (-1, 0), (0, -2), (1.5, 0), ("a", 1), 3,
                                   (True, 1), "ab"])
def test_bad_window(window):
    q, k, v = qkv()
    raises(ValueError, "window", q=q, k=k, v=v, window=window)


@pytest.mark.parametrize("scale", [np.nan, np.inf, -np.inf, float("nan")])
def test_non_finite_scale(scale):
    q, k, v = qkv()
    raises(ValueError, "scale", q=q, k=k, v=v, scale=scale)


@pytest.mark.parametrize("scale", ["big", [1.0, 2.0], object()])
def test_non_numeric_scale(scale):
    q, k, v = qkv()
    with pytest.raises((TypeError, ValueError), match="scale"):
        fastattn.attention(q, k, v, scale=scale)


@pytest.mark.parametrize("name", ["bogus", "NUMBA", "torch", ""])
def test_unknown_backend_lists_available_backends(name):
    q, k, v = qkv()
    message = raises(ValueError, repr(name), q=q, k=k, v=v, backend=name)
    for backend in available_backends():
        assert backend in message
    for backend in all_backends():
        if not backend.available:
            assert backend.name in message and backend.reason in message


def test_unavailable_backend_says_why(monkeypatch):
    import fastattn._backends as registry

    real_load = registry._load
    missing = registry.Backend("cython", False, "cannot be imported: no compiler here")
    monkeypatch.setattr(registry, "_load",
                        lambda name: missing if name == "cython" else real_load(name))
    q, k, v = qkv()
    raises(ValueError, "cython", "no compiler here", q=q, k=k, v=v, backend="cython")
    assert registry.resolve("auto").name != "cython"  # auto falls back, no error


def test_backend_must_be_a_string():
    q, k, v = qkv()
    with pytest.raises((TypeError, ValueError), match="backend"):
        fastattn.attention(q, k, v, backend=3)


# ---------------------------------------------------------------- out=


@pytest.mark.parametrize("shape, dtype", [((2, 3, 5), np.float64), ((2, 3), np.float64),
                                          ((2, 3, 4), np.float32), ((1, 2, 3, 4), np.float64),
                                          ((2, 3, 4), np.float16)])
def test_out_with_wrong_shape_or_dtype(backend, shape, dtype):
    q, k, v = qkv()
    out = np.zeros(shape, dtype=dtype)
    raises(ValueError, "out", shape_of(out), str(np.dtype(dtype)), "(2, 3, 4)",
           q=q, k=k, v=v, out=out, backend=backend)
    assert np.all(out == 0)


def test_out_must_be_an_ndarray():
    q, k, v = qkv()
    raises(TypeError, "out", q=q, k=k, v=v, out=[[0.0] * 4] * 3)


def test_out_read_only():
    q, k, v = qkv()
    out = np.zeros((2, 3, 4))
    out.flags.writeable = False
    raises(ValueError, "out", "read-only", q=q, k=k, v=v, out=out)


def test_out_overlapping_an_input(backend, rng):
    q = rng.standard_normal((2, 3, 4))
    k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    before = q.copy()
    with pytest.raises(ValueError, match="out"):
        fastattn.attention(q, k, v, out=q, backend=backend)
    np.testing.assert_array_equal(q, before)


def test_errors_do_not_depend_on_backend():
    """Validation runs before any backend: the same message for every backend."""
    q, k, v = qkv((3, 3, 4), (2, 5, 4), (2, 5, 4))
    messages = set()
    for backend in available_backends() + ["auto"]:
        with pytest.raises(ValueError) as info:
            fastattn.attention(q, k, v, backend=backend)
        messages.add(str(info.value))
    assert len(messages) == 1


# ---------------------------------------------------------------- messages show what was passed


@pytest.mark.parametrize("q_shape, k_shape, v_shape, shown", [
    ((3, 4), (5, 3), (5, 3), ["q (shape (3, 4)", "k (shape (5, 3)"]),  # D differs
    ((3, 4), (5, 4), (6, 4), ["k (shape (5, 4)", "v (shape (6, 4)"]),  # Lk differs
])
def test_messages_show_the_callers_2d_shapes(q_shape, k_shape, v_shape, shown):
    """A 2-D input is reported with the shape the caller passed, not an internal 3-D one."""
    q, k, v = qkv(q_shape, k_shape, v_shape)
    raises(ValueError, *shown, q=q, k=k, v=v)


def test_mask_error_names_the_callers_dtype():
    """A float64 mask holding a finite value too large for the float32 computation."""
    q, k, v = qkv(dtype=np.float32)
    mask = np.array([0.0, 1e39, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError) as info:
        fastattn.attention(q, k, v, mask)
    message = str(info.value)
    assert "mask" in message and "float64" in message, message
