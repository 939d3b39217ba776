"""The functions that the tasks of :func:`fastattn.dask.attention` run, on NumPy blocks.

They live in their own module, importable without building anything, because a
distributed worker unpickles the tasks by reference to these functions.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from .._api import merge_attention
from .._backends import resolve
from .._contract import Band
from .._validation import validate


@dataclass(frozen=True)
class BlockCall:
    """How to compute one (query block, key block) partial.

    Only the rows ``rows[0]:rows[1]`` of the query block see keys of the key block, and
    only its keys ``keys[0]:keys[1]`` are seen (the tight rectangle of
    :meth:`fastattn._contract.Band.restrict`); ``band`` is the band in the coordinates
    of that rectangle.  The other rows come back as zeros with lse -inf.  ``settings``
    are the fastattn settings (``get_config()`` items) the kernel runs with.
    """

    rows: tuple
    keys: tuple
    band: Band
    scale: float
    settings: tuple


def block_partial(call, q, k, v, mask):
    """``(out, lse)`` of the rows of ``q`` over the keys of ``k``/``v``, in the compute dtype."""
    (r0, r1), (c0, c1) = call.rows, call.keys
    if mask is not None:  # an axis of size 1 broadcasts: it is not cut
        mask = mask[..., slice(r0, r1) if mask.shape[-2] > 1 else slice(None),
                    slice(c0, c1) if mask.shape[-1] > 1 else slice(None)]
    problem = validate(q[..., r0:r1, :], k[..., c0:c1, :], v[..., c0:c1, :], mask,
                       scale=call.scale)
    problem = dataclasses.replace(problem, band=call.band)
    settings = dict(call.settings)
    out, lse = resolve(settings["backend"], problem).run(problem, settings)
    out = out.astype(problem.compute_dtype, copy=False)  # half outputs merge in float32
    rows = q.shape[-2]
    if (r0, r1) == (0, rows):
        return out, lse
    full_out = np.zeros(out.shape[:-2] + (rows, out.shape[-1]), dtype=out.dtype)
    full_lse = np.full(lse.shape[:-1] + (rows,), -np.inf, dtype=lse.dtype)
    full_out[..., r0:r1, :] = out
    full_lse[..., r0:r1] = lse
    return full_out, full_lse


def merge_pair(state_a, state_b):
    """Merge two partial ``(out, lse)`` states over disjoint key chunks."""
    return merge_attention(state_a[0], state_a[1], state_b[0], state_b[1])


def empty_state(out_shape, dtype):
    """The state of rows that see no key at all: zeros, lse -inf."""
    return (np.zeros(out_shape, dtype=dtype), np.full(out_shape[:-1], -np.inf, dtype=dtype))


def state_out(state, dtype):
    """The output block of a final state, in the result dtype."""
    return state[0].astype(dtype, copy=False)


def state_lse(state):
    """The lse block of a final state."""
    return state[1]
