"""Drives a compiled kernel: merge batch axes, plan, run the kernel in rounds, merge parts.

The arrays reaching a kernel are 4-D views ``(B, H, L, D)`` of the caller's data: the
leading batch axes are merged into one without copying, and where NumPy cannot
express that as a view (some broadcast patterns), the outer axes are looped here.
The kernel writes the caller's ``out=`` array itself when its dtype is the compute
dtype.  Long calls run their tasks in rounds (see :func:`fastattn._plan.rounds`) so
that Ctrl-C interrupts them within a fraction of a second.
"""

import numpy as np

from . import _plan
from ._config import thread_budget
from ._contract import MASK_NONE, KernelCall
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
    plan = make_plan(*_plan_arguments(problem, q, k, n_threads, block_q, block_k))
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


def _plan_arguments(problem, q, k, n_threads, block_q, block_k):
    return (q.shape[0], k.shape[1], problem.group, q.shape[2], k.shape[2], problem.band,
            n_threads, block_q, block_k)


class RepeatedRun:
    """:func:`run_tiled` for one shape of problem, with what it derives once and for all.

    For a problem without a mask whose ``q``, ``k`` and ``v`` are 4-D with one batch axis,
    :func:`run_tiled` hands the kernel the arrays themselves with the plan of
    ``make_plan(...)``.  Calling this object with arrays of the same shapes, strides and
    dtype does the same (same plan, same kernel call, same rounds, same merge), so the
    bits are those of :func:`run_tiled`; only the bookkeeping is skipped.  Immutable:
    threads may share it.
    """

    __slots__ = ("run_kernel", "plan_arguments", "scale", "out_shape", "empty_parts",
                 "_costed")

    def __init__(self, run_kernel, problem, settings):
        self.run_kernel = run_kernel
        self.plan_arguments = _plan_arguments(problem, problem.q, problem.k,
                                              thread_budget(settings["num_threads"]),
                                              settings["block_q"], settings["block_k"])
        self.scale = problem.scale
        self.out_shape = problem.out_shape
        plan = make_plan(*self.plan_arguments)
        dtype = problem.compute_dtype
        self.empty_parts = (np.zeros((0, plan.max_rows, self.out_shape[3]), dtype),
                            np.zeros((0, plan.max_rows), dtype))
        self._costed = (plan, int(plan.task_costs.sum()))

    @staticmethod
    def applies(problem):
        """Whether the problem's arrays reach the kernel unchanged (see the class docstring)."""
        return (problem.mask is None and len(problem.batch_shape) == 1
                and all(x.ndim == 4 for x in (problem.q, problem.k, problem.v)))

    def __call__(self, q, k, v):
        """``(out, lse)`` for arrays laid out as those of the problem this was made for."""
        plan = make_plan(*self.plan_arguments)  # cached: a dictionary look-up
        costed = self._costed
        total = costed[1] if costed[0] is plan else int(plan.task_costs.sum())
        dtype = q.dtype
        out = np.empty(self.out_shape, dtype)
        lse = np.empty(self.out_shape[:3], dtype)
        if plan.n_parts:
            # zeros: the merge reads every row of a slot, used or not
            part_out = np.zeros((plan.n_parts, plan.max_rows, self.out_shape[3]), dtype)
            part_lse = np.zeros((plan.n_parts, plan.max_rows), dtype)
        else:
            part_out, part_lse = self.empty_parts  # empty: never written
        call = KernelCall(q, k, v, None, MASK_NONE, self.scale, plan, out, lse, part_out,
                          part_lse)
        if total <= _plan.ROUND_COST * plan.n_workers:  # what rounds() decides
            self.run_kernel(call)
        else:
            for part in rounds(plan):
                call.plan = part
                self.run_kernel(call)
        if plan.n_parts:
            merge_split_parts(plan, part_out, part_lse, out, lse)
        return out, lse


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
