# The read-bandwidth probe of the serving report (included by _kernel.pyx): the C loop
# of _read_probe.h on OpenMP threads, the streaming read that decoding is judged by.

cdef extern from "_read_probe.h" nogil:
    double fa_read_sum(const float *x, Py_ssize_t n)


def stream_read(const float[::1] values, int threads):
    """Read every value of ``values`` once: ``threads`` OpenMP threads, each summing its
    contiguous share in C.  Returns the sum (so that no compiler can skip the reads).

    Examples
    --------
    >>> import numpy as np
    >>> stream_read(np.ones(1000, np.float32), 2)
    1000.0
    """
    cdef Py_ssize_t n = values.shape[0], start, stop
    cdef int t
    cdef double[::1] sums
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    sums = np.zeros(threads)
    if n == 0:
        return 0.0
    with nogil:
        for t in prange(threads, num_threads=threads, schedule="static", chunksize=1):
            start, stop = n * t // threads, n * (t + 1) // threads
            sums[t] = fa_read_sum(&values[0] + start, stop - start)
    return float(np.sum(sums))
