"""Every docstring example in the installed package runs, each exactly once.

The modules are discovered, not listed: the walk covers every module of the ``fastattn``
package, compiled extension modules (the Cython kernel) included, and each module's examples
run in one test of their own.  No other test file runs a module's doctests.
"""

import doctest
import importlib
import importlib.machinery
import pathlib
import pkgutil

import pytest

import fastattn

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PACKAGE_DIR = pathlib.Path(fastattn.__file__).parent


def module_names():
    """Every module of the installed package, by walking it (subpackages are imported to walk)."""
    names = ["fastattn"]
    for info in pkgutil.walk_packages(fastattn.__path__, "fastattn.", onerror=lambda name: None):
        names.append(info.name)
    return names


def missing_dependency(error):
    """The name of a third-party module whose absence ``error`` reports, or None."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        if error.name.split(".")[0] != "fastattn":
            return error.name
    return None


def examples_of(module):
    """The module's docstring tests that hold examples, each docstring once.

    Cython adds a ``__test__`` dict holding the docstrings of its functions, which doctest
    also finds on the functions themselves: the same docstring is kept once.
    """
    seen, tests = set(), []
    for test in sorted(doctest.DocTestFinder().find(module), key=lambda test: test.name):
        if test.examples and test.docstring not in seen:
            seen.add(test.docstring)
            tests.append(test)
    return tests


def _modules_with_examples():
    params = []
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except ImportError:  # the test skips (missing third-party module) or fails
            params.append(name)
            continue
        if examples_of(module):
            params.append(name)
    return params


MODULES = _modules_with_examples()


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        if missing_dependency(error) is None:
            raise
        pytest.skip(f"{name} needs {missing_dependency(error)}: {error}")
    report = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in examples_of(module):
        runner.run(test, out=report.append)
    assert runner.tries > 0
    assert runner.failures == 0, "".join(report)


def test_the_walk_finds_every_module_file():
    """Each ``.py`` file and compiled extension in the package directory is a walked module."""
    suffixes = tuple(importlib.machinery.SOURCE_SUFFIXES + importlib.machinery.EXTENSION_SUFFIXES)
    on_disk = set()
    for path in PACKAGE_DIR.rglob("*"):
        if path.name.endswith(suffixes) and "__pycache__" not in path.parts:
            parts = path.relative_to(PACKAGE_DIR.parent).parts
            stem = parts[-1][:-len(next(s for s in suffixes if parts[-1].endswith(s)))]
            dotted = ".".join(parts[:-1] + (stem,))
            on_disk.add(dotted.removesuffix(".__init__"))
    assert on_disk - set(module_names()) == set()


def test_examples_are_collected_once_across_modules():
    """No docstring runs in two modules' tests (a re-export is found where it is defined only)."""
    owners = {}
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for test in examples_of(module):
            owners.setdefault(test.docstring, []).append(f"{name}: {test.name}")
    twice = [names for names in owners.values() if len(names) > 1]
    assert not twice, twice


def test_every_public_function_has_a_runnable_example():
    finder = doctest.DocTestFinder()
    for name in ("attention", "attention_weights", "merge_attention", "config_context",
                 "get_config", "show_config"):
        function = getattr(fastattn, name)
        tests = finder.find(function, name)
        assert tests and any(test.examples for test in tests), f"{name} has no example"
        assert "Parameters" in function.__doc__ or "Returns" in function.__doc__, name


def test_window_alignment_is_documented():
    """The window's alignment (its diagonal, also under "lower_right") is documented."""
    doc = fastattn.attention.__doc__
    section = doc[doc.index("window :"):doc.index("scale :")]
    assert "diagonal" in section and "lower_right" in section
