"""Peak memory of one call: tracemalloc's view and the process's resident set (RSS).

Two views, because neither sees everything:

- ``tracemalloc`` counts Python and NumPy allocations exactly (NumPy reports its
  data buffers to it), but not memory a compiled kernel or torch allocates itself.
- The RSS high-water mark sees every page the process touched.  On Linux it is
  reset to the current RSS just before the call (``/proc/self/clear_refs``), so its
  rise is the call's peak; elsewhere a sampling thread (psutil) or
  ``getrusage(ru_maxrss)`` stands in, and the method used is reported.
"""

import gc
import resource
import sys
import threading
import tracemalloc

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_bytes(key):
    with open(_STATUS) as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in {_STATUS}")


def _reset_high_water_mark():
    """Reset the kernel's RSS high-water mark to the current RSS; False if impossible."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        _status_bytes("VmHWM")
    except OSError:
        return False
    return True


def _maxrss_bytes():
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss():
    """The resident set size of this process in bytes, or None when unknown."""
    try:
        return _status_bytes("VmRSS")
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


class _Sampler:
    """Polls the RSS in a thread (psutil), keeping the largest value seen."""

    def __init__(self, interval=0.0005):
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def measure_peak(function):
    """Call ``function()`` once and measure the peak memory it needed.

    Parameters
    ----------
    function : callable
        Called with no arguments; its result is returned.

    Returns
    -------
    result : object
        What ``function`` returned.
    memory : dict
        ``traced_bytes`` (tracemalloc peak during the call), ``rss_bytes`` (peak
        RSS above the RSS before the call, or None when it cannot be measured) and
        ``rss_method`` (``"hwm-reset"``, ``"psutil-sampling"``, ``"ru_maxrss"`` or
        ``"unavailable"``).  Memory held before the call (the inputs) is not
        counted; the result is.

    Examples
    --------
    >>> import numpy as np
    >>> _, memory = measure_peak(lambda: np.ones(1_000_000))
    >>> memory["traced_bytes"] >= 8_000_000
    True
    """
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    traced_before = tracemalloc.get_traced_memory()[0]
    baseline = current_rss()
    method, sampler = "unavailable", None
    if baseline is not None and _reset_high_water_mark():
        method = "hwm-reset"
    else:
        try:
            sampler = _Sampler()
            method = "psutil-sampling"
        except ImportError:
            method = "ru_maxrss"
        maxrss_before = _maxrss_bytes()
    try:
        if sampler is not None:
            with sampler:
                result = function()
        else:
            result = function()
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()

    rss = None
    if method == "hwm-reset":
        rss = _status_bytes("VmHWM") - baseline
    elif method == "psutil-sampling":
        rss = sampler.peak - (baseline if baseline is not None else sampler.peak)
    elif baseline is not None:
        # ru_maxrss only tells something when the call raised the old high-water mark.
        maxrss_after = _maxrss_bytes()
        rss = maxrss_after - baseline if maxrss_after > maxrss_before else None
        method = "ru_maxrss" if rss is not None else "unavailable"
    return result, {"traced_bytes": max(0, traced_peak - traced_before),
                    "rss_bytes": None if rss is None else max(0, rss),
                    "rss_method": method}
