"""The documentation matches the code: API reference up to date, README example runs."""

import pathlib
import re
import runpy

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_api_reference_is_generated_from_the_docstrings():
    render = runpy.run_path(str(ROOT / "docs" / "make_api.py"))["render"]
    assert (ROOT / "docs" / "api.md").read_text() == render(), (
        "docs/api.md is stale: run `python docs/make_api.py > docs/api.md`")


def test_readme_example_runs():
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert np.all(np.isfinite(namespace["out"]))
