"""A training step: attention forward + backward, fastattn against torch's SDPA autograd.

float32, D=64, N queries over N keys, causal and not; each backend of ``--attn-backends``
(that has a backward) and ``torch`` side by side per shape:

- ``test_forward_backward``: B=1, H=8, ``attention(..., return_lse=True)`` then
  ``attention_backward``, against ``scaled_dot_product_attention(...).backward(g)``;
- ``test_forward_backward_one_head``: B x H = 1, where torch, which parallelises its
  backward over batch x heads only, runs on one core and fastattn splits the keys;
- ``test_backward``: the backward alone (each round's forward is set-up, not timed).

Sequence lengths: ``FASTATTN_BENCH_BACKWARD_SIZES`` (default ``512,1024,2048,4096``; the
issue's full sweep is ``512,1024,2048,4096,8192,16384``).  extra_info records the FLOPs
(forward ``4 N² D H``, backward ``10 N² D H``: five block products; halved when causal),
GFLOP/s, the gradients' largest difference from torch's, and the peak memory of the first
backward call (``backward_peak_traced_bytes``: what NumPy allocated, O(N) for the tiled
backends; torch allocates outside tracemalloc's view, see its RSS figure).
"""

import os

import numpy as np
import pytest

from fastattn.bench._memory import measure_peak

DEFAULT_SIZES = "512,1024,2048,4096"
HEAD_DIM = 64
NAIVE_MATRICES = 8
"""Score-sized float64 arrays the naive backward can hold at once (a conservative count)."""
GRADIENT_TOLERANCE = 1e-3
"""Largest difference from torch's float32 gradients accepted, relative to their largest entry."""


def pytest_generate_tests(metafunc):
    if "bwd_len" in metafunc.fixturenames:
        text = os.environ.get("FASTATTN_BENCH_BACKWARD_SIZES", DEFAULT_SIZES)
        sizes = sorted(int(n) for n in text.split(",") if n.strip())
        metafunc.parametrize("bwd_len", sizes, ids=[f"N{n}" for n in sizes])


def _inputs(heads, n, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, heads, n, HEAD_DIM), dtype=np.float32)
                 for _ in range(4))


def _flops(heads, n, causal, backward=True):
    per_product = 2.0 * heads * n * n * HEAD_DIM / (2 if causal else 1)
    return per_product * (2 + (5 if backward else 0))


class _Step:
    """The forward and backward of one backend on fixed inputs (q, k, v, upstream g)."""

    def __init__(self, backend, arrays, causal, threads):
        self.backend, self.causal, self.threads = backend, causal, threads
        self.q, self.k, self.v, self.g = arrays
        if backend == "torch":
            import torch

            torch.set_num_threads(threads)
            self.tensors = [torch.from_numpy(x).requires_grad_() for x in arrays[:3]]
            self.tg = torch.from_numpy(self.g)

    def forward(self):
        """What the backward needs: fastattn's ``(out, lse)``, or torch's output tensor."""
        if self.backend == "torch":
            from torch.nn.functional import scaled_dot_product_attention

            for t in self.tensors:
                t.grad = None
            return scaled_dot_product_attention(*self.tensors, is_causal=self.causal)
        import fastattn

        with fastattn.config_context(num_threads=self.threads):
            return fastattn.attention(self.q, self.k, self.v, causal=self.causal,
                                      return_lse=True, backend=self.backend)

    def backward(self, state):
        """The gradients ``(dq, dk, dv)`` as NumPy arrays."""
        if self.backend == "torch":
            state.backward(self.tg)
            return tuple(t.grad.numpy() for t in self.tensors)
        import fastattn

        out, lse = state
        with fastattn.config_context(num_threads=self.threads):
            return fastattn.attention_backward(self.g, self.q, self.k, self.v, out, lse,
                                               causal=self.causal, backend=self.backend)

    def both(self):
        return self.backward(self.forward())


def _prepare(backend, heads, n, causal, threads, naive_budget_bytes):
    """A warmed-up, checked step of ``backend``, and its extra_info so far."""
    from fastattn._backward import backward_runners

    if backend != "torch" and backward_runners()[backend][0] is None:
        pytest.skip(f"{backend} has no backward here: {backward_runners()[backend][1]}")
    needed = NAIVE_MATRICES * heads * n * n * 8
    if backend == "naive" and needed > naive_budget_bytes:
        pytest.skip(f"naive backward would need {needed / 2**30:.3g} GiB")
    arrays = _inputs(heads, n)
    _Step(backend, _inputs(2, 8), causal, threads).both()  # JIT, thread pools
    step = _Step(backend, arrays, causal, threads)
    state = step.forward()
    grads, memory = measure_peak(lambda: step.backward(state))
    info = {"backend": backend, "seq_len": n, "heads": heads, "head_dim": HEAD_DIM,
            "causal": causal, "dtype": "float32", "threads": threads,
            "backward_peak_traced_bytes": memory["traced_bytes"],
            "backward_peak_rss_bytes": memory["rss_bytes"]}
    if backend != "torch":
        expected = _Step("torch", arrays, causal, threads).both()
        errors = [np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)
                  for a, b in zip(grads, expected)]
        info["max_rel_err_vs_torch"] = float(max(errors))
        assert info["max_rel_err_vs_torch"] < GRADIENT_TOLERANCE, info
    for _ in range(2):  # warm-up calls at full size
        step.both()
    return step, info


def _record(benchmark, info, flops):
    info["flops"] = flops
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        info["gflops"] = flops / stats.stats.median / 1e9
    benchmark.extra_info.update(info)


def _label(n, causal):
    return f"N={n:05d} {'causal' if causal else 'full'}"


def test_forward_backward(benchmark, backend, bwd_len, causal, threads, naive_budget_bytes):
    step, info = _prepare(backend, 8, bwd_len, causal, threads, naive_budget_bytes)
    benchmark.group = f"fwd+bwd H=8 {_label(bwd_len, causal)}"
    benchmark(step.both)
    _record(benchmark, info, _flops(8, bwd_len, causal))


def test_forward_backward_one_head(benchmark, backend, bwd_len, causal, threads,
                                   naive_budget_bytes):
    step, info = _prepare(backend, 1, bwd_len, causal, threads, naive_budget_bytes)
    benchmark.group = f"fwd+bwd B*H=1 {_label(bwd_len, causal)}"
    benchmark(step.both)
    _record(benchmark, info, _flops(1, bwd_len, causal))


def test_backward(benchmark, backend, bwd_len, causal, threads, naive_budget_bytes):
    step, info = _prepare(backend, 8, bwd_len, causal, threads, naive_budget_bytes)
    benchmark.group = f"bwd H=8 {_label(bwd_len, causal)}"
    rounds = 5 if bwd_len >= 4096 else 10
    benchmark.pedantic(step.backward, setup=lambda: ((step.forward(),), {}), rounds=rounds)
    _record(benchmark, info, _flops(8, bwd_len, causal) - _flops(8, bwd_len, causal, False))
