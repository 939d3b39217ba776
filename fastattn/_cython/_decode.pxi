# The decode path of the forward kernel (included by _kernel.pyx): tasks with ONE query
# row per head (n_q == 1: a generation step, and the one-token sequences of varlen and
# paged attention) run the key-major C kernel of _decode_tiles.inc instead of the tiles,
# which would pad the group's few rows to FA_ROW_PAD vector lanes.  The kernel reads
# every key and value row once (in place, or page by page through the block table of a
# paged call), leaves the task's state as the tiles do (acct, m, l), and _write_rows
# writes the result, to out/lse or to the task's split-KV slot.

cdef extern from "_kernels.h" nogil:
    # Where a task's keys and values are: rows (pages NULL), or the pages of a block table
    # (key j: logical position first + j; keys/values at block 0, slot 0).
    struct fa_decode_source:
        const char *keys
        const char *values
        Py_ssize_t key_stride, value_stride
        const int64_t *pages
        int64_t first
        Py_ssize_t page_size, key_block, value_block
    # One decode task (see _decode_tiles.inc): q is rows x dim, pre-scaled; work holds
    # rows x block scores and the rows x value_dim accumulator.
    void fa_decode_f32(Py_ssize_t n_k, Py_ssize_t block, Py_ssize_t rows, Py_ssize_t dim,
                       Py_ssize_t value_dim, const fa_decode_source *source, const float *q,
                       float cap, const float *slopes, int64_t distance0, float *work,
                       float *m, double *l, float *acct, Py_ssize_t rp)
    void fa_decode_f64(Py_ssize_t n_k, Py_ssize_t block, Py_ssize_t rows, Py_ssize_t dim,
                       Py_ssize_t value_dim, const fa_decode_source *source, const double *q,
                       double cap, const double *slopes, int64_t distance0, double *work,
                       double *m, double *l, double *acct, Py_ssize_t rp)

cdef enum:
    # Keys per online-softmax block of the decode kernel, at most (the plan's block_k
    # when smaller): a block's scores of a whole group stay in L1.
    DECODE_BLOCK = 256


cdef inline bint _decodes(int mask_kind, int storage, Py_ssize_t value_dim) noexcept nogil:
    """Whether a call's one-row tasks take the decode kernel: no mask (the planner and
    _decode_task clip a one-row task's keys to exactly those its query sees, so nothing
    is left to mask), q, k, v in the compute dtype, and an output (lse-only mode keeps
    the tiles)."""
    return mask_kind == MASK_NONE and storage == STORE_NATIVE and value_dim > 0


def _decode_eligible(mask_kind, dtype, value_dim):
    """Whether the one-row tasks of a call with this mask kind, storage dtype and value
    width run the decode kernel (the rule of ``_decodes``, for tests).

    Examples
    --------
    >>> import numpy as np
    >>> from fastattn._contract import MASK_KEEP, MASK_NONE
    >>> _decode_eligible(MASK_NONE, np.dtype(np.float32), 64)
    True
    >>> _decode_eligible(MASK_KEEP, np.dtype(np.float32), 64)
    False
    """
    return bool(_decodes(mask_kind, _storage(np.dtype(dtype)), value_dim))


cdef inline Py_ssize_t _decode_block(const Problem *p) noexcept nogil:
    return min(p.block_k, DECODE_BLOCK)


cdef void _describe_decode(Problem *p, Py_ssize_t align) noexcept:
    """Reserve the decode kernel's scratch at the end of every worker's tile row:
    the packed queries (group x head_dim), one block of scores (group x block) and the
    accumulator (group x value_dim).  ``p.at_decode`` is -1 when the call has none."""
    p.at_decode = -1
    if not _decodes(p.mask_kind, p.storage, p.value_dim):
        return
    p.at_decode = _padded(p.tile_size, align)
    p.tile_size = p.at_decode + _padded(p.group * p.head_dim, align) + _padded(
        p.group * (_decode_block(p) + p.value_dim), align)


cdef void _decode_task(const Problem *p, const int64_t *task, real *tile,
                       double *state) noexcept nogil:
    """Run one task of one query row per head through the decode kernel; write its rows."""
    cdef int64_t b = task[TASK_BATCH], kv_head = task[TASK_KV_HEAD]
    cdef int64_t kv_b = task[TASK_KV_BATCH], q0 = task[TASK_Q_START]
    cdef int64_t shift = task[TASK_BAND_SHIFT]
    # The planner already clipped the keys to the band (Band.key_range, varlen's and
    # paged's task tables); clipping again costs nothing and holds for any task table.
    cdef int64_t j0 = max(task[TASK_K_START], q0 + p.band_lo + shift)
    cdef int64_t k1 = min(task[TASK_K_STOP], q0 + p.band_hi + shift + 1)
    cdef Py_ssize_t align = ALIGN_BYTES // sizeof(real)
    cdef Py_ssize_t rp = _padded(p.group, FA_ROW_PAD)
    cdef real *q = tile + p.at_decode
    cdef real *work = q + _padded(p.group * p.head_dim, align)
    cdef const real *slopes = NULL
    cdef fa_decode_source source
    if p.alibi:
        slopes = <const real *> (p.slopes.data + kv_head * p.group * p.slopes.stride[0])
    _describe_source(p, kv_b, kv_head, j0, &source)
    _pack_query_rows(p, b, kv_head * p.group, q0, q)
    _decode(max(k1 - j0, 0), _decode_block(p), p.group, p.head_dim, p.value_dim, &source, q,
            <real> p.softcap, slopes, j0 - q0 - p.diagonal - shift, work, tile + p.at_m,
            state, tile + p.at_acc, rp)
    _write_rows(p, tile + p.at_acc, tile + p.at_m, state, b, kv_head * p.group, q0, 1, rp,
                task[TASK_PART])


cdef void _describe_source(const Problem *p, int64_t kv_b, int64_t kv_head, int64_t j0,
                           fa_decode_source *source) noexcept nogil:
    """Where the keys from ``j0`` of kv batch ``kv_b`` (with pages: sequence ``kv_b`` of
    the block table, ``j0`` a logical position) and their values are."""
    source.key_stride, source.value_stride = p.k.stride[2], p.v.stride[2]
    if p.pages == NULL:
        source.keys = _row_ptr(&p.k, kv_b, kv_head, j0)
        source.values = _row_ptr(&p.v, kv_b, kv_head, j0)
        source.pages = NULL
        source.first = source.page_size = source.key_block = source.value_block = 0
        return
    source.keys = _row_ptr(&p.k, 0, kv_head, 0)
    source.values = _row_ptr(&p.v, 0, kv_head, 0)
    source.pages = p.pages + kv_b * p.max_pages
    source.first, source.page_size = j0, p.page_size
    source.key_block, source.value_block = p.k.stride[0], p.v.stride[0]


cdef void _pack_query_rows(const Problem *p, int64_t b, int64_t head0, int64_t i,
                           real *q) noexcept nogil:
    """Query ``i`` of every head of the group, times the scale, as rows of ``q``."""
    cdef Py_ssize_t h, d, dim = p.head_dim, step = p.q.stride[3]
    cdef real factor = <real> p.scale
    cdef const char *src
    for h in range(p.group):
        src = _row_ptr(&p.q, b, head0 + h, i)
        for d in range(dim):
            q[h * dim + d] = (<const real *> (src + d * step))[0] * factor


cdef inline void _decode(Py_ssize_t n_k, Py_ssize_t block, Py_ssize_t rows, Py_ssize_t dim,
                         Py_ssize_t value_dim, const fa_decode_source *source, const real *q,
                         real cap, const real *slopes, int64_t distance0, real *work,
                         real *m, double *l, real *acct, Py_ssize_t rp) noexcept nogil:
    if real is float:
        fa_decode_f32(n_k, block, rows, dim, value_dim, source, q, cap, slopes, distance0,
                      work, m, l, acct, rp)
    else:
        fa_decode_f64(n_k, block, rows, dim, value_dim, source, q, cap, slopes, distance0,
                      work, m, l, acct, rp)
