"""The Cython backend (built by setup.py); importing fails cleanly when it was not built.

Each extension carries the kernel contract's constants compiled in (``_contract.pxi``);
an extension that disagrees with :mod:`fastattn._contract` (a stale build) is refused
at import by :func:`check_contract`, which marks the backend unavailable with the reason.
The instruction-set level of the tile kernels is selected by :mod:`fastattn._isa`
when the backend registry loads this package.
"""

from .. import _contract


def check_contract(compiled, module):
    """Raise ImportError where the constants ``compiled`` into ``module`` are not the contract's."""
    stale = {name: value for name, value in compiled.items()
             if getattr(_contract, name) != value}
    if stale:
        raise ImportError(f"{module} disagrees with fastattn._contract on {stale}; rebuild "
                          f"it (pip install . or python setup.py build_ext --inplace)")


from . import _backward, _kernel  # noqa: E402  (ImportError: unavailable)
from ._kernel import COMPILED_CONSTANTS, run_kernel  # noqa: E402,F401

check_contract(COMPILED_CONSTANTS, "fastattn._cython._kernel")
check_contract(_backward.COMPILED_CONSTANTS, "fastattn._cython._backward")
