"""fastattn: exact attention for the CPU, tiled and compiled, behind a NumPy API."""

from ._api import attention, merge_attention
from ._backward import attention_backward
from ._config import config_context, get_config
from ._info import show_config
from ._paged import paged_attention
from ._varlen import varlen_attention
from ._varlen_backward import varlen_attention_backward
from ._version import __version__
from ._weights import attention_weights

__all__ = ["attention", "attention_backward", "attention_weights", "merge_attention",
           "paged_attention", "varlen_attention", "varlen_attention_backward",
           "config_context", "get_config", "show_config", "__version__"]
