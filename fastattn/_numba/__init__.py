"""The Numba backend: JIT-compiled tiled kernel, parallel over the plan's workers."""

import numba
import numpy as np

from .kernel import MASK_ADD, MASK_KEEP, MASK_NONE, run_tasks

__all__ = ["run_plan"]


def run_plan(plan, q, k, v, mask, mask_is_bool, out, lse, part_out, part_lse, scale):
    """Run ``plan`` over 4-D views (see :mod:`fastattn._plan`); writes ``out`` and ``lse``."""
    dtype = q.dtype
    workers, rows = plan.n_workers, plan.max_rows
    head_dim, value_dim, block_k = q.shape[3], v.shape[3], plan.block_k
    if mask is None:
        mask, mask_kind = np.zeros((1, 1, 1, 1), dtype=np.uint8), MASK_NONE
    else:
        mask_kind = MASK_KEEP if mask_is_bool else MASK_ADD

    previous = numba.get_num_threads()
    numba.set_num_threads(min(workers, numba.config.NUMBA_NUM_THREADS))
    try:
        run_tasks(q, k, v, mask, mask_kind, out, lse, part_out, part_lse,
                  plan.tasks, plan.worker_starts, plan.group, block_k,
                  plan.band_lo, plan.band_hi, dtype.type(scale),
                  np.empty((workers, rows * head_dim), dtype),
                  np.empty((workers, block_k * head_dim), dtype),
                  np.empty((workers, block_k * value_dim), dtype),
                  np.empty((workers, rows * block_k), dtype),
                  np.empty((workers, rows * value_dim), dtype),
                  np.empty((workers, rows * value_dim), dtype),
                  np.empty((workers, 3, rows)),  # running max, running sum, rescale factor
                  np.empty((workers, rows), dtype),  # max of the current block
                  np.empty((workers, rows * block_k), dtype=np.int64))
    finally:
        numba.set_num_threads(previous)
