"""The blocked computation of :func:`fastattn.dask.attention` as a dask graph.

After :func:`~fastattn.dask._layout.align`, the result has one block per
``(batch blocks..., query-head block, query block)``.  For each such block and each key
block that the causal/window band does not remove entirely there is one *partial* task:
the pair cut to the rows and keys that see each other (``Band.restrict``), validated and
run by a backend of the registry with the band in the pair's own coordinates, giving
``(out, lse)``.  The partials of a result block are merged pairwise, in a tree, by
*merge* tasks; the root gives the result block and its lse.  Four graph layers::

    fastattn-partial-<token>   one task per computed (query block, key block) pair
    fastattn-merge-<token>     the merge tree (and a zeros block where no pair is left)
    fastattn-out-<token>       the output blocks, cast to the result dtype
    fastattn-lse-<token>       the lse blocks

A removed pair has no task at all, so it is neither scheduled nor computed.
"""

import itertools
from functools import partial

import numpy as np

from .. import _config
from . import _blocks

LAYER_PREFIXES = ("fastattn-partial", "fastattn-merge", "fastattn-out", "fastattn-lse")


def block_calls(problem, query_edges, key_edges, settings):
    """``{(query block, key block): BlockCall}`` of the pairs the band does not remove.

    :meth:`~fastattn._contract.Band.restrict` cuts each pair to the rectangle of rows
    and keys that see each other and gives the band in its coordinates; a pair where
    no query sees any key gets no call, hence no task.
    """
    calls = {}
    for qi, (i0, i1) in enumerate(query_edges):
        for kj, (j0, j1) in enumerate(key_edges):
            visible = problem.band.restrict(i0, i1, j0, j1)
            if visible is None:
                continue
            r0, r1, c0, c1, band = visible
            calls[qi, kj] = _blocks.BlockCall(rows=(r0 - i0, r1 - i0), keys=(c0 - j0, c1 - j0),
                                              band=band, scale=problem.scale,
                                              settings=settings)
    return calls


def task_settings():
    """The fastattn settings the tasks run with, read once, on the client, at graph build.

    Backend and block sizes are those in force (``config_context`` or environment).  The
    kernels' thread count is 1 per task unless ``num_threads`` was set explicitly: dask
    runs tasks in parallel already.
    """
    settings = _config.get_config()
    settings["num_threads"] = _config.explicit_settings().get("num_threads", 1)
    return tuple(sorted(settings.items()))


class _BlockKeys:
    """The graph keys of an array's blocks; an index is taken as 0 on an axis of one block."""

    def __init__(self, array):
        self._keys = array.__dask_keys__()
        self._numblocks = array.numblocks

    def __getitem__(self, index):
        keys = self._keys
        for i, n in zip(index, self._numblocks):
            keys = keys[i if n > 1 else 0]
        return keys


def build(problem, grid):
    """Return the lazy ``(out, lse)`` of a :class:`LazyProblem` over its :class:`BlockGrid`."""
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    q, k, v, mask = grid.q, grid.k, grid.v, grid.mask
    q_keys, k_keys, v_keys = _BlockKeys(q), _BlockKeys(k), _BlockKeys(v)
    mask_keys = None if mask is None else _BlockKeys(mask)
    settings = task_settings()
    token = tokenize(q.name, k.name, v.name, None if mask is None else mask.name, problem.band,
                     problem.scale, str(problem.compute_dtype), str(problem.result_dtype),
                     settings)
    names = [f"{prefix}-{token}" for prefix in LAYER_PREFIXES]
    partial_name, merge_name, out_name, lse_name = names
    partials, merges, outs, lses = {}, {}, {}, {}

    value_dim = v.shape[-1]
    batch_edges = [_edges(c) for c in grid.batch_chunks]
    head_edges, query_edges, key_edges = (_edges(grid.head_chunks), _edges(grid.query_chunks),
                                          _edges(grid.key_chunks))
    calls = block_calls(problem, query_edges, key_edges, settings)

    for batch_index in itertools.product(*(range(len(e)) for e in batch_edges)):
        batch_sizes = tuple(e[i][1] - e[i][0] for e, i in zip(batch_edges, batch_index))
        for hi, (h0, h1) in enumerate(head_edges):
            kv_block = grid.kv_block_of_head_block[hi]
            for qi, (i0, i1) in enumerate(query_edges):
                here = batch_index + (hi, qi)
                q_key = q_keys[batch_index + (hi, qi, 0)]
                states = []
                for kj in range(len(key_edges)):
                    call = calls.get((qi, kj))
                    if call is None:
                        continue
                    kv_index = batch_index + (kv_block, kj, 0)
                    k_key, v_key = k_keys[kv_index], v_keys[kv_index]
                    mask_key = None if mask is None else mask_keys[batch_index + (hi, qi, kj)]
                    key = (partial_name,) + here + (kj,)
                    partials[key] = (partial(_blocks.block_partial, call), q_key, k_key,
                                     v_key, mask_key)
                    states.append(key)
                if not states:
                    key = (merge_name,) + here + (0, 0)
                    shape = batch_sizes + (h1 - h0, i1 - i0, value_dim)
                    merges[key] = (partial(_blocks.empty_state, shape, problem.compute_dtype),)
                    states.append(key)
                level = 0
                while len(states) > 1:
                    level += 1
                    merged = []
                    for position in range(0, len(states) - 1, 2):
                        key = (merge_name,) + here + (level, position // 2)
                        merges[key] = (_blocks.merge_pair, states[position], states[position + 1])
                        merged.append(key)
                    if len(states) % 2:
                        merged.append(states[-1])
                    states = merged
                outs[(out_name,) + here + (0,)] = (
                    partial(_blocks.state_out, dtype=problem.result_dtype), states[0])
                lses[(lse_name,) + here] = (_blocks.state_lse, states[0])

    inputs = [x for x in (q, k, v, mask) if x is not None]
    base = HighLevelGraph.from_collections(partial_name, partials, dependencies=inputs)

    def graph_with(name, layer):
        layers = dict(base.layers)
        dependencies = dict(base.dependencies)
        layers[merge_name] = merges
        dependencies[merge_name] = {partial_name}
        layers[name] = layer
        dependencies[name] = {partial_name, merge_name}
        return HighLevelGraph(layers, dependencies)

    row_chunks = tuple(grid.batch_chunks) + (grid.head_chunks, grid.query_chunks)
    out = _collection(graph_with(out_name, outs), out_name, list(outs),
                      row_chunks + ((value_dim,),), problem.result_dtype)
    lse = _collection(graph_with(lse_name, lses), lse_name, list(lses), row_chunks,
                      problem.compute_dtype)
    return out, lse


def _collection(graph, name, keys, chunks, dtype):
    """A dask array of the blocks ``keys`` (named ``name``) of ``graph``."""
    import dask.array as da

    meta = np.empty((0,) * len(chunks), dtype=dtype)
    if _array_expressions():  # dask's opt-in expression backend for arrays
        from dask.array._array_expr._collection import from_graph

        return from_graph(graph, meta, chunks, keys, name.rsplit("-", 1)[0])
    return da.Array(graph, name, chunks, meta=meta)


def _array_expressions():
    try:
        from dask.array import array_expr_enabled
    except ImportError:  # dask versions without the expression backend
        return False
    return array_expr_enabled()


def _edges(chunks):
    """``[(start, stop), ...]`` of a chunking."""
    starts = np.concatenate([[0], np.cumsum(chunks)]).astype(int).tolist()
    return list(zip(starts[:-1], starts[1:]))
