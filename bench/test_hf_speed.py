"""A tiny Llama (GQA) in transformers with attn_implementation "fastattn", "sdpa" and "eager".

Run with ``pytest bench/test_hf_speed.py`` (never part of ``pytest``).  ``extra_info``
holds ``tokens_per_s``.  Prefill runs one batch of ``tokens`` tokens (512 ... 4096);
decode generates 64 tokens greedily after a 512-token prompt.  ``test_prefill_memory``
runs each prefill in a child process and records how far its peak resident memory rose
above the resident memory before the prefill (Linux: the peak is reset through
``/proc/self/clear_refs``).  The model has random weights: only the speed
means anything.  Set ``FASTATTN_HF_TOKENS=512,1024`` to run fewer lengths.
"""

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import fastattn.hf  # noqa: E402

IMPLEMENTATIONS = [fastattn.hf.register(), "sdpa", "eager"]
TOKENS = [int(n) for n in os.environ.get("FASTATTN_HF_TOKENS", "512,1024,2048,4096").split(",")]
DECODED = 64
PROMPT = 512

MODEL_SOURCE = """
import torch, transformers
config = transformers.LlamaConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
    pad_token_id=0, bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_config(config).eval()
"""


@pytest.fixture(scope="module")
def model():
    namespace = {}
    exec(MODEL_SOURCE, namespace)
    return namespace["model"]


def prompt(tokens):
    return torch.randint(3, 128, (1, tokens), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tokens", TOKENS, ids=[f"L{n}" for n in TOKENS])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_prefill(benchmark, model, implementation, tokens):
    model.set_attn_implementation(implementation)
    ids = prompt(tokens)

    def prefill():
        with torch.no_grad():
            return model(ids, use_cache=False).logits

    benchmark.pedantic(prefill, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.median


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_decode(benchmark, model, implementation):
    model.set_attn_implementation(implementation)
    ids = prompt(PROMPT)

    def generate():
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=DECODED, min_new_tokens=DECODED,
                                  do_sample=False, pad_token_id=0)

    out = benchmark.pedantic(generate, rounds=2, iterations=1, warmup_rounds=1)
    assert out.shape == (1, PROMPT + DECODED)
    benchmark.extra_info["tokens_per_s"] = DECODED / benchmark.stats.stats.median
    benchmark.extra_info["note"] = f"{DECODED} tokens after a {PROMPT}-token prompt (prefill included)"


@pytest.mark.parametrize("tokens", TOKENS, ids=[f"L{n}" for n in TOKENS])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_prefill_memory(implementation, tokens, record_property):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    script = MODEL_SOURCE + textwrap.dedent(f"""
        import fastattn.hf
        fastattn.hf.register()
        model.set_attn_implementation({implementation!r})
        ids = torch.randint(3, 128, (1, {tokens}))

        def status(field):
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1])  # kB

        with torch.no_grad():
            model(ids[:, :16], use_cache=False)  # warm: libraries and kernels loaded
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM, the peak RSS, to the current RSS
            before = status("VmRSS")
            model(ids, use_cache=False)
        print((status("VmHWM") - before) / 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    growth_mib = float(result.stdout.split()[-1])
    record_property("prefill_peak_rss_growth_mib", growth_mib)
    print(f"\n{implementation} L={tokens}: prefill peak RSS growth {growth_mib:.1f} MiB")
