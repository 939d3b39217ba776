"""The gradients of attention: :func:`attention_backward`, its backends and the tiled driver.

The tiled driver computes ``delta = rowsum(dout * out)`` once with NumPy (in the
compute dtype, without a compute-dtype copy of half ``dout`` or ``out``), merges the
batch axes into one (views, as :mod:`fastattn._tiled` does), plans
(:mod:`fastattn._backward_plan`), runs a compiled kernel's
``run_backward_kernel(call)`` on a :class:`~fastattn._contract.BackwardCall`, sums
the partial ``dq`` slots in slot order, and finally sums the gradients of inputs
that were broadcast over batch axes.  Half inputs (float16, bfloat16) reach the kernel
in their own dtype with ``dout``; ``lse``, ``delta`` and the gradients are float32, cast
to each input's dtype at the end.  See "The backward pass" in docs/design.md.
"""

import functools

import numpy as np

from ._backends import auto_choice, resolve
from ._backward_plan import make_backward_plan
from ._config import get_config
from ._contract import BWD_BATCH, BWD_KV_HEAD, BWD_PART, BWD_Q_START, BWD_Q_STOP, BackwardCall
from ._naive import naive_backward
from ._plan import rounds
from ._sinks import sink_gradient
from ._tiled import run_batches
from ._half import is_bfloat16, is_float
from ._validation import as_array, describe, validate

def attention_backward(dout, q, k, v, out, lse, mask=None, *, causal=False, window=None,
                       scale=None, softcap=None, alibi_slopes=None, sinks=None, backend=None):
    """Gradients of :func:`attention` with respect to ``q``, ``k`` and ``v``.

    For the forward ``out = attention(q, k, v, mask, causal=..., window=...,
    scale=...)`` and an upstream gradient ``dout`` (the gradient of a scalar loss
    with respect to ``out``), returns the gradients of that loss with respect to
    ``q``, ``k`` and ``v``.  The tiled backends recompute the probabilities block by
    block from ``lse`` (FlashAttention-2): no ``Lq x Lk`` buffer, extra memory O(N).

    Parameters
    ----------
    dout : array_like, shape (..., Hq, Lq, Dv) or (Lq, Dv)
        Upstream gradient, the shape of ``out``.
    q, k, v, mask, causal, window, scale, softcap, alibi_slopes, sinks
        As given to :func:`attention`.  The mask (bool or additive) and the ALiBi
        slopes are constants: they get no gradient.
    out : array_like, shape (..., Hq, Lq, Dv) or (Lq, Dv)
        The forward's output.
    lse : array_like, shape (..., Hq, Lq) or (Lq,)
        The forward's log-sum-exp (``attention(..., return_lse=True)``).
    backend : {"naive", "numba", "cython", "auto"}, optional
        Default: the ``backend`` setting (see :func:`config_context`), "auto".

    Returns
    -------
    dq, dk, dv : ndarray
        Shaped and typed like ``q``, ``k`` and ``v`` (float16 and bfloat16 are
        computed in float32 and rounded once).  Where ``k``/``v`` were broadcast
        over batch axes, their gradients are summed over those axes; with
        grouped-query attention, each kv head's gradient sums over its query
        heads.  A row whose keys are all masked contributes nothing: its ``dq``
        is zero.
    dsinks : ndarray, shape (Hq,)
        Only when ``sinks`` is given: the gradient with respect to the sinks (in
        the compute dtype), summed over the batch and the rows.

    Notes
    -----
    ``dout`` must be a float array that the dtype of ``out`` (``np.result_type(q, k,
    v)``) holds exactly, and ``out`` and ``lse`` float arrays that the compute dtype
    holds exactly (float32 for half precision): a float64 ``dout`` for float32 inputs,
    or a float32 ``dout`` for float16 inputs, is refused rather than rounded.

    Examples
    --------
    The gradient of ``sum(dout * out)`` with respect to one key entry, checked by a
    central difference:

    >>> import numpy as np, fastattn
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 4, 8))
    >>> out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True)
    >>> dout = rng.normal(size=out.shape)
    >>> dq, dk, dv = fastattn.attention_backward(dout, q, k, v, out, lse, causal=True)
    >>> def loss(k):
    ...     return np.sum(dout * fastattn.attention(q, k, v, causal=True))
    >>> step = np.zeros_like(k)
    >>> step[1, 2] = 1e-6
    >>> numeric = (loss(k + step) - loss(k - step)) / 2e-6
    >>> bool(np.isclose(numeric, dk[1, 2], rtol=1e-6))
    True
    """
    q, k, v = (as_array(name, x) for name, x in zip("qkv", (q, k, v)))
    problem = validate(q, k, v, mask, causal, window, scale, softcap, alibi_slopes, sinks)
    dout, out, lse = _gradient_inputs(problem, dout, out, lse)
    settings = get_config()
    runner = backward_runner(backend if backend is not None else settings["backend"], problem)
    if problem.group == 0:  # no query heads: nothing depends on k and v
        grads = tuple(np.zeros(x.shape, problem.compute_dtype) for x in
                      (problem.q, problem.k, problem.v))
    else:
        grads = runner(problem, dout, out, lse, settings)
    grads = tuple(_like_input(grad, x) for grad, x in zip(grads, (q, k, v)))
    if problem.modifiers.sinks is None:
        return grads
    delta = row_dots(dout, out, problem.compute_dtype)
    dsinks = sink_gradient(problem.modifiers.sinks, lse, delta, head_axis=-2)
    return grads + (dsinks.astype(problem.compute_dtype),)


def _gradient_inputs(problem, dout, out, lse):
    """``dout``, ``out``, ``lse`` checked against ``problem``, with heads: ``dout`` in the
    storage dtype, ``out`` and ``lse`` in the compute dtype or (``out``) the storage dtype."""
    shape, compute, storage = (problem.public_out_shape, problem.compute_dtype,
                               problem.storage_dtype)
    checked = []
    for name, x, expected, dtype in (("dout", dout, shape, storage), ("out", out, shape, compute),
                                     ("lse", lse, shape[:-1], compute)):
        array = as_array(name, x)
        if not is_float(array.dtype):
            raise TypeError(f"{describe(name, array)}: expected a float16, bfloat16, float32 or "
                            f"float64 array")
        if array.shape != expected:
            what = "attention's lse" if name == "lse" else "attention's output"
            raise ValueError(f"{describe(name, array)} must have shape {expected}, that of "
                             f"{what} for these q, k and v")
        if not np.can_cast(array.dtype, dtype, "safe"):
            what = "attention's output is" if name == "dout" else "q, k and v are computed in"
            raise TypeError(f"{describe(name, array)}: {what} {dtype}, which would round "
                            f"{name}; pass {name}.astype({_spelling(dtype)}) or q, k, v in "
                            f"{array.dtype}")
        if array.dtype != storage:  # out may stay in the storage dtype: only delta reads it
            array = array.astype(dtype, copy=False)
        if array.ndim and array.shape[-1] > 1 and array.strides[-1] != array.itemsize:
            array = np.ascontiguousarray(array)  # e.g. the broadcast ones of out.sum()
        checked.append(array[None] if problem.squeeze_heads else array)
    return checked


def _spelling(dtype):
    return "ml_dtypes.bfloat16" if is_bfloat16(dtype) else f"np.{dtype}"


def _like_input(grad, x):
    """``grad`` (the broadcast shape) summed over the axes ``x`` was broadcast along, as ``x``."""
    extra = grad.ndim - x.ndim
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    ones = tuple(i for i, (n, m) in enumerate(zip(x.shape, grad.shape)) if n == 1 and m != 1)
    if ones:
        grad = grad.sum(axis=ones, keepdims=True)
    return grad.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- backends

def backward_runner(name, problem):
    """The backward runner for backend ``name`` (None or "auto": chosen for ``problem``).

    A runner takes ``(problem, dout, out, lse, settings)`` (4-D ``dout`` in the storage
    dtype, ``out`` in the storage or the compute dtype, 3-D ``lse`` in the compute dtype)
    and returns ``(dq, dk, dv)`` in the compute dtype, shaped like ``problem.q``,
    ``problem.k``, ``problem.v``.  Unknown or unavailable
    names raise ``ValueError`` as in :func:`fastattn._backends.resolve`.
    """
    if name is None or name == "auto":
        name = auto_backward_choice(problem)
    resolve(name, problem)  # unknown names, and backends that cannot run at all
    runner, reason = backward_runners()[name]
    if runner is None:
        available = ", ".join(n for n, (r, _) in backward_runners().items() if r is not None)
        raise ValueError(f"backend {name!r} has no backward here: {reason}; backends with a "
                         f"backward: {available}, or 'auto'")
    return runner


def auto_backward_choice(problem):
    """The backend "auto" picks for the backward of ``problem``: the forward's rule
    (:func:`fastattn._backends.auto_choice`) among the backends with a backward."""
    runners = backward_runners()
    return auto_choice(problem, [name for name, (runner, _) in runners.items() if runner])


@functools.cache
def backward_runners():
    """``{name: (runner or None, reason)}`` for every backend; compiled kernels load lazily."""
    runners = {"naive": (_naive_runner, "full-matrix float64 reference")}
    for name in ("numba", "cython"):
        try:
            if name == "numba":
                from ._numba.backward import run_backward_kernel
            else:
                from ._cython._backward import run_backward_kernel
        except ImportError as error:
            runners[name] = (None, f"its backward kernel cannot be imported: {error}")
            continue
        runners[name] = (_tiled_runner(run_backward_kernel), f"tiled {name} backward kernel")
    return runners


def _naive_runner(problem, dout, out, lse, settings):
    return tuple(g.astype(problem.compute_dtype) for g in naive_backward(problem, dout))


def _tiled_runner(run_kernel):
    def runner(problem, dout, out, lse, settings):
        return run_backward_tiled(run_kernel, problem, dout, out, lse, settings)
    return runner


# --------------------------------------------------------------------------- the tiled driver

def run_backward_tiled(run_kernel, problem, dout, out, lse, settings):
    """``(dq, dk, dv)`` of ``problem`` in the compute dtype, computed by ``run_kernel``."""
    dtype = problem.compute_dtype
    if min(problem.q.size, problem.k.size, problem.v.size) == 0:  # the loss is constant
        return tuple(np.zeros(x.shape, dtype) for x in (problem.q, problem.k, problem.v))
    arrays = {"q": problem.q, "k": problem.k, "v": problem.v, "dout": dout,
              "lse": np.ascontiguousarray(lse, dtype),
              "delta": row_dots(dout, out, dtype),  # rowsum(dout * out), once
              "dq": np.zeros(problem.q.shape, dtype), "dk": np.empty(problem.k.shape, dtype),
              "dv": np.empty(problem.v.shape, dtype)}
    run_batches(functools.partial(_run_batch, run_kernel, problem), problem, arrays, settings)
    return arrays["dq"], arrays["dk"], arrays["dv"]


def _run_batch(run_kernel, problem, views, n_threads, block_q, block_k):
    q, k, dq = views["q"], views["k"], views["dq"]
    plan = make_backward_plan(q.shape[0], k.shape[1], problem.group, q.shape[2], k.shape[2],
                              problem.band, n_threads, block_q, block_k)
    call = BackwardCall(q=q, k=k, v=views["v"], dout=views["dout"], lse=views["lse"],
                        delta=views["delta"], mask=views.get("mask"),
                        mask_kind=problem.mask_kind, scale=problem.scale, plan=plan, dq=dq,
                        dk=views["dk"], dv=views["dv"], modifiers=problem.modifiers,
                        part_dq=np.zeros((plan.n_parts, plan.group) + q.shape[2:], dq.dtype))
    for part in rounds(plan):  # Python runs between rounds: a pending Ctrl-C is raised
        call.plan = part
        run_kernel(call)
    sum_partial_dq(plan, call.part_dq, dq)


def row_dots(a, b, dtype):
    """``rowsum(a * b)`` over the last axis, in ``dtype``.

    einsum converts half operands in buffers of a few thousand elements: no
    ``dtype`` copy of ``a`` or ``b`` is made.
    """
    if a.dtype == b.dtype == dtype:
        return np.einsum("...d,...d->...", a, b)
    return np.einsum("...d,...d->...", a, b, dtype=dtype, casting="safe")


def sum_partial_dq(plan, part_dq, dq):
    """Add the partial ``dq`` slots into ``dq`` in slot order (a fixed, shape-only order)."""
    group = plan.group
    for task in plan.tasks[np.argsort(plan.tasks[:, BWD_PART], kind="stable")]:
        if task[BWD_PART] < 0:
            continue
        b, heads = task[BWD_BATCH], slice(task[BWD_KV_HEAD] * group,
                                          (task[BWD_KV_HEAD] + 1) * group)
        rows = slice(task[BWD_Q_START], task[BWD_Q_STOP])  # the rows its keys can reach
        dq[b, heads, rows] += part_dq[task[BWD_PART], :, rows]
