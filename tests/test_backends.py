"""The backend registry, and the FASTATTN_REQUIRE_BACKENDS check of conftest.py."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastattn._backends import all_backends, available_backends, resolve


def test_registry_names_every_backend_with_a_reason():
    names = [b.name for b in all_backends()]
    assert names == ["naive", "numba", "cython"]
    for backend in all_backends():
        assert isinstance(backend.reason, str) and backend.reason
    assert "naive" in available_backends()


@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_prefers_a_compiled_backend(name):
    chosen = resolve(name)
    assert chosen.available
    compiled = [n for n in ("cython", "numba") if n in available_backends()]
    assert chosen.name in compiled if compiled else chosen.name == "naive"


def problem_of(batch=1, hq=8, hk=8, lq=512, lk=512, d=16):
    from fastattn._validation import validate

    q = np.zeros((batch, hq, lq, d), np.float32)
    k = np.zeros((batch, hk, lk, d), np.float32)
    return validate(q, k, k)


def test_auto_takes_cython_wherever_it_is_available():
    if "cython" not in available_backends():
        pytest.skip("the cython backend is not built here")
    for problem in (problem_of(hq=1, hk=1, lq=4, lk=4), problem_of(),
                    problem_of(hq=32, hk=8, lq=1, lk=65536)):
        assert resolve("auto", problem).name == "cython"


def test_without_cython_auto_takes_naive_for_tiny_problems_and_numba_above():
    from fastattn._backends import SMALL_PROBLEM_SCORES, auto_choice

    side = int(SMALL_PROBLEM_SCORES ** 0.5)
    tiny, large = problem_of(hq=1, hk=1, lq=side, lk=side), problem_of()
    assert auto_choice(tiny, ["naive", "numba"]) == "naive"
    assert auto_choice(large, ["naive", "numba"]) == "numba"
    assert auto_choice(large, ["naive"]) == "naive"


def test_trivial():
    """Run by the subprocess below."""


@pytest.mark.parametrize("required, fails", [("naive", False), ("naive,no-such-backend", True)]
                         + [(b.name, True) for b in all_backends() if not b.available])
def test_required_backends_check_fails_not_skips(required, fails, tmp_path):
    env = dict(os.environ, FASTATTN_REQUIRE_BACKENDS=required)
    here = Path(__file__)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{here}::test_trivial"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    if fails:
        assert result.returncode == 1, output
        assert "cannot run" in output and required.split(",")[-1] in output
    else:
        assert result.returncode == 0, output


def test_heavy_optional_packages_are_not_imported_by_import_fastattn(tmp_path):
    code = ("import sys, fastattn; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'dask') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
