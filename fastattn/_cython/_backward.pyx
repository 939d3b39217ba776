# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The tiled backward kernel in Cython (FlashAttention-2): ``prange`` over the plan's workers.

A task owns the ``dk``/``dv`` rows of its keys.  For every block of those keys it packs
the keys and values (transposed, and the keys once more times the scale), then walks
the query blocks whose rows the band lets see the block -- all heads of the kv group
together, as the forward packs them -- and for each one

    S = Q Kᵀ;  P = exp(m(S * scale) - lse)  (0 where the band or a mask hides the key)
    dP = dO Vᵀ;  dS = P (dP - delta) m'     (m: softcap then ALiBi; m' = 1 - tanh² or 1)
    dV += Pᵀ dO;  dK += dSᵀ Q;  dQ += dS K * scale  (added into dq or the task's part)

and finally writes the block's ``dk`` (times the scale) and ``dv``.  The block products
are the C kernels of ``_backward_tiles.h``: keys along the contiguous axis, query rows
read in place through one pointer per row.  Which worker runs a task never changes
what the task computes, so results are bit-identical for any thread count.

Half-precision inputs (float16, bfloat16: q, k, v, dout) are computed in float32: the
rows a block pair reads -- its query and dO rows, its keys and values -- are converted
into the worker's scratch block by block, never the whole arrays; everything else of
the call (lse, delta, the additive mask, the gradients) is float32.
"""

cimport numpy as cnp
import numpy as np

from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t, uint8_t, uint16_t, uintptr_t

cnp.import_array()

__all__ = ["run_backward_kernel"]

ctypedef fused real:
    float
    double

cdef extern from "_kernels.h" nogil:
    enum: FB_PAD
    int64_t fb_claim(int64_t *next)
    # Row limits lo, hi: NULL, or the keys lo[r] <= j < hi[r] that row r needs.
    void fb_scores_product_f32(Py_ssize_t rows, const float **a, Py_ssize_t depth,
                               const float *b, Py_ssize_t bp, Py_ssize_t cols, float **c,
                               const Py_ssize_t *lo, const Py_ssize_t *hi)
    void fb_scores_product_f64(Py_ssize_t rows, const double **a, Py_ssize_t depth,
                               const double *b, Py_ssize_t bp, Py_ssize_t cols, double **c,
                               const Py_ssize_t *lo, const Py_ssize_t *hi)
    void fb_rows_product_f32(Py_ssize_t rows, const float **a, Py_ssize_t depth,
                             const float *b, Py_ssize_t bp, Py_ssize_t cols, float **c,
                             bint add, const Py_ssize_t *lo, const Py_ssize_t *hi)
    void fb_rows_product_f64(Py_ssize_t rows, const double **a, Py_ssize_t depth,
                             const double *b, Py_ssize_t bp, Py_ssize_t cols, double **c,
                             bint add, const Py_ssize_t *lo, const Py_ssize_t *hi)
    void fb_cols_accumulate_f32(Py_ssize_t rows, const float **a, Py_ssize_t width,
                                const float *b, Py_ssize_t bp, Py_ssize_t cols, float *c,
                                Py_ssize_t cp, const Py_ssize_t *lo, const Py_ssize_t *hi)
    void fb_cols_accumulate_f64(Py_ssize_t rows, const double **a, Py_ssize_t width,
                                const double *b, Py_ssize_t bp, Py_ssize_t cols, double *c,
                                Py_ssize_t cp, const Py_ssize_t *lo, const Py_ssize_t *hi)
    void fb_probs_row_f32(float *s, float *dp, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t kp,
                          const float *add, float scale, float lse, float delta)
    void fb_probs_row_f64(double *s, double *dp, Py_ssize_t lo, Py_ssize_t hi,
                          Py_ssize_t kp, const double *add, double scale, double lse,
                          double delta)
    # The same with a softcap (cap 0: none) and ALiBi: s -= slope * |j - base| for key j.
    void fb_probs_row_modified_f32(float *s, float *dp, Py_ssize_t lo, Py_ssize_t hi,
                                   Py_ssize_t kp, const float *add, float scale, float lse,
                                   float delta, float cap, float slope, float base)
    void fb_probs_row_modified_f64(double *s, double *dp, Py_ssize_t lo, Py_ssize_t hi,
                                   Py_ssize_t kp, const double *add, double scale, double lse,
                                   double delta, double cap, double slope, double base)
    bint fb_rows_finite_f32(Py_ssize_t rows, const float **a, Py_ssize_t width)
    bint fb_rows_finite_f64(Py_ssize_t rows, const double **a, Py_ssize_t width)
    void fb_pack_transposed_f32(Py_ssize_t n, Py_ssize_t width, const char *rows,
                                Py_ssize_t stride, Py_ssize_t kp, float *out)
    void fb_pack_transposed_f64(Py_ssize_t n, Py_ssize_t width, const char *rows,
                                Py_ssize_t stride, Py_ssize_t kp, double *out)
    void fb_unpack_transposed_f32(Py_ssize_t n, Py_ssize_t width, const float *t,
                                  Py_ssize_t kp, float factor, char *rows, Py_ssize_t stride)
    void fb_unpack_transposed_f64(Py_ssize_t n, Py_ssize_t width, const double *t,
                                  Py_ssize_t kp, double factor, char *rows,
                                  Py_ssize_t stride)
    bint fb_strided_finite_f32(Py_ssize_t n, const char *base, Py_ssize_t stride,
                               Py_ssize_t width)
    bint fb_strided_finite_f64(Py_ssize_t n, const char *base, Py_ssize_t stride,
                               Py_ssize_t width)
    void fb_rows_product_nz_f32(Py_ssize_t rows, const float **a, Py_ssize_t depth,
                                const float *b, Py_ssize_t bp, Py_ssize_t cols, float **c,
                                bint add)
    void fb_rows_product_nz_f64(Py_ssize_t rows, const double **a, Py_ssize_t depth,
                                const double *b, Py_ssize_t bp, Py_ssize_t cols, double **c,
                                bint add)
    void fb_cols_accumulate_nz_f32(Py_ssize_t rows, const float **a, Py_ssize_t width,
                                   const float *b, Py_ssize_t bp, Py_ssize_t cols, float *c,
                                   Py_ssize_t cp)
    void fb_cols_accumulate_nz_f64(Py_ssize_t rows, const double **a, Py_ssize_t width,
                                   const double *b, Py_ssize_t bp, Py_ssize_t cols,
                                   double *c, Py_ssize_t cp)
    # n half rows of `width` elements, `stride` bytes apart -> float rows `pitch` apart.
    void fa_rows_to_f32_bf16(Py_ssize_t n, Py_ssize_t width, const char *rows,
                             Py_ssize_t stride, float *dst, Py_ssize_t pitch)
    void fa_rows_to_f32_f16(Py_ssize_t n, Py_ssize_t width, const char *rows,
                            Py_ssize_t stride, float *dst, Py_ssize_t pitch)

include "_contract.pxi"
include "_isa.pxi"

cdef enum:
    N_ROW_POINTERS = 5  # per row of a query block: q, dO, S, dS and dq rows
    CLAIM_STRIDE = ALIGN_BYTES // 8  # one cache line per worker's task counter
    F16_EXPONENT = 0x7C00  # the exponent bits of float16 and bfloat16: all set for
    BF16_EXPONENT = 0x7F80  # inf and NaN only

cdef enum:
    # How q, k, v and dout are stored: in the compute dtype, or in a half dtype whose
    # rows are converted to float32 (the compute dtype) block by block.
    STORE_NATIVE = 0
    STORE_F16 = 1
    STORE_BF16 = 2


cdef struct Problem:
    # Everything a task reads besides its own row of the task table.
    View q, k, v, dout, lse, delta, mask, dq, dk, dv, part_dq
    int mask_kind
    int storage
    Py_ssize_t group, block_q, block_k, head_dim, value_dim
    int64_t band_lo, band_hi
    double scale
    # Score modifiers (ScoreModifiers): softcap 0 is none; ALiBi's slopes (Hq,) in the
    # compute dtype, and the diagonal its distances are measured from.
    double softcap
    bint alibi
    View slopes
    int64_t diagonal
    # A worker's scratch row, in elements of the compute dtype (kp: block_k padded, dp:
    # head_dim padded, rows: group * block_q):  kt (D x kp) | vt (Dv x kp) | ks (kp x dp)
    # | dkt (D x kp) | dvt (Dv x kp) | s (rows x kp) | ds (rows x kp) | dqt (rows x dp)
    # | add (kp) | lse (rows) | delta (rows);  with half inputs also, in float32,
    # qh (rows x dp) | oh (rows x vp) | kvh (block_k x max(dp, vp)): the block's query,
    # dO, and key or value rows (vp: value_dim padded);  and its pointer row: q | dO | s
    # | ds | dq rows (q, dO: the caller's rows, or qh's and oh's with half inputs; dq:
    # rows of dq itself, or of dqt when D is not a whole number of vectors).
    Py_ssize_t kp, dp, vp, rows
    bint dq_in_place  # dQ products add straight into dq's rows (D is whole vectors)
    bint rows_finite  # q and dout hold no inf or NaN (else each block pair is checked)
    Py_ssize_t at_vt, at_ks, at_dkt, at_dvt, at_s, at_ds, at_dqt, at_add, at_lse, at_delta
    Py_ssize_t at_qh, at_oh, at_kvh
    Py_ssize_t tile_size


# ---------------------------------------------------------------------------
# Python entry point

def run_backward_kernel(call):
    """Run a backward plan over the 4-D views of ``call``; writes its gradients in place.

    Parameters
    ----------
    call : fastattn._contract.BackwardCall
        Inputs, the plan, and the outputs: ``dk``/``dv`` are written (every key row),
        ``dq`` or ``part_dq`` (zeroed by the caller) are added into, as the plan's
        ``BWD_PART`` column says.  The outputs must be C-contiguous; the inputs may have
        any strides whose last axis is contiguous (or of length 1).  ``q``, ``k``,
        ``v``, ``dout`` are float32, float64, float16 or bfloat16 (ml_dtypes), all
        one dtype; the compute dtype is theirs, float32 for the half ones, and
        ``lse``, ``delta``, an additive ``mask`` and the outputs are in it.

    Examples
    --------
    One query that sees one key: its probability is 1, so ``dv = dout`` and the
    other gradients vanish.

    >>> import numpy as np
    >>> from fastattn._contract import BackwardCall, Band
    >>> from types import SimpleNamespace
    >>> x = np.ones((1, 1, 1, 2))
    >>> plan = SimpleNamespace(tasks=np.array([[0, 0, 0, 1, 0, 1, -1, 0]]),
    ...                        worker_starts=np.array([0, 1]), block_q=1, block_k=1,
    ...                        group=1, band=Band())
    >>> lse, delta = np.full((1, 1, 1), 2.0), np.full((1, 1, 1), 2.0)
    >>> dq, dk, dv = np.zeros_like(x), np.empty_like(x), np.empty_like(x)
    >>> run_backward_kernel(BackwardCall(x, x, x, x, lse, delta, None, 0, 1.0, plan,
    ...                                  dq, dk, dv, np.zeros((0, 1, 1, 2))))
    >>> dv.ravel().tolist(), dq.ravel().tolist(), dk.ravel().tolist()
    ([1.0, 1.0], [0.0, 0.0], [0.0, 0.0])
    """
    cdef int storage = _storage(call.q.dtype)
    dtype = call.q.dtype if storage == STORE_NATIVE else np.dtype(np.float32)
    _check_layout(call, dtype)
    plan = call.plan
    cdef Problem problem = _describe(call, storage)
    slopes = _describe_modifiers(&problem, getattr(call, "modifiers", None), dtype)
    cdef cnp.ndarray tasks = np.ascontiguousarray(plan.tasks, dtype=np.int64)
    cdef cnp.ndarray starts = np.ascontiguousarray(plan.worker_starts, dtype=np.int64)
    cdef Py_ssize_t n_workers = starts.shape[0] - 1
    if tasks.ndim != 2 or tasks.shape[1] != BWD_COLUMNS:  # the kernel reads every column
        raise ValueError(f"the backward plan's tasks must have {BWD_COLUMNS} columns "
                         f"(BWD_*), got shape {np.shape(tasks)}")
    if tasks.shape[0] == 0:
        return
    # Per-worker scratch, allocated once per call (as NumPy arrays, so that memory
    # tracing sees it) and indexed by worker, never by thread id.
    cdef cnp.ndarray tiles = np.empty(n_workers * problem.tile_size * dtype.itemsize
                                      + ALIGN_BYTES, dtype=np.uint8)
    cdef cnp.ndarray pointers = np.empty((n_workers, N_ROW_POINTERS * problem.rows),
                                         dtype=np.uintp)
    cdef cnp.ndarray limits = np.empty((n_workers, 2 * problem.rows), dtype=np.intp)
    # Each worker's next unclaimed task (see _run_workers), a cache line apart.
    cdef cnp.ndarray claims = np.zeros((n_workers, CLAIM_STRIDE), dtype=np.int64)
    claims[:, 0] = starts[:-1]
    cdef int64_t *claim_ptr = <int64_t *> cnp.PyArray_DATA(claims)
    cdef Py_ssize_t *limit_ptr = <Py_ssize_t *> cnp.PyArray_DATA(limits)
    cdef char *tile_ptr = _aligned(<char *> cnp.PyArray_DATA(tiles))
    cdef const int64_t *task_ptr = <const int64_t *> cnp.PyArray_DATA(tasks)
    cdef const int64_t *start_ptr = <const int64_t *> cnp.PyArray_DATA(starts)
    cdef void **pointer_ptr = <void **> cnp.PyArray_DATA(pointers)
    cdef bint single = dtype == np.float32
    problem.rows_finite = (_all_finite(&problem.q, call.q.shape, storage, single)
                           and _all_finite(&problem.dout, call.dout.shape, storage, single))
    if single:
        _run_workers(&problem, task_ptr, start_ptr, claim_ptr, n_workers,
                     <float *> tile_ptr, <float **> pointer_ptr, limit_ptr)
    else:
        _run_workers(&problem, task_ptr, start_ptr, claim_ptr, n_workers,
                     <double *> tile_ptr, <double **> pointer_ptr, limit_ptr)


cdef int _storage(dtype) except -1:
    """How the kernel reads inputs of ``dtype``: as they are, or converted to float32."""
    if dtype == np.float32 or dtype == np.float64:
        return STORE_NATIVE
    if dtype == np.float16:
        return STORE_F16
    if dtype.name == "bfloat16" and dtype.kind == "V" and dtype.itemsize == 2:
        return STORE_BF16  # ml_dtypes' bfloat16 (registered at run time)
    raise TypeError(f"the Cython backward kernel reads float32, float64, float16 or "
                    f"bfloat16 inputs, not {dtype}")


def _check_layout(call, compute):
    """The kernel writes its outputs as dense arrays and reads input rows as vectors;
    everything but q, k, v and dout is in the ``compute`` dtype."""
    for name in ("dq", "dk", "dv", "part_dq"):
        array = getattr(call, name)
        if not array.flags.c_contiguous or array.dtype != compute:
            raise ValueError(f"BackwardCall.{name} must be a C-contiguous {compute} "
                             f"array (the driver allocates it), got strides "
                             f"{array.strides} and dtype {array.dtype}")
    for name in ("lse", "delta", "mask"):
        array = getattr(call, name)
        if name == "mask" and (array is None or call.mask_kind != MASK_ADD):
            continue
        if array.dtype != compute:
            raise ValueError(f"BackwardCall.{name} must be in the compute dtype {compute} "
                             f"(q is {call.q.dtype}), got {array.dtype}")
    for name in ("q", "k", "v", "dout"):
        array = getattr(call, name)
        if array.ndim != 4 or array.dtype != call.q.dtype or (
                array.shape[3] > 1 and array.strides[3] != array.itemsize):
            raise ValueError(f"BackwardCall.{name} must be a 4-D {call.q.dtype} view whose "
                             f"last axis is contiguous, got shape {array.shape}, strides "
                             f"{array.strides} and dtype {array.dtype}")


cdef bint _all_finite(const View *x, shape, int storage, bint single):
    """Whether a 4-D array of ``storage`` (else float32 if ``single``, else float64), last
    axis contiguous, holds no inf or NaN: one pass, no copy."""
    cdef Py_ssize_t b, h, n_b = shape[0], n_h = shape[1], n = shape[2], width = shape[3]
    cdef const char *rows
    cdef bint finite = True
    with nogil:
        for b in range(n_b):
            for h in range(n_h):
                rows = x.data + b * x.stride[0] + h * x.stride[1]
                if storage == STORE_F16:
                    finite = _half_finite(n, rows, x.stride[2], width, F16_EXPONENT)
                elif storage == STORE_BF16:
                    finite = _half_finite(n, rows, x.stride[2], width, BF16_EXPONENT)
                elif single:
                    finite = fb_strided_finite_f32(n, rows, x.stride[2], width)
                else:
                    finite = fb_strided_finite_f64(n, rows, x.stride[2], width)
                if not finite:
                    return False
    return True


cdef bint _half_finite(Py_ssize_t n, const char *base, Py_ssize_t stride, Py_ssize_t width,
                       uint16_t exponent) noexcept nogil:
    """Whether ``n`` rows of ``width`` half elements hold no inf or NaN: those, and only
    those, have all the bits of ``exponent`` set."""
    cdef Py_ssize_t i, d
    cdef const uint16_t *row
    cdef uint16_t top
    for i in range(n):
        row = <const uint16_t *> (base + i * stride)
        top = 0
        for d in range(width):  # a max, not an early exit: it vectorises
            top = max(top, row[d] & exponent)
        if top == exponent:
            return False
    return True


cdef Problem _describe(call, int storage):
    """Gather pointers, strides, sizes and the scratch layout of one call."""
    cdef Problem p
    plan = call.plan
    p.q, p.k, p.v, p.dout = _view(call.q), _view(call.k), _view(call.v), _view(call.dout)
    p.lse, p.delta = _view(call.lse), _view(call.delta)
    p.dq, p.dk, p.dv, p.part_dq = (_view(call.dq), _view(call.dk), _view(call.dv),
                                   _view(call.part_dq))
    p.mask_kind = call.mask_kind if call.mask is not None else MASK_NONE
    if p.mask_kind == MASK_NONE:
        p.mask.data = NULL
    else:
        p.mask = _view(call.mask)
    p.group, p.block_q, p.block_k = plan.group, plan.block_q, plan.block_k
    p.head_dim, p.value_dim = call.q.shape[3], call.v.shape[3]
    p.band_lo, p.band_hi = plan.band.lo, plan.band.hi
    p.scale = call.scale
    p.storage = storage
    p.kp = _padded(p.block_k, FB_PAD)
    p.dp = _padded(p.head_dim, FB_PAD)
    p.vp = _padded(p.value_dim, FB_PAD)
    p.rows = p.group * p.block_q
    p.dq_in_place = p.dp == p.head_dim
    cdef Py_ssize_t rows_tile = _padded(p.rows * p.kp, FB_PAD)
    p.at_vt = _padded(p.head_dim * p.kp, FB_PAD)
    p.at_ks = p.at_vt + _padded(p.value_dim * p.kp, FB_PAD)
    p.at_dkt = p.at_ks + p.kp * p.dp
    p.at_dvt = p.at_dkt + p.head_dim * p.kp
    p.at_s = p.at_dvt + _padded(p.value_dim * p.kp, FB_PAD)
    p.at_ds = p.at_s + rows_tile
    p.at_dqt = p.at_ds + rows_tile
    p.at_add = p.at_dqt + _padded(p.rows * p.dp, FB_PAD)
    p.at_lse = p.at_add + p.kp
    p.at_delta = p.at_lse + _padded(p.rows, FB_PAD)
    cdef Py_ssize_t staged = storage != STORE_NATIVE  # half rows: converted copies
    p.at_qh = p.at_delta + _padded(p.rows, FB_PAD)
    p.at_oh = p.at_qh + staged * p.rows * p.dp
    p.at_kvh = p.at_oh + staged * p.rows * p.vp
    p.tile_size = p.at_kvh + staged * p.block_k * max(p.dp, p.vp)
    return p


cdef object _describe_modifiers(Problem *p, modifiers, dtype):
    """Put the softcap and ALiBi of ``modifiers`` into ``p`` (see _modifier_fields)."""
    return _modifier_fields(modifiers, dtype, &p.softcap, &p.alibi, &p.slopes, &p.diagonal)


# ---------------------------------------------------------------------------
# Parallel driver, one task, one key block, one query block

cdef void _run_workers(const Problem *p, const int64_t *tasks, const int64_t *starts,
                       int64_t *claims, Py_ssize_t n_workers, real *tiles, real **pointers,
                       Py_ssize_t *limits) noexcept nogil:
    cdef Py_ssize_t w
    if n_workers == 1:  # no thread team: also what a forked child runs (see _config)
        _run_worker(p, tasks, starts, claims, 1, 0, tiles, pointers, limits)
        return
    for w in prange(n_workers, nogil=True, num_threads=n_workers, schedule="static",
                    chunksize=1):
        _run_worker(p, tasks, starts, claims, n_workers, w, tiles, pointers, limits)


cdef void _run_worker(const Problem *p, const int64_t *tasks, const int64_t *starts,
                      int64_t *claims, Py_ssize_t n_workers, Py_ssize_t w, real *tiles,
                      real **pointers, Py_ssize_t *limits) noexcept nogil:
    """Run worker ``w``'s own tasks in order, then take the unstarted tasks of the others.

    On two cores shared with other processes one thread is often descheduled for a
    while; with a fixed split the call then waits for it (measured here: two threads no
    faster than one).  A task computes the same whichever scratch runs it, and its
    outputs are its own, so taking tasks over changes timings only, never results.
    """
    cdef Py_ssize_t i, owner
    cdef int64_t t
    for i in range(n_workers):
        owner = (w + i) % n_workers
        t = fb_claim(claims + owner * CLAIM_STRIDE)
        while t < starts[owner + 1]:
            _run_task(p, tasks + BWD_COLUMNS * t, tiles + w * p.tile_size,
                      pointers + w * N_ROW_POINTERS * p.rows, limits + w * 2 * p.rows)
            t = fb_claim(claims + owner * CLAIM_STRIDE)


cdef void _run_task(const Problem *p, const int64_t *task, real *tile, real **pointers,
                    Py_ssize_t *limits) noexcept nogil:
    """Every key block of the task's key chunk."""
    cdef int64_t j0 = task[BWD_K_START], k1 = task[BWD_K_STOP]
    while j0 < k1:
        _key_block(p, task, j0, min(p.block_k, k1 - j0), tile, pointers, limits)
        j0 += p.block_k


cdef void _key_block(const Problem *p, const int64_t *task, int64_t j0, Py_ssize_t n_k,
                     real *tile, real **pointers, Py_ssize_t *limits) noexcept nogil:
    """dk, dv of keys ``j0:j0+n_k`` over the task's query rows that see them."""
    cdef int64_t b = task[BWD_BATCH], kv_head = task[BWD_KV_HEAD]
    cdef Py_ssize_t kp = _padded(n_k, FB_PAD), r
    cdef bint keys_finite
    # Rows that the task's band (moved by its shift) lets see some key of the block:
    # j0 - hi <= i <= j0 + n_k - 1 - lo.
    cdef int64_t i0 = max(task[BWD_Q_START], j0 - p.band_hi - task[BWD_BAND_SHIFT])
    cdef int64_t i1 = min(task[BWD_Q_STOP], j0 + n_k - p.band_lo - task[BWD_BAND_SHIFT])
    keys_finite = _pack_keys(p, b, kv_head, j0, n_k, kp, tile)
    for r in range(p.head_dim * kp):
        tile[p.at_dkt + r] = 0
    for r in range(p.value_dim * kp):
        tile[p.at_dvt + r] = 0
    while i0 < i1:
        _query_block(p, task, j0, n_k, kp, i0, min(p.block_q, i1 - i0), keys_finite, tile,
                     pointers, limits)
        i0 += p.block_q
    _write_keys(p, b, kv_head, j0, n_k, kp, tile)


cdef void _query_block(const Problem *p, const int64_t *task, int64_t j0, Py_ssize_t n_k,
                       Py_ssize_t kp, int64_t i0, Py_ssize_t n_q, bint keys_finite, real *tile,
                       real **pointers, Py_ssize_t *limits) noexcept nogil:
    """One (query block, key block) pair: P, dS, and their contributions to dv, dk, dq.

    Where the band cuts the pair (a causal diagonal), the products skip the keys no row
    of a register block sees.  With a non-finite key, query or upstream gradient in the
    pair, the three gradient products skip zero factors (see naive_backward: a zero
    weight passes nothing on).
    """
    cdef int64_t b = task[BWD_BATCH], head0 = task[BWD_KV_HEAD] * p.group
    cdef Py_ssize_t rows = p.group * n_q
    cdef const real **q_rows = <const real **> pointers
    cdef const real **o_rows = <const real **> (pointers + p.rows)
    cdef real **s_rows = pointers + 2 * p.rows
    cdef real **ds_rows = pointers + 3 * p.rows
    cdef real **dq_rows = pointers + 4 * p.rows
    cdef real *s = tile + p.at_s
    cdef real *ds = tile + p.at_ds
    cdef Py_ssize_t *lo = limits
    cdef Py_ssize_t *hi = limits + p.rows
    cdef int64_t shift = task[BWD_BAND_SHIFT]
    if p.mask_kind == MASK_KEEP and not _mask_keeps_any(
            &p.mask, p.group, p.band_lo + shift, p.band_hi + shift, b, head0, i0, n_q, j0, n_k):
        return
    _gather_rows(p, task, i0, n_q, kp, tile, pointers)
    if not _row_limits(p, i0, n_q, j0, n_k, shift, tile + p.at_lse, lo, hi):
        lo = hi = NULL  # every row needs every key: no limits to test
    _scores_product(rows, q_rows, p.head_dim, tile, kp, kp, s_rows, lo, hi)
    _scores_product(rows, o_rows, p.value_dim, tile + p.at_vt, kp, kp, ds_rows, lo, hi)
    _probabilities(p, b, head0, i0, n_q, j0, n_k, shift, kp, tile, limits)
    if keys_finite and (p.rows_finite or (_rows_finite(rows, q_rows, p.head_dim)
                                          and _rows_finite(rows, o_rows, p.value_dim))):
        _cols_accumulate(rows, o_rows, p.value_dim, s, kp, kp, tile + p.at_dvt, kp, lo, hi)
        _cols_accumulate(rows, q_rows, p.head_dim, ds, kp, kp, tile + p.at_dkt, kp, lo, hi)
        _rows_product(rows, <const real **> ds_rows, n_k, tile + p.at_ks, p.dp, p.dp,
                      dq_rows, p.dq_in_place, lo, hi)
    else:
        _cols_accumulate_nz(rows, o_rows, p.value_dim, s, kp, kp, tile + p.at_dvt, kp)
        _cols_accumulate_nz(rows, q_rows, p.head_dim, ds, kp, kp, tile + p.at_dkt, kp)
        _rows_product_nz(rows, <const real **> ds_rows, n_k, tile + p.at_ks, p.dp, p.dp,
                         dq_rows, p.dq_in_place)
    if not p.dq_in_place:
        _add_dq(p, task, i0, n_q, tile + p.at_dqt)


# ---------------------------------------------------------------------------
# Typed entry points to the C tile kernels

cdef inline void _scores_product(Py_ssize_t rows, const real **a, Py_ssize_t depth,
                                 const real *b, Py_ssize_t bp, Py_ssize_t cols, real **c,
                                 const Py_ssize_t *lo, const Py_ssize_t *hi) noexcept nogil:
    if real is float:
        fb_scores_product_f32(rows, a, depth, b, bp, cols, c, lo, hi)
    else:
        fb_scores_product_f64(rows, a, depth, b, bp, cols, c, lo, hi)


cdef inline void _rows_product(Py_ssize_t rows, const real **a, Py_ssize_t depth,
                               const real *b, Py_ssize_t bp, Py_ssize_t cols, real **c,
                               bint add, const Py_ssize_t *lo,
                               const Py_ssize_t *hi) noexcept nogil:
    if real is float:
        fb_rows_product_f32(rows, a, depth, b, bp, cols, c, add, lo, hi)
    else:
        fb_rows_product_f64(rows, a, depth, b, bp, cols, c, add, lo, hi)


cdef inline void _cols_accumulate(Py_ssize_t rows, const real **a, Py_ssize_t width,
                                  const real *b, Py_ssize_t bp, Py_ssize_t cols, real *c,
                                  Py_ssize_t cp, const Py_ssize_t *lo,
                                  const Py_ssize_t *hi) noexcept nogil:
    if real is float:
        fb_cols_accumulate_f32(rows, a, width, b, bp, cols, c, cp, lo, hi)
    else:
        fb_cols_accumulate_f64(rows, a, width, b, bp, cols, c, cp, lo, hi)


cdef inline bint _rows_finite(Py_ssize_t rows, const real **a,
                              Py_ssize_t width) noexcept nogil:
    if real is float:
        return fb_rows_finite_f32(rows, a, width)
    else:
        return fb_rows_finite_f64(rows, a, width)


cdef inline void _rows_product_nz(Py_ssize_t rows, const real **a, Py_ssize_t depth,
                                  const real *b, Py_ssize_t bp, Py_ssize_t cols, real **c,
                                  bint add) noexcept nogil:
    if real is float:
        fb_rows_product_nz_f32(rows, a, depth, b, bp, cols, c, add)
    else:
        fb_rows_product_nz_f64(rows, a, depth, b, bp, cols, c, add)


cdef inline void _cols_accumulate_nz(Py_ssize_t rows, const real **a, Py_ssize_t width,
                                     const real *b, Py_ssize_t bp, Py_ssize_t cols, real *c,
                                     Py_ssize_t cp) noexcept nogil:
    if real is float:
        fb_cols_accumulate_nz_f32(rows, a, width, b, bp, cols, c, cp)
    else:
        fb_cols_accumulate_nz_f64(rows, a, width, b, bp, cols, c, cp)


cdef inline void _pack_transposed(Py_ssize_t n, Py_ssize_t width, const char *rows,
                                  Py_ssize_t stride, Py_ssize_t kp, real *out) noexcept nogil:
    if real is float:
        fb_pack_transposed_f32(n, width, rows, stride, kp, out)
    else:
        fb_pack_transposed_f64(n, width, rows, stride, kp, out)


cdef inline void _unpack_transposed(Py_ssize_t n, Py_ssize_t width, const real *t,
                                    Py_ssize_t kp, real factor, char *rows,
                                    Py_ssize_t stride) noexcept nogil:
    if real is float:
        fb_unpack_transposed_f32(n, width, t, kp, factor, rows, stride)
    else:
        fb_unpack_transposed_f64(n, width, t, kp, factor, rows, stride)


cdef inline void _to_float_rows(int storage, Py_ssize_t n, Py_ssize_t width,
                                const char *rows, Py_ssize_t stride, float *dst,
                                Py_ssize_t pitch) noexcept nogil:
    if storage == STORE_BF16:
        fa_rows_to_f32_bf16(n, width, rows, stride, dst, pitch)
    else:
        fa_rows_to_f32_f16(n, width, rows, stride, dst, pitch)


cdef inline void _probs_row(real *s, real *dp, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t kp,
                            const real *add, real scale, real lse,
                            real delta) noexcept nogil:
    if real is float:
        fb_probs_row_f32(s, dp, lo, hi, kp, add, scale, lse, delta)
    else:
        fb_probs_row_f64(s, dp, lo, hi, kp, add, scale, lse, delta)


cdef inline void _probs_row_modified(real *s, real *dp, Py_ssize_t lo, Py_ssize_t hi,
                                     Py_ssize_t kp, const real *add, real scale, real lse,
                                     real delta, real cap, real slope,
                                     real base) noexcept nogil:
    if real is float:
        fb_probs_row_modified_f32(s, dp, lo, hi, kp, add, scale, lse, delta, cap, slope, base)
    else:
        fb_probs_row_modified_f64(s, dp, lo, hi, kp, add, scale, lse, delta, cap, slope, base)


# ---------------------------------------------------------------------------
# Steps that touch the caller's arrays

cdef bint _pack_keys(const Problem *p, int64_t b, int64_t kv_head, int64_t j0, Py_ssize_t n_k,
                     Py_ssize_t kp, real *tile) noexcept nogil:
    """kt = keysᵀ, vt = valuesᵀ (pitch kp) and ks = keys * scale (pitch dp); zero padding.

    Returns whether the keys are all finite (a scaled key is non-finite when the key is,
    or when it overflows; either way the slow path is the safe one).  Half keys and
    values pass through kvh as float rows, the keys first.
    """
    cdef Py_ssize_t j, d, stride
    cdef real *ks = tile + p.at_ks
    cdef real factor = <real> p.scale
    cdef const char *rows = _block_rows(p, &p.k, p.head_dim, p.dp, b, kv_head, j0, n_k,
                                        tile + p.at_kvh, &stride)
    cdef const real *key
    _pack_transposed(n_k, p.head_dim, rows, stride, kp, tile)
    for j in range(n_k):
        key = <const real *> (rows + j * stride)
        for d in range(p.head_dim):
            ks[j * p.dp + d] = key[d] * factor
        for d in range(p.head_dim, p.dp):
            ks[j * p.dp + d] = 0
    rows = _block_rows(p, &p.v, p.value_dim, p.vp, b, kv_head, j0, n_k, tile + p.at_kvh,
                       &stride)
    _pack_transposed(n_k, p.value_dim, rows, stride, kp, tile + p.at_vt)
    return _rows_finite(1, <const real **> &ks, n_k * p.dp)


cdef const char *_block_rows(const Problem *p, const View *x, Py_ssize_t width,
                             Py_ssize_t pitch, int64_t b, int64_t head, int64_t i0,
                             Py_ssize_t n, real *staging, Py_ssize_t *stride) noexcept nogil:
    """Rows ``i0:i0+n`` of ``x[b, head]`` as rows of ``real``, ``stride[0]`` bytes apart:
    the caller's own, or with half inputs their exact float conversion in ``staging``
    (``pitch`` floats apart)."""
    cdef const char *rows = _row_ptr(x, b, head, i0)
    if real is float:
        if p.storage != STORE_NATIVE:
            _to_float_rows(p.storage, n, width, rows, x.stride[2], staging, pitch)
            stride[0] = pitch * sizeof(float)
            return <const char *> staging
    stride[0] = x.stride[2]
    return rows


cdef void _gather_rows(const Problem *p, const int64_t *task, int64_t i0, Py_ssize_t n_q,
                       Py_ssize_t kp, real *tile, real **pointers) noexcept nogil:
    """Row pointers (q, dO, the S and dS tiles, dq's destination) and lse, delta of the rows.

    Row ``h * n_q + i`` is query ``i0 + i`` of head ``head0 + h``, as in the forward.
    Half q and dO rows are converted into qh and oh.
    """
    cdef int64_t b = task[BWD_BATCH], head0 = task[BWD_KV_HEAD] * p.group
    cdef int64_t part = task[BWD_PART]
    cdef Py_ssize_t h, i, r, q_stride, o_stride
    cdef real *lse = tile + p.at_lse
    cdef real *delta = tile + p.at_delta
    cdef const char *q
    cdef const char *o
    for h in range(p.group):
        q = _block_rows(p, &p.q, p.head_dim, p.dp, b, head0 + h, i0, n_q,
                        tile + p.at_qh + h * n_q * p.dp, &q_stride)
        o = _block_rows(p, &p.dout, p.value_dim, p.vp, b, head0 + h, i0, n_q,
                        tile + p.at_oh + h * n_q * p.vp, &o_stride)
        for i in range(n_q):
            r = h * n_q + i
            pointers[r] = <real *> (q + i * q_stride)
            pointers[p.rows + r] = <real *> (o + i * o_stride)
            pointers[2 * p.rows + r] = tile + p.at_s + r * kp
            pointers[3 * p.rows + r] = tile + p.at_ds + r * kp
            if not p.dq_in_place:
                pointers[4 * p.rows + r] = tile + p.at_dqt + r * p.dp
            elif part < 0:
                pointers[4 * p.rows + r] = <real *> _row_ptr(&p.dq, b, head0 + h, i0 + i)
            else:
                pointers[4 * p.rows + r] = <real *> _row_ptr(&p.part_dq, part, h, i0 + i)
            lse[r] = (<const real *> _row_ptr(&p.lse, b, head0 + h, i0 + i))[0]
            delta[r] = (<const real *> _row_ptr(&p.delta, b, head0 + h, i0 + i))[0]


cdef bint _row_limits(const Problem *p, int64_t i0, Py_ssize_t n_q, int64_t j0,
                      Py_ssize_t n_k, int64_t shift, const real *lse, Py_ssize_t *lo,
                      Py_ssize_t *hi) noexcept nogil:
    """The keys ``lo[r] <= j < hi[r]`` of the block that row ``r`` sees by the band.

    Query ``i`` sees the keys ``i + band_lo + shift <= j <= i + band_hi + shift``: one
    run per row, the same for every head.  A row with lse -inf saw no key in the forward
    and gets none.  Returns whether some row misses some key of the block.
    """
    cdef Py_ssize_t h, i, r, first, stop
    cdef int64_t row
    cdef bint limited = False
    for i in range(n_q):
        row = i0 + i + shift
        first = min(max(row + p.band_lo - j0, 0), n_k)
        stop = min(max(row + p.band_hi - j0 + 1, first), n_k)
        for h in range(p.group):
            r = h * n_q + i
            lo[r], hi[r] = first, stop
            if lse[r] == -INFINITY:
                hi[r] = first
            limited = limited or lo[r] > 0 or hi[r] < n_k
    return limited


cdef void _probabilities(const Problem *p, int64_t b, int64_t head0, int64_t i0,
                         Py_ssize_t n_q, int64_t j0, Py_ssize_t n_k, int64_t shift,
                         Py_ssize_t kp, real *tile, const Py_ssize_t *limits) noexcept nogil:
    """Turn the scores into P and dP into dS, row by row, with the score modifiers, the
    band and the mask.

    ``limits`` holds each row's visible keys (see :func:`_row_limits`); ``shift`` is
    the task's band shift, which moves ALiBi's diagonal with the band.
    """
    cdef Py_ssize_t h, i, r, lo, hi
    cdef real *lse = tile + p.at_lse
    cdef real *delta = tile + p.at_delta
    cdef const real *add
    cdef bint modified = p.softcap != 0 or p.alibi
    cdef real slope = 0
    for h in range(p.group):
        if p.alibi:
            slope = (<const real *> (p.slopes.data + (head0 + h) * p.slopes.stride[0]))[0]
        for i in range(n_q):
            r = h * n_q + i
            lo, hi = limits[r], limits[p.rows + r]
            add = NULL
            if p.mask_kind != MASK_NONE and lo < hi:
                add = _mask_row(p, b, head0 + h, i0 + i, j0, lo, hi, tile + p.at_add)
            if modified:  # ALiBi's distance of key j0 + j: |j - (i0 + i + diagonal - j0)|
                _probs_row_modified(tile + p.at_s + r * kp, tile + p.at_ds + r * kp, lo, hi,
                                    kp, add, <real> p.scale, lse[r], delta[r],
                                    <real> p.softcap, slope,
                                    <real> (i0 + i + p.diagonal + shift - j0))
            else:
                _probs_row(tile + p.at_s + r * kp, tile + p.at_ds + r * kp, lo, hi, kp, add,
                           <real> p.scale, lse[r], delta[r])


cdef const real *_mask_row(const Problem *p, int64_t b, int64_t head, int64_t row, int64_t j0,
                           Py_ssize_t lo, Py_ssize_t hi, real *buffer) noexcept nogil:
    """The row's mask over keys ``j0 + lo : j0 + hi`` as additive values (-inf = masked).

    A contiguous additive mask is read in place; a bool mask or a strided one is copied.
    """
    cdef Py_ssize_t j, step = p.mask.stride[3]
    cdef const char *src = _row_ptr(&p.mask, b, head, row) + j0 * step
    if p.mask_kind == MASK_ADD:
        if step == sizeof(real):
            return <const real *> src
        for j in range(lo, hi):
            buffer[j] = (<const real *> (src + j * step))[0]
    else:
        for j in range(lo, hi):
            buffer[j] = 0 if (<const uint8_t *> (src + j * step))[0] else -INFINITY
    return buffer


cdef void _add_dq(const Problem *p, const int64_t *task, int64_t i0, Py_ssize_t n_q,
                  const real *dqt) noexcept nogil:
    """Add the block's dQ rows into ``dq``, or into the task's part of ``part_dq``."""
    cdef int64_t b = task[BWD_BATCH], head0 = task[BWD_KV_HEAD] * p.group
    cdef int64_t part = task[BWD_PART]
    cdef Py_ssize_t h, i, d
    cdef real *dst
    cdef const real *src
    for h in range(p.group):
        for i in range(n_q):
            if part < 0:
                dst = <real *> _row_ptr(&p.dq, b, head0 + h, i0 + i)
            else:
                dst = <real *> _row_ptr(&p.part_dq, part, h, i0 + i)
            src = dqt + (h * n_q + i) * p.dp
            for d in range(p.head_dim):
                dst[d] += src[d]


cdef void _write_keys(const Problem *p, int64_t b, int64_t kv_head, int64_t j0,
                      Py_ssize_t n_k, Py_ssize_t kp, const real *tile) noexcept nogil:
    """dk = dktᵀ * scale and dv = dvtᵀ for the block's keys."""
    _unpack_transposed(n_k, p.head_dim, tile + p.at_dkt, kp, <real> p.scale,
                       _row_ptr(&p.dk, b, kv_head, j0), p.dk.stride[2])
    _unpack_transposed(n_k, p.value_dim, tile + p.at_dvt, kp, 1,
                       _row_ptr(&p.dv, b, kv_head, j0), p.dv.stride[2])
