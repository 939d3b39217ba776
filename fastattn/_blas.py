"""SciPy's BLAS, which the Numba kernels call through ``np.dot``: one thread per worker.

Inside the kernels' parallel region every worker calls BLAS, so BLAS must run on one
thread there, or the cores are oversubscribed.  The controller is made after SciPy's
BLAS is loaded, so that it controls that library too (NumPy's is loaded earlier).

Which kernels OpenBLAS runs is decided when it loads, from the CPU or from the
environment variable ``OPENBLAS_CORETYPE``; fastattn leaves that to the user (see
docs/benchmarks.md: forcing ``Haswell`` on an AVX-512 CPU halves the block products).
"""

import functools


def single_threaded():
    """Context manager: every loaded BLAS on one thread (restored on exit)."""
    return _controller().limit(limits=1, user_api="blas")


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
