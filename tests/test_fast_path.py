"""The repeated-call fast path of fastattn.attention: same bits, and never a stale reuse.

A call without a mask or ``out=`` whose key (layouts, options, settings) was seen before
skips validation and planning (``fastattn._api._repeated``).  The reference here is the
general path: a call with ``out=`` (which never takes the fast path) or a first call.
"""

import threading

import numpy as np
import pytest

import fastattn
from fastattn import _api

compiled = pytest.importorskip("fastattn._cython")


@pytest.fixture(autouse=True)
def fresh_cache():
    _api._repeated.clear()
    yield
    _api._repeated.clear()


def arrays(shape_q, shape_k, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape_q).astype(dtype),
            rng.standard_normal(shape_k).astype(dtype),
            rng.standard_normal(shape_k).astype(dtype))


def general(q, k, v, **options):
    """``(out, lse)`` by the general path: ``out=`` is never fast-pathed."""
    shape = np.broadcast_shapes(q.shape[:-3], k.shape[:-3]) + q.shape[-3:-1] + v.shape[-1:]
    out = np.full(shape, np.nan, np.result_type(q, k, v))
    result, lse = fastattn.attention(q, k, v, out=out, return_lse=True, **options)
    assert result is out
    return out, lse


def fast(q, k, v, monkeypatch, **options):
    """``(out, lse)`` of a repeated call, checked to skip validation (it would raise)."""
    fastattn.attention(q, k, v, return_lse=True, **options)  # remembers the call
    with monkeypatch.context() as patch:
        patch.setattr(_api, "validate", _no_validation)
        return fastattn.attention(q, k, v, return_lse=True, **options)


def _no_validation(*args, **kwargs):
    raise AssertionError("the repeated call was validated again")


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


CASES = {
    "tiny": ((1, 1, 16, 64), (1, 1, 16, 64)),
    "heads": ((1, 8, 64, 64), (1, 8, 64, 64)),
    "decode": ((1, 32, 1, 64), (1, 8, 256, 64)),
    "batch": ((3, 4, 20, 8), (3, 2, 33, 8)),
    "split_kv": ((1, 2, 1, 16), (1, 1, 5000, 16)),  # few tasks, long keys: split-KV merge
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("options", [{}, {"causal": True}, {"causal": "lower_right"},
                                     {"window": (5, 0), "causal": True}, {"scale": 0.3}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])  # float16 read as is
def test_fast_path_gives_the_general_path_bits(case, options, dtype, monkeypatch):
    q, k, v = arrays(*CASES[case], dtype)
    out, lse = fast(q, k, v, monkeypatch, **options)
    expected_out, expected_lse = general(q, k, v, **options)
    assert_same_bits(out, expected_out)
    assert_same_bits(lse, expected_lse)
    assert_same_bits(fastattn.attention(q, k, v, **options), expected_out)  # no lse


def test_transposed_inputs_are_read_in_place_with_the_same_bits(monkeypatch):
    """(B, L, H, D) arrays transposed to (B, H, L, D): strided, no copy, same bits."""
    q, k, v = (x.transpose(0, 2, 1, 3) for x in arrays((2, 40, 4, 16), (2, 50, 2, 16)))
    out, lse = fast(q, k, v, monkeypatch, causal=True)
    expected_out, expected_lse = general(q, k, v, causal=True)
    assert_same_bits(out, expected_out)
    assert_same_bits(lse, expected_lse)


def test_results_are_fresh_arrays():
    q, k, v = arrays((1, 2, 8, 16), (1, 2, 8, 16))
    first = fastattn.attention(q, k, v)
    second = fastattn.attention(q, k, v)
    assert first is not second and not np.shares_memory(first, second)
    first[...] = np.nan
    assert np.isfinite(fastattn.attention(q, k, v)).all()


# ------------------------------------------------------------------ no stale reuse


def test_each_layout_dtype_and_option_gets_its_own_entry():
    q, k, v = arrays((1, 2, 8, 16), (1, 2, 8, 16))
    strided = np.repeat(q, 2, axis=-2)[..., ::2, :]  # same shape, other strides
    calls = [lambda: fastattn.attention(q, k, v),
             lambda: fastattn.attention(strided, k, v),
             lambda: fastattn.attention(q.astype(np.float64), k.astype(np.float64),
                                        v.astype(np.float64)),
             lambda: fastattn.attention(q[:, :, :5], k, v),
             lambda: fastattn.attention(q, k, v, causal=True),
             lambda: fastattn.attention(q, k, v, scale=0.5),
             lambda: fastattn.attention(q, k, v, return_lse=True)]
    for count, call in enumerate(calls, start=1):
        call()
        call()
        assert len(_api._repeated) == count


@pytest.mark.parametrize("setting", [{"block_q": 3}, {"block_k": 5}, {"num_threads": 1},
                                     {"backend": "naive"}, {"backend": "numba"}])
def test_settings_are_part_of_the_key(setting, monkeypatch):
    q, k, v = arrays((1, 4, 30, 16), (1, 2, 40, 16))
    fastattn.attention(q, k, v)
    fastattn.attention(q, k, v)  # remembered with the default settings
    with fastattn.config_context(**setting):
        expected_out, expected_lse = general(q, k, v)
        out, lse = fastattn.attention(q, k, v, return_lse=True)
        again_out, again_lse = fastattn.attention(q, k, v, return_lse=True)
    for result in (out, again_out):
        assert_same_bits(result, expected_out)
    for result in (lse, again_lse):
        assert_same_bits(result, expected_lse)


def test_settings_change_the_bits_where_they_change_the_plan():
    """Guards the test above: block_k changes the summation order, so a stale plan shows."""
    q, k, v = arrays((1, 1, 4, 16), (1, 1, 300, 16))
    default = fastattn.attention(q, k, v)
    with fastattn.config_context(block_k=7):
        assert default.tobytes() != fastattn.attention(q, k, v).tobytes()


def test_invalid_options_are_still_refused_after_valid_lookalikes():
    """``1 == True == 1.0``: the key tells the types apart."""
    q, k, v = arrays((1, 1, 4, 8), (1, 1, 4, 8))
    for _ in range(2):
        fastattn.attention(q, k, v, scale=1, causal=True, return_lse=False)
    with pytest.raises(TypeError, match="scale"):
        fastattn.attention(q, k, v, scale=True, causal=True)
    with pytest.raises(ValueError, match="causal"):
        fastattn.attention(q, k, v, scale=1, causal=1)
    with pytest.raises(TypeError, match="return_lse"):
        fastattn.attention(q, k, v, scale=1, causal=True, return_lse=0)


def test_a_replaced_registry_chooses_the_backend_again(monkeypatch):
    import fastattn._backends as registry

    q, k, v = arrays((1, 1, 4, 8), (1, 1, 4, 8))
    for _ in range(2):
        fastattn.attention(q, k, v, backend="cython")
    missing = registry.Backend("cython", False, "cannot be imported: no compiler here")
    real_load = registry._load
    monkeypatch.setattr(registry, "_load",
                        lambda name: missing if name == "cython" else real_load(name))
    with pytest.raises(ValueError, match="no compiler here"):
        fastattn.attention(q, k, v, backend="cython")


@pytest.mark.parametrize("inputs", ["mixed_dtypes", "broadcast_batch", "three_dims", "list"])
def test_calls_that_need_preparing_take_the_general_path(inputs):
    q, k, v = arrays((2, 2, 6, 8), (2, 2, 7, 8))
    if inputs == "mixed_dtypes":  # q is cast to float32
        q = q.astype(np.float16)
    elif inputs == "broadcast_batch":
        q = q[:1]
    elif inputs == "three_dims":
        q, k, v = q[0], k[0], v[0]
    expected = fastattn.attention(q, k, v, backend="naive")
    given = (q.tolist(), k, v) if inputs == "list" else (q, k, v)
    for _ in range(3):
        np.testing.assert_allclose(fastattn.attention(*given), expected, rtol=2e-3, atol=2e-3)
    assert all(entry is None for entry in _api._repeated.values())


# ------------------------------------------------------------------ threads


def test_threads_share_the_cache_safely(monkeypatch):
    """Threads repeating different calls, with the cache cleared under them, get their bits."""
    monkeypatch.setattr(_api, "_MAX_REPEATED", 3)  # forces clears while others read
    problems = [arrays((1, 4, 9 + i, 16), (1, 2, 30 + 7 * i, 16), seed=i) for i in range(6)]
    expected = [general(*problem)[0] for problem in problems]
    failures = []

    def repeat(index):
        for step in range(40):
            i = (index + step) % len(problems)
            if fastattn.attention(*problems[i]).tobytes() != expected[i].tobytes():
                failures.append(i)

    threads = [threading.Thread(target=repeat, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# ------------------------------------------------------------------ torch


def test_torch_sdpa_gives_the_general_path_bits():
    torch = pytest.importorskip("torch")
    import fastattn.torch as ft

    q, k, v = arrays((1, 32, 1, 64), (1, 8, 256, 64))
    expected, _ = general(q, k, v)
    tensors = [torch.from_numpy(x) for x in (q, k, v)]
    for _ in range(3):
        out = ft.scaled_dot_product_attention(*tensors, enable_gqa=True)
        assert_same_bits(out.numpy(), expected)
