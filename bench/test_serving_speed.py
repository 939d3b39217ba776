"""Serving: decoding over a paged KV cache, a packed variable-length batch, ALiBi at long N.

The workloads of ``fastattn bench --serving`` (:mod:`fastattn.bench._serving`), prepared
the same way (``prepare_serving``: a tiny call outside the timed region, the peak memory
of the first full-size call, the check against a float64 formula), at the issue's sizes:

- ``test_decode``: ``paged_attention`` (pages of 16 over a shuffled cache) next to the
  contiguous ``attention(..., causal="lower_right")`` and torch's SDPA
  (``enable_gqa=True``); Lq=1, Lk=65536, Hq=32, Hk=8, D=64, float32.  ``extra_info``
  holds ``kv_gbytes_per_s``, the rate at which K and V are read.
- ``test_varlen``: 16 causal sequences of 64 ... 2048 tokens (log-uniform, seed 0),
  Hq=Hk=8, D=64: ``varlen_attention`` next to the same batch padded to its longest
  sequence (``attention`` with a bool padding mask; torch's SDPA with a bool mask).
  ``extra_info`` holds ``tokens_per_s`` (real tokens).
- ``test_alibi``: ``attention(..., causal=True, alibi_slopes=...)`` at N=32768, H=8, D=64.
  ``extra_info`` holds the peak memory of the first call and ``bias_bytes``, what an
  additive ``H x Lq x Lk`` float32 bias would need.

``FASTATTN_BENCH_SERVING='{"alibi_n": 8192}'`` (JSON) replaces sizes (the fields of
``SERVING_DEFAULTS``); ``--attn-backends`` narrows the backends (numba, cython, torch;
naive is the check's, not timed here).  The read bandwidth decoding is judged by is
measured by ``fastattn bench --serving`` only: in one process, its 1 GiB array and the
caches would share the memory.
"""

import json
import os

import pytest

from fastattn.bench._serving import (ALIBI, DECODE, PADDED, PAGED, VARLEN, prepare_serving,
                                     serving_options, serving_points)

OPTIONS = serving_options(json.loads(os.environ.get("FASTATTN_BENCH_SERVING", "{}")))

def _planned(workload, backend, threads, options):
    """The point ``fastattn bench --serving`` plans for ``workload`` and ``backend``, or skip."""
    if backend == "naive":
        pytest.skip("naive is the serving points' check, not timed")
    for point in serving_points(options, (backend,), threads):
        if point["workload"] == workload:
            return point
    pytest.skip(f"{backend} has no {workload} point")


def _run(benchmark, workload, backend, threads, group, options=OPTIONS, rounds=None):
    """Prepare and time one serving point (``rounds``: that many calls, for long ones);
    return the planned point and the preparation."""
    point = _planned(workload, backend, threads, options)
    benchmark.group = group
    prepared = prepare_serving(workload, backend, options, threads)
    if rounds is None:
        benchmark(prepared.run)
    else:
        benchmark.pedantic(prepared.run, rounds=rounds, iterations=1, warmup_rounds=0)
    info = {"backend": backend, "workload": workload, "threads": threads,
            "peak_traced_bytes": prepared.memory["traced_bytes"],
            "peak_rss_bytes": prepared.memory["rss_bytes"],
            "max_abs_err": prepared.max_abs_err,
            **{k: point[k] for k in ("n", "batch", "heads", "kv_heads", "head_dim", "flops",
                                     "bytes_read", "tokens") if point.get(k) is not None}}
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        median = stats.stats.median
        info["gflops"] = point["flops"] / median / 1e9
        info["tokens_per_s"] = point["tokens"] / median
        if point.get("bytes_read"):
            info["kv_gbytes_per_s"] = point["bytes_read"] / median / 1e9
    benchmark.extra_info.update(info)
    return point, prepared


@pytest.mark.parametrize("paged", [True, False], ids=["paged", "contiguous"])
def test_decode(benchmark, backend, threads, paged):
    _run(benchmark, PAGED if paged else DECODE, backend, threads,
         f"serving decode Lk={OPTIONS['decode_keys']} Hq={OPTIONS['decode_heads']} "
         f"Hk={OPTIONS['decode_kv_heads']}")


@pytest.mark.parametrize("padded", [False, True], ids=["packed", "padded"])
def test_varlen(benchmark, backend, threads, padded):
    point, _ = _run(benchmark, PADDED if padded else VARLEN, backend, threads,
                    f"serving varlen {OPTIONS['varlen_sequences']} sequences "
                    f"{OPTIONS['varlen_min']}-{OPTIONS['varlen_max']}")
    benchmark.extra_info.update(seq_lens=point["seq_lens"], padded_len=point["padded_len"])


def test_alibi(benchmark, backend, threads):
    """Three calls (each takes seconds at N = 32768); from N = 4096 up, the peak memory must
    stay below one head's Lq x Lk bias."""
    options = dict(OPTIONS, alibi_backends=[backend])
    point, prepared = _run(benchmark, ALIBI, backend, threads,
                           f"serving alibi N={OPTIONS['alibi_n']}", options, rounds=3)
    memory = prepared.memory
    peak = max(b for b in (memory["traced_bytes"], memory["rss_bytes"]) if b is not None)
    output = point["heads"] * point["n"] * point["head_dim"] * 4
    benchmark.extra_info.update(peak_bytes=peak, output_bytes=output,
                                bias_bytes=point["bias_bytes"],
                                bias_bytes_per_head=point["bias_bytes_per_head"])
    if point["bias_bytes_per_head"] >= 64 * 2**20:  # N >= 4096: beyond page granularity
        assert peak < point["bias_bytes_per_head"], \
            f"ALiBi's peak ({peak / 2**20:.0f} MiB) is not O(N)"
