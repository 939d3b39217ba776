"""Chunk alignment: one block grid that q, k, v and the mask all agree on.

Each axis of the problem gets one chunking, and every array is rechunked to it:

- a batch axis: the union of the chunk boundaries of q, k and v (those that have the
  axis at full size; an axis of size 1 that broadcasts stays one block of size 1);
- the query-head axis: q's chunks, split further where a chunk straddles a group of
  grouped-query heads, so that every chunk either covers whole groups or lies inside one
  group; the kv-head chunks follow from it (a query-head chunk reads exactly one kv-head
  block: ``[h0 // g, h1 // g)`` for whole groups, the one kv head of its group otherwise);
- the query axis: q's chunks; the key axis: the union of the boundaries of k and v;
- the feature axes ``D`` and ``Dv``: one chunk each;
- the mask: the scores' chunking on each axis where it has the full size, one block of
  size 1 where it broadcasts.

Only splits are added to q, k and v on the batch, query-head, query and key axes (no
merges), so those rechunks are cheap slices; k and v heads are merged where a
query-head chunk spans several kv heads.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockGrid:
    """The aligned arrays and, per axis, the chunks of the result.

    ``kv_block_of_head_block[h]`` is the kv-head block read by query-head block ``h``.
    """

    q: object
    k: object
    v: object
    mask: object
    batch_chunks: tuple
    head_chunks: tuple
    kv_head_chunks: tuple
    kv_block_of_head_block: tuple
    query_chunks: tuple
    key_chunks: tuple


def boundaries(chunks):
    """The offsets ``0, c0, c0 + c1, ...`` of a chunking, as a list."""
    return [0] + [int(x) for x in np.cumsum(chunks)]


def chunks_between(points):
    """The chunking whose boundaries are the distinct ``points`` (first 0, last the size)."""
    points = sorted(set(points))
    if len(points) == 1:  # an axis of size 0
        return (0,)
    return tuple(b - a for a, b in zip(points[:-1], points[1:]))


def union_chunks(*chunkings):
    """The coarsest chunking that refines every given chunking of one axis."""
    points = set()
    for chunks in chunkings:
        points.update(boundaries(chunks))
    return chunks_between(points)


def split_head_chunks(chunks, group):
    """Split query-head chunks so each covers whole groups of ``group`` heads or lies in one."""
    points = set(boundaries(chunks))
    edges = boundaries(chunks)
    for h0, h1 in zip(edges[:-1], edges[1:]):
        if h1 - h0 == 0 or h0 // group == (h1 - 1) // group:
            continue  # inside one group
        first_whole = -(-h0 // group) * group
        last_whole = (h1 // group) * group
        for point in (first_whole, last_whole):
            if h0 < point < h1:
                points.add(point)
    return chunks_between(points)


def kv_head_ranges(head_chunks, group):
    """The kv-head range ``[k0, k1)`` that each query-head chunk reads."""
    edges = boundaries(head_chunks)
    ranges = []
    for h0, h1 in zip(edges[:-1], edges[1:]):
        if h0 % group == 0 and h1 % group == 0:
            ranges.append((h0 // group, h1 // group))
        else:  # inside one group (split_head_chunks made sure)
            ranges.append((h0 // group, h0 // group + 1))
    return ranges


def align(problem):
    """Rechunk the arrays of a :class:`~fastattn.dask._checks.LazyProblem` to one block grid."""
    q, k, v, mask = problem.q, problem.k, problem.v, problem.mask
    n_batch = len(problem.batch_shape)

    batch_chunks = []
    for axis, size in enumerate(problem.batch_shape):
        full = [x.chunks[axis] for x in (q, k, v) if x.shape[axis] == size]
        batch_chunks.append(union_chunks(*full))

    heads, kv_heads = problem.heads, problem.kv_heads
    group = heads // kv_heads
    head_chunks = split_head_chunks(q.chunks[n_batch], group)
    ranges = kv_head_ranges(head_chunks, group)
    kv_points = {0, kv_heads}
    for k0, k1 in ranges:
        kv_points.update((k0, k1))
    kv_head_chunks = chunks_between(kv_points)
    kv_starts = boundaries(kv_head_chunks)
    kv_block_of_head_block = tuple(kv_starts.index(k0) for k0, _ in ranges)

    query_chunks = q.chunks[n_batch + 1]
    key_chunks = union_chunks(k.chunks[n_batch + 1], v.chunks[n_batch + 1])

    def batch_part(x):
        return tuple(batch_chunks[a] if x.shape[a] == size else (x.shape[a],)
                     for a, size in enumerate(problem.batch_shape))

    q = q.rechunk(batch_part(q) + (head_chunks, query_chunks, (q.shape[-1],)))
    k = k.rechunk(batch_part(k) + (kv_head_chunks, key_chunks, (k.shape[-1],)))
    v = v.rechunk(batch_part(v) + (kv_head_chunks, key_chunks, (v.shape[-1],)))
    if mask is not None:
        scores = (head_chunks, query_chunks, key_chunks)
        tail = tuple(scores[i] if mask.shape[n_batch + i] == size else (mask.shape[n_batch + i],)
                     for i, size in enumerate((heads, q.shape[-2], k.shape[-2])))
        mask = mask.rechunk(batch_part(mask) + tail)
    return BlockGrid(q=q, k=k, v=v, mask=mask, batch_chunks=tuple(batch_chunks),
                     head_chunks=head_chunks, kv_head_chunks=kv_head_chunks,
                     kv_block_of_head_block=kv_block_of_head_block,
                     query_chunks=tuple(query_chunks), key_chunks=key_chunks)
