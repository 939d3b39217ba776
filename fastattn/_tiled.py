"""Drives a compiled kernel: merge batch axes, plan, run the kernel in rounds, merge parts.

The arrays reaching a kernel are 4-D views ``(B, H, L, D)`` of the caller's data: the
leading batch axes are merged into one without copying, and where NumPy cannot
express that as a view (some broadcast patterns), the outer axes are looped here.
The kernel writes the caller's ``out=`` array itself when its dtype is the storage
dtype (the result's).  Half inputs reach the kernel in their own dtype; ``lse`` and the
split-KV partials are in the compute dtype (float32 for them).  Long calls run their
tasks in rounds (see :func:`fastattn._plan.rounds`) so that Ctrl-C interrupts them
within a fraction of a second.
"""

import dataclasses
import functools

import numpy as np

from ._config import thread_budget
from ._contract import MASK_NONE, KernelCall
from ._merge import merge_split_parts
from ._plan import in_one_round, make_plan, rounds
from ._sinks import fold_sinks


def run_tiled(run_kernel, problem, settings, out=None, lse_only=False):
    """``(out, lse)`` of ``problem``, computed by ``run_kernel``: ``out`` in the storage
    dtype, ``lse`` in the compute dtype.

    ``out``, when given, is a ``problem.out_shape`` array of the storage dtype that
    receives the result; with ``lse_only`` no output is computed and ``out`` is None.
    """
    if out is None and not lse_only:
        out = np.empty(problem.out_shape, dtype=problem.storage_dtype)
    lse = np.empty(problem.out_shape[:-1], dtype=problem.compute_dtype)
    arrays = {"q": problem.q, "k": problem.k, "lse": lse}
    if not lse_only:
        arrays.update(v=problem.v, out=out)
    run_batches(functools.partial(_run_batch, run_kernel, problem), problem, arrays, settings)
    return out, lse


def run_batches(run_batch, problem, arrays, settings):
    """Call ``run_batch(views, n_threads, block_q, block_k)`` on 4-D views of ``arrays``.

    ``arrays`` (with the problem's mask added) have the problem's batch axes first;
    ``views`` holds them with those axes merged into one (see :func:`_batch_views`).
    """
    if problem.mask is not None:
        arrays = {**arrays, "mask": problem.mask}
    n_threads = thread_budget(settings["num_threads"])
    for views in _batch_views(arrays, len(problem.batch_shape)):
        run_batch(views, n_threads, settings["block_q"], settings["block_k"])


def _run_batch(run_kernel, problem, views, n_threads, block_q, block_k):
    q, k, lse = views["q"], views["k"], views["lse"]
    out = views.get("out")
    plan = make_plan(*_plan_arguments(problem, q, k, n_threads, block_q, block_k))
    value_dim = 0 if out is None else out.shape[3]
    call = KernelCall(q=q, k=k, v=views.get("v"), mask=views.get("mask"),
                      mask_kind=problem.mask_kind, scale=problem.scale, plan=plan, out=out,
                      lse=lse, modifiers=problem.modifiers,
                      **part_buffers(plan, value_dim, lse.dtype))
    execute_call(run_kernel, call)


def part_buffers(plan, value_dim, dtype):
    """The split-KV slots of ``plan`` in the compute ``dtype``, zeroed: the merge reads every
    row of a slot."""
    return dict(part_out=np.zeros((plan.n_parts, plan.max_rows, value_dim), dtype),
                part_lse=np.zeros((plan.n_parts, plan.max_rows), dtype))


def execute_call(run_kernel, call):
    """Run ``call``, in rounds when it is long, and fold its split-KV parts and then its
    sinks into its outputs.

    Python runs between rounds, so a pending Ctrl-C is raised there.
    """
    plan = call.plan
    if in_one_round(plan):
        run_kernel(call)
    else:
        for part in rounds(plan):
            call.plan = part
            run_kernel(call)
        call.plan = plan
    if plan.n_parts:
        merge_split_parts(plan, call.part_out, call.part_lse, call.out, call.lse)
    if call.modifiers.sinks is not None:
        fold_sinks(call.out, call.lse, call.modifiers.sinks, head_axis=1)


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

    __slots__ = ("run_kernel", "plan_arguments", "scale", "out_shape", "compute_dtype",
                 "no_parts")

    def __init__(self, run_kernel, problem, settings):
        self.run_kernel = run_kernel
        self.plan_arguments = _plan_arguments(problem, problem.q, problem.k,
                                              thread_budget(settings["num_threads"]),
                                              settings["block_q"], settings["block_k"])
        self.scale = problem.scale
        self.out_shape = problem.out_shape
        self.compute_dtype = problem.compute_dtype
        plan = make_plan(*self.plan_arguments)
        empty = dataclasses.replace(plan, n_parts=0)
        self.no_parts = part_buffers(empty, self.out_shape[3], problem.compute_dtype)

    @staticmethod
    def applies(problem):
        """Whether the problem's arrays reach the kernel unchanged (see the class docstring)."""
        return (problem.mask is None and len(problem.batch_shape) == 1
                and all(x.ndim == 4 for x in (problem.q, problem.k, problem.v)))

    def __call__(self, q, k, v):
        """``(out, lse)`` for arrays laid out as those of the problem this was made for."""
        plan = make_plan(*self.plan_arguments)  # cached: a dictionary look-up
        out = np.empty(self.out_shape, q.dtype)  # the storage dtype
        lse = np.empty(self.out_shape[:3], self.compute_dtype)
        parts = (part_buffers(plan, self.out_shape[3], self.compute_dtype) if plan.n_parts
                 else self.no_parts)  # empty: never written, shared
        execute_call(self.run_kernel, KernelCall(q, k, v, None, MASK_NONE, self.scale, plan, out,
                                             lse, **parts))
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
