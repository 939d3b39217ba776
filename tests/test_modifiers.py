"""Score modifiers through the public functions: softcap, ALiBi and sinks.

Every backend against references that do not share the modifiers' code: ALiBi against
the same bias as an additive mask, sinks against one more key (score 0, value 0) whose
additive mask entry is the sink, softcap against a float64 NumPy formula; gradients
against central differences; varlen and paged calls against per-sequence attention.
"""

import numpy as np
import pytest

import fastattn
from helpers import BACKENDS, assert_close, heads_qkv

CAUSALS = [False, True, "lower_right"]


def alibi_mask(slopes, lq, lk, causal, window=None):
    """ALiBi as an additive float64 mask ``(Hq, Lq, Lk)``, with the band as -inf."""
    offset = lk - lq if causal == "lower_right" else 0
    distance = np.arange(lk)[None, :] - np.arange(lq)[:, None] - offset
    bias = -np.asarray(slopes, np.float64)[:, None, None] * np.abs(distance)
    visible = np.ones((lq, lk), bool)
    if causal:
        visible &= distance <= 0
    if window is not None:
        visible &= (distance >= -window[0]) & (distance <= window[1])
    return np.where(visible, bias, -np.inf)


def softcap_reference(q, k, v, cap, scale):
    """``softmax(cap * tanh(q kᵀ scale / cap)) v`` and its lse, float64, no GQA."""
    scores = cap * np.tanh(np.einsum("...id,...jd->...ij", q, k) * scale / cap)
    top = scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores - top)
    total = weights.sum(axis=-1, keepdims=True)
    return (weights / total) @ v, (top + np.log(total))[..., 0]


@pytest.mark.parametrize("causal", CAUSALS)
def test_alibi_equals_its_additive_mask(backend, rng, causal):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=19, lk=37, d=8)
    slopes = np.array([0.5, 0.25, 0.125, 0.0625])
    out, lse = fastattn.attention(q, k, v, causal=causal, alibi_slopes=slopes,
                                  return_lse=True, backend=backend)
    mask = alibi_mask(slopes, 19, 37, causal)
    ref_out, ref_lse = fastattn.attention(q, k, v, mask, return_lse=True, backend="naive")
    assert_close(out, ref_out)
    assert_close(lse, ref_lse)


def test_alibi_with_a_window_and_float32(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=40, lk=40, d=16, dtype=np.float32)
    slopes = np.array([0.3, 0.05])
    out = fastattn.attention(q, k, v, causal=True, window=(7, 0), alibi_slopes=slopes,
                             backend=backend)
    mask = alibi_mask(slopes, 40, 40, True, window=(7, 0))
    assert_close(out, fastattn.attention(q.astype(np.float64), k.astype(np.float64),
                                         v.astype(np.float64), mask, backend="naive"),
                 np.float32)


def test_softcap_against_numpy(backend, rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=3, lq=21, lk=33, d=8)
    q *= 4  # scores well beyond the cap
    out, lse = fastattn.attention(q, k, v, softcap=2.5, return_lse=True, backend=backend)
    ref_out, ref_lse = softcap_reference(q, k, v, 2.5, 8 ** -0.5)
    assert_close(out, ref_out)
    assert_close(lse, ref_lse)
    plain = fastattn.attention(q, k, v, backend=backend)
    assert np.abs(plain - out).max() > 1e-3  # the cap changed something


@pytest.mark.parametrize("causal", [False, True])
def test_sinks_equal_an_extra_key_with_zero_value(backend, rng, causal):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=2, lq=9, lk=13, d=8)
    sinks = np.array([0.5, -1.0, 2.0, 0.0])
    out, lse = fastattn.attention(q, k, v, causal=causal, sinks=sinks, return_lse=True,
                                  backend=backend)
    k_extra = np.concatenate([k, np.zeros_like(k[..., :1, :])], axis=-2)  # score 0
    v_extra = np.concatenate([v, np.zeros_like(v[..., :1, :])], axis=-2)  # value 0
    band = np.tril(np.ones((9, 13))) if causal else np.ones((9, 13))
    mask = np.concatenate([np.where(band > 0, 0.0, -np.inf)[None].repeat(4, axis=0),
                           np.broadcast_to(sinks[:, None, None], (4, 9, 1))], axis=-1)
    ref_out, ref_lse = fastattn.attention(q, k_extra, v_extra, mask, return_lse=True,
                                          backend="naive")
    assert_close(out, ref_out)
    assert_close(lse, ref_lse)


def test_sinks_on_rows_that_see_no_key(backend, rng):
    q, k, v = heads_qkv(rng, hq=2, lq=4, lk=6, d=4)
    mask = np.ones((2, 4, 6), bool)
    mask[:, 1] = False
    out, lse = fastattn.attention(q, k, v, mask, sinks=[1.5, -2.0], return_lse=True,
                                  backend=backend)
    assert np.all(out[:, 1] == 0)
    np.testing.assert_array_equal(lse[:, 1], [1.5, -2.0])


def test_half_precision_with_modifiers(backend, rng):
    q, k, v = heads_qkv(rng, hq=4, hk=2, lq=33, lk=47, d=16, dtype=np.float16)
    options = dict(causal="lower_right", softcap=3.0, alibi_slopes=[0.1, 0.2, 0.3, 0.4],
                   sinks=[0.0, 1.0, -1.0, 0.5])
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend, **options)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    wide = [x.astype(np.float64) for x in (q, k, v)]
    ref_out, ref_lse = fastattn.attention(*wide, return_lse=True, backend="naive", **options)
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=4e-3, atol=4e-3)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gradients

GRADIENT_OPTIONS = {
    "softcap": dict(softcap=1.5),
    "alibi lower right": dict(causal="lower_right", alibi_slopes=[0.4, 0.1]),
    "all three causal": dict(causal=True, softcap=2.0, alibi_slopes=[0.2, 0.3],
                             sinks=[0.5, -0.5]),
}


@pytest.mark.parametrize("case", GRADIENT_OPTIONS)
def test_gradients_against_central_differences(backend, rng, case):
    options = GRADIENT_OPTIONS[case]
    q, k, v = heads_qkv(rng, hq=2, hk=1, lq=5, lk=7, d=4)
    q *= 3
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend, **options)
    dout = rng.standard_normal(out.shape)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, backend=backend, **options)

    def loss(q, k, v, sinks=options.get("sinks")):
        return np.sum(dout * fastattn.attention(q, k, v, backend="naive",
                                                **{**options, "sinks": sinks}))

    inputs = [q, k, v] + ([np.array(options["sinks"])] if "sinks" in options else [])
    assert len(grads) == len(inputs)
    for index, (x, grad) in enumerate(zip(inputs, grads)):
        numeric = np.zeros_like(x)
        for position in np.ndindex(x.shape):
            step = np.zeros_like(x)
            step[position] = 1e-6
            plus, minus = list(inputs), list(inputs)
            plus[index], minus[index] = x + step, x - step
            numeric[position] = (loss(*plus) - loss(*minus)) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- varlen and paged

CU_Q = np.array([0, 3, 3, 40, 41, 100])
CU_K = np.array([0, 5, 9, 50, 50, 120])
SEQUENCE_OPTIONS = {
    "plain": {},
    "causal alibi": dict(causal=True, alibi_slopes=[0.5, 0.2, 0.1, 0.05]),
    "lower right window softcap": dict(causal="lower_right", window=(6, 0), softcap=1.0),
    "window sinks": dict(window=(3, 2), sinks=[0.5, -1.0, 0.0, 1.0]),
}


def per_sequence(function, arrays, starts, **options):
    """``function`` on each sequence's head-major views; results in token-major order."""
    results = []
    for s in range(len(starts[0]) - 1):
        views = [x[bounds[s]:bounds[s + 1]].transpose(1, 0, 2)
                 for x, bounds in zip(arrays, starts)]
        results.append(function(*views, **options))
    return results


@pytest.mark.parametrize("case", SEQUENCE_OPTIONS)
def test_varlen_forward_and_backward_per_sequence(backend, rng, case):
    options = SEQUENCE_OPTIONS[case]
    q = rng.standard_normal((100, 4, 8))
    k, v = rng.standard_normal((2, 120, 2, 8))
    out, lse = fastattn.varlen_attention(q, k, v, CU_Q, CU_K, return_lse=True,
                                         backend=backend, **options)
    dout = rng.standard_normal(out.shape)
    grads = fastattn.varlen_attention_backward(dout, q, k, v, out, lse, CU_Q, CU_K,
                                               backend=backend, **options)
    causal = options.get("causal", False)
    rest = {key: value for key, value in options.items() if key != "causal"}
    refs = per_sequence(
        lambda dq_, q_, k_, v_: fastattn.attention_backward(
            dq_, q_, k_, v_, *fastattn.attention(q_, k_, v_, causal=causal, return_lse=True,
                                                 backend="naive", **rest),
            causal=causal, backend="naive", **rest),
        (dout, q, k, v), (CU_Q, CU_Q, CU_K, CU_K))
    forward = per_sequence(lambda q_, k_, v_: fastattn.attention(
        q_, k_, v_, causal=causal, return_lse=True, backend="naive", **rest),
        (q, k, v), (CU_Q, CU_K, CU_K))
    for s, ((ref_out, ref_lse), ref_grads) in enumerate(zip(forward, refs)):
        rows, keys = slice(CU_Q[s], CU_Q[s + 1]), slice(CU_K[s], CU_K[s + 1])
        assert_close(out[rows], ref_out.transpose(1, 0, 2))
        assert_close(lse[rows], ref_lse.T)
        for grad, ref, span in zip(grads[:3], ref_grads, (rows, keys, keys)):
            assert_close(grad[span], ref.transpose(1, 0, 2))
    if "sinks" in options:  # the per-sequence sink gradients add up to the packed one
        assert_close(grads[3], sum(g[3] for g in refs))


@pytest.mark.parametrize("options", [dict(causal=True), dict(causal="lower_right", softcap=2.0),
                                     dict(window=(300, 40), alibi_slopes=[0.01, 0.02])])
def test_varlen_backward_splits_long_sequences_into_key_chunks(compiled_backend, rng, options):
    from fastattn._config import get_config
    from fastattn._varlen import check_varlen_call
    from fastattn._varlen_backward import varlen_backward_plan

    cu_q, cu_k = np.array([0, 1200, 1230, 1230]), np.array([0, 1100, 1140, 1150])
    q = rng.standard_normal((1230, 2, 8))
    k, v = rng.standard_normal((2, 1150, 1, 8))  # 3 sequences x 1 kv head: too few tasks
    call = check_varlen_call(q, k, v, cu_q, cu_k, options.get("causal"), options.get("window"),
                             None)
    plan = varlen_backward_plan(call, get_config())
    assert plan.n_parts == 2  # the long sequence in two chunks, the short ones whole
    out, lse = fastattn.varlen_attention(q, k, v, cu_q, cu_k, return_lse=True,
                                         backend=compiled_backend, **options)
    dout = rng.standard_normal(out.shape)
    results = []
    for threads in (1, 2):
        with fastattn.config_context(num_threads=threads):
            results.append(fastattn.varlen_attention_backward(
                dout, q, k, v, out, lse, cu_q, cu_k, backend=compiled_backend, **options))
    for a, b in zip(*results):  # the plan depends on the shape only
        np.testing.assert_array_equal(a, b)
    expected = fastattn.varlen_attention_backward(dout, q, k, v, out, lse, cu_q, cu_k,
                                                  backend="naive", **options)
    for grad, ref in zip(results[0], expected):  # the naive path: sequence by sequence
        assert_close(grad, ref)


def test_varlen_backward_chunks_keep_partial_slots_within_eight_dq():
    from fastattn._backward_plan import MAX_CHUNKS
    from fastattn._config import get_config
    from fastattn._contract import BWD_K_START, BWD_K_STOP, BWD_PART
    from fastattn._varlen import check_varlen_call
    from fastattn._varlen_backward import varlen_backward_plan

    cu = np.arange(16) * 1024  # 15 sequences of 1024 tokens, 1 kv head: each wants 2 chunks
    q, k = np.zeros((cu[-1], 2, 4)), np.zeros((cu[-1], 1, 4))
    plan = varlen_backward_plan(check_varlen_call(q, k, k, cu, cu, True, None, None),
                                get_config())
    parts = plan.tasks[:, BWD_PART]
    assert plan.n_parts == MAX_CHUNKS == np.count_nonzero(parts >= 0)
    assert sorted(parts[parts >= 0]) == list(range(MAX_CHUNKS))
    keys = plan.tasks[:, BWD_K_STOP] - plan.tasks[:, BWD_K_START]  # each key in one task
    assert keys.sum() == cu[-1] and len(plan.tasks) == 15 + MAX_CHUNKS // 2


@pytest.mark.parametrize("case", ["plain", "alibi softcap sinks"])
def test_paged_with_modifiers_against_the_gathered_cache(backend, rng, case):
    options = {} if case == "plain" else dict(alibi_slopes=[0.3, 0.1, 0.7, 0.0], softcap=2.0,
                                              sinks=[0.1, 0.2, -0.3, 1.0])
    k_cache, v_cache = rng.standard_normal((2, 9, 4, 2, 8))
    q = rng.standard_normal((3, 4, 8))
    table = np.array([[8, 1, 3], [2, 2, 0], [5, 6, 7]], np.int32)
    lengths = np.array([11, 5, 0], np.int32)
    out, lse = fastattn.paged_attention(q, k_cache, v_cache, table, lengths, return_lse=True,
                                        backend=backend, **options)
    for b, length in enumerate(lengths):
        k, v = (c[table[b]].reshape(12, 2, 8)[:length].transpose(1, 0, 2)
                for c in (k_cache, v_cache))
        ref_out, ref_lse = fastattn.attention(q[b][:, None], k, v, causal="lower_right",
                                              return_lse=True, backend="naive", **options)
        assert_close(out[b], ref_out[:, 0])
        assert_close(lse[b], ref_lse[:, 0])


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("options, error, words", [
    (dict(softcap=0.0), ValueError, "softcap must be positive"),
    (dict(softcap=-1), ValueError, "softcap must be positive"),
    (dict(softcap=True), TypeError, "softcap must be a positive real"),
    (dict(softcap="2"), TypeError, "softcap must be a positive real"),
    (dict(softcap=np.inf), ValueError, "softcap must be positive and finite"),
    (dict(alibi_slopes=[0.1]), ValueError, "alibi_slopes (shape (1,)"),
    (dict(alibi_slopes=[[0.1, 0.2]]), ValueError, "must have shape (2,)"),
    (dict(alibi_slopes=["a", "b"]), TypeError, "alibi_slopes"),
    (dict(sinks=[np.nan, 0.0]), ValueError, "sinks (shape (2,)"),
    (dict(sinks=[1e300, 0.0]), ValueError, "finite in the compute dtype float32"),
])
def test_bad_modifiers_name_the_argument(rng, options, error, words):
    q, k, v = heads_qkv(rng, hq=2, dtype=np.float32)
    with pytest.raises(error) as info:
        fastattn.attention(q, k, v, **options)
    assert words in str(info.value)


@pytest.mark.parametrize("function", ["varlen", "paged"])
def test_bad_modifiers_in_serving_calls(rng, function):
    with pytest.raises(ValueError, match=r"alibi_slopes .* must have shape \(4,\)"):
        if function == "varlen":
            q = rng.standard_normal((5, 4, 8))
            fastattn.varlen_attention(q, q, q, [0, 5], [0, 5], alibi_slopes=[0.1, 0.2])
        else:
            cache = rng.standard_normal((2, 4, 2, 8))
            fastattn.paged_attention(rng.standard_normal((1, 4, 8)), cache, cache,
                                     np.array([[0]]), np.array([3]), alibi_slopes=[0.1])


def test_sinks_backend_agreement_in_float32(rng):
    q, k, v = heads_qkv(rng, batch=(2,), hq=4, hk=1, lq=70, lk=90, d=16, dtype=np.float32)
    options = dict(causal=True, sinks=np.linspace(-1, 1, 4))
    ref = fastattn.attention(q, k, v, backend="naive", **options)
    for backend in BACKENDS:
        assert_close(fastattn.attention(q, k, v, backend=backend, **options), ref, np.float32)


@pytest.mark.parametrize("selection", [dict(), dict(heads=[3, 0], rows=slice(5, 30),
                                                    cols=slice(2, 40))])
def test_attention_weights_with_modifiers(backend, rng, selection):
    q, k, v = heads_qkv(rng, hq=4, hk=2, lq=33, lk=41, d=8)
    options = dict(causal="lower_right", softcap=1.5, alibi_slopes=[0.2, 0.1, 0.05, 0.4],
                   sinks=[0.0, 1.0, -1.0, 2.0])
    with fastattn.config_context(backend=backend):
        weights = fastattn.attention_weights(q, k, **options, **selection)
    if not selection:  # whole rows: the weights times v are the output
        out = fastattn.attention(q, k, v, backend="naive", **options)
        assert_close(weights @ np.repeat(v, 2, axis=0), out)
        return
    with fastattn.config_context(backend="naive"):
        full = fastattn.attention_weights(q, k, **options)
    assert_close(weights, full[selection["heads"]][:, selection["rows"], selection["cols"]])
