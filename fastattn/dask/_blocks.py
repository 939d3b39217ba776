"""The functions that the tasks of :func:`fastattn.dask.attention` run, on NumPy blocks.

They live in their own module, importable without building anything, because a
distributed worker unpickles the tasks by reference to these functions.
"""

from dataclasses import dataclass

import numpy as np

from .. import _config
from .._api import attention, merge_attention


@dataclass(frozen=True)
class BlockCall:
    """How to compute one (query chunk, key chunk) partial.

    The first ``trim_rows`` query rows of the chunk see no key of the key chunk and the
    first ``trim_keys`` keys are seen by no row: both are cut off before the call (the
    cut rows come back as zeros with lse -inf).  ``window`` is the band left in the
    trimmed pair, relative to its own diagonal, as ``fastattn.attention`` takes it
    (``causal=False``).  ``settings`` are :func:`fastattn.config_context` arguments.
    """

    trim_rows: int
    trim_keys: int
    window: object
    scale: float
    compute_dtype: np.dtype
    settings: tuple


def block_partial(call, q, k, v, mask):
    """``(out, lse)`` of the rows of ``q`` over the keys of ``k``/``v``, in the compute dtype."""
    rows = q.shape[-2]
    skip_rows, skip_keys = call.trim_rows, call.trim_keys
    if skip_rows or skip_keys:
        q = q[..., skip_rows:, :]
        k, v = k[..., skip_keys:, :], v[..., skip_keys:, :]
        if mask is not None:
            mask = mask[..., skip_rows if mask.shape[-2] > 1 else 0:,
                        skip_keys if mask.shape[-1] > 1 else 0:]
    q, k, v = (x.astype(call.compute_dtype, copy=False) for x in (q, k, v))
    settings = dict(call.settings)
    with _config.config_context(**settings):
        out, lse = attention(q, k, v, mask, window=call.window, scale=call.scale,
                             return_lse=True)
    if skip_rows:
        full_out = np.zeros(out.shape[:-2] + (rows, out.shape[-1]), dtype=out.dtype)
        full_lse = np.full(lse.shape[:-1] + (rows,), -np.inf, dtype=lse.dtype)
        full_out[..., skip_rows:, :] = out
        full_lse[..., skip_rows:] = lse
        out, lse = full_out, full_lse
    return out, lse


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
