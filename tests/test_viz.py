"""fastattn.viz: heatmaps, grids, rollout, bertviz export, files, demo figures, the docs page."""

import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import fastattn  # noqa: E402
from fastattn import viz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def dirichlet_layers(seed=0, layers=3, heads=2, lq=5, lk=5):
    """Random attention maps (rows sum to 1), shape (layers, heads, lq, lk)."""
    return np.random.default_rng(seed).dirichlet(np.ones(lk), size=(layers, heads, lq))


def texts(ax):
    return [t.get_text() for t in ax.texts]


# --- heatmap ---------------------------------------------------------------------------

def test_heatmap_labels_colorbar_and_annotations():
    tokens = ["the", "cat", "sat"]
    weights = fastattn.attention_weights(np.eye(3), np.eye(3) * 2)
    ax = viz.heatmap(weights, tokens, ["k1", "k2", "k3"], title="demo")
    figure = ax.figure
    assert len(figure.axes) == 2                       # the heatmap and its colour bar
    assert figure.axes[1].get_ylabel() == "attention weight"
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert [t.get_text() for t in ax.get_xticklabels()] == ["k1", "k2", "k3"]
    assert all(t.get_rotation() != 0 for t in ax.get_xticklabels())
    assert ax.get_title() == "demo" and ax.get_xlabel() == "key" and ax.get_ylabel() == "query"
    assert len(ax.texts) == 9 and texts(ax)[0] == format(weights[0, 0], ".2f")
    np.testing.assert_allclose(ax.images[0].get_array(), weights)


def test_heatmap_on_given_axes_without_colorbar_or_numbers():
    figure, axes = plt.subplots(1, 2)
    ax = viz.heatmap(np.full((13, 13), 1 / 13), ax=axes[1], colorbar=False)
    assert ax is axes[1] and len(figure.axes) == 2 and len(ax.texts) == 0  # 13 > 12: no numbers
    ax = viz.heatmap(np.full((2, 20), 0.05), annotate=True, colorbar=False)
    assert len(ax.texts) == 40


def test_heatmap_masked_cells():
    weights = fastattn.attention_weights(np.eye(4), np.eye(4), causal=True)
    ax = viz.heatmap(weights, masked="zeros")
    image = ax.images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(image), weights == 0)
    assert len(ax.collections) == 1                    # the hatch over the masked cells
    assert len(ax.texts) == 10                         # no number in a masked cell
    chosen = np.zeros((4, 4), dtype=bool)
    chosen[0, 0] = True
    ax = viz.heatmap(weights, masked=chosen)
    np.testing.assert_array_equal(np.ma.getmaskarray(ax.images[0].get_array()), chosen)
    ax = viz.heatmap(weights)                          # default: nothing masked
    assert not np.ma.getmaskarray(ax.images[0].get_array()).any()


def test_heatmap_accepts_leading_unit_axes_and_tensors():
    class Tensor:  # what viz needs from a torch tensor, without importing torch
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.array

    ax = viz.heatmap(Tensor(np.full((1, 1, 2, 3), 1 / 3)))
    assert ax.images[0].get_array().shape == (2, 3)


def test_heatmap_thins_long_label_lists():
    labels = [f"t{i}" for i in range(100)]
    ax = viz.heatmap(np.full((100, 100), 0.01), labels, labels, colorbar=False)
    shown = [t.get_text() for t in ax.get_xticklabels()]
    assert 10 <= len(shown) <= viz.MAX_TICK_LABELS and shown[0] == "t0"


@pytest.mark.parametrize("call, error, match", [
    (lambda: viz.heatmap(np.ones((2, 3, 4))), ValueError, "one \\(Lq, Lk\\) matrix"),
    (lambda: viz.heatmap(np.ones((2, 3)), ["a"]), ValueError, "query_labels has 1 labels"),
    (lambda: viz.heatmap(np.ones((2, 3)), None, ["a"]), ValueError, "key_labels has 1"),
    (lambda: viz.heatmap(np.ones((2, 3)), masked="ones"), ValueError, "masked must be"),
    (lambda: viz.heatmap(np.ones((2, 3)), masked=np.ones((3, 3), bool)), ValueError,
     "does not broadcast"),
    (lambda: viz.heatmap(np.ones((2, 3)), masked=np.ones((2, 3))), TypeError, "bool array"),
    (lambda: viz.heatmap(np.ones((2, 3), complex)), TypeError, "real numbers"),
])
def test_heatmap_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- heatmap_grid ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["array", "list3", "list4", "array5"])
def test_heatmap_grid_layouts(layout):
    stack = dirichlet_layers()
    attentions = {"array": stack,
                  "list3": list(stack),
                  "list4": [layer[None] for layer in stack],
                  "array5": stack[:, None]}[layout]
    tokens = list("abcde")
    figure = viz.heatmap_grid(attentions, tokens, tokens, title="grid")
    assert len(figure.axes) == 3 * 2 + 1               # layers × heads + colour bar
    axes = figure.axes[:-1]
    assert [ax.get_title() for ax in axes[:2]] == ["head 0", "head 1"]
    assert axes[0].get_ylabel() == "layer 0\nquery" and axes[4].get_ylabel() == "layer 2\nquery"
    assert [t.get_text() for t in axes[4].get_xticklabels()] == tokens   # bottom row
    assert [t.get_text() for t in axes[0].get_yticklabels()] == tokens   # left column
    assert figure.axes[-1].get_ylabel() == "attention weight"
    assert figure.get_suptitle() == "grid"
    np.testing.assert_allclose(axes[3].images[0].get_array(), stack[1, 1])


def test_heatmap_grid_selection():
    stack = dirichlet_layers(layers=4, heads=3)
    figure = viz.heatmap_grid(stack, layers=[-1, 0], heads=[2])
    assert len(figure.axes) == 3
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), stack[3, 2])
    assert figure.axes[0].get_ylabel() == "layer 3\nquery"


@pytest.mark.parametrize("attentions, kwargs, error, match", [
    ([np.ones((2, 2, 3, 3))], {}, ValueError, "batch size 2"),
    ([np.ones((2, 3, 3)), np.ones((2, 4, 4))], {}, ValueError, "differ in shape"),
    ([], {}, ValueError, "empty"),
    (np.ones((2, 3, 3)), {}, ValueError, "\\(layers, H, Lq, Lk\\)"),
    (dirichlet_layers(), {"heads": [2]}, IndexError, "heads: 2 out of range"),
    (dirichlet_layers(), {"layers": [0.5]}, TypeError, "layers must be"),
    (dirichlet_layers(), {"cell_size": 0}, ValueError, "cell_size"),
    (5, {}, TypeError, "attentions must be"),
])
def test_heatmap_grid_errors(attentions, kwargs, error, match):
    with pytest.raises(error, match=match):
        viz.heatmap_grid(attentions, **kwargs)


# --- rollout and bertviz -----------------------------------------------------------------

def rollout_reference(stack, fuse=np.mean, residual=True):
    result = np.eye(stack.shape[-1])
    for layer in stack:                                 # first layer first
        a = fuse(layer, axis=0)
        if residual:
            a = 0.5 * a + 0.5 * np.eye(len(a))
            a = a / a.sum(axis=1, keepdims=True)
        result = a @ result
    return result


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_matches_formula(fusion):
    stack = dirichlet_layers(seed=1, layers=4, heads=3, lq=6, lk=6)
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    result = viz.rollout(list(stack), head_fusion=fusion)
    np.testing.assert_allclose(result, rollout_reference(stack, fuse), rtol=1e-12)
    np.testing.assert_allclose(result.sum(axis=1), 1.0)
    # the order matters: A_L ⋯ A_1, not A_1 ⋯ A_L
    assert not np.allclose(result, rollout_reference(stack[::-1], fuse))


def test_rollout_without_residual_and_single_layer():
    stack = dirichlet_layers(seed=2, layers=3)
    np.testing.assert_allclose(viz.rollout(stack, residual=False),
                               stack[2].mean(0) @ stack[1].mean(0) @ stack[0].mean(0))
    cross = dirichlet_layers(seed=3, layers=1, lq=2, lk=5)
    np.testing.assert_allclose(viz.rollout(cross, residual=False), cross[0].mean(0))


def test_rollout_errors():
    with pytest.raises(ValueError, match="head_fusion"):
        viz.rollout(dirichlet_layers(), head_fusion="median")
    with pytest.raises(ValueError, match="Lq == Lk"):
        viz.rollout(dirichlet_layers(lq=2, lk=5))
    with pytest.raises(ValueError, match="square"):
        viz.rollout(dirichlet_layers(lq=2, lk=5), residual=False)


def test_to_bertviz():
    stack = dirichlet_layers(layers=3, heads=2, lq=4, lk=6)
    for attentions in (stack, list(stack), [layer[None] for layer in stack]):
        layers = viz.to_bertviz(attentions)
        assert isinstance(layers, list) and len(layers) == 3
        for layer, expected in zip(layers, stack):
            assert layer.shape == (1, 2, 4, 6) and layer.dtype == np.float32
            np.testing.assert_allclose(layer[0], expected, rtol=1e-6)


# --- files -----------------------------------------------------------------------------

def test_save_png_and_svg(tmp_path):
    ax = viz.heatmap(np.eye(3))
    png = viz.save(ax.figure, tmp_path / "new" / "dir" / "eye.png")
    assert png == tmp_path / "new" / "dir" / "eye.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = viz.save(ax, str(tmp_path / "eye.SVG"))
    assert svg.stat().st_size > 0 and b"<svg" in svg.read_bytes()[:2000]
    with pytest.raises(ValueError, match=".png or .svg"):
        viz.save(ax.figure, tmp_path / "eye.jpg")
    with pytest.raises(TypeError, match="Figure or Axes"):
        viz.save(object(), tmp_path / "x.png")


def test_png_is_written_at_150_dpi(tmp_path):
    figure = plt.figure(figsize=(2, 1))
    figure.add_artist(matplotlib.patches.Rectangle((0, 0), 1, 1, transform=figure.transFigure))
    path = viz.save(figure, tmp_path / "dpi.png")
    height, width = plt.imread(path).shape[:2]
    assert (width, height) == (330, 180)    # (2 + 2 · 0.1 margin) in × 150 dpi, (1 + 0.2) × 150


def test_demo_figures(tmp_path):
    paths = viz.demo_figures(tmp_path / "demo")
    assert [p.name for p in paths] == ["worked_example.png", "causal_mask.png",
                                       "multi_head.png", "self_vs_cross.png",
                                       "positional_encoding.png"]
    for path in paths:
        assert path.parent == tmp_path / "demo"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert plt.get_fignums() == []                      # every demo figure was closed


def test_demo_draws_off_pyplot_and_leaves_the_backend_alone(tmp_path):
    code = ("import sys, matplotlib; matplotlib.use('svg'); from fastattn import viz; "
            f"viz.demo_figures({str(tmp_path)!r}); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.split() == ["svg", "False"]
    assert len(list(tmp_path.glob("*.png"))) == 5


def test_modules_say_what_their_example_is():
    """Readers do not have the tutorials fastattn grew from: no docstring cites them."""
    from fastattn import _viz_command, _viz_demo, _viz_draw

    for module in (viz, _viz_demo, _viz_draw, _viz_command):
        assert "tutorial" not in Path(module.__file__).read_text().lower(), module.__name__


def test_worked_example_numbers():
    q, keys, values, weights, output = viz.worked_example()
    np.testing.assert_allclose(q @ keys.T, [[0.84, 1.68, 0.42]])
    np.testing.assert_allclose(weights, [[0.2814, 0.5096, 0.2091]], atol=5e-5)
    np.testing.assert_allclose(output, [[1.6861, 1.9671]], atol=5e-5)


def test_committed_images_exist():
    for name in ("worked_example", "causal_mask", "multi_head", "self_vs_cross",
                 "positional_encoding"):
        path = ROOT / "docs" / "images" / f"{name}.png"
        assert path.is_file(), f"{path} missing: run viz.demo_figures('docs/images')"
        assert f"images/{name}.png" in (ROOT / "docs" / "visualization.md").read_text()


# --- matplotlib is optional ----------------------------------------------------------------

def test_import_does_not_load_matplotlib():
    code = "import sys, fastattn.viz, fastattn.nn; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'fastattn\[viz\]'"):
        viz.heatmap(np.eye(2))
    assert viz.rollout(np.full((1, 1, 2, 2), 0.5)).shape == (2, 2)  # NumPy only


# --- examples ----------------------------------------------------------------------------

def test_visualization_page_examples_run():
    result = doctest.testfile(str(ROOT / "docs" / "visualization.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20 and result.failed == 0
