"""Run-time configuration: environment variables and :func:`config_context`.

Settings are read in this order: the innermost active :func:`config_context`, then
the environment variables ``FASTATTN_BACKEND`` and ``FASTATTN_NUM_THREADS``, then
the defaults (automatic backend, every core this process may use).  Kernels never
read configuration: the API reads it once per call and passes plain values on.
"""

import contextlib
import contextvars
import functools
import os

_SETTINGS = ("backend", "num_threads", "block_q", "block_k")

BACKEND_NAMES = ("naive", "numba", "cython")
"""Every backend fastattn knows (the registry in _backends loads them); here, so that a
setting is checked when it is read, without importing the backends."""
_overrides = contextvars.ContextVar("fastattn_config", default={})


@functools.cache
def available_cores():
    """The number of cores this process may run on (read once: a small call should not pay
    a system call; ``available_cores.cache_clear()`` after changing the affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_forked_child = False


def _note_fork():
    global _forked_child
    _forked_child = True
    available_cores.cache_clear()  # a child may be given other cores


os.register_at_fork(after_in_child=_note_fork)


def thread_budget(requested):
    """Threads a compiled call may use: ``requested``, capped at the cores.

    In a process forked from another (``multiprocessing``'s default on Linux) it is 1:
    the OpenMP runtime that the kernels' thread teams come from cannot start threads
    again after a fork, so a forked child runs the kernels serially.
    """
    return 1 if _forked_child else max(1, min(requested, available_cores()))


def _from_environment():
    """The settings of the environment variables (a shared dict: copy it before changing it)."""
    return _parse_environment(os.environ.get("FASTATTN_BACKEND", ""),
                              os.environ.get("FASTATTN_NUM_THREADS", ""))


@functools.lru_cache(maxsize=16)
def _parse_environment(backend, threads):
    """Checked settings from the variables' text (cached: every call reads them)."""
    settings = {}
    backend = backend.strip()
    if backend:
        settings["backend"] = _backend_name("FASTATTN_BACKEND", backend)
    threads = threads.strip()
    if threads:
        settings["num_threads"] = _positive_int("FASTATTN_NUM_THREADS", threads)
    return settings


def _backend_name(name, value):
    if value not in BACKEND_NAMES + ("auto",):
        known = ", ".join(repr(b) for b in BACKEND_NAMES + ("auto",))
        raise ValueError(f"{name}={value!r} is not a fastattn backend; the backends are "
                         f"{known} (fastattn.show_config() says which are available here)")
    return value


def _positive_int(name, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or str(number) != str(value).strip():
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def get_config():
    """Return the settings in force as a dict.

    Returns
    -------
    dict
        ``backend`` (a name or ``"auto"``), ``num_threads`` (int), ``block_q`` and
        ``block_k`` (int, or None for the planner's choice).

    Examples
    --------
    >>> import fastattn
    >>> with fastattn.config_context(num_threads=1):
    ...     fastattn.get_config()["num_threads"]
    1
    """
    settings = {"backend": "auto", "num_threads": available_cores(),
                "block_q": None, "block_k": None}
    settings.update(_from_environment())
    settings.update(_overrides.get())
    return settings


def explicit_settings():
    """The settings a caller set (environment variables or :func:`config_context`), as a dict."""
    return {**_from_environment(), **_overrides.get()}


@contextlib.contextmanager
def config_context(**settings):
    """Override settings inside a ``with`` block (thread- and task-local).

    Parameters
    ----------
    backend : str, optional
        ``"naive"``, ``"numba"``, ``"cython"`` or ``"auto"``; used when a call
        passes ``backend=None``.
    num_threads : int, optional
        Threads used by the compiled kernels.
    block_q, block_k : int, optional
        Query rows per task (per head) and keys per block; for tuning and tests.
        Results agree to rounding for any block sizes.

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> q = np.ones((4, 8))
    >>> with fastattn.config_context(backend="naive"):
    ...     fastattn.attention(q, q, q).shape
    (4, 8)
    """
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise TypeError(f"config_context got unknown settings {unknown}; "
                        f"known settings are {list(_SETTINGS)}")
    checked = {}
    for name, value in settings.items():
        if value is None:
            continue
        if name == "backend":
            if not isinstance(value, str):
                raise TypeError(f"backend must be a str, got {type(value).__name__}")
            checked[name] = _backend_name(name, value)
        else:
            checked[name] = _positive_int(name, value)
    token = _overrides.set({**_overrides.get(), **checked})
    try:
        yield
    finally:
        _overrides.reset(token)
