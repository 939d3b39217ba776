"""Exact attention over chunked dask arrays: :func:`fastattn.dask.attention`.

Needs the optional ``dask`` extra (``pip install 'fastattn[dask]'``); ``import fastattn``
alone never imports dask.  See ``docs/distributed.md`` for how the chunks become tasks
and how much memory a worker needs.
"""

try:
    import dask  # noqa: F401  (absolute: the dask project, not this package)
    import dask.array  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastattn.dask needs dask with its array module: pip install 'fastattn[dask]' "
        f"(or pip install 'dask[array,distributed]'); the import failed with: {error}"
    ) from error

import math

import numpy as np

from .._validation import check_flag, explain_torch_keywords
from ._checks import check_arguments
from ._cluster import local_cluster
from ._graph import build
from ._layout import align

__all__ = ["attention", "local_cluster"]


@explain_torch_keywords
def attention(q, k, v, mask=None, *, causal=False, window=None, scale=None, return_lse=False):
    """Exact attention over chunked dask arrays, ``softmax(q kᵀ · scale + mask) v``.

    The same semantics as :func:`fastattn.attention`, computed block by block: each
    pair of a query chunk and a key chunk is one task (the kernel of
    :func:`fastattn.attention` on those blocks, giving ``(out, lse)``), and the partial
    results of one query chunk are merged exactly, pairwise in a tree, with
    :func:`fastattn.merge_attention`.  No task holds the whole key sequence or any
    ``Lq × Lk`` matrix.  Pairs that the causal or window band removes entirely get no
    task at all.

    Parameters
    ----------
    q : dask.array.Array or array_like, shape (..., Hq, Lq, D) or (Lq, D)
        Queries, chunked along any axes; NumPy input is converted with
        ``dask.array.asarray``.
    k : dask.array.Array or array_like, shape (..., Hk, Lk, D) or (Lk, D)
        Keys.  ``Hk`` must divide ``Hq``: query head ``h`` uses kv head
        ``h // (Hq // Hk)``.
    v : dask.array.Array or array_like, shape (..., Hk, Lk, Dv) or (Lk, Dv)
        Values.
    mask : dask.array.Array or array_like of bool or float, optional
        Broadcastable to ``(..., Hq, Lq, Lk)``, True (bool) = may attend, or added to
        the scaled scores (float).  Rechunked to the blocks of the scores.  A float
        dask mask is checked for NaN and +inf when its blocks are computed.
    causal : bool or {"upper_left", "lower_right"}, default False
        As in :func:`fastattn.attention`, aligned on the whole sequences.
    window : tuple (left, right), optional
        As in :func:`fastattn.attention`, aligned on the whole sequences.
    scale : float, optional
        Default ``1 / sqrt(D)``.
    return_lse : bool, default False
        Also return the log-sum-exp of each row (``-inf`` where a row sees no key).

    Returns
    -------
    out : dask.array.Array, shape (..., Hq, Lq, Dv)
        In ``np.result_type(q, k, v)`` (float16 is computed in float32).  Chunked like
        ``q`` on the batch, head and query axes (split where chunks of k, v must
        align), one chunk along ``Dv``.
    lse : dask.array.Array, shape (..., Hq, Lq)
        Only with ``return_lse=True``, in the compute dtype.

    Notes
    -----
    Chunks along the batch and head axes run independently.  With grouped-query
    attention a query-head chunk is split where it straddles a group boundary, and k
    and v are rechunked so that each query-head chunk reads one kv-head block.  The
    ``D`` and ``Dv`` axes are made single chunks.  The kernels run with one thread per
    task unless ``fastattn.config_context(num_threads=...)`` (or
    ``FASTATTN_NUM_THREADS``) is set when the graph is built; the backend and block
    sizes in force at that moment are used by every task.

    Works with any dask scheduler: the default threaded one (the kernels release the
    GIL), :func:`local_cluster`, or a ``dask.distributed.Client`` of any cluster whose
    workers can import fastattn.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastattn, fastattn.dask
    >>> rng = np.random.default_rng(0)
    >>> q = da.from_array(rng.normal(size=(2, 64, 16)), chunks=(1, 32, 16))
    >>> k = da.from_array(rng.normal(size=(2, 96, 16)), chunks=(1, 32, 16))
    >>> v = da.from_array(rng.normal(size=(2, 96, 16)), chunks=(1, 32, 16))
    >>> out, lse = fastattn.dask.attention(q, k, v, causal="lower_right", return_lse=True)
    >>> out.shape, out.chunks[1]
    ((2, 64, 16), (32, 32))
    >>> expected = fastattn.attention(q.compute(), k.compute(), v.compute(),
    ...                               causal="lower_right")
    >>> bool(np.allclose(out.compute(), expected))
    True
    """
    problem = check_arguments(q, k, v, mask, causal, window, scale)
    return_lse = check_flag("return_lse", return_lse)
    out, lse = _compute_graph(problem)
    if problem.squeeze_heads:
        out, lse = out[0], lse[0]
    return (out, lse) if return_lse else out


def _compute_graph(problem):
    import dask.array as da

    rows = math.prod(problem.batch_shape) * problem.heads * problem.q.shape[-2]
    if rows == 0:  # nothing to compute: an empty result of the right shape and dtypes
        out = da.zeros(problem.out_shape, dtype=problem.result_dtype)
        lse = da.full(problem.out_shape[:-1], -np.inf, dtype=problem.compute_dtype)
        return out, lse
    return build(problem, align(problem))

