"""Drives a compiled kernel: merge batch axes, plan, run the kernel in rounds, merge parts.

The arrays reaching a kernel are 4-D views ``(B, H, L, D)`` of the caller's data: the
leading batch axes are merged into one without copying, and where NumPy cannot
express that as a view (some broadcast patterns), the outer axes are looped here.
The kernel writes the caller's ``out=`` array itself when its dtype is the compute
dtype.  Long calls run their tasks in rounds (see :func:`fastattn._plan.rounds`) so
that Ctrl-C interrupts them within a fraction of a second.
"""

import numpy as np

from ._config import thread_budget
from ._contract import KernelCall
from ._merge import merge_split_parts
from ._plan import make_plan, rounds


def run_tiled(run_kernel, problem, settings, out=None, lse_only=False):
    """``(out, lse)`` of ``problem`` in the compute dtype, computed by ``run_kernel``.

    ``out``, when given, is a ``problem.out_shape`` array of the compute dtype that
    receives the result; with ``lse_only`` no output is computed and ``out`` is None.
    """
    dtype = problem.compute_dtype
    if out is None and not lse_only:
        out = np.empty(problem.out_shape, dtype=dtype)
    lse = np.empty(problem.out_shape[:-1], dtype=dtype)
    arrays = {"q": problem.q, "k": problem.k, "lse": lse}
    if not lse_only:
        arrays.update(v=problem.v, out=out)
    if problem.mask is not None:
        arrays["mask"] = problem.mask
    n_threads = thread_budget(settings["num_threads"])
    for views in _batch_views(arrays, len(problem.batch_shape)):
        _run_batch(run_kernel, problem, views, n_threads, settings["block_q"],
                   settings["block_k"])
    return out, lse


def _run_batch(run_kernel, problem, views, n_threads, block_q, block_k):
    q, k, lse = views["q"], views["k"], views["lse"]
    out = views.get("out")
    plan = make_plan(q.shape[0], k.shape[1], problem.group, q.shape[2], k.shape[2],
                     problem.band, n_threads, block_q, block_k)
    value_dim = 0 if out is None else out.shape[3]
    call = KernelCall(q=q, k=k, v=views.get("v"), mask=views.get("mask"),
                      mask_kind=problem.mask_kind, scale=problem.scale, plan=plan, out=out,
                      lse=lse,
                      # zeros: the merge reads every row of a slot, used or not
                      part_out=np.zeros((plan.n_parts, plan.max_rows, value_dim), q.dtype),
                      part_lse=np.zeros((plan.n_parts, plan.max_rows), q.dtype))
    for part in rounds(plan):  # Python runs between rounds: a pending Ctrl-C is raised
        call.plan = part
        run_kernel(call)
    merge_split_parts(plan, call.part_out, call.part_lse, out, lse)


def _batch_views(arrays, batch_ndim):
    """Yield dicts of views of ``arrays`` whose ``batch_ndim`` leading axes are merged into one."""
    merged = {name: _merge_leading(a, batch_ndim) for name, a in arrays.items()}
    if all(m is not None for m in merged.values()):
        yield merged
        return
    length = arrays["q"].shape[0]
    for i in range(length):
        yield from _batch_views({name: a[i] for name, a in arrays.items()}, batch_ndim - 1)


def _merge_leading(array, n_axes):
    if n_axes == 0:
        return array[None]
    try:
        return np.reshape(array, (-1,) + array.shape[n_axes:], copy=False)
    except ValueError:
        return None
