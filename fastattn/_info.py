"""``fastattn.show_config()``: versions, threads and which backends can run, and why."""

import platform
import sys
from importlib import metadata

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
    lines.append("blas")
    lines += [f"  {line}" for line in describe_blas()]
    print("\n".join(lines), file=file)
