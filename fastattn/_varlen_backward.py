"""Gradients of :func:`fastattn.varlen_attention`: one backward kernel call over every
packed sequence.

The packed arrays, viewed as ``(1, H, total, D)``, are one batch of the backward
contract (``BWD_*`` in :mod:`fastattn._contract`): a task owns one sequence's keys for
one kv head, walks that sequence's query rows, and carries the sequence's band shift
(``BWD_BAND_SHIFT``), as the forward's tasks do.  Sequences never share query rows, so
a task that owns all of its sequence's keys adds straight into ``dq``.  Where the batch
gives too few tasks (a few long sequences, few kv heads), long sequences are cut into
key chunks of about equal work, as :func:`fastattn._backward_plan.make_backward_plan`
cuts a head's keys: each chunk's ``dq`` goes to a partial slot, summed in slot order.
The tasks are balanced across the workers by cost, and everything depends on the
shape only, so the gradients are bit-identical for any number of threads.
"""

import numpy as np

from ._backends import resolve
from ._backward import backward_runners, row_dots, sum_partial_dq
from ._backward_plan import (BLOCK_K, MAX_CHUNKS, TARGET_ROWS, chunk_count, chunk_edges,
                             chunk_work, rows_per_key)
from ._config import get_config, thread_budget
from ._contract import (BWD_BAND_SHIFT, BWD_BATCH, BWD_COLUMNS, BWD_K_START, BWD_K_STOP,
                        BWD_KV_HEAD, BWD_PART, BWD_Q_START, BWD_Q_STOP, MASK_NONE, Band,
                        BackwardCall)
from ._half import is_float
from ._plan import MIN_PARALLEL_TASKS, WorkPlan, balanced_starts, rounds
from ._sinks import sink_gradient
from ._validation import as_array, check_modifiers, describe
from ._varlen import check_varlen_call, head_major, modifier_options, sequence_diagonals


def varlen_attention_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *,
                              causal=False, window=None, scale=None, softcap=None,
                              alibi_slopes=None, sinks=None, backend=None):
    """Gradients of :func:`fastattn.varlen_attention` with respect to ``q``, ``k``, ``v``.

    For the forward ``out, lse = varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k,
    ..., return_lse=True)`` and the gradient ``dout`` of a scalar loss with respect to
    ``out``, returns the gradients of that loss.  The tiled backends recompute the
    probabilities block by block from ``lse``: no ``Lq x Lk`` buffer.

    Parameters
    ----------
    dout : array_like, shape (total_q, Hq, Dv)
        Upstream gradient, the shape of ``out``.
    q, k, v, cu_seqlens_q, cu_seqlens_k, causal, window, scale, softcap, alibi_slopes, sinks
        As given to :func:`fastattn.varlen_attention`.
    out : array_like, shape (total_q, Hq, Dv)
        The forward's output.
    lse : array_like, shape (total_q, Hq)
        The forward's log-sum-exp.
    backend : {"naive", "numba", "cython", "auto"}, optional
        Default: the ``backend`` setting (see :func:`fastattn.config_context`).

    Returns
    -------
    dq, dk, dv : ndarray
        Shaped and typed like ``q``, ``k``, ``v`` (half precision computed in float32
        and rounded once); each kv head's gradient sums over its query heads.
    dsinks : ndarray, shape (Hq,)
        Only when ``sinks`` is given: their gradient, summed over every row.

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> rng = np.random.default_rng(0)
    >>> cu = np.array([0, 3, 8])
    >>> q, k, v = rng.normal(size=(3, 8, 2, 4))
    >>> out, lse = fastattn.varlen_attention(q, k, v, cu, cu, causal=True, return_lse=True)
    >>> dout = rng.normal(size=out.shape)
    >>> dq, dk, dv = fastattn.varlen_attention_backward(dout, q, k, v, out, lse, cu, cu,
    ...                                                 causal=True)
    >>> t = lambda x: x[3:8].transpose(1, 0, 2)  # the second sequence, head-major
    >>> ref = fastattn.attention_backward(t(dout), t(q), t(k), t(v), t(out),
    ...                                   lse[3:8].T, causal=True)
    >>> bool(np.allclose(dk[3:8], ref[1].transpose(1, 0, 2)))
    True
    """
    call = check_varlen_call(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, window, scale)
    call.modifiers = check_modifiers(softcap, alibi_slopes, sinks, call.q.shape[1],
                                     call.compute_dtype)
    dout, out, lse = _gradient_inputs(call, dout, out, lse)
    settings = get_config()
    chosen = resolve(backend if backend is not None else settings["backend"])
    if chosen.run_kernel is None:
        grads = _naive_backward(call, dout, out, lse)
    else:
        grads = _tiled_backward(_backward_kernel(chosen.name), call, dout, out, lse, settings)
    grads = tuple(g.astype(x.dtype, copy=False) for g, x in zip(grads, (call.q, call.k, call.v)))
    if call.modifiers.sinks is None:
        return grads
    delta = row_dots(dout, out, call.compute_dtype)
    dsinks = sink_gradient(call.modifiers.sinks, lse, delta, head_axis=1)
    return grads + (dsinks.astype(call.compute_dtype),)


def _backward_kernel(name):
    """The compiled backend ``name``'s backward kernel (its error if it has none)."""
    runner, reason = backward_runners()[name]
    if runner is None:
        raise ValueError(f"backend {name!r} has no backward here: {reason}")
    if name == "numba":
        from ._numba.backward import run_backward_kernel
    else:
        from ._cython._backward import run_backward_kernel
    return run_backward_kernel


def _gradient_inputs(call, dout, out, lse):
    """``dout`` in the storage dtype, ``out`` in the storage or the compute dtype and ``lse``
    in the compute dtype, checked: each a cast that rounds nothing."""
    total_q, heads = call.q.shape[:2]
    shape = (total_q, heads, call.v.shape[2])
    checked = []
    for name, x, expected, dtype in (("dout", dout, shape, call.storage_dtype),
                                     ("out", out, shape, call.compute_dtype),
                                     ("lse", lse, shape[:2], call.compute_dtype)):
        array = as_array(name, x)
        if not is_float(array.dtype):
            raise TypeError(f"{describe(name, array)}: expected a float array")
        if array.shape != expected:
            raise ValueError(f"{describe(name, array)} must have shape {expected}, that of "
                             f"varlen_attention's {'lse' if name == 'lse' else 'output'}")
        if name == "out" and array.dtype == call.storage_dtype:
            dtype = array.dtype  # only delta reads it, in the compute dtype
        if not np.can_cast(array.dtype, dtype, "safe"):
            raise TypeError(f"{describe(name, array)}: q, k and v are computed in {dtype}, "
                            f"which would round {name}; pass the forward's own {name}")
        checked.append(np.ascontiguousarray(array, dtype=dtype))
    return checked


def _tiled_backward(run_kernel, call, dout, out, lse, settings):
    """``(dq, dk, dv)`` in the compute dtype; the kernel writes head-major C-contiguous
    gradients ``(1, H, tokens, D)``, transposed back to ``(tokens, H, D)`` at the end."""
    dtype = call.compute_dtype
    dq, dk, dv = (np.zeros((1, x.shape[1], x.shape[0], x.shape[2]), dtype)
                  for x in (call.q, call.k, call.v))
    if min(x.size for x in (call.q, call.k, call.v)) > 0:
        plan = varlen_backward_plan(call, settings)
        backward = BackwardCall(
            q=head_major(call.q), k=head_major(call.k), v=head_major(call.v),
            dout=head_major(dout), lse=np.ascontiguousarray(lse.T)[None],
            delta=np.ascontiguousarray(row_dots(dout, out, dtype).T)[None], mask=None,
            mask_kind=MASK_NONE, scale=call.scale, plan=plan, dq=dq, dk=dk, dv=dv,
            part_dq=np.zeros((plan.n_parts, plan.group) + dq.shape[2:], dtype),
            modifiers=call.modifiers)
        for part in rounds(plan):  # Python runs between rounds: a pending Ctrl-C is raised
            backward.plan = part
            run_kernel(backward)
        sum_partial_dq(plan, backward.part_dq, dq)
    return tuple(np.ascontiguousarray(g[0].transpose(1, 0, 2)) for g in (dq, dk, dv))


def varlen_backward_plan(call, settings):
    """Tasks per (sequence, kv head): the sequence's keys, or key chunks of a long
    sequence when the batch has too few tasks (:func:`sequence_chunks`), against the
    query rows that see them."""
    starts_q, starts_k = call.starts_q, call.starts_k
    lengths_q, lengths_k = np.diff(starts_q), np.diff(starts_k)
    kv_heads = call.k.shape[1]
    block_k = max(1, min(settings["block_k"] or BLOCK_K, int(lengths_k.max(initial=1))))
    block_q = max(1, min(settings["block_q"] or max(1, TARGET_ROWS // call.group),
                         int(lengths_q.max(initial=1))))
    chunks = sequence_chunks(call, kv_heads, block_k)  # (sequence, chunk) rows
    tasks = np.zeros((len(chunks), kv_heads, BWD_COLUMNS), np.int64)
    tasks[..., BWD_KV_HEAD] = np.arange(kv_heads)
    for column, values in zip((BWD_K_START, BWD_K_STOP, BWD_Q_START, BWD_Q_STOP,
                               BWD_BAND_SHIFT), chunks[:, :5].T):
        tasks[..., column] = values[:, None]
    split = np.repeat(chunks[:, 5].astype(bool), kv_heads)  # a sequence cut into chunks
    tasks = tasks.reshape(-1, BWD_COLUMNS)
    tasks[:, BWD_PART] = np.where(split, np.cumsum(split) - 1, -1)
    costs = (call.group * np.repeat(chunks[:, 6], kv_heads) + block_k).astype(np.int64)
    band = Band.from_alignment(0, 0, call.causal, call.window)
    return WorkPlan(block_q, block_k, call.group, band, tasks, costs,
                    balanced_starts(costs, thread_budget(settings["num_threads"])),
                    int(split.sum()))


def sequence_chunks(call, kv_heads, block_k):
    """One row per task of one kv head: ``(k_start, k_stop, q_start, q_stop, band_shift,
    split, work)``, in absolute token positions; ``work`` is what the task costs.

    A sequence is cut into :func:`chunk_count` key chunks of about equal work (on
    ``block_k`` boundaries, under its own band) when the batch has fewer than
    ``MIN_PARALLEL_TASKS`` (sequence, kv head) tasks; each chunk keeps the query rows
    that see its keys.  A partial ``dq`` slot spans every packed row, so the longest
    sequences are cut first and ``MAX_CHUNKS`` chunks in all at most: the slots never
    exceed ``MAX_CHUNKS`` x ``dq``, as in :func:`fastattn.attention_backward`.  The
    work of a task is the (query, key) pairs its band lets through where sequences are
    cut (the chunks of a causal sequence differ most there), else its rows times keys.
    """
    starts_q, starts_k = call.starts_q, call.starts_k
    lengths_q, lengths_k = np.diff(starts_q), np.diff(starts_k)
    shifts = starts_k[:-1] - starts_q[:-1] + sequence_diagonals(
        lengths_q, lengths_k, call.causal == "lower_right")
    counts = _chunk_counts(lengths_k, len(lengths_k) * kv_heads)
    if counts.max(initial=1) == 1:  # a large batch: every sequence whole
        return np.stack([starts_k[:-1], starts_k[1:], starts_q[:-1], starts_q[1:], shifts,
                         np.zeros_like(shifts), lengths_q * lengths_k], axis=1).astype(np.int64)
    rows = []  # fewer than MIN_PARALLEL_TASKS sequences
    for s, count in enumerate(counts):
        band = Band.from_alignment(lengths_q[s], lengths_k[s], call.causal, call.window)
        seen = rows_per_key(band, lengths_q[s], lengths_k[s])
        edges = chunk_edges(seen, count, block_k)
        first, stop = band.row_range(edges[:-1], edges[1:], lengths_q[s])
        work = chunk_work(seen, edges)
        for c in range(len(edges) - 1):
            rows.append((starts_k[s] + edges[c], starts_k[s] + edges[c + 1],
                         starts_q[s] + first[c], starts_q[s] + stop[c], shifts[s],
                         len(edges) > 2, work[c]))
    return np.array(rows, np.int64)


def _chunk_counts(lengths_k, n_tasks):
    """Key chunks per sequence: :func:`chunk_count` of each, longest sequences first,
    while the chunks of the cut sequences stay within ``MAX_CHUNKS``."""
    counts = np.ones(len(lengths_k), np.int64)
    if n_tasks >= MIN_PARALLEL_TASKS:
        return counts
    budget = MAX_CHUNKS
    for s in np.argsort(-lengths_k, kind="stable"):
        wanted = chunk_count(n_tasks, int(lengths_k[s]))
        if 1 < wanted <= budget:
            counts[s], budget = wanted, budget - wanted
    return counts


def _naive_backward(call, dout, out, lse):
    """Each sequence through the naive :func:`fastattn.attention_backward`."""
    from ._backward import attention_backward

    grads = [np.zeros(x.shape, np.float64) for x in (call.q, call.k, call.v)]
    options = modifier_options(call.modifiers)
    for s in range(len(call.starts_q) - 1):
        q0, q1 = call.starts_q[s], call.starts_q[s + 1]
        k0, k1 = call.starts_k[s], call.starts_k[s + 1]
        rows = (slice(q0, q1), slice(k0, k1), slice(k0, k1))
        t = (lambda x, r: x[r].transpose(1, 0, 2))
        result = attention_backward(t(dout, rows[0]), *(t(x, r) for x, r in
                                                         zip((call.q, call.k, call.v), rows)),
                                    t(out, rows[0]), lse[q0:q1].T, causal=call.causal or False,
                                    window=call.window, scale=call.scale, backend="naive",
                                    **options)
        for grad, part, r in zip(grads, result[:3], rows):
            grad[r] = part.transpose(1, 0, 2)
    return grads
