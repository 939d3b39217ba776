"""The machine a benchmark ran on: CPU, vector instructions, cores, memory, library versions.

(The matmul reference the backends are compared with is measured by :mod:`._reference`.)
"""

import os
import platform
from importlib import metadata

from .._config import available_cores

_LIBRARIES = ("numpy", "scipy", "numba", "threadpoolctl", "torch", "Cython")

SIMD_FLAGS = ("sse4_2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512bw", "avx512vl",
              "avx512dq", "avx512_bf16", "avx512_fp16")
"""The x86 vector-instruction flags a report names (where the CPU has them)."""


def _cpuinfo(field):
    """The first value of ``field`` in ``/proc/cpuinfo``, or None (not Linux, no field)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip().lower() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux), or ``platform.processor()``."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_simd():
    """The flags of :data:`SIMD_FLAGS` this CPU has (empty when unknown).

    Examples
    --------
    >>> set(cpu_simd()) <= set(SIMD_FLAGS)
    True
    """
    flags = set((_cpuinfo("flags") or "").split())
    return [flag for flag in SIMD_FLAGS if flag in flags]


def total_memory_bytes():
    """Physical memory of the machine in bytes, or None when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().total


def default_memory_budget_gib(fraction=0.25):
    """A quarter (``fraction``) of the machine's memory in GiB; 4 GiB when it is unknown."""
    total = total_memory_bytes()
    return 4.0 if total is None else round(fraction * total / 2**30, 2)


def _version(name):
    if name == "fastattn":
        from .. import __version__

        return __version__
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info():
    """Describe this machine and the software for a benchmark report.

    Returns
    -------
    dict
        ``cpu``, ``cpu_vendor`` (``/proc/cpuinfo``'s ``vendor_id``, or None),
        ``cpu_simd`` (:func:`cpu_simd`), ``logical_cpus``, ``available_cores``,
        ``memory_gib``, ``platform``, ``python``, ``versions`` (name -> version or
        None), ``blas`` (one line per loaded BLAS: version, kernels, threads, and
        any ``OPENBLAS_CORETYPE`` override), ``backends`` (name -> availability) and
        ``isa`` (fastattn's instruction-set levels:
        :func:`fastattn.bench._levels.machine_levels`).

    Examples
    --------
    >>> info = machine_info()
    >>> info["available_cores"] >= 1
    True
    """
    from .._backends import all_backends
    from ._levels import machine_levels

    total = total_memory_bytes()
    return {
        "cpu": cpu_model(),
        "cpu_vendor": _cpuinfo("vendor_id"),
        "cpu_simd": cpu_simd(),
        "logical_cpus": os.cpu_count(),
        "available_cores": available_cores(),
        "memory_gib": None if total is None else round(total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("fastattn",) + _LIBRARIES},
        "blas": _blas_description(),
        "backends": {b.name: ("available" if b.available else f"unavailable: {b.reason}")
                     for b in all_backends()},
        "isa": machine_levels(),
    }


def _blas_description():
    try:
        from .._blas import describe_blas

        return describe_blas()
    except ImportError:  # threadpoolctl missing
        return []
