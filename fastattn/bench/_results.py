"""``results.json``: the machine-readable record of a sweep, its schema and its loading.

The file is one JSON object::

    {"schema": "fastattn-bench", "schema_version": 6, "created": ISO-8601 time,
     "command": [...], "machine": {..., "isa": {"levels", "supported", "active"}},
     "settings": {..., "dtypes": [...], "isa_levels": [...] | null,
                  "serving": bool, "serving_options": {...} | null},
     "reference": {"size", "dtype", "threads", "best", "gflops",
                   "libraries": [{"library", "blas", "gflops", "median_s", "min_s",
                                  "max_s", "times_s", ...}, ...]} | null,
     "points": [{"workload": "forward" | "forward+backward" | "llama-prefill"
                             | "llama-decode" | "minilm-encode" | "serving-read"
                             | "serving-decode" | "serving-paged" | "serving-varlen"
                             | "serving-padded" | "serving-alibi", "backend", "causal", "n",
                 "dtype", "batch", "heads", "head_dim", "threads",
                 "isa", "isa_requested",
                 "status": "ok" | "skipped" | "failed", "reason",
                 "median_s", "min_s", "max_s", "times_s", "gflops", "tokens_per_s",
                 "flops", "traced_bytes", "rss_bytes", "rss_method", "peak_bytes",
                 "naive_bytes_needed", "max_abs_err"}, ...]}

A ``"forward"`` point times one ``attention`` call; a ``"forward+backward"`` point
times ``attention(..., return_lse=True)`` then ``attention_backward`` (torch: its SDPA
then ``.backward``), its memory fields are those of the backward call, and instead of
``max_abs_err`` and ``naive_bytes_needed`` it has ``max_grad_err`` (the gradients'
largest difference from the naive float64 gradient, relative to that gradient's
largest entry) and ``checked_heads`` (how many heads were compared; 0 when none).
A model point (:mod:`fastattn.bench._models`) times a transformers model: its
``backend`` is the ``attn_implementation`` (``"fastattn"``, ``"sdpa"``, ``"eager"``),
``n`` the prompt or input tokens, ``tokens`` the tokens one call reads or (decode)
generates, ``tokens_per_s = tokens / median_s``, its memory fields are those of the
first full-size call, and ``flops``, ``gflops`` are None.

A serving point (:mod:`fastattn.bench._serving`) times a serving workload.  Its ``n``
is the workload's own size: the bytes read (``serving-read``, the streaming read
bandwidth probe, ``backend`` ``"numpy"``), the cached keys ``Lk`` (``serving-decode``:
``attention`` with one query, or torch's SDPA; ``serving-paged``: ``paged_attention``,
with ``page_size``), the real tokens of the batch (``serving-varlen``:
``varlen_attention``; ``serving-padded``: the batch padded to its longest sequence,
``attention`` with a padding mask or torch's SDPA; both with ``seq_lens`` and
``padded_len``, ``batch`` the number of sequences) or ``N`` (``serving-alibi``, with
``bias_bytes`` and ``bias_bytes_per_head``: what an additive bias would need).  It also
has ``kv_heads``, ``bytes_read`` and ``gbytes_per_s = bytes_read / median_s / 1e9``
(the read probe and decoding: K and V), ``tokens`` and ``tokens_per_s`` (None for the
read probe); the read probe has ``read_method`` and ``read_gbytes_per_s_by_method``.

``dtype`` is ``"float32"``, ``"float64"``, ``"float16"`` or ``"bfloat16"`` (ml_dtypes'
type; stored in 16 bits, computed in float32).  ``isa`` is the instruction-set level
the point's kernels ran at, as its library names it (cython: ``fastattn._isa``'s level;
torch: its ATen CPU capability; numba: ``"native (<LLVM host CPU>)"``; naive: None), and
``isa_requested`` the level ``--isa`` asked the Cython kernels to run at (None: the one
chosen at import): the Cython points of one ``N`` differ by it.

``peak_bytes`` is the larger of the RSS rise and the tracemalloc peak of one call;
``min_s`` and ``max_s`` are the fastest and slowest timed calls.  ``reference`` is
the matmul reference (:mod:`fastattn.bench._reference`).  Measurements are None for
points that were skipped or failed.  A reader accepts any ``schema_version`` up to
:data:`SCHEMA_VERSION`; fields may be added without raising the version, never
renamed or given another meaning.  :func:`load_results` converts older versions:
version 1 called the reference ``"ceiling"`` (a NumPy matmul only); version 2 had
forward points only, without ``"workload"`` (version 3 raised the number so that a
reader that does not know the field refuses backward points rather than mixing them
into its forward tables); version 4 added the model workloads (raised so that a
reader that expects GFLOP/s on every point refuses them); version 5 added ``isa`` and
``isa_requested`` (raised because with ``--isa`` several Cython points share the other
key fields: a reader that does not know the field would mix them) and the half dtypes;
version 6 added the serving workloads (raised because their ``n`` is not a sequence
length of queries = keys, and a reader that does not know them would list them in its
comparisons as if it were, decoding under the model's decode step).
Points of older versions ran at the level chosen at import, which was not recorded:
``isa`` and ``isa_requested`` are None.
"""

import json
from pathlib import Path

SCHEMA = "fastattn-bench"
SCHEMA_VERSION = 6
RESULTS_FILE = "results.json"

FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"
"""The two workloads a point can time (its ``"workload"`` field)."""

KEY_FIELDS = ("backend", "causal", "n", "dtype", "batch", "heads", "head_dim",
              "isa_requested", "workload")
"""What identifies a point across two reports (the thread count is compared, not matched;
``isa_requested`` is None in files older than version 5)."""


def workload(point):
    """The workload of ``point``: :data:`FORWARD` when it does not say (hand-made records).

    Examples
    --------
    >>> workload({"backend": "numba"}), workload({"workload": FORWARD_BACKWARD})
    ('forward', 'forward+backward')
    """
    return point.get("workload", FORWARD)


def point_key(point):
    """The tuple of :data:`KEY_FIELDS` of ``point``, used to align two reports."""
    return tuple(workload(point) if field == "workload" else point.get(field)
                 for field in KEY_FIELDS)


def save_results(results, directory):
    """Write ``results`` to ``directory/results.json``; return the path.

    Parameters
    ----------
    results : dict
    directory : str or Path
        Created when missing.

    Returns
    -------
    Path
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    return path


def load_results(path):
    """Read a saved sweep from a report directory or a ``results.json`` path.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        When there is no results file there.
    ValueError
        When the file is not a fastattn benchmark, or its schema is newer than
        this version of fastattn understands.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path} "
                                f"(give a report directory or its {RESULTS_FILE})")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a fastattn benchmark report "
                         f"(expected \"schema\": \"{SCHEMA}\")")
    version = results.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"{path} has schema_version {version!r}; this fastattn reads "
                         f"versions up to {SCHEMA_VERSION}: upgrade fastattn")
    return upgrade(results)


def upgrade(results):
    """``results`` in the layout of :data:`SCHEMA_VERSION` (older versions converted).

    Examples
    --------
    >>> old = {"schema_version": 1, "points": [],
    ...        "ceiling": {"size": 64, "dtype": "float32", "threads": 1, "gflops": 9.5}}
    >>> new = upgrade(old)
    >>> new["schema_version"], new["reference"]["best"], new["reference"]["gflops"]
    (6, 'numpy', 9.5)
    >>> upgrade({"schema_version": 2, "points": [{"n": 64}]})["points"]
    [{'n': 64, 'workload': 'forward'}]
    """
    version = results.get("schema_version", SCHEMA_VERSION)
    if version < 2:
        from ._reference import from_ceiling

        results = dict(results)
        results["reference"] = from_ceiling(results.pop("ceiling", None))
    if version < 3:  # forward points only, before the workload field
        results = dict(results)
        results["points"] = [{**p, "workload": workload(p)} for p in results["points"]]
    if version < SCHEMA_VERSION:  # versions 4, 5 and 6 only added workloads and fields
        results = dict(results)
        results["schema_version"] = SCHEMA_VERSION
    return results
