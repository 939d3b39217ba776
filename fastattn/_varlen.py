"""Packed variable-length batches (flash-attn's "varlen" layout) in one kernel call.

``q (total_q, Hq, D)`` holds the queries of every sequence back to back, sequence ``s``
at rows ``cu_seqlens_q[s]:cu_seqlens_q[s + 1]``, and likewise ``k``, ``v`` with
``cu_seqlens_k``.  Viewed as ``(1, H, total, D)`` (no copy), the packed arrays are one
batch of the kernel contract: each task covers one query block of one sequence against
that sequence's keys only, and carries the sequence's band shift (``TASK_BAND_SHIFT``),
so every sequence keeps its own causal / window alignment.  One plan balances the tasks
of all sequences across the workers by cost; long single sequences are split (split-KV)
as in a plain call.  The helpers shared with :mod:`fastattn._paged` (dtypes, the kernel
call, the naive fallback's backend) live here too.
"""

import numpy as np

from ._backends import resolve
from ._config import get_config, thread_budget
from ._contract import (TASK_BAND_SHIFT, TASK_BATCH, TASK_COLUMNS, TASK_K_START,
                        TASK_K_STOP, TASK_KV_BATCH, TASK_KV_HEAD, TASK_PART, TASK_Q_START,
                        TASK_Q_STOP, MASK_NONE, NO_MODIFIERS, Band, KernelCall)
from ._half import compute_dtype_of, result_type
from ._plan import block_sizes, plan_of_tasks
from ._tiled import execute_call, part_buffers
from ._validation import (as_array, check_flag, check_float_array, check_modifiers,
                          describe, normalise_causal, normalise_scale, normalise_window)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal=False, window=None,
                     scale=None, softcap=None, alibi_slopes=None, sinks=None,
                     return_lse=False, backend=None):
    """Attention over a packed batch of sequences of different lengths (no padding).

    Each sequence attends only its own keys, with the semantics of
    :func:`fastattn.attention` (causal alignment and window per sequence).

    Parameters
    ----------
    q : array_like, shape (total_q, Hq, D)
        The queries of all sequences, back to back (flash-attn's varlen layout).
        dtypes as in :func:`fastattn.attention` (float16 and bfloat16 included).
    k : array_like, shape (total_k, Hk, D)
        The keys of all sequences; ``Hk`` divides ``Hq`` (grouped-query attention).
    v : array_like, shape (total_k, Hk, Dv)
    cu_seqlens_q, cu_seqlens_k : array_like of int32 or int64, shape (n_seqs + 1,)
        Cumulative sequence starts: sequence ``s`` has the queries
        ``cu_seqlens_q[s]:cu_seqlens_q[s + 1]`` and the keys
        ``cu_seqlens_k[s]:cu_seqlens_k[s + 1]``.  Start at 0, never decrease, end at
        ``total_q`` (``total_k``).  Empty sequences are fine; a sequence with queries
        and no keys gives zeros (lse -inf).
    causal : bool or {"upper_left", "lower_right"}, default False
        Per sequence, as in :func:`fastattn.attention`.
    window : tuple (left, right), optional
        Per sequence, measured from the causal diagonal, as in :func:`fastattn.attention`.
    scale : float, optional
        Default ``1 / sqrt(D)``.
    softcap : float, optional
        ``s -> softcap * tanh(s / softcap)`` on the scaled scores, as in
        :func:`fastattn.attention`.
    alibi_slopes : array_like, shape (Hq,), optional
        ALiBi, as in :func:`fastattn.attention`: ``-alibi_slopes[h] * |j - c|``,
        ``c`` the causal diagonal of the query within its sequence.
    sinks : array_like, shape (Hq,), optional
        One logit per query head in every row's denominator, with no value (gpt-oss);
        the lse includes it.
    return_lse : bool, default False
        Also return the natural log-sum-exp of each row.
    backend : {"naive", "numba", "cython", "auto"}, optional
        Default: the ``backend`` setting (see :func:`fastattn.config_context`).

    Returns
    -------
    out : ndarray, shape (total_q, Hq, Dv), in ``np.result_type(q, k, v)``
    lse : ndarray, shape (total_q, Hq)
        Only with ``return_lse=True``; float32 for half inputs, else the result dtype.

    Raises
    ------
    TypeError, ValueError
        For a wrong dtype, shape or value; the message names the argument.

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> rng = np.random.default_rng(0)
    >>> cu = np.array([0, 3, 8], dtype=np.int32)  # two sequences: 3 and 5 tokens
    >>> q, k, v = rng.normal(size=(3, 8, 2, 4))
    >>> out = fastattn.varlen_attention(q, k, v, cu, cu, causal=True)
    >>> second = fastattn.attention(q[3:8].transpose(1, 0, 2), k[3:8].transpose(1, 0, 2),
    ...                             v[3:8].transpose(1, 0, 2), causal=True)
    >>> out.shape, bool(np.allclose(out[3:8], second.transpose(1, 0, 2)))
    ((8, 2, 4), True)
    """
    call = check_varlen_call(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, window, scale)
    call.modifiers = check_modifiers(softcap, alibi_slopes, sinks, call.q.shape[1],
                                     call.compute_dtype)
    return_lse = check_flag("return_lse", return_lse)
    settings = get_config()
    chosen = resolve(backend if backend is not None else settings["backend"])
    if chosen.run_kernel is None:
        out, lse = _naive_varlen(call)
    else:
        out, lse = _tiled_varlen(chosen.run_kernel, call, settings)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------- validation


class _VarlenCall:
    """A checked call: arrays in the storage dtype, sequence bounds, options."""

    def __init__(self, q, k, v, starts_q, starts_k, causal, window, scale, dtypes):
        self.q, self.k, self.v = q, k, v
        self.starts_q, self.starts_k = starts_q, starts_k
        self.causal, self.window, self.scale = causal, window, scale
        self.storage_dtype, self.compute_dtype = dtypes
        self.modifiers = NO_MODIFIERS  # the task's band shift carries each diagonal

    @property
    def group(self):
        return self.q.shape[1] // self.k.shape[1]


def check_varlen_call(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, window, scale):
    q, k, v = (as_array(name, x) for name, x in zip("qkv", (q, k, v)))
    check_token_arrays(("q", q), ("k", k), ("v", v), "total_q", "total_k")
    starts_q = check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], "q")
    starts_k = check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], "k")
    if len(starts_q) != len(starts_k):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same number of "
                         f"sequences: {len(starts_q) - 1} and {len(starts_k) - 1}")
    dtypes = storage_and_compute(("q", q), ("k", k), ("v", v))
    return _VarlenCall(*(x.astype(dtypes[0], copy=False) for x in (q, k, v)),
                       starts_q, starts_k, normalise_causal(causal), normalise_window(window),
                       normalise_scale(scale, q.shape[2], dtypes[1]), dtypes)


def check_token_arrays(q, k, v, q_axis, k_axis):
    """``(name, array)`` pairs of float arrays ``(tokens, H, D)``, ``(tokens, Hk, D)``,
    ``(tokens, Hk, Dv)`` whose first axes are named ``q_axis``, ``k_axis``."""
    for name, x in (q, k, v):
        check_float_array(name, x)
        if x.ndim != 3:
            axis = q_axis if name == q[0] else k_axis
            last = "Dv" if name == v[0] else "D"
            raise ValueError(f"{describe(name, x)}: expected 3 dimensions "
                             f"({axis}, H, {last})")
    (qn, qa), (kn, ka), (vn, va) = q, k, v
    if qa.shape[2] != ka.shape[2]:
        raise ValueError(f"{qn} and {kn} must have the same feature size D: "
                         f"{describe(qn, qa)}, {describe(kn, ka)}")
    if qa.shape[2] == 0:
        raise ValueError(f"{describe(qn, qa)}: the feature size D must be at least 1")
    if ka.shape[:2] != va.shape[:2]:
        raise ValueError(f"{kn} and {vn} must have the same {k_axis} and heads Hk: "
                         f"{describe(kn, ka)}, {describe(vn, va)}")
    heads, kv_heads = qa.shape[1], ka.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"the kv heads Hk={kv_heads} must divide the query heads "
                         f"Hq={heads} (grouped-query attention): {describe(qn, qa)}, "
                         f"{describe(kn, ka)}")


def check_index_array(name, x, ndim, what):
    """``x`` as an int32 or int64 ndarray of ``ndim`` dimensions (``what`` names the axes)."""
    x = as_array(name, x)
    if x.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError(f"{describe(name, x)}: expected int32 or int64 {what}")
    if x.ndim != ndim:
        raise ValueError(f"{describe(name, x)}: expected {ndim} dimension"
                         f"{'s' if ndim > 1 else ''} ({what})")
    return x


def check_cu_seqlens(name, cu_seqlens, total, array_name):
    """The sequence starts as int64: from 0, non-decreasing, ending at ``total``."""
    starts = check_index_array(name, cu_seqlens, 1, "cumulative sequence starts, "
                               "shape (n_seqs + 1,)")
    if len(starts) == 0:
        raise ValueError(f"{describe(name, starts)}: needs at least one entry (0); it has "
                         f"n_seqs + 1 entries")
    starts = starts.astype(np.int64)
    if starts[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {starts[0]}")
    drops = np.flatnonzero(np.diff(starts) < 0)
    if len(drops):
        i = int(drops[0])
        raise ValueError(f"{name} must not decrease: {name}[{i}] = {starts[i]} > "
                         f"{name}[{i + 1}] = {starts[i + 1]}")
    if starts[-1] != total:
        raise ValueError(f"{name} must end at the number of tokens of {array_name}, "
                         f"{total} ({array_name}.shape[0]); got {name}[-1] = {starts[-1]}")
    return starts


def storage_and_compute(*named):
    """``(storage, compute)`` dtypes of ``(name, array)`` pairs: the result dtype, and
    float32 for a half one (else the result dtype)."""
    storage = result_type(*named)
    return storage, compute_dtype_of(storage)


# ---------------------------------------------------------------- running


def head_major(x):
    """``(tokens, H, D)`` -> a ``(1, H, tokens, D)`` view."""
    return x.transpose(1, 0, 2)[None]


def run_plan(run_kernel, plan, q, k, v, call, out, pages=None):
    """Run ``plan`` over 4-D views ``q``, ``k``, ``v`` and ``out`` (and a block table
    ``pages``, see KernelCall) with the scale, modifiers and compute dtype of ``call``;
    returns the lse ``(B, Hq, Lq)`` (``out`` written in place)."""
    lse = np.empty(out.shape[:3], call.compute_dtype)
    call = KernelCall(q=q, k=k, v=v, mask=None, mask_kind=MASK_NONE, scale=call.scale,
                      plan=plan, out=out, lse=lse, modifiers=call.modifiers, pages=pages,
                      **part_buffers(plan, out.shape[3], call.compute_dtype))
    execute_call(run_kernel, call)
    return lse


def _tiled_varlen(run_kernel, call, settings):
    total_q, heads = call.q.shape[:2]
    out = np.empty((total_q, heads, call.v.shape[2]), call.storage_dtype)
    if total_q * heads == 0:
        return out, np.empty((total_q, heads), call.compute_dtype)
    plan = varlen_plan(call, settings)
    lse = run_plan(run_kernel, plan, head_major(call.q), head_major(call.k),
                   head_major(call.v), call, head_major(out))
    return out, np.ascontiguousarray(lse[0].T)


def varlen_plan(call, settings):
    """One plan for every sequence: each query block against its sequence's keys."""
    lengths_q, lengths_k = np.diff(call.starts_q), np.diff(call.starts_k)
    block_q, block_k = block_sizes(call.group, int(lengths_q.max(initial=0)),
                                   int(lengths_k.max(initial=0)), settings["block_q"],
                                   settings["block_k"])
    band = Band.from_alignment(0, 0, call.causal, call.window)
    rows = sequence_tasks(call.starts_q, call.starts_k, call.k.shape[1], block_q, band,
                          call.causal == "lower_right")
    return plan_of_tasks(rows, call.group, band, block_q, block_k,
                         thread_budget(settings["num_threads"]))


def sequence_diagonals(lengths_q, lengths_k, lower_right):
    """Each packed sequence's causal diagonal, key minus query position within it:
    ``len_k - len_q`` aligned at the lower right, else 0."""
    lengths = lengths_k - lengths_q
    return lengths if lower_right else np.zeros_like(lengths)


def sequence_tasks(starts_q, starts_k, kv_heads, block_q, band, lower_right):
    """Tasks ``(sequence, kv head, query block)`` in that order, as ``TASK_*`` rows.

    ``band`` is aligned at the top left of every sequence; a sequence's band shift moves
    it to the sequence's offsets (and to its lower-right diagonal).  Key ranges are
    clipped to the sequence's keys and to the band.
    """
    lengths_q, lengths_k = np.diff(starts_q), np.diff(starts_k)
    n_blocks = -(-lengths_q // block_q)
    seq = np.repeat(np.arange(len(lengths_q)), n_blocks)
    first_block = np.cumsum(n_blocks) - n_blocks
    local_q0 = (np.arange(len(seq)) - first_block[seq]) * block_q
    local_q1 = np.minimum(local_q0 + block_q, lengths_q[seq])
    diagonal = sequence_diagonals(lengths_q, lengths_k, lower_right)[seq]
    lo = np.clip(band.lo + diagonal, -(1 << 62), 1 << 62)
    hi = np.clip(band.hi + diagonal, -(1 << 62), 1 << 62)
    local_k0 = np.clip(local_q0 + lo, 0, lengths_k[seq])
    local_k1 = np.maximum(np.clip(local_q1 + hi, 0, lengths_k[seq]), local_k0)

    per_block = np.zeros((len(seq), TASK_COLUMNS), np.int64)
    per_block[:, TASK_Q_START] = starts_q[seq] + local_q0
    per_block[:, TASK_Q_STOP] = starts_q[seq] + local_q1
    per_block[:, TASK_K_START] = starts_k[seq] + local_k0
    per_block[:, TASK_K_STOP] = starts_k[seq] + local_k1
    per_block[:, TASK_BAND_SHIFT] = starts_k[seq] - starts_q[seq] + diagonal
    per_block[:, TASK_PART] = -1
    per_block[:, [TASK_BATCH, TASK_KV_BATCH]] = 0
    # every kv head of a sequence's blocks, sequence by sequence
    tasks = np.repeat(per_block[None], kv_heads, axis=0)  # (head, block, column)
    tasks[:, :, TASK_KV_HEAD] = np.arange(kv_heads)[:, None]
    order = np.lexsort((np.tile(np.arange(len(seq)), kv_heads),  # last key sorts first
                        np.repeat(np.arange(kv_heads), len(seq)), np.tile(seq, kv_heads)))
    return np.ascontiguousarray(tasks.reshape(-1, TASK_COLUMNS)[order])


# ---------------------------------------------------------------- naive


def modifier_options(modifiers):
    """The keywords of :func:`fastattn.attention` that give ``modifiers``."""
    return dict(softcap=modifiers.softcap or None, alibi_slopes=modifiers.alibi_slopes,
                sinks=modifiers.sinks)


def empty_rows_lse(shape, call):
    """The lse ``(tokens, Hq)`` of rows that see no key: -inf, or the head's sink."""
    sinks = call.modifiers.sinks
    lse = np.full(shape, -np.inf, call.compute_dtype)
    if sinks is not None:
        lse[...] = sinks
    return lse


def _naive_varlen(call):
    """Each sequence through the naive reference of :func:`fastattn.attention`."""
    from ._api import attention

    total_q, heads = call.q.shape[:2]
    out = np.zeros((total_q, heads, call.v.shape[2]), call.storage_dtype)
    lse = empty_rows_lse((total_q, heads), call)
    for s in range(len(call.starts_q) - 1):
        q0, q1 = call.starts_q[s], call.starts_q[s + 1]
        k0, k1 = call.starts_k[s], call.starts_k[s + 1]
        if q1 == q0:
            continue
        rows, row_lse = attention(*(x[a:b].transpose(1, 0, 2) for x, a, b in
                                    ((call.q, q0, q1), (call.k, k0, k1), (call.v, k0, k1))),
                                  causal=call.causal or False, window=call.window,
                                  scale=call.scale, return_lse=True, backend="naive",
                                  **modifier_options(call.modifiers))
        out[q0:q1], lse[q0:q1] = rows.transpose(1, 0, 2), row_lse.T
    return out, lse
