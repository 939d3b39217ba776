"""fastattn as a Hugging Face transformers attention implementation, ``"fastattn"``.

:func:`register` adds :func:`attention_forward` to transformers' ``AttentionInterface`` and
:func:`attention_mask` to its ``AttentionMaskInterface``, so that
``attn_implementation="fastattn"`` works in ``from_pretrained``, ``from_config`` and
``set_attn_implementation``.  Causal and padding masks are not materialised as
``Lq x Lk``: the mask function hands a ``(B, 1, 1, Lk)`` key-padding mask (or None) and
the attention function applies the causal rule as fastattn's lower-right band, which is
HF's causal rule whenever the keys are the cache followed by the queries.  Grouped-query
attention runs without ``repeat_kv``.  See docs/torch.md.
"""

try:
    import transformers
    from transformers.masking_utils import (bidirectional_mask_function, causal_mask_function,
                                            prepare_padding_mask, sdpa_mask)
except ModuleNotFoundError as error:  # pragma: no cover - the message is what matters
    raise ModuleNotFoundError(
        "fastattn.hf needs Hugging Face transformers (and PyTorch): pip install transformers "
        "'fastattn[torch]'", name=error.name or "transformers") from error

from fastattn.torch import attention as _attention

NAME = "fastattn"
"""The ``attn_implementation`` name :func:`register` uses by default."""

_CAUSAL_TAG = "_fastattn_lower_right"
"""Attribute set on a key-padding mask made by :func:`attention_mask` for a causal layer."""


def register(name=NAME):
    """Register fastattn as the transformers attention implementation ``name``.

    Parameters
    ----------
    name : str, default "fastattn"
        The ``attn_implementation`` to register.

    Returns
    -------
    str
        ``name``, for ``attn_implementation=fastattn.hf.register()``.

    Examples
    --------
    >>> import torch, transformers, fastattn.hf
    >>> fastattn.hf.register()
    'fastattn'
    >>> config = transformers.LlamaConfig(
    ...     vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...     num_attention_heads=4, num_key_value_heads=2)
    >>> model = transformers.AutoModelForCausalLM.from_config(
    ...     config, attn_implementation="fastattn")
    >>> ids = torch.tensor([[0, 5, 6, 7]])
    >>> padding = torch.tensor([[0, 1, 1, 1]])
    >>> logits = model(ids, attention_mask=padding).logits
    >>> model.set_attn_implementation("sdpa")
    >>> expected = model(ids, attention_mask=padding).logits
    >>> bool(torch.allclose(logits[:, 1:], expected[:, 1:], atol=1e-5))
    True
    """
    transformers.AttentionInterface.register(name, attention_forward)
    transformers.masking_utils.AttentionMaskInterface.register(name, attention_mask)
    return name


def attention_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0,
                   mask_function=None, attention_mask=None, **kwargs):
    """The mask transformers hands to :func:`attention_forward`, O(Lk) where it can be.

    For the plain causal and bidirectional patterns with the keys aligned to the
    queries' end (no static cache), returns None when nothing is padded, else the
    ``(B, 1, 1, Lk)`` key-padding mask (tagged as causal for a causal pattern).  Any
    other pattern (sliding windows, chunks, packed sequences, static caches) is
    materialised by transformers' ``sdpa_mask`` and passed through as given.

    Parameters
    ----------
    batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask
        As transformers' mask interface passes them (``mask_function`` None: causal).

    Returns
    -------
    torch.Tensor or None
        A bool mask, True where a query may attend a key.
    """
    mask_function = causal_mask_function if mask_function is None else mask_function
    causal = mask_function is causal_mask_function
    aligned = (isinstance(q_offset, int) and isinstance(kv_offset, int)
               and (not causal or q_offset - kv_offset == kv_length - q_length))
    if not aligned or not (causal or mask_function is bidirectional_mask_function):
        kwargs.pop("allow_is_causal_skip", None)
        return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function,
                         attention_mask, allow_is_causal_skip=False, **kwargs)
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if padding is None or bool(padding[:, kv_offset:kv_offset + kv_length].all()):
        return None
    keys = padding[:, None, None, kv_offset:kv_offset + kv_length]
    if causal:
        setattr(keys, _CAUSAL_TAG, True)
    return keys


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      is_causal=None, **kwargs):
    """A transformers attention function computed by fastattn.

    Parameters
    ----------
    module : torch.nn.Module
        The attention layer (its ``is_causal`` is read when ``is_causal`` is None).
    query : torch.Tensor, shape (B, Hq, L, D)
    key, value : torch.Tensor, shape (B, Hk, S, D)
        ``Hk`` divides ``Hq``; no ``repeat_kv`` copy is made.
    attention_mask : torch.Tensor or None
        From :func:`attention_mask`, or any bool or additive mask broadcastable to
        ``(B, Hq, L, S)`` (then it alone decides, as in transformers' "sdpa").
    dropout : float
        Must be 0 (evaluation, or a model configured without attention dropout).
    scaling : float, optional
        Default ``1 / sqrt(D)``.
    **kwargs
        ``softcap`` (Gemma 2's logit softcapping) and ``s_aux`` (gpt-oss's learned
        sinks, shape ``(Hq,)``, differentiable) are computed in the kernels; other
        model-specific options are ignored, as transformers' "sdpa" does.

    Returns
    -------
    out : torch.Tensor, shape (B, L, Hq, D)
    weights : None
        fastattn never forms the attention probabilities.
    """
    if dropout:
        raise ValueError(f"dropout={dropout}: fastattn has no attention dropout; train with "
                         f"attention dropout 0 in the model's config, or use "
                         f"attn_implementation='sdpa'")
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError("position_bias is not supported by fastattn; use "
                                  "attn_implementation='eager' or 'sdpa'")
    modifiers = dict(softcap=kwargs.get("softcap"), sinks=kwargs.get("s_aux"))
    if attention_mask is None:
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        causal = "lower_right" if is_causal and query.shape[2] > 1 else False
    else:
        causal = "lower_right" if getattr(attention_mask, _CAUSAL_TAG, False) else False
    out = _attention(query, key, value, attention_mask, causal=causal, scale=scaling,
                     **modifiers)
    return out.transpose(1, 2).contiguous(), None
