"""The tiled backward kernel in Numba (FlashAttention-2): a loop over workers, tasks from the plan.

A task owns the ``dk``/``dv`` rows of keys ``k_start:k_stop`` (see ``BWD_*`` in
:mod:`fastattn._contract` and "The backward pass" in docs/design.md).  For each block
of those keys it packs the keys times the scale (``Ks``) and the values, zeroes the
block's ``dK``/``dV`` accumulators, and walks the query blocks that the band lets see
the block (all heads of the kv group together, as the forward packs them):

    Sᵀ = Ks Qᵀ (+ mask);  Pᵀ = exp(Sᵀ - lse)          0 where masked or the row is empty
    dPᵀ = V dOᵀ;  dSᵀ = Pᵀ (dPᵀ - delta)               0 where P is 0
    dV += Pᵀ dO;  dK += dSᵀ Q;  dQ += dS Ks             dQ into dq or the task's slot

then writes ``dK * scale`` and ``dV``.  Tiles are key-major, as in the forward
kernel, so the row-wise steps (subtracting the lse and delta of each query row) run
along contiguous memory and vectorise; the five block products are BLAS calls on
contiguous tiles.  The band and mask rules are the forward kernel's own functions.
Half ``q``, ``k``, ``v`` and ``dout`` arrive as their 16-bit words and are converted to
float32 as their tiles are packed (:mod:`fastattn._numba.halves`); ``lse``, ``delta``,
the mask and the gradients are float32.

Score modifiers (the forward's :func:`~fastattn._numba.kernel.modify_scores`) bend ``Sᵀ``
before the band and mask, so ``P`` is recomputed as the forward made it; a softcap keeps
its derivative ``1 - tanh²`` per score in a tile and multiplies ``dSᵀ`` by it (the chain
rule through the cap).  A task's ``BWD_BAND_SHIFT`` moves the band (and ALiBi's
diagonal) for that task, as ``TASK_BAND_SHIFT`` does in the forward.
"""

import numpy as np
from numba import njit, prange

from .._blas import single_threaded
from .._contract import (BWD_BAND_SHIFT, BWD_BATCH, BWD_K_START, BWD_K_STOP, BWD_KV_HEAD,
                         BWD_PART, BWD_Q_START, BWD_Q_STOP, MASK_KEEP, MASK_NONE)
from . import flat_view, modifier_arguments, run_parallel, softcap_scratch
from .halves import as_kernel_array, load, read_row
from .kernel import (_all_finite, _apply_limits, _block_has_keep, _key_rows, _row_start,
                     modify_scores)
from .rowops import JIT, exp_inplace

__all__ = ["run_backward_kernel"]


def run_backward_kernel(call):
    """Run a :class:`~fastattn._contract.BackwardCall`: write its ``dk``, ``dv``, add into ``dq``.

    (Or into its ``part_dq`` slots, as the plan's ``BWD_PART`` column says.)  ``q``,
    ``k``, ``v`` and ``dout`` are of the storage dtype, the rest of the compute dtype.
    """
    plan, dtype = call.plan, call.lse.dtype  # the compute dtype
    workers, rows, block_k = plan.n_workers, plan.max_rows, plan.block_k
    head_dim, value_dim = call.q.shape[3], call.v.shape[3]
    mask = call.mask if call.mask_kind != MASK_NONE else np.zeros((1, 1, 1, 1), dtype)
    scratch = (np.empty((workers, rows, head_dim), dtype),  # queries
               np.empty((workers, rows, value_dim), dtype),  # upstream gradients
               np.empty((workers, block_k, head_dim), dtype),  # keys times the scale
               np.empty((workers, block_k, value_dim), dtype),  # values
               np.empty((workers, block_k * rows), dtype),  # Pᵀ
               np.empty((workers, block_k * rows), dtype),  # dPᵀ, then dSᵀ
               np.empty((workers, block_k, head_dim), dtype),  # dK of the key block
               np.empty((workers, block_k, value_dim), dtype),  # dV of the key block
               np.empty((workers, block_k, head_dim), dtype),  # one query block's dK
               np.empty((workers, block_k, value_dim), dtype),  # one query block's dV
               np.empty((workers, rows, head_dim), dtype),  # one query block's dQ
               np.empty((workers, 3, rows), dtype),  # lse shift, delta, NaN flag per row
               np.empty((workers, block_k * rows), dtype=np.int64),  # exp scratch
               softcap_scratch(call.modifiers, workers, block_k * rows, dtype))
    arguments = (*flat_view(as_kernel_array(call.q)), *flat_view(as_kernel_array(call.k)),
                 *flat_view(as_kernel_array(call.v)), *flat_view(as_kernel_array(call.dout)),
                 *flat_view(mask), call.mask_kind, call.lse, call.delta,
                 call.dq, call.dk, call.dv, call.part_dq, plan.tasks, plan.worker_starts,
                 plan.group, plan.block_q, block_k, plan.band.lo, plan.band.hi,
                 dtype.type(call.scale), *modifier_arguments(call.modifiers, dtype), *scratch)
    with single_threaded():  # workers call BLAS (np.dot): one BLAS thread each
        if workers == 1:  # no thread team: also what a forked child runs
            run_backward_worker(0, *arguments)
        else:
            run_parallel(run_backward_parallel, workers, arguments)


@njit(parallel=True, **JIT)
def run_backward_parallel(q, q_at, k, k_at, v, v_at, dout, dout_at, mask, mask_at, mask_kind,
                          lse, delta, dq, dk, dv, part_dq, tasks, worker_starts, group,
                          block_q, block_k, band_lo, band_hi, scale, softcap, alibi,
                          diagonal, q_tiles, do_tiles, k_tiles, v_tiles, p_tiles, ds_tiles,
                          dk_accs, dv_accs, dk_prods, dv_prods, dq_tiles, row_stats, exp_bits,
                          softcap_tiles):
    """Run every worker's tasks (:func:`run_backward_worker`), workers in parallel."""
    for worker in prange(len(worker_starts) - 1):
        run_backward_worker(worker, q, q_at, k, k_at, v, v_at, dout, dout_at, mask, mask_at,
                            mask_kind, lse, delta, dq, dk, dv, part_dq, tasks, worker_starts,
                            group, block_q, block_k, band_lo, band_hi, scale, softcap, alibi,
                            diagonal, q_tiles, do_tiles, k_tiles, v_tiles, p_tiles, ds_tiles,
                            dk_accs, dv_accs, dk_prods, dv_prods, dq_tiles, row_stats,
                            exp_bits, softcap_tiles)


@njit(**JIT)
def run_backward_worker(worker, q, q_at, k, k_at, v, v_at, dout, dout_at, mask, mask_at,
                        mask_kind, lse, delta, dq, dk, dv, part_dq, tasks, worker_starts, group,
                        block_q, block_k, band_lo, band_hi, scale, softcap, alibi, diagonal,
                        q_tiles, do_tiles, k_tiles, v_tiles, p_tiles, ds_tiles, dk_accs,
                        dv_accs, dk_prods, dv_prods, dq_tiles, row_stats, exp_bits,
                        softcap_tiles):
    """Run the tasks of one worker, with that worker's scratch."""
    for t in range(worker_starts[worker], worker_starts[worker + 1]):
        task = tasks[t]
        b, kv_head, shift = task[BWD_BATCH], task[BWD_KV_HEAD], task[BWD_BAND_SHIFT]
        lo, hi = band_lo + shift, band_hi + shift  # this task's band (a packed sequence's)
        for j0 in range(task[BWD_K_START], task[BWD_K_STOP], block_k):
            n_k = min(block_k, task[BWD_K_STOP] - j0)
            dk_acc, dv_acc = dk_accs[worker, :n_k], dv_accs[worker, :n_k]
            dk_acc[:, :] = 0.0
            dv_acc[:, :] = 0.0
            r0 = max(task[BWD_Q_START], j0 - hi)  # the rows that see some key of the block
            r1 = min(task[BWD_Q_STOP], j0 + n_k - lo)
            if r0 < r1:
                ks = _scaled_rows(k, k_at, b, kv_head, j0, n_k, scale, k_tiles[worker])
                vt = _key_rows(v, v_at, b, kv_head, j0, n_k, v_tiles.shape[2],
                               v_tiles[worker])
                keys_finite = _all_finite(ks)
                for i0 in range(r0, r1, block_q):
                    n_q = min(block_q, r1 - i0)
                    if mask_kind == MASK_KEEP and not _block_has_keep(
                            mask, mask_at, b, kv_head * group, group, i0, n_q, j0, n_k,
                            lo, hi):
                        continue
                    _query_block(q, q_at, dout, dout_at, mask, mask_at, mask_kind, lse, delta,
                                 dq, part_dq, b, kv_head, group, i0, n_q, j0, task[BWD_PART],
                                 lo, hi, softcap, alibi, diagonal + shift, ks, vt, keys_finite,
                                 dk_acc, dv_acc, q_tiles[worker], do_tiles[worker],
                                 p_tiles[worker], ds_tiles[worker], dk_prods[worker, :n_k],
                                 dv_prods[worker, :n_k], dq_tiles[worker], row_stats[worker],
                                 exp_bits[worker], softcap_tiles[worker])
            _write_key_rows(dk, dv, dk_acc, dv_acc, b, kv_head, j0, scale)


@njit(**JIT)
def _query_block(q, q_at, dout, dout_at, mask, mask_at, mask_kind, lse, delta, dq, part_dq,
                 b, kv_head, group, i0, n_q, j0, part, band_lo, band_hi, softcap, alibi,
                 alibi_diagonal, ks, vt, keys_finite, dk_acc, dv_acc, q_scratch, do_scratch,
                 p_scratch, ds_scratch, dk_prod, dv_prod, dq_scratch, stats, bits,
                 softcap_scratch):
    """One (key block, query block) step: accumulate ``dK``, ``dV`` and add the block's ``dQ``.

    ``alibi_diagonal`` is the modifiers' diagonal moved by the task's band shift.
    """
    n_k, rows, head0 = ks.shape[0], group * n_q, kv_head * group
    qt = _group_rows(q, q_at, b, head0, group, i0, n_q, q_scratch)
    dot = _group_rows(dout, dout_at, b, head0, group, i0, n_q, do_scratch)
    nan_rows = _pack_row_stats(lse, delta, b, head0, group, i0, n_q, stats)

    pt = p_scratch[:n_k * rows].reshape(n_k, rows)
    np.dot(ks, qt.T, pt)
    if softcap != 0.0 or alibi.shape[0] > 0:
        modify_scores(pt, softcap, alibi, head0, i0, n_q, j0, alibi_diagonal, softcap_scratch,
                      bits)
    limited = _apply_limits(pt, mask, mask_at, mask_kind, b, head0, group, i0, n_q, j0,
                            band_lo, band_hi)
    _probabilities(pt, stats[0, :rows], stats[2, :rows], nan_rows, bits)
    dst = ds_scratch[:n_k * rows].reshape(n_k, rows)
    np.dot(vt, dot.T, dst)
    _score_gradients(pt, dst, stats[1, :rows])
    if softcap != 0.0:
        _through_softcap(dst.reshape(n_k * rows), softcap_scratch)

    dq_tile = dq_scratch[:rows]
    if limited and not (keys_finite and _all_finite(qt) and _all_finite(dot)):
        _products_skipping_zeros(pt, dst, qt, dot, ks, dk_acc, dv_acc, dq_tile)
    else:
        np.dot(pt, dot, dv_prod)
        dv_acc += dv_prod
        np.dot(dst, qt, dk_prod)
        dk_acc += dk_prod
        np.dot(dst.T, ks, dq_tile)
    _add_dq(dq_tile, dq, part_dq, b, head0, group, i0, n_q, part)


@njit(**JIT)
def _scaled_rows(x, at, b, head, j0, n_k, scale, scratch):
    """Rows ``j0:j0 + n_k`` of ``x[b, head]`` times ``scale``, packed into ``scratch``."""
    tile = scratch[:n_k]
    width = tile.shape[1]
    for j in range(n_k):
        start = _row_start(at, b, head, j0 + j)
        for d in range(width):
            tile[j, d] = load(x[start + d]) * scale
    return tile


@njit(**JIT)
def _group_rows(x, at, b, head0, group, i0, n_q, scratch):
    """Rows ``i0:i0 + n_q`` of heads ``head0 .. head0 + group - 1``, row ``h * n_q + i``.

    A view when there is one head and its rows are contiguous; else packed.
    """
    width = scratch.shape[1]
    if group == 1:
        return _key_rows(x, at, b, head0, i0, n_q, width, scratch)
    tile = scratch[:group * n_q]
    for h in range(group):
        for i in range(n_q):
            start = _row_start(at, b, head0 + h, i0 + i)
            read_row(x, start, tile[h * n_q + i])
    return tile


@njit(**JIT)
def _pack_row_stats(lse, delta, b, head0, group, i0, n_q, stats):
    """Each row's lse shift, delta and NaN flag into ``stats``; whether some lse is NaN.

    An empty row (lse -inf) shifts by +inf, so all its probabilities are exactly 0; a
    NaN row shifts by 0 and :func:`_probabilities` makes its visible entries NaN.
    """
    nan_rows = False
    for h in range(group):
        for i in range(n_q):
            r = h * n_q + i
            value = lse[b, head0 + h, i0 + i]
            stats[1, r] = delta[b, head0 + h, i0 + i]
            stats[2, r] = 0.0
            if value == -np.inf:
                stats[0, r] = np.inf
            elif np.isnan(value):
                stats[0, r], stats[2, r] = 0.0, 1.0
                nan_rows = True
            else:
                stats[0, r] = value
    return nan_rows


@njit(**JIT)
def _probabilities(pt, lse_shift, nan_flags, nan_rows, bits):
    """Scores -> ``P = exp(S - lse)``, in place; masked scores (-inf) give exactly 0.

    In a NaN row (the forward saw a NaN) every entry that is not masked is NaN.
    """
    n_k, rows = pt.shape
    for jj in range(n_k):
        scores = pt[jj]
        for r in range(rows):
            scores[r] -= lse_shift[r]
    exp_inplace(pt.reshape(n_k * rows), bits, n_k * rows)
    if nan_rows:
        for jj in range(n_k):
            p = pt[jj]
            for r in range(rows):
                if nan_flags[r] != 0.0 and p[r] != 0.0:
                    p[r] = np.nan


@njit(**JIT)
def _score_gradients(pt, dst, row_delta):
    """``dSᵀ = Pᵀ (dPᵀ - delta)`` in place of ``dPᵀ``; exactly 0 wherever ``P`` is 0."""
    n_k, rows = pt.shape
    for jj in range(n_k):
        p, ds = pt[jj], dst[jj]
        for r in range(rows):
            ds[r] = p[r] * (ds[r] - row_delta[r]) if p[r] != 0.0 else 0.0


@njit(**JIT)
def _through_softcap(ds, derivative):
    """``dS *= 1 - tanh²`` (the softcap's derivative); a zero stays zero even where a
    masked score was NaN (its derivative NaN)."""
    for x in range(ds.shape[0]):
        ds[x] = ds[x] * derivative[x] if ds[x] != 0.0 else ds[x]


@njit(**JIT)
def _products_skipping_zeros(pt, dst, qt, dot, ks, dk_acc, dv_acc, dq_tile):
    """The three gradient products where a zero factor contributes nothing, even against a
    non-finite one (a masked key's NaN value, an empty row's NaN upstream gradient)."""
    n_k, rows = pt.shape
    dq_tile[:, :] = 0.0
    for jj in range(n_k):
        for r in range(rows):
            p, ds = pt[jj, r], dst[jj, r]
            if p != 0.0:
                for d in range(dv_acc.shape[1]):
                    dv_acc[jj, d] += p * dot[r, d]
            if ds != 0.0:
                for d in range(dk_acc.shape[1]):
                    dk_acc[jj, d] += ds * qt[r, d]
                    dq_tile[r, d] += ds * ks[jj, d]


@njit(**JIT)
def _add_dq(dq_tile, dq, part_dq, b, head0, group, i0, n_q, part):
    """Add the block's ``dQ`` rows into ``dq`` (part -1) or into the task's partial slot."""
    for h in range(group):
        for i in range(n_q):
            row = dq_tile[h * n_q + i]
            if part < 0:
                dq[b, head0 + h, i0 + i] += row
            else:
                part_dq[part, h, i0 + i] += row


@njit(**JIT)
def _write_key_rows(dk, dv, dk_acc, dv_acc, b, kv_head, j0, scale):
    for jj in range(dk_acc.shape[0]):
        dk[b, kv_head, j0 + jj] = dk_acc[jj] * scale
        dv[b, kv_head, j0 + jj] = dv_acc[jj]
