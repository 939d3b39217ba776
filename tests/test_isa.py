"""Runtime CPU dispatch of the Cython tile kernels (fastattn._isa): every instruction-set
level this machine supports runs, agrees with the others and with the naive reference,
and FASTATTN_ISA selects or refuses a level clearly."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastattn
from fastattn import _isa

pytestmark = pytest.mark.skipif(not _isa.supported_levels(),
                                reason="the Cython backend is not built")
LEVELS = _isa.supported_levels() or ("baseline",)
HALF = [np.float16]
try:
    import ml_dtypes
    HALF.append(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    pass


def _run(code, **env):
    """Run ``code`` in a fresh interpreter with ``env`` added; its stdout.

    The interpreter imports the fastattn these tests import (the installed package in
    CI, an in-place build in a checkout): it runs outside the working directory, with
    that package's folder first on its path."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, **env, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, timeout=120, cwd=tempfile.gettempdir())
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_levels_are_ordered_and_the_best_is_active():
    assert _isa.supported_levels()[0] == "baseline"
    assert set(_isa.supported_levels()) <= set(_isa.built_levels()) <= set(_isa.LEVELS)
    if not _isa.forced_level():
        assert _isa.active_level() == _isa.supported_levels()[-1]


@pytest.mark.parametrize("level", LEVELS)
def test_use_level_switches_both_kernels_and_restores(level):
    from fastattn._cython import _backward, _kernel
    before = _isa.active_level()
    with _isa.use_level(level):
        assert _isa.active_level() == level
        assert _kernel.active_level() == _backward.active_level() == _isa.LEVELS.index(level)
    assert _isa.active_level() == before


def test_a_level_that_cannot_run_is_refused():
    with pytest.raises(ValueError, match="'sse9'.*the levels are baseline"):
        _isa.select("sse9")
    missing = [name for name in _isa.LEVELS if name not in _isa.supported_levels()]
    for name in missing:
        with pytest.raises(ValueError, match=f"'{name}' cannot run here.*support baseline"):
            _isa.select(name)


def _problem(dtype, rng):
    q = rng.standard_normal((2, 4, 67, 40)).astype(dtype)
    k = rng.standard_normal((2, 2, 93, 40)).astype(dtype)
    v = rng.standard_normal((2, 2, 93, 24)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64] + HALF, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("causal", [False, "lower_right"])
def test_every_level_agrees_with_naive_forward(dtype, causal):
    rng = np.random.default_rng(7)
    q, k, v = _problem(dtype, rng)
    reference = fastattn.attention(q, k, v, causal=causal, backend="naive").astype(np.float64)
    rounding = np.finfo(np.float32 if np.dtype(dtype).itemsize == 2 else dtype).eps
    outputs = {}
    for level in LEVELS:
        with _isa.use_level(level):
            out = fastattn.attention(q, k, v, causal=causal, backend="cython")
        assert out.dtype == np.dtype(dtype)
        outputs[level] = out.astype(np.float64)
        # the half output is rounded once: within one half ulp of |out| <= max |v|, plus
        # float32 accumulation error
        half_ulp = 2.0 ** -8 if np.dtype(dtype).name == "bfloat16" else 2.0 ** -11
        tolerance = (half_ulp * 4 if np.dtype(dtype).itemsize == 2 else 0) + 64 * rounding
        np.testing.assert_allclose(outputs[level], reference, atol=tolerance, rtol=0)
    for level in LEVELS:  # the levels differ only by float32 accumulation order
        np.testing.assert_allclose(outputs[level], outputs[LEVELS[0]],
                                   atol=(2.0 ** -7 if np.dtype(dtype).itemsize == 2 else
                                         32 * rounding), rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_level_agrees_with_naive_backward(dtype):
    rng = np.random.default_rng(3)
    q, k, v = _problem(dtype, rng)
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True, backend="naive")
    dout = rng.standard_normal(out.shape).astype(dtype)
    reference = fastattn.attention_backward(dout, q, k, v, out, lse, causal=True,
                                            backend="naive")
    tolerance = 2e-4 if dtype == np.float32 else 1e-10
    for level in LEVELS:
        with _isa.use_level(level):
            grads = fastattn.attention_backward(dout, q, k, v, out, lse, causal=True,
                                                backend="cython")
        for grad, expected in zip(grads, reference):
            np.testing.assert_allclose(grad, expected, atol=tolerance, rtol=tolerance)


def test_fastattn_isa_selects_a_level_at_import():
    code = "from fastattn import _isa; import fastattn._cython; print(_isa.active_level())"
    assert _run(code, FASTATTN_ISA="baseline") == "baseline"
    assert _run(code, FASTATTN_ISA="") == _isa.supported_levels()[-1]


def test_fastattn_isa_that_cannot_run_is_a_clear_error():
    code = """
import numpy as np, fastattn
q = np.ones((4, 8), np.float32)
for backend in ("cython", None):
    try:
        fastattn.attention(q, q, q, backend=backend)
    except ValueError as error:
        print(error)
    else:
        print("ran")
"""
    lines = _run(code, FASTATTN_ISA="avx9000").splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "FASTATTN_ISA=avx9000" in line and "baseline" in line


def test_show_config_names_the_running_level():
    text = _run("import fastattn; fastattn.show_config()", FASTATTN_ISA="baseline")
    assert "running    baseline (FASTATTN_ISA=baseline)" in text
    assert f"supported  {', '.join(_isa.supported_levels())}" in text
