"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib

import pytest

import fastattn

PUBLIC_MODULES = ["fastattn._api", "fastattn._config", "fastattn._info", "fastattn._weights",
                  "fastattn.viz", "fastattn._viz_demo", "fastattn.nn", "fastattn.dask",
                  "fastattn._plan"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_every_public_function_has_a_runnable_example():
    finder = doctest.DocTestFinder()
    for name in ("attention", "attention_weights", "merge_attention", "config_context",
                 "get_config", "show_config"):
        function = getattr(fastattn, name)
        tests = finder.find(function, name)
        assert tests and any(test.examples for test in tests), f"{name} has no example"
        assert "Parameters" in function.__doc__ or "Returns" in function.__doc__, name


def test_window_alignment_is_documented():
    """DESIGN.md: the window's alignment (its diagonal, also under "lower_right") is documented."""
    doc = fastattn.attention.__doc__
    section = doc[doc.index("window :"):doc.index("scale :")]
    assert "diagonal" in section and "lower_right" in section
