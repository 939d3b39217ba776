# The kernel contract as both Cython kernels compile it (included by _kernel.pyx and
# _backward.pyx): the constants of fastattn/_contract.py, checked against the Python ones
# at import (fastattn._cython.check_contract), and the view of an ndarray that the
# kernels read through.

cdef enum:
    MASK_NONE = 0
    MASK_KEEP = 1
    MASK_ADD = 2
    TASK_BATCH = 0
    TASK_KV_HEAD = 1
    TASK_Q_START = 2
    TASK_Q_STOP = 3
    TASK_K_START = 4
    TASK_K_STOP = 5
    TASK_PART = 6
    TASK_KV_BATCH = 7
    TASK_BAND_SHIFT = 8
    TASK_COLUMNS = 9
    BWD_BATCH = 0
    BWD_KV_HEAD = 1
    BWD_K_START = 2
    BWD_K_STOP = 3
    BWD_Q_START = 4
    BWD_Q_STOP = 5
    BWD_PART = 6
    BWD_BAND_SHIFT = 7
    BWD_COLUMNS = 8
    DECODE_MAX_ROWS = 64
    ALIGN_BYTES = 64  # tiles start on cache-line boundaries

COMPILED_CONSTANTS = dict(
    MASK_NONE=MASK_NONE, MASK_KEEP=MASK_KEEP, MASK_ADD=MASK_ADD, TASK_BATCH=TASK_BATCH,
    TASK_KV_HEAD=TASK_KV_HEAD, TASK_Q_START=TASK_Q_START, TASK_Q_STOP=TASK_Q_STOP,
    TASK_K_START=TASK_K_START, TASK_K_STOP=TASK_K_STOP, TASK_PART=TASK_PART,
    TASK_KV_BATCH=TASK_KV_BATCH, TASK_BAND_SHIFT=TASK_BAND_SHIFT, TASK_COLUMNS=TASK_COLUMNS,
    BWD_BATCH=BWD_BATCH, BWD_KV_HEAD=BWD_KV_HEAD, BWD_K_START=BWD_K_START,
    BWD_K_STOP=BWD_K_STOP, BWD_Q_START=BWD_Q_START, BWD_Q_STOP=BWD_Q_STOP, BWD_PART=BWD_PART,
    BWD_BAND_SHIFT=BWD_BAND_SHIFT, BWD_COLUMNS=BWD_COLUMNS, DECODE_MAX_ROWS=DECODE_MAX_ROWS)
"""The contract's constants as compiled into this extension."""


cdef struct View:
    # An array as its data pointer and byte strides (up to 4 axes).
    char *data
    Py_ssize_t stride[4]


cdef View _view(array):
    """Data pointer and byte strides of an ndarray (of up to 4 axes)."""
    cdef View view
    cdef cnp.ndarray a = <cnp.ndarray> array
    cdef int axis
    view.data = <char *> cnp.PyArray_DATA(a)
    for axis in range(4):
        view.stride[axis] = a.strides[axis] if axis < a.ndim else 0
    return view


cdef char *_aligned(char *pointer):
    return pointer + (-<uintptr_t> pointer) % ALIGN_BYTES


cdef inline Py_ssize_t _padded(Py_ssize_t n, Py_ssize_t multiple) noexcept nogil:
    return (n + multiple - 1) // multiple * multiple


cdef inline char *_row_ptr(const View *x, int64_t i0, int64_t i1, int64_t i2) noexcept nogil:
    return x.data + i0 * x.stride[0] + i1 * x.stride[1] + i2 * x.stride[2]


cdef bint _mask_keeps_any(const View *mask, Py_ssize_t group, int64_t band_lo,
                          int64_t band_hi, int64_t b, int64_t head0, int64_t i0,
                          Py_ssize_t n_q, int64_t j0, Py_ssize_t n_k) noexcept nogil:
    """Whether a uint8 keep-mask and the band keep any (query, key) of queries ``i0:i0+n_q``
    (of heads ``head0:head0+group``) and keys ``j0:j0+n_k``: a block that keeps none is
    skipped."""
    cdef Py_ssize_t h, i, step = mask.stride[3]
    cdef int64_t j, lo, hi
    cdef const char *row
    for h in range(group):
        for i in range(n_q):
            row = _row_ptr(mask, b, head0 + h, i0 + i)
            lo = max(j0, i0 + i + band_lo)
            hi = min(j0 + n_k - 1, i0 + i + band_hi)
            for j in range(lo, hi + 1):
                if (<const uint8_t *> (row + j * step))[0]:
                    return True
    return False


cdef object _modifier_fields(modifiers, dtype, double *softcap, bint *alibi, View *slopes,
                             int64_t *diagonal):
    """Set a kernel's modifier fields from ``modifiers`` (ScoreModifiers, or None: none):
    the softcap (0: none), whether ALiBi applies, its slopes and diagonal.  Returns the
    slopes array that ``slopes`` points into (the caller keeps it alive), or None."""
    softcap[0], alibi[0], diagonal[0] = 0.0, False, 0
    slopes.data = NULL
    if modifiers is None:
        return None
    softcap[0] = modifiers.softcap
    values = modifiers.alibi_slopes
    if values is None:
        return None
    values = np.ascontiguousarray(values, dtype=dtype)  # already so (ScoreModifiers)
    alibi[0], slopes[0], diagonal[0] = True, _view(values), modifiers.diagonal
    return values
