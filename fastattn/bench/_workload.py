"""What a benchmark measures: the inputs, the runners, the work counted and the check.

Two workloads: the forward (one ``attention`` call, :func:`make_runner`) and a
training step, forward + backward (:func:`make_training_step`), each with its FLOP
count and its check against the naive float64 reference.  Shared by the ``fastattn
bench`` sweep (in its child processes) and the pytest-benchmark suites in
``bench/``, so both count FLOPs and memory the same way.
"""

import importlib.util
from dataclasses import dataclass

import numpy as np

NAIVE_TEMPORARIES = 4
"""Score-sized float64 arrays the naive reference can hold at once (a conservative count).

It builds the scores, a scaled copy, a masked copy, ``scores - max`` and the
exponentials; at its peak three or four of them are alive together.
"""

CHECK_ROWS = 64
"""Query rows compared with the reference when the full problem is too big for it."""

FULL_CHECK_BYTES = 256 * 2**20
"""Check every row against the naive reference while its temporaries take at most this much."""

DTYPES = ("float32", "float64", "float16", "bfloat16")
"""The dtypes a benchmark can run in (bfloat16: ml_dtypes' type for NumPy)."""

HALF_DTYPES = ("float16", "bfloat16")
"""Stored in 16 bits, computed in float32."""

TOLERANCE = {"float32": 2e-4, "float64": 1e-9, "float16": 1e-3, "bfloat16": 8e-3}
"""Absolute part of the difference from the float64 reference accepted, by input dtype."""

RELATIVE_TOLERANCE = {"float32": 0.0, "float64": 0.0, "float16": 2e-3, "bfloat16": 1.6e-2}
"""Relative part, by input dtype: an element may differ by ``TOLERANCE + RELATIVE_TOLERANCE
* |reference|``.  A half result is rounded to its 11 (float16) or 8 (bfloat16) bits, an
error that grows with the value: torch's SDPA on random normal half inputs (N = 16 ...
2048, D = 64) is off by up to 1.1e-3 (float16) and 7.7e-3 (bfloat16) where outputs
reach 4, almost all of it that rounding."""

GRADIENT_TOLERANCE = {"float32": 1e-4, "float64": 1e-9, "float16": 5e-3, "bfloat16": 3e-2}
"""Largest difference of a gradient (dq, dk or dv) from the naive float64 gradient,
relative to that gradient's largest entry, by input dtype.  Measured on random normal
inputs, N = 64 ... 2048, D = 64: at most 2.5e-6 in float32 (numba, cython and torch
alike; the causal dv of the first keys, which many queries see, is the largest); torch
in float16 7.6e-4 and in bfloat16 7.2e-3 (N = 16 ... 1024)."""

NAIVE_BACKWARD_TEMPORARIES = 8
"""Score-sized float64 arrays the naive backward can hold at once (a conservative count:
the forward's temporaries, then the weights, ``dout vᵀ`` and ``dS``)."""


@dataclass(frozen=True)
class Shape:
    """One attention problem: ``q (batch, heads, q_len, head_dim)``, k/v with ``kv_heads``."""

    batch: int
    heads: int
    q_len: int
    k_len: int
    head_dim: int
    kv_heads: int = None
    causal: bool = False
    dtype: str = "float32"

    @property
    def n_kv_heads(self):
        return self.heads if self.kv_heads is None else self.kv_heads


def attention_flops(shape):
    """FLOPs of one attention call: ``4 * B * H * Lq * Lk * D``, halved when causal.

    Two matrix products (``q kᵀ`` and ``p v``), a multiply and an add each; the
    softmax is not counted.  A causal mask removes about half of the products.

    Parameters
    ----------
    shape : Shape

    Returns
    -------
    float

    Examples
    --------
    >>> attention_flops(Shape(1, 8, 1024, 1024, 64))
    2147483648.0
    >>> attention_flops(Shape(1, 8, 1024, 1024, 64, causal=True))
    1073741824.0
    """
    flops = 4.0 * shape.batch * shape.heads * shape.q_len * shape.k_len * shape.head_dim
    return flops / 2 if shape.causal else flops


def training_flops(shape):
    """FLOPs of one forward + backward: ``14 * B * H * Lq * Lk * D``, halved when causal.

    The forward's two products and the backward's five (``S = q kᵀ`` again, ``dV =
    Pᵀ dO``, ``dP = dO vᵀ``, ``dQ = dS k``, ``dK = dSᵀ q``): 3.5 times
    :func:`attention_flops`, the count FlashAttention's papers use.

    Examples
    --------
    >>> training_flops(Shape(1, 8, 1024, 1024, 64)) / attention_flops(Shape(1, 8, 1024, 1024, 64))
    3.5
    """
    return 3.5 * attention_flops(shape)


def naive_bytes_needed(shape):
    """Bytes the naive reference needs for its score-sized float64 temporaries.

    Parameters
    ----------
    shape : Shape

    Returns
    -------
    int
        ``NAIVE_TEMPORARIES * B * H * Lq * Lk * 8``.

    Examples
    --------
    >>> naive_bytes_needed(Shape(1, 8, 1024, 1024, 64)) / 2**30
    0.25
    """
    return NAIVE_TEMPORARIES * shape.batch * shape.heads * shape.q_len * shape.k_len * 8


def naive_over_budget(shape, budget_bytes):
    """Why the naive reference is not run on ``shape`` under ``budget_bytes``, or None.

    Parameters
    ----------
    shape : Shape
    budget_bytes : float

    Returns
    -------
    str or None

    Examples
    --------
    >>> naive_over_budget(Shape(1, 8, 8192, 8192, 64), 2**30)
    'would need 16 GiB (memory budget 1 GiB)'
    >>> naive_over_budget(Shape(1, 8, 1024, 1024, 64), 2**30) is None
    True
    """
    needed = naive_bytes_needed(shape)
    if needed <= budget_bytes:
        return None
    return f"would need {needed / 2**30:.3g} GiB (memory budget {budget_bytes / 2**30:.3g} GiB)"


def numpy_dtype(name):
    """The NumPy dtype of a benchmark dtype name; bfloat16 is ml_dtypes'.

    Parameters
    ----------
    name : str
        One of :data:`DTYPES`.

    Returns
    -------
    numpy.dtype

    Raises
    ------
    ValueError
        For another name.
    ModuleNotFoundError
        For bfloat16 without ml_dtypes (saying how to install it).

    Examples
    --------
    >>> numpy_dtype("bfloat16").name, numpy_dtype("float16").itemsize
    ('bfloat16', 2)
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError("bfloat16 needs the package ml_dtypes, which is not "
                                      "installed: pip install ml_dtypes",
                                      name="ml_dtypes") from error
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _standard_normal(rng, size, dtype):
    """Standard-normal values in ``dtype``: half dtypes round float32 draws (NumPy draws
    float32 and float64 only), so float32 and a half dtype see the same values."""
    dtype = numpy_dtype(dtype)
    if dtype.name in HALF_DTYPES:
        return rng.standard_normal(size, dtype=np.float32).astype(dtype)
    return rng.standard_normal(size, dtype=dtype)


def make_inputs(shape, seed=0):
    """Standard-normal ``q, k, v`` arrays for ``shape``, C-contiguous, in its dtype.

    Half dtypes (float16, bfloat16) hold the float32 draws of the same seed, rounded.

    Parameters
    ----------
    shape : Shape
    seed : int, default 0

    Returns
    -------
    q, k, v : ndarray
        ``(B, H, Lq, D)``, ``(B, Hkv, Lk, D)`` and ``(B, Hkv, Lk, D)``.

    Examples
    --------
    >>> q, k, v = make_inputs(Shape(1, 4, 3, 5, 8, kv_heads=2))
    >>> q.shape, k.shape, q.dtype
    ((1, 4, 3, 8), (1, 2, 5, 8), dtype('float32'))
    >>> make_inputs(Shape(1, 4, 3, 5, 8, dtype="bfloat16"))[0].dtype.name
    'bfloat16'
    """
    rng = np.random.default_rng(seed)

    def draw(heads, length):
        return _standard_normal(rng, (shape.batch, heads, length, shape.head_dim), shape.dtype)

    return draw(shape.heads, shape.q_len), draw(shape.n_kv_heads, shape.k_len), \
        draw(shape.n_kv_heads, shape.k_len)


def torch_available():
    """True when ``torch`` can be imported (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def benchmark_backends(requested=None):
    """The backends a benchmark can run: fastattn's available ones, then ``"torch"``.

    Parameters
    ----------
    requested : sequence of str, optional
        Keep only these (in this order); unknown or unavailable names raise.

    Returns
    -------
    list of str

    Examples
    --------
    >>> "naive" in benchmark_backends()
    True
    """
    from fastattn._backends import all_backends

    known = {b.name: b for b in all_backends()}
    found = [name for name, b in known.items() if b.available]
    if torch_available():
        found.append("torch")
    if requested is None:
        return found
    missing = [name for name in requested if name not in found]
    if missing:
        reasons = [f"{name}: {known[name].reason}" if name in known else
                   f"{name}: {'torch is not installed' if name == 'torch' else 'unknown backend'}"
                   for name in missing]
        raise ValueError(f"cannot benchmark {', '.join(reasons)}; available: {found}")
    return list(requested)


def make_runner(backend, q, k, v, causal=False, threads=None):
    """A no-argument callable computing attention of ``q, k, v`` with ``backend``.

    ``"torch"`` runs ``torch.nn.functional.scaled_dot_product_attention`` on
    tensors sharing memory with the arrays (grouped-query heads with
    ``enable_gqa``); the others call :func:`fastattn.attention`.  The callable
    returns a NumPy array.

    Parameters
    ----------
    backend : str
    q, k, v : ndarray
    causal : bool, default False
    threads : int, optional
        Threads for the compiled kernels (and torch's intra-op pool).

    Returns
    -------
    callable

    Examples
    --------
    >>> q, k, v = make_inputs(Shape(1, 2, 4, 4, 8))
    >>> make_runner("naive", q, k, v)().shape
    (1, 2, 4, 8)
    """
    if backend == "torch":
        return _torch_runner(q, k, v, causal, threads)
    import fastattn

    def run():
        if threads is None:
            return fastattn.attention(q, k, v, causal=causal, backend=backend)
        with fastattn.config_context(num_threads=threads):
            return fastattn.attention(q, k, v, causal=causal, backend=backend)

    return run


def to_torch(array):
    """A torch tensor sharing memory with ``array``; bfloat16 arrays give torch.bfloat16.

    (``torch.from_numpy`` does not know ml_dtypes' bfloat16: its bits go through int16.)

    Examples
    --------
    >>> import torch
    >>> to_torch(np.ones(2, numpy_dtype("bfloat16"))).dtype == torch.bfloat16
    True
    """
    import torch

    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor):
    """A NumPy array sharing memory with the CPU ``tensor``; torch.bfloat16 gives ml_dtypes'.

    Examples
    --------
    >>> import torch
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype.name
    'bfloat16'
    """
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
    return tensor.numpy()


def _torch_runner(q, k, v, causal, threads):
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    if threads is not None:
        torch.set_num_threads(threads)
    tq, tk, tv = (to_torch(x) for x in (q, k, v))
    gqa = q.shape[1] != k.shape[1]

    def run():
        with torch.inference_mode():
            return to_numpy(scaled_dot_product_attention(tq, tk, tv, is_causal=causal,
                                                         enable_gqa=gqa))

    return run


def independent_reference(q, k, v, causal, rows):
    """float64 softmax attention of the first ``rows`` queries, written out directly.

    The check of the naive backend itself: no fastattn code is involved.  Grouped
    heads are repeated, the causal mask is aligned top-left.

    Parameters
    ----------
    q, k, v : ndarray, shapes (B, H, Lq, D), (B, Hkv, Lk, D), (B, Hkv, Lk, Dv)
    causal : bool
    rows : int

    Returns
    -------
    ndarray, shape (B, H, rows, Dv), float64

    Examples
    --------
    >>> q, k, v = make_inputs(Shape(1, 1, 2, 2, 4))
    >>> out = independent_reference(q, k, v, causal=True, rows=1)
    >>> bool(np.allclose(out[0, 0, 0], v[0, 0, 0]))   # the first query sees one key
    True
    """
    group = q.shape[1] // k.shape[1]
    q64 = q[:, :, :rows].astype(np.float64)
    k64 = np.repeat(k.astype(np.float64), group, axis=1)
    v64 = np.repeat(v.astype(np.float64), group, axis=1)
    scores = q64 @ k64.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if causal:
        keys = np.arange(k.shape[2])[None, :]
        scores = np.where(keys <= np.arange(scores.shape[2])[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v64


def check_result(result, q, k, v, causal, backend):
    """Assert that ``result`` is right; return the max abs error.

    Every backend is compared with the naive float64 reference, and the naive
    backend with :func:`independent_reference`.  Every query row is compared while
    the naive reference needs at most :data:`FULL_CHECK_BYTES`, else (and always for
    naive) the first :data:`CHECK_ROWS` rows, which is exact for causal attention
    too, whose mask is aligned top-left.  An element may differ by :data:`TOLERANCE`
    plus :data:`RELATIVE_TOLERANCE` times the reference's magnitude (the relative part
    is 0 for float32 and float64).  Half inputs are compared with the naive reference
    of their float64 values (the naive backend would round its result to the half
    dtype).

    Parameters
    ----------
    result : ndarray, shape (B, H, Lq, Dv)
    q, k, v : ndarray
    causal : bool
    backend : str
        The backend that computed ``result``.

    Returns
    -------
    float

    Raises
    ------
    AssertionError
        When an element differs by more than the dtype's tolerance.

    Examples
    --------
    >>> q, k, v = make_inputs(Shape(1, 2, 16, 16, 8))
    >>> check_result(make_runner("naive", q, k, v)(), q, k, v, False, "naive") < 1e-6
    True
    """
    import fastattn

    dtype = q.dtype.name
    rows = min(q.shape[-2], CHECK_ROWS)
    if backend == "naive":
        expected = independent_reference(q, k, v, causal, rows)
    else:
        shape = Shape(q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3],
                      kv_heads=k.shape[1])
        if naive_bytes_needed(shape) <= FULL_CHECK_BYTES:
            rows = q.shape[-2]
        q = q[..., :rows, :]
        if dtype in HALF_DTYPES:
            q, k, v = (x.astype(np.float64) for x in (q, k, v))
        expected = fastattn.attention(q, k, v, causal=causal, backend="naive")
    got = np.asarray(result)[..., :rows, :].astype(np.float64)
    difference = np.abs(got - expected)
    absolute, relative = TOLERANCE[dtype], RELATIVE_TOLERANCE[dtype]
    error = float(np.max(difference)) if got.size else 0.0
    if not np.all(difference <= absolute + relative * np.abs(expected)):  # NaN fails too
        allowed = f"{absolute:g}" + (f" + {relative:g}·|reference|" if relative else "")
        raise AssertionError(f"{backend}: result differs from the reference by {error:.3g} "
                             f"(tolerance {allowed})")
    return error


# --- forward + backward ------------------------------------------------------------------

def make_upstream_gradient(shape, seed=0):
    """The standard-normal upstream gradient ``dout`` of a training step on ``shape``.

    Drawn from its own stream (``seed + 1``), so it is independent of :func:`make_inputs`.

    Examples
    --------
    >>> make_upstream_gradient(Shape(1, 2, 3, 5, 8)).shape
    (1, 2, 3, 8)
    """
    rng = np.random.default_rng(seed + 1)
    return _standard_normal(rng, (shape.batch, shape.heads, shape.q_len, shape.head_dim),
                            shape.dtype)


def backward_unavailable(backend):
    """Why ``backend`` gets no forward + backward point, or None when it can run one.

    The naive backward is the check's reference, never timed (it holds full score
    matrices, like the naive forward); a compiled backend needs its backward kernel.

    Examples
    --------
    >>> backward_unavailable("torch") is None
    True
    >>> backward_unavailable("naive")
    'the naive backward is the reference of the check, not timed'
    """
    if backend == "naive":
        return "the naive backward is the reference of the check, not timed"
    if backend == "torch":
        return None
    from fastattn._backward import backward_runners

    runner, reason = backward_runners().get(backend, (None, "unknown backend"))
    return None if runner is not None else f"no backward: {reason}"


class TrainingStep:
    """The forward and backward of one backend on fixed ``q, k, v`` and upstream gradient.

    ``forward()`` returns what the backward needs (fastattn: ``(out, lse)``; torch: its
    output tensor, holding the autograd graph), ``backward(state)`` the gradients
    ``(dq, dk, dv)`` as arrays, and calling the step runs both.  Made by
    :func:`make_training_step`.
    """

    def __call__(self):
        return self.backward(self.forward())


class _FastattnStep(TrainingStep):
    def __init__(self, backend, q, k, v, dout, causal, threads):
        self.backend, self.arrays, self.dout = backend, (q, k, v), dout
        self.causal, self.threads = causal, threads

    def _settings(self):
        import contextlib

        import fastattn

        if self.threads is None:
            return contextlib.nullcontext()
        return fastattn.config_context(num_threads=self.threads)

    def forward(self):
        import fastattn

        with self._settings():
            return fastattn.attention(*self.arrays, causal=self.causal, return_lse=True,
                                      backend=self.backend)

    def backward(self, state):
        import fastattn

        out, lse = state
        with self._settings():
            return fastattn.attention_backward(self.dout, *self.arrays, out, lse,
                                               causal=self.causal, backend=self.backend)


class _TorchStep(TrainingStep):
    def __init__(self, q, k, v, dout, causal, threads):
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        # Leaves sharing memory with the arrays; their .grad is replaced on each backward.
        self.leaves = [to_torch(x).requires_grad_() for x in (q, k, v)]
        self.upstream = to_torch(dout)
        self.causal, self.gqa = causal, q.shape[1] != k.shape[1]

    def forward(self):
        from torch.nn.functional import scaled_dot_product_attention

        return scaled_dot_product_attention(*self.leaves, is_causal=self.causal,
                                            enable_gqa=self.gqa)

    def backward(self, state):
        for leaf in self.leaves:
            leaf.grad = None
        state.backward(self.upstream)
        return tuple(to_numpy(leaf.grad) for leaf in self.leaves)


def make_training_step(backend, q, k, v, dout, causal=False, threads=None):
    """A :class:`TrainingStep`: attention forward + backward of ``backend`` on these inputs.

    fastattn backends run ``attention(q, k, v, causal=..., return_lse=True)`` then
    ``attention_backward(dout, q, k, v, out, lse, causal=...)``; ``"torch"`` runs
    ``scaled_dot_product_attention`` on tensors with ``requires_grad`` (sharing memory
    with the arrays) then ``.backward(dout)``.

    Parameters
    ----------
    backend : str
    q, k, v, dout : ndarray
    causal : bool, default False
    threads : int, optional
        Threads for the compiled kernels (and torch's intra-op pool).

    Returns
    -------
    TrainingStep

    Examples
    --------
    >>> shape = Shape(1, 2, 4, 4, 8)
    >>> step = make_training_step("naive", *make_inputs(shape), make_upstream_gradient(shape))
    >>> [grad.shape for grad in step()]
    [(1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)]
    """
    if backend == "torch":
        return _TorchStep(q, k, v, dout, causal, threads)
    return _FastattnStep(backend, q, k, v, dout, causal, threads)


def gradient_check_heads(shape):
    """How many heads (of the first batch entry) the gradient check compares.

    As many as the naive float64 backward can take within :data:`FULL_CHECK_BYTES`
    (:data:`NAIVE_BACKWARD_TEMPORARIES` score-sized arrays per head), at most all:
    heads are independent, so the first ``h`` heads' gradients are exactly those of
    the problem cut to them.  0 beyond that (N > 2048 at the defaults): not checked.

    Examples
    --------
    >>> [gradient_check_heads(Shape(1, 8, n, n, 64)) for n in (512, 1024, 2048, 4096)]
    [8, 4, 1, 0]
    """
    per_head = NAIVE_BACKWARD_TEMPORARIES * shape.q_len * shape.k_len * 8
    return min(shape.heads, FULL_CHECK_BYTES // per_head)


def check_gradients(grads, q, k, v, dout, causal, backend):
    """Assert that the gradients ``grads`` are right; return ``(error, heads compared)``.

    The first :func:`gradient_check_heads` heads of the first batch entry are compared
    with the naive backend's float64 gradient of the same inputs; the error is the
    largest difference of ``dq``, ``dk`` or ``dv`` relative to that gradient's largest
    entry, within :data:`GRADIENT_TOLERANCE`.  ``(None, 0)`` when no head fits.

    Parameters
    ----------
    grads : tuple of ndarray
        ``(dq, dk, dv)``, shaped like ``q, k, v`` (no grouped heads).
    q, k, v, dout : ndarray, shape (B, H, L, D)
    causal : bool
    backend : str
        The backend that computed ``grads``.

    Returns
    -------
    error : float or None
    heads : int

    Raises
    ------
    AssertionError
        When a gradient differs by more than the dtype's tolerance.

    Examples
    --------
    >>> shape = Shape(1, 2, 16, 16, 8)
    >>> inputs = make_inputs(shape) + (make_upstream_gradient(shape),)
    >>> grads = make_training_step("naive", *inputs, causal=True)()
    >>> error, heads = check_gradients(grads, *inputs, True, "naive")
    >>> error < 1e-6, heads
    (True, 2)
    """
    import fastattn

    heads = gradient_check_heads(Shape(1, q.shape[1], q.shape[2], k.shape[2], q.shape[3]))
    if heads == 0:
        return None, 0
    cut = [x[:1, :heads].astype(np.float64) for x in (q, k, v, dout)]
    out, lse = fastattn.attention(*cut[:3], causal=causal, return_lse=True, backend="naive")
    expected = fastattn.attention_backward(cut[3], *cut[:3], out, lse, causal=causal,
                                           backend="naive")
    error = 0.0
    for got, reference in zip(grads, expected):
        difference = np.max(np.abs(np.asarray(got)[:1, :heads].astype(np.float64)
                                   - reference))
        error = max(error, float(difference / max(np.max(np.abs(reference)), 1e-30)))
    tolerance = GRADIENT_TOLERANCE[np.dtype(q.dtype).name]
    if not error <= tolerance:
        raise AssertionError(f"{backend}: gradients differ from the naive gradient by "
                             f"{error:.3g} of their largest entry (tolerance {tolerance:g})")
    return error, heads
