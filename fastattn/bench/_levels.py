"""Instruction-set levels: which one each point ran at, and ``--isa``'s choice of levels.

The Cython tile kernels are compiled once per level of ``fastattn._isa.LEVELS`` and one
is chosen at import (the best this CPU runs, or ``FASTATTN_ISA``'s);
``fastattn._isa.use_level`` switches it for a block.  A point records the level its
kernels ran at (:func:`backend_isa`), named by the library that chose it: fastattn's
level for cython, torch's ATen CPU capability for torch, LLVM's host CPU for numba.
"""

import contextlib

LEVEL_NAMES = ("baseline", "avx2", "avx512", "avx512bf16")
"""fastattn's levels, lowest first (the names of ``fastattn._isa.LEVELS``; used when that
module cannot be imported, so that options can still be parsed and explained)."""

ALL = "all"
"""``--isa all``: every level this build and CPU can run."""


def _isa_module():
    """``fastattn._isa``, or None where this fastattn has no ISA dispatch."""
    try:
        from .. import _isa
    except ImportError:
        return None
    return _isa


def known_levels():
    """fastattn's level names, lowest first.

    Examples
    --------
    >>> known_levels()[0]
    'baseline'
    """
    isa = _isa_module()
    return tuple(isa.LEVELS) if isa is not None else LEVEL_NAMES


def supported_levels():
    """The levels this build and CPU can run, lowest first (empty without the Cython backend)."""
    isa = _isa_module()
    return tuple(isa.supported_levels()) if isa is not None else ()


def active_level():
    """The level the Cython kernels run at now, or None (no Cython backend, no dispatch)."""
    isa = _isa_module()
    return isa.active_level() if isa is not None else None


def parse_levels(text):
    """The levels ``--isa`` names: a comma-separated list of level names, or ``all``.

    ``all`` is every supported level (:func:`supported_levels`).  Names are checked
    against :func:`known_levels`; whether this machine runs them is decided when the
    points are planned (those it cannot run are skipped, with the reason).

    Parameters
    ----------
    text : str

    Returns
    -------
    tuple of str
        In the order of :func:`known_levels`, each once.

    Raises
    ------
    ValueError
        For an unknown name, an empty list, or ``all`` where no level can run.

    Examples
    --------
    >>> parse_levels("avx512bf16, baseline")
    ('baseline', 'avx512bf16')
    """
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    if names == {ALL}:
        levels = supported_levels()
        if not levels:
            raise ValueError("--isa all: the Cython backend is unavailable here, so no "
                             "instruction-set level can run")
        return levels
    unknown = sorted(names - set(known_levels()))
    if unknown or not names:
        raise ValueError(f"--isa expects {ALL!r} or levels among {', '.join(known_levels())}; "
                         f"got {text!r}")
    return tuple(level for level in known_levels() if level in names)


def level_unavailable(level):
    """Why the Cython kernels cannot run at ``level`` here, or None when they can.

    Examples
    --------
    >>> level_unavailable("avx9") is None
    False
    """
    supported = supported_levels()
    if not supported:
        return ("no instruction-set dispatch in this fastattn (the Cython backend is "
                "unavailable or predates it)")
    if level not in supported:
        return f"level {level} cannot run here (this build and CPU run {', '.join(supported)})"
    return None


def level_context(level):
    """A context manager running the Cython kernels at ``level`` (None: leave it as it is)."""
    if level is None:
        return contextlib.nullcontext()
    isa = _isa_module()
    if isa is None:
        raise RuntimeError(f"cannot run at level {level!r}: this fastattn has no "
                           f"instruction-set dispatch")
    return isa.use_level(level)


def backend_isa(backend):
    """The instruction-set level ``backend``'s kernels run at now, as its library names it.

    ``"cython"``: fastattn's level (``fastattn._isa.active_level()``); ``"torch"``:
    ``torch.backends.cpu.get_cpu_capability()`` (e.g. ``"AVX2"``, ``"AVX512"``);
    ``"numba"``: ``"native (<LLVM host CPU>)"`` (numba compiles for the host); anything
    else (naive: NumPy and its BLAS in float64) None.

    Examples
    --------
    >>> backend_isa("naive") is None
    True
    """
    if backend == "cython":
        return active_level()
    if backend == "torch":
        import torch

        capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
        return capability() if capability is not None else None
    if backend == "numba":
        try:
            import llvmlite.binding
        except ImportError:
            return None
        return f"native ({llvmlite.binding.get_host_cpu_name()})"
    return None


def machine_levels():
    """fastattn's levels on this machine, for the report's machine section.

    Returns
    -------
    dict
        ``levels`` (every name), ``supported`` (this build and CPU) and ``active``
        (the level chosen at import, or None).

    Examples
    --------
    >>> sorted(machine_levels())
    ['active', 'levels', 'supported']
    """
    return {"levels": list(known_levels()), "supported": list(supported_levels()),
            "active": active_level()}
