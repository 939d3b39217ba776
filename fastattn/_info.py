"""``fastattn.show_config()``: versions, threads and which backends can run, and why."""

import platform
import sys
from importlib import metadata

from . import _isa
from ._backends import all_backends
from ._blas import describe_blas
from ._config import get_config
from ._version import __version__


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def show_config(file=None):
    """Print the versions, thread settings and backend availability.

    Parameters
    ----------
    file : file-like, optional
        Where to print; default ``sys.stdout``.

    Examples
    --------
    >>> import fastattn
    >>> fastattn.show_config()  # doctest: +ELLIPSIS
    fastattn ...
    """
    file = file or sys.stdout
    settings = get_config()

    lines = [f"fastattn {__version__}",
             f"python   {platform.python_version()} ({platform.machine()})"]
    lines += [f"{name:<8} {_version(name)}"
              for name in ("numpy", "scipy", "numba", "threadpoolctl", "torch")]
    lines.append("settings")
    lines += [f"  {key:<12} {value}" for key, value in settings.items()]
    lines.append("backends")
    lines += [f"  {b.name:<8} {'available' if b.available else 'unavailable'}: {b.reason}"
              for b in all_backends()]
    lines.append("cpu dispatch (Cython tile kernels)")
    lines += [f"  {line}" for line in _describe_isa()]
    lines.append("blas")
    lines += [f"  {line}" for line in describe_blas()]
    print("\n".join(lines), file=file)


def _describe_isa():
    """The instruction-set level the Cython kernels run at, and what else could run."""
    active = _isa.active_level()
    if active is None:
        return ["not available (the Cython backend is not)"]
    forced = _isa.forced_level()
    return [f"running    {active}" + (f" ({_isa.ENVIRONMENT_VARIABLE}={forced})" if forced else
                                      " (the best this CPU supports)"),
            f"supported  {', '.join(_isa.supported_levels())}",
            f"built      {', '.join(_isa.built_levels())}"]
