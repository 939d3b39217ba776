"""Attention you can see: heatmaps, layer × head grids, attention rollout, bertviz export.

The plotting functions need matplotlib (``pip install 'fastattn[viz]'``), imported
only when they are called; :func:`rollout` and :func:`to_bertviz` are NumPy only.

Weights come from :func:`fastattn.attention_weights` (exact, any block of a long
sequence in linear memory), from :class:`fastattn.nn.MultiHeadAttention`
(``return_weights=True``), or from a model (Hugging Face ``output_attentions``: a
tuple, one ``(batch, heads, Lq, Lk)`` tensor per layer; torch tensors are accepted).
Conventions: queries are rows, keys are columns, so row ``i`` of a heatmap is where
token ``i`` looks.
"""

import numbers
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install 'fastattn[viz]'"

MASKED_COLOUR = "#d9d9d9"
"""Colour of masked cells (under a grey hatch)."""

AUTO_ANNOTATE = 12
"""``annotate=None`` writes the numbers into the cells when both sides are at most this."""

MAX_HATCHED = 4096
"""Above this many masked cells, they are only coloured, not hatched."""

MAX_TICK_LABELS = 40
"""Above this many tokens on an axis, only every n-th label is shown."""


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"fastattn.viz needs matplotlib for plotting: {INSTALL_HINT}"
                          ) from error
    return plt


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
    return _heatmap(weights, query_labels, key_labels, ax=ax, title=title, masked=masked,
                    cmap=cmap, colorbar=colorbar, annotate=annotate)


def _heatmap(weights, query_labels, key_labels, *, ax, title, masked, cmap, colorbar, annotate,
             number_format=".2f"):
    plt = _pyplot()
    matrix = _as_matrix(weights)
    hidden = _masked_cells(masked, matrix)
    if ax is None:
        _, ax = plt.subplots(figsize=_heatmap_size(matrix.shape, query_labels, key_labels,
                                                   colorbar), layout="constrained")
    limits = _limits(matrix, hidden)
    image = _draw(ax, matrix, hidden, query_labels, key_labels, cmap, limits, annotate,
                  number_format=number_format)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    return ax


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
    plt = _pyplot()
    stack = _stack_layers(attentions)
    layer_idx = _select("layers", layers, stack.shape[0])
    head_idx = _select("heads", heads, stack.shape[1])
    if len(layer_idx) == 0 or len(head_idx) == 0:
        raise ValueError("heatmap_grid needs at least one layer and one head")
    if not isinstance(cell_size, numbers.Real) or cell_size <= 0:
        raise ValueError(f"cell_size must be a positive number of inches, got {cell_size!r}")
    n_rows, n_cols = len(layer_idx), len(head_idx)
    figure = plt.figure(figsize=(cell_size * n_cols + 1.6, cell_size * n_rows + 1.0),
                        layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    selected = stack[np.ix_(layer_idx, head_idx)]
    limits = _limits(selected, None)
    fontsize = 8 if max(stack.shape[-2:]) <= 16 else 6
    image = None
    for r, layer in enumerate(layer_idx):
        for c, head in enumerate(head_idx):
            ax = axes[r, c]
            image = _draw(ax, stack[layer, head], None,
                          query_labels if c == 0 else None, key_labels if r == n_rows - 1
                          else None, "viridis", limits, False, fontsize=fontsize,
                          axis_names=(r == n_rows - 1, c == 0), key_rotation=90)
            if c != 0:
                ax.tick_params(labelleft=False)
            if r != n_rows - 1:
                ax.tick_params(labelbottom=False)
            if r == 0:
                ax.set_title(f"head {head}", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"layer {layer}\nquery", fontsize=9)
    figure.colorbar(image, ax=axes, shrink=min(1.0, 0.9 if n_rows > 1 else 0.8),
                    label="attention weight")
    if title:
        figure.suptitle(title)
    return figure


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
    stack = _stack_layers(attentions).astype(np.float64)
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
    stack = _stack_layers(attentions)
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
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ValueError(f"save writes .png or .svg files; got {str(path)!r}")
    figure = getattr(figure, "figure", figure) if not hasattr(figure, "savefig") else figure
    if not hasattr(figure, "savefig"):
        raise TypeError(f"save needs a matplotlib Figure or Axes, got {type(figure).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"dpi": 150} if suffix == ".png" else {}
    figure.savefig(path, format=suffix[1:], bbox_inches="tight", pad_inches=0.1, **options)
    return path


def demo_figures(out_dir):
    """Write the tutorial's toy examples as PNG files into ``out_dir``.

    The figures (all computed with fastattn, random embeddings and weights
    seeded, so the files are reproducible):

    - ``worked_example.png``: one query, three keys: the seed tutorial's worked
      example with the correct weights 0.2814, 0.5096, 0.2091;
    - ``causal_mask.png``: decoder self-attention on a short sentence, causal
      and causal with a sliding window (masked cells hatched);
    - ``multi_head.png``: a two-layer, four-head encoder, one heatmap per head;
    - ``self_vs_cross.png``: encoder self-attention, decoder (causal)
      self-attention and decoder→encoder cross-attention of a translation pair;
    - ``positional_encoding.png``: the sinusoidal positional encoding.

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
    >>> import matplotlib, tempfile
    >>> matplotlib.use("Agg")
    >>> from fastattn import viz
    >>> [p.name for p in viz.demo_figures(tempfile.mkdtemp())]  # doctest: +NORMALIZE_WHITESPACE
    ['worked_example.png', 'causal_mask.png', 'multi_head.png', 'self_vs_cross.png',
     'positional_encoding.png']
    """
    from ._viz_demo import write_demo_figures

    return write_demo_figures(out_dir)


def worked_example():
    """The seed tutorial's worked example: ``(q, keys, values, weights, output)``.

    Examples
    --------
    >>> from fastattn import viz
    >>> q, keys, values, weights, output = viz.worked_example()
    >>> weights.round(4).tolist(), output.round(4).tolist()
    ([[0.2814, 0.5096, 0.2091]], [[1.6861, 1.9671]])
    """
    from ._viz_demo import worked_example as example

    return example()


# --- helpers ---------------------------------------------------------------------------

def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _as_matrix(weights):
    matrix = _to_numpy(weights)
    while matrix.ndim > 2 and matrix.shape[0] == 1:
        matrix = matrix[0]
    if matrix.ndim != 2:
        raise ValueError(f"heatmap draws one (Lq, Lk) matrix; got shape {matrix.shape}: "
                         f"pick one head first, e.g. weights[head]")
    if matrix.dtype.kind not in "fiub":
        raise TypeError(f"weights must be real numbers, got dtype {matrix.dtype}")
    return matrix.astype(np.float64)


def _stack_layers(attentions):
    """``(layers, H, Lq, Lk)`` float array from the accepted layouts."""
    if hasattr(attentions, "detach") or isinstance(attentions, np.ndarray):
        stack = _to_numpy(attentions)
        if stack.ndim == 5 and stack.shape[1] == 1:
            stack = stack[:, 0]
        if stack.ndim != 4:
            raise ValueError(f"an attention array must be (layers, H, Lq, Lk); got shape "
                             f"{stack.shape} (pass a list of per-layer (H, Lq, Lk) arrays)")
    else:
        try:
            layers = [_to_numpy(layer) for layer in attentions]
        except TypeError:
            raise TypeError(f"attentions must be an array or a sequence of per-layer arrays, "
                            f"got {type(attentions).__name__}") from None
        if not layers:
            raise ValueError("attentions is empty: expected at least one layer")
        checked = []
        for number, layer in enumerate(layers):
            if layer.ndim == 4:
                if layer.shape[0] != 1:
                    raise ValueError(f"layer {number} has shape {layer.shape}: batch size "
                                     f"{layer.shape[0]}; select one example, e.g. "
                                     f"[a[i:i + 1] for a in attentions]")
                layer = layer[0]
            if layer.ndim != 3:
                raise ValueError(f"layer {number} has shape {layer.shape}; expected "
                                 f"(H, Lq, Lk) or (1, H, Lq, Lk)")
            checked.append(layer)
        shapes = {layer.shape for layer in checked}
        if len(shapes) > 1:
            raise ValueError(f"layers differ in shape: {sorted(shapes)}")
        stack = np.stack(checked)
    if stack.dtype.kind not in "fiu":
        raise TypeError(f"attentions must be real numbers, got dtype {stack.dtype}")
    return stack


def _select(name, value, size):
    if value is None:
        return list(range(size))
    if isinstance(value, (numbers.Integral, np.integer)):
        value = [value]
    chosen = []
    for item in value:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (numbers.Integral,
                                                                        np.integer)):
            raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
        if not -size <= item < size:
            raise IndexError(f"{name}: {item} out of range for {size} {name}")
        chosen.append(int(item) % size)
    return chosen


def _masked_cells(masked, matrix):
    if masked is None:
        return None
    if isinstance(masked, str):
        if masked != "zeros":
            raise ValueError(f"masked must be None, 'zeros' or a bool array; got {masked!r}")
        return matrix == 0
    cells = _to_numpy(masked)
    if cells.dtype != bool:
        raise TypeError(f"masked must be a bool array (True = masked), got dtype {cells.dtype}")
    try:
        return np.broadcast_to(cells, matrix.shape)
    except ValueError:
        raise ValueError(f"masked (shape {cells.shape}) does not broadcast to the weights "
                         f"{matrix.shape}") from None


def _limits(values, hidden):
    shown = values if hidden is None else values[~hidden]
    shown = shown[np.isfinite(shown)]
    if shown.size == 0:
        return 0.0, 1.0
    low = min(0.0, float(shown.min()))
    high = float(shown.max())
    return low, high if high > low else low + 1.0


def _heatmap_size(shape, query_labels, key_labels, colorbar):
    lq, lk = shape
    label_width = max((len(str(s)) for s in query_labels or ()), default=2)
    label_height = max((len(str(s)) for s in key_labels or ()), default=2)
    width = 1.0 + 0.08 * label_width + 0.5 * min(lk, 20) + (1.2 if colorbar else 0.0)
    height = 0.9 + 0.06 * label_height + 0.5 * min(lq, 16)
    return max(3.5, min(width, 13.0)), max(2.4, min(height, 10.0))


def _draw(ax, matrix, hidden, query_labels, key_labels, cmap, limits, annotate,
          fontsize=None, axis_names=(True, True), number_format=".2f", key_rotation=45):
    """Draw ``matrix`` on ``ax`` and return the image."""
    import matplotlib
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    lq, lk = matrix.shape
    colormap = (matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap).with_extremes(
        bad=MASKED_COLOUR)
    data = np.ma.masked_array(matrix, mask=hidden if hidden is not None else False)
    ratio = max(lq, lk) / max(1, min(lq, lk))
    image = ax.imshow(data, cmap=colormap, vmin=limits[0], vmax=limits[1],
                      interpolation="nearest", aspect="equal" if ratio <= 4 else "auto")

    if hidden is not None and 0 < hidden.sum() <= MAX_HATCHED:
        rows, cols = np.nonzero(hidden)
        cells = [Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in zip(rows, cols)]
        ax.add_collection(PatchCollection(cells, facecolor="none", edgecolor="#8c8c8c",
                                          hatch="///", linewidth=0))
    if max(lq, lk) <= 30:
        ax.set_xticks(np.arange(-0.5, lk), minor=True)
        ax.set_yticks(np.arange(-0.5, lq), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)

    small = fontsize or (9 if max(lq, lk) <= 16 else 7)
    for axis, labels, size, name in ((ax.xaxis, key_labels, lk, "key_labels"),
                                     (ax.yaxis, query_labels, lq, "query_labels")):
        if labels is None:
            axis.set_major_locator(MaxNLocator(integer=True, nbins=min(size, 10)))
            continue
        labels = [str(label) for label in labels]
        if len(labels) != size:
            raise ValueError(f"{name} has {len(labels)} labels for {size} "
                             f"{'keys' if axis is ax.xaxis else 'queries'}")
        step = max(1, -(-size // MAX_TICK_LABELS))
        positions = np.arange(0, size, step)
        axis.set_ticks(positions, [labels[p] for p in positions], fontsize=small)
    if key_labels is not None:
        ax.tick_params(axis="x", labelrotation=key_rotation)
        if key_rotation % 90:
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
                label.set_rotation_mode("anchor")
    if axis_names[0]:
        ax.set_xlabel("key")
    if axis_names[1]:
        ax.set_ylabel("query")

    if annotate is None:
        annotate = lq <= AUTO_ANNOTATE and lk <= AUTO_ANNOTATE
    if annotate:
        norm = image.norm
        for (r, c), value in np.ndenumerate(matrix):
            if hidden is not None and hidden[r, c] or not np.isfinite(value):
                continue
            red, green, blue, _ = colormap(norm(value))
            light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
            ax.text(c, r, format(value, number_format), ha="center", va="center",
                    fontsize=small, color="black" if light else "white")
    return image
