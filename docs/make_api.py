"""Write docs/api.md from the numpydoc docstrings of fastattn's public functions.

    python docs/make_api.py > docs/api.md

tests/test_docs.py checks that docs/api.md is what this script writes, so the API
reference cannot drift from the code.
"""

import importlib
import inspect

SECTIONS = {
    "fastattn": ["attention", "attention_backward", "attention_weights", "merge_attention",
                 "varlen_attention", "varlen_attention_backward", "paged_attention",
                 "config_context", "get_config", "show_config"],
    "fastattn.viz": ["heatmap", "heatmap_grid", "rollout", "to_bertviz", "save",
                     "demo_figures", "worked_example"],
    "fastattn.nn": ["MultiHeadAttention", "additive_attention", "local_attention",
                    "sinusoidal_positional_encoding"],
    "fastattn.dask": ["attention", "local_cluster"],
    "fastattn.torch": ["scaled_dot_product_attention", "attention", "sdpa_override"],
    "fastattn.hf": ["register", "attention_forward", "attention_mask"],
}


def _entry(module_name, name):
    obj = getattr(importlib.import_module(module_name), name)
    signature = str(inspect.signature(obj))
    lines = [f"### `{module_name}.{name}{signature}`", "", "```text", inspect.getdoc(obj),
             "```", ""]
    if inspect.isclass(obj) and "__call__" in vars(obj):
        call = obj.__call__
        lines += [f"#### `{name}.__call__{inspect.signature(call)}`", "", "```text",
                  inspect.getdoc(call), "```", ""]
    return lines


def render():
    parts = ["# API reference", "",
             "Generated from the docstrings by `python docs/make_api.py > docs/api.md`.", ""]
    for module_name, names in SECTIONS.items():
        parts += [f"## `{module_name}`", ""]
        for name in names:
            parts += _entry(module_name, name)
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
