"""The Numba backend: JIT-compiled tiled kernel, parallel over the plan's workers."""

import contextlib
import threading

import numba
import numpy as np

from .._blas import single_threaded
from .._contract import MASK_NONE, decode_heads
from .halves import as_kernel_array
from .kernel import run_tasks_parallel, run_worker

__all__ = ["run_kernel"]

_WORKQUEUE_LOCK = threading.Lock()


def run_kernel(call):
    """Run a :class:`~fastattn._contract.KernelCall`; writes its ``out`` and ``lse``.

    ``q``, ``k``, ``v`` and ``out`` are of the storage dtype, the rest of the compute
    dtype (that of ``lse``); the scratch tiles are of the compute dtype.
    """
    plan, q = call.plan, as_kernel_array(call.q)
    dtype = call.lse.dtype  # the compute dtype
    workers, rows, block_k = plan.n_workers, plan.max_rows, plan.block_k
    head_dim, value_dim = q.shape[3], call.value_dim
    # a decoding task serves several kv heads where their rows lie side by side
    heads = decode_heads(call.k, call.v, plan.group) if rows == plan.group else 1
    state_rows = max(rows, heads * plan.group)
    # scores of a block: heads decoded together take max(block_k // heads, 1) keys each
    scores = rows * max(block_k, heads)
    mask = call.mask if call.mask_kind != MASK_NONE else np.zeros((1, 1, 1, 1), dtype)
    v = as_kernel_array(call.v) if call.v is not None else np.zeros((1, 1, 1, 0), q.dtype)
    out = as_kernel_array(call.out) if call.out is not None else np.zeros((1, 1, 1, 0), q.dtype)
    part_out = call.part_out if call.part_out is not None else np.zeros((0, rows, 0), dtype)
    scratch = (np.empty((workers, state_rows, head_dim), dtype),
               np.empty((workers, block_k, head_dim), dtype),
               np.empty((workers, block_k, value_dim), dtype),
               np.empty((workers, scores), dtype),  # key-major scores
               np.empty((workers, rows, value_dim), dtype),
               np.empty((workers, state_rows, value_dim), dtype),
               np.empty((workers, 3, state_rows)),  # running max, running sum, rescale factor
               np.empty((workers, state_rows), dtype),  # max of the current block
               np.empty((workers, scores), dtype=np.int64),  # exp scratch
               softcap_scratch(call.modifiers, workers, scores, dtype),
               np.empty((workers, block_k), np.int64))  # flat indices of a block's rows
    arguments = (*flat_view(q), *flat_view(as_kernel_array(call.k)), *flat_view(v),
                 *block_table(call), *flat_view(mask),
                 call.mask_kind, *flat_view(out, writeable=True), call.lse, part_out,
                 call.part_lse, _writeable(plan.tasks), _writeable(plan.worker_starts),
                 plan.group, block_k, plan.band.lo, plan.band.hi, dtype.type(call.scale),
                 call.out is None, *modifier_arguments(call.modifiers, dtype), heads,
                 *scratch)
    # Workers call BLAS (np.dot) from inside the loop: one BLAS thread each.
    with single_threaded():
        if workers == 1:  # no thread team: also what a forked child runs
            run_worker(0, *arguments)
        else:
            run_parallel(run_tasks_parallel, workers, arguments)


def block_table(call):
    """``(pages, page_size)`` for the kernels: the paged cache's block table and its page
    size (``k.shape[2]``), or a ``(1, 1)`` table and 0 without pages (one signature)."""
    if call.pages is None:
        return np.zeros((1, 1), np.int64), np.int64(0)
    pages = _writeable(np.ascontiguousarray(call.pages, np.int64))
    return pages, np.int64(call.k.shape[2])


def modifier_arguments(modifiers, dtype):
    """``(softcap, alibi, diagonal)`` for the kernels, of the same types with or without them.

    ``softcap`` is a scalar of the compute dtype (0: none), ``alibi`` the slopes as a
    writeable contiguous array of the compute dtype (empty: none), ``diagonal`` an int64:
    one compiled signature per dtype either way.
    """
    slopes = modifiers.alibi_slopes
    alibi = (np.zeros(0, dtype) if slopes is None
             else _writeable(np.ascontiguousarray(slopes, dtype)))
    return dtype.type(modifiers.softcap), alibi, np.int64(modifiers.diagonal)


def softcap_scratch(modifiers, workers, size, dtype):
    """Per-worker tiles of the softcap's derivative: ``size`` each, none without a softcap."""
    return np.empty((workers, size if modifiers.softcap else 0), dtype)


def _writeable(array):
    """``array``, copied if read-only (a cached plan's): Numba compiles read-only arrays apart."""
    return array if array.flags.writeable else array.copy()


def run_parallel(kernel, workers, arguments):
    """Call a ``parallel=True`` kernel with Numba's thread count set to ``workers``."""
    previous = numba.get_num_threads()  # a per-thread setting in Numba
    numba.set_num_threads(min(workers, numba.config.NUMBA_NUM_THREADS))
    try:
        with _one_caller_at_a_time():
            kernel(*arguments)
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


def flat_view(array, writeable=False):
    """``(buffer, at)``: a 1-D view spanning ``array``'s memory and its geometry.

    ``at = (offset, strides...)`` in elements, so that ``array[i0, i1, ...]`` is
    ``buffer[offset + i0 * at[1] + i1 * at[2] + ...]``; strides may be zero or
    negative.  One buffer type for every layout keeps Numba to one compilation.
    Inputs are read-only views; ``writeable`` keeps an output's write access (its
    strides are whole elements, as the arrays fastattn writes always have).
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
    size = high - low + 1 if array.size else 0
    buffer = np.lib.stride_tricks.as_strided(lowest, shape=(size,), strides=(itemsize,),
                                             writeable=writeable)
    return buffer, np.array([-low] + strides, dtype=np.int64)
