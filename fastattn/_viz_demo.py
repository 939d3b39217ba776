"""The demo figures of :func:`fastattn.viz.demo_figures`: small examples of attention.

Everything is computed with fastattn, with seeded random embeddings and weights, so
the files are reproducible.  The figures are bare ``matplotlib.figure.Figure`` objects
(:func:`fastattn._viz_draw.detached_figure`), never pyplot ones: drawing them opens
no window and leaves the caller's backend alone.  This module does not import
:mod:`fastattn.viz`; viz imports it, when the demo is asked for.
"""

from pathlib import Path

import numpy as np

from ._viz_draw import detached_figure, draw_heatmap, draw_heatmap_grid, write_figure


def write_demo_figures(out_dir):
    """Write the demo PNGs into ``out_dir``; return their paths (see ``viz.demo_figures``)."""
    out_dir = Path(out_dir)
    makers = [("worked_example.png", _demo_worked_example),
              ("causal_mask.png", _demo_causal_mask),
              ("multi_head.png", _demo_multi_head),
              ("self_vs_cross.png", _demo_self_vs_cross),
              ("positional_encoding.png", _demo_positional_encoding)]
    return [write_figure(make(), out_dir / name) for name, make in makers]


SOURCE = ["the", "cat", "sat", "on", "the", "mat"]
TARGET = ["<s>", "le", "chat", "est", "assis", "sur", "le", "tapis"]


def worked_example():
    """One query over three keys and values, all 2-dimensional, computed exactly.

    Returns ``(q, keys, values, weights, output)``; see :func:`fastattn.viz.worked_example`.
    """
    from ._api import attention
    from ._weights import attention_weights

    q = np.array([[0.3, 0.6]])
    keys = np.array([[0.8, 1.0], [1.6, 2.0], [0.4, 0.5]])
    values = np.array([[1.2, 1.4], [2.4, 2.8], [0.6, 0.7]])
    return q, keys, values, attention_weights(q, keys), attention(q, keys, values)


def _embed(tokens, dim, rng):
    """Seeded random word embeddings (one per distinct word) plus the positional encoding."""
    from .nn import sinusoidal_positional_encoding

    vocabulary = {word: rng.standard_normal(dim) for word in dict.fromkeys(tokens)}
    words = np.stack([vocabulary[word] for word in tokens])
    return (words + sinusoidal_positional_encoding(len(tokens), dim)).astype(np.float32)


def _demo_worked_example():
    q, keys, values, weights, output = worked_example()
    figure = detached_figure((6.4, 3.0))
    ax = figure.subplots()
    scores = (q @ keys.T)[0]
    key_labels = [f"k{j + 1} = ({k[0]:.1f}, {k[1]:.1f})\nv{j + 1} = ({v[0]:.1f}, {v[1]:.1f})"
                  f"\nq·k{j + 1} = {score:.2f}"
                  for j, (k, v, score) in enumerate(zip(keys, values, scores))]
    draw_heatmap(weights, [f"q = ({q[0, 0]:.1f}, {q[0, 1]:.1f})"], key_labels, ax=ax,
                 annotate=True, number_format=".4f")
    ax.tick_params(axis="x", labelrotation=0)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("center")
    figure.suptitle(f"worked example: weights = softmax(q·kᵀ/√2)\n"
                    f"output = Σ wⱼ vⱼ = ({output[0, 0]:.4f}, {output[0, 1]:.4f})")
    return figure


def _demo_causal_mask():
    from ._weights import attention_weights
    from .nn import MultiHeadAttention

    tokens = ["<s>"] + SOURCE
    x = _embed(tokens, 16, np.random.default_rng(0))
    layer = MultiHeadAttention(16, 1, seed=1)
    q = (x @ layer.Wq + layer.bq)
    k = (x @ layer.Wk + layer.bk)
    n = len(tokens)
    i, j = np.indices((n, n))
    figure = detached_figure((10.5, 4.6))
    axes = figure.subplots(1, 2)
    for ax, window, name in ((axes[0], None, "causal"),
                             (axes[1], (2, 0), "causal + sliding window (2, 0)")):
        weights = attention_weights(q, k, causal=True, window=window)
        visible = j <= i if window is None else (j <= i) & (j >= i - 2)
        draw_heatmap(weights, tokens, tokens, ax=ax, masked=~visible, title=name)
    figure.suptitle("decoder self-attention: a query never sees later keys "
                    "(hatched = masked, weight 0)")
    return figure


def _demo_multi_head():
    from .nn import MultiHeadAttention

    x = _embed(SOURCE, 16, np.random.default_rng(2))
    maps = []
    for seed in (3, 4):  # two layers with residual connections: x <- x + MHA(x)
        layer = MultiHeadAttention(16, 4, seed=seed)
        out, weights = layer(x, return_weights=True)
        maps.append(weights)
        x = x + out
    return draw_heatmap_grid(maps, SOURCE, SOURCE,
                             title="multi-head self-attention: 2 layers × 4 heads "
                                   "(random weights, seeded)")


def _demo_self_vs_cross():
    from .nn import MultiHeadAttention

    rng = np.random.default_rng(5)
    source = _embed(SOURCE, 16, rng)
    target = _embed(TARGET, 16, rng)
    encoder = MultiHeadAttention(16, 1, seed=6)
    decoder = MultiHeadAttention(16, 1, seed=7)
    cross = MultiHeadAttention(16, 1, seed=8)
    encoded, encoder_weights = encoder(source, return_weights=True)
    encoded = encoded + source
    decoded, decoder_weights = decoder(target, causal=True, return_weights=True)
    _, cross_weights = cross(decoded + target, context=encoded, return_weights=True)

    figure = detached_figure((15, 4.8))
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": [6, 8, 6]})
    draw_heatmap(encoder_weights[0], SOURCE, SOURCE, ax=axes[0], annotate=False,
                 title="encoder self-attention\n(source → source)")
    draw_heatmap(decoder_weights[0], TARGET, TARGET, ax=axes[1], masked="zeros",
                 annotate=False,
                 title="decoder self-attention, causal\n(target → earlier target)")
    draw_heatmap(cross_weights[0], TARGET, SOURCE, ax=axes[2], annotate=False,
                 title="cross-attention\n(target queries → source keys)")
    figure.suptitle("self- vs cross-attention in an encoder-decoder (random weights, seeded)")
    return figure


def _demo_positional_encoding():
    from .nn import sinusoidal_positional_encoding

    encoding = sinusoidal_positional_encoding(48, 64)
    figure = detached_figure((8.5, 5.2))
    ax = figure.subplots()
    draw_heatmap(encoding, ax=ax, cmap="RdBu_r", annotate=False,
                 title="sinusoidal positional encoding: sin on even, cos on odd dimensions")
    ax.set_xlabel("dimension")
    ax.set_ylabel("position")
    ax.images[0].colorbar.set_label("value")
    return figure
