"""The kernel contract: what every attention kernel is given, and what it must compute.

This module owns the rules that the planner, both compiled kernels, the naive
reference, :func:`fastattn.attention_weights` and :mod:`fastattn.dask` share:

* :class:`Band` -- the causal / sliding-window limits as one pair of diagonals;
* the mask kinds ``MASK_NONE``, ``MASK_KEEP`` (uint8, 1 = may attend) and
  ``MASK_ADD`` (added to the scaled scores);
* the columns of the task table (``TASK_*``) and of the split-KV merge table
  (``MERGE_*``);
* the score modifiers (:class:`ScoreModifiers`: softcap and ALiBi, applied inside the
  kernels; sinks, folded into the finished rows by :func:`fastattn._merge.fold_sinks`);
* :class:`KernelCall` -- one kernel invocation: 4-D views, mask kind, scale, modifiers,
  plan, partial buffers, and an lse-only mode.

Both compiled backends expose ``run_kernel(call)``; the Cython extension checks at
import that its compiled constants equal the ones here.  The online-softmax
invariant every kernel keeps is described in ``docs/design.md`` ("The kernel
contract"); :mod:`fastattn._naive` states the same semantics in full-matrix form.
"""

from dataclasses import dataclass

import numpy as np

UNBOUNDED = 1 << 62
"""A band limit meaning "no limit on this side": far beyond any sequence length, and
small enough that ``index ± UNBOUNDED`` never overflows an int64."""

MASK_NONE, MASK_KEEP, MASK_ADD = 0, 1, 2
"""Mask kinds: no mask; a uint8 keep-mask (1 = may attend); an additive mask in the
compute dtype (a ``-inf`` entry masks the key out even where the score is NaN)."""

(TASK_BATCH, TASK_KV_HEAD, TASK_Q_START, TASK_Q_STOP, TASK_K_START, TASK_K_STOP,
 TASK_PART, TASK_KV_BATCH, TASK_BAND_SHIFT) = range(9)
TASK_COLUMNS = 9
"""A task: query rows ``q_start:q_stop`` of every query head of kv head ``kv_head`` in
batch ``batch`` (of q, ``out`` and ``lse``), over keys ``k_start:k_stop`` of batch
``kv_batch`` (of k, v and the mask); ``part`` is -1 (write ``out``/``lse``) or the
split-KV slot that receives the partial result.  The task's (query ``i``, key ``j``)
pairs are tested against the plan's band moved by ``band_shift``: ``lo + band_shift <=
j - i <= hi + band_shift``.  A plain call has ``kv_batch == batch`` and ``band_shift ==
0``; packed variable-length sequences (each at its own offsets, with its own causal
alignment) and a paged KV cache (a page per kv batch) use the two."""

MERGE_BATCH, MERGE_KV_HEAD, MERGE_Q_START, MERGE_Q_STOP, MERGE_FIRST_PART, MERGE_N_PARTS = range(6)
MERGE_COLUMNS = 6
"""A split task: its rows (as in a task) and its partial slots ``first .. first + n - 1``."""

DECODE_ROWS = 8
"""Fewer query rows than this per kv head (``Lq * Hq / Hk``) is decoding: the Numba
kernel streams its block products by hand instead of calling BLAS.  (The Cython kernel
sends every task with one query row per head to its key-major decode kernel.)"""

DECODE_MAX_ROWS = 64
"""Query rows, at most, of one decoding task that serves several kv heads at once
(:func:`decode_heads`): the kv heads times the group."""


def decode_heads(k, v, group):
    """How many consecutive kv heads one decoding task (one query row per head) serves.

    Where every key's kv heads lie side by side in ``k`` and ``v`` (4-D views, a head
    stride from 0 to below the row stride: a paged vLLM cache, a transposed ``(B, L, H,
    D)`` array), a task that reads a key for all those heads reads memory in order;
    one head at a time, it would read each head's rows scattered far apart.  Then as
    many heads as ``DECODE_MAX_ROWS`` query rows allow, else 1.  ``v`` None: lse-only.

    Examples
    --------
    >>> import numpy as np
    >>> cache = np.zeros((10, 16, 8, 64), np.float32)  # (blocks, page, Hk, D): vLLM's
    >>> view = cache.transpose(0, 2, 1, 3)
    >>> decode_heads(view, view, 4), decode_heads(np.zeros((10, 8, 16, 64)), view, 4)
    (8, 1)
    """
    views = (k,) if v is None else (k, v)
    if all(0 <= x.strides[1] < x.strides[2] for x in views):
        return max(1, min(k.shape[1], DECODE_MAX_ROWS // group))
    return 1


@dataclass(frozen=True)
class Band:
    """Query ``i`` may see key ``j`` iff ``lo <= j - i <= hi`` (before any mask).

    ``lo``/``hi`` are clipped to ``±UNBOUNDED``, which means "no limit".
    """

    lo: int = -UNBOUNDED
    hi: int = UNBOUNDED

    def __post_init__(self):
        object.__setattr__(self, "lo", int(min(max(self.lo, -UNBOUNDED), UNBOUNDED)))
        object.__setattr__(self, "hi", int(min(max(self.hi, -UNBOUNDED), UNBOUNDED)))

    @classmethod
    def from_alignment(cls, lq, lk, causal=None, window=None):
        """The band of ``attention(..., causal=causal, window=window)``.

        The diagonal is key ``i`` for ``causal`` in (None, "upper_left") and key
        ``i + lk - lq`` for "lower_right"; the window ``(left, right)`` is measured
        from that same diagonal (None: no limit on that side), and ``causal`` cuts
        everything right of it.
        """
        offset = lk - lq if causal == "lower_right" else 0
        lo, hi = -UNBOUNDED, UNBOUNDED
        if window is not None:
            left, right = window
            if left is not None:
                lo = offset - min(left, UNBOUNDED)
            if right is not None:
                hi = offset + min(right, UNBOUNDED)
        if causal is not None:
            hi = min(hi, offset)
        return cls(lo, hi)

    @property
    def has_lo(self):
        return self.lo > -UNBOUNDED

    @property
    def has_hi(self):
        return self.hi < UNBOUNDED

    def visible(self, rows, keys):
        """Bool array: whether each query in ``rows`` sees each key in ``keys`` (an outer test)."""
        offsets = np.asarray(keys)[None, :] - np.asarray(rows)[:, None]
        return (offsets >= self.lo) & (offsets <= self.hi)

    def key_range(self, i0, i1, lk):
        """``(k0, k1)``: the keys that some query of ``i0:i1`` sees, within ``0:lk``.

        Works element-wise on integer arrays; an empty range has ``k0 == k1``.
        """
        k0 = np.clip(np.asarray(i0) + self.lo, 0, lk)
        k1 = np.clip(np.asarray(i1) - 1 + self.hi + 1, 0, lk)
        return k0, np.maximum(k1, k0)

    def row_range(self, j0, j1, lq):
        """``(i0, i1)``: the queries that see some key of ``j0:j1``, within ``0:lq``."""
        i0 = np.clip(np.asarray(j0) - self.hi, 0, lq)
        i1 = np.clip(np.asarray(j1) - 1 - self.lo + 1, 0, lq)
        return i0, np.maximum(i1, i0)

    def covers(self, i0, i1, j0, j1):
        """Whether every query of ``i0:i1`` sees every key of ``j0:j1`` (no band test needed)."""
        return j0 - (i1 - 1) >= self.lo and (j1 - 1) - i0 <= self.hi

    def shifted(self, i0, j0):
        """The same band in local coordinates ``i' = i - i0``, ``j' = j - j0``."""
        offset = j0 - i0
        return Band(self.lo - offset if self.has_lo else self.lo,
                    self.hi - offset if self.has_hi else self.hi)

    def restrict(self, i0, i1, j0, j1):
        """The visible part of queries ``i0:i1`` x keys ``j0:j1`` as a tight rectangle.

        Returns ``(r0, r1, c0, c1, band)``: rows that see no key of the rectangle and
        keys that no row sees are cut off the edges, and ``band`` is this band in the
        coordinates of the cut rectangle.  None when no query sees any key.
        """
        r0, r1 = (int(x) for x in self.row_range(j0, j1, i1))
        r0 = max(r0, i0)
        if r0 >= r1:
            return None
        c0, c1 = (int(x) for x in self.key_range(r0, r1, j1))
        c0 = max(c0, j0)
        if c0 >= c1:
            return None
        return r0, r1, c0, c1, self.shifted(r0, c0)


@dataclass(frozen=True)
class ScoreModifiers:
    """What changes a scaled score ``s = q·k * scale`` before the softmax, in this order.

    * ``softcap`` (0: none): ``s <- softcap * tanh(s / softcap)`` (Gemma 2, Grok), before
      masks and ALiBi; its derivative ``1 - tanh²`` enters the backward;
    * ``alibi_slopes`` (None, or ``(Hq,)`` in the compute dtype, contiguous): adds
      ``-slope[h] * |j - i - diagonal - band_shift|`` for query ``i``, key ``j`` (task
      coordinates): the distance from the diagonal the band's window is measured
      from (``diagonal`` is ``Lk - Lq`` for "lower_right", else 0; a task's band shift
      moves it with the band);
    * ``sinks`` (None, or ``(Hq,)``): a logit per head that joins every row's softmax
      denominator with no value (gpt-oss).  Kernels never see it: the drivers fold it
      into the finished ``(out, lse)`` (:func:`fastattn._merge.fold_sinks`), so a row
      with no visible key gives zeros and ``lse = sink``.
    """

    softcap: float = 0.0
    alibi_slopes: object = None
    diagonal: int = 0
    sinks: object = None

    @property
    def in_kernel(self):
        """Whether a kernel has anything to apply (softcap or ALiBi)."""
        return self.softcap != 0.0 or self.alibi_slopes is not None


NO_MODIFIERS = ScoreModifiers()


@dataclass
class KernelCall:
    """One kernel invocation over 4-D views; see "The kernel contract" in docs/design.md.

    ``q (B, Hq, Lq, D)``, ``k (B, Hk, Lk, D)``, ``v (B, Hk, Lk, Dv)``, ``out (B, Hq, Lq,
    Dv)`` and ``lse (B, Hq, Lq)`` are arrays with any strides, whose last axis is
    contiguous (or of length 1).  ``q, k, v, out`` are in the storage dtype: the compute
    dtype (float32 or float64), or float16 / bfloat16, which the kernels read and write
    in place and compute in float32; ``lse``, an additive mask and the partials are
    always in the compute dtype (float32 for half storage).  ``mask`` is a
    ``(B, Hq, Lq, Lk)`` view of any strides (zero strides included) of the kind
    ``mask_kind``.  A task reads ``q``, ``out`` and ``lse`` at its ``TASK_BATCH``, ``k``,
    ``v`` and ``mask`` at its ``TASK_KV_BATCH`` (so their batch sizes may differ), and
    tests the band moved by its ``TASK_BAND_SHIFT``.  In lse-only mode ``v`` and ``out``
    are None and only ``lse`` is written.  ``part_out (n_parts, max_rows, Dv)`` and ``part_lse (n_parts, max_rows)``
    receive split-KV partials; :func:`fastattn._merge.merge_split_parts` folds them in.
    ``modifiers`` (:class:`ScoreModifiers`) change the scaled scores; the kernel ignores
    their ``sinks``.  ``pages`` (None, or an int64 ``(n_seqs, max_pages)`` C-contiguous
    block table; only with MASK_NONE) makes ``k`` and ``v`` a paged cache ``(num_blocks,
    Hk, page_size, D)``: a task's keys are then the logical positions ``k_start:k_stop``
    of sequence ``TASK_KV_BATCH``, position ``j`` stored at block ``pages[kv_batch, j //
    page_size]``, slot ``j % page_size`` (the kernel never reads an entry beyond the
    task's keys).  A kernel reads nothing else, validates nothing, and never reads
    configuration.
    """

    q: np.ndarray
    k: np.ndarray
    v: object
    mask: object
    mask_kind: int
    scale: float
    plan: object
    out: object
    lse: np.ndarray
    part_out: object = None
    part_lse: object = None
    modifiers: ScoreModifiers = NO_MODIFIERS
    pages: object = None

    @property
    def lse_only(self):
        return self.out is None

    @property
    def value_dim(self):
        return 0 if self.v is None else self.v.shape[3]


(BWD_BATCH, BWD_KV_HEAD, BWD_K_START, BWD_K_STOP, BWD_Q_START, BWD_Q_STOP,
 BWD_PART, BWD_BAND_SHIFT) = range(8)
BWD_COLUMNS = 8
"""A backward task: keys ``k_start:k_stop`` of kv head ``kv_head`` in batch ``batch``
(their ``dk``/``dv`` rows belong to this task alone), against the query rows
``q_start:q_stop`` of every query head of the group (the rows the band lets see those
keys).  Its ``dq`` contributions are added to ``dq`` itself when ``part`` is -1 (the
task is the only one that reaches those rows), else to the zeroed partial slot
``part_dq[part]``, which the driver sums into ``dq`` in a fixed order.  As in a
forward task, the band is moved by ``band_shift`` (packed variable-length sequences)."""


@dataclass
class BackwardCall:
    """One backward kernel invocation over 4-D views (see "The backward pass" in docs/design.md).

    ``q, k, v, mask, mask_kind, scale`` as in :class:`KernelCall`; ``dout (B, Hq, Lq,
    Dv)`` the upstream gradient, in the storage dtype of ``q, k, v``; ``lse (B, Hq, Lq)``
    the forward's log-sum-exp and ``delta (B, Hq, Lq)`` = ``rowsum(dout * out)``, both in
    the compute dtype, as are ``dq, dk, dv, part_dq`` (float32 for float16 / bfloat16
    storage: the caller casts the gradients).  The
    kernel writes ``dk (B, Hk, Lk, D)`` and ``dv (B, Hk, Lk, Dv)`` (every key row, zeros
    for keys no query sees) and adds into ``dq (B, Hq, Lq, D)`` (zeroed by the caller)
    or ``part_dq (n_parts, group, Lq, D)`` (zeroed) as the plan's ``BWD_PART`` says.
    ``modifiers`` as in :class:`KernelCall`: the probabilities are recomputed with them,
    and with a softcap the score gradient is multiplied by ``1 - tanh²`` of the capped
    score; ``lse`` (and ``delta``) already include any sink.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dout: np.ndarray
    lse: np.ndarray
    delta: np.ndarray
    mask: object
    mask_kind: int
    scale: float
    plan: object
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    part_dq: np.ndarray
    modifiers: ScoreModifiers = NO_MODIFIERS
