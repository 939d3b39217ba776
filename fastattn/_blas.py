"""SciPy's BLAS, which the Numba kernels call through ``np.dot``: one thread per worker.

Inside the kernels' parallel region every worker calls BLAS, so BLAS must run on one
thread there, or the cores are oversubscribed.  The controller is made after SciPy's
BLAS is loaded, so that it controls that library too (NumPy's is loaded earlier).

Which kernels OpenBLAS runs is decided when it loads, from the CPU or from the
environment variable ``OPENBLAS_CORETYPE``; fastattn leaves that to the user (see
docs/benchmarks.md: forcing ``Haswell`` on an AVX-512 CPU halves the block products).
"""

import contextlib
import functools
import threading

_lock = threading.Lock()
_holders = 0  # calls inside single_threaded() right now, in any thread
_limiter = None  # threadpoolctl's record of the limits to restore
_local_counts = []  # what _local_setters() replaced, to restore


@contextlib.contextmanager
def single_threaded():
    """Context manager: every loaded BLAS on one thread while any caller is inside.

    The first caller to enter sets the limit and the last to leave restores it, so
    concurrent callers (threads, Dask's threaded scheduler) can neither restore each
    other's limits out of order nor leave BLAS on one thread after the last call.
    """
    global _holders, _limiter, _local_counts
    with _lock:
        if _holders == 0:
            _limiter = _controller().limit(limits=1, user_api="blas")
            _local_counts = [set_local(1) for set_local in _local_setters()]
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                for set_local, count in zip(_local_setters(), _local_counts):
                    set_local(count)
                _limiter.restore_original_limits()
                _limiter = None


@functools.cache
def _local_setters():
    """``openblas_set_num_threads_local`` of each loaded OpenBLAS that has it.

    Recent OpenBLAS has this second thread count (despite its name, one value for the
    process): with only ``openblas_set_num_threads(1)``, a call from a non-main Python
    thread still runs multi-threaded (slower, and rounded otherwise than the same call
    from the main thread).
    """
    import ctypes

    setters = []
    for library in _controller().info():
        try:
            setter = ctypes.CDLL(library["filepath"]).openblas_set_num_threads_local
        except (OSError, AttributeError, KeyError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        setters.append(setter)
    return setters


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS that the kernels call)

    return ThreadpoolController()


def describe_blas():
    """One line per loaded BLAS (name, version, kernels, threads) and any core-type override."""
    import os

    from threadpoolctl import threadpool_info

    lines = [f"{lib.get('internal_api')} {lib.get('version')}, {lib.get('architecture')} "
             f"kernels, {lib.get('num_threads')} threads"
             for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if os.environ.get("OPENBLAS_CORETYPE"):
        lines.append(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} (set in the "
                     f"environment: OpenBLAS uses those kernels whatever the CPU)")
    return lines
