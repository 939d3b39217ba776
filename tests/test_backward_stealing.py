"""The Cython backward kernel's workers take over each other's unstarted tasks: whatever
split of the task list the plan gives, and whichever thread ends up running a task, the
gradients are those of one worker running every task in order."""

from dataclasses import replace

import numpy as np
import pytest

from fastattn._backward import sum_partial_dq
from fastattn._backward_plan import make_backward_plan
from fastattn._contract import Band, BackwardCall

kernel = pytest.importorskip("fastattn._cython._backward")


def gradients(plan, q, k, v, dout, lse, delta):
    """dq, dk, dv of one kernel call on ``plan`` (partial dq slots summed as the driver does)."""
    call = BackwardCall(q=q, k=k, v=v, dout=dout, lse=lse, delta=delta, mask=None,
                        mask_kind=0, scale=0.3, plan=plan, dq=np.zeros_like(q),
                        dk=np.full_like(k, np.nan), dv=np.full_like(v, np.nan),
                        part_dq=np.zeros((plan.n_parts, plan.group) + q.shape[2:], q.dtype))
    kernel.run_backward_kernel(call)
    sum_partial_dq(plan, call.part_dq, call.dq)
    return call.dq, call.dk, call.dv


@pytest.mark.parametrize("band", [Band(), Band(hi=0)], ids=["full", "causal"])
@pytest.mark.parametrize("split_keys", [False, True], ids=["whole heads", "key chunks"])
def test_any_split_of_the_tasks_gives_the_same_bits(rng, band, split_keys):
    heads, n = (2, 1100) if split_keys else (16, 40)
    q, k, v, dout = (rng.standard_normal((1, heads, n, 8)).astype(np.float32)
                     for _ in range(4))
    lse = rng.standard_normal((1, heads, n)).astype(np.float32) + 3
    delta = rng.standard_normal((1, heads, n)).astype(np.float32)
    plan = make_backward_plan(1, heads, 1, n, n, band, n_threads=1, block_q=16, block_k=16)
    assert (plan.n_parts > 0) == split_keys and len(plan.tasks) >= 4
    expected = gradients(plan, q, k, v, dout, lse, delta)
    n_tasks = len(plan.tasks)
    # Workers that own nothing (they can only take over), one that owns all, and uneven runs.
    for starts in ([0, 0, n_tasks], [0, n_tasks, n_tasks], [0, 1, 1, n_tasks],
                   [0, n_tasks // 3, n_tasks - 1, n_tasks]):
        split = replace(plan, worker_starts=np.array(starts, dtype=np.int64))
        for _ in range(3):  # who takes what varies from run to run
            for got, want in zip(gradients(split, q, k, v, dout, lse, delta), expected):
                np.testing.assert_array_equal(got, want)
