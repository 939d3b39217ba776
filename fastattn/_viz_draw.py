"""Drawing attention matrices on matplotlib Axes and Figures, without pyplot.

Shared by :mod:`fastattn.viz` (the public functions), :mod:`fastattn._viz_demo` (the
demo figures) and :mod:`fastattn._viz_command` (``fastattn viz``); it imports none of
them.  Figures are made by a ``new_figure(figsize)`` callable that the caller passes:
:mod:`fastattn.viz` makes them with pyplot, so that they show in notebooks and with
``plt.show()``; the demo and the command use :func:`detached_figure`, a bare
``matplotlib.figure.Figure`` that needs no backend, opens no window and is never
registered with pyplot, so nothing has to be closed and the caller's backend is left
alone.  The accepted input layouts (torch tensors, per-layer tuples of Hugging Face
``output_attentions``) are normalised here too.  matplotlib is imported only when
something is drawn.
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


def missing_matplotlib():
    """The ImportError to raise when matplotlib (or pyplot) cannot be imported."""
    return ImportError(f"fastattn.viz needs matplotlib for plotting: {INSTALL_HINT}")


def detached_figure(figsize):
    """A ``matplotlib.figure.Figure`` outside pyplot: no backend, no window, nothing to close.

    Examples
    --------
    >>> figure = detached_figure((2.0, 1.5))
    >>> type(figure).__name__, [float(x) for x in figure.get_size_inches()]
    ('Figure', [2.0, 1.5])
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise missing_matplotlib() from error
    return Figure(figsize=figsize, layout="constrained")


def draw_heatmap(weights, query_labels=None, key_labels=None, *, ax=None, title=None,
                 masked=None, cmap="viridis", colorbar=True, annotate=None, number_format=".2f",
                 new_figure=detached_figure):
    """Draw one attention matrix on ``ax`` (or on a new figure); see :func:`fastattn.viz.heatmap`.

    ``number_format`` formats the numbers written in the cells; ``new_figure(figsize)``
    makes the figure when ``ax`` is None.  Returns the Axes.
    """
    matrix = as_matrix(weights)
    hidden = masked_cells(masked, matrix)
    if ax is None:
        figure = new_figure(heatmap_size(matrix.shape, query_labels, key_labels, colorbar))
        ax = figure.subplots()
    image = draw_matrix(ax, matrix, hidden, query_labels, key_labels, cmap,
                        colour_limits(matrix, hidden), annotate, number_format=number_format)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    return ax


def draw_heatmap_grid(attentions, query_labels=None, key_labels=None, *, layers=None,
                      heads=None, title=None, cell_size=2.2, new_figure=detached_figure):
    """A figure of heatmaps, one row per layer and one column per head.

    See :func:`fastattn.viz.heatmap_grid`; ``new_figure(figsize)`` makes the figure.
    """
    stack = stack_layers(attentions)
    layer_idx = select("layers", layers, stack.shape[0])
    head_idx = select("heads", heads, stack.shape[1])
    if len(layer_idx) == 0 or len(head_idx) == 0:
        raise ValueError("heatmap_grid needs at least one layer and one head")
    if not isinstance(cell_size, numbers.Real) or cell_size <= 0:
        raise ValueError(f"cell_size must be a positive number of inches, got {cell_size!r}")
    n_rows, n_cols = len(layer_idx), len(head_idx)
    figure = new_figure((cell_size * n_cols + 1.6, cell_size * n_rows + 1.0))
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    limits = colour_limits(stack[np.ix_(layer_idx, head_idx)], None)
    fontsize = 8 if max(stack.shape[-2:]) <= 16 else 6
    image = None
    for r, layer in enumerate(layer_idx):
        for c, head in enumerate(head_idx):
            ax = axes[r, c]
            image = draw_matrix(ax, stack[layer, head], None,
                                query_labels if c == 0 else None,
                                key_labels if r == n_rows - 1 else None, "viridis", limits,
                                False, fontsize=fontsize,
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


def write_figure(figure, path):
    """Write a Figure (or an Axes' figure) as PNG (150 dpi) or SVG: :func:`fastattn.viz.save`."""
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


# --- inputs ----------------------------------------------------------------------------

def to_numpy(value):
    """An ndarray from an array-like or a torch tensor (without importing torch)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def as_matrix(weights):
    """One ``(Lq, Lk)`` float64 matrix; leading axes of length 1 are dropped."""
    matrix = to_numpy(weights)
    while matrix.ndim > 2 and matrix.shape[0] == 1:
        matrix = matrix[0]
    if matrix.ndim != 2:
        raise ValueError(f"heatmap draws one (Lq, Lk) matrix; got shape {matrix.shape}: "
                         f"pick one head first, e.g. weights[head]")
    if matrix.dtype.kind not in "fiub":
        raise TypeError(f"weights must be real numbers, got dtype {matrix.dtype}")
    return matrix.astype(np.float64)


def stack_layers(attentions):
    """``(layers, H, Lq, Lk)`` array from the accepted layouts.

    Examples
    --------
    >>> stack_layers([np.ones((1, 2, 3, 3)), np.ones((2, 3, 3))]).shape
    (2, 2, 3, 3)
    """
    if hasattr(attentions, "detach") or isinstance(attentions, np.ndarray):
        stack = to_numpy(attentions)
        if stack.ndim == 5 and stack.shape[1] == 1:
            stack = stack[:, 0]
        if stack.ndim != 4:
            raise ValueError(f"an attention array must be (layers, H, Lq, Lk); got shape "
                             f"{stack.shape} (pass a list of per-layer (H, Lq, Lk) arrays)")
    else:
        try:
            layers = [to_numpy(layer) for layer in attentions]
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


def select(name, value, size):
    """Indices chosen by ``value`` (None: all; ints, negative from the end) out of ``size``."""
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


def masked_cells(masked, matrix):
    """The bool array of cells to draw as masked, or None."""
    if masked is None:
        return None
    if isinstance(masked, str):
        if masked != "zeros":
            raise ValueError(f"masked must be None, 'zeros' or a bool array; got {masked!r}")
        return matrix == 0
    cells = to_numpy(masked)
    if cells.dtype != bool:
        raise TypeError(f"masked must be a bool array (True = masked), got dtype {cells.dtype}")
    try:
        return np.broadcast_to(cells, matrix.shape)
    except ValueError:
        raise ValueError(f"masked (shape {cells.shape}) does not broadcast to the weights "
                         f"{matrix.shape}") from None


def colour_limits(values, hidden):
    """``(low, high)`` of the colour scale: from 0 (or below) to the largest shown value."""
    shown = values if hidden is None else values[~hidden]
    shown = shown[np.isfinite(shown)]
    if shown.size == 0:
        return 0.0, 1.0
    low = min(0.0, float(shown.min()))
    high = float(shown.max())
    return low, high if high > low else low + 1.0


def heatmap_size(shape, query_labels, key_labels, colorbar):
    """Figure size in inches for one heatmap of ``shape`` with these labels."""
    lq, lk = shape
    label_width = max((len(str(s)) for s in query_labels or ()), default=2)
    label_height = max((len(str(s)) for s in key_labels or ()), default=2)
    width = 1.0 + 0.08 * label_width + 0.5 * min(lk, 20) + (1.2 if colorbar else 0.0)
    height = 0.9 + 0.06 * label_height + 0.5 * min(lq, 16)
    return max(3.5, min(width, 13.0)), max(2.4, min(height, 10.0))


# --- drawing ---------------------------------------------------------------------------

def draw_matrix(ax, matrix, hidden, query_labels, key_labels, cmap, limits, annotate,
                fontsize=None, axis_names=(True, True), number_format=".2f", key_rotation=45):
    """Draw ``matrix`` on ``ax`` and return the image."""
    try:
        import matplotlib
        from matplotlib.collections import PatchCollection
        from matplotlib.patches import Rectangle
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise missing_matplotlib() from error

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
