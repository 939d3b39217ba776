"""fastattn.torch: torch's SDPA semantics on CPU tensors, autograd, the custom operator, compile.

References are torch's own ``scaled_dot_product_attention`` (and its autograd) in float64,
``torch.autograd.gradcheck`` (finite differences) and, for the options torch lacks
(lower-right causal, windows, lse), fastattn's NumPy API.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastattn  # noqa: E402
import fastattn.torch as ft  # noqa: E402

F = torch.nn.functional


def tensors(*shapes, dtype=torch.float64, grad=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, dtype=dtype, generator=generator, requires_grad=grad)
            for shape in shapes]


def qkv(batch=2, hq=4, hk=4, lq=5, lk=7, d=8, dv=None, **options):
    return tensors((batch, hq, lq, d), (batch, hk, lk, d), (batch, hk, lk, dv or d), **options)


def bool_mask(shape, seed=1):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.3


CASES = {
    "plain": ({}, {}),
    "causal": ({"is_causal": True}, {}),
    "causal_square": ({"is_causal": True}, {"lk": 5}),
    "bool_mask": ({"attn_mask": bool_mask((2, 1, 5, 7))}, {}),
    "key_padding": ({"attn_mask": bool_mask((2, 1, 1, 7))}, {}),
    "float_mask": ({"attn_mask": tensors((5, 7), seed=3)[0]}, {}),
    "scale": ({"scale": 0.3}, {}),
    "gqa": ({"enable_gqa": True}, {"hk": 2}),
    "value_dim": ({}, {"dv": 3}),
}


@pytest.mark.parametrize("case", CASES)
def test_sdpa_matches_torch(case):
    options, shape = CASES[case]
    q, k, v = qkv(**shape)
    expected = F.scaled_dot_product_attention(q, k, v, **options)
    out = ft.scaled_dot_product_attention(q, k, v, **options)
    assert out.dtype == torch.float64 and out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_come_back_as_given(dtype):
    q, k, v = qkv()
    mask = bool_mask((2, 1, 5, 7))
    out = ft.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    # the reference: the inputs rounded to dtype, computed in float64, rounded once
    rounded = [x.to(dtype).double() for x in (q, k, v)]
    expected = F.scaled_dot_product_attention(*rounded, attn_mask=mask).to(dtype)
    assert out.dtype == dtype
    tolerance = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(out, expected, rtol=tolerance, atol=tolerance)


def test_tensors_reach_numpy_without_a_copy():
    q, = tensors((2, 6, 3, 8))  # (B, L, H, D)
    view = q.transpose(1, 2)  # (B, H, L, D), last axis contiguous
    assert ft._as_numpy(view).__array_interface__["data"][0] == view.data_ptr()
    out = ft.scaled_dot_product_attention(view, view, view)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(view, view, view))


def test_a_fully_masked_row_is_zeros_with_zero_gradient():
    q, k, v = qkv(grad=True)
    mask = bool_mask((2, 1, 5, 7))
    mask[0, 0, 2] = False
    out = ft.scaled_dot_product_attention(q, k, v, mask)
    assert torch.all(out[0, :, 2] == 0) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.all(q.grad[0, :, 2] == 0) and torch.isfinite(k.grad).all()


@pytest.mark.parametrize("options", [
    {"causal": "lower_right"}, {"causal": True, "window": (2, 0)}, {"window": (1, None)}])
def test_attention_matches_numpy_api(options):
    q, k, v = qkv(hk=2)
    out, lse = ft.attention(q, k, v, return_lse=True, **options)
    expected_out, expected_lse = fastattn.attention(q.numpy(), k.numpy(), v.numpy(),
                                                    return_lse=True, **options)
    np.testing.assert_array_equal(out.numpy(), expected_out)
    np.testing.assert_array_equal(lse.numpy(), expected_lse)


@pytest.mark.parametrize("call, message", [
    (lambda q: ft.scaled_dot_product_attention(q, q, q, dropout_p=0.1), "dropout"),
    (lambda q: ft.scaled_dot_product_attention(q.to("meta"), q, q), "meta.*cpu"),
    (lambda q: ft.scaled_dot_product_attention(q, q[:, :2], q[:, :2]), "enable_gqa=True"),
    (lambda q: ft.scaled_dot_product_attention(q, q.float(), q), "one dtype"),
    (lambda q: ft.scaled_dot_product_attention(q.int(), q.int(), q.int()), "float32, float64"),
    (lambda q: ft.scaled_dot_product_attention(q, q, q, q[0, 0] > 0, is_causal=True),
     "is_causal=True with an attn_mask"),
    (lambda q: ft.scaled_dot_product_attention(q.numpy(), q, q), "fastattn.attention"),
    (lambda q: ft.attention(q, q, q, causal="diagonal"), "causal='diagonal'"),
])
def test_errors_say_what_to_do(call, message):
    q, = tensors((1, 4, 3, 8))
    with pytest.raises((TypeError, ValueError), match=message):
        call(q)


# --------------------------------------------------------------------------- autograd

@pytest.mark.parametrize("case", ["plain", "causal", "bool_mask", "float_mask", "gqa"])
def test_gradients_match_torch(case):
    options, shape = CASES[case]
    q, k, v = qkv(grad=True, **shape)
    dout, = tensors((2, 4, 5, shape.get("dv", 8)), seed=7)
    grads = torch.autograd.grad(ft.scaled_dot_product_attention(q, k, v, **options), (q, k, v),
                                dout)
    expected = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, **options),
                                   (q, k, v), dout)
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mask, options, hk", [
    (None, {}, 2), (None, {"causal": True}, 2), (None, {"causal": "lower_right"}, 1),
    ("bool", {}, 2), ("float", {"window": (1, 1)}, 2)])
def test_gradcheck(mask, options, hk):
    q, k, v = qkv(batch=1, hq=2, hk=hk, lq=3, lk=4, d=3, grad=True)
    if mask == "bool":
        mask = torch.tensor([[True, False, True, True], [False, True, True, False],
                             [True, True, False, True]])
    elif mask == "float":
        mask = tensors((3, 4), seed=5)[0]
    assert torch.autograd.gradcheck(lambda q, k, v: ft.attention(q, k, v, mask, **options),
                                    (q, k, v))


def test_half_precision_gradients_keep_their_dtype():
    q, k, v = (x.detach().bfloat16().requires_grad_() for x in qkv())
    ft.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == torch.bfloat16


def test_lse_carries_no_gradient():
    q, k, v = qkv(grad=True)
    out, lse = ft.attention(q, k, v, return_lse=True)
    assert out.requires_grad and not lse.requires_grad


# --------------------------------------------------------------------------- operator

def test_operator_registration_passes_opcheck():
    q, k, v = qkv(hk=2, lq=3, lk=4, d=4, grad=True)
    mask = bool_mask((2, 1, 3, 4))
    for args in [(q, k, v, None, "upper_left", -1, -1, None),
                 (q, k, v, mask, "none", 1, -1, 0.5)]:
        torch.library.opcheck(torch.ops.fastattn.attention.default, args)


class TinyAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 24, dtype=torch.float64)

    def forward(self, x, mask):
        q, k, v = self.proj(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        return ft.scaled_dot_product_attention(q, k, v, mask).sum(dim=1)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_gives_the_eager_result(backend):
    torch.manual_seed(0)
    model = TinyAttention()
    x, = tensors((2, 5, 8))
    mask = bool_mask((2, 1, 5, 5))
    expected = model(x, mask)
    expected_grad, = torch.autograd.grad(expected.sum(), model.proj.weight)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(x, mask)
    grad, = torch.autograd.grad(out.sum(), model.proj.weight)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- override

def test_sdpa_override_routes_supported_calls_and_falls_through(monkeypatch):
    original = F.scaled_dot_product_attention
    calls = []
    monkeypatch.setattr(ft, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(kwargs) or "fastattn")
    q, k, v = qkv()
    with ft.sdpa_override():
        assert F.scaled_dot_product_attention is not original
        assert F.scaled_dot_product_attention(q, k, v, is_causal=True) == "fastattn"
        fallen = [F.scaled_dot_product_attention(q, k, v, dropout_p=0.5),
                  F.scaled_dot_product_attention(q.to("meta"), k.to("meta"), v.to("meta"))]
        with pytest.raises(RuntimeError):  # torch's own error: no enable_gqa
            F.scaled_dot_product_attention(q, k[:, :2], v[:, :2])
    assert len(calls) == 1 and calls[0] == {"is_causal": True}
    assert all(isinstance(x, torch.Tensor) and x.shape == q.shape for x in fallen)
    assert F.scaled_dot_product_attention is original


def test_sdpa_override_computes_and_restores_after_an_error():
    original = F.scaled_dot_product_attention
    q, k, v = qkv()
    mask = bool_mask((2, 1, 5, 7))
    mask[0, 0, 0] = False  # a fully masked row: zeros from fastattn
    with pytest.raises(RuntimeError, match="boom"), ft.sdpa_override():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is original
    torch.testing.assert_close(out, ft.scaled_dot_product_attention(q, k, v, mask))
    assert torch.all(out[0, :, 0] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("is_causal", [False, True])
def test_the_plain_path_gives_the_bits_of_the_full_path(dtype, is_causal):
    """Unmasked calls on plain tensors go straight to NumPy; the result is the full path's."""
    q, k, v = torch.randn(3, 2, 4, 9, 16, dtype=dtype).unbind(0)
    plain = fastattn.torch.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    full = fastattn.torch.attention(q, k, v, causal=is_causal)
    assert torch.equal(plain, full) and plain.dtype == dtype
    with pytest.raises(ValueError, match="enable_gqa"):  # still refused on the fast path
        fastattn.torch.scaled_dot_product_attention(q, k[:, :2], v[:, :2])


def modified_reference(q, k, v, softcap, slopes, sinks):
    """Causal attention with softcap, ALiBi and sinks in torch's own autograd (one kv head
    per query head): the sinks as one more score column, dropped after the softmax."""
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    scores = softcap * torch.tanh(scores / softcap)
    lq, lk = scores.shape[-2:]
    distance = (torch.arange(lk)[None, :] - torch.arange(lq)[:, None]).to(q.dtype)
    scores = scores - slopes[:, None, None] * distance.abs()
    scores = scores.masked_fill(distance > 0, float("-inf"))
    column = sinks[:, None, None].expand(*scores.shape[:-1], 1)
    weights = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
    return weights @ v


def test_modifiers_and_sink_gradients_against_torch_autograd():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=generator,
                           requires_grad=True) for _ in range(3))
    slopes = torch.tensor([0.5, 0.1, 0.0], dtype=torch.float64)
    sinks = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = ft.attention(q, k, v, causal=True, softcap=1.5, alibi_slopes=slopes, sinks=sinks)
    expected = modified_reference(q, k, v, 1.5, slopes, sinks)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn(out.shape, dtype=torch.float64, generator=generator)
    ours = torch.autograd.grad(out, (q, k, v, sinks), upstream)
    theirs = torch.autograd.grad(expected, (q, k, v, sinks), upstream)
    for name, a, b in zip(("q", "k", "v", "sinks"), ours, theirs):
        torch.testing.assert_close(a, b, msg=name)
