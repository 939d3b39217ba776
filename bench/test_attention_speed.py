"""Prefill-style attention, N queries over N keys: every backend lines up per shape.

float32, B=1, H=8, D=64; ``--attn-sizes`` chooses N (see ``bench/conftest.py``).
Each benchmark is in the group of its shape, so ``pytest bench`` prints naive,
numba, cython and torch side by side.
"""

from fastattn.bench._workload import Shape


def test_attention(benchmark, measure_attention, backend, seq_len, causal):
    shape = Shape(batch=1, heads=8, q_len=seq_len, k_len=seq_len, head_dim=64,
                  causal=causal, dtype="float32")
    group = f"attention N={seq_len:05d} {'causal' if causal else 'full'}"
    measure_attention(benchmark, backend, shape, group)
