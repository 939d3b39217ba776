"""Which instruction-set level the Cython tile kernels run at.

One build carries the C tile kernels compiled for every level of :data:`LEVELS` that
its compiler supports (see setup.py).  When the backend registry loads the Cython
backend (:func:`select_at_import`), the best level the CPU supports is chosen, or the
one the environment variable ``FASTATTN_ISA`` names (a lower level, for comparison or
to work around a CPU problem; a level this build or CPU cannot run is an error).  The
two Cython extensions (forward and backward) each hold a selection: the functions here
keep them together.  This module imports the extensions; they never import it.
"""

import contextlib
import os

LEVELS = ("baseline", "avx2", "avx512", "avx512bf16")
"""The instruction-set levels, lowest first: x86-64 (SSE2) or any CPU; AVX2 + FMA + F16C;
AVX-512 F/BW/VL/DQ; AVX-512 with BF16 (``vdpbf16ps`` bfloat16 products)."""

ENVIRONMENT_VARIABLE = "FASTATTN_ISA"


_selected = False  # whether select_at_import has chosen the level of this process


class IsaError(ImportError):
    """``FASTATTN_ISA`` names a level that this build or CPU cannot run."""


def _extensions():
    """The two compiled extensions, or () where the Cython backend was not built."""
    try:
        from ._cython import _backward, _kernel
    except ImportError:
        return ()
    return _kernel, _backward


def built_levels(extensions=None):
    """The levels whose kernels this build carries (in both extensions), lowest first."""
    extensions = _extensions() if extensions is None else extensions
    return tuple(name for index, name in enumerate(LEVELS)
                 if extensions and all(module.level_built(index) for module in extensions))


def supported_levels(extensions=None):
    """The levels this build and this CPU can both run, lowest first.

    Examples
    --------
    >>> from fastattn import _isa
    >>> levels = _isa.supported_levels()
    >>> not levels or levels[0] == "baseline"
    True
    """
    extensions = _extensions() if extensions is None else extensions
    if not extensions:
        return ()
    best = min(module.cpu_level() for module in extensions)
    return tuple(name for name in built_levels(extensions) if LEVELS.index(name) <= best)


def active_level():
    """The level the Cython kernels run at now, or None where they are unavailable."""
    try:
        select_at_import()
    except IsaError:
        return None
    extensions = _extensions()
    return LEVELS[extensions[0].active_level()] if extensions else None


def select(name, extensions=None):
    """Make ``name`` the level of both extensions; ValueError where it cannot run here."""
    extensions = _extensions() if extensions is None else extensions
    if not extensions:
        raise ValueError(f"instruction-set level {name!r}: the Cython backend is not "
                         "available (see fastattn.show_config())")
    supported = supported_levels(extensions)
    if name not in supported:
        known = "" if name in LEVELS else f" (the levels are {', '.join(LEVELS)})"
        raise ValueError(f"instruction-set level {name!r} cannot run here{known}; this build "
                         f"and CPU support {', '.join(supported) or 'none'}")
    for module in extensions:
        if not module.select_level(LEVELS.index(name)):
            raise RuntimeError(f"{module.__name__} refused level {name!r}")


@contextlib.contextmanager
def use_level(name):
    """Run the Cython kernels at level ``name`` inside the block (tests, benchmarks).

    Process-wide, like ``FASTATTN_ISA``: not for use while other threads run kernels.

    Examples
    --------
    >>> from fastattn import _isa
    >>> if _isa.supported_levels():
    ...     with _isa.use_level("baseline"):
    ...         assert _isa.active_level() == "baseline"
    """
    previous = active_level()
    select(name)
    try:
        yield name
    finally:
        select(previous)


def forced_level():
    """The level ``FASTATTN_ISA`` names, or '' where it is not set."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip()


def select_at_import():
    """Once per process: select ``FASTATTN_ISA``'s level, or the best supported one.

    Called by the backend registry when it loads the Cython backend.  Raises IsaError
    (an ImportError: the backend is then unavailable, with the reason) where
    ``FASTATTN_ISA`` names a level that cannot run here.
    """
    global _selected
    extensions = _extensions()
    if _selected or not extensions:
        return
    forced = forced_level()
    try:
        select(forced or supported_levels(extensions)[-1], extensions)
    except ValueError as error:
        raise IsaError(f"{ENVIRONMENT_VARIABLE}={forced}: {error}") from None
    _selected = True
