"""Attention you can see: heatmaps, layer × head grids, attention rollout, bertviz export.

The plotting functions need matplotlib (``pip install 'fastattn[viz]'``), imported
only when they are called; :func:`rollout` and :func:`to_bertviz` are NumPy only.
Nothing here chooses a matplotlib backend: :func:`heatmap` draws on the Axes it is
given, and without one it and :func:`heatmap_grid` make pyplot figures (so that they
show in notebooks and with ``plt.show()``); :func:`demo_figures` draws on bare
``matplotlib.figure.Figure`` objects.  The drawing itself lives in
:mod:`fastattn._viz_draw`, shared with the demo and the ``fastattn viz`` command.

Weights come from :func:`fastattn.attention_weights` (exact, any block of a long
sequence in linear memory), from :class:`fastattn.nn.MultiHeadAttention`
(``return_weights=True``), or from a model (Hugging Face ``output_attentions``: a
tuple, one ``(batch, heads, Lq, Lk)`` tensor per layer; torch tensors are accepted).
Conventions: queries are rows, keys are columns, so row ``i`` of a heatmap is where
token ``i`` looks.
"""

import numpy as np

from . import _viz_draw
from ._viz_draw import (AUTO_ANNOTATE, INSTALL_HINT, MASKED_COLOUR, MAX_HATCHED,  # noqa: F401
                        MAX_TICK_LABELS)


def _pyplot_figure(figsize):
    """A new pyplot figure (shown by notebooks and ``plt.show()``; close it when done)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise _viz_draw.missing_matplotlib() from error
    return plt.figure(figsize=figsize, layout="constrained")


def heatmap(weights, query_labels=None, key_labels=None, *, ax=None, title=None, masked=None,
            cmap="viridis", colorbar=True, annotate=None):
    """Draw one attention matrix: queries as rows, keys as columns.

    Parameters
    ----------
    weights : array_like, shape (Lq, Lk)
        Attention probabilities (or any scores); leading axes of length 1 are
        dropped, torch tensors are accepted.
    query_labels : sequence of str, optional
        One label per query (row), e.g. the tokens.
    key_labels : sequence of str, optional
        One label per key (column); drawn rotated.
    ax : matplotlib.axes.Axes, optional
        Where to draw; default a new figure (``matplotlib.pyplot``), sized to the
        matrix.
    title : str, optional
    masked : {None, "zeros"} or array_like of bool, optional
        Cells to draw as masked (light grey, hatched, no number): a bool array
        (True = masked) broadcastable to ``(Lq, Lk)``, or ``"zeros"`` for the
        cells whose weight is exactly 0 (what a mask gives in
        :func:`fastattn.attention_weights`).  Default: none.
    cmap : str or matplotlib.colors.Colormap, default "viridis"
    colorbar : bool, default True
        Add a colour bar labelled "attention weight".
    annotate : bool, optional
        Write each value in its cell; default (None): only when the matrix is at
        most 12 × 12.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np, fastattn
    >>> from fastattn import viz
    >>> x = np.random.default_rng(0).standard_normal((4, 8))
    >>> w = fastattn.attention_weights(x, x, causal=True)
    >>> ax = viz.heatmap(w, ["a", "b", "c", "d"], ["a", "b", "c", "d"], masked="zeros",
    ...                  title="causal self-attention")
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['a', 'b', 'c', 'd']
    >>> len(ax.figure.axes)                  # the heatmap and its colour bar
    2
    """
    return _viz_draw.draw_heatmap(weights, query_labels, key_labels, ax=ax, title=title,
                                  masked=masked, cmap=cmap, colorbar=colorbar,
                                  annotate=annotate, new_figure=_pyplot_figure)


def heatmap_grid(attentions, query_labels=None, key_labels=None, *, layers=None, heads=None,
                 title=None, cell_size=2.2):
    """Draw a grid of attention heatmaps: one row per layer, one column per head.

    All cells share one colour scale and one colour bar.  Token labels are drawn
    on the left column (queries) and the bottom row (keys).

    Parameters
    ----------
    attentions : sequence of array_like, or array_like
        Per layer an array ``(H, Lq, Lk)`` or ``(1, H, Lq, Lk)`` (Hugging Face
        ``output_attentions`` with batch 1), or one array ``(layers, H, Lq, Lk)``.
    query_labels, key_labels : sequence of str, optional
        Token labels of the rows and columns.
    layers : sequence of int, optional
        Layers to draw (negative counts from the end); default all.
    heads : sequence of int, optional
        Heads to draw; default all.
    title : str, optional
        Title of the figure.
    cell_size : float, default 2.2
        Size of one heatmap in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from fastattn import viz
    >>> rng = np.random.default_rng(0)
    >>> attn = rng.dirichlet(np.ones(5), size=(2, 3, 5))   # (layers, heads, Lq, Lk)
    >>> fig = viz.heatmap_grid(attn, list("abcde"), list("abcde"), heads=[0, 2])
    >>> len(fig.axes)                        # 2 layers x 2 heads + the colour bar
    5
    """
    return _viz_draw.draw_heatmap_grid(attentions, query_labels, key_labels, layers=layers,
                                       heads=heads, title=title, cell_size=cell_size,
                                       new_figure=_pyplot_figure)


def rollout(attentions, *, residual=True, head_fusion="mean"):
    """Attention rollout (Abnar & Zuidema, 2020): how much each output attends each input.

    Per layer the heads are fused (mean, max or min) into ``A_l``; with
    ``residual`` the skip connection is modelled as ``0.5 · A_l + 0.5 · I`` and each
    row is renormalised to sum to 1.  The layers are then multiplied in order,
    first layer first: ``R = A_L ⋯ A_2 A_1``, so ``R[i, j]`` is the share of input
    token ``j`` in the last layer's token ``i``.

    Parameters
    ----------
    attentions : sequence of array_like, or array_like
        As for :func:`heatmap_grid`: per layer ``(H, Lq, Lk)`` or ``(1, H, Lq, Lk)``,
        or one array ``(layers, H, Lq, Lk)``; self-attention, ``Lq == Lk``.
    residual : bool, default True
        Add the identity for the residual connection (and renormalise rows).
    head_fusion : {"mean", "max", "min"}, default "mean"

    Returns
    -------
    ndarray, shape (Lq, Lk), float64

    Examples
    --------
    >>> import numpy as np
    >>> from fastattn import viz
    >>> uniform = np.full((2, 1, 3, 3), 1 / 3)      # 2 layers, 1 head, 3 tokens
    >>> viz.rollout(uniform).round(4)
    array([[0.5 , 0.25, 0.25],
           [0.25, 0.5 , 0.25],
           [0.25, 0.25, 0.5 ]])
    """
    fusions = {"mean": np.mean, "max": np.max, "min": np.min}
    if head_fusion not in fusions:
        raise ValueError(f"head_fusion must be one of {sorted(fusions)}, got {head_fusion!r}")
    stack = _viz_draw.stack_layers(attentions).astype(np.float64)
    fused = fusions[head_fusion](stack, axis=1)               # (layers, Lq, Lk)
    n_layers, lq, lk = fused.shape
    if residual:
        if lq != lk:
            raise ValueError(f"rollout with residual=True needs self-attention (Lq == Lk); "
                             f"got Lq={lq}, Lk={lk}")
        fused = 0.5 * fused + 0.5 * np.eye(lq)
        fused = fused / fused.sum(axis=-1, keepdims=True)
    if n_layers > 1 and lq != lk:
        raise ValueError(f"rollout over several layers needs square attention maps "
                         f"(Lq == Lk); got Lq={lq}, Lk={lk}")
    result = fused[0]
    for layer in fused[1:]:
        result = layer @ result
    return result


def to_bertviz(attentions):
    """Convert attentions to the Hugging Face ``output_attentions`` / bertviz layout.

    Parameters
    ----------
    attentions : sequence of array_like, or array_like
        As for :func:`heatmap_grid`.

    Returns
    -------
    list of ndarray
        One float32 array ``(1, H, Lq, Lk)`` per layer (for bertviz, wrap each in
        ``torch.from_numpy``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastattn import viz
    >>> layers = viz.to_bertviz(np.full((2, 4, 3, 3), 1 / 3))
    >>> len(layers), layers[0].shape, layers[0].dtype
    (2, (1, 4, 3, 3), dtype('float32'))
    """
    stack = _viz_draw.stack_layers(attentions)
    return [np.ascontiguousarray(layer[None], dtype=np.float32) for layer in stack]


def save(figure, path):
    """Write a figure to ``path`` as PNG (150 dpi) or SVG, chosen by the suffix.

    Parameters
    ----------
    figure : matplotlib.figure.Figure or matplotlib.axes.Axes
        An Axes (as :func:`heatmap` returns) saves its figure.
    path : str or os.PathLike
        Ends in ``.png`` or ``.svg``; missing parent directories are created.
        The figure is cropped to its contents plus a 0.1 inch margin.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import matplotlib, os, tempfile
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from fastattn import viz
    >>> ax = viz.heatmap(np.eye(3))
    >>> path = viz.save(ax, os.path.join(tempfile.mkdtemp(), "plots", "eye.svg"))
    >>> path.name, path.stat().st_size > 0
    ('eye.svg', True)
    """
    return _viz_draw.write_figure(figure, path)


def demo_figures(out_dir):
    """Write the demo figures, small examples of attention drawn as heatmaps, into ``out_dir``.

    The figures (all computed with fastattn, random embeddings and weights
    seeded, so the files are reproducible):

    - ``worked_example.png``: one 2-dimensional query over three keys and values
      (the example of :func:`worked_example`), weights 0.2814, 0.5096, 0.2091;
    - ``causal_mask.png``: decoder self-attention on a short sentence, causal
      and causal with a sliding window (masked cells hatched);
    - ``multi_head.png``: a two-layer, four-head encoder, one heatmap per head;
    - ``self_vs_cross.png``: encoder self-attention, decoder (causal)
      self-attention and decoder→encoder cross-attention of a translation pair;
    - ``positional_encoding.png``: the sinusoidal positional encoding.

    The figures are drawn off-screen (``matplotlib.figure.Figure``, not pyplot):
    no window opens and the caller's matplotlib backend is not changed.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Created if missing.

    Returns
    -------
    list of pathlib.Path
        The files written, in the order above.

    Examples
    --------
    >>> import tempfile
    >>> from fastattn import viz
    >>> [p.name for p in viz.demo_figures(tempfile.mkdtemp())]  # doctest: +NORMALIZE_WHITESPACE
    ['worked_example.png', 'causal_mask.png', 'multi_head.png', 'self_vs_cross.png',
     'positional_encoding.png']
    """
    from ._viz_demo import write_demo_figures

    return write_demo_figures(out_dir)


def worked_example():
    """A worked example of attention small enough to check by hand.

    One query ``q = (0.3, 0.6)`` over three keys ``(0.8, 1.0), (1.6, 2.0), (0.4, 0.5)``
    with values ``(1.2, 1.4), (2.4, 2.8), (0.6, 0.7)``: the scores ``q·kⱼ`` are 0.84,
    1.68, 0.42; scaled by ``1/√2`` and put through a softmax they give the weights.

    Returns
    -------
    q, keys, values, weights, output : ndarray
        Shapes ``(1, 2)``, ``(3, 2)``, ``(3, 2)``, ``(1, 3)`` and ``(1, 2)``.

    Examples
    --------
    >>> from fastattn import viz
    >>> q, keys, values, weights, output = viz.worked_example()
    >>> weights.round(4).tolist(), output.round(4).tolist()
    ([[0.2814, 0.5096, 0.2091]], [[1.6861, 1.9671]])
    """
    from ._viz_demo import worked_example as compute

    return compute()
