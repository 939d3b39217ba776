"""Small NumPy building blocks of attention models, running on :func:`fastattn.attention`.

- :func:`sinusoidal_positional_encoding`: the fixed position signal of Vaswani et al. (2017).
- :class:`MultiHeadAttention`: projections, heads, (grouped-query) scaled dot-product
  attention, output projection; self-attention or cross- (encoder-decoder) attention,
  with the attention weights on request.
- :func:`additive_attention`: Bahdanau's ``score = w_vᵀ tanh(W_q q + W_k k)``.
- :func:`local_attention`: sliding-window attention with a symmetric radius.

They are inference-only (no gradients) and meant for teaching, tests and small models:
weights are plain NumPy arrays, applied as ``x @ W + b`` (the transpose of a
``torch.nn.Linear`` weight), so trained weights can be loaded by assignment.
"""

import math
import numbers

import numpy as np

from ._api import attention
from ._weights import attention_weights


def sinusoidal_positional_encoding(length, dim, base=10000.0):
    """The sinusoidal positional encoding of "Attention Is All You Need".

    ``PE[pos, 2i] = sin(pos / base**(2i / dim))`` and
    ``PE[pos, 2i + 1] = cos(pos / base**(2i / dim))``: even columns hold sines,
    odd columns the cosines of the same frequencies.  An odd ``dim`` ends with a
    sine column.

    Parameters
    ----------
    length : int
        Number of positions (rows), ``>= 0``.
    dim : int
        Model dimension (columns), ``>= 1``; may be odd.
    base : float, default 10000.0
        The wavelength base; wavelengths grow geometrically from ``2π`` to
        ``base · 2π``.

    Returns
    -------
    ndarray, shape (length, dim), float64

    Examples
    --------
    >>> from fastattn.nn import sinusoidal_positional_encoding
    >>> sinusoidal_positional_encoding(3, 4).round(4)
    array([[ 0.    ,  1.    ,  0.    ,  1.    ],
           [ 0.8415,  0.5403,  0.01  ,  1.    ],
           [ 0.9093, -0.4161,  0.02  ,  0.9998]])
    """
    length = _count("length", length, minimum=0)
    dim = _count("dim", dim, minimum=1)
    if isinstance(base, bool) or not isinstance(base, numbers.Real) \
            or not math.isfinite(base) or base <= 0:
        raise ValueError(f"base must be a positive finite number, got {base!r}")
    positions = np.arange(length, dtype=np.float64)[:, None]
    frequencies = float(base) ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = positions * frequencies
    encoding = np.empty((length, dim))
    encoding[:, 0::2] = np.sin(angles)
    encoding[:, 1::2] = np.cos(angles[:, :dim // 2])
    return encoding


class MultiHeadAttention:
    """Multi-head attention on NumPy arrays, computed by :func:`fastattn.attention`.

    ``out = concat_h(softmax(Q_h K_hᵀ / sqrt(d) + mask) V_h) @ Wo + bo`` with
    ``Q = x @ Wq + bq``, ``K = c @ Wk + bk``, ``V = c @ Wv + bv``, where ``c`` is
    ``x`` (self-attention) or the ``context`` (cross-attention: decoder queries,
    encoder keys and values).  With ``num_kv_heads < num_heads`` query head ``h``
    shares kv head ``h // (num_heads // num_kv_heads)`` (grouped-query attention).

    Parameters
    ----------
    embed_dim : int
        Size ``E`` of the input and output features.
    num_heads : int
        Query heads ``H``; must divide ``embed_dim`` (head size ``d = E // H``).
    num_kv_heads : int, optional
        Key/value heads; must divide ``num_heads``.  Default ``num_heads``.
    kv_dim : int, optional
        Feature size of the ``context`` (cross-attention); default ``embed_dim``.
    bias : bool, default True
        Whether the four projections have biases (initialised to zero).
    seed : int or numpy.random.Generator, optional
        Seed of the Xavier-uniform initialisation, ``np.random.default_rng(seed)``.
    dtype : numpy dtype, default numpy.float32
        dtype of the weights.

    Attributes
    ----------
    Wq : ndarray, shape (embed_dim, embed_dim)
    Wk, Wv : ndarray, shape (kv_dim, num_kv_heads * d)
    Wo : ndarray, shape (embed_dim, embed_dim)
    bq, bk, bv, bo : ndarray or None
        Biases, shapes ``(embed_dim,)``, ``(num_kv_heads * d,)``, ``(num_kv_heads * d,)``,
        ``(embed_dim,)``; None without bias.  Every weight is applied as
        ``x @ W + b``: to load a ``torch.nn.Linear``, assign ``linear.weight.T``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastattn.nn import MultiHeadAttention
    >>> mha = MultiHeadAttention(embed_dim=8, num_heads=2, seed=0)
    >>> x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    >>> out, weights = mha(x, causal=True, return_weights=True)
    >>> out.shape, weights.shape
    ((5, 8), (2, 5, 5))
    >>> memory = np.random.default_rng(2).standard_normal((7, 8)).astype(np.float32)
    >>> mha(x, context=memory).shape                    # cross-attention
    (5, 8)
    """

    def __init__(self, embed_dim, num_heads, num_kv_heads=None, *, kv_dim=None, bias=True,
                 seed=None, dtype=np.float32):
        embed_dim = _count("embed_dim", embed_dim, minimum=1)
        num_heads = _count("num_heads", num_heads, minimum=1)
        num_kv_heads = num_heads if num_kv_heads is None else _count(
            "num_kv_heads", num_kv_heads, minimum=1)
        kv_dim = embed_dim if kv_dim is None else _count("kv_dim", kv_dim, minimum=1)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads} "
                             f"(grouped-query attention)")
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"dtype must be a float dtype, got {dtype}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.kv_dim, self.head_dim, self.dtype = kv_dim, embed_dim // num_heads, dtype

        rng = np.random.default_rng(seed)
        kv_width = num_kv_heads * self.head_dim
        self.Wq = _xavier_uniform(rng, embed_dim, embed_dim, dtype)
        self.Wk = _xavier_uniform(rng, kv_dim, kv_width, dtype)
        self.Wv = _xavier_uniform(rng, kv_dim, kv_width, dtype)
        self.Wo = _xavier_uniform(rng, embed_dim, embed_dim, dtype)
        zeros = (lambda n: np.zeros(n, dtype=dtype)) if bias else (lambda n: None)
        self.bq, self.bk, self.bv, self.bo = (zeros(embed_dim), zeros(kv_width),
                                              zeros(kv_width), zeros(embed_dim))

    def __repr__(self):
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, kv_dim={self.kv_dim}, "
                f"bias={self.bq is not None}, dtype={self.dtype})")

    def __call__(self, x, context=None, mask=None, *, causal=False, window=None,
                 return_weights=False):
        """Attend from ``x`` to itself or to ``context``.

        Parameters
        ----------
        x : array_like, shape (..., L, embed_dim)
            Queries' inputs (the decoder side in cross-attention).
        context : array_like, shape (..., S, kv_dim), optional
            Keys' and values' inputs (the encoder output); default ``x``.
        mask : array_like of bool or float, optional
            Broadcastable to ``(..., num_heads, L, S)``: True = may attend, or
            added to the scores; a key-padding mask of shape ``(S,)`` works.
        causal, window
            As in :func:`fastattn.attention`.
        return_weights : bool, default False
            Also return the attention probabilities.

        Returns
        -------
        out : ndarray, shape (..., L, embed_dim)
        weights : ndarray, shape (..., num_heads, L, S)
            Only with ``return_weights=True``; from :func:`fastattn.attention_weights`.
        """
        x = _float_array("x", x, self.embed_dim)
        if context is None:
            if self.kv_dim != self.embed_dim:
                raise ValueError(f"kv_dim={self.kv_dim} differs from embed_dim="
                                 f"{self.embed_dim}: pass the context to attend to")
            context = x
        else:
            context = _float_array("context", context, self.kv_dim)
        q = _split_heads(_project(x, self.Wq, self.bq), self.num_heads)
        k = _split_heads(_project(context, self.Wk, self.bk), self.num_kv_heads)
        v = _split_heads(_project(context, self.Wv, self.bv), self.num_kv_heads)
        heads = attention(q, k, v, mask, causal=causal, window=window)
        merged = np.swapaxes(heads, -2, -3)
        merged = merged.reshape(merged.shape[:-2] + (self.embed_dim,))
        out = _project(merged, self.Wo, self.bo)
        if return_weights:
            return out, attention_weights(q, k, mask, causal=causal, window=window)
        return out


def additive_attention(query, keys, values, W_q, W_k, w_v, mask=None):
    """Additive (Bahdanau) attention: ``score_ij = w_vᵀ tanh(W_q q_i + W_k k_j)``.

    The weights are ``softmax_j(score_ij)`` and the context is ``Σ_j α_ij v_j``: a
    sum of the *values*, not of the keys (a slip that is easy to make).  Projections
    are applied as ``q @ W_q`` and ``k @ W_k``.  The ``(..., Lq, Lk, A)`` hidden
    activations are formed a block of queries at a time.

    Parameters
    ----------
    query : array_like, shape (..., Lq, Dq) or (Dq,)
        One query (e.g. a decoder state) or a sequence of them.
    keys : array_like, shape (..., Lk, Dk)
    values : array_like, shape (..., Lk, Dv)
    W_q : array_like, shape (Dq, A)
    W_k : array_like, shape (Dk, A)
    w_v : array_like, shape (A,)
    mask : array_like of bool or float, optional
        Broadcastable to ``(..., Lq, Lk)``.  Bool: True = may attend; float:
        added to the scores.  A row with every key masked gets zero weights and
        a zero context.

    Returns
    -------
    context : ndarray, shape (..., Lq, Dv) (or (Dv,) for a 1-D query)
    weights : ndarray, shape (..., Lq, Lk) (or (Lk,) for a 1-D query)

    Examples
    --------
    >>> import numpy as np
    >>> from fastattn.nn import additive_attention
    >>> keys = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> values = np.array([[1.0], [2.0], [3.0]])
    >>> W = np.eye(2)
    >>> context, weights = additive_attention(np.zeros(2), keys, values, W, W, np.ones(2),
    ...                                       mask=np.array([True, True, False]))
    >>> weights.round(4), context.round(4)
    (array([0.5, 0.5, 0. ]), array([1.5]))
    """
    arrays = {name: _float_array(name, array) for name, array in
              (("query", query), ("W_q", W_q), ("W_k", W_k), ("w_v", w_v))}
    keys = _float_array("keys", keys, ndim=2)
    values = _float_array("values", values, ndim=2)
    query, W_q, W_k, w_v = (arrays[n] for n in ("query", "W_q", "W_k", "w_v"))
    single = query.ndim == 1
    if single:
        query = query[None]
    if w_v.ndim != 1 or W_q.shape != (query.shape[-1], w_v.shape[0]) \
            or W_k.shape != (keys.shape[-1], w_v.shape[0]):
        raise ValueError(
            f"expected W_q (Dq, A), W_k (Dk, A), w_v (A,) with Dq={query.shape[-1]}, "
            f"Dk={keys.shape[-1]}; got W_q {W_q.shape}, W_k {W_k.shape}, w_v {w_v.shape}")
    if keys.shape[-2] != values.shape[-2]:
        raise ValueError(f"keys {keys.shape} and values {values.shape} must have the same "
                         f"length Lk")
    lq, lk = query.shape[-2], keys.shape[-2]
    query_hidden = query @ W_q                           # (..., Lq, A)
    key_hidden = keys @ W_k                              # (..., Lk, A)
    batch = np.broadcast_shapes(query_hidden.shape[:-2], key_hidden.shape[:-2],
                                values.shape[:-2])
    dtype = np.result_type(query_hidden, key_hidden, w_v, values)
    scores = np.empty(batch + (lq, lk), dtype=dtype)
    block = max(1, (1 << 22) // max(1, lk * w_v.shape[0]))
    for start in range(0, lq, block):
        rows = slice(start, start + block)
        hidden = np.tanh(query_hidden[..., rows, None, :] + key_hidden[..., None, :, :])
        scores[..., rows, :] = hidden @ w_v

    keep = np.ones(scores.shape, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype.kind not in "bf":
            raise TypeError(f"mask (dtype {mask.dtype}) must be bool (True = may attend) "
                            f"or float (added to the scores)")
        if single and mask.ndim >= 1:
            mask = mask[..., None, :]
        try:
            mask = np.broadcast_to(mask, scores.shape)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to the scores "
                             f"(..., Lq, Lk) = {scores.shape}") from None
        if mask.dtype == bool:
            keep = mask
        else:
            scores = scores + mask
    scores = np.where(keep, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True, initial=-np.inf)
    exp = np.exp(scores - np.where(np.isneginf(top), 0.0, top))
    total = exp.sum(axis=-1, keepdims=True)
    weights = exp / np.where(total > 0, total, 1.0)
    context = weights @ values
    if single:
        return context[..., 0, :], weights[..., 0, :]
    return context, weights


def local_attention(q, k, v, window, *, causal=False, mask=None, scale=None, backend=None):
    """Local (sliding-window) attention: each query sees the keys near its position.

    A thin wrapper over ``fastattn.attention(q, k, v, window=...)`` that also takes
    a symmetric radius.  Alignment: query ``i`` sees key ``j`` when
    ``c - left <= j <= c + right``, where ``c`` is the query's diagonal, ``c = i``
    (no causal mask, or ``causal=True``/"upper_left"), or ``c = i + Lk - Lq`` with
    ``causal="lower_right"`` (KV-cache decoding: the last query sits on the last
    key).  For self-attention (``Lq == Lk``) the alignments agree.  The causal
    mask then also hides every key right of ``c``, so ``window=r`` with
    ``causal=True`` means "the ``r`` previous keys and itself".

    Parameters
    ----------
    q, k, v : array_like
        As in :func:`fastattn.attention`.
    window : int or tuple (left, right)
        An int ``r >= 0`` is the radius ``(r, r)``; a pair is passed on unchanged
        (``None`` for an unbounded side).
    causal, mask, scale, backend
        As in :func:`fastattn.attention`.

    Returns
    -------
    ndarray, shape (..., Hq, Lq, Dv)

    Examples
    --------
    >>> import numpy as np
    >>> from fastattn.nn import local_attention
    >>> x = np.eye(5)
    >>> v = np.arange(5.0)[:, None]
    >>> local_attention(x, x, v, 1, scale=0.0).ravel()   # mean of the neighbours
    array([0.5, 1. , 2. , 3. , 3.5])
    """
    if isinstance(window, (numbers.Integral, np.integer)) and not isinstance(
            window, (bool, np.bool_)):
        if window < 0:
            raise ValueError(f"window radius must be >= 0, got {window}")
        window = (int(window), int(window))
    elif isinstance(window, (bool, np.bool_)) or window is None:
        raise ValueError(f"window must be an int radius or a pair (left, right); "
                         f"got {window!r}")
    return attention(q, k, v, mask, causal=causal, window=window, scale=scale, backend=backend)


def _count(name, value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral,
                                                                     np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _xavier_uniform(rng, fan_in, fan_out, dtype):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(dtype)


def _float_array(name, value, features=None, ndim=1):
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} (shape {array.shape}, dtype {array.dtype}) must be a float "
                        f"array; cast it, e.g. {name}.astype(np.float32)")
    if array.ndim < (2 if features is not None else ndim):
        raise ValueError(f"{name} (shape {array.shape}) needs at least "
                         f"{2 if features is not None else ndim} dimensions")
    if features is not None and array.shape[-1] != features:
        raise ValueError(f"{name} (shape {array.shape}) must end with {features} features")
    return array


def _project(x, weight, bias):
    out = x @ weight
    return out if bias is None else out + bias


def _split_heads(x, n_heads):
    """``(..., L, n_heads * d)`` -> a ``(..., n_heads, L, d)`` view."""
    split = x.reshape(x.shape[:-1] + (n_heads, x.shape[-1] // n_heads))
    return np.swapaxes(split, -2, -3)
