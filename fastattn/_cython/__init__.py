"""The Cython backend (built by setup.py); importing fails cleanly when it was not built.

The extension carries the kernel contract's constants compiled in; a build that
disagrees with :mod:`fastattn._contract` (a stale build) is refused here, which
marks the backend unavailable with the reason.
"""

from .. import _contract
from ._kernel import COMPILED_CONSTANTS, run_kernel  # noqa: F401  (ImportError: unavailable)


def _check_contract():
    stale = {name: value for name, value in COMPILED_CONSTANTS.items()
             if getattr(_contract, name) != value}
    if stale:
        raise ImportError(f"the compiled kernel disagrees with fastattn._contract on {stale}; "
                          f"rebuild it (pip install . or python setup.py build_ext --inplace)")


_check_contract()
