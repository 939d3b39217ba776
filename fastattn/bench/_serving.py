"""Serving workloads: decoding, packed variable-length batches, ALiBi at long N, and the
read bandwidth decoding is judged by (``fastattn bench --serving``).

Six workloads, each point timed in its own child process like the sweep's others:

- :data:`READ` — the machine's streaming read bandwidth: ``threads`` threads each read
  their part of a ``read_bytes`` float32 array, in each of :data:`READ_METHODS`: a
  matrix-vector product against a vector of ones (``np.dot`` of ``(rows, 1024)``
  blocks: BLAS gemv, one pass at memory speed), ``np.add.reduce`` (NumPy's pairwise
  SIMD sum, which on an AVX2 core adds about 13 GB/s at most, below what memory gives)
  and, where the Cython backend is built, a plain C sum in eight vector accumulators on
  OpenMP threads (``stream_read``: nothing but loads); the fastest is timed;
- :data:`DECODE` — one query over a long KV cache with grouped-query heads,
  ``attention(q, k, v, causal="lower_right")``, and torch's SDPA with ``enable_gqa``;
- :data:`PAGED` — the same tokens through ``paged_attention``, in pages of
  ``page_size`` scattered over the cache by a random block table;
- :data:`VARLEN` — a causal batch of ``varlen_sequences`` sequences of lengths drawn
  log-uniformly in ``varlen_min ... varlen_max`` (fixed seed), ``varlen_attention``;
- :data:`PADDED` — the same batch padded to its longest sequence: ``attention`` with a
  bool key-padding mask, and torch's SDPA with a bool causal-and-padding mask;
- :data:`ALIBI` — ``attention(..., causal=True, alibi_slopes=...)`` at ``alibi_n``,
  whose peak memory is compared with an additive bias of ``Lq × Lk`` (stated, never
  allocated).

The sizes are :data:`SERVING_DEFAULTS` (the issue's), replaced field by field by
:func:`serving_options` (tests make them tiny).  A point is prepared by
:func:`prepare_serving` (also used by ``bench/test_serving_speed.py``): a tiny call of
the same kind (JIT compilation, thread pools), the peak memory of the first full-size
call, and the check against an independent float64 formula.  Nothing here imports
torch until a torch point is prepared.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ._workload import TOLERANCE, Shape, attention_flops, check_result, make_inputs, \
    make_runner, to_numpy, to_torch

READ = "serving-read"
DECODE = "serving-decode"
PAGED = "serving-paged"
VARLEN = "serving-varlen"
PADDED = "serving-padded"
ALIBI = "serving-alibi"
SERVING_WORKLOADS = (READ, DECODE, PAGED, VARLEN, PADDED, ALIBI)
"""The ``workload`` of a serving point (see :mod:`._results`)."""

COMPILED = ("numba", "cython")
"""The fastattn backends the serving points time (naive is their check's job)."""

SERVING_DEFAULTS = {
    "read_bytes": 2**30,
    "decode_keys": 65536, "decode_heads": 32, "decode_kv_heads": 8, "head_dim": 64,
    "page_size": 16,
    "varlen_sequences": 16, "varlen_min": 64, "varlen_max": 2048, "varlen_heads": 8,
    "varlen_seed": 0,
    "alibi_n": 32768, "alibi_heads": 8, "alibi_backends": ["cython"],
}
"""The sizes of issue 13: decode ``Lq=1, Lk=65536, Hq=32, Hk=8, D=64``; 16 sequences in
64 ... 2048, ``H=8``; ALiBi at ``N=32768, H=8`` with the Cython backend; a 1 GiB read."""

DECODE_GOAL = 0.8
"""Decoding's goal: K and V read at this share of the measured read bandwidth, or more."""

READ_ROW = 1024
"""Values per row of the gemv read (a 4 KiB row; the vector of ones stays in L1)."""

CHECK_ROWS = 32
"""Query rows of each sequence (ALiBi: at each end) compared with the float64 formula."""

_TINY = {"read_bytes": 2**16, "decode_keys": 40, "varlen_sequences": 3, "varlen_min": 5,
         "varlen_max": 24, "alibi_n": 24}
"""The sizes of the first, untimed call (compilation, thread pools)."""


def serving_options(overrides=None):
    """:data:`SERVING_DEFAULTS` with ``overrides`` applied, checked.

    Parameters
    ----------
    overrides : dict, optional
        Fields of :data:`SERVING_DEFAULTS` to replace.

    Returns
    -------
    dict

    Raises
    ------
    ValueError
        For an unknown field, a size below 1, or ``varlen_min > varlen_max``.

    Examples
    --------
    >>> serving_options({"decode_keys": 128})["decode_keys"]
    128
    >>> serving_options({"decode_key": 128})
    Traceback (most recent call last):
    ...
    ValueError: serving options: unknown decode_key (known: read_bytes, decode_keys, \
decode_heads, decode_kv_heads, head_dim, page_size, varlen_sequences, varlen_min, \
varlen_max, varlen_heads, varlen_seed, alibi_n, alibi_heads, alibi_backends)
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SERVING_DEFAULTS))
    if unknown:
        raise ValueError(f"serving options: unknown {', '.join(unknown)} "
                         f"(known: {', '.join(SERVING_DEFAULTS)})")
    options = {**SERVING_DEFAULTS, **overrides}
    options["alibi_backends"] = list(options["alibi_backends"])
    sizes = [k for k, v in options.items() if k not in ("varlen_seed", "alibi_backends")]
    small = [k for k in sizes if not (isinstance(options[k], int) and options[k] >= 1)]
    if small:
        raise ValueError(f"serving options: {', '.join(small)} must be positive integers")
    if options["varlen_min"] > options["varlen_max"]:
        raise ValueError(f"serving options: varlen_min ({options['varlen_min']}) is above "
                         f"varlen_max ({options['varlen_max']})")
    if options["decode_heads"] % options["decode_kv_heads"]:
        raise ValueError(f"serving options: decode_kv_heads ({options['decode_kv_heads']}) "
                         f"must divide decode_heads ({options['decode_heads']})")
    return options


def varlen_lengths(options):
    """The sequence lengths of the varlen batch: log-uniform in ``[varlen_min, varlen_max]``.

    Drawn from ``numpy.random.default_rng(varlen_seed)``, so every run and every child
    process gets the same batch.

    Examples
    --------
    >>> varlen_lengths(serving_options())
    [582, 163, 74, 68, 1072, 1514, 524, 802, 421, 1635, 1082, 65, 1249, 72, 802, 118]
    """
    low, high = options["varlen_min"], options["varlen_max"]
    rng = np.random.default_rng(options["varlen_seed"])
    drawn = np.exp(rng.uniform(math.log(low), math.log(high), options["varlen_sequences"]))
    return [int(n) for n in np.clip(np.rint(drawn), low, high)]


def alibi_slopes(heads):
    """ALiBi's slopes ``2^(-8 (h + 1) / heads)`` of ``heads`` heads (Press et al.), float32.

    Examples
    --------
    >>> alibi_slopes(8)[[0, -1]]
    array([0.5       , 0.00390625], dtype=float32)
    """
    return (2.0 ** (-8.0 * np.arange(1, heads + 1) / heads)).astype(np.float32)


# --- planning ----------------------------------------------------------------------------

def serving_points(options, backends, threads):
    """The serving points of a sweep, in the order they run.

    The read probe first; then each compiled backend's decode (``attention``) and paged
    decode, torch's decode; each compiled backend's varlen and padded batch, torch's
    padded batch; the ALiBi point of each backend of ``alibi_backends``.  Only backends
    in ``backends`` (numba, cython, torch) get points, but ALiBi's: one that is not
    there is planned as skipped, with the reason.

    Parameters
    ----------
    options : dict
        :func:`serving_options`.
    backends : sequence of str
    threads : int

    Returns
    -------
    list of dict
        Points with the sweep's key fields (``n``: the read's bytes, the decode's keys,
        the varlen batch's real tokens, ALiBi's N), ``kv_heads``, ``flops`` (useful
        work; None for the read), ``bytes_read`` (the read's and K + V's bytes),
        ``tokens`` (per call) and, for the batches, ``seq_lens``, ``padded_len``;
        for ALiBi ``bias_bytes`` and ``bias_bytes_per_head``.

    Examples
    --------
    >>> points = serving_points(serving_options(), ("naive", "cython", "torch"), 2)
    >>> [(p["workload"], p["backend"]) for p in points][:4]
    [('serving-read', 'numpy'), ('serving-decode', 'cython'), ('serving-paged', 'cython'), \
('serving-decode', 'torch')]
    >>> points[1]["bytes_read"] / 2**20, points[-1]["bias_bytes"] / 2**30
    (256.0, 32.0)
    """
    compiled = [b for b in backends if b in COMPILED]
    torch = ["torch"] if "torch" in backends else []
    points = [_read_point(options, threads)]
    for backend in compiled:
        points += [_decode_point(DECODE, backend, options, threads),
                   _decode_point(PAGED, backend, options, threads)]
    points += [_decode_point(DECODE, b, options, threads) for b in torch]
    for backend in compiled:
        points += [_varlen_point(VARLEN, backend, options, threads),
                   _varlen_point(PADDED, backend, options, threads)]
    points += [_varlen_point(PADDED, b, options, threads) for b in torch]
    for backend in options["alibi_backends"]:
        points.append(_alibi_point(backend, options, threads))
        if backend not in compiled:
            points[-1].update(status="skipped", reason=f"{backend} is not among the "
                              f"benchmarked backends ({', '.join(backends) or 'none'})")
    return points


def _base_point(workload, backend, threads, **fields):
    return {"workload": workload, "backend": backend, "causal": True, "dtype": "float32",
            "batch": 1, "heads": None, "kv_heads": None, "head_dim": None,
            "threads": threads, "isa_requested": None, "flops": None, "bytes_read": None,
            "tokens": None, **fields, "status": "planned", "reason": None}


def _read_point(options, threads):
    nbytes = _read_values(options["read_bytes"], threads) * 4
    return _base_point(READ, "numpy", threads, causal=False, n=nbytes, bytes_read=nbytes)


def _decode_shape(options):
    return Shape(1, options["decode_heads"], 1, options["decode_keys"], options["head_dim"],
                 kv_heads=options["decode_kv_heads"])


def _decode_point(workload, backend, options, threads):
    shape = _decode_shape(options)
    kv_bytes = 2 * shape.n_kv_heads * shape.k_len * shape.head_dim * 4
    point = _base_point(workload, backend, threads, n=shape.k_len, heads=shape.heads,
                        kv_heads=shape.n_kv_heads, head_dim=shape.head_dim,
                        flops=attention_flops(shape), bytes_read=kv_bytes, tokens=1)
    if workload == PAGED:
        point["page_size"] = options["page_size"]
    return point


def _varlen_point(workload, backend, options, threads):
    lengths = varlen_lengths(options)
    heads, dim = options["varlen_heads"], options["head_dim"]
    flops = sum(attention_flops(Shape(1, heads, n, n, dim, causal=True)) for n in lengths)
    return _base_point(workload, backend, threads, n=sum(lengths), batch=len(lengths),
                       heads=heads, kv_heads=heads, head_dim=dim, flops=flops,
                       tokens=sum(lengths), seq_lens=lengths, padded_len=max(lengths))


def _alibi_point(backend, options, threads):
    n, heads = options["alibi_n"], options["alibi_heads"]
    shape = Shape(1, heads, n, n, options["head_dim"], causal=True)
    return _base_point(ALIBI, backend, threads, n=n, heads=heads, kv_heads=heads,
                       head_dim=shape.head_dim, flops=attention_flops(shape), tokens=n,
                       bias_bytes=heads * n * n * 4, bias_bytes_per_head=n * n * 4)


# --- preparation (in the child process) ----------------------------------------------------

@dataclass
class PreparedServing:
    """A serving call ready to be timed, and what was measured on the way.

    Attributes
    ----------
    run : callable
        The timed call (no arguments).
    memory : dict
        :func:`~fastattn.bench._memory.measure_peak`'s measurements of the first
        full-size call (empty for the read probe).
    baseline_rss_bytes : int or None
    max_abs_err : float or None
        The difference from the float64 formula; None when not checked.
    details : dict
        Fields the point records besides (the read probe: every method's rate).
    keep : object
        What must outlive the preparation (the read probe's thread pool, BLAS limit and
        array) until :meth:`release`.
    """

    run: object
    memory: dict
    baseline_rss_bytes: object
    max_abs_err: object
    details: dict
    keep: object = None

    def release(self):
        """Undo what the preparation set for the process (the read probe's BLAS limit and
        thread pool): a point measured in-process leaves the process as it was."""
        if self.keep is None:
            return
        limit, pool, _ = self.keep
        limit.restore_original_limits()
        pool.shutdown()
        self.keep = None


@dataclass
class _Call:
    run: object
    check: object


def prepare_serving(workload, backend, options, threads=None, check=True):
    """Set up one serving point: warm, its first full-size call measured, checked.

    Parameters
    ----------
    workload : str
        One of :data:`SERVING_WORKLOADS`.
    backend : str
        ``"numba"``, ``"cython"`` or ``"torch"`` (the read probe: ignored).
    options : dict
        :func:`serving_options`.
    threads : int, optional
    check : bool, default True

    Returns
    -------
    PreparedServing

    Examples
    --------
    >>> options = serving_options({"decode_keys": 40, "decode_heads": 4, "decode_kv_heads": 2})
    >>> prepared = prepare_serving("serving-paged", "naive", options, threads=1)
    >>> prepared.max_abs_err < 1e-5, prepared.run().shape
    (True, (1, 4, 64))
    """
    from ._memory import current_rss, measure_peak

    if workload == READ:
        return _prepare_read(options, threads or 1)
    make = {DECODE: _decode_call, PAGED: _paged_call, VARLEN: _varlen_call,
            PADDED: _padded_call, ALIBI: _alibi_call}.get(workload)
    if make is None:
        raise ValueError(f"workload must be one of {SERVING_WORKLOADS}, got {workload!r}")
    make(backend, {**options, **_TINY}, threads).run()
    call = make(backend, options, threads)
    baseline = current_rss()
    output, memory = measure_peak(call.run)
    error = call.check(output) if check else None
    del output
    return PreparedServing(call.run, memory, baseline, error, {})


def _settings(threads):
    import contextlib

    import fastattn

    if threads is None:
        return contextlib.nullcontext()
    return fastattn.config_context(num_threads=threads)


def _fastattn(function, threads, *args, **kwargs):
    """A no-argument call of ``function(*args, **kwargs)`` with ``threads`` threads."""
    def run():
        with _settings(threads):
            return function(*args, **kwargs)

    return run


# --- the read probe

def _read_values(nbytes, threads):
    """float32 values read: ``nbytes`` rounded down to whole rows per thread (one at least)."""
    step = READ_ROW * threads
    return max(step, nbytes // 4 // step * step)


def read_runner(array, method, pool, threads):
    """A call reading ``array`` once by ``method``, in ``threads`` parts (consecutive,
    whole rows of :data:`READ_ROW` values).

    ``"gemv"``: ``np.dot(part.reshape(-1, READ_ROW), ones)``, a part in each thread of
    ``pool``; ``"add.reduce"``: ``np.add.reduce(part)`` likewise (both release the
    GIL while they read); ``"c-stream"``: the Cython backend's ``stream_read``, the
    parts on as many OpenMP threads.
    """
    if method == "c-stream":
        from fastattn._cython._kernel import stream_read

        return lambda: stream_read(array, threads)
    parts = np.split(array, threads)
    ones = np.ones(READ_ROW, np.float32)
    read = {"gemv": lambda part: np.dot(part.reshape(-1, READ_ROW), ones),
            "add.reduce": np.add.reduce}[method]

    def run():
        for future in [pool.submit(read, part) for part in parts]:
            future.result()

    return run


def read_methods():
    """The read methods of this installation: :data:`READ_METHODS`, less ``"c-stream"``
    where the Cython backend is not built."""
    from .._backends import available_backends

    compiled = "cython" in available_backends()
    return tuple(method for method in READ_METHODS if method != "c-stream" or compiled)


READ_METHODS = ("gemv", "add.reduce", "c-stream")


def _prepare_read(options, threads, calls=5):
    """Every read method timed (median of ``calls`` after one warm-up); the fastest is run."""
    import statistics
    import time

    from threadpoolctl import threadpool_limits

    limit = threadpool_limits(limits=1, user_api="blas")  # the readers are the threads
    values = _read_values(options["read_bytes"], threads)
    array = np.ones(values, np.float32)  # written: every page is resident before timing
    pool = ThreadPoolExecutor(max_workers=threads)
    rates = {}
    for method in read_methods():
        run = read_runner(array, method, pool, threads)
        run()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        rates[method] = array.nbytes / statistics.median(times) / 1e9
    chosen = max(rates, key=rates.get)
    details = {"read_method": chosen, "read_gbytes_per_s_by_method": rates,
               "bytes_read": int(array.nbytes)}
    return PreparedServing(read_runner(array, chosen, pool, threads), {}, None, None, details,
                           keep=(limit, pool, array))


# --- decoding

def decode_inputs(options, seed=0):
    """Decoding's ``q (1, Hq, 1, D)`` and ``k, v (1, Hk, Lk, D)``, standard normal float32."""
    return make_inputs(_decode_shape(options), seed)


def _decode_call(backend, options, threads):
    q, k, v = decode_inputs(options)
    if backend == "torch":  # one query at the end: every key is visible, no mask
        run = make_runner("torch", q, k, v, causal=False, threads=threads)
    else:
        import fastattn

        run = _fastattn(fastattn.attention, threads, q, k, v, causal="lower_right",
                        backend=backend)
    return _Call(run, lambda out: check_result(out, q, k, v, False, backend))


def paged_cache(k, v, page_size, seed=0):
    """``k, v (1, Hk, L, D)`` as a paged cache whose blocks are shuffled.

    Returns
    -------
    k_cache, v_cache : ndarray, shape (pages, page_size, Hk, D)
        Page ``p`` of the sequence is block ``table[0, p]``; the last page is padded
        with zeros (never read: ``seq_lens`` stops before).
    table : ndarray of int32, shape (1, pages)
        A random permutation of the blocks.
    seq_lens : ndarray of int32, shape (1,)

    Examples
    --------
    >>> k = np.arange(2 * 5 * 1, dtype=np.float32).reshape(1, 2, 5, 1)
    >>> k_cache, _, table, lens = paged_cache(k, k, page_size=2)
    >>> k_cache.shape, lens.tolist()
    ((3, 2, 2, 1), [5])
    >>> bool(np.array_equal(k_cache[table[0]].reshape(6, 2)[:5].T, k[0, :, :, 0]))
    True
    """
    length = k.shape[2]
    pages = -(-length // page_size)
    order = np.random.default_rng(seed).permutation(pages)

    def scatter(x):
        tokens = np.zeros((pages * page_size,) + x.shape[1:2] + x.shape[3:], x.dtype)
        tokens[:length] = x[0].transpose(1, 0, 2)
        cache = np.empty((pages, page_size) + tokens.shape[1:], x.dtype)
        cache[order] = tokens.reshape(pages, page_size, *tokens.shape[1:])
        return cache

    return (scatter(k), scatter(v), order[None, :].astype(np.int32),
            np.array([length], np.int32))


def _paged_call(backend, options, threads):
    import fastattn

    q, k, v = decode_inputs(options)
    k_cache, v_cache, table, lengths = paged_cache(k, v, options["page_size"])
    run = _fastattn(fastattn.paged_attention, threads, q[:, :, 0], k_cache, v_cache, table,
                    lengths, backend=backend)
    return _Call(run, lambda out: check_result(out[:, :, None], q, k, v, False, backend))


# --- packed and padded batches

def varlen_inputs(options, seed=0):
    """The varlen batch: packed ``q, k, v (total, H, D)`` float32 and ``cu_seqlens`` (int32)."""
    lengths = varlen_lengths(options)
    rng = np.random.default_rng(seed)
    shape = (sum(lengths), options["varlen_heads"], options["head_dim"])
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    return q, k, v, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def pad_batch(x, cu_seqlens):
    """Packed ``(total, H, D)`` as ``(B, H, longest, D)``, zeros after each sequence."""
    lengths = np.diff(cu_seqlens)
    padded = np.zeros((len(lengths), x.shape[1], lengths.max(), x.shape[2]), x.dtype)
    for s, (start, length) in enumerate(zip(cu_seqlens[:-1], lengths)):
        padded[s, :, :length] = x[start:start + length].transpose(1, 0, 2)
    return padded


def unpad_batch(padded, cu_seqlens):
    """``(B, H, longest, D)`` back to the packed ``(total, H, D)`` of the real tokens."""
    lengths = np.diff(cu_seqlens)
    return np.concatenate([padded[s, :, :n].transpose(1, 0, 2)
                           for s, n in enumerate(lengths)])


def _varlen_call(backend, options, threads):
    import fastattn

    q, k, v, cu = varlen_inputs(options)
    run = _fastattn(fastattn.varlen_attention, threads, q, k, v, cu, cu, causal=True,
                    backend=backend)
    return _Call(run, lambda out: check_batch(out, q, k, v, cu, backend))


def _padded_call(backend, options, threads):
    q, k, v, cu = varlen_inputs(options)
    padded = [pad_batch(x, cu) for x in (q, k, v)]
    lengths, longest = np.diff(cu), padded[0].shape[2]
    keys = np.arange(longest)[None, :] < lengths[:, None]  # (B, longest): a real key
    if backend == "torch":
        run = _torch_padded(padded, keys, threads)
    else:
        import fastattn

        run = _fastattn(fastattn.attention, threads, *padded, mask=keys[:, None, None, :],
                        causal=True, backend=backend)
    return _Call(run, lambda out: check_batch(unpad_batch(out, cu), q, k, v, cu, backend))


def _torch_padded(padded, keys, threads):
    """torch's SDPA on the padded batch; its mask (causal and real keys) is made once."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    if threads is not None:
        torch.set_num_threads(threads)
    longest = keys.shape[1]
    causal = np.tril(np.ones((longest, longest), bool))
    mask = torch.from_numpy(causal[None, None] & keys[:, None, None, :])
    tq, tk, tv = (to_torch(x) for x in padded)

    def run():
        with torch.inference_mode():
            return to_numpy(scaled_dot_product_attention(tq, tk, tv, attn_mask=mask))

    return run


# --- ALiBi

def alibi_inputs(options, seed=0):
    """ALiBi's ``q, k, v (1, H, N, D)``, standard normal float32."""
    n = options["alibi_n"]
    return make_inputs(Shape(1, options["alibi_heads"], n, n, options["head_dim"]), seed)


def _alibi_call(backend, options, threads):
    import fastattn

    n = options["alibi_n"]
    q, k, v = alibi_inputs(options)
    slopes = alibi_slopes(options["alibi_heads"])
    run = _fastattn(fastattn.attention, threads, q, k, v, causal=True, alibi_slopes=slopes,
                    backend=backend)

    def check(out):  # the first rows (few keys) and the last (every key)
        rows = np.union1d(np.arange(min(CHECK_ROWS, n)), np.arange(max(0, n - CHECK_ROWS), n))
        expected = reference_rows(q[0][:, rows], k[0], v[0], rows, slopes)
        return _compare(out[0][:, rows], expected, backend)

    return _Call(run, check)


# --- the check

def reference_rows(q, k, v, positions, slopes=None):
    """float64 causal attention of the queries at ``positions``, written out directly.

    The serving points' check: no fastattn code is involved.  The query at position
    ``p`` sees the keys ``0 ... p``; ALiBi adds ``-slopes[h] * (p - j)`` to the score of
    key ``j``.  Grouped heads share their kv head (``h // (H // Hk)``).

    Parameters
    ----------
    q : ndarray, shape (H, rows, D)
    k, v : ndarray, shapes (Hk, L, D), (Hk, L, Dv)
    positions : ndarray of int, shape (rows,)
    slopes : ndarray, shape (H,), optional

    Returns
    -------
    ndarray, shape (H, rows, Dv), float64

    Examples
    --------
    >>> k = v = np.eye(2)[None]                       # two keys, one head
    >>> reference_rows(np.zeros((1, 1, 2)), k, v, np.array([0]))[0, 0].tolist()
    [1.0, 0.0]
    >>> reference_rows(np.zeros((1, 1, 2)), k, v, np.array([1]), np.array([math.log(3)]))
    array([[[0.25, 0.75]]])
    """
    group = q.shape[0] // k.shape[0]
    k64, v64 = (np.repeat(x.astype(np.float64), group, axis=0) for x in (k, v))
    scores = q.astype(np.float64) @ k64.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    distance = np.asarray(positions)[:, None] - np.arange(k.shape[1])[None, :]
    if slopes is not None:
        scores -= np.asarray(slopes, np.float64)[:, None, None] * np.abs(distance)
    scores = np.where(distance >= 0, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v64


def check_batch(out, q, k, v, cu_seqlens, backend):
    """Compare the last :data:`CHECK_ROWS` rows of each sequence of a packed causal batch
    with :func:`reference_rows`; return the max abs error (AssertionError beyond the
    float32 tolerance)."""
    error = 0.0
    for start, stop in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        if stop == start:
            continue
        rows = np.arange(max(0, stop - start - CHECK_ROWS), stop - start)
        expected = reference_rows(q[start + rows].transpose(1, 0, 2),
                                  k[start:stop].transpose(1, 0, 2),
                                  v[start:stop].transpose(1, 0, 2), rows)
        got = np.asarray(out)[start + rows].transpose(1, 0, 2)
        error = max(error, _compare(got, expected, backend))
    return error


def _compare(got, expected, backend):
    difference = np.abs(np.asarray(got, np.float64) - expected)
    error = float(difference.max()) if difference.size else 0.0
    if not np.all(difference <= TOLERANCE["float32"]):  # NaN fails too
        raise AssertionError(f"{backend}: result differs from the float64 formula by "
                             f"{error:.3g} (tolerance {TOLERANCE['float32']:g})")
    return error
