# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The tiled attention kernel in Cython: OpenMP ``prange`` over the plan's workers.

The kernel contract (:mod:`fastattn._contract`, "The kernel contract" in
docs/design.md) says what it computes; the task steps are those of
:mod:`fastattn._numba.kernel`.  Each task packs its query rows (all heads of a kv
group, pre-scaled) into a tile, then for every kv block forms the scores, applies the
score modifiers (softcap, ALiBi), then the band and the mask, updates the running max
and sum, and adds ``P @ V`` to the accumulator, rescaling it only when a row's max grew.
Rows are normalised once, at the end.

The block products and the softmax are the register-blocked C kernels of
``_tiles.h``, which keep every tile transposed (query rows along the contiguous
axis): keys and values are then read in place, whatever their row stride, and the
row-wise softmax becomes element-wise vector work.  Arrays are reached through
their data pointer and byte strides (negative and zero included), so read-only
and broadcast views need no copy; a paged cache's keys are found through its block
table (``KernelCall.pages``).  All indexing is 64-bit.  The contract's constants
are compiled in (``_contract.pxi``); ``fastattn._cython`` checks them against the
Python ones at import.
"""

cimport numpy as cnp
import numpy as np

from cython.parallel cimport prange
from libc.math cimport INFINITY, log
from libc.stdint cimport int64_t, uint8_t, uint16_t, uintptr_t

from fastattn._contract import decode_heads

cnp.import_array()

__all__ = ["run_kernel", "COMPILED_CONSTANTS"]

ctypedef fused real:
    float
    double

cdef extern from "_kernels.h" nogil:
    # See _tiles.h: tiles are transposed, query rows along the contiguous axis.
    enum: FA_ROW_PAD
    void fa_scores_t_f32(Py_ssize_t n_k, Py_ssize_t dim, const char *keys,
                         Py_ssize_t key_stride, const float *qt, Py_ssize_t rows,
                         Py_ssize_t rp, float *st)
    void fa_scores_t_f64(Py_ssize_t n_k, Py_ssize_t dim, const char *keys,
                         Py_ssize_t key_stride, const double *qt, Py_ssize_t rows,
                         Py_ssize_t rp, double *st)
    void fa_accumulate_t_f32(Py_ssize_t n_k, Py_ssize_t value_dim, const char *values,
                             Py_ssize_t value_stride, const float *st, Py_ssize_t rows,
                             Py_ssize_t rp, float *acct)
    void fa_accumulate_t_f64(Py_ssize_t n_k, Py_ssize_t value_dim, const char *values,
                             Py_ssize_t value_stride, const double *st, Py_ssize_t rows,
                             Py_ssize_t rp, double *acct)
    bint fa_softmax_t_f32(float *st, Py_ssize_t n_k, Py_ssize_t rp, float *m, double *l,
                          float *shift, float *alpha, double *block_sum)
    bint fa_softmax_t_f64(double *st, Py_ssize_t n_k, Py_ssize_t rp, double *m, double *l,
                          double *shift, double *alpha, double *block_sum)
    void fa_rescale_t_f32(float *acct, Py_ssize_t value_dim, Py_ssize_t rp,
                          const float *alpha)
    void fa_rescale_t_f64(double *acct, Py_ssize_t value_dim, Py_ssize_t rp,
                          const double *alpha)
    # Softcap (cap != 0) and ALiBi (slope != NULL) on a block of scores, before masks:
    # s -= slope[r] * |key0 + j - row[r]| for key j of the block.
    void fa_modify_t_f32(float *st, Py_ssize_t n_k, Py_ssize_t rp, float cap,
                         const float *slope, const float *row, int64_t key0)
    void fa_modify_t_f64(double *st, Py_ssize_t n_k, Py_ssize_t rp, double cap,
                         const double *slope, const double *row, int64_t key0)
    void fa_accumulate_visible_t_f32(Py_ssize_t n_k, Py_ssize_t value_dim, const char *values,
                                     Py_ssize_t value_stride, const float *st, Py_ssize_t rp,
                                     float *acct)
    void fa_accumulate_visible_t_f64(Py_ssize_t n_k, Py_ssize_t value_dim, const char *values,
                                     Py_ssize_t value_stride, const double *st, Py_ssize_t rp,
                                     double *acct)
    bint fa_rows_finite_f32(Py_ssize_t n, Py_ssize_t width, const char *rows, Py_ssize_t stride)
    bint fa_rows_finite_f64(Py_ssize_t n, Py_ssize_t width, const char *rows, Py_ssize_t stride)
    # bfloat16 products (vdpbf16ps), where the active level has them (fa_bf16_products()):
    # queries as bf16 pairs qtb[(d / 2) * 2 * rp + 2 * r + d % 2], keys and values in place.
    void fa_scores_t_bf16(Py_ssize_t n_k, Py_ssize_t dim, const char *keys,
                          Py_ssize_t key_stride, const uint16_t *qtb, Py_ssize_t rows,
                          Py_ssize_t rp, float scale, float *st)
    void fa_accumulate_t_bf16(Py_ssize_t n_k, Py_ssize_t value_dim, const char *values,
                              Py_ssize_t value_stride, const float *st, Py_ssize_t rows,
                              Py_ssize_t rp, float *acct, uint16_t *scratch)
    bint fa_rows_finite_bf16(Py_ssize_t n, Py_ssize_t width, const char *rows,
                             Py_ssize_t stride)
    # Half precision: rows of bfloat16 / float16 converted to float32 (pitch in floats).
    void fa_rows_to_f32_bf16(Py_ssize_t n, Py_ssize_t width, const char *rows,
                             Py_ssize_t stride, float *dst, Py_ssize_t pitch)
    void fa_rows_to_f32_f16(Py_ssize_t n, Py_ssize_t width, const char *rows,
                            Py_ssize_t stride, float *dst, Py_ssize_t pitch)

cdef extern from "_half_scalar.h" nogil:
    float fa_bf16_to_f32(uint16_t bits)
    float fa_f16_to_f32(uint16_t bits)
    uint16_t fa_f32_to_bf16(float x)
    uint16_t fa_f32_to_f16(float x)

include "_contract.pxi"
include "_isa.pxi"
include "_decode.pxi"
include "_read_probe.pxi"

cdef enum:
    # How q, k, v and out are stored: in the compute dtype, or in a half dtype
    # (computed in float32; k and v converted block by block, out rounded at the end).
    STORE_NATIVE = 0
    STORE_F16 = 1
    STORE_BF16 = 2
    # bfloat16 with the active level's vdpbf16ps products: no conversion of k and v
    STORE_BF16_PRODUCTS = 3


cdef struct Problem:
    # Everything a task reads besides its own row of the task table.
    View q, k, v, out, lse, mask, part_out, part_lse
    int mask_kind, storage
    Py_ssize_t group, block_k, head_dim, value_dim  # value_dim 0: lse-only
    int64_t band_lo, band_hi
    double scale
    # Score modifiers (ScoreModifiers): softcap 0 is none; ALiBi's slopes (Hq,) in the
    # compute dtype, and the diagonal its distances are measured from.
    double softcap
    bint alibi
    View slopes
    int64_t diagonal
    # A worker's scratch row, in elements of the compute dtype (rp = max rows padded):
    # qt (head_dim x rp) | st (block_k x rp) | acct (value_dim x rp) | m | shift | alpha
    # | slope | row (ALiBi: each row's slope, and its query index within the task plus
    # the task's diagonal) | kv (half storage: one key or value block in float32,
    # block_k x max(D, Dv)); and in its float64 row: l | block_sum.
    Py_ssize_t rp, at_st, at_acc, at_m, at_shift, at_alpha, at_slope, at_row, at_kv
    Py_ssize_t tile_size, state_size  # elements of a worker's tile and float64 state
    # The decode kernel's scratch (_decode.pxi; at_decode -1: none), and the kv heads it
    # decodes together.
    Py_ssize_t at_decode, at_decode_m, at_decode_acc, decode_heads
    # A paged call (KernelCall.pages; NULL: none): k and v are blocks of page_size slots,
    # and key j of sequence s is slot j % page_size of block pages[s * max_pages +
    # j // page_size].
    const int64_t *pages
    Py_ssize_t page_size, max_pages


# ---------------------------------------------------------------------------
# Python entry point

def run_kernel(call):
    """Run a kernel call (see :class:`fastattn._contract.KernelCall`); writes ``out`` and ``lse``.

    Parameters
    ----------
    call : fastattn._contract.KernelCall
        4-D views (any strides, last axis contiguous) of q, k, v and ``out`` in float32
        or float64, or in float16 / bfloat16 with everything else (mask, ``lse``,
        partial buffers) in float32, the compute dtype of half inputs; the mask and its
        kind, the scale, the plan, the outputs (``out`` None: lse-only), the
        split-KV partial buffers, the score modifiers and the block table of a paged
        cache (``pages``: a task then reads its keys page by page, a key block never
        crossing a page in the tiles; the decode kernel spans pages in one block).

    Examples
    --------
    >>> import numpy as np
    >>> from fastattn._contract import MASK_NONE, Band, KernelCall
    >>> from fastattn._plan import make_plan
    >>> q = np.ones((1, 1, 3, 4), np.float32)
    >>> out, lse = np.empty((1, 1, 3, 4), np.float32), np.empty((1, 1, 3), np.float32)
    >>> plan = make_plan(1, 1, 1, 3, 3, Band(), 1)
    >>> run_kernel(KernelCall(q, q, q, None, MASK_NONE, 0.5, plan, out, lse,
    ...                       np.empty((0, 3, 4), np.float32), np.empty((0, 3), np.float32)))
    >>> float(out[0, 0, 0, 0]), float(lse[0, 0, 0])  # three equal scores of 2: log(3 e^2)
    (1.0, 3.0986123085021973)
    """
    cdef int storage = _storage(call.q.dtype)
    dtype = call.lse.dtype  # the compute dtype
    cdef int type_num = (<cnp.dtype> dtype).type_num
    cdef Problem problem = _describe(call, storage)
    slopes = _describe_modifiers(&problem, getattr(call, "modifiers", None), dtype)
    pages = _describe_pages(&problem, getattr(call, "pages", None), call.k.shape[2])
    plan = call.plan
    cdef cnp.ndarray tasks = _int64_rows(plan.tasks)
    cdef cnp.ndarray starts = _int64_rows(plan.worker_starts)
    cdef Py_ssize_t n_workers = starts.shape[0] - 1
    # Per-worker scratch, allocated once per call (as NumPy arrays, so that memory
    # tracing sees it) and indexed by worker, never by thread id.
    cdef cnp.npy_intp tile_bytes = n_workers * problem.tile_size * dtype.itemsize + ALIGN_BYTES
    cdef cnp.npy_intp state_shape[2]
    state_shape[0], state_shape[1] = n_workers, problem.state_size
    cdef cnp.ndarray tiles = cnp.PyArray_EMPTY(1, &tile_bytes, cnp.NPY_UINT8, 0)
    cdef cnp.ndarray states = cnp.PyArray_EMPTY(2, state_shape, cnp.NPY_FLOAT64, 0)
    cdef char *tile_ptr = _aligned(<char *> cnp.PyArray_DATA(tiles))
    cdef const int64_t *task_ptr = <const int64_t *> cnp.PyArray_DATA(tasks)
    cdef const int64_t *start_ptr = <const int64_t *> cnp.PyArray_DATA(starts)
    cdef double *state_ptr = <double *> cnp.PyArray_DATA(states)
    # which tasks a decode call of several kv heads has already run (_decode_tasks)
    cdef cnp.ndarray taken = np.zeros(tasks.shape[0] if problem.decode_heads > 1 else 0,
                                      np.uint8)
    cdef uint8_t *taken_ptr = <uint8_t *> cnp.PyArray_DATA(taken)
    if type_num == cnp.NPY_FLOAT32:
        _run_workers(&problem, task_ptr, start_ptr, n_workers, <float *> tile_ptr, state_ptr,
                     taken_ptr)
    else:
        _run_workers(&problem, task_ptr, start_ptr, n_workers, <double *> tile_ptr,
                     state_ptr, taken_ptr)


cdef int _storage(dtype) except -1:
    """How q, k, v are stored: STORE_NATIVE (float32/64), STORE_F16 or STORE_BF16."""
    if dtype == np.float32 or dtype == np.float64:
        return STORE_NATIVE
    if dtype == np.float16:
        return STORE_F16
    if dtype.name == "bfloat16" and dtype.itemsize == 2:  # ml_dtypes.bfloat16
        return STORE_BF16_PRODUCTS if fa_bf16_products() else STORE_BF16
    raise TypeError(f"the Cython kernel reads float16, bfloat16, float32 or float64, not {dtype}")


cdef cnp.ndarray _int64_rows(array):
    """``array`` as a C-contiguous int64 ndarray; the plan's own arrays already are."""
    if (type(array) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray> array) == cnp.NPY_INT64
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> array)):
        return <cnp.ndarray> array
    return np.ascontiguousarray(array, dtype=np.int64)


cdef Problem _describe(call, int storage):
    """Gather pointers, strides, sizes and the scratch layout of one call."""
    cdef Problem p
    q, v = call.q, call.v
    cdef Py_ssize_t align = ALIGN_BYTES // call.lse.itemsize
    plan = call.plan
    p.q, p.k, p.lse = _view(q), _view(call.k), _view(call.lse)
    p.value_dim = 0 if v is None else v.shape[3]  # KernelCall.value_dim
    if p.value_dim:
        p.v, p.out = _view(v), _view(call.out)
        p.part_out = _view(call.part_out)
    else:  # lse-only: nothing reads these
        p.v = p.out = p.part_out = _view(np.empty((0, 0, 0, 0), dtype=call.lse.dtype))
    p.part_lse = _view(call.part_lse)
    p.mask_kind, p.storage = call.mask_kind, storage
    if call.mask_kind == MASK_NONE:
        p.mask.data = NULL
    else:
        p.mask = _view(call.mask)
    p.group, p.block_k = plan.group, plan.block_k
    p.head_dim = q.shape[3]
    p.band_lo, p.band_hi = plan.band.lo, plan.band.hi
    p.scale = call.scale
    p.rp = _padded(plan.max_rows, FA_ROW_PAD)
    p.at_st = _padded(p.head_dim * p.rp, align)
    p.at_acc = p.at_st + _padded(p.block_k * p.rp, align)
    p.at_m = p.at_acc + _padded(p.value_dim * p.rp, align)
    p.at_shift = p.at_m + p.rp
    p.at_alpha = p.at_shift + p.rp
    p.at_slope = p.at_alpha + _padded(p.rp, align)
    p.at_row = p.at_slope + p.rp
    p.at_kv = p.at_row + _padded(p.rp, align)
    p.tile_size = p.at_kv
    p.state_size = 2 * p.rp  # l | block_sum
    if storage != STORE_NATIVE:  # a converted block, or the bf16 products' pairs of P and V
        p.tile_size += _padded(max(p.block_k * max(p.head_dim, p.value_dim),
                                   (p.block_k + 1) // 2 * (p.rp + p.value_dim)), align)
    _describe_decode(&p, align, decode_heads(call.k, v, plan.group))
    return p


cdef object _describe_pages(Problem *p, pages, Py_ssize_t page_size):
    """Put the block table ``pages`` (None: a contiguous cache) into ``p``; returns the
    array that ``p`` points into (the caller keeps it alive), or None."""
    p.pages, p.page_size, p.max_pages = NULL, 0, 0
    if pages is None:
        return None
    cdef cnp.ndarray table = _int64_rows(pages)  # already so (KernelCall)
    p.pages = <const int64_t *> cnp.PyArray_DATA(table)
    p.page_size, p.max_pages = page_size, table.shape[1]
    return table


cdef object _describe_modifiers(Problem *p, modifiers, dtype):
    """Put the softcap and ALiBi of ``modifiers`` into ``p`` (see _modifier_fields)."""
    return _modifier_fields(modifiers, dtype, &p.softcap, &p.alibi, &p.slopes, &p.diagonal)


# ---------------------------------------------------------------------------
# Parallel driver and one task

cdef void _run_workers(const Problem *p, const int64_t *tasks, const int64_t *starts,
                       Py_ssize_t n_workers, real *tiles, double *states,
                       uint8_t *taken) noexcept nogil:
    cdef Py_ssize_t w
    if n_workers == 1:  # no thread team: also what a forked child runs (see _config)
        _run_worker(p, tasks, starts, 0, tiles, states, taken)
        return
    for w in prange(n_workers, nogil=True, num_threads=n_workers, schedule="static",
                    chunksize=1):
        _run_worker(p, tasks, starts, w, tiles, states, taken)


cdef void _run_worker(const Problem *p, const int64_t *tasks, const int64_t *starts,
                      Py_ssize_t w, real *tiles, double *states,
                      uint8_t *taken) noexcept nogil:
    """Worker ``w``'s run of tasks; ``taken`` marks those a decode call of several kv
    heads ran with an earlier one (only the worker's own tasks: no race)."""
    cdef int64_t t, end = starts[w + 1]
    cdef const int64_t *task
    cdef real *tile = tiles + w * p.tile_size
    cdef double *state = states + w * p.state_size
    for t in range(starts[w], end):
        task = tasks + TASK_COLUMNS * t
        if task[TASK_Q_STOP] - task[TASK_Q_START] != 1 or p.at_decode < 0:
            _run_task(p, task, tile, state)
        elif p.decode_heads == 1 or not taken[t]:  # one query row per head: _decode.pxi
            _decode_tasks(p, tasks, t, end, taken, tile, state)


cdef void _run_task(const Problem *p, const int64_t *task, real *tile,
                    double *state) noexcept nogil:
    cdef int64_t b = task[TASK_BATCH], kv_head = task[TASK_KV_HEAD]
    cdef int64_t kv_b = task[TASK_KV_BATCH]  # k, v and the mask: a page, a packed batch...
    cdef int64_t q0 = task[TASK_Q_START], q1 = task[TASK_Q_STOP]
    cdef int64_t j0 = task[TASK_K_START], k1 = task[TASK_K_STOP], part = task[TASK_PART]
    # the band of this task's (query, key) pairs: a packed sequence's own alignment
    cdef int64_t band_lo = p.band_lo + task[TASK_BAND_SHIFT]
    cdef int64_t band_hi = p.band_hi + task[TASK_BAND_SHIFT]
    cdef Py_ssize_t n_q = q1 - q0, n_k, r
    cdef Py_ssize_t rp = _padded(p.group * n_q, FA_ROW_PAD)  # this task's row pitch
    cdef real *m = tile + p.at_m

    _pack_queries(p, b, kv_head * p.group, q0, n_q, rp, tile)
    for r in range(p.value_dim * rp):
        tile[p.at_acc + r] = 0
    for r in range(rp):
        m[r] = -INFINITY
        state[r] = 0.0  # l
    if p.alibi:
        _alibi_rows(p, kv_head * p.group, n_q, p.diagonal + task[TASK_BAND_SHIFT], rp, tile)
    while j0 < k1:
        n_k = min(p.block_k, k1 - j0)
        if p.pages != NULL:  # a block never crosses a page
            n_k = min(n_k, p.page_size - j0 % p.page_size)
        if p.mask_kind != MASK_KEEP or _mask_keeps_any(
                &p.mask, p.group, band_lo, band_hi, kv_b, kv_head * p.group, q0, n_q, j0, n_k):
            _visit_block(p, kv_b, kv_head, q0, n_q, j0, n_k, band_lo, band_hi, rp, tile, state)
        j0 += n_k
    _write_rows(p, tile + p.at_acc, m, state, b, kv_head * p.group, q0, n_q, rp, part)


cdef void _visit_block(const Problem *p, int64_t b, int64_t kv_head, int64_t q0,
                       Py_ssize_t n_q, int64_t j0, Py_ssize_t n_k, int64_t band_lo,
                       int64_t band_hi, Py_ssize_t rp, real *tile,
                       double *state) noexcept nogil:
    """One kv block: scores, limits, online-softmax update, ``acc += P @ V``.

    ``b`` is the task's kv batch (of k, v and the mask; with pages, the sequence whose
    keys ``j0:j0+n_k`` lie in one page); ``band_lo``, ``band_hi`` its band.

    Where something was masked in the block and a value is not finite, the product
    skips zero weights: a masked key contributes exactly nothing (0 * NaN is NaN).
    """
    cdef Py_ssize_t rows = p.group * n_q
    cdef real *st = tile + p.at_st
    cdef real *acct = tile + p.at_acc
    cdef const char *keys = _kv_row(p, &p.k, b, kv_head, j0)
    cdef Py_ssize_t key_stride = p.k.stride[2], value_stride = p.v.stride[2]
    cdef const char *values
    cdef bint limited
    if p.storage == STORE_BF16_PRODUCTS:
        fa_scores_t_bf16(n_k, p.head_dim, keys, key_stride, <uint16_t *> tile, rows, rp,
                         <float> p.scale, <float *> st)
    else:
        if p.storage != STORE_NATIVE:
            keys = _as_float(p, n_k, p.head_dim, keys, key_stride, tile)
            key_stride = p.head_dim * sizeof(float)
        _scores(n_k, p.head_dim, keys, key_stride, tile, rows, rp, st)
    if p.softcap != 0 or p.alibi:  # before the limits: masked scores must stay -inf
        _modify(st, n_k, rp, <real> p.softcap, tile + p.at_slope if p.alibi else NULL,
                tile + p.at_row, j0 - q0)
    limited = _apply_limits(p, st, b, kv_head * p.group, q0, n_q, j0, n_k, band_lo, band_hi,
                            rp)
    if _softmax(st, n_k, rp, tile + p.at_m, state, tile + p.at_shift, tile + p.at_alpha,
                state + rp):
        _rescale(acct, p.value_dim, rp, tile + p.at_alpha)
    if p.value_dim == 0:  # lse-only
        return
    values = _kv_row(p, &p.v, b, kv_head, j0)
    if p.storage == STORE_BF16_PRODUCTS and (
            not limited or fa_rows_finite_bf16(n_k, p.value_dim, values, value_stride)):
        fa_accumulate_t_bf16(n_k, p.value_dim, values, value_stride, <float *> st, rows, rp,
                             <float *> acct, <uint16_t *> (tile + p.at_kv))
        return
    if p.storage != STORE_NATIVE:
        values = _as_float(p, n_k, p.value_dim, values, value_stride, tile)
        value_stride = p.value_dim * sizeof(float)
    if limited and not _rows_finite(n_k, p.value_dim, values, value_stride, st):
        _accumulate_visible(n_k, p.value_dim, values, value_stride, st, rp, acct)
    else:
        _accumulate(n_k, p.value_dim, values, value_stride, st, rows, rp, acct)


cdef inline const char *_kv_row(const Problem *p, const View *x, int64_t b, int64_t kv_head,
                               int64_t j) noexcept nogil:
    """Row of key ``j`` of kv batch ``b`` in ``x`` (k or v): with pages, of logical position
    ``j`` of sequence ``b``, through the block table."""
    if p.pages == NULL:
        return _row_ptr(x, b, kv_head, j)
    return _row_ptr(x, p.pages[b * p.max_pages + j // p.page_size], kv_head, j % p.page_size)


cdef const char *_as_float(const Problem *p, Py_ssize_t n, Py_ssize_t width, const char *rows,
                           Py_ssize_t stride, real *tile) noexcept nogil:
    """``n`` half-precision rows converted into the tile's float32 block (returned)."""
    cdef float *block = <float *> (tile + p.at_kv)
    if p.storage == STORE_BF16 or p.storage == STORE_BF16_PRODUCTS:
        fa_rows_to_f32_bf16(n, width, rows, stride, block, width)
    else:
        fa_rows_to_f32_f16(n, width, rows, stride, block, width)
    return <const char *> block


# ---------------------------------------------------------------------------
# Typed entry points to the C tile kernels

cdef inline void _scores(Py_ssize_t n_k, Py_ssize_t dim, const char *keys, Py_ssize_t stride,
                         const real *qt, Py_ssize_t rows, Py_ssize_t rp,
                         real *st) noexcept nogil:
    if real is float:
        fa_scores_t_f32(n_k, dim, keys, stride, qt, rows, rp, st)
    else:
        fa_scores_t_f64(n_k, dim, keys, stride, qt, rows, rp, st)


cdef inline void _accumulate(Py_ssize_t n_k, Py_ssize_t dim, const char *values,
                             Py_ssize_t stride, const real *st, Py_ssize_t rows,
                             Py_ssize_t rp, real *acct) noexcept nogil:
    if real is float:
        fa_accumulate_t_f32(n_k, dim, values, stride, st, rows, rp, acct)
    else:
        fa_accumulate_t_f64(n_k, dim, values, stride, st, rows, rp, acct)


cdef inline bint _softmax(real *st, Py_ssize_t n_k, Py_ssize_t rp, real *m, double *l,
                          real *shift, real *alpha, double *block_sum) noexcept nogil:
    if real is float:
        return fa_softmax_t_f32(st, n_k, rp, m, l, shift, alpha, block_sum)
    else:
        return fa_softmax_t_f64(st, n_k, rp, m, l, shift, alpha, block_sum)


cdef inline void _accumulate_visible(Py_ssize_t n_k, Py_ssize_t dim, const char *values,
                                     Py_ssize_t stride, const real *st, Py_ssize_t rp,
                                     real *acct) noexcept nogil:
    if real is float:
        fa_accumulate_visible_t_f32(n_k, dim, values, stride, st, rp, acct)
    else:
        fa_accumulate_visible_t_f64(n_k, dim, values, stride, st, rp, acct)


cdef inline bint _rows_finite(Py_ssize_t n, Py_ssize_t width, const char *rows,
                              Py_ssize_t stride, const real *like) noexcept nogil:
    """Whether ``n`` rows of ``width`` elements (typed like ``like``) are all finite."""
    if real is float:
        return fa_rows_finite_f32(n, width, rows, stride)
    else:
        return fa_rows_finite_f64(n, width, rows, stride)


cdef inline void _rescale(real *acct, Py_ssize_t dim, Py_ssize_t rp,
                          const real *alpha) noexcept nogil:
    if real is float:
        fa_rescale_t_f32(acct, dim, rp, alpha)
    else:
        fa_rescale_t_f64(acct, dim, rp, alpha)


cdef inline void _modify(real *st, Py_ssize_t n_k, Py_ssize_t rp, real cap, const real *slope,
                         const real *row, int64_t key0) noexcept nogil:
    if real is float:
        fa_modify_t_f32(st, n_k, rp, cap, slope, row, key0)
    else:
        fa_modify_t_f64(st, n_k, rp, cap, slope, row, key0)


# ---------------------------------------------------------------------------
# Steps of a task that touch the caller's arrays

cdef void _pack_queries(const Problem *p, int64_t b, int64_t head0, int64_t q0,
                        Py_ssize_t n_q, Py_ssize_t rp, real *qt) noexcept nogil:
    """Copy the group's query rows, times the scale, into the transposed tile qt.

    Row ``h * n_q + i`` of the tile is query ``q0 + i`` of head ``head0 + h``;
    the padding rows up to ``rp`` are zero (their results are never written).
    """
    cdef Py_ssize_t h, i, d, r, dim = p.head_dim, step = p.q.stride[3]
    cdef Py_ssize_t rows = p.group * n_q
    cdef real factor = <real> p.scale
    cdef char *src
    if p.storage == STORE_BF16_PRODUCTS:
        _pack_query_pairs(p, b, head0, q0, n_q, rp, <uint16_t *> qt)
        return
    for h in range(p.group):
        for i in range(n_q):
            src = _row_ptr(&p.q, b, head0 + h, q0 + i)
            r = h * n_q + i
            if p.storage == STORE_BF16:
                for d in range(dim):
                    qt[d * rp + r] = fa_bf16_to_f32((<uint16_t *> (src + d * step))[0]) * factor
            elif p.storage == STORE_F16:
                for d in range(dim):
                    qt[d * rp + r] = fa_f16_to_f32((<uint16_t *> (src + d * step))[0]) * factor
            else:
                for d in range(dim):
                    qt[d * rp + r] = (<real *> (src + d * step))[0] * factor
    for d in range(dim):
        for r in range(rows, rp):
            qt[d * rp + r] = 0


cdef void _pack_query_pairs(const Problem *p, int64_t b, int64_t head0, int64_t q0,
                            Py_ssize_t n_q, Py_ssize_t rp, uint16_t *qtb) noexcept nogil:
    """The group's bfloat16 query rows, unscaled, as pairs of dimensions (fa_scores_t_bf16):
    element ``(d, r)`` at ``qtb[(d // 2) * 2 * rp + 2 * r + d % 2]``; padding is zero."""
    cdef Py_ssize_t h, i, d, r, step = p.q.stride[3]
    cdef Py_ssize_t pairs = (p.head_dim + 1) // 2
    cdef char *src
    for d in range(pairs * 2 * rp):
        qtb[d] = 0
    for h in range(p.group):
        for i in range(n_q):
            src = _row_ptr(&p.q, b, head0 + h, q0 + i)
            r = h * n_q + i
            for d in range(p.head_dim):
                qtb[(d // 2) * 2 * rp + 2 * r + d % 2] = (<uint16_t *> (src + d * step))[0]


cdef void _alibi_rows(const Problem *p, int64_t head0, Py_ssize_t n_q, int64_t diagonal,
                      Py_ssize_t rp, real *tile) noexcept nogil:
    """Each row's ALiBi slope and ``i + diagonal`` (``i``: its query index within the task),
    so that key ``j0 + j`` of a block is ``|j0 - q0 + j - row|`` from the row's diagonal;
    zeros for the padding rows."""
    cdef Py_ssize_t h, i, r
    cdef real *slope = tile + p.at_slope
    cdef real *row = tile + p.at_row
    for r in range(rp):
        slope[r] = row[r] = 0
    for h in range(p.group):
        for i in range(n_q):
            slope[h * n_q + i] = (<const real *> (p.slopes.data
                                                  + (head0 + h) * p.slopes.stride[0]))[0]
            row[h * n_q + i] = <real> (i + diagonal)


cdef bint _apply_limits(const Problem *p, real *st, int64_t b, int64_t head0, int64_t q0,
                        Py_ssize_t n_q, int64_t j0, Py_ssize_t n_k, int64_t band_lo,
                        int64_t band_hi, Py_ssize_t rp) noexcept nogil:
    """Set scores outside the band or the mask to -inf; add an additive mask.

    ``st`` is transposed: the score of row ``r`` and key ``j0 + j`` is ``st[j * rp + r]``.
    Returns whether anything may have been masked (False: inside the band, no mask).
    """
    cdef bint inside_band = (j0 >= q0 + n_q - 1 + band_lo
                             and j0 + n_k - 1 <= q0 + band_hi)
    if p.mask_kind != MASK_NONE:
        _apply_mask(p, st, b, head0, q0, n_q, j0, n_k, rp)
    if not inside_band:
        _apply_band(p, st, q0, n_q, j0, n_k, band_lo, band_hi, rp)
    return p.mask_kind != MASK_NONE or not inside_band


cdef void _apply_band(const Problem *p, real *st, int64_t q0, Py_ssize_t n_q, int64_t j0,
                      Py_ssize_t n_k, int64_t band_lo, int64_t band_hi,
                      Py_ssize_t rp) noexcept nogil:
    """-inf where key ``j0 + j`` is outside the band of query ``q0 + i`` (for every head).

    Query ``i`` sees key ``jj`` iff ``jj - band_hi <= i <= jj - band_lo``: for each key
    that is one run of rows, so the fills run along the contiguous axis of ``st``.
    """
    cdef Py_ssize_t j, h, i, seen_lo, seen_hi
    cdef real *col
    for j in range(n_k):
        seen_lo = min(max(j0 + j - band_hi - q0, 0), n_q)
        seen_hi = min(max(j0 + j - band_lo - q0 + 1, seen_lo), n_q)  # rows [lo, hi)
        for h in range(p.group):
            col = st + j * rp + h * n_q
            for i in range(seen_lo):
                col[i] = -INFINITY
            for i in range(seen_hi, n_q):
                col[i] = -INFINITY


cdef void _apply_mask(const Problem *p, real *st, int64_t b, int64_t head0, int64_t q0,
                      Py_ssize_t n_q, int64_t j0, Py_ssize_t n_k, Py_ssize_t rp) noexcept nogil:
    """Apply the bool (-inf where 0) or additive mask to the transposed scores.

    An additive ``-inf`` sets the score to -inf (adding it to a NaN score would not).
    """
    cdef Py_ssize_t h, i, j, step = p.mask.stride[3]
    cdef real *col
    cdef real bias
    cdef char *limits
    for h in range(p.group):
        for i in range(n_q):
            col = st + h * n_q + i
            limits = _row_ptr(&p.mask, b, head0 + h, q0 + i) + j0 * step
            if p.mask_kind == MASK_KEEP:
                for j in range(n_k):
                    if not (<uint8_t *> (limits + j * step))[0]:
                        col[j * rp] = -INFINITY
            else:
                for j in range(n_k):
                    bias = (<real *> (limits + j * step))[0]
                    col[j * rp] = -INFINITY if bias == -INFINITY else col[j * rp] + bias


cdef void _write_rows(const Problem *p, const real *acct, const real *m, const double *l,
                      int64_t b, int64_t head0, int64_t q0, Py_ssize_t n_q, Py_ssize_t rp,
                      int64_t part) noexcept nogil:
    """Normalise the rows; write them to ``out``/``lse`` or to split-KV slot ``part``.

    A row whose sum is 0 saw no key: zeros and lse -inf.  A NaN sum stays NaN.
    """
    cdef Py_ssize_t h, i, d, r, step
    cdef double inv, log_sum
    cdef char *dst
    for h in range(p.group):
        for i in range(n_q):
            r = h * n_q + i
            if l[r] != 0.0:
                inv, log_sum = 1.0 / l[r], m[r] + log(l[r])
            else:  # no visible key: zeros, and lse -inf
                inv, log_sum = 0.0, -INFINITY
            if part < 0:
                dst = _row_ptr(&p.out, b, head0 + h, q0 + i)
                step = p.out.stride[3]
                (<real *> _row_ptr(&p.lse, b, head0 + h, q0 + i))[0] = <real> log_sum
            else:
                dst = p.part_out.data + part * p.part_out.stride[0] + r * p.part_out.stride[1]
                step = p.part_out.stride[2]
                (<real *> (p.part_lse.data + part * p.part_lse.stride[0]
                           + r * p.part_lse.stride[1]))[0] = <real> log_sum
            # split-KV parts stay in the compute dtype; out is in the storage dtype
            _write_row(p.value_dim, acct + r, rp, inv, dst, step,
                       p.storage if part < 0 else STORE_NATIVE)


cdef inline void _write_row(Py_ssize_t value_dim, const real *acct, Py_ssize_t rp, double inv,
                            char *dst, Py_ssize_t step, int storage) noexcept nogil:
    """A normalised row (column ``acct[0::rp]`` of the accumulator), stored as ``storage``."""
    cdef Py_ssize_t d
    cdef float x
    if storage == STORE_NATIVE:
        for d in range(value_dim):
            (<real *> (dst + d * step))[0] = <real> (acct[d * rp] * inv)
        return
    for d in range(value_dim):
        x = <float> (acct[d * rp] * inv)
        (<uint16_t *> (dst + d * step))[0] = (fa_f32_to_f16(x) if storage == STORE_F16
                                              else fa_f32_to_bf16(x))
