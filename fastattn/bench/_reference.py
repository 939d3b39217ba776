"""The matmul reference: the GFLOP/s the installed BLAS libraries reach on one large product.

Attention's counted work is two matrix products, so the GFLOP/s of one square
``M × M`` matmul, in the sweep's dtype and with its threads, is a yardstick for the
backends: the faster of NumPy's (its BLAS, usually OpenBLAS) and, when torch is
installed, torch's (the BLAS torch was built with, MKL on x86).  It is called a
*reference*, not a ceiling, because it is not a bound on the CPU: the Cython kernels
run the best instruction-set level the CPU supports (``fastattn._isa``) and may use
wider vectors than the BLAS libraries run there, e.g. when ``OPENBLAS_CORETYPE`` forces OpenBLAS onto
its AVX2 kernels, or MKL runs on a non-Intel CPU.  Then a backend passes the
reference, and :func:`why_above` says why, in the report itself.
"""

import contextlib
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass

LIBRARIES = ("numpy", "torch")
"""The libraries whose matmul is timed, in this order."""

VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}
"""CPU vendor names, by ``/proc/cpuinfo``'s ``vendor_id``."""

VECTOR_WIDTH = {"sandybridge": "AVX, 256-bit", "haswell": "AVX2, 256-bit",
                "zen": "AVX2, 256-bit", "skylakex": "AVX-512", "cooperlake": "AVX-512",
                "sapphirerapids": "AVX-512"}
"""The vector instructions of OpenBLAS's x86 kernel sets, by (lower-case) core name."""


def reference_libraries():
    """The libraries of :data:`LIBRARIES` that are installed (NumPy always).

    Examples
    --------
    >>> reference_libraries()[0]
    'numpy'
    """
    return [name for name in LIBRARIES
            if name == "numpy" or importlib.util.find_spec(name) is not None]


def matmul_gflops(size=4096, dtype="float32", threads=None, repeats=3, library="numpy"):
    """Time one ``(size, size) @ (size, size)`` product with NumPy or torch.

    Parameters
    ----------
    size : int, default 4096
    dtype : str, default "float32"
    threads : int, optional
        BLAS threads (threadpoolctl for NumPy, ``torch.set_num_threads`` for torch);
        default: the library's own setting.
    repeats : int, default 3
        Timed calls after one warm-up.
    library : {"numpy", "torch"}, default "numpy"

    Returns
    -------
    dict
        ``library``, ``blas`` (which BLAS and kernels ran, when known), ``size``,
        ``dtype``, ``threads``, ``times_s``, ``median_s``, ``min_s``, ``max_s``,
        ``gflops`` (``2 size³ / median``) and, for NumPy, ``openblas_coretype`` (the
        environment variable that forces OpenBLAS's kernels, or None).

    Examples
    --------
    >>> measured = matmul_gflops(64, repeats=1)
    >>> measured["library"], measured["gflops"] > 0
    ('numpy', True)
    """
    matmul = make_matmul(library, size, dtype, threads)
    with matmul.limit():
        matmul.run()  # warm-up
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            matmul.run()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    measured = {"library": library, "blas": matmul.blas, "size": size, "dtype": str(dtype),
                "threads": threads, "times_s": times, "median_s": median,
                "min_s": min(times), "max_s": max(times), "gflops": 2.0 * size**3 / median / 1e9}
    if library == "numpy":
        measured["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE") or None
    return measured


@dataclass
class Matmul:
    """One reference product, ready to time.

    Attributes
    ----------
    run : callable
        Computes ``a @ b`` into a preallocated output and returns it (no arguments).
    blas : str or None
        Which BLAS (and, for OpenBLAS, which kernels) does the work.
    limit : callable
        ``limit()`` is a context manager that holds the library to the requested
        threads while entered, and restores its setting on exit.
    """

    run: object
    blas: object
    limit: object = contextlib.nullcontext


def make_matmul(library, size, dtype="float32", threads=None):
    """The ``(size, size) @ (size, size)`` product of ``library`` on random inputs.

    Parameters
    ----------
    library : {"numpy", "torch"}
    size : int
    dtype : str, default "float32"
    threads : int, optional

    Returns
    -------
    Matmul

    Examples
    --------
    >>> import numpy as np
    >>> matmul = make_matmul("numpy", 8)
    >>> with matmul.limit():
    ...     product = matmul.run()
    >>> product.shape, product.dtype
    ((8, 8), dtype('float32'))
    """
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    if library == "torch":
        return _torch_matmul(size, dtype, threads)
    return _numpy_matmul(size, dtype, threads)


def _numpy_matmul(size, dtype, threads):
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.dtype(dtype))
    b = rng.standard_normal((size, size), dtype=np.dtype(dtype))
    out = np.empty_like(a)
    limit, name = contextlib.nullcontext, None
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        pass
    else:
        if threads is not None:
            def limit():
                return threadpool_limits(limits=threads, user_api="blas")
        name = "; ".join(f"{lib.get('internal_api')} {lib.get('version')}, "
                         f"{lib.get('architecture')} kernels"
                         for lib in threadpool_info() if lib.get("user_api") == "blas") or None
    return Matmul(lambda: np.matmul(a, b, out=out), name, limit)


def _torch_matmul(size, dtype, threads):
    import torch

    generator = torch.Generator().manual_seed(0)
    kind = getattr(torch, str(dtype))
    a = torch.randn(size, size, dtype=kind, generator=generator)
    b = torch.randn(size, size, dtype=kind, generator=generator)
    out = torch.empty(size, size, dtype=kind)
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for part in config.replace(",", " ").split()
                 if part.startswith("BLAS_INFO=")), None)

    def multiply():
        with torch.inference_mode():
            return torch.matmul(a, b, out=out)

    @contextlib.contextmanager
    def limit():
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return Matmul(multiply, f"torch {torch.__version__}" + (f", {blas}" if blas else ""), limit)


def combine(measured, size, dtype, threads):
    """The reference record of a sweep from the per-library measurements.

    Parameters
    ----------
    measured : list of dict
        One per library: :func:`matmul_gflops`'s result, or ``{"library": ...,
        "gflops": None, "reason": ...}`` when it failed.
    size, dtype, threads
        What was measured.

    Returns
    -------
    dict
        ``size``, ``dtype``, ``threads``, ``libraries`` (``measured``), ``best`` (the
        library with the highest GFLOP/s, or None) and ``gflops`` (its GFLOP/s).

    Examples
    --------
    >>> reference = combine([{"library": "numpy", "gflops": 200.0},
    ...                      {"library": "torch", "gflops": 250.0}], 64, "float32", 2)
    >>> reference["best"], reference["gflops"]
    ('torch', 250.0)
    """
    ran = [m for m in measured if m.get("gflops")]
    best = max(ran, key=lambda m: m["gflops"], default=None)
    return {"size": size, "dtype": dtype, "threads": threads, "libraries": list(measured),
            "best": best["library"] if best else None,
            "gflops": best["gflops"] if best else None}


def from_ceiling(ceiling):
    """The reference record of a schema-1 ``"ceiling"`` (a NumPy matmul only)."""
    if not ceiling:
        return None
    numpy = {"library": "numpy", **{k: v for k, v in ceiling.items()
                                    if k not in ("size", "dtype", "threads")}}
    return {"size": ceiling.get("size"), "dtype": ceiling.get("dtype"),
            "threads": ceiling.get("threads"), "libraries": [numpy],
            "best": "numpy" if ceiling.get("gflops") else None,
            "gflops": ceiling.get("gflops")}


def describe(reference):
    """One sentence: the reference's GFLOP/s, which library gave it, what the other gave.

    Examples
    --------
    >>> print(describe(combine([{"library": "numpy", "gflops": 229.0},
    ...                         {"library": "torch", "gflops": 198.0}], 4096, "float32", 2)))
    float32 matmul 4096³, 2 threads: **229.0 GFLOP/s** by numpy; torch: 198.0 GFLOP/s
    """
    parts = []
    for measured in sorted(reference["libraries"],
                           key=lambda m: m["library"] != reference["best"]):
        if measured.get("gflops"):
            text = f"{measured['gflops']:.1f} GFLOP/s"
            if measured["library"] == reference["best"]:
                text = f"**{text}** by {measured['library']}"
            else:
                text = f"{measured['library']}: {text}"
        else:
            text = f"{measured['library']} failed ({measured.get('reason')})"
        details = [d for d in (_spread(measured, reference["size"]), measured.get("blas"),
                               _coretype(measured)) if d]
        parts.append(text + (f" ({'; '.join(details)})" if details else ""))
    return (f"{reference['dtype']} matmul {reference['size']}³, {reference['threads']} "
            f"threads: " + "; ".join(parts))


def _spread(measured, size):
    times = measured.get("times_s") or ()
    if len(times) < 2:
        return None
    flops = 2.0 * size**3
    return (f"{flops / max(times) / 1e9:.0f}–{flops / min(times) / 1e9:.0f} GFLOP/s over "
            f"{len(times)} calls")


def _coretype(measured):
    coretype = measured.get("openblas_coretype")
    return f"kernels forced by `OPENBLAS_CORETYPE={coretype}`" if coretype else None


def why_above(reference, machine, backends):
    """Why ``backends`` ran faster than the matmul reference: a list of reasons found here.

    Parameters
    ----------
    reference : dict
        :func:`combine`'s record.
    machine : dict
        :func:`fastattn.bench._machine.machine_info` (``cpu_vendor``, ``cpu_simd``).
    backends : collection of str
        The backends that passed it.

    Returns
    -------
    list of str
        Sentences; a general one when nothing specific to this machine is known.

    Examples
    --------
    >>> numpy = {"library": "numpy", "gflops": 229.0, "openblas_coretype": "Haswell"}
    >>> reference = combine([numpy], 4096, "float32", 2)
    >>> reasons = why_above(reference, {"cpu_simd": ["avx2", "avx512f"]}, ["cython"])
    >>> print(reasons[0])
    NumPy's OpenBLAS runs its Haswell kernels (AVX2, 256-bit), forced by OPENBLAS_CORETYPE
    >>> "AVX-512" in reasons[1]
    True
    """
    simd = set(machine.get("cpu_simd") or ())
    avx512 = "avx512f" in simd
    libraries = {m["library"]: m for m in reference.get("libraries", ())}
    reasons = []
    coretype = libraries.get("numpy", {}).get("openblas_coretype")
    if coretype:
        width = VECTOR_WIDTH.get(coretype.lower())
        reasons.append(f"NumPy's OpenBLAS runs its {coretype} kernels"
                       + (f" ({width})" if width else "") + ", forced by OPENBLAS_CORETYPE")
    torch = libraries.get("torch", {})
    if (avx512 and "mkl" in (torch.get("blas") or "").lower()
            and machine.get("cpu_vendor") not in (None, "GenuineIntel")):
        vendor = VENDORS.get(machine["cpu_vendor"], machine["cpu_vendor"])
        reasons.append("torch's matmul goes through Intel MKL, which chooses its kernels by "
                       f"CPU vendor and does not run its AVX-512 ones on this {vendor} CPU")
    if "cython" in backends and avx512:
        reasons.append("the Cython kernels run their AVX-512 level on this CPU (the best it "
                       "supports, chosen at import), whose hand-written tiles use 512-bit "
                       "vectors")
    if not reasons:
        reasons.append("one large matmul is a yardstick, not a bound: the BLAS may not use "
                       "all of this CPU's vector width, and medians of a few calls are "
                       "noisy (see the min and max columns)")
    return reasons
