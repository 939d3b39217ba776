"""The score modifiers at the kernel boundary: softcap and ALiBi inside both compiled
kernels, forward and backward, against the naive full-matrix reference.

Each case validates a call with modifiers (:func:`fastattn._validation.validate`), runs
the tiled forward driver (:func:`fastattn._tiled.run_tiled`) and backward driver
(:func:`fastattn._backward.run_backward_tiled`) on one backend's kernel, and compares
with :func:`fastattn._naive.naive_attention` / :func:`naive_backward`, whose modifiers
are checked against independent references in tests/test_modifiers.py.
"""

import dataclasses
import importlib

import numpy as np
import pytest

from fastattn._backward import run_backward_tiled, sum_partial_dq
from fastattn._backward_plan import make_backward_plan
from fastattn._contract import BWD_BAND_SHIFT, TASK_BAND_SHIFT, BackwardCall, Band, KernelCall
from fastattn._naive import naive_attention, naive_backward
from fastattn._plan import make_plan
from fastattn._tiled import execute_call, part_buffers, run_tiled
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


# ------------------------------------------------------------ half precision, band shifts

HALF_TOLERANCE = 2e-2
"""Half storage, float32 compute: the output is rounded to half precision."""

HALF_CASES = ["softcap", "both additive, decode split-KV", "sinks with modifiers"]


def half_dtype(name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    return np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else np.float16)


def backward_module(backend_name):
    return importlib.import_module(f"fastattn._{backend_name}" +
                                   ("._backward" if backend_name == "cython" else ".backward"))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", HALF_CASES)
def test_half_precision_matches_naive(backend_name, case, half):
    """The modifiers act on the float32 scores of half inputs, forward and backward."""
    q_shape, k_shape, options, overrides = CASES[case]
    rng = np.random.default_rng(4)
    problem = make_problem(rng, q_shape, k_shape, options, half_dtype(half))
    assert problem.compute_dtype == np.float32
    kernel = importlib.import_module(f"fastattn._{backend_name}").run_kernel
    out, lse = run_tiled(kernel, problem, settings_of(overrides))
    ref_out, ref_lse = naive_attention(problem)
    assert out.dtype == problem.q.dtype
    for actual, expected in ((out, ref_out), (lse, ref_lse)):
        np.testing.assert_allclose(actual.astype(np.float64), expected,
                                   rtol=HALF_TOLERANCE, atol=HALF_TOLERANCE)
    dout = rng.standard_normal(out.shape).astype(problem.q.dtype)
    grads = run_backward_tiled(backward_module(backend_name).run_backward_kernel, problem,
                               dout, out, lse, settings_of(overrides))
    for grad, ref in zip(grads, naive_backward(problem, dout.astype(np.float64))):
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(grad, ref, rtol=HALF_TOLERANCE,
                                   atol=HALF_TOLERANCE * scale)


def shifted_reference(problem, shift):
    """``problem`` with its band and its ALiBi diagonal moved by ``shift``."""
    band = Band(problem.band.lo + shift, problem.band.hi + shift)
    modifiers = dataclasses.replace(problem.modifiers,
                                    diagonal=problem.modifiers.diagonal + shift)
    return dataclasses.replace(problem, band=band, modifiers=modifiers)


def plan_with_shift(plan, band, shift_column, shift):
    """``plan`` (made for every row and key) run with ``band``, each task shifted."""
    tasks = plan.tasks.copy()
    tasks[:, shift_column] = shift
    return dataclasses.replace(plan, band=band, tasks=tasks)


SHIFT_OPTIONS = dict(softcap=2.0, alibi_slopes=[0.3, 0.1, 0.5, 0.2], mask="keep", causal=True,
                     window=(6, None))


@pytest.mark.parametrize("shift", [-3, 4])
def test_forward_band_shift_moves_the_band_and_the_alibi_diagonal(backend_name, shift):
    problem = make_problem(np.random.default_rng(5), (1, 4, 21, 8), (1, 2, 30, 8),
                           SHIFT_OPTIONS, np.float64)
    full = make_plan(1, 2, 2, 21, 30, Band(), n_threads=2, block_q=8, block_k=8)
    plan = plan_with_shift(full, problem.band, TASK_BAND_SHIFT, shift)
    out, lse = np.empty((1, 4, 21, 11)), np.empty((1, 4, 21))
    call = KernelCall(q=problem.q, k=problem.k, v=problem.v, mask=problem.mask,
                      mask_kind=problem.mask_kind, scale=problem.scale, plan=plan, out=out,
                      lse=lse, modifiers=problem.modifiers, **part_buffers(plan, 11, lse.dtype))
    execute_call(importlib.import_module(f"fastattn._{backend_name}").run_kernel, call)
    ref_out, ref_lse = naive_attention(shifted_reference(problem, shift))
    np.testing.assert_allclose(out, ref_out, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shift", [-3, 4])
def test_backward_band_shift_moves_the_band_and_the_alibi_diagonal(backend_name, shift):
    rng = np.random.default_rng(6)
    problem = make_problem(rng, (1, 4, 21, 8), (1, 2, 30, 8), SHIFT_OPTIONS, np.float64)
    reference = shifted_reference(problem, shift)
    out, lse = naive_attention(reference)
    dout = rng.standard_normal(out.shape)
    full = make_backward_plan(1, 2, 2, 21, 30, Band(), n_threads=2, block_q=8, block_k=8)
    plan = plan_with_shift(full, problem.band, BWD_BAND_SHIFT, shift)
    call = BackwardCall(q=problem.q, k=problem.k, v=problem.v, dout=dout, lse=lse,
                        delta=np.einsum("...d,...d->...", dout, out), mask=problem.mask,
                        mask_kind=problem.mask_kind, scale=problem.scale, plan=plan,
                        dq=np.zeros(problem.q.shape), dk=np.full(problem.k.shape, np.nan),
                        dv=np.full(problem.v.shape, np.nan), modifiers=problem.modifiers,
                        part_dq=np.zeros((plan.n_parts, 2, 21, 8)))
    backward_module(backend_name).run_backward_kernel(call)
    sum_partial_dq(plan, call.part_dq, call.dq)
    for grad, ref in zip((call.dq, call.dk, call.dv), naive_backward(reference, dout)):
        np.testing.assert_allclose(grad, ref, rtol=1e-10, atol=1e-10)


def test_numba_compiles_nothing_more_for_modifiers():
    """A call with modifiers runs the signature a call without them compiled (Numba
    compiles each new one for tens of seconds)."""
    if "numba" not in COMPILED_BACKENDS:
        pytest.skip("the numba backend is not available here")
    from fastattn._numba.backward import run_backward_worker
    from fastattn._numba.kernel import run_worker
    rng = np.random.default_rng(7)
    plain = make_problem(rng, (1, 2, 5, 4), (1, 2, 6, 4), {}, np.float64)
    modified = make_problem(rng, (1, 2, 5, 4), (1, 2, 6, 4),
                            dict(softcap=2.0, alibi_slopes=[0.3, 0.1], causal=True), np.float64)
    settings = settings_of(dict(num_threads=1))
    module = backward_module("numba")
    compiled = []
    for problem in (plain, modified):
        out, lse = run_tiled(importlib.import_module("fastattn._numba").run_kernel, problem,
                             settings)
        run_backward_tiled(module.run_backward_kernel, problem, out, out, lse, settings)
        compiled.append((len(run_worker.signatures), len(run_backward_worker.signatures)))
    assert compiled[0] == compiled[1]


# ------------------------------------------------------------ non-finite inputs

@pytest.mark.parametrize("options", [dict(softcap=1.0),
                                     dict(softcap=2.0, alibi_slopes=[0.5, -0.1])])
def test_masked_nan_key_stays_out_of_modified_scores(backend_name, options):
    """A key that the causal band hides contributes nothing, even NaN (tanh(NaN) is NaN,
    so a modifier applied after the masking, or a softcap derivative taken at a masked
    score, would leak it): forward and gradients equal those with that key finite."""
    rng = np.random.default_rng(8)
    q, k = rng.standard_normal((1, 2, 9, 8)) * 2, rng.standard_normal((1, 2, 11, 8))
    v, dout = rng.standard_normal((1, 2, 11, 5)), rng.standard_normal((1, 2, 9, 5))
    clean = validate(q, k, v, causal=True, **options)
    k, v = k.copy(), v.copy()  # clean keeps views of the finite ones
    k[:, :, 10], v[:, :, 10] = np.nan, np.nan  # no row of 9 sees key 10
    dirty = validate(q, k, v, causal=True, **options)
    settings = settings_of(dict(block_q=4, block_k=4))
    kernel = importlib.import_module(f"fastattn._{backend_name}").run_kernel
    out, lse = run_tiled(kernel, dirty, settings)
    ref_out, ref_lse = naive_attention(clean)
    np.testing.assert_allclose(out, ref_out, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-11, atol=1e-11)
    grads = run_backward_tiled(backward_module(backend_name).run_backward_kernel, dirty, dout,
                               ref_out, ref_lse, settings)
    for grad, ref in zip(grads, naive_backward(clean, dout)):
        np.testing.assert_allclose(grad, ref, rtol=1e-10, atol=1e-10)
