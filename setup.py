"""Build of the optional Cython/OpenMP kernels, ``fastattn._cython._kernel`` and ``_backward``.

Everything else is pure Python and lives in pyproject.toml.  The extension is
optional: when it cannot be built (no C compiler, no Cython) the package still
installs, with a warning, and the ``"cython"`` backend reports itself unavailable.

Compiler flags and instruction-set levels
-----------------------------------------
* ``-O3``; ``-fopenmp`` when a test program compiles and links with it (otherwise a
  serial build, with a warning); ``-fopenmp-simd`` for the vectorised row loops.
* One build runs everywhere: the C tile kernels (``_isa_table.c``) are compiled once
  per instruction-set level of ``ISA_LEVELS`` whose flags the compiler accepts, and
  linked into both extensions beside ``_dispatch.c``, which picks the best level the
  CPU supports at import (``fastattn._isa``).  The Cython-generated code itself is
  compiled for the baseline of the target.  On other architectures, or with MSVC,
  only the baseline level is built.
* Never ``-march=native``, ``-ffast-math`` or finite-math flags (masked scores are -inf).
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
HEADERS = ["fastattn/_cython/_kernels.h", "fastattn/_cython/_contract.pxi",
           "fastattn/_cython/_isa.pxi", "fastattn/_cython/_half_scalar.h",
           "fastattn/_cython/_decode.pxi", "fastattn/_cython/_read_probe.pxi",
           "fastattn/_cython/_read_probe.h"]
BACKWARD_EXTENSION = "fastattn._cython._backward"
BACKWARD_SOURCE = "fastattn/_cython/_backward.pyx"
BACKWARD_HEADERS = HEADERS
CYTHON_DIR = "fastattn/_cython"
DISPATCH_SOURCE = f"{CYTHON_DIR}/_dispatch.c"
ISA_SOURCE = f"{CYTHON_DIR}/_isa_table.c"
TILE_HEADERS = [f"{CYTHON_DIR}/{name}" for name in (
    "_kernel_list.h", "_rowops.h", "_tiles.h", "_tiles.inc", "_backward_tiles.h",
    "_backward_tiles.inc", "_half_tiles.h", "_decode_tiles.h", "_decode_tiles.inc")]

# (name, gcc/clang flags) of the x86-64 levels, lowest first: the names and order of
# fastattn._isa.LEVELS and of the FA_LEVEL_* enum in _kernel_list.h.
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
_AVX512 = _AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
ISA_LEVELS = [("baseline", []), ("avx2", _AVX2), ("avx512", _AVX512),
              ("avx512bf16", _AVX512 + ["-mavx512bf16"])]

# Tests only: FASTATTN_EMULATE_AVX512=1 builds the two AVX-512 levels for AVX2 CPUs, with
# the AVX-512 intrinsics in software (tests/emulation) and 64-byte GNU vectors lowered
# to AVX2, and makes the dispatch believe the CPU has AVX-512 BF16; .ci/run uses it to
# test those levels' code on a machine without AVX-512.  Never for a real build.
if os.environ.get("FASTATTN_EMULATE_AVX512", "").strip() == "1":
    _EMULATED = _AVX2 + ["-Itests/emulation", "-D__AVX512F__", "-D__AVX512BW__",
                         "-Wno-psabi"]
    ISA_LEVELS = ISA_LEVELS[:2] + [("avx512", _EMULATED),
                                   ("avx512bf16", _EMULATED + ["-D__AVX512BF16__"])]
    EMULATED_CPU_LEVEL = [("FA_EMULATED_CPU_LEVEL", "3")]
else:
    EMULATED_CPU_LEVEL = []

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
        try:
            tables, levels = self._compile_levels()
        except Exception as error:  # the baseline tiles do not compile
            _warn(f"compiling the tile kernels failed ({error}); the 'cython' backend will "
                  "be unavailable (the others work)")
            self.extensions = []
            return
        built = []
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_flags
            ext.extra_link_args = list(ext.extra_link_args or []) + link_flags
            ext.extra_objects = list(ext.extra_objects or []) + tables
            ext.define_macros = list(ext.define_macros or []) + [
                (f"FA_BUILT_{name}", "1") for name in levels] + EMULATED_CPU_LEVEL
            try:
                self.build_extension(ext)
                built.append(ext)
            except Exception as error:  # compile or link error
                _warn(f"building {ext.name} failed ({error}); the 'cython' backend will "
                      "be unavailable (the others work)")
        self.extensions = built  # so that --inplace copies only what was built

    def _compile_levels(self):
        """Compile the tile kernels once per level the compiler supports: (objects, names)."""
        objects, names = [], []
        for level_id, (name, flags) in enumerate(self._levels()):
            if level_id and not _compiles(self.compiler, flags):
                _warn(f"the compiler does not accept {' '.join(flags)}: the {name} kernels "
                      "are not built (the CPU dispatch falls back to a lower level)")
                continue
            try:
                objects += self._compile_level(level_id, name, flags)
            except Exception as error:
                if not level_id:
                    raise
                _warn(f"the {name} kernels failed to compile ({error}); the CPU dispatch "
                      "falls back to a lower level")
                continue
            names.append(name)
        return objects, names

    def _compile_level(self, level_id, name, flags):
        if self.compiler.compiler_type == "msvc":
            flags = ["/O2"] + flags
        else:
            flags = ["-O3", "-fopenmp-simd"] + flags
        return self.compiler.compile(
            [ISA_SOURCE], output_dir=os.path.join(self.build_temp, "isa", name),
            macros=[("FA_LEVEL_NAME", name), ("FA_LEVEL_ID", str(level_id))],
            include_dirs=[CYTHON_DIR], extra_postargs=flags, depends=TILE_HEADERS)

    def _levels(self):
        """ISA_LEVELS where the target is x86-64 and the compiler gcc-like, else baseline."""
        import platform
        x86_64 = platform.machine().lower() in ("x86_64", "amd64")
        if x86_64 and self.compiler.compiler_type != "msvc":
            return ISA_LEVELS
        return ISA_LEVELS[:1]

    def _choose_flags(self):
        if self.compiler.compiler_type == "msvc":
            return ["/O2", "/openmp"], []
        compile_flags = ["-O3"]
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
    extensions = [Extension(name, [source, DISPATCH_SOURCE], depends=headers + TILE_HEADERS,
                            include_dirs=[numpy.get_include(), CYTHON_DIR],
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
