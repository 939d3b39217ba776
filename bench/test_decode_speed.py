"""Decoding: one query over a long KV cache with grouped-query heads.

Lq=1, Lk=65536, Hq=32, Hkv=8, D=64, float32. Memory-bound: ``kv_gbytes_per_s`` in
extra_info is the rate at which k and v are read. No causal variant: with one
query at the end of the cache, every key is visible.
"""

from fastattn.bench._workload import Shape


def test_decode(benchmark, measure_attention, backend):
    shape = Shape(batch=1, heads=32, q_len=1, k_len=65536, head_dim=64, kv_heads=8,
                  causal=False, dtype="float32")
    measure_attention(benchmark, backend, shape, "decode Lq=1 Lk=65536 Hq=32 Hkv=8")
