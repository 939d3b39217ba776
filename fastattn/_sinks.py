"""Attention sinks: a logit per query head that joins every row's softmax denominator
and contributes no value (gpt-oss's learned sinks, StreamingLLM's "off" key).

A sink is a key of score ``sink[h]`` and value 0, so the tiled drivers fold it into
the finished rows instead of the kernels: ``(out, lse)`` merged with the state
``(0, sink)`` gives ``lse' = logaddexp(lse, sink)`` and ``out' = out * exp(lse - lse')``;
a row with no visible key (lse -inf) becomes zeros with ``lse' = sink``.  The backward
needs nothing more than ``out'`` and ``lse'``: the probabilities ``exp(s - lse')`` are
the sink-including ones, and the sink's own gradient is :func:`sink_gradient`.
"""

import numpy as np


def fold_sinks(out, lse, sinks, head_axis):
    """Fold ``sinks`` (one per head along ``head_axis`` of ``lse``) into ``(out, lse)``, in place.

    ``lse`` is in the compute dtype; ``out`` (``lse.shape + (Dv,)``, or None in
    lse-only mode) may be in a half storage dtype: then it is rounded a second time.
    NumPy buffers the in-place rescale, so no output-sized temporary is made.
    """
    shape = [1] * lse.ndim
    shape[head_axis] = -1
    sink = np.asarray(sinks, np.float64).reshape(shape)
    with np.errstate(invalid="ignore", over="ignore"):
        folded = np.logaddexp(lse.astype(np.float64), sink)  # NaN stays NaN
        factor = np.exp(lse - folded)  # 0 for a row with no visible key
    lse[...] = folded
    if out is not None:  # an empty row is zeros already: factor 0 keeps it so
        np.multiply(out, factor[..., None], out=out, casting="unsafe")


def sink_gradient(sinks, lse, delta, head_axis):
    """The gradient of the loss with respect to each sink, shape ``(Hq,)``, float64.

    ``lse`` is the sink-including log-sum-exp and ``delta = rowsum(dout * out)`` of the
    forward (both shaped like ``lse``): the sink's probability in a row is
    ``exp(sink - lse)``, and its score gradient ``p * (0 - delta)``, summed over rows.
    """
    shape = [1] * lse.ndim
    shape[head_axis] = -1
    sink = np.asarray(sinks, np.float64).reshape(shape)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = -np.exp(sink - np.asarray(lse, np.float64)) * np.asarray(delta, np.float64)
    axes = tuple(a for a in range(lse.ndim) if a != head_axis % lse.ndim)
    return terms.sum(axis=axes)
