"""The Numba backend: JIT-compiled tiled kernel, parallel over the plan's workers."""

import contextlib
import threading

import numba
import numpy as np

from .._blas import single_threaded
from .kernel import MASK_ADD, MASK_KEEP, MASK_NONE, run_tasks

__all__ = ["run_plan"]

_WORKQUEUE_LOCK = threading.Lock()


def run_plan(plan, q, k, v, mask, mask_is_bool, out, lse, part_out, part_lse, scale):
    """Run ``plan`` over 4-D views (see :mod:`fastattn._plan`); writes ``out`` and ``lse``."""
    dtype = q.dtype
    workers, rows, block_k = plan.n_workers, plan.max_rows, plan.block_k
    head_dim, value_dim = q.shape[3], v.shape[3]
    if mask is None:
        mask, mask_kind = np.zeros((1, 1, 1, 1), dtype=dtype), MASK_NONE
    else:
        mask_kind = MASK_KEEP if mask_is_bool else MASK_ADD
    scratch = (np.empty((workers, rows, head_dim), dtype),
               np.empty((workers, block_k, head_dim), dtype),
               np.empty((workers, block_k, value_dim), dtype),
               np.empty((workers, rows * block_k), dtype),  # key-major scores
               np.empty((workers, rows, value_dim), dtype),
               np.empty((workers, rows, value_dim), dtype),
               np.empty((workers, 3, rows)),  # running max, running sum, rescale factor
               np.empty((workers, rows), dtype),  # max of the current block
               np.empty((workers, rows * block_k), dtype=np.int64))  # exp scratch

    previous = numba.get_num_threads()  # a per-thread setting in Numba
    numba.set_num_threads(min(workers, numba.config.NUMBA_NUM_THREADS))
    try:
        # Every worker calls BLAS (np.dot) inside the parallel region: one BLAS thread each.
        with single_threaded(), _one_caller_at_a_time():
            run_tasks(*flat_view(q), *flat_view(k), *flat_view(v), *flat_view(mask),
                      mask_kind, out, lse, part_out, part_lse, plan.tasks,
                      plan.worker_starts, plan.group, block_k, plan.band_lo, plan.band_hi,
                      dtype.type(scale), *scratch)
    finally:
        numba.set_num_threads(previous)


def _one_caller_at_a_time():
    """A lock where Numba runs on its "workqueue" threading layer, else nothing.

    That layer (Numba's fallback when neither OpenMP nor TBB is found) aborts the
    process when two threads enter parallel code at once, as a thread pool or Dask's
    threaded scheduler would.  Before the first parallel call the layer is not chosen
    yet, so that call takes the lock too.
    """
    try:
        layer = numba.threading_layer()
    except ValueError:
        return _WORKQUEUE_LOCK
    return _WORKQUEUE_LOCK if layer == "workqueue" else contextlib.nullcontext()


def flat_view(array):
    """``(buffer, at)``: a read-only 1-D view spanning ``array``'s memory and its geometry.

    ``at = (offset, strides...)`` in elements, so that ``array[i0, i1, ...]`` is
    ``buffer[offset + i0 * at[1] + i1 * at[2] + ...]``; strides may be zero or
    negative.  One buffer type for every layout keeps Numba to one compilation.
    """
    itemsize = array.itemsize
    if any(s % itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    strides = [s // itemsize if n > 1 else 0 for n, s in zip(array.shape, array.strides)]
    low = sum((n - 1) * s for n, s in zip(array.shape, strides) if s < 0)
    high = sum((n - 1) * s for n, s in zip(array.shape, strides) if s > 0)
    corner = tuple(slice(n - 1, n) if s < 0 else slice(0, 1)
                   for n, s in zip(array.shape, strides))
    lowest = array[corner]  # a view that starts at the lowest address
    buffer = np.lib.stride_tricks.as_strided(lowest, shape=(high - low + 1,),
                                             strides=(itemsize,), writeable=False)
    return buffer, np.array([-low] + strides, dtype=np.int64)
