"""The score modifiers at the kernel boundary: softcap and ALiBi inside both compiled
kernels, forward and backward, against the naive full-matrix reference.

Each case validates a call with modifiers (:func:`fastattn._validation.validate`), runs
the tiled forward driver (:func:`fastattn._tiled.run_tiled`) and backward driver
(:func:`fastattn._backward.run_backward_tiled`) on one backend's kernel, and compares
with :func:`fastattn._naive.naive_attention` / :func:`naive_backward`, whose modifiers
are checked against independent references in tests/test_modifiers.py.
"""

import importlib

import numpy as np
import pytest

from fastattn._backward import run_backward_tiled
from fastattn._naive import naive_attention, naive_backward
from fastattn._tiled import run_tiled
from fastattn._validation import validate
from helpers import COMPILED_BACKENDS

TOLERANCE = {np.float32: 3e-5, np.float64: 1e-11}

CASES = {  # name: (q shape, k shape, options, settings)
    "softcap": ((2, 4, 37, 16), (2, 2, 41, 16), dict(softcap=1.5), {}),
    "alibi causal": ((1, 4, 33, 8), (1, 4, 33, 8),
                     dict(alibi_slopes=[0.5, 0.25, 0.125, 0.0], causal=True), {}),
    "alibi lower right window": ((1, 2, 9, 8), (1, 1, 70, 8),
                                 dict(alibi_slopes=[0.3, -0.1], causal="lower_right",
                                      window=(20, 0)), dict(block_k=16)),
    "both with mask": ((2, 2, 17, 8), (2, 2, 23, 8),
                       dict(softcap=3.0, alibi_slopes=[0.2, 0.7], mask="keep"),
                       dict(block_q=8, block_k=8)),
    "both additive, decode split-KV": ((1, 8, 1, 16), (1, 2, 300, 16),
                                       dict(softcap=0.5, alibi_slopes=np.linspace(0, 1, 8),
                                            mask="add", causal="lower_right"),
                                       dict(block_k=32)),
    "sinks with modifiers": ((1, 2, 12, 8), (1, 2, 12, 8),
                             dict(softcap=2.0, alibi_slopes=[0.1, 0.2], sinks=[0.5, -1.0],
                                  causal=True), {}),
}


@pytest.fixture(params=COMPILED_BACKENDS)
def backend_name(request):
    return request.param


def settings_of(overrides):
    return {**dict(num_threads=2, block_q=None, block_k=None), **overrides}


def make_problem(rng, q_shape, k_shape, options, dtype):
    q = rng.standard_normal(q_shape).astype(dtype) * 2  # large scores: the softcap bends
    k = rng.standard_normal(k_shape).astype(dtype)
    v = rng.standard_normal(k_shape[:-1] + (k_shape[-1] + 3,)).astype(dtype)
    options = dict(options)
    kind = options.pop("mask", None)
    mask = None
    if kind is not None:
        scores_shape = q_shape[:-1] + (k_shape[-2],)
        keep = rng.random(scores_shape) < 0.7
        mask = keep if kind == "keep" else np.where(keep, rng.normal(size=scores_shape),
                                                    -np.inf)
    return validate(q, k, v, mask, **options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_naive(backend_name, case, dtype):
    q_shape, k_shape, options, overrides = CASES[case]
    problem = make_problem(np.random.default_rng(1), q_shape, k_shape, options, dtype)
    kernel = importlib.import_module(f"fastattn._{backend_name}").run_kernel
    out, lse = run_tiled(kernel, problem, settings_of(overrides))
    ref_out, ref_lse = naive_attention(problem)
    np.testing.assert_allclose(out, ref_out, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    np.testing.assert_allclose(lse, ref_lse, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_naive(backend_name, case, dtype):
    q_shape, k_shape, options, overrides = CASES[case]
    rng = np.random.default_rng(2)
    problem = make_problem(rng, q_shape, k_shape, options, dtype)
    out, lse = (x.astype(dtype) for x in naive_attention(problem))
    dout = rng.standard_normal(out.shape).astype(dtype)
    module = importlib.import_module(f"fastattn._{backend_name}" +
                                     ("._backward" if backend_name == "cython" else ".backward"))
    grads = run_backward_tiled(module.run_backward_kernel, problem, dout, out, lse,
                               settings_of(overrides))
    for grad, ref in zip(grads, naive_backward(problem, dout)):
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(grad, ref, rtol=10 * TOLERANCE[dtype],
                                   atol=10 * TOLERANCE[dtype] * scale)
