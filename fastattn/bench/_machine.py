"""The machine a benchmark ran on: CPU, cores, memory, library versions, matmul ceiling."""

import os
import platform
import statistics
import time
from importlib import metadata

from .._config import available_cores

_LIBRARIES = ("numpy", "scipy", "numba", "threadpoolctl", "torch", "Cython")


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux), or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


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
        ``cpu``, ``logical_cpus``, ``available_cores``, ``memory_gib``, ``platform``,
        ``python``, ``versions`` (name -> version or None), ``blas`` (list of
        ``"api version (n threads)"``) and ``backends`` (name -> availability).

    Examples
    --------
    >>> info = machine_info()
    >>> info["available_cores"] >= 1
    True
    """
    from .._backends import all_backends

    total = total_memory_bytes()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "available_cores": available_cores(),
        "memory_gib": None if total is None else round(total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("fastattn",) + _LIBRARIES},
        "blas": _blas_description(),
        "backends": {b.name: ("available" if b.available else f"unavailable: {b.reason}")
                     for b in all_backends()},
    }


def _blas_description():
    try:
        from .._blas import describe_blas

        return describe_blas()
    except ImportError:  # threadpoolctl missing
        return []


def matmul_gflops(size=4096, dtype="float32", threads=None, repeats=3):
    """Measure the GFLOP/s of one NumPy ``(size, size) @ (size, size)`` product.

    This is the machine's practical ceiling for dense arithmetic: attention cannot
    run faster than the BLAS matrix product it is made of.

    Parameters
    ----------
    size : int, default 4096
    dtype : str, default "float32"
    threads : int, optional
        BLAS threads (threadpoolctl); default: BLAS's own setting.
    repeats : int, default 3
        Timed calls after one warm-up; the median is used.

    Returns
    -------
    dict
        ``size``, ``dtype``, ``threads``, ``median_s`` and ``gflops`` (``2 size³ /
        median``).

    Examples
    --------
    >>> matmul_gflops(64, repeats=1)["gflops"] > 0
    True
    """
    import contextlib

    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.dtype(dtype))
    b = rng.standard_normal((size, size), dtype=np.dtype(dtype))
    result = np.empty_like(a)
    limit = contextlib.nullcontext()
    if threads is not None:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=threads, user_api="blas")
    with limit:
        np.matmul(a, b, out=result)
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            np.matmul(a, b, out=result)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"size": size, "dtype": str(np.dtype(dtype)), "threads": threads,
            "median_s": median, "gflops": 2.0 * size**3 / median / 1e9}
