"""The backend registry: each backend's name, availability (with the reason) and runner.

A runner takes a validated :class:`~fastattn._validation.AttentionProblem`, the
settings in force, an optional ``out`` array (the problem's ``out_shape`` in the
storage dtype, written in place) and ``lse_only``, and returns ``(out, lse)`` with the
shapes of the problem, ``out`` in the storage dtype (None with ``lse_only``) and ``lse``
in the compute dtype.  Every problem, empty ones
included, goes through a runner.  Compiled backends expose ``run_kernel(call)`` (the
kernel contract of :mod:`fastattn._contract`) and are imported lazily, on first use,
so ``import fastattn`` is cheap.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np

from ._config import BACKEND_NAMES
from ._isa import IsaError, select_at_import
from ._naive import naive_attention
from ._tiled import run_tiled

AUTO_ORDER = ("cython", "numba", "naive")
"""The order in which ``"auto"`` looks for a backend."""

SMALL_PROBLEM_SCORES = 8192
"""At or below this many scores (batch x Hq x Lq x Lk), "auto" prefers naive to Numba:
NumPy's few calls cost less than a Numba call's set-up.  The Cython kernel, with its
cached plans, is the fastest at every size, forward and backward.  Measured here
(float32, D=64, 2 cores, medians): (1, 1, 16, 64) naive 53 us, Numba 107 us, Cython
37 us; (1, 8, 64, 64) naive 381 us, Numba 199 us, Cython 76 us; decoding Lq=1, Hq=32,
Hk=8, Lk=256: naive 416 us, Numba 200 us, Cython 115 us, and Lk=65536: Numba 18.0 ms,
Cython 16.7 ms.  Backward at 8192 scores: naive 282 us, Numba 264 us, Cython 145 us."""


@dataclass(frozen=True)
class Backend:
    name: str
    available: bool
    reason: str
    runner: object = None
    run_kernel: object = None  # compiled backends: the kernel contract's entry point
    misconfigured: bool = False  # unavailable because of a setting (FASTATTN_ISA): "auto" refuses

    def run(self, problem, settings, out=None, lse_only=False):
        return self.runner(problem, settings, out, lse_only)


def _naive_runner(problem, settings, out=None, lse_only=False):
    result, lse = naive_attention(problem, lse_only)
    with np.errstate(over="ignore"):  # a float64 lse beyond float32's range becomes inf
        lse = lse.astype(problem.compute_dtype)
    if lse_only:
        return None, lse
    if out is None:
        return result.astype(problem.storage_dtype), lse  # float64 rounded once
    np.copyto(out, result, casting="unsafe")
    return out, lse


def _tiled_runner(run_kernel):
    def runner(problem, settings, out=None, lse_only=False):
        return run_tiled(run_kernel, problem, settings, out, lse_only)
    return runner


@functools.cache
def _load(name):
    if name == "naive":
        return Backend("naive", True, "full-matrix float64 reference", _naive_runner)
    try:
        if name == "numba":
            from ._numba import run_kernel
        else:
            from ._cython import run_kernel
            select_at_import()  # the best instruction-set level, or FASTATTN_ISA's
    except IsaError as error:
        return Backend(name, False, str(error), misconfigured=True)
    except ImportError as error:
        return Backend(name, False, f"cannot be imported: {error}")
    return Backend(name, True, f"tiled {name} kernel", _tiled_runner(run_kernel), run_kernel)


def backend_names():
    return BACKEND_NAMES


def all_backends():
    """Every known backend, available or not."""
    return [_load(name) for name in backend_names()]


def available_backends():
    """Names of the backends that can run here."""
    return [b.name for b in all_backends() if b.available]


def resolve(name, problem=None):
    """Return the :class:`Backend` for ``name``; ``None`` and ``"auto"`` choose for ``problem``."""
    if name is None or name == "auto":
        _refuse_misconfigured()
        return _load(auto_choice(problem))
    if name not in backend_names():
        raise ValueError(f"unknown backend {name!r}; {_summary()}")
    backend = _load(name)
    if not backend.available:
        raise ValueError(f"backend {name!r} is not available: {backend.reason}; {_summary()}")
    return backend


def _refuse_misconfigured():
    """A setting that disables a backend (FASTATTN_ISA) is an error, not a quiet fall-back."""
    for backend in all_backends():
        if backend.misconfigured:
            raise ValueError(f"backend {backend.name!r} is not available: {backend.reason}")


def auto_choice(problem=None, available=None):
    """The backend name "auto" picks for ``problem`` among ``available`` (default: all that run).

    Cython wherever it is available; otherwise Numba, or naive for problems of at most
    ``SMALL_PROBLEM_SCORES`` scores.
    """
    available = available_backends() if available is None else available
    preference = AUTO_ORDER
    if problem is not None and "cython" not in available:
        batch = math.prod(problem.batch_shape)
        lq, lk = problem.q.shape[-2], problem.k.shape[-2]
        if batch * problem.heads * lq * lk <= SMALL_PROBLEM_SCORES:
            preference = ("naive", "numba")
    return next(name for name in preference if name in available)


def _summary():
    parts = [f"{b.name} ({'available' if b.available else b.reason})" for b in all_backends()]
    return "backends: " + ", ".join(parts) + ", or 'auto'"
