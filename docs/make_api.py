"""Write docs/api.md from the numpydoc docstrings of fastattn's public functions.

    python docs/make_api.py > docs/api.md

tests/test_docs.py checks that docs/api.md is what this script writes, so the API
reference cannot drift from the code.
"""

import inspect

import fastattn

PUBLIC = ["attention", "attention_weights", "merge_attention", "config_context", "get_config",
          "show_config"]


def render():
    parts = ["# API reference", "",
             "Generated from the docstrings by `python docs/make_api.py > docs/api.md`.", ""]
    for name in PUBLIC:
        function = getattr(fastattn, name)
        signature = str(inspect.signature(function))
        parts += [f"## `fastattn.{name}{signature}`", "", "```text",
                  inspect.getdoc(function), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
