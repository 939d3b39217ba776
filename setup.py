"""Build of the optional Cython/OpenMP kernels, ``fastattn._cython._kernel`` and ``_backward``.

Everything else is pure Python and lives in pyproject.toml.  The extension is
optional: when it cannot be built (no C compiler, no Cython) the package still
installs, with a warning, and the ``"cython"`` backend reports itself unavailable.

Compiler flags
--------------
* ``-O3``; ``-fopenmp`` when a test program compiles and links with it (otherwise a
  serial build, with a warning); ``-fopenmp-simd`` for the vectorised row loops.
* ``-march=native`` unless the environment variable ``FASTATTN_PORTABLE=1`` (set it
  when building wheels or binaries for other machines).
* Never ``-ffast-math`` or finite-math flags: masked scores are -inf.
"""

import os
import shutil
import sys
import tempfile
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSION = "fastattn._cython._kernel"
SOURCE = "fastattn/_cython/_kernel.pyx"
HEADERS = ["fastattn/_cython/_kernels.h", "fastattn/_cython/_rowops.h", "fastattn/_cython/_tiles.h",
           "fastattn/_cython/_tiles.inc", "fastattn/_cython/_contract.pxi"]
BACKWARD_EXTENSION = "fastattn._cython._backward"
BACKWARD_SOURCE = "fastattn/_cython/_backward.pyx"
BACKWARD_HEADERS = HEADERS + ["fastattn/_cython/_backward_tiles.h",
                              "fastattn/_cython/_backward_tiles.inc"]

OPENMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
}
"""


def _compiles(compiler, flags, source="int main(void) { return 0; }\n"):
    """Whether ``source`` compiles and links with ``flags`` (each flag is also a link flag)."""
    tmp = tempfile.mkdtemp(prefix="fastattn-probe-")
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        objects = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=flags)
        return True
    except Exception:  # any failure means "not supported"; the reason does not matter
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OptionalBuildExt(build_ext):
    """build_ext that probes flags, and warns instead of failing when nothing builds."""

    def build_extensions(self):
        if not _compiles(self.compiler, []):
            _warn("no working C compiler; the Cython kernel is not built and the 'cython' "
                  "backend will be unavailable (the others work)")
            self.extensions = []
            return
        compile_flags, link_flags = self._choose_flags()
        built = []
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_flags
            ext.extra_link_args = list(ext.extra_link_args or []) + link_flags
            try:
                self.build_extension(ext)
                built.append(ext)
            except Exception as error:  # compile or link error
                _warn(f"building {ext.name} failed ({error}); the 'cython' backend will "
                      "be unavailable (the others work)")
        self.extensions = built  # so that --inplace copies only what was built

    def _choose_flags(self):
        if self.compiler.compiler_type == "msvc":
            return ["/O2", "/openmp"], []
        compile_flags = ["-O3"]
        if os.environ.get("FASTATTN_PORTABLE", "").strip() != "1":
            if _compiles(self.compiler, ["-march=native"]):
                compile_flags.append("-march=native")
        if _compiles(self.compiler, ["-fopenmp"], OPENMP_TEST):
            return compile_flags + ["-fopenmp"], ["-fopenmp"]
        _warn("OpenMP was not found (a test program does not build with -fopenmp); "
              "the Cython kernel is built serial and runs on one thread")
        if _compiles(self.compiler, ["-fopenmp-simd"]):
            compile_flags.append("-fopenmp-simd")  # still vectorise the row loops
        return compile_flags, []

    def run(self):
        try:
            super().run()
        except Exception as error:  # e.g. no compiler configured for this platform
            _warn(f"the Cython kernel was not built ({error}); the 'cython' backend "
                  "will be unavailable (the others work)")


def _warn(message):
    warnings.warn(message)
    print(f"WARNING (fastattn): {message}", file=sys.stderr)


def _extensions():
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as error:
        _warn(f"{error}: the Cython kernel is not built")
        return []
    extensions = [Extension(name, [source], depends=headers,
                            include_dirs=[numpy.get_include()],
                            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
                  for name, source, headers in [(EXTENSION, SOURCE, HEADERS),
                                                (BACKWARD_EXTENSION, BACKWARD_SOURCE,
                                                 BACKWARD_HEADERS)]]
    try:
        return cythonize(extensions, compiler_directives={"language_level": 3})
    except Exception as error:  # e.g. a Cython too old for the source
        _warn(f"Cython failed ({error}): the Cython kernel is not built")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
