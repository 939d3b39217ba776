"""Shared fixtures: the backends to test, a random generator, the required-backend check.

The dtype tolerance table and the comparison helpers live in ``helpers.py``.

Set ``FASTATTN_REQUIRE_BACKENDS=numba,cython`` (as CI does) to turn a backend that
cannot load into a test failure instead of a silently shorter parameter list.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/oracle.py, with --import-mode=importlib
os.environ["MPLBACKEND"] = "Agg"  # before anything imports matplotlib: no test opens a window

from fastattn._backends import all_backends  # noqa: E402
from fastattn._backward import backward_runners  # noqa: E402
from helpers import BACKENDS, COMPILED_BACKENDS  # noqa: E402


def required_backends():
    names = os.environ.get("FASTATTN_REQUIRE_BACKENDS", "")
    return [name.strip() for name in names.split(",") if name.strip()]


@pytest.fixture(scope="session", autouse=True)
def _check_required_backends():
    """Fail (never skip) every test when a backend that CI requires cannot run."""
    known = {b.name: b for b in all_backends()}
    problems = []
    for name in required_backends():
        if name not in known:
            problems.append(f"{name}: not a fastattn backend (known: {sorted(known)})")
        elif not known[name].available:
            problems.append(f"{name}: unavailable: {known[name].reason}")
        elif backward_runners()[name][0] is None:  # the backward is a separate kernel
            problems.append(f"{name}: no backward: {backward_runners()[name][1]}")
    if problems:
        pytest.fail("FASTATTN_REQUIRE_BACKENDS names backends that cannot run:\n  "
                    + "\n  ".join(problems), pytrace=False)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each available backend by name."""
    return request.param


@pytest.fixture(params=COMPILED_BACKENDS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no compiled backend is available"))])
def compiled_backend(request):
    """Each available tiled (compiled) backend by name."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
