"""The Cython backend (built by setup.py); importing fails cleanly when it was not built."""

from ._kernel import run_plan  # noqa: F401  (ImportError marks the backend unavailable)
