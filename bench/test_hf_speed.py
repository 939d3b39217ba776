"""Whole models in transformers with attn_implementation "fastattn", "sdpa" and "eager".

Run with ``pytest bench/test_hf_speed.py`` (never part of ``pytest``).  ``extra_info``
holds ``tokens_per_s``.  The models and calls are those of ``fastattn bench --models``
(:mod:`fastattn.bench._models`): the tiny Llama (GQA, random weights: only the speed
means anything) prefills one batch of ``tokens`` tokens (512 ... 4096) and decodes 64
tokens greedily after a 512-token prompt; the packaged all-MiniLM-L6-v2 (BERT) encodes
128 ... 512 tokens.  ``test_prefill_memory`` measures each prefill in a child process,
as the sweep does, and records how far its peak resident memory rose above the
resident memory before the call.  Set ``FASTATTN_HF_TOKENS=512,1024`` to run fewer
prefill lengths; ``--attn-threads=T`` gives torch and fastattn ``T`` threads.
"""

import os

import pytest

import fastattn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastattn.bench._models import (DECODE_PROMPT, DECODED, ENCODE_SIZES,  # noqa: E402
                                    IMPLEMENTATIONS, LLAMA_DECODE, LLAMA_PREFILL,
                                    MINILM_ENCODE, PREFILL_SIZES, build_model, model_runner,
                                    models_unavailable)
from fastattn.bench._sweep import run_child  # noqa: E402

TOKENS = [int(n) for n in os.environ.get(
    "FASTATTN_HF_TOKENS", ",".join(map(str, PREFILL_SIZES))).split(",")]


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def llama(request):
    return request.param, build_model(LLAMA_PREFILL, request.param)


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def minilm(request):
    reason = models_unavailable(MINILM_ENCODE)
    if reason:
        pytest.skip(reason)
    return request.param, build_model(MINILM_ENCODE, request.param)


@pytest.fixture(autouse=True)
def same_threads(threads):
    """torch (sdpa, eager, the rest of the model) and fastattn get the same threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with fastattn.config_context(num_threads=threads):
        yield
    torch.set_num_threads(before)


def _time(benchmark, run, tokens, rounds):
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.median
    benchmark.extra_info["threads"] = torch.get_num_threads()


@pytest.mark.parametrize("tokens", TOKENS, ids=[f"L{n}" for n in TOKENS])
def test_prefill(benchmark, llama, tokens):
    _, model = llama
    _time(benchmark, model_runner(LLAMA_PREFILL, model, tokens), tokens, rounds=3)


def test_decode(benchmark, llama):
    _, model = llama
    run = model_runner(LLAMA_DECODE, model, DECODE_PROMPT)
    assert run().shape == (1, DECODE_PROMPT + DECODED)
    _time(benchmark, run, DECODED, rounds=2)
    benchmark.extra_info["note"] = (f"{DECODED} tokens after a {DECODE_PROMPT}-token prompt "
                                    "(prefill included)")


@pytest.mark.parametrize("tokens", ENCODE_SIZES, ids=[f"L{n}" for n in ENCODE_SIZES])
def test_minilm_encode(benchmark, minilm, tokens):
    _, model = minilm
    _time(benchmark, model_runner(MINILM_ENCODE, model, tokens), tokens, rounds=3)


@pytest.mark.parametrize("tokens", TOKENS, ids=[f"L{n}" for n in TOKENS])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_prefill_memory(implementation, tokens, threads, record_property):
    spec = {"kind": "model", "workload": LLAMA_PREFILL, "backend": implementation,
            "n": tokens, "threads": threads, "repeats": 1,
            "min_time_s": 0, "time_budget_s": 0}
    measured = run_child(spec, timeout=600)
    assert measured["status"] == "ok", measured.get("reason")
    if measured["rss_bytes"] is None:
        pytest.skip(f"no RSS peak on this platform ({measured['rss_method']})")
    growth_mib = measured["rss_bytes"] / 2**20
    record_property("prefill_peak_rss_growth_mib", growth_mib)
    print(f"\n{implementation} L={tokens}: prefill peak RSS growth {growth_mib:.1f} MiB")
