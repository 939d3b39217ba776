"""Drives a compiled backend: merge batch axes, plan, run the kernel, merge split-KV parts.

The arrays reaching a kernel are 4-D views ``(B, H, L, D)`` of the caller's data: the
leading batch axes are merged into one without copying, and where NumPy cannot
express that as a view (some broadcast patterns), the outer axes are looped here.
"""

import numpy as np

from ._plan import make_plan, merge_split_parts


def run_tiled(run_plan, problem, n_threads, block_q=None, block_k=None):
    """Return ``(out, lse)`` of ``problem`` in the compute dtype, computed by ``run_plan``."""
    out = np.empty(problem.out_shape, dtype=problem.compute_dtype)
    lse = np.empty(problem.out_shape[:-1], dtype=problem.compute_dtype)
    arrays = [problem.q, problem.k, problem.v, out, lse]
    if problem.mask is not None:
        arrays.append(problem.mask)
    for views in _batch_views(arrays, len(problem.batch_shape)):
        q, k, v, out_view, lse_view = views[:5]
        mask = views[5] if len(views) > 5 else None
        _run_batch(run_plan, problem, q, k, v, mask, out_view, lse_view,
                   n_threads, block_q, block_k)
    return out, lse


def _run_batch(run_plan, problem, q, k, v, mask, out, lse, n_threads, block_q, block_k):
    lq, lk = q.shape[2], k.shape[2]
    plan = make_plan(q.shape[0], k.shape[1], problem.group, lq, lk, problem.band, n_threads,
                     block_q, block_k)
    part_out = np.empty((plan.n_parts, plan.max_rows, v.shape[3]), dtype=out.dtype)
    part_lse = np.empty((plan.n_parts, plan.max_rows), dtype=out.dtype)
    run_plan(plan, q, k, v, mask, problem.mask_is_bool, out, lse, part_out, part_lse,
             problem.scale)
    merge_split_parts(plan, part_out, part_lse, out, lse)


def _batch_views(arrays, batch_ndim):
    """Yield lists of views of ``arrays`` whose ``batch_ndim`` leading axes are merged into one."""
    merged = [_merge_leading(a, batch_ndim) for a in arrays]
    if all(m is not None for m in merged):
        yield merged
        return
    for i in range(arrays[0].shape[0]):
        yield from _batch_views([a[i] for a in arrays], batch_ndim - 1)


def _merge_leading(array, n_axes):
    if n_axes == 0:
        return array[None]
    try:
        return np.reshape(array, (-1,) + array.shape[n_axes:], copy=False)
    except ValueError:
        return None
